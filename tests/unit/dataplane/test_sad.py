"""The SAD's selector lookup (longest prefix, newest on ties, cache invalidation)."""

from __future__ import annotations

import ipaddress

import pytest

from ikev1d.dataplane.esp import InboundSa, OutboundSa, esp_algorithm
from ikev1d.dataplane.packet import build_ipv4_packet
from ikev1d.dataplane.sad import Prefix, Sad, SaEntry, address_key, inner_addresses, prefixes

ALG = esp_algorithm("aesgcm", 128, None, 16)
KEY = bytes(range(20))


def entry(spi: int, local: list[str], remote: list[str]) -> SaEntry:
    return SaEntry(
        spi_in=spi,
        spi_out=spi + 0x1000,
        inbound=InboundSa(spi, ALG, KEY),
        outbound=OutboundSa(spi + 0x1000, ALG, KEY),
        local_ts=prefixes(ipaddress.ip_network(n) for n in local),
        remote_ts=prefixes(ipaddress.ip_network(n) for n in remote),
        local=("192.0.2.1", 500),
        remote=("192.0.2.2", 500),
        encap=False,
    )


def test_single_sa_matches_only_inside_both_selectors() -> None:
    sad = Sad()
    e = entry(1, ["10.1.0.0/24"], ["10.2.0.0/24"])
    sad.add(e)
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.0.9") is e
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.3.0.9") is None  # dst outside
    assert sad.lookup_outbound_addresses("10.9.0.1", "10.2.0.9") is None  # src outside
    assert sad.lookup_outbound_addresses("10.2.0.9", "10.1.0.1") is None  # reversed
    assert sad.by_spi_in(1) is e and sad.by_spi_in(0x1001) is None


def test_longest_remote_prefix_wins_then_longest_local() -> None:
    sad = Sad()
    wide = entry(1, ["10.1.0.0/16"], ["10.2.0.0/16"])
    narrow_remote = entry(2, ["10.1.0.0/16"], ["10.2.5.0/24"])
    narrow_local = entry(3, ["10.1.7.0/24"], ["10.2.0.0/16"])
    for e in (narrow_remote, wide, narrow_local):
        sad.add(e)
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.5.1") is narrow_remote
    assert sad.lookup_outbound_addresses("10.1.7.1", "10.2.5.1") is narrow_remote
    assert sad.lookup_outbound_addresses("10.1.7.1", "10.2.6.1") is narrow_local
    assert sad.lookup_outbound_addresses("10.1.8.1", "10.2.6.1") is wide


def test_newest_of_equal_sas_wins_and_removal_falls_back() -> None:
    sad = Sad()
    old = entry(1, ["10.1.0.0/24"], ["10.2.0.0/24"])
    new = entry(2, ["10.1.0.0/24"], ["10.2.0.0/24"])
    sad.add(old)
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.0.1") is old  # now cached
    sad.add(new)  # make-before-break rekey: the new SA takes over at once
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.0.1") is new
    assert sad.remove(2, 0x1002) is new
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.0.1") is old
    assert sad.remove(2, 0x1002) is None
    assert sad.remove(1, 0x1001) is old
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.0.1") is None
    assert len(sad) == 0


def test_multiple_selectors_and_ipv6() -> None:
    sad = Sad()
    e = entry(1, ["10.1.0.0/24", "fd01::/64"], ["10.2.0.0/24", "fd02::/64"])
    sad.add(e)
    assert sad.lookup_outbound_addresses("fd01::1", "fd02::5") is e
    assert sad.lookup_outbound_addresses("10.1.0.1", "fd02::5") is None
    v6 = ipaddress.ip_address("fd02::5")
    assert e.permits_inbound(6, int(v6), int(ipaddress.ip_address("fd01::1")))
    assert not e.permits_inbound(4, int(v6) & 0xFFFFFFFF, 0)


def test_inbound_selectors() -> None:
    e = entry(1, ["10.1.0.0/24"], ["10.2.0.0/24"])

    def a(text: str) -> int:
        return int(ipaddress.ip_address(text))

    assert e.permits_inbound(4, a("10.2.0.7"), a("10.1.0.1"))
    assert not e.permits_inbound(4, a("10.3.0.7"), a("10.1.0.1"))
    assert not e.permits_inbound(4, a("10.2.0.7"), a("10.1.1.1"))
    assert not e.permits_inbound(6, a("10.2.0.7"), a("10.1.0.1"))


