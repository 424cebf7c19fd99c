"""A strongSwan peer gets in while spoofed Main Mode requests flood ikev1d (a slice of
bench/flood.py): 400 message 1 per second through a raw socket for a few seconds,
half forged from the peer's own address and port, half from random sources that a
``%any`` connection accepts, enough to keep the half-open table full. The peer,
with charon's default retransmissions, must establish within
them; ikev1d must stay up with bounded memory, no internal error and a bounded,
rate-limited log.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ikev1d_lab.hostile import HostileError, arrived, hostile_target, start_attack
from ikev1d_lab.netns import Topology

pytestmark = pytest.mark.interop

# Enough to keep a 512-entry half-open table full, and within what ikev1d processes
# even on a loaded machine, so that the slice is a steady check in `make test`. The
# rate that outruns the daemon (2,000/s, where its receive path must serve the peer's
# later messages first and drop requests beyond its budget) is bench/flood.py's, with
# the figures in bench/README.md; unit tests in tests/unit/daemon/test_udp.py check
# that ordering and budget.
RATE = 400
SECONDS = 8
# ikev1d holds at most half_open_total entries of about 9 KB each (engine/halfopen.py;
# these requests are small, so far less), plus what the interpreter keeps from the churn.
RSS_BOUND_KIB = 20 * 1024
LOG_LINES_BOUND = 200


def test_peer_establishes_under_a_spoofed_flood(two_hosts: Topology, tmp_path: Path) -> None:
    # A table that the requests processed fill within the run.
    with hostile_target(two_hosts, tmp_path, extra_daemon="half_open_total = 512") as target:
        # Once before the flood: a source that completed a handshake (engine/halfopen.py).
        before = target.establish_until(time.monotonic())
        assert before.failures == [] and len(before.seconds) == 1
        rss_before = target.rss_kib()
        lines_before = target.log_lines()
        arrived_before = arrived(two_hosts.a)
        attack = start_attack(two_hosts.b, "flood", "--rate", str(RATE), "--seconds",
                              str(SECONDS), "--peer-share", "0.5")
        time.sleep(2.0)  # the table is full by now (> 512 requests processed)
        during = target.establish_until(time.monotonic())  # one attempt, charon's budget
        out, err = attack.communicate(timeout=SECONDS + 60)
        assert attack.returncode == 0, err
        flood = arrived(two_hosts.a) - arrived_before
        log = target.ours.log_text()
        # The flood reached ikev1d: at least 80 % of what was sent (the rest is the
        # peer's own few datagrams' worth of slack and socket drops in B).
        assert flood >= 0.8 * RATE * SECONDS, (out, flood)
        assert during.failures == [] and len(during.seconds) == 1, during.failures
        # Within its first few retransmissions (charon: 4 s, 11.2 s, 24.2 s): one that
        # was dropped goes ahead of the flood's fresh requests. A lockout takes 165 s.
        assert during.seconds[0] < 30.0, during.seconds
        assert target.alive()
        assert "Traceback" not in log and "internal error" not in log
        assert "too many half-open SAs" in log  # the table was full: the flood mattered
        assert target.rss_kib() - rss_before < RSS_BOUND_KIB
        assert target.log_lines() - lines_before < LOG_LINES_BOUND
    with pytest.raises(HostileError):  # stopped now: "dead" would be no verdict
        target.alive()
