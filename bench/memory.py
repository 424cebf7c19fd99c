"""Where an established tunnel's bytes are, in process: engine + userspace SAD, no root.

Run by hand::

    .venv/bin/python bench/memory.py [--tunnels N] [--warmup W] [--top K] [--rss-only]

One responder Engine (the scale.py configuration: PSK, ecp256, any initiator ID,
no DPD, long lifetimes) and a UserspaceBackend on in-memory TUN/raw/route fakes,
so that every IPsec SA is installed in the SAD with its ESP contexts exactly as
the daemon does it.  Each tunnel is a fresh initiator Engine with its own ID
(``t1`` .. ``tN`` as in scale.py), Main Mode + one Quick Mode, datagrams handed
over in memory; the initiator is dropped afterwards.

Two passes, each after W warm-up tunnels (caches, interned strings, the first
allocation of every table):

* RSS: VmRSS growth over N more tunnels, divided by N (what the process pays,
  OpenSSL's heap included), without tracemalloc;
* tracemalloc: the Python allocations still held after N more tunnels, per
  tunnel, grouped by source line (``--top`` lines), so the share of each object
  is visible.  RSS minus the tracemalloc total is memory Python's allocator does
  not see: mostly OpenSSL's cipher and HMAC contexts.

With ``--contexts`` the first pass then builds the cipher and HMAC contexts of
every SA (what traffic in every tunnel would do) and lets the data plane's idle
sweep drop them: the memory an idle SA saves and what building them costs (the
first packet after an idle period pays it once).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

from benchlib import NullRoutes

from ikev1d.config import parse_config
from ikev1d.dataplane.userspace import UserspaceBackend
from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished

INITIATOR = "192.0.2.1"
RESPONDER = "192.0.2.2"
PSK = "bench-memory-shared-secret"


class _Tun:
    name = "memtun0"

    def fileno(self) -> int:
        return -1

    def read(self) -> bytes | None:
        return None

    def write(self, packet: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class _Raw:
    def fileno(self) -> int:
        return -1

    def recv(self) -> tuple[bytes, str] | None:
        return None

    def send(self, esp: bytes, local: str, remote: str) -> None:
        pass

    def close(self) -> None:
        pass


def responder_config() -> str:
    return f"""
[daemon]
half_open_per_peer = 1000000
half_open_total = 1000000

[connections.bench]
local_addrs = ["{RESPONDER}"]
remote_addrs = ["{INITIATOR}"]
proposals = ["aes128-sha256-ecp256"]
dpd_delay = "0s"
rekey_time = "24h"

[connections.bench.local]
auth = "psk"
id = "{RESPONDER}"

[connections.bench.remote]
auth = "psk"
id = "%any"

[connections.bench.children.net]
local_ts = ["10.2.0.0/24"]
remote_ts = ["10.1.0.0/24"]
esp_proposals = ["aes128-sha256"]
rekey_time = "8h"

[secrets.bench]
secret = "{PSK}"
ids = ["{INITIATOR}"]
"""


def initiator_config(i: int) -> str:
    return f"""
[daemon]
dataplane = "none"

[connections.bench]
local_addrs = ["{INITIATOR}"]
remote_addrs = ["{RESPONDER}"]
proposals = ["aes128-sha256-ecp256"]
dpd_delay = "0s"
rekey_time = "24h"

[connections.bench.local]
auth = "psk"
id = "t{i}.bench.example"

[connections.bench.remote]
auth = "psk"
id = "{RESPONDER}"

