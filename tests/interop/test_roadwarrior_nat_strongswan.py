"""Two strongSwan road warriors behind one masquerading NAT against an ikev1d server.

Clients C1 (192.168.1.2) and C2 (192.168.2.2) sit behind router R, which
masquerades both to 192.0.2.254 with random source ports (nftables
``masquerade fully-random``); server S (192.0.2.2, 10.2.0.1/24 on lo) runs ikev1d
with the userspace data plane, pool 10.3.0.0/24 and an XAUTH round. Both clients
show the same group ID and group key and log in as different XAUTH users, so
only the XAUTH user tells them apart: they get two leases and two working
tunnels, and ``ikev1d down rw --ike-id N`` (or ``--peer`` with the XAUTH user)
removes one road warrior while the other keeps its tunnel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon, roadwarrior_server_toml
from ikev1d_lab.netns import Namespace, veth_pair
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import (
    ROADWARRIOR_LOAD,
    Charon,
    roadwarrior_client_conf,
    strongswan_available,
)

pytestmark = pytest.mark.interop

PSK = "road-warrior-group-key-0123456789"
P1, P2 = ["aes128-sha256-modp2048"], ["aes128gcm16"]
SERVER_ID = "gw.example.org"
GROUP_ID = "staff@example.org"
NAT_ADDR = "192.0.2.254"
USERS = {"alice": "alice's password", "bob": "bob's password"}


@dataclass
class Rig:
    server_ns: Namespace
    server: Ikev1dDaemon
    clients: dict[str, tuple[Namespace, Charon]]  # by XAUTH user


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    for check in (netns.netns_available, strongswan_available):
        ok, reason = check()
        if not ok:
            pytest.skip(reason)
    work: Path = tmp_path_factory.mktemp("rw-nat")
    made: list[Namespace] = []
    charons: list[Charon] = []
    server: Ikev1dDaemon | None = None
    try:
        for label in ("c1", "c2", "r", "s"):
            made.append(Namespace(label))
        c1, c2, r, s = made
        veth_pair(c1, r, "192.168.1.2/24", "192.168.1.1/24")
        veth_pair(c2, r, "192.168.2.2/24", "192.168.2.1/24")
        outside_if, _ = veth_pair(r, s, f"{NAT_ADDR}/24", "192.0.2.2/24")
        c1.add_route("default", via="192.168.1.1")
        c2.add_route("default", via="192.168.2.1")
        s.add_lo_address("10.2.0.1/24")
        r.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        r.run(["nft", "add", "table", "ip", "nat"])
        r.run(["nft", "add", "chain", "ip", "nat", "post",
               "{ type nat hook postrouting priority 100 ; }"])
        r.run(["nft", "add", "rule", "ip", "nat", "post", "oifname", outside_if,
               "masquerade", "fully-random"])
        server = Ikev1dDaemon(s, work / "server", roadwarrior_server_toml(
            "rw", "192.0.2.2", SERVER_ID, PSK, P1, P2, "10.2.0.0/24", dns=["10.2.0.53"],
            xauth_users=USERS))
        server.start()
        clients = {}
        for (user, password), (ns, address) in zip(
                USERS.items(), ((c1, "192.168.1.2"), (c2, "192.168.2.2")), strict=True):
            charon = Charon(ns, work / f"charon-{user}", load=ROADWARRIOR_LOAD)
            charons.append(charon)
            charon.load_config(roadwarrior_client_conf(
                "home", address, "192.0.2.2", GROUP_ID, SERVER_ID, PSK, P1, P2,
                "10.2.0.0/24", xauth_id=user, xauth_password=password))
            clients[user] = (ns, charon)
        yield Rig(s, server, clients)
    finally:
        code = server.stop() if server is not None else 0
        for charon in charons:
            charon.stop()
        for ns in reversed(made):
            ns.close()
    assert code == 0


def server_sas(rig: Rig) -> list[dict[str, Any]]:
    sas: list[dict[str, Any]] = rig.server.status()["ike_sas"]
    return sas


def test_two_clients_behind_one_nat_with_one_group_id(rig: Rig) -> None:
    vips = {}
    for user, (_, charon) in rig.clients.items():
        ok, out = charon.initiate("net", "home")
        assert ok, out + rig.server.log_text()[-3000:]
        (ike,) = charon.list_sas()
        (vip,) = ike["local-vips"]
        vips[user] = vip
    assert len(set(vips.values())) == 2 and all(v.startswith("10.3.0.") for v in vips.values())
    sas = server_sas(rig)
    assert len(sas) == 2
    assert {s["remote_id"] for s in sas} == {GROUP_ID}
    remotes = {s["remote"] for s in sas}
    assert len(remotes) == 2 and all(r.startswith(f"{NAT_ADDR}:") for r in remotes)
    assert {s["virtual_ip"] for s in sas} == set(vips.values())
    for user, (ns, charon) in rig.clients.items():
        assert ping(ns, "10.2.0.1", count=2) == (2, 2), user
        (their,) = charon.list_sas()[0]["children"]
        ours = next(s for s in sas if s["virtual_ip"] == vips[user])
        (child,) = ours["children"]
        assert int(child["spi_in"], 16) == int(their["spi-out"], 16)
        assert child["remote_ts"] == [f"{vips[user]}/32"]

    # One road warrior goes; the other keeps its tunnel.
    alice = next(s for s in sas if s["virtual_ip"] == vips["alice"])
    down = rig.server.cli("down", "rw", "--ike-id", str(alice["ike_id"]))
    assert "deleted 1 ISAKMP SA(s)" in down.stdout, down.stdout
    rig.clients["alice"][1].wait_for(lambda s: not s, timeout=10)
    deadline = time.monotonic() + 5
    while len(server_sas(rig)) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    (left,) = server_sas(rig)
    assert left["virtual_ip"] == vips["bob"]
    assert ping(rig.clients["bob"][0], "10.2.0.1", count=2) == (2, 2)
    # Alice comes back and gets her address again.
    ok, out = rig.clients["alice"][1].initiate("net", "home")
    assert ok, out
    assert rig.clients["alice"][1].list_sas()[0]["local-vips"] == [vips["alice"]]
    # Both show the group ID: the XAUTH user names one of them.
    down = rig.server.cli("down", "rw", "--peer", "bob")
    assert "deleted 1 ISAKMP SA(s)" in down.stdout, down.stdout
    rig.clients["bob"][1].wait_for(lambda s: not s, timeout=10)
    assert len(rig.clients["alice"][1].list_sas()) == 1
