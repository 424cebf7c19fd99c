"""The test rig itself: strongSwan <-> strongSwan over IKEv1 in two namespaces.

If these fail, no other interop result means anything: they prove that the
namespaces, the charons, the userspace ESP data plane (kernel-libipsec, UDP
encapsulation) and the capture/dissection work on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ikev1d_lab import netns
from ikev1d_lab.capture import isakmp_decryption_table, tshark_json
from ikev1d_lab.netns import Namespace, Topology, veth_pair
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, swanctl_conf

from .conftest import CaptureFactory, CharonFactory

pytestmark = pytest.mark.interop

PSK = "rig-test-psk-1234"


def _pair(
    topo: Topology, charon_factory: CharonFactory, esp: str = "aes128-sha256"
) -> tuple[Charon, Charon]:
    a = charon_factory(topo.a, "a")
    b = charon_factory(topo.b, "b")
    common: dict[str, Any] = {
        "psk": PSK,
        "proposals": ["aes128-sha256-modp2048"],
        "esp_proposals": [esp],
    }
    a.load_config(swanctl_conf(
        "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b,
        local_ts=topo.inner_net_a, remote_ts=topo.inner_net_b, **common,
    ))  # fmt: skip
    b.load_config(swanctl_conf(
        "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a,
        local_ts=topo.inner_net_b, remote_ts=topo.inner_net_a, **common,
    ))  # fmt: skip
    return a, b


def _only_child(sas: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(sas) == 1, sas
    assert len(sas[0]["children"]) == 1, sas
    child: dict[str, Any] = sas[0]["children"][0]
    return child


def test_main_mode_quick_mode_and_tunnel_traffic(
    two_hosts: Topology, charon_factory: CharonFactory
) -> None:
    a, b = _pair(two_hosts, charon_factory)
    # No SA yet: the inner networks must not reach each other.
    assert ping(two_hosts.a, two_hosts.inner_addr_b, src=two_hosts.inner_addr_a,
                count=1, timeout=0.3).received == 0  # fmt: skip

    ok, out = a.initiate("net", "gw", timeout=10)
    assert ok, out
    assert "IKE_SA gw[1] established" in out

    sas_a, sas_b = a.list_sas(), b.list_sas()
    ike_a, ike_b = sas_a[0], sas_b[0]
    for ike in (ike_a, ike_b):
        assert ike["version"] == "1"
        assert ike["state"] == "ESTABLISHED"
        assert (ike["encr-alg"], ike["encr-keysize"]) == ("AES_CBC", "128")
        assert ike["integ-alg"] == "HMAC_SHA2_256_128"
        assert ike["prf-alg"] == "PRF_HMAC_SHA2_256"
        assert ike["dh-group"] == "MODP_2048"
    assert ike_a["initiator"] == "yes" and ike_b.get("initiator") != "yes"
    assert ike_a["initiator-spi"] == ike_b["initiator-spi"]
    assert ike_a["responder-spi"] == ike_b["responder-spi"]
    assert ike_a["initiator-spi"] != ike_a["responder-spi"]

    child_a, child_b = _only_child(sas_a), _only_child(sas_b)
    for child in (child_a, child_b):
        assert child["state"] == "INSTALLED"
        assert child["mode"] == "TUNNEL"
        assert child["encap"] == "yes"
        assert child["integ-alg"] == "HMAC_SHA2_256_128"
    assert child_a["spi-in"] == child_b["spi-out"]
    assert child_a["spi-out"] == child_b["spi-in"]
    assert len(child_a["spi-in"]) == 8
    assert child_a["local-ts"] == ["10.1.0.0/24"] and child_a["remote-ts"] == ["10.2.0.0/24"]
    assert int(child_a["packets-out"]) == 0

    result = ping(two_hosts.a, two_hosts.inner_addr_b, src=two_hosts.inner_addr_a, count=2)
    assert result.received == 2, result

    child_a, child_b = _only_child(a.list_sas()), _only_child(b.list_sas())
    assert int(child_a["packets-out"]) >= 2 and int(child_a["packets-in"]) >= 2
    assert int(child_b["packets-in"]) >= 2 and int(child_b["bytes-in"]) > 0

    ok, out = a.terminate(ike="gw")
    assert ok, out
    b.wait_for(lambda sas: not sas, timeout=5)


def test_capture_sees_isakmp_and_esp_in_udp(
    two_hosts: Topology, charon_factory: CharonFactory, capture_factory: CaptureFactory
) -> None:
    a, _b = _pair(two_hosts, charon_factory)
    cap = capture_factory(two_hosts.a, two_hosts.if_a, "udp port 500 or udp port 4500")
    ok, out = a.initiate("net", "gw", timeout=10)
    assert ok, out
    assert ping(two_hosts.a, two_hosts.inner_addr_b, src=two_hosts.inner_addr_a).received == 2
    packets = tshark_json(cap.stop())
    layers = [p["_source"]["layers"] for p in packets]
    exch = [int(ly["isakmp"]["isakmp.exchangetype"]) for ly in layers if "isakmp" in ly]
    # Main Mode (Identity Protection, 2) is 6 messages, Quick Mode (32) 3.
    assert exch.count(2) == 6 and exch.count(32) == 3, exch
    esp = [ly for ly in layers if "esp" in ly]
    assert len(esp) >= 4  # 2 echo requests + 2 replies, UDP-encapsulated (RFC 3948)
    assert all(ly["udp"]["udp.dstport"] == "4500" for ly in esp)


def test_namespace_close_kills_processes_and_removes_links(require_root_netns: None) -> None:
    with netns.two_hosts() as topo:
        proc = topo.a.popen(["sleep", "60"])
        names = (topo.a.name, topo.b.name)
        assert len(topo.if_a) <= 15 and len(topo.if_b) <= 15
        assert str(os.getpid()) in topo.a.name
    assert proc.wait(5) != 0
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listing for name in names)


def test_two_topologies_do_not_collide(require_root_netns: None) -> None:
    with netns.two_hosts() as one, netns.two_hosts() as two:
        assert {one.a.name, one.b.name}.isdisjoint({two.a.name, two.b.name})
        assert {one.if_a, one.if_b}.isdisjoint({two.if_a, two.if_b})
        assert ping(one.a, one.addr_b, count=1).received == 1
        assert ping(two.a, two.addr_b, count=1).received == 1


def test_cleanup_stale_removes_only_dead_owners(require_root_netns: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{netns.DEFAULT_PREFIX}-{dead.pid}-1-stale"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with Namespace("live") as live:
            removed = netns.cleanup_stale()
            assert stale in removed
            assert live.name not in removed
            assert live.run(["true"]).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)


def test_veth_pair_with_caller_addresses(require_root_netns: None) -> None:
    with Namespace("x") as x, Namespace("y") as y:
        if_x, if_y = veth_pair(x, y, "198.51.100.1/30", "198.51.100.2/30")
        assert if_x in x.run(["ip", "-br", "link"]).stdout
        assert "198.51.100.2/30" in y.run(["ip", "-br", "addr", "show", if_y]).stdout
        assert ping(x, "198.51.100.2", count=1).received == 1


def test_demo_capture_decrypts_with_its_logged_key(require_root_netns: None) -> None:
    """The committed demo pcap and its JSON belong together: tshark decrypts with Ka."""
    demo = Path(__file__).parents[2] / "src" / "ikev1d_lab" / "demo_data"
    vector = json.loads((demo / "strongswan-main-quick-mode.json").read_text())
    table = {vector["initiator_cookie"]: vector["phase1"]["encryption_key"]}
    packets = tshark_json(demo / "strongswan-main-quick-mode.pcap", isakmp_decryption_table(table))
    text = json.dumps([p["_source"]["layers"].get("isakmp") for p in packets])
    # IDii/IDir (Main Mode 5/6) and the Quick Mode client IDs are only visible decrypted.
    assert '"isakmp.id.data.ipv4_addr": "192.0.2.1"' in text
    assert '"isakmp.id.data.ipv4_addr": "192.0.2.2"' in text
    subnet = '"isakmp.id.data.ipv4_addr": "10.2.0.0", "isakmp.id.data.ipv4_subnet": "255.255.255.0"'
    assert subnet in text