def test_replacing_the_same_spi_pair() -> None:
    sad = Sad()
    first = entry(1, ["10.1.0.0/24"], ["10.2.0.0/24"])
    second = entry(1, ["10.1.0.0/24"], ["10.4.0.0/24"])
    sad.add(first)
    sad.add(second)
    assert len(sad) == 1 and sad.by_spi_in(1) is second
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.0.1") is None


def test_cache_is_bounded() -> None:
    sad = Sad()
    sad.add(entry(1, ["0.0.0.0/0"], ["10.2.0.0/16"]))
    for i in range(10000):
        sad.lookup_outbound_key(i.to_bytes(4, "big") + (0x0A020000 + i % 65536).to_bytes(4, "big"))
    assert len(sad._cache) <= 4096


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (build_ipv4_packet("10.1.0.1", "10.2.0.2", 17, b"x"),
         (4, int(ipaddress.ip_address("10.1.0.1")), int(ipaddress.ip_address("10.2.0.2")))),
        (b"\x60" + bytes(7) + ipaddress.ip_address("fd01::1").packed
         + ipaddress.ip_address("fd02::2").packed,
         (6, int(ipaddress.ip_address("fd01::1")), int(ipaddress.ip_address("fd02::2")))),
        (b"", None),
        (b"\x45" + bytes(10), None),
        (b"\x60" + bytes(30), None),
        (b"\x10" + bytes(40), None),
    ],
)
def test_inner_addresses(packet: bytes, expected: tuple[int, int, int] | None) -> None:
    assert inner_addresses(packet) == expected


def test_prefix() -> None:
    p = Prefix.of(ipaddress.ip_network("10.2.0.0/16"))
    assert p.contains(4, int(ipaddress.ip_address("10.2.255.1")))
    assert not p.contains(4, int(ipaddress.ip_address("10.3.0.1")))
    assert not p.contains(6, int(ipaddress.ip_address("10.2.0.1")))


def test_address_key_and_cached_inbound_verdicts() -> None:
    v4 = build_ipv4_packet("10.2.0.7", "10.1.0.1", 17, b"x")
    assert address_key(v4) == bytes([10, 2, 0, 7, 10, 1, 0, 1])
    assert address_key(b"\x45" + bytes(10)) is None and address_key(b"") is None
    assert address_key(b"\x20" + bytes(50)) is None
    v6 = b"\x60" + bytes(7) + bytes(range(32))
    assert address_key(v6) == bytes(range(32))
    e = entry(1, ["10.1.0.0/24"], ["10.2.0.0/24"])
    key = address_key(v4)
    assert key is not None
    assert e.permits_inbound_key(key) and e.permits_inbound_key(key)  # second from cache
    bad = address_key(build_ipv4_packet("10.3.0.7", "10.1.0.1", 17, b"x"))
    assert bad is not None and not e.permits_inbound_key(bad)


