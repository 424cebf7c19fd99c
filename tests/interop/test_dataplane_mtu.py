"""TCP through the userspace data plane over a path with a smaller MTU.

The veth between A and B carries 1300 octets, less than the 1400-octet TUN device
plus ESP overhead. Without MSS clamping TCP would send 1400-octet packets into the
tunnel: their ESP datagrams would be fragmented on the veth (raw ESP is sent with
DF off), or, with DF on the inner packet, dropped until the sender learnt the
path MTU from an ICMP error, retransmitting. With clamping, the SYNs carry an MSS
that fits the tunnel MTU, computed from the transform (AES-GCM: 1300 - 20 - 8 - 8
- 16 = 1248 rounded down to 4 octets, less 2: 1246), so there are neither
fragments nor retransmissions. A UDP sender that sets DF and sends more than the
tunnel MTU gets ICMP "fragmentation needed" carrying 1246, which the real kernel
takes: its next send fails with EMSGSIZE and IP_MTU reports 1246.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Namespace, Topology

from .test_dataplane_ikev1d import PSK, tcp_echo

pytestmark = pytest.mark.interop

PATH_MTU = 1300
TUNNEL_MTU = 1246  # aes128gcm16, raw ESP over IPv4 (module docstring)

DF_PROBE = r"""
import errno, socket, sys, time
src, dst, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO: DF set
s.bind((src, 0)); s.connect((dst, 9))
refused = 0
for _ in range(20):
    try:
        s.send(bytes(size))
    except OSError as exc:  # EMSGSIZE once the ICMP error was taken
        refused += exc.errno == errno.EMSGSIZE  # (not B's port unreachable: ECONNREFUSED)
    time.sleep(0.05)
print(f"refused {refused} mtu {s.getsockopt(socket.IPPROTO_IP, 14)}", flush=True)
"""


def snmp(ns: Namespace) -> dict[str, int]:
    """The namespace's IP and TCP counters (/proc/net/snmp is per network namespace)."""
    lines = ns.run(["cat", "/proc/net/snmp"], check=True).stdout.splitlines()
    out: dict[str, int] = {}
    for head, values in zip(lines[::2], lines[1::2], strict=True):
        proto = head.split(":")[0]
        for k, v in zip(head.split()[1:], values.split()[1:], strict=True):
            out[f"{proto}.{k}"] = int(v)
    return out


@pytest.fixture(scope="module")
def tunnel(
    require_root_netns: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Topology, Ikev1dDaemon, Ikev1dDaemon]]:
    tmp: Path = tmp_path_factory.mktemp("mtu")
    with netns.two_hosts() as topo:
        for ns, dev in ((topo.a, topo.if_a), (topo.b, topo.if_b)):
            ns.run(["ip", "link", "set", "dev", dev, "mtu", str(PATH_MTU)], check=True)
        daemons = []
        try:
            for label, ns, local, remote, lnet, rnet in (
                ("a", topo.a, topo.addr_a, topo.addr_b, topo.inner_net_a, topo.inner_net_b),
                ("b", topo.b, topo.addr_b, topo.addr_a, topo.inner_net_b, topo.inner_net_a),
            ):
                d = Ikev1dDaemon(ns, tmp / f"ikev1d-{label}", ikev1d_conf(
                    "gw", local, remote, local, remote, PSK, ["aes128-sha256-modp2048"],
                    ["aes128gcm16"], lnet, rnet, dataplane="userspace",
                ), log_level="debug")
                daemons.append(d)
                d.start()
            daemons[0].up("gw")
            yield topo, daemons[0], daemons[1]
        finally:
            for d in daemons:
                d.stop()


def dropped_out(daemon: Ikev1dDaemon) -> int:
    (ike,) = daemon.status()["ike_sas"]
    (child,) = ike["children"]
    return int(child["dropped_out"])


def test_tcp_fits_the_tunnel_without_fragments_or_retransmissions(
    tunnel: tuple[Topology, Ikev1dDaemon, Ikev1dDaemon],
) -> None:
    topo, daemon_a, daemon_b = tunnel
    before = {ns.name: snmp(ns) for ns in (topo.a, topo.b)}
    drops_before = dropped_out(daemon_a), dropped_out(daemon_b)
    for (srv, srv_addr), (cli, cli_addr) in (((topo.b, topo.inner_addr_b),
                                               (topo.a, topo.inner_addr_a)),
                                              ((topo.a, topo.inner_addr_a),
                                               (topo.b, topo.inner_addr_b))):
        tcp_echo(srv, srv_addr, cli, cli_addr, nbytes=2_000_000)
    # Nothing was too big for the tunnel (a drop with an ICMP error back) ...
    assert (dropped_out(daemon_a), dropped_out(daemon_b)) == drops_before
    for ns in (topo.a, topo.b):
        after = snmp(ns)
        delta = {k: after[k] - before[ns.name][k]
                 for k in ("Ip.FragCreates", "Ip.FragOKs", "Tcp.RetransSegs", "Tcp.OutSegs")}
        assert delta["Tcp.OutSegs"] > 1000, delta
        # ... nor fragmented on the veth, and TCP hardly retransmitted (an odd
        # retransmission on this loaded machine is a scheduling delay, not the MTU:
        # without clamping every full-sized segment is dropped or fragmented).
        assert delta["Ip.FragCreates"] == 0 and delta["Ip.FragOKs"] == 0, (ns.name, delta)
        assert delta["Tcp.RetransSegs"] <= delta["Tcp.OutSegs"] // 500, (ns.name, delta)
    log = daemon_a.log_path.read_text()
    assert re.search(rf"tunnel MTU {TUNNEL_MTU} \(path MTU {PATH_MTU} to ", log), log[-2000:]


def test_oversized_df_packet_gets_fragmentation_needed(
    tunnel: tuple[Topology, Ikev1dDaemon, Ikev1dDaemon],
) -> None:
    topo = tunnel[0]
    out = topo.a.run([sys.executable, "-c", DF_PROBE, topo.inner_addr_a, topo.inner_addr_b,
                      str(1372)], check=False, timeout=30)
    m = re.fullmatch(r"refused (\d+) mtu (\d+)", out.stdout.strip())
    assert m is not None, out.stdout + out.stderr
    assert int(m.group(1)) >= 15 and int(m.group(2)) == TUNNEL_MTU, out.stdout
