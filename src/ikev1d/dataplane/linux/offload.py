"""TUN offloads: the virtio-net header, TCP segmentation and checksum completion.

With ``IFF_VNET_HDR`` every read from and write to a TUN device starts with a
``struct virtio_net_hdr`` (linux/virtio_net.h, 10 octets in the host's byte order
for a TUN device that was not switched to little-endian). Once ``TUNSETOFFLOAD``
grants ``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``, the kernel may hand over:

* a TCP "super-packet" of up to 64 KiB (``gso_type`` TCPV4 or TCPV6): one IP and
  TCP header followed by the payload of many segments, each ``gso_size`` octets
  but the last, and a TCP checksum that is not filled in;
* a single packet whose transport checksum is only partial (``NEEDS_CSUM``):
  the field at ``csum_start + csum_offset`` holds the pseudo-header sum, and the
  ones' complement sum from ``csum_start`` to the end still has to be taken.

ESP seals whole IP packets (RFC 4303 §2.6), and the peer writes them into its
network as they are, so each segment must be a complete, valid packet before it
is encrypted: :func:`packets` does what a NIC's segmentation offload does
(the rules of Linux's ``tcp_gso_segment``/``inet_gso_segment``): per segment the
IP total (payload) length, the IPv4 identification advanced by one and the IPv4
header checksum; the TCP sequence number advanced by the bytes before it, FIN
and PSH only on the last segment, CWR only on the first (RFC 3168 §6.1.2: CWR
once per window reduction); and the TCP checksum over the RFC 9293 §3.1
pseudo-header (RFC 8200 §8.1 for IPv6).

Checksums (RFC 1071): the ones' complement sum of 16-bit words is the sum of the
words modulo 0xFFFF (2^16 = 1 mod 0xFFFF, so a big-endian integer made of the
words is congruent to their sum), which one ``int.from_bytes(...) % 0xFFFF``
computes in C. A remainder of 0 stands for 0xFFFF ("negative zero"): the complement
is then 0, sent as 0xFFFF as Linux does (``CSUM_MANGLED_0``; RFC 768 requires it
for UDP, and for TCP both encode the same sum).

Pure functions over bytes: the ioctls are in :mod:`ikev1d.dataplane.linux.tun`.
"""

from __future__ import annotations

import struct
from typing import Final

from ikev1d.errors import Ikev1dError

__all__ = [
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "NEEDS_CSUM",
    "VNET_HDR",
    "VNET_HDR_LEN",
    "ZERO_VNET_HDR",
    "VnetHeaderError",
    "complete_checksum",
    "csum_complement",
    "csum_remainder",
    "packets",
    "segment_tcp",
]

VNET_HDR: Final = struct.Struct("=BBHHHH")
"""flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (virtio 1.x §5.1.6)."""
VNET_HDR_LEN: Final = VNET_HDR.size
ZERO_VNET_HDR: Final = bytes(VNET_HDR_LEN)
"""What precedes a packet written to the device: no GSO, checksums already complete."""

NEEDS_CSUM: Final = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
GSO_NONE: Final = 0
GSO_TCPV4: Final = 1
GSO_UDP: Final = 3
GSO_TCPV6: Final = 4
GSO_ECN: Final = 0x80
"""Or-ed into gso_type when the segments carry ECN (CWR set on the super-packet)."""

_IPPROTO_TCP: Final = 6
_TCP_FIN: Final = 0x01
_TCP_PSH: Final = 0x08
_TCP_CWR: Final = 0x80
_IPV4_HEADER: Final = 20
_IPV6_HEADER: Final = 40
_TCP_HEADER: Final = 20


class VnetHeaderError(Ikev1dError, ValueError):
    """A read from the TUN device whose virtio-net header does not fit its packet."""


