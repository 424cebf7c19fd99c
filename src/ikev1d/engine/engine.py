"""The protocol engine: routes messages to ISAKMP SAs and their exchanges.

Sans-I/O in the aioquic manner (STYLE.md): ``receive_datagram``,
``initiate``, ``handle_timer`` go in; ``datagrams_to_send``, ``events`` and
``get_timer`` come out. Bad input from the network is answered with a
notification or dropped, logged, and never raises out of here.
"""

from __future__ import annotations

import hmac
import ipaddress
import itertools
import logging
from collections.abc import Callable
from typing import Any

from ikev1d.config import Config, ConnectionConfig, Identity
from ikev1d.crypto import informational_hash
from ikev1d.engine.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    ConnectionFailed,
    Datagram,
    Endpoint,
    EngineError,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
)
from ikev1d.engine.ike_sa import (
    ChildSa,
    IkeSa,
    IkeState,
    ProtocolFailure,
)
from ikev1d.engine.main_mode import MainMode, MmState
from ikev1d.engine.quick_mode import QmState, QuickMode, QuickModeRefused
from ikev1d.engine.rules import INFORMATIONAL, check
from ikev1d.engine.timers import Timers
from ikev1d.engine.vendor import Extension
from ikev1d.wire import (
    DeletePayload,
    ExchangeType,
    Flags,
    Header,
    NotifyPayload,
    NotifyType,
    ProtocolId,
    WireError,
    decode_payloads,
    split_message,
)

log = logging.getLogger("ikev1d.engine")

_AUTH_NAMES = {1: "psk"}
DROP_LOG_INTERVAL_S = 5.0


def notify_name(value: int) -> str:
    """RFC 2408 spells notification names with hyphens, as logs and people do."""
    return NotifyType(value).name.replace("_", "-")


