"""The userspace data plane between two ikev1d, raw ESP (IP protocol 50), in two namespaces.

Ordinary programs (TCP and UDP sockets, ICMP echo) reach the other side's inner
network with no manual routing; the wire (dumpcap on the veth) carries only IKE
and ESP; both daemons' counters agree with each other and with the capture;
replayed and tampered ESP packets are dropped, counted and never delivered.

The traffic helpers here are shared with ``test_dataplane_strongswan.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from ikev1d_lab.capture import TSHARK
from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.ping import ping

from .conftest import CaptureFactory

pytestmark = pytest.mark.interop

PSK = "dataplane-psk-0123456789abcdef"
MARKER = b"IKEV1D-CLEARTEXT-MARKER"
"""Put in every test payload: it must never appear on the outer wire."""

# One script for all roles, run with `python -c` inside a namespace. It prints
# READY once its socket is bound and a result line at the end.
TRAFFIC = r"""
import socket, sys, threading, time
role, args = sys.argv[1], sys.argv[2:]
MARKER = b"IKEV1D-CLEARTEXT-MARKER"

def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET

def payload(n):
    block = MARKER + bytes(range(256))
    return (block * (n // len(block) + 1))[:n]

if role == "tcp-server":
    addr, port = args[0], int(args[1])
    s = socket.socket(family(addr)); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1); s.settimeout(15)
    print("READY", flush=True)
    c, _ = s.accept(); c.settimeout(15)
    while data := c.recv(65536):
        c.sendall(data)
    c.close()
    print("DONE", flush=True)
elif role == "tcp-client":
    src, dst, port, n = args[0], args[1], int(args[2]), int(args[3])
    data = payload(n)
    c = socket.create_connection((dst, port), timeout=15, source_address=(src, 0))
    got = bytearray()
    def reader():
        while chunk := c.recv(65536):
            got.extend(chunk)
    t = threading.Thread(target=reader); t.start()
    c.sendall(data); c.shutdown(socket.SHUT_WR); t.join(20); c.close()
    print("OK" if bytes(got) == data else f"MISMATCH {len(got)} of {n}", flush=True)
elif role == "udp-server":
    addr, port, count = args[0], int(args[1]), int(args[2])
    s = socket.socket(family(addr), socket.SOCK_DGRAM); s.bind((addr, port)); s.settimeout(10)
    print("READY", flush=True)
    for _ in range(count):
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)
    print("DONE", flush=True)
elif role == "udp-client":
    src, dst, port, count = args[0], args[1], int(args[2]), int(args[3])
    s = socket.socket(family(src), socket.SOCK_DGRAM); s.bind((src, 0)); s.settimeout(3)
    ok = 0
    for i in range(count):
        data = payload(20 + (i * 337) % 1300)  # up to 1319 octets: fits the 1400 MTU
        s.sendto(data, (dst, port))
        try:
            if s.recvfrom(65536)[0] == data:
                ok += 1
        except TimeoutError:
            pass
    print(f"OK {ok}/{count}", flush=True)
