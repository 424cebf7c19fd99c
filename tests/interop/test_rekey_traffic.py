"""UDP through the tunnel while ikev1d renews Phase 2 and Phase 1 (the short version of
bench/rekey.py), against a second ikev1d and against strongSwan (kernel-libipsec).

A's Phase 2 lifetime is 2 s and its Phase 1 lifetime 5 s, so during a 6-second
flow of 500 datagrams a second each way both are renewed (make-before-break). The same
flow through a tunnel with long lifetimes is the baseline on this shared
machine: the renewals may not lose more than 2 datagrams beyond it, and the
longest gap in what arrives (kernel receive timestamps, the sender's own
lateness subtracted) must stay within 50 ms. The gap is judged only against
ikev1d and only while the machine has a core to spare (load average below the
core count): on a loaded machine a daemon that is not scheduled for 100 ms
shows in the baselines too (seen: up to 92 ms without any renewal), and
kernel-libipsec's threads left gaps of 200-600 ms without renewals; the figures
are printed either way. Breaking make-before-break (the old SA removed from the
data plane as soon as the new one is installed) lost 9 datagrams B->A here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ikev1d_lab.netns import Topology
from ikev1d_lab.rekeyrun import pair, renewals

pytestmark = pytest.mark.interop

PPS, SIZE, SECONDS = 500.0, 400, 6.0
MAX_GAP_MS = 50.0


@pytest.mark.parametrize("peer", ["ikev1d", "strongswan"])
def test_no_loss_and_no_gap_while_renewing(
    peer: str, two_hosts: Topology, tmp_path: Path
) -> None:
    with pair(two_hosts, tmp_path / "base", peer) as p:
        base = p.flows_both_ways(32100, pps=PPS, size=SIZE, seconds=SECONDS)
    with pair(two_hosts, tmp_path / "renew", peer, ike_life="5s", child_life="2s") as p:
        run = p.flows_both_ways(32102, pps=PPS, size=SIZE, seconds=SECONDS)
        counted = renewals(p.a.log_path.read_text())
    figures = f"{peer}: renewals {counted}; " + "; ".join(
        f"{way}: baseline lost {b.lost}/{b.sent} gap {b.max_gap_ms:.1f} ms, renewing lost "
        f"{r.lost}/{r.sent} gap {r.max_gap_ms:.1f} ms at {r.gap_at_s:.1f} s"
        for way, b, r in zip(("A->B", "B->A"), base, run, strict=True))
    print(figures)
    assert counted.phase2 >= 2 and counted.phase1 >= 1, figures
    for b, r in zip(base, run, strict=True):
        assert r.sent == b.sent and r.send_errors == 0, figures
        assert r.lost <= b.lost + 2, figures
        if peer == "ikev1d" and os.getloadavg()[0] < (os.cpu_count() or 1):
            assert r.max_gap_ms <= MAX_GAP_MS, figures