class Engine:
    def __init__(self, config: Config, *, random_bytes: Callable[[int], bytes]) -> None:
        self.config = config
        self.timers = Timers()
        self._random = random_bytes
        self._out: list[Datagram] = []
        self._events: list[Event] = []
        self._ids = itertools.count(1)
        self._sas: dict[bytes, IkeSa] = {}
        """Every ISAKMP SA by CKY-I | CKY-R."""
        self._initiating: dict[bytes, IkeSa] = {}
        """Our Main Mode requests not answered yet, by CKY-I."""
        self._half_open: dict[tuple[bytes, str], IkeSa] = {}
        """Responder SAs before authentication, by (CKY-I, peer address)."""
        self._main_modes: dict[int, MainMode] = {}
        self._spis: set[bytes] = set()
        self._half_open_per_peer: dict[str, int] = {}
        self._drop_log: dict[str, tuple[float, int]] = {}
        # Configuration lookups per peer, done once per configuration (they parse
        # addresses and IDs, which showed in handshake profiles).
        self._candidates_cache: dict[tuple[str, str], list[ConnectionConfig]] = {}
        self._psk_cache: dict[tuple[Identity | str | None, Identity | str], bytes | None] = {}

    # -- Context for SAs and exchanges -------------------------------------------

    def random_bytes(self, n: int) -> bytes:
        return self._random(n)

    def send(self, datagram: Datagram) -> None:
        self._out.append(datagram)

    def emit(self, event: Event) -> None:
        self._events.append(event)

    def next_id(self) -> int:
        return next(self._ids)

    def psk_for(self, local_id: Identity | str | None, remote: Identity | str) -> bytes | None:
        key = (local_id, remote)
        if key not in self._psk_cache:
            self._psk_cache[key] = self.config.psk_for(local_id, remote)
        return self._psk_cache[key]

    def _connections_for(self, local: str, remote: str) -> list[ConnectionConfig]:
        key = (local, remote)
        cached = self._candidates_cache.get(key)
        if cached is None:
            cached = list(self.config.connections_for_addresses(local, remote))
            self._candidates_cache[key] = cached
        return cached

    def allocate_spi(self) -> bytes:
        while True:
            spi = self._random(4)
            if int.from_bytes(spi, "big") >= 0x100 and spi not in self._spis:
                self._spis.add(spi)
                return spi

    # -- outputs --------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def get_timer(self) -> float | None:
        return self.timers.next_deadline()

    def handle_timer(self, now: float) -> None:
        self._guard(lambda: self.timers.run_due(now), None)

    # -- commands -------------------------------------------------------------------

    def initiate(self, conn: str, child: str | None, now: float) -> None:
        config = self.config.connections.get(conn)
        if config is None:
            raise EngineError(f"no connection named {conn!r}")
        if child is not None and child not in config.children:
            raise EngineError(f"connection {conn!r} has no child {child!r}")
        children = [child] if child is not None else list(config.children)
        for sa in self._sas_of(conn):
            if sa.state is IkeState.ESTABLISHED:
                for name in children:
                    self._start_quick_modes(sa, name, now)
                return
            if sa.state is IkeState.CONNECTING and sa.initiator:
                if sa.requested_children is not None:
                    sa.requested_children += [c for c in children if c not in sa.requested_children]
                return
        remote = next((a for a in config.remote_addrs if a != "%any"), None)
        if remote is None:
            raise EngineError(f"connection {conn!r} has no remote address to initiate to")
        local = config.local_addrs[0] if config.local_addrs else self._default_local(remote)
        port = self.config.daemon.port
        sa = IkeSa(
            self, initiator=True, local=(local, port), remote=(remote, port),
            conn=config, candidates=[config], now=now,
        )
        sa.requested_children = children
        mm = MainMode(sa)
        self._main_modes[sa.ike_id] = mm
        try:
            mm.start(now)
        except ProtocolFailure as exc:
            raise EngineError(str(exc)) from exc
        self._initiating[sa.cky_i] = sa
        log.info("initiating Main Mode", extra=sa.log_extra)

    def _default_local(self, remote: str) -> str:
        family = ipaddress.ip_address(remote).version
        for address in self.config.daemon.listen:
            if ipaddress.ip_address(address).version == family and not ipaddress.ip_address(
                address
            ).is_unspecified:
                return address
        raise EngineError("set local_addrs on the connection to initiate it")

    def terminate(self, conn: str, now: float) -> None:
        if conn not in self.config.connections and not self._sas_of(conn):
            raise EngineError(f"no connection named {conn!r}")
        for sa in self._sas_of(conn):
            self._delete_sa(sa, "deleted by local request", send=True)

    def install_failed(self, child_id: int, reason: str, now: float) -> None:
        """The data plane could not install an IPsec SA: delete it, telling the peer,
        so that nothing is left half-installed on either side."""
        for sa in self._all_sas():
            for child in list(sa.children):
                if child.child_id == child_id:
                    self._delete_child(sa, child, reason, send=True)

    def shutdown(self, now: float) -> None:
        for sa in list(self._all_sas()):
            self._delete_sa(sa, "daemon shutting down", send=True)

    def reload(self, config: Config, now: float) -> None:
        self.config = config
        self._candidates_cache.clear()
        self._psk_cache.clear()
        for sa in list(self._all_sas()):
            new = config.connections.get(sa.name)
            if new is None:
                self._delete_sa(sa, "connection removed from the configuration", send=True)
            else:
                sa.conn = new
        for name, conn in config.connections.items():
            if conn.start_action == "start" and not self._sas_of(name):
                try:
                    self.initiate(name, None, now)
                except EngineError as exc:
                    log.warning("cannot start %s: %s", name, exc, extra={"conn": name})

    def start(self, now: float) -> None:
        """Initiate the connections and children configured with start_action = "start"."""
        for name, conn in self.config.connections.items():
            wanted = conn.start_action == "start" or any(
                c.start_action == "start" for c in conn.children.values()
            )
            if wanted:
                try:
                    self.initiate(name, None, now)
                except EngineError as exc:
                    log.warning("cannot start %s: %s", name, exc, extra={"conn": name})

    # -- input --------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        self._guard(lambda: self._receive(data, local, remote, now), remote)

    def _guard(self, action: Callable[[], None], remote: Endpoint | None) -> None:
        try:
            action()
        except Exception as exc:
            log.error(
                "internal error while handling %s: %s",
                f"a message from {remote[0]}" if remote else "a timer", exc,
                extra={"peer": remote[0] if remote else "-"},
            )
            log.debug("traceback", exc_info=True)

    def _receive(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        try:
            header, body = split_message(data)
        except WireError as exc:
            log.info("dropping malformed message from %s: %s", remote[0], exc,
                     extra={"peer": f"{remote[0]}:{remote[1]}"})
            return
        zero = bytes(8)
        if header.exchange_type == ExchangeType.AGGRESSIVE:
            self._refuse_aggressive(header, local, remote)
            return
        if header.responder_cookie == zero:
            if header.exchange_type == ExchangeType.IDENTITY_PROTECTION:
                existing = self._half_open.get((header.initiator_cookie, remote[0]))
                if existing is not None:
                    self._main_mode(existing, header, body, data, local, remote, now)
                else:
                    self._new_responder(header, body, data, local, remote, now)
                return
            sa = self._initiating.get(header.initiator_cookie)
            if sa is not None and header.exchange_type == ExchangeType.INFORMATIONAL:
                self._plain_informational(sa, header, body, now)
            return
        key = header.initiator_cookie + header.responder_cookie
        sa = self._sas.get(key)
        if sa is None:
            pending = self._initiating.get(header.initiator_cookie)
            if pending is not None and pending.remote[0] == remote[0]:
                if header.exchange_type == ExchangeType.INFORMATIONAL:
                    self._plain_informational(pending, header, body, now)
                    return
                if header.exchange_type != ExchangeType.IDENTITY_PROTECTION:
                    return
                sa = pending
                del self._initiating[sa.cky_i]
                sa.cky_r = header.responder_cookie
                self._sas[key] = sa
        if sa is None:
            log.info("dropping %s for an unknown ISAKMP SA %s:%s",
                     ExchangeType(header.exchange_type).name, header.initiator_cookie.hex(),
                     header.responder_cookie.hex(), extra={"peer": f"{remote[0]}:{remote[1]}"})
            return
        if remote[0] != sa.remote[0]:
            log.info("dropping message for this SA from another address %s", remote[0],
                     extra=sa.log_extra)
            return
        exchange = header.exchange_type
        if exchange == ExchangeType.IDENTITY_PROTECTION:
            self._main_mode(sa, header, body, data, local, remote, now)
        elif exchange == ExchangeType.QUICK_MODE:
            self._quick_mode(sa, header, body, data, now)
        elif exchange == ExchangeType.INFORMATIONAL:
            if header.flags & Flags.ENCRYPTION:
                self._informational(sa, header, body, now)
            else:
                self._plain_informational(sa, header, body, now)
        else:
            log.info("ignoring unsupported %s exchange", ExchangeType(exchange).name,
                     extra=sa.log_extra)

    def _refuse_aggressive(self, header: Header, local: Endpoint, remote: Endpoint) -> None:
        """Seed 43.6.1: Aggressive Mode is not implemented. Say so, keep nothing."""
        extra = {"peer": f"{remote[0]}:{remote[1]}"}
        if header.responder_cookie != bytes(8):
            return
        log.warning("Aggressive Mode is not supported: refusing request from %s (use Main Mode)",
                    remote[0], extra=extra)
        from ikev1d.wire import encode_header, encode_payloads

        cky_r = self._random(8)
        notify = NotifyPayload(
            notify_type=NotifyType.INVALID_EXCHANGE_TYPE,
            spi=header.initiator_cookie + cky_r,
            protocol_id=ProtocolId.ISAKMP,
        )
        body = encode_payloads([notify])
        out = Header(
            initiator_cookie=header.initiator_cookie, responder_cookie=cky_r,
            next_payload=notify.payload_type, exchange_type=ExchangeType.INFORMATIONAL,
            flags=0, message_id=0,
        )
        self.send(Datagram(encode_header(out, len(body)) + body, local, remote))

    # -- Main Mode ---------------------------------------------------------------------

    def _new_responder(
        self, header: Header, body: bytes, raw: bytes, local: Endpoint, remote: Endpoint,
        now: float,
    ) -> None:
        extra = {"peer": f"{remote[0]}:{remote[1]}"}
        daemon = self.config.daemon
        per_peer = self._half_open_per_peer.get(remote[0], 0)
        if per_peer >= daemon.half_open_per_peer or len(self._half_open) >= daemon.half_open_total:
            # One line per peer every few seconds: a flood must not flood the log too.
            last, suppressed = self._drop_log.get(remote[0], (-1e9, 0))
            if now - last >= DROP_LOG_INTERVAL_S:
                log.warning("dropping Main Mode request from %s: too many half-open SAs "
                            "(%d from this peer, %d in all; %d more dropped since the last "
                            "such line)", remote[0], per_peer, len(self._half_open), suppressed,
                            extra=extra)
                self._drop_log[remote[0]] = (now, 0)
            else:
                self._drop_log[remote[0]] = (last, suppressed + 1)
            return
        candidates = self._connections_for(local[0], remote[0])
        specific = [c for c in candidates if remote[0] in c.remote_addrs]
        pool = specific or candidates
        if not pool:
            log.warning("no connection for a Main Mode request from %s to %s", remote[0],
                        local[0], extra=extra)
            return
        sa = IkeSa(self, initiator=False, local=local, remote=remote, conn=pool[0],
                   candidates=pool, now=now)
        mm = MainMode(sa)
        self._main_modes[sa.ike_id] = mm
        try:
            mm.first_message(header, body, raw, now)
        except ProtocolFailure as exc:
            log.warning("Main Mode request refused: %s", exc, extra=sa.log_extra)
            self._main_modes.pop(sa.ike_id, None)
            return
        if mm.state is MmState.FAILED:
            return
        self._half_open[(sa.cky_i, remote[0])] = sa
        self._half_open_per_peer[remote[0]] = per_peer + 1
        self._sas[sa.cky_i + sa.cky_r] = sa
        sa.schedule(now + daemon.half_open_timeout, lambda t: self._half_open_expired(sa))

    def _half_open_expired(self, sa: IkeSa) -> None:
        if sa.state is IkeState.CONNECTING:
            log.info("half-open ISAKMP SA expired", extra=sa.log_extra)
            self._drop_sa(sa)

    def _main_mode(
        self, sa: IkeSa, header: Header, body: bytes, raw: bytes, local: Endpoint,
        remote: Endpoint, now: float,
    ) -> None:
        mm = self._main_modes.get(sa.ike_id)
        if mm is None:
            return
        if mm.state in (MmState.DONE, MmState.FAILED):
            mm.process(header, body, raw, now)
            return
        if not sa.initiator and (local[1] != sa.local[1] or remote[1] != sa.remote[1]):
            # RFC 3947 section 4: the initiator moved to port 4500; follow it.
            sa.local, sa.remote = local, remote
        try:
            mm.process(header, body, raw, now)
        except ProtocolFailure as exc:
            mm.fail(str(exc), now, exc.notify)

    def on_phase1_established(self, sa: IkeSa, now: float) -> None:
        sa.state = IkeState.ESTABLISHED
        sa.established_at = now
        self._leave_half_open(sa)
        proposal = sa.proposal.render() if sa.proposal else "?"
        auth = _AUTH_NAMES.get(sa.auth_method, str(sa.auth_method))
        log.info(
            "ISAKMP SA established: %s[%s]...%s[%s], %s, auth %s%s",
            sa.local[0], sa.local_id, sa.remote[0], sa.remote_id, proposal, auth,
            ", NAT-T (UDP 4500)" if sa.udp_encap else "",
            extra=sa.log_extra,
        )
        self.emit(IkeSaEstablished(
            conn=sa.name, ike_id=sa.ike_id, local=sa.local, remote=sa.remote,
            local_id=sa.local_id, remote_id=sa.remote_id, proposal=proposal, auth=auth,
            initiator=sa.initiator,
        ))
        sa.schedule(now + sa.lifetime_s, lambda t: self._ike_expired(sa))
        sa.rekey_at = now + self._rekey_delay(sa.lifetime_s, sa.initiator)
        sa.schedule(sa.rekey_at, lambda t: self._ike_rekey(sa, t))
        old = sa.replaces
        if old is not None:
            sa.replaces = None
            self._take_over(old, sa)
        conn = sa.conn
        if conn is not None and conn.dpd_delay > 0 and (
            Extension.DPD in sa.peer_vendors.extensions
        ):
            # RFC 3706 section 7: start from a random sequence number.
            sa.dpd_seq = int.from_bytes(self._random(2), "big")
            sa.schedule(now + conn.dpd_delay, lambda t: self._dpd_tick(sa, t))
        if sa.initiator and sa.requested_children:
            for name in sa.requested_children:
                self._start_quick_modes(sa, name, now)
        sa.requested_children = None

    def _rekey_delay(self, lifetime: float, initiator: bool) -> float:
        """When to renew an SA of this lifetime (seed 43.6.4: "renewed regularly").

        Before the end by a margin (10 %, at most 9 minutes) plus random jitter,
        so that both ends do not renew at once; the side that did not initiate
        waits half the margin longer, so that normally one side renews and the
        other sees the new SA arrive."""
        margin = min(0.1 * lifetime, 540.0)
        jitter = int.from_bytes(self._random(2), "big") / 65535 * min(0.05 * lifetime, 60.0)
        if not initiator:
            margin /= 2
            jitter /= 2
        return max(lifetime - margin - jitter, 0.5 * lifetime)

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
        port = self.config.daemon.port
        new = IkeSa(self, initiator=True, local=(sa.local[0], port), remote=(remote, port),
                    conn=conn, candidates=[conn], now=now)
        new.requested_children = []
        new.replaces = sa
        sa.state = IkeState.REKEYING
        mm = MainMode(new)
        self._main_modes[new.ike_id] = mm
        try:
            mm.start(now)
        except ProtocolFailure as exc:
            log.warning("cannot renew the ISAKMP SA: %s", exc, extra=sa.log_extra)
            sa.state = IkeState.ESTABLISHED
            self._main_modes.pop(new.ike_id, None)
            return
        self._initiating[new.cky_i] = new
        log.info("renewing the ISAKMP SA (Main Mode)", extra=sa.log_extra)

    def _take_over(self, old: IkeSa, new: IkeSa) -> None:
        """The renewed ISAKMP SA takes the IPsec SAs; the old one is deleted."""
        new.children.extend(old.children)
        old.children.clear()
        log.info("ISAKMP SA renewed: %s:%s replaces %s:%s", new.cky_i.hex(), new.cky_r.hex(),
                 old.cky_i.hex(), old.cky_r.hex(), extra=new.log_extra)
        self._delete_sa(old, "renewed", send=True, children=False)

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
        log.warning("DPD: peer %s not responding for %d s; action %s", sa.remote[0],
                    int(conn.dpd_timeout), conn.dpd_action, extra=sa.log_extra)
        self._delete_sa(sa, "peer not responding (DPD)", send=False)
        if conn.dpd_action == "restart":
            try:
                self.initiate(conn.name, None, now)
            except EngineError as exc:
                log.warning("cannot restart %s: %s", conn.name, exc, extra=sa.log_extra)

    def _ike_expired(self, sa: IkeSa) -> None:
        log.info("ISAKMP SA lifetime reached", extra=sa.log_extra)
        self._delete_sa(sa, "lifetime reached", send=True, children=False)

    def on_phase1_failed(self, sa: IkeSa, reason: str, *, quiet: bool = False) -> None:
        if not quiet:
            log.warning("Main Mode failed: %s", reason, extra=sa.log_extra)
        old = sa.replaces
        if old is not None and old.state is IkeState.REKEYING:
            old.state = IkeState.ESTABLISHED  # it runs until its lifetime ends
        name = sa.conn.name if sa.conn is not None and sa.initiator else sa.name
        if sa.initiator:
            self.emit(ConnectionFailed(name, None, reason))
        self._drop_sa(sa)

    # -- Quick Mode ---------------------------------------------------------------------

    def _child_rekey(self, child: ChildSa, now: float) -> None:
        """Renew an IPsec SA with a new Quick Mode; make before break (seed 43.6.4)."""
        sa = self._owner_of(child)
        if sa is None or not sa.usable or child.state != "INSTALLED":
            return
        child.state = "REKEYING"
        log.info("renewing IPsec SA %s_i", child.spi_in.hex(), extra=sa.log_extra)
        sa.quick_mode_queue.append((child.config, child.local_ts[0], child.remote_ts[0], child))
        self._next_quick_mode(sa, now)

    def _owner_of(self, child: ChildSa) -> IkeSa | None:
        for sa in self._all_sas():
            if child in sa.children:
                return sa
        return None

    def _start_quick_modes(self, sa: IkeSa, child_name: str, now: float) -> None:
        conn = sa.conn
        if conn is None:
            return
        child = conn.children.get(child_name)
        if child is None:
            return
        local_nets, remote_nets = child.traffic_selectors(sa.local[0], sa.remote[0])
        for local_ts in local_nets:
            for remote_ts in remote_nets:
                sa.quick_mode_queue.append((child, local_ts, remote_ts, None))
        self._next_quick_mode(sa, now)

    def _next_quick_mode(self, sa: IkeSa, now: float) -> None:
        """Start the next queued Quick Mode unless one of ours is still running.

        One at a time per ISAKMP SA, as strongSwan initiates them: it keeps the
        IVs of only a few exchanges, so a burst of parallel Quick Modes (one per
        child) loses some of them on its side."""
        while sa.quick_mode_queue and sa.usable and not any(
            isinstance(x, QuickMode) and x.initiator for x in sa.exchanges.values()
        ):
            child, local_ts, remote_ts, replaces = sa.quick_mode_queue.pop(0)
            if replaces is not None and self._owner_of(replaces) is None:
                continue  # the SA to renew is gone meanwhile
            qm = QuickMode(sa, sa.new_message_id(), initiator=True)
            qm.replaces = replaces
            sa.exchanges[qm.message_id] = qm
            try:
                qm.start(child, local_ts, remote_ts, now)
            except ProtocolFailure as exc:
                qm.fail(str(exc), now)

    def _quick_mode(self, sa: IkeSa, header: Header, body: bytes, raw: bytes, now: float) -> None:
        if not sa.usable:
            log.info("dropping Quick Mode before the ISAKMP SA is established", extra=sa.log_extra)
            return
        message_id = header.message_id
        qm = sa.exchanges.get(message_id)
        if qm is None:
            cached = sa.responses.get(message_id)
            if message_id in sa.completed_message_ids:
                if cached is not None and cached.request == raw:
                    for response in cached.responses:
                        sa.transmit(response)
                return
            if message_id == 0:
                return
            qm = QuickMode(sa, message_id, initiator=False)
            sa.exchanges[message_id] = qm
            try:
                qm.first_message(header, body, raw, now)
            except QuickModeRefused:
                self._end_exchange(sa, message_id)
            except ProtocolFailure as exc:
                log.warning("Quick Mode request refused: %s", exc, extra=sa.log_extra)
                self._end_exchange(sa, message_id)
            return
        if not isinstance(qm, QuickMode):
            return
        try:
            qm.process(header, body, raw, now)
        except ProtocolFailure as exc:
            if qm.initiator:
                if exc.notify is not None and exc.notify != NotifyType.INVALID_HASH_INFORMATION:
                    sa.send_notify(exc.notify, qm.spi_in, ProtocolId.ESP)
                qm.fail(str(exc), now)
            else:
                log.warning("Quick Mode failed: %s", exc, extra=sa.log_extra)

    def _end_exchange(self, sa: IkeSa, message_id: int) -> None:
        exchange = sa.exchanges.pop(message_id, None)
        if isinstance(exchange, QuickMode):
            exchange.cancel()
        sa.completed_message_ids.add(message_id)

    def on_quick_mode_done(
        self,
        qm: QuickMode,
        result: tuple[ChildSa, ChildSaEstablished] | None,
        reason: str,
        now: float,
    ) -> None:
        sa = qm.sa
        sa.exchanges.pop(qm.message_id, None)
        sa.completed_message_ids.add(qm.message_id)
        try:
            self._on_quick_mode_done(qm, result, reason, now)
        finally:
            if qm.initiator:
                self._next_quick_mode(sa, now)

    def _on_quick_mode_done(
        self,
        qm: QuickMode,
        result: tuple[ChildSa, ChildSaEstablished] | None,
        reason: str,
        now: float,
    ) -> None:
        sa = qm.sa
        child_name = qm.child.name if qm.child is not None else None
        if result is None:
            log.warning("Quick Mode failed: %s", reason, extra=sa.log_extra)
            if qm.replaces is not None:
                # Renewal failed: the old SA runs on until its lifetime ends.
                qm.replaces.state = "INSTALLED"
            elif qm.initiator:
                self.emit(ConnectionFailed(sa.name, child_name, reason))
            return
        child, event = result
        # The same tunnel negotiated again over this ISAKMP SA: a renewal, by us or
        # by the peer (a renewed ISAKMP SA has taken its predecessor's IPsec SAs).
        older = [c for c in sa.children
                 if c.config.name == child.config.name and c.local_ts == child.local_ts
                 and c.remote_ts == child.remote_ts]
        sa.children.append(child)
        log.info(
            "IPsec SA established: child %s, SPIs %s_i %s_o, %s, %s %s === %s%s",
            child.config.name, child.spi_in.hex(), child.spi_out.hex(), event.proposal,
            child.mode, ",".join(map(str, child.local_ts)), ",".join(map(str, child.remote_ts)),
            ", UDP-encapsulated" if child.encap else "",
            extra=sa.log_extra,
        )
        child.expiry = self.timers.schedule(
            now + child.lifetime_s, lambda t: self._child_expired(child)
        )
        child.rekey = self.timers.schedule(
            now + self._rekey_delay(child.lifetime_s, qm.initiator),
            lambda t: self._child_rekey(child, t),
        )
        self.emit(event)
        for old in older:
            # The old SA is not renewed again; whoever renewed it deletes it.
            if old.rekey is not None:
                old.rekey.cancel()
            if old is qm.replaces:
                owner = self._owner_of(old)
                if owner is not None:
                    log.info("IPsec SA renewed: %s_i replaces %s_i", child.spi_in.hex(),
                             old.spi_in.hex(), extra=sa.log_extra)
                    self._delete_child(owner, old, "renewed", send=True)

    def _child_expired(self, child: ChildSa) -> None:
        sa = self._owner_of(child)
        if sa is None:
            return
        log.info("IPsec SA %s_i lifetime reached", child.spi_in.hex(), extra=sa.log_extra)
        self._delete_child(sa, child, "lifetime reached", send=True)

    # -- Informational -------------------------------------------------------------------

    def _plain_informational(self, sa: IkeSa, header: Header, body: bytes, now: float) -> None:
        """Unprotected notifications: believed only while Phase 1 is still running."""
        try:
            payloads = decode_payloads(header.next_payload, body)
        except WireError as exc:
            log.info("dropping malformed notification: %s", exc, extra=sa.log_extra)
            return
        for payload in payloads:
            if not isinstance(payload, NotifyPayload):
                continue
            name = notify_name(payload.notify_type)
            if sa.state is not IkeState.CONNECTING or payload.notify_type >= 8192:
                log.info("ignoring unprotected %s notification", name, extra=sa.log_extra)
                continue
            mm = self._main_modes.get(sa.ike_id)
            if mm is None or mm.state in (MmState.DONE, MmState.FAILED):
                continue
            if mm.state is MmState.MM5_SENT or payload.notify_type in (
                NotifyType.AUTHENTICATION_FAILED, NotifyType.INVALID_HASH_INFORMATION,
            ):
                reason = f"authentication failed: peer sent {name}"
            else:
                reason = f"peer sent {name}"
            mm.fail(reason, now)
            return

    def _informational(self, sa: IkeSa, header: Header, body: bytes, now: float) -> None:
        if sa.keys is None:
            return
        message_id = header.message_id
        try:
            plaintext, _ = sa.decrypt(header, body, sa.exchange_iv(message_id))
            parsed = sa.parse_plaintext(header, plaintext)
            payloads = parsed.payloads
            check(INFORMATIONAL, payloads, "Informational exchange")
            received, rest = parsed.after_hash()
        except ProtocolFailure as exc:
            if self._phase1_unreadable(sa, now):
                return
            log.info("dropping Informational exchange: %s", exc, extra=sa.log_extra)
            return
        expected = informational_hash(sa.hash_alg, sa.keys.skeyid_a, message_id, rest)
        if not hmac.compare_digest(expected, received):
            if self._phase1_unreadable(sa, now):
                return
            log.info("dropping Informational exchange: HASH(1) does not verify",
                     extra=sa.log_extra)
            return
        mm = self._main_modes.get(sa.ike_id)
        if sa.state is IkeState.CONNECTING and mm is not None and mm.state is MmState.MM5_SENT:
            errors = [p for p in payloads
                      if isinstance(p, NotifyPayload) and p.notify_type < 8192]
            if errors:
                mm.fail(f"authentication failed: peer sent {notify_name(errors[0].notify_type)}",
                        now)
                return
        for payload in payloads:
            if isinstance(payload, NotifyPayload):
                self._notification(sa, payload, now)
            elif isinstance(payload, DeletePayload):
                self._delete_request(sa, payload)

    def _phase1_unreadable(self, sa: IkeSa, now: float) -> bool:
        """An encrypted answer to our Main Mode message 5 that we cannot read means
        the peer derived other keys: the pre-shared keys differ (strongSwan answers
        a message 5 it cannot decrypt like this). Fail now rather than retransmit."""
        mm = self._main_modes.get(sa.ike_id)
        if sa.state is not IkeState.CONNECTING or mm is None or mm.state is not MmState.MM5_SENT:
            return False
        mm.fail("authentication failed: the peer's encrypted answer to our ID/HASH cannot be "
                "read (different pre-shared keys?)", now)
        return True

    def _notification(self, sa: IkeSa, notify: NotifyPayload, now: float) -> None:
        name = notify_name(notify.notify_type)
        if notify.notify_type == NotifyType.R_U_THERE:
            sa.send_informational([NotifyPayload(
                notify_type=NotifyType.R_U_THERE_ACK, spi=sa.cky_i + sa.cky_r,
                protocol_id=ProtocolId.ISAKMP, data=notify.data,
            )])
            return
        if notify.notify_type == NotifyType.CONNECTED:
            waiting = [
                qm for qm in sa.exchanges.values()
                if isinstance(qm, QuickMode) and qm.state is QmState.AWAIT_CONNECTED
            ]
            matching = [qm for qm in waiting if notify.spi in (qm.spi_in, qm.spi_out)]
            for qm in matching or waiting[:1]:
                qm.connected(now)
            return
        if notify.notify_type == NotifyType.R_U_THERE_ACK:
            if notify.data == sa.dpd_seq.to_bytes(4, "big"):
                sa.dpd_unanswered_since = None
            return
        if notify.notify_type == NotifyType.INITIAL_CONTACT:
            return
        if notify.notify_type < 8192:
            pending = [
                qm for qm in sa.exchanges.values()
                if isinstance(qm, QuickMode) and qm.initiator and qm.state is QmState.QM1_SENT
            ]
            matching = [qm for qm in pending if notify.spi and qm.spi_in == notify.spi]
            for qm in matching or pending:
                qm.fail(f"peer sent {name}", now)
            if not pending:
                log.warning("peer sent %s", name, extra=sa.log_extra)
            return
        log.info("peer sent %s notification", name, extra=sa.log_extra)

    def _delete_request(self, sa: IkeSa, delete: DeletePayload) -> None:
        if delete.protocol_id == ProtocolId.ISAKMP:
            for spi in delete.spis:
                if spi == sa.cky_i + sa.cky_r:
                    log.info("peer deleted the ISAKMP SA", extra=sa.log_extra)
                    successor = next(
                        (o for o in self._all_sas() if o is not sa and o.usable
                         and o.name == sa.name and o.remote[0] == sa.remote[0]), None)
                    if successor is not None:
                        # The peer renewed Phase 1: its IPsec SAs live on (RFC 2409
                        # ties them to no ISAKMP SA); the new one can delete them.
                        successor.children.extend(sa.children)
                        sa.children.clear()
                    self._delete_sa(sa, "deleted by peer", send=False)
            return
        if delete.protocol_id != ProtocolId.ESP:
            return
        # The peer names an IPsec SA by the SPI it receives on (our spi_out); charon
        # names one it failed to install by ours. Look in every ISAKMP SA with this
        # peer: the Delete may come through a newer one.
        peers = [sa, *(o for o in self._all_sas() if o is not sa and o.remote[0] == sa.remote[0])]
        for spi in delete.spis:
            found = [(o, c) for o in peers for c in o.children if c.spi_out == spi] or [
                (o, c) for o in peers for c in o.children if c.spi_in == spi]
            for owner, child in found:
                self._delete_child(owner, child, "deleted by peer", send=False)
            if not found:
                log.info("peer deleted an unknown IPsec SA %s", spi.hex(), extra=sa.log_extra)

    # -- deletion ---------------------------------------------------------------------------

    def _delete_child(self, sa: IkeSa, child: ChildSa, reason: str, *, send: bool) -> None:
        if child not in sa.children:
            return
        sa.children.remove(child)
        for timer in (child.expiry, child.rekey):
            if timer is not None:
                timer.cancel()
        if send and sa.usable:
            sa.send_informational([DeletePayload(protocol_id=ProtocolId.ESP, spis=(child.spi_in,))])
        self._spis.discard(child.spi_in)
        log.info("IPsec SA deleted: child %s, SPIs %s_i %s_o (%s)", child.config.name,
                 child.spi_in.hex(), child.spi_out.hex(), reason, extra=sa.log_extra)
        self.emit(ChildSaDeleted(
            conn=sa.name, child=child.config.name, ike_id=sa.ike_id, child_id=child.child_id,
            spi_in=int.from_bytes(child.spi_in, "big"),
            spi_out=int.from_bytes(child.spi_out, "big"), reason=reason,
        ))

    def _delete_sa(self, sa: IkeSa, reason: str, *, send: bool, children: bool = True) -> None:
        if children:
            for child in list(sa.children):
                self._delete_child(sa, child, reason, send=send)
        established = sa.usable
        if send and established:
            sa.send_informational([DeletePayload(
                protocol_id=ProtocolId.ISAKMP, spis=(sa.cky_i + sa.cky_r,),
            )])
        sa.state = IkeState.DELETING
        if established:
            log.info("ISAKMP SA deleted (%s)", reason, extra=sa.log_extra)
            self.emit(IkeSaDeleted(conn=sa.name, ike_id=sa.ike_id, reason=reason))
        elif sa.initiator:
            self.emit(ConnectionFailed(sa.name, None, reason))
        if not children and sa.children:
            # IPsec SAs outlive their ISAKMP SA (RFC 2409 allows it), but we have no
            # way left to delete them cleanly: drop them with it.
            for child in list(sa.children):
                self._delete_child(sa, child, reason, send=False)
        self._drop_sa(sa)

    def _drop_sa(self, sa: IkeSa) -> None:
        sa.cancel_timers()
        mm = self._main_modes.pop(sa.ike_id, None)
        if mm is not None:
            mm.cancel()
        for exchange in sa.exchanges.values():
            if isinstance(exchange, QuickMode):
                exchange.cancel()
        sa.exchanges.clear()
        self._sas.pop(sa.cky_i + sa.cky_r, None)
        if self._initiating.get(sa.cky_i) is sa:
            del self._initiating[sa.cky_i]
        self._leave_half_open(sa)
        for child in sa.children:
            self._spis.discard(child.spi_in)
        if sa.state is not IkeState.DELETING:
            sa.state = IkeState.DELETING

    def _leave_half_open(self, sa: IkeSa) -> None:
        if self._half_open.pop((sa.cky_i, sa.remote[0]), None) is not None:
            left = self._half_open_per_peer.get(sa.remote[0], 1) - 1
            if left > 0:
                self._half_open_per_peer[sa.remote[0]] = left
            else:
                self._half_open_per_peer.pop(sa.remote[0], None)

    # -- status ------------------------------------------------------------------------------

    def _all_sas(self) -> list[IkeSa]:
        seen: dict[int, IkeSa] = {}
        for sa in [*self._sas.values(), *self._initiating.values()]:
            seen[sa.ike_id] = sa
        return list(seen.values())

    def _sas_of(self, conn: str) -> list[IkeSa]:
        return [sa for sa in self._all_sas() if sa.conn is not None and sa.name == conn
                and (sa.initiator or sa.state is not IkeState.CONNECTING)]

    def ike_sa_count(self) -> int:
        return len(self._all_sas())

    def status(self, now: float) -> dict[str, Any]:
        ike_sas = []
        for sa in sorted(self._all_sas(), key=lambda s: s.ike_id):
            if sa.state is IkeState.DELETING:
                continue
            established = sa.established_at
            ike_sas.append({
                "name": sa.name,
                "state": sa.state.value,
                "local": f"{sa.local[0]}:{sa.local[1]}",
                "remote": f"{sa.remote[0]}:{sa.remote[1]}",
                "local_id": sa.local_id or None,
                "remote_id": sa.remote_id or None,
                "initiator": sa.initiator,
                "cookies": f"{sa.cky_i.hex()}:{sa.cky_r.hex()}",
                "proposal": sa.proposal.render() if sa.proposal else None,
                "auth": _AUTH_NAMES.get(sa.auth_method, str(sa.auth_method)),
                "nat_local": sa.nat_local,
                "nat_remote": sa.nat_remote,
                "established_s": int(now - established) if established is not None else None,
                "rekey_in_s": int(sa.rekey_at - now) if sa.rekey_at is not None else None,
                "virtual_ip": None,
                "children": [_child_status(c, now) for c in sa.children],
            })
        return {"ike_sas": ike_sas}


def _child_status(child: ChildSa, now: float) -> dict[str, Any]:
    remaining = int(child.established_at + child.lifetime_s - now)
    rekey = child.rekey
    rekey_in = int(rekey.deadline - now) if rekey is not None and not rekey.cancelled else None
    return {
        "name": child.config.name,
        "state": child.state,
        "mode": child.mode,
        "encap": child.encap,
        "spi_in": child.spi_in.hex(),
        "spi_out": child.spi_out.hex(),
        "proposal": child.proposal.render(),
        "local_ts": [str(n) for n in child.local_ts],
        "remote_ts": [str(n) for n in child.remote_ts],
        "bytes_in": 0,
        "bytes_out": 0,
        "packets_in": 0,
        "packets_out": 0,
        "rekey_in_s": rekey_in,
        "expires_in_s": remaining,
    }


__all__ = ["ConnectionConfig", "Engine", "EngineError"]
