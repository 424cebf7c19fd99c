"""A strongSwan peer establishing with ikev1d while spoofed Main Mode requests flood it.

Run by hand, as root (network namespaces, raw sockets)::

    .venv/bin/python bench/flood.py [--rate 2000] [--seconds 60] [--peer-share 0.5]
    .venv/bin/python bench/flood.py --repeat [--runs 3] [--seconds 14] [--keep DIR]

ikev1d in namespace A has the peer's static connection and a ``%any`` one; the
peer's charon in B (default retransmissions: 4 s, x1.8, 5 times) initiates,
then deletes, again and again: first for `--seconds` without a flood (the
baseline), then as long again while B also sends spoofed Main Mode message 1 at
`--rate` per second through a raw socket, a `--peer-share` of them forged from
the peer's own address and port and the rest from random sources
(ikev1d_lab.attack, ikev1d_lab.hostile). Prints the peer's setups per second and
their latency in both phases, its failures, the datagrams that arrived in A,
ikev1d's RSS before and after and its log lines during the flood.

``--repeat``: no baseline; the peer establishes once (a source that completed a
handshake before, as a real site-to-site peer is), then initiates back to back
from the start of a `--seconds` flood until its end, each attempt waited for
over charon's whole retransmission budget (165 s), `--runs` times in fresh
namespaces. Prints every attempt: when it began (seconds into the flood), how
long it took and its outcome. A lockout is an attempt that uses up charon's
budget.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ikev1d_lab import netns
from ikev1d_lab.hostile import (
    CHILD,
    CONNECTION,
    Setups,
    Target,
    arrived,
    hostile_target,
    start_attack,
    udp_counters,
)


def _line(label: str, setups: Setups, seconds: float) -> str:
    lat = sorted(setups.seconds)
    p50 = statistics.median(lat) if lat else float("nan")
    worst = lat[-1] if lat else float("nan")
    return (f"{label:<12} {len(setups.seconds):>4} setups in {seconds:5.1f} s = "
            f"{len(setups.seconds) / seconds:5.2f}/s, latency p50 {p50:.2f} s, max {worst:.2f} s, "
            f"{len(setups.failures)} failed")


def _attempts_during(target: Target, flood_began: float,
                     end: float) -> list[tuple[float, float, str]]:
    """The peer initiates back to back until `end`: (began, seconds, outcome) per attempt,
    `began` counted from the flood's start."""
    attempts: list[tuple[float, float, str]] = []
    while time.monotonic() < end:
        started = time.monotonic()
        ok, out = target.theirs.initiate(CHILD, CONNECTION, timeout=180)
        took = time.monotonic() - started
        outcome = "established" if ok else (out.strip().splitlines() or ["?"])[-1]
        attempts.append((started - flood_began, took, outcome))
        target.theirs.terminate(ike=CONNECTION, timeout=5)
    return attempts


def _port_queue_kib(ns: netns.Namespace, port: int) -> int:
    """Bytes waiting in the receive queues of UDP sockets bound to `port` in `ns`
    (rx_queue of /proc/net/udp, which counts each datagram's buffer overhead too), in KiB."""
    total = 0
    for line in ns.run(["cat", "/proc/net/udp"]).stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 4 and int(fields[1].rsplit(":", 1)[1], 16) == port:
            total += int(fields[4].split(":")[1], 16)
    return total // 1024


