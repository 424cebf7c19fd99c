"""TUN offloads: checksums, TCP segmentation of super-packets, virtio-net header parsing.

The checksums are checked against a slow word-by-word RFC 1071 sum written here
(with end-around carry, not the modulo trick the module uses), the segments
against a reconstruction: their payloads concatenated give the super-packet's
payload, their sequence numbers follow, and each one's IP and TCP checksums add
up under that slow sum. tests/interop/test_offload_tshark.py has tshark check
the same segments.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from ikev1d.dataplane.linux.offload import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR,
    VnetHeaderError,
    coalesce_tcp,
    complete_checksum,
    csum_complement,
    csum_remainder,
    packets,
    segment_tcp,
)

FIN, SYN, PSH, ACK, CWR = 0x01, 0x02, 0x08, 0x10, 0x80


def slow_sum(data: bytes) -> int:
    """RFC 1071 §4.1: 16-bit words added with end-around carry (odd octet padded)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def slow_checksum(data: bytes) -> int:
    return ~slow_sum(data) & 0xFFFF


def verifies(data: bytes) -> bool:
    """A checksummed region (field included) sums to 0xFFFF (RFC 1071 §1 (3))."""
    return slow_sum(data) == 0xFFFF


def pseudo_header(packet: bytes, tcp_length: int) -> bytes:
    if packet[0] >> 4 == 4:
        return packet[12:20] + bytes((0, 6)) + tcp_length.to_bytes(2, "big")
    return packet[8:40] + tcp_length.to_bytes(4, "big") + bytes((0, 0, 0, 6))


def tcp_packet(src: str, dst: str, payload: bytes, *, seq: int = 1000, flags: int = ACK | PSH,
               ip_id: int = 0x1234, options: bytes = b"", ip_options: bytes = b"") -> bytes:
    """An IPv4/IPv6 TCP packet with the IP header filled in and a TCP checksum field
    holding what the kernel leaves there for offload (garbage to us)."""
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, doff << 4, flags, 502, 0xBEEF, 0)
    tcp += options + payload
    if ":" in src:
        return (bytes((0x60, 0, 0, 0)) + len(tcp).to_bytes(2, "big") + bytes((6, 64))
                + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + tcp)
    ihl = (20 + len(ip_options)) // 4
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(tcp), ip_id,
                                   0x4000, 64, 6, 0, ipaddress.IPv4Address(src).packed,
                                   ipaddress.IPv4Address(dst).packed)) + ip_options
    header[10:12] = slow_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + tcp


def check_segments(super_packet: bytes, segments: list[bytes], gso_size: int) -> None:
    """Everything a receiver could check, computed independently of the module."""
    v4 = super_packet[0] >> 4 == 4
    tcp = (super_packet[0] & 0x0F) * 4 if v4 else 40
    doff = (super_packet[tcp + 12] >> 4) * 4
    payload = super_packet[tcp + doff:]
    seq0 = int.from_bytes(super_packet[tcp + 4:tcp + 8], "big")
    flags0 = super_packet[tcp + 13]
    assert len(segments) == max(1, -(-len(payload) // gso_size))
    rebuilt = b""
    for i, seg in enumerate(segments):
        assert seg[:tcp][:2] == super_packet[:2]
        body = seg[tcp + doff:]
        assert len(body) == min(gso_size, len(payload) - i * gso_size)
        if v4:
            assert int.from_bytes(seg[2:4], "big") == len(seg)
            assert int.from_bytes(seg[4:6], "big") == (
                int.from_bytes(super_packet[4:6], "big") + i) & 0xFFFF
            assert verifies(seg[:tcp]), f"IPv4 header checksum of segment {i}"
            assert seg[12:20] == super_packet[12:20]
        else:
            assert int.from_bytes(seg[4:6], "big") == len(seg) - 40
        assert int.from_bytes(seg[tcp + 4:tcp + 8], "big") == (seq0 + len(rebuilt)) & 0xFFFFFFFF
        # Everything in the TCP header but sequence number, flags and checksum is kept.
        assert seg[tcp:tcp + 4] == super_packet[tcp:tcp + 4]
        assert seg[tcp + 8:tcp + 13] == super_packet[tcp + 8:tcp + 13]
        assert seg[tcp + 14:tcp + 16] == super_packet[tcp + 14:tcp + 16]
        assert seg[tcp + 18:tcp + doff] == super_packet[tcp + 18:tcp + doff]
        flags = seg[tcp + 13]
        last = i == len(segments) - 1
        assert flags & (FIN | PSH) == (flags0 & (FIN | PSH) if last else 0)
        assert flags & CWR == (flags0 & CWR if i == 0 else 0)
        assert flags & ~(FIN | PSH | CWR) == flags0 & ~(FIN | PSH | CWR)
        assert verifies(pseudo_header(seg, len(seg) - tcp) + seg[tcp:]), \
            f"TCP checksum of segment {i}"
        rebuilt += body
    assert rebuilt == payload


# --- checksums ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\xff", b"\xff\xff", b"\xff\xff" * 700, b"\xff" * 1401, b"\x00" * 64,
    b"\x00\x01\xf2\x03\xf4\xf5\xf6\xf7",  # RFC 1071 §3's example
    b"\xfe\xff\x00\x01", b"\x80\x00" * 2, b"\x12\x34\x56",
])
def test_remainder_matches_slow_sum(data: bytes) -> None:
    assert csum_remainder(data) == slow_sum(data) % 0xFFFF
    if any(data):
        # The checksum field, however the sum folds, makes the region verify.
        field = csum_complement(csum_remainder(data))
        assert field in (slow_checksum(data), 0xFFFF)
        assert verifies((data + b"\0" if len(data) % 2 else data) + field.to_bytes(2, "big"))


