"""Traps in the kernel data plane: policies without SA, shared with the SA pair that
follows, XFRM_MSG_ACQUIRE mapped back to the child; with the fake kernel tables,
and (as root) against the host kernel, which has XFRM: it sends the acquire."""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from ikev1d.dataplane.base import CatchesTraffic
from ikev1d.dataplane.kernel import (
    REQIDS,
    TRAP_ROUTE_METRIC,
    KernelBackend,
    plan_trap_policies,
)
from ikev1d.dataplane.linux import xfrm as xfrm_io
from ikev1d.dataplane.linux.xfrm import Route
from ikev1d.engine.api import TrapInstalled
from tests.unit.dataplane.test_kernel import (
    LOCAL,
    REMOTE,
    FakeExpire,
    FakeRoutes,
    FakeXfrm,
    _attributes,
    deleted,
    host_netns,
    make_sa,
)

__all__ = ["host_netns"]  # the fixture, used by name

net = ipaddress.ip_network


def trap(remote_ts: str = "10.2.0.0/24") -> TrapInstalled:
    return TrapInstalled("gw", "net", LOCAL, REMOTE, "tunnel", (net("10.1.0.0/24"),),
                         (net(remote_ts),))


def backend(fake: FakeXfrm, expire: FakeExpire | None = None,
            routes: FakeRoutes | None = None) -> tuple[KernelBackend, list[tuple[str, str]]]:
    b = KernelBackend(fake, expire_source=expire, routes=routes)
    acquired: list[tuple[str, str]] = []
    b.set_acquire_handler(lambda conn, child: acquired.append((conn, child)))
    return b, acquired


def test_a_trap_is_policies_without_state() -> None:
    fake = FakeXfrm()
    b, _ = backend(fake)
    assert isinstance(b, CatchesTraffic)
    b.install_trap(trap())
    assert fake.states == {}
    assert sorted(d for _, d in fake.policies) == ["fwd", "in", "out"]
    reqids = {p.template.reqid for p in fake.policies.values()}
    assert len(reqids) == 1 and reqids <= set(REQIDS)
    b.install_trap(trap())  # again, unchanged: nothing new
    assert len(fake.policies) == 3
    b.remove_trap("gw", "net")
    assert fake.policies == {}


def test_the_sa_pair_shares_the_trap_policies_and_leaves_them() -> None:
    fake = FakeXfrm()
    b, _ = backend(fake)
    b.install_trap(trap())
    (reqid,) = {p.template.reqid for p in fake.policies.values()}
    sa = make_sa()
    b.install(sa)  # no EEXIST: the pair takes the trap's policies and reqid
    assert {s.reqid for s in fake.states.values()} == {reqid}
    assert len(fake.policies) == 3
    b.remove(deleted(sa))
    assert fake.states == {} and len(fake.policies) == 3  # the trap stays
    b.install(sa)
    b.remove_trap("gw", "net")
    assert len(fake.policies) == 3  # now the pair's
    b.remove(deleted(sa))
    assert fake.policies == {}


def test_a_changed_trap_replaces_its_policies() -> None:
    fake = FakeXfrm()
    b, _ = backend(fake)
    b.install_trap(trap())
    b.install_trap(trap("10.3.0.0/24"))
    assert {str(sel.dst) for sel, d in fake.policies if d == "out"} == {"10.3.0.0/24"}
    assert len(fake.policies) == 3


def test_acquires_name_the_trapped_child() -> None:
    fake = FakeXfrm()
    expire = FakeExpire()
    b, acquired = backend(fake, expire)
    b.install_trap(trap())
    (reqid,) = {p.template.reqid for p in fake.policies.values()}
    expire.queued = [xfrm_io.XfrmAcquire(None, reqid + 1, 0),  # not a trap of ours
                     xfrm_io.XfrmAcquire(None, reqid, 0x41)]
    b.handle_expire_readable()
    assert acquired == [("gw", "net")]
    b.remove_trap("gw", "net")
    expire.queued = [xfrm_io.XfrmAcquire(None, reqid, 0x41)]
    b.handle_expire_readable()
    assert acquired == [("gw", "net")]


