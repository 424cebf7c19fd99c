"""A RADIUS Access-Challenge relayed to a strongSwan 5.9 XAUTH client.

ikev1d (A, 192.0.2.1, userspace data plane) is the Mode Config / XAUTH server
and checks logins against a real FreeRADIUS 3.2 on A's loopback, which
challenges user dave once (Reply-Message and State) before it checks his
password. charon (B) logs in as dave with xauth-generic, which answers every
XAUTH request with its configured password: the second request carries the
challenge's message, the answer goes back to FreeRADIUS with the State and is
accepted; the tunnel then carries pings from the virtual IP.
"""

from __future__ import annotations

import time

import pytest

from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon, roadwarrior_server_toml
from ikev1d_lab.ping import ping
from ikev1d_lab.radius import CHALLENGE_MESSAGE, FreeRadius, freeradius_available
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
RADIUS_SECRET = "radius secret for tests"
PASSWORD = "dave's password"


def test_strongswan_answers_a_relayed_radius_challenge(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    for check in (netns.netns_available, strongswan_available, freeradius_available):
        ok, reason = check()
        if not ok:
            pytest.skip(reason)
    work = tmp_path_factory.mktemp("xauth-challenge")
    with netns.two_hosts(inner_b=None) as topo:
        radius = FreeRadius(work / "radius", {"dave": PASSWORD}, RADIUS_SECRET, ns=topo.a,
                            challenge_once=["dave"])
        server = Ikev1dDaemon(topo.a, work / "ikev1d", roadwarrior_server_toml(
            "rw", "192.0.2.1", SERVER_ID, PSK, P1, P2, "10.1.0.0/24",
            radius=("127.0.0.1:1812", RADIUS_SECRET)))
        client = Charon(topo.b, work / "charon", load=ROADWARRIOR_LOAD)
        try:
            radius.start()
            server.start()
            client.load_config(roadwarrior_client_conf(
                "home", "192.0.2.2", "192.0.2.1", "192.0.2.2", SERVER_ID, PSK, P1, P2,
                "10.1.0.0/24", xauth_id="dave", xauth_password=PASSWORD))
            ok, out = client.initiate("net", "home")
            assert ok, out + server.log_text()[-3000:]
            (theirs,) = client.list_sas()
            (vip,) = theirs["local-vips"]
            (ours,) = server.status()["ike_sas"]
            assert ours["virtual_ip"] == vip and ours["auth"] == "psk+xauth"
            log = server.log_text()
            assert "RADIUS server 127.0.0.1:1812 challenges user 'dave'" in log
            assert f"challenging user 'dave' (round 1 of at most 3): {CHALLENGE_MESSAGE}" in log
            assert "RADIUS server 127.0.0.1:1812 accepted user 'dave'" in log
            assert PASSWORD not in log
            # charon shows the server's message and needed two XAUTH rounds.
            assert CHALLENGE_MESSAGE in client.log_text()
            assert radius.log_text().count("Sent Access-Challenge") == 1
            deadline = time.monotonic() + 10
            while (result := ping(topo.b, "10.1.0.1", src=vip, count=2)) != (2, 2):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert result == (2, 2)
        finally:
            client.stop()
            code = server.stop()
            radius.stop()
        assert code == 0, server.log_text()[-3000:]
