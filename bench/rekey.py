"""Renewal under traffic: UDP at a fixed rate through the tunnel while its SAs are renewed.

Run by hand, as root::

    .venv/bin/python bench/rekey.py [--mbps 100] [--seconds 40] [--peers ikev1d,strongswan]

For each peer (a second ikev1d, or charon with kernel-libipsec), on the two-host
topology: three baseline runs with long lifetimes (nothing renewed) and one run
in which ikev1d on A renews Phase 2 every ``--child-life`` and Phase 1 every
``--ike-life`` seconds, in the order baseline, renewals, baseline, baseline (so a
change in the machine's load falls on both kinds). Each run sends ``--mbps`` of
``--size``-octet UDP datagrams from 10.1.0.1 to 10.2.0.1 for ``--seconds``.

It passes when the renewal run counted at least 10 Phase 2 and 3 Phase 1
renewals, lost at most the worst baseline's share + 0.1 % of the datagrams, and
had no gap longer than 50 ms (see ikev1d_lab.udpflow for how a gap is measured).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ikev1d_lab import netns
from ikev1d_lab.rekeyrun import PEERS, pair, renewals
from ikev1d_lab.udpflow import FlowResult

MAX_GAP_MS = 50.0
LOSS_MARGIN = 0.1  # percentage points over the worst baseline


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def line(label: str, r: FlowResult, extra: str = "") -> str:
    return (f"  {label:<10} sent {r.sent:>7} lost {r.lost:>6} ({r.lost_percent:6.3f} %) "
            f"reordered {r.reordered:>4} longest gap {r.max_gap_ms:7.1f} ms "
            f"(at {r.gap_at_s:5.1f} s) in {r.seconds:.1f} s; load {load()}{extra}")


def run_peer(peer: str, args: argparse.Namespace, work: Path, port: int) -> bool:
    pps = args.mbps * 1e6 / 8 / args.size
    print(f"{peer}: {args.mbps} Mbit/s = {pps:.0f} datagrams/s of {args.size} octets "
          f"for {args.seconds} s per run", flush=True)
    baselines: list[FlowResult] = []
    renewal_run: FlowResult | None = None
    counted = None
    with netns.two_hosts() as topo:
        for i, kind in enumerate(("baseline", "renewals", "baseline", "baseline")):
            lives = ({"ike_life": f"{args.ike_life}s", "child_life": f"{args.child_life}s"}
                     if kind == "renewals" else {})
            with pair(topo, work / f"{peer}-{i}", peer, **lives) as p:
                result = p.flow(port + i, pps=pps, size=args.size, seconds=args.seconds)
                if kind == "renewals":
                    renewal_run = result
                    counted = renewals(p.a.log_path.read_text())
                    print(line(kind, result, f"; renewed: Phase 1 {counted.phase1}, "
                                             f"Phase 2 {counted.phase2}"), flush=True)
                else:
                    baselines.append(result)
                    print(line(kind, result), flush=True)
    if renewal_run is None or counted is None:
        return False
    worst = max(b.lost_percent for b in baselines)
    limit = worst + LOSS_MARGIN
    ok_loss = renewal_run.lost_percent <= limit
    ok_gap = renewal_run.max_gap_ms <= MAX_GAP_MS
    ok_count = counted.phase2 >= 10 and counted.phase1 >= 3
    print(f"  {peer}: loss {renewal_run.lost_percent:.3f} % against baselines "
          + ", ".join(f"{b.lost_percent:.3f}" for b in baselines)
          + f" (limit {limit:.3f} %): {'ok' if ok_loss else 'FAIL'}; longest gap "
          f"{renewal_run.max_gap_ms:.1f} ms (limit {MAX_GAP_MS:.0f}, baselines "
          + ", ".join(f"{b.max_gap_ms:.1f}" for b in baselines)
          + f"): {'ok' if ok_gap else 'FAIL'}; renewals P1 {counted.phase1} (>= 3) "
          f"P2 {counted.phase2} (>= 10): {'ok' if ok_count else 'FAIL'}", flush=True)
    return ok_loss and ok_gap and ok_count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mbps", type=float, default=100.0)
    parser.add_argument("--size", type=int, default=1372, help="UDP payload octets")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--child-life", type=int, default=4,
                        help="Phase 2 lifetime on A (s); renewed ~10 %% before its end")
    parser.add_argument("--ike-life", type=int, default=12, help="Phase 1 lifetime on A (s)")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if not peers or not set(peers) <= set(PEERS):
        parser.error(f"--peers: choose from {', '.join(PEERS)}")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    netns.cleanup_stale()
    work = Path(tempfile.mkdtemp(prefix="ikev1d-rekey-"))
    print(f"load average {load()}; work dir {work}", flush=True)
    ok = True
    try:
        for n, peer in enumerate(peers):
            ok = run_peer(peer, args, work, 31000 + os.getpid() % 1000 * 10 + n * 5) and ok
    except KeyboardInterrupt:
        print("interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    finally:
        if args.keep or not ok:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