elif role == "esp-injector":
    # Catch one ESP packet from the peer, wait until its UDP payload was delivered,
    # then send it again (a replay), and once more with a bit of its sequence number
    # (+2**24: far right of the window, which RFC 4303 3.4.3 checks before the ICV)
    # and one of its ciphertext flipped, so only the ICV can refuse it.
    peer, own, inner, port = args[0], args[1], args[2], int(args[3])
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50); raw.settimeout(10)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((inner, port)); u.settimeout(10)
    print("READY", flush=True)
    while True:
        pkt, addr = raw.recvfrom(65536)
        if addr[0] == peer:
            esp = pkt[(pkt[0] & 15) * 4:]
            break
    u.recvfrom(65536)
    delivered = 1
    raw.sendto(esp, (own, 0))
    flipped = bytearray(esp); flipped[4] ^= 0x01; flipped[len(esp) // 2] ^= 0x10
    raw.sendto(bytes(flipped), (own, 0))
    u.settimeout(0.7)
    try:
        while True:
            u.recvfrom(65536); delivered += 1
    except TimeoutError:
        pass
    print(f"DELIVERED {delivered}", flush=True)
"""


def start_role(ns: Namespace, *args: str) -> subprocess.Popen[str]:
    """Start a TRAFFIC role in ``ns`` and wait for its READY line."""
    proc = ns.popen([sys.executable, "-c", TRAFFIC, *args], stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    if proc.stdout is None:  # pragma: no cover - Popen with PIPE always has it
        raise RuntimeError("no stdout")
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start: {line}{proc.communicate()[1]}")
    return proc


def run_role(ns: Namespace, *args: str, timeout: float = 30.0) -> str:
    proc = ns.run([sys.executable, "-c", TRAFFIC, *args], check=False, timeout=timeout)
    return proc.stdout.strip() + proc.stderr.strip()


def finish(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    return out.strip() + err.strip()


_PORTS = iter(range(20000, 30000))


def tcp_echo(server: Namespace, server_addr: str, client: Namespace, client_addr: str,
             nbytes: int = 300_000) -> None:
    """``nbytes`` from client to server and back over TCP; both must see every byte."""
    port = str(next(_PORTS))
    srv = start_role(server, "tcp-server", server_addr, port)
    try:
        assert run_role(client, "tcp-client", client_addr, server_addr, port, str(nbytes)) == "OK"
        assert finish(srv) == "DONE"
    finally:
        srv.kill()
        srv.wait()


def udp_echo(server: Namespace, server_addr: str, client: Namespace, client_addr: str,
             count: int = 20) -> None:
    """``count`` datagrams of 20..1319 octets echoed one by one; none may be lost."""
    port = str(next(_PORTS))
    srv = start_role(server, "udp-server", server_addr, port, str(count))
    try:
        out = run_role(client, "udp-client", client_addr, server_addr, port, str(count))
        assert out == f"OK {count}/{count}"
        assert finish(srv) == "DONE"
    finally:
        srv.kill()
        srv.wait()


def traffic_both_ways(topo: Topology, addr_a: str | None = None,
                      addr_b: str | None = None) -> None:
    a, b = (topo.a, addr_a or topo.inner_addr_a), (topo.b, addr_b or topo.inner_addr_b)
    for (srv_ns, srv_addr), (cli_ns, cli_addr) in ((b, a), (a, b)):
        tcp_echo(srv_ns, srv_addr, cli_ns, cli_addr)
        udp_echo(srv_ns, srv_addr, cli_ns, cli_addr)


def child_of(daemon: Ikev1dDaemon) -> dict[str, Any]:
    (ike,) = daemon.status()["ike_sas"]
    (child,) = ike["children"]
    result: dict[str, Any] = child
    return result


COUNTERS = ("bytes_in", "bytes_out", "packets_in", "packets_out")


Counters = dict[str, Any]


def settled(read: Callable[[], tuple[Counters, Counters]],
            agree: Callable[[Counters, Counters], bool],
            timeout: float = 5.0) -> tuple[Counters, Counters]:
    """Poll both sides' counters until ``agree`` (the last packets may still be in flight)."""
    deadline = time.monotonic() + timeout
    while True:
        ours, theirs = read()
        if agree(ours, theirs) or time.monotonic() > deadline:
            return ours, theirs
        time.sleep(0.2)


def _no_tun_route(ns: Namespace) -> bool:
    return "ikev1d" not in ns.run(["ip", "route"]).stdout


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def kernel_drops(*namespaces: Namespace) -> int:
    """Packets the kernel reports dropping before a socket got them.

    The veth receive backlog (/proc/net/softnet_stat, second column; global, so
    other tests' drops count too), full raw-socket queues (/proc/net/raw and raw6,
    last column) and UDP receive-buffer errors (/proc/net/snmp) of ``namespaces``.
    On a loaded machine these lose a packet now and then, which TCP repairs; the
    counter checks allow exactly that many missing packets.
    """
    softnet = Path("/proc/net/softnet_stat").read_text().splitlines()
    total = sum(int(line.split()[1], 16) for line in softnet if line.strip())
    for ns in namespaces:
        text = ns.run(["cat", "/proc/net/raw", "/proc/net/raw6", "/proc/net/snmp"]).stdout
        udp: list[list[str]] = []
        for line in text.splitlines():
            fields = line.split()
            if fields and fields[0].endswith(":") and fields[0][:-1].isdigit():
                total += int(fields[-1])  # a raw socket's drops
            elif fields and fields[0] == "Udp:":
                udp.append(fields[1:])
        if len(udp) == 2:
            total += int(dict(zip(udp[0], udp[1], strict=True))["RcvbufErrors"])
    return total


def assert_counters_agree(ours: Counters, theirs: Counters, lost: int = 0) -> None:
    """Our packets/bytes out are their packets/bytes in, and the reverse.

    Only as many packets as the kernel reported dropping (``lost``) may be missing;
    with none missing the byte counts must be equal exactly.
    """
    for sent, received in ((ours, theirs), (theirs, ours)):
        missing = sent["packets_out"] - received["packets_in"]
        extra = sent["bytes_out"] - received["bytes_in"]
        assert 0 <= missing <= lost, (ours, theirs, lost)
        if missing == 0:
            assert extra == 0, (ours, theirs)
        else:
            assert 0 < extra <= missing * 1500, (ours, theirs, lost)


@dataclass
class Pair:
    topo: Topology
    a: Ikev1dDaemon
    b: Ikev1dDaemon


@pytest.fixture
def make_pair(two_hosts: Topology, tmp_path: Path) -> Iterator[Callable[..., Pair]]:
    started: list[Ikev1dDaemon] = []

    def make(esp: str, nets: tuple[str, str] | None = None,
             outer: tuple[str, str] | None = None) -> Pair:
        """Daemons on A and B; ``nets`` = (A's, B's) inner networks, ``outer`` their IKE/ESP
        addresses; by default the topology's."""
        topo = two_hosts
        net_a, net_b = nets or (topo.inner_net_a, topo.inner_net_b)
        addr_a, addr_b = outer or (topo.addr_a, topo.addr_b)
        daemons = []
        for label, ns, local, remote, lnet, rnet in (
            ("a", topo.a, addr_a, addr_b, net_a, net_b),
            ("b", topo.b, addr_b, addr_a, net_b, net_a),
        ):
            d = Ikev1dDaemon(ns, tmp_path / f"ikev1d-{label}", ikev1d_conf(
                "gw", local, remote, local, remote, PSK, ["aes128-sha256-modp2048"], [esp],
                lnet, rnet, dataplane="userspace",
            ))
            started.append(d)
            d.start()
            daemons.append(d)
        return Pair(topo, daemons[0], daemons[1])

    yield make
    for d in started:
        code = d.stop()
        assert code == 0, d.log_text()[-3000:]


def _tshark_fields(pcap: Path, *fields: str, decode_as: Sequence[str] = ()) -> list[list[str]]:
    cmd = [TSHARK, "-n", "-r", str(pcap), "-T", "fields"]
    for rule in decode_as:
        cmd += ["-d", rule]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines()]


