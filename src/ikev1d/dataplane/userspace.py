"""``dataplane = "userspace"``: ikev1d carries the tunnelled traffic itself.

Outbound: packets the kernel routes into our TUN device are matched to an SA by
traffic selectors (:mod:`ikev1d.dataplane.sad`), sealed in ESP tunnel mode
(RFC 4303 §2.6: the whole inner packet, next header 4 or 41), and sent either
as raw ESP (IP protocol 50) or, when the SA is UDP-encapsulated (NAT-T,
RFC 3948), through the daemon's port-4500 socket. That direction is the
:class:`~ikev1d.dataplane.sealing.Sealer`: here in the daemon, or with
``dataplane_workers = 2`` in the worker process of :mod:`ikev1d.dataplane.worker`,
which this backend starts, feeds with SAs and traps, and restarts when it dies.

Inbound: raw ESP and ESP-in-UDP are looked up by SPI, opened (replay window,
ICV, padding), the inner packet is checked against the SA's selectors
(RFC 4301 §5.2) and written to the TUN device.

Routes: each SA's remote networks are routed into the TUN device, with a
source address of ours inside its local networks when the host has one.
A Mode Config client's virtual IP goes onto the TUN device and becomes the
source of the routes of that ISAKMP SA's IPsec SAs; when the server named split
networks, only those are routed. A
default network is routed as its two halves, and when the remote networks
contain the peer itself (a full tunnel) the route to the peer is pinned first,
so that our own IKE and ESP never enter the tunnel. UDP-encapsulated SAs send
NAT-keepalives and follow the peer's NAT rebinding (authenticated packets only).

Traps (``start_action = "trap"``, ``dpd_action = "hold"``): a trapped child's
remote networks are routed into the TUN device as an SA's are, before any SA
exists and after it is gone (the routes are shared, so installing or removing
the SA does not touch them). A packet that no SA covers but a trap does is
dropped, counted (``trapped``) and reported to the daemon as an acquire, at most
once per ``ACQUIRE_INTERVAL`` per trap; like the kernel (and strongSwan) nothing
is queued, so the first packets are lost and the sender's retries get through.

A packet that fails anywhere is dropped and counted, never raised into the
event loop; drops are logged at debug level per packet and at most every
``_LOG_INTERVAL`` seconds per reason at info level.

TUN offloads (``tun_offload``, :mod:`ikev1d.dataplane.linux.offload`): with
``gro`` (the default) the packets one receive batch opens are written after
the batch, in-order TCP segments of one flow joined into one super-packet
that the kernel takes in one write and one pass through its stack (and its TCP
then acknowledges once, so fewer ACKs come back through the tunnel). With
``tso`` a read may also be a TCP super-packet: it is cut into segments first,
and each goes the way of any other packet (SA lookup, MSS clamping and ICMP
"too big" judge the segment, not the super-packet); a burst of equal-sized
segments to one peer is what UDP GSO then sends in one system call.

The OS-facing objects (TUN device, raw sockets, routes) come from
:mod:`ikev1d.dataplane.linux.tun` and are passed in, so tests can hand in fakes
(:class:`TunLike`, :class:`RawLike`, :class:`RoutesLike`).
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from ikev1d.dataplane.base import (
    AcquireHandler,
    Address,
    DataplaneError,
    ExpireHandler,
    SendUdp,
    soft_limit,
    split_routes,
    zero_counters,
)
from ikev1d.dataplane.esp import (
    EspAlgorithm,
    EspCounters,
    EspError,
    EspIcvError,
    EspReplayError,
    InboundSa,
    OutboundSa,
    esp_algorithm,
    peek_seq,
)
from ikev1d.dataplane.linux.offload import VNET_HDR, VNET_HDR_LEN, coalesce_tcp
from ikev1d.dataplane.mss import clamp_mss, tunnel_mtu
from ikev1d.dataplane.sad import CONTEXT_IDLE_S, Prefix, Sad, SaEntry, prefixes
from ikev1d.dataplane.sealing import (
    ACQUIRE_INTERVAL,
    BATCH,
    DROP_REASONS,
    DropLog,
    RawLike,
    Sealer,
    SendUdpMany,
    Trap,
    TunLike,
)
from ikev1d.dataplane.statefile import StateFile
from ikev1d.dataplane.worker_protocol import Message, MsgType, encode
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, Endpoint, Network, TrapInstalled
from ikev1d.status import Counters, DropCounters
from ikev1d.wire.constants import IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_NONE, NAT_KEEPALIVE

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "ACQUIRE_INTERVAL",
    "DROP_REASONS",
    "NAT_KEEPALIVE_INTERVAL",
    "RawLike",
    "RoutesLike",
    "TunLike",
    "UserspaceBackend",
    "create_backend",
    "peer_inside",
    "tun_routes",
]

log = logging.getLogger(__name__)
worker_log = logging.getLogger("ikev1d.dataplane.worker")
"""Where the worker's log lines are logged again, in the daemon."""

COUNTERS_INTERVAL: Final = 0.5
"""Seconds between two counter requests to the sealing worker: the outbound counters
in ``status`` are at most this old (plus one round trip)."""
NAT_KEEPALIVE_INTERVAL: Final = 20.0
"""RFC 3948 §4: keepalives every 20 s keep NAT mappings of UDP-encapsulated SAs alive."""


#: How often the sealing worker may be restarted within ``_RESTART_WINDOW`` seconds before
#: the daemon seals in-process instead (a worker that dies at once would loop for ever).
_RESTARTS: Final = 5
_RESTART_WINDOW: Final = 60.0


class WorkerLike(Protocol):
    """The daemon's handle on a sealing worker (:class:`ikev1d.dataplane.worker.SealingWorker`)."""

    @property
    def pid(self) -> int | None: ...
    def start(self) -> None: ...
    def send(self, data: bytes) -> bool: ...
    def stop(self) -> None: ...


WorkerFactory = Callable[
    ["asyncio.AbstractEventLoop", dict[str, object], Sequence[int],
     Callable[[Message], None], Callable[[str], None]],
    WorkerLike,
]
"""``factory(loop, setup, fds, on_message, on_lost)``: a worker handle, not yet started."""


def _spawn_worker(loop: asyncio.AbstractEventLoop, setup: dict[str, object],
                  fds: Sequence[int], on_message: Callable[[Message], None],
                  on_lost: Callable[[str], None]) -> WorkerLike:
    from ikev1d.dataplane.worker import SealingWorker

    return SealingWorker(loop, setup, fds, on_message, on_lost)


class RoutesLike(Protocol):
    def local_address_in(self, networks: tuple[Network, ...]) -> str | None: ...
    def add(self, network: Network, src: str | None) -> None: ...
    def remove(self, network: Network) -> None: ...
    def add_bypass(self, peer: str) -> bool: ...
    def add_address(self, address: str) -> bool: ...
    def remove_address(self, address: str) -> None: ...
    def remove_bypass(self, peer: str) -> None: ...
    def owned_bypasses(self) -> list[str]: ...
    def remove_stale_bypass(self, peer: str) -> bool: ...
    def close(self) -> None: ...


