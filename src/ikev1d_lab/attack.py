"""Hostile traffic for a running daemon: spoofed Main Mode floods and mutated datagrams.

Both start from real messages: two ikev1d engines negotiate in memory (Main Mode,
Quick Mode, a Delete; PSK, ``aes128-sha256-modp2048``) with the addresses of the
two-host topology (:mod:`ikev1d_lab.netns`), and every datagram is kept.

- ``flood``: Main Mode message 1 of that exchange with a fresh initiator cookie
  each time, sent through a raw socket (``IP_HDRINCL``) with a forged source:
  a random address of 198.18.0.0/15 (RFC 2544's benchmarking range) or, for a
  given share, the legitimate peer's own address and port, at a fixed rate.
- ``fuzz``: mutations of every recorded message (bytes flipped, truncated,
  lengths, payload types, exchange types and flags changed, cookies replaced,
  messages spliced, junk appended, plain garbage), to UDP 500 and to UDP 4500
  (there behind the non-ESP marker, RFC 3948 section 2.2, or without it, as ESP).

Run inside the sending namespace as ``python -m ikev1d_lab.attack flood|fuzz ...``;
it prints one line of counts at the end. :func:`rss_kib` reads a process's
resident memory for the before/after figures.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d_lab.daemon import ikev1d_conf

__all__ = ["main", "main_mode_1", "mutate", "recorded_messages", "rss_kib"]

TARGET = "192.0.2.1"
PEER = "192.0.2.2"
SPOOF_NET = ipaddress.ip_network("198.18.0.0/15")
PSK = "attack-recording-pre-shared-key-0123456789"
NON_ESP_MARKER = b"\x00\x00\x00\x00"


def _config(local: str, remote: str, local_ts: str, remote_ts: str) -> str:
    return ikev1d_conf("gw", local, remote, local, remote, PSK, ["aes128-sha256-modp2048"],
                       ["aes128-sha256"], local_ts, remote_ts)


def recorded_messages(seed: int = 1) -> list[bytes]:
    """Every datagram of Main Mode + Quick Mode + Delete, the peer (B) initiating."""
    now = 1000.0
    rng = random.Random(seed)
    target = Engine(parse_config(_config(TARGET, PEER, "10.1.0.0/24", "10.2.0.0/24")),
                    random_bytes=rng.randbytes)
    peer = Engine(parse_config(_config(PEER, TARGET, "10.2.0.0/24", "10.1.0.0/24")),
                  random_bytes=rng.randbytes)
    sent: list[bytes] = []

    def pump() -> None:
        for _ in range(60):
            moved = False
            for engine, other in ((peer, target), (target, peer)):
                for dgram in engine.datagrams_to_send():
                    moved = True
                    sent.append(dgram.data)
                    other.receive_datagram(dgram.data, dgram.remote, dgram.local, now)
                engine.events()
            if not moved:
                return

    peer.initiate("gw", None, now)
    pump()
    peer.terminate("gw", now)
    pump()
    return sent


def main_mode_1() -> bytes:
    """The peer's Main Mode message 1 (SA with our proposal, vendor IDs)."""
    return recorded_messages()[0]


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid` in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")


# --- mutations ---------------------------------------------------------------------------


def _flip(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 8)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _set_byte(rng: random.Random, data: bytearray, offset: int, values: Sequence[int]) -> None:
    if len(data) > offset:
        data[offset] = rng.choice(values)


def mutate(rng: random.Random, messages: Sequence[bytes]) -> bytes:
    """One mutation of a recorded message (ISAKMP header per RFC 2408 section 3.1)."""
    base = bytearray(rng.choice(messages))
    kind = rng.randrange(12)
    if kind == 0:
        _flip(rng, base)
    elif kind == 1:
        del base[rng.randrange(len(base) + 1):]
    elif kind == 2:  # the header's length field (octets 24-27)
        if len(base) >= 28:
            base[24:28] = struct.pack("!I", rng.choice(
                [0, 1, 28, len(base) - 1, len(base) + 1, 0xFFFFFFFF, rng.getrandbits(32)]))
    elif kind == 3:  # first payload type, version, exchange type, flags
        _set_byte(rng, base, 16, [0, 1, 2, 5, 8, 11, 13, 14, 20, 33, 132, 255])
        _set_byte(rng, base, 18, [0, 1, 2, 4, 5, 6, 32, 33, 34, 255])
        _set_byte(rng, base, 19, [0, 1, 2, 3, 4, 7, 255])
    elif kind == 4:  # a fresh initiator cookie, a random responder cookie
        base[0:8] = rng.randbytes(8)
        if rng.random() < 0.5:
            base[8:16] = rng.randbytes(8)
    elif kind == 5:  # a payload's generic header (RFC 2408 section 3.2), somewhere
        if len(base) > 32:
            at = rng.randrange(28, len(base) - 4)
            base[at:at + 4] = rng.randbytes(4)
    elif kind == 6:  # message ID
        if len(base) >= 24:
            base[20:24] = rng.randbytes(4)
    elif kind == 7:  # splice two messages
        other = rng.choice(messages)
        cut = rng.randrange(len(base) + 1)
        base = base[:cut] + other[rng.randrange(len(other) + 1):]
    elif kind == 8:  # junk appended
        base += rng.randbytes(rng.randint(1, 512))
    elif kind == 9:  # a run of bytes overwritten
        if base:
            at = rng.randrange(len(base))
            base[at:at + rng.randint(1, 64)] = rng.randbytes(rng.randint(1, 64))
    elif kind == 10:  # plain garbage
        base = bytearray(rng.randbytes(rng.randint(0, 1500)))
    else:  # several at once
        _flip(rng, base)
        base[0:8] = rng.randbytes(8)
        del base[rng.randrange(len(base) + 1):]
    return bytes(base)


# --- senders -----------------------------------------------------------------------------


def _ipv4_udp(src: str, sport: int, dst: str, dport: int, payload: bytes, ident: int) -> bytes:
    """An IPv4 + UDP packet for a raw IP_HDRINCL socket (the kernel fills the IP
    checksum; a zero UDP checksum means none, RFC 768)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp) + len(payload), ident, 0, 64,
                     socket.IPPROTO_UDP, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp + payload


def flood(dst: str, peer: str, rate: float, seconds: float, peer_share: float,
          seed: int) -> tuple[int, int]:
    """Spoofed message 1 at `rate` per second for `seconds`: (random sources, peer's)."""
    rng = random.Random(seed)
    message = bytearray(main_mode_1())
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    sent_random = sent_peer = 0
    started = time.monotonic()
    tick = 0.01
    total = 0
    try:
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds:
                break
            due = int(min(elapsed + tick, seconds) * rate)
            while total < due:
                message[0:8] = rng.randbytes(8)
                if rng.random() < peer_share:
                    src, sport = peer, 500
                    sent_peer += 1
                else:
                    src = str(SPOOF_NET[rng.randrange(SPOOF_NET.num_addresses)])
                    sport = rng.choice([500, rng.randrange(1024, 65536)])
                    sent_random += 1
                packet = _ipv4_udp(src, sport, dst, 500, bytes(message), total & 0xFFFF)
                try:
                    sock.sendto(packet, (dst, 0))
                except OSError:
                    pass  # a full socket buffer: the packet is lost, as on a wire
                total += 1
            time.sleep(max(0.0, started + (total / rate) - time.monotonic()))
    finally:
        sock.close()
    return sent_random, sent_peer


def fuzz(dst: str, count: int, seed: int, rate: float) -> tuple[int, int]:
    """`count` mutated datagrams to UDP 500 and 4500 of `dst`: (to 500, to 4500)."""
    rng = random.Random(seed)
    messages = recorded_messages(seed)
    socks = {port: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for port in (500, 4500)}
    to_500 = to_4500 = 0
    started = time.monotonic()
    try:
        for index in range(count):
            data = mutate(rng, messages)
            if rng.random() < 0.5:
                port = 500
                to_500 += 1
            else:
                port = 4500
                to_4500 += 1
                if rng.random() < 0.9:
                    data = NON_ESP_MARKER + data  # IKE on 4500; else it reads as ESP
            try:
                socks[port].sendto(data, (dst, port))
            except OSError:
                pass  # e.g. ECONNREFUSED after an ICMP error: go on
            if rate and index % 100 == 99:
                time.sleep(max(0.0, started + (index + 1) / rate - time.monotonic()))
    finally:
        for s in socks.values():
            s.close()
    return to_500, to_4500


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hostile traffic for a running ikev1d")
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flood", help="spoofed Main Mode message 1 through a raw socket")
    f.add_argument("--dst", default=TARGET)
    f.add_argument("--peer", default=PEER, help="the legitimate peer, spoofed too")
    f.add_argument("--rate", type=float, default=2000.0, help="datagrams per second")
    f.add_argument("--seconds", type=float, default=10.0)
    f.add_argument("--peer-share", type=float, default=0.5,
                   help="share of datagrams forged from the peer's own address and port")
    f.add_argument("--seed", type=int, default=1)
    z = sub.add_parser("fuzz", help="mutated real messages to UDP 500 and 4500")
    z.add_argument("--dst", default=TARGET)
    z.add_argument("--count", type=int, default=100_000)
    z.add_argument("--rate", type=float, default=0.0, help="datagrams per second (0: no limit)")
    z.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.command == "flood":
        random_sources, peer = flood(args.dst, args.peer, args.rate, args.seconds,
                                     args.peer_share, args.seed)
        sys.stdout.write(f"sent {random_sources} from random sources, {peer} from the peer's "
                         f"address in {time.monotonic() - started:.1f} s\n")
    else:
        to_500, to_4500 = fuzz(args.dst, args.count, args.seed, args.rate)
        sys.stdout.write(f"sent {to_500} to port 500, {to_4500} to port 4500 in "
                         f"{time.monotonic() - started:.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
