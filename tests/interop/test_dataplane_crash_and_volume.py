"""The userspace data plane between two ikev1d: a SIGKILL and what it leaves, routes that
are not ours, and renewal by volume (life_bytes).

* SIGKILL with a full tunnel up (A's remote networks are 0.0.0.0/0, so A pins a host
  route to B outside its TUN device): the TUN device and the routes into it vanish with
  the process, the pinned host route does not. The restarted daemon removes it (it was
  recorded in the state file), the tunnel comes back, and a clean stop leaves A's
  routing table exactly as the administrator had it.
* An administrator's route to a tunnelled network is neither replaced nor deleted: the
  install fails, and the engine deletes the SA on both sides.
* life_bytes: with a small volume limit and a few megabytes of TCP, the IPsec SA is
  renewed again and again before the limit, and no byte is lost.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.ping import ping

from .test_dataplane_ikev1d import PSK, child_of, tcp_echo, udp_echo, wait_until

pytestmark = pytest.mark.interop

DaemonFactory = Callable[..., Ikev1dDaemon]


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    started: list[Ikev1dDaemon] = []

    def make(ns: Namespace, label: str, local: str, remote: str, local_ts: str,
             remote_ts: str, child_extra: str = "") -> Ikev1dDaemon:
        text = ikev1d_conf("gw", local, remote, local, remote, PSK,
                           ["aes128-sha256-modp2048"], ["aes128gcm16"], local_ts, remote_ts,
                           dataplane="userspace")
        if child_extra:
            text = text.replace('mode = "tunnel"\n', f'mode = "tunnel"\n{child_extra}\n', 1)
        daemon = Ikev1dDaemon(ns, tmp_path / f"ikev1d-{label}", text)
        started.append(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


def _routes(ns: Namespace) -> list[str]:
    return sorted(ns.run(["ip", "-4", "route", "show", "table", "main"]).stdout.splitlines())


def _no_tun(ns: Namespace) -> bool:
    return "ikev1d" not in ns.run(["ip", "link"]).stdout


def test_sigkill_leaves_only_the_pinned_peer_route_and_restart_removes_it(
    two_hosts: Topology, daemon_factory: DaemonFactory,
) -> None:
    topo = two_hosts
    # The administrator's own route, which must survive everything below untouched.
    topo.a.run(["ip", "route", "add", "198.51.100.0/24", "dev", "lo"])
    before = _routes(topo.a)
    a = daemon_factory(topo.a, "a", topo.addr_a, topo.addr_b, topo.inner_net_a, "0.0.0.0/0")
    daemon_factory(topo.b, "b", topo.addr_b, topo.addr_a, "0.0.0.0/0", topo.inner_net_a)
    assert a.up("gw").returncode == 0
    assert ping(topo.a, topo.inner_addr_b, count=2) == (2, 2)
    up = _routes(topo.a)
    pinned = f"{topo.addr_b} dev {topo.if_a} proto 73 "
    assert pinned in up and any(r.startswith("0.0.0.0/1 dev ikev1d") for r in up), up

    state_file = a.socket_path.with_name("ikev1d.userspace-dataplane.json")
    assert json.loads(state_file.read_text())["bypass_routes"] == [topo.addr_b]
    assert a.process is not None
    a.process.kill()
    a.process.wait()
    # What is really left: no TUN device and no route into it, but the pinned route.
    assert wait_until(partial(_no_tun, topo.a))
    assert _routes(topo.a) == sorted([*before, pinned]), _routes(topo.a)

    a.start()
    assert a.wait_log(f"removed host routes to {topo.addr_b} left by a previous run")
    assert _routes(topo.a) == before
    assert a.up("gw").returncode == 0
    assert ping(topo.a, topo.inner_addr_b, count=2) == (2, 2)
    assert _routes(topo.a).count(pinned) == 1
    assert a.stop() == 0
    assert _routes(topo.a) == before and not state_file.exists()


def test_an_administrators_route_is_not_replaced_and_the_sa_is_deleted_on_both_sides(
    two_hosts: Topology, daemon_factory: DaemonFactory,
) -> None:
    topo = two_hosts
    topo.a.run(["ip", "route", "add", topo.inner_net_b, "dev", "lo"])
    before = _routes(topo.a)
    a = daemon_factory(topo.a, "a", topo.addr_a, topo.addr_b, topo.inner_net_a,
                       topo.inner_net_b)
    b = daemon_factory(topo.b, "b", topo.addr_b, topo.addr_a, topo.inner_net_b,
                       topo.inner_net_a)
    result = a.up("gw", check=False)
    assert result.returncode != 0
    assert f"a route to {topo.inner_net_b} exists already and is not ikev1d's" in (
        result.stdout + result.stderr)
    assert b.wait_log("IPsec SA deleted")
    assert _routes(topo.a) == before
    assert all(not ike["children"] for ike in b.status()["ike_sas"])
    assert a.stop() == 0
    assert _routes(topo.a) == before


def test_life_bytes_renews_the_sa_and_traffic_continues(
    two_hosts: Topology, daemon_factory: DaemonFactory,
) -> None:
    topo = two_hosts
    life = 40_000
    a = daemon_factory(topo.a, "a", topo.addr_a, topo.addr_b, topo.inner_net_a,
                       topo.inner_net_b, child_extra=f"life_bytes = {life}")
    b = daemon_factory(topo.b, "b", topo.addr_b, topo.addr_a, topo.inner_net_b,
                       topo.inner_net_a)
    assert a.up("gw").returncode == 0
    first = child_of(a)["spi_in"]
    # 300 datagrams of 20..1319 octets echoed one by one (about 200 kB each way): none
    # may be lost while A's SA is renewed every ~45 kB.
    udp_echo(topo.b, topo.inner_addr_b, topo.a, topo.inner_addr_a, count=300)
    log = a.log_text()
    assert log.count("life_bytes nearly reached") >= 3, log[-3000:]
    assert log.count("IPsec SA renewed") >= 3
    assert "life_bytes reached (" not in log  # renewed in time: the limit never hit
    # Renewed SAs stay for RENEWED_DELETE_DELAY_S (5 s) after their successor is up.
    assert wait_until(lambda: len(a.status()["ike_sas"][0]["children"]) == 1, timeout=15)
    now = child_of(a)
    assert now["spi_in"] != first and now["bytes_out"] < life and now["bytes_in"] < life
    assert wait_until(lambda: len(b.status()["ike_sas"][0]["children"]) == 1, timeout=15)
    # A TCP stream far faster than a Quick Mode may hit the limit before the renewal is
    # up: then the SA stops (RFC 2408 lifetimes are hard) and TCP repairs the gap.
    tcp_echo(topo.b, topo.inner_addr_b, topo.a, topo.inner_addr_a, nbytes=300_000)
