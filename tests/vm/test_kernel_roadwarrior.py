"""The kernel data plane as a road warrior: the virtual IP on ``lo`` (inside the VM).

ikev1d in A (``dataplane = "kernel"``, ``vips = ["0.0.0.0"]``) against a strongSwan
Mode Config server in B (``kernel-netlink``, pool 10.3.0.0/24, plain ESP). The
virtual IP goes onto A's ``lo`` with ``proto 73``, recorded in the state file;
the route to B's network uses it as source, so an ordinary ping from A (no
source chosen) leaves encrypted and is answered; ``ikev1d down`` takes the
address away again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ikev1d_lab.daemon import Ikev1dDaemon, roadwarrior_client_toml
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, roadwarrior_server_conf, strongswan_conf

from .conftest import xfrm
from .test_kernel_dataplane_strongswan import KERNEL_LOAD, _policies, _states

PSK = "kernel-roadwarrior-psk-0123456789"
IKE, ESP = "aes128-sha256-modp2048", "aes128gcm16"


def test_virtual_ip_on_lo_is_the_source_and_goes_with_the_sa(
    two_hosts: Topology, tmp_path: Path,
) -> None:
    topo = two_hosts
    ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", roadwarrior_client_toml(
        "home", topo.addr_a, topo.addr_b, topo.addr_a, "gw.example.org", PSK, [IKE], [ESP],
        topo.inner_net_b, encap=False, dataplane="kernel", retransmit_timeout="3s"))
    ours.start(timeout=180)
    theirs = Charon(topo.b, tmp_path / "charon", start=False)
    theirs.conf_path.write_text(strongswan_conf(theirs.work_dir, load=KERNEL_LOAD))
    try:
        theirs.start(timeout=60)
        theirs.load_config(roadwarrior_server_conf(
            "rw", topo.addr_b, "gw.example.org", PSK, [IKE], [ESP], topo.inner_net_b,
            addrs="10.3.0.0/24", encap=False))
        result = ours.up("home", timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        (ike,) = ours.status()["ike_sas"]
        vip = ike["virtual_ip"]
        assert vip and vip.startswith("10.3.0."), ike
        lo = topo.a.run(["ip", "-o", "addr", "show", "dev", "lo"]).stdout
        assert f"{vip}/32" in lo, lo
        state = json.loads((tmp_path / "ikev1d" / "ikev1d.kernel-dataplane.json").read_text())
        assert [vip, 1] in state["addresses"]
        route = topo.a.run(["ip", "route", "get", topo.inner_addr_b]).stdout
        assert f"src {vip}" in route, route
        assert ping(topo.a, topo.inner_addr_b, count=3) == (3, 3)
        assert f"src {vip}/32 dst {topo.inner_net_b}" in xfrm(topo.a, "policy")
        ours.down("home")
        lo = topo.a.run(["ip", "-o", "addr", "show", "dev", "lo"]).stdout
        assert vip not in lo, lo
    finally:
        code = ours.stop(timeout=30)
        theirs.stop()
    assert code == 0, ours.log_text()[-3000:]


def _ping_until_answered(topo: Topology, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while ping(topo.a, topo.inner_addr_b, count=1, timeout=3).received != 1:
        assert time.monotonic() < deadline, "no echo came back through the trap"


def _sa_states(topo: Topology) -> dict[str, dict[str, Any]]:
    """The SAs, without the larval one the kernel keeps for a while after an acquire."""
    return {spi: s for spi, s in _states(topo.a).items() if spi != "00000000"}


def test_a_trap_for_the_virtual_ip_child_is_acquired_through_the_kernel(
    two_hosts: Topology, tmp_path: Path,
) -> None:
    """``start_action = "trap"`` for the road warrior's child: the trap's policies
    catch every source (0.0.0.0/0, there is no virtual IP yet) and its route names
    none, at metric 2048; the first ping, from A's own address, is acquired and
    brings up Main Mode, Mode Config and the child; the SA pair's own policies and
    route make the virtual IP the source; after ``down`` the trap alone is left
    and traffic brings the tunnel up again."""
    topo = two_hosts
    ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", roadwarrior_client_toml(
        "home", topo.addr_a, topo.addr_b, topo.addr_a, "gw.example.org", PSK, [IKE], [ESP],
        topo.inner_net_b, encap=False, dataplane="kernel", retransmit_timeout="3s",
    ).replace("[connections.home]\n", '[connections.home]\nstart_action = "trap"\n', 1))
    ours.start(timeout=180)
    theirs = Charon(topo.b, tmp_path / "charon", start=False)
    theirs.conf_path.write_text(strongswan_conf(theirs.work_dir, load=KERNEL_LOAD))
    try:
        theirs.start(timeout=60)
        theirs.load_config(roadwarrior_server_conf(
            "rw", topo.addr_b, "gw.example.org", PSK, [IKE], [ESP], topo.inner_net_b,
            addrs="10.3.0.0/24", encap=False))
        policies = xfrm(topo.a, "policy")
        assert f"src 0.0.0.0/0 dst {topo.inner_net_b}" in policies, policies
        assert len(_policies(topo.a)) == 3 and _sa_states(topo) == {}
        trap_route = topo.a.run(["ip", "route", "show", topo.inner_net_b]).stdout
        assert "metric 2048" in trap_route and "src" not in trap_route, trap_route
        assert theirs.list_sas() == []
        _ping_until_answered(topo, 120)
        assert "acquire for home/net: initiating" in ours.log_text(), ours.log_text()[-3000:]
        (ike,) = ours.status()["ike_sas"]
        vip = ike["virtual_ip"]
        assert vip and vip.startswith("10.3.0."), ike
        route = topo.a.run(["ip", "route", "get", topo.inner_addr_b]).stdout
        assert f"src {vip}" in route, route
        assert ping(topo.a, topo.inner_addr_b, count=3) == (3, 3)
        policies = xfrm(topo.a, "policy")
        assert f"src {vip}/32 dst {topo.inner_net_b}" in policies, policies
        assert len(_policies(topo.a)) == 6 and len(_sa_states(topo)) == 2
        # down: the pair, its policies, route and the virtual IP go; the trap stays.
        assert ours.down("home").returncode == 0
        lo = topo.a.run(["ip", "-o", "addr", "show", "dev", "lo"]).stdout
        assert vip not in lo, lo
        assert len(_policies(topo.a)) == 3 and _sa_states(topo) == {}
        assert "metric 2048" in topo.a.run(["ip", "route", "show", topo.inner_net_b]).stdout
        _ping_until_answered(topo, 120)
        assert ours.log_text().count("acquire for home/net: initiating") == 2
    finally:
        code = ours.stop(timeout=30)
        theirs.stop()
    assert code == 0, ours.log_text()[-3000:]
    assert _policies(topo.a) == [] and _sa_states(topo) == {}
    assert topo.a.run(["ip", "route", "show", "proto", "73"]).stdout.strip() == ""
