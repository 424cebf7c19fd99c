"""UDP segmentation offload (GSO) and receive coalescing (GRO) for ESP-in-UDP.

With ``UDP_SEGMENT`` (Linux 4.18, udp(7)) one ``sendmsg`` carries up to
:data:`MAX_SEGMENTS` datagrams to one destination: the buffer is cut into
datagrams of the given size (the last may be shorter) by the kernel or the NIC.
With ``UDP_GRO`` (Linux 5.0) on a socket, equal-sized datagrams of one flow can
arrive as one buffer, the segment size in a control message; a GSO batch sent on
this host (or through a veth) is delivered whole. Either way one system call
and one pass through the stack stand for many packets.

Raw ESP (IP protocol 50) has no such offload; UDP-encapsulated ESP (RFC 3948)
is exactly the equal-sized datagrams to one peer that GSO is for.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import Final

__all__ = [
    "MAX_BYTES",
    "MAX_SEGMENTS",
    "SOL_UDP",
    "UDP_GRO",
    "UDP_SEGMENT",
    "enable_gro",
    "gro_segment_size",
    "segment_cmsg",
    "send_segmented",
    "split",
]

SOL_UDP: Final = 17  # linux/udp.h: the UDP socket option level (IPPROTO_UDP)
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
MAX_SEGMENTS: Final = 64
"""UDP_MAX_SEGMENTS of Linux before 6.9 (128 since); the kernel refuses more."""
MAX_BYTES: Final = 65000
"""The datagrams of one batch together: an skb carries at most 64 KiB with its headers."""
_U16: Final = struct.Struct("=H")
_INT: Final = struct.Struct("=i")


def enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced receives; False if the kernel does not offer them."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def segment_cmsg(size: int) -> tuple[int, int, bytes]:
    """The control message that makes ``sendmsg`` cut its data into ``size``-octet datagrams."""
    return (SOL_UDP, UDP_SEGMENT, _U16.pack(size))


_NO_GSO: Final = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
"""What ``sendmsg`` with ``UDP_SEGMENT`` fails with where the kernel, the device or
the route cannot segment (udp(7)); any other error is the datagrams' own."""


def send_segmented(sock: socket.socket, datagrams: Sequence[bytes],
                   cmsgs: list[tuple[int, int, bytes]], remote: tuple[str, int],
                   ) -> OSError | None:
    """Send equal-sized ``datagrams`` (the last may be shorter) in one ``sendmsg``
    with ``UDP_SEGMENT`` and the ancillary data ``cmsgs``: None when sent, the error
    when segmentation offload is refused (the caller sends them one by one, and from
    then on); any other error is raised."""
    try:
        sock.sendmsg(datagrams, [segment_cmsg(len(datagrams[0])), *cmsgs], 0, remote)
    except OSError as exc:
        if exc.errno not in _NO_GSO:
            raise
        return exc
    return None


def gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The segment size of a coalesced receive, 0 if the buffer is one datagram."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= _INT.size:
            return int(_INT.unpack_from(data)[0])
    return 0


def split(data: bytes, size: int) -> Iterator[bytes]:
    """The datagrams of a coalesced buffer: ``size`` octets each, the last possibly fewer."""
    if size <= 0 or size >= len(data):
        yield data
        return
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start:start + size])