def csum_remainder(data: bytes | bytearray | memoryview) -> int:
    """The ones' complement sum of ``data``'s big-endian 16-bit words, modulo 0xFFFF.

    ``data`` must start on a word boundary of the checksummed region; an odd last
    octet is the high half of a word padded with zero (RFC 1071 §4.1).
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value % 0xFFFF


def csum_complement(remainder: int) -> int:
    """The checksum field for a sum with this remainder (0 becomes 0xFFFF, see above)."""
    return 0xFFFF - (remainder % 0xFFFF)


def complete_checksum(packet: bytes, csum_start: int, csum_offset: int) -> bytes:
    """``packet`` with the partial checksum at ``csum_start + csum_offset`` completed.

    The field holds the pseudo-header sum already (the kernel put it there), so the
    checksum is the complement of the sum from ``csum_start`` to the end, field
    included, which is what Linux's ``skb_checksum_help`` does in software.
    """
    field = csum_start + csum_offset
    if csum_start & 1 or field + 2 > len(packet):
        raise VnetHeaderError(f"checksum at {csum_start}+{csum_offset} outside a "
                              f"{len(packet)}-octet packet")
    checksum = csum_complement(csum_remainder(memoryview(packet)[csum_start:]))
    out = bytearray(packet)
    out[field:field + 2] = checksum.to_bytes(2, "big")
    return bytes(out)


def segment_tcp(packet: bytes, gso_type: int, gso_size: int, csum_start: int) -> list[bytes]:
    """Cut a TCP super-packet into segments of at most ``gso_size`` payload octets.

    ``csum_start`` is where the TCP header starts (after any IPv4 options or IPv6
    extension headers). Every segment is a complete packet with valid checksums.
    """
    kind = gso_type & ~GSO_ECN
    length = len(packet)
    if length < 1 or gso_size <= 0:
        raise VnetHeaderError(f"GSO packet of {length} octets, gso_size {gso_size}")
    version = packet[0] >> 4
    if kind == GSO_TCPV4:
        if version != 4 or length < _IPV4_HEADER:
            raise VnetHeaderError("TCPv4 GSO on a packet that is not IPv4")
        ihl = (packet[0] & 0x0F) * 4
        if ihl < _IPV4_HEADER or csum_start != ihl or packet[9] != _IPPROTO_TCP:
            raise VnetHeaderError(f"TCPv4 GSO: IPv4 header of {ihl} octets, TCP at "
                                  f"{csum_start}, protocol {packet[9]}")
        # RFC 9293 §3.1: source, destination, zero, protocol, TCP length (added below).
        pseudo = csum_remainder(packet[12:20]) + _IPPROTO_TCP
    elif kind == GSO_TCPV6:
        if version != 6 or length < _IPV6_HEADER or csum_start < _IPV6_HEADER:
            raise VnetHeaderError("TCPv6 GSO on a packet that is not IPv6")
        # RFC 8200 §8.1: the upper-layer protocol, not the first Next Header.
        pseudo = csum_remainder(packet[8:40]) + _IPPROTO_TCP
    else:
        raise VnetHeaderError(f"GSO type {gso_type} was not enabled")
    tcp = csum_start
    if tcp + _TCP_HEADER > length:
        raise VnetHeaderError("GSO packet shorter than its TCP header")
    header_end = tcp + (packet[tcp + 12] >> 4) * 4
    if header_end < tcp + _TCP_HEADER or header_end > length:
        raise VnetHeaderError("TCP data offset outside the GSO packet")
    payload_length = length - header_end
    if payload_length <= gso_size:
        # One segment: only the checksum is missing.
        return [_tcp_checksummed(packet, tcp, pseudo)]

    # The headers are written into one template per segment; their checksums are
    # the template's sum (variable fields zeroed) plus the fields that vary, so only
    # the payload is summed per segment (RFC 1624's incremental idea, done forward).
    view = memoryview(packet)
    header = bytearray(packet[:header_end])
    ip_id = int.from_bytes(packet[4:6], "big")
    seq = int.from_bytes(packet[tcp + 4:tcp + 8], "big")
    flags = packet[tcp + 13]
    offset_word = packet[tcp + 12] << 8
    header[tcp + 4:tcp + 8] = bytes(4)
    header[tcp + 12:tcp + 14] = bytes(2)
    header[tcp + 16:tcp + 18] = bytes(2)
    tcp_base = pseudo + csum_remainder(header[tcp:header_end])
    ip_base = 0
    if version == 4:
        header[2:6] = bytes(4)
        header[10:12] = bytes(2)
        ip_base = csum_remainder(header[:tcp])
    tcp_header_length = header_end - tcp
    last_start = header_end + (payload_length - 1) // gso_size * gso_size
    pack_into = struct.pack_into
    join = b"".join
    segments: list[bytes] = []
    index = 0
    for start in range(header_end, length, gso_size):
        payload = view[start:start + gso_size]
        size = len(payload)
        tcp_length = tcp_header_length + size
        if version == 4:
            total = tcp + tcp_length
            this_id = (ip_id + index) & 0xFFFF
            pack_into("!HH", header, 2, total, this_id)
            pack_into("!H", header, 10, csum_complement(ip_base + total + this_id))
        else:
            pack_into("!H", header, 4, tcp - _IPV6_HEADER + tcp_length)
        this_seq = (seq + (start - header_end)) & 0xFFFFFFFF
        this_flags = flags
        if start != last_start:
            this_flags &= ~(_TCP_FIN | _TCP_PSH)
        if index:
            this_flags &= ~_TCP_CWR
        word = offset_word | this_flags
        checksum = csum_complement(tcp_base + tcp_length + (this_seq >> 16) + (this_seq & 0xFFFF)
                                   + word + csum_remainder(payload))
        pack_into("!I", header, tcp + 4, this_seq)
        pack_into("!H", header, tcp + 12, word)
        pack_into("!H", header, tcp + 16, checksum)
        segments.append(join((header, payload)))
        index += 1
    return segments


def _tcp_checksummed(packet: bytes, tcp: int, pseudo: int) -> bytes:
    """A single TCP segment with its checksum computed afresh (the IP header is
    complete already: the kernel filled it in for the whole packet)."""
    out = bytearray(packet)
    out[tcp + 16:tcp + 18] = b"\0\0"
    tcp_length = len(packet) - tcp
    checksum = csum_complement(pseudo + tcp_length + csum_remainder(memoryview(out)[tcp:]))
    out[tcp + 16:tcp + 18] = checksum.to_bytes(2, "big")
    return bytes(out)


def packets(buffer: bytes) -> list[bytes]:
    """The IP packets in one read from a TUN device opened with ``IFF_VNET_HDR``.

    VnetHeaderError when the header is truncated, names an offload that was not
    enabled, or points outside its packet: the caller drops the read and counts it.
    """
    if len(buffer) < VNET_HDR_LEN:
        raise VnetHeaderError(f"{len(buffer)}-octet read: no virtio-net header")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buffer)
    packet = buffer[VNET_HDR_LEN:]
    if gso_type == GSO_NONE:
        if flags & NEEDS_CSUM:
            return [complete_checksum(packet, csum_start, csum_offset)]
        return [packet]
    # hdr_len is not trusted: the kernel fills in the linear part's length, which
    # need not be the headers' (wireguard-go recomputes it too); the segmentation
    # takes the header lengths from the packet itself.
    return segment_tcp(packet, gso_type, gso_size, csum_start)


# --- the write side: coalescing received TCP segments ---------------------------------------

_MAX_COALESCED: Final = 0xFFFF
"""IPv4 total length (and IPv6 payload length) of a coalesced packet: a 16-bit field."""
_COALESCE_FLAGS: Final = 0x10  # ACK only; PSH may end a run (see below)
_PSH_ACK: Final = _TCP_PSH | 0x10
_RUN_FLAGS: Final = frozenset((_COALESCE_FLAGS, _PSH_ACK))


def _tcp_parts(packet: bytes) -> tuple[int, int] | None:
    """(TCP header offset, payload offset) of a packet that may be coalesced: IPv4
    without options or fragmentation, or IPv6 with TCP as the first Next Header, and
    a data segment that carries no flags but ACK (and PSH). None for anything else."""
    if len(packet) < _IPV4_HEADER + _TCP_HEADER:
        return None
    version = packet[0] >> 4
    if version == 4:
        if packet[0] != 0x45 or packet[9] != _IPPROTO_TCP or packet[6] & 0x3F or packet[7]:
            return None
        if int.from_bytes(packet[2:4], "big") != len(packet):
            return None
        tcp = _IPV4_HEADER
    elif version == 6:
        if len(packet) < _IPV6_HEADER + _TCP_HEADER or packet[6] != _IPPROTO_TCP:
            return None
        if int.from_bytes(packet[4:6], "big") != len(packet) - _IPV6_HEADER:
            return None
        tcp = _IPV6_HEADER
    else:
        return None
    flags = packet[tcp + 13]
    if flags not in (_COALESCE_FLAGS, _PSH_ACK):
        return None
    payload = tcp + (packet[tcp + 12] >> 4) * 4
    if payload <= tcp + _TCP_HEADER - 1 or payload >= len(packet):
        return None  # a bad data offset, or a pure ACK (nothing to coalesce)
    return tcp, payload


def coalesce_tcp(packets: list[bytes]) -> list[bytes]:
    """Buffers to write to a TUN device opened with ``IFF_VNET_HDR``: runs of
    consecutive in-order TCP segments of one flow joined into one super-packet with
    a GSO header (what the kernel's GRO does for a NIC), everything else as it came,
    each behind a header of its own. The order of the packets is kept.

    Segments join a run when the IP header matches but for length, identification
    and checksum, the TCP header matches but for sequence number, PSH and checksum
    (options included), the sequence number continues the run, and the payload is
    the run's first one's size (a shorter one, or PSH, ends the run). The joined
    packet's TCP checksum is left partial (``NEEDS_CSUM``, the pseudo-header sum in
    the field): the kernel then takes the payload as checked, as it does for its own
    GRO. ESP's ICV has authenticated every octet already (RFC 4303 §3.4.4).
    """
    out: list[bytes] = []
    i, count = 0, len(packets)
    while i < count:
        first = packets[i]
        parts = _tcp_parts(first)
        if parts is None:
            out.append(ZERO_VNET_HDR + first)
            i += 1
            continue
        tcp, start = parts
        size = len(first) - start
        seq = (int.from_bytes(first[tcp + 4:tcp + 8], "big") + size) & 0xFFFFFFFF
        # What must be the same in every segment of the run, sliced out of the first
        # once. IPv4: version/IHL and TOS, flags/fragment, TTL and protocol, then the
        # addresses and ports together; IPv6: version/class/flow, then next header,
        # hop limit, addresses and ports. TCP: acknowledgment number and data offset,
        # window, urgent pointer and the options.
        if tcp == _IPV4_HEADER:
            head_end, mid_start = 2, 6
            mid_end, addr_start = 10, 12
            length_at, length_fix = 2, 0
        else:
            head_end = 4
            mid_start = mid_end = addr_start = 6
            length_at, length_fix = 4, _IPV6_HEADER
        head = first[:head_end]
        mid = first[mid_start:mid_end]
        addresses = first[addr_start:tcp + 4]
        ack_at, ack_end = tcp + 8, tcp + 13
        ack = first[ack_at:ack_end]
        flags_at = tcp + 13
        window_end = tcp + 16
        window = first[tcp + 14:window_end]
        # Acknowledgment to window with the flags between: one comparison for a segment
        # flagged as the first (ACK alone, or it would have ended the run), the two
        # around the flags for the one with PSH.
        ack_to_window = first[ack_at:window_end]
        rest_at = tcp + 18
        rest = first[rest_at:start]
        seq_at, seq_end = tcp + 4, tcp + 8
        run = [first]
        total = len(first)
        j = i + 1
        ended = first[flags_at] & _TCP_PSH
        while not ended and j < count:
            nxt = packets[j]
            length = len(nxt) - start
            # What _tcp_parts(nxt) == parts would ask, given that the fields compared
            # below equal the first segment's: the length fields, a payload, the flags.
            if (length > size or length <= 0 or total + length > _MAX_COALESCED
                    or nxt[flags_at] not in _RUN_FLAGS
                    or int.from_bytes(nxt[length_at:length_at + 2], "big") + length_fix
                    != len(nxt)):
                break
            if (nxt[addr_start:tcp + 4] != addresses or nxt[:head_end] != head
                    or nxt[mid_start:mid_end] != mid
                    or int.from_bytes(nxt[seq_at:seq_end], "big") != seq
                    or (nxt[ack_at:window_end] != ack_to_window
                        and (nxt[ack_at:ack_end] != ack or nxt[tcp + 14:window_end] != window))
                    or nxt[rest_at:start] != rest):
                break
            run.append(nxt)
            total += length
            seq = (seq + length) & 0xFFFFFFFF
            ended = length < size or nxt[flags_at] & _TCP_PSH
            j += 1
        if len(run) == 1:
            out.append(ZERO_VNET_HDR + first)
        else:
            out.append(_joined(run, tcp, start, size, total))
        i = j
    return out


def _joined(run: list[bytes], tcp: int, start: int, size: int, total: int) -> bytes:
    """The super-packet of a run, behind its GSO header."""
    first = run[0]
    header = bytearray(first[:start])
    if tcp == _IPV4_HEADER:
        header[2:4] = total.to_bytes(2, "big")
        header[10:12] = b"\0\0"
        header[10:12] = csum_complement(csum_remainder(header[:tcp])).to_bytes(2, "big")
        pseudo = csum_remainder(first[12:20])
        gso_type = GSO_TCPV4
    else:
        header[4:6] = (total - _IPV6_HEADER).to_bytes(2, "big")
        pseudo = csum_remainder(first[8:40])
        gso_type = GSO_TCPV6
    header[tcp + 13] = run[-1][tcp + 13]  # PSH as the last segment had it
    # The partial checksum: the pseudo-header sum, folded, not complemented (what Linux
    # puts there for CHECKSUM_PARTIAL, RFC 9293 §3.1 / RFC 8200 §8.1 fields).
    partial = (pseudo + _IPPROTO_TCP + total - tcp) % 0xFFFF
    header[tcp + 16:tcp + 18] = (partial or 0xFFFF).to_bytes(2, "big")
    vnet = VNET_HDR.pack(NEEDS_CSUM, gso_type, start, size, tcp, 16)
    # Slicing the payloads out as bytes costs less than a memoryview of each.
    return b"".join([vnet, header, *[p[start:] for p in run]])
