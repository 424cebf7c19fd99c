"""``dataplane = "userspace"``: ikev1d carries the tunnelled traffic itself.

Outbound: packets the kernel routes into our TUN device are matched to an SA by
traffic selectors (:mod:`ikev1d.dataplane.sad`), sealed in ESP tunnel mode
(RFC 4303 §2.6: the whole inner packet, next header 4 or 41), and sent either
as raw ESP (IP protocol 50) or, when the SA is UDP-encapsulated (NAT-T,
RFC 3948), through the daemon's port-4500 socket.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    EspError,
    EspIcvError,
    EspReplayError,
    EspSequenceExhausted,
    InboundSa,
    OutboundSa,
    esp_algorithm,
    peek_seq,
)
from ikev1d.dataplane.linux.gso import MAX_BYTES, MAX_SEGMENTS
from ikev1d.dataplane.linux.offload import VNET_HDR, VNET_HDR_LEN, VnetHeaderError, coalesce_tcp
from ikev1d.dataplane.linux.offload import packets as vnet_packets
from ikev1d.dataplane.mss import IcmpLimiter, clamp_mss, too_big, tunnel_mtu
from ikev1d.dataplane.sad import (
    CONTEXT_IDLE_S,
    NO_LIMIT,
    Prefix,
    Sad,
    SaEntry,
    address_key,
    prefixes,
)
from ikev1d.dataplane.statefile import StateFile
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

_BATCH: Final = 256
"""Packets handled per readiness event before yielding to the loop (fairness to IKE)."""
_LOG_INTERVAL: Final = 10.0
ACQUIRE_INTERVAL: Final = 1.0
"""Seconds between two acquires for one trap: a burst of packets asks once."""
NAT_KEEPALIVE_INTERVAL: Final = 20.0
"""RFC 3948 §4: keepalives every 20 s keep NAT mappings of UDP-encapsulated SAs alive."""

DROP_REASONS: Final = (
    "not_ip",        # TUN gave something that is not an IPv4/IPv6 packet
    "no_sa",         # no SA covers the packet's addresses
    "trapped",       # no SA yet, but a trap covers it: the child is being negotiated
    "seq_exhausted", # the SA's sequence numbers ran out (RFC 4303 §3.3.3)
    "life_bytes",    # the SA carried its life_bytes; a renewed one should have taken over
    "send_error",    # the socket refused the ESP packet (buffer full, no route)
    "unknown_spi",   # ESP for an SPI we do not have
    "replay",        # RFC 4303 §3.4.3
    "icv",           # RFC 4303 §3.4.4
    "malformed",     # too short, bad padding, wrong next header
    "policy",        # inner addresses outside the SA's selectors (RFC 4301 §5.2)
    "tun_error",     # the TUN device refused the decrypted packet
    "socket_error",  # reading the TUN device or raw socket failed
    "too_big",       # larger than the SA's tunnel MTU, DF set or IPv6: ICMP sent back
    "offload",       # a TUN read whose virtio-net header does not fit its packet
)

_QUIET_REASONS: Final = frozenset({"not_ip", "no_sa"})
"""Drops logged at debug level only: the kernel itself sends packets into the TUN device
(IPv6 router solicitations, MLD reports) that no SA covers, and that is not news."""


SendUdpMany = Callable[[Sequence[bytes], Endpoint, Endpoint], None]
"""``send_many(datagrams, local, remote)``: ESP-in-UDP datagrams of one size (the last may
be shorter) to one peer in one go (UDP GSO)."""


class TunLike(Protocol):
    name: str

    def fileno(self) -> int: ...
    def read(self) -> bytes | None: ...
    def write(self, packet: bytes) -> None: ...
    def close(self) -> None: ...


class RawLike(Protocol):
    def fileno(self) -> int: ...
    def recv(self) -> tuple[bytes, str] | None: ...
    def send(self, esp: bytes, local: str, remote: str) -> None: ...
    def close(self) -> None: ...


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


@dataclass
class _Trap:
    name: str
    local_ts: tuple[Prefix, ...]
    remote_ts: tuple[Prefix, ...]
    routes: tuple[Network, ...]
    bypass: str | None
    acquired_at: float = -ACQUIRE_INTERVAL

    def covers(self, key: bytes) -> bool:
        half = len(key) // 2
        version = 4 if half == 4 else 6
        src, dst = int.from_bytes(key[:half], "big"), int.from_bytes(key[half:], "big")
        return (any(p.contains(version, src) for p in self.local_ts)
                and any(p.contains(version, dst) for p in self.remote_ts))


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
    ) -> None:
        """``on_close`` runs last in :meth:`close` (the netlink helper's shutdown);
        ``path_mtu(peer)`` gives the MTU of the route to a peer (1500 when not given)."""
        self.tun = tun
        self.raw4 = raw4
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
        self._log_next: dict[str, float] = {}
        self._log_suppressed: dict[str, int] = {}
        self._closed = False
        self._on_close = on_close
        self._path_mtu = path_mtu
        self._send_udp_many: SendUdpMany | None = None
        self._batch: list[bytes] = []
        """Sealed ESP-in-UDP datagrams for ``_batch_entry``'s peer, sent by :meth:`_flush_udp`."""
        self._batch_entry: SaEntry | None = None
        self._batch_bytes = 0
        self._batch_inner = 0
        self._icmp = IcmpLimiter()
        self._expired: ExpireHandler | None = None
        self._acquire: AcquireHandler | None = None
        self._traps: dict[tuple[str, str], _Trap] = {}
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
        self._renewal_asked = False
        """Set when an SA asked to be renewed: the packet loop yields, so that the
        engine sends the Quick Mode before the rest of the batch uses up the SA."""

    # --- DataplaneBackend -----------------------------------------------------------

    def attach(self, send_udp: SendUdp, loop: asyncio.AbstractEventLoop) -> None:
        """Remember how to send ESP-in-UDP and start reading the TUN device and raw socket.

        Objects whose ``fileno()`` is negative (test fakes) are not registered; the
        tests call :meth:`handle_tun_readable` / :meth:`handle_raw_readable` instead.
        """
        self._send_udp = send_udp
        self._loop = loop
        self._add_reader(self.tun.fileno(), self.handle_tun_readable)
        self._add_reader(self.raw4.fileno(), self.handle_raw_readable)
        self._cool = loop.call_later(CONTEXT_IDLE_S, self._cool_idle)

    def attach_batch(self, send_many: SendUdpMany) -> None:
        """Send ESP-in-UDP in batches through ``send_many`` (the daemon's UDP GSO path):
        the packets one TUN readiness event yields for one SA go out in few system calls."""
        self._send_udp_many = send_many

    def set_expire_handler(self, handler: ExpireHandler) -> None:
        self._expired = handler

    def set_acquire_handler(self, handler: AcquireHandler) -> None:
        self._acquire = handler

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
        new = _Trap(name, prefixes(trap.local_ts), prefixes(trap.remote_ts),
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
        log.debug("userspace: trap for %s: %s via %s", name,
                  ", ".join(map(str, remote_networks)), self.tun.name)

    def remove_trap(self, conn: str, child: str) -> None:
        old = self._traps.pop((conn, child), None)
        if old is None:
            return
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

    def install(self, sa: ChildSaEstablished) -> None:
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
        if self.sad.get(sa.spi_in, sa.spi_out) is not None:  # installed twice: replace
            self.remove(ChildSaDeleted(sa.conn, sa.child, sa.ike_id, sa.child_id,
                                       sa.spi_in, sa.spi_out, "reinstalled"))
        src = self._source_for(sa)
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
        self.sad.add(entry)
        if sa.encap:
            self._schedule_keepalive()
        log.debug(
            "userspace: installed %s SPIs %08x_i %08x_o, %s via %s%s",
            entry.name, sa.spi_in, sa.spi_out,
            ", ".join(map(str, sa.remote_ts)), self.tun.name, f" src {src}" if src else "",
        )

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

    def remove(self, sa: ChildSaDeleted) -> None:
        entry = self.sad.remove(sa.spi_in, sa.spi_out)
        if entry is None:
            return
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
        esp = entry.inbound.counters
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
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._cool is not None:
            self._cool.cancel()
            self._cool = None
        if self._loop is not None:
            for fd in self._readers:
                self._loop.remove_reader(fd)
        self._readers.clear()
        for entry in self.sad:
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
        """Seal and send what the TUN device has queued (at most ``_BATCH`` packets,
        segments of super-packets counted one by one)."""
        read = self.tun.read
        outbound = self._outbound
        vnet = getattr(self.tun, "vnet_hdr", False) is True
        budget = _BATCH
        try:
            while budget > 0:
                try:
                    packet = read()
                except OSError as exc:
                    self._drop("socket_error", f"reading {self.tun.name}: {exc}")
                    return
                if packet is None:
                    return
                if vnet:
                    try:
                        segments = vnet_packets(packet)
                    except VnetHeaderError as exc:
                        budget -= 1
                        self._drop("offload", f"reading {self.tun.name}: {exc}")
                        continue
                    budget -= len(segments)
                    for segment in segments:
                        outbound(segment)
                else:
                    budget -= 1
                    outbound(packet)
                if self._renewal_asked:
                    self._renewal_asked = False
                    return
        except Exception:
            log.exception("userspace: unexpected error on the outbound path")
        finally:
            if self._batch:
                self._flush_udp()

    def handle_raw_readable(self) -> None:
        self._drain_raw(self.raw4)

    @property
    def _coalescing(self) -> bool:
        return getattr(self.tun, "vnet_hdr", False) is True and self._loop is not None

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
        recv = raw.recv
        inbound = self._inbound
        try:
            for _ in range(_BATCH):
                try:
                    got = recv()
                except OSError as exc:  # e.g. an ICMP error reported on the socket
                    self._drop("socket_error", f"raw ESP socket: {exc}")
                    continue
                if got is None:
                    return
                inbound(got[0])
                if self._renewal_asked:
                    self._renewal_asked = False
                    return
        except Exception:
            log.exception("userspace: unexpected error on the inbound path")

    def _outbound(self, packet: bytes) -> None:
        key = address_key(packet)
        if key is None:
            self._drop("not_ip", "outbound: not an IP packet")
            return
        entry = self.sad.lookup_outbound_key(key)
        if entry is None:
            if self._traps and self._trapped(key):
                return
            self._drop("no_sa", "outbound: no SA covers the packet")
            return
        if len(packet) > entry.mtu and self._too_big(packet, entry):
            return
        clamped = clamp_mss(packet, entry.mtu)
        if clamped is not None:
            packet = clamped
        counters = entry.counters
        if counters.bytes_out + len(packet) > entry.hard_bytes:
            counters.dropped_out += 1
            self._drop("life_bytes", f"outbound: {entry.name} carried its life_bytes")
            self._hard_limit(entry, "life_bytes reached (outbound)")
            return
        try:
            esp = entry.outbound.seal(packet, IPPROTO_IPIP if len(key) == 8 else IPPROTO_IPV6)
        except EspSequenceExhausted as exc:
            counters.dropped_out += 1
            self._drop("seq_exhausted", str(exc))
            self._hard_limit(entry, "sequence numbers used up")
            return
        except EspError as exc:
            counters.dropped_out += 1
            self._drop("malformed", f"outbound: {exc}")
            return
        if entry.encap and self._send_udp_many is not None:
            self._queue_udp(esp, entry, len(packet))
        else:
            try:
                self._send(esp, entry)
            except OSError as exc:
                counters.dropped_out += 1
                self._drop("send_error", f"outbound to {entry.remote[0]}: {exc}")
                return
        counters.packets_out += 1
        counters.bytes_out += len(packet)
        if counters.bytes_out >= entry.soft_bytes_out:
            self._soft_limit(entry, "life_bytes nearly reached (outbound): renewing")
        elif entry.outbound.seq >= entry.soft_seq:
            self._soft_limit(entry, "sequence numbers nearly used up: renewing")

    def _send(self, esp: bytes, entry: SaEntry) -> None:
        """One ESP packet to the SA's peer, raw or UDP-encapsulated; OSError if refused."""
        if entry.encap:
            send_udp = self._send_udp
            if send_udp is None:
                raise OSError("not attached to the daemon's UDP sockets")
            send_udp(esp, entry.local, entry.remote)
        else:
            raw = self.raw4 if ":" not in entry.remote[0] else self.raw6
            if raw is None:
                raise OSError("no IPv6 raw ESP socket")
            raw.send(esp, entry.local[0], entry.remote[0])

    def _queue_udp(self, esp: bytes, entry: SaEntry, inner_length: int) -> None:
        """Add ``esp`` to the batch for its SA's peer, sending the batch first if ``esp``
        cannot join it: another SA, a larger datagram than the batch's (GSO cuts every
        datagram to the first one's size), or the batch is full. A shorter datagram
        joins as the last one."""
        batch = self._batch
        if batch and (entry is not self._batch_entry or len(esp) > len(batch[0])
                      or len(batch) >= MAX_SEGMENTS
                      or self._batch_bytes + len(esp) > MAX_BYTES):
            self._flush_udp()
            batch = self._batch  # a fresh list: the old one went out
        batch.append(esp)
        self._batch_entry = entry
        self._batch_bytes += len(esp)
        self._batch_inner += inner_length
        if len(esp) < len(batch[0]):
            self._flush_udp()

    def _flush_udp(self) -> None:
        batch, entry = self._batch, self._batch_entry
        inner = self._batch_inner
        self._batch = []
        self._batch_entry = None
        self._batch_bytes = self._batch_inner = 0
        if not batch or entry is None or self._send_udp_many is None:
            return
        try:
            self._send_udp_many(batch, entry.local, entry.remote)
        except OSError as exc:
            # Counted as sent when queued: move them to the drops.
            counters = entry.counters
            counters.packets_out -= len(batch)
            counters.bytes_out -= inner
            counters.dropped_out += len(batch)
            self.drops["send_error"] += len(batch) - 1
            self._drop("send_error", f"outbound to {entry.remote[0]}: {exc}")

    def _inbound(self, esp: bytes, remote: Endpoint | None = None) -> None:
        """Open ``esp`` and deliver it; ``remote``: where ESP-in-UDP came from (else None)."""
        if len(esp) < 8:
            self._drop("malformed", f"inbound: {len(esp)}-octet ESP packet")
            return
        spi = int.from_bytes(esp[:4], "big")
        entry = self.sad.by_spi_in(spi)
        if entry is None:
            self._drop("unknown_spi", f"inbound: unknown SPI {spi:08x}")
            return
        try:
            next_header, inner = entry.inbound.open(esp)
        except EspReplayError as exc:
            self._drop("replay", str(exc))
            return
        except EspIcvError as exc:
            self._drop("icv", str(exc))
            return
        except EspError as exc:
            self._drop("malformed", str(exc))
            return
        if remote is not None and remote != entry.remote and entry.encap:
            self._nat_mapping_changed(entry, esp, remote)
        if next_header == IPPROTO_NONE:  # RFC 4303 §2.6 dummy packet
            return
        key = address_key(inner)
        if key is None or next_header != (IPPROTO_IPIP if len(key) == 8 else IPPROTO_IPV6):
            self._drop("malformed", f"inbound SPI {spi:08x}: next header {next_header} "
                       "does not introduce an IP packet of that version")
            return
        counters = entry.counters
        if counters.bytes_in + len(inner) > entry.hard_bytes:
            self._drop("life_bytes", f"inbound SPI {spi:08x}: {entry.name} carried its "
                       "life_bytes")
            self._hard_limit(entry, "life_bytes reached (inbound)")
            return
        if not entry.permits_inbound_key(key):
            counters.dropped_policy_in += 1
            self._drop("policy", f"inbound SPI {spi:08x}: inner packet outside the "
                       "SA's traffic selectors")
            return
        clamped = clamp_mss(inner, entry.mtu)
        if clamped is not None:
            inner = clamped
        if self._coalescing:
            # Counted now; a failed write moves it to the drops (see _flush_tun).
            self._tun_pending.append(inner)
            self._tun_pending_entries.append(entry)
            if not self._tun_flush_scheduled and self._loop is not None:
                self._tun_flush_scheduled = True
                self._loop.call_soon(self._flush_tun)
        else:
            try:
                self.tun.write(inner)
            except OSError as exc:
                counters.dropped_tun_in += 1
                self._drop("tun_error", f"inbound: TUN write: {exc}")
                return
        counters.packets_in += 1
        counters.bytes_in += len(inner)
        if counters.bytes_in >= entry.soft_bytes_in:
            self._soft_limit(entry, "life_bytes nearly reached (inbound): renewing")

    # --- helpers ---------------------------------------------------------------------

    def _trapped(self, key: bytes) -> bool:
        """A packet without SA: if a trap covers it, drop it and ask for the child."""
        found = next((item for item in self._traps.items() if item[1].covers(key)), None)
        if found is None:
            return False
        (conn, child), trap = found
        self._drop("trapped", f"outbound: {trap.name} has no SA yet")
        now = self._loop.time() if self._loop is not None else 0.0
        if now - trap.acquired_at >= ACQUIRE_INTERVAL:
            trap.acquired_at = now
            log.debug("userspace: traffic for %s: acquiring", trap.name)
            if self._acquire is not None:
                self._acquire(conn, child)
        return True

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

    def _too_big(self, packet: bytes, entry: SaEntry) -> bool:
        """Answer an oversized packet that must not be fragmented; False: send it anyway
        (IPv4 without DF: its ESP datagram is fragmented on the way)."""
        answer = too_big(packet, entry.mtu)
        if answer is None:
            return False
        entry.counters.dropped_out += 1
        self._drop("too_big", f"outbound: {len(packet)}-octet packet for {entry.name}, "
                   f"tunnel MTU {entry.mtu}")
        now = self._loop.time() if self._loop is not None else 0.0
        if self._icmp.allow(now):
            try:
                self.tun.write(answer)
            except OSError as exc:
                log.debug("userspace: ICMP too big into %s: %s", self.tun.name, exc)
        return True

    def _nat_mapping_changed(self, entry: SaEntry, esp: bytes, remote: Endpoint) -> None:
        """Follow the peer's NAT mapping when authenticated ESP arrives from a new address/port.

        A NAT may rebind the peer's port 4500 to another public port (RFC 3948 §4:
        keepalives exist because mappings time out). The packet has passed its ICV,
        so only the peer can have sent it; and only the newest sequence number may
        move the SA, so an attacker replaying an old packet from elsewhere cannot
        (the kernel's XFRM does the same before reporting XFRM_MSG_MAPPING).
        """
        if peek_seq(esp) != entry.inbound.replay.top:
            return
        log.info("userspace: %s: peer's UDP-encapsulated ESP now comes from %s port %d "
                 "(was %s port %d); following the NAT mapping",
                 entry.name, remote[0], remote[1], entry.remote[0], entry.remote[1])
        entry.remote = remote

    def _soft_limit(self, entry: SaEntry, reason: str) -> None:
        """Ask once for the SA to be renewed (the limits are cleared so it is once)."""
        entry.soft_bytes_out = entry.soft_bytes_in = entry.soft_seq = NO_LIMIT
        self._renewal_asked = True
        log.info("userspace: %s SPIs %08x_i %08x_o: %s", entry.name, entry.spi_in,
                 entry.spi_out, reason)
        if self._expired is not None:
            self._expired(entry.child_id, False, reason)

    def _hard_limit(self, entry: SaEntry, reason: str) -> None:
        """The SA is not used any more: tell the engine once, which deletes it."""
        if entry.hard_reported:
            return
        entry.hard_reported = True
        log.warning("userspace: %s SPIs %08x_i %08x_o: %s; no longer used", entry.name,
                    entry.spi_in, entry.spi_out, reason)
        if self._expired is not None:
            self._expired(entry.child_id, True, reason)

    def _drop(self, reason: str, detail: str) -> None:
        """Count a dropped packet; debug log each, info log at most every _LOG_INTERVAL s."""
        self.drops[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("ESP packet dropped (%s): %s", reason, detail)
        if reason in _QUIET_REASONS:
            return
        now = self._loop.time() if self._loop is not None else 0.0
        if now >= self._log_next.get(reason, 0.0):
            suppressed = self._log_suppressed.pop(reason, 0)
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            log.info("ESP packet dropped (%s): %s%s", reason, detail, more)
            self._log_next[reason] = now + _LOG_INTERVAL
        else:
            self._log_suppressed[reason] = self._log_suppressed.get(reason, 0) + 1

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
    log.info("userspace data plane on %s (MTU %d, TUN offload %s)", tun.name, tun_mtu,
             tun.offload)
    return UserspaceBackend(tun, raw4, routes,
                            raw6_factory=RawEspSocket.ipv6,
                            on_close=netlink.close, path_mtu=path_mtu)
