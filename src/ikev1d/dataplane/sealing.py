"""The sealing direction of the userspace data plane: TUN read to ESP send.

What a packet the kernel routes into the TUN device goes through: the SA
lookup by traffic selectors (:mod:`ikev1d.dataplane.sad`), a trap's
first-packet detection when no SA covers it, ICMP "too big" back into the TUN
device and TCP MSS clamping (:mod:`ikev1d.dataplane.mss`), the SA's volume
limit, ESP tunnel mode sealing (RFC 4303 §2.6, the outbound sequence number of
§3.3.3 and its overflow), and the send: raw ESP (IP protocol 50) or ESP-in-UDP
(RFC 3948) batched for UDP GSO.

A :class:`Sealer` runs either inside the daemon (``dataplane_workers = 1``,
sharing the daemon's SAD) or alone in the data plane worker process
(:mod:`ikev1d.dataplane.worker`), which then owns the outbound sequence numbers:
only one process ever seals with an SA, so a sequence number is never used
twice (RFC 4303 §3.3.3). Nothing here knows which of the two it is in: the
owner passes the TUN device, the sockets, a clock and where limits and acquires
are reported.

A packet that fails anywhere is dropped and counted, never raised; drops are
logged at debug level per packet and at most every ``_LOG_INTERVAL`` seconds per
reason at info level (:class:`DropLog`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

from ikev1d.dataplane.base import AcquireHandler, ExpireHandler
from ikev1d.dataplane.esp import EspError, EspSequenceExhausted
from ikev1d.dataplane.linux.gso import MAX_BYTES, MAX_SEGMENTS
from ikev1d.dataplane.linux.offload import GSO_NONE, NEEDS_CSUM, VNET_HDR_LEN, VnetHeaderError
from ikev1d.dataplane.linux.offload import packets as vnet_packets
from ikev1d.dataplane.mss import IcmpLimiter, clamp_mss, too_big
from ikev1d.dataplane.sad import NO_LIMIT, Prefix, Sad, SaEntry, address_key
from ikev1d.engine.api import Endpoint, Network
from ikev1d.wire.constants import IPPROTO_IPIP, IPPROTO_IPV6

__all__ = [
    "ACQUIRE_INTERVAL",
    "BATCH",
    "DROP_REASONS",
    "DropLog",
    "RawBatchLike",
    "RawLike",
    "Sealer",
    "SendUdpMany",
    "Trap",
    "TunLike",
]

log = logging.getLogger("ikev1d.dataplane.userspace")
"""The userspace data plane's logger, whichever process seals."""

BATCH: Final = 256
"""Packets handled per readiness event before yielding (fairness to IKE)."""
RAW_BATCH: Final = 64
"""Raw ESP packets per ``sendmmsg`` (the socket's preallocated slots,
:data:`ikev1d.dataplane.linux.mmsg.SLOTS`)."""
_LOG_INTERVAL: Final = 10.0
ACQUIRE_INTERVAL: Final = 1.0
"""Seconds between two acquires for one trap: a burst of packets asks once."""

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

_IPV4_HEADER: Final = 20
_IPV6_HEADER: Final = 40
_IPPROTO_TCP: Final = 6
_TCP_FLAGS: Final = 13
"""Offset of the flags octet in the TCP header (RFC 9293 §3.1)."""
_TCP_SYN: Final = 0x02

_QUIET_REASONS: Final = frozenset({"not_ip", "no_sa"})
"""Drops logged at debug level only: the kernel itself sends packets into the TUN device
(IPv6 router solicitations, MLD reports) that no SA covers, and that is not news."""


SendUdpMany = Callable[[Sequence[bytes], Endpoint, Endpoint], None]
"""``send_many(datagrams, local, remote)``: ESP-in-UDP datagrams of one size (the last may
be shorter) to one peer in one go (UDP GSO)."""
SendUdp = Callable[[bytes, Endpoint, Endpoint], None]


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


@runtime_checkable
class RawBatchLike(RawLike, Protocol):
    """A raw ESP socket that sends many packets per system call (``sendmmsg``)."""

    def send_many(self, packets: list[tuple[bytes, str, str]]) -> list[tuple[int, OSError]]:
        ...


@dataclass
class Trap:
    """A trapped child: its selectors (what is caught) and what routes it into the TUN."""

    name: str
    local_ts: tuple[Prefix, ...]
    remote_ts: tuple[Prefix, ...]
    routes: tuple[Network, ...] = ()
    bypass: str | None = None
    acquired_at: float = -ACQUIRE_INTERVAL

    def covers(self, key: bytes) -> bool:
        half = len(key) // 2
        version = 4 if half == 4 else 6
        src, dst = int.from_bytes(key[:half], "big"), int.from_bytes(key[half:], "big")
        return (any(p.contains(version, src) for p in self.local_ts)
                and any(p.contains(version, dst) for p in self.remote_ts))


