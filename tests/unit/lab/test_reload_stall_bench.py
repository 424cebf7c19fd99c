"""bench/reload_stall.py runs a real daemon through a reload and reports the loop's
longest stall: a short run, so that the benchmark keeps working with the daemon."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench" / "reload_stall.py"


def test_a_short_run_reports_the_reload_and_the_loop_ticking_through_it() -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--peers", "1000", "--repeat", "1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = re.search(r"^\s+1000\s+([\d.]+)\s+(\d+)\s+(\d+)\s", proc.stdout, re.MULTILINE)
    assert row is not None, proc.stdout
    reload_s, stall_ms, ticks = float(row[1]), int(row[2]), int(row[3])
    assert reload_s > 0
    # The loading runs beside the loop: it ticked during the reload, and no gap was as
    # long as the whole reload (before, the one gap was the reload).
    assert ticks > 0, proc.stdout
    assert stall_ms < 1000 * reload_s, proc.stdout
