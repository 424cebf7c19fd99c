"""Socket buffers large enough for bursts of ESP.

Packets arrive while the event loop is busy sealing or negotiating; the default
buffers turn such bursts into losses (and TCP retransmissions inside the tunnel).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Final

SOCKET_BUFFER: Final = 4 * 1024 * 1024
# Linux <asm-generic/socket.h>; not exported by the socket module. The *FORCE
# variants (root) go past net.core.rmem_max/wmem_max, which cap the plain ones.
_SO_SNDBUFFORCE: Final = 32
_SO_RCVBUFFORCE: Final = 33


def enlarge_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Ask for ``size`` octets of receive and send buffer; fall back quietly."""
    for force, opt in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
