"""What runs on an ISAKMP SA between Main Mode and Quick Mode for road
warriors: XAUTH (draft-beaulieu-ike-xauth-02) and Mode Config
(draft-dukes-ike-mode-cfg-02), both roles, each a step of the SA's work queue.

XAUTH is negotiated by the Phase 1 authentication method (65001/65002 with
pre-shared keys, 65005/65006 with RSA signatures; section 7.2 of the draft:
"XAUTHInit*" means the Main Mode initiator is the client). The server asks for
user name and password, checks them and sends the status, which the client
acknowledges; only then the ISAKMP SA counts as established, as in strongSwan.

Mode Config hands the client an address from a pool, DNS servers and the
networks behind the server. Pull: the client sends CFG_REQUEST and the server
answers with CFG_REPLY; push: the server sends CFG_SET and the client answers
with CFG_ACK. Both requests are retransmitted until answered (the seed's
"no way to repeat" a push does not hold here), and a step that waits for the
peer gives up after the retransmission budget.
"""

from __future__ import annotations

import hmac
import ipaddress
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ikev1d.config import ModeCfg
from ikev1d.engine.api import (
    ConnectionFailed,
    Network,
    VirtualIpAssigned,
    VirtualIpReleased,
    XauthCheck,
)
from ikev1d.engine.auth.base import XauthRole
from ikev1d.engine.exchanges.transaction import Answer, Transaction, cfg_name
from ikev1d.engine.ike_sa import IkeSa, IkeState, WorkKind
from ikev1d.engine.timers import Timer
from ikev1d.wire import (
    Attribute,
    AttributePayload,
    DeletePayload,
    ModeCfgAttr,
    ModeCfgType,
    ProtocolId,
    XauthType,
)

if TYPE_CHECKING:
    from ikev1d.engine.engine import Engine
    from ikev1d.engine.pools import Owner, Pool

log = logging.getLogger("ikev1d.engine")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
A = ModeCfgAttr

#: draft-beaulieu-ike-xauth-02 section 6.2: XAUTH-STATUS OK / FAIL.
XAUTH_OK = 1
XAUTH_FAIL = 0

#: User names and passwords longer than this are refused (a RADIUS attribute
#: holds at most 253 bytes, RFC 2865 section 5).
MAX_XAUTH_FIELD = 255

#: Challenges relayed to one client before the login counts as failed: each waits
#: for the user (the retransmission budget) and the checker, so the whole XAUTH
#: stays bounded.
MAX_XAUTH_CHALLENGES = 3


# -- the work items ----------------------------------------------------------------


@dataclass(frozen=True)
class XauthWork:
    kind: ClassVar[WorkKind] = WorkKind.XAUTH
    server: bool


@dataclass(frozen=True)
class ModeConfigWork:
    kind: ClassVar[WorkKind] = WorkKind.MODE_CONFIG
    server: bool
    push: bool


def xauth_client(sa: IkeSa) -> bool | None:
    """Are we the XAUTH client on this SA (None: no XAUTH was negotiated)?"""
    role = sa.xauth_role
    if role is None or role is XauthRole.NONE:
        return None
    return (role is XauthRole.INITIATOR_IS_CLIENT) == sa.initiator


