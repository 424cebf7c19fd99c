"""The Security Association Database of the userspace data plane, pure (no I/O, no clock).

RFC 4301 §4.4 splits IPsec state into an SPD (which traffic is protected) and
an SAD (the keys). IKEv1 Quick Mode negotiates both at once: each IPsec SA pair
carries the traffic selectors it protects (RFC 2409 §5.5 client IDs), so here
one :class:`SaEntry` holds the pair's ESP state and its selectors, and
:class:`Sad` answers the two per-packet questions:

* outbound: which SA protects a packet from ``src`` to ``dst``? (``src`` in the
  local selectors and ``dst`` in the remote ones; the most specific pair of
  prefixes wins; among equals the newest SA, so a rekeyed SA takes over at once);
* inbound: which SA has this SPI, and may the decrypted inner packet pass its
  selectors (RFC 4301 §5.2 step 4: "check that the packet matches the SA's
  selectors", otherwise drop)?

Addresses are handled as ``(version, int)``: parsing a header into
``ipaddress`` objects per packet would cost more than the lookup itself.
Outbound answers are cached per (src, dst) pair, so the steady state of a flow
is one dict lookup; the cache is dropped whenever an SA comes or goes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ikev1d.dataplane.esp import InboundSa, OutboundSa
from ikev1d.engine.api import Endpoint, Network

__all__ = [
    "CONTEXT_IDLE_S",
    "NO_LIMIT",
    "Prefix",
    "SaCounters",
    "SaEntry",
    "Sad",
    "address_key",
    "inner_addresses",
    "prefixes",
]

NO_LIMIT = 1 << 62
"""Larger than any counter can grow: a limit that is never reached (cheaper than None)."""
_CACHE_LIMIT = 4096
"""Outbound cache entries kept before the cache is simply emptied (a scan refills it)."""
CONTEXT_IDLE_S = 30.0
"""How often :meth:`Sad.cool_idle` runs: an SA idle for one to two periods holds
no cipher or HMAC context."""


@dataclass(frozen=True, slots=True)
class Prefix:
    """A traffic selector network as integers: ``addr & mask == network``."""

    version: int
    network: int
    mask: int
    length: int

    @classmethod
    def of(cls, net: Network) -> Prefix:
        return cls(net.version, int(net.network_address), int(net.netmask), net.prefixlen)

    def contains(self, version: int, addr: int) -> bool:
        return version == self.version and addr & self.mask == self.network


def prefixes(nets: Iterable[Network]) -> tuple[Prefix, ...]:
    """The selectors as prefixes; equal selectors share one tuple (see ``_PREFIXES``)."""
    key = tuple(nets)
    try:
        return _PREFIXES[key]
    except KeyError:
        pass
    if len(_PREFIXES) >= _CACHE_LIMIT:
        _PREFIXES.clear()
    result = _PREFIXES[key] = tuple(Prefix.of(n) for n in key)
    return result


# Every SA pair holds its selectors for its lifetime and most tunnels of a gateway
# share a few networks: one tuple of prefixes per distinct selector list, not one
# per SA. Bounded, since the networks are whatever peers negotiate.
_PREFIXES: dict[tuple[Network, ...], tuple[Prefix, ...]] = {}


def inner_addresses(packet: bytes) -> tuple[int, int, int] | None:
    """(IP version, source, destination) of an IP packet, or None if it is not one.

    Only the fixed header is read (RFC 791 §3.1, RFC 8200 §3); the total length
    is not checked here because the TUN device and ESP hand over whole packets.
    """
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            return None
        return 4, int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big")
    if version == 6:
        if len(packet) < 40:
            return None
        return 6, int.from_bytes(packet[8:24], "big"), int.from_bytes(packet[24:40], "big")
    return None


def address_key(packet: bytes) -> bytes | None:
    """Source and destination address octets of an IP packet (8 for IPv4, 32 for IPv6).

    The per-packet lookups are cached under this key: slicing it out is cheaper
    than converting addresses to integers, which happens only on a cache miss.
    """
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        return packet[12:20] if len(packet) >= 20 else None
    if version == 6:
        return packet[8:40] if len(packet) >= 40 else None
    return None


def _split_key(key: bytes) -> tuple[int, int, int]:
    half = len(key) // 2
    return (4 if half == 4 else 6, int.from_bytes(key[:half], "big"),
            int.from_bytes(key[half:], "big"))


def _best_length(prefixes_: tuple[Prefix, ...], version: int, addr: int) -> int:
    """Length of the longest prefix containing ``addr``, or -1 when none does."""
    best = -1
    for p in prefixes_:
        if p.version == version and addr & p.mask == p.network and p.length > best:
            best = p.length
    return best


@dataclass(slots=True)
class SaCounters:
    """What ``status`` shows for an SA pair, plus why packets were dropped.

    ``bytes_*`` count inner (tunnelled) packet octets, as strongSwan's
    kernel-libipsec does, so both ends of a tunnel report the same numbers.
    """

    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    dropped_policy_in: int = 0
    dropped_tun_in: int = 0
    dropped_out: int = 0


@dataclass(eq=False, slots=True)
class SaEntry:
    """One installed IPsec SA pair: ESP state, selectors, where its ESP goes."""

    spi_in: int
    spi_out: int
    inbound: InboundSa | None
    """None in the data plane worker, which only seals (its keys stay in the daemon)."""
    outbound: OutboundSa
    local_ts: tuple[Prefix, ...]
    remote_ts: tuple[Prefix, ...]
    local: Endpoint
    remote: Endpoint
    encap: bool
    mode: str = "tunnel"
    name: str = ""
    serial: int = 0
    """Install order, to prefer the newest of SAs with equal selectors (make-before-break);
    negative while the SA stands by (:meth:`Sad.add`), so that an older one is preferred."""
    counters: SaCounters = field(default_factory=SaCounters)
    remote_networks: tuple[Network, ...] = ()
    local_networks: tuple[Network, ...] = ()
    routes: tuple[Network, ...] = ()
    """What is routed into the TUN device for this SA (the remote networks, /0 split)."""
    bypass: str | None = None
    """The peer's address when it lies inside the remote networks (its route is pinned)."""
    child_id: int = 0
    """The engine's name for this SA pair, for expiry reports."""
    hard_bytes: int = NO_LIMIT
    """``life_bytes``: inner octets each direction may carry; beyond, the SA is not used."""
    soft_bytes_out: int = NO_LIMIT
    soft_bytes_in: int = NO_LIMIT
    soft_seq: int = NO_LIMIT
    """Sent this many packets (or octets, above), the SA asks to be renewed; then NO_LIMIT."""
    hard_reported: bool = False
    mtu: int = 0xFFFF
    """The largest inner packet whose ESP fits the path to the peer (:mod:`.mss`)."""
    _inbound_cache: dict[bytes, bool] = field(default_factory=dict, repr=False)

    def permits_inbound_key(self, key: bytes) -> bool:
        """:meth:`permits_inbound` for an :func:`address_key`, cached per address pair."""
        cache = self._inbound_cache
        try:
            return cache[key]
        except KeyError:
            pass
        verdict = self.permits_inbound(*_split_key(key))
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = verdict
        return verdict

    def permits_inbound(self, version: int, src: int, dst: int) -> bool:
        """RFC 4301 §5.2: a decrypted packet must come from the remote selectors to local ones."""
        return _best_length(self.remote_ts, version, src) >= 0 and _best_length(
            self.local_ts, version, dst
        ) >= 0


