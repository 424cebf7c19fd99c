"""Target's verdicts (ikev1d_lab.hostile): a stopped daemon cannot pass for a dead one."""

from __future__ import annotations

import subprocess
import sys
from typing import cast

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon
from ikev1d_lab.hostile import HostileError, Target
from ikev1d_lab.netns import Topology
from ikev1d_lab.strongswan import Charon


class _FakeDaemon:
    def __init__(self, log: str) -> None:
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)"])
        self._log = log

    def log_text(self) -> str:
        return self._log


def _target(daemon: _FakeDaemon) -> Target:
    return Target(cast(Topology, None), cast(Ikev1dDaemon, daemon), cast(Charon, None),
                  pid=0)


def test_alive_while_running_and_refused_once_stopped() -> None:
    daemon = _FakeDaemon("")
    target = _target(daemon)
    try:
        assert target.alive()
        target.stopped = True
        with pytest.raises(HostileError):
            target.alive()
    finally:
        assert daemon.process is not None
        daemon.process.kill()
        daemon.process.wait()
    target.stopped = False
    assert not target.alive()  # a daemon that died during the run


def test_tracebacks_counted() -> None:
    daemon = _FakeDaemon("x\nTraceback (most recent call last):\n y\nTraceback (most")
    target = _target(daemon)
    try:
        assert target.tracebacks() == 2
    finally:
        assert daemon.process is not None
        daemon.process.kill()
        daemon.process.wait()
