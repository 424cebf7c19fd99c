"""Microbenchmark: microseconds per 1400-octet packet for ESP seal and open, and for
the whole sealing path of the userspace data plane.

Usage: .venv/bin/python bench/esp_micro.py [packets] [--sealer-only] [--rounds N]
       [--profile TRANSFORM] [--raw-socket]

Prints, per transform, the time to seal and to open one packet and the
throughput one core would reach doing only that (payload bits per second).
For comparison: strongSwan's userspace libipsec carries about 500 Mbit/s of
TCP with AES-GCM; a 1400-octet packet every 22 µs is 500 Mbit/s.

Then the sealing path as the daemon runs it (:class:`ikev1d.dataplane.sealing.Sealer`,
no root needed): TUN reads of one TCP flow (64 segments of 1400 octets per readiness
event, as a bulk sender queues them), each read with the virtio-net header that
``tun_offload = "gro"`` puts in front (``vnet``) or without (``plain``), SA lookup,
MSS clamp check, limits, counters, sealing and the ESP-in-UDP GSO batches, up to a
send that only counts. The figure is µs per packet, the best of ``--rounds``
rounds, in CPU time of the thread (so that other processes of a loaded box count
less); what the kernel costs (the read and send system calls) is not in it.
``--profile aes128gcm16`` prints a cProfile of that path.

``--raw-socket`` (root) measures instead raw ESP through real sockets, in a network
namespace of its own: the sealing path sending to the kernel and the receiving
backend reading, opening and writing what was sent, with ``sendmmsg``/``recvmmsg``
and with one system call per packet, rounds interleaved.
"""

from __future__ import annotations

import argparse
import cProfile
import ipaddress
import os
import pstats
import struct
import subprocess
import sys
import time
from collections.abc import Sequence

from benchlib import NullRoutes

from ikev1d.dataplane.esp import InboundSa, OutboundSa, esp_algorithm, keymat_length
from ikev1d.dataplane.linux.offload import VNET_HDR_LEN
from ikev1d.dataplane.linux.tun import RawEspSocket
from ikev1d.dataplane.sad import Sad, SaEntry, prefixes
from ikev1d.dataplane.sealing import DROP_REASONS, DropLog, Sealer
from ikev1d.dataplane.userspace import UserspaceBackend
from ikev1d.engine.api import ChildSaEstablished, Endpoint

TRANSFORMS = [
    ("aes128gcm16", ("aesgcm", 128, None, 16)),
    ("aes256gcm16", ("aesgcm", 256, None, 16)),
    ("aes128-sha256", ("aes", 128, "sha256", 0)),
    ("aes256-sha256", ("aes", 256, "sha256", 0)),
    ("aes128-sha1", ("aes", 128, "sha1", 0)),
    ("3des-sha1", ("3des", 192, "sha1", 0)),
]
SEALER_TRANSFORMS = ("aes128gcm16", "aes128-sha256")
PAYLOAD = 1400
READ_BATCH = 64
"""TUN reads per readiness event in the sealing path benchmark."""


def bench(args: tuple[str, int, str | None, int], count: int) -> tuple[float, float]:
    alg = esp_algorithm(*args)
    keymat = os.urandom(keymat_length(alg))
    out = OutboundSa(0xC0FFEE01, alg, keymat)
    payload = os.urandom(PAYLOAD)
    for _ in range(200):  # warm up contexts and caches
        out.seal(payload, 4)
    seal = out.seal
    best_seal = float("inf")
    packets: list[bytes] = []
    for _ in range(3):
        start = time.perf_counter()
        packets = [seal(payload, 4) for _ in range(count)]
        best_seal = min(best_seal, (time.perf_counter() - start) / count)
    best_open = float("inf")
    for _ in range(3):
        inb = InboundSa(0xC0FFEE01, alg, keymat, replay_window=64)
        open_ = inb.open
        start = time.perf_counter()
        for packet in packets[-count:]:
            open_(packet)
        best_open = min(best_open, (time.perf_counter() - start) / count)
    return best_seal * 1e6, best_open * 1e6


# --- the sealing path -------------------------------------------------------------------


def tcp_segments(count: int, size: int) -> list[bytes]:
    """``count`` in-order ACK segments of one IPv4 TCP flow, ``size`` octets each."""
    payload = size - 40
    out = []
    for i in range(count):
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, i & 0xFFFF, 0x4000, 64, 6, 0,
                         bytes([10, 1, 0, 1]), bytes([10, 2, 0, 1]))
        tcp = struct.pack("!HHIIHHHH", 40000, 5201, 1000 + i * payload, 1, 0x5010, 512, 0, 0)
        out.append(ip + tcp + os.urandom(payload))
    return out


