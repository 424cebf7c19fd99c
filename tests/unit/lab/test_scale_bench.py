"""bench/scale.py says when its first and last slices are not comparable."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.append(str(BENCH))

from scale import ScaleResult, SliceFigures, format_table, pace_warning  # noqa: E402


def _slice(rate: float) -> SliceFigures:
    return SliceFigures(tunnels=1000, user_s=1.0, system_s=0.2, wakeups=2000,
                        seconds=1000 / rate, load=0.5)


def _result(first: float, last: float) -> ScaleResult:
    r = ScaleResult("ikev1d", 10_000, initiated_ok=10_000, established=10_000, seconds=80.0,
                    cpu_first_s=1.0, cpu_last_s=1.7, slice=1000, dpd_sent=6, dpd_acked=6)
    r.first, r.last = _slice(first), _slice(last)
    return r


def test_slices_at_rates_far_apart_are_flagged() -> None:
    warning = pace_warning(_slice(397), _slice(58))
    assert warning is not None
    assert "397 and 58 tunnels/s" in warning and "--rate" in warning
    assert "397 and 58 tunnels/s" in format_table([_result(397, 58)])


def test_slices_at_about_the_same_rate_are_not() -> None:
    assert pace_warning(_slice(49), _slice(44)) is None
    assert pace_warning(_slice(44), _slice(49)) is None
    assert "--rate" not in format_table([_result(49, 44)])


def test_a_slice_not_measured_gives_no_warning() -> None:
    assert pace_warning(None, _slice(50)) is None
    assert pace_warning(_slice(50), SliceFigures(0, 0.0, 0.0, 0, 0.0, 0.0)) is None
