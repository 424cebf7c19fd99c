"""The daemon's fixed cost per wakeup, and what grows with the SA count: no strongSwan.

Run by hand (root: it makes its own network namespace)::

    .venv/bin/python bench/wakeup.py [--sas N] [--count C] [--rate R] [--batch B]
        [--kinds junk,mm1] [--dataplane userspace|none] [--profile] [--floor]
        [--loop asyncio|uvloop] [--gc tuned|default]

The real daemon (``daemon/runtime.py``: the UDP transport with its batched,
budgeted receive, the engine's timer, the control socket, the data plane's
periodic work, logging at info to a file) runs in this process, in a network
namespace of its own, on 192.0.2.2. A sender process (192.0.2.1) offers it C
IKE datagrams at a fixed rate R per second, each kind twice with the same
rate and count:

* ``gap``: one datagram, then a pause of 1/R: the daemon goes to sleep and
  wakes for every datagram (the arrival pattern of a slow initiator);
* ``batch``: B datagrams back to back, then a pause of B/R: one wakeup reads
  B datagrams.

Kinds: ``junk`` (an ISAKMP header with a responder cookie nobody knows: the
engine drops it early, with a rate-limited log line) and ``mm1`` (a valid Main
Mode message 1, each with a fresh initiator cookie: the daemon creates a
half-open SA and answers with message 2).

For each run it prints the daemon process's CPU per datagram (utime+stime
over the sending window, and the same with the idle CPU of an equally long
window without datagrams taken off), the daemon's voluntary context switches
per datagram (its sleeps: about 1 per datagram in ``gap`` mode), and the
ratio gap/batch: what a wakeup costs on top of the datagram's own work is
(gap - batch) / (1 - 1/B).

``--sas N`` first establishes N tunnels (Main Mode + Quick Mode, PSK ecp256, as
in bench/engine_cost.py: an initiator engine each, datagrams handed over in
memory) in the running daemon, installed into its data plane, and then runs
the same datagrams: what a wakeup or a timer tick costs with N SAs held, and
the idle CPU per second with them. ``--profile`` runs each window under
cProfile and prints the top functions (inflated, but it shows where a
wakeup's time goes: the selector, the loop's bookkeeping, our reader
callback, the engine, the timer). ``--floor`` sends the same ``junk`` to a bare
asyncio reader instead of the daemon: the kernel's and the event loop's share
of a wakeup. ``--loop uvloop`` runs the daemon (or the floor's reader) on uvloop
instead of the standard library's loop, to measure what a faster loop would
change (uvloop is not a dependency of ikev1d); ``--gc default`` runs the daemon
with Python's collector settings instead of the daemon's own
(``DaemonOptions.tune_gc``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib
import logging
import os
import pstats
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine_cost import GROUPS, INITIATOR, RESPONDER, config_text

from ikev1d.config import parse_config
from ikev1d.daemon.runtime import Daemon, DaemonOptions
from ikev1d.engine import Engine
from ikev1d.engine.api import Datagram

_NETNS_MARK = "IKEV1D_WAKEUP_NETNS"

SENDER = r"""
import os, socket, sys, time
target, count, rate, batch, start, path = sys.argv[1:7]
count, rate, batch, start = int(count), float(rate), int(batch), float(start)
template = open(path, "rb").read()
junk = template[8:9] == b"J"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.0.2.1", 500))
dest = (target, 500)
period = batch / rate
cookies = [os.urandom(8) for _ in range(count)]
while time.monotonic() < start:
    time.sleep(min(0.01, max(start - time.monotonic(), 0)))
sent = 0
due = start
while sent < count:
    for _ in range(min(batch, count - sent)):
        s.sendto(cookies[sent] + template[8:], dest)
        sent += 1
    due += period
    left = due - time.monotonic()
    if left > 0:
        time.sleep(left)
"""


@dataclass
class Sample:
    cpu: float
    switches: int
    gc_s: float


class GcClock:
    """Wall time spent in the cyclic garbage collector (gc.callbacks)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._began


GC_CLOCK = GcClock()


def sample() -> Sample:
    t = resource.getrusage(resource.RUSAGE_SELF)  # microseconds, not clock ticks
    switches = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                switches = int(line.split()[1])
    return Sample(t.ru_utime + t.ru_stime, switches, GC_CLOCK.total)


def in_own_namespace() -> None:
    """Re-run in a network namespace of our own with 192.0.2.1 and .2 on lo."""
    if os.environ.get(_NETNS_MARK):
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", "192.0.2.1/32", "dev", "lo"],
                    ["ip", "addr", "add", "192.0.2.2/32", "dev", "lo"]):
            subprocess.run(cmd, check=True)
        return
    unshare = shutil.which("unshare")
    if unshare is None:
        sys.exit("needs unshare(1) (util-linux)")
    os.environ[_NETNS_MARK] = "1"
    os.execv(unshare, [unshare, "-n", sys.executable, *sys.argv])


