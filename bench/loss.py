"""Main Mode + Quick Mode through 30 % random loss, ikev1d against strongSwan, both roles.

Run by hand, as root (network namespaces, nftables)::

    .venv/bin/python bench/loss.py [--attempts 100] [--percent 30] [--retransmissions 10,5]

For each number of retransmissions and each initiator (ikev1d, strongSwan) a
fresh pair of namespaces with ikev1d in A and strongSwan in B, both dropping
`percent` % of the IKE datagrams they receive (nft ``numgen random``), and
`attempts` attempts, each from a clean state. The configurations run in
parallel (each in its own namespaces; an attempt mostly waits for retransmission
timers). Prints, per configuration, the attempts that established on both sides
against the count the arithmetic in ikev1d_lab.loss expects. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ikev1d_lab import netns
from ikev1d_lab.loss import LossResult, loss_pair

ROUNDS = 5  # request/response rounds in Main Mode + Quick Mode


def expected_rate(percent: int, retransmissions: int) -> float:
    """Share of attempts expected to establish: every round within its transmissions."""
    through = (1 - percent / 100) ** 2  # a request and its response both arrive
    round_fails = (1 - through) ** (retransmissions + 1)
    return float((1 - round_fails) ** ROUNDS)


def run_config(percent: int, retransmissions: int, we_initiate: bool, attempts: int,
               timeout: float, work: Path, out: dict[tuple[int, bool], tuple[LossResult, int]],
               lock: threading.Lock) -> None:
    with netns.two_hosts() as topo:
        with loss_pair(topo, work, percent, retransmissions, timeout) as pair:
            result = pair.run(attempts, we_initiate)
            drops = pair.drops
    with lock:
        out[(retransmissions, we_initiate)] = (result, drops)
        print(f"  {retransmissions} retransmissions, {result.initiator} initiating: "
              f"{result.established}/{result.attempts}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--attempts", type=int, default=100)
    parser.add_argument("--percent", type=int, default=30, help="loss at each end's input")
    parser.add_argument("--retransmissions", default="10,5",
                        help="comma-separated retransmission counts, the same on both sides")
    parser.add_argument("--timeout", type=float, default=0.25,
                        help="first retransmission after this many seconds, then doubling")
    parser.add_argument("--keep", action="store_true", help="keep the logs (kept anyway "
                        "when an attempt failed)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    counts = [int(c) for c in args.retransmissions.split(",") if c.strip()]
    netns.cleanup_stale()
    results: dict[tuple[int, bool], tuple[LossResult, int]] = {}
    lock = threading.Lock()
    started = time.monotonic()
    print(f"{args.attempts} attempts per configuration, {args.percent} % loss at each end, "
          f"first retransmission after {args.timeout} s", flush=True)
    tmp = tempfile.mkdtemp(prefix="ikev1d-loss-")
    try:
        threads = []
        for count in counts:
            for we_initiate in (True, False):
                work = Path(tmp) / f"r{count}-{'ours' if we_initiate else 'theirs'}"
                threads.append(threading.Thread(target=run_config, args=(
                    args.percent, count, we_initiate, args.attempts, args.timeout, work,
                    results, lock)))  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        failed = any(r.failures for r, _ in results.values()) or len(results) < 2 * len(counts)
        if args.keep or failed:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'retransmissions':>15} {'initiator':<11} {'established':>12} {'expected':>9} "
          f"{'p50 s':>6} {'max s':>6} {'dropped':>8}")
    for count in counts:
        for we_initiate in (True, False):
            if (count, we_initiate) not in results:
                print(f"{count:>15} {'ikev1d' if we_initiate else 'strongSwan':<11} "
                      "FAILED to run")
                continue
            r, drops = results[(count, we_initiate)]
            print(f"{count:>15} {r.initiator:<11} {r.established:>8}/{r.attempts:<3} "
                  f"{100 * expected_rate(args.percent, count):>8.1f}% "
                  f"{statistics.median(r.seconds):>6.1f} {max(r.seconds):>6.1f} {drops:>8}")
            for failure in r.failures:
                print(f"{'':>28}{failure}")
    print(f"\n{time.monotonic() - started:.0f} s in all")
    return 0 if len(results) == 2 * len(counts) else 1


if __name__ == "__main__":
    sys.exit(main())
