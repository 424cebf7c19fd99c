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
from pathlib import Path

from ikev1d_lab.daemon import Ikev1dDaemon, roadwarrior_client_toml
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, roadwarrior_server_conf, strongswan_conf

from .conftest import xfrm
from .test_kernel_dataplane_strongswan import KERNEL_LOAD

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
