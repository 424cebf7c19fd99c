"""A Mode Config client's virtual IP on both data planes, with their fakes.

The address goes onto the host (the userspace plane's TUN device, the kernel
plane's ``lo``), becomes the source of the routes of that ISAKMP SA's IPsec
SAs, narrows the routes to the server's split networks, and only what was added
is removed again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from ikev1d.dataplane.base import CarriesVirtualIps, split_routes
from ikev1d.dataplane.kernel import LOOPBACK_INDEX, KernelBackend
from ikev1d.dataplane.linux.xfrm import RTPROT_IKEV1D, Route
from ikev1d.dataplane.userspace import UserspaceBackend
from tests.unit.dataplane.test_kernel import REMOTE, FakeXfrm, make_sa
from tests.unit.dataplane.test_kernel import FakeRoutes as KernelRoutes
from tests.unit.dataplane.test_kernel import deleted as kernel_deleted
from tests.unit.dataplane.test_userspace import FakeRaw, FakeRoutes, FakeTun, child, deleted

net = ipaddress.ip_network
VIP = ipaddress.ip_address("10.3.0.7")


def test_split_routes_keeps_the_smaller_of_each_overlapping_pair() -> None:
    remote = (net("0.0.0.0/0"), net("10.2.0.0/16"), net("fd00::/8"))
    split = (net("10.2.5.0/24"), net("192.168.0.0/16"), net("fd00:1::/64"))
    assert split_routes(remote, split) == (
        net("10.2.5.0/24"), net("192.168.0.0/16"), net("fd00:1::/64"))
    assert split_routes((net("10.2.0.0/24"),), (net("10.0.0.0/8"),)) == (net("10.2.0.0/24"),)
    assert split_routes((net("10.2.0.0/24"),), (net("10.9.0.0/16"),)) == ()
    assert split_routes(remote, ()) == remote


# --- userspace -------------------------------------------------------------------------


@pytest.fixture
def userspace() -> Iterator[tuple[UserspaceBackend, FakeRoutes]]:
    loop = asyncio.new_event_loop()
    routes = FakeRoutes(["192.0.2.1"])
    backend = UserspaceBackend(FakeTun(), FakeRaw(), routes)
    backend.attach(lambda data, local, remote: None, loop)
    yield backend, routes
    backend.close()
    loop.close()


def test_userspace_puts_the_virtual_ip_on_the_tun_and_routes_from_it(
    userspace: tuple[UserspaceBackend, FakeRoutes],
) -> None:
    backend, routes = userspace
    assert isinstance(backend, CarriesVirtualIps)
    backend.add_virtual_ip(1, VIP, ())
    assert routes.addresses == {"10.3.0.7"}
    sa = child(local_ts=("10.3.0.7/32",), remote_ts=("10.2.0.0/16",))
    backend.install(sa)
    assert routes.routes == {"10.2.0.0/16": "10.3.0.7"}
    # Another ISAKMP SA (no virtual IP) keeps choosing its source as before.
    other = replace(child(local_ts=("192.0.2.0/24",), remote_ts=("10.9.0.0/24",),
                          spis=(0xC1, 0xC2)), ike_id=2)
    backend.install(other)
    assert routes.routes["10.9.0.0/24"] == "192.0.2.1"
    backend.remove(deleted(sa))
    backend.remove_virtual_ip(1, VIP)
    assert routes.addresses == set() and "10.2.0.0/16" not in routes.routes


def test_userspace_routes_only_the_split_networks(
    userspace: tuple[UserspaceBackend, FakeRoutes],
) -> None:
    backend, routes = userspace
    backend.add_virtual_ip(1, VIP, (net("10.2.0.0/24"), net("10.4.0.0/24")))
    backend.install(child(local_ts=("10.3.0.7/32",), remote_ts=("0.0.0.0/0",)))
    assert routes.routes == {"10.2.0.0/24": "10.3.0.7", "10.4.0.0/24": "10.3.0.7"}


def test_userspace_leaves_an_address_the_host_has(
    userspace: tuple[UserspaceBackend, FakeRoutes], caplog: pytest.LogCaptureFixture,
) -> None:
    backend, routes = userspace
    caplog.set_level("INFO")
    backend.add_virtual_ip(1, ipaddress.ip_address("192.0.2.1"), ())
    assert "on this host already" in caplog.text
    backend.remove_virtual_ip(1, ipaddress.ip_address("192.0.2.1"))
    assert not any(line.startswith("unaddr") for line in routes.log)


def test_userspace_shared_virtual_ip_stays_until_its_last_isakmp_sa(
    userspace: tuple[UserspaceBackend, FakeRoutes],
) -> None:
    backend, routes = userspace
    backend.add_virtual_ip(1, VIP, ())
    backend.add_virtual_ip(2, VIP, ())
    backend.remove_virtual_ip(1, VIP)
    assert routes.addresses == {"10.3.0.7"}
    backend.remove_virtual_ip(1, VIP)  # twice: no error, nothing more
    assert routes.addresses == {"10.3.0.7"}
    backend.remove_virtual_ip(2, VIP)
    assert routes.addresses == set()


def test_userspace_a_dual_stack_client_holds_both_addresses(
    userspace: tuple[UserspaceBackend, FakeRoutes],
) -> None:
    """One ISAKMP SA, one virtual IP per family: each is the source of its family's
    routes, and adding the second does not take the first away."""
    backend, routes = userspace
    vip6 = ipaddress.ip_address("fd00:3::10")
    backend.add_virtual_ip(1, VIP, ())
    backend.add_virtual_ip(1, vip6, ())
    assert routes.addresses == {"10.3.0.7", "fd00:3::10"}
    backend.install(child(local_ts=("10.3.0.7/32",), remote_ts=("10.2.0.0/16",)))
    backend.install(child(local_ts=("fd00:3::10/128",), remote_ts=("fd00:2::/64",),
                          spis=(0xC3, 0xC4)))
    assert routes.routes == {"10.2.0.0/16": "10.3.0.7", "fd00:2::/64": "fd00:3::10"}
    backend.remove_virtual_ip(1, vip6)
    assert routes.addresses == {"10.3.0.7"}


# --- kernel ----------------------------------------------------------------------------


def test_kernel_adds_the_virtual_ip_on_lo_and_routes_from_it(tmp_path: Path) -> None:
    routes = KernelRoutes(["192.0.2.1"])
    backend = KernelBackend(FakeXfrm(), routes=routes)
    state_file = tmp_path / "s.json"
    backend.recover(str(state_file))
    assert isinstance(backend, CarriesVirtualIps)
    backend.add_virtual_ip(1, VIP, (net("10.2.0.0/24"),))
    assert routes.added == {"10.3.0.7": (LOOPBACK_INDEX, RTPROT_IKEV1D)}
    assert json.loads(state_file.read_text())["addresses"] == [["10.3.0.7", LOOPBACK_INDEX]]
    sa = make_sa(local_ts=("10.3.0.7/32",), remote_ts=("10.2.0.0/16", "10.5.0.0/16"))
    backend.install(sa)
    # Only the split network, from the virtual IP.
    assert routes.table == {net("10.2.0.0/24"): Route(net("10.2.0.0/24"), 3, REMOTE, "10.3.0.7")}
    backend.remove(kernel_deleted(sa))
    backend.remove_virtual_ip(1, VIP)
    assert routes.added == {} and routes.table == {}
    assert json.loads(state_file.read_text())["addresses"] == []
    backend.add_virtual_ip(1, VIP, ())
    backend.close()  # removes it too
    assert routes.added == {} and not state_file.exists()


def test_kernel_a_dual_stack_client_holds_both_addresses() -> None:
    """One ISAKMP SA with a virtual IP of each family: both on lo, and each SA's
    routes take the one of their family as source."""
    routes = KernelRoutes(["192.0.2.1"])
    backend = KernelBackend(FakeXfrm(), routes=routes)
    vip6 = ipaddress.ip_address("fd00:3::10")
    backend.add_virtual_ip(1, VIP, ())
    backend.add_virtual_ip(1, vip6, ())
    assert set(routes.added) == {"10.3.0.7", "fd00:3::10"}
    backend.install(make_sa(local_ts=("10.3.0.7/32",), remote_ts=("10.2.0.0/16",)))
    assert routes.table[net("10.2.0.0/16")].prefsrc == "10.3.0.7"
    backend.remove_virtual_ip(1, vip6)
    assert set(routes.added) == {"10.3.0.7"}
    backend.close()
    assert routes.added == {}


def test_kernel_never_takes_over_an_address_the_host_has() -> None:
    routes = KernelRoutes(["192.0.2.1", "10.3.0.7"])
    backend = KernelBackend(FakeXfrm(), routes=routes)
    backend.add_virtual_ip(1, VIP, ())
    assert routes.added == {}
    backend.install(make_sa(local_ts=("10.3.0.7/32",)))
    assert routes.table[net("10.2.0.0/24")].prefsrc == "10.3.0.7"
    backend.remove_virtual_ip(1, VIP)
    backend.close()
    assert routes.addresses == ["192.0.2.1", "10.3.0.7"]


def test_kernel_restart_after_a_crash_removes_only_its_tagged_virtual_ip(tmp_path: Path) -> None:
    routes = KernelRoutes(["192.0.2.1"])
    state_file = str(tmp_path / "s.json")
    first = KernelBackend(FakeXfrm(), routes=routes)
    first.recover(state_file)
    first.add_virtual_ip(1, VIP, ())
    first.add_virtual_ip(2, ipaddress.ip_address("10.3.0.8"), ())
    # Killed. Meanwhile an administrator re-added 10.3.0.8 by hand (no proto).
    routes.added["10.3.0.8"] = (LOOPBACK_INDEX, None)
    second = KernelBackend(FakeXfrm(), routes=routes)
    second.recover(state_file)
    assert routes.added == {"10.3.0.8": (LOOPBACK_INDEX, None)}