def _reference_lookup(entries: list[SaEntry], src: str, dst: str) -> SaEntry | None:
    """The outbound rule scored over every SA with ipaddress objects, independently of
    the index: longest remote prefix, then longest local prefix, then the newest."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)

    def longest(prefixes_: tuple[Prefix, ...], addr: ipaddress.IPv4Address
                | ipaddress.IPv6Address) -> int:
        kind = ipaddress.IPv4Network if addr.version == 4 else ipaddress.IPv6Network
        lengths = [p.length for p in prefixes_ if p.version == addr.version
                   and addr in kind((p.network, p.length))]
        return max(lengths, default=-1)

    best, best_score = None, (-1, -1, -1)
    for order, e in enumerate(entries):
        remote, local = longest(e.remote_ts, d), longest(e.local_ts, s)
        if remote >= 0 and local >= 0 and (remote, local, order) > best_score:
            best, best_score = e, (remote, local, order)
    return best


def test_indexed_lookup_agrees_with_scoring_every_sa() -> None:
    """Random nested selectors (both families, several per SA, equal ones, SAs removed):
    the indexed lookup picks what scoring every SA picks, for thousands of pairs."""
    import random

    rng = random.Random(7)
    v4 = [f"10.{a}.0.0/16" for a in range(3)] + [f"10.{a}.{b}.0/24" for a in range(3)
                                                   for b in range(3)]
    v4 += ["10.0.0.0/8", "0.0.0.0/0", "10.1.2.128/25", "10.1.2.7/32"]
    v6 = ["fd00::/8", "fd00:1::/32", "fd00:1:2::/48", "::/0"]
    sad, live = Sad(), []
    for spi in range(1, 160):
        pool = v4 if rng.random() < 0.8 else v6
        e = entry(spi, rng.sample(pool, rng.randint(1, 2)), rng.sample(pool, rng.randint(1, 3)))
        sad.add(e)
        live.append(e)
        if rng.random() < 0.25:
            gone = live.pop(rng.randrange(len(live)))
            sad.remove(gone.spi_in, gone.spi_out)
    hosts4 = ["10.0.0.1", "10.1.2.7", "10.1.2.200", "10.2.1.5", "10.9.9.9", "192.0.2.1"]
    hosts6 = ["fd00:1:2::5", "fd00:1:3::1", "fd00:9::1", "2001:db8::1"]
    checked = 0
    for hosts in (hosts4, hosts6):
        for src in hosts:
            for dst in hosts:
                assert sad.lookup_outbound_addresses(src, dst) is _reference_lookup(
                    live, src, dst), (src, dst)
                checked += 1
    assert checked == 52 and any(sad.lookup_outbound_addresses(s, d) for s in hosts4
                                 for d in hosts4)


def test_cool_idle_drops_contexts_only_after_a_whole_idle_period() -> None:
    """An SA is cooled at the second sweep without a packet in between, direction by
    direction; a busy one keeps its contexts; a cooled one still carries packets."""
    sad = Sad()
    busy = entry(1, ["10.1.0.0/24"], ["10.2.0.0/24"])
    idle = entry(2, ["10.1.1.0/24"], ["10.2.1.0/24"])
    for e in (busy, idle):
        sad.add(e)
    assert sad.cool_idle() == 0  # nothing has carried a packet: nothing to drop
    packet = idle.outbound.seal(b"x" * 40, 4)
    busy.outbound.seal(b"y" * 40, 4)
    assert idle.outbound.warm and busy.outbound.warm
    assert sad.cool_idle() == 0  # first look: packets since the last one
    busy.outbound.seal(b"y" * 40, 4)
    assert sad.cool_idle() == 1  # idle's outbound was idle for a whole period
    assert not idle.outbound.warm and busy.outbound.warm
    assert sad.cool_idle() == 1  # now busy's, idle since the last sweep
    assert not busy.outbound.warm
    # Cooled SAs carry on where they were: sequence numbers and replay state kept.
    opener = InboundSa(idle.spi_out, ALG, KEY)
    assert opener.open(packet) == (4, b"x" * 40)
    assert opener.open(idle.outbound.seal(b"z", 4)) == (4, b"z")
    assert idle.outbound.seq == 2


def test_an_inbound_half_opens_but_protects_nothing_until_completed() -> None:
    """Quick Mode responder: the peer may send on the pair before we may (RFC 2409 5.5)."""
    sad = Sad()
    old = entry(1, ["10.1.0.0/24"], ["10.2.0.0/24"])
    new = entry(2, ["10.1.0.0/24"], ["10.2.0.0/24"])
    sad.add(old)
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.0.9") is old
    sad.add_inbound(new)
    assert sad.by_spi_in(2) is new and sad.inbound_only(2, 0x1002) is new
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.0.9") is old
    assert sad.get(2, 0x1002) is None and len(sad) == 1 and list(sad) == [old]
    sad.add(new)  # completed
    assert sad.inbound_only(2, 0x1002) is None and sad.get(2, 0x1002) is new
    assert sad.lookup_outbound_addresses("10.1.0.1", "10.2.0.9") is new
    withdrawn = entry(3, ["10.1.0.0/24"], ["10.2.0.0/24"])
    sad.add_inbound(withdrawn)
    assert sad.remove(3, 0x1003) is withdrawn
    assert sad.by_spi_in(3) is None and sad.inbound_only_entries() == []
    assert sad.remove(3, 0x1003) is None
