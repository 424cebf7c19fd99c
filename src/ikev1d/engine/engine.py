"""The protocol engine: routes messages to ISAKMP SAs and their exchanges.

Sans-I/O in the aioquic manner: ``receive_datagram``, ``initiate``,
``handle_timer`` go in; ``datagrams_to_send``, ``events`` and ``get_timer``
come out. Bad input from the network is answered with a notification or
dropped, logged, and never raises out of here.

This module holds the demultiplexing and the SA tables; the exchanges are in
``exchanges/`` (one table dispatches to them by exchange type), what happens
to SAs over time in ``lifecycle.py`` and deletion in ``deletion.py``.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from ikev1d.config import Config, ConnectionConfig
from ikev1d.engine.api import (
    ChildSaEstablished,
    Datagram,
    Endpoint,
    EngineError,
    Event,
)
from ikev1d.engine.auth import AUTH_NAMES as _AUTH_NAMES
from ikev1d.engine.auth.base import CredentialCache
from ikev1d.engine.deletion import Deletion
from ikev1d.engine.exchanges import DISPATCH, MainMode, Message, QuickMode, informational
from ikev1d.engine.exchanges.main_mode import MmState
from ikev1d.engine.exchanges.transaction import Answer
from ikev1d.engine.fragments import Reassembler
from ikev1d.engine.halfopen import HalfOpenTable
from ikev1d.engine.ike_sa import (
    ChildSa,
    ChildState,
    IkeSa,
    IkeState,
    PeerKey,
    ProtocolFailure,
    peer_key,
)
from ikev1d.engine.lifecycle import Lifecycle
from ikev1d.engine.pools import Pool, build_pools
from ikev1d.engine.ratelimit import LogLimiter
from ikev1d.engine.roadwarrior import RoadWarrior
from ikev1d.engine.stats import PHASE1, EngineStats
from ikev1d.engine.timers import Timers
from ikev1d.engine.traps import Traps
from ikev1d.engine.uniqueness import Uniqueness
from ikev1d.status import ChildSaStatus, IkeSaStatus, PoolStatus, StatusDocument, TrapStatus
from ikev1d.wire import (
    AttributePayload,
    DeletePayload,
    ExchangeType,
    Header,
    NotifyPayload,
    NotifyType,
    PayloadType,
    ProtocolId,
    WireError,
    encode_header,
    encode_payloads,
    split_message,
)

log = logging.getLogger("ikev1d.engine")

#: Address pairs whose candidate connections are cached.
CANDIDATES_CACHE_SIZE = 256


STATUS_CHUNK = 256
"""ISAKMP SAs per :meth:`Engine.status_chunks` chunk: some 5 ms of work."""


class Engine:
    def __init__(
        self,
        config: Config,
        *,
        random_bytes: Callable[[int], bytes],
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self._wall_clock = wall_clock
        self.timers = Timers()
        self.credentials = CredentialCache()
        self.lifecycle = Lifecycle(self)
        self.roadwarrior = RoadWarrior(self)
        self.pools: dict[str, Pool] = build_pools(config.pools)
        """Mode Config address pools by name, with their leases."""
        self.deletion = Deletion(self)
        self.uniqueness = Uniqueness(self)
        self.stats = EngineStats()
        self._random = random_bytes
        self._out: list[Datagram] = []
        self._events: list[Event] = []
        self._ids = itertools.count(1)
        self._sas: dict[bytes, IkeSa] = {}
        """Every ISAKMP SA by CKY-I | CKY-R."""
        self._initiating: dict[bytes, IkeSa] = {}
        """Our Main Mode requests not answered yet, by CKY-I."""
        self._by_identity: dict[PeerKey, tuple[IkeSa, ...]] = {}
        """Established ISAKMP SAs by (connection, our ID, the peer's ID, the XAUTH
        user), so that what asks for "the other SAs of this peer" (unique,
        INITIAL-CONTACT, a renewal by the peer) costs the same with ten thousand
        road warriors as with one."""
        self._by_conn: dict[str, dict[int, IkeSa]] = {}
        """The ISAKMP SAs a connection holds, by ike_id: ours from the first message,
        the peer's once established (before that a responder's connection is not
        settled). What asks about one connection (``up``, ``down``, a trap's acquire,
        INITIAL-CONTACT on our Main Mode) reads its own SAs, not every SA held."""
        self._child_owners: dict[int, IkeSa] = {}
        """child_id -> the ISAKMP SA whose ``children`` holds it, so that renewals,
        expiries and the data plane's reports find it without a walk over every SA."""
        self._half_open = HalfOpenTable(config.daemon.half_open_total,
                                        config.daemon.half_open_per_peer)
        """Responder SAs before authentication, by (CKY-I, peer address)."""
        self._spis: set[bytes] = set()
        # Configuration lookups per peer, done once per configuration (they parse
        # addresses, which showed in handshake profiles); a bounded LRU, since
        # the peer address is whatever a datagram claims.
        self._candidates_cache: OrderedDict[tuple[str, str], list[ConnectionConfig]] = (
            OrderedDict()
        )
        self.logs = LogLimiter()
        """Rate limits for every log line unauthenticated input can trigger."""
        self._current: IkeSa | None = None
        """The SA the message being handled belongs to, for ``_internal_error``."""
        self.reassembler = Reassembler()
        """IKE fragments (payload 132) waiting for the rest of their message."""
        self.traps = Traps(self)
        """Children waiting for traffic (start_action = "trap", dpd_action = "hold")."""

    # -- Context for SAs and exchanges -------------------------------------------

    def random_bytes(self, n: int) -> bytes:
        return self._random(n)

    def wall_time(self) -> datetime.datetime | None:
        """UTC time from the caller's wall clock (POSIX seconds), for certificate
        validity (RFC 5280 section 4.1.2.5); None when no clock was given. The
        timers' ``now`` is a monotonic clock and cannot serve."""
        if self._wall_clock is None:
            return None
        return datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)

    def send(self, datagram: Datagram) -> None:
        self._out.append(datagram)

    def emit(self, event: Event) -> None:
        self.traps.observe(event)
        self._events.append(event)

    def next_id(self) -> int:
        return next(self._ids)

    def allocate_spi(self) -> bytes:
        while True:
            spi = self._random(4)
            if int.from_bytes(spi, "big") >= 0x100 and spi not in self._spis:
                self._spis.add(spi)
                return spi

    def release_spi(self, spi: bytes) -> None:
        self._spis.discard(spi)

    def on_phase1_authenticated(self, sa: IkeSa, now: float) -> None:
        self.lifecycle.phase1_authenticated(sa, now)

    def on_transaction_request(
        self, sa: IkeSa, request: AttributePayload, now: float
    ) -> Answer | None:
        return self.roadwarrior.request(sa, request, now)

    def on_phase1_failed(self, sa: IkeSa, reason: str, *, quiet: bool = False) -> None:
        self.lifecycle.phase1_failed(sa, reason, quiet=quiet)

    def on_quick_mode_done(
        self,
        qm: QuickMode,
        result: tuple[ChildSa, ChildSaEstablished] | None,
        reason: str,
        now: float,
    ) -> None:
        self.lifecycle.quick_mode_done(qm, result, reason, now)

    def peer_deleted(self, sa: IkeSa, delete: DeletePayload) -> None:
        self.deletion.peer_deleted(sa, delete)

    def send_initial_contact(self, sa: IkeSa) -> bool:
        return self.uniqueness.send_initial_contact(sa)

    def refuses_identity(self, sa: IkeSa) -> bool:
        return self.uniqueness.refuses(sa)

    def initial_contact(self, sa: IkeSa, now: float) -> None:
        self.uniqueness.initial_contact(sa, now)

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
        self.logs.now = now
        while (timer := self.timers.pop_due(now)) is not None:
            callback, owner, arg = timer.callback, timer.owner, timer.arg
            timer.cancel()
            try:
                if arg is None:
                    callback(now)
                else:
                    callback(arg, now)
            except Exception as exc:
                sa = owner if isinstance(owner, IkeSa) else None
                self._internal_error(exc, sa, "a timer", now)

    # -- commands -------------------------------------------------------------------

    def initiate(self, conn: str, child: str | None, now: float) -> None:
        config = self.config.connections.get(conn)
        if config is None:
            raise EngineError(f"no connection named {conn!r}")
        if child is not None and child not in config.children:
            raise EngineError(f"connection {conn!r} has no child {child!r}")
        children = [child] if child is not None else list(config.children)
        for sa in self.sas_of(conn):
            if sa.state is IkeState.ESTABLISHED:
                for name in children:
                    self.lifecycle.start_quick_modes(sa, name, now)
                return
            if sa.state is IkeState.CONNECTING and sa.initiator:
                if sa.requested_children is not None:
                    sa.requested_children += [c for c in children if c not in sa.requested_children]
                return
        local, remote = self.initiation_addresses(config)
        port = self.config.daemon.port
        sa = IkeSa(
            self, initiator=True, local=(local, port), remote=(remote, port),
            conn=config, candidates=[config], now=now,
        )
        sa.requested_children = children
        try:
            self.start_phase1(sa, now)
        except ProtocolFailure as exc:
            raise EngineError(str(exc)) from exc
        log.info("initiating Main Mode", extra=sa.log_extra)

    def initiation_addresses(self, config: ConnectionConfig) -> tuple[str, str]:
        """(local, remote) addresses we initiate a connection between; EngineError
        when it has no peer address or no local one to use."""
        remote = next((a for a in config.remote_addrs if a != "%any"), None)
        if remote is None:
            raise EngineError(f"connection {config.name!r} has no remote address to initiate to")
        local = config.local_addrs[0] if config.local_addrs else self._default_local(remote)
        return local, remote

    def acquire(self, conn: str, child: str, now: float) -> None:
        """The data plane caught traffic for a trapped child (a packet no IPsec SA
        carries): negotiate the child, unless that is under way or done already."""
        self.logs.now = now
        self.traps.acquire(conn, child, now)

    def child_is_up(self, conn: str, child: str) -> bool:
        """Whether an IPsec SA of this connection's child is installed (or being renewed)."""
        return any(c.config.name == child
                   and c.state in (ChildState.INSTALLED, ChildState.REKEYING)
                   for sa in self.sas_of(conn) if sa.state is not IkeState.DELETING
                   for c in sa.children)

    def child_in_progress(self, conn: str, child: str) -> bool:
        """Whether a negotiation we started for this child runs: a Main Mode that will
        go on to it, or its Quick Mode."""
        for sa in self.sas_of(conn):
            if sa.state is IkeState.CONNECTING and sa.initiator and (
                sa.requested_children is None or child in sa.requested_children
            ):
                return True
            if sa.state is IkeState.ESTABLISHED and any(
                isinstance(x, QuickMode) and x.initiator and x.child is not None
                and x.child.name == child for x in sa.exchanges.values()
            ):
                return True
        return False

    def retransmit_budget(self) -> float:
        """Seconds one exchange retransmits before it gives up (RFC 2408 section 5:
        the interval doubles each time)."""
        daemon = self.config.daemon
        return float(daemon.retransmit_timeout * (2 ** max(daemon.retransmit_tries, 1) - 1))

    def start_phase1(self, sa: IkeSa, now: float) -> None:
        """Send our Main Mode message 1 for a new SA; ProtocolFailure if we cannot."""
        mm = MainMode(sa)
        sa.exchanges[mm.message_id] = mm
        self.stats.handshake_started(PHASE1, True)
        mm.start(now)
        self._initiating[sa.cky_i] = sa
        self._index_by_conn(sa)

    def _default_local(self, remote: str) -> str:
        family = ipaddress.ip_address(remote).version
        for address in self.config.daemon.listen:
            if ipaddress.ip_address(address).version == family and not ipaddress.ip_address(
                address
            ).is_unspecified:
                return address
        raise EngineError("set local_addrs on the connection to initiate it")

    def terminate(self, conn: str, now: float) -> None:
        if conn not in self.config.connections and not self.sas_of(conn):
            raise EngineError(f"no connection named {conn!r}")
        self.traps.release(conn, "taken down by local request")
        for sa in self.sas_of(conn):
            self.deletion.delete_sa(sa, "deleted by local request", send=True)

    def terminate_ike(self, ike_id: int, now: float) -> bool:
        """Delete exactly ISAKMP SA ``ike_id`` and its IPsec SAs, with Delete payloads
        to the peer (RFC 2408 §3.15); the connection's other SAs (other road
        warriors of a ``%any`` connection) stay. False when there is no such SA."""
        for sa in self._all_sas():
            if sa.ike_id == ike_id and sa.state is not IkeState.DELETING:
                self.deletion.delete_sa(sa, "deleted by local request", send=True)
                return True
        return False

    def peer_ike_ids(self, conn: str, peer: str) -> list[int]:
        """The ISAKMP SAs of ``conn`` whose peer has ID ``peer`` (as status shows
        ``remote_id``), that outer address, or that XAUTH user name (which tells road
        warriors apart that share a group ID)."""
        return [sa.ike_id for sa in self.sas_of(conn) if _names_peer(sa, peer)]

    def terminate_peer(self, conn: str, peer: str, now: float) -> int:
        """Delete the ISAKMP SAs :meth:`peer_ike_ids` names, each with its IPsec SAs;
        how many."""
        if conn not in self.config.connections and not self.sas_of(conn):
            raise EngineError(f"no connection named {conn!r}")
        deleted = 0
        for sa in self.sas_of(conn):
            # Checked as each is reached: deleting one may have dropped another.
            if _names_peer(sa, peer):
                self.deletion.delete_sa(sa, "deleted by local request", send=True)
                deleted += 1
        return deleted

    def install_failed(self, child_id: int, reason: str, now: float) -> None:
        """The data plane could not install an IPsec SA: delete it, telling the peer,
        so that nothing is left half-installed on either side."""
        found = self.child_by_id(child_id)
        if found is not None:
            self.deletion.delete_child(*found, reason, send=True)

    def xauth_result(self, request_id: int, ok: bool, now: float) -> None:
        """The runtime's answer to an XauthCheck event (a RADIUS server's verdict);
        an unknown or stale ``request_id`` is ignored."""
        self.logs.now = now
        try:
            self.roadwarrior.xauth_result(request_id, ok, now)
        except Exception as exc:
            self._internal_error(exc, None, "an XAUTH result", now)

    def xauth_challenge(self, request_id: int, message: str, state: bytes,
                        now: float) -> None:
        """The runtime's checker (a RADIUS server's Access-Challenge) wants another
        answer from the user: ``message`` is shown to the client in another XAUTH
        request, ``state`` comes back with its answer in the next XauthCheck."""
        self.logs.now = now
        try:
            self.roadwarrior.xauth_challenge(request_id, message, state, now)
        except Exception as exc:
            self._internal_error(exc, None, "an XAUTH challenge", now)

    def child_soft_expired(self, child_id: int, reason: str, now: float) -> None:
        """The data plane asks for an IPsec SA to be renewed before it reaches a
        volume or sequence-number limit; ``reason`` is for the log."""
        self.lifecycle.child_soft_expired(child_id, reason, now)

    def child_hard_expired(self, child_id: int, reason: str, now: float) -> None:
        """The data plane no longer uses an IPsec SA (a limit was reached): delete it."""
        self.lifecycle.child_hard_expired(child_id, reason, now)

    def shutdown(self, now: float) -> None:
        self.traps.clear("daemon shutting down")
        for sa in list(self._all_sas()):
            self.deletion.delete_sa(sa, "daemon shutting down", send=True)

    def reload(self, config: Config, now: float) -> None:
        self.config = config
        # Leases survive a reload where the pool still has their address.
        self.pools = build_pools(config.pools, self.pools)
        self._candidates_cache.clear()
        self._half_open.total = config.daemon.half_open_total
        self._half_open.per_source = config.daemon.half_open_per_peer
        self.credentials = CredentialCache()
        for sa in list(self._all_sas()):
            new = config.connections.get(sa.name)
            if new is None:
                self.deletion.delete_sa(sa, "connection removed from the configuration",
                                        send=True)
            else:
                sa.conn = new
        self.traps.sync(config)
        for name, conn in config.connections.items():
            if conn.start_action == "start" and not self.sas_of(name):
                try:
                    self.initiate(name, None, now)
                except EngineError as exc:
                    log.warning("cannot start %s: %s", name, exc, extra={"conn": name})

    def start(self, now: float) -> None:
        """Initiate the connections and children configured with start_action = "start",
        trap those with start_action = "trap"."""
        self.traps.sync(self.config)
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
        self._current = None
        self.logs.now = now
        try:
            self._receive(data, local, remote, now)
        except Exception as exc:
            self._internal_error(exc, self._current, f"a message from {remote[0]}", now)
        finally:
            self._current = None

    def _internal_error(
        self, exc: Exception, sa: IkeSa | None, what: str, now: float
    ) -> None:
        """A bug met by some input: the SA it happened in cannot be trusted to be
        consistent any more, so it goes, with its timers and table entries, and
        nothing else does. One line per kind and interval: the input may repeat."""
        text = str(exc)
        if len(text) > 200:
            text = text[:200] + "..."
        self.logs.log(
            log, logging.ERROR, "internal-error", now,
            "internal error while handling %s: %s: %s%s", what, type(exc).__name__, text,
            "; ISAKMP SA removed" if sa is not None else "",
            extra=sa.log_extra if sa is not None else {"peer": "-"},
        )
        log.debug("traceback", exc_info=True)
        if sa is None:
            return
        try:
            self.deletion.delete_sa(sa, "internal error", send=False)
        except Exception:
            log.debug("traceback while removing the SA", exc_info=True)
            self.drop_sa(sa)

    def _receive(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        try:
            header, body = split_message(data)
        except WireError as exc:
            self.logs.log(log, logging.INFO, "malformed", now,
                          "dropping malformed message from %s: %s", remote[0], exc,
                          extra={"peer": f"{remote[0]}:{remote[1]}"})
            return
        if header.next_payload == PayloadType.FRAGMENT:
            # Fragments are accepted whatever `fragmentation` says, as strongSwan
            # does: refusing them only breaks peers that fragment regardless.
            if header.responder_cookie != bytes(8) and not self._may_fragment(header):
                self.reassembler.note_unknown_sa(remote, now)
                return
            whole = self.reassembler.add(header, body, remote, now)
            if whole is None:
                return
            data = whole
            header, body = split_message(data)
        message = Message(header, body, data, local, remote)
        if header.exchange_type == ExchangeType.AGGRESSIVE:
            self._refuse_aggressive(header, local, remote, now)
        elif header.responder_cookie == bytes(8):
            self._receive_first(message, now)
        else:
            sa = self._sa_for(message, now)
            if sa is not None:
                self._dispatch(sa, message, now)

    def _may_fragment(self, header: Header) -> bool:
        """Fragments with both cookies are held only for an SA we know, so that
        the reassembly slots cost an attacker at least a Main Mode request."""
        return (header.cookies in self._sas
                or header.initiator_cookie in self._initiating)

    def _receive_first(self, message: Message, now: float) -> None:
        """A message without a responder cookie: a Main Mode request, or a
        notification about our own request."""
        header, remote = message.header, message.remote
        if header.exchange_type == ExchangeType.IDENTITY_PROTECTION:
            existing = self._half_open.get((header.initiator_cookie, remote[0]))
            if existing is not None:
                self._current = existing
                MainMode.receive(existing, message, now)
            else:
                self._new_responder(message, now)
            return
        sa = self._initiating.get(header.initiator_cookie)
        if sa is not None and header.exchange_type == ExchangeType.INFORMATIONAL:
            self._current = sa
            informational.receive_unprotected(sa, message, now)

    def _sa_for(self, message: Message, now: float) -> IkeSa | None:
        """The SA a message with both cookies belongs to; the peer's first answer
        to our Main Mode request gives that SA its responder cookie."""
        header, remote = message.header, message.remote
        key = header.initiator_cookie + header.responder_cookie
        sa = self._sas.get(key)
        pending = self._initiating.get(header.initiator_cookie)
        if sa is None and pending is not None and pending.remote[0] == remote[0]:
            self._current = pending
            if header.exchange_type == ExchangeType.INFORMATIONAL:
                informational.receive_unprotected(pending, message, now)
                return None
            if header.exchange_type != ExchangeType.IDENTITY_PROTECTION:
                return None
            sa = pending
            del self._initiating[sa.cky_i]
            sa.cky_r = header.responder_cookie
            self._sas[key] = sa
        if sa is None:
            self.logs.log(log, logging.INFO, "unknown-sa", now,
                          "dropping %s for an unknown ISAKMP SA %s:%s",
                          ExchangeType(header.exchange_type).name, header.initiator_cookie.hex(),
                          header.responder_cookie.hex(),
                          extra={"peer": f"{remote[0]}:{remote[1]}"})
            return None
        if remote[0] != sa.remote[0]:
            self.logs.log(log, logging.INFO, "other-address", now,
                          "dropping message for this SA from another address %s", remote[0],
                          extra=sa.log_extra)
            return None
        return sa

    def _dispatch(self, sa: IkeSa, message: Message, now: float) -> None:
        self._current = sa
        handler = DISPATCH.get(message.header.exchange_type)
        if handler is None:
            self.logs.log(log, logging.INFO, "unsupported-exchange", now,
                          "ignoring unsupported %s exchange",
                          ExchangeType(message.header.exchange_type).name, extra=sa.log_extra)
            return
        handler(sa, message, now)
        if not sa.initiator and sa.state is IkeState.CONNECTING:
            mm = sa.exchanges.get(0)
            if isinstance(mm, MainMode) and mm.state is MmState.MM4_SENT:
                # Message 3 came back with our cookie: the sender is reachable.
                self._half_open.prove((sa.cky_i, sa.remote[0]))

    def _refuse_aggressive(
        self, header: Header, local: Endpoint, remote: Endpoint, now: float
    ) -> None:
        """Aggressive Mode (RFC 2409 section 5) is not implemented: it sends the
        identity in the clear and lets anyone test guesses of a pre-shared key
        offline. Say so, keep nothing."""
        extra = {"peer": f"{remote[0]}:{remote[1]}"}
        if header.responder_cookie != bytes(8):
            return
        self.logs.log(log, logging.WARNING, "aggressive", now,
                      "Aggressive Mode is not supported: refusing request from %s (use Main Mode)",
                      remote[0], extra=extra)
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

    # -- new responder SAs ------------------------------------------------------------

    def _connections_for(self, local: str, remote: str) -> list[ConnectionConfig]:
        """The connections a Main Mode request from ``remote`` to ``local`` may be for:
        those naming that very address if any do, else all that match it."""
        key = (local, remote)
        cached = self._candidates_cache.get(key)
        if cached is None:
            cached = self.config.responder_candidates(local, remote)
            self._candidates_cache[key] = cached
            while len(self._candidates_cache) > CANDIDATES_CACHE_SIZE:
                self._candidates_cache.popitem(last=False)
        else:
            self._candidates_cache.move_to_end(key)
        return cached

    def _new_responder(self, message: Message, now: float) -> None:
        local, remote = message.local, message.remote
        pool = self._connections_for(local[0], remote[0])
        if not pool:
            self.logs.log(log, logging.WARNING, "no-connection", now,
                          "no connection for a Main Mode request from %s to %s", remote[0],
                          local[0], extra={"peer": f"{remote[0]}:{remote[1]}"})
            return
        sa = IkeSa(self, initiator=False, local=local, remote=remote, conn=pool[0],
                   candidates=pool, now=now)
        self._current = sa
        mm = MainMode(sa)
        sa.exchanges[mm.message_id] = mm
        self.stats.handshake_started(PHASE1, False)
        try:
            mm.first_message(message, now)
        except ProtocolFailure as exc:
            self.logs.log(log, logging.WARNING, "mm-refused", now,
                          "Main Mode request refused: %s", exc, extra=sa.log_extra)
            self.stats.handshake_failed(PHASE1, False, str(exc))
            self.drop_sa(sa)
            return
        if mm.state is MmState.FAILED:
            return
        for evicted in self._half_open.admit((sa.cky_i, remote[0]), sa, now):
            self.logs.log(log, logging.WARNING, "half-open-evicted", now,
                          "too many half-open SAs (%d in all): dropping the oldest, "
                          "from %s", len(self._half_open) + 1, evicted.remote[0],
                          extra=evicted.log_extra)
            self.stats.half_open_dropped += 1
            self.drop_sa(evicted)
        self._sas[sa.cky_i + sa.cky_r] = sa
        sa.half_open_timer = sa.schedule(now + self.config.daemon.half_open_timeout,
                                         lambda t: self._half_open_expired(sa, t))

    def _half_open_expired(self, sa: IkeSa, now: float) -> None:
        if sa.state is IkeState.CONNECTING and not sa.authenticated:
            self.logs.log(log, logging.INFO, "half-open-expired", now,
                          "half-open ISAKMP SA expired", extra=sa.log_extra)
            self.stats.handshake_failed(PHASE1, sa.initiator, "half-open SA expired")
            self.drop_sa(sa)

    # -- SA tables -------------------------------------------------------------------------

    def register_established(self, sa: IkeSa) -> None:
        """``sa`` has authenticated its peer for good: index it by that identity."""
        key = peer_key(sa)
        # A tuple per identity, oldest first: almost always one SA, and a tuple of
        # one costs a fifth of a dict of one, for as long as the SA lives.
        entries = self._by_identity.get(key, ())
        if not any(o is sa for o in entries):
            self._by_identity[key] = (*entries, sa)
        sa.registered_as = key
        self._index_by_conn(sa)

    def _index_by_conn(self, sa: IkeSa) -> None:
        if sa.indexed_as is None and sa.conn is not None:
            sa.indexed_as = sa.name
            self._by_conn.setdefault(sa.indexed_as, {})[sa.ike_id] = sa

    def same_identity(self, sa: IkeSa) -> list[IkeSa]:
        """The other established (or renewing, or deleting but not yet dropped)
        ISAKMP SAs of ``sa``'s connection with the same identity, oldest first."""
        found = self._by_identity.get(peer_key(sa))
        if not found:
            return []
        return [o for o in found if o is not sa]

    def drop_sa(self, sa: IkeSa) -> None:
        """Forget an SA: its timers, its exchanges, its places in the tables."""
        key = sa.registered_as
        if key is not None:
            sa.registered_as = None
            entries = self._by_identity.get(key)
            if entries is not None:
                rest = tuple(o for o in entries if o is not sa)
                if rest:
                    self._by_identity[key] = rest
                else:
                    del self._by_identity[key]
        name = sa.indexed_as
        if name is not None:
            sa.indexed_as = None
            held = self._by_conn.get(name)
            if held is not None:
                held.pop(sa.ike_id, None)
                if not held:
                    del self._by_conn[name]
        sa.cancel_timers()
        for exchange in sa.exchanges.values():
            exchange.discard()
        sa.exchanges.clear()
        self._sas.pop(sa.cky_i + sa.cky_r, None)
        if self._initiating.get(sa.cky_i) is sa:
            del self._initiating[sa.cky_i]
        self.leave_half_open(sa)
        for child in sa.children:
            self._spis.discard(child.spi_in)
            self.forget_child(sa, child)
        self.roadwarrior.dropped(sa)
        if sa.state is not IkeState.DELETING:
            sa.state = IkeState.DELETING

    def leave_half_open(self, sa: IkeSa, *, authenticated: bool = False) -> None:
        if sa.half_open_timer is not None:
            # Its closure holds the SA: gone now rather than half_open_timeout later.
            sa.half_open_timer.cancel()
            sa.half_open_timer = None
        key = (sa.cky_i, sa.remote[0])
        if self._half_open.get(key) is sa:
            self._half_open.remove(key)
        if authenticated and not sa.initiator:
            self._half_open.completed(sa.remote[0])

    def all_sas(self) -> list[IkeSa]:
        return self._all_sas()

    def owner_of(self, child: ChildSa) -> IkeSa | None:
        """The ISAKMP SA in the tables whose ``children`` holds ``child``, or None.

        From the index, not a walk over every SA: renewals, expiries and the
        data plane's reports ask this, and a walk costs milliseconds per call with
        ten thousand tunnels. Every change of an SA's ``children`` goes through
        :meth:`adopt_children` / :meth:`forget_child`."""
        sa = self._child_owners.get(child.child_id)
        if sa is not None and self._holds(sa) and any(c is child for c in sa.children):
            return sa
        return None

    def child_by_id(self, child_id: int) -> tuple[IkeSa, ChildSa] | None:
        """The IPsec SA the engine calls ``child_id`` and the ISAKMP SA holding it."""
        sa = self._child_owners.get(child_id)
        if sa is not None and self._holds(sa):
            for child in sa.children:
                if child.child_id == child_id:
                    return sa, child
        return None

    def adopt_children(self, sa: IkeSa, children: Iterable[ChildSa]) -> None:
        """``children`` are (now) in ``sa.children``: index them."""
        for child in children:
            self._child_owners[child.child_id] = sa

    def forget_child(self, sa: IkeSa, child: ChildSa) -> None:
        if self._child_owners.get(child.child_id) is sa:
            del self._child_owners[child.child_id]

    def _holds(self, sa: IkeSa) -> bool:
        """Whether ``sa`` is in the SA tables (what :meth:`_all_sas` walks)."""
        return self._sas.get(sa.cky_i + sa.cky_r) is sa or self._initiating.get(sa.cky_i) is sa

    # -- status ------------------------------------------------------------------------------

    def _all_sas(self) -> list[IkeSa]:
        seen: dict[int, IkeSa] = {}
        for sa in [*self._sas.values(), *self._initiating.values()]:
            seen[sa.ike_id] = sa
        return list(seen.values())

    def sas_of(self, conn: str) -> list[IkeSa]:
        """The ISAKMP SAs of connection ``conn``: ours, and the peer's once established."""
        held = self._by_conn.get(conn)
        if not held:
            return []
        return [sa for sa in held.values()
                if sa.initiator or sa.state is not IkeState.CONNECTING]

    def ike_sa_count(self) -> int:
        return len(self._all_sas())

    def half_open_count(self) -> int:
        """Responder ISAKMP SAs whose Main Mode has not authenticated the peer yet."""
        return len(self._half_open)

    def status(self, now: float, conn: str | None = None) -> StatusDocument:
        """The ISAKMP SAs (with their IPsec SAs), pools and traps. With ``conn``, only
        that connection's SAs: what a command about one connection asks, without
        describing every other SA the engine holds (10,000 on a busy gateway)."""
        return self.status_document(
            tuple(itertools.chain.from_iterable(self.status_chunks(now, conn))))

    def status_chunks(self, now: float, conn: str | None = None,
                      size: int = STATUS_CHUNK) -> Iterator[tuple[IkeSaStatus, ...]]:
        """:meth:`status`'s ISAKMP SAs, ``size`` at a time, in the order of their IDs:
        a caller may let other work run between two chunks (describing 10,000 SAs
        takes 0.2 s). The SAs are those held when the first chunk is asked for; each is
        described when its chunk is made, and one deleted meanwhile is left out."""
        held = sorted(self._all_sas() if conn is None else
                      [sa for sa in self._all_sas() if sa.name == conn],
                      key=lambda s: s.ike_id)
        for start in range(0, len(held), size):
            yield tuple(_ike_sa_status(sa, now) for sa in held[start:start + size]
                        if sa.state is not IkeState.DELETING and self._holds(sa))

    def status_document(self, ike_sas: tuple[IkeSaStatus, ...]) -> StatusDocument:
        """A status document of ``ike_sas`` (from :meth:`status_chunks`) with the pools
        and traps as they are now."""
        pools = tuple(PoolStatus(name=p.name, addrs=p.config.addrs, size=p.size,
                                 online=p.online, offline=p.offline)
                      for p in self.pools.values())
        traps = tuple(
            TrapStatus(name=t.conn, child=t.child, origin=t.origin, mode=t.mode,
                       local_ts=t.local_ts, remote_ts=t.remote_ts)
            for t in self.traps.specs()
        )
        return StatusDocument(ike_sas, pools, traps)


def _ike_sa_status(sa: IkeSa, now: float) -> IkeSaStatus:
    established = sa.established_at
    return IkeSaStatus(
        name=sa.name,
        ike_id=sa.ike_id,
        state=sa.state.value,
        local=sa.local,
        remote=sa.remote,
        local_id=sa.local_id or None,
        remote_id=sa.remote_id or None,
        initiator=sa.initiator,
        cookies=(sa.cky_i, sa.cky_r),
        proposal=sa.proposal.render() if sa.proposal else None,
        auth=_AUTH_NAMES.get(sa.auth_method, str(sa.auth_method)),
        nat_local=sa.nat_local,
        nat_remote=sa.nat_remote,
        established_s=int(now - established) if established is not None else None,
        rekey_in_s=int(sa.rekey_at - now) if sa.rekey_at is not None else None,
        virtual_ip=str(vip) if (vip := sa.local_vip or sa.remote_vip) else None,
        virtual_ips=tuple(str(a) for a in sa.local_vips or sa.remote_vips),
        dns=tuple(str(a) for a in sa.vip_dns) if vip else (),
        split_include=tuple(sa.vip_split) if vip else (),
        children=tuple(_child_status(c, now) for c in sa.children),
        remote_cert=sa.peer_certificate,
    )


def _child_status(child: ChildSa, now: float) -> ChildSaStatus:
    """The IPsec SA as the engine knows it; the data plane's counters are not its to
    know, so they stay at the zeros the daemon replaces."""
    remaining = int(child.established_at + child.lifetime_s - now)
    rekey = child.rekey
    rekey_in = int(rekey.deadline - now) if rekey is not None and not rekey.cancelled else None
    return ChildSaStatus(
        name=child.config.name,
        state=child.state,
        mode=child.mode,
        encap=child.encap,
        spi_in=int.from_bytes(child.spi_in, "big"),
        spi_out=int.from_bytes(child.spi_out, "big"),
        proposal=child.proposal.render(),
        local_ts=child.local_ts,
        remote_ts=child.remote_ts,
        rekey_in_s=rekey_in,
        expires_in_s=remaining,
    )


def _names_peer(sa: IkeSa, peer: str) -> bool:
    """``sa`` is held (not being deleted) with ``peer`` as its ID, outer address or
    XAUTH user: what ``down --peer`` names."""
    return sa.state is not IkeState.DELETING and peer in (
        sa.remote_id, sa.remote[0], sa.xauth_user)


__all__ = ["STATUS_CHUNK", "ConnectionConfig", "Engine", "EngineError"]
