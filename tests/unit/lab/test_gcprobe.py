"""The benchmarks' collector probe (bench/gcprobe) and its summary (``--gc-pauses``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.append(str(BENCH))

from benchlib import GC_PROBE_DIR, gc_pause_summary, gc_pauses  # noqa: E402


def _run(prefix: Path, *argv: str) -> None:
    code = "import gc; gc.collect(); gc.collect(0)"
    with gc_pauses(prefix):
        env = dict(os.environ)
    subprocess.run([sys.executable, "-c", code, *argv], env=env, check=True, timeout=60)


def test_a_daemon_process_writes_its_collections(tmp_path: Path) -> None:
    prefix = tmp_path / "gc"
    _run(prefix, "daemon")
    (written,) = tmp_path.glob("gc.*")
    rows = [line.split() for line in written.read_text().splitlines()]
    generations = [int(row[1]) for row in rows]
    assert generations[-2:] == [2, 0]  # the two collections, in order
    assert all(float(row[2]) >= 0 for row in rows)


def test_other_processes_write_nothing(tmp_path: Path) -> None:
    _run(tmp_path / "gc", "status")
    assert list(tmp_path.glob("gc.*")) == []


def test_the_environment_is_as_before_afterwards(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.delenv("IKEV1D_BENCH_GC_LOG", raising=False)
    with gc_pauses(tmp_path / "gc"):
        assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(GC_PROBE_DIR), "/somewhere"]
        assert os.environ["IKEV1D_BENCH_GC_LOG"] == str(tmp_path / "gc")
    assert os.environ["PYTHONPATH"] == "/somewhere"
    assert "IKEV1D_BENCH_GC_LOG" not in os.environ


def test_the_summary_counts_the_window_only(tmp_path: Path) -> None:
    (tmp_path / "gc.1").write_text(
        "5.0 2 30.000 10\n"  # before the window: start-up's
        "10.0 0 1.500 0\n"
        "11.0 0 2.500 0\n"
        "12.0 1 7.000 3\n"
        "13.0 2 40.000 0\n"
        "99.0 0 9.000 0\n"  # after it: shutting down
    )
    assert gc_pause_summary(tmp_path / "gc", 10.0, 20.0) == (
        "young 2 (4 ms, longest 2.5); middle 1 (7 ms, longest 7.0); "
        "full 1 (40 ms, longest 40.0)")
