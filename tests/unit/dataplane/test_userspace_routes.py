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


class _Msg:
    def __init__(self, address: str) -> None:
        self.address = address

    def get_attr(self, name: str) -> str | None:
        return self.address if name == "IFA_LOCAL" else None


class _FakeIpr:
    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.dumps = 0

    def get_addr(self) -> list[_Msg]:
        self.dumps += 1
        return [_Msg(a) for a in self.addresses]

    def addr(self, *args: object, **kwargs: object) -> None:
        self.addresses.append(str(kwargs["address"]))


class _FakeNetlink:
    def __init__(self, ipr: _FakeIpr) -> None:
        self.ipr = ipr

    def call(self, fn: Callable[[_FakeIpr], object]) -> object:
        return fn(self.ipr)


def test_source_address_lookups_share_one_address_dump_until_it_may_be_stale(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every installed SA asks for its source address; one netlink dump serves the
    lookups of a second, and an address we add ourselves is seen at once."""
    import ipaddress

    from ikev1d.dataplane.linux import tun

    clock = [100.0]
    monkeypatch.setattr("ikev1d.dataplane.linux.tun.time.monotonic", lambda: clock[0])
    ipr = _FakeIpr(["127.0.0.1", "fe80::1", "10.2.0.1"])
    routes = tun.Routes(_FakeNetlink(ipr), 7)  # type: ignore[arg-type]
    inside = (ipaddress.ip_network("10.2.0.0/24"),)
    assert routes.local_address_in(inside) == "10.2.0.1"
    assert routes.local_address_in((ipaddress.ip_network("0.0.0.0/0"),)) == "10.2.0.1"
    assert ipr.dumps == 1
    assert routes.local_address_in((ipaddress.ip_network("10.9.0.0/24"),)) is None
    assert routes.add_address("10.9.0.5")  # ours: the list is read again
    assert routes.local_address_in((ipaddress.ip_network("10.9.0.0/24"),)) == "10.9.0.5"
    dumps = ipr.dumps
    ipr.addresses.append("10.8.0.1")  # someone else's: seen once the list is stale
    assert routes.local_address_in((ipaddress.ip_network("10.8.0.0/24"),)) is None
    clock[0] += tun.ADDRESSES_TTL
    assert routes.local_address_in((ipaddress.ip_network("10.8.0.0/24"),)) == "10.8.0.1"
    assert ipr.dumps == dumps + 1
