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

Under a flood of Main Mode requests the daemon falls behind; a full socket
queue would then drop the real peer's message 3 with the flood, and a message 3
queued behind thousands of requests arrives after its half-open entry is gone.
So each wakeup reads the IKE socket until it is empty (at most :data:`DRAIN`
datagrams; the NAT-T socket, mostly ESP, :data:`BATCH`) and serves what it read
in two classes: first everything that belongs to an exchange already under
way (a non-zero responder cookie, RFC 2408 section 3.1; ESP), then new requests
(a zero responder cookie: Main Mode message 1 or its retransmission), of which,
when a batch's worth was waiting, only as many are processed as a
:class:`RequestBudget` of processing time allows; the rest are dropped,
counted and logged at a limited rate. Reading to the end matters: read a batch
at a time, a daemon that gets little CPU on a loaded machine let seconds of
datagrams pile up in the kernel's queue (up to the whole receive buffer), and
a peer's message 3 sat behind them until its half-open entry had been evicted
by the requests processed meanwhile; every retransmission of it then met
"unknown ISAKMP SA". Drained each time, a message waits at most one wakeup
(the reading plus the budget's burst). Sorting costs a look at eight bytes of
each datagram. Among new requests, a retransmission of one dropped before
(its initiator cookie remembered in :class:`RecentCookies`) goes first, and
may overdraw the budget a little: a real initiator retransmits the same
message 1, a blind flood sends fresh cookies, so a real peer that lost the
draw once is served at its next try.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence

from ikev1d.dataplane.linux import gso
from ikev1d.dataplane.linux.sockbuf import enlarge_buffers
from ikev1d.engine.api import Datagram, Endpoint
from ikev1d.engine.ratelimit import LogLimiter
from ikev1d.errors import Ikev1dError
from ikev1d.wire.constants import NAT_KEEPALIVE, NON_ESP_MARKER

log = logging.getLogger("ikev1d.daemon")


# Linux values; Python 3.11's socket module lacks IP_PKTINFO.
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO: int = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO: int = getattr(socket, "IPV6_PKTINFO", 50)

_MAX_DATAGRAM = 65535
_ANC_SPACE = socket.CMSG_SPACE(64)
BATCH = 256
"""Datagrams read per wakeup of the NAT-T socket (ESP, mostly) before any is served;
on the IKE port, a wakeup that finds this many waiting is behind."""
KEEPING_UP_S = 0.25
"""The longest a wakeup that was not behind spends on new requests (a few hundred
milliseconds of processing at most); the requests left then wait for the next
wakeup, after what arrived meanwhile for exchanges under way. Wall time: on a
loaded machine a wakeup that serves a few requests can pass it because the
daemon was not running, and dropping them there would cost a real peer a
retransmission (seconds) although nothing floods."""
DRAIN = 8192
DRAIN_BYTES = 8 * 1024 * 1024
"""The IKE port's socket is read until empty, but at most this many datagrams and
bytes per wakeup (about what its receive buffer holds)."""

#: A zero responder cookie (RFC 2408 section 3.1, octets 8-15 of the ISAKMP
#: header): the initiator has not heard from us yet, so the datagram starts a
#: new exchange (Main Mode message 1) rather than continuing one.
_ZERO_COOKIE = bytes(8)
_COOKIES_END = 16

Receiver = Callable[[bytes, Endpoint, Endpoint], None]
"""``callback(data, local, remote)``."""
ManyReceiver = Callable[[list[bytes], Endpoint, Endpoint], None]
"""``callback(datagrams, local, remote)``: datagrams in the order they arrived."""

_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: enum flag arithmetic per packet is slow


class UdpError(Ikev1dError):
    """A socket could not be opened; the message names address and port."""


class RecentCookies:
    """The initiator cookies of recently dropped requests: two generations of at
    most ``size`` each, so memory is bounded (about 70 bytes a cookie) and a
    cookie is remembered for at least ``size`` further drops (8 s at 2,000
    drops per second with the default, longer than the first retransmission
    timeouts of common initiators: 4 s, then 7.2 s for strongSwan)."""

    def __init__(self, size: int = 16384) -> None:
        self.size = size
        self._new: set[bytes] = set()
        self._old: set[bytes] = set()

    def add(self, cookie: bytes) -> None:
        self._new.add(cookie)
        if len(self._new) >= self.size:
            self._old, self._new = self._new, set()

    def __contains__(self, cookie: bytes) -> bool:
        return cookie in self._new or cookie in self._old

    def __bool__(self) -> bool:
        return bool(self._new or self._old)


class RequestBudget:
    """How much processing time new Main Mode requests may take while the
    daemon is behind: a token bucket counted in seconds of processing.

    It refills at ``share`` seconds per second up to ``burst_s``; a request
    costs the time it took. Wall time, not CPU time: on a busy machine the
    daemon is preempted, and what a message of an exchange under way waits
    for is wall time. With the IKE socket drained at every wakeup, the bucket
    bounds that wait to about ``burst_s`` plus the reading. Only applied to a
    wakeup that found the daemon behind (a batch's worth of datagrams waiting);
    a daemon that keeps up serves every request. Flooded, requests get
    ``share`` of the daemon's time and the rest stays for messages of
    exchanges under way, timers and the control socket. A share, not a fixed
    count, so that a flood cannot starve new requests either: a real peer's
    message 1 is served with the probability share / (cost x flood rate), and
    its retransmission ahead of the flood.

    A retransmitted request whose first copy was dropped may overdraw the
    bucket by one ``burst_s`` (:meth:`available` with ``overdraft``): at the
    start of a batch the bucket is often just spent, and a real peer's
    retransmission must not lose that draw again and again. The overdraft is
    paid back from the next refills, so the share holds over time.
    """

    def __init__(self, share: float = 0.75, burst_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.burst_s = burst_s
        self.clock = clock
        self._tokens = burst_s
        self._updated = clock()

    def available(self, overdraft: float = 0.0) -> bool:
        """Whether one more request may be processed now (with the bucket allowed
        to go ``overdraft`` seconds below empty)."""
        now = self.clock()
        elapsed = max(now - self._updated, 0.0)
        self._updated = now
        self._tokens = min(self.burst_s, self._tokens + elapsed * self.share)
        return self._tokens > -overdraft

    def charge(self, seconds: float) -> None:
        """What processing one request took."""
        self._tokens -= seconds


def normalize_address(address: str) -> str:
    """The canonical text of an IP address ("0:0::1" -> "::1")."""
    return ipaddress.ip_address(address).compressed


class UdpSocket:
    """One bound UDP socket that reports the local address of every packet."""

    def __init__(self, address: str, port: int, *, gro: bool = False) -> None:
        """``gro``: take coalesced ESP-in-UDP receives (:mod:`ikev1d.dataplane.linux.gso`)."""
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
        self.gro = gro and gso.enable_gro(sock)
        self.gso = True
        """Send batches with UDP_SEGMENT; cleared when the kernel refuses it once."""
        self._rest: list[bytes] = []
        self._rest_at = 0
        self._rest_ends: tuple[Endpoint, Endpoint] = (("", 0), ("", 0))
        self._sources: dict[str, list[tuple[int, int, bytes]]] = {}
        """The rest of a coalesced receive, handed out by the next :meth:`recv` calls."""

    @property
    def pending(self) -> bool:
        """Whether datagrams of a coalesced receive are left to hand out."""
        return self._rest_at < len(self._rest)

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
        got = self.recv_many(1)
        if got is None:
            return None
        return got[0][0], got[1], got[2]

    def recv_many(self, limit: int) -> tuple[list[bytes], Endpoint, Endpoint] | None:
        """At most ``limit`` (at least 1) datagrams of one receive, as (datagrams, local,
        remote), or None when nothing is waiting: a coalesced receive (UDP_GRO) is cut
        into its datagrams, and what is over ``limit`` is handed out by the next calls.
        A truncated datagram comes as an empty one."""
        rest = self._rest
        if rest:
            at = self._rest_at
            out = rest[at:at + limit]
            at += len(out)
            if at >= len(rest):
                self._rest, self._rest_at = [], 0
            else:
                self._rest_at = at
            return out, self._rest_ends[0], self._rest_ends[1]
        try:
            data, ancdata, flags, addr = self.sock.recvmsg(_MAX_DATAGRAM, _ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return None
        if flags & _MSG_TRUNC:
            log.debug("dropping truncated datagram from %s", addr[0])
            return [b""], (self.address, self.port), (str(addr[0]), int(addr[1]))
        local = (self._local_address(ancdata), self.port)
        remote = (str(addr[0]), int(addr[1]))
        if self.gro:
            size = gso.gro_segment_size(ancdata)
            if 0 < size < len(data):
                # The datagrams of a coalesced receive (udp(7) UDP_GRO): ``size``
                # octets each, the last possibly fewer; one slice (copy) each.
                datagrams = [data[start:start + size] for start in range(0, len(data), size)]
                if len(datagrams) > limit:
                    self._rest, self._rest_at = datagrams, limit
                    self._rest_ends = (local, remote)
                    return datagrams[:limit], local, remote
                return datagrams, local, remote
        return [data], local, remote

    def _source(self, local_address: str) -> list[tuple[int, int, bytes]]:
        """The control message choosing the source address when bound to the wildcard."""
        # Every datagram sent asks; our own addresses are few, so each is worked out once.
        cmsgs = self._sources.get(local_address)
        if cmsgs is None:
            cmsgs = self._source_cmsgs(local_address)
            if len(self._sources) >= 256:
                self._sources.clear()
            self._sources[local_address] = cmsgs
        return cmsgs

    def _source_cmsgs(self, local_address: str) -> list[tuple[int, int, bytes]]:
        if not self.wildcard or ipaddress.ip_address(local_address).is_unspecified:
            return []
        if self.family == socket.AF_INET:
            # ipi_spec_dst selects the source address; ifindex 0 lets routing choose.
            info = struct.pack("@i4s4s", 0, socket.inet_aton(local_address), bytes(4))
            return [(socket.IPPROTO_IP, IP_PKTINFO, info)]
        info = struct.pack("@16sI", socket.inet_pton(socket.AF_INET6, local_address), 0)
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, info)]

    def send(self, data: bytes, local_address: str, remote: Endpoint) -> None:
        """Send to ``remote``; from ``local_address`` when bound to the wildcard."""
        cmsgs = self._source(local_address)
        if not cmsgs:
            self.sock.sendto(data, remote)
            return
        self.sock.sendmsg([data], cmsgs, 0, remote)

    def send_many(self, datagrams: Sequence[bytes], local_address: str, remote: Endpoint) -> None:
        """Send datagrams of one size (the last may be shorter) in one system call (GSO).

        At most :data:`~ikev1d.dataplane.linux.gso.MAX_SEGMENTS` of them, together at most
        :data:`~ikev1d.dataplane.linux.gso.MAX_BYTES`. Where the kernel or the route
        refuses segmentation offload, they go one by one from then on.
        """
        if len(datagrams) > 1 and self.gso:
            refused = gso.send_segmented(self.sock, datagrams, self._source(local_address),
                                         remote)
            if refused is None:
                return
            # The same errors also mean "not to that destination" (EINVAL for a
            # blackhole route, say): only if one datagram alone goes out was it the
            # offload that was refused. Otherwise this raises and the offload stays.
            self.send(datagrams[0], local_address, remote)
            self.gso = False
            log.info("UDP port %d: no segmentation offload (%s); sending ESP-in-UDP "
                     "datagrams one by one", self.port, refused.strerror or refused)
            datagrams = datagrams[1:]
        for data in datagrams:
            self.send(data, local_address, remote)


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
        on_esp_many: ManyReceiver | None = None,
    ) -> None:
        """``on_esp_many``, when given, takes the ESP datagrams of one wakeup that came
        one after the other from one peer to one address in one call (``on_esp`` each
        one otherwise)."""
        self._loop = loop
        self._listen = tuple(listen)
        self.port = port
        self.port_nat_t = port_nat_t
        self._on_ike = on_ike
        self._on_esp = on_esp
        self._on_esp_many = on_esp_many
        self.sockets: list[UdpSocket] = []
        self._socket_cache: dict[Endpoint, UdpSocket | None] = {}
        self.budget = RequestBudget()
        self.requests_dropped = 0
        """New Main Mode requests dropped because the request budget was spent."""
        self._log_limiter = LogLimiter()
        self._dropped_cookies = RecentCookies()
        self._deferred: dict[UdpSocket, list[tuple[bytes, Endpoint, Endpoint]]] = {}
        """Requests a wakeup that kept up had no time left for, per socket: served
        at its next wakeup, before the requests read then (fewer than a batch, or
        that wakeup counts as behind and the budget decides)."""

    def open(self) -> None:
        """Bind every (address, port); on any failure close what was opened and raise UdpError."""
        try:
            for address in self._listen:
                for port in (self.port, self.port_nat_t):
                    try:
                        sock = UdpSocket(address, port, gro=port == self.port_nat_t)
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
        self._deferred.clear()

    def _readable(self, sock: UdpSocket) -> None:
        # What is served at once, in arrival order: runs of ESP datagrams from one peer
        # to one address (esp True), and IKE messages of exchanges under way (one each).
        current: list[tuple[list[bytes], Endpoint, Endpoint, bool]] = []
        requests: list[tuple[bytes, Endpoint, Endpoint]] = self._deferred.pop(sock, [])
        nat_t = sock.port == self.port_nat_t
        limit = BATCH if nat_t else DRAIN
        more = True
        read = size = 0
        for _ in range(limit):
            if size >= DRAIN_BYTES or read >= limit:
                break
            try:
                got = sock.recv_many(limit - read)
            except OSError as exc:
                # e.g. ECONNREFUSED from an ICMP error; nothing to do but go on.
                log.debug("UDP receive error on port %d: %s", sock.port, exc)
                continue
            if got is None:
                more = False
                break
            datagrams, local, remote = got
            read += len(datagrams)
            run: list[bytes] | None = None
            for data in datagrams:
                size += len(data)
                if not data:
                    continue
                if nat_t:
                    if not data.startswith(NON_ESP_MARKER):
                        if data == NAT_KEEPALIVE:
                            log.debug("NAT-T keepalive from %s port %d", remote[0], remote[1])
                            continue
                        if run is None:
                            last = current[-1] if current else None
                            if (last is not None and last[3] and last[2] == remote
                                    and last[1] == local):
                                run = last[0]  # the same peer's run goes on
                            else:
                                run = []
                                current.append((run, local, remote, True))
                        run.append(data)
                        continue
                    data = data[len(NON_ESP_MARKER):]
                if data[8:_COOKIES_END] == _ZERO_COOKIE:
                    requests.append((data, local, remote))
                else:  # a later message, or too short to be anything (the engine drops it)
                    current.append(([data], local, remote, False))
                    run = None
        on_esp_many = self._on_esp_many
        for datagrams, local, remote, esp in current:
            if not esp:
                self._on_ike(datagrams[0], local, remote)
            elif on_esp_many is not None:
                on_esp_many(datagrams, local, remote)
            else:
                for data in datagrams:
                    self._on_esp(data, local, remote)
        self._serve_requests(sock, requests, more or read >= BATCH or len(requests) >= BATCH)
        if more or sock.pending or sock in self._deferred:
            # Level-triggered readiness would come back too, but only after every other
            # ready callback; a coalesced receive left in ``pending`` raises none at all.
            self._loop.call_soon(self._readable, sock)

    def _serve_requests(self, sock: UdpSocket, requests: list[tuple[bytes, Endpoint, Endpoint]],
                        behind: bool) -> None:
        if not behind:
            # Every request, but for at most KEEPING_UP_S: a wakeup that found
            # less than a batch waiting can still hold a couple of hundred
            # requests, and whatever arrives meanwhile waits in the kernel. The
            # rest waits for the next wakeup, where it counts towards a batch.
            clock = self.budget.clock
            deadline = clock() + KEEPING_UP_S
            for n, (data, local, remote) in enumerate(requests):
                if clock() > deadline:
                    self._deferred[sock] = requests[n:]
                    return
                self._on_ike(data, local, remote)
            return
        dropped_before = self._dropped_cookies
        retransmitted: list[tuple[bytes, Endpoint, Endpoint]] = []
        if dropped_before:  # nothing to look up while nothing was dropped
            retransmitted = [r for r in requests if r[0][:8] in dropped_before]
            if retransmitted:
                requests = [r for r in requests if r[0][:8] not in dropped_before]
        budget = self.budget
        clock = budget.clock
        rest: list[tuple[bytes, Endpoint, Endpoint]] = []
        for n, (data, local, remote) in enumerate(retransmitted):
            if not budget.available(budget.burst_s):
                rest = retransmitted[n:]
                break
            began = clock()
            self._on_ike(data, local, remote)
            budget.charge(clock() - began)
        if not rest:
            for n, (data, local, remote) in enumerate(requests):
                if not budget.available():
                    rest = requests[n:]
                    break
                began = clock()
                self._on_ike(data, local, remote)
                budget.charge(clock() - began)
        else:
            rest += requests
        if rest:
            self._drop(rest)

    def _drop(self, rest: list[tuple[bytes, Endpoint, Endpoint]]) -> None:
        """Requests left unprocessed: counted, remembered for their retransmissions, logged."""
        for request in rest:
            self._dropped_cookies.add(request[0][:8])
        self.requests_dropped += len(rest)
        self._log_limiter.log(
            log, logging.WARNING, "requests over budget", time.monotonic(),
            "busy: dropped %d new Main Mode requests (the last from %s) to serve "
            "exchanges under way first", len(rest), rest[-1][2][0])

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
        """An ISAKMP message: a refusal is logged (at a limited rate: a route that goes
        away, or requests from spoofed unreachable sources, refuse one send after
        another) and the message is lost like any UDP packet; IKE retransmits."""
        try:
            self._send_or_raise(data, local, remote)
        except OSError as exc:
            self._log_limiter.log(
                log, logging.WARNING, "send refused", time.monotonic(),
                "cannot send to %s port %d: %s", remote[0], remote[1], exc.strerror or exc)
            return False
        return True

    def _send_or_raise(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        sock = self._socket_for(local)
        if sock is None:
            raise OSError(errno.EADDRNOTAVAIL,
                          f"no socket for local address {local[0]} port {local[1]}")
        sock.send(data, local[0], remote)

    def send_ike(self, datagram: Datagram) -> bool:
        """Send an ISAKMP message; from the NAT-T port it gets the non-ESP marker."""
        data = datagram.data
        if datagram.local[1] == self.port_nat_t:
            data = NON_ESP_MARKER + data
        return self._send(data, datagram.local, datagram.remote)

    def send_esp_udp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        """Send UDP-encapsulated ESP (RFC 3948): no marker, ESP starts with a non-zero SPI.

        OSError when the kernel refuses it: the data plane counts the packet as
        dropped (``send_error``) and logs at its own limited rate."""
        self._send_or_raise(data, local, remote)

    def send_esp_udp_many(self, datagrams: Sequence[bytes], local: Endpoint,
                          remote: Endpoint) -> None:
        """:meth:`send_esp_udp` for a batch of equal-sized datagrams (the last may be
        shorter) to one peer: one system call with UDP GSO where the kernel offers it.
        OSError as there, for the whole batch."""
        sock = self._socket_for(local)
        if sock is None:
            raise OSError(errno.EADDRNOTAVAIL,
                          f"no socket for local address {local[0]} port {local[1]}")
        sock.send_many(datagrams, local[0], remote)
