"""UDP sockets for IKE (port 500) and NAT-T (port 4500), shared with UDP-encapsulated ESP.

Sockets are non-blocking and read with ``recvmsg`` from ``loop.add_reader``
callbacks (not asyncio datagram endpoints) so that IP_PKTINFO tells us the
local address a packet was sent to even when bound to 0.0.0.0 / ::, and so that
replies can leave from that same address (``sendmsg`` with IP_PKTINFO).

On the NAT-T port (RFC 3948 section 2):

* a packet that starts with the 4-byte non-ESP marker (zero) is IKE; the
  marker is stripped before the engine sees it and added when sending;
* a single 0xFF byte is a NAT-keepalive and is dropped;
* anything else is ESP (its SPI is never zero) and goes to the data plane.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterable

from ikev1d.dataplane.linux.sockbuf import enlarge_buffers
from ikev1d.engine.api import Datagram, Endpoint
from ikev1d.errors import Ikev1dError
from ikev1d.wire.constants import NAT_KEEPALIVE, NON_ESP_MARKER

log = logging.getLogger("ikev1d.daemon")


# Linux values; Python 3.11's socket module lacks IP_PKTINFO.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO: int = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO: int = getattr(socket, "IPV6_PKTINFO", 50)

_MAX_DATAGRAM = 65535
_ANC_SPACE = socket.CMSG_SPACE(64)
_READS_PER_WAKEUP = 64

Receiver = Callable[[bytes, Endpoint, Endpoint], None]
"""``callback(data, local, remote)``."""


_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: enum flag arithmetic per packet is slow

class UdpError(Ikev1dError):
    """A socket could not be opened; the message names address and port."""


def normalize_address(address: str) -> str:
    """The canonical text of an IP address ("0:0::1" -> "::1")."""
    return ipaddress.ip_address(address).compressed


class UdpSocket:
    """One bound UDP socket that reports the local address of every packet."""

    def __init__(self, address: str, port: int) -> None:
        ip = ipaddress.ip_address(address)
        self.family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self.address = ip.compressed
        self.wildcard = ip.is_unspecified
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            enlarge_buffers(sock)  # the NAT-T socket carries ESP-in-UDP too
            sock.bind((self.address, port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.port: int = sock.getsockname()[1]

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def _local_address(self, ancdata: list[tuple[int, int, bytes]]) -> str:
        for level, kind, data in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
                # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
                return socket.inet_ntop(socket.AF_INET, data[8:12])
            if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 16:
                # struct in6_pktinfo { in6_addr addr; unsigned int ifindex; }
                return socket.inet_ntop(socket.AF_INET6, data[:16])
        return self.address

    def recv(self) -> tuple[bytes, Endpoint, Endpoint] | None:
        """One packet as (data, local, remote), or None when nothing is waiting."""
        try:
            data, ancdata, flags, addr = self.sock.recvmsg(_MAX_DATAGRAM, _ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        if flags & _MSG_TRUNC:
            log.debug("dropping truncated datagram from %s", addr[0])
            return b"", (self.address, self.port), (str(addr[0]), int(addr[1]))
        local = (self._local_address(ancdata), self.port)
        return data, local, (str(addr[0]), int(addr[1]))

    def send(self, data: bytes, local_address: str, remote: Endpoint) -> None:
        """Send to ``remote``; from ``local_address`` when bound to the wildcard."""
        if not self.wildcard or ipaddress.ip_address(local_address).is_unspecified:
            self.sock.sendto(data, remote)
            return
        if self.family == socket.AF_INET:
            # ipi_spec_dst selects the source address; ifindex 0 lets routing choose.
            info = struct.pack("@i4s4s", 0, socket.inet_aton(local_address), bytes(4))
            cmsg = (socket.IPPROTO_IP, IP_PKTINFO, info)
        else:
            info = struct.pack("@16sI", socket.inet_pton(socket.AF_INET6, local_address), 0)
            cmsg = (socket.IPPROTO_IPV6, IPV6_PKTINFO, info)
        self.sock.sendmsg([data], [cmsg], 0, remote)


class UdpTransport:
    """All IKE/NAT-T sockets of the daemon and the demultiplexing between IKE and ESP."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listen: Iterable[str],
        port: int,
        port_nat_t: int,
        on_ike: Receiver,
        on_esp: Receiver,
    ) -> None:
        self._loop = loop
        self._listen = tuple(listen)
        self.port = port
        self.port_nat_t = port_nat_t
        self._on_ike = on_ike
        self._on_esp = on_esp
        self.sockets: list[UdpSocket] = []
        self._socket_cache: dict[Endpoint, UdpSocket | None] = {}

    def open(self) -> None:
        """Bind every (address, port); on any failure close what was opened and raise UdpError."""
        try:
            for address in self._listen:
                for port in (self.port, self.port_nat_t):
                    try:
                        sock = UdpSocket(address, port)
                    except ValueError:
                        raise UdpError(f"listen address {address!r} is not an IP address") from None
                    except OSError as exc:
                        reason = exc.strerror or str(exc)
                        if exc.errno == errno.EADDRINUSE:
                            reason += " (is another IKE daemon running?)"
                        raise UdpError(f"cannot bind UDP {address} port {port}: {reason}") from None
                    self.sockets.append(sock)
                    self._socket_cache.clear()
                    self._loop.add_reader(sock.fileno(), self._readable, sock)
        except UdpError:
            self.close()
            raise
        for sock in self.sockets:
            log.info("listening on UDP %s port %d", sock.address, sock.port)

    def close(self) -> None:
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets.clear()
        self._socket_cache.clear()

    def _readable(self, sock: UdpSocket) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                packet = sock.recv()
            except OSError as exc:
                # e.g. ECONNREFUSED from an ICMP error; nothing to do but go on.
                log.debug("UDP receive error on port %d: %s", sock.port, exc)
                continue
            if packet is None:
                return
            data, local, remote = packet
            if data:
                self._demultiplex(sock, data, local, remote)

    def _demultiplex(self, sock: UdpSocket, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        if sock.port != self.port_nat_t:
            self._on_ike(data, local, remote)
        elif data.startswith(NON_ESP_MARKER):
            self._on_ike(data[len(NON_ESP_MARKER) :], local, remote)
        elif data == NAT_KEEPALIVE:
            log.debug("NAT-T keepalive from %s port %d", remote[0], remote[1])
        else:
            self._on_esp(data, local, remote)

    def _socket_for(self, local: Endpoint) -> UdpSocket | None:
        # Every datagram sent asks this; the answer only changes when sockets do.
        cache = self._socket_cache
        if local in cache:
            return cache[local]
        sock = self._find_socket(local)
        cache[local] = sock
        return sock

    def _find_socket(self, local: Endpoint) -> UdpSocket | None:
        address, port = local
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        wildcard: UdpSocket | None = None
        for sock in self.sockets:
            if sock.port != port:
                continue
            if sock.address == ip.compressed:
                return sock
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            if sock.wildcard and sock.family == family:
                wildcard = sock
        return wildcard

    def _send(self, data: bytes, local: Endpoint, remote: Endpoint) -> bool:
        sock = self._socket_for(local)
        if sock is None:
            log.warning(
                "no socket for local address %s port %d; dropping datagram to %s",
                local[0], local[1], remote[0],
            )
            return False
        try:
            sock.send(data, local[0], remote)
        except OSError as exc:
            # Lost like any UDP packet; IKE retransmits.
            log.warning("cannot send to %s port %d: %s", remote[0], remote[1], exc)
            return False
        return True

    def send_ike(self, datagram: Datagram) -> bool:
        """Send an ISAKMP message; from the NAT-T port it gets the non-ESP marker."""
        data = datagram.data
        if datagram.local[1] == self.port_nat_t:
            data = NON_ESP_MARKER + data
        return self._send(data, datagram.local, datagram.remote)

    def send_esp_udp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        """Send UDP-encapsulated ESP (RFC 3948): no marker, ESP starts with a non-zero SPI."""
        self._send(data, local, remote)