def daemon_config(folder: Path, dataplane: str, dpd: bool = False) -> str:
    group = GROUPS[1]
    text = config_text(RESPONDER, INITIATOR, "10.2.0.0/24", "10.1.0.0/24", group, "psk",
                       "responder")
    if not dpd:  # as in scale.py: the generator's connections do not ask for DPD
        text = text.replace("[connections.bench]\n", '[connections.bench]\ndpd_delay = "0s"\n')
    return text.replace(
        'dataplane = "none"\n',
        f'dataplane = "{dataplane}"\nlisten = ["{RESPONDER}"]\nlog_level = "info"\n')


def initiator_config(i: int) -> str:
    # The same traffic selectors for every tunnel, as in handshakes.py and scale.py.
    return config_text(INITIATOR, RESPONDER, "10.1.0.0/24", "10.2.0.0/24", GROUPS[1], "psk",
                       f"t{i}")


def mm1_template(folder: Path) -> bytes:
    engine = Engine(parse_config(initiator_config(1), base_dir=folder), random_bytes=os.urandom,
                    wall_clock=time.time)
    engine.initiate("bench", None, time.monotonic())
    return engine.datagrams_to_send()[0].data


def junk_template() -> bytes:
    # An ISAKMP header (RFC 2408 section 3.1) with a responder cookie of ours that
    # no SA has: next payload none, version 1.0, Informational, length 28.
    return bytes(8) + b"J" * 8 + bytes([0, 0x10, 5, 0]) + bytes(4) + (28).to_bytes(4, "big")


async def establish(daemon: Daemon, tunnels: int, folder: Path) -> int:
    """N tunnels from in-memory initiator engines into the running daemon."""
    udp = daemon.udp
    replies: list[Datagram] = []

    def capture(datagram: Datagram) -> bool:
        replies.append(datagram)
        return True

    udp.send_ike = capture  # type: ignore[method-assign]
    established = 0
    try:
        for i in range(1, tunnels + 1):
            initiator = Engine(parse_config(initiator_config(i), base_dir=folder),
                               random_bytes=os.urandom, wall_clock=time.time)
            initiator.initiate("bench", None, daemon.now())
            for _ in range(20):
                out = initiator.datagrams_to_send()
                if not out:
                    break
                for d in out:
                    daemon._on_ike(d.data, d.remote, d.local)
                    for r in replies:
                        initiator.receive_datagram(r.data, r.remote, r.local, daemon.now())
                    replies.clear()
            established += sum(1 for e in initiator.events()
                               if type(e).__name__ == "ChildSaEstablished")
            if i % 200 == 0:
                await asyncio.sleep(0)  # let the loop run its timers and readers
            if i % 1000 == 0:
                print(f"  {i} tunnels established", flush=True)
    finally:
        del udp.send_ike
    return established


async def window(seconds: float, profiler: cProfile.Profile | None) -> tuple[Sample, Sample]:
    before = sample()
    if profiler is not None:
        profiler.enable()
    await asyncio.sleep(seconds)
    if profiler is not None:
        profiler.disable()
    return before, sample()


async def run_case(template: Path, mode: str, count: int, rate: float, batch: int,
                   profiler: cProfile.Profile | None) -> tuple[float, float, float]:
    """(CPU seconds, voluntary switches, seconds in the garbage collector) of the
    daemon over one sending window."""
    burst = 1 if mode == "gap" else batch
    start = time.monotonic() + 0.5
    sender = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, RESPONDER, str(count), str(rate), str(burst), str(start),
        str(template))
    await asyncio.sleep(max(start - time.monotonic() - 0.02, 0))
    duration = count / rate + 0.1
    before, after = await window(duration, profiler)
    await sender.wait()
    return after.cpu - before.cpu, after.switches - before.switches, after.gc_s - before.gc_s


def print_profile(profiler: cProfile.Profile, title: str, top: int) -> None:
    print(f"\n--- cProfile: {title} (top {top} by internal time) ---")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)


