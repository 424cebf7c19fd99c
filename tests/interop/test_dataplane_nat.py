"""The userspace data plane through a NAT: ESP in UDP 4500 (RFC 3948) to a translated port.

A (192.168.1.2, inner 10.1.0.1/24) sits behind router R, which masquerades to
192.0.2.254 with random source ports (nftables ``masquerade fully-random``), so
B (192.0.2.2, inner 10.2.0.1/24) sees A's port 4500 as some other port and must
send its ESP-in-UDP there. Both run ikev1d with ``encap = false``: NAT-D
(RFC 3947) finds the NAT, both float to 4500 and encapsulate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Namespace, Topology, veth_pair
from ikev1d_lab.ping import ping

from .conftest import CaptureFactory
from .test_dataplane_ikev1d import (
    PSK,
    _tshark_fields,
    assert_counters_agree,
    assert_only_ike_and_esp,
    child_of,
    kernel_drops,
    settled,
    traffic_both_ways,
)

pytestmark = pytest.mark.interop

NAT_ADDR = "192.0.2.254"


@dataclass
class NatSetup:
    topo: Topology
    router: Namespace
    outside_if: str
    a: Ikev1dDaemon
    b: Ikev1dDaemon


@pytest.fixture
def make_nat(
    namespace_factory: Callable[[str], Namespace], tmp_path: Path
) -> Iterator[Callable[[str], NatSetup]]:
    """``make_nat(tunnel)``: the topology and both daemons; B's side of the tunnel is
    ``tunnel`` (10.2.0.0/24, or 0.0.0.0/0 for a full tunnel from A)."""
    started: list[Ikev1dDaemon] = []

    def make(tunnel: str) -> NatSetup:
        a, r, b = namespace_factory("a"), namespace_factory("r"), namespace_factory("b")
        if_a, _ = veth_pair(a, r, "192.168.1.2/24", "192.168.1.1/24")
        outside_if, if_b = veth_pair(r, b, f"{NAT_ADDR}/24", "192.0.2.2/24")
        a.add_route("default", via="192.168.1.1")
        a.add_lo_address("10.1.0.1/24")
        b.add_lo_address("10.2.0.1/24")
        r.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        r.run(["nft", "add", "table", "ip", "nat"])
        r.run(["nft", "add", "chain", "ip", "nat", "post",
               "{ type nat hook postrouting priority 100 ; }"])
        r.run(["nft", "add", "rule", "ip", "nat", "post", "oifname", outside_if,
               "masquerade", "fully-random"])
        topo = Topology(a, b, if_a, if_b, "192.168.1.2/24", "192.0.2.2/24",
                        "10.1.0.1/24", "10.2.0.1/24")
        da = Ikev1dDaemon(a, tmp_path / "ikev1d-a", ikev1d_conf(
            "gw", "192.168.1.2", "192.0.2.2", "192.168.1.2", "192.0.2.2", PSK,
            ["aes128-sha256-modp2048"], ["aes128gcm16"], "10.1.0.0/24", tunnel,
            dataplane="userspace",
        ))
        # B knows A only by the NAT's address; A's ID is still its own address.
        db = Ikev1dDaemon(b, tmp_path / "ikev1d-b", ikev1d_conf(
            "gw", "192.0.2.2", NAT_ADDR, "192.0.2.2", "192.168.1.2", PSK,
            ["aes128-sha256-modp2048"], ["aes128gcm16"], tunnel, "10.1.0.0/24",
            dataplane="userspace",
        ))
        for d in (da, db):
            started.append(d)
            d.start()
        return NatSetup(topo, r, outside_if, da, db)

    yield make
    for d in started:
        code = d.stop()
        assert code == 0, d.log_text()[-3000:]


def test_traffic_through_nat(
    make_nat: Callable[[str], NatSetup], capture_factory: CaptureFactory
) -> None:
    s = make_nat("10.2.0.0/24")
    cap = capture_factory(s.router, s.outside_if)
    result = s.a.up("gw")
    assert result.returncode == 0, result.stdout + result.stderr
    (ike_b,) = s.b.status()["ike_sas"]
    nat_host, nat_port = ike_b["remote"].rsplit(":", 1)
    assert nat_host == NAT_ADDR and ike_b["nat_remote"] is True
    (ike_a,) = s.a.status()["ike_sas"]
    assert ike_a["nat_local"] is True

    drops_before = kernel_drops(s.topo.a, s.router, s.topo.b)
    assert ping(s.topo.a, "10.2.0.1", count=2) == (2, 2)
    traffic_both_ways(s.topo)

    ours, theirs = settled(
        lambda: (child_of(s.a), child_of(s.b)),
        lambda x, y: x["bytes_out"] == y["bytes_in"] and x["bytes_in"] == y["bytes_out"],
    )
    assert ours["encap"] is True and theirs["encap"] is True
    assert ours["packets_out"] > 200 and ours["packets_in"] > 200, ours
    assert_counters_agree(ours, theirs, kernel_drops(s.topo.a, s.router, s.topo.b) - drops_before)

    pcap = cap.stop()
    assert_only_ike_and_esp(pcap)
    # On the outside, B's ESP-in-UDP goes to the translated port, not to 4500.
    # tshark picks a UDP dissector by the lower port: a translated port below 4500
    # that belongs to another protocol would hide the ESP, so say what it is.
    fields = _tshark_fields(pcap, "ip.dst", "udp.dstport", "esp.spi",
                            decode_as=[f"udp.port=={nat_port},udpencap"])
    to_nat = {tuple(f) for f in fields if f[0] == NAT_ADDR and f[2]}
    assert to_nat and {port for _, port, _ in to_nat} == {nat_port}


def test_full_tunnel_keeps_ike_and_esp_outside(make_nat: Callable[[str], NatSetup]) -> None:
    """remote_ts 0.0.0.0/0 on A: everything goes into the tunnel except IKE/ESP to the peer.

    Without the pinned route to the peer, A's own ESP to 192.0.2.2 would be routed into
    the TUN device and sealed again in a loop; without the /1 split, A's default route
    via the NAT router would be replaced and lost when the SA goes.
    """
    s = make_nat("0.0.0.0/0")
    a = s.topo.a
    default_before = a.run(["ip", "route", "show", "default"]).stdout
    assert "via 192.168.1.1" in default_before
    result = s.a.up("gw")
    assert result.returncode == 0, result.stdout + result.stderr
    routes = a.run(["ip", "route"]).stdout
    assert "0.0.0.0/1 dev ikev1d0" in routes and "128.0.0.0/1 dev ikev1d0" in routes
    assert "192.0.2.2 via 192.168.1.1" in routes

    drops_before = kernel_drops(a, s.router, s.topo.b)
    assert ping(a, "10.2.0.1", count=2) == (2, 2)
    # B's side is 0.0.0.0/0: its route's source must still be a real address (not 127.0.0.1).
    assert "src 127." not in s.topo.b.run(["ip", "route"]).stdout
    assert ping(s.topo.b, "10.1.0.1", count=2) == (2, 2)
    traffic_both_ways(s.topo)
    ours, theirs = settled(
        lambda: (child_of(s.a), child_of(s.b)),
        lambda x, y: x["packets_out"] == y["packets_in"] and x["packets_in"] == y["packets_out"],
    )
    assert ours["packets_out"] > 200, ours
    assert_counters_agree(ours, theirs, kernel_drops(a, s.router, s.topo.b) - drops_before)
    # No loop: a few hundred packets for 600 kB each way, not an avalanche of re-sealed ESP.
    assert ours["packets_out"] < 2000, ours
    assert s.a.status()["ike_sas"][0]["state"] == "ESTABLISHED"

    assert s.a.down("gw").returncode == 0
    deadline = time.monotonic() + 5
    while "ikev1d0" in a.run(["ip", "route"]).stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    routes = a.run(["ip", "route"]).stdout
    assert "ikev1d0" not in routes and "192.0.2.2 via" not in routes
    assert a.run(["ip", "route", "show", "default"]).stdout == default_before