def test_a_trap_gets_the_routes_an_sa_would_and_keeps_them(tmp_path: Path) -> None:
    fake = FakeXfrm()
    routes = FakeRoutes(["10.1.0.1"])
    b, _ = backend(fake, routes=routes)
    b.install_trap(trap())
    assert [str(dst) for dst in routes.table] == ["10.2.0.0/24"]
    sa = make_sa()
    b.install(sa)
    b.remove(deleted(sa))
    assert [str(dst) for dst in routes.table] == ["10.2.0.0/24"]
    b.remove_trap("gw", "net")
    assert routes.table == {}
    # A trap installed while its SA pair is up keeps the route when the pair goes.
    b.install(sa)
    b.install_trap(trap())
    b.remove(deleted(sa))
    assert [str(dst) for dst in routes.table] == ["10.2.0.0/24"]
    b.remove_trap("gw", "net")
    assert routes.table == {} and fake.policies == {}


def test_trap_policies_are_in_the_state_file_and_recovered(tmp_path: Path) -> None:
    state_file = str(tmp_path / "ikev1d.kernel-dataplane.json")
    fake = FakeXfrm()
    first, _ = backend(fake)
    first.recover(state_file)
    first.install_trap(trap())
    assert len(fake.policies) == 3
    # SIGKILL: nothing removed. The next run removes what the file lists.
    second, _ = backend(fake)
    second.recover(state_file)
    assert fake.policies == {}


def test_acquire_message_decodes() -> None:
    """An ``xfrm_user_acquire`` laid out as <linux/xfrm.h> has it (and as
    net/xfrm/xfrm_user.c build_acquire fills it: id, saddr, the selector, the policy,
    four u32, then the policy's templates)."""
    (policy,) = [p for p in plan_trap_policies(trap(), REQIDS.start + 7) if p.direction == "out"]
    encoded = xfrm_io.encode_new_policy(policy)
    info, tmpl_attr = encoded[:xfrm_io.USERPOLICY_INFO_SIZE], \
        encoded[xfrm_io.USERPOLICY_INFO_SIZE:]
    info = info[:-12] + (0x5A).to_bytes(4, sys.byteorder) + info[-8:]  # the policy index
    payload = (bytes(24) + bytes(16) + info[:56] + info + bytes(16) + tmpl_attr)
    assert len(payload) - len(tmpl_attr) == xfrm_io.USER_ACQUIRE_SIZE == 280
    assert xfrm_io.decode_acquire(payload) == xfrm_io.XfrmAcquire(
        policy.selector, REQIDS.start + 7, 0x5A)
    with pytest.raises(xfrm_io.XfrmError):
        xfrm_io.decode_acquire(payload[:279])
    with pytest.raises(xfrm_io.XfrmError):
        xfrm_io.decode_acquire(payload[:280])  # no template


_ACQUIRE_IN_NETNS = """
import ipaddress, socket, sys, time
from ikev1d.dataplane.kernel import KernelBackend
from ikev1d.dataplane.linux.xfrm import XfrmExpireSocket, XfrmSocket
from ikev1d.engine.api import TrapInstalled
net = ipaddress.ip_network
got = []
backend = KernelBackend(XfrmSocket(), expire_source=XfrmExpireSocket())
backend.set_acquire_handler(lambda conn, child: got.append(f"{conn}/{child}"))
backend.install_trap(TrapInstalled("gw", "net", "192.0.2.1", "192.0.2.2", "tunnel",
                                   (net("10.1.0.0/24"),), (net(sys.argv[1]),)))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.1.0.1", 0))
for _ in range(3):
    try:
        s.sendto(b"x", ("10.2.0.1", 9))
    except OSError as exc:
        print("send:", exc.strerror)
    time.sleep(0.1)
    backend.handle_expire_readable()
print("ACQUIRED", got)
backend.close()
"""


