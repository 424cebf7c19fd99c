"""Tunnel MTU, MSS clamping and ICMP "too big", on packet bytes.

Checksums are checked by a second implementation written here (a plain carry
loop over byte pairs, with the pseudo-headers built by hand), not by the
module's own code; tests/interop/test_mss_tshark.py has tshark's dissector
check the same packets. Sizes are checked against what OutboundSa really seals.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Iterator

import pytest

from ikev1d.dataplane.esp import OutboundSa, esp_algorithm, keymat_length
from ikev1d.dataplane.mss import IcmpLimiter, clamp_mss, too_big, tunnel_mtu
from ikev1d.dataplane.userspace import UserspaceBackend
from tests.unit.dataplane.test_userspace import FakeTun, Side, carry_raw, child

V4_SRC, V4_DST = "10.1.0.1", "10.2.0.1"
V6_SRC, V6_DST = "fd00:1::1", "fd00:2::1"


# --- an independent checksum ------------------------------------------------------------


def ones_sum(data: bytes) -> int:
    """RFC 1071 written out: add big-endian byte pairs, fold the carries as we go."""
    total = 0
    for i in range(0, len(data), 2):
        hi = data[i]
        lo = data[i + 1] if i + 1 < len(data) else 0
        total += hi * 256 + lo
        if total > 0xFFFF:
            total -= 0xFFFF
    return total


def checksum_ok(data: bytes) -> bool:
    """A correct checksum field makes the ones' complement sum all ones (RFC 1071 §1)."""
    return ones_sum(data) == 0xFFFF


def pseudo_header(packet: bytes, proto: int, length: int) -> bytes:
    if packet[0] >> 4 == 4:
        return packet[12:20] + bytes((0, proto)) + length.to_bytes(2, "big")
    return packet[8:40] + length.to_bytes(4, "big") + bytes((0, 0, 0, proto))


def l4_ok(packet: bytes) -> bool:
    """The TCP/ICMP/ICMPv6 checksum of an IP packet (no IPv4 options, no v6 extensions)."""
    if packet[0] >> 4 == 4:
        ihl = (packet[0] & 15) * 4
        body, proto = packet[ihl:], packet[9]
        if proto == 1:  # ICMPv4: no pseudo-header (RFC 792)
            return checksum_ok(body)
        return checksum_ok(pseudo_header(packet, proto, len(body)) + body)
    body, proto = packet[40:], packet[6]
    return checksum_ok(pseudo_header(packet, proto, len(body)) + body)


# --- packets ----------------------------------------------------------------------------


