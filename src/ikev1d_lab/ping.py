"""A minimal ICMP echo client (this machine has no `ping` binary).

Run inside a namespace as ``python -m ikev1d_lab.ping -I SRC -c N DST``;
exit status 0 when every echo was answered.  :func:`ping` does that for a
:class:`~ikev1d_lab.netns.Namespace`.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ikev1d_lab.netns import Namespace

__all__ = ["PingResult", "echo", "ping"]

_ICMP_ECHO_REQUEST = 8
_ICMP_ECHO_REPLY = 0
_ICMP6_ECHO_REQUEST = 128
_ICMP6_ECHO_REPLY = 129


def _checksum(data: bytes) -> int:
    # RFC 1071 internet checksum.
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = _checksum(header + payload)
    return struct.pack("!BBHHH", _ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


class PingResult(tuple[int, int]):
    """(sent, received)."""

    @property
    def sent(self) -> int:
        return self[0]

    @property
    def received(self) -> int:
        return self[1]


def echo(
    dst: str, src: str | None = None, count: int = 2, timeout: float = 2.0, size: int = 56
) -> PingResult:
    """Send `count` ICMP echo requests to `dst` (IPv4 or IPv6) and count the matching
    replies."""
    if ":" in dst:
        return _echo6(dst, src, count, timeout, size)
    ident = os.getpid() & 0xFFFF
    payload = bytes(i & 0xFF for i in range(size))
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        if src is not None:
            sock.bind((src, 0))
        for seq in range(1, count + 1):
            sock.sendto(_echo_request(ident, seq, payload), (dst, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                packet, addr = sock.recvfrom(65535)
                ihl = (packet[0] & 0x0F) * 4
                if len(packet) < ihl + 8 or addr[0] != dst:
                    continue
                typ, _code, _csum, r_ident, r_seq = struct.unpack_from("!BBHHH", packet, ihl)
                if typ == _ICMP_ECHO_REPLY and r_ident == ident and r_seq == seq:
                    received += 1
                    break
    return PingResult((count, received))


def _echo6(dst: str, src: str | None, count: int, timeout: float, size: int) -> PingResult:
    """ICMPv6 echo (RFC 4443 section 4.1); the kernel fills in the checksum of raw
    ICMPv6 sockets (RFC 3542 section 3.1) and hands us replies without the IPv6 header."""
    ident = os.getpid() & 0xFFFF
    payload = bytes(i & 0xFF for i in range(size))
    received = 0
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
        if src is not None:
            sock.bind((src, 0))
        for seq in range(1, count + 1):
            request = struct.pack("!BBHHH", _ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + payload
            sock.sendto(request, (dst, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                packet, addr = sock.recvfrom(65535)
                if len(packet) < 8 or addr[0] != dst:
                    continue
                typ, _code, _csum, r_ident, r_seq = struct.unpack_from("!BBHHH", packet)
                if typ == _ICMP6_ECHO_REPLY and r_ident == ident and r_seq == seq:
                    received += 1
                    break
    return PingResult((count, received))


def ping(
    ns: Namespace, dst: str, src: str | None = None, count: int = 2, timeout: float = 2.0
) -> PingResult:
    """Ping `dst` from inside `ns` (optionally from source address `src`)."""
    cmd = [sys.executable, "-m", "ikev1d_lab.ping", "-c", str(count), "-W", str(timeout)]
    if src is not None:
        cmd += ["-I", src]
    proc = ns.run([*cmd, dst], check=False, timeout=count * timeout + 30)
    fields = proc.stdout.split()
    if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
        return PingResult((int(fields[0]), int(fields[1])))
    return PingResult((count, 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ICMP echo; prints 'SENT RECEIVED'")
    parser.add_argument("-I", dest="src", default=None, help="source address")
    parser.add_argument("-c", dest="count", type=int, default=2)
    parser.add_argument("-W", dest="timeout", type=float, default=2.0, help="seconds per echo")
    parser.add_argument("dst")
    args = parser.parse_args(argv)
    result = echo(args.dst, args.src, args.count, args.timeout)
    sys.stdout.write(f"{result.sent} {result.received}\n")
    return 0 if result.received == result.sent else 1


if __name__ == "__main__":
    raise SystemExit(main())
