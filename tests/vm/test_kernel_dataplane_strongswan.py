"""``dataplane = "kernel"`` against a real strongSwan, with real kernel ESP (inside the VM).

ikev1d runs in namespace A with the kernel backend; charon runs in B with its
``kernel-netlink`` plugin (not kernel-libipsec), so both ends are Linux XFRM
and plain ESP (IP protocol 50) unless a test asks for UDP encapsulation.
Traffic is ICMP and TCP between the inner networks (10.1.0.1 <-> 10.2.0.1);
B's inbound policy requires ESP, so a packet that left A in the clear would
be dropped there: an answered ping is proof that A's kernel encrypted it with
the keys ikev1d installed, and decrypted the answer.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ikev1d.testbed.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d.testbed.netns import Namespace, Topology
from ikev1d.testbed.ping import ping
from ikev1d.testbed.strongswan import DEFAULT_LOAD, Charon, strongswan_conf, swanctl_conf

from .conftest import xfrm

PSK = "kernel-dataplane-psk-0123456789"
KERNEL_LOAD = DEFAULT_LOAD.replace("kernel-libipsec ", "")
IKE = "aes128-sha256-modp2048"
TCP_ECHO = str(Path(__file__).with_name("tcp_echo.py"))
FOREIGN_SPI = "0x0badc0de"


@dataclass
class Tunnel:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon


MakeTunnel = Callable[..., Tunnel]


def _start_charon(ns: Namespace, work: Path) -> Charon:
    charon = Charon(ns, work, start=False)
    charon.conf_path.write_text(strongswan_conf(charon.work_dir, load=KERNEL_LOAD))
    charon.start(timeout=60)
    return charon


@pytest.fixture
def make_tunnel(two_hosts: Topology, tmp_path: Path) -> Iterator[MakeTunnel]:
    daemons: list[Ikev1dDaemon] = []
    charons: list[Charon] = []

    def make(esp: str, *, encap: bool = False, mode: str = "tunnel") -> Tunnel:
        topo = two_hosts
        if mode == "transport":
            ours_ts: tuple[str, str] = (f"{topo.addr_a}/32", f"{topo.addr_b}/32")
        else:
            ours_ts = (topo.inner_net_a, topo.inner_net_b)
            # The kernel backend installs SAs and policies, not routes (strongSwan
            # puts its own in table 220); the route gives A's packets the right source.
            topo.a.run(["ip", "route", "add", topo.inner_net_b, "via", topo.addr_b,
                        "src", topo.inner_addr_a])
        ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", ikev1d_conf(
            "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
            [IKE], [esp], ours_ts[0], ours_ts[1], encap=encap, mode=mode,
            dataplane="kernel", retransmit_timeout="3s",
        ))
        daemons.append(ours)
        ours.start(timeout=60)
        theirs = _start_charon(topo.b, tmp_path / "charon")
        charons.append(theirs)
        theirs.load_config(swanctl_conf(
            "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK,
            [IKE], [esp], ours_ts[1], ours_ts[0], encap=encap, mode=mode,
        ))
        return Tunnel(topo, ours, theirs)

    yield make
    codes = [daemon.stop(timeout=20) for daemon in daemons]
    for charon in charons:
        charon.stop()
    assert codes == [0] * len(codes), [d.log_text()[-3000:] for d in daemons]


# --- helpers --------------------------------------------------------------------------------


def _states(ns: Namespace) -> dict[str, dict[str, Any]]:
    """``ip -s xfrm state`` by SPI: the block's text and its current bytes/packets."""
    result: dict[str, dict[str, Any]] = {}
    text = xfrm(ns, "state")
    for block in re.split(r"\n(?=src )", text.strip()):
        spi = re.search(r"spi 0x([0-9a-f]{8})", block)
        if spi is None:
            continue
        current = re.search(r"lifetime current:\s*(\d+)\(bytes\), (\d+)\(packets\)", block)
        result[spi.group(1)] = {
            "text": block,
            "bytes": int(current.group(1)) if current else -1,
            "packets": int(current.group(2)) if current else -1,
        }
    return result