def tun_routes(networks: tuple[Network, ...]) -> tuple[Network, ...]:
    """The routes that send ``networks`` into the TUN device.

    A default network (0.0.0.0/0, ::/0) becomes its two halves, as OpenVPN does:
    they win over the host's default route by being longer, without replacing it,
    so removing them gives the host its old default route back.
    """
    out: list[Network] = []
    for net in networks:
        if net.prefixlen == 0:
            out.extend(net.subnets(prefixlen_diff=1))
        else:
            out.append(net)
    return tuple(dict.fromkeys(out))


def peer_inside(peer: str, networks: tuple[Network, ...]) -> bool:
    """Whether the peer's outer address is inside the SA's remote networks (a full tunnel)."""
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(addr.version == n.version and addr in n for n in networks)


#: How long an SA we renewed as Quick Mode initiator stands by, unless a packet from
#: the peer on it shows earlier that the peer has installed it: the responder
#: installs it when our message 3 arrives (RFC 2409 section 5.5), so sending on it
#: at once loses what reaches the peer before that message. Short beside the time
#: the SA it renews has left (at least two retransmission intervals, see
#: engine.lifetimes.rekey_delay): a peer that takes our Delete for the old SA
#: while its last packets still wait in its queues drops them (seen with
#: strongSwan's kernel-libipsec when the switch came as late as the Delete).
STANDBY_S = 0.5