[connections.bench.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
esp_proposals = ["aes128-sha256"]
rekey_time = "8h"

[secrets.bench]
secret = "{PSK}"
ids = ["{RESPONDER}"]
"""


class Responder:
    def __init__(self, base: Path) -> None:
        self.engine = Engine(parse_config(responder_config(), base_dir=base),
                             random_bytes=os.urandom, wall_clock=time.time)
        self.backend = UserspaceBackend(_Tun(), _Raw(), NullRoutes("10.2.0.1"))
        self.established = 0
        self.now = time.monotonic()
        self.cpu: list[float] = []
        """Responder CPU seconds per tunnel (its engine and data plane calls only)."""

    def pump(self) -> list[tuple[bytes, tuple[str, int], tuple[str, int]]]:
        out = [(d.data, d.remote, d.local) for d in self.engine.datagrams_to_send()]
        for event in self.engine.events():
            if isinstance(event, ChildSaEstablished):
                self.backend.install(event)
                self.established += 1
            elif isinstance(event, ChildSaDeleted):
                self.backend.remove(event)
        return out


def one_tunnel(responder: Responder, i: int, base: Path) -> None:
    initiator = Engine(parse_config(initiator_config(i), base_dir=base),
                       random_bytes=os.urandom, wall_clock=time.time)
    now = responder.now
    initiator.initiate("bench", None, now)
    cpu = 0.0
    for _ in range(20):
        moved = False
        for dgram in initiator.datagrams_to_send():
            moved = True
            began = time.process_time()
            responder.engine.receive_datagram(dgram.data, dgram.remote, dgram.local, now)
            replies = responder.pump()
            cpu += time.process_time() - began
            for data, remote, local in replies:
                initiator.receive_datagram(data, remote, local, now)
        initiator.events()
        if not moved:
            break
    # The responder's timers run as the daemon's would (retransmission budgets ending).
    began = time.process_time()
    responder.engine.handle_timer(now)
    responder.pump()
    responder.cpu.append(cpu + time.process_time() - began)


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class GcTimer:
    """Time spent in the cyclic garbage collector, per generation, while running."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.runs = [0, 0, 0]
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.process_time()
        else:
            generation = info["generation"]
            self.seconds[generation] += time.process_time() - self._began
            self.runs[generation] += 1


def run(tunnels: int, warmup: int, trace: bool, top: int, contexts: bool) -> int:
    base = Path(".")
    collector = GcTimer()
    gc.callbacks.append(collector)
    responder = Responder(base)
    for i in range(1, warmup + 1):
        one_tunnel(responder, i, base)
    # Past every retransmission budget of the warm-up tunnels.
    responder.now += 120.0
    responder.engine.handle_timer(responder.now)
    responder.pump()
    gc.collect()
    if trace:
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
    rss_before = vm_rss_kib()
    for i in range(warmup + 1, warmup + tunnels + 1):
        one_tunnel(responder, i, base)
    responder.now += 120.0
    responder.engine.handle_timer(responder.now)
    responder.pump()
    gc.collect()
    rss_after = vm_rss_kib()
    held = len(responder.backend.sad)
    if responder.established != warmup + tunnels or held != warmup + tunnels:
        print(f"FAILED: {responder.established} established, {held} in the SAD, "
              f"{warmup + tunnels} wanted")
        return 1
    label = "tracemalloc on" if trace else "no tracemalloc"
    if not trace:
        part = min(1000, max(1, len(responder.cpu) // 10))
        first = 1000 * sum(responder.cpu[:part]) / part
        last = 1000 * sum(responder.cpu[-part:]) / part
        print(f"responder CPU ms per tunnel, first / last {part} of {len(responder.cpu)}: "
              f"{first:.3f} / {last:.3f} (x{last / first:.2f}); gc {gc.get_threshold()}, "
              f"load {os.getloadavg()[0]:.1f}")
        print(f"cyclic GC over all {len(responder.cpu)} tunnels (both engines): runs per "
              f"generation {collector.runs}, CPU s {[round(x, 2) for x in collector.seconds]}")
    print(f"RSS ({label}): {(rss_after - rss_before) * 1024 / tunnels:,.0f} bytes per tunnel "
          f"over {tunnels} tunnels after {warmup} ({rss_before} -> {rss_after} KiB)")
    if trace:
        after = tracemalloc.take_snapshot()
        stats = after.compare_to(before, "lineno")
        total = sum(s.size_diff for s in stats)
        print(f"tracemalloc: {total / tunnels:,.0f} bytes per tunnel still held, by line:")
        for s in stats[:top]:
            frame = s.traceback[0]
            name = frame.filename
            for marker in ("/src/", "/lib/python"):
                if marker in name:
                    name = name[name.index(marker) + 1:]
            print(f"  {s.size_diff / tunnels:>8,.0f} B {s.count_diff / tunnels:>6.2f} blocks"
                  f"  {name}:{frame.lineno}")
        tracemalloc.stop()
    gc.callbacks.remove(collector)
    if contexts:
        # What the contexts cost: build them in every SA (as traffic in every tunnel
        # would), then let the data plane's idle sweep drop them again.
        entries = list(responder.backend.sad)
        gc.collect()
        rss_cold = vm_rss_kib()
        began = time.perf_counter()
        sas = [sa for e in entries for sa in (e.inbound, e.outbound) if sa is not None]
        for sa in sas:
            sa.warm_up()
        built = time.perf_counter() - began
        gc.collect()
        rss_warm = vm_rss_kib()
        for sa in sas:  # two sweeps without packets in between: idle
            sa.idle_mark = sa.counters.packets
        cooled = responder.backend.sad.cool_idle()
        gc.collect()
        print(f"cipher/HMAC contexts in all {len(entries)} SA pairs: "
              f"{(rss_warm - rss_cold) * 1024 / len(entries):,.0f} bytes per pair "
              f"(RSS {rss_cold} -> {rss_warm} KiB); building them "
              f"{built * 1e6 / len(entries):.1f} µs per pair (both directions, the "
              f"first packet after idle pays one); {cooled} cooled -> RSS {vm_rss_kib()} KiB")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tunnels", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rss-only", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--contexts", action="store_true",
                        help="then build every SA's cipher contexts and drop them again")
    args = parser.parse_args(argv)
    logging.getLogger("ikev1d").setLevel(logging.WARNING)
    rc = run(args.tunnels, args.warmup, False, args.top, args.contexts)
    if rc == 0 and not args.rss_only:
        rc = run(args.tunnels, args.warmup, True, args.top, False)
    return rc


if __name__ == "__main__":
    sys.exit(main())
