"""A small, bounds-checked capture reader for the demo: pcap / pcapng -> IPv4 -> UDP -> ISAKMP.

The demo decodes a strongSwan exchange recorded by dumpcap without asking
tshark for help, so everything between the file and ``describe_message`` is
ours.  Only what the demo needs is understood: classic pcap (both byte
orders, micro- and nanosecond timestamps) and pcapng Enhanced/Simple Packet
Blocks; Ethernet (with 802.1Q tags), Linux cooked (SLL, SLL2) and raw IP
link types; unfragmented IPv4.  Everything else is skipped, never guessed.
Malformed input raises :class:`PcapError`, nothing else.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ikev1d.wire.constants import IKE_PORT, IPPROTO_UDP, NAT_T_PORT, NON_ESP_MARKER
from ikev1d_lab.errors import LabError

__all__ = [
    "IpPacket",
    "IsakmpFrame",
    "PcapError",
    "PcapPacket",
    "UdpDatagram",
    "ipv4_of",
    "isakmp_frames",
    "read_capture",
    "udp_of",
]

# Link-layer header types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_VLAN = (0x8100, 0x88A8)

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_IDB = 0x00000001
_PCAPNG_SPB = 0x00000003
_PCAPNG_EPB = 0x00000006
_PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D

class PcapError(LabError, ValueError):
    """The capture file is truncated or not a pcap / pcapng file."""


@dataclass(frozen=True, slots=True)
class PcapPacket:
    """One captured frame: seconds since the epoch, its link type and bytes."""

    timestamp: float
    linktype: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IpPacket:
    src: str
    dst: str
    protocol: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class IsakmpFrame:
    """An ISAKMP message found in a capture (the non-ESP marker already removed)."""

    number: int  # 1-based frame number in the capture, as tshark counts
    timestamp: float
    src: str
    sport: int
    dst: str
    dport: int
    data: bytes


def _unpack(fmt: str, data: bytes, offset: int, what: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        raise PcapError(f"{what}: needs {size} bytes at offset {offset}, file has {len(data)}")
    values: tuple[int, ...] = struct.unpack_from(fmt, data, offset)
    return values


def _take(data: bytes, offset: int, length: int, what: str) -> bytes:
    if length < 0 or offset + length > len(data):
        raise PcapError(f"{what}: needs {length} bytes at offset {offset}, file has {len(data)}")
    return data[offset : offset + length]


def _read_classic(data: bytes) -> Iterator[PcapPacket]:
    endian, resolution = _PCAP_MAGIC[data[:4]]
    *_, linktype = _unpack(endian + "IHHiIII", data, 0, "pcap file header")
    offset = 24
    while offset < len(data):
        seconds, fraction, caplen, _origlen = _unpack(
            endian + "IIII", data, offset, "pcap record header"
        )
        frame = _take(data, offset + 16, caplen, "pcap record")
        yield PcapPacket(seconds + fraction * resolution, linktype & 0xFFFF, frame)
        offset += 16 + caplen


def _read_pcapng(data: bytes) -> Iterator[PcapPacket]:
    endian = "<"
    interfaces: list[tuple[int, float]] = []  # (linktype, seconds per timestamp unit)
    offset = 0
    while offset < len(data):
        block_type, block_length = _unpack(endian + "II", data, offset, "pcapng block header")
        if block_type == _PCAPNG_SHB:
            (magic,) = _unpack("<I", data, offset + 8, "pcapng section header")
            if magic == _PCAPNG_BYTE_ORDER_MAGIC:
                endian = "<"
            elif magic == struct.unpack(">I", struct.pack("<I", _PCAPNG_BYTE_ORDER_MAGIC))[0]:
                endian = ">"
            else:
                raise PcapError(f"pcapng section header: bad byte-order magic {magic:#010x}")
            (block_length,) = _unpack(endian + "I", data, offset + 4, "pcapng section header")
            interfaces = []
        if block_length < 12 or block_length % 4:
            raise PcapError(f"pcapng block at offset {offset}: bad length {block_length}")
        block = _take(data, offset, block_length, "pcapng block")
        (trailer,) = _unpack(endian + "I", block, block_length - 4, "pcapng block trailer")
        if trailer != block_length:
            raise PcapError(f"pcapng block at offset {offset}: trailing length {trailer}")
        if block_type == _PCAPNG_IDB:
            (linktype,) = _unpack(endian + "H", block, 8, "pcapng interface block")
            interfaces.append((linktype, _if_tsresol(block[16:-4], endian)))
        elif block_type == _PCAPNG_EPB:
            if_id, ts_high, ts_low, caplen, _origlen = _unpack(
                endian + "IIIII", block, 8, "pcapng packet block"
            )
            if if_id >= len(interfaces):
                raise PcapError(f"pcapng packet block names unknown interface {if_id}")
            linktype, unit = interfaces[if_id]
            frame = _take(block, 28, caplen, "pcapng packet data")
            yield PcapPacket(((ts_high << 32) | ts_low) * unit, linktype, frame)
        elif block_type == _PCAPNG_SPB:
            if not interfaces:
                raise PcapError("pcapng simple packet block before any interface block")
            (origlen,) = _unpack(endian + "I", block, 8, "pcapng simple packet block")
            frame = _take(block, 12, min(origlen, block_length - 16), "pcapng packet data")
            yield PcapPacket(0.0, interfaces[0][0], frame)
        offset += block_length


def _if_tsresol(options: bytes, endian: str) -> float:
    """if_tsresol option of an Interface Description Block; microseconds by default."""
    offset = 0
    while offset + 4 <= len(options):
        code, length = struct.unpack_from(endian + "HH", options, offset)
        if code == 0:
            break
        if code == 9 and length >= 1 and offset + 5 <= len(options):
            value = options[offset + 4]
            exponent = value & 0x7F
            return float(2 ** -exponent) if value & 0x80 else float(10**-exponent)
        offset += 4 + (length + 3) // 4 * 4
    return 1e-6


def read_capture(data: bytes) -> list[PcapPacket]:
    """Every frame of a classic pcap or pcapng file, in file order."""
    if data[:4] in _PCAP_MAGIC:
        return list(_read_classic(data))
    if len(data) >= 4 and struct.unpack("<I", data[:4])[0] == _PCAPNG_SHB:
        return list(_read_pcapng(data))
    raise PcapError(f"not a pcap or pcapng file (starts with {data[:4].hex() or 'nothing'})")


def ipv4_of(packet: PcapPacket) -> IpPacket | None:
    """The IPv4 packet in a frame; None for other protocols, link types and fragments."""
    data, link = packet.data, packet.linktype
    if link == LINKTYPE_ETHERNET:
        offset = 12
        (ethertype,) = _unpack("!H", data, offset, "Ethernet header")
        while ethertype in _ETHERTYPE_VLAN:
            offset += 4
            (ethertype,) = _unpack("!H", data, offset, "802.1Q tag")
        if ethertype != _ETHERTYPE_IPV4:
            return None
        ip = data[offset + 2 :]
    elif link == LINKTYPE_LINUX_SLL:
        (ethertype,) = _unpack("!H", data, 14, "Linux cooked header")
        if ethertype != _ETHERTYPE_IPV4:
            return None
        ip = data[16:]
    elif link == LINKTYPE_LINUX_SLL2:
        (ethertype,) = _unpack("!H", data, 0, "Linux cooked v2 header")
        if ethertype != _ETHERTYPE_IPV4:
            return None
        ip = data[20:]
    elif link in (LINKTYPE_RAW, LINKTYPE_IPV4):
        ip = data
    else:
        return None
    if not ip or ip[0] >> 4 != 4:
        return None
    version_ihl, _tos, total_length, _ident, frag, _ttl, protocol = _unpack(
        "!BBHHHBB", ip, 0, "IPv4 header"
    )
    ihl = (version_ihl & 0x0F) * 4
    if ihl < 20 or total_length < ihl or total_length > len(ip):
        raise PcapError(f"IPv4 header: IHL {ihl}, total length {total_length}, {len(ip)} bytes")
    if frag & 0x3FFF:  # more-fragments flag or a fragment offset: not reassembled here
        return None
    src = str(ipaddress.IPv4Address(ip[12:16]))
    dst = str(ipaddress.IPv4Address(ip[16:20]))
    return IpPacket(src, dst, protocol, ip[ihl:total_length])


def udp_of(ip: IpPacket) -> UdpDatagram | None:
    """The UDP datagram in an IPv4 packet, or None when it carries something else."""
    if ip.protocol != IPPROTO_UDP:
        return None
    sport, dport, length, _checksum = _unpack("!HHHH", ip.payload, 0, "UDP header")
    if length < 8 or length > len(ip.payload):
        raise PcapError(f"UDP length {length} with {len(ip.payload)} bytes of IP payload")
    return UdpDatagram(ip.src, sport, ip.dst, dport, ip.payload[8:length])


def isakmp_frames(packets: Iterable[PcapPacket]) -> list[IsakmpFrame]:
    """ISAKMP messages on UDP 500, and on UDP 4500 behind the non-ESP marker (RFC 3948).

    UDP-encapsulated ESP and NAT-T keepalives (a single 0xff octet) on 4500 are skipped.
    """
    frames: list[IsakmpFrame] = []
    for number, packet in enumerate(packets, start=1):
        ip = ipv4_of(packet)
        udp = udp_of(ip) if ip is not None else None
        if udp is None:
            continue
        ports = (udp.sport, udp.dport)
        if NAT_T_PORT in ports:
            if not udp.payload.startswith(NON_ESP_MARKER):
                continue  # ESP (non-zero SPI) or a keepalive
            message = udp.payload[len(NON_ESP_MARKER) :]
        elif IKE_PORT in ports:
            message = udp.payload
        else:
            continue
        frames.append(
            IsakmpFrame(
                number, packet.timestamp, udp.src, udp.sport, udp.dst, udp.dport, message
            )
        )
    return frames
