"""Fixtures for tests against real peers: namespaces, strongSwan charons, captures.

Every resource gets a unique name (pid + counter) and is torn down even when a
test fails; namespaces left by a crashed earlier run (owner pid dead) are
removed once per session.  On failure the tail of each charon log is attached
to the test report.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from ikev1d_lab import netns
from ikev1d_lab.capture import Capture, tshark_available
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.strongswan import Charon, strongswan_available

CharonFactory = Callable[..., Charon]
CaptureFactory = Callable[..., Capture]

_LOG_TAIL_LINES = 80


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Stop the session like Ctrl-C does, so fixture finalizers (and atexit) delete namespaces.
    pytest.exit("SIGTERM: stopping, cleaning up namespaces", returncode=128 + signum)


@pytest.fixture(scope="session")
def require_root_netns() -> None:
    """Skip unless we are root, `ip netns` works and strongSwan and tshark are installed."""
    for check in (netns.netns_available, strongswan_available, tshark_available):
        ok, reason = check()
        if not ok:
            pytest.skip(f"interop rig unavailable: {reason}")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    netns.cleanup_stale()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


@pytest.fixture
def two_hosts(require_root_netns: None) -> Iterator[Topology]:
    """A (192.0.2.1, inner 10.1.0.1/24 on lo) <-veth-> B (192.0.2.2, inner 10.2.0.1/24)."""
    with netns.two_hosts() as topo:
        yield topo


@pytest.fixture
def namespace_factory(require_root_netns: None) -> Iterator[Callable[[str], Namespace]]:
    """Extra namespaces (e.g. a NAT router); all deleted afterwards."""
    made: list[Namespace] = []

    def make(label: str = "") -> Namespace:
        ns = Namespace(label)
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.close()


@pytest.fixture
def charon_factory(
    require_root_netns: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[CharonFactory]:
    """``charon_factory(ns, name="a", log_levels={"ike": 4})`` starts a charon; stopped after."""
    started: list[Charon] = []

    def make(
        ns: Namespace,
        name: str | None = None,
        log_levels: Mapping[str, int] | None = None,
        extra_conf: str = "",
    ) -> Charon:
        work = tmp_path / f"charon-{name or len(started)}"
        charon = Charon(ns, work, log_levels=log_levels, extra_conf=extra_conf, start=False)
        started.append(charon)
        charon.start()
        return charon

    yield make
    for charon in started:
        charon.stop()
    if _failed(request):
        for charon in started:
            tail = "\n".join(charon.log_text().splitlines()[-_LOG_TAIL_LINES:])
            request.node.add_report_section("teardown", f"charon log {charon.work_dir}", tail)


@pytest.fixture
def capture_factory(require_root_netns: None, tmp_path: Path) -> Iterator[CaptureFactory]:
    """``capture_factory(ns, ifname, filter)`` starts dumpcap; all stopped afterwards."""
    started: list[Capture] = []

    def make(ns: Namespace, ifname: str, capture_filter: str | None = None) -> Capture:
        cap = Capture(ns, ifname, tmp_path / f"capture-{len(started)}.pcap", capture_filter)
        started.append(cap)
        return cap

    yield make
    for cap in started:
        cap.stop(settle=0)