def _policies(ns: Namespace) -> list[str]:
    text = xfrm(ns, "policy")
    return [b for b in re.split(r"\n(?=src )", text.strip()) if b.startswith("src ")]


def _child(tunnel: Tunnel) -> dict[str, Any]:
    (ike,) = tunnel.ours.status()["ike_sas"]
    (child,) = ike["children"]
    assert child["state"] == "INSTALLED"
    return dict(child)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _ping_both_ways(tunnel: Tunnel, count: int = 3) -> None:
    topo = tunnel.topo
    there = ping(topo.a, topo.inner_addr_b, src=topo.inner_addr_a, count=count, timeout=5)
    back = ping(topo.b, topo.inner_addr_a, src=topo.inner_addr_b, count=count, timeout=5)
    assert (there.received, back.received) == (count, count), tunnel.ours.log_text()[-3000:]


def _tcp_echo(server_ns: Namespace, server: str, client_ns: Namespace, client: str,
              size: int, port: int = 5001) -> None:
    proc = server_ns.popen([sys.executable, TCP_ECHO, "serve", server, str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        result = client_ns.run([sys.executable, TCP_ECHO, "send", server, str(port), client,
                                str(size)], check=False, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _add_foreign_entries(ns: Namespace, remote: str, local: str) -> None:
    """An SA and a policy that are not ikev1d's: they must survive `down` and shutdown."""
    ns.run(["ip", "xfrm", "state", "add", "src", local, "dst", "192.0.2.99", "proto", "esp",
            "spi", FOREIGN_SPI, "reqid", "999", "mode", "tunnel", "aead", "rfc4106(gcm(aes))",
            "0x" + "11" * 20, "128"])
    ns.run(["ip", "xfrm", "policy", "add", "src", "10.9.0.0/24", "dst", "10.8.0.0/24",
            "dir", "out", "tmpl", "src", local, "dst", "192.0.2.99", "proto", "esp",
            "reqid", "999", "mode", "tunnel"])


# --- tests ----------------------------------------------------------------------------------


def test_gcm_tunnel_carries_ping_and_tcp_and_down_removes_only_ours(
    make_tunnel: MakeTunnel,
) -> None:
    tunnel = make_tunnel("aes128gcm16")
    topo = tunnel.topo
    _add_foreign_entries(topo.a, topo.addr_b, topo.addr_a)
    foreign_policies = _policies(topo.a)
    assert list(_states(topo.a)) == [FOREIGN_SPI[2:]] and len(foreign_policies) == 1

    result = tunnel.ours.up("gw", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    child = _child(tunnel)
    spi_in, spi_out = child["spi_in"], child["spi_out"]
    states = _states(topo.a)
    assert set(states) == {spi_in, spi_out, FOREIGN_SPI[2:]}
    inbound, outbound = states[spi_in]["text"], states[spi_out]["text"]
    assert inbound.startswith(f"src {topo.addr_b} dst {topo.addr_a}")
    assert outbound.startswith(f"src {topo.addr_a} dst {topo.addr_b}")
    for text in (inbound, outbound):
        assert "aead rfc4106(gcm(aes))" in text and "mode tunnel" in text
        assert "encap" not in text
    # The keys are the ones strongSwan derived too: its SPIs mirror ours.
    (their_child,) = tunnel.theirs.list_sas()[0]["children"]
    assert (their_child["spi-in"], their_child["spi-out"]) == (spi_out, spi_in)

    ours = [p for p in _policies(topo.a) if p not in foreign_policies]
    directions = sorted(re.search(r"dir (\w+)", p).group(1) for p in ours)  # type: ignore[union-attr]
    assert directions == ["fwd", "in", "out"], ours
    for policy in ours:
        assert "proto esp" in policy and "mode tunnel" in policy

    _ping_both_ways(tunnel)
    _tcp_echo(topo.b, topo.inner_addr_b, topo.a, topo.inner_addr_a, 200_000)
    _tcp_echo(topo.a, topo.inner_addr_a, topo.b, topo.inner_addr_b, 200_000, port=5002)

    states = _states(topo.a)
    assert states[spi_in]["packets"] >= 6 and states[spi_out]["packets"] >= 6
    assert states[spi_in]["bytes"] > 200_000 and states[spi_out]["bytes"] > 200_000
    child = _child(tunnel)
    assert child["packets_in"] >= states[spi_in]["packets"] > 0
    assert child["bytes_out"] >= states[spi_out]["bytes"] > 0
    (their_child,) = tunnel.theirs.list_sas()[0]["children"]
    assert int(their_child["bytes-in"]) > 200_000 and int(their_child["bytes-out"]) > 200_000

    assert tunnel.ours.down("gw").returncode == 0
    _wait(lambda: set(_states(topo.a)) == {FOREIGN_SPI[2:]}, 20, "ikev1d's SAs to go")
    assert _policies(topo.a) == foreign_policies
    _wait(lambda: not tunnel.theirs.list_sas(), 20, "strongSwan to take the Delete")


@pytest.mark.parametrize(("esp", "expect"), [
    ("aes128-sha256", ["enc cbc(aes)", "auth-trunc hmac(sha256)", "128"]),
    ("aes256-sha512", ["enc cbc(aes)", "auth-trunc hmac(sha512)", "256"]),
    ("3des-sha1", ["enc cbc(des3_ede)", "auth-trunc hmac(sha1)", "96"]),
    ("aes256gcm16-modp2048", ["aead rfc4106(gcm(aes))", "128"]),
])
def test_algorithms(make_tunnel: MakeTunnel, esp: str, expect: list[str]) -> None:
    tunnel = make_tunnel(esp)
    result = tunnel.ours.up("gw", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    child = _child(tunnel)
    text = _states(tunnel.topo.a)[child["spi_out"]]["text"]
    for word in expect:
        assert word in text, text
    _ping_both_ways(tunnel, count=2)


def test_strongswan_initiates_and_sigterm_removes_everything(make_tunnel: MakeTunnel) -> None:
    tunnel = make_tunnel("aes128gcm16")
    ok, out = tunnel.theirs.initiate("net", "gw", timeout=60)
    assert ok, out + tunnel.ours.log_text()[-3000:]
    _wait(lambda: len(_states(tunnel.topo.a)) == 2, 20, "ikev1d to install the SAs")
    _ping_both_ways(tunnel)
    assert len(_policies(tunnel.topo.a)) == 3
    assert tunnel.ours.stop(timeout=20) == 0
    assert _states(tunnel.topo.a) == {} and _policies(tunnel.topo.a) == []


def test_udp_encapsulated_esp_through_both_kernels(make_tunnel: MakeTunnel) -> None:
    tunnel = make_tunnel("aes128gcm16", encap=True)
    result = tunnel.ours.up("gw", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    child = _child(tunnel)
    assert child["encap"] is True
    for text in (s["text"] for s in _states(tunnel.topo.a).values()):
        assert "encap type espinudp sport 4500 dport 4500" in text, text
    # Inbound ESP-in-UDP reaches the kernel only through ikev1d's NAT-T socket (UDP_ENCAP).
    _ping_both_ways(tunnel)
    assert _child(tunnel)["packets_in"] >= 6


def test_transport_mode_between_the_gateways(make_tunnel: MakeTunnel) -> None:
    tunnel = make_tunnel("aes128-sha256", mode="transport")
    topo = tunnel.topo
    result = tunnel.ours.up("gw", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    child = _child(tunnel)
    assert "mode transport" in _states(topo.a)[child["spi_out"]]["text"]
    assert ping(topo.a, topo.addr_b, count=3, timeout=5).received == 3
    states = _states(topo.a)
    assert states[child["spi_out"]]["packets"] >= 3 and states[child["spi_in"]]["packets"] >= 3
    # IKE between the same two addresses still passes (socket bypass policies): `down`
    # sends Delete in the clear and strongSwan acts on it.
    assert tunnel.ours.down("gw").returncode == 0
    _wait(lambda: not tunnel.theirs.list_sas(), 20, "strongSwan to take the Delete")
    assert _states(topo.a) == {} and _policies(topo.a) == []
