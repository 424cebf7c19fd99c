"""Traffic through a tunnel while its SAs are renewed: shared by bench/rekey.py and its test.

A (192.0.2.1, 10.1.0.1) runs ikev1d with the userspace data plane and initiates;
B runs a second ikev1d (raw ESP) or charon with kernel-libipsec (ESP-in-UDP, so
ikev1d's side has ``encap = true`` too). A's lifetimes decide the renewals:
Phase 2 every ``child_life`` and Phase 1 every ``ike_life`` seconds (each renewed
about 10 % before its end, RFC 2409 §4.5 leaves when to the implementation), B's
are long. A paced UDP flow (:mod:`ikev1d_lab.udpflow`) runs from A's inner address
to B's while that happens; the renewals are counted in A's log.

To tell a gap in the received sequence caused by a renewal from one caused by a
daemon that was not scheduled, :func:`ike_capture` records the IKE messages on
A's link during the flow (their headers are in clear: exchange type and sender)
and :func:`attribute` sets each gap beside the nearest of them: a gap that
starts or ends within ``window`` of a renewal's message, or spans one, counts as
the renewal's.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ikev1d_lab.capture import Capture, tshark_fields
from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, strongswan_conf, swanctl_conf
from ikev1d_lab.udpflow import FlowResult, Gap, run_flow

__all__ = [
    "PEERS", "Attributed", "IkeCapture", "IkeMessage", "Pair", "PeerQueues", "Renewals",
    "attribute", "ike_capture", "pair", "renewals",
]

PSK = "rekey-under-traffic-psk-0123456789"
IKE_PROPOSAL = "aes128-sha256-modp2048"
ESP_PROPOSAL = "aes128gcm16"
CONN, CHILD = "gw", "net"
PEERS = ("ikev1d", "strongswan")
_LONG = "8h"
#: A's Prometheus endpoint, inside A's namespace (its own loopback).
METRICS = "127.0.0.1:9616"
_FETCH_DROPS = (
    "import re, urllib.request\n"
    f"text = urllib.request.urlopen('http://{METRICS}/metrics', timeout=5).read().decode()\n"
    "for m in re.finditer(r'^ikev1d_esp_dropped_packets_total\\{reason=\"(\\w+)\"\\} (\\S+)$',"
    " text, re.M):\n"
    "    print(m[1], int(float(m[2])))\n"
)


@dataclass(frozen=True)
class Renewals:
    phase1: int
    phase2: int


@dataclass(frozen=True)
class PeerQueues:
    """Datagrams B's kernel dropped in the queues in front of its daemon: its TUN
    device's transmit queue (what B's daemon did not read in time, B->A) and its UDP
    receive buffers (A->B, ESP-in-UDP the daemon did not read in time)."""

    tun_dropped: int
    udp_rcvbuf_errors: int

    def __sub__(self, other: PeerQueues) -> PeerQueues:
        return PeerQueues(self.tun_dropped - other.tun_dropped,
                          self.udp_rcvbuf_errors - other.udp_rcvbuf_errors)


@dataclass(frozen=True)
class Pair:
    topo: Topology
    a: Ikev1dDaemon
    peer: str
    log_b: Path

    def flow(self, port: int, *, pps: float, size: int, seconds: float,
             reverse: bool = False, gap_floor_ms: float = 50.0) -> FlowResult:
        """A flow from A's inner address to B's (``reverse``: from B to A)."""
        t = self.topo
        if reverse:
            return run_flow(t.b, t.a, t.inner_addr_b, t.inner_addr_a, port, pps=pps,
                            size=size, seconds=seconds, gap_floor_ms=gap_floor_ms)
        return run_flow(t.a, t.b, t.inner_addr_a, t.inner_addr_b, port, pps=pps, size=size,
                        seconds=seconds, gap_floor_ms=gap_floor_ms)

    def esp_drops(self) -> dict[str, int]:
        """A's data plane drops so far, by reason (``ikev1d_esp_dropped_packets_total``)."""
        out = self.topo.a.run([sys.executable, "-c", _FETCH_DROPS], timeout=15).stdout
        return {reason: int(count) for reason, count in
                (line.split() for line in out.splitlines() if line.strip())}

    def peer_queues(self) -> PeerQueues:
        """B's queue drops so far (see :class:`PeerQueues`)."""
        b = self.topo.b
        tun = "ipsec0" if self.peer == "strongswan" else "ikev1d0"
        shown = b.run(["ip", "-j", "-s", "link", "show", "dev", tun], check=False).stdout
        try:
            dropped = int(json.loads(shown)[0]["stats64"]["tx"]["dropped"])
        except (ValueError, LookupError, TypeError):
            dropped = 0
        rows = [line.split() for line in b.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
                if line.startswith("Udp:")]
        udp = dict(zip(rows[0][1:], rows[1][1:], strict=True)) if len(rows) == 2 else {}
        return PeerQueues(dropped, int(udp.get("RcvbufErrors", 0)))

    def flows_both_ways(self, port: int, *, pps: float, size: int,
                        seconds: float) -> tuple[FlowResult, FlowResult]:
        """A to B and B to A at once (ports ``port`` and ``port + 1``)."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            ab = pool.submit(self.flow, port, pps=pps, size=size, seconds=seconds)
            ba = pool.submit(self.flow, port + 1, pps=pps, size=size, seconds=seconds,
                             reverse=True)
            return ab.result(), ba.result()


#: RFC 2408 section 3.1 / RFC 2409 exchange types, as the gap report names them.
EXCHANGES = {2: "MM", 5: "INFO", 6: "TX", 32: "QM"}
#: IKE only: port 500, and on 4500 what starts with the non-ESP marker (RFC 3948
#: section 2.2), so that the ESP of a 100 Mbit/s flow stays in the kernel.
IKE_FILTER = "udp port 500 or (udp port 4500 and udp[8:4] = 0)"
#: A gap this close to a renewal's IKE message (either side) counts as the renewal's.
WINDOW_S = 0.1


@dataclass(frozen=True)
class IkeMessage:
    at: float  # epoch seconds, on A's link
    sender: str  # "A" or "B"
    exchange: str  # "MM", "QM", "INFO", "TX" or the number

    def label(self, t0: float) -> str:
        return f"{self.exchange} from {self.sender} at {self.at - t0:.2f} s"


@dataclass
class IkeCapture:
    """The IKE messages seen on A's link while it was running (see :func:`ike_capture`)."""

    messages: list[IkeMessage] = field(default_factory=list)


