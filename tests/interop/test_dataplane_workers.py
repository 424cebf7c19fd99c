"""``dataplane_workers = 2`` against strongSwan's kernel-libipsec: the sealing worker.

One tunnel for the module (ikev1d on A with its sealing direction in a worker
process, charon on B, aes128gcm16 in UDP 4500 as kernel-libipsec needs), used
in order: a trap (``start_action = "trap"``) whose first packet the worker
catches and reports, which brings the tunnel up; traffic both ways with
counters equal on both sides and in the capture; a renewal of the IPsec SA
under a UDP flow; the worker killed with SIGKILL, after which traffic resumes
because the restarted worker continues the outbound sequence numbers after the
last ones it reserved (restarting them at 1 puts them behind libipsec's replay
window, RFC 4303 §3.4.3, and it drops them).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ikev1d_lab.capture import Capture
from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology, two_hosts
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, swanctl_conf
from ikev1d_lab.udpflow import FlowResult, run_flow

from .conftest import CaptureFactory
from .test_dataplane_ikev1d import (
    COUNTERS,
    _tshark_fields,
    assert_counters_agree,
    assert_only_ike_and_esp,
    child_of,
    kernel_drops,
    settled,
    traffic_both_ways,
    wait_until,
)

pytestmark = pytest.mark.interop

PSK = "workers-psk-0123456789abcdef"
ESP = "aes128gcm16"


@dataclass
class Rig:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon
    capture: Capture
    work: Path


@pytest.fixture(scope="module")
def rig(require_root_netns: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("workers")
    with two_hosts() as topo:
        ours = Ikev1dDaemon(topo.a, work / "ikev1d", ikev1d_conf(
            "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
            ["aes128-sha256-modp2048"], [ESP], topo.inner_net_a, topo.inner_net_b,
            dataplane="userspace", encap=True, extra_daemon="dataplane_workers = 2\n",
        ).replace("[connections.gw]\n", '[connections.gw]\nstart_action = "trap"\n', 1))
        theirs = Charon(topo.b, work / "charon", start=False)
        capture = Capture(topo.a, topo.if_a, work / "a.pcap")
        try:
            ours.start()
            theirs.start()
            theirs.load_config(swanctl_conf(
                "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK,
                ["aes128-sha256-modp2048"], [ESP], topo.inner_net_b, topo.inner_net_a,
            ))
            yield Rig(topo, ours, theirs, capture, work)
        finally:
            capture.stop(settle=0)
            theirs.stop()
            workers = worker_pids(ours.process.pid) if ours.process is not None else []
            code = ours.stop()
            log_text = ours.log_text()
            assert "Traceback" not in log_text, log_text[-4000:]
            assert code == 0, log_text[-3000:]
            # Stopping the daemon stops its worker (which holds the TUN device open).
            assert workers and not any(Path(f"/proc/{pid}").exists() for pid in workers)


def worker_pids(daemon_pid: int) -> list[int]:
    """The daemon's child processes that run the data plane worker."""
    pids = []
    for task in Path(f"/proc/{daemon_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"ikev1d.dataplane.worker" in cmdline:
                pids.append(int(pid))
    return pids


def daemon_pid(rig: Rig) -> int:
    pid = rig.ours.process.pid if rig.ours.process is not None else None
    assert pid is not None
    return pid


def their_child(rig: Rig) -> dict[str, Any]:
    (ike,) = rig.theirs.list_sas()
    installed = [c for c in ike["children"] if c.get("state") == "INSTALLED"]
    child = installed[-1]
    return {
        "spi_in": int(child["spi-in"], 16), "spi_out": int(child["spi-out"], 16),
        "bytes_in": int(child["bytes-in"]), "bytes_out": int(child["bytes-out"]),
        "packets_in": int(child["packets-in"]), "packets_out": int(child["packets-out"]),
    }


def ensure_up(rig: Rig) -> None:
    """The tunnel is up (each test can also run alone)."""
    if not rig.ours.status()["ike_sas"]:
        result = rig.ours.up("gw")
        assert result.returncode == 0, result.stdout + result.stderr


def newest_child(daemon: Ikev1dDaemon) -> dict[str, Any]:
    """The IPsec SA installed last (after a renewal the old one may linger a while)."""
    (ike,) = daemon.status()["ike_sas"]
    result: dict[str, Any] = ike["children"][-1]
    return result


def _agree(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    return bool(ours["packets_out"] == theirs["packets_in"]
                and ours["packets_in"] == theirs["packets_out"])


def test_trap_first_packet_brings_the_tunnel_up(rig: Rig) -> None:
    """No SA until traffic: the worker reads the first packet, finds the trap, and the
    daemon (told over the socket pair) negotiates; later echoes get through."""
    topo = rig.topo
    if rig.ours.status()["ike_sas"]:  # run alone after the others
        assert rig.ours.down("gw").returncode == 0
    assert [t["child"] for t in rig.ours.status()["traps"]] == ["net"]
    for _ in range(10):
        if ping(topo.a, topo.inner_addr_b, src=topo.inner_addr_a, count=1,
                timeout=1.0)[1] == 1:
            break
    else:
        raise AssertionError(rig.ours.log_text()[-3000:])
    assert rig.ours.wait_log("acquire for gw/net: initiating")
    assert ping(topo.a, topo.inner_addr_b, count=3) == (3, 3)


def test_traffic_counters_and_capture(rig: Rig) -> None:
    """Ping, TCP and UDP both ways; our counters (the outbound ones reported by the
    worker) equal charon's and the ESP packets in the capture; ESP-in-UDP leaves A
    from the daemon's port 4500."""
    topo = rig.topo
    assert "sealing in a worker process" in rig.ours.log_text()
    assert len(worker_pids(daemon_pid(rig))) == 1
    ensure_up(rig)
    drops_before = kernel_drops(topo.a, topo.b)
    assert ping(topo.a, topo.inner_addr_b, count=3) == (3, 3)
    traffic_both_ways(topo)
    ours, theirs = settled(lambda: (child_of(rig.ours), their_child(rig)), _agree)
    assert ours["encap"] is True and ours["proposal"] == ESP
    assert int(ours["spi_out"], 16) == theirs["spi_in"]
    assert ours["packets_out"] > 200 and ours["packets_in"] > 200
    assert_counters_agree(ours, theirs, kernel_drops(topo.a, topo.b) - drops_before)
    assert ours["replayed_in"] == ours["icv_failed_in"] == ours["malformed_in"] == 0

    pcap = rig.capture.stop()
    assert_only_ike_and_esp(pcap)
    # UDP GSO hands the veth device runs of ESP-in-UDP datagrams as one frame, which
    # the capture keeps whole: the ESP octets on the wire are counted instead of frames.
    # Each AES-GCM ESP packet is its inner packet plus 34-37 octets (RFC 4303 §2:
    # SPI, sequence number, 8-octet IV, pad to 4 octets, pad length, next header,
    # 16-octet ICV, RFC 4106 §3).
    for src, sent, inner in ((topo.addr_a, ours["packets_out"], ours["bytes_out"]),
                             (topo.addr_b, ours["packets_in"], ours["bytes_in"])):
        frames = [f for f in _tshark_fields(pcap, "ip.src", "udp.srcport", "esp.spi",
                                            "esp.sequence", "frame.len")
                  if f[0] == src and f[2]]
        esp_octets = sum(int(f[4]) - 14 - 20 - 8 for f in frames)
        print(f"{src}: {len(frames)} frames, {esp_octets} ESP octets, {sent} packets, "
              f"{inner} inner octets")
        assert inner + 34 * sent <= esp_octets <= inner + 37 * sent, (esp_octets, sent, inner)
        if src == topo.addr_a:
            assert {f[1] for f in frames} == {"4500"}  # the daemon's NAT-T port
            last = max(int(f[3]) for f in frames)
            assert last <= sent < last + 64, (last, sent)


def _flow(rig: Rig, seconds: float, port: int) -> FlowResult:
    topo = rig.topo
    return run_flow(topo.a, topo.b, topo.inner_addr_a, topo.inner_addr_b, port,
                    pps=300, size=300, seconds=seconds)


def test_rekey_under_traffic(rig: Rig) -> None:
    """charon renews the IPsec SA in the middle of a UDP flow from A: the worker is
    given the new SA and seals with it, the flow keeps arriving."""
    ensure_up(rig)
    topo = rig.topo
    drops_before = kernel_drops(topo.a, topo.b)
    old_spi = newest_child(rig.ours)["spi_out"]
    results: list[FlowResult] = []
    flow = threading.Thread(target=lambda: results.append(_flow(rig, 4.0, 33100)))
    flow.start()
    time.sleep(1.5)
    out = rig.theirs.swanctl(["--rekey", "--child", "net"])
    assert out.returncode == 0, out.stdout + out.stderr
    flow.join(timeout=60)
    (result,) = results
    status = newest_child(rig.ours)
    assert status["spi_out"] != old_spi, status
    print(f"renewal under a flow: {result}")
    # Usually nothing is lost (gaps of 7-240 ms); once in 15 runs, at load 17, 143 of
    # 1,200 were lost in a 1 s stall whose cause was not found, so the bound is loose:
    # what this guards is that the flow goes on, and on the new SA (below).
    assert result.sent > 1000 and result.lost <= result.sent // 5, result
    # The new SA carried the second half of the flow, sealed by the worker.
    ours, theirs = settled(lambda: (newest_child(rig.ours), their_child(rig)), _agree)
    assert ours["packets_out"] > 300, ours
    assert int(ours["spi_out"], 16) == theirs["spi_in"]
    assert_counters_agree(ours, theirs, kernel_drops(topo.a, topo.b) - drops_before)


def test_worker_killed_traffic_resumes(rig: Rig) -> None:
    """SIGKILL the worker: the daemon logs it once, starts a new one with every
    outbound SA, and pings cross again; the counters carry on from where they were."""
    ensure_up(rig)
    pid = daemon_pid(rig)
    (worker,) = worker_pids(pid)
    topo = rig.topo
    traffic_both_ways(topo)
    before, theirs_before = settled(lambda: (newest_child(rig.ours), their_child(rig)), _agree)
    assert before["packets_out"] >= 200
    drops_before = kernel_drops(topo.a, topo.b)
    os.kill(worker, signal.SIGKILL)
    assert rig.ours.wait_log("sealing worker (pid", timeout=10), rig.ours.log_text()[-2000:]
    assert wait_until(lambda: len(worker_pids(pid)) == 1 and worker_pids(pid) != [worker],
                      timeout=10)
    got = 0
    deadline = time.monotonic() + 10
    while got == 0 and time.monotonic() < deadline:
        got = ping(topo.a, topo.inner_addr_b, count=3)[1]
    assert got > 0, rig.ours.log_text()[-3000:]
    assert ping(topo.a, topo.inner_addr_b, count=5) == (5, 5)
    after, theirs = settled(lambda: (newest_child(rig.ours), their_child(rig)),
                            lambda o, t: _agree(_since(o, before), _since(t, theirs_before)))
    assert after["spi_out"] == before["spi_out"]
    assert after["packets_out"] > before["packets_out"]
    # Since the kill, what we counted is what they counted. (Before it, a packet the
    # kernel dropped under the TCP and UDP bursts, which TCP repaired, is counted out
    # here and never in there: test_traffic_counters_and_capture bounds that.)
    assert_counters_agree(_since(after, before), _since(theirs, theirs_before),
                          kernel_drops(topo.a, topo.b) - drops_before)
    log_text = rig.ours.log_text()
    assert log_text.count("is gone") == 1, log_text[-3000:]
    assert "Traceback" not in log_text


def _since(now: dict[str, Any], then: dict[str, Any]) -> dict[str, int]:
    """What each counter added from ``then`` to ``now``."""
    return {k: int(now[k]) - int(then[k]) for k in COUNTERS}


def test_raw_esp_between_two_ikev1d_with_workers(
    two_hosts: Topology, tmp_path: Path, capture_factory: CaptureFactory
) -> None:
    """Raw ESP (IP protocol 50, no UDP GSO: one frame per packet) between two ikev1d,
    both sealing in worker processes through the raw socket they inherited: traffic
    both ways, counters equal on both ends and to the ESP frames on the wire."""
    topo = two_hosts
    daemons = []
    for label, ns, local, remote, lnet, rnet in (
        ("a", topo.a, topo.addr_a, topo.addr_b, topo.inner_net_a, topo.inner_net_b),
        ("b", topo.b, topo.addr_b, topo.addr_a, topo.inner_net_b, topo.inner_net_a),
    ):
        d = Ikev1dDaemon(ns, tmp_path / f"ikev1d-{label}", ikev1d_conf(
            "gw", local, remote, local, remote, PSK, ["aes128-sha256-modp2048"], [ESP],
            lnet, rnet, dataplane="userspace", extra_daemon="dataplane_workers = 2\n"))
        daemons.append(d)
    try:
        for d in daemons:
            d.start()
        a, b = daemons
        cap = capture_factory(topo.a, topo.if_a)
        assert a.up("gw").returncode == 0
        drops_before = kernel_drops(topo.a, topo.b)
        assert ping(topo.a, topo.inner_addr_b, count=3) == (3, 3)
        traffic_both_ways(topo)
        ours, theirs = settled(lambda: (child_of(a), child_of(b)), _agree)
        assert ours["encap"] is False and ours["packets_out"] > 200
        assert_counters_agree(ours, theirs, kernel_drops(topo.a, topo.b) - drops_before)
        lost = kernel_drops(topo.a, topo.b) - drops_before
        frames = assert_only_ike_and_esp(cap.stop())
        esp_out = sum(1 for src, proto in frames if proto == "50" and src == topo.addr_a)
        esp_in = sum(1 for src, proto in frames if proto == "50" and src == topo.addr_b)
        # dumpcap may miss a few frames on a busy machine, and says how many.
        m = re.search(r"received/dropped on interface '[^']*': \d+/(\d+)", cap.stderr)
        slack = lost + (int(m.group(1)) if m else 0)
        assert 0 <= ours["packets_out"] - esp_out <= slack, (esp_out, ours)
        assert 0 <= esp_in - ours["packets_in"] <= slack, (esp_in, ours)
    finally:
        for d in daemons:
            if d.process is not None and d.process.poll() is None:
                assert d.stop() == 0, d.log_text()[-3000:]
        for d in daemons:
            assert "Traceback" not in d.log_text()