def test_remainder_random_lengths() -> None:
    rng = random.Random(7)
    for length in [*range(70), 1399, 1400, 1401, 65535]:
        data = rng.randbytes(length)
        assert csum_remainder(data) == slow_sum(data) % 0xFFFF
        assert csum_remainder(memoryview(data)) == csum_remainder(data)


def test_a_sum_of_zero_gives_ffff_not_zero() -> None:
    # 0xFFFF + 0x0000 sums to 0xFFFF: the complement is 0, sent as 0xFFFF (CSUM_MANGLED_0).
    assert csum_remainder(b"\xff\xff") == 0
    assert csum_complement(0) == 0xFFFF
    assert csum_complement(0xFFFF) == 0xFFFF


def test_complete_checksum_as_the_kernel_leaves_it() -> None:
    """NEEDS_CSUM: the field holds the folded pseudo-header sum; the rest is ours."""
    rng = random.Random(3)
    for length in (0, 1, 2, 3, 100, 1371, 1372):
        udp_payload = rng.randbytes(length)
        src = ipaddress.IPv4Address("10.1.0.1").packed
        dst = ipaddress.IPv4Address("10.2.0.1").packed
        udp_len = 8 + length
        pseudo = slow_sum(src + dst + bytes((0, 17)) + udp_len.to_bytes(2, "big"))
        udp = struct.pack("!HHHH", 5000, 5201, udp_len, pseudo) + udp_payload
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0,
                                   src, dst))
        ip[10:12] = slow_checksum(bytes(ip)).to_bytes(2, "big")
        done = complete_checksum(bytes(ip) + udp, 20, 6)
        assert done[:26] == bytes(ip) + udp[:6] and done[28:] == udp[8:]
        assert verifies(src + dst + bytes((0, 17)) + udp_len.to_bytes(2, "big") + done[20:])
        assert done[26:28] != b"\0\0"  # RFC 768: 0 would mean "no checksum"


@pytest.mark.parametrize(("start", "offset", "length"), [(21, 16, 60), (20, 40, 40), (60, 0, 60)])
def test_complete_checksum_outside_the_packet(start: int, offset: int, length: int) -> None:
    with pytest.raises(VnetHeaderError):
        complete_checksum(bytes(length), start, offset)


# --- segmentation --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["v4", "v6"])
@pytest.mark.parametrize("length", [1, 1359, 1360, 1361, 2720, 2721, 4001, 65535 - 52])
def test_segments_rebuild_the_super_packet(family: str, length: int) -> None:
    src, dst = ("10.1.0.1", "10.2.0.1") if family == "v4" else ("fd00:1::1", "fd00:2::1")
    options = bytes((1, 1, 8, 10)) + bytes(8)  # NOP NOP timestamp, as Linux sends
    payload = random.Random(length).randbytes(length)
    if family == "v6" and length > 65535 - 72:
        payload = payload[:65535 - 72]
    packet = tcp_packet(src, dst, payload, options=options, seq=0xFFFFF000)
    gso_type = GSO_TCPV4 if family == "v4" else GSO_TCPV6
    gso_size = 1360 - 12 if family == "v4" else 1340 - 12
    segments = segment_tcp(packet, gso_type, gso_size, 20 if family == "v4" else 40)
    check_segments(packet, segments, gso_size)


