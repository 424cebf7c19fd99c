"""strongSwan 5.9 road warriors (``vips = 0.0.0.0``) against an ikev1d server.

One charon in B (192.0.2.2) holds a connection per case, each with its own
IKE identity, so that the one ikev1d daemon in A (192.0.2.1, userspace data
plane) tells them apart after Main Mode: Mode Config pull, push
(``pull = no``), XAUTH with the right and a wrong password (charon's
xauth-generic plugin), and a /30 pool serving three clients. Each case that
comes up carries ICMP from the client's virtual IP through the tunnel to a
network behind the server and back (kernel-libipsec on strongSwan's side, so
ESP in UDP), and both sides name the same virtual IP and SPIs. Finally tshark
dissects the captured Transaction exchanges, decrypted with the keys ikev1d
logs at debug level, and finds nothing malformed.
"""

from __future__ import annotations

import re
import shutil
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

PSK = "road-warrior group key 0123456789"
SERVER_ID = "gw.example.org"
ESP = "aes128gcm16"

#: Each case: charon connection name -> (the network behind the server it reaches).
NETWORKS = {
    "pull": "10.11.0.0/24",
    "push": "10.12.0.0/24",
    "xauth": "10.13.0.0/24",
    "xauthbad": "10.13.0.0/24",
    "xauthpush": "10.15.0.0/24",
    "small1": "10.14.1.0/24",
    "small2": "10.14.2.0/24",
    "small3": "10.14.3.0/24",
}

SERVER_CONFIG = f"""
[daemon]
listen = ["192.0.2.1"]
dataplane = "userspace"
retransmit_timeout = "1s"
retransmit_tries = 4

[connections.rw-pull]
local_addrs = ["192.0.2.1"]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-modp2048"]
pools = ["p-pull"]
[connections.rw-pull.local]
id = "{SERVER_ID}"
[connections.rw-pull.remote]
id = "pull@rw.example.org"
[connections.rw-pull.children.net]
local_ts = ["10.11.0.0/24"]
esp_proposals = ["{ESP}"]

[connections.rw-push]
local_addrs = ["192.0.2.1"]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-modp2048"]
pools = ["p-push"]
modecfg = "push"
[connections.rw-push.local]
id = "{SERVER_ID}"
[connections.rw-push.remote]
id = "push@rw.example.org"
[connections.rw-push.children.net]
local_ts = ["10.12.0.0/24"]
esp_proposals = ["{ESP}"]

[connections.rw-xauth]
local_addrs = ["192.0.2.1"]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-modp2048"]
pools = ["p-xauth"]
[connections.rw-xauth.local]
id = "{SERVER_ID}"
[connections.rw-xauth.remote]
id = "%any"
[connections.rw-xauth.remote_xauth]
auth = "xauth"
[connections.rw-xauth.children.net]
local_ts = ["10.13.0.0/24"]
esp_proposals = ["{ESP}"]

[connections.rw-xauthpush]
local_addrs = ["192.0.2.1"]
remote_addrs = ["%any"]
proposals = ["aes256-sha256-modp2048"]
pools = ["p-xauthpush"]
modecfg = "push"
[connections.rw-xauthpush.local]
id = "{SERVER_ID}"
[connections.rw-xauthpush.remote]
id = "xauthpush@rw.example.org"
[connections.rw-xauthpush.remote_xauth]
auth = "xauth"
[connections.rw-xauthpush.children.net]
local_ts = ["10.15.0.0/24"]
esp_proposals = ["{ESP}"]

[connections.rw-small]
local_addrs = ["192.0.2.1"]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-modp2048"]
pools = ["small"]
[connections.rw-small.local]
id = "{SERVER_ID}"
[connections.rw-small.remote]
id = "%any"
[connections.rw-small.children.net]
local_ts = ["10.14.1.0/24", "10.14.2.0/24", "10.14.3.0/24"]
esp_proposals = ["{ESP}"]

[pools.p-pull]
addrs = "10.3.1.0/24"
dns = ["10.11.0.53"]
split_include = ["10.11.0.0/24"]
[pools.p-push]
addrs = "10.3.2.0/24"
dns = ["10.12.0.53"]
[pools.p-xauth]
addrs = "10.3.3.10-10.3.3.20"
[pools.p-xauthpush]
addrs = "10.3.5.0/24"
[pools.small]
addrs = "10.4.0.0/30"

[secrets.group]
secret = "{PSK}"
ids = ["%any"]
[secrets.alice]
type = "xauth"
ids = ["alice"]
secret = "alice's password"
[secrets.bob]
type = "xauth"
ids = ["bob"]
secret = "bob's password"
"""


