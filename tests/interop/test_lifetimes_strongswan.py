"""Kilobyte lifetimes of IPsec SAs against a real strongSwan: charon proposes
one (its child's ``life_bytes``), ikev1d responds with a smaller one of its own
and says so in RESPONDER-LIFETIME (RFC 2407 section 4.6.3.1); the tunnel comes
up on both sides and our data plane gets the smaller volume."""

from __future__ import annotations

from pathlib import Path

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.strongswan import swanctl_conf

from .conftest import CharonFactory

pytestmark = pytest.mark.interop

PSK = "interop-psk-lifetimes-0123456789"


# strongSwan counts its "kilobytes" in units of 1000 bytes: 100M = 104857600 bytes
# = 104857 of them.
@pytest.mark.parametrize(("ours", "agreed"), [(2 << 20, 2048), (0, 104857)])
def test_kilobyte_lifetime_proposed_by_strongswan(
    two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path,
    ours: int, agreed: int,
) -> None:
    topo = two_hosts
    text = ikev1d_conf("gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
                       ["aes128-sha256-modp2048"], ["aes128gcm16"], topo.inner_net_a,
                       topo.inner_net_b, extra_child=f"life_bytes = {ours}")
    daemon = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", text)
    daemon.start()
    try:
        theirs = charon_factory(topo.b, "b", log_levels={"ike": 2})
        theirs.load_config(swanctl_conf(
            "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK,
            ["aes128-sha256-modp2048"], ["aes128gcm16"], topo.inner_net_b, topo.inner_net_a,
            extra_child="        life_bytes = 100M\n        rekey_bytes = 90M"))
        ok, out = theirs.initiate("net", "gw")
        assert ok, out
        (ike,) = daemon.status()["ike_sas"]
        (child,) = ike["children"]
        (their_child,) = theirs.list_sas()[0]["children"]
        assert child["spi_out"] == their_child["spi-in"]
        assert f"life_bytes {agreed} KB" in daemon.log_text()
    finally:
        assert daemon.stop() == 0
