"""``dataplane = "kernel"`` against a real strongSwan, with real kernel ESP (inside the VM).

ikev1d runs in namespace A with the kernel backend; charon runs in B with its
``kernel-netlink`` plugin (not kernel-libipsec), so both ends are Linux XFRM
and plain ESP (IP protocol 50) unless a test asks for UDP encapsulation.
ikev1d adds the routes to the remote networks itself. Traffic is ICMP
(busybox ping) and TCP (iperf3, both directions at once) between the inner
networks (10.1.N.1 <-> 10.2.N.1). B's inbound policies require ESP, so a
packet that left A in the clear would be dropped there: an answered ping is
proof that A's kernel encrypted it with the keys ikev1d installed, and decrypted the answer.

Every Python process costs ~5 s under qemu's emulation, so one connection
carries a child per ESP transform instead of one connection per transform.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.loss import clear_loss, dropped, lose_quick_mode_3
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import DEFAULT_LOAD, Charon, strongswan_conf, swanctl_conf

from .conftest import xfrm
from .esp_peer import PROPOSALS, spis

PSK = "kernel-dataplane-psk-0123456789"
KERNEL_LOAD = DEFAULT_LOAD.replace("kernel-libipsec ", "")
IKE = "aes128-sha256-modp2048"
FOREIGN_SPI = "0badc0de"
ESP_PEER = str(Path(__file__).with_name("esp_peer.py"))

# (child name, ESP proposal, what `ip xfrm state` must show for it: kernel names,
# key lengths with the GCM salt, ICV / truncation bits)
CHILDREN: list[tuple[str, str, tuple[str, ...]]] = [
    ("gcm", "aes128gcm16", (r"aead rfc4106\(gcm\(aes\)\) 0x[0-9a-f]{40} \(160 bits\) 128",)),
    ("cbc", "aes128-sha256", (r"auth-trunc hmac\(sha256\) 0x[0-9a-f]{64} \(256 bits\) 128",
                              r"enc cbc\(aes\) 0x[0-9a-f]{32} \(128 bits\)")),
    ("sha512", "aes256-sha512", (r"auth-trunc hmac\(sha512\) 0x[0-9a-f]{128} \(512 bits\) 256",
                                 r"enc cbc\(aes\) 0x[0-9a-f]{64} \(256 bits\)")),
    ("tdes", "3des-sha1", (r"auth-trunc hmac\(sha1\) 0x[0-9a-f]{40} \(160 bits\) 96",
                           r"enc cbc\(des3_ede\) 0x[0-9a-f]{48} \(192 bits\)")),
    ("pfs", "aes256gcm16-modp2048",
     (r"aead rfc4106\(gcm\(aes\)\) 0x[0-9a-f]{72} \(288 bits\) 128",)),
]


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


def _inner(side: int, index: int) -> str:
    """Inner network of child ``index`` on side 1 (A, ikev1d) or 2 (B, strongSwan)."""
    return f"10.{side}.{index}.0/24"


def _inner_addr(side: int, index: int) -> str:
    return f"10.{side}.{index}.1"


def _more_children_toml(children: Sequence[tuple[str, str]]) -> str:
    return "".join(
        f"""
[connections.gw.children.{name}]
local_ts = ["{_inner(1, i)}"]
remote_ts = ["{_inner(2, i)}"]
esp_proposals = ["{esp}"]
mode = "tunnel"
rekey_time = "1h"
""" for i, (name, esp) in enumerate(children, start=1))


def _more_children_swanctl(children: Sequence[tuple[str, str]]) -> str:
    return "".join(
        f"""      {name} {{
        local_ts = {_inner(2, i)}
        remote_ts = {_inner(1, i)}
        esp_proposals = {esp}
        mode = tunnel
        rekey_time = 1h
      }}
