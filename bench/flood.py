"""A strongSwan peer establishing with ikev1d while spoofed Main Mode requests flood it.

Run by hand, as root (network namespaces, raw sockets)::

    .venv/bin/python bench/flood.py [--rate 2000] [--seconds 60] [--peer-share 0.5]

ikev1d in namespace A has the peer's static connection and a ``%any`` one; the
peer's charon in B (default retransmissions: 4 s, x1.8, 5 times) initiates,
then deletes, again and again: first for `--seconds` without a flood (the
baseline), then as long again while B also sends spoofed Main Mode message 1 at
`--rate` per second through a raw socket, a `--peer-share` of them forged from
the peer's own address and port and the rest from random sources
(ikev1d_lab.attack, ikev1d_lab.hostile). Prints the peer's setups per second and
their latency in both phases, its failures, the datagrams that arrived in A,
ikev1d's RSS before and after and its log lines during the flood.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ikev1d_lab import netns
from ikev1d_lab.hostile import Setups, arrived, hostile_target, start_attack


def _line(label: str, setups: Setups, seconds: float) -> str:
    lat = sorted(setups.seconds)
    p50 = statistics.median(lat) if lat else float("nan")
    worst = lat[-1] if lat else float("nan")
    return (f"{label:<12} {len(setups.seconds):>4} setups in {seconds:5.1f} s = "
            f"{len(setups.seconds) / seconds:5.2f}/s, latency p50 {p50:.2f} s, max {worst:.2f} s, "
            f"{len(setups.failures)} failed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--peer-share", type=float, default=0.5)
    parser.add_argument("--log-level", default="info", help="ikev1d's")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
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
            log = target.ours.log_text()
            print(f"flood: {sent.strip() or errors.strip()}; "
                  f"{arrived(topo.a) - arrived_before} IKE datagrams arrived in A")
            print(_line("baseline", baseline, baseline_s))
            print(_line("under flood", flooded, flooded_s))
            for failure in flooded.failures:
                print(f"  failed: {failure}")
            print(f"ikev1d RSS {rss_before / 1024:.1f} MiB before the flood, "
                  f"{rss_after / 1024:.1f} MiB after (+{(rss_after - rss_before) / 1024:.1f}); "
                  f"{lines} log lines during it; tracebacks: {log.count('Traceback')}; "
                  f"alive: {target.alive()}")
    return 0 if not flooded.failures and target.alive() else 1


if __name__ == "__main__":
    sys.exit(main())
