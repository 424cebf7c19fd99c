"""IPv6 virtual IPs through a real tunnel: strongSwan 5.9 road warriors
(``vips = ::``, and ``vips = 0.0.0.0, ::`` for dual stack) against an ikev1d
Mode Config server with an IPv6 pool, userspace data plane, IPv4 outer.

Each case pings a network behind the server from the client's IPv6 virtual
IP through the tunnel (kernel-libipsec on strongSwan's side, so ESP in UDP),
and both sides name the same virtual IPs and SPIs. tshark then dissects the
Transactions, decrypted with the keys ikev1d logs at debug level: the IPv6
attributes (INTERNAL_IP6_ADDRESS 8, INTERNAL_IP6_DNS 10, INTERNAL_IP6_SUBNET
15 as strongSwan numbers them in IKEv1) and nothing malformed.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ikev1d_lab import netns
from ikev1d_lab.capture import Capture, isakmp_decryption_table, resent_frames, tshark_json
from ikev1d_lab.daemon import Ikev1dDaemon
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import DEFAULT_LOAD, Charon, strongswan_conf

pytestmark = pytest.mark.interop

PSK = "road-warrior v6 group key 0123456789"
SERVER_ID = "gw6.example.org"
ESP = "aes128gcm16"
NET6 = "fd00:21::/64"
NET4 = "10.21.0.0/24"

SERVER_CONFIG = f"""
[daemon]
listen = ["192.0.2.1", "fd99::1"]
dataplane = "userspace"
retransmit_timeout = "1s"
retransmit_tries = 4

[connections.rw6]
local_addrs = ["192.0.2.1"]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-modp2048"]
pools = ["v6"]
[connections.rw6.local]
id = "{SERVER_ID}"
[connections.rw6.remote]
id = "six@rw.example.org"
[connections.rw6.children.net]
local_ts = ["{NET6}"]
esp_proposals = ["{ESP}"]

[connections.rwdual]
local_addrs = ["192.0.2.1"]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-modp2048"]
pools = ["dual4", "dual6"]
[connections.rwdual.local]
id = "{SERVER_ID}"
[connections.rwdual.remote]
id = "dual@rw.example.org"
[connections.rwdual.children.net]
local_ts = ["{NET4}", "{NET6}"]
esp_proposals = ["{ESP}"]

[connections.rw6o]
local_addrs = ["fd99::1"]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-modp2048"]
pools = ["v6o"]
[connections.rw6o.local]
id = "{SERVER_ID}"
[connections.rw6o.remote]
id = "sixo@rw.example.org"
[connections.rw6o.children.net]
local_ts = ["{NET6}"]
esp_proposals = ["{ESP}"]

[pools.v6o]
addrs = "fd00:5::/120"
[pools.v6]
addrs = "fd00:3::/120"
dns = ["fd00:21::53"]
split_include = ["{NET6}"]
[pools.dual4]
addrs = "10.3.21.0/24"
[pools.dual6]
addrs = "fd00:4::10-fd00:4::20"