class UserspaceBackend:
    """TUN + ESP in this process. One instance per daemon; single-threaded (the event loop)."""

    name = "userspace"

    def __init__(
        self,
        tun: TunLike,
        raw4: RawLike,
        routes: RoutesLike,
        *,
        raw6_factory: Callable[[], RawLike] | None = None,
        on_close: Callable[[], None] | None = None,
        path_mtu: Callable[[str], int] | None = None,
        workers: int = 1,
        worker_factory: WorkerFactory | None = None,
    ) -> None:
        """``on_close`` runs last in :meth:`close` (the netlink helper's shutdown);
        ``path_mtu(peer)`` gives the MTU of the route to a peer (1500 when not given).
        ``workers`` 2: the sealing direction runs in a worker process
        (:mod:`ikev1d.dataplane.worker`, made by ``worker_factory``)."""
        if workers not in (1, 2):
            raise DataplaneError(f"dataplane_workers = {workers}: 1 or 2 are supported")
        self._tun = tun
        self._raw4 = raw4
        self.raw6: RawLike | None = None
        self._raw6_factory = raw6_factory
        self.routes = routes
        self.sad = Sad()
        self._route_refs: dict[Network, int] = {}
        self._bypass_refs: dict[str, int] = {}
        self.drops: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._send_udp: SendUdp | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: list[int] = []
        self._keepalive: asyncio.TimerHandle | None = None
        self._cool: asyncio.TimerHandle | None = None
        self._closed = False
        self._on_close = on_close
        self._path_mtu = path_mtu
        self._traps: dict[tuple[str, str], Trap] = {}
        self._drop = DropLog(self.drops, self._now)
        self.sealer = Sealer(tun, self.sad, self._drop, self._traps, self._now)
        self.sealer.hard_limited = self._promote_all
        """The sealing direction in this process (all of it with one worker; with two,
        only after the worker could not be kept running)."""
        self.sealer.raw4 = raw4
        self.workers = workers
        self._worker_factory = worker_factory or _spawn_worker
        self.worker: WorkerLike | None = None
        self._udp_fds: list[str] = []
        self._worker_sas: dict[tuple[int, int], dict[str, object]] = {}
        """What the worker needs to seal with each SA (keys included), to (re)install it."""
        self._worker_drops = dict.fromkeys(DROP_REASONS, 0)
        """The worker's drop totals last reported (added to ``drops`` as they grow)."""
        self._worker_starts: list[float] = []
        self._counters_timer: asyncio.TimerHandle | None = None
        self._state_file: StateFile | None = None
        self._vips: dict[tuple[int, int], tuple[Address, tuple[Network, ...]]] = {}
        """By (ISAKMP SA, address family): a dual-stack client holds one of each."""
        """ISAKMP SA -> (virtual IP, split networks) of a Mode Config client."""
        self._address_refs: dict[Address, tuple[int, bool]] = {}
        """Virtual IP -> (ISAKMP SAs using it, whether it was added here)."""
        self._tun_pending: list[bytes] = []
        """Opened packets waiting to be written to a TUN device with offloads, so that
        the TCP segments of one receive batch can go in as one super-packet."""
        self._tun_pending_entries: list[SaEntry] = []
        self._tun_flush_scheduled = False
        self._standby: dict[tuple[int, int], tuple[SaEntry, asyncio.TimerHandle | None]] = {}
        """SAs that receive but do not send yet (see STANDBY_S), by SPI pair."""

    @property
    def tun(self) -> TunLike:
        return self._tun

    @tun.setter
    def tun(self, tun: TunLike) -> None:
        self._tun = self.sealer.tun = tun

    @property
    def raw4(self) -> RawLike:
        return self._raw4

    @raw4.setter
    def raw4(self, raw4: RawLike) -> None:
        self._raw4 = raw4
        self.sealer.raw4 = raw4

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    # --- DataplaneBackend -----------------------------------------------------------

    def attach(self, send_udp: SendUdp, loop: asyncio.AbstractEventLoop) -> None:
        """Remember how to send ESP-in-UDP and start reading the TUN device and raw socket.

        Objects whose ``fileno()`` is negative (test fakes) are not registered; the
        tests call :meth:`handle_tun_readable` / :meth:`handle_raw_readable` instead.
        """
        self._send_udp = send_udp
        self.sealer.send_udp = send_udp
        self._loop = loop
        if self.workers == 1:
            self._add_reader(self.tun.fileno(), self.handle_tun_readable)
        self._add_reader(self.raw4.fileno(), self.handle_raw_readable)
        self._cool = loop.call_later(CONTEXT_IDLE_S, self._cool_idle)
        if self.workers > 1:
            if self._raw6_factory is not None:
                # Opened now, so that the worker inherits it with the rest.
                try:
                    self._open_raw6()
                except DataplaneError as exc:
                    log.info("userspace: no raw ESP over IPv6 (%s)", exc)
            self._start_worker()

    def attach_udp_sockets(self, sockets: Sequence[tuple[int, str, int, bool]]) -> None:
        """The daemon's UDP sockets as (descriptor, address, port, wildcard), before
        :meth:`attach`: the worker sends ESP-in-UDP through them (RFC 3948 §2: from
        the port IKE negotiated NAT traversal on)."""
        self._udp_fds = [f"{fd} {address} {port} {int(wildcard)}"
                         for fd, address, port, wildcard in sockets]

    def attach_batch(self, send_many: SendUdpMany) -> None:
        """Send ESP-in-UDP in batches through ``send_many`` (the daemon's UDP GSO path):
        the packets one TUN readiness event yields for one SA go out in few system calls."""
        self.sealer.send_udp_many = send_many

    def set_expire_handler(self, handler: ExpireHandler) -> None:
        self.sealer.expired = handler

    def set_acquire_handler(self, handler: AcquireHandler) -> None:
        self.sealer.acquire = handler

    def install_trap(self, trap: TrapInstalled) -> None:
        """Route the trapped child's remote networks into the TUN device (shared with
        its SAs' routes) and catch what arrives there without an SA."""
        if self._closed:
            raise DataplaneError("the userspace data plane is closed")
        name = f"{trap.conn}/{trap.child}"
        if trap.mode != "tunnel":
            raise DataplaneError(f"{name}: mode {trap.mode!r} cannot be trapped by the "
                                 "userspace data plane (tunnel only)")
        if not trap.local_ts or not trap.remote_ts:
            raise DataplaneError(f"{name}: no traffic selectors to trap")
        remote_networks = tuple(trap.remote_ts)
        new = Trap(name, prefixes(trap.local_ts), prefixes(trap.remote_ts),
                    tun_routes(remote_networks),
                    trap.remote if peer_inside(trap.remote, remote_networks) else None)
        # A trap for any source (a road warrior's, whose virtual IP is still to
        # come) names no source: the kernel picks one, and the virtual IP once it
        # is on the TUN device.
        src = (None if any(n.prefixlen == 0 for n in trap.local_ts)
               else self.routes.local_address_in(tuple(trap.local_ts)))
        added: list[Network] = []
        try:
            if new.bypass is not None:
                self._bypass_ref(new.bypass)
            for net in new.routes:
                self._route_ref(net, src)
                added.append(net)
        except OSError as exc:
            for net in added:
                self._route_unref(net)
            if new.bypass is not None:
                self._bypass_unref(new.bypass)
            raise DataplaneError(f"{name}: {exc}") from None
        # The old trap's references go after the new ones are taken: no route flaps.
        self.remove_trap(trap.conn, trap.child)
        self._traps[(trap.conn, trap.child)] = new
        self._to_worker(encode(MsgType.INSTALL_TRAP, conn=trap.conn, child=trap.child,
                               local_ts=[str(n) for n in trap.local_ts],
                               remote_ts=[str(n) for n in trap.remote_ts]))
        log.debug("userspace: trap for %s: %s via %s", name,
                  ", ".join(map(str, remote_networks)), self.tun.name)

    def remove_trap(self, conn: str, child: str) -> None:
        old = self._traps.pop((conn, child), None)
        if old is None:
            return
        self._to_worker(encode(MsgType.REMOVE_TRAP, conn=conn, child=child))
        for net in old.routes:
            self._route_unref(net)
        if old.bypass is not None:
            self._bypass_unref(old.bypass)

    def recover(self, state_file: str) -> None:
        """Remove the host routes to peers that a killed predecessor pinned.

        Its TUN device, and every route into it, vanished with its file descriptor;
        the pinned routes to peers (full tunnels) go through other interfaces and
        stay. Only routes with our ``proto`` are deleted, so a route the
        administrator added since is left alone."""
        self._state_file = StateFile(state_file)
        recorded = self._state_file.load().get("bypass_routes")
        removed = [str(peer) for peer in (recorded if isinstance(recorded, list) else [])
                   if self.routes.remove_stale_bypass(str(peer))]
        if removed:
            log.warning("userspace: removed host routes to %s left by a previous run "
                        "(recorded in %s)", ", ".join(removed), state_file)
        self._save()

    def _save(self, pending: str | None = None) -> None:
        if self._state_file is not None:
            peers = self.routes.owned_bypasses()
            self._state_file.save({"bypass_routes": [*peers, *([pending] if pending else [])]})

    def install_inbound(self, sa: ChildSaEstablished) -> None:
        """Open what the peer sends on ``sa`` from now on; seal nothing on it until
        ``install`` completes it (see ``InstallsInboundFirst``). Its routes go into
        the TUN device now: the host's answers to what it receives must not leave
        in the clear, and until then no SA takes them (a renewal's predecessor does)."""
        entry = self._entry(sa)
        if self.sad.get(sa.spi_in, sa.spi_out) is not None or self.sad.inbound_only(
                sa.spi_in, sa.spi_out) is not None:
            self.remove(ChildSaDeleted(sa.conn, sa.child, sa.ike_id, sa.child_id,
                                       sa.spi_in, sa.spi_out, "reinstalled"))
        src = self._take_routes(sa, entry)
        self.sad.add_inbound(entry)
        log.debug("userspace: receiving on %s SPI %08x_i (SPI %08x_o once completed)%s",
                  entry.name, sa.spi_in, sa.spi_out, f", src {src}" if src else "")

    def install(self, sa: ChildSaEstablished) -> None:
        if self._closed:
            raise DataplaneError("the userspace data plane is closed")
        entry = self.sad.inbound_only(sa.spi_in, sa.spi_out)
        if entry is None:
            entry = self._entry(sa)
            src: str | None = None
            routed = False
        else:
            src, routed = None, True  # by install_inbound
        worker_fields: dict[str, object] | None = None
        if self.workers > 1:
            worker_fields = {
                "spi_in": sa.spi_in, "spi_out": sa.spi_out, "encryption": sa.encryption,
                "key_length": sa.key_length, "integrity": sa.integrity or "",
                "icv_length": sa.icv_length, "keymat": sa.keymat_out,
                "local_ts": [str(n) for n in sa.local_ts],
                "remote_ts": [str(n) for n in sa.remote_ts],
                "name": entry.name, "child_id": sa.child_id, "mtu": entry.mtu,
                "hard_bytes": entry.hard_bytes, "soft_bytes": entry.soft_bytes_out,
                "soft_seq": entry.soft_seq,
            }
            try:  # checked before anything is installed: nothing half-installed
                self._install_message(entry, worker_fields)
            except ValueError as exc:
                if routed:
                    self.remove(ChildSaDeleted(sa.conn, sa.child, sa.ike_id, sa.child_id,
                                               sa.spi_in, sa.spi_out, "not installed"))
                raise DataplaneError(f"{sa.conn}/{sa.child}: {exc}") from None
        if not routed:
            if self.sad.get(sa.spi_in, sa.spi_out) is not None:  # installed twice: replace
                self.remove(ChildSaDeleted(sa.conn, sa.child, sa.ike_id, sa.child_id,
                                           sa.spi_in, sa.spi_out, "reinstalled"))
            src = self._take_routes(sa, entry)
        # Make before break: a pair we installed on Quick Mode message 2 receives at
        # once but sends only once the peer has it (see STANDBY_S); the pair it
        # renews carries our traffic meanwhile. (A pair we answered for, the peer
        # has: its message 3 says so.)
        self.sad.add(entry, standby=sa.initiator)
        if sa.initiator:
            timer = (self._loop.call_later(STANDBY_S, self._promote, entry)
                     if self._loop is not None else None)
            self._standby[(sa.spi_in, sa.spi_out)] = (entry, timer)
        if worker_fields is not None:
            self._worker_sas[(sa.spi_in, sa.spi_out)] = worker_fields
            self._install_in_worker(entry)
        if sa.encap:
            self._schedule_keepalive()
        log.debug(
            "userspace: installed %s SPIs %08x_i %08x_o, %s via %s%s",
            entry.name, sa.spi_in, sa.spi_out,
            ", ".join(map(str, sa.remote_ts)), self.tun.name, f" src {src}" if src else "",
        )

    def _entry(self, sa: ChildSaEstablished) -> SaEntry:
        """The SA table entry for ``sa``, checked; nothing installed yet."""
        if self._closed:
            raise DataplaneError("the userspace data plane is closed")
        if sa.mode != "tunnel":
            # In transport mode the protected traffic goes to the peer's own address,
            # which IKE uses too: routing it into the TUN device would swallow IKE.
            raise DataplaneError(
                f"{sa.conn}/{sa.child}: mode {sa.mode!r} is not supported by the userspace "
                "data plane (tunnel only); use dataplane = \"kernel\""
            )
        if not sa.local_ts or not sa.remote_ts:
            raise DataplaneError(f"{sa.conn}/{sa.child}: no traffic selectors to route")
        try:
            alg = esp_algorithm(sa.encryption, sa.key_length, sa.integrity, sa.icv_length)
            outbound = OutboundSa(sa.spi_out, alg, sa.keymat_out)
            inbound = InboundSa(sa.spi_in, alg, sa.keymat_in)
        except EspError as exc:
            raise DataplaneError(f"{sa.conn}/{sa.child}: {exc}") from None
        if not sa.encap and ":" in sa.remote[0]:
            self._open_raw6()
        entry = SaEntry(
            spi_in=sa.spi_in,
            spi_out=sa.spi_out,
            inbound=inbound,
            outbound=outbound,
            local_ts=prefixes(sa.local_ts),
            remote_ts=prefixes(sa.remote_ts),
            local=sa.local,
            remote=sa.remote,
            encap=sa.encap,
            mode=sa.mode,
            name=f"{sa.conn}/{sa.child}",
            remote_networks=tuple(sa.remote_ts),
            local_networks=tuple(sa.local_ts),
            routes=tun_routes(self._routed_networks(sa)),
            bypass=sa.remote[0] if peer_inside(sa.remote[0], tuple(sa.remote_ts)) else None,
            child_id=sa.child_id,
            # RFC 4303 §3.3.3: renewed before the sequence numbers run out.
            soft_seq=soft_limit(outbound.max_seq, sa.spi_in),
        )
        entry.mtu = self._tunnel_mtu(sa, alg)
        if sa.life_bytes > 0:
            entry.hard_bytes = sa.life_bytes
            entry.soft_bytes_out = entry.soft_bytes_in = soft_limit(sa.life_bytes, sa.spi_in)
        return entry

    def _take_routes(self, sa: ChildSaEstablished, entry: SaEntry) -> str | None:
        """Route ``entry``'s networks into the TUN device (counted per network) and pin
        the route to the peer if needed; the source address chosen, if a route is new."""
        # A source address is only chosen for a route not yet there: looking it up means
        # listing the host's addresses over netlink, a stall of the event loop, and the
        # SAs of many peers share their routes.
        new_route = any(self._route_refs.get(net, 0) == 0 for net in entry.routes)
        src = self._source_for(sa) if new_route else None
        added: list[Network] = []
        bypass = entry.bypass
        try:
            if bypass is not None:
                # Before the TUN routes: IKE and ESP to the peer must keep their path.
                self._bypass_ref(bypass)
            for net in entry.routes:
                self._route_ref(net, src)
                added.append(net)
        except OSError as exc:
            for net in added:
                self._route_unref(net)
            if bypass is not None:
                self._bypass_unref(bypass)
            raise DataplaneError(f"{sa.conn}/{sa.child}: {exc}") from None
        return src

    def _vip_for(self, sa: ChildSaEstablished) -> tuple[Address, tuple[Network, ...]] | None:
        for version in dict.fromkeys(n.version for n in sa.remote_ts):
            vip = self._vips.get((sa.ike_id, version))
            if vip is not None:
                return vip
        return None

    def _source_for(self, sa: ChildSaEstablished) -> str | None:
        """The virtual IP of the SA's ISAKMP SA, else an address of ours in its local networks."""
        vip = self._vip_for(sa)
        if vip is not None:
            return str(vip[0])
        return self.routes.local_address_in(tuple(sa.local_ts))

    def _routed_networks(self, sa: ChildSaEstablished) -> tuple[Network, ...]:
        vip = self._vip_for(sa)
        if vip is None:
            return tuple(sa.remote_ts)
        routed = split_routes(tuple(sa.remote_ts), vip[1])
        if not routed:
            log.warning("userspace: %s/%s: none of its remote networks (%s) is among the "
                        "server's split networks (%s): nothing routed into %s", sa.conn,
                        sa.child, ", ".join(map(str, sa.remote_ts)),
                        ", ".join(map(str, vip[1])), self.tun.name)
        return routed

    # --- CarriesVirtualIps ----------------------------------------------------------

    def add_virtual_ip(self, ike_id: int, address: Address, split: tuple[Network, ...]) -> None:
        """Put a Mode Config virtual IP on the TUN device (see ``CarriesVirtualIps``).

        The device vanishes with the process, and the address with it, so nothing
        needs recording for a restart after a crash."""
        if self._closed:
            raise DataplaneError("the userspace data plane is closed")
        key = (ike_id, address.version)
        old = self._vips.get(key)
        if old is not None and old[0] == address:
            self._vips[key] = (address, split)
            return
        if old is not None:
            self.remove_virtual_ip(ike_id, old[0])
        users, added = self._address_refs.get(address, (0, False))
        if users == 0:
            try:
                added = self.routes.add_address(str(address))
            except OSError as exc:
                raise DataplaneError(f"cannot add virtual IP {address} to {self.tun.name}: "
                                     f"{exc}") from None
            if not added:
                log.info("userspace: virtual IP %s is on this host already; used as it is "
                         "and left there", address)
        self._address_refs[address] = (users + 1, added)
        self._vips[key] = (address, split)
        log.debug("userspace: virtual IP %s on %s", address, self.tun.name)

    def remove_virtual_ip(self, ike_id: int, address: Address) -> None:
        key = (ike_id, address.version)
        vip = self._vips.get(key)
        if vip is None or vip[0] != address:
            return
        del self._vips[key]
        users, added = self._address_refs.pop(address, (0, False))
        if users > 1:
            self._address_refs[address] = (users - 1, added)
        elif users == 1 and added and not self._closed:
            try:
                self.routes.remove_address(str(address))
            except OSError as exc:
                log.warning("userspace: removing virtual IP %s: %s", address, exc)

    def _promote(self, entry: SaEntry) -> None:
        """``entry`` stops standing by: the peer sent on it, or STANDBY_S passed."""
        _, timer = self._standby.pop((entry.spi_in, entry.spi_out), (entry, None))
        if timer is not None:
            timer.cancel()
        if self.sad.promote(entry):
            log.debug("userspace: sending on %s SPI %08x_o", entry.name, entry.spi_out)
            if (entry.spi_in, entry.spi_out) in self._worker_sas:
                self._to_worker(encode(MsgType.SA_PROMOTE, spi_in=entry.spi_in,
                                       spi_out=entry.spi_out))

    def _promote_all(self) -> None:
        """An SA reached its hard limit: any successor standing by is needed now."""
        for waiting, _ in list(self._standby.values()):
            self._promote(waiting)

    def remove(self, sa: ChildSaDeleted) -> None:
        _, timer = self._standby.pop((sa.spi_in, sa.spi_out), (None, None))
        if timer is not None:
            timer.cancel()
        entry = self.sad.remove(sa.spi_in, sa.spi_out)
        if entry is None:
            return
        if self._worker_sas.pop((sa.spi_in, sa.spi_out), None) is not None:
            self._to_worker(encode(MsgType.REMOVE_SA, spi_in=sa.spi_in, spi_out=sa.spi_out))
        for net in entry.routes:
            self._route_unref(net)
        if entry.bypass is not None:
            self._bypass_unref(entry.bypass)
        log.debug("userspace: removed %s SPIs %08x_i %08x_o", entry.name, sa.spi_in, sa.spi_out)

    def counters(self, spi_in: int, spi_out: int) -> Counters:
        """The traffic of this SA pair, plus why its packets were dropped (``*_in``:
        received ones, by reason; ``dropped_out``: sealing or sending failed)."""
        entry = self.sad.get(spi_in, spi_out)
        if entry is None:
            return zero_counters()
        counters = entry.counters
        esp = entry.inbound.counters if entry.inbound is not None else EspCounters()
        return Counters(
            bytes_in=counters.bytes_in,
            bytes_out=counters.bytes_out,
            packets_in=counters.packets_in,
            packets_out=counters.packets_out,
            drops=DropCounters(
                replayed_in=esp.replayed,
                icv_failed_in=esp.failed_icv,
                malformed_in=esp.malformed,
                policy_dropped_in=counters.dropped_policy_in,
                tun_dropped_in=counters.dropped_tun_in,
                dropped_out=counters.dropped_out,
            ),
        )

    def receive_esp_udp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        try:
            self._inbound(data, remote)
        except Exception:  # never into the event loop
            log.exception("userspace: unexpected error on UDP-encapsulated ESP")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_worker()
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        for _, timer in self._standby.values():
            if timer is not None:
                timer.cancel()
        self._standby.clear()
        if self._cool is not None:
            self._cool.cancel()
            self._cool = None
        if self._loop is not None:
            for fd in self._readers:
                self._loop.remove_reader(fd)
        self._readers.clear()
        for entry in (*self.sad, *self.sad.inbound_only_entries()):
            self.sad.remove(entry.spi_in, entry.spi_out)
        self._traps.clear()
        self._route_refs.clear()  # routes.close() removes what is left
        self._bypass_refs.clear()
        self._vips.clear()  # the addresses vanish with the TUN device
        self._address_refs.clear()
        self._tun_pending, self._tun_pending_entries = [], []  # the device goes now
        for step in (self.routes.close, self.tun.close, self.raw4.close):
            try:
                step()
            except Exception:
                log.exception("userspace: error while closing")
        if self._state_file is not None:
            self._state_file.remove()
        if self.raw6 is not None:
            self.raw6.close()
            self.raw6 = None
        if self._on_close is not None:
            self._on_close()

    # --- the packet paths ------------------------------------------------------------

    def handle_tun_readable(self) -> None:
        """Seal and send what the TUN device has queued (:meth:`Sealer.handle_tun_readable`)."""
        self.sealer.handle_tun_readable()

    def handle_raw_readable(self) -> None:
        self._drain_raw(self.raw4)

    @property
    def _coalescing(self) -> bool:
        return getattr(self.tun, "vnet_hdr", False) is True and self._loop is not None

    def _schedule_flush(self) -> bool:
        """Have :meth:`_flush_tun` run after this batch (once); whether it will."""
        if not self._tun_flush_scheduled and self._loop is not None:
            self._tun_flush_scheduled = True
            self._loop.call_soon(self._flush_tun)
        return self._tun_flush_scheduled

    def _flush_tun(self) -> None:
        """Write what the last receive batch opened, TCP segments of one flow joined."""
        self._tun_flush_scheduled = False
        pending, entries = self._tun_pending, self._tun_pending_entries
        if not pending:
            return
        self._tun_pending, self._tun_pending_entries = [], []
        write = getattr(self.tun, "write_vnet", None)
        try:
            buffers = coalesce_tcp(pending)
        except Exception:  # never into the event loop; the packets are lost
            log.exception("userspace: unexpected error coalescing received packets")
            buffers = []
        done = 0
        for buffer in buffers:
            try:
                if write is None:
                    raise OSError("the TUN device takes no virtio-net header")
                write(buffer)
            except OSError as exc:
                self._drop("tun_error", f"inbound: TUN write: {exc}")
                break
            done += _packets_in(buffer)
        for packet, entry in zip(pending[done:], entries[done:], strict=True):
            counters = entry.counters
            counters.packets_in -= 1
            counters.bytes_in -= len(packet)
            counters.dropped_tun_in += 1

    def _drain_raw(self, raw: RawLike) -> None:
        self._open_all(self._raw_packets(raw), None, "on the inbound path")

    def _raw_packets(self, raw: RawLike) -> Iterator[bytes]:
        """What one wakeup reads from a raw ESP socket: at most BATCH packets (give or
        take one ``recvmmsg``), and none after a packet that asked for a renewal (the
        engine runs before the next): with ``recv_many``, none after the rest of the
        batch that packet came in, which is out of the kernel already."""
        sealer = self.sealer
        recv_many = getattr(raw, "recv_many", None)
        if recv_many is not None:
            budget = BATCH
            while budget > 0:
                try:
                    got = recv_many()
                except OSError as exc:  # e.g. an ICMP error reported on the socket
                    self._drop("socket_error", f"raw ESP socket: {exc}")
                    budget -= 1
                    continue
                if got is None:
                    return
                packets, truncated = got
                if truncated:
                    self.drops["malformed"] += truncated - 1
                    self._drop("malformed", f"inbound: {truncated} raw ESP datagram(s) "
                               "larger than the receive buffer (truncated)")
                budget -= len(packets) + truncated
                # Read out of the kernel already: all of them are opened, and only
                # then does a renewal asked for on the way stop the reading.
                yield from packets
                if sealer.renewal_asked:
                    sealer.renewal_asked = False
                    return
                if not packets and not truncated:
                    return
            return
        recv = raw.recv
        for _ in range(BATCH):
            try:
                got = recv()
            except OSError as exc:  # e.g. an ICMP error reported on the socket
                self._drop("socket_error", f"raw ESP socket: {exc}")
                continue
            if got is None:
                return
            yield got[0]
            if sealer.renewal_asked:
                sealer.renewal_asked = False
                return

    def receive_esp_udp_many(self, datagrams: Iterable[bytes], local: Endpoint,
                             remote: Endpoint) -> None:
        """ESP-in-UDP datagrams that one receive brought from one peer, in their order."""
        self._open_all(iter(datagrams), remote, "on UDP-encapsulated ESP")

    def _open_all(self, packets: Iterator[bytes], remote: Endpoint | None, where: str) -> None:
        """:meth:`_open_many` over ``packets``; an unexpected error loses the packet it
        happened on, never the rest of the batch, and never reaches the event loop."""
        while True:
            try:
                self._open_many(packets, remote)
                return
            except Exception:
                log.exception("userspace: unexpected error %s", where)

    def _inbound(self, esp: bytes, remote: Endpoint | None = None) -> None:
        """Open ``esp`` and deliver it; ``remote``: where ESP-in-UDP came from (else None)."""
        self._open_many((esp,), remote)

    def _open_many(self, packets: Iterable[bytes], remote: Endpoint | None) -> None:
        """Open each of ``packets`` and deliver it, one after the other.

        ``remote``: where ESP-in-UDP came from (None for raw ESP). Each packet takes
        the same steps as it would alone (the SA looked up by its SPI, the counters
        and limits checked with it); what one batch shares (the TUN device, the
        lookup table, the drop log) is only looked up once.
        """
        drop = self._drop
        by_spi_in = self.sad.by_spi_in
        coalescing = self._coalescing
        pending = self._tun_pending
        pending_entries = self._tun_pending_entries
        permitted_key: bytes | None = None
        permitted_entry: SaEntry | None = None
        flush_scheduled = False
        for esp in packets:
            if len(esp) < 8:
                drop("malformed", f"inbound: {len(esp)}-octet ESP packet")
                continue
            spi = _SPI.unpack_from(esp)[0]
            entry = by_spi_in(spi)
            inbound = entry.inbound if entry is not None else None
            if entry is None or inbound is None:
                drop("unknown_spi", f"inbound: unknown SPI {spi:08x}")
                continue
            try:
                next_header, inner = inbound.open(esp)
            except EspReplayError as exc:
                drop("replay", str(exc))
                continue
            except EspIcvError as exc:
                drop("icv", str(exc))
                continue
            except EspError as exc:
                drop("malformed", str(exc))
                continue
            if entry.serial < 0:
                # Authenticated traffic on an SA we stand by with: the peer has it.
                self._promote(entry)
            if remote is not None and remote != entry.remote and entry.encap:
                self._nat_mapping_changed(entry, esp, remote)
            if next_header == IPPROTO_NONE:  # RFC 4303 §2.6 dummy packet
                continue
            # The inner packet's addresses (sad.address_key, written out here).
            length = len(inner)
            version = inner[0] >> 4 if length else 0
            if version == 4 and length >= 20:
                key: bytes | None = inner[12:20]
                inner_protocol = IPPROTO_IPIP
            elif version == 6 and length >= 40:
                key = inner[8:40]
                inner_protocol = IPPROTO_IPV6
            else:
                key = None
            if key is None or next_header != inner_protocol:
                drop("malformed", f"inbound SPI {spi:08x}: next header {next_header} "
                     "does not introduce an IP packet of that version")
                continue
            counters = entry.counters
            if counters.bytes_in + length > entry.hard_bytes:
                drop("life_bytes", f"inbound SPI {spi:08x}: {entry.name} carried its "
                     "life_bytes")
                self.sealer.hard_limit(entry, "life_bytes reached (inbound)")
                continue
            # A flow's packets repeat the previous packet's addresses: its verdict holds.
            if (key != permitted_key or entry is not permitted_entry) and \
                    not entry.permits_inbound_key(key):
                counters.dropped_policy_in += 1
                drop("policy", f"inbound SPI {spi:08x}: inner packet outside the "
                     "SA's traffic selectors")
                continue
            permitted_key, permitted_entry = key, entry
            # Only a SYN carries an MSS option (RFC 9293 §3.7.1): an IPv4 packet without
            # options whose TCP flags say otherwise, or that is not TCP, needs no look.
            if inner[0] != 0x45 or length < 40 or (inner[9] == 6 and inner[33] & 0x02):
                clamped = clamp_mss(inner, entry.mtu)
                if clamped is not None:
                    inner = clamped
                    length = len(inner)
            if coalescing:
                # Counted now; a failed write moves it to the drops (see _flush_tun).
                pending.append(inner)
                pending_entries.append(entry)
                if not flush_scheduled:
                    flush_scheduled = self._schedule_flush()
            else:
                try:
                    self.tun.write(inner)
                except OSError as exc:
                    counters.dropped_tun_in += 1
                    drop("tun_error", f"inbound: TUN write: {exc}")
                    continue
            counters.packets_in += 1
            counters.bytes_in += length
            if counters.bytes_in >= entry.soft_bytes_in:
                self.sealer.soft_limit(entry, "life_bytes nearly reached (inbound): renewing")

    # --- helpers ---------------------------------------------------------------------

    def _tunnel_mtu(self, sa: ChildSaEstablished, alg: EspAlgorithm) -> int:
        """What fits both the TUN device and, once sealed, the path to the peer."""
        peer = sa.remote[0]
        path = self._path_mtu(peer) if self._path_mtu is not None else 1500
        tun_mtu = getattr(self.tun, "mtu", 0xFFFF)
        mtu = min(tun_mtu if isinstance(tun_mtu, int) else 0xFFFF,
                  tunnel_mtu(path, alg, encap=sa.encap, outer_ipv6=":" in peer))
        log.debug("userspace: %s: tunnel MTU %d (path MTU %d to %s)",
                  f"{sa.conn}/{sa.child}", mtu, path, peer)
        return mtu

    def _nat_mapping_changed(self, entry: SaEntry, esp: bytes, remote: Endpoint) -> None:
        """Follow the peer's NAT mapping when authenticated ESP arrives from a new address/port.

        A NAT may rebind the peer's port 4500 to another public port (RFC 3948 §4:
        keepalives exist because mappings time out). The packet has passed its ICV,
        so only the peer can have sent it; and only the newest sequence number may
        move the SA, so an attacker replaying an old packet from elsewhere cannot
        (the kernel's XFRM does the same before reporting XFRM_MSG_MAPPING).
        """
        if entry.inbound is None or peek_seq(esp) != entry.inbound.replay.top:
            return
        log.info("userspace: %s: peer's UDP-encapsulated ESP now comes from %s port %d "
                 "(was %s port %d); following the NAT mapping",
                 entry.name, remote[0], remote[1], entry.remote[0], entry.remote[1])
        entry.remote = remote
        if (entry.spi_in, entry.spi_out) in self._worker_sas:
            self._to_worker(encode(MsgType.SA_REMOTE, spi_in=entry.spi_in,
                                   spi_out=entry.spi_out, remote=remote[0],
                                   remote_port=remote[1]))

    def _route_ref(self, net: Network, src: str | None) -> None:
        """Route ``net`` into the TUN device unless an SA already did.

        During a make-before-break rekey both SAs cover the same networks: the
        route stays until the last SA needing it is removed.
        """
        count = self._route_refs.get(net, 0)
        if count == 0:
            self.routes.add(net, src)
        self._route_refs[net] = count + 1

    def _bypass_ref(self, peer: str) -> None:
        count = self._bypass_refs.get(peer, 0)
        if count == 0:
            self._save(pending=peer)  # before it exists: a crash right after leaves it listed
            pinned = self.routes.add_bypass(peer)
            self._save()
            if not pinned:
                log.warning("userspace: the SA's remote networks contain the peer %s, but its "
                            "route could not be pinned outside %s", peer, self.tun.name)
        self._bypass_refs[peer] = count + 1

    def _bypass_unref(self, peer: str) -> None:
        count = self._bypass_refs.pop(peer, 0)
        if count > 1:
            self._bypass_refs[peer] = count - 1
        elif count == 1:
            self.routes.remove_bypass(peer)
            self._save()

    def _route_unref(self, net: Network) -> None:
        count = self._route_refs.pop(net, 0)
        if count > 1:
            self._route_refs[net] = count - 1
        elif count == 1:
            self.routes.remove(net)

    def _add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        if self._loop is None or fd < 0:
            return
        self._loop.add_reader(fd, callback)
        self._readers.append(fd)

    # --- the sealing worker (dataplane_workers = 2) ------------------------------------

    def _start_worker(self) -> None:
        """Start the worker and hand it every SA and trap; on failure seal in-process."""
        loop = self._loop
        if loop is None or self._closed:
            return
        now = loop.time()
        self._worker_starts = [t for t in self._worker_starts if now - t < _RESTART_WINDOW]
        if len(self._worker_starts) >= _RESTARTS:
            self._seal_in_process(f"it was restarted {_RESTARTS} times within "
                                  f"{_RESTART_WINDOW:.0f} s")
            return
        self._worker_starts.append(now)
        raw6 = self.raw6.fileno() if self.raw6 is not None else -1
        setup: dict[str, object] = {
            "tun_fd": self.tun.fileno(), "tun_name": self.tun.name,
            "vnet_hdr": getattr(self.tun, "vnet_hdr", False) is True,
            "raw4_fd": self.raw4.fileno(), "raw6_fd": raw6, "udp": list(self._udp_fds),
            "log_level": logging.getLogger("ikev1d").getEffectiveLevel(),
        }
        fds = [self.tun.fileno(), self.raw4.fileno(), raw6,
               *(int(spec.split()[0]) for spec in self._udp_fds)]
        worker = self._worker_factory(loop, setup, fds, self._on_worker_message,
                                      self._on_worker_lost)
        try:
            worker.start()
        except DataplaneError as exc:
            self._seal_in_process(str(exc))
            return
        self.worker = worker
        self._worker_drops = dict.fromkeys(DROP_REASONS, 0)
        for key, trap in self._traps.items():
            worker.send(encode(MsgType.INSTALL_TRAP, conn=key[0], child=key[1],
                               local_ts=[_prefix_text(p) for p in trap.local_ts],
                               remote_ts=[_prefix_text(p) for p in trap.remote_ts]))
        for spi_in, spi_out in self._worker_sas:
            entry = self.sad.get(spi_in, spi_out)
            if entry is not None:
                self._install_in_worker(entry)
        if self._counters_timer is None:
            self._counters_timer = loop.call_later(COUNTERS_INTERVAL, self._request_counters)

    def _install_in_worker(self, entry: SaEntry) -> None:
        """The SA in the worker, its sequence numbers continuing after the highest the
        worker reserved (this process's copy of the outbound SA records that) and its
        counters where the last report left them."""
        fields = self._worker_sas.get((entry.spi_in, entry.spi_out))
        if fields is not None:
            self._to_worker(self._install_message(entry, fields))

    @staticmethod
    def _install_message(entry: SaEntry, fields: dict[str, object]) -> bytes:
        counters = entry.counters
        return encode(
            MsgType.INSTALL_SA, **fields, local=entry.local[0], local_port=entry.local[1],
            remote=entry.remote[0], remote_port=entry.remote[1], encap=entry.encap,
            seq=entry.outbound.seq, bytes_out=counters.bytes_out,
            packets_out=counters.packets_out, dropped_out=counters.dropped_out,
            standby=entry.serial < 0)

    def _to_worker(self, data: bytes) -> None:
        """A message to the worker; a worker that cannot take it is restarted, and the
        restart installs the current state, so nothing is left half-installed."""
        if self.worker is not None:
            self.worker.send(data)

    def _request_counters(self) -> None:
        self._counters_timer = None
        if self._closed or self.worker is None or self._loop is None:
            return
        self._to_worker(encode(MsgType.COUNTERS_REQUEST))
        self._counters_timer = self._loop.call_later(COUNTERS_INTERVAL, self._request_counters)

    def _on_worker_message(self, msg: Message) -> None:
        kind = msg.type
        if kind == MsgType.SEQ_RESERVED:
            entry = self.sad.get(msg.get_int("spi_in"), msg.get_int("spi_out"))
            if entry is not None:
                upto = msg.get_int("upto")
                if entry.outbound.seq < upto <= entry.outbound.max_seq:
                    entry.outbound.seq = upto
        elif kind == MsgType.COUNTERS:
            for row in msg.get_rows("sas"):
                if len(row) != 5:
                    continue
                entry = self.sad.get(row[0], row[1])
                if entry is not None:
                    c = entry.counters
                    c.bytes_out, c.packets_out, c.dropped_out = row[2], row[3], row[4]
            totals = msg.get_ints("drops")
            for reason, total in zip(DROP_REASONS, totals, strict=False):
                grew = total - self._worker_drops[reason]
                if grew > 0:
                    self.drops[reason] += grew
                    self._worker_drops[reason] = total
        elif kind == MsgType.EXPIRE:
            if msg.get_bool("hard"):
                self._promote_all()
            if self.sealer.expired is not None:
                self.sealer.expired(msg.get_int("child_id"), msg.get_bool("hard"),
                                    msg.get_str("reason"))
        elif kind == MsgType.ACQUIRE:
            if self.sealer.acquire is not None:
                self.sealer.acquire(msg.get_str("conn"), msg.get_str("child"))
        elif kind == MsgType.LOG:
            level = msg.get_int("level")
            worker_log.log(level if 0 < level <= logging.CRITICAL else logging.ERROR,
                           "%s", msg.get_str("text"))
        elif kind == MsgType.READY:
            log.info("userspace: sealing worker running (pid %d)", msg.get_int("pid"))

    def _on_worker_lost(self, reason: str) -> None:
        worker, self.worker = self.worker, None
        if self._closed:
            return
        pid = worker.pid if worker is not None else None
        log.warning("userspace: sealing worker (pid %s) is gone: %s; restarting it with "
                    "the %d outbound SAs", pid, reason, len(self._worker_sas))
        self._start_worker()

    def _seal_in_process(self, reason: str) -> None:
        """Give up on the worker: seal here, continuing every SA's sequence numbers
        after the worker's last reservation."""
        log.warning("userspace: no sealing worker (%s); sealing in the daemon from now on",
                    reason)
        self.workers = 1
        self.worker = None
        self._worker_sas.clear()
        self._add_reader(self.tun.fileno(), self.handle_tun_readable)

    def _stop_worker(self) -> None:
        if self._counters_timer is not None:
            self._counters_timer.cancel()
            self._counters_timer = None
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop()

    def _open_raw6(self) -> None:
        if self.raw6 is not None:
            return
        if self._raw6_factory is None:
            raise DataplaneError("raw ESP over IPv6 is not available")
        try:
            raw6 = self._raw6_factory()
        except OSError as exc:
            raise DataplaneError(f"raw ESP over IPv6: {exc}") from None
        self.raw6 = raw6
        self.sealer.raw6 = raw6
        self._add_reader(raw6.fileno(), lambda: self._drain_raw(raw6))

    def _schedule_keepalive(self) -> None:
        if self._keepalive is None and self._loop is not None:
            self._keepalive = self._loop.call_later(NAT_KEEPALIVE_INTERVAL, self._send_keepalives)

    def _cool_idle(self) -> None:
        """Idle SAs let their cipher contexts go (see ``Sad.cool_idle``)."""
        self._cool = None
        if self._closed or self._loop is None:
            return
        cooled = self.sad.cool_idle()
        if cooled:
            log.debug("userspace: %d idle SAs let their cipher contexts go", cooled)
        self._cool = self._loop.call_later(CONTEXT_IDLE_S, self._cool_idle)

    def _send_keepalives(self) -> None:
        """RFC 3948 §2.3: a one-octet 0xFF datagram to each UDP-encapsulating peer.

        The SA tells us it is encapsulated, not which side is behind the NAT, so every
        encapsulated peer gets them; a peer not behind NAT discards them (RFC 3948 §4).
        """
        self._keepalive = None
        send_udp = self._send_udp
        peers = {(e.local, e.remote) for e in self.sad if e.encap}
        if not peers or send_udp is None or self._closed:
            return
        for local, remote in peers:
            try:
                send_udp(NAT_KEEPALIVE, local, remote)
            except OSError as exc:
                log.debug("NAT-T keepalive to %s: %s", remote[0], exc)
        self._schedule_keepalive()


