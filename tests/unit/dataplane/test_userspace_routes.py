"""The userspace data plane's routes against this host's kernel (root, a namespace).

Added, never replaced: an administrator's route to the same network makes the
install fail and stays; an existing host route to the peer is used as it is and
never removed; only routes carrying our ``proto`` are deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_SCRIPT = """
import ipaddress, sys
from ikev1d.dataplane.linux.tun import Netlink, Routes, TunDevice, TunError
net = ipaddress.ip_network
nl = Netlink()
tun = TunDevice(nl, "ikvtest%d")
routes = Routes(nl, tun.index)
step = sys.argv[1]
try:
    routes.add(net("10.2.0.0/24"), None)
    print("ADDED-CONFLICT")
except TunError as exc:
    print("REFUSED", exc)
routes.add(net("10.3.0.0/24"), None)
print("PINNED-ADMIN", routes.add_bypass("192.0.2.3"))
print("PINNED-OURS", routes.add_bypass("192.0.2.2"))
print("OWNED", routes.owned_bypasses())
sys.stdout.flush()
if step == "crash":
    import os
    os._exit(0)  # no cleanup at all, as after SIGKILL
routes.remove(net("10.2.0.0/24"))  # not ours: must stay
routes.remove(net("10.3.0.0/24"))
routes.remove_bypass("192.0.2.3")  # not ours: must stay
routes.remove_bypass("192.0.2.2")
routes.close(); tun.close(); nl.close()
print("DONE")
"""

_STALE = """
from ikev1d.dataplane.linux.tun import Netlink, Routes
nl = Netlink()
routes = Routes(nl, 0)
print("STALE-ADMIN", routes.remove_stale_bypass("192.0.2.3"))
print("STALE-OURS", routes.remove_stale_bypass("192.0.2.2"))
nl.close()
"""


@pytest.fixture
def netns() -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun")
    name = f"ikv1d-{os.getpid()}-routes"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace")
    root = str(Path(__file__).resolve().parents[3])

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True,
                              text=True, timeout=60, cwd=root)

    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", "192.0.2.1/24", "dev", "lo"],
                    # The administrator's: a route to a tunnelled network, a host route
                    # to a peer.
                    ["ip", "route", "add", "10.2.0.0/24", "dev", "lo"],
                    ["ip", "route", "add", "192.0.2.3/32", "dev", "lo"]):
            result = run(*cmd)
            assert result.returncode == 0, result.stderr
        yield run
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _routes(run: Callable[..., subprocess.CompletedProcess[str]]) -> str:
    return run("ip", "route", "show", "table", "main").stdout


def test_routes_are_added_not_replaced_and_only_ours_removed(
    netns: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    before = _routes(netns)
    result = netns(sys.executable, "-c", _SCRIPT, "clean")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "a route to 10.2.0.0/24 exists already and is not ikev1d's" in out, out
    assert "PINNED-ADMIN True" in out and "PINNED-OURS True" in out
    assert "OWNED ['192.0.2.2']" in out and "DONE" in out
    assert _routes(netns) == before  # the administrator's routes, exactly as they were


def test_after_a_crash_only_our_pinned_route_is_left_and_then_removed(
    netns: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    before = _routes(netns)
    result = netns(sys.executable, "-c", _SCRIPT, "crash")
    assert result.returncode == 0, result.stderr
    left = _routes(netns)
    # The TUN device went with the process, and its routes with it; the pinned host
    # route to the peer did not.
    assert "10.3.0.0/24" not in left
    assert "192.0.2.2 dev lo proto 73" in left, left
    stale = netns(sys.executable, "-c", _STALE)
    assert "STALE-ADMIN False" in stale.stdout and "STALE-OURS True" in stale.stdout, stale
    assert _routes(netns) == before