def test_host_kernel_sends_an_acquire_for_a_trap(
    host_netns: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    # Not through lo, which has disable_xfrm set: a veth pair inside the namespace.
    for cmd in (["ip", "link", "set", "lo", "up"],
                ["ip", "link", "add", "trapv0", "type", "veth", "peer", "name", "trapv1"],
                ["ip", "link", "set", "trapv0", "up"],
                ["ip", "link", "set", "trapv1", "up"],
                ["ip", "addr", "add", "10.1.0.1/24", "dev", "trapv0"],
                ["ip", "route", "add", "10.2.0.0/24", "dev", "trapv0"]):
        assert host_netns(*cmd).returncode == 0
    result = host_netns(sys.executable, "-c", _ACQUIRE_IN_NETNS, "10.2.0.0/24")
    assert result.returncode == 0, result.stderr
    assert "ACQUIRED ['gw/net']" in result.stdout, result.stdout
    # Removed at close: nothing left in the kernel.
    assert host_netns("ip", "xfrm", "policy").stdout == ""
    # A packet outside the trap asks for nothing.
    result = host_netns(sys.executable, "-c", _ACQUIRE_IN_NETNS, "10.3.0.0/24")
    assert "ACQUIRED []" in result.stdout, result.stdout + result.stderr


# --- a road warrior's trap: the local end is the virtual IP to come ------------------------

VIP = "10.3.0.7"


def vip_trap() -> TrapInstalled:
    """What the engine traps for a child with ``vips`` and no ``local_ts``."""
    return TrapInstalled("home", "net", LOCAL, REMOTE, "tunnel", (net("0.0.0.0/0"),),
                         (net("10.2.0.0/16"),))


def test_a_virtual_ip_trap_catches_every_source_and_its_sa_pair_has_its_own(
        tmp_path: Path) -> None:
    fake = FakeXfrm()
    routes = FakeRoutes(["192.0.2.1", "127.0.0.1"])
    b, _ = backend(fake, routes=routes)
    b.recover(str(tmp_path / "state.json"))
    b.install_trap(vip_trap())
    assert sorted((str(sel.src), str(sel.dst), d) for sel, d in fake.policies) == [
        ("0.0.0.0/0", "10.2.0.0/16", "out"), ("10.2.0.0/16", "0.0.0.0/0", "fwd"),
        ("10.2.0.0/16", "0.0.0.0/0", "in")]
    (trap_reqid,) = {p.template.reqid for p in fake.policies.values()}
    # No source (the host's own address is picked per packet), below the SA's route.
    assert routes.table == {}
    assert routes.metric_table == {net("10.2.0.0/16"): Route(
        net("10.2.0.0/16"), 3, REMOTE, None, TRAP_ROUTE_METRIC)}
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["routes"] == [["10.2.0.0/16", 3, REMOTE, None, TRAP_ROUTE_METRIC]]
    # Mode Config, then the child: policies and a route of its own, from the virtual IP.
    b.add_virtual_ip(1, ipaddress.ip_address(VIP), ())
    sa = make_sa(local_ts=(f"{VIP}/32",), remote_ts=("10.2.0.0/16",))
    b.install(sa)
    assert len(fake.policies) == 6
    (sa_reqid,) = {s.reqid for s in fake.states.values()}
    assert sa_reqid != trap_reqid
    out = {str(sel.src): policy for (sel, d), policy in fake.policies.items() if d == "out"}
    # The pair's selector is more specific, so the kernel prefers its policy.
    assert out[f"{VIP}/32"].priority < out["0.0.0.0/0"].priority
    assert routes.table == {net("10.2.0.0/16"): Route(net("10.2.0.0/16"), 3, REMOTE, VIP)}
    assert len(routes.metric_table) == 1
    # The pair goes: its policies and route with it, the trap's stay.
    b.remove(deleted(sa))
    b.remove_virtual_ip(1, ipaddress.ip_address(VIP))
    assert len(fake.policies) == 3 and routes.table == {} and len(routes.metric_table) == 1
    b.remove_trap("home", "net")
    assert fake.policies == {} and routes.metric_table == {}


def test_a_virtual_ip_trap_route_left_by_a_killed_run_is_removed(tmp_path: Path) -> None:
    state_file = str(tmp_path / "state.json")
    fake = FakeXfrm()
    routes = FakeRoutes(["192.0.2.1"])
    first, _ = backend(fake, routes=routes)
    first.recover(state_file)
    first.install_trap(vip_trap())
    second, _ = backend(fake, routes=routes)
    second.recover(state_file)
    assert fake.policies == {} and routes.metric_table == {}


def test_a_route_without_source_at_a_metric_encodes() -> None:
    route = Route(net("10.2.0.0/16"), 7, REMOTE, None, TRAP_ROUTE_METRIC)
    for delete in (False, True):
        attrs = _attributes(xfrm_io.encode_route(route, delete=delete)[12:])
        assert 7 not in attrs  # RTA_PREFSRC
        # RTA_PRIORITY in the delete too, so that only the route of that metric goes.
        assert attrs[6] == struct.pack("=I", TRAP_ROUTE_METRIC)
    assert 6 not in _attributes(xfrm_io.encode_route(replace(route, metric=0))[12:])


_VIP_TRAP_IN_NETNS = """
import ipaddress, socket, subprocess, sys, time
from ikev1d.dataplane.kernel import KernelBackend
from ikev1d.dataplane.linux.xfrm import (Route, RouteSocket, XfrmExpireSocket,
                                         XfrmSocket)
from ikev1d.engine.api import TrapInstalled
net = ipaddress.ip_network
def route_get():
    return subprocess.run(["ip", "route", "get", "10.2.0.1"], capture_output=True,
                          text=True).stdout.strip()
got = []
routes = RouteSocket()
backend = KernelBackend(XfrmSocket(), expire_source=XfrmExpireSocket(), routes=routes)
backend.set_acquire_handler(lambda conn, child: got.append(f"{conn}/{child}"))
backend.install_trap(TrapInstalled("home", "net", "192.0.2.1", "192.0.2.2", "tunnel",
                                   (net("0.0.0.0/0"),), (net("10.2.0.0/24"),)))
print("TRAP ROUTE", subprocess.run(["ip", "route", "show", "10.2.0.0/24"],
                                   capture_output=True, text=True).stdout.strip())
print("GET BEFORE", route_get())
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no source chosen
for _ in range(3):
    try:
        s.sendto(b"x", ("10.2.0.1", 9))
    except OSError as exc:
        print("send:", exc.strerror)
    time.sleep(0.1)
    backend.handle_expire_readable()
print("ACQUIRED", got)
# What the SA pair adds (its states need ESP, which this kernel lacks): the virtual
# IP on lo and the route from it, at the default metric.
backend.add_virtual_ip(1, ipaddress.ip_address("10.3.0.7"), ())
sa_route = Route(net("10.2.0.0/24"), routes.route_to("192.0.2.2")[0], "192.0.2.2",
                 "10.3.0.7")
routes.add_route(sa_route)
print("GET WITH SA", route_get())
routes.delete_route(sa_route)
print("GET AFTER SA", route_get())
backend.remove_virtual_ip(1, ipaddress.ip_address("10.3.0.7"))
backend.close()
print("LEFT", subprocess.run(["ip", "route", "show", "10.2.0.0/24"], capture_output=True,
                             text=True).stdout.strip() or "nothing")
"""


def test_host_kernel_acquires_for_a_virtual_ip_trap_and_prefers_the_sa_route(
    host_netns: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    for cmd in (["ip", "link", "set", "lo", "up"],
                ["ip", "link", "add", "trapv0", "type", "veth", "peer", "name", "trapv1"],
                ["ip", "link", "set", "trapv0", "up"],
                ["ip", "link", "set", "trapv1", "up"],
                ["ip", "addr", "add", "192.0.2.1/24", "dev", "trapv0"]):
        assert host_netns(*cmd).returncode == 0
    result = host_netns(sys.executable, "-c", _VIP_TRAP_IN_NETNS)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 2)[1:] if line.startswith(("TRAP", "GET")) else
                 line.split(" ", 1) for line in result.stdout.splitlines()
                 if line.startswith(("TRAP", "GET", "ACQUIRED", "LEFT")))
    assert lines["ROUTE"].startswith(
        "10.2.0.0/24 via 192.0.2.2 dev trapv0 proto 73 metric 2048"), result.stdout
    assert "src" not in lines["ROUTE"], result.stdout
    # The host's own address is the first packet's source; the trap acquires it.
    assert "src 192.0.2.1" in lines["BEFORE"], result.stdout
    assert lines["ACQUIRED"] == "['home/net']", result.stdout
    assert "src 10.3.0.7" in lines["WITH"], result.stdout
    assert "src 192.0.2.1" in lines["AFTER"], result.stdout
    assert lines["LEFT"] == "nothing", result.stdout


def test_trap_on_a_new_tunnel_s_inbound_half_adds_the_out_policy() -> None:
    """The trap's out policy raises the acquires: it goes in at once, also when a new
    tunnel's inbound half (in/fwd only until its message 3) holds the policies."""
    fake = FakeXfrm()
    b, _ = backend(fake)
    sa = make_sa()
    b.install_inbound(sa)
    assert sorted(d for _, d in fake.policies) == ["fwd", "in"]
    b.install_trap(trap())
    assert sorted(d for _, d in fake.policies) == ["fwd", "in", "out"]
    b.install(sa)
    assert len(fake.states) == 2 and len(fake.policies) == 3
    b.remove(deleted(sa))
    assert fake.states == {} and len(fake.policies) == 3  # the trap's
    b.remove_trap("gw", "net")
    assert fake.policies == {}