_SPI: Final = struct.Struct("!I")
"""The SPI that starts an ESP packet (RFC 4303 §2.1)."""


def _prefix_text(p: Prefix) -> str:
    return str(ipaddress.ip_network((p.network, p.length)))


def _packets_in(buffer: bytes) -> int:
    """How many received packets a buffer from ``coalesce_tcp`` carries."""
    _flags, gso_type, hdr_len, gso_size, _start, _offset = VNET_HDR.unpack_from(buffer)
    if gso_type == 0 or gso_size == 0:
        return 1
    return int(-(-(len(buffer) - VNET_HDR_LEN - hdr_len) // gso_size))


def create_backend(config: object = None) -> UserspaceBackend:
    """Open the TUN device and the raw ESP socket; DataplaneError (cleaned up) if impossible.

    ``config.daemon.tun_name`` / ``tun_mtu`` / ``tun_offload`` are used when the
    configuration has them.
    """
    from ikev1d.dataplane.linux.pmtu import path_mtu
    from ikev1d.dataplane.linux.tun import (
        DEFAULT_MTU,
        DEFAULT_TUN_NAME,
        Netlink,
        RawEspSocket,
        Routes,
        TunDevice,
    )

    daemon = getattr(config, "daemon", None)
    name = getattr(daemon, "tun_name", None)
    mtu = getattr(daemon, "tun_mtu", None)
    wanted = getattr(daemon, "tun_offload", "gro")
    workers = getattr(daemon, "dataplane_workers", 1)
    workers = workers if isinstance(workers, int) and workers in (1, 2) else 1
    offload = str(wanted) if str(wanted) in ("off", "gro", "tso") else "gro"
    tun_name = name if isinstance(name, str) and name else DEFAULT_TUN_NAME
    tun_mtu = mtu if isinstance(mtu, int) and mtu >= 576 else DEFAULT_MTU

    cleanups: list[Callable[[], None]] = []
    try:
        netlink = Netlink()
        cleanups.append(netlink.close)
        tun = TunDevice(netlink, tun_name, tun_mtu, offload=offload)
        cleanups.append(tun.close)
        raw4 = RawEspSocket()
        cleanups.append(raw4.close)
        routes = Routes(netlink, tun.index)
    except OSError as exc:
        for cleanup in reversed(cleanups):
            cleanup()
        raise DataplaneError(f"userspace data plane cannot start: {exc.strerror or exc}") from None
    except Exception as exc:  # e.g. pyroute2 missing or failing in an unexpected way
        for cleanup in reversed(cleanups):
            cleanup()
        raise DataplaneError(f"userspace data plane cannot start: {exc}") from None
    log.info("userspace data plane on %s (MTU %d, TUN offload %s%s)", tun.name, tun_mtu,
             tun.offload, ", sealing in a worker process" if workers > 1 else "")
    return UserspaceBackend(tun, raw4, routes,
                            raw6_factory=RawEspSocket.ipv6,
                            on_close=netlink.close, path_mtu=path_mtu, workers=workers)
