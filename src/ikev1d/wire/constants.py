"""Numbers IKE and ESP share with the layers around them: ports, markers, IP protocols.

Defined here, in the bottom layer, so that the codec, the data plane, the
daemon and the lab all use one copy.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "IKE_PORT",
    "IPPROTO_ESP",
    "IPPROTO_IPIP",
    "IPPROTO_IPV6",
    "IPPROTO_NONE",
    "IPPROTO_UDP",
    "NAT_KEEPALIVE",
    "NAT_T_PORT",
    "NON_ESP_MARKER",
]

IKE_PORT: Final = 500
"""UDP port of ISAKMP (RFC 2408 §2.5.2)."""
NAT_T_PORT: Final = 4500
"""UDP port IKE moves to once a NAT is detected, shared with ESP in UDP (RFC 3947 §4)."""

NON_ESP_MARKER: Final = b"\x00\x00\x00\x00"
"""RFC 3948 §2.2: four zero octets in front of IKE messages on port 4500 (SPI 0 is never ESP)."""
NAT_KEEPALIVE: Final = b"\xff"
"""RFC 3948 §2.3: the one-octet NAT-keepalive packet."""

# IANA "Assigned Internet Protocol Numbers": IP protocol / ESP next header values.
IPPROTO_IPIP: Final = 4
"""IPv4 in IP: the ESP next header of a tunnelled IPv4 packet (RFC 4303 §2.6)."""
IPPROTO_UDP: Final = 17
IPPROTO_IPV6: Final = 41
"""IPv6 in IP: the ESP next header of a tunnelled IPv6 packet."""
IPPROTO_ESP: Final = 50
IPPROTO_NONE: Final = 59
"""Next header of a dummy packet (RFC 4303 §2.6): the receiver discards it."""
