"""ikev1d under hostile traffic while a real strongSwan peer keeps establishing.

The two-host topology: ikev1d in A (192.0.2.1) answers a static connection for
the strongSwan peer in B (192.0.2.2) and a ``%any`` connection, so that spoofed
requests from anywhere find a connection and cost what a road-warrior gateway's
would. A's default route points at B, so answers to forged sources leave A and
are dropped in B (which does not forward). The hostile traffic comes from B
(:mod:`ikev1d_lab.attack`, run there as a process), counted on arrival in A by an
nft rule. The peer's charon keeps its default retransmission settings (first
after 4 s, then x1.8, 5 retransmissions): its "normal retransmit budget".
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ikev1d_lab.attack import rss_kib
from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.errors import LabError
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.strongswan import Charon, swanctl_conf

__all__ = [
    "HostileError", "Setups", "Target", "arrived", "hostile_target", "start_attack",
    "udp_counters",
]

PSK = "hostile-test-pre-shared-key-0123456789"
RW_PSK = "hostile-test-road-warrior-key-0123456789"
PROPOSAL = "aes128-sha256-modp2048"
ESP = "aes128-sha256"
CONNECTION = "peer"
CHILD = "net"
NFT_TABLE = "ikev1d_count"


class HostileError(LabError):
    """The rig for a hostile run could not be set up."""


def _rw_connection(topo: Topology) -> str:
    # Matches a request from any address: spoofed sources get this connection's state.
    return f"""
[connections.rw]
local_addrs = ["{topo.addr_a}"]
remote_addrs = ["%any"]
proposals = ["{PROPOSAL}"]

[connections.rw.local]
auth = "psk"
id = "{topo.addr_a}"

[connections.rw.remote]
auth = "psk"
id = "%any"

[connections.rw.children.net]
local_ts = ["{topo.inner_net_a}"]
remote_ts = ["10.9.0.0/24"]
esp_proposals = ["{ESP}"]

[secrets.rw]
secret = "{RW_PSK}"
ids = ["%any"]
"""


def _nft(ns: Namespace, script: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    proc = subprocess.run([*ns.exec_prefix(), nft, "-f", "-"], input=script, text=True,
                          capture_output=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise HostileError(f"nft in {ns.name} failed: {proc.stderr.strip()}")


def arrived(ns: Namespace) -> int:
    """IKE datagrams (UDP 500/4500) that reached `ns` since :func:`hostile_target` began."""
    nft = shutil.which("nft") or "/usr/sbin/nft"
    out = ns.run([nft, "list", "table", "inet", NFT_TABLE], check=False).stdout
    match = re.search(r"counter packets (\d+)", out)
    return int(match.group(1)) if match else 0


def udp_counters(ns: Namespace) -> dict[str, int]:
    """The namespace's UDP counters (/proc/net/snmp): InDatagrams, RcvbufErrors, ...;
    datagrams dropped because a socket's receive buffer was full count in RcvbufErrors."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if ln.startswith("Udp:")]
    if len(lines) < 2:
        return {}
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=False)}


@dataclass
class Setups:
    """The peer's establishments, initiate to IPsec SA, during a hostile run."""

    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return len(self.seconds) + len(self.failures)


@dataclass
class Target:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon
    pid: int
    stopped: bool = False
    """Set when :func:`hostile_target` has stopped both daemons."""

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def establish_until(self, end: float, pause: float = 0.0) -> Setups:
        """The peer initiates, then deletes, again and again until `end` (monotonic):
        at least once."""
        setups = Setups()
        while not setups.attempts or time.monotonic() < end:
            started = time.monotonic()
            # charon's own budget: 4 + 7.2 + 13 + 23 + 42 + 76 s; `timeout` only bounds it.
            ok, out = self.theirs.initiate(CHILD, CONNECTION, timeout=180)
            if ok:
                setups.seconds.append(time.monotonic() - started)
            else:
                setups.failures.append((out.strip().splitlines() or ["?"])[-1])
            self.theirs.terminate(ike=CONNECTION, timeout=5)
            time.sleep(pause)
        return setups

    def log_lines(self) -> int:
        return len(self.ours.log_text().splitlines())

    def alive(self) -> bool:
        """Whether ikev1d is still running; only inside the ``hostile_target`` block:
        after it the daemon has been stopped, and "no" would say nothing about the run."""
        if self.stopped:
            raise HostileError("alive() asked after hostile_target stopped the daemon")
        return self.ours.process is not None and self.ours.process.poll() is None

    def tracebacks(self) -> int:
        """Python tracebacks in ikev1d's log so far."""
        return self.ours.log_text().count("Traceback")


def start_attack(ns: Namespace, *args: str) -> subprocess.Popen[str]:
    """``python -m ikev1d_lab.attack ARGS`` inside `ns` (flood or fuzz)."""
    proc: subprocess.Popen[str] = ns.popen(
        [sys.executable, "-m", "ikev1d_lab.attack", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc


@contextlib.contextmanager
def hostile_target(topo: Topology, work_dir: Path, extra_daemon: str = "",
                   log_level: str = "info") -> Iterator[Target]:
    """ikev1d in A with the peer's and a %any connection, the peer's charon in B."""
    conf = ikev1d_conf(
        CONNECTION, topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK, [PROPOSAL],
        [ESP], topo.inner_net_a, topo.inner_net_b, child=CHILD, dataplane="none",
        extra_daemon=extra_daemon,
    ) + _rw_connection(topo)  # fmt: skip
    topo.a.run(["ip", "route", "add", "default", "via", topo.addr_b])
    _nft(topo.a, (
        f"table inet {NFT_TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy accept;\n"
        "    udp dport { 500, 4500 } counter\n"
        "  }\n"
        "}\n"
    ))  # fmt: skip
    ours = Ikev1dDaemon(topo.a, work_dir / "ikev1d", conf, log_level=log_level)
    theirs = Charon(topo.b, work_dir / "charon", start=False)
    target: Target | None = None
    try:
        ours.start(timeout=20.0)
        theirs.start()
        theirs.load_config(swanctl_conf(
            CONNECTION, topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK, [PROPOSAL],
            [ESP], topo.inner_net_b, topo.inner_net_a, child=CHILD,
            extra_conn="    keyingtries = 1",
        ))  # fmt: skip
        if ours.process is None:
            raise HostileError("ikev1d did not start")
        target = Target(topo, ours, theirs, ours.process.pid)
        yield target
    finally:
        if target is not None:
            target.stopped = True
        theirs.stop()
        ours.stop()
        nft = shutil.which("nft") or "/usr/sbin/nft"
        topo.a.run([nft, "delete", "table", "inet", NFT_TABLE], check=False)
