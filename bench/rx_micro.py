"""Microbenchmark: the receiving side's CPU per packet, in process, no root.

Usage::

    .venv/bin/python bench/rx_micro.py                   # aes128gcm16 and aes128-sha256,
                                                         # ESP-in-UDP (GRO) and raw ESP
    .venv/bin/python bench/rx_micro.py --algs aes128gcm16 --paths udp --profile
    .venv/bin/python bench/rx_micro.py --help            # --packets --rounds --gro --dry

What it measures: the whole receiving path of the daemon, from the socket's
receive buffer to the TUN write, with the socket and the TUN device replaced by
fakes that cost nothing: one TCP flow's 1400-octet inner packets (1348 octets
of payload behind IPv4 and a TCP header with timestamps, ACK set, sequence
numbers continuing), sealed in advance by an ``OutboundSa`` and handed out

* ``udp``: as ESP-in-UDP in GRO buffers of ``--gro`` datagrams (64 by default,
  at most 64 KiB as the kernel coalesces them; each with its ``UDP_GRO`` and
  ``IP_PKTINFO`` control messages) to ``UdpTransport``'s NAT-T socket callback
  (``daemon/udp.py``), then through the daemon's ESP callback into
  ``UserspaceBackend.receive_esp_udp``;
* ``raw``: one ESP packet per receive to ``UserspaceBackend._drain_raw``;

then opened (replay window, ICV, padding), checked against the SA's
selectors, MSS-clamped, coalesced into TUN super-packets (``tun_offload =
"gro"``) and written to the fake TUN device. The event loop runs between
receives as the daemon's does (the TUN flush is a ``call_soon``).

It prints CPU microseconds (this thread's CPU time) per received packet, the best and the median of
``--rounds`` rounds of ``--packets`` packets, and with ``--profile`` the
cProfile of one more round (cumulative, top 25). The sending direction (the
ACKs B seals) is not part of it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ipaddress
import logging
import os
import pstats
import socket
import statistics
import struct
import time
from collections import deque
from collections.abc import Callable

from benchlib import NullRoutes

from ikev1d.daemon.runtime import Daemon
from ikev1d.daemon.udp import UdpSocket, UdpTransport
from ikev1d.dataplane.esp import OutboundSa, esp_algorithm, keymat_length
from ikev1d.dataplane.userspace import UserspaceBackend
from ikev1d.engine.api import ChildSaEstablished, Endpoint

ALGS = {
    "aes128gcm16": ("aesgcm", 128, None, 16),
    "aes128-sha256": ("aes", 128, "sha256", 16),
    "aes256gcm16": ("aesgcm", 256, None, 16),
    "aes128-sha1": ("aes", 128, "sha1", 12),
}
INNER = 1400
LOCAL: Endpoint = ("192.0.2.2", 4500)
REMOTE: Endpoint = ("192.0.2.1", 4500)
SPI_IN, SPI_OUT = 0xC0000002, 0xC0000001
SOL_UDP, UDP_GRO, IP_PKTINFO = 17, 104, 8


class FakeTun:
    """A TUN device opened with IFF_VNET_HDR whose writes cost nothing."""

    name = "benchtun0"
    vnet_hdr = True
    mtu = 1400

    def __init__(self) -> None:
        self.buffers = 0
        self.octets = 0

    def fileno(self) -> int:
        return -1

    def read(self) -> bytes | None:
        return None

    def write(self, packet: bytes) -> None:
        self.buffers += 1
        self.octets += len(packet)

    def write_vnet(self, buffer: bytes) -> None:
        self.buffers += 1
        self.octets += len(buffer)

    def close(self) -> None:
        pass


class FakeRaw:
    def __init__(self) -> None:
        self.queue: deque[tuple[bytes, str]] = deque()

    def fileno(self) -> int:
        return -1

    def recv(self) -> tuple[bytes, str] | None:
        return self.queue.popleft() if self.queue else None

    def send(self, esp: bytes, local: str, remote: str) -> None:
        pass

    def close(self) -> None:
        pass


class FakeUdpSock:
    """What ``UdpSocket`` reads with ``recvmsg``: prepared GRO buffers, then EAGAIN."""

    def __init__(self) -> None:
        self.queue: deque[tuple[bytes, list[tuple[int, int, bytes]]]] = deque()
        self._addr = (REMOTE[0], REMOTE[1])

    def recvmsg(self, size: int, anc: int) -> tuple[bytes, list[tuple[int, int, bytes]], int,
                                                    tuple[str, int]]:
        if not self.queue:
            raise BlockingIOError
        data, ancdata = self.queue.popleft()
        return data, ancdata, 0, self._addr

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def inner_packets(count: int, first_seq: int) -> list[bytes]:
    """``count`` in-order data segments of one TCP flow 10.2.0.2:5201 -> 10.1.0.2:40000."""
    payload = INNER - 20 - 32
    out = []
    for n in range(count):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, INNER, n & 0xFFFF, 0x4000, 64, 6, 0,
                         bytes((10, 2, 0, 2)), bytes((10, 1, 0, 2)))
        seq = (first_seq + n * payload) & 0xFFFFFFFF
        tcp = struct.pack("!HHIIBBHHH", 5201, 40000, seq, 1, 8 << 4, 0x10, 512, 0, 0)
        # The timestamp clock ticks every millisecond: ~50 segments at 600 Mbit/s.
        options = b"\x01\x01\x08\x0a" + struct.pack("!II", n // 50, 7)
        out.append(ip + tcp + options + bytes(payload))
    return out


def child(alg_name: str, keymat: bytes) -> ChildSaEstablished:
    enc, bits, integ, icv = ALGS[alg_name]
    net = ipaddress.ip_network
    return ChildSaEstablished(
        conn="gw", child="net", ike_id=1, child_id=1, spi_in=SPI_IN, spi_out=SPI_OUT,
        proposal=alg_name, encryption=enc, key_length=bits, icv_length=icv, integrity=integ,
        mode="tunnel", encap=True, local=LOCAL, remote=REMOTE,
        local_ts=(net("10.1.0.0/24"),), remote_ts=(net("10.2.0.0/24"),),
        keymat_in=keymat, keymat_out=keymat,
    )


class Rig:
    """B's receiving path with fakes at both ends."""

    def __init__(self, alg_name: str, path: str, gro: int) -> None:
        enc, bits, integ, icv = ALGS[alg_name]
        alg = esp_algorithm(enc, bits, integ, icv)
        keymat = os.urandom(keymat_length(alg))
        self.path = path
        self.gro = gro
        self.loop = asyncio.new_event_loop()
        self.tun = FakeTun()
        self.raw = FakeRaw()
        self.backend = UserspaceBackend(self.tun, self.raw, NullRoutes("10.1.0.1"))
        self.backend.attach(lambda data, local, remote: None, self.loop)
        self.backend.install(child(alg_name, keymat))
        self.sender = OutboundSa(SPI_IN, alg, keymat)
        self.tcp_seq = 1

        backend = self.backend

        def on_esp(data: bytes, local: Endpoint, remote: Endpoint) -> None:
            # What the daemon's runtime does with ESP from the NAT-T socket, one at a time.
            try:
                backend.receive_esp_udp(data, local, remote)
            except Exception:
                logging.exception("ESP")

        # And in runs, where the daemon has that (the same callback as the daemon's).
        esp_many_to = getattr(Daemon, "_esp_many_to", None)
        kwargs = {}
        if esp_many_to is not None and hasattr(backend, "receive_esp_udp_many"):
            kwargs["on_esp_many"] = esp_many_to(backend)
        self.transport = UdpTransport(self.loop, [], 500, 4500, lambda *a: None, on_esp,
                                      **kwargs)
        self.usock = UdpSocket("127.0.0.1", 0, gro=True)
        self.usock.sock.close()
        self.fake_sock = FakeUdpSock()
        self.usock.sock = self.fake_sock  # type: ignore[assignment]
        self.usock.port = 4500
        self.usock.gro = True
        self.pktinfo = (0, IP_PKTINFO, struct.pack("@i4s4s", 2, socket.inet_aton(LOCAL[0]),
                                                   socket.inet_aton(LOCAL[0])))

    def prepare(self, count: int) -> None:
        """Seal ``count`` packets and queue them where the path reads."""
        esp = [self.sender.seal(p, 4) for p in inner_packets(count, self.tcp_seq)]
        self.tcp_seq += count * (INNER - 52)
        if self.path == "raw":
            self.raw.queue.extend((e, REMOTE[0]) for e in esp)
            return
        size = len(esp[0])
        per_buffer = max(1, min(self.gro, 65535 // size))
        for start in range(0, len(esp), per_buffer):
            chunk = esp[start:start + per_buffer]
            ancdata = [self.pktinfo]
            if len(chunk) > 1:
                ancdata.append((SOL_UDP, UDP_GRO, struct.pack("=i", size)))
            self.fake_sock.queue.append((b"".join(chunk), ancdata))

    def _run_ready(self) -> None:
        loop = self.loop
        loop.call_soon(loop.stop)
        loop.run_forever()

    def run(self) -> None:
        """Everything queued, through to the TUN device, as the event loop would."""
        if self.path == "raw":
            while self.raw.queue:
                self.backend.handle_raw_readable()
                self._run_ready()
        else:
            while self.fake_sock.queue or self.usock.pending:
                self.transport._readable(self.usock)
                self._run_ready()
        self._run_ready()

    def close(self) -> None:
        self.backend.close()
        self.loop.close()


def measure(alg: str, path: str, packets: int, rounds: int, gro: int,
            profile: bool, dry: bool = False) -> tuple[float, float, int]:
    rig = Rig(alg, path, gro)
    rig.prepare(512)  # warm up: contexts, caches
    rig.run()
    if dry:  # everything but the receiving (see --dry)
        for _ in range(rounds):
            rig.prepare(packets)
        rig.close()
        return 0.0, 0.0, 0
    times: list[float] = []
    # CPU time of this thread, not wall time: the box is shared, and what counts is
    # the CPU a packet costs (wall time under load mostly measures the neighbours).
    clock: Callable[[], float] = time.thread_time
    for _ in range(rounds):
        rig.prepare(packets)
        start = clock()
        rig.run()
        times.append((clock() - start) / packets * 1e6)
    counters = rig.backend.counters(SPI_IN, SPI_OUT)
    expected = 512 + rounds * packets
    if counters.packets_in != expected:
        raise SystemExit(f"{alg}/{path}: {counters.packets_in} of {expected} packets opened; "
                         f"drops {rig.backend.drops}")
    if profile:
        rig.prepare(packets)
        prof = cProfile.Profile()
        prof.enable()
        rig.run()
        prof.disable()
        print(f"--- profile {alg} {path} ({packets} packets)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    buffers = rig.tun.buffers
    rig.close()
    return min(times), statistics.median(times), buffers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algs", default="aes128gcm16,aes128-sha256")
    parser.add_argument("--paths", default="udp,raw")
    parser.add_argument("--packets", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--gro", type=int, default=64,
                        help="datagrams per GRO buffer (at most 64 KiB in all)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--dry", action="store_true",
                        help="seal the packets but do not receive them: run under "
                             "valgrind --tool=callgrind with and without it, and the "
                             "difference is the receiving's instructions")
    args = parser.parse_args()
    print(f"receive path, {INNER}-octet inner TCP packets, {args.packets} packets x "
          f"{args.rounds} rounds; load {os.getloadavg()[0]:.2f}")
    print(f"{'transform':<15} {'path':<5} {'best CPU µs/pkt':>15} {'median':>8} {'TUN writes':>10}")
    for alg in args.algs.split(","):
        for path in args.paths.split(","):
            best, median, buffers = measure(alg, path, args.packets, args.rounds, args.gro,
                                            args.profile, args.dry)
            print(f"{alg:<15} {path:<5} {best:15.2f} {median:8.2f} {buffers:10d}")


if __name__ == "__main__":
    main()