def _client_conn(name: str, extra: str = "", rounds: str = "",
                 proposals: str = "aes128-sha256-modp2048") -> str:
    return f"""
  {name} {{
    version = 1
    local_addrs = 192.0.2.2
    remote_addrs = 192.0.2.1
    proposals = {proposals}
    encap = yes
    vips = 0.0.0.0
    rekey_time = 0
    dpd_delay = 0
    {extra}
    local {{ auth = psk
            id = {name}@rw.example.org }}
    {rounds}
    remote {{ auth = psk
             id = {SERVER_ID} }}
    children {{ net {{ remote_ts = {NETWORKS[name]}
                     esp_proposals = {ESP}
                     rekey_time = 0 }} }}
  }}"""


CLIENT_CONFIG = (
    "connections {"
    + _client_conn("pull")
    + _client_conn("push", extra="pull = no")
    + _client_conn("xauth", rounds="local-2 { auth = xauth\n xauth_id = alice }")
    + _client_conn("xauthbad", rounds="local-2 { auth = xauth\n xauth_id = bob }")
    + _client_conn("xauthpush", extra="pull = no", proposals="aes256-sha256-modp2048",
                   rounds="local-2 { auth = xauth\n xauth_id = alice }")
    + "".join(_client_conn(f"small{i}") for i in (1, 2, 3))
    + "\n}\nsecrets {\n"
    + f'  ike-group {{ secret = "{PSK}" }}\n'
    + '  xauth-alice { id = alice\n secret = "alice\'s password" }\n'
    + '  xauth-bob { id = bob\n secret = "not bob\'s password" }\n'
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
    for check in (netns.netns_available,):
        ok, reason = check()
        if not ok:
            pytest.skip(f"interop rig unavailable: {reason}")
    work = tmp_path_factory.mktemp("rw")
    with netns.two_hosts(inner_a=None, inner_b=None) as topo:
        for net in sorted(set(NETWORKS.values())):
            topo.a.add_lo_address(net.replace(".0/24", ".1/24"))
        capture = Capture(topo.a, topo.if_a, work / "rw.pcap")
        server = Ikev1dDaemon(topo.a, work / "ikev1d", SERVER_CONFIG)
        client = Charon(topo.b, work / "charon", start=False)
        client.conf_path.write_text(strongswan_conf(
            client.work_dir, load=DEFAULT_LOAD + " xauth-generic unity"))
        try:
            server.start()
            client.start()
            client.load_config(CLIENT_CONFIG)
            yield Rig(topo, server, client, capture)
        finally:
            capture.stop(settle=0)
            client.stop()
            server.stop()


def _their_sa(rig: Rig, name: str) -> dict[str, Any] | None:
    return next((sa for sa in rig.client.list_sas() if sa["name"] == name), None)


def _our_sa(rig: Rig, remote_id: str) -> dict[str, Any] | None:
    return next((sa for sa in rig.server.status()["ike_sas"]
                 if sa["remote_id"] == remote_id and sa["state"] == "ESTABLISHED"), None)


def _established(rig: Rig, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ok, out = rig.client.initiate("net", name)
    assert ok, out + rig.server.log_text()[-3000:]
    theirs = _their_sa(rig, name)
    assert theirs is not None and theirs["children"], out
    ours = _our_sa(rig, f"{name}@rw.example.org")
    assert ours is not None, rig.server.status()
    return theirs, ours


def _agree(rig: Rig, theirs: dict[str, Any], ours: dict[str, Any], network: str) -> str:
    """Both sides name the same virtual IP and SPIs; traffic from the virtual IP
    reaches the server's network and comes back. The virtual IP."""
    (vip,) = theirs["local-vips"]
    assert ours["virtual_ip"] == vip
    (their_child,) = theirs["children"]
    (our_child,) = ours["children"]
    assert our_child["spi_in"] == their_child["spi-out"]
    assert our_child["spi_out"] == their_child["spi-in"]
    assert our_child["remote_ts"] == [f"{vip}/32"]
    assert our_child["local_ts"] == [network]
    target = network.replace(".0/24", ".1")
    # kernel-libipsec installs the virtual IP and its route a moment after the SA.
    deadline = time.monotonic() + 10
    while True:
        result = ping(rig.topo.b, target, src=vip, count=2)
        if result == (2, 2) or time.monotonic() > deadline:
            break
    assert result == (2, 2)
    return str(vip)


def test_pull(rig: Rig) -> None:
    theirs, ours = _established(rig, "pull")
    assert _agree(rig, theirs, ours, NETWORKS["pull"]) == "10.3.1.1"
    assert ours["dns"] == ["10.11.0.53"] and ours["split_include"] == ["10.11.0.0/24"]
    assert "XAUTH" not in ours["auth"]


def test_push(rig: Rig) -> None:
    theirs, ours = _established(rig, "push")
    assert _agree(rig, theirs, ours, NETWORKS["push"]) == "10.3.2.1"
    log = rig.server.log_text()
    assert "assigned virtual IP 10.3.2.1 from pool p-push" in log


def test_xauth_with_the_right_password(rig: Rig) -> None:
    theirs, ours = _established(rig, "xauth")
    assert _agree(rig, theirs, ours, NETWORKS["xauth"]) == "10.3.3.10"
    assert "XAUTH authentication of 'alice' successful" in rig.server.log_text()
    assert ours["auth"] == "psk+xauth"  # XAUTHInitPreShared
    assert "alice's password" not in rig.server.log_text()


def test_xauth_with_a_wrong_password(rig: Rig) -> None:
    ok, _out = rig.client.initiate("net", "xauthbad")
    assert not ok
    assert rig.server.wait_log("XAUTH authentication failed for user 'bob'")
    assert "not bob's password" not in rig.server.log_text()
    deadline = time.monotonic() + 10
    while _their_sa(rig, "xauthbad") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _their_sa(rig, "xauthbad") is None
    assert _our_sa(rig, "xauthbad@rw.example.org") is None
    assert not [sa for sa in rig.server.status()["ike_sas"]
                if sa["remote_id"] == "xauthbad@rw.example.org"]


def test_xauth_then_push(rig: Rig) -> None:
    """After XAUTH ikev1d pushes under the message ID of its XAUTH status exchange,
    continuing that exchange's CBC chain (the form Libreswan's client needs):
    strongSwan's client takes it."""
    theirs, ours = _established(rig, "xauthpush")
    assert _agree(rig, theirs, ours, NETWORKS["xauthpush"]) == "10.3.5.1"
    assert ours["auth"] == "psk+xauth"
    log = rig.server.log_text()
    assert "assigned virtual IP 10.3.5.1 from pool p-xauthpush" in log
    assert "dropping" not in log
    assert "received retransmit" not in rig.client.log_text()


def test_a_30_pool_serves_two_of_three_clients_and_a_returning_one_gets_its_address(
        rig: Rig) -> None:
    vips = {}
    for name in ("small1", "small2"):
        theirs, ours = _established(rig, name)
        vips[name] = _agree(rig, theirs, ours, NETWORKS[name])
    assert set(vips.values()) == {"10.4.0.1", "10.4.0.2"}
    ok, out = rig.client.initiate("net", "small3")
    assert not ok
    assert rig.server.wait_log("pool small exhausted")
    # strongSwan keeps its IKE SA without an address, as with its own server;
    # its Quick Mode found no tunnel.
    assert "INVALID-ID-INFORMATION" in rig.server.log_text()
    rig.client.terminate(ike="small3")
    pools = {p["name"]: p for p in rig.server.status()["pools"]}
    assert pools["small"] == {"name": "small", "addrs": "10.4.0.0/30", "size": 2,
                              "online": 2, "offline": 0}
    # small1 leaves and comes back: the same address again.
    ok, out = rig.client.terminate(ike="small1")
    assert ok, out
    deadline = time.monotonic() + 10
    while _our_sa(rig, "small1@rw.example.org") is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {p["name"]: p for p in rig.server.status()["pools"]}["small"]["offline"] == 1
    theirs, ours = _established(rig, "small1")
    assert _agree(rig, theirs, ours, NETWORKS["small1"]) == vips["small1"]


def test_tshark_dissects_the_transaction_exchanges(rig: Rig, tmp_path: Path) -> None:
    pcap = rig.capture.stop()
    keys = dict(re.findall(r"Phase 1 keys: CKY-I ([0-9a-f]{16}) .* Ka ([0-9a-f]+) IV",
                           rig.server.log_text()))
    assert keys
    packets = tshark_json(pcap, isakmp_decryption_table(keys), display_filter="isakmp")
    transactions = [p for p in packets
                    if "6" in _values(p, "isakmp.exchangetype")]
    assert len(transactions) >= 10
    seen_types = set()
    again = resent_frames(pcap)  # seen once in some 60 runs: our XAUTH SET sent again
    malformed = [_describe(p) for p in packets
                 if ("_ws.malformed" in str(p) or "Malformed" in str(p))
                 and not set(_values(p, "frame.number")) & again]
    if malformed:  # kept for a look, with the keys in the server's log
        shutil.copy(pcap, tmp_path / "transactions.pcap")
        (tmp_path / "server.log").write_text(rig.server.log_text())
    assert malformed == [], f"kept in {tmp_path}"
    for packet in transactions:
        seen_types.update(_values(packet, "isakmp.cfg.type"))
        seen_types.update(f"attr{v}" for v in _values(packet, "isakmp.cfg.attr.type"))
    # Requests, replies, sets and acks; addresses, XAUTH user name and status.
    assert {"1", "2", "3", "4"} <= seen_types, seen_types
    assert {"attr1", "attr16521", "attr16527"} <= seen_types, seen_types
    # XAUTH then push: the pushed address (a SET with INTERNAL_IP4_ADDRESS) travels under
    # the message ID of the XAUTH status exchange, decrypted on its CBC chain.
    by_exchange: dict[tuple[str, str], list[tuple[str, set[str]]]] = {}
    for packet in transactions:
        key = (_values(packet, "isakmp.ispi")[0], _values(packet, "isakmp.messageid")[0])
        by_exchange.setdefault(key, []).append(
            (_values(packet, "isakmp.cfg.type")[0], set(_values(packet, "isakmp.cfg.attr.type"))))
    continued = [exchange for exchange in by_exchange.values()
                 if [t for t, _ in exchange] == ["3", "4", "3", "4"]
                 and "16527" in exchange[0][1] and "1" in exchange[2][1]]
    assert len(continued) == 1, by_exchange


def _describe(packet: Any) -> str:
    """Which packet, in a line: frame, addresses, exchange, message ID, what tshark says."""
    fields = ("frame.number", "ip.src", "ip.dst", "isakmp.exchangetype", "isakmp.messageid",
              "isakmp.ispi", "_ws.expert.message")
    return ", ".join(f"{f} {'/'.join(_values(packet, f)) or '-'}" for f in fields)


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