def test_flags_fin_psh_last_cwr_first() -> None:
    packet = tcp_packet("10.1.0.1", "10.2.0.1", bytes(5000), flags=ACK | PSH | FIN | CWR)
    segments = segment_tcp(packet, GSO_TCPV4 | GSO_ECN, 1000, 20)
    assert len(segments) == 5
    assert [s[33] for s in segments] == [ACK | CWR] + [ACK] * 3 + [ACK | PSH | FIN]
    check_segments(packet, segments, 1000)


def test_ipv4_id_wraps_and_options_kept() -> None:
    packet = tcp_packet("10.1.0.1", "10.2.0.1", bytes(3000), ip_id=0xFFFF,
                        ip_options=bytes((1, 1, 1, 0)))
    segments = segment_tcp(packet, GSO_TCPV4, 1000, 24)
    assert [s[4:6] for s in segments] == [b"\xff\xff", b"\0\0", b"\0\x01"]
    check_segments(packet, segments, 1000)


def test_one_segment_only_gets_its_checksum() -> None:
    packet = tcp_packet("10.1.0.1", "10.2.0.1", bytes(100))
    (segment,) = segment_tcp(packet, GSO_TCPV4, 1360, 20)
    assert segment[:36] == packet[:36] and segment[38:] == packet[38:]
    assert verifies(pseudo_header(segment, len(segment) - 20) + segment[20:])


def test_all_ones_payload_edge_cases() -> None:
    """Payloads that drive the sum to 0xFFFF/0 in places: still verify."""
    for fill in (b"\xff", b"\x00", b"\xff\x00", b"\x00\xff"):
        packet = tcp_packet("10.1.0.1", "10.2.0.1", fill * 2999)
        check_segments(packet, segment_tcp(packet, GSO_TCPV4, 1001, 20), 1001)


@pytest.mark.parametrize(("packet", "gso_type", "gso_size", "csum_start"), [
    (b"", GSO_TCPV4, 1000, 20),
    (tcp_packet("10.1.0.1", "10.2.0.1", bytes(3000)), GSO_TCPV6, 1000, 40),   # wrong family
    (tcp_packet("fd00::1", "fd00::2", bytes(3000)), GSO_TCPV4, 1000, 20),
    (tcp_packet("10.1.0.1", "10.2.0.1", bytes(3000)), GSO_TCPV4, 0, 20),      # no size
    (tcp_packet("10.1.0.1", "10.2.0.1", bytes(3000)), GSO_TCPV4, 1000, 24),   # not the IHL
    (tcp_packet("10.1.0.1", "10.2.0.1", bytes(3000)), 3, 1000, 20),           # UDP: not enabled
    (tcp_packet("10.1.0.1", "10.2.0.1", bytes(3000)), 5, 1000, 20),           # UDP_L4
    (tcp_packet("10.1.0.1", "10.2.0.1", b"")[:30], GSO_TCPV4, 1000, 20),      # cut TCP header
    (tcp_packet("fd00::1", "fd00::2", b"")[:50], GSO_TCPV6, 1000, 40),
    (tcp_packet("fd00::1", "fd00::2", bytes(100)), GSO_TCPV6, 1000, 30),      # inside IPv6
    (tcp_packet("fd00::1", "fd00::2", bytes(100)), GSO_TCPV6, 1000, 200),     # past the end
])
def test_malformed_gso_packets_raise_the_typed_error(
        packet: bytes, gso_type: int, gso_size: int, csum_start: int) -> None:
    with pytest.raises(VnetHeaderError):
        segment_tcp(packet, gso_type, gso_size, csum_start)


def test_tcp_data_offset_outside_the_packet() -> None:
    packet = bytearray(tcp_packet("10.1.0.1", "10.2.0.1", b""))
    packet[32] = 0xF0  # 60-octet TCP header in a 40-octet packet
    with pytest.raises(VnetHeaderError):
        segment_tcp(bytes(packet), GSO_TCPV4, 1000, 20)
    packet[32] = 0x30  # 12 octets: less than a TCP header
    with pytest.raises(VnetHeaderError):
        segment_tcp(bytes(packet), GSO_TCPV4, 1000, 20)


