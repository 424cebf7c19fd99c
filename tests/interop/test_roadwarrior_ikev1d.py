"""ikev1d road warrior against an ikev1d Mode Config / XAUTH server, both with the
userspace data plane, through the lab rig; XAUTH passwords also checked by a real
FreeRADIUS beside the server.

One topology and two daemons for the module: client A (192.0.2.1, no inner
network), server B (192.0.2.2, 10.2.0.1/24 on lo, pool 10.3.0.0/24, and
FreeRADIUS on B's loopback). Each case writes both configurations and reloads
both daemons, brings the tunnel up from A, pings B's network from the virtual
IP, compares both status documents (virtual IP, SPIs) and takes it down with
``ikev1d down rw --peer`` on the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon, roadwarrior_client_toml, roadwarrior_server_toml
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.radius import FreeRadius, freeradius_available

pytestmark = pytest.mark.interop

PSK = "road-warrior-group-key-0123456789"
P1, P2 = ["aes128-sha256-modp2048"], ["aes128gcm16"]
SERVER_ID = "gw.example.org"
USERS = {"alice": "alice's password", "bob": "bob's password"}
RADIUS_SECRET = "radius secret for tests"


@dataclass
class Rig:
    topo: Topology
    client: Ikev1dDaemon
    server: Ikev1dDaemon
    radius: FreeRadius | None


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    ok, reason = netns.netns_available()
    if not ok:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("rw-ikev1d")
    with netns.two_hosts(inner_a=None) as topo:
        server = Ikev1dDaemon(topo.b, work / "server", server_conf())
        client = Ikev1dDaemon(topo.a, work / "client", client_conf())
        radius = None
        if freeradius_available()[0]:
            radius = FreeRadius(work / "radius", {"carol": "carol's password",
                                                  "dave": "dave's password",
                                                  "erin": "erin's password"},
                                RADIUS_SECRET, ns=topo.b, challenge_once=["dave"],
                                challenge_always=["erin"])
        try:
            server.start()
            client.start()
            if radius is not None:
                radius.start()
            yield Rig(topo, client, server, radius)
        finally:
            codes = (client.stop(), server.stop())
            if radius is not None:
                radius.stop()
        assert codes == (0, 0), client.log_text()[-2000:] + server.log_text()[-2000:]


def server_conf(*, modecfg: str = "pull", xauth: bool = False, radius: bool = False) -> str:
    return roadwarrior_server_toml(
        "rw", "192.0.2.2", SERVER_ID, PSK, P1, P2, "10.2.0.0/24", dns=["10.2.0.53"],
        modecfg=modecfg, xauth_users=USERS if xauth else None,
        radius=("127.0.0.1:1812", RADIUS_SECRET) if radius else None)


def client_conf(*, modecfg: str = "pull", xauth: tuple[str, str] | None = None) -> str:
    return roadwarrior_client_toml(
        "home", "192.0.2.1", "192.0.2.2", "192.0.2.1", SERVER_ID, PSK, P1, P2, "10.2.0.0/24",
        modecfg=modecfg, encap=False, xauth_id=xauth[0] if xauth else None,
        xauth_password=xauth[1] if xauth else "")


def configure(rig: Rig, *, push: bool = False, xauth: tuple[str, str] | None = None,
              radius: bool = False) -> None:
    modecfg = "push" if push else "pull"
    rig.server.config_path.write_text(server_conf(modecfg=modecfg, xauth=xauth is not None,
                                                  radius=radius))
    rig.client.config_path.write_text(client_conf(modecfg=modecfg, xauth=xauth))
    rig.server.cli("reload")
    rig.client.cli("reload")


def wait_empty(daemon: Ikev1dDaemon, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while daemon.status()["ike_sas"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.status()["ike_sas"] == []


def established(rig: Rig) -> None:
    result = rig.client.up("home")
    assert result.returncode == 0, result.stdout + result.stderr
    (ours,) = rig.client.status()["ike_sas"]
    vip = ours["virtual_ip"]
    assert vip is not None and vip.startswith("10.3.0.")
    assert ping(rig.topo.a, "10.2.0.1", count=3) == (3, 3)
    (ours,) = rig.client.status()["ike_sas"]
    (theirs,) = rig.server.status()["ike_sas"]
    assert theirs["virtual_ip"] == vip and theirs["remote_id"] == "192.0.2.1"
    (our_child,) = ours["children"]
    (their_child,) = theirs["children"]
    assert our_child["spi_in"] == their_child["spi_out"]
    assert our_child["spi_out"] == their_child["spi_in"]
    assert their_child["remote_ts"] == [f"{vip}/32"]
    assert their_child["packets_in"] >= 3 and our_child["packets_in"] >= 3
    # The server removes this road warrior by its ID; the client hears the Delete.
    down = rig.server.cli("down", "rw", "--peer", "192.0.2.1")
    assert "deleted 1 ISAKMP SA(s)" in down.stdout, down.stdout
    wait_empty(rig.client)
    wait_empty(rig.server)
    assert vip not in rig.topo.a.run(["ip", "-o", "addr"]).stdout


def test_pull(rig: Rig) -> None:
    configure(rig)
    established(rig)


def test_push(rig: Rig) -> None:
    configure(rig, push=True)
    established(rig)


def test_xauth_good_and_bad(rig: Rig) -> None:
    configure(rig, xauth=("alice", USERS["alice"]))
    established(rig)
    configure(rig, xauth=("bob", "not bob's password"))
    result = rig.client.up("home", timeout=10, check=False)
    assert result.returncode != 0 and "XAUTH" in result.stdout + result.stderr
    assert rig.server.wait_log("XAUTH authentication failed for user 'bob'")
    assert "not bob's password" not in rig.server.log_text()
    wait_empty(rig.server)
    wait_empty(rig.client)


def test_xauth_against_freeradius(rig: Rig) -> None:
    if rig.radius is None:
        pytest.skip("freeradius is not installed")
    configure(rig, xauth=("carol", "carol's password"), radius=True)
    established(rig)
    assert rig.server.wait_log("RADIUS server 127.0.0.1:1812 accepted user 'carol'")
    configure(rig, xauth=("carol", "wrong"), radius=True)
    result = rig.client.up("home", timeout=10, check=False)
    assert result.returncode != 0
    assert rig.server.wait_log("refused user 'carol': Access-Reject")
    wait_empty(rig.server)
    wait_empty(rig.client)


def test_xauth_with_a_freeradius_challenge(rig: Rig) -> None:
    """FreeRADIUS answers dave's first Access-Request with an Access-Challenge: the
    server shows its Reply-Message to the client in a second XAUTH request, the
    client answers with its password again, and the server's second
    Access-Request (with the State) is accepted. erin is challenged every time:
    after three rounds the login fails."""
    if rig.radius is None:
        pytest.skip("freeradius is not installed")
    configure(rig, xauth=("dave", "dave's password"), radius=True)
    established(rig)
    assert rig.server.wait_log("RADIUS server 127.0.0.1:1812 challenges user 'dave'")
    assert "XAUTH: challenging user 'dave' (round 1 of at most 3): Second factor" in (
        rig.server.log_text())
    assert "XAUTH: the server says: Second factor: enter your password again" in (
        rig.client.log_text())
    assert rig.server.wait_log("RADIUS server 127.0.0.1:1812 accepted user 'dave'")
    assert rig.radius.log_text().count("Sent Access-Challenge") == 1
    assert "dave's password" not in rig.server.log_text()
    configure(rig, xauth=("erin", "erin's password"), radius=True)
    result = rig.client.up("home", timeout=30, check=False)
    assert result.returncode != 0 and "XAUTH" in result.stdout + result.stderr
    assert rig.server.wait_log("XAUTH: user 'erin' challenged 3 times: giving up")
    assert rig.radius.log_text().count("Sent Access-Challenge") == 1 + 4
    wait_empty(rig.server)
    wait_empty(rig.client)
