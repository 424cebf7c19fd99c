"""bench/handshakes.py: the tail after a run's opening, and its column in the table."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.append(str(BENCH))

from handshakes import OPENING_WINDOWS, RunResult, after_opening, format_table  # noqa: E402


def test_the_opening_windows_are_left_out_in_completion_order() -> None:
    window = 4
    opening = OPENING_WINDOWS * window
    latencies = [0.5] * opening + [0.01] * 20
    assert list(after_opening(latencies, window)) == [0.01] * 20


def test_a_run_with_little_after_its_opening_has_no_figure() -> None:
    window = 32
    opening = OPENING_WINDOWS * window
    assert list(after_opening([0.01] * (2 * opening - 1), window)) == []
    assert len(after_opening([0.01] * (2 * opening), window)) == opening


def _run(responder: str, p95: float, after: float) -> RunResult:
    return RunResult("ecp256/psk", responder, 1000, initiated_ok=1000, established=1000,
                     seconds=2.0, cpu_seconds=1.0, initiator_cpu_seconds=2.0,
                     latency_p50=0.007, latency_p95=p95, latency_p95_after=after)


def test_the_table_gives_both_tails_and_their_ratios() -> None:
    table = format_table([_run("ikev1d(none)", 0.030, 0.017),
                          _run("strongSwan(openssl)", 0.012, 0.010)])
    header, ours, theirs, ratio = table.splitlines()
    assert header.split()[-2:] == ["after", "note"]
    assert ours.split()[4:6] == ["30", "17"]
    assert theirs.split()[4:6] == ["12", "10"]
    assert ratio.split()[-2:] == ["2.50", "1.70"]