# --- the header ----------------------------------------------------------------------------


def test_plain_packet_passes_unchanged() -> None:
    packet = tcp_packet("10.1.0.1", "10.2.0.1", bytes(10))
    assert packets(VNET_HDR.pack(0, GSO_NONE, 0, 0, 0, 0) + packet) == [packet]


def test_header_with_gso_segments() -> None:
    packet = tcp_packet("10.1.0.1", "10.2.0.1", bytes(4000))
    # hdr_len is ignored (the kernel's value need not be the headers' length).
    got = packets(VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 1234, 1348, 20, 16) + packet)
    check_segments(packet, got, 1348)


def test_header_needs_csum_completes() -> None:
    packet = bytearray(tcp_packet("10.1.0.1", "10.2.0.1", bytes(range(200))))
    pseudo = slow_sum(pseudo_header(bytes(packet), len(packet) - 20))
    packet[36:38] = pseudo.to_bytes(2, "big")
    (got,) = packets(VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16) + bytes(packet))
    assert verifies(pseudo_header(got, len(got) - 20) + got[20:])


def test_garbage_headers_raise_only_the_typed_error() -> None:
    rng = random.Random(11)
    base = tcp_packet("10.1.0.1", "10.2.0.1", bytes(3000))
    raised = 0
    for _ in range(3000):
        header = rng.randbytes(10)
        body = base[:rng.randrange(0, len(base) + 1)] if rng.random() < 0.5 \
            else rng.randbytes(rng.randrange(0, 200))
        try:
            out = packets(header + body)
        except VnetHeaderError:
            raised += 1
            continue
        assert all(isinstance(p, bytes) for p in out)
    assert raised > 1000
    for short in (b"", b"\0" * 9):
        with pytest.raises(VnetHeaderError):
            packets(short)


# --- the write side -------------------------------------------------------------------------


def unwrap(buffer: bytes) -> tuple[tuple[int, ...], bytes]:
    return VNET_HDR.unpack_from(buffer), buffer[VNET_HDR.size:]


def refreshed(packet: bytes) -> bytes:
    """``packet`` with its TCP checksum computed again (after a test changed it)."""
    tcp = 20 if packet[0] >> 4 == 4 else 40
    pkt = bytearray(packet)
    pkt[tcp + 16:tcp + 18] = b"\0\0"
    check = slow_checksum(pseudo_header(bytes(pkt), len(pkt) - tcp) + bytes(pkt[tcp:]))
    pkt[tcp + 16:tcp + 18] = check.to_bytes(2, "big")
    return bytes(pkt)


def stream(src: str, dst: str, sizes: list[int], *, seq: int = 5000, last_psh: bool = True,
           ) -> list[bytes]:
    out = []
    rng = random.Random(sum(sizes))
    for i, size in enumerate(sizes):
        flags = ACK | (PSH if last_psh and i == len(sizes) - 1 else 0)
        out.append(refreshed(tcp_packet(src, dst, rng.randbytes(size), seq=seq, flags=flags,
                                        ip_id=100 + i,
                                        options=bytes((1, 1, 8, 10)) + bytes(8))))
        seq += size
    return out


@pytest.mark.parametrize(("src", "dst"), [("10.2.0.1", "10.1.0.1"), ("fd00:2::1", "fd00:1::1")])
def test_coalesced_run_resegments_into_the_same_segments(src: str, dst: str) -> None:
    """What the kernel would do with the super-packet (segment it again, which is what
    segment_tcp implements) gives back the segments, checksums and all."""
    segs = stream(src, dst, [1348] * 20 + [500])
    (buffer,) = coalesce_tcp(segs)
    (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset), packet = unwrap(buffer)
    tcp = 20 if ":" not in src else 40
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (
        NEEDS_CSUM, GSO_TCPV4 if tcp == 20 else GSO_TCPV6, tcp + 32, 1348, tcp, 16)
    # The partial checksum is the pseudo-header sum over the whole TCP length.
    assert int.from_bytes(packet[tcp + 16:tcp + 18], "big") % 0xFFFF == slow_sum(
        pseudo_header(packet, len(packet) - tcp)) % 0xFFFF
    if tcp == 20:
        assert verifies(packet[:20]) and int.from_bytes(packet[2:4], "big") == len(packet)
    again = segment_tcp(packet, gso_type, gso_size, csum_start)
    if tcp == 20:
        # Identification: the super-packet keeps the first one's, segmentation counts up.
        assert [s[4:6] for s in again] == [s[4:6] for s in segs]
    assert again == segs


