"""ikev1d as a road warrior against a strongSwan 5.9 Mode Config / XAUTH server.

One topology, one charon and one ikev1d daemon for the module: client A
(192.0.2.1, no inner network) runs ikev1d with the userspace data plane and
``vips = ["0.0.0.0"]``; server B (192.0.2.2, 10.2.0.1/24 on lo) runs charon
with pool 10.3.0.0/24 (``xauth-generic`` loaded). Each case loads its server
connection into charon and its client configuration into ikev1d (``reload``),
brings the tunnel up, pings 10.2.0.1 from A without choosing a source (the
virtual IP on the TUN device is the route's source), checks that both sides
agree on the virtual IP and the SPIs, and takes it down again. XAUTH with a
wrong password leaves no SA on either side.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon, roadwarrior_client_toml
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import (
    ROADWARRIOR_LOAD,
    Charon,
    roadwarrior_server_conf,
    strongswan_available,
)

pytestmark = pytest.mark.interop

PSK = "road-warrior-group-key-0123456789"
P1, P2 = ["aes128-sha256-modp2048"], ["aes128gcm16"]
SERVER_ID = "gw.example.org"
USERS = {"alice": "alice's password", "bob": "bob's password"}


@dataclass
class Rig:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    for check in (netns.netns_available, strongswan_available):
        ok, reason = check()
        if not ok:
            pytest.skip(reason)
    work = tmp_path_factory.mktemp("rw")
    with netns.two_hosts(inner_a=None) as topo:
        theirs = Charon(topo.b, work / "charon", load=ROADWARRIOR_LOAD)
        ours = Ikev1dDaemon(topo.a, work / "ikev1d", client_conf())
        try:
            ours.start()
            yield Rig(topo, ours, theirs)
        finally:
            code = ours.stop()
            theirs.stop()
        assert code == 0, ours.log_text()[-3000:]


def client_conf(*, modecfg: str = "pull", xauth: tuple[str, str] | None = None,
                trap: bool = False) -> str:
    text = roadwarrior_client_toml(
        "home", "192.0.2.1", "192.0.2.2", "192.0.2.1", SERVER_ID, PSK, P1, P2, "10.2.0.0/24",
        modecfg=modecfg, xauth_id=xauth[0] if xauth else None,
        xauth_password=xauth[1] if xauth else "")
    if trap:
        text = text.replace("[connections.home]\n", '[connections.home]\nstart_action = "trap"\n')
    return text


def configure(rig: Rig, *, push: bool = False, xauth: tuple[str, str] | None = None,
              trap: bool = False) -> None:
    rig.theirs.load_config(roadwarrior_server_conf(
        "rw", "192.0.2.2", SERVER_ID, PSK, P1, P2, "10.2.0.0/24", addrs="10.3.0.0/24",
        dns=["10.2.0.53"], push=push, xauth_users=USERS if xauth else None))
    rig.ours.config_path.write_text(client_conf(modecfg="push" if push else "pull",
                                                xauth=xauth, trap=trap))
    rig.ours.cli("reload")


def their_sa(rig: Rig) -> dict[str, Any]:
    (ike,) = rig.theirs.wait_for(lambda sas: len(sas) == 1 and len(sas[0]["children"]) == 1)
    return ike


def take_down(rig: Rig) -> None:
    rig.ours.down("home")
    rig.theirs.wait_for(lambda sas: not sas)
    deadline = time.monotonic() + 5
    while rig.ours.status()["ike_sas"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rig.ours.status()["ike_sas"] == []


def established(rig: Rig) -> None:
    """Up, traffic from the virtual IP both ways, both sides agree; then down."""
    result = rig.ours.up("home")
    assert result.returncode == 0, result.stdout + result.stderr + rig.ours.log_text()[-3000:]
    try:
        (ike,) = rig.ours.status()["ike_sas"]
        vip = ike["virtual_ip"]
        assert vip is not None and vip.startswith("10.3.0."), ike
        assert ike["dns"] == ["10.2.0.53"]
        (child,) = ike["children"]
        assert child["local_ts"] == [f"{vip}/32"] and child["remote_ts"] == ["10.2.0.0/24"]
        # The source the kernel picks on A for the server's network is the virtual IP.
        route = rig.topo.a.run(["ip", "route", "get", "10.2.0.1"]).stdout
        assert f"src {vip}" in route, route
        assert ping(rig.topo.a, "10.2.0.1", count=3) == (3, 3)
        theirs = their_sa(rig)
        assert theirs["remote-vips"] == [vip]
        (their_child,) = theirs["children"]
        assert int(their_child["spi-in"], 16) == int(child["spi_out"], 16)
        assert int(their_child["spi-out"], 16) == int(child["spi_in"], 16)
        assert their_child["remote-ts"] == [f"{vip}/32"]
        assert int(their_child["packets-in"]) >= 3 and int(their_child["packets-out"]) >= 3
    finally:
        take_down(rig)
    # The virtual IP left the TUN device with the SA.
    assert vip not in rig.topo.a.run(["ip", "-o", "addr"]).stdout


def test_mode_config_pull(rig: Rig) -> None:
    configure(rig)
    established(rig)
    assert "virtual IP 10.3.0." in rig.ours.log_text()


def test_mode_config_push(rig: Rig) -> None:
    configure(rig, push=True)
    established(rig)


def test_xauth_and_pull(rig: Rig) -> None:
    configure(rig, xauth=("alice", USERS["alice"]))
    established(rig)
    assert rig.theirs.wait_log("XAuth authentication of 'alice' successful", timeout=1)


def test_xauth_with_a_wrong_password(rig: Rig) -> None:
    configure(rig, xauth=("bob", "not bob's password"))
    result = rig.ours.up("home", timeout=10, check=False)
    assert result.returncode != 0
    assert "XAUTH" in result.stdout + result.stderr, result.stdout + result.stderr
    rig.theirs.wait_log("XAuth authentication of 'bob' failed", timeout=5)
    rig.theirs.wait_for(lambda sas: not sas, timeout=10)
    deadline = time.monotonic() + 10
    while rig.ours.status()["ike_sas"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rig.ours.status()["ike_sas"] == []
    assert "10.3.0." not in rig.topo.a.run(["ip", "-o", "addr"]).stdout


def test_a_trapped_child_comes_up_with_the_virtual_ip_on_traffic(rig: Rig) -> None:
    """start_action = "trap" on a client whose end is its virtual IP: the trap
    routes the server's network into the TUN device; the first packet (from the
    host's own address: there is no virtual IP yet) brings up Main Mode, Mode
    Config and the child, and is dropped; the child and its route then use the
    virtual IP, and the next pings from it get through."""
    started_before = rig.ours.log_text().count("initiating Main Mode")
    configure(rig, trap=True)
    try:
        status = rig.ours.status()
        assert status["ike_sas"] == [], status
        (trap,) = status["traps"]
        assert (trap["name"], trap["child"], trap["remote_ts"]) == ("home", "net", ["10.2.0.0/24"])
        answered = 0
        for _ in range(10):
            answered = ping(rig.topo.a, "10.2.0.1", count=1, timeout=1.0)[1]
            if answered:
                break
        assert answered, rig.ours.log_text()[-3000:]
        assert rig.ours.wait_log("acquire for home/net: initiating")
        (ike,) = rig.ours.status()["ike_sas"]
        vip = ike["virtual_ip"]
        assert vip is not None and vip.startswith("10.3.0."), ike
        (child,) = ike["children"]
        assert child["local_ts"] == [f"{vip}/32"] and child["state"] == "INSTALLED"
        route = rig.topo.a.run(["ip", "route", "get", "10.2.0.1"]).stdout
        assert f"src {vip}" in route, route
        assert ping(rig.topo.a, "10.2.0.1", count=3) == (3, 3)
        theirs = their_sa(rig)
        assert theirs["remote-vips"] == [vip]
        assert rig.ours.log_text().count("initiating Main Mode") == started_before + 1
        take_down(rig)
        # The trap stays (the configuration still asks for it) and catches again.
        assert [t["child"] for t in rig.ours.status()["traps"]] == ["net"]
    finally:
        configure(rig)


DUAL_SERVER = f"""
connections {{
  rw {{
    version = 1
    local_addrs = 192.0.2.2
    remote_addrs = %any
    proposals = {P1[0]}
    encap = yes
    rekey_time = 0
    reauth_time = 0
    unique = no
    pools = rw4, rw6
    local {{ auth = psk
            id = {SERVER_ID} }}
    remote {{ auth = psk
             id = %any }}
    children {{ net {{ local_ts = 10.2.0.0/24, fd00:2::/64
                     esp_proposals = {P2[0]} }} }}
  }}
}}
pools {{
  rw4 {{ addrs = 10.3.0.0/24 }}
  rw6 {{ addrs = fd00:3::/120
        dns = fd00:2::53 }}
}}
secrets {{
  ike-rw {{ secret = "{PSK}" }}
}}
"""


def test_ipv6_and_dual_stack_virtual_ips_from_a_strongswan_server(rig: Rig) -> None:
    """strongSwan's pools rw4 and rw6; ikev1d asks for 0.0.0.0 and :: and gets one
    address of each, both on the TUN device; one child per family (a Quick Mode
    carries one pair of networks), each from the virtual IP of its family, and
    pings to both of the server's networks without choosing a source."""
    rig.topo.b.add_lo_address("fd00:2::1/64")
    rig.theirs.load_config(DUAL_SERVER)
    text = client_conf().replace('vips = ["0.0.0.0"]', 'vips = ["0.0.0.0", "::"]')
    text = text.replace("[secrets.home]", '[connections.home.children.net6]\n'
                        'remote_ts = ["fd00:2::/64"]\n'
                        f'esp_proposals = ["{P2[0]}"]\n\n[secrets.home]')
    rig.ours.config_path.write_text(text)
    rig.ours.cli("reload")
    result = rig.ours.up("home")
    assert result.returncode == 0, result.stdout + result.stderr + rig.ours.log_text()[-3000:]
    try:
        (ike,) = rig.ours.status()["ike_sas"]
        v4, v6 = ike["virtual_ips"]
        assert v4.startswith("10.3.0.") and v6.startswith("fd00:3::"), ike
        assert ike["virtual_ip"] == v4 and ike["dns"] == ["fd00:2::53"]
        ends = sorted((c["local_ts"], c["remote_ts"]) for c in ike["children"])
        assert ends == [([f"{v4}/32"], ["10.2.0.0/24"]), ([f"{v6}/128"], ["fd00:2::/64"])]
        for target, vip in (("10.2.0.1", v4), ("fd00:2::1", v6)):
            route = rig.topo.a.run(["ip", "route", "get", target]).stdout
            assert f"src {vip}" in route, route
            deadline = time.monotonic() + 10
            while (result_ping := ping(rig.topo.a, target, count=2)) != (2, 2):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert result_ping == (2, 2), (target, rig.ours.log_text()[-2000:])
        (theirs,) = rig.theirs.wait_for(
            lambda sas: len(sas) == 1 and len(sas[0]["children"]) == 2)
        assert sorted(theirs["remote-vips"]) == sorted([v4, v6])
        for our_child in ike["children"]:
            their_child = next(c for c in theirs["children"]
                               if int(c["spi-in"], 16) == int(our_child["spi_out"], 16))
            assert int(their_child["spi-out"], 16) == int(our_child["spi_in"], 16)
            assert their_child["remote-ts"] == our_child["local_ts"]
    finally:
        take_down(rig)
        configure(rig)
    addresses = rig.topo.a.run(["ip", "-o", "addr"]).stdout
    assert v4 not in addresses and v6 not in addresses