def assert_only_ike_and_esp(pcap: Path) -> list[list[str]]:
    """No user traffic in the clear: IPv4 frames are IKE (UDP 500/4500) or ESP, no marker.

    Returns (ip.src, ip.proto) of every IPv4 frame, for counting ESP packets.
    """
    assert MARKER not in pcap.read_bytes()
    frames = _tshark_fields(pcap, "frame.protocols", "ip.src", "ip.proto", "udp.port")
    ipv4 = [f for f in frames if f[2]]
    # UDP must have 500 or 4500 at one end at least (the other may be a NAT's port).
    clear = [f for f in ipv4 if not (f[2] == "50" or (f[2] == "17" and set(
        f[3].split(",")) & {"500", "4500"}))]
    assert clear == []
    assert [f for f in frames if "tcp" in f[0].split(":") or "icmp" in f[0].split(":")] == []
    assert any(f[2] == "50" or f[0].endswith(":esp") for f in ipv4)
    return [[f[1], f[2]] for f in ipv4]


def test_raw_esp_between_two_ikev1d(  # and replay / ICV drops at the end
    make_pair: Callable[..., Pair], capture_factory: CaptureFactory
) -> None:
    pair = make_pair("aes128gcm16")
    topo = pair.topo
    cap = capture_factory(topo.a, topo.if_a)
    assert pair.a.up("gw").returncode == 0
    drops_before = kernel_drops(topo.a, topo.b)

    routes = topo.a.run(["ip", "route", "show", topo.inner_net_b]).stdout
    assert "dev ikev1d" in routes and f"src {topo.inner_addr_a}" in routes

    assert ping(topo.a, topo.inner_addr_b, count=3) == (3, 3)  # no -I: the route's src works
    assert ping(topo.b, topo.inner_addr_a, src=topo.inner_addr_b, count=2) == (2, 2)
    traffic_both_ways(topo)

    ours, theirs = settled(
        lambda: (child_of(pair.a), child_of(pair.b)),
        lambda x, y: x["bytes_out"] == y["bytes_in"] and x["bytes_in"] == y["bytes_out"],
    )
    assert ours["spi_out"] == theirs["spi_in"] and ours["encap"] is False
    assert ours["packets_out"] > 200 and ours["bytes_out"] > 600_000  # 2x300 kB echoed
    lost = kernel_drops(topo.a, topo.b) - drops_before
    assert_counters_agree(ours, theirs, lost)
    for side in (ours, theirs):
        assert side["replayed_in"] == side["icv_failed_in"] == side["policy_dropped_in"] == 0

    frames = assert_only_ike_and_esp(cap.stop())
    esp_out = sum(1 for src, proto in frames if proto == "50" and src == topo.addr_a)
    esp_in = sum(1 for src, proto in frames if proto == "50" and src == topo.addr_b)
    # What A sent and received is what crossed its veth; dumpcap may miss a few when
    # the machine is busy, and says how many ("received/dropped on interface").
    m = re.search(r"received/dropped on interface '[^']*': \d+/(\d+)", cap.stderr)
    slack = lost + (int(m.group(1)) if m else 0)
    assert 0 <= ours["packets_out"] - esp_out <= slack, (esp_out, ours)
    assert 0 <= esp_in - ours["packets_in"] <= slack, (esp_in, ours)

    inject_replay_and_tamper(pair)

    # Nothing left behind: `down` removes the routes on both sides (B on the Delete),
    # stopping the daemon removes the TUN device.
    assert pair.a.down("gw").returncode == 0
    for ns in (topo.a, topo.b):
        assert wait_until(partial(_no_tun_route, ns))
    assert pair.a.stop() == 0
    assert "ikev1d" not in topo.a.run(["ip", "link"]).stdout


