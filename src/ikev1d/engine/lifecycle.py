"""What happens to SAs over time: Phase 1 and Quick Modes coming up or failing,
renewal before expiry (make before break), expiry, Dead Peer Detection, and a
renewed ISAKMP SA taking over its predecessor's IPsec SAs."""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
from typing import TYPE_CHECKING

from ikev1d.crypto import encryption_key
from ikev1d.engine.api import (
    ChildSaEstablished,
    ConnectionFailed,
    EngineError,
    IkeSaEstablished,
    Network,
)
from ikev1d.engine.auth import AUTH_NAMES
from ikev1d.engine.exchanges.quick_mode import QuickMode
from ikev1d.engine.ike_sa import (
    ChildSa,
    ChildState,
    IkeSa,
    IkeState,
    ProtocolFailure,
    QuickModeWork,
    WorkKind,
)
from ikev1d.engine.lifetimes import rekey_delay
from ikev1d.engine.roadwarrior import RoadWarrior
from ikev1d.engine.stats import PHASE1, PHASE2
from ikev1d.engine.vendor import Extension
from ikev1d.wire import NotifyPayload, NotifyType, ProtocolId

if TYPE_CHECKING:
    from ikev1d.engine.engine import Engine

log = logging.getLogger("ikev1d.engine")

# The text of an IPsec SA's selectors for its log line: the tuples are shared by
# the SAs of a tunnel (see quick_mode._selectors), and str() of a network is a
# few dozen Python steps. Kept by identity, holding the tuple; bounded.
_SELECTOR_TEXTS: dict[int, tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
                                 str]] = {}
_SELECTOR_TEXTS_CACHED = 1024


