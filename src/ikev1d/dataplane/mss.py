"""TCP through the tunnel: each SA's tunnel MTU, MSS clamping, and ICMP "too big".

ESP in tunnel mode adds an outer IP header, for NAT-T a UDP header, the ESP
header, IV, padding, trailer and ICV (RFC 4303 §2) to every packet. A packet that
fits the inner path may then no longer fit the outer one, and its outer datagram
is fragmented (IPv4) or lost (IPv6, or DF on the outer header).

* :func:`tunnel_mtu`: the largest inner packet whose ESP datagram fits a path
  MTU, computed from the transform (block size, IV and ICV lengths), not guessed.
* :func:`clamp_mss`: TCP SYNs crossing the tunnel (both directions) get their
  MSS option lowered so that full-sized segments fit the tunnel MTU (RFC 879 and
  RFC 6691: MSS = MTU - IP header - 20-octet TCP header), the TCP checksum fixed
  incrementally (RFC 1624 eqn. 3).
* :func:`too_big`: for an oversized packet that must not be fragmented (IPv4
  with DF, RFC 1191 §4; any IPv6 packet, RFC 8201 §4), the ICMP "fragmentation
  needed" / ICMPv6 "packet too big" (RFC 792, RFC 4443 §3.2) that tells its
  sender the tunnel MTU. :class:`IcmpLimiter` bounds how many are sent
  (RFC 1812 §4.3.2.8, RFC 4443 §2.4 (f)).

Pure functions over packet bytes: no I/O, time passed in.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from ikev1d.dataplane.esp import ESP_HEADER_LENGTH, EspAlgorithm
from ikev1d.dataplane.packet import inet_checksum

__all__ = [
    "IPV6_MIN_MTU",
    "IcmpLimiter",
    "clamp_mss",
    "esp_overhead",
    "too_big",
    "tunnel_mtu",
]

IPV6_MIN_MTU: Final = 1280
"""RFC 8200 §5: every IPv6 link carries 1280 octets; a smaller MTU is never reported."""
_IPV4_HEADER: Final = 20
_IPV6_HEADER: Final = 40
_UDP_HEADER: Final = 8
_TCP_HEADER: Final = 20
_IPPROTO_ICMP: Final = 1
_IPPROTO_TCP: Final = 6
_IPPROTO_ICMPV6: Final = 58
_ICMP_UNREACHABLE: Final = 3
_ICMP_FRAG_NEEDED: Final = 4
_ICMP_ERRORS: Final = frozenset({3, 4, 5, 11, 12})
"""RFC 1812 §4.3.2.7: no ICMP error is sent about an ICMP error message."""
_ICMPV6_PACKET_TOO_BIG: Final = 2
_ICMP_V4_QUOTE: Final = 576 - _IPV4_HEADER - 8
"""RFC 1812 §4.3.2.3: as much of the packet as fits a 576-octet datagram."""
_ICMP_V6_QUOTE: Final = IPV6_MIN_MTU - _IPV6_HEADER - 8
"""RFC 4443 §2.4 (c): as much of the packet as fits the IPv6 minimum MTU."""
_TOS_INTERNETWORK_CONTROL: Final = 0xC0
_TTL: Final = 64
_TCP_OPT_END: Final = 0
_TCP_OPT_NOP: Final = 1
_TCP_OPT_MSS: Final = 2
_TCP_SYN: Final = 0x02


def esp_overhead(alg: EspAlgorithm, *, encap: bool, outer_ipv6: bool) -> int:
    """Octets a tunnel-mode ESP datagram adds to an inner packet, before padding."""
    return ((_IPV6_HEADER if outer_ipv6 else _IPV4_HEADER) + (_UDP_HEADER if encap else 0)
            + ESP_HEADER_LENGTH + alg.iv_length + 2 + alg.icv_length)


def tunnel_mtu(path_mtu: int, alg: EspAlgorithm, *, encap: bool, outer_ipv6: bool) -> int:
    """The largest inner packet whose ESP datagram is at most ``path_mtu`` octets.

    RFC 4303 §2.4: payload + pad length + next header are padded to a multiple of
    the block size (4 for AES-GCM), so the room left after the fixed parts is
    rounded down to whole blocks, less the two trailer octets.
    """
    room = path_mtu - esp_overhead(alg, encap=encap, outer_ipv6=outer_ipv6) + 2
    block = alg.block_size
    return max(0, room // block * block - 2)


def _csum_fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _swap16(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)


def _checksum_update(checksum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for one changed 16-bit word."""
    return ~_csum_fold((~checksum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def _tcp_offset(packet: bytes) -> tuple[int, int] | None:
    """(offset of the TCP header, MSS limit's IP+TCP header size) if ``packet`` starts a
    TCP segment directly after its IP header; None otherwise."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < _IPV4_HEADER or packet[9] != _IPPROTO_TCP:
            return None
        if (packet[6] & 0x1F) or packet[7]:  # not the first fragment: no TCP header
            return None
        return (packet[0] & 0x0F) * 4, _IPV4_HEADER + _TCP_HEADER
    if version == 6:
        # Extension headers before TCP are left alone: SYNs carry none in practice.
        if len(packet) < _IPV6_HEADER or packet[6] != _IPPROTO_TCP:
            return None
        return _IPV6_HEADER, _IPV6_HEADER + _TCP_HEADER
    return None


def clamp_mss(packet: bytes, mtu: int) -> bytes | None:
    """``packet`` with its TCP MSS option lowered to fit ``mtu``; None when unchanged.

    Only SYN segments (SYN and SYN-ACK) carry the MSS option (RFC 9293 §3.7.1).
    """
    where = _tcp_offset(packet)
    if where is None:
        return None
    tcp, headers = where
    end = len(packet)
    if tcp + _TCP_HEADER > end or not packet[tcp + 13] & _TCP_SYN:
        return None
    options_end = tcp + (packet[tcp + 12] >> 4) * 4
    if options_end > end or options_end < tcp + _TCP_HEADER:
        return None
    limit = mtu - headers
    i = tcp + _TCP_HEADER
    while i < options_end:
        kind = packet[i]
        if kind == _TCP_OPT_END:
            return None
        if kind == _TCP_OPT_NOP:
            i += 1
            continue
        if i + 1 >= options_end:
            return None
        length = packet[i + 1]
        if length < 2 or i + length > options_end:
            return None
        if kind == _TCP_OPT_MSS and length == 4:
            mss = int.from_bytes(packet[i + 2:i + 4], "big")
            if mss <= limit or limit <= 0:
                return None
            out = bytearray(packet)
            out[i + 2:i + 4] = limit.to_bytes(2, "big")
            checksum = int.from_bytes(packet[tcp + 16:tcp + 18], "big")
            if (i + 2 - tcp) % 2:
                # The option straddles two 16-bit words of the checksum: the sum is
                # byte-order independent (RFC 1071 §2(B)), so swap both values.
                checksum = _checksum_update(checksum, _swap16(mss), _swap16(limit))
            else:
                checksum = _checksum_update(checksum, mss, limit)
            out[tcp + 16:tcp + 18] = checksum.to_bytes(2, "big")
            return bytes(out)
        i += length
    return None


def _ipv4_header(src: bytes, dst: bytes, payload_length: int, protocol: int) -> bytes:
    header = bytearray(_IPV4_HEADER)
    header[0] = 0x45
    header[1] = _TOS_INTERNETWORK_CONTROL
    header[2:4] = (_IPV4_HEADER + payload_length).to_bytes(2, "big")
    header[8] = _TTL
    header[9] = protocol
    header[12:16] = src
    header[16:20] = dst
    header[10:12] = inet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header)


def _v4_answerable(packet: bytes) -> bool:
    """RFC 1812 §4.3.2.7: not about ICMP errors, non-first fragments, or odd sources."""
    ihl = (packet[0] & 0x0F) * 4
    if ihl < _IPV4_HEADER or len(packet) < ihl:
        return False
    if (packet[6] & 0x1F) or packet[7]:
        return False
    if packet[9] == _IPPROTO_ICMP and (len(packet) <= ihl or packet[ihl] in _ICMP_ERRORS):
        return False
    src = ipaddress.IPv4Address(packet[12:16])
    return not (src.is_unspecified or src.is_multicast or src == ipaddress.IPv4Address(
        "255.255.255.255") or src.is_loopback)


def _v6_answerable(packet: bytes) -> bool:
    """RFC 4443 §2.4 (e): not about ICMPv6 errors or from an unspecified/multicast source."""
    if packet[6] == _IPPROTO_ICMPV6 and (len(packet) <= _IPV6_HEADER
                                          or packet[_IPV6_HEADER] < 128):
        return False
    src = ipaddress.IPv6Address(packet[8:24])
    return not (src.is_unspecified or src.is_multicast or src.is_loopback)


def too_big(packet: bytes, mtu: int) -> bytes | None:
    """The ICMP error telling ``packet``'s sender to use at most ``mtu``; None if the
    packet may be fragmented instead (IPv4 without DF) or must not be answered.

    Its source is the packet's destination: the error enters the host through the
    TUN device, and an address routed into that device passes reverse-path filtering
    (the sender matches the error to its connection by the quoted headers,
    RFC 1191 §6.3, RFC 8201 §5.2, not by who sent it).
    """
    if len(packet) <= mtu or not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < _IPV4_HEADER or not packet[6] & 0x40 or not _v4_answerable(packet):
            return None
        icmp = bytearray(8)
        icmp[0] = _ICMP_UNREACHABLE
        icmp[1] = _ICMP_FRAG_NEEDED
        icmp[6:8] = min(mtu, 0xFFFF).to_bytes(2, "big")  # RFC 1191 §4: next-hop MTU
        icmp += packet[:_ICMP_V4_QUOTE]
        icmp[2:4] = inet_checksum(bytes(icmp)).to_bytes(2, "big")
        return _ipv4_header(packet[16:20], packet[12:16], len(icmp), _IPPROTO_ICMP) + icmp
    if version == 6:
        if len(packet) < _IPV6_HEADER or not _v6_answerable(packet):
            return None
        mtu = max(mtu, IPV6_MIN_MTU)  # RFC 8201 §4: below 1280 the tunnel must fragment
        if len(packet) <= mtu:
            return None
        src, dst = packet[24:40], packet[8:24]
        body = bytearray(8)
        body[0] = _ICMPV6_PACKET_TOO_BIG
        body[4:8] = mtu.to_bytes(4, "big")
        body += packet[:_ICMP_V6_QUOTE]
        # RFC 4443 §2.3: the checksum covers the RFC 8200 §8.1 pseudo-header too.
        pseudo = src + dst + len(body).to_bytes(4, "big") + bytes((0, 0, 0, _IPPROTO_ICMPV6))
        body[2:4] = inet_checksum(pseudo + bytes(body)).to_bytes(2, "big")
        header = (bytes((0x60, 0, 0, 0)) + len(body).to_bytes(2, "big")
                  + bytes((_IPPROTO_ICMPV6, _TTL)) + src + dst)
        return header + bytes(body)
    return None


class IcmpLimiter:
    """A token bucket: at most ``rate`` ICMP errors a second, bursts of ``burst``."""

    def __init__(self, rate: float = 100.0, burst: int = 50) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.suppressed += 1
        return False
