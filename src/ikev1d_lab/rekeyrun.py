"""Traffic through a tunnel while its SAs are renewed: shared by bench/rekey.py and its test.

A (192.0.2.1, 10.1.0.1) runs ikev1d with the userspace data plane and initiates;
B runs a second ikev1d (raw ESP) or charon with kernel-libipsec (ESP-in-UDP, so
ikev1d's side has ``encap = true`` too). A's lifetimes decide the renewals:
Phase 2 every ``child_life`` and Phase 1 every ``ike_life`` seconds (each renewed
about 10 % before its end, RFC 2409 §4.5 leaves when to the implementation), B's
are long. A paced UDP flow (:mod:`ikev1d_lab.udpflow`) runs from A's inner address
to B's while that happens; the renewals are counted in A's log.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, strongswan_conf, swanctl_conf
from ikev1d_lab.udpflow import FlowResult, run_flow

__all__ = ["PEERS", "Pair", "Renewals", "pair", "renewals"]

PSK = "rekey-under-traffic-psk-0123456789"
IKE_PROPOSAL = "aes128-sha256-modp2048"
ESP_PROPOSAL = "aes128gcm16"
CONN, CHILD = "gw", "net"
PEERS = ("ikev1d", "strongswan")
_LONG = "8h"


@dataclass(frozen=True)
class Renewals:
    phase1: int
    phase2: int


@dataclass(frozen=True)
class Pair:
    topo: Topology
    a: Ikev1dDaemon
    peer: str
    log_b: Path

    def flow(self, port: int, *, pps: float, size: int, seconds: float,
             reverse: bool = False) -> FlowResult:
        """A flow from A's inner address to B's (``reverse``: from B to A)."""
        t = self.topo
        if reverse:
            return run_flow(t.b, t.a, t.inner_addr_b, t.inner_addr_a, port, pps=pps,
                            size=size, seconds=seconds)
        return run_flow(t.a, t.b, t.inner_addr_a, t.inner_addr_b, port, pps=pps, size=size,
                        seconds=seconds)

    def flows_both_ways(self, port: int, *, pps: float, size: int,
                        seconds: float) -> tuple[FlowResult, FlowResult]:
        """A to B and B to A at once (ports ``port`` and ``port + 1``)."""
        with ThreadPoolExecutor(max_workers=2) as pool:
            ab = pool.submit(self.flow, port, pps=pps, size=size, seconds=seconds)
            ba = pool.submit(self.flow, port + 1, pps=pps, size=size, seconds=seconds,
                             reverse=True)
            return ab.result(), ba.result()


def renewals(log_text: str) -> Renewals:
    """Phase 1 and Phase 2 SAs established beyond the first of each, per A's log."""
    p1 = len(re.findall(r"ISAKMP SA established", log_text))
    p2 = len(re.findall(r"IPsec SA established", log_text))
    return Renewals(max(0, p1 - 1), max(0, p2 - 1))


@contextlib.contextmanager
def pair(topo: Topology, work_dir: Path, peer: str, *, ike_life: str = _LONG,
         child_life: str = _LONG, log_level: str = "info") -> Iterator[Pair]:
    """A and B up with one IPsec SA that carries a ping; everything stopped afterwards."""
    a_addr, b_addr = topo.addr_a, topo.addr_b
    encap = peer == "strongswan"
    with contextlib.ExitStack() as stack:
        if peer == "ikev1d":
            b = Ikev1dDaemon(topo.b, work_dir / "ikev1d-b", ikev1d_conf(
                CONN, b_addr, a_addr, b_addr, a_addr, PSK, [IKE_PROPOSAL], [ESP_PROPOSAL],
                topo.inner_net_b, topo.inner_net_a, dataplane="userspace",
                rekey_time=_LONG, child_rekey_time=_LONG,
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
                topo.inner_net_b, topo.inner_net_a, encap=True, child_rekey_time=_LONG,
            ))
            log_b = charon.log_path
        a = Ikev1dDaemon(topo.a, work_dir / "ikev1d-a", ikev1d_conf(
            CONN, a_addr, b_addr, a_addr, b_addr, PSK, [IKE_PROPOSAL], [ESP_PROPOSAL],
            topo.inner_net_a, topo.inner_net_b, dataplane="userspace", encap=encap,
            rekey_time=ike_life, child_rekey_time=child_life,
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
