"""The path MTU towards a peer, as the kernel's routing table and PMTU cache know it.

A UDP socket connected to the peer (no datagram is sent) makes the kernel look the
route up; ``IP_MTU`` / ``IPV6_MTU`` then report that route's MTU, including what
path MTU discovery has learnt (ip(7), ipv6(7)).
"""

from __future__ import annotations

import socket
from typing import Final

__all__ = ["FALLBACK_PATH_MTU", "path_mtu"]

FALLBACK_PATH_MTU: Final = 1500
"""Ethernet's MTU, assumed when the kernel cannot tell (no route yet)."""
_IP_MTU: Final = 14  # linux/in.h; not exported by the socket module of Python 3.11
_IPV6_MTU: Final = 24  # linux/in6.h
_DISCARD_PORT: Final = 9


def path_mtu(remote: str) -> int:
    """The MTU of the route to ``remote``; :data:`FALLBACK_PATH_MTU` if it has none."""
    v6 = ":" in remote
    try:
        with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((remote, _DISCARD_PORT))
            if v6:
                return int(s.getsockopt(socket.IPPROTO_IPV6, _IPV6_MTU))
            return int(s.getsockopt(socket.IPPROTO_IP, _IP_MTU))
    except OSError:
        return FALLBACK_PATH_MTU