async def floor(args: argparse.Namespace) -> int:
    """The same arrivals read by a bare asyncio reader (recvmsg until EAGAIN, nothing
    else) in place of the daemon: what the kernel and the event loop cost per wakeup."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((RESPONDER, 500))
    sock.setblocking(False)

    def readable() -> None:
        while True:
            try:
                sock.recvmsg(65535, 64)
            except BlockingIOError:
                return

    loop = asyncio.get_running_loop()
    loop.add_reader(sock.fileno(), readable)
    try:
        with tempfile.TemporaryDirectory(prefix="ikev1d-wakeup-") as tmp:
            path = Path(tmp) / "junk.bin"
            path.write_bytes(junk_template())
            print(f"load average {os.getloadavg()[0]:.2f}; a bare reader on the {args.loop}"
                  f" loop; {args.count} datagrams at {args.rate:g}/s per run, batch {args.batch}")
            for mode in ("gap", "batch"):
                cpu, switches, _ = await run_case(path, mode, args.count, args.rate, args.batch,
                                                  None)
                print(f"floor  {mode:<6} {1e6 * cpu / args.count:>12.1f} us/datagram "
                      f"{switches / args.count:>6.2f} sleeps/datagram", flush=True)
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    return 0


async def bench(args: argparse.Namespace) -> int:
    if args.floor:
        return await floor(args)
    with tempfile.TemporaryDirectory(prefix="ikev1d-wakeup-") as tmp:
        folder = Path(tmp)
        (folder / "ikev1d.toml").write_text(daemon_config(folder, args.dataplane, args.dpd))
        (folder / "ikev1d.toml").chmod(0o600)
        logging.basicConfig(filename=folder / "ikev1d.log", level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        daemon = Daemon(DaemonOptions(str(folder / "ikev1d.toml"), str(folder / "ikev1d.sock"),
                                      linger_s=0.05, tune_gc=args.gc == "tuned"),
                        install_signal_handlers=False)
        await daemon.start()
        try:
            if args.sas:
                began = time.monotonic()
                done = await establish(daemon, args.sas, folder)
                print(f"established {done}/{args.sas} tunnels in "
                      f"{time.monotonic() - began:.0f} s", flush=True)
                if done != args.sas:
                    return 1
            templates = {"junk": junk_template(), "mm1": mm1_template(folder)}
            paths = {}
            for kind, data in templates.items():
                paths[kind] = folder / f"{kind}.bin"
                paths[kind].write_bytes(data)
            await asyncio.sleep(1.0)
            seconds = args.count / args.rate + 0.1
            idle_before, idle_after = await window(seconds, None)
            idle_cpu = idle_after.cpu - idle_before.cpu
            print(f"load average {os.getloadavg()[0]:.2f}; SAs held {args.sas}; data plane "
                  f"{args.dataplane}; {args.count} datagrams at {args.rate:g}/s per run, "
                  f"batch {args.batch}; loop {args.loop}; collector {args.gc}")
            print(f"idle: {1000 * idle_cpu / seconds:.2f} ms CPU per second, "
                  f"{(idle_after.switches - idle_before.switches) / seconds:.1f} sleeps per s, "
                  f"{1000 * (idle_after.gc_s - idle_before.gc_s) / seconds:.2f} ms per s in the"
                  f" garbage collector")
            print(f"{'kind':<6} {'mode':<6} {'us/datagram':>12} {'net of idle':>12} "
                  f"{'sleeps/datagram':>16} {'gc us/dgram':>10}")
            kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
            for kind in kinds:
                results = {}
                for mode in ("gap", "batch"):
                    profiler = cProfile.Profile() if args.profile else None
                    cpu, switches, gc_s = await run_case(paths[kind], mode, args.count,
                                                         args.rate, args.batch, profiler)
                    results[mode] = cpu
                    print(f"{kind:<6} {mode:<6} {1e6 * cpu / args.count:>12.1f} "
                          f"{1e6 * (cpu - idle_cpu) / args.count:>12.1f} "
                          f"{switches / args.count:>16.2f} {1e6 * gc_s / args.count:>10.1f}",
                          flush=True)
                    if profiler is not None:
                        print_profile(profiler, f"{kind} {mode}", args.top)
                    await asyncio.sleep(0.5)
                per_wakeup = (results["gap"] - results["batch"]) / (1 - 1 / args.batch)
                print(f"{kind:<6} gap/batch {results['gap'] / max(results['batch'], 1e-9):.2f};"
                      f" a wakeup costs about {1e6 * per_wakeup / args.count:.1f} us beyond its"
                      f" datagram", flush=True)
            print(f"load average {os.getloadavg()[0]:.2f} at the end")
        finally:
            await daemon.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sas", type=int, default=0, help="tunnels to hold first")
    parser.add_argument("--count", type=int, default=3000, help="datagrams per run")
    parser.add_argument("--rate", type=float, default=500.0, help="datagrams per second")
    parser.add_argument("--batch", type=int, default=32, help="datagrams per burst (batch)")
    parser.add_argument("--kinds", default="junk,mm1")
    parser.add_argument("--dataplane", default="userspace", choices=("userspace", "none"))
    parser.add_argument("--dpd", action="store_true",
                        help="DPD every 30 s on the held tunnels (unanswered: no peer)")
    parser.add_argument("--floor", action="store_true",
                        help="a bare asyncio reader in place of the daemon")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"),
                        help="the event loop: uvloop (not a dependency: pip install uvloop) "
                             "only to measure what a faster loop would change")
    parser.add_argument("--gc", default="tuned", choices=("tuned", "default"),
                        help="the daemon's collector settings (DaemonOptions.tune_gc) or "
                             "Python's defaults")
    args = parser.parse_args(argv)
    in_own_namespace()
    if args.loop == "uvloop":
        try:
            # By name: not a dependency, so neither installed nor typed everywhere.
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            sys.exit("--loop uvloop: uvloop is not installed (.venv/bin/pip install uvloop)")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(bench(args))
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