[secrets.group]
secret = "{PSK}"
ids = ["%any"]
"""


def _child(name: str, remote_ts: str, local_ts: str = "dynamic") -> str:
    return f"""{name} {{ remote_ts = {remote_ts}
                     local_ts = {local_ts}
                     esp_proposals = {ESP}
                     rekey_time = 0 }}"""


def _client_conn(name: str, vips: str, children: str,
                 outer: tuple[str, str] = ("192.0.2.2", "192.0.2.1")) -> str:
    return f"""
  {name} {{
    version = 1
    local_addrs = {outer[0]}
    remote_addrs = {outer[1]}
    proposals = aes128-sha256-modp2048
    encap = yes
    vips = {vips}
    rekey_time = 0
    dpd_delay = 0
    local {{ auth = psk
            id = {name}@rw.example.org }}
    remote {{ auth = psk
             id = {SERVER_ID} }}
    children {{ {children} }}
  }}"""


CLIENT_CONFIG = (
    "connections {"
    + _client_conn("six", "::", _child("net", NET6))
    + _client_conn("sixo", "::", _child("net", NET6), outer=("fd99::2", "fd99::1"))
    # One Quick Mode carries one pair of IDs (RFC 2409 section 5.5): a child per
    # family. strongSwan's IKEv1 Quick Mode takes the first of a child's dynamic
    # local selectors (one per virtual IP, IPv4 first) whatever the remote family,
    # so the IPv6 child names its address, the first of the pool, itself.
    + _client_conn("dual", "0.0.0.0, ::", _child("net4", NET4)
                   + _child("net6", NET6, local_ts="fd00:4::10/128")
                   + _child("mixed", NET6))
    + "\n}\nsecrets {\n"
    + f'  ike-group {{ secret = "{PSK}" }}\n'
    + "}\n"
)


@dataclass
class Rig:
    topo: Topology
    server: Ikev1dDaemon
    client: Charon
    capture: Capture


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    ok, reason = netns.netns_available()
    if not ok:
        pytest.skip(f"interop rig unavailable: {reason}")
    work = tmp_path_factory.mktemp("rw6")
    with netns.two_hosts(inner_a=None, inner_b=None) as topo:
        topo.a.add_lo_address("fd00:21::1/64")
        topo.a.add_lo_address("10.21.0.1/24")
        # IPv6 outer addresses too, without duplicate address detection: usable at once.
        topo.a.run(["ip", "addr", "add", "fd99::1/64", "dev", topo.if_a, "nodad"])
        topo.b.run(["ip", "addr", "add", "fd99::2/64", "dev", topo.if_b, "nodad"])
        capture = Capture(topo.a, topo.if_a, work / "rw6.pcap")
        server = Ikev1dDaemon(topo.a, work / "ikev1d", SERVER_CONFIG)
        client = Charon(topo.b, work / "charon", start=False)
        client.conf_path.write_text(strongswan_conf(
            client.work_dir, load=DEFAULT_LOAD + " unity"))
        try:
            server.start()
            client.start()
            client.load_config(CLIENT_CONFIG)
            yield Rig(topo, server, client, capture)
        finally:
            capture.stop(settle=0)
            client.stop()
            server.stop()


def _established(rig: Rig, name: str, children: tuple[str, ...] = ("net",)
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    for child in children:
        ok, out = rig.client.initiate(child, name)
        assert ok, out + rig.server.log_text()[-3000:]
    theirs = next((sa for sa in rig.client.list_sas() if sa["name"] == name), None)
    assert theirs is not None and theirs["children"], out
    ours = next((sa for sa in rig.server.status()["ike_sas"]
                 if sa["remote_id"] == f"{name}@rw.example.org"
                 and sa["state"] == "ESTABLISHED"), None)
    assert ours is not None, rig.server.status()
    return theirs, ours


def _ping_from(rig: Rig, src: str, target: str) -> None:
    # kernel-libipsec installs the virtual IP and its route a moment after the SA
    # (and an IPv6 address may be tentative for a moment).
    deadline = time.monotonic() + 10
    while True:
        result = ping(rig.topo.b, target, src=src, count=2)
        if result == (2, 2) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert result == (2, 2), (src, target, rig.server.log_text()[-2000:])


def _same_child(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    (their_child,) = theirs["children"]
    (our_child,) = ours["children"]
    assert our_child["spi_in"] == their_child["spi-out"]
    assert our_child["spi_out"] == their_child["spi-in"]
    return dict(our_child)


def test_ipv6_virtual_ip_through_the_tunnel(rig: Rig) -> None:
    theirs, ours = _established(rig, "six")
    (vip,) = theirs["local-vips"]
    assert ipaddress.ip_address(vip) == ipaddress.ip_address("fd00:3::1")
    assert ours["virtual_ip"] == vip
    assert ours["dns"] == ["fd00:21::53"] and ours["split_include"] == [NET6]
    child = _same_child(theirs, ours)
    assert child["remote_ts"] == [f"{vip}/128"] and child["local_ts"] == [NET6]
    assert theirs["children"][0]["local-ts"] == [f"{vip}/128"]
    _ping_from(rig, vip, "fd00:21::1")
    assert "assigned virtual IP fd00:3::1 from pool v6" in rig.server.log_text()


def test_dual_stack_client_gets_one_address_of_each_family(rig: Rig) -> None:
    theirs, ours = _established(rig, "dual", ("net4", "net6"))
    vips = sorted(theirs["local-vips"], key=lambda v: ipaddress.ip_address(v).version)
    assert [ipaddress.ip_address(v).version for v in vips] == [4, 6], theirs
    v4, v6 = vips
    assert v4 == "10.3.21.1"
    assert ipaddress.ip_address(v6) == ipaddress.ip_address("fd00:4::10")
    assert ours["virtual_ip"] == v4 and ours["virtual_ips"] == [v4, v6]
    assert len(theirs["children"]) == len(ours["children"]) == 2
    for their_child in theirs["children"]:
        our_child = next(c for c in ours["children"]
                         if c["spi_in"] == their_child["spi-out"])
        assert our_child["spi_out"] == their_child["spi-in"]
        vip = v4 if their_child["name"] == "net4" else v6
        assert our_child["remote_ts"] == [str(ipaddress.ip_network(vip))], (
            theirs["children"], ours["children"])
        assert our_child["remote_ts"] == [str(ipaddress.ip_network(vip))]
        assert their_child["local-ts"] == our_child["remote_ts"]
    _ping_from(rig, v4, "10.21.0.1")
    _ping_from(rig, v6, "fd00:21::1")
    log = rig.server.log_text()
    assert "assigned virtual IP 10.3.21.1 from pool dual4" in log
    assert "assigned virtual IP fd00:4::10 from pool dual6" in log
    # With a dynamic local end, strongSwan proposes 10.3.21.1/32 === fd00:21::/64,
    # a pair no packet can match: refused.
    ok, _out = rig.client.initiate("mixed", "dual")
    assert not ok
    assert rig.server.wait_log(
        "INVALID-ID-INFORMATION: no child matches the peer's tunnel 10.3.21.1/32 === "
        "fd00:21::/64")


def test_ipv6_virtual_ip_over_ipv6(rig: Rig) -> None:
    """The same with IPv6 outer addresses: IKE and ESP-in-UDP over IPv6."""
    theirs, ours = _established(rig, "sixo")
    (vip,) = theirs["local-vips"]
    assert ipaddress.ip_address(vip) == ipaddress.ip_address("fd00:5::1")
    assert ours["virtual_ip"] == vip and ours["remote"] == "fd99::2:4500"
    child = _same_child(theirs, ours)
    assert child["remote_ts"] == [f"{vip}/128"] and child["encap"]
    _ping_from(rig, vip, "fd00:21::1")


def _values(node: Any, key: str) -> list[str]:
    """Every value of ``key`` anywhere in a tshark JSON packet."""
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                out += [str(x) for x in (v if isinstance(v, list) else [v])]
            else:
                out += _values(v, key)
    elif isinstance(node, list):
        for item in node:
            out += _values(item, key)
    return out


def test_tshark_dissects_the_ipv6_attributes(rig: Rig, tmp_path: Path) -> None:
    pcap = rig.capture.stop()
    keys = dict(re.findall(r"Phase 1 keys: CKY-I ([0-9a-f]{16}) .* Ka ([0-9a-f]+) IV",
                           rig.server.log_text()))
    assert keys
    packets = tshark_json(pcap, isakmp_decryption_table(keys), display_filter="isakmp")
    again = resent_frames(pcap)
    for packet in packets:
        text = str(packet)
        if set(_values(packet, "frame.number")) & again:
            continue  # a copy tshark decrypts with the wrong IV (see resent_frames)
        assert "_ws.malformed" not in text and "Malformed" not in text, packet
    seen = set()
    for packet in packets:
        if "6" in _values(packet, "isakmp.exchangetype"):
            seen.update(_values(packet, "isakmp.cfg.attr.type"))
    # INTERNAL_IP6_ADDRESS, INTERNAL_IP6_DNS, INTERNAL_IP6_SUBNET.
    assert {"8", "10", "15"} <= seen, seen
