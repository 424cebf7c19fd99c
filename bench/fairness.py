"""Giving both data planes the same socket buffers and TUN queue length.

ikev1d forces 4 MiB socket buffers on its ESP sockets (SO_RCVBUFFORCE); charon's
socket-default plugin has no option for them and takes ``net.core.rmem_default``,
which a network namespace on this kind of machine cannot change (the sysctl is not
per namespace here: writing it inside one fails with EINVAL). So the benchmark
reaches into each daemon after it started: ``pidfd_getfd(2)`` hands us a duplicate
of each of its IP sockets (the same open socket, not a copy), and
``SO_RCVBUFFORCE``/``SO_SNDBUFFORCE`` on it set the size the daemon itself would
get. Both daemons get the same sizes this way, whatever each does by default.

The TUN devices (ikev1d's ``ikev1d0``, kernel-libipsec's ``ipsec0``) get the same
transmit queue length the same way: ``ip link set DEV txqueuelen N`` in the
namespace, for every TUN device there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from ikev1d_lab.netns import Namespace

SOCKET_BUFFER = 4 * 1024 * 1024  # what ikev1d asks for by default
TUN_QUEUE = 1000  # ikev1d's TUN default; kernel-libipsec leaves the kernel's 500
_SO_SNDBUFFORCE = 32
_SO_RCVBUFFORCE = 33
_SYS_PIDFD_OPEN = 434  # the same number on every architecture since Linux 5.3
_SYS_PIDFD_GETFD = 438
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class SocketBuffers:
    fd: int
    kind: str  # "udp4", "raw6", ...
    rcvbuf: int  # as getsockopt reports it (the kernel doubles what was asked)
    sndbuf: int


def _syscall(number: int, *args: int) -> int:
    ret = int(_libc.syscall(number, *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def force_socket_buffers(pid: int, size: int = SOCKET_BUFFER) -> list[SocketBuffers]:
    """Set `size` octets of receive and send buffer on every IP socket of process `pid`."""
    pidfd = _syscall(_SYS_PIDFD_OPEN, pid, 0)
    done: list[SocketBuffers] = []
    try:
        for entry in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if not os.readlink(entry).startswith("socket:"):
                    continue
                fd = int(entry.name)
                dup = _syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
                sock = socket.socket(fileno=dup)
                try:
                    if sock.family not in (socket.AF_INET, socket.AF_INET6):
                        continue
                    if sock.type not in (socket.SOCK_DGRAM, socket.SOCK_RAW):
                        continue
                    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
                    sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, size)
                    kind = ("udp" if sock.type == socket.SOCK_DGRAM else "raw") + (
                        "4" if sock.family == socket.AF_INET else "6")
                    done.append(SocketBuffers(
                        fd, kind, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)))
                finally:
                    sock.close()  # our duplicate only; the daemon's descriptor stays
    finally:
        os.close(pidfd)
    return done


def set_tun_queues(ns: Namespace, qlen: int = TUN_QUEUE) -> dict[str, int]:
    """``txqueuelen`` `qlen` on every TUN device in `ns`; {device: qlen read back}."""
    out = ns.run(["ip", "-d", "-o", "link", "show"], check=True).stdout
    queues: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"\d+: ([^:@]+)[:@]", line)
        if m is None or " tun " not in f" {line} ":
            continue
        dev = m.group(1)
        ns.run(["ip", "link", "set", dev, "txqueuelen", str(qlen)], check=True)
        shown = ns.run(["ip", "-o", "link", "show", dev], check=True).stdout
        q = re.search(r"qlen (\d+)", shown)
        queues[dev] = int(q.group(1)) if q else -1
    return queues


def equalize(ns: Namespace, pid: int, size: int = SOCKET_BUFFER,
             qlen: int = TUN_QUEUE) -> str:
    """Both settings for the daemon `pid` in `ns`; a one-line description of the result."""
    bufs = force_socket_buffers(pid, size)
    queues = set_tun_queues(ns, qlen)
    socks = ", ".join(f"{b.kind} {b.rcvbuf // 1024}/{b.sndbuf // 1024} KiB" for b in bufs)
    tuns = ", ".join(f"{d} qlen {q}" for d, q in queues.items())
    return f"sockets (rcv/snd) {socks or 'none'}; {tuns or 'no TUN device'}"
