"""IP header helpers for the ESP data plane: parse, build, checksum, UDP encapsulation.

Just enough of IPv4 (RFC 791) and IPv6 (RFC 8200) to pick SAs, choose the ESP
next header for tunnel mode (RFC 4303 §2.6), split transport-mode packets, and
write outer headers for pcap files and tests (for raw sockets the kernel builds
them). UDP encapsulation of ESP and the IKE/ESP split on port 4500 follow
RFC 3948.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from ikev1d.errors import Ikev1dError
from ikev1d.wire.constants import (
    IPPROTO_ESP,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_UDP,
    NAT_KEEPALIVE,
    NAT_T_PORT,
    NON_ESP_MARKER,
)

__all__ = [
    "IPPROTO_ESP",
    "IPPROTO_IPIP",
    "IPPROTO_IPV6",
    "IPPROTO_UDP",
    "NAT_KEEPALIVE",
    "NAT_T_PORT",
    "NON_ESP_MARKER",
    "IpHeader",
    "PacketError",
    "build_ipv4_header",
    "build_ipv4_packet",
    "build_udp_header",
    "inet_checksum",
    "parse_ip_header",
    "tunnel_next_header",
    "udp_encap_classify",
    "udp_encapsulate",
]

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")


class PacketError(Ikev1dError, ValueError):
    """Not a well-formed IP packet (or not one we can handle)."""


@dataclass(frozen=True)
class IpHeader:
    """The fields of an IP header the data plane needs.

    `protocol` is IPv4's Protocol or IPv6's first Next Header (extension headers
    are not walked); `header_length` the length of that fixed header (with IPv4
    options); `total_length` the whole packet's length as the header states it.
    """

    version: int
    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    protocol: int
    header_length: int
    total_length: int


def parse_ip_header(packet: bytes) -> IpHeader:
    """Parse and bounds-check an IPv4 or IPv6 header; raise PacketError if malformed."""
    if not packet:
        raise PacketError("empty packet")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < _IPV4.size:
            raise PacketError(f"IPv4 packet of {len(packet)} octets is shorter than its header")
        ver_ihl, _tos, total, _ident, _frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(
            packet
        )
        ihl = (ver_ihl & 0x0F) * 4
        if ihl < _IPV4.size or total < ihl or total > len(packet):
            raise PacketError(
                f"IPv4 header length {ihl} / total length {total} do not fit {len(packet)} octets"
            )
        return IpHeader(4, IPv4Address(src), IPv4Address(dst), proto, ihl, total)
    if version == 6:
        if len(packet) < _IPV6.size:
            raise PacketError(f"IPv6 packet of {len(packet)} octets is shorter than its header")
        _vtf, payload_length, next_header, _hop, src, dst = _IPV6.unpack_from(packet)
        total = _IPV6.size + payload_length
        if total > len(packet):
            raise PacketError(f"IPv6 payload length {payload_length} exceeds the packet")
        return IpHeader(6, IPv6Address(src), IPv6Address(dst), next_header, _IPV6.size, total)
    raise PacketError(f"IP version {version}")


def tunnel_next_header(inner_packet: bytes) -> int:
    """ESP next header for a tunnel-mode inner packet: 4 for IPv4, 41 for IPv6 (RFC 4303 §2.6)."""
    if not inner_packet:
        raise PacketError("empty packet")
    version = inner_packet[0] >> 4
    if version == 4:
        return IPPROTO_IPIP
    if version == 6:
        return IPPROTO_IPV6
    raise PacketError(f"IP version {version}")


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data = data + b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_ipv4_header(
    src: IPv4Address | str,
    dst: IPv4Address | str,
    protocol: int,
    payload_length: int,
    *,
    ttl: int = 64,
    identification: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
) -> bytes:
    """A 20-octet IPv4 header (no options) with its checksum (RFC 791 §3.1)."""
    total = _IPV4.size + payload_length
    if total > 0xFFFF:
        raise PacketError(f"IPv4 packet of {total} octets")
    flags_frag = 0x4000 if dont_fragment else 0
    header = bytearray(
        _IPV4.pack(
            0x45, tos, total, identification & 0xFFFF, flags_frag, ttl, protocol, 0,
            IPv4Address(src).packed, IPv4Address(dst).packed,
        )
    )
    struct.pack_into("!H", header, 10, inet_checksum(bytes(header)))
    return bytes(header)


def build_ipv4_packet(
    src: IPv4Address | str,
    dst: IPv4Address | str,
    protocol: int,
    payload: bytes,
    *,
    ttl: int = 64,
    identification: int = 0,
) -> bytes:
    """IPv4 header + `payload`."""
    header = build_ipv4_header(
        src, dst, protocol, len(payload), ttl=ttl, identification=identification
    )
    return header + payload


def build_udp_header(
    sport: int,
    dport: int,
    payload: bytes,
    src: IPv4Address | str | None = None,
    dst: IPv4Address | str | None = None,
) -> bytes:
    """An 8-octet UDP header (RFC 768) for `payload`.

    With `src` and `dst` the checksum over the IPv4 pseudo-header is filled in;
    without, it is zero, which RFC 3948 §2.1 asks for on UDP-encapsulated ESP.
    """
    length = _UDP.size + len(payload)
    if length > 0xFFFF:
        raise PacketError(f"UDP datagram of {length} octets")
    if src is None or dst is None:
        return _UDP.pack(sport, dport, length, 0)
    pseudo = IPv4Address(src).packed + IPv4Address(dst).packed + struct.pack(
        "!BBH", 0, IPPROTO_UDP, length
    )
    checksum = inet_checksum(pseudo + _UDP.pack(sport, dport, length, 0) + payload)
    return _UDP.pack(sport, dport, length, checksum or 0xFFFF)  # RFC 768: 0 is sent as 0xFFFF


def udp_encapsulate(esp_packet: bytes, sport: int = NAT_T_PORT, dport: int = NAT_T_PORT) -> bytes:
    """UDP header (checksum 0, RFC 3948 §2.1) followed by the ESP packet."""
    return build_udp_header(sport, dport, esp_packet) + esp_packet


def udp_encap_classify(datagram: bytes) -> Literal["esp", "ike", "keepalive", "invalid"]:
    """What a UDP payload received on port 4500 is (RFC 3948 §2.2, §2.3, §4).

    A single 0xFF octet is a NAT-keepalive; the non-ESP marker (a zero SPI)
    introduces IKE; anything else with at least the 8-octet ESP header is ESP.
    """
    if datagram == NAT_KEEPALIVE:
        return "keepalive"
    if len(datagram) < 8:
        return "invalid"
    if datagram[:4] == NON_ESP_MARKER:
        return "ike"
    return "esp"