""" for i, (name, esp) in enumerate(children, start=1))


@pytest.fixture
def make_tunnel(two_hosts: Topology, tmp_path: Path) -> Iterator[MakeTunnel]:
    daemons: list[Ikev1dDaemon] = []
    charons: list[Charon] = []

    def make(children: Sequence[tuple[str, str]], *, encap: bool = False,
             mode: str = "tunnel") -> Tunnel:
        """One connection "gw"; child i (from 0) joins 10.1.i.0/24 and 10.2.i.0/24."""
        topo = two_hosts
        (first, esp), more = children[0], children[1:]
        if mode == "transport":
            ts: tuple[str, str] = (f"{topo.addr_a}/32", f"{topo.addr_b}/32")
        else:
            ts = (_inner(1, 0), _inner(2, 0))
            # No routes in A: ikev1d adds them (source address inside the local network).
            for i in range(1, len(children)):
                topo.a.add_lo_address(f"{_inner_addr(1, i)}/24")
                topo.b.add_lo_address(f"{_inner_addr(2, i)}/24")
        ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", ikev1d_conf(
            "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
            [IKE], [esp], ts[0], ts[1], child=first, encap=encap, mode=mode,
            dataplane="kernel", retransmit_timeout="3s",
        ) + _more_children_toml(more))
        daemons.append(ours)
        # The first Python process of the guest is slow to start under emulation, more so
        # on a loaded host (90 s was once not enough).
        ours.start(timeout=180)
        theirs = _start_charon(topo.b, tmp_path / "charon")
        charons.append(theirs)
        conf = swanctl_conf(
            "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK,
            [IKE], [esp], ts[1], ts[0], child=first, encap=encap, mode=mode,
        )
        theirs.load_config(conf.replace("    children {\n",
                                        "    children {\n" + _more_children_swanctl(more), 1))
        return Tunnel(topo, ours, theirs)

    yield make
    codes = [daemon.stop(timeout=30) for daemon in daemons]
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
    """``ip xfrm policy`` blocks, without per-socket policies (ikev1d's IKE bypass)."""
    text = xfrm(ns, "policy")
    return [b for b in re.split(r"\n(?=src )", text.strip())
            if b.startswith("src ") and "\tsocket " not in b]


def _children(tunnel: Tunnel) -> dict[str, dict[str, Any]]:
    (ike,) = tunnel.ours.status()["ike_sas"]
    return {child["name"]: child for child in ike["children"]}


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def _ping(ns: Namespace, dst: str, src: str | None, count: int = 3) -> int:
    """Echo replies received; busybox ping (native: fast under emulation) when there."""
    if shutil.which("busybox") is None:
        return ping(ns, dst, src=src, count=count, timeout=5).received
    cmd = ["busybox", "ping", "-c", str(count), "-i", "0.2", "-W", "5", "-w", "20"]
    if src is not None:
        cmd += ["-I", src]
    out = ns.run([*cmd, dst], check=False, timeout=60).stdout
    match = re.search(r"(\d+) packets received", out)
    return int(match.group(1)) if match else 0


def _ping_both_ways(tunnel: Tunnel, index: int = 0, count: int = 3) -> None:
    topo = tunnel.topo
    a, b = _inner_addr(1, index), _inner_addr(2, index)
    received = (_ping(topo.a, b, a, count), _ping(topo.b, a, b, count))
    assert received == (count, count), f"child {index}: {tunnel.ours.log_text()[-3000:]}"


def _tcp_both_ways(server_ns: Namespace, server: str, client_ns: Namespace,
                   client: str) -> tuple[int, int]:
    """iperf3 --bidir for 2 s; octets received (by the server, by the client)."""
    # Not one-off (-1): an early attempt may reach the server before it is ready.
    proc = server_ns.popen(["iperf3", "-s", "-B", server], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _attempt in range(20):
            result = client_ns.run(["iperf3", "-c", server, "-B", client, "--bidir", "-t", "2",
                                    "-J"], check=False, timeout=120)
            try:
                end = json.loads(result.stdout)["end"]
                return (int(end["sum_received"]["bytes"]),
                        int(end["sum_received_bidir_reverse"]["bytes"]))
            except (ValueError, KeyError, TypeError):
                time.sleep(0.5)
        pytest.fail(f"iperf3 failed: {result.stdout[-2000:]} {result.stderr}")
    finally:
        proc.kill()
        proc.wait()


def _add_foreign_entries(ns: Namespace, local: str) -> None:
    """An SA and a policy that are not ikev1d's: they must survive `down` and shutdown."""
    ns.run(["ip", "xfrm", "state", "add", "src", local, "dst", "192.0.2.99", "proto", "esp",
            "spi", f"0x{FOREIGN_SPI}", "reqid", "999", "mode", "tunnel",
            "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"])
    ns.run(["ip", "xfrm", "policy", "add", "src", "10.9.0.0/24", "dst", "10.8.0.0/24",
            "dir", "out", "tmpl", "src", local, "dst", "192.0.2.99", "proto", "esp",
            "reqid", "999", "mode", "tunnel"])


# --- tests ----------------------------------------------------------------------------------


def test_every_transform_carries_ping_and_tcp_and_down_removes_only_ours(
    make_tunnel: MakeTunnel,
) -> None:
    tunnel = make_tunnel([(name, esp) for name, esp, _ in CHILDREN])
    topo = tunnel.topo
    _add_foreign_entries(topo.a, topo.addr_a)
    foreign_policies = _policies(topo.a)
    assert list(_states(topo.a)) == [FOREIGN_SPI] and len(foreign_policies) == 1

    # ikev1d initiates Main Mode and the first child; strongSwan the other Quick Modes, one
    # after the other, so both roles install SAs. (`ikev1d up gw` would run the five Quick
    # Modes in parallel, which strongSwan cannot decrypt yet: an engine issue.)
    result = tunnel.ours.up("gw", child=CHILDREN[0][0], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for name, _esp, _patterns in CHILDREN[1:]:
        ok, out = tunnel.theirs.initiate(name, "gw", timeout=60)
        assert ok, out + tunnel.ours.log_text()[-3000:]
    _wait(lambda: len(_states(topo.a)) == 2 * len(CHILDREN) + 1, 30, "all SAs installed")
    children = _children(tunnel)
    states = _states(topo.a)
    ours = {c["spi_in"] for c in children.values()} | {c["spi_out"] for c in children.values()}
    assert set(states) == ours | {FOREIGN_SPI} and len(ours) == 2 * len(CHILDREN)
    (their_ike,) = tunnel.theirs.list_sas()
    theirs = {c["name"]: c for c in their_ike["children"]}
    reqids = set()
    for name, _esp, patterns in CHILDREN:
        child = children[name]
        assert child["state"] == "INSTALLED"
        inbound, outbound = states[child["spi_in"]]["text"], states[child["spi_out"]]["text"]
        assert inbound.startswith(f"src {topo.addr_b} dst {topo.addr_a}")
        assert outbound.startswith(f"src {topo.addr_a} dst {topo.addr_b}")
        for text in (inbound, outbound):
            assert "mode tunnel" in text and "encap" not in text, text
            for pattern in patterns:
                assert re.search(pattern, text), f"{name}: {pattern!r} not in {text}"
        reqid = re.search(r"reqid (\d+)", outbound)
        assert reqid is not None and reqid.group(1) in inbound
        reqids.add(reqid.group(1))
        # strongSwan derived the same SAs: its SPIs mirror ours.
        assert (theirs[name]["spi-in"], theirs[name]["spi-out"]) == (child["spi_out"],
                                                                     child["spi_in"])
    assert len(reqids) == len(CHILDREN)

    for index in range(len(CHILDREN)):
        route = topo.a.run(["ip", "route", "show", _inner(2, index)]).stdout
        assert f"via {topo.addr_b}" in route and f"src {_inner_addr(1, index)}" in route, route

    ours_policies = [p for p in _policies(topo.a) if p not in foreign_policies]
    assert len(ours_policies) == 3 * len(CHILDREN)
    directions = sorted(re.search(r"dir (\w+)", p).group(1)  # type: ignore[union-attr]
                        for p in ours_policies)
    assert directions == sorted(["fwd", "in", "out"] * len(CHILDREN))
    for policy in ours_policies:
        assert "proto esp" in policy and "mode tunnel" in policy

    for index in range(len(CHILDREN)):
        _ping_both_ways(tunnel, index)
    to_b, to_a = _tcp_both_ways(topo.b, _inner_addr(2, 0), topo.a, _inner_addr(1, 0))
    assert to_b > 100_000 and to_a > 100_000

    states = _states(topo.a)
    children = _children(tunnel)
    gcm = children["gcm"]
    assert states[gcm["spi_in"]]["bytes"] > to_a and states[gcm["spi_out"]]["bytes"] > to_b
    assert gcm["bytes_in"] >= states[gcm["spi_in"]]["bytes"]
    assert gcm["packets_out"] >= states[gcm["spi_out"]]["packets"] > 6
    for name, _esp, _patterns in CHILDREN[1:]:
        child = children[name]
        assert child["packets_in"] >= 6 and child["packets_out"] >= 6, child
    (their_ike,) = tunnel.theirs.list_sas()
    their_gcm = next(c for c in their_ike["children"] if c["name"] == "gcm")
    assert int(their_gcm["bytes-in"]) > to_b and int(their_gcm["bytes-out"]) > to_a

    assert tunnel.ours.down("gw").returncode == 0
    _wait(lambda: set(_states(topo.a)) == {FOREIGN_SPI}, 30, "ikev1d's SAs to go")
    assert _policies(topo.a) == foreign_policies
    assert "10.2." not in topo.a.run(["ip", "route"]).stdout
    _wait(lambda: not tunnel.theirs.list_sas(), 30, "strongSwan to take the Deletes")


def test_udp_encapsulated_esp_through_both_kernels_and_sigterm_cleans_up(
    make_tunnel: MakeTunnel,
) -> None:
    tunnel = make_tunnel([("net", "aes128gcm16")], encap=True)
    result = tunnel.ours.up("gw", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _children(tunnel)["net"]["encap"] is True
    for text in (s["text"] for s in _states(tunnel.topo.a).values()):
        assert "encap type espinudp sport 4500 dport 4500" in text, text
    # Inbound ESP-in-UDP reaches the kernel only through ikev1d's NAT-T socket (UDP_ENCAP).
    _ping_both_ways(tunnel)
    child = _children(tunnel)["net"]
    assert child["packets_in"] >= 6 and child["packets_out"] >= 6
    # SIGTERM: Delete sent, and everything installed is gone from the kernel.
    assert tunnel.ours.stop(timeout=30) == 0
    assert _states(tunnel.topo.a) == {} and _policies(tunnel.topo.a) == []
    _wait(lambda: not tunnel.theirs.list_sas(), 30, "strongSwan to take the Delete")


def test_transport_mode_between_the_gateways(make_tunnel: MakeTunnel) -> None:
    tunnel = make_tunnel([("host", "aes128-sha256")], mode="transport")
    topo = tunnel.topo
    result = tunnel.ours.up("gw", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    child = _children(tunnel)["host"]
    assert "mode transport" in _states(topo.a)[child["spi_out"]]["text"]
    assert _ping(topo.a, topo.addr_b, None) == 3
    states = _states(topo.a)
    assert states[child["spi_out"]]["packets"] >= 3 and states[child["spi_in"]]["packets"] >= 3
    # IKE between the same two addresses still passes (per-socket bypass policies):
    # `down` sends the Delete in the clear and strongSwan acts on it.
    assert tunnel.ours.down("gw").returncode == 0
    _wait(lambda: not tunnel.theirs.list_sas(), 30, "strongSwan to take the Delete")
    assert _states(topo.a) == {} and _policies(topo.a) == []


def test_kernel_and_ikev1d_userspace_esp_agree(two_hosts: Topology) -> None:
    """A's kernel (SAs from KernelBackend) answers ESP sealed by ikev1d's userspace ESP in B.

    One SA pair per transform (esp_peer.PROPOSALS), each on its own inner networks.
    """
    topo = two_hosts
    for index in range(len(PROPOSALS)):
        if index:
            topo.a.add_lo_address(f"{_inner_addr(1, index)}/24")
        topo.a.run(["ip", "route", "add", _inner(2, index), "via", topo.addr_b])
    installed = topo.a.run([sys.executable, ESP_PEER, "install"], check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    result = topo.b.run([sys.executable, ESP_PEER, "exchange", "3"], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    states = _states(topo.a)
    assert len(states) == 2 * len(PROPOSALS)
    for spi_in, spi_out in (spis(index) for index in range(len(PROPOSALS))):
        assert states[f"{spi_in:08x}"]["packets"] == 3, states[f"{spi_in:08x}"]["text"]
        assert states[f"{spi_out:08x}"]["packets"] == 3, states[f"{spi_out:08x}"]["text"]


def test_charon_renewing_a_child_gets_our_inbound_state_before_message_3(
    make_tunnel: MakeTunnel,
) -> None:
    """charon renews the child and ikev1d answers the Quick Mode. Its policies exist
    (the pair it renews holds them), so the kernel plane adds the inbound state before
    our message 2 leaves and the outbound one on message 3 (RFC 2409 section 5.5: charon
    sends on the new pair from message 2 on); the new pair then carries traffic."""
    tunnel = make_tunnel([("net", "aes128gcm16")])
    topo = tunnel.topo
    result = tunnel.ours.up("gw", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    first = _children(tunnel)["net"]
    proc = tunnel.theirs.swanctl(["--rekey", "--child", "net"], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _wait(lambda: _children(tunnel)["net"]["spi_in"] != first["spi_in"], 60, "the renewed SA")
    new = _children(tunnel)["net"]
    assert tunnel.ours.wait_log(f"receiving on SA {new['spi_in']}_i", timeout=10), (
        tunnel.ours.log_text()[-3000:])
    assert f"installed SAs {new['spi_in']}_i {new['spi_out']}_o" in tunnel.ours.log_text()
    states = _states(topo.a)
    assert new["spi_in"] in states and new["spi_out"] in states
    _ping_both_ways(tunnel)


def _xfrm_stat(ns: Namespace) -> dict[str, int]:
    text = ns.run(["cat", "/proc/net/xfrm_stat"], check=False).stdout
    return {name: int(value) for name, value in re.findall(r"(\w+)\s+(\d+)", text)}


def test_charon_starting_a_tunnel_gets_our_inbound_half_before_message_3(
    make_tunnel: MakeTunnel,
) -> None:
    """charon initiates a new tunnel and sends on it from our message 2 on (RFC 2409
    section 5.5). While its message 3 is lost, the kernel plane holds the new tunnel's
    inbound state with its in/fwd policies (no out policy: nothing of ours goes through
    before message 3): what charon sends meanwhile is opened, none of it dropped for
    want of a state or a policy. Then message 3 completes the pair."""
    tunnel = make_tunnel([("net", "aes128gcm16")], encap=True)
    topo = tunnel.topo
    a, b = _inner_addr(1, 0), _inner_addr(2, 0)
    before = _xfrm_stat(topo.a)
    lose_quick_mode_3(topo.a)
    try:
        proc = tunnel.theirs.swanctl(["--initiate", "--child", "net"], timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _wait(lambda: dropped(topo.a) >= 1, 30, "charon's message 3 to be lost")
        states = _states(topo.a)
        assert len(states) == 1, states
        directions = sorted(re.findall(r"\bdir (\w+)", "\n".join(_policies(topo.a))))
        assert directions == ["fwd", "in"], _policies(topo.a)
        _ping(topo.b, a, b, count=3)  # our replies cannot leave yet
        (inbound,) = _states(topo.a).values()
        stat = _xfrm_stat(topo.a)
        assert inbound["packets"] >= 3, inbound["text"]
        for name in ("XfrmInNoStates", "XfrmInNoPols", "XfrmInTmplMismatch"):
            assert stat.get(name, 0) == before.get(name, 0), (name, stat)
    finally:
        clear_loss(topo.a)
    # Our message 2 goes again (3 s), charon answers it with message 3.
    _wait(lambda: len(_states(topo.a)) == 2, 60, "the outbound state after message 3")
    assert len(_policies(topo.a)) == 3
    _ping_both_ways(tunnel)
