"""One peer identity, one ISAKMP SA: INITIAL-CONTACT and the ``unique`` policy.

A peer that restarts has lost its SAs; ours towards it live on until DPD or
expiry notices. RFC 2407 section 4.6.3.3 lets it say so: INITIAL-CONTACT,
sent by a peer that holds no SA with us, asks the receiver to remove the SAs
it holds for that peer, which the peer can no longer use (nor delete). The
identity is (our ID, the peer's ID, the XAUTH user when there is one), as for
the ``unique`` policy (swanctl's meanings), which decides what a new ISAKMP SA
of an identity does to the older ones.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ikev1d.config import Unique
from ikev1d.config.identity import ANY
from ikev1d.engine.auth.base import resolve
from ikev1d.engine.ike_sa import IkeSa, IkeState
from ikev1d.text import printable
from ikev1d.wire import AuthMethod

if TYPE_CHECKING:
    from ikev1d.engine.engine import Engine

log = logging.getLogger("ikev1d.engine")

Identity = tuple[str, str, str | None]


def identity_of(sa: IkeSa) -> Identity:
    """(our ID, the peer's ID, the XAUTH user or None) as authenticated."""
    return (sa.local_id, sa.remote_id, sa.xauth_user)


def unique_to_one_peer(sa: IkeSa) -> bool:
    """Whether the peer's identity names one peer, so that what it says about
    "its" SAs may be believed. Road warriors often share a group ID and a
    pre-shared key: one client's INITIAL-CONTACT (or a second login) must not
    remove the others' SAs. The identity is taken as one peer's when XAUTH
    named a user, when the peer proved a key of its own (a certificate or a
    pinned public key: every method but the pre-shared key), or when the
    connection admits one fixed address only (a site-to-site peer)."""
    if sa.xauth_user is not None:
        return True
    if resolve(sa.auth_method).base != AuthMethod.PRE_SHARED_KEY:
        return True
    conn = sa.conn
    if conn is None or not conn.remote_addrs:
        return False
    return all(a != ANY and "/" not in a and "-" not in a for a in conn.remote_addrs)


def _who(sa: IkeSa) -> str:
    """The peer's identity for a log line (and its XAUTH user, if any)."""
    return printable(sa.remote_id) + (
        f" (XAUTH user {printable(sa.xauth_user)})" if sa.xauth_user is not None else "")


class Uniqueness:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _others(self, sa: IkeSa) -> list[IkeSa]:
        """The other authenticated ISAKMP SAs of the same connection and identity."""
        return [o for o in self.engine.same_identity(sa) if o.usable]

    # -- sending ---------------------------------------------------------------------

    def send_initial_contact(self, sa: IkeSa) -> bool:
        """Whether our Main Mode message 5 carries INITIAL-CONTACT: when we hold no
        other ISAKMP SA of this connection with this peer (as strongSwan decides;
        not while we renew one, whose IPsec SAs the peer must keep). Before message
        6 the peer's ID is not proven, so "this peer" is the address we initiate to
        with our ID on this connection."""
        conn = sa.conn
        if conn is None or conn.unique is Unique.NEVER:
            return False
        return not any(
            o is not sa and o.state is not IkeState.DELETING
            and o.local_id == sa.local_id and o.remote[0] == sa.remote[0]
            and (o.usable or o.initiator)
            for o in self.engine.sas_of(sa.name))

    # -- receiving ---------------------------------------------------------------------

    def initial_contact(self, sa: IkeSa, now: float) -> None:
        """The peer of ``sa`` (authenticated) sent INITIAL-CONTACT: remove the older
        ISAKMP SAs of its identity and their IPsec SAs at once, without Deletes
        (the peer has none of them any more)."""
        conn = sa.conn
        if conn is not None and conn.unique is Unique.NEVER:
            log.info("INITIAL-CONTACT from %s ignored (unique = never)", _who(sa),
                     extra=sa.log_extra)
            return
        if not unique_to_one_peer(sa):
            log.info("INITIAL-CONTACT from %s ignored: the identity may be shared by "
                     "several peers (pre-shared key, dynamic addresses, no XAUTH user)",
                     _who(sa), extra=sa.log_extra)
            return
        stale = [o for o in self._others(sa)
                 if o.established_at is None or sa.established_at is None
                 or o.established_at <= sa.established_at]
        if not stale:
            # Every new peer's first handshake comes here: its text only when logged.
            if log.isEnabledFor(logging.DEBUG):
                log.debug("INITIAL-CONTACT from %s: no stale SAs", _who(sa),
                          extra=sa.log_extra)
            return
        children = sum(len(o.children) for o in stale)
        log.info("INITIAL-CONTACT from %s: removing %d stale ISAKMP SA%s and %d IPsec SA%s",
                 _who(sa), len(stale), "" if len(stale) == 1 else "s",
                 children, "" if children == 1 else "s", extra=sa.log_extra)
        for old in stale:
            self.engine.deletion.delete_sa(old, "INITIAL-CONTACT from the peer", send=False)

    # -- the unique policy -------------------------------------------------------------

    def refuses(self, sa: IkeSa) -> bool:
        """``unique = "keep"``: an older ISAKMP SA of this identity is up, so the
        new one (authenticated, not yet answered) is refused. Unlike
        INITIAL-CONTACT this applies to shared group IDs too: the administrator
        asked for one SA per identity. A renewal by the
        same peer comes from the address of the SA it renews and is let through,
        or the tunnel would end when the old SA expires."""
        conn = sa.conn
        if conn is None or conn.unique is not Unique.KEEP:
            return False
        older = [o for o in self._others(sa) if o.remote[0] != sa.remote[0]]
        if older:
            sa.ctx.logs.log(
                log, logging.WARNING, "unique-keep", sa.ctx.logs.now,
                "refusing a new ISAKMP SA for %s from %s: one from %s is up (unique = keep)",
                printable(sa.remote_id), sa.remote[0], older[0].remote[0],
                extra=sa.log_extra)
            return True
        return False

    def established(self, sa: IkeSa, now: float) -> None:
        """``unique = "replace"``: a new ISAKMP SA of an identity authenticated as
        responder; the older ones are deleted, with Delete payloads. One from the
        same address is this peer renewing Phase 1: its IPsec SAs move to the new
        SA first (make before break); from elsewhere (another device), they go."""
        conn = sa.conn
        if conn is None or conn.unique is not Unique.REPLACE or sa.initiator:
            return
        for old in self._others(sa):
            if old.remote[0] == sa.remote[0]:
                sa.children.extend(old.children)
                self.engine.adopt_children(sa, old.children)
                old.children.clear()
            log.info("deleting the older ISAKMP SA of %s from %s (unique = replace)",
                     printable(sa.remote_id), old.remote[0], extra=sa.log_extra)
            self.engine.deletion.delete_sa(old, "replaced by a new ISAKMP SA (unique = replace)",
                                           send=True)