class FakeTun:
    """Hands out one readiness event's reads; ``vnet_hdr`` as the daemon opens it."""

    name = "bench0"

    def __init__(self, reads: list[bytes], vnet: bool) -> None:
        self.vnet_hdr = vnet
        self.reads = [bytes(VNET_HDR_LEN) + r for r in reads] if vnet else list(reads)
        self.queue: list[bytes] = []

    def refill(self) -> None:
        self.queue = self.reads[::-1]

    def fileno(self) -> int:
        return -1

    def read(self) -> bytes | None:
        queue = self.queue
        return queue.pop() if queue else None

    def write(self, packet: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def make_sealer(args: tuple[str, int, str | None, int], vnet: bool,
                ) -> tuple[Sealer, FakeTun, list[int]]:
    alg = esp_algorithm(*args)
    out = OutboundSa(0xC0FFEE02, alg, os.urandom(keymat_length(alg)))
    entry = SaEntry(
        spi_in=0xC0FFEE01, spi_out=0xC0FFEE02, inbound=None, outbound=out,
        local_ts=prefixes([ipaddress.ip_network("10.1.0.0/16")]),
        remote_ts=prefixes([ipaddress.ip_network("10.2.0.0/16")]),
        local=("192.0.2.1", 4500), remote=("192.0.2.2", 4500), encap=True, name="bench",
        mtu=1438,
    )
    sad = Sad()
    sad.add(entry)
    tun = FakeTun(tcp_segments(READ_BATCH, PAYLOAD), vnet)
    sealer = Sealer(tun, sad, DropLog(dict.fromkeys(DROP_REASONS, 0), time.monotonic),
                    {}, time.monotonic)
    sent = [0]

    def send_many(datagrams: Sequence[bytes], local: Endpoint, remote: Endpoint) -> None:
        sent[0] += len(datagrams)

    sealer.send_udp_many = send_many
    return sealer, tun, sent


def bench_sealer(args: tuple[str, int, str | None, int], vnet: bool, count: int,
                 rounds: int) -> float:
    sealer, tun, sent = make_sealer(args, vnet)
    events = max(1, count // READ_BATCH)
    handle, refill = sealer.handle_tun_readable, tun.refill
    cpu_time = time.thread_time  # CPU time: a loaded box preempts, and that is not ours
    for _ in range(20):
        refill()
        handle()
    best = float("inf")
    for _ in range(rounds):
        elapsed = 0.0
        for _ in range(events):
            refill()
            start = cpu_time()
            handle()
            elapsed += cpu_time() - start
        best = min(best, elapsed / (events * READ_BATCH))
    if sent[0] != (events * rounds + 20) * READ_BATCH:
        raise SystemExit(f"the sealer sent {sent[0]} packets, not all it read")
    return best * 1e6


def profile_sealer(args: tuple[str, int, str | None, int], vnet: bool, count: int) -> None:
    sealer, tun, _sent = make_sealer(args, vnet)
    events = max(1, count // READ_BATCH)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(events):
        tun.refill()
        sealer.handle_tun_readable()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


# --- raw ESP through the kernel ------------------------------------------------------

_RAW_MARK = "IKEV1D_ESP_MICRO_NETNS"
_RAW_TX, _RAW_RX = "127.0.0.2", "127.0.0.1"


class _CountingTun(FakeTun):
    """The receiving side's TUN device: counts what is written (no virtio-net header,
    so every opened packet is one write and nothing waits for the event loop)."""

    def __init__(self) -> None:
        super().__init__([], False)
        self.written = 0

    def write(self, packet: bytes) -> None:
        self.written += 1


def _raw_sockets(batched: bool) -> tuple[RawEspSocket, RawEspSocket]:
    """A sending and a receiving raw ESP socket on this namespace's loopback device;
    ``batched`` False: the one-packet-per-call path (as where the calls are missing)."""
    tx, rx = RawEspSocket(), RawEspSocket()
    tx._sock.bind((_RAW_TX, 0))  # only rx gets what goes to 127.0.0.1
    rx._sock.bind((_RAW_RX, 0))
    if not batched:
        tx._mmsg_failed = rx._mmsg_failed = True
    return tx, rx


def bench_raw_socket(args: tuple[str, int, str | None, int], batched: bool, count: int,
                     ) -> tuple[float, float]:
    """(seal side, open side) µs of CPU per packet through real raw ESP sockets: the
    Sealer's readiness event (64 reads) to the send system calls, and the receiving
    backend's readiness event (the receive calls, opening, TUN write) for what they
    sent. The kernel's work inside the calls (loopback delivery included, on the
    sending side) counts, as it does in the daemons."""
    alg = esp_algorithm(*args)
    keymat = os.urandom(keymat_length(alg))
    tx, rx = _raw_sockets(batched)
    sealer, tun, _sent = make_sealer(args, True)
    (entry,) = sealer.sad
    entry.encap = False
    entry.local, entry.remote = (_RAW_TX, 0), (_RAW_RX, 0)
    entry.outbound = OutboundSa(0xC0FFEE02, alg, keymat)
    sealer.raw4 = tx
    net = ipaddress.ip_network
    backend = UserspaceBackend(_CountingTun(), rx, NullRoutes("10.1.0.1"))
    backend.install(ChildSaEstablished(
        conn="bench", child="net", ike_id=1, child_id=1, spi_in=0xC0FFEE02, spi_out=0xC0FFEE03,
        proposal="bench", encryption=args[0], key_length=args[1], icv_length=alg.icv_length,
        integrity=args[2], mode="tunnel", encap=False, local=(_RAW_RX, 0),
        remote=(_RAW_TX, 0), local_ts=(net("10.2.0.0/16"),), remote_ts=(net("10.1.0.0/16"),),
        keymat_in=keymat, keymat_out=keymat))
    opened = backend.tun
    cpu_time = time.thread_time
    events = max(1, count // READ_BATCH)
    seal_time = open_time = 0.0
    for _ in range(events + 5):
        tun.refill()
        start = cpu_time()
        sealer.handle_tun_readable()
        middle = cpu_time()
        backend.handle_raw_readable()
        end = cpu_time()
        if _ >= 5:  # the first events warm up
            seal_time += middle - start
            open_time += end - middle
    if not isinstance(opened, _CountingTun) or opened.written != (events + 5) * READ_BATCH:
        raise SystemExit(f"sent {(events + 5) * READ_BATCH}, opened "
                         f"{getattr(opened, 'written', 0)}: {backend.drops}")
    backend.close()
    tx.close()
    per = events * READ_BATCH
    return seal_time / per * 1e6, open_time / per * 1e6


def main_raw_socket(count: int, rounds: int) -> None:
    """The ``--raw-socket`` table, in a network namespace of its own (root)."""
    if os.environ.get(_RAW_MARK) != "1":
        env = dict(os.environ, **{_RAW_MARK: "1"})
        os.execvpe("unshare", ["unshare", "-n", sys.executable, *sys.argv], env)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", f"{_RAW_TX}/8", "dev", "lo"], check=True)
    print(f"Raw ESP through the kernel (loopback of a private namespace): {READ_BATCH} TCP "
          f"segments of {PAYLOAD} octets per event, {count} packets, rounds interleaved, "
          f"best and median of {rounds}; load {os.getloadavg()[0]:.2f}")
    print(f"{'transform':<15} {'calls':<10} {'seal µs best/median':>20} "
          f"{'open µs best/median':>20}")
    for name in SEALER_TRANSFORMS:
        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for _ in range(rounds):
            for batched in (False, True):
                results[batched].append(bench_raw_socket(dict(TRANSFORMS)[name], batched,
                                                         count))
        for batched in (False, True):
            seal = sorted(r[0] for r in results[batched])
            open_ = sorted(r[1] for r in results[batched])
            print(f"{name:<15} {'mmsg' if batched else 'one each':<10} "
                  f"{seal[0]:9.2f} / {seal[len(seal) // 2]:<8.2f} "
                  f"{open_[0]:9.2f} / {open_[len(open_) // 2]:<8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packets", nargs="?", type=int, default=20000)
    parser.add_argument("--sealer-only", action="store_true",
                        help="only the sealing path, not the per-transform table")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--raw-socket", action="store_true",
                        help="only raw ESP through real sockets, sendmmsg/recvmmsg against "
                        "one call per packet (root; runs itself in a new network namespace)")
    parser.add_argument("--profile", metavar="TRANSFORM",
                        help="cProfile the sealing path (vnet reads) for this transform")
    opts = parser.parse_args()
    count = opts.packets
    table = dict(TRANSFORMS)
    if opts.raw_socket:
        main_raw_socket(count, opts.rounds)
        return
    if opts.profile:
        profile_sealer(table[opts.profile], True, count)
        return
    if not opts.sealer_only:
        print(f"ESP, {PAYLOAD}-octet payload, {count} packets, best of 3, one core")
        print(f"{'transform':<15} {'seal µs':>8} {'open µs':>8} "
              f"{'seal Mbit/s':>12} {'open Mbit/s':>12}")
        for name, args in TRANSFORMS:
            seal_us, open_us = bench(args, count)
            print(f"{name:<15} {seal_us:8.2f} {open_us:8.2f} "
                  f"{PAYLOAD * 8 / seal_us:12.0f} {PAYLOAD * 8 / open_us:12.0f}")
        print()
    print(f"Sealing path (Sealer.handle_tun_readable): {READ_BATCH} TCP segments of "
          f"{PAYLOAD} octets per event, {count} packets, best of {opts.rounds} rounds; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'transform':<15} {'reads':<6} {'µs/packet':>10} {'Mbit/s':>8}")
    for name in SEALER_TRANSFORMS:
        for vnet in (True, False):
            us = bench_sealer(table[name], vnet, count, opts.rounds)
            print(f"{name:<15} {'vnet' if vnet else 'plain':<6} {us:10.2f} "
                  f"{PAYLOAD * 8 / us:8.0f}")


if __name__ == "__main__":
    main()