def printable(text: str, limit: int = 64) -> str:
    """A peer's string fit for a log line: no control characters, bounded."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit] + "..."


# -- attribute codecs (draft-dukes-ike-mode-cfg-02 section 3.3, Cisco Unity) --------


def _address_bytes(address: IPAddress, prefix: int | None = None) -> bytes:
    """INTERNAL_IP6_ADDRESS carries the prefix length after the address."""
    if address.version == 6:
        return address.packed + bytes((prefix if prefix is not None else 128,))
    return address.packed


def _netmask(prefix: int) -> bytes:
    return ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask.packed


def _subnet(net: Network) -> Attribute:
    if net.version == 4:
        return Attribute(A.INTERNAL_IP4_SUBNET, net.network_address.packed + net.netmask.packed)
    return Attribute(A.INTERNAL_IP6_SUBNET, net.network_address.packed + bytes((net.prefixlen,)))


def _unity_split(nets: Iterable[Network]) -> Attribute | None:
    """UNITY_SPLIT_INCLUDE: per network its address, netmask and six bytes of
    protocol and ports, zero for "any" (14 bytes each, as strongSwan's unity plugin)."""
    v4 = [n for n in nets if n.version == 4]
    if not v4:
        return None
    return Attribute(A.UNITY_SPLIT_INCLUDE, b"".join(
        n.network_address.packed + n.netmask.packed + bytes(6) for n in v4))


@dataclass
class ReceivedConfig:
    """What a CFG_REPLY or CFG_SET told us, the malformed parts left out."""

    addresses: list[IPAddress]
    dns: list[IPAddress]
    split: list[Network]
    unknown: list[int]
    malformed: list[int]
    accepted: list[int]


def read_config(attributes: Iterable[Attribute]) -> ReceivedConfig:
    out = ReceivedConfig([], [], [], [], [], [])
    for attribute in attributes:
        value = attribute.value
        kind = attribute.type
        if isinstance(value, int):
            if kind in (A.INTERNAL_ADDRESS_EXPIRY, A.UNITY_SAVE_PASSWD, A.UNITY_PFS):
                continue
            out.unknown.append(kind)
            continue
        try:
            if kind == A.INTERNAL_IP4_ADDRESS and len(value) == 4:
                out.addresses.append(ipaddress.IPv4Address(value))
            elif kind == A.INTERNAL_IP6_ADDRESS and len(value) in (16, 17):
                out.addresses.append(ipaddress.IPv6Address(value[:16]))
            elif kind == A.INTERNAL_IP4_DNS and len(value) == 4:
                out.dns.append(ipaddress.IPv4Address(value))
            elif kind == A.INTERNAL_IP6_DNS and len(value) == 16:
                out.dns.append(ipaddress.IPv6Address(value))
            elif kind == A.INTERNAL_IP4_SUBNET and len(value) == 8:
                out.split.append(ipaddress.IPv4Network(
                    (value[:4], str(ipaddress.IPv4Address(value[4:]))), strict=False))
            elif kind == A.INTERNAL_IP6_SUBNET and len(value) == 17 and value[16] <= 128:
                out.split.append(ipaddress.IPv6Network((value[:16], value[16]), strict=False))
            elif kind == A.UNITY_SPLIT_INCLUDE and len(value) % 14 == 0:
                for at in range(0, len(value), 14):
                    out.split.append(ipaddress.IPv4Network(
                        (value[at:at + 4], str(ipaddress.IPv4Address(value[at + 4:at + 8]))),
                        strict=False))
            elif kind in (A.INTERNAL_IP4_NETMASK, A.INTERNAL_IP6_NETMASK, A.INTERNAL_IP4_NBNS,
                          A.INTERNAL_IP6_NBNS, A.UNITY_BANNER, A.UNITY_DEF_DOMAIN,
                          A.UNITY_SPLITDNS_NAME, A.APPLICATION_VERSION):
                pass  # nothing of ours uses them
            elif kind in (A.INTERNAL_IP4_ADDRESS, A.INTERNAL_IP6_ADDRESS, A.INTERNAL_IP4_DNS,
                          A.INTERNAL_IP6_DNS, A.INTERNAL_IP4_SUBNET, A.INTERNAL_IP6_SUBNET,
                          A.UNITY_SPLIT_INCLUDE):
                out.malformed.append(kind)
                continue
            else:
                out.unknown.append(kind)
                continue
        except ValueError:
            # A netmask that is no netmask: ipaddress refuses it.
            out.malformed.append(kind)
            continue
        out.accepted.append(kind)
    out.split = list(dict.fromkeys(out.split))
    return out


# -- steps ------------------------------------------------------------------------------


class Step:
    """One running XAUTH or Mode Config item of an SA's work queue."""

    kind: ClassVar[WorkKind]
    what: ClassVar[str]

    def __init__(self, rw: RoadWarrior, sa: IkeSa) -> None:
        self.rw = rw
        self.sa = sa
        self.timer: Timer | None = None
        self.ended = False

    def start(self, now: float) -> None:
        raise NotImplementedError

    def on_request(self, request: AttributePayload, now: float) -> Answer | None:
        """A request of the peer's while this step runs; None: not answered."""
        self.rw.unexpected(self.sa, request, now)
        return None

    def wait(self, now: float, what: str) -> None:
        """Wait for the peer to start; give up after the retransmission budget."""
        self.timer = self.sa.schedule(now + self.rw.wait_budget(),
                                      lambda t: self.fail(f"{what} did not come", t))

    def send(self, payload: AttributePayload, now: float,
             on_answer: Callable[[AttributePayload, float], None],
             continuing: tuple[int, bytes] | None = None) -> Transaction:
        """A Transaction exchange of ours: under a new message ID, or, with
        ``continuing`` (a finished exchange's message ID and the end of its CBC
        chain), under that ID, on that chain."""
        sa = self.sa
        if continuing is not None and continuing[0] not in sa.exchanges:
            message_id = continuing[0]
            sa.exchange_ivs[message_id] = continuing[1]
        else:
            message_id = sa.new_message_id()
        tx = Transaction(sa, message_id, True, on_answer, self.fail)
        sa.exchanges[tx.message_id] = tx
        tx.start(payload, now)
        return tx

    def done(self, now: float) -> None:
        if self.ended:
            return
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        if self.sa.work.ended(self):
            self.rw.engine.lifecycle.run_work(self.sa, now)

    def fail(self, reason: str, now: float, *, tell_peer: bool = True) -> None:
        """Give up: the SA goes. ``reason`` without our name in front if it has it."""
        if self.ended:
            return
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        self.sa.work.ended(self)
        text = reason if reason.startswith(self.what) else f"{self.what}: {reason}"
        self.rw.fail(self.sa, text, now, tell_peer=tell_peer)


class XauthServer(Step):
    kind = WorkKind.XAUTH
    what = "XAUTH"

    def __init__(self, rw: RoadWarrior, sa: IkeSa) -> None:
        super().__init__(rw, sa)
        self.user = ""
        self.verdict_sent: bool | None = None
        self.challenges = 0
        self.state = b""
        """The checker's state of the challenge the client is answering."""
        self.status: Transaction | None = None
        """The exchange carrying our XAUTH-STATUS, once sent."""

    def start(self, now: float) -> None:
        identifier = int.from_bytes(self.sa.ctx.random_bytes(2), "big")
        self.send(AttributePayload(ModeCfgType.ISAKMP_CFG_REQUEST, identifier, (
            Attribute(A.XAUTH_TYPE, XauthType.GENERIC),
            Attribute(A.XAUTH_USER_NAME, b""),
            Attribute(A.XAUTH_USER_PASSWORD, b""),
        )), now, self._reply)

    def _reply(self, reply: AttributePayload, now: float) -> None:
        values = {a.type: a.value for a in reply.attributes}
        user, password = values.get(A.XAUTH_USER_NAME), values.get(A.XAUTH_USER_PASSWORD)
        if not isinstance(user, bytes) or not isinstance(password, bytes):
            self.fail("the client sent no user name and password", now)
            return
        if len(user) > MAX_XAUTH_FIELD or len(password) > MAX_XAUTH_FIELD:
            self.fail("user name or password longer than 255 bytes", now)
            return
        name = user.decode("utf-8", "replace")
        if self.challenges and name != self.user:
            # The answer to a challenge is the same user's (RFC 2865 section 4.4:
            # the State ties it to the first request).
            self.verdict(False, now)
            return
        self.user = name
        engine = self.rw.engine
        if engine.config.xauth.radius:
            request_id = self.rw.pending_check(self)
            xauth = engine.config.xauth
            self.timer = self.sa.schedule(
                now + xauth.radius_timeout * max(xauth.radius_tries, 1) + 1.0,
                lambda t: self.verdict(False, t))
            engine.emit(XauthCheck(self.sa.ike_id, request_id, self.user, password,
                                   self.state))
            return
        self.verdict(check_password(engine.config.xauth_secret(self.user), password), now)

    def challenge(self, message: str, state: bytes, now: float) -> None:
        """The checker wants another answer (a RADIUS Access-Challenge): ask the
        client again, showing ``message`` (draft-beaulieu-ike-xauth-02 section 6.2:
        XAUTH-MESSAGE in a REQUEST, here with the user name and password asked
        for again, which is what generic clients answer)."""
        if self.ended or self.verdict_sent is not None:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.challenges += 1
        if self.challenges > MAX_XAUTH_CHALLENGES:
            self.sa.ctx.logs.log(log, logging.WARNING, "xauth-challenges", now,
                                 "XAUTH: user '%s' challenged %d times: giving up",
                                 printable(self.user), MAX_XAUTH_CHALLENGES,
                                 extra=self.sa.log_extra)
            self.verdict(False, now)
            return
        self.state = state
        log.info("XAUTH: challenging user '%s' (round %d of at most %d): %s",
                 printable(self.user), self.challenges, MAX_XAUTH_CHALLENGES,
                 printable(message, 128), extra=self.sa.log_extra)
        text = message.encode("utf-8")[:MAX_XAUTH_FIELD]
        identifier = int.from_bytes(self.sa.ctx.random_bytes(2), "big")
        self.send(AttributePayload(ModeCfgType.ISAKMP_CFG_REQUEST, identifier, (
            Attribute(A.XAUTH_TYPE, XauthType.GENERIC),
            Attribute(A.XAUTH_MESSAGE, text),
            Attribute(A.XAUTH_USER_NAME, b""),
            Attribute(A.XAUTH_USER_PASSWORD, b""),
        )), now, self._reply)

    def verdict(self, ok: bool, now: float) -> None:
        """Tell the client (draft-beaulieu-ike-xauth-02 section 4.1: CFG_SET with
        XAUTH-STATUS, which it acknowledges)."""
        if self.ended or self.verdict_sent is not None:
            return
        if self.timer is not None:
            self.timer.cancel()
        sa = self.sa
        if ok:
            # unique = "keep" compares the whole identity, the XAUTH user included,
            # so it is asked only now that the user is proven.
            sa.xauth_user = self.user
            if sa.ctx.refuses_identity(sa):
                sa.xauth_user = None
                self.verdict_sent = False
                self.send(AttributePayload(
                    ModeCfgType.ISAKMP_CFG_SET,
                    int.from_bytes(sa.ctx.random_bytes(2), "big"),
                    (Attribute(A.XAUTH_STATUS, XAUTH_FAIL),),
                ), now, lambda answer, t: self.fail(
                    f"refused: an ISAKMP SA of user '{printable(self.user)}' is up "
                    "already (unique = keep)", t))
                return
        self.verdict_sent = ok
        if not ok:
            sa.ctx.logs.log(log, logging.WARNING, "xauth-failed", now,
                            "XAUTH authentication failed for user '%s'", printable(self.user),
                            extra=sa.log_extra)
        identifier = int.from_bytes(sa.ctx.random_bytes(2), "big")
        self.status = self.send(AttributePayload(ModeCfgType.ISAKMP_CFG_SET, identifier, (
            Attribute(A.XAUTH_STATUS, XAUTH_OK if ok else XAUTH_FAIL),
        )), now, lambda answer, t: self._finish(t, acknowledged=True))

    def _finish(self, now: float, acknowledged: bool = False) -> None:
        if self.ended:
            return
        sa = self.sa
        if not self.verdict_sent:
            self.fail(f"XAUTH authentication failed for user '{printable(self.user)}'", now)
            return
        status = self.status
        if acknowledged and status is not None and status.end_iv is not None:
            # The client acknowledged our status: a Mode Config push continues this
            # exchange (see ModeConfigServer.start).
            sa.push_continues = (status.message_id, status.end_iv)
        sa.xauth_user = self.user
        log.info("XAUTH authentication of '%s' successful", printable(self.user),
                 extra=sa.log_extra)
        self.ended = True
        sa.work.ended(self)
        self.rw.engine.lifecycle.phase1_established(sa, now)
        self.rw.engine.lifecycle.run_work(sa, now)

    def on_request(self, request: AttributePayload, now: float) -> Answer | None:
        if self.verdict_sent:
            # The client starts the next exchange only once it has our status: our
            # CFG_SET arrived, though its acknowledgement did not (yet).
            for exchange in list(self.sa.exchanges.values()):
                if isinstance(exchange, Transaction) and exchange.initiator:
                    exchange.cancel()
                    self.sa.end_exchange(exchange.message_id)
            self._finish(now)
            if self.sa.state is IkeState.DELETING:
                return None
            return self.rw.request(self.sa, request, now)
        return super().on_request(request, now)


def check_password(expected: bytes | None, received: bytes) -> bool:
    """Constant time, also for an unknown user (compared with a dummy)."""
    if expected is None:
        hmac.compare_digest(received, received)
        return False
    return hmac.compare_digest(expected, received)


class XauthClient(Step):
    kind = WorkKind.XAUTH
    what = "XAUTH"

    def start(self, now: float) -> None:
        self.wait(now, "the server's XAUTH request")

    @property
    def user(self) -> str:
        conn = self.sa.conn
        round_ = conn.local_xauth if conn is not None else None
        return (round_.xauth_id or "") if round_ is not None else ""

    def on_request(self, request: AttributePayload, now: float) -> Answer | None:
        sa = self.sa
        if request.cfg_type == ModeCfgType.ISAKMP_CFG_REQUEST:
            asked = {a.type: a.value for a in request.attributes}
            kind = asked.get(A.XAUTH_TYPE, XauthType.GENERIC)
            if isinstance(kind, int) and kind != XauthType.GENERIC:
                log.warning("the server asks for XAUTH type %s; answering with a password",
                            XauthType(kind).name, extra=sa.log_extra)
            message = asked.get(A.XAUTH_MESSAGE)
            if isinstance(message, bytes) and message:
                # A server's prompt, e.g. a RADIUS challenge: we answer every request
                # with the configured password, as strongSwan's xauth-generic does.
                sa.ctx.logs.log(log, logging.INFO, "xauth-message", now,
                                "XAUTH: the server says: %s",
                                printable(message.decode("utf-8", "replace"), 128),
                                extra=sa.log_extra)
            password = self.rw.engine.config.xauth_secret(self.user)
            if password is None:
                self.fail(f"no password for user '{self.user}'", now)
                return None
            attributes = [Attribute(A.XAUTH_USER_NAME, self.user.encode()),
                          Attribute(A.XAUTH_USER_PASSWORD, password)]
            if A.XAUTH_TYPE in asked:
                attributes.insert(0, Attribute(A.XAUTH_TYPE, XauthType.GENERIC))
            return Answer(AttributePayload(ModeCfgType.ISAKMP_CFG_REPLY, request.identifier,
                                           tuple(attributes)))
        status = next((a.int_value() for a in request.attributes
                       if a.type == A.XAUTH_STATUS), None)
        if status is None:
            return super().on_request(request, now)
        ack = AttributePayload(ModeCfgType.ISAKMP_CFG_ACK, request.identifier,
                               (Attribute(A.XAUTH_STATUS, b""),))
        return Answer(ack, lambda t: self._status(status == XAUTH_OK, t))

    def _status(self, ok: bool, now: float) -> None:
        if self.ended:
            return
        sa = self.sa
        if not ok:
            # The server deletes the SA (draft-beaulieu-ike-xauth-02 section 4.1).
            self.fail(f"XAUTH authentication failed for user '{self.user}': the server "
                      "refused it", now, tell_peer=False)
            return
        sa.xauth_user = self.user
        log.info("XAUTH authentication of '%s' (myself) successful", self.user,
                 extra=sa.log_extra)
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
        sa.work.ended(self)
        self.rw.engine.lifecycle.phase1_established(sa, now)
        self.rw.engine.lifecycle.run_work(sa, now)


class ModeConfigServer(Step):
    kind = WorkKind.MODE_CONFIG
    what = "Mode Config"

    def __init__(self, rw: RoadWarrior, sa: IkeSa, push: bool) -> None:
        super().__init__(rw, sa)
        self.push = push

    def start(self, now: float) -> None:
        if not self.push:
            self.wait(now, "the client's Mode Config request")
            return
        # Exhausted: a CFG_SET without an address, as for a pull (see on_request).
        # Pushed, one address of each family the connection's pools have.
        conn, pools = self.sa.conn, self.rw.engine.pools
        families = dict.fromkeys(pools[name].version for name in (conn.pools if conn else ())
                                 if name in pools)
        attributes = self.rw.lease(self.sa, [(f, None) for f in families], now) or []
        identifier = int.from_bytes(self.sa.ctx.random_bytes(2), "big")
        # After XAUTH the CFG_SET goes under the message ID of our XAUTH status
        # exchange, continuing its CBC chain from the client's ACK, as Libreswan's
        # server does. Libreswan's client (4.10) takes a push only that way: it files
        # a Transaction under a new message ID as a new XAUTH round (its
        # STATE_XAUTH_I0 -> STATE_XAUTH_I1), which then waits for an XAUTH status
        # that never comes, times out and deletes the ISAKMP SA; only a message
        # under the ID it has kept from the status exchange (its phase 1.5 ID)
        # takes it to "IKE SA established". strongSwan's client, which keeps CBC
        # chains per message ID (RFC 2409 Appendix B), and ours take either form.
        # Without XAUTH, a new exchange (draft-dukes-ike-mode-cfg-02 section 3.2).
        continuing, self.sa.push_continues = self.sa.push_continues, None
        self.send(AttributePayload(ModeCfgType.ISAKMP_CFG_SET, identifier, tuple(attributes)),
                  now, lambda answer, t: self.done(t), continuing)

    def on_request(self, request: AttributePayload, now: float) -> Answer | None:
        if self.push or request.cfg_type != ModeCfgType.ISAKMP_CFG_REQUEST:
            return super().on_request(request, now)
        attributes = self.rw.lease(self.sa, requested_addresses(request), now)
        reply = AttributePayload(ModeCfgType.ISAKMP_CFG_REPLY, request.identifier,
                                 tuple(attributes or ()))
        # Exhausted: the answer carries no address (draft-dukes section 3.2 has no
        # error code for it), as strongSwan's does. The client gives up, or its
        # Quick Modes find no tunnel: without a lease a child with a dynamic
        # remote_ts matches nothing. Deleting the SA instead makes clients such
        # as strongSwan initiate again at once, and again.
        return Answer(reply, self.done)


def requested_addresses(request: AttributePayload) -> list[tuple[int, IPAddress | None]]:
    """Per address family the client asks for (INTERNAL_IP4_ADDRESS,
    INTERNAL_IP6_ADDRESS; a dual-stack client sends both), in its order: (the
    family, the address it would like or None)."""
    out: dict[int, IPAddress | None] = {}
    for attribute in request.attributes:
        value = attribute.value
        if attribute.type == A.INTERNAL_IP4_ADDRESS and 4 not in out:
            out[4] = (ipaddress.IPv4Address(value) if isinstance(value, bytes)
                      and len(value) == 4 and any(value) else None)
        elif attribute.type == A.INTERNAL_IP6_ADDRESS and 6 not in out:
            out[6] = (ipaddress.IPv6Address(value[:16]) if isinstance(value, bytes)
                      and len(value) in (16, 17) and any(value[:16]) else None)
    return list(out.items())


class ModeConfigClient(Step):
    kind = WorkKind.MODE_CONFIG
    what = "Mode Config"

    def __init__(self, rw: RoadWarrior, sa: IkeSa, push: bool) -> None:
        super().__init__(rw, sa)
        self.push = push

    def start(self, now: float) -> None:
        if self.push:
            self.wait(now, "the server's Mode Config push")
            return
        sa = self.sa
        attributes: list[Attribute] = []
        for vip in self.vips():
            if vip.version == 4:
                attributes += [Attribute(A.INTERNAL_IP4_ADDRESS,
                                         b"" if vip.is_unspecified else vip.packed),
                               Attribute(A.INTERNAL_IP4_DNS, b"")]
            else:
                attributes += [Attribute(A.INTERNAL_IP6_ADDRESS,
                                         b"" if vip.is_unspecified else _address_bytes(vip)),
                               Attribute(A.INTERNAL_IP6_DNS, b"")]
        identifier = int.from_bytes(sa.ctx.random_bytes(2), "big")
        self.send(AttributePayload(ModeCfgType.ISAKMP_CFG_REQUEST, identifier,
                                   tuple(attributes)), now,
                  lambda reply, t: self.apply(reply, t))

    def vips(self) -> list[IPAddress]:
        """The addresses to ask for: the configured ones, where the renewed SA had
        an address of that family, that one again."""
        conn = self.sa.conn
        out = [ipaddress.ip_address(v) for v in (conn.vips if conn is not None else ())]
        previous = {a.version: a for a in self.sa.previous_vips}
        return [previous.get(v.version, v) if v.is_unspecified else v for v in out]

    def on_request(self, request: AttributePayload, now: float) -> Answer | None:
        if not self.push or request.cfg_type != ModeCfgType.ISAKMP_CFG_SET:
            return super().on_request(request, now)
        received = read_config(request.attributes)
        ack = AttributePayload(ModeCfgType.ISAKMP_CFG_ACK, request.identifier,
                               tuple(Attribute(k, b"") for k in received.accepted))
        return Answer(ack, lambda t: self.apply(request, t))

    def apply(self, payload: AttributePayload, now: float) -> None:
        sa = self.sa
        received = read_config(payload.attributes)
        self.rw.note_odd_attributes(sa, received, now)
        if not received.addresses:
            self.fail("the server assigned no virtual IP", now)
            return
        # One address per family (a dual-stack server answers 0.0.0.0 and :: with
        # one of each); a second one of a family would have no use here.
        by_family: dict[int, IPAddress] = {}
        for address in received.addresses:
            by_family.setdefault(address.version, address)
        sa.local_vips = tuple(by_family.values())
        sa.vip_dns = tuple(received.dns)
        sa.vip_split = tuple(received.split)
        log.info("virtual IP%s %s assigned%s%s", "s" if len(sa.local_vips) > 1 else "",
                 ", ".join(map(str, sa.local_vips)),
                 f", DNS {', '.join(map(str, received.dns))}" if received.dns else "",
                 f", split networks {', '.join(map(str, received.split))}"
                 if received.split else "", extra=sa.log_extra)
        previous = sa.previous_vips
        sa.previous_vips = ()
        engine = self.rw.engine
        for address in previous:
            if address not in sa.local_vips:
                engine.emit(VirtualIpReleased(sa.name, sa.ike_id, address))
        for address in sa.local_vips:
            engine.emit(VirtualIpAssigned(sa.name, sa.ike_id, address, sa.vip_dns,
                                          sa.vip_split))
        self.done(now)


def _deduplicated(attributes: list[Attribute]) -> list[Attribute]:
    """Each attribute once: two pools may announce the same DNS server or network."""
    return list(dict.fromkeys(attributes))


# -- the engine part ------------------------------------------------------------------


class RoadWarrior:
    """Queues and runs the XAUTH and Mode Config steps of the engine's SAs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._checks: dict[int, XauthServer] = {}
        self._check_ids = itertools.count(1)

    def wait_budget(self) -> float:
        """As long as our own retransmissions would try: the peer retries as much."""
        daemon = self.engine.config.daemon
        return float(sum(daemon.retransmit_timeout * 2.0 ** n
                         for n in range(max(daemon.retransmit_tries, 1))))

    def authenticated(self, sa: IkeSa) -> bool:
        """Main Mode is done: queue what the connection asks for; True if XAUTH
        comes first (the SA is established only after it)."""
        conn = sa.conn
        client = xauth_client(sa)
        if client is not None:
            sa.work.add(XauthWork(server=not client))
        if conn is not None and conn.vips:
            sa.work.add(ModeConfigWork(server=False, push=conn.modecfg is ModeCfg.PUSH))
        elif conn is not None and conn.pools:
            sa.work.add(ModeConfigWork(server=True, push=conn.modecfg is ModeCfg.PUSH))
        return client is not None

    def run(self, sa: IkeSa, work: object, now: float) -> None:
        step: Step
        if isinstance(work, XauthWork):
            step = XauthServer(self, sa) if work.server else XauthClient(self, sa)
        elif isinstance(work, ModeConfigWork):
            step = (ModeConfigServer(self, sa, work.push) if work.server
                    else ModeConfigClient(self, sa, work.push))
        else:
            return
        sa.work.running = step
        step.start(now)

    def request(self, sa: IkeSa, request: AttributePayload, now: float) -> Answer | None:
        """A Transaction request of the peer's: the running step answers it."""
        running = sa.work.running
        if isinstance(running, Step):
            return running.on_request(request, now)
        if request.cfg_type == ModeCfgType.ISAKMP_CFG_REQUEST and sa.leases:
            # A repeated pull after the lease was given: the same lease again.
            attributes = self.lease(sa, requested_addresses(request), now)
            return Answer(AttributePayload(ModeCfgType.ISAKMP_CFG_REPLY, request.identifier,
                                           tuple(attributes or ())))
        self.unexpected(sa, request, now)
        if request.cfg_type == ModeCfgType.ISAKMP_CFG_REQUEST:
            # Nothing to give: say so at once rather than let the peer retry.
            return Answer(AttributePayload(ModeCfgType.ISAKMP_CFG_REPLY, request.identifier, ()))
        return None

    def unexpected(self, sa: IkeSa, request: AttributePayload, now: float) -> None:
        sa.ctx.logs.log(log, logging.INFO, "tx-unexpected", now,
                        "ignoring %s from the peer: nothing of ours expects it",
                        cfg_name(request.cfg_type), extra=sa.log_extra)

    def note_odd_attributes(self, sa: IkeSa, received: ReceivedConfig, now: float) -> None:
        if received.unknown:
            sa.ctx.logs.log(log, logging.INFO, "modecfg-unknown", now,
                            "ignoring Mode Config attributes %s",
                            ", ".join(ModeCfgAttr(k).name for k in received.unknown[:8]),
                            extra=sa.log_extra)
        if received.malformed:
            sa.ctx.logs.log(log, logging.INFO, "modecfg-malformed", now,
                            "ignoring malformed Mode Config attributes %s",
                            ", ".join(ModeCfgAttr(k).name for k in received.malformed[:8]),
                            extra=sa.log_extra)

    # -- pools -------------------------------------------------------------------------

    def owner(self, sa: IkeSa) -> Owner:
        return (sa.local_id, sa.remote_id, sa.xauth_user or "")

    def lease(self, sa: IkeSa, wanted: list[tuple[int, IPAddress | None]],
              now: float) -> list[Attribute] | None:
        """An address for the peer from the connection's pools per family it asks
        for (``wanted`` from ``requested_addresses``; empty: one address from the
        first pool that has one), its own leases again if it has them, and the
        attributes that announce them; None if it gets no address at all."""
        conn = sa.conn
        if conn is None:
            return None
        pools = [self.engine.pools[name] for name in conn.pools if name in self.engine.pools]
        families = {family for family, _ in wanted}
        served = [p for p in pools if p.version in families]
        if len(wanted) > 1 or served:
            # Each family from its own pools: a dual-stack client gets one address
            # of each, and none of a family without a pool.
            asks: list[tuple[list[Pool], int | None, IPAddress | None]] = [
                ([p for p in pools if p.version == family], family, address)
                for family, address in wanted]
        else:
            # No family asked for, or one that no pool serves: the first pool that
            # has an address, as before dual stack (strongSwan answers a request
            # for 0.0.0.0 from an IPv6-only pool alike).
            asks = [(pools, None, wanted[0][1] if wanted else None)]
        attributes: list[Attribute] = []
        for candidates, family, address in asks:
            got = self._lease_one(sa, candidates, family, address)
            if got is not None:
                attributes += self._announce(got[1], got[0].config.prefix,
                                             got[0].config.dns, got[0].config.split_include)
        if not sa.remote_vips or not attributes:
            names = (", ".join(p.name for c, _, _ in asks for p in c)
                     or ", ".join(conn.pools) or "(none)")
            sa.ctx.logs.log(log, logging.WARNING, "pool-exhausted", now,
                            "no address for %s: pool %s exhausted", sa.remote_id, names,
                            extra=sa.log_extra)
            return None
        return _deduplicated(attributes)

    def _lease_one(self, sa: IkeSa, pools: list[Pool], family: int | None,
                   wanted: IPAddress | None) -> tuple[Pool, IPAddress] | None:
        """The address of ``family`` (any, when None) the SA holds already, else a
        new lease from the first of ``pools`` that has one; None if none has."""
        for (name, _owner), held_address in zip(sa.leases, sa.remote_vips, strict=True):
            if family is None or held_address.version == family:
                held = self.engine.pools.get(name)
                return (held, held_address) if held is not None else None
        owner = self.owner(sa)
        for pool in pools:
            if pool.version in {a.version for a in sa.remote_vips}:
                continue
            address = pool.acquire(owner, wanted)
            if address is None:
                continue
            sa.leases += ((pool.name, owner),)
            sa.remote_vips += (address,)
            sa.vip_dns = tuple(dict.fromkeys(sa.vip_dns + pool.config.dns))
            sa.vip_split = tuple(dict.fromkeys(sa.vip_split + pool.config.split_include))
            log.info("assigned virtual IP %s from pool %s to %s%s", address, pool.name,
                     sa.remote_id, f" (user '{printable(sa.xauth_user)}')"
                     if sa.xauth_user else "", extra=sa.log_extra)
            return pool, address
        return None

    @staticmethod
    def _announce(address: IPAddress, prefix: int, dns: Iterable[IPAddress],
                  split: tuple[Network, ...]) -> list[Attribute]:
        out: list[Attribute] = []
        if address.version == 4:
            out += [Attribute(A.INTERNAL_IP4_ADDRESS, address.packed),
                    Attribute(A.INTERNAL_IP4_NETMASK, _netmask(prefix))]
        else:
            out.append(Attribute(A.INTERNAL_IP6_ADDRESS, _address_bytes(address, prefix)))
        for server in dns:
            out.append(Attribute(A.INTERNAL_IP4_DNS if server.version == 4
                                 else A.INTERNAL_IP6_DNS, server.packed))
        out += [_subnet(net) for net in split]
        unity = _unity_split(split)
        if unity is not None:
            out.append(unity)
        return out

    # -- XAUTH with an outside check (RADIUS) ------------------------------------------

    def pending_check(self, step: XauthServer) -> int:
        request_id = next(self._check_ids)
        self._checks[request_id] = step
        return request_id

    def xauth_result(self, request_id: int, ok: bool, now: float) -> None:
        step = self._checks.pop(request_id, None)
        if step is None or step.sa.state is IkeState.DELETING or step.ended:
            return
        step.verdict(ok, now)

    def xauth_challenge(self, request_id: int, message: str, state: bytes,
                        now: float) -> None:
        step = self._checks.pop(request_id, None)
        if step is None or step.sa.state is IkeState.DELETING or step.ended:
            return
        step.challenge(message, state, now)

    # -- the end of an SA ----------------------------------------------------------------

    def fail(self, sa: IkeSa, reason: str, now: float, *, tell_peer: bool = True) -> None:
        """XAUTH or Mode Config failed: the ISAKMP SA goes, with a Delete."""
        if sa.state is IkeState.DELETING:
            return
        sa.ctx.logs.log(log, logging.WARNING, "rw-failed", now, "%s", reason,
                        extra=sa.log_extra)
        deletion = self.engine.deletion
        if not tell_peer:
            pass
        elif not sa.usable:
            # Not established yet, so Deletion would not tell the peer; it has
            # keys, though, and should hear that this SA is gone (RFC 2408 3.15).
            sa.send_informational([DeletePayload(protocol_id=ProtocolId.ISAKMP,
                                                 spis=(sa.cky_i + sa.cky_r,))])
        elif sa.initiator:
            self.engine.emit(ConnectionFailed(sa.name, None, reason))
        deletion.delete_sa(sa, reason, send=tell_peer)

    def dropped(self, sa: IkeSa) -> None:
        """The SA is gone: its lease goes offline, its virtual IP is released."""
        for request_id in [k for k, v in self._checks.items() if v.sa is sa]:
            del self._checks[request_id]
        for name, owner in sa.leases:
            pool = self.engine.pools.get(name)
            if pool is not None:
                pool.release(owner)
        sa.leases = sa.remote_vips = ()
        addresses = sa.local_vips or sa.previous_vips
        sa.local_vips = sa.previous_vips = ()
        for address in addresses:
            self.engine.emit(VirtualIpReleased(sa.name, sa.ike_id, address))

    @staticmethod
    def hand_over(old: IkeSa, new: IkeSa) -> None:
        """A renewed ISAKMP SA keeps its predecessor's virtual IP (it asks for it again)."""
        addresses = old.local_vips or old.previous_vips
        if addresses and not new.local_vips:
            new.previous_vips = addresses
            old.local_vips = old.previous_vips = ()