def test_ipv6_over_ipv6(two_hosts: Topology, make_pair: Callable[..., Pair]) -> None:
    """IPv6 networks (ESP next header 41, RFC 4303 2.6) over raw ESP on an IPv6 link."""
    topo = two_hosts
    for ns, ifname, outer, inner in ((topo.a, topo.if_a, "fd99::1/64", "fd01::1/64"),
                                     (topo.b, topo.if_b, "fd99::2/64", "fd02::1/64")):
        ns.run(["ip", "addr", "add", outer, "dev", ifname, "nodad"])
        ns.add_lo_address(inner)
    pair = make_pair("aes256-sha256", nets=("fd01::/64", "fd02::/64"),
                     outer=("fd99::1", "fd99::2"))
    assert pair.a.up("gw").returncode == 0
    assert "fd02::/64 dev ikev1d0" in topo.a.run(["ip", "-6", "route"]).stdout
    drops_before = kernel_drops(topo.a, topo.b)
    traffic_both_ways(topo, "fd01::1", "fd02::1")
    ours, theirs = settled(
        lambda: (child_of(pair.a), child_of(pair.b)),
        lambda x, y: x["bytes_out"] == y["bytes_in"] and x["bytes_in"] == y["bytes_out"],
    )
    assert ours["packets_out"] > 100 and theirs["packets_out"] > 100
    assert_counters_agree(ours, theirs, kernel_drops(topo.a, topo.b) - drops_before)


def inject_replay_and_tamper(pair: Pair) -> None:
    """Replay one real ESP packet into B and send a tampered copy: both dropped and counted."""
    topo = pair.topo
    before = child_of(pair.b)
    port = str(next(_PORTS))
    injector = start_role(topo.b, "esp-injector", topo.addr_a, topo.addr_b,
                          topo.inner_addr_b, port)
    try:
        topo.a.run([sys.executable, "-c",
                    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    f"s.bind(({topo.inner_addr_a!r}, 0)); "
                    f"s.sendto(b'once', ({topo.inner_addr_b!r}, {port}))"])
        assert finish(injector) == "DELIVERED 1"  # neither copy reached the inner socket
    finally:
        injector.kill()
        injector.wait()
    after = child_of(pair.b)
    assert after["packets_in"] - before["packets_in"] == 1
    assert (after["replayed_in"], after["icv_failed_in"]) == (1, 1)
    log = pair.b.log_text()
    assert "ESP packet dropped (replay)" in log and "ESP packet dropped (icv)" in log