def test_runs_break_where_the_flow_does() -> None:
    a = stream("10.2.0.1", "10.1.0.1", [1348] * 3, last_psh=False)
    gap = stream("10.2.0.1", "10.1.0.1", [1348] * 2, seq=5000 + 4 * 1348, last_psh=False)
    other = stream("10.2.0.9", "10.1.0.1", [1348] * 2, seq=5000 + 3 * 1348)
    ping = bytes.fromhex("4500001c0001000040010000") + ipaddress.IPv4Address("10.2.0.1").packed \
        + ipaddress.IPv4Address("10.1.0.1").packed + bytes(8)
    psh = stream("10.2.0.1", "10.1.0.1", [1348] * 4, seq=5000 + 6 * 1348)
    psh[1] = refreshed(psh[1][:33] + bytes((ACK | PSH,)) + psh[1][34:])  # PSH ends a run
    short = stream("10.2.0.1", "10.1.0.1", [1348, 700, 1348], seq=5000 + 10 * 1348,
                   last_psh=False)
    packets_in = a + gap + other + [ping] + psh + short
    out = coalesce_tcp(packets_in)
    shapes = [(unwrap(b)[0][1], len(unwrap(b)[1])) for b in out]
    assert shapes == [
        (GSO_TCPV4, 52 + 3 * 1348),        # a
        (GSO_TCPV4, 52 + 2 * 1348),        # gap: a new run (sequence does not continue)
        (GSO_TCPV4, 52 + 2 * 1348),        # other source
        (GSO_NONE, 28),                    # not TCP
        (GSO_TCPV4, 52 + 2 * 1348),        # psh[0] + psh[1], PSH ends it
        (GSO_TCPV4, 52 + 2 * 1348),        # psh[2:]
        (GSO_TCPV4, 52 + 1348 + 700),      # the shorter one ends the run
        (GSO_NONE, 52 + 1348),
    ]
    # Nothing lost or reordered: resegmenting gives the input back.
    back: list[bytes] = []
    for b in out:
        (_f, gso_type, _h, gso_size, csum_start, _o), packet = unwrap(b)
        back += [packet] if gso_type == GSO_NONE else segment_tcp(packet, gso_type, gso_size,
                                                                 csum_start)
    assert back == packets_in


def test_what_is_never_coalesced() -> None:
    base = stream("10.2.0.1", "10.1.0.1", [1348] * 2, last_psh=False)
    syn = [p[:33] + bytes((SYN | ACK,)) + p[34:] for p in base]
    fin = [base[0][:33] + bytes((FIN | ACK,)) + base[0][34:], base[1]]
    frag = [p[:6] + b"\x20\x00" + p[8:] for p in base]  # MF set
    options = [base[0], base[1][:40] + b"\x01\x01\x08\x0a" + bytes((9,)) * 8 + base[1][52:]]
    ttl = [base[0], base[1][:8] + b"\x3f" + base[1][9:]]
    window = [base[0], base[1][:34] + b"\x00\x10" + base[1][36:]]
    pure_ack = stream("10.2.0.1", "10.1.0.1", [0, 0], last_psh=False)
    cut = [base[0], base[1][:-1]]  # IP total length no longer matches
    for case in (syn, fin, frag, options, ttl, window, pure_ack, cut):
        out = coalesce_tcp(case)
        assert [unwrap(b)[0][1] for b in out] == [GSO_NONE, GSO_NONE]
        assert [unwrap(b)[1] for b in out] == case


def test_the_64k_limit() -> None:
    segs = stream("10.2.0.1", "10.1.0.1", [1348] * 60)
    out = coalesce_tcp(segs)
    assert all(len(b) - VNET_HDR.size <= 0xFFFF for b in out)
    assert len(out) == 2
    back: list[bytes] = []
    for b in out:
        (_f, gso_type, _h, gso_size, csum_start, _o), packet = unwrap(b)
        back += segment_tcp(packet, gso_type, gso_size, csum_start)
    assert back == segs


