"""Renewal under traffic: UDP at a fixed rate through the tunnel while its SAs are renewed.

Run by hand, as root::

    .venv/bin/python bench/rekey.py [--mbps 100] [--seconds 40] [--peers ikev1d,strongswan]

For each peer (a second ikev1d, or charon with kernel-libipsec), on the two-host
topology: three baseline runs with long lifetimes (nothing renewed) and one run
in which ikev1d on A renews Phase 2 every ``--child-life`` and Phase 1 every
``--ike-life`` seconds, in the order baseline, renewals, baseline, baseline (so a
change in the machine's load falls on both kinds). Each run sends ``--mbps`` of
``--size``-octet UDP datagrams from 10.1.0.1 to 10.2.0.1 for ``--seconds``.

With ``--renewer peer`` the peer renews Phase 2 instead (every ``--child-life``
seconds: charon exactly then, a second ikev1d 2 s before its end) while A still
renews Phase 1, and the flow runs from B to A: A answers the Quick Modes, and the
peer may send on each new pair from its message 2 on (RFC 2409 section 5.5).
A's drops of ESP for an SPI it did not know are printed (its metrics endpoint).

It passes when the renewal run counted at least 10 Phase 2 and 3 Phase 1
renewals, lost at most the worst baseline's share + 0.1 % of the datagrams, and
had no gap longer than 50 ms within 100 ms of a renewal's IKE message (recorded
on A's link during the flow; see ikev1d_lab.udpflow for how a gap is measured and
bench/README.md for why this is the fair reading). Every gap over 50 ms is
printed with its cause, the baselines' gaps with how many of them the same
window would have put down to renewal by chance, and the raw criterion (no gap
over 50 ms at all) beside it.
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
from ikev1d_lab.rekeyrun import (
    PEERS,
    WINDOW_S,
    IkeMessage,
    attribute,
    ike_capture,
    pair,
    renewals,
)
from ikev1d_lab.udpflow import FlowResult

MAX_GAP_MS = 50.0
LOSS_MARGIN = 0.1  # percentage points over the worst baseline


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def line(label: str, r: FlowResult, extra: str = "") -> str:
    return (f"  {label:<10} sent {r.sent:>7} lost {r.lost:>6} ({r.lost_percent:6.3f} %) "
            f"reordered {r.reordered:>4} longest gap {r.max_gap_ms:7.1f} ms "
            f"(at {r.gap_at_s:5.1f} s) in {r.seconds:.1f} s; load {load()}{extra}")


def gap_lines(r: FlowResult, messages: Sequence[IkeMessage]) -> list[str]:
    """One line per gap over the limit: when, how long, and the renewal's IKE message
    within the window, if any."""
    out = []
    for a in attribute([g for g in r.gaps if g.ms > MAX_GAP_MS], messages):
        cause = (f"renewal: {a.near.label(r.t0)}" if a.near is not None
                 else f"no IKE message within {WINDOW_S * 1000:.0f} ms (scheduling)")
        out.append(f"    gap {a.gap.ms:6.1f} ms at {a.gap.start - r.t0:6.2f} s: {cause}")
    return out


def attributed(r: FlowResult, messages: Sequence[IkeMessage]) -> tuple[int, int]:
    """(gaps over the limit, how many of them lie within the window of a message)."""
    found = attribute([g for g in r.gaps if g.ms > MAX_GAP_MS], messages)
    return len(found), sum(1 for a in found if a.near is not None)


def run_peer(peer: str, args: argparse.Namespace, work: Path, port: int) -> bool:
    pps = args.mbps * 1e6 / 8 / args.size
    reverse = args.renewer == "peer"
    print(f"{peer}: {args.mbps} Mbit/s = {pps:.0f} datagrams/s of {args.size} octets "
          f"for {args.seconds} s per run, {'B to A' if reverse else 'A to B'}; Phase 2 "
          f"renewed by {'the peer' if reverse else 'A'}", flush=True)
    baselines: list[FlowResult] = []
    renewal_run: FlowResult | None = None
    messages: list[IkeMessage] = []
    counted = None
    with netns.two_hosts() as topo:
        for i, kind in enumerate(("baseline", "renewals", "baseline", "baseline")):
            child_life = "child_life" if not reverse else "peer_child_life"
            lives = ({"ike_life": f"{args.ike_life}s", child_life: f"{args.child_life}s"}
                     if kind == "renewals" else {})
            with pair(topo, work / f"{peer}-{i}", peer, **lives) as p:
                drops_before = p.esp_drops().get("unknown_spi", 0)
                with ike_capture(topo, work / f"{peer}-{i}" / "ike.pcap") as ike:
                    result = p.flow(port + i, pps=pps, size=args.size, seconds=args.seconds,
                                    reverse=reverse)
                unknown = p.esp_drops().get("unknown_spi", 0) - drops_before
                if kind == "renewals":
                    renewal_run = result
                    counted = renewals(p.a.log_path.read_text())
                    # The messages during the flow: the renewals' Main and Quick Modes
                    # and the Deletes of what they replaced.
                    messages = [m for m in ike.messages
                                if result.t0 - 1.0 <= m.at <= result.t0 + result.seconds + 1.0]
                    print(line(kind, result, f"; renewed: Phase 1 {counted.phase1}, "
                                             f"Phase 2 {counted.phase2}; IKE messages "
                                             f"{len(messages)}; A dropped {unknown} for "
                                             "an unknown SPI"), flush=True)
                    print("\n".join(gap_lines(result, messages)), flush=True)
                else:
                    baselines.append(result)
                    print(line(kind, result, f"; A dropped {unknown} for an unknown SPI"),
                          flush=True)
    if renewal_run is None or counted is None:
        return False
    worst = max(b.lost_percent for b in baselines)
    limit = worst + LOSS_MARGIN
    ok_loss = renewal_run.lost_percent <= limit
    ok_raw_gap = renewal_run.max_gap_ms <= MAX_GAP_MS
    gaps, near = attributed(renewal_run, messages)
    ok_gap = near == 0
    ok_count = counted.phase2 >= 10 and counted.phase1 >= 3
    # The baselines against the renewal run's IKE messages moved to their own start:
    # how many scheduling gaps the window catches by chance.
    chance = [attributed(b, [IkeMessage(m.at - renewal_run.t0 + b.t0, m.sender, m.exchange)
                             for m in messages]) for b in baselines]
    print(f"  {peer}: loss {renewal_run.lost_percent:.3f} % against baselines "
          + ", ".join(f"{b.lost_percent:.3f}" for b in baselines)
          + f" (limit {limit:.3f} %): {'ok' if ok_loss else 'FAIL'}", flush=True)
    print(f"  {peer}: gaps over {MAX_GAP_MS:.0f} ms: {gaps} with renewals, {near} of them "
          f"within {WINDOW_S * 1000:.0f} ms of a renewal's IKE message: "
          f"{'ok' if ok_gap else 'FAIL'}; baselines "
          + ", ".join(f"{n} ({c} by chance)" for n, c in chance), flush=True)
    print(f"  {peer}: raw criterion, longest gap {renewal_run.max_gap_ms:.1f} ms (limit "
          f"{MAX_GAP_MS:.0f}, baselines " + ", ".join(f"{b.max_gap_ms:.1f}" for b in baselines)
          + f"): {'ok' if ok_raw_gap else 'FAIL'}; renewals P1 {counted.phase1} (>= 3) "
          f"P2 {counted.phase2} (>= 10): {'ok' if ok_count else 'FAIL'}", flush=True)
    return ok_loss and ok_gap and ok_count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mbps", type=float, default=100.0)
    parser.add_argument("--size", type=int, default=1372, help="UDP payload octets")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--child-life", type=int, default=6,
                        help="Phase 2 lifetime on A (s); renewed 2 s before its end")
    parser.add_argument("--ike-life", type=int, default=12, help="Phase 1 lifetime on A (s)")
    parser.add_argument("--renewer", choices=("a", "peer"), default="a",
                        help="who renews Phase 2 (peer: A answers, the flow runs B to A)")
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