class _QueueSampler(threading.Thread):
    """Samples the receive queue of port 500 in A twice a second while the flood runs."""

    def __init__(self, ns: netns.Namespace, flood: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.ns = ns
        self.flood = flood
        self.samples: list[int] = []

    def run(self) -> None:
        while self.flood.poll() is None:
            self.samples.append(_port_queue_kib(self.ns, 500))
            time.sleep(0.5)


def _repeat(args: argparse.Namespace) -> int:
    """The repeated-attempt mode: `--runs` floods, the peer initiating throughout each."""
    lockouts = 0
    took_all: list[float] = []
    for run in range(1, args.runs + 1):
        netns.cleanup_stale()
        load = os.getloadavg()[0]
        extra = f"half_open_total = {args.half_open_total}" if args.half_open_total else ""
        with netns.two_hosts() as topo, tempfile.TemporaryDirectory(prefix="ikev1d-flood-") as tmp:
            with hostile_target(topo, Path(tmp), extra_daemon=extra,
                                log_level=args.log_level) as target:
                before = target.establish_until(time.monotonic())
                drops_before = [udp_counters(ns).get("RcvbufErrors", 0) for ns in (topo.a, topo.b)]
                attack = start_attack(topo.b, "flood", "--rate", str(args.rate), "--seconds",
                                      str(args.seconds), "--peer-share", str(args.peer_share),
                                      "--seed", str(run))
                began = time.monotonic()
                sampler = _QueueSampler(topo.a, attack)
                sampler.start()
                attempts = _attempts_during(target, began, began + args.seconds)
                sent, errors = attack.communicate(timeout=args.seconds + 60)
                sampler.join()
                queue = sampler.samples or [0]
                tracebacks = target.tracebacks()
                alive = target.alive()
                drops = [udp_counters(ns).get("RcvbufErrors", 0) - n
                         for ns, n in zip((topo.a, topo.b), drops_before, strict=True)]
                if args.keep is not None:
                    keep = args.keep / f"run{run}"
                    keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(target.ours.log_path, keep / "ikev1d.log")
                    shutil.copy(target.theirs.log_path, keep / "charon.log")
        failed = [a for a in attempts if a[2] != "established"]
        lockouts += len(failed) + (0 if alive and not before.failures else 1)
        print(f"run {run}: load {load:.1f} -> {os.getloadavg()[0]:.1f}; flood: "
              f"{sent.strip() or errors.strip()}; {len(attempts) - len(failed)} of "
              f"{len(attempts)} attempts established; UDP receive buffer drops: A {drops[0]}, "
              f"B {drops[1]}; port 500 queue in A: mean {statistics.mean(queue):.0f} KiB, max "
              f"{max(queue)} KiB; tracebacks: {tracebacks}; "
              f"alive: {alive}")
        for began_s, took, outcome in attempts:
            print(f"  attempt at {began_s:5.1f} s: {took:6.2f} s, {outcome}")
        took_all += [a[1] for a in attempts if a[2] == "established"]
        sys.stdout.flush()
    took_all.sort()
    if took_all:
        print(f"{args.runs} runs: {len(took_all)} established, {lockouts} failed; latency p50 "
              f"{statistics.median(took_all):.2f} s, p90 {took_all[int(0.9 * len(took_all))]:.2f} "
              f"s, max {took_all[-1]:.2f} s; load {os.getloadavg()[0]:.1f}")
    return 0 if not lockouts else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=None,
                        help="flood duration (default 60, with --repeat 14)")
    parser.add_argument("--peer-share", type=float, default=0.5)
    parser.add_argument("--log-level", default="info", help="ikev1d's")
    parser.add_argument("--repeat", action="store_true",
                        help="attempts back to back during the flood, each to its end")
    parser.add_argument("--runs", type=int, default=1, help="with --repeat")
    parser.add_argument("--half-open-total", type=int, default=0,
                        help="ikev1d's [daemon] half_open_total (0: its default)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="with --repeat: copy both logs of each run here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.repeat:
        args.seconds = args.seconds or 14.0
        return _repeat(args)
    args.seconds = args.seconds or 60.0
    netns.cleanup_stale()
    with netns.two_hosts() as topo, tempfile.TemporaryDirectory(prefix="ikev1d-flood-") as tmp:
        with hostile_target(topo, Path(tmp), log_level=args.log_level) as target:
            began = time.monotonic()
            baseline = target.establish_until(began + args.seconds)
            baseline_s = time.monotonic() - began
            rss_before = target.rss_kib()
            lines_before = target.log_lines()
            arrived_before = arrived(topo.a)
            attack = start_attack(topo.b, "flood", "--rate", str(args.rate), "--seconds",
                                  str(args.seconds), "--peer-share", str(args.peer_share))
            began = time.monotonic()
            flooded = target.establish_until(began + args.seconds)
            flooded_s = time.monotonic() - began
            sent, errors = attack.communicate(timeout=args.seconds + 60)
            rss_after = target.rss_kib()
            lines = target.log_lines() - lines_before
            tracebacks = target.tracebacks()
            alive = target.alive()  # inside the block: it stops the daemon
            print(f"flood: {sent.strip() or errors.strip()}; "
                  f"{arrived(topo.a) - arrived_before} IKE datagrams arrived in A")
            print(_line("baseline", baseline, baseline_s))
            print(_line("under flood", flooded, flooded_s))
            for failure in flooded.failures:
                print(f"  failed: {failure}")
            print(f"ikev1d RSS {rss_before / 1024:.1f} MiB before the flood, "
                  f"{rss_after / 1024:.1f} MiB after (+{(rss_after - rss_before) / 1024:.1f}); "
                  f"{lines} log lines during it; tracebacks: {tracebacks}; alive: {alive}")
    return 0 if alive and not tracebacks and not flooded.failures else 1


if __name__ == "__main__":
    sys.exit(main())
