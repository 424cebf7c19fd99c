"""The userspace data plane against strongSwan's kernel-libipsec, ikev1d in both roles.

strongSwan runs with ``encap = yes`` (kernel-libipsec does only UDP-encapsulated
ESP), so both sides carry ESP in UDP 4500 (RFC 3948): ours through the daemon's
NAT-T socket. TCP and UDP go both ways between the inner networks (10.1.0.1 on
A's lo, 10.2.0.1 on B's, which kernel-libipsec needs for its source route), the
wire shows only IKE and ESP-in-UDP, and the counters of both sides agree.
strongSwan 5.9's libipsec (src/libipsec/ipsec_processor.c) calls
``sa->update_usestats(sa, len)`` with the length of the inner IP packet: outbound
once it is encrypted, inbound once it is decrypted (before its policy check,
which drops nothing here). ikev1d counts the same inner packet length (outbound
once sent, inbound once written to the TUN device), so with no packet lost both
packets and bytes must be equal exactly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, swanctl_conf

from .conftest import CaptureFactory, CharonFactory
from .strongswan_configs import DATAPLANE_ESP
from .test_dataplane_ikev1d import (
    assert_counters_agree,
    assert_only_ike_and_esp,
    child_of,
    kernel_drops,
    settled,
    traffic_both_ways,
    wait_until,
)

pytestmark = pytest.mark.interop

PSK = "dataplane-psk-0123456789abcdef"


@dataclass
class Pair:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon


@pytest.fixture
def make_pair(
    two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path
) -> Iterator[Callable[[str], Pair]]:
    started: list[Ikev1dDaemon] = []

    def make(esp: str, offload: str = "gro") -> Pair:
        topo = two_hosts
        ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", ikev1d_conf(
            "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
            ["aes128-sha256-modp2048"], [esp], topo.inner_net_a, topo.inner_net_b,
            dataplane="userspace", extra_daemon=f'tun_offload = "{offload}"\n',
        ))
        started.append(ours)
        ours.start()
        theirs = charon_factory(topo.b, "b")
        theirs.load_config(swanctl_conf(
            "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK,
            ["aes128-sha256-modp2048"], [esp], topo.inner_net_b, topo.inner_net_a,
        ))
        return Pair(topo, ours, theirs)

    yield make
    for daemon in started:
        code = daemon.stop()
        assert code == 0, daemon.log_text()[-3000:]


def their_counters(pair: Pair) -> dict[str, Any]:
    (ike,) = pair.theirs.list_sas()
    (child,) = ike["children"]
    return {
        "spi_in": int(child["spi-in"], 16), "spi_out": int(child["spi-out"], 16),
        "bytes_in": int(child["bytes-in"]), "bytes_out": int(child["bytes-out"]),
        "packets_in": int(child["packets-in"]), "packets_out": int(child["packets-out"]),
    }


def _agree(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    return bool(ours["packets_out"] == theirs["packets_in"]
                and ours["packets_in"] == theirs["packets_out"])


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ikev1d-initiates", "swan-initiates"])
@pytest.mark.parametrize("esp", DATAPLANE_ESP)
def test_traffic_with_strongswan(
    make_pair: Callable[..., Pair], capture_factory: CaptureFactory,
    esp: str, we_initiate: bool,
) -> None:
    pair = make_pair(esp)
    topo = pair.topo
    cap = capture_factory(topo.a, topo.if_a)
    if we_initiate:
        result = pair.ours.up("gw")
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        ok, out = pair.theirs.initiate("net", "gw")
        assert ok, out + pair.ours.log_text()[-3000:]

    drops_before = kernel_drops(topo.a, topo.b)
    assert ping(topo.a, topo.inner_addr_b, count=2) == (2, 2)
    traffic_both_ways(topo)

    ours, theirs = settled(lambda: (child_of(pair.ours), their_counters(pair)), _agree)
    assert ours["encap"] is True and ours["proposal"] == esp
    assert int(ours["spi_out"], 16) == theirs["spi_in"]
    assert ours["packets_out"] > 200 and ours["packets_in"] > 200
    assert_counters_agree(ours, theirs, kernel_drops(topo.a, topo.b) - drops_before)
    assert ours["replayed_in"] == ours["icv_failed_in"] == ours["malformed_in"] == 0

    assert_only_ike_and_esp(cap.stop())


def test_tso_with_strongswan(make_pair: Callable[..., Pair]) -> None:
    """``tun_offload = "tso"``: TCP super-packets from A's TUN device are cut into
    segments that strongSwan's libipsec opens and its kernel accepts; the echoes
    come back whole both ways and both sides count the same packets."""
    pair = make_pair("aes128gcm16", "tso")
    topo = pair.topo
    assert "TUN offload tso" in pair.ours.log_text()
    result = pair.ours.up("gw")
    assert result.returncode == 0, result.stdout + result.stderr
    drops_before = kernel_drops(topo.a, topo.b)
    assert ping(topo.a, topo.inner_addr_b, count=2) == (2, 2)
    traffic_both_ways(topo)
    ours, theirs = settled(lambda: (child_of(pair.ours), their_counters(pair)), _agree)
    assert ours["packets_out"] > 200 and ours["packets_in"] > 200
    assert_counters_agree(ours, theirs, kernel_drops(topo.a, topo.b) - drops_before)
    assert ours["replayed_in"] == ours["icv_failed_in"] == ours["malformed_in"] == 0


_SEND_BURST = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind((sys.argv[1], 0))\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    s.sendto(bytes(200), (sys.argv[2], 9))\n"
)


def _unchanged(read: Callable[[], int]) -> Callable[[], bool]:
    """A predicate true once two reads 0.3 s apart give the same value."""
    last: list[int] = []

    def check() -> bool:
        value = read()
        same = last == [value]
        last[:] = [value]
        if not same:
            time.sleep(0.2)
        return same
    return check


def test_a_route_to_the_peer_gone_under_traffic(make_pair: Callable[..., Pair]) -> None:
    """A blackhole route to strongSwan's address while packets go into the tunnel: the
    kernel refuses every ESP-in-UDP send (EINVAL). The packets are counted as dropped,
    not as sent (afterwards both sides' counters still agree); the log gets a line per
    interval, not one per packet; and once the route is gone again traffic flows, still
    in segmented sends (the refusal was the route's, not the offload's)."""
    pair = make_pair("aes128gcm16")
    topo = pair.topo
    result = pair.ours.up("gw")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ping(topo.a, topo.inner_addr_b, count=2) == (2, 2)
    before = child_of(pair.ours)
    drops_before = kernel_drops(topo.a, topo.b)

    topo.a.run(["ip", "route", "add", "blackhole", f"{topo.addr_b}/32"])
    try:
        topo.a.run([sys.executable, "-c", _SEND_BURST, topo.inner_addr_a, topo.inner_addr_b,
                    "2000"])
        assert wait_until(lambda: child_of(pair.ours)["dropped_out"]
                          - before["dropped_out"] >= 500), pair.ours.log_text()[-2000:]
        # the whole burst is handled before the route comes back: none of it trails out
        assert wait_until(_unchanged(lambda: child_of(pair.ours)["dropped_out"]))
    finally:
        topo.a.run(["ip", "route", "del", "blackhole", f"{topo.addr_b}/32"])
    during = child_of(pair.ours)
    assert during["packets_out"] == before["packets_out"]
    log = pair.ours.log_text()
    assert "cannot send" not in log
    refused = [line for line in log.splitlines()
               if "ESP packet dropped (send_error)" in line and " DEBUG " not in line]
    assert 1 <= len(refused) <= 2, refused

    assert ping(topo.a, topo.inner_addr_b, count=2) == (2, 2)
    traffic_both_ways(topo)
    ours, theirs = settled(lambda: (child_of(pair.ours), their_counters(pair)), _agree)
    assert ours["packets_out"] > during["packets_out"] + 200
    # what was refused was not counted as sent: only packets the kernel lost may be missing
    assert_counters_agree(ours, theirs, kernel_drops(topo.a, topo.b) - drops_before)
    assert "no segmentation offload" not in pair.ours.log_text()