def tcp_segment(
    src: str, dst: str, *, flags: int = 0x02, options: bytes = b"", payload: bytes = b""
) -> bytes:
    """An IPv4 or IPv6 packet carrying TCP, checksums computed here."""
    if len(options) % 4:
        options += b"\x00" * (-len(options) % 4)
    tcp = bytearray(20 + len(options))
    tcp[0:2], tcp[2:4] = (40000).to_bytes(2, "big"), (5201).to_bytes(2, "big")
    tcp[4:8] = (123456789).to_bytes(4, "big")
    tcp[12] = ((20 + len(options)) // 4) << 4
    tcp[13] = flags
    tcp[14:16] = (64240).to_bytes(2, "big")
    tcp[20:] = options
    tcp += payload
    if ":" in src:
        s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
        ip = (b"\x60\x00\x00\x00" + len(tcp).to_bytes(2, "big") + bytes((6, 64)) + s + d)
    else:
        s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
        hdr = bytearray(b"\x45\x00" + (20 + len(tcp)).to_bytes(2, "big") + b"\x12\x34\x40\x00"
                        + bytes((64, 6)) + b"\x00\x00" + s + d)
        hdr[10:12] = (0xFFFF - ones_sum(bytes(hdr))).to_bytes(2, "big")
        ip = bytes(hdr)
    csum = 0xFFFF - ones_sum(pseudo_header(ip, 6, len(tcp)) + bytes(tcp))
    tcp[16:18] = csum.to_bytes(2, "big")
    return ip + bytes(tcp)


def mss_option(mss: int) -> bytes:
    return b"\x02\x04" + mss.to_bytes(2, "big")


LINUX_SYN_OPTIONS = b"\x04\x02\x08\x0a" + bytes(8) + b"\x01\x03\x03\x07"  # SACK-OK, TS, WS


def mss_of(packet: bytes) -> int | None:
    tcp = (packet[0] & 15) * 4 if packet[0] >> 4 == 4 else 40
    end = tcp + (packet[tcp + 12] >> 4) * 4
    i = tcp + 20
    while i < end:
        if packet[i] == 0:
            break
        if packet[i] == 1:
            i += 1
            continue
        if packet[i] == 2:
            return int.from_bytes(packet[i + 2:i + 4], "big")
        i += packet[i + 1]
    return None


# --- tunnel MTU -------------------------------------------------------------------------

ALGS = [("aesgcm", 128, None, 16), ("aesgcm", 256, None, 8), ("aes", 128, "sha256", 16),
        ("aes", 256, "sha512", 32), ("3des", 192, "sha1", 12), ("aes", 128, "sha1", 12)]


def test_tunnel_mtu_by_hand() -> None:
    """RFC 4303 §2: 8 octets SPI+sequence, IV, payload+pad+2 padded to the block, ICV."""
    gcm = esp_algorithm("aesgcm", 128, None, 16)
    # 1500 - 20 (IPv4) - 8 - 8 (IV) - 16 (ICV) = 1448, a multiple of 4: 1446 + 2
    assert tunnel_mtu(1500, gcm, encap=False, outer_ipv6=False) == 1446
    # and 8 octets less with the UDP header of NAT-T (RFC 3948 §2.1)
    assert tunnel_mtu(1500, gcm, encap=True, outer_ipv6=False) == 1438
    cbc = esp_algorithm("aes", 128, "sha256", 16)
    # 1500 - 20 - 8 - 8 - 16 (IV) - 16 (ICV) = 1432; 16-octet blocks: 1424 - 2
    assert tunnel_mtu(1500, cbc, encap=True, outer_ipv6=False) == 1422
    # IPv6 outer header: 1500 - 40 - 8 - 8 - 16 - 16 = 1412 -> 1408 - 2
    assert tunnel_mtu(1500, cbc, encap=True, outer_ipv6=True) == 1406


@pytest.mark.parametrize("alg_args", ALGS)
@pytest.mark.parametrize(("encap", "v6"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("path", [1500, 1400, 1300, 1280, 576])
def test_tunnel_mtu_is_the_largest_packet_that_fits(
    alg_args: tuple[str, int, str | None, int], encap: bool, v6: bool, path: int
) -> None:
    alg = esp_algorithm(*alg_args)
    sa = OutboundSa(0x1000, alg, bytes(keymat_length(alg)), random_bytes=bytes)
    outer = (40 if v6 else 20) + (8 if encap else 0)
    mtu = tunnel_mtu(path, alg, encap=encap, outer_ipv6=v6)
    assert outer + len(sa.seal(bytes(mtu), 4)) <= path
    assert outer + len(sa.seal(bytes(mtu + 1), 4)) > path


# --- MSS clamping -----------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst", "headers"), [(V4_SRC, V4_DST, 40), (V6_SRC, V6_DST, 60)])
@pytest.mark.parametrize("flags", [0x02, 0x12])  # SYN, SYN-ACK
@pytest.mark.parametrize("prefix", [b"", b"\x01", b"\x01\x01\x01"])  # odd and even offsets
def test_syn_mss_is_clamped_and_checksum_stays_valid(
    src: str, dst: str, headers: int, flags: int, prefix: bytes
) -> None:
    syn = tcp_segment(src, dst, flags=flags, options=prefix + mss_option(1460) + LINUX_SYN_OPTIONS)
    assert l4_ok(syn)
    out = clamp_mss(syn, 1300)
    assert out is not None
    assert mss_of(out) == 1300 - headers
    assert l4_ok(out)
    assert len(out) == len(syn)
    diff = [i for i in range(len(syn)) if syn[i] != out[i]]
    assert len(diff) <= 4  # the MSS value and the checksum, nothing else


@pytest.mark.parametrize("seed", range(20))
def test_clamp_checksum_for_random_segments(seed: int) -> None:
    rnd = random.Random(seed)
    prefix = b"\x01" * rnd.randrange(4)
    syn = tcp_segment(V4_SRC, V4_DST, options=prefix + mss_option(rnd.randrange(1300, 65536)),
                      payload=rnd.randbytes(rnd.randrange(0, 40)))
    out = clamp_mss(syn, 1200 + rnd.randrange(90))
    assert out is not None and l4_ok(out)


def test_clamp_leaves_other_segments_alone() -> None:
    assert clamp_mss(tcp_segment(V4_SRC, V4_DST, flags=0x10, options=mss_option(1460)), 1300) \
        is None  # an ACK
    assert clamp_mss(tcp_segment(V4_SRC, V4_DST, options=mss_option(1200)), 1300) is None
    assert clamp_mss(tcp_segment(V4_SRC, V4_DST, options=LINUX_SYN_OPTIONS), 1300) is None
    assert clamp_mss(tcp_segment(V4_SRC, V4_DST, options=b"\x00" + mss_option(1460)),
                     1300) is None  # after End of Option List
    udp = bytearray(tcp_segment(V4_SRC, V4_DST, options=mss_option(1460)))
    udp[9] = 17
    assert clamp_mss(bytes(udp), 1300) is None
    frag = bytearray(tcp_segment(V4_SRC, V4_DST, options=mss_option(1460)))
    frag[7] = 1  # a later fragment: its bytes are not a TCP header
    assert clamp_mss(bytes(frag), 1300) is None


def test_clamp_survives_malformed_and_truncated_input() -> None:
    syn = tcp_segment(V4_SRC, V4_DST, options=mss_option(1460) + LINUX_SYN_OPTIONS)
    for n in range(len(syn)):
        clamp_mss(syn[:n], 1300)  # never raises
    for bad in (b"\x02\x00", b"\x08\x01", b"\x02\x05\x05\x00", b"\x13\xff"):
        p = tcp_segment(V4_SRC, V4_DST, options=bad)
        assert clamp_mss(p, 1300) is None
    rnd = random.Random(1)
    for _ in range(2000):
        clamp_mss(rnd.randbytes(rnd.randrange(80)), 1300)
        mutated = bytearray(syn)
        mutated[rnd.randrange(len(mutated))] = rnd.randrange(256)
        clamp_mss(bytes(mutated), 1300)


# --- ICMP too big -----------------------------------------------------------------------


def test_ipv4_with_df_gets_fragmentation_needed() -> None:
    big = tcp_segment(V4_SRC, V4_DST, flags=0x10, payload=bytes(1400))
    icmp = too_big(big, 1300)
    assert icmp is not None
    assert checksum_ok(icmp[:20]) and l4_ok(icmp)
    assert icmp[9] == 1 and icmp[12:16] == big[16:20] and icmp[16:20] == big[12:16]
    assert (icmp[20], icmp[21]) == (3, 4)  # destination unreachable, fragmentation needed
    assert int.from_bytes(icmp[26:28], "big") == 1300  # RFC 1191 §4 next-hop MTU
    assert icmp[28:] == big[:548] and len(icmp) == 576
    assert int.from_bytes(icmp[2:4], "big") == len(icmp)


def test_ipv4_without_df_small_packets_and_icmp_errors_are_not_answered() -> None:
    big = bytearray(tcp_segment(V4_SRC, V4_DST, flags=0x10, payload=bytes(1400)))
    assert too_big(bytes(big), 1500) is None  # fits
    big[6] &= ~0x40  # no DF: the outer datagram is fragmented instead
    assert too_big(bytes(big), 1300) is None
    err = tcp_segment(V4_SRC, V4_DST, flags=0x10, payload=bytes(1400))
    as_icmp = bytearray(err)
    as_icmp[9], as_icmp[20] = 1, 3  # an ICMP error itself (RFC 1812 §4.3.2.7)
    assert too_big(bytes(as_icmp), 1300) is None
    echo = bytearray(err)
    echo[9], echo[20] = 1, 8  # an echo request is answered
    assert too_big(bytes(echo), 1300) is not None
    multicast = bytearray(err)
    multicast[12:16] = bytes((224, 0, 0, 1))
    assert too_big(bytes(multicast), 1300) is None


def test_ipv6_gets_packet_too_big() -> None:
    big = tcp_segment(V6_SRC, V6_DST, flags=0x10, payload=bytes(1400))
    icmp = too_big(big, 1300)
    assert icmp is not None and l4_ok(icmp)
    assert icmp[6] == 58 and icmp[8:24] == big[24:40] and icmp[24:40] == big[8:24]
    assert (icmp[40], icmp[41]) == (2, 0)
    assert int.from_bytes(icmp[44:48], "big") == 1300
    assert len(icmp) == 1280 and icmp[48:] == big[:1232]
    # Below the IPv6 minimum MTU the tunnel fragments (RFC 8201 §4): 1280 is reported
    small_mtu = too_big(big, 1200)
    assert small_mtu is not None and int.from_bytes(small_mtu[44:48], "big") == 1280
    assert too_big(tcp_segment(V6_SRC, V6_DST, payload=bytes(1200)), 1200) is None
    as_error = bytearray(big)
    as_error[6], as_error[40] = 58, 1  # an ICMPv6 error (type < 128)
    assert too_big(bytes(as_error), 1300) is None


def test_limiter_bounds_the_rate() -> None:
    lim = IcmpLimiter(rate=10.0, burst=5)
    assert [lim.allow(0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.allow(0.05) is False
    assert lim.allow(0.15) is True  # refilled: 10 a second
    assert lim.suppressed == 3


# --- in the userspace data plane ---------------------------------------------------------


class MtuTun(FakeTun):
    mtu = 1400


class PmtuSide(Side):
    """A side whose TUN device has an MTU and whose path to the peer has ``path``."""

    def __init__(self, local: str, path: int) -> None:
        super().__init__([local])
        self.tun = MtuTun()
        self.backend = UserspaceBackend(self.tun, self.raw, self.routes,
                                        path_mtu=lambda peer: path)


@pytest.fixture
def pair() -> Iterator[tuple[PmtuSide, PmtuSide]]:
    loop = asyncio.new_event_loop()
    a, b = PmtuSide("10.1.0.1", 1300), PmtuSide("10.2.0.1", 1300)
    for s in (a, b):
        s.backend.attach(s.send_udp, loop)
    a.backend.install(child("aes128gcm16"))
    b.backend.install(child("aes128gcm16", initiator=False))
    yield a, b
    for s in (a, b):
        s.backend.close()
    loop.close()


def test_backend_clamps_syns_both_ways(pair: tuple[PmtuSide, PmtuSide]) -> None:
    a, b = pair
    mtu = tunnel_mtu(1300, esp_algorithm("aesgcm", 128, None, 16), encap=False,
                     outer_ipv6=False)
    syn = tcp_segment(V4_SRC, V4_DST, options=mss_option(1460) + LINUX_SYN_OPTIONS)
    a.tun.to_read.append(syn)
    a.backend.handle_tun_readable()
    assert all(len(esp) + 20 <= 1300 for esp, _, _ in a.raw.sent)
    carry_raw(a, b)
    (delivered,) = b.tun.written
    assert mss_of(delivered) == mtu - 40 and l4_ok(delivered)
    # B's side: a SYN-ACK from the far host is clamped on the way out as well, and a
    # SYN that came in unclamped (a peer that does not clamp) is clamped on the way in.
    synack = tcp_segment(V4_DST, V4_SRC, flags=0x12, options=mss_option(1460))
    b.tun.to_read.append(synack)
    b.backend.handle_tun_readable()
    carry_raw(b, a)
    assert mss_of(a.tun.written[-1]) == mtu - 40


def test_backend_answers_oversized_df_packets(pair: tuple[PmtuSide, PmtuSide]) -> None:
    a, _b = pair
    big = tcp_segment(V4_SRC, V4_DST, flags=0x10, payload=bytes(1300))
    a.tun.to_read.append(big)
    a.backend.handle_tun_readable()
    assert a.raw.sent == []
    (icmp,) = a.tun.written
    assert (icmp[20], icmp[21]) == (3, 4) and l4_ok(icmp)
    assert a.backend.drops["too_big"] == 1
    c = a.backend.counters(0xC0000001, 0xC0000002)
    assert c.drops is not None and c.drops.dropped_out == 1
    # without DF it is sealed and sent (the outer datagram is fragmented on the way)
    nodf = bytearray(big)
    nodf[6] = 0
    a.tun.to_read.append(bytes(nodf))
    a.backend.handle_tun_readable()
    assert len(a.raw.sent) == 1


def test_backend_rate_limits_icmp(pair: tuple[PmtuSide, PmtuSide]) -> None:
    a, _b = pair
    big = tcp_segment(V4_SRC, V4_DST, flags=0x10, payload=bytes(1300))
    a.tun.to_read.extend([big] * 200)
    a.backend.handle_tun_readable()
    assert a.backend.drops["too_big"] == 200
    assert 1 <= len(a.tun.written) < 200


@pytest.mark.parametrize("flags", [0x02, 0x12, 0xC2, 0x10])
def test_backend_clamps_an_unclamped_syn_coming_in(pair: tuple[PmtuSide, PmtuSide],
                                                   flags: int) -> None:
    """A peer that does not clamp: B lowers the MSS before the SYN (SYN-ACK, SYN with
    ECN flags) reaches its host; a segment without SYN keeps its option as it is."""
    _a, b = pair
    sa = child("aes128gcm16")  # A's view: its outbound keys are what B opens
    alg = esp_algorithm("aesgcm", 128, None, 16)
    sealer = OutboundSa(sa.spi_out, alg, sa.keymat_out)
    syn = tcp_segment(V4_SRC, V4_DST, flags=flags, options=mss_option(1460))
    b.raw.to_recv.append((sealer.seal(syn, 4), "192.0.2.1"))
    b.backend.handle_raw_readable()
    (delivered,) = b.tun.written
    clamped = tunnel_mtu(1300, alg, encap=False, outer_ipv6=False) - 40
    assert mss_of(delivered) == (clamped if flags & 0x02 else 1460)
    assert l4_ok(delivered)