def test_coalescing_garbage_never_raises() -> None:
    rng = random.Random(5)
    base = stream("10.2.0.1", "10.1.0.1", [1348] * 4)
    for _ in range(2000):
        pkts = []
        for p in base:
            q = bytearray(p)
            for _ in range(rng.randrange(0, 3)):
                q[rng.randrange(0, 60)] = rng.randrange(256)
            pkts.append(bytes(q[:rng.randrange(0, len(q) + 1)]) if rng.random() < 0.2
                        else bytes(q))
        out = coalesce_tcp(pkts)
        assert sum(1 if unwrap(b)[0][1] == GSO_NONE else 0 for b in out) <= len(pkts)


def _reference_coalesce(packets: list[bytes]) -> list[tuple[int, int]]:
    """Runs as (first index, count), by the rules of coalesce_tcp's docstring written out
    field by field, as plainly as possible (a second implementation to compare with)."""
    def parts(p: bytes) -> tuple[int, int] | None:
        if len(p) < 40:
            return None
        if p[0] >> 4 == 4:
            if (p[0] != 0x45 or p[9] != 6 or p[6] & 0x3F or p[7]
                    or int.from_bytes(p[2:4], "big") != len(p)):
                return None
            tcp = 20
        elif p[0] >> 4 == 6:
            if len(p) < 60 or p[6] != 6 or int.from_bytes(p[4:6], "big") != len(p) - 40:
                return None
            tcp = 40
        else:
            return None
        if p[tcp + 13] not in (ACK, ACK | PSH):
            return None
        start = tcp + (p[tcp + 12] >> 4) * 4
        if start < tcp + 20 or start >= len(p):
            return None
        return tcp, start

    def same_but_variable(a: bytes, b: bytes, tcp: int, start: int) -> bool:
        variable = ({2, 3, 4, 5, 10, 11} if tcp == 20 else {4, 5}) | {
            tcp + 4, tcp + 5, tcp + 6, tcp + 7, tcp + 13, tcp + 16, tcp + 17}
        return all(a[k] == b[k] for k in range(start) if k not in variable)

    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(packets):
        first = packets[i]
        got = parts(first)
        j = i + 1
        if got is not None:
            tcp, start = got
            size = len(first) - start
            seq = int.from_bytes(first[tcp + 4:tcp + 8], "big") + size
            total = len(first)
            last = first
            while j < len(packets) and not last[tcp + 13] & PSH and len(last) - start == size:
                nxt = packets[j]
                length = len(nxt) - start
                if (parts(nxt) != got or length > size or total + length > 0xFFFF
                        or not same_but_variable(first, nxt, tcp, start)
                        or int.from_bytes(nxt[tcp + 4:tcp + 8], "big") != seq % 2**32):
                    break
                seq += length
                total += length
                last = nxt
                j += 1
        runs.append((i, j - i))
        i = j
    return runs


@pytest.mark.parametrize(("src", "dst"), [("10.2.0.1", "10.1.0.1"), ("fd00:2::1", "fd00:1::1")])
def test_coalescing_agrees_with_a_field_by_field_reading(src: str, dst: str) -> None:
    """Streams with random header octets changed, cut short or flagged: the runs
    coalesce_tcp forms are those a plain reading of the rules gives."""
    rng = random.Random(11)
    base = stream(src, dst, [1348] * 12, last_psh=False)
    start = 52 if ":" not in src else 72
    joined = 0
    for _ in range(1500):
        pkts = []
        for p in base:
            q = bytearray(p)
            if rng.random() < 0.15:
                q[rng.randrange(0, start)] ^= 1 << rng.randrange(8)
            if rng.random() < 0.05:
                q = q[:rng.randrange(start - 8, len(q) + 1)]
            pkts.append(bytes(q))
        out = coalesce_tcp(pkts)
        runs = _reference_coalesce(pkts)
        assert len(out) == len(runs)
        for buffer, (first, count) in zip(out, runs, strict=True):
            (_f, gso_type, _h, _size, _cs, _co), packet = unwrap(buffer)
            if count == 1:
                assert (gso_type, packet) == (GSO_NONE, pkts[first])
            else:
                joined += 1
                assert gso_type != GSO_NONE
                assert packet[start:] == b"".join(p[start:] for p in pkts[first:first + count])
    assert joined > 1000