@contextlib.contextmanager
def ike_capture(topo: Topology, pcap: Path) -> Iterator[IkeCapture]:
    """Record the IKE messages on A's link until the block ends."""
    result = IkeCapture()
    capture = Capture(topo.a, topo.if_a, pcap, capture_filter=IKE_FILTER)
    try:
        yield result
    finally:
        capture.stop()
    for row in tshark_fields(pcap, ("frame.time_epoch", "ip.src", "isakmp.exchangetype")):
        try:
            at, kind = float(row["frame.time_epoch"]), int(row["isakmp.exchangetype"] or -1)
        except ValueError:
            continue
        sender = "A" if row["ip.src"] == topo.addr_a else "B"
        result.messages.append(IkeMessage(at, sender, EXCHANGES.get(kind, str(kind))))


@dataclass(frozen=True)
class Attributed:
    gap: Gap
    near: IkeMessage | None  # the renewal's message it is put down to (None: scheduling)


def attribute(gaps: Sequence[Gap], messages: Sequence[IkeMessage],
              window: float = WINDOW_S) -> list[Attributed]:
    """Each gap with the IKE message nearest to it, when one lies within ``window``
    of the gap's bounds (a message during the gap is at distance 0)."""
    out = []
    for gap in gaps:
        best: tuple[float, IkeMessage] | None = None
        for m in messages:
            distance = max(gap.start - m.at, m.at - gap.end, 0.0)
            if distance <= window and (best is None or distance < best[0]):
                best = (distance, m)
        out.append(Attributed(gap, best[1] if best else None))
    return out


def renewals(log_text: str) -> Renewals:
    """Phase 1 and Phase 2 SAs established beyond the first of each, per A's log."""
    p1 = len(re.findall(r"ISAKMP SA established", log_text))
    p2 = len(re.findall(r"IPsec SA established", log_text))
    return Renewals(max(0, p1 - 1), max(0, p2 - 1))


@contextlib.contextmanager
def pair(topo: Topology, work_dir: Path, peer: str, *, ike_life: str = _LONG,
         child_life: str = _LONG, peer_child_life: str = _LONG,
         log_level: str = "info") -> Iterator[Pair]:
    """A and B up with one IPsec SA that carries a ping; everything stopped afterwards.

    ``peer_child_life``: B renews Phase 2 every so often (charon exactly then, its
    ``rand_time`` 0, with a hard lifetime of three times that), so that A answers
    the renewals' Quick Modes."""
    peer_renews = peer_child_life != _LONG
    a_addr, b_addr = topo.addr_a, topo.addr_b
    encap = peer == "strongswan"
    with contextlib.ExitStack() as stack:
        if peer == "ikev1d":
            b = Ikev1dDaemon(topo.b, work_dir / "ikev1d-b", ikev1d_conf(
                CONN, b_addr, a_addr, b_addr, a_addr, PSK, [IKE_PROPOSAL], [ESP_PROPOSAL],
                topo.inner_net_b, topo.inner_net_a, dataplane="userspace",
                rekey_time=_LONG, child_rekey_time=peer_child_life,
            ), log_level=log_level)
            stack.callback(b.stop)
            b.start()
            log_b = b.log_path
        else:
            charon = Charon(topo.b, work_dir / "charon-b", start=False)
            charon.conf_path.write_text(strongswan_conf(charon.work_dir, {"default": 1}))
            stack.callback(charon.stop)
            charon.start()
            charon.load_config(swanctl_conf(
                CONN, b_addr, a_addr, b_addr, a_addr, PSK, [IKE_PROPOSAL], [ESP_PROPOSAL],
                topo.inner_net_b, topo.inner_net_a, encap=True,
                child_rekey_time=peer_child_life,
                life_time=f"{3 * int(peer_child_life[:-1])}s" if peer_renews else None,
                extra_child="        rand_time = 0" if peer_renews else "",
            ))
            log_b = charon.log_path
        a = Ikev1dDaemon(topo.a, work_dir / "ikev1d-a", ikev1d_conf(
            CONN, a_addr, b_addr, a_addr, b_addr, PSK, [IKE_PROPOSAL], [ESP_PROPOSAL],
            topo.inner_net_a, topo.inner_net_b, dataplane="userspace", encap=encap,
            rekey_time=ike_life, child_rekey_time=child_life,
            extra_daemon=f"metrics = {json.dumps(METRICS)}",
        ), log_level=log_level)
        stack.callback(a.stop)
        a.start()
        a.up(CONN)
        for _ in range(50):
            if ping(topo.a, topo.inner_addr_b, src=topo.inner_addr_a, count=1) == (1, 1):
                break
        else:
            raise RuntimeError("tunnel up, but no ping gets through")
        yield Pair(topo, a, peer, log_b)