class Sad:
    """SA pairs by inbound SPI, and the outbound selector lookup.

    An entry added with :meth:`add_inbound` opens packets on its inbound SPI but
    protects none until :meth:`add` completes it: as Quick Mode responder the
    peer may send on a pair before we may (RFC 2409 section 5.5)."""

    def __init__(self) -> None:
        self._by_spi_in: dict[int, SaEntry] = {}
        self._by_pair: dict[tuple[int, int], SaEntry] = {}
        """Every entry, in install order (a dict: removing one of N is not a walk of N)."""
        self._inbound_only: dict[tuple[int, int], SaEntry] = {}
        """Entries that only receive yet (:meth:`add_inbound`); not in ``_by_pair``."""
        self._cache: dict[bytes, SaEntry | None] = {}
        self._serial = 0
        self._by_remote: dict[tuple[int, int], dict[int, dict[tuple[int, int], SaEntry]]] = {}
        """(version, prefix length) -> remote network -> the entries with that remote
        selector: a cache miss looks up each length present (longest first) instead
        of scoring every SA, so it costs the same with ten or ten thousand tunnels."""
        self._lengths: dict[int, tuple[int, ...]] = {}
        """Per IP version, the remote prefix lengths present, longest first."""

    def __len__(self) -> int:
        return len(self._by_pair)

    def __iter__(self) -> Iterator[SaEntry]:
        return iter(list(self._by_pair.values()))

    def add(self, entry: SaEntry, *, standby: bool = False) -> None:
        """Install ``entry``; an entry with the same SPI pair is replaced. ``standby``:
        it receives at once, but sends only where no other SA covers the packet until
        :meth:`promote` (the SA it renews stays in use meanwhile)."""
        self.remove(entry.spi_in, entry.spi_out)
        self._serial += 1
        entry.serial = -self._serial if standby else self._serial
        self._by_spi_in[entry.spi_in] = entry
        self._by_pair[(entry.spi_in, entry.spi_out)] = entry
        self._index(entry, add=True)
        self._cache.clear()

    def add_inbound(self, entry: SaEntry) -> None:
        """Install only the inbound half of ``entry``: found by its inbound SPI, never
        by the outbound lookup, until :meth:`add` of the same entry completes it."""
        self.remove(entry.spi_in, entry.spi_out)
        self._by_spi_in[entry.spi_in] = entry
        self._inbound_only[(entry.spi_in, entry.spi_out)] = entry

    def inbound_only(self, spi_in: int, spi_out: int) -> SaEntry | None:
        """The entry :meth:`add_inbound` installed for this pair, if not completed."""
        return self._inbound_only.get((spi_in, spi_out))

    def inbound_only_entries(self) -> list[SaEntry]:
        return list(self._inbound_only.values())

    def remove(self, spi_in: int, spi_out: int) -> SaEntry | None:
        """Remove the pair, or its inbound half; the entry, or None if unknown."""
        entry = self._inbound_only.pop((spi_in, spi_out), None)
        if entry is not None:
            if self._by_spi_in.get(spi_in) is entry:
                del self._by_spi_in[spi_in]
            return entry
        entry = self._by_pair.pop((spi_in, spi_out), None)
        if entry is None:
            return None
        if self._by_spi_in.get(spi_in) is entry:
            del self._by_spi_in[spi_in]
        self._index(entry, add=False)
        self._cache.clear()
        return entry

    def promote(self, entry: SaEntry) -> bool:
        """A standing-by SA becomes the newest (False if it was not standing by)."""
        if entry.serial >= 0 or self._by_pair.get((entry.spi_in, entry.spi_out)) is not entry:
            return False
        self._serial += 1
        entry.serial = self._serial
        self._cache.clear()
        return True

    def _index(self, entry: SaEntry, *, add: bool) -> None:
        pair = (entry.spi_in, entry.spi_out)
        for p in entry.remote_ts:
            key = (p.version, p.length)
            if add:
                self._by_remote.setdefault(key, {}).setdefault(p.network, {})[pair] = entry
                continue
            networks = self._by_remote.get(key, {})
            bucket = networks.get(p.network, {})
            bucket.pop(pair, None)
            if not bucket:
                networks.pop(p.network, None)
            if not networks:
                self._by_remote.pop(key, None)
        for version in {p.version for p in entry.remote_ts}:
            self._lengths[version] = tuple(sorted(
                (length for v, length in self._by_remote if v == version), reverse=True))

    def get(self, spi_in: int, spi_out: int) -> SaEntry | None:
        return self._by_pair.get((spi_in, spi_out))

    def cool_idle(self) -> int:
        """Drop the OpenSSL contexts of every SA that carried no packet since the last call.

        Called every :data:`CONTEXT_IDLE_S` seconds, so an SA idle that long
        (at most twice that) holds only its keys; its next packet builds the
        contexts again (``InboundSa.warm_up``, ``OutboundSa.warm_up``). Returns
        how many SAs (one per direction) were cooled.
        """
        cooled = 0
        for entry in self._by_pair.values():
            for sa in (entry.inbound, entry.outbound):
                if sa is None or not sa.warm:  # None: a sealing worker's copy
                    continue
                packets = sa.counters.packets
                if packets == sa.idle_mark:
                    sa.cool()
                    cooled += 1
                else:
                    sa.idle_mark = packets
        return cooled

    def by_spi_in(self, spi: int) -> SaEntry | None:
        """The SA an inbound ESP packet belongs to (RFC 4301 §4.4.2: the SPI selects it)."""
        return self._by_spi_in.get(spi)

    def lookup_outbound_key(self, key: bytes) -> SaEntry | None:
        """:meth:`lookup_outbound` for an :func:`address_key`; a dict lookup once cached."""
        cache = self._cache
        try:
            return cache[key]
        except KeyError:
            pass
        best = self.lookup_outbound(*_split_key(key))
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = best
        return best

    def lookup_outbound(self, version: int, src: int, dst: int) -> SaEntry | None:
        """The SA protecting ``src -> dst``: longest remote, then local prefix; newest on ties.

        Remote prefix lengths are tried longest first; the first length at which some
        SA also covers ``src`` decides (a longer remote prefix beats any local one).
        """
        bits = 32 if version == 4 else 128
        full = (1 << bits) - 1
        for length in self._lengths.get(version, ()):
            mask = full ^ ((1 << (bits - length)) - 1)
            bucket = self._by_remote[(version, length)].get(dst & mask)
            if not bucket:
                continue
            best: SaEntry | None = None
            best_score = (-1, -1)
            for entry in bucket.values():
                local = _best_length(entry.local_ts, version, src)
                if local >= 0 and (local, entry.serial) > best_score:
                    best, best_score = entry, (local, entry.serial)
            if best is not None:
                return best
        return None

    def lookup_outbound_addresses(self, src: str, dst: str) -> SaEntry | None:
        """:meth:`lookup_outbound_key` (cached, as packets are) for address strings."""
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if s.version != d.version:
            return None
        return self.lookup_outbound_key(s.packed + d.packed)