def _selectors_text(selectors: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    known = _SELECTOR_TEXTS.get(id(selectors))
    if known is not None and known[0] is selectors:
        return known[1]
    text = ",".join(map(str, selectors))
    if len(_SELECTOR_TEXTS) >= _SELECTOR_TEXTS_CACHED:
        _SELECTOR_TEXTS.clear()
    _SELECTOR_TEXTS[id(selectors)] = (selectors, text)
    return text


RENEWED_DELETE_DELAY_S = 5.0
"""How long a renewed IPsec SA stays after its successor is up. The peer installs the
new SA only when our third Quick Mode message arrives (RFC 2409 §5.5), so its last
packets on the old one may still be on their way; deleting the old SA at once would
drop them. Outbound, the newest SA is used from the start."""

HOUSEKEEPING_GRID_S = 1.0
"""Releases whose exact time does not matter (the kept Main Mode message 6 of a
responder) fall due on whole seconds of the engine's clock, so that those of the
tunnels set up within one second share one wakeup of the daemon instead of one
each: at a steady arrival rate every wakeup costs a tunnel its cold caches."""


def on_housekeeping_grid(deadline: float) -> float:
    """``deadline`` moved up to the next whole HOUSEKEEPING_GRID_S (never earlier)."""
    return math.ceil(deadline / HOUSEKEEPING_GRID_S) * HOUSEKEEPING_GRID_S


RETIRE_CHECK_S = 1.0
RETIRE_MAX_S = 60.0
"""A renewed ISAKMP SA is deleted once the IPsec SAs it had were renewed over its
successor (checked every RETIRE_CHECK_S), at the latest after RETIRE_MAX_S."""


class Lifecycle:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # Bound once and shared by every SA's expiry and renewal timers (see
        # Timers.schedule_call): a closure per timer was most of a timer's memory.
        self._on_ike_expiry = self._ike_expiry_due
        self._on_ike_rekey = self._ike_rekey
        self._on_child_expiry = self._child_expiry_due
        self._on_child_rekey = self._child_rekey
        self._on_release_main_mode = self._release_main_mode_due

    def _ike_expiry_due(self, sa: IkeSa, now: float) -> None:
        self._ike_expired(sa)

    def _child_expiry_due(self, child: ChildSa, now: float) -> None:
        self._child_expired(child)

    @staticmethod
    def _release_main_mode_due(sa: IkeSa, now: float) -> None:
        sa.release_main_mode()

    # -- Phase 1 ---------------------------------------------------------------------

    def phase1_authenticated(self, sa: IkeSa, now: float) -> None:
        """Main Mode is done. With XAUTH, the SA is established once XAUTH succeeds
        (draft-beaulieu-ike-xauth-02 section 4: XAUTH completes the authentication
        of Phase 1), else now; Mode Config then runs before any Quick Mode."""
        sa.authenticated = True
        self.engine.leave_half_open(sa, authenticated=True)
        if self.engine.roadwarrior.authenticated(sa):
            log.info("Main Mode done: %s[%s]...%s[%s]; XAUTH follows", sa.local[0],
                     sa.local_id, sa.remote[0], sa.remote_id, extra=sa.log_extra)
            self.run_work(sa, now)
            return
        self.phase1_established(sa, now)
        self.run_work(sa, now)

    def phase1_established(self, sa: IkeSa, now: float) -> None:
        sa.state = IkeState.ESTABLISHED
        sa.established_at = now
        self.engine.register_established(sa)
        self.engine.stats.handshake_succeeded(PHASE1, sa.initiator)
        proposal = sa.proposal.render() if sa.proposal else "?"
        auth = AUTH_NAMES.get(sa.auth_method, str(sa.auth_method))
        log.info(
            "ISAKMP SA established: %s[%s]...%s[%s], %s, auth %s%s%s",
            sa.local[0], sa.local_id, sa.remote[0], sa.remote_id, proposal, auth,
            ", NAT-T (UDP 4500)" if sa.udp_encap else "",
            f", XAUTH user '{sa.xauth_user}'" if sa.xauth_user else "",
            extra=sa.log_extra,
        )
        self.engine.emit(IkeSaEstablished(
            conn=sa.name, ike_id=sa.ike_id, local=sa.local, remote=sa.remote,
            local_id=sa.local_id, remote_id=sa.remote_id, proposal=proposal, auth=auth,
            initiator=sa.initiator, cky_i=sa.cky_i, cky_r=sa.cky_r,
            encryption_key=self._encryption_key(sa),
        ))
        if sa.initiator:
            # Our message 5 was answered: Main Mode has nothing left to send.
            sa.release_main_mode()
        else:
            # Message 6 is kept for a repeated message 5 while the peer may still be
            # retransmitting it (its first Quick Mode shows earlier that it needs none).
            # Not among the SA's own timers, which would keep the fired timer until
            # the next one is added; firing after the SA is gone does nothing.
            self.engine.timers.schedule_call(
                on_housekeeping_grid(now + self.engine.retransmit_budget()),
                self._on_release_main_mode, sa, owner=sa)
        sa.schedule_call(now + sa.lifetime_s, self._on_ike_expiry)
        sa.rekey_at = now + self.rekey_delay(sa.lifetime_s, sa.initiator)
        sa.schedule_call(sa.rekey_at, self._on_ike_rekey)
        old = sa.replaces
        if old is not None:
            sa.replaces = None
            self._take_over(old, sa, now)
        elif not sa.initiator:
            self._superseded_by_peer(sa)
        if sa.initial_contact_seen:
            sa.initial_contact_seen = False
            self.engine.uniqueness.initial_contact(sa, now)
        self.engine.uniqueness.established(sa, now)
        self._start_dpd(sa, now)
        if sa.initiator and sa.requested_children:
            for name in sa.requested_children:
                self.start_quick_modes(sa, name, now)
        sa.requested_children = None

    @staticmethod
    def _encryption_key(sa: IkeSa) -> bytes:
        """Ka, the ISAKMP SA's cipher key (RFC 2409 Appendix B), derived again from
        SKEYID_e rather than kept beside the cipher that holds it."""
        if sa.keys is None or sa.cipher is None or sa.proposal is None:
            return b""
        return encryption_key(sa.proposal.integrity, sa.keys.skeyid_e, sa.cipher.key_length)

    def phase1_failed(self, sa: IkeSa, reason: str, *, quiet: bool = False) -> None:
        if not quiet:
            # Messages 1 to 4 are not authenticated: anyone can make a Main Mode fail.
            self.engine.logs.log(log, logging.WARNING, "mm-failed", self.engine.logs.now,
                                 "Main Mode failed: %s", reason, extra=sa.log_extra)
        self.engine.stats.handshake_failed(PHASE1, sa.initiator, reason)
        old = sa.replaces
        if old is not None and old.state is IkeState.REKEYING:
            old.state = IkeState.ESTABLISHED  # it runs until its lifetime ends
        name = sa.conn.name if sa.conn is not None and sa.initiator else sa.name
        if sa.initiator:
            self.engine.emit(ConnectionFailed(name, None, reason))
        self.engine.drop_sa(sa)

    def rekey_delay(self, lifetime: float, initiator: bool) -> float:
        """When to renew an SA of this lifetime (see :func:`lifetimes.rekey_delay`)."""
        fraction = int.from_bytes(self.engine.random_bytes(2), "big") / 65535
        return rekey_delay(lifetime, initiator, self.engine.config.daemon.retransmit_timeout,
                           fraction)

    def _ike_rekey(self, sa: IkeSa, now: float) -> None:
        """Renew Phase 1 with a new Main Mode; the IPsec SAs move to it once it is up."""
        conn = sa.conn
        if sa.state is not IkeState.ESTABLISHED or conn is None:
            return
        remote = sa.remote[0] if sa.remote[0] in conn.remote_addrs else next(
            (a for a in conn.remote_addrs if a != "%any"), None)
        if remote is None:
            # A peer with a dynamic address must renew it; we cannot reach it first.
            return
        port = self.engine.config.daemon.port
        new = IkeSa(self.engine, initiator=True, local=(sa.local[0], port),
                    remote=(remote, port), conn=conn, candidates=[conn], now=now)
        new.requested_children = []
        new.replaces = sa
        sa.state = IkeState.REKEYING
        try:
            self.engine.start_phase1(new, now)
        except ProtocolFailure as exc:
            log.warning("cannot renew the ISAKMP SA: %s", exc, extra=sa.log_extra)
            sa.state = IkeState.ESTABLISHED
            return
        log.info("renewing the ISAKMP SA (Main Mode)", extra=sa.log_extra)

    def _take_over(self, old: IkeSa, new: IkeSa, now: float) -> None:
        """The renewed ISAKMP SA takes the IPsec SAs; the old one goes once they are
        renewed over the new one.

        RFC 2409 lets IPsec SAs outlive the ISAKMP SA that negotiated them, but
        strongSwan deletes an IKEv1 SA's IPsec SAs with it: a Delete for the old
        ISAKMP SA at once would cut the tunnel on its side until the next Quick
        Mode. So, as strongSwan's own reauthentication does, every inherited IPsec
        SA is renewed over the new ISAKMP SA now (make before break; the peer ties
        the new IPsec SAs to its new ISAKMP SA), and the old ISAKMP SA is deleted
        when none of them is left.
        """
        inherited = list(old.children)
        new.children.extend(inherited)
        self.engine.adopt_children(new, inherited)
        old.children.clear()
        RoadWarrior.hand_over(old, new)
        self.engine.stats.rekeys[PHASE1] += 1
        log.info("ISAKMP SA renewed: %s:%s replaces %s:%s", new.cky_i.hex(), new.cky_r.hex(),
                 old.cky_i.hex(), old.cky_r.hex(), extra=new.log_extra)
        if not inherited:
            self.engine.deletion.delete_sa(old, "renewed", send=True, children=False)
            return
        renewing = {id(w.replaces) for w in old.work.pending()
                    if isinstance(w, QuickModeWork) and w.replaces is not None}
        running = old.work.running
        if isinstance(running, QuickMode) and running.replaces is not None:
            renewing.add(id(running.replaces))
        for child in inherited:
            if child.rekey is not None:
                child.rekey.cancel()
            if child.state is ChildState.REKEYING and id(child) in renewing:
                # Its renewal was queued or under way over the old ISAKMP SA: renew
                # it over the new one instead, where the peer now keeps it
                # (strongSwan moves the IPsec SAs to the new ISAKMP SA and no longer
                # answers for them on the old one; the old SA's lifetime would end
                # first). A late answer over the old SA is dropped in _child_up.
                child.state = ChildState.INSTALLED
            self._child_rekey(child, now)
        self._retire(old, inherited, now + RETIRE_MAX_S, now)

    def _superseded_by_peer(self, new: IkeSa) -> None:
        """The peer renewed Phase 1: our older ISAKMP SAs with it no longer renew
        themselves (that would be a second renewal racing the peer's); they keep
        carrying exchanges until the peer deletes them, once it moved their IPsec
        SAs over (:meth:`_take_over`), or until their lifetime ends."""
        if not new.remote_id:
            return
        for other in self.engine.same_identity(new):
            if other.state is IkeState.ESTABLISHED:
                other.state = IkeState.REKEYING
                log.info("ISAKMP SA %s:%s is being renewed by the peer", other.cky_i.hex(),
                         other.cky_r.hex(), extra=other.log_extra)

    def _retire(self, old: IkeSa, inherited: list[ChildSa], deadline: float,
                now: float) -> None:
        if old.state is not IkeState.REKEYING:
            return  # deleted meanwhile (by the peer, or its lifetime ended)
        if now < deadline and any(self.engine.owner_of(c) is not None for c in inherited):
            old.schedule(now + RETIRE_CHECK_S,
                         functools.partial(self._retire, old, inherited, deadline))
            return
        self.engine.deletion.delete_sa(old, "renewed", send=True, children=False)

    def _ike_expired(self, sa: IkeSa) -> None:
        log.info("ISAKMP SA lifetime reached", extra=sa.log_extra)
        self.engine.deletion.delete_sa(sa, "lifetime reached", send=True, children=False)

    # -- Dead Peer Detection (RFC 3706) -------------------------------------------------

    def _start_dpd(self, sa: IkeSa, now: float) -> None:
        conn = sa.conn
        if conn is not None and conn.dpd_delay > 0 and (
            Extension.DPD in sa.peer_vendors.extensions
        ):
            # RFC 3706 section 7: start from a random sequence number.
            sa.dpd_seq = int.from_bytes(self.engine.random_bytes(2), "big")
            sa.schedule(now + conn.dpd_delay, lambda t: self._dpd_tick(sa, t))

    def _dpd_tick(self, sa: IkeSa, now: float) -> None:
        """RFC 3706: ask the peer R-U-THERE every dpd_delay; if no R-U-THERE-ACK
        comes for dpd_timeout, the peer is dead and dpd_action applies."""
        conn = sa.conn
        if conn is None or not sa.usable:
            return
        if sa.dpd_unanswered_since is not None and (
            now - sa.dpd_unanswered_since >= conn.dpd_timeout
        ):
            self._peer_dead(sa, now)
            return
        if sa.dpd_unanswered_since is None:
            sa.dpd_unanswered_since = now
        sa.dpd_seq = (sa.dpd_seq + 1) & 0xFFFFFFFF
        sa.send_informational([NotifyPayload(
            notify_type=NotifyType.R_U_THERE, spi=sa.cky_i + sa.cky_r,
            protocol_id=ProtocolId.ISAKMP, data=sa.dpd_seq.to_bytes(4, "big"),
        )])
        remaining = conn.dpd_timeout - (now - sa.dpd_unanswered_since)
        sa.schedule(now + min(conn.dpd_delay, max(remaining, 0.0)),
                    lambda t: self._dpd_tick(sa, t))

    def _peer_dead(self, sa: IkeSa, now: float) -> None:
        conn = sa.conn
        if conn is None:
            return
        self.engine.stats.dpd_failures += 1
        log.warning("DPD: peer %s not responding for %d s; action %s", sa.remote[0],
                    int(conn.dpd_timeout), conn.dpd_action, extra=sa.log_extra)
        self.engine.deletion.delete_sa(sa, "peer not responding (DPD)", send=False)
        if conn.dpd_action == "hold":
            # Traffic for the connection is caught, not leaked or silently lost,
            # and brings the tunnel back once the peer answers again.
            self.engine.traps.hold(conn)
        elif conn.dpd_action == "restart":
            try:
                self.engine.initiate(conn.name, None, now)
            except EngineError as exc:
                log.warning("cannot restart %s: %s", conn.name, exc, extra=sa.log_extra)

    # -- Quick Modes and IPsec SAs ---------------------------------------------------------

    def start_quick_modes(self, sa: IkeSa, child_name: str, now: float) -> None:
        conn = sa.conn
        if conn is None:
            return
        child = conn.children.get(child_name)
        if child is None:
            return
        # With Mode Config, a dynamic end is the virtual IP (the client's own is
        # filled in by run_work once Mode Config has run).
        local_nets, remote_nets = child.traffic_selectors(
            str(sa.local_vip or sa.local[0]), str(sa.remote_vip or sa.remote[0]))
        for local_ts in local_nets:
            for remote_ts in remote_nets:
                sa.work.add(QuickModeWork(child, local_ts, remote_ts))
        self.run_work(sa, now)

    def run_work(self, sa: IkeSa, now: float) -> None:
        """Start the next queued item unless one of ours still runs on this SA:
        XAUTH once Main Mode has authenticated the peer, Mode Config and Quick
        Modes once the SA is established."""
        while sa.authenticated and sa.state is not IkeState.DELETING:
            work = sa.work.peek()
            if work is None:
                return
            if work.kind > WorkKind.XAUTH and not sa.usable:
                return
            sa.work.next()
            if not isinstance(work, QuickModeWork):
                self.engine.roadwarrior.run(sa, work, now)
                continue
            if work.replaces is not None and self.engine.owner_of(work.replaces) is not sa:
                continue  # the SA to renew is gone, or renewed over a newer ISAKMP SA
            local_ts = work.local_ts
            vip = sa.local_vip_for(work.remote_ts.version)
            if work.replaces is None and not work.child.local_ts and vip is not None:
                # Mode Config gave us an address: our end of the tunnel is that
                # address (the one of the remote network's family, for a dual-stack
                # client), not our IKE address.
                local_ts = ipaddress.ip_network(vip)
            if local_ts.version != work.remote_ts.version:
                self._skip_mixed(sa, work, local_ts)
                continue
            qm = QuickMode(sa, sa.new_message_id(), initiator=True)
            qm.replaces = work.replaces
            sa.exchanges[qm.message_id] = qm
            sa.work.running = qm
            self.engine.stats.handshake_started(PHASE2, True)
            try:
                qm.start(work.child, local_ts, work.remote_ts, now)
            except ProtocolFailure as exc:
                qm.fail(str(exc), now)

    def _skip_mixed(self, sa: IkeSa, work: QuickModeWork, local_ts: Network) -> None:
        """A pair of networks of two address families names no tunnel (no packet
        has a source of one and a destination of the other): not proposed. A
        road warrior's child reaching networks of both families gets this for the
        family the server gave it no virtual IP of."""
        name = work.child.name
        reason = (f"{local_ts} === {work.remote_ts} not negotiated: no local network of "
                  f"the remote network's address family")
        log.warning("child %s: %s", name, reason, extra=sa.log_extra)
        if (not any(isinstance(w, QuickModeWork) and w.child.name == name
                    for w in sa.work.pending())
                and not any(c.config.name == name for c in sa.children)):
            self.engine.emit(ConnectionFailed(sa.name, name, reason))

    def _child_rekey(self, child: ChildSa, now: float) -> None:
        """Renew an IPsec SA with a new Quick Mode; make before break."""
        sa = self.engine.owner_of(child)
        if sa is None or not sa.usable or child.state != ChildState.INSTALLED:
            return
        child.state = ChildState.REKEYING
        log.info("renewing IPsec SA %s_i", child.spi_in.hex(), extra=sa.log_extra)
        sa.work.add(QuickModeWork(child.config, child.local_ts[0], child.remote_ts[0], child))
        self.run_work(sa, now)

    def _find_child(self, child_id: int) -> tuple[IkeSa, ChildSa] | None:
        return self.engine.child_by_id(child_id)

    def child_soft_expired(self, child_id: int, reason: str, now: float) -> None:
        """The data plane says an IPsec SA nears a limit other than time (its volume,
        life_bytes, or its sequence numbers, RFC 4303 §3.3.3): renew it now, as the
        time-based renewal would (make before break)."""
        found = self._find_child(child_id)
        if found is None:
            return
        sa, child = found
        if child.state is not ChildState.INSTALLED:
            return  # already being renewed or deleted
        log.info("IPsec SA %s_i: %s", child.spi_in.hex(), reason, extra=sa.log_extra)
        self._child_rekey(child, now)

    def child_hard_expired(self, child_id: int, reason: str, now: float) -> None:
        """The data plane stopped using an IPsec SA (volume or sequence numbers used
        up): delete it on both sides, as at the end of its lifetime."""
        found = self._find_child(child_id)
        if found is None:
            return
        sa, child = found
        log.info("IPsec SA %s_i: %s", child.spi_in.hex(), reason, extra=sa.log_extra)
        self.engine.deletion.delete_child(sa, child, reason, send=True)

    def _child_expired(self, child: ChildSa) -> None:
        sa = self.engine.owner_of(child)
        if sa is None:
            return
        log.info("IPsec SA %s_i lifetime reached", child.spi_in.hex(), extra=sa.log_extra)
        self.engine.deletion.delete_child(sa, child, "lifetime reached", send=True)

    def quick_mode_done(
        self,
        qm: QuickMode,
        result: tuple[ChildSa, ChildSaEstablished] | None,
        reason: str,
        now: float,
    ) -> None:
        sa = qm.sa
        sa.end_exchange(qm.message_id)
        try:
            if result is None:
                self._quick_mode_failed(qm, reason)
            else:
                self._child_up(qm, *result, now)
        finally:
            if sa.work.ended(qm):
                self.run_work(sa, now)

    def _quick_mode_failed(self, qm: QuickMode, reason: str) -> None:
        sa = qm.sa
        log.warning("Quick Mode failed: %s", reason, extra=sa.log_extra)
        self.engine.stats.handshake_failed(PHASE2, qm.initiator, reason)
        if qm.replaces is not None:
            # Renewal failed: the old SA runs on until its lifetime ends (unless a
            # renewed ISAKMP SA took it over and renews it itself).
            if self.engine.owner_of(qm.replaces) is sa:
                qm.replaces.state = ChildState.INSTALLED
        elif qm.initiator:
            child_name = qm.child.name if qm.child is not None else None
            self.engine.emit(ConnectionFailed(sa.name, child_name, reason))

    def _child_up(self, qm: QuickMode, child: ChildSa, event: ChildSaEstablished,
                  now: float) -> None:
        sa = qm.sa
        # The same tunnel negotiated again over this ISAKMP SA: a renewal, by us or
        # by the peer (a renewed ISAKMP SA has taken its predecessor's IPsec SAs).
        older = [c for c in sa.children
                 if c.config.name == child.config.name and c.local_ts == child.local_ts
                 and c.remote_ts == child.remote_ts]
        sa.children.append(child)
        self.engine.adopt_children(sa, (child,))
        self.engine.stats.handshake_succeeded(PHASE2, qm.initiator)
        if older:
            self.engine.stats.rekeys[PHASE2] += 1
        log.info(
            "IPsec SA established: child %s, SPIs %s_i %s_o, %s, %s %s === %s%s",
            child.config.name, child.spi_in.hex(), child.spi_out.hex(), event.proposal,
            child.mode, _selectors_text(child.local_ts), _selectors_text(child.remote_ts),
            ", UDP-encapsulated" if child.encap else "",
            extra=sa.log_extra,
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug("IPsec SA %s_i lifetime %d s, life_bytes %d KB", child.spi_in.hex(),
                      int(child.lifetime_s), child.life_bytes // 1024, extra=sa.log_extra)
        timers = self.engine.timers
        child.expiry = timers.schedule_call(
            now + child.lifetime_s, self._on_child_expiry, child, owner=sa
        )
        child.rekey = timers.schedule_call(
            now + self.rekey_delay(child.lifetime_s, qm.initiator),
            self._on_child_rekey, child, owner=sa,
        )
        self.engine.emit(event)
        if qm.replaces is not None and self.engine.owner_of(qm.replaces) not in (sa, None):
            # A renewal over an ISAKMP SA whose IPsec SAs were taken over by its
            # successor meanwhile (_take_over renews them there): a duplicate.
            self.engine.deletion.delete_child(
                sa, child, "duplicate: renewed over the new ISAKMP SA", send=True)
            return
        for old in older:
            # The old SA is not renewed again; whoever renewed it deletes it.
            if old.rekey is not None:
                old.rekey.cancel()
            if old is qm.replaces:
                owner = self.engine.owner_of(old)
                if owner is not None:
                    log.info("IPsec SA renewed: %s_i replaces %s_i", child.spi_in.hex(),
                             old.spi_in.hex(), extra=sa.log_extra)
                    # It stays REKEYING meanwhile: neither renewed again nor counted
                    # as the tunnel's live SA.
                    timers.schedule(now + RENEWED_DELETE_DELAY_S,
                                    functools.partial(self._delete_renewed, old))

    def _delete_renewed(self, old: ChildSa, now: float) -> None:
        owner = self.engine.owner_of(old)
        if owner is not None:
            self.engine.deletion.delete_child(owner, old, "renewed", send=True)
