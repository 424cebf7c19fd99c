"""bench/handshakes.py --responder-nice: the responder's threads and, with autogroups
on, its session get the nice value (a thread's own weighs only inside its session)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.append(str(BENCH))

from handshakes import autogroups_on, renice_all  # noqa: E402

_THREADED = ("import threading, time; "
             "threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)")


@pytest.fixture
def session_process() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", _THREADED], start_new_session=True)
    try:
        tasks = Path(f"/proc/{proc.pid}/task")
        for _ in range(200):
            if len(list(tasks.iterdir())) >= 2:
                break
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_every_thread_gets_the_nice_value(session_process: subprocess.Popen[bytes]) -> None:
    renice_all(session_process.pid, 3)
    tasks = list(Path(f"/proc/{session_process.pid}/task").iterdir())
    assert len(tasks) >= 2
    assert {os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in tasks} == {3}


@pytest.mark.skipif(not autogroups_on(), reason="autogroups are off on this kernel")
def test_the_session_gets_it_too(session_process: subprocess.Popen[bytes]) -> None:
    autogroup = Path(f"/proc/{session_process.pid}/autogroup")
    ours = Path("/proc/self/autogroup").read_text()
    assert autogroup.read_text().split()[-1] == "0"
    renice_all(session_process.pid, 3)
    assert autogroup.read_text().split()[-1] == "3"
    # Our own session is another autogroup, and keeps its value.
    assert Path("/proc/self/autogroup").read_text() == ours
