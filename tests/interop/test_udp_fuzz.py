"""Mutated real messages to a running ikev1d's UDP 500 and 4500 (a slice of
bench/udp_fuzz.py), then a strongSwan peer still establishes; ikev1d stays up, with no
internal error, bounded memory and a bounded (rate-limited) log.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ikev1d_lab.hostile import arrived, hostile_target, start_attack, udp_counters
from ikev1d_lab.netns import Topology

pytestmark = pytest.mark.interop

COUNT = 5000
RSS_BOUND_KIB = 20 * 1024
LOG_LINES_BOUND = 300


def test_peer_establishes_after_mutated_datagrams(two_hosts: Topology, tmp_path: Path) -> None:
    with hostile_target(two_hosts, tmp_path) as target:
        rss_before = target.rss_kib()
        lines_before = target.log_lines()
        arrived_before = arrived(two_hosts.a)
        overflow_before = udp_counters(two_hosts.a).get("RcvbufErrors", 0)
        attack = start_attack(two_hosts.b, "fuzz", "--count", str(COUNT), "--rate", "2000",
                              "--seed", "7")
        out, err = attack.communicate(timeout=120)
        assert attack.returncode == 0, err
        got = arrived(two_hosts.a) - arrived_before
        overflow = udp_counters(two_hosts.a).get("RcvbufErrors", 0) - overflow_before
        # Nearly all reached ikev1d's sockets (not dropped by the kernel for a full buffer).
        assert got - overflow >= 0.9 * COUNT, (out, got, overflow)
        time.sleep(1.0)  # the daemon works through its socket queue
        after = target.establish_until(time.monotonic())
        log = target.ours.log_text()
        assert after.failures == [] and len(after.seconds) == 1, after.failures
        assert target.alive()
        assert "Traceback" not in log and "internal error" not in log
        assert target.rss_kib() - rss_before < RSS_BOUND_KIB
        assert target.log_lines() - lines_before < LOG_LINES_BOUND
