"""Many raw ESP packets per system call: ``sendmmsg(2)`` and ``recvmmsg(2)`` via ctypes.

Raw ESP (IP protocol 50) has no segmentation offload (``UDP_SEGMENT`` and
``UDP_GRO`` are UDP's), so without batching every packet is a system call of
its own each way, plus the interpreter's work around it (argument parsing, the
address, a 64 KiB receive buffer allocated and shrunk per packet). The Python
3.11 ``socket`` module has neither call, so this module binds the two from the
C library: one call carries up to :data:`SLOTS` packets.

The structures (``struct mmsghdr`` of sendmmsg(2), the ``msghdr`` and
``iovec`` inside it) are preallocated once per socket and reused: a packet to
send is copied into its slot's buffer (one ``memcpy`` of the ESP packet, cheaper
in Python than pinning the ``bytes`` object's own memory), a received one is
copied out of its slot into a ``bytes`` object of exactly the length the kernel
reported. Every slot buffer is one page-aligned anonymous mapping, so only the
pages the kernel or a copy actually writes are ever resident.

Nothing is read past what the kernel returned: the count of messages the call
filled, each message's ``msg_len``, and its ``msg_flags`` (``MSG_TRUNC``: the
datagram was larger than its slot; the caller drops it).

Where the C library lacks the calls, or the kernel refuses them (``ENOSYS``; or
``EINVAL`` where the plain call then succeeds, so the batch itself was refused),
:attr:`MmsgSocket.batching` turns False for good and the caller uses plain
``sendmsg`` / ``recvfrom`` instead.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Final

__all__ = [
    "MSG_TRUNC",
    "SLOTS",
    "MmsgSocket",
    "libc_mmsg",
]

SLOTS: Final = 64
"""Messages per call: one receive batch of the data plane is 256 packets, a quarter
of it keeps the copies in the cache and the buffers small."""
SLOT_SIZE: Final = 65536
"""An IPv4 datagram (header included) is at most 65,535 octets: a reassembled one
always fits, so ``MSG_TRUNC`` means a smaller slot size was chosen (tests)."""
MSG_TRUNC: Final = 0x20  # linux/socket.h
MSG_DONTWAIT: Final = 0x40
_IPPROTO_IP: Final = 0
_IP_PKTINFO: Final = 8
_CMSG_SPACE_PKTINFO: Final = 32
"""CMSG_SPACE(sizeof(struct in_pktinfo)): a 16-octet cmsghdr and 12 octets, aligned to 8."""
_NOT_BATCHED: Final = frozenset({errno.ENOSYS, errno.EINVAL})


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


_MMSG_SIZE: Final = ctypes.sizeof(_Mmsghdr)
_FLAGS_AT: Final = _Msghdr.msg_flags.offset
_LEN_AT: Final = _Mmsghdr.msg_len.offset
_IOV_LEN_AT: Final = _Iovec.iov_len.offset
_FLAGS_LEN: Final = struct.Struct(f"=i{_LEN_AT - _FLAGS_AT - 4}xI")
"""``msg_flags`` and ``msg_len`` of one mmsghdr, read together."""
_SIZE_T: Final = struct.Struct("@N")
_SOCKADDR_SIZE: Final = 28
"""sizeof(struct sockaddr_in6), which holds a sockaddr_in too."""

MmsgCall = Callable[[int, int, int, int, int], int]
"""``(fd, struct mmsghdr *, vlen, flags, struct timespec * or 0 for send) -> count or -1``."""


@functools.cache
def libc_mmsg() -> tuple[MmsgCall | None, MmsgCall | None]:
    """(sendmmsg, recvmmsg) of the C library, None for one it does not have.

    Looked up once, in the symbols the interpreter is linked with (``dlopen(NULL)``):
    that is the C library the process runs on, found without
    ``ctypes.util.find_library``, which runs ``ldconfig`` in a subprocess."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None, None
    calls: list[MmsgCall | None] = []
    for symbol, argtypes in (
        ("sendmmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)),
        ("recvmmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                      ctypes.c_void_p)),
    ):
        function = getattr(libc, symbol, None)
        if function is None:
            calls.append(None)
            continue
        function.argtypes = argtypes
        function.restype = ctypes.c_int
        calls.append(_adapt(function, len(argtypes)))
    return calls[0], calls[1]


def _adapt(function: Callable[..., int], arity: int) -> MmsgCall:
    """Both calls under one signature (sendmmsg takes no timeout)."""
    if arity == 5:
        return function
    return lambda fd, vec, vlen, flags, _timeout: function(fd, vec, vlen, flags)


def _sockaddr(family: int, address: str) -> bytes:
    """``struct sockaddr_in`` / ``sockaddr_in6`` for ``address``, port 0 (raw(7))."""
    if family == socket.AF_INET:
        return struct.pack("=H2x4s8x", socket.AF_INET, socket.inet_aton(address))
    return struct.pack("=H2xI16sI", socket.AF_INET6, 0,
                       socket.inet_pton(socket.AF_INET6, address), 0)


def _pktinfo(address: str) -> bytes:
    """An ``IP_PKTINFO`` control message choosing ``address`` as the source (ip(7))."""
    info = struct.pack("=i4s4s", 0, socket.inet_aton(address), bytes(4))
    header = struct.pack("@NiI", 16 + len(info), _IPPROTO_IP, _IP_PKTINFO)
    return (header + info).ljust(_CMSG_SPACE_PKTINFO, b"\0")


class MmsgSocket:
    """Preallocated ``sendmmsg`` / ``recvmmsg`` vectors for one raw socket.

    :meth:`send_many` and :meth:`recv_many` return what happened, never raise for
    the packets' own errors; ``batching`` is False once the calls proved missing
    or refused (then nothing here is called again).
    """

    def __init__(self, sock: socket.socket, *, slots: int = SLOTS,
                 slot_size: int = SLOT_SIZE, ip_header: bool | None = None,
                 calls: tuple[MmsgCall | None, MmsgCall | None] | None = None) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self.family = sock.family
        self.ip_header = (sock.family == socket.AF_INET and sock.type == socket.SOCK_RAW
                          if ip_header is None else ip_header)
        """Whether received datagrams start with an IPv4 header to cut off (raw(7))."""
        self.slots = slots
        self.slot_size = slot_size
        send, recv = libc_mmsg() if calls is None else calls
        self._sendmmsg = send
        self._recvmmsg = recv
        self.send_batching = send is not None
        self.recv_batching = recv is not None
        # Per slot: a packet buffer (page aligned, one mapping per direction), an
        # iovec, and for sending a sockaddr and a control buffer. Two vectors of
        # mmsghdr: the receive one names no address and carries no control data.
        self._maps = (mmap.mmap(-1, slots * slot_size), mmap.mmap(-1, slots * slot_size))
        self._data_view = memoryview(self._maps[0])
        self._recv_view = memoryview(self._maps[1])
        base = ctypes.addressof(ctypes.c_char.from_buffer(self._maps[0]))
        recv_base = ctypes.addressof(ctypes.c_char.from_buffer(self._maps[1]))
        self._iov = (_Iovec * slots)()
        self._names = ctypes.create_string_buffer(slots * _SOCKADDR_SIZE)
        self._controls = ctypes.create_string_buffer(slots * _CMSG_SPACE_PKTINFO)
        self._send_vec = (_Mmsghdr * slots)()
        self._recv_vec = (_Mmsghdr * slots)()
        self._recv_iov = (_Iovec * slots)()
        names = ctypes.addressof(self._names)
        controls = ctypes.addressof(self._controls)
        for i in range(slots):
            self._iov[i].iov_base = base + i * slot_size
            self._recv_iov[i].iov_base = recv_base + i * slot_size
            self._recv_iov[i].iov_len = slot_size
            hdr = self._send_vec[i].msg_hdr
            hdr.msg_name = names + i * _SOCKADDR_SIZE
            hdr.msg_iov = ctypes.pointer(self._iov[i])
            hdr.msg_iovlen = 1
            hdr.msg_control = controls + i * _CMSG_SPACE_PKTINFO
            rhdr = self._recv_vec[i].msg_hdr
            rhdr.msg_iov = ctypes.pointer(self._recv_iov[i])
            rhdr.msg_iovlen = 1
        self._send_addr = ctypes.addressof(self._send_vec)
        self._recv_addr = ctypes.addressof(self._recv_vec)
        self._send_raw = memoryview(self._send_vec).cast("B")
        self._recv_raw = memoryview(self._recv_vec).cast("B")
        self._iov_raw = memoryview(self._iov).cast("B")
        self._names_raw = memoryview(self._names).cast("B")
        self._controls_raw = memoryview(self._controls).cast("B")
        self._slot_route: list[tuple[str, str] | None] = [None] * slots
        """What each send slot's address and control data were last set to."""
        self._routes: dict[tuple[str, str], tuple[bytes, bytes]] = {}

    # --- sending ----------------------------------------------------------------------

    def send_many(self, packets: Sequence[tuple[bytes, str, str]],
                  fallback: Callable[[bytes, str, str], None]) -> list[tuple[int, OSError]]:
        """Send (packet, local, remote) items in order: the (index, error) of each one
        that was refused. ``fallback`` sends one packet the plain way (OSError if
        refused); it takes over for good when the batch call is missing or refused,
        and sends any packet larger than a slot."""
        failed: list[tuple[int, OSError]] = []
        start = 0
        total = len(packets)
        while start < total:
            if not self.send_batching:
                for i in range(start, total):
                    try:
                        fallback(*packets[i])
                    except OSError as exc:
                        failed.append((i, exc))
                return failed
            count = self._fill(packets, start)
            if count == 0:  # larger than a slot: alone, the plain way
                try:
                    fallback(*packets[start])
                except OSError as exc:
                    failed.append((start, exc))
                start += 1
                continue
            start = self._send_slots(packets, start, count, fallback, failed)
        return failed

    def _fill(self, packets: Sequence[tuple[bytes, str, str]], start: int) -> int:
        """Copy packets from ``start`` into the send slots: how many fit in a row."""
        slot_size = self.slot_size
        data = self._data_view
        iov = self._iov_raw
        slot_route = self._slot_route
        hdrs = self._send_raw
        count = 0
        for packet, local, remote in packets[start:start + self.slots]:
            size = len(packet)
            if size > slot_size:
                break
            at = count * slot_size
            data[at:at + size] = packet
            _SIZE_T.pack_into(iov, count * ctypes.sizeof(_Iovec) + _IOV_LEN_AT, size)
            route = (local, remote)
            if slot_route[count] != route:
                self._set_route(count, route, hdrs)
            count += 1
        return count

    def _set_route(self, slot: int, route: tuple[str, str], hdrs: memoryview) -> None:
        cached = self._routes.get(route)
        if cached is None:
            local, remote = route
            name = _sockaddr(self.family, remote)
            control = (_pktinfo(local) if self.family == socket.AF_INET and local
                       and local != "0.0.0.0" else b"")  # noqa: S104
            if len(self._routes) > 1024:  # bounded: peers come and go
                self._routes.clear()
            cached = self._routes[route] = (name, control)
        name, control = cached
        at = slot * _SOCKADDR_SIZE
        self._names_raw[at:at + len(name)] = name
        at = slot * _CMSG_SPACE_PKTINFO
        self._controls_raw[at:at + len(control)] = control
        hdr = self._send_vec[slot].msg_hdr
        hdr.msg_namelen = len(name)
        hdr.msg_controllen = len(control)
        self._slot_route[slot] = route

    def _send_slots(self, packets: Sequence[tuple[bytes, str, str]], start: int,
                    count: int, fallback: Callable[[bytes, str, str], None],
                    failed: list[tuple[int, OSError]]) -> int:
        """Send the ``count`` filled slots (packets from ``start``); where to go on."""
        sendmmsg = self._sendmmsg
        done = 0
        while done < count:
            if sendmmsg is None:
                self.send_batching = False
                return start + done
            sent = sendmmsg(self._fd, self._send_addr + done * _MMSG_SIZE, count - done,
                            0, 0)
            if sent > 0:
                done += sent
                continue
            err = ctypes.get_errno() if sent < 0 else errno.EIO
            # The first message of the rest failed (sendmmsg(2): an error is reported
            # only when no message was sent): its own error, or the call refused.
            index = start + done
            if err in _NOT_BATCHED:
                try:
                    fallback(*packets[index])
                except OSError as exc:
                    failed.append((index, exc))  # the packet's own error
                else:  # the plain call took what the batch call refused
                    self.send_batching = False
                    return index + 1
            else:
                failed.append((index, OSError(err, os.strerror(err))))
            done += 1
        return start + done

    # --- receiving --------------------------------------------------------------------

    def recv_many(self) -> tuple[list[bytes], int] | None:
        """(datagrams, truncated) of one ``recvmmsg``: up to ``slots`` datagrams, and how
        many were larger than a slot and dropped. An IPv4 raw socket delivers the IP
        header too (raw(7)); it is cut off here (a datagram too short for its header
        becomes ``b""``, which the caller drops as malformed). None when the queue is
        empty, or the call is missing or refused (``recv_batching`` then False).
        OSError for a pending socket error."""
        recvmmsg = self._recvmmsg
        if recvmmsg is None:
            self.recv_batching = False
            return None
        got = recvmmsg(self._fd, self._recv_addr, self.slots, MSG_DONTWAIT, 0)
        if got < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return None
            if err in _NOT_BATCHED:
                self.recv_batching = False
                return None
            raise OSError(err, os.strerror(err))
        datagrams: list[bytes] = []
        truncated = 0
        raw = self._recv_raw
        data = self._recv_view
        slot_size = self.slot_size
        unpack = _FLAGS_LEN.unpack_from
        ipv4 = self.ip_header
        for i in range(min(got, self.slots)):
            flags, length = unpack(raw, i * _MMSG_SIZE + _FLAGS_AT)
            if flags & MSG_TRUNC or length > slot_size:
                truncated += 1
                continue
            at = i * slot_size
            if ipv4:
                header = (data[at] & 0x0F) * 4 if length >= 20 else length
                datagrams.append(bytes(data[at + header:at + length])
                                 if header <= length else b"")
            else:
                datagrams.append(bytes(data[at:at + length]))
        return datagrams, truncated

    def close(self) -> None:
        """Unmap the buffers (the socket is its owner's to close)."""
        self.send_batching = self.recv_batching = False
        self._sendmmsg = self._recvmmsg = None
        self._data_view.release()
        self._recv_view.release()
        for mapping in self._maps:
            try:
                mapping.close()
            except BufferError:  # a ctypes view still holds it; the GC unmaps it
                pass