class DropLog:
    """Counts dropped packets by reason; logs each at debug level and at most one line
    per reason every ``_LOG_INTERVAL`` seconds at info level (bad input from the
    network must not flood the log)."""

    def __init__(self, drops: dict[str, int], clock: Callable[[], float]) -> None:
        self.drops = drops
        self._clock = clock
        self._log_next: dict[str, float] = {}
        self._log_suppressed: dict[str, int] = {}

    def __call__(self, reason: str, detail: str) -> None:
        self.drops[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("ESP packet dropped (%s): %s", reason, detail)
        if reason in _QUIET_REASONS:
            return
        now = self._clock()
        if now >= self._log_next.get(reason, 0.0):
            suppressed = self._log_suppressed.pop(reason, 0)
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            log.info("ESP packet dropped (%s): %s%s", reason, detail, more)
            self._log_next[reason] = now + _LOG_INTERVAL
        else:
            self._log_suppressed[reason] = self._log_suppressed.get(reason, 0) + 1


class Sealer:
    """TUN read -> SA lookup -> MSS clamp / too big -> ESP seal -> send, for one process.

    ``sad`` holds the SAs this sealer may use; ``traps`` the trapped children
    (shared with the owner, which adds and removes them). ``send_udp`` /
    ``send_udp_many`` and ``raw4`` / ``raw6`` are set by the owner once known.
    """

    def __init__(
        self,
        tun: TunLike,
        sad: Sad,
        drop: DropLog,
        traps: dict[tuple[str, str], Trap],
        clock: Callable[[], float],
    ) -> None:
        self.tun = tun
        self.sad = sad
        self.drop = drop
        self.traps = traps
        self.clock = clock
        self.raw4: RawLike | None = None
        self.raw6: RawLike | None = None
        self.send_udp: SendUdp | None = None
        self.send_udp_many: SendUdpMany | None = None
        self.expired: ExpireHandler | None = None
        self.acquire: AcquireHandler | None = None
        self.hard_limited: Callable[[], None] | None = None
        """Called when an SA reaches its hard limit (its owner promotes a successor
        standing by, see :meth:`ikev1d.dataplane.sad.Sad.add`)."""
        self.icmp = IcmpLimiter()
        self.renewal_asked = False
        """Set when an SA asked to be renewed: the packet loop yields, so that the
        engine sends the Quick Mode before the rest of the batch uses up the SA."""
        self._batch: list[bytes] = []
        """Sealed ESP-in-UDP datagrams for ``_batch_entry``'s peer, sent by :meth:`flush_udp`."""
        self._batch_entry: SaEntry | None = None
        self._batch_bytes = 0
        self._batch_inner = 0
        self._raw_items: list[tuple[bytes, str, str]] = []
        """Sealed raw ESP packets (packet, local, remote) for ``_raw_sock``, sent by
        :meth:`flush_raw` at the end of the readiness event or when full."""
        self._raw_meta: list[tuple[SaEntry, int]] = []
        """Each batched packet's SA and inner length, for the counters if refused."""
        self._raw_sock: RawBatchLike | None = None

    def handle_tun_readable(self) -> None:
        """Seal and send what the TUN device has queued (at most ``BATCH`` packets,
        segments of super-packets counted one by one)."""
        read = self.tun.read
        outbound = self.outbound
        vnet = getattr(self.tun, "vnet_hdr", False) is True
        budget = BATCH
        try:
            while budget > 0:
                try:
                    packet = read()
                except OSError as exc:
                    self.drop("socket_error", f"reading {self.tun.name}: {exc}")
                    return
                if packet is None:
                    return
                budget -= 1
                if vnet:
                    if (len(packet) > VNET_HDR_LEN and packet[1] == GSO_NONE
                            and not packet[0] & NEEDS_CSUM):
                        # The usual read without TSO: one packet whose checksums are
                        # complete, taken as it is (what vnet_packets returns for it,
                        # without a list and the header's unpacking).
                        outbound(packet[VNET_HDR_LEN:])
                    else:
                        try:
                            segments = vnet_packets(packet)
                        except VnetHeaderError as exc:
                            self.drop("offload", f"reading {self.tun.name}: {exc}")
                            continue
                        budget -= len(segments) - 1
                        for segment in segments:
                            outbound(segment)
                else:
                    outbound(packet)
                if self.renewal_asked:
                    self.renewal_asked = False
                    return
        except Exception:
            log.exception("userspace: unexpected error on the outbound path")
        finally:
            if self._batch:
                self.flush_udp()
            if self._raw_items:
                self.flush_raw()

    def outbound(self, packet: bytes) -> None:
        """Seal one IP packet read from the TUN device and send it, or queue it for the
        next GSO batch. The per-packet path: what it looks up once is held in locals."""
        length = len(packet)
        if length >= _IPV4_HEADER and packet[0] >> 4 == 4:
            key = packet[12:20]  # address_key(), inline for the common case
            v4 = True
        else:
            found = address_key(packet)
            if found is None:
                self.drop("not_ip", "outbound: not an IP packet")
                return
            key = found
            v4 = len(key) == 8
        entry = self.sad.lookup_outbound_key(key)
        if entry is None:
            if self.traps and self._trapped(key):
                return
            self.drop("no_sa", "outbound: no SA covers the packet")
            return
        mtu = entry.mtu
        if length > mtu and self._too_big(packet, entry):
            return
        # clamp_mss changes TCP SYNs only (RFC 9293 §3.7.1): TCP segments whose flags
        # octet shows no SYN, and other protocols, need not call it.
        if packet[9 if v4 else 6] == _IPPROTO_TCP:
            flags_at = ((packet[0] & 0x0F) * 4 if v4 else _IPV6_HEADER) + _TCP_FLAGS
            if flags_at >= length or packet[flags_at] & _TCP_SYN:
                clamped = clamp_mss(packet, mtu)
                if clamped is not None:
                    packet = clamped
        counters = entry.counters
        if counters.bytes_out + length > entry.hard_bytes:
            counters.dropped_out += 1
            self.drop("life_bytes", f"outbound: {entry.name} carried its life_bytes")
            self.hard_limit(entry, "life_bytes reached (outbound)")
            return
        sa = entry.outbound
        try:
            esp = sa.seal(packet, IPPROTO_IPIP if v4 else IPPROTO_IPV6)
        except EspSequenceExhausted as exc:
            counters.dropped_out += 1
            self.drop("seq_exhausted", str(exc))
            self.hard_limit(entry, "sequence numbers used up")
            return
        except EspError as exc:
            counters.dropped_out += 1
            self.drop("malformed", f"outbound: {exc}")
            return
        if entry.encap and self.send_udp_many is not None:
            # The batch for one peer, sent first if this datagram cannot join it: another
            # SA, a larger datagram than the batch's (GSO cuts every datagram to the
            # first one's size), or the batch is full. A shorter one joins as the last.
            batch = self._batch
            size = len(esp)
            if batch and (entry is not self._batch_entry or size > len(batch[0])
                          or len(batch) >= MAX_SEGMENTS
                          or self._batch_bytes + size > MAX_BYTES):
                self.flush_udp()
                batch = self._batch  # a fresh list: the old one went out
            batch.append(esp)
            self._batch_entry = entry
            self._batch_bytes += size
            self._batch_inner += length
            if size < len(batch[0]):
                self.flush_udp()
        elif not entry.encap and (self._raw_sock is not None and (
                self.raw4 if ":" not in entry.remote[0] else self.raw6) is self._raw_sock):
            # Raw ESP, batched for one sendmmsg (see flush_raw); counted as sent now.
            items = self._raw_items
            items.append((esp, entry.local[0], entry.remote[0]))
            self._raw_meta.append((entry, length))
            if len(items) >= RAW_BATCH:
                self.flush_raw()
        elif not entry.encap and self._start_raw_batch(entry):
            self._raw_items.append((esp, entry.local[0], entry.remote[0]))
            self._raw_meta.append((entry, length))
        else:
            try:
                self.send(esp, entry)
            except OSError as exc:
                counters.dropped_out += 1
                self.drop("send_error", f"outbound to {entry.remote[0]}: {exc}")
                return
        counters.packets_out += 1
        counters.bytes_out += length
        if counters.bytes_out >= entry.soft_bytes_out:
            self.soft_limit(entry, "life_bytes nearly reached (outbound): renewing")
        elif sa.seq >= entry.soft_seq:
            self.seq_mark(entry)

    def send(self, esp: bytes, entry: SaEntry) -> None:
        """One ESP packet to the SA's peer, raw or UDP-encapsulated; OSError if refused."""
        if entry.encap:
            send_udp = self.send_udp
            if send_udp is None:
                raise OSError("not attached to the daemon's UDP sockets")
            send_udp(esp, entry.local, entry.remote)
        else:
            raw = self.raw4 if ":" not in entry.remote[0] else self.raw6
            if raw is None:
                raise OSError("no raw ESP socket for that address family")
            raw.send(esp, entry.local[0], entry.remote[0])

    def _start_raw_batch(self, entry: SaEntry) -> bool:
        """Begin a raw ESP batch on the socket for ``entry``'s peer (the other family's
        batch is sent first); False where that socket cannot batch."""
        raw = self.raw4 if ":" not in entry.remote[0] else self.raw6
        if raw is None or not isinstance(raw, RawBatchLike):
            return False
        if self._raw_items:
            self.flush_raw()
        self._raw_sock = raw
        return True

    def flush_raw(self) -> None:
        """Send the raw ESP batch in one ``sendmmsg``; a refused packet moves from the
        sent counters to the drops."""
        items, meta, raw = self._raw_items, self._raw_meta, self._raw_sock
        if not items or raw is None:
            return
        self._raw_items = []
        self._raw_meta = []
        try:
            failed = raw.send_many(items)
        except OSError as error:  # not expected: send_many reports per packet
            failed = [(i, error) for i in range(len(items))]
        for index, refused in failed:
            entry, length = meta[index]
            counters = entry.counters
            counters.packets_out -= 1
            counters.bytes_out -= length
            counters.dropped_out += 1
            self.drop("send_error", f"outbound to {entry.remote[0]}: {refused}")

    def flush_udp(self) -> None:
        batch, entry = self._batch, self._batch_entry
        inner = self._batch_inner
        self._batch = []
        self._batch_entry = None
        self._batch_bytes = self._batch_inner = 0
        if not batch or entry is None or self.send_udp_many is None:
            return
        try:
            self.send_udp_many(batch, entry.local, entry.remote)
        except OSError as exc:
            # Counted as sent when queued: move them to the drops.
            counters = entry.counters
            counters.packets_out -= len(batch)
            counters.bytes_out -= inner
            counters.dropped_out += len(batch)
            self.drop.drops["send_error"] += len(batch) - 1
            self.drop("send_error", f"outbound to {entry.remote[0]}: {exc}")

    def _trapped(self, key: bytes) -> bool:
        """A packet without SA: if a trap covers it, drop it and ask for the child."""
        found = next((item for item in self.traps.items() if item[1].covers(key)), None)
        if found is None:
            return False
        (conn, child), trap = found
        self.drop("trapped", f"outbound: {trap.name} has no SA yet")
        now = self.clock()
        if now - trap.acquired_at >= ACQUIRE_INTERVAL:
            trap.acquired_at = now
            log.debug("userspace: traffic for %s: acquiring", trap.name)
            if self.acquire is not None:
                self.acquire(conn, child)
        return True

    def _too_big(self, packet: bytes, entry: SaEntry) -> bool:
        """Answer an oversized packet that must not be fragmented; False: send it anyway
        (IPv4 without DF: its ESP datagram is fragmented on the way)."""
        answer = too_big(packet, entry.mtu)
        if answer is None:
            return False
        entry.counters.dropped_out += 1
        self.drop("too_big", f"outbound: {len(packet)}-octet packet for {entry.name}, "
                  f"tunnel MTU {entry.mtu}")
        if self.icmp.allow(self.clock()):
            try:
                self.tun.write(answer)
            except OSError as exc:
                log.debug("userspace: ICMP too big into %s: %s", self.tun.name, exc)
        return True

    def seq_mark(self, entry: SaEntry) -> None:
        """The SA's sequence number reached its ``soft_seq`` mark."""
        self.soft_limit(entry, "sequence numbers nearly used up: renewing")

    def soft_limit(self, entry: SaEntry, reason: str) -> None:
        """Ask once for the SA to be renewed (the limits are cleared so it is once)."""
        entry.soft_bytes_out = entry.soft_bytes_in = entry.soft_seq = NO_LIMIT
        self.renewal_asked = True
        log.info("userspace: %s SPIs %08x_i %08x_o: %s", entry.name, entry.spi_in,
                 entry.spi_out, reason)
        if self.expired is not None:
            self.expired(entry.child_id, False, reason)

    def hard_limit(self, entry: SaEntry, reason: str) -> None:
        """The SA is not used any more: tell the engine once, which deletes it."""
        if entry.hard_reported:
            return
        entry.hard_reported = True
        if self.hard_limited is not None:
            self.hard_limited()  # a successor standing by is needed now
        log.warning("userspace: %s SPIs %08x_i %08x_o: %s; no longer used", entry.name,
                    entry.spi_in, entry.spi_out, reason)
        if self.expired is not None:
            self.expired(entry.child_id, True, reason)
