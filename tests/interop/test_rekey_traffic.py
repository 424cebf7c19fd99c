"""UDP through the tunnel while ikev1d renews Phase 2 and Phase 1 (the short version of
bench/rekey.py), against a second ikev1d and against strongSwan (kernel-libipsec).

A's Phase 2 lifetime is 4 s and its Phase 1 lifetime 6 s, so during a 6-second
flow of 500 datagrams a second each way both are renewed (make-before-break;
with the lab's 1 s retransmission interval each renewal starts 2 s before the
end, engine.lifetimes.rekey_delay). Lifetimes of 2 s and 5 s left 1 s for a
Quick Mode and 2 s for a Main Mode and its Quick Mode, which a second ikev1d
at load 14-16 did not always manage: the SA then ended before its successor
was up. The
same flow through a tunnel with long lifetimes is the baseline on this shared
machine: the renewals may not lose more than 2 datagrams beyond it, and no SA
may reach the end of its lifetime before its successor is up.

What strongSwan's kernel drops in the queues in front of charon (its TUN
device's transmit queue, its UDP receive buffers) is left out of both counts:
at load 12-15 charon's kernel-libipsec was not scheduled for seconds and its
TUN queue dropped 1208 of 3000 B->A datagrams in a baseline without any
renewal; those never reached an SA, so they say nothing about renewal. Both
counts are printed.

The longest gap in what arrives (kernel receive timestamps, the sender's own
lateness subtracted) must stay within 50 ms, judged only against ikev1d and
only while the machine has a core to spare (load average below the core
count): on a loaded machine a daemon that is not scheduled for 100 ms shows in
the baselines too (seen: up to 92 ms without any renewal); bench/rekey.py sets
each gap beside the renewals' IKE messages. Breaking make-before-break (the old
SA removed from the data plane as soon as the new one is installed) lost 9
datagrams B->A here.

The last case turns the roles round: charon renews Phase 2 and ikev1d answers
(see its docstring).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ikev1d_lab.loss import clear_loss, dropped, lose_every_other_quick_mode_3
from ikev1d_lab.netns import Topology
from ikev1d_lab.rekeyrun import Pair, PeerQueues, pair, renewals
from ikev1d_lab.udpflow import FlowResult

pytestmark = pytest.mark.interop

PPS, SIZE, SECONDS = 500.0, 400, 6.0
MAX_GAP_MS = 50.0


def _flows(p: Pair, port: int) -> tuple[tuple[FlowResult, FlowResult], PeerQueues]:
    before = p.peer_queues()
    flows = p.flows_both_ways(port, pps=PPS, size=SIZE, seconds=SECONDS)
    return flows, p.peer_queues() - before


def _expired_before_renewed(log_text: str) -> list[str]:
    """Inbound SPIs of SAs whose lifetime ended before their successor was up (a break)."""
    renewed: set[str] = set()
    broken = []
    for line in log_text.splitlines():
        if m := re.search(r"IPsec SA renewed: \w+_i replaces (\w+)_i", line):
            renewed.add(m[1])
        elif (m := re.search(r"IPsec SA (\w+)_i lifetime reached", line)) and (
                m[1] not in renewed):
            broken.append(m[1])
    return broken


@pytest.mark.parametrize("peer", ["ikev1d", "strongswan"])
def test_no_loss_and_no_gap_while_renewing(
    peer: str, two_hosts: Topology, tmp_path: Path
) -> None:
    with pair(two_hosts, tmp_path / "base", peer) as p:
        base, base_q = _flows(p, 32100)
    with pair(two_hosts, tmp_path / "renew", peer, ike_life="6s", child_life="4s") as p:
        run, run_q = _flows(p, 32102)
        log_a = p.a.log_path.read_text()
    counted = renewals(log_a)
    # The peer's queue drops, per direction (A->B: its UDP buffers; B->A: its TUN).
    left_out = {"ikev1d": ((0, 0), (0, 0)),
                "strongswan": ((base_q.udp_rcvbuf_errors, run_q.udp_rcvbuf_errors),
                               (base_q.tun_dropped, run_q.tun_dropped))}[peer]
    figures = f"{peer}: renewals {counted}; " + "; ".join(
        f"{way}: baseline lost {b.lost}/{b.sent} ({qb} in the peer's queues) gap "
        f"{b.max_gap_ms:.1f} ms, renewing lost {r.lost}/{r.sent} ({qr} in the peer's "
        f"queues) gap {r.max_gap_ms:.1f} ms at {r.gap_at_s:.1f} s"
        for way, b, r, (qb, qr) in zip(("A->B", "B->A"), base, run, left_out, strict=True))
    print(figures)
    assert counted.phase2 >= 2 and counted.phase1 >= 1, figures
    assert _expired_before_renewed(log_a) == [], figures
    for b, r, (qb, qr) in zip(base, run, left_out, strict=True):
        assert r.sent == b.sent, figures
        assert r.lost - qr <= b.lost - qb + 2, figures
        if peer == "ikev1d" and os.getloadavg()[0] < (os.cpu_count() or 1):
            assert r.max_gap_ms <= MAX_GAP_MS, figures



def test_charon_renewing_sends_nothing_we_cannot_open(two_hosts: Topology,
                                                      tmp_path: Path) -> None:
    """charon renews Phase 2 every 2 s under a B->A flow, so ikev1d answers each Quick
    Mode. charon installs the new pair on message 2 and sends on it from then on (RFC
    2409 section 5.5 allows it): every other message 3 is lost on the way, so for a
    retransmission interval (1 s) charon sends on SAs whose message 3 we have not
    seen. The inbound half must be there since our message 2: nothing may be dropped
    as ``unknown_spi``, nor lost beyond what charon's own TUN queue dropped."""
    with pair(two_hosts, tmp_path / "peer-renews", "strongswan", peer_child_life="2s") as p:
        lose_every_other_quick_mode_3(two_hosts.a)
        try:
            before, queues = p.esp_drops(), p.peer_queues()
            flow = p.flow(32104, pps=PPS, size=SIZE, seconds=SECONDS + 1, reverse=True)
            after, queues = p.esp_drops(), p.peer_queues() - queues
            lost_qm3 = dropped(two_hosts.a)
        finally:
            clear_loss(two_hosts.a)
        log_a = p.a.log_path.read_text()
    counted = renewals(log_a)
    unknown = after.get("unknown_spi", 0) - before.get("unknown_spi", 0)
    figures = (f"renewals {counted}, Quick Mode message 3s lost {lost_qm3}; B->A lost "
               f"{flow.lost}/{flow.sent} ({queues.tun_dropped} in charon's TUN queue), gap "
               f"{flow.max_gap_ms:.1f} ms; dropped as unknown SPI: {unknown}")
    print(figures)
    assert counted.phase2 >= 2 and lost_qm3 >= 1, figures
    assert "IPsec SA renewed" not in log_a, figures  # charon renewed, not A
    assert unknown == 0, figures
    assert flow.lost - queues.tun_dropped <= 2, figures
