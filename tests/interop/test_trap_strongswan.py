"""Traps against strongSwan, userspace data plane: traffic brings the tunnel up.

* ``start_action = "trap"``: after start nothing is negotiated; a ping from
  ikev1d's local network into the trapped remote network is caught in the TUN
  device, the engine initiates, and later echoes get through (the first ones are
  dropped while the tunnel comes up, as strongSwan drops them too).
* ``dpd_action = "hold"``: charon is killed with SIGKILL (no Delete leaves), DPD
  declares it dead and traps the child; with charon back, a ping re-establishes
  the tunnel on its own.

strongSwan runs kernel-libipsec with ``encap = yes``, as in the other data plane
tests (10.1.0.1 on A's lo, 10.2.0.1 on B's).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, swanctl_conf

from .conftest import CharonFactory

pytestmark = pytest.mark.interop

PSK = "trap-psk-0123456789abcdef0123"
ESP = "aes128gcm16"


@dataclass
class Pair:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon
    their_conf: str


@pytest.fixture
def make_pair(
    two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path
) -> Iterator[Callable[[str], Pair]]:
    started: list[Ikev1dDaemon] = []

    def make(conn_extra: str) -> Pair:
        topo = two_hosts
        text = ikev1d_conf(
            "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
            ["aes128-sha256-modp2048"], [ESP], topo.inner_net_a, topo.inner_net_b,
            dataplane="userspace",
        ).replace("[connections.gw]\n", f"[connections.gw]\n{conn_extra}", 1)
        theirs = charon_factory(topo.b, "b")
        their_conf = swanctl_conf(
            "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK,
            ["aes128-sha256-modp2048"], [ESP], topo.inner_net_b, topo.inner_net_a,
        )
        theirs.load_config(their_conf)
        ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", text)
        started.append(ours)
        ours.start()
        return Pair(topo, ours, theirs, their_conf)

    yield make
    for daemon in started:
        code = daemon.stop()
        assert code == 0, daemon.log_text()[-3000:]


def ping_until_answered(pair: Pair, tries: int = 10) -> int:
    """Ping the far inner address from ours until an echo comes back; the try it did."""
    for attempt in range(1, tries + 1):
        if ping(pair.topo.a, pair.topo.inner_addr_b, src=pair.topo.inner_addr_a,
                count=1, timeout=1.0)[1] == 1:
            return attempt
    raise AssertionError("no echo came back\n" + pair.ours.log_text()[-3000:])


def installed(pair: Pair) -> list[dict[str, object]]:
    return [c for ike in pair.ours.status()["ike_sas"] for c in ike["children"]
            if c["state"] == "INSTALLED"]


def test_start_action_trap_brings_the_tunnel_up_on_traffic(
    make_pair: Callable[[str], Pair],
) -> None:
    pair = make_pair('start_action = "trap"\n')
    time.sleep(1)
    status = pair.ours.status()
    assert status["ike_sas"] == [], status  # no SA until traffic
    assert [(t["name"], t["child"], t["origin"]) for t in status["traps"]] == [
        ("gw", "net", "start_action")]
    assert pair.theirs.list_sas() == []
    ping_until_answered(pair)
    assert pair.ours.wait_log("acquire for gw/net: initiating")
    assert len(installed(pair)) == 1
    assert ping(pair.topo.a, pair.topo.inner_addr_b, src=pair.topo.inner_addr_a,
                count=3) == (3, 3)
    # The trap stays while the tunnel is up, and one negotiation was enough.
    assert len(pair.ours.status()["traps"]) == 1
    assert pair.ours.log_text().count("initiating Main Mode") == 1
    assert pair.ours.cli("status").stdout.count("TRAPPED") == 1


def test_dpd_action_hold_brings_the_tunnel_back_after_a_killed_peer(
    make_pair: Callable[[str], Pair],
) -> None:
    pair = make_pair('dpd_delay = "1s"\ndpd_timeout = "4s"\ndpd_action = "hold"\n')
    assert pair.ours.up("gw").returncode == 0
    assert "traps" not in pair.ours.status()
    charon = pair.theirs
    proc = charon.proc
    assert proc is not None
    os.killpg(proc.pid, signal.SIGKILL)  # no Delete leaves
    proc.wait(5)
    charon.proc = None
    assert pair.ours.wait_log("DPD: peer 192.0.2.2 not responding", timeout=15)
    assert "action hold" in pair.ours.log_text()
    status = pair.ours.status()
    assert status["ike_sas"] == []
    assert [(t["child"], t["origin"]) for t in status["traps"]] == [("net", "dpd_action")]
    # Nothing is re-initiated without traffic.
    time.sleep(2)
    assert pair.ours.log_text().count("initiating Main Mode") == 1
    charon.start()
    charon.load_config(pair.their_conf)
    ping_until_answered(pair)
    assert pair.ours.log_text().count("initiating Main Mode") == 2
    assert len(installed(pair)) == 1
    assert ping(pair.topo.a, pair.topo.inner_addr_b, src=pair.topo.inner_addr_a,
                count=3) == (3, 3)
    # down removes the trap DPD installed.
    assert pair.ours.down("gw").returncode == 0
    assert "traps" not in pair.ours.status()
