"""Mutated real messages to a running ikev1d's UDP 500 and 4500, then a strongSwan peer.

Run by hand, as root (network namespaces)::

    .venv/bin/python bench/udp_fuzz.py [--count 100000] [--rate 0] [--seed 1]

ikev1d in namespace A (the peer's static connection and a ``%any`` one, as in
bench/flood.py); from B, `--count` mutations of the datagrams of a real Main
Mode + Quick Mode + Delete (ikev1d_lab.attack: bytes flipped, truncated, lengths,
payload and exchange types, flags, cookies and message IDs changed, messages
spliced, junk appended, garbage), half to UDP 500 and half to UDP 4500 (mostly
behind the non-ESP marker). Then the peer's charon initiates. Prints what was
sent and what arrived, ikev1d's RSS before and after, its log lines (and the
most frequent kinds), internal errors and tracebacks, and whether the peer got
in. Exit status 0 only when the peer established and ikev1d stayed up without an
internal error.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ikev1d_lab import netns
from ikev1d_lab.hostile import arrived, hostile_target, start_attack, udp_counters


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="datagrams per second (0: as fast as the sender goes)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    netns.cleanup_stale()
    with netns.two_hosts() as topo, tempfile.TemporaryDirectory(prefix="ikev1d-udpfuzz-") as tmp:
        with hostile_target(topo, Path(tmp)) as target:
            rss_before = target.rss_kib()
            lines_before = target.log_lines()
            arrived_before = arrived(topo.a)
            udp_before = udp_counters(topo.a)
            began = time.monotonic()
            attack = start_attack(topo.b, "fuzz", "--count", str(args.count), "--rate",
                                  str(args.rate), "--seed", str(args.seed))
            sent, errors = attack.communicate(timeout=3600)
            seconds = time.monotonic() - began
            time.sleep(2.0)  # the daemon works through its socket queue
            got = arrived(topo.a) - arrived_before
            udp_after = udp_counters(topo.a)
            overflow = udp_after.get("RcvbufErrors", 0) - udp_before.get("RcvbufErrors", 0)
            after = target.establish_until(time.monotonic())
            rss_after = target.rss_kib()
            log = target.ours.log_text().splitlines()[lines_before:]
            internal = sum(1 for line in log if "internal error" in line)
            tracebacks = sum(1 for line in log if "Traceback" in line)
            alive = target.alive()
            print(f"{sent.strip() or errors.strip()}; {got} arrived in A "
                  f"({got / seconds:.0f}/s), {got - overflow} reached ikev1d's sockets, "
                  f"{overflow} dropped by the kernel (receive buffer full)")
            print(f"ikev1d RSS {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB "
                  f"after (+{(rss_after - rss_before) / 1024:.1f}); {len(log)} log lines, "
                  f"{internal} internal errors, {tracebacks} tracebacks, alive: {alive}")
            kinds = collections.Counter(
                re.sub(r"[0-9a-f]{8,}|\d+", "#", line.split(" ", 2)[-1])[:100] for line in log)
            for kind, n in kinds.most_common(8):
                print(f"  {n:>6}x {kind}")
            if after.failures:
                print(f"the peer did NOT establish afterwards: {after.failures}")
            else:
                print(f"the peer established afterwards in {after.seconds[0]:.2f} s")
    return 0 if alive and not internal and not tracebacks and not after.failures else 1


if __name__ == "__main__":
    sys.exit(main())
