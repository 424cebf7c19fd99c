"""Throughput benchmark: iperf3 through ikev1d's userspace data plane and strongSwan's libipsec.

Run by hand, as root (it creates network namespaces)::

    .venv/bin/python bench/throughput.py [--quick] [--algs aes128gcm16,aes128-sha256]

On the two-host topology (namespaces A 192.0.2.1 with 10.1.0.1/24 on lo, B
192.0.2.2 with 10.2.0.1/24 on lo, one veth), for each ESP algorithm and each
setup, one tunnel is established and iperf3 runs TCP and then UDP from
10.1.0.1 (client in A) to 10.2.0.1 (server in B):

* ``ikev1d raw ESP``: ikev1d <-> ikev1d, userspace data plane, IP protocol 50;
* ``ikev1d ESP-in-UDP``: the same with ``encap = true`` (RFC 3948, UDP 4500);
* ``strongSwan(openssl)``: charon <-> charon, kernel-libipsec (always UDP 4500,
  ``encap = yes``) with the openssl plugin loaded first, so OpenSSL does all ESP
  crypto (strongSwan's fastest configuration here);
* ``strongSwan(default)``: the same in the default plugin order (aes, sha2, hmac
  software plugins before openssl; only where that changes the provider, i.e. not
  for AES-GCM, which only openssl offers in this plugin list);
* ``veth (no IPsec)``: iperf3 between the outer addresses, once, as the ceiling.

``--workers 1,2`` adds, for each ikev1d setup, one with ``dataplane_workers = 2``
on both ends (named ``... 2w``): the sealing direction in a worker process.

The daemons' CPU is utime+stime of their processes (all threads, and their child
processes: ikev1d's sealing worker) from /proc/PID/stat just before and after
each iperf3 run.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchlib import (
    find_pid,
    perf_summary,
    profile_summary,
    start_perf,
    start_profiler,
    stop_profiler,
)
from fairness import SOCKET_BUFFER, TUN_QUEUE, equalize

from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import DEFAULT_LOAD, Charon, strongswan_conf, swanctl_conf

PSK = "bench-throughput-shared-secret"
IKE_PROPOSAL = "aes128-sha256-modp2048"
CONN = "gw"
CHILD = "net"
IPERF3 = "iperf3"
IPERF_PORT = 5201
UDP_BITRATE = "2G"
# Both data planes' TUN devices have MTU 1400 (ikev1d's DEFAULT_MTU, kernel-libipsec's
# default): 1372 octets of UDP payload make 1400-octet inner packets, no fragments.
UDP_LENGTH = 1372
# Plugin order decides the provider of each algorithm: the first plugin offering it.
LOAD_OPENSSL_FIRST = "openssl " + DEFAULT_LOAD.replace(" openssl", "")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Setup:
    """One way to carry the traffic: which daemons, raw ESP or UDP 4500, plugin order."""

    name: str
    kind: str  # "ikev1d" | "strongswan" | "veth"
    encap: bool = False
    load: str = ""  # charon's plugin list (strongswan only)
    offload: str = "gro"  # ikev1d's [daemon] tun_offload
    workers: int = 1  # ikev1d's [daemon] dataplane_workers


SETUPS = (
    Setup("ikev1d raw ESP", "ikev1d", encap=False),
    Setup("ikev1d ESP-in-UDP", "ikev1d", encap=True),
    Setup("strongSwan(openssl)", "strongswan", encap=True, load=LOAD_OPENSSL_FIRST),
    Setup("strongSwan(default)", "strongswan", encap=True, load=DEFAULT_LOAD),
    Setup("ikev1d raw no-offload", "ikev1d", encap=False, offload="off"),
    Setup("ikev1d UDP no-offload", "ikev1d", encap=True, offload="off"),
    Setup("ikev1d UDP TSO", "ikev1d", encap=True, offload="tso"),
)
VETH = Setup("veth (no IPsec)", "veth")
SETUP_KEYS = {"ikev1d": SETUPS[0], "ikev1d-udp": SETUPS[1], "openssl": SETUPS[2],
              "default": SETUPS[3], "ikev1d-plain": SETUPS[4], "ikev1d-udp-plain": SETUPS[5],
              "ikev1d-udp-tso": SETUPS[6], "veth": VETH}
# AES-GCM comes from openssl in both plugin orders (DEFAULT_LOAD has no gcm plugin).
OPENSSL_ONLY = frozenset({"aes128gcm16", "aes256gcm16"})


@dataclass
class Sample:
    """One iperf3 run."""

    mbps: float = 0.0  # received at the server
    lost_percent: float = 0.0  # UDP only
    retransmits: int = 0  # TCP only
    received_bytes: int = 0
    seconds: float = 0.0  # wall time between the CPU samples
    cpu_a: float = 0.0  # CPU seconds of the daemon in A (sends: seals)
    cpu_b: float = 0.0  # CPU seconds of the daemon in B (receives: opens)
    sys_a: float = 0.0  # the kernel's part (stime) of cpu_a: system calls, TUN, sockets
    sys_b: float = 0.0
    child_a: float = 0.0  # the part of cpu_a spent in child processes (ikev1d's worker)
    child_b: float = 0.0
    box_busy: float = 0.0  # CPU seconds the whole machine was busy (/proc/stat)
    iperf_cpu: float = 0.0  # CPU seconds of the iperf3 client and server (their own report)
    load: float = 0.0  # the 1-minute load average when the run ended
    udp_buffer_drops: tuple[int, int] = (0, 0)  # UDP socket buffer overflows in A and B
    # Packets the kernel dropped handing them to the daemon's TUN device in A and B: its
    # ring (txqueuelen slots) was full while the daemon was not reading.
    tun_drops: tuple[int, int] = (0, 0)

    @property
    def others(self) -> float:
        """Cores used by everything else on the machine during the run (shared box)."""
        if not self.seconds:
            return float("nan")
        return (self.box_busy - self.cpu_a - self.cpu_b - self.iperf_cpu) / self.seconds

    def pct(self, cpu: float) -> float:
        return 100.0 * cpu / self.seconds if self.seconds else float("nan")

    def s_per_gb(self, cpu: float) -> float:
        return cpu / (self.received_bytes / 1e9) if self.received_bytes else float("nan")


@dataclass
class Result:
    alg: str
    proto: str
    setup: str
    samples: list[Sample] = field(default_factory=list)
    error: str = ""


# --- process CPU time -----------------------------------------------------------------------


def _own_cpu_times(pid: int) -> tuple[float, float]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) / _CLK_TCK, int(rest[12]) / _CLK_TCK  # fields 14 and 15 of proc(5)


def child_pids(pid: int) -> list[int]:
    """The live child processes of `pid` (all its threads' children), recursively."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    out += [int(child), *child_pids(int(child))]
    return out


def children_cpu(pid: int) -> float:
    """utime+stime of the live child processes of `pid` (ikev1d's sealing worker)."""
    total = 0.0
    for child in child_pids(pid):
        with contextlib.suppress(OSError):
            total += sum(_own_cpu_times(child))
    return total


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) in seconds of process `pid` (all its threads) and of its live child
    processes (ikev1d's sealing worker; charon has none), from /proc/PID/stat.

    A child's time is in its own stat until it exits; the workers live as long as the
    daemon, so summing the live ones before and after a run counts each once."""
    user, system = _own_cpu_times(pid)
    for child in child_pids(pid):
        with contextlib.suppress(OSError):
            u, s = _own_cpu_times(child)
            user, system = user + u, system + s
    return user, system


def box_busy_seconds() -> float:
    """CPU seconds all cores have spent running processes since boot (/proc/stat).

    user + nice + system + steal; irq and softirq are left out: with IRQ time
    accounting they hold the network stack's work for our own packets (the veth
    delivery), which belongs to no process.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, steal = fields[0], fields[1], fields[2], fields[7]
    return (user + nice + system + steal) / _CLK_TCK


def snmp(ns: Namespace) -> dict[str, int]:
    """The namespace's /proc/net/snmp counters ("Udp.RcvbufErrors", ...)."""
    lines = ns.run(["cat", "/proc/net/snmp"], check=True).stdout.splitlines()
    out: dict[str, int] = {}
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        proto = head.split(":")[0]
        for k, v in zip(head.split()[1:], values.split()[1:], strict=False):
            out[f"{proto}.{k}"] = int(v)
    return out


def tun_tx_drops(ns: Namespace) -> int:
    """TX drops of the TUN devices in `ns`: packets routed into the tunnel that found the
    device's ring full (the TUN driver drops then instead of stopping the queue)."""
    out = ns.run(["ip", "-d", "-s", "-j", "link", "show"], check=True).stdout
    total = 0
    for link in json.loads(out):
        if link.get("linkinfo", {}).get("info_kind") != "tun":
            continue
        total += int(link.get("stats64", {}).get("tx", {}).get("dropped", 0))
    return total


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --- tunnels --------------------------------------------------------------------------------


class SetupError(RuntimeError):
    """The tunnel could not be established or does not carry traffic."""


@dataclass(frozen=True)
class Tunnel:
    src: str  # iperf3 client address (in A)
    dst: str  # iperf3 server address (in B)
    pid_a: int | None  # the daemon processes (None for the bare veth)
    pid_b: int | None
    logs: tuple[Path, ...] = ()
    fairness: str = ""  # the socket buffers and TUN queues both daemons were given


@dataclass(frozen=True)
class Settings:
    seconds: int
    repeat: int
    work_dir: Path
    ikev1d_log_level: str
    charon_log_level: int
    profile_dir: Path | None
    profile_native: bool
    nice: int = 0  # niceness of the daemons and iperf3 (0: left alone)
    perf: bool = False  # profile with perf instead of py-spy


def _start_charon(ns: Namespace, work_dir: Path, load: str, log_level: int) -> Charon:
    charon = Charon(ns, work_dir, start=False)
    charon.conf_path.write_text(
        strongswan_conf(charon.work_dir, {"default": log_level}, load=load)
    )
    charon.start()
    return charon


@contextlib.contextmanager
def tunnel(topo: Topology, setup: Setup, esp: str, s: Settings, tag: str) -> Iterator[Tunnel]:
    """Establish `setup` with ESP proposal `esp`; yield the endpoints; tear everything down."""
    a, b = topo.addr_a, topo.addr_b
    net_a, net_b = topo.inner_net_a, topo.inner_net_b
    run_dir = s.work_dir / tag
    with contextlib.ExitStack() as stack:
        if setup.kind == "veth":
            yield Tunnel(a, b, None, None)
            return
        if setup.kind == "ikev1d":
            daemons = []
            for label, ns, local, remote, lnet, rnet in (
                ("b", topo.b, b, a, net_b, net_a),
                ("a", topo.a, a, b, net_a, net_b),
            ):
                conf = ikev1d_conf(
                    CONN, local, remote, local, remote, PSK, [IKE_PROPOSAL], [esp], lnet, rnet,
                    child=CHILD, dataplane="userspace", encap=setup.encap,
                    rekey_time="24h", child_rekey_time="8h",
                    extra_daemon=f"tun_offload = {json.dumps(setup.offload)}\n"
                                 f"dataplane_workers = {setup.workers}\n",
                )  # fmt: skip
                d = Ikev1dDaemon(ns, run_dir / f"ikev1d-{label}", conf,
                                 log_level=s.ikev1d_log_level)
                stack.callback(d.stop)
                d.start()
                daemons.append(d)
            d_b, d_a = daemons
            up = d_a.up(CONN, check=False)
            if up.returncode != 0:
                raise SetupError(f"ikev1d up failed: {up.stdout}{up.stderr}")
            pid_a = find_pid(topo.a, "python", d_a.process.pid if d_a.process else None)
            pid_b = find_pid(topo.b, "python", d_b.process.pid if d_b.process else None)
            logs: tuple[Path, ...] = (d_a.log_path, d_b.log_path)
        else:
            charons = []
            for label, ns, local, remote, lnet, rnet in (
                ("b", topo.b, b, a, net_b, net_a),
                ("a", topo.a, a, b, net_a, net_b),
            ):
                c = _start_charon(ns, run_dir / f"charon-{label}", setup.load,
                                  s.charon_log_level)
                stack.callback(c.stop)
                c.load_config(swanctl_conf(
                    CONN, local, remote, local, remote, PSK, [IKE_PROPOSAL], [esp], lnet, rnet,
                    child=CHILD, encap=setup.encap, child_rekey_time="8h",
                ))  # fmt: skip
                charons.append(c)
            c_b, c_a = charons
            ok, out = c_a.initiate(CHILD, CONN)
            if not ok:
                raise SetupError(f"swanctl --initiate failed: {out}")
            pid_a = find_pid(topo.a, "charon", c_a.proc.pid if c_a.proc else None)
            pid_b = find_pid(topo.b, "charon", c_b.proc.pid if c_b.proc else None)
            logs = (c_a.log_path, c_b.log_path)
        # The route into the TUN device may follow the SA by a moment.
        deadline = time.monotonic() + 5.0
        while ping(topo.a, topo.inner_addr_b, src=topo.inner_addr_a, count=1) != (1, 1):
            if time.monotonic() > deadline:
                raise SetupError("tunnel established, but no ping gets through")
        if s.nice:
            for pid in (pid_a, pid_b):
                renice(pid, s.nice)
        # The same socket buffers and TUN queue length for both data planes.
        fair = f"A: {equalize(topo.a, pid_a)}; B: {equalize(topo.b, pid_b)}"
        yield Tunnel(topo.inner_addr_a, topo.inner_addr_b, pid_a, pid_b, logs, fair)


def renice(pid: int, nice: int) -> None:
    """Set the niceness of every thread of `pid` (setpriority applies to one thread)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def _nice_prefix(nice: int) -> list[str]:
    return ["nice", "-n", str(nice)] if nice else []


# --- iperf3 ---------------------------------------------------------------------------------


@contextlib.contextmanager
def iperf3_server(ns: Namespace, addr: str, port: int, nice: int = 0) -> Iterator[None]:
    proc = ns.popen(
        [*_nice_prefix(nice), IPERF3, "-s", "-B", addr, "-p", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.3)  # listening
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def iperf3_client(
    ns: Namespace, t: Tunnel, port: int, proto: str, seconds: int, nice: int = 0
) -> dict[str, Any]:
    """One iperf3 run from A to B; its JSON report (RuntimeError if it failed)."""
    cmd = [*_nice_prefix(nice), IPERF3, "-c", t.dst, "-B", t.src, "-p", str(port),
           "-t", str(seconds), "-J"]
    if proto == "udp":
        cmd += ["-u", "-b", UDP_BITRATE, "-l", str(UDP_LENGTH)]
    last = ""
    for _attempt in range(3):  # the server may still be finishing the previous run
        proc = ns.run(cmd, check=False, timeout=seconds + 60)
        try:
            report: dict[str, Any] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            report = {"error": proc.stdout.strip() or proc.stderr.strip()}
        if "error" not in report:
            return report
        last = str(report["error"])
        time.sleep(1.0)
    raise RuntimeError(f"iperf3 {proto}: {last}")


def measure(
    topo: Topology, t: Tunnel, port: int, proto: str, seconds: int, nice: int = 0
) -> Sample:
    pids = [p for p in (t.pid_a, t.pid_b) if p is not None]
    snmp_before = [snmp(ns) for ns in (topo.a, topo.b)]
    tun_before = [tun_tx_drops(ns) for ns in (topo.a, topo.b)]
    before = [cpu_times(p) for p in pids]
    children_before = [children_cpu(p) for p in pids]
    busy_before = box_busy_seconds()
    began = time.monotonic()
    report = iperf3_client(topo.a, t, port, proto, seconds, nice)
    elapsed = time.monotonic() - began
    after = [cpu_times(p) for p in pids]
    children_after = [children_cpu(p) for p in pids]
    busy = box_busy_seconds() - busy_before
    snmp_after = [snmp(ns) for ns in (topo.a, topo.b)]
    tun_after = [tun_tx_drops(ns) for ns in (topo.a, topo.b)]
    kernel_drops = tuple(
        sum(a.get(k, 0) - b.get(k, 0) for k in ("Udp.RcvbufErrors", "Udp.SndbufErrors"))
        for a, b in zip(snmp_after, snmp_before, strict=True))
    end = report["end"]
    received = end["sum_received"]
    sample = Sample(
        mbps=float(received["bits_per_second"]) / 1e6,
        received_bytes=int(received["bytes"]),
        seconds=elapsed,
        box_busy=busy,
        load=load_average(),
        udp_buffer_drops=(kernel_drops[0], kernel_drops[1]),
        tun_drops=(tun_after[0] - tun_before[0], tun_after[1] - tun_before[1]),
    )
    # iperf3's CPU figures are % of one core over its own test time.
    util = end.get("cpu_utilization_percent", {})
    test_seconds = float(received.get("seconds", 0.0))
    sample.iperf_cpu = (
        float(util.get("host_total", 0.0)) + float(util.get("remote_total", 0.0))
    ) / 100.0 * test_seconds
    if proto == "udp":
        sample.lost_percent = float(received.get("lost_percent", 0.0))
    else:
        sample.retransmits = int(end.get("sum_sent", {}).get("retransmits", 0))
    if len(pids) == 2:
        sample.sys_a, sample.sys_b = after[0][1] - before[0][1], after[1][1] - before[1][1]
        sample.cpu_a = after[0][0] - before[0][0] + sample.sys_a
        sample.cpu_b = after[1][0] - before[1][0] + sample.sys_b
        sample.child_a = children_after[0] - children_before[0]
        sample.child_b = children_after[1] - children_before[1]
    return sample


# --- output ---------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Row:
    mbps: float
    lost: float
    pct_a: float
    pct_b: float
    gb_a: float
    gb_b: float
    others: float

    @property
    def gb_total(self) -> float:
        return self.gb_a + self.gb_b


def summarize(r: Result) -> Row:
    ss = r.samples
    return Row(
        _median([x.mbps for x in ss]),
        _median([x.lost_percent for x in ss]),
        _median([x.pct(x.cpu_a) for x in ss]),
        _median([x.pct(x.cpu_b) for x in ss]),
        _median([x.s_per_gb(x.cpu_a) for x in ss]),
        _median([x.s_per_gb(x.cpu_b) for x in ss]),
        _median([x.others for x in ss]),
    )


def format_table(results: Sequence[Result]) -> str:
    head = (
        f"{'ESP':<14}{'proto':<6}{'setup':<21}{'Mbit/s':>8}{'loss%':>7}"
        f"{'CPU A%':>8}{'CPU B%':>8}{'A s/GB':>8}{'B s/GB':>8}{'other':>7}  note"
    )
    lines = [head, "-" * len(head)]
    for alg, proto in dict.fromkeys((r.alg, r.proto) for r in results):
        rows: dict[str, Row] = {}
        for r in (x for x in results if x.alg == alg and x.proto == proto):
            if r.error or not r.samples:
                lines.append(f"{alg:<14}{proto:<6}{r.setup:<21}{'FAILED':>8}  {r.error[:120]}")
                continue
            row = rows[r.setup] = summarize(r)
            note = ""
            if len(r.samples) > 1:
                note = f"median of {len(r.samples)}: {min(x.mbps for x in r.samples):.0f}.." \
                       f"{max(x.mbps for x in r.samples):.0f}"
            if proto == "tcp":
                note += f"; retr {int(_median([x.retransmits for x in r.samples]))}"
            tun_a = int(_median([x.tun_drops[0] for x in r.samples]))
            tun_b = int(_median([x.tun_drops[1] for x in r.samples]))
            if tun_a or tun_b:
                note += f"; TUN drops {tun_a}/{tun_b}"
            if r.setup != VETH.name:
                ka = _median([x.sys_a / x.cpu_a if x.cpu_a else 0.0 for x in r.samples])
                kb = _median([x.sys_b / x.cpu_b if x.cpu_b else 0.0 for x in r.samples])
                note += f"; sys {100 * ka:.0f}%/{100 * kb:.0f}%"
                if any(x.child_a or x.child_b for x in r.samples):
                    wa = _median([x.child_a / x.cpu_a if x.cpu_a else 0.0 for x in r.samples])
                    wb = _median([x.child_b / x.cpu_b if x.cpu_b else 0.0 for x in r.samples])
                    note += f"; worker {100 * wa:.0f}%/{100 * wb:.0f}%"
            loss = f"{row.lost:7.1f}" if proto == "udp" else f"{'-':>7}"
            if r.setup == VETH.name:
                cpu = f"{'-':>8}" * 4
            else:
                cpu = f"{row.pct_a:8.0f}{row.pct_b:8.0f}{row.gb_a:8.1f}{row.gb_b:8.1f}"
            cpu += f"{row.others:7.2f}"
            lines.append(f"{alg:<14}{proto:<6}{r.setup:<21}{row.mbps:8.0f}{loss}{cpu}  "
                         + note.lstrip("; "))
        swans = {k: v for k, v in rows.items() if k.startswith("strongSwan")}
        if not swans:
            continue
        best = max(swans, key=lambda k: swans[k].mbps)
        # The headline compares like with like: ESP-in-UDP on both sides (kernel-libipsec
        # has no raw ESP); raw ESP is printed beside it.
        for ours in sorted((k for k in rows if k.startswith("ikev1d")),
                           key=lambda k: k != SETUPS[1].name):
            o, t = rows[ours], swans[best]
            mbps = o.mbps / t.mbps if t.mbps else float("nan")
            cpu_ratio = o.gb_total / t.gb_total if t.gb_total else float("nan")
            label = "HEADLINE (like for like)" if ours == SETUPS[1].name else "beside it"
            lines.append(
                f"  ratio {ours} / {best} [{label}]: Mbit/s {mbps:.2f} (target >= 2.00), "
                f"CPU s/GB A+B {o.gb_total:.2f} / {t.gb_total:.2f} = {cpu_ratio:.2f} "
                "(target <= 0.50)"
            )
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def run_setup(
    topo: Topology,
    setup: Setup,
    alg: str,
    results: Sequence[Result],
    s: Settings,
    port: int,
    rnd: int,
) -> None:
    """One round: establish `setup` and run each of `results`' protocol once into it."""
    tag = re.sub(r"[^A-Za-z0-9]+", "_", f"{alg}-{setup.name}-{rnd + 1}").strip("_")
    try:
        with tunnel(topo, setup, alg, s, tag) as t, iperf3_server(topo.b, t.dst, port, s.nice):
            if t.fairness and rnd == 0:
                print(f"  [{rnd + 1}] {alg} {setup.name}: {t.fairness}", flush=True)
            for r in results:
                sample = measure(topo, t, port, r.proto, s.seconds, s.nice)
                r.samples.append(sample)
                print(
                    f"  [{rnd + 1}] {alg} {r.proto} {setup.name}: {sample.mbps:.0f} Mbit/s"
                    + (f", loss {sample.lost_percent:.1f}%" if r.proto == "udp" else "")
                    + (f", CPU A {sample.cpu_a:.2f}s ({sample.sys_a:.2f} sys"
                       + (f", worker {sample.child_a:.2f}" if setup.workers > 1 else "")
                       + f") B {sample.cpu_b:.2f}s ({sample.sys_b:.2f} sys"
                       + (f", worker {sample.child_b:.2f}" if setup.workers > 1 else "")
                       + f") in {sample.seconds:.1f}s" if t.pid_a else "")
                    + f"; iperf3 {sample.iperf_cpu / sample.seconds:.2f} cores, "
                    f"other processes {sample.others:.2f} cores, load {sample.load:.2f}"
                    + (f", retr {sample.retransmits}" if r.proto == "tcp" else "")
                    + ", UDP buffer overflows A/B {}/{}".format(*sample.udp_buffer_drops)
                    + ", TUN ring drops A/B {}/{}".format(*sample.tun_drops),
                    flush=True,
                )
                time.sleep(0.5)
            if (s.profile_dir is not None and setup.kind == "ikev1d" and rnd == 0
                    and t.pid_a and t.pid_b):
                profile_run(topo, t, port, s, tag)
    except (SetupError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        print(f"  [{rnd + 1}] {alg} {setup.name}: FAILED: {message}", flush=True)
        for r in results:
            r.error = r.error or message


def profile_run(topo: Topology, t: Tunnel, port: int, s: Settings, tag: str) -> None:
    """One extra TCP run (not measured) with py-spy (or perf) recording both ikev1d processes."""
    if s.profile_dir is None or t.pid_a is None or t.pid_b is None:
        return
    sides = (("A", t.pid_a), ("B", t.pid_b))
    if s.perf:
        perfs = [start_perf(pid, s.profile_dir / f"{tag}-{side}.perf", s.seconds - 1)
                 for side, pid in sides]
        try:
            iperf3_client(topo.a, t, port, "tcp", s.seconds, s.nice)
        finally:
            for p in perfs:
                if p is not None:
                    p.wait(60)
        return
    profilers = [
        start_profiler(pid, s.profile_dir / f"{tag}-{side}.collapsed", s.profile_native)
        for side, pid in sides
    ]
    try:
        iperf3_client(topo.a, t, port, "tcp", s.seconds, s.nice)
    finally:
        for prof in profilers:
            if prof is not None:
                stop_profiler(prof)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per configuration")
    parser.add_argument("--seconds", type=int, default=None, help="iperf3 -t (10; --quick 3)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="rounds, each running every configuration once (3; --quick 1)")
    parser.add_argument("--algs", default="aes128gcm16,aes128-sha256",
                        help="ESP proposals, comma-separated (e.g. add 3des-sha1)")
    parser.add_argument("--setups", default="veth,ikev1d,ikev1d-udp,openssl,default",
                        help=f"comma-separated: {', '.join(SETUP_KEYS)}")
    parser.add_argument("--protos", default="tcp,udp", help="tcp,udp")
    parser.add_argument("--workers", default="1",
                        help="ikev1d's dataplane_workers, comma-separated (1,2): each ikev1d "
                             "setup runs once per count (2: named '... 2w')")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="py-spy both ikev1d daemons during one extra TCP run per "
                             "ikev1d setup; collapsed stacks into DIR, summary printed")
    parser.add_argument("--native", action="store_true",
                        help="with --profile: py-spy --native (C frames: OpenSSL, syscalls)")
    parser.add_argument("--perf", action="store_true",
                        help="with --profile: perf record -g instead of py-spy (kernel and C "
                             "frames: system calls, interpreter, OpenSSL)")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run the daemons (all threads) and iperf3 at niceness N, e.g. -10, "
                             "to measure them ahead of other load on a shared machine")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random order of the setups in each round")
    parser.add_argument("--ikev1d-log-level", default="info")
    parser.add_argument("--charon-log-level", type=int, default=1)
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (3 if args.quick else 10)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which(IPERF3) is None:
        print("iperf3 not found (apt-get install iperf3)", file=sys.stderr)
        return 2
    keys = [k.strip() for k in args.setups.split(",") if k.strip()]
    if not keys or not set(keys) <= set(SETUP_KEYS):
        parser.error(f"--setups: choose from {', '.join(SETUP_KEYS)}")
    protos = [p.strip() for p in args.protos.split(",") if p.strip()]
    if not protos or not set(protos) <= {"tcp", "udp"}:
        parser.error("--protos: tcp, udp")
    algs = [a.strip() for a in args.algs.split(",") if a.strip()]
    try:
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers: 1, 2")
    if not workers or not set(workers) <= {1, 2}:
        parser.error("--workers: 1, 2")

    netns.cleanup_stale()
    work_dir = Path(tempfile.mkdtemp(prefix="ikev1d-tput-"))
    s = Settings(args.seconds, args.repeat, work_dir, args.ikev1d_log_level,
                 args.charon_log_level, args.profile, args.native, args.nice,
                 args.perf)
    print(f"{args.repeat} x {args.seconds} s per configuration"
          + (f", daemons and iperf3 at nice {args.nice}" if args.nice else "")
          + f"; load average {Path('/proc/loadavg').read_text().split()[0]}; work dir {work_dir}"
          + f"\nboth data planes: {SOCKET_BUFFER // 1024} KiB socket buffers forced on every "
          f"IP socket of each daemon, TUN txqueuelen {TUN_QUEUE}",
          flush=True)
    results: list[Result] = []
    port = IPERF_PORT + os.getpid() % 1000
    # SIGTERM (and SIGHUP) unwind like Ctrl-C, so the finally blocks tear everything down.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    try:
        with netns.two_hosts() as topo:
            plan: list[tuple[Setup, str]] = [(VETH, "-")] if "veth" in keys else []
            for alg in algs:
                for key in keys:
                    base = SETUP_KEYS[key]
                    if base.kind == "veth":
                        continue
                    if base.load == DEFAULT_LOAD and alg in OPENSSL_ONLY:
                        continue  # the same provider as strongSwan(openssl)
                    for count in (workers if base.kind == "ikev1d" else [1]):
                        if count > 1 and base.offload == "tso":
                            continue  # refused at config load: not supported with workers
                        setup = base if count == 1 else replace(
                            base, name=f"{base.name} {count}w", workers=count)
                        if count == 1 and count not in workers:
                            continue
                        plan.append((setup, alg))
            slots = {
                (setup.name, alg): [Result(alg, proto, setup.name) for proto in protos]
                for setup, alg in plan
            }
            for rs in slots.values():
                results += rs
            # Rounds interleave the setups, so a change in the machine's other load (the
            # box is shared) spreads over all of them instead of hitting one.
            # ... and in a random order per round, so no setup always follows another.
            rng = random.Random(args.seed)
            for rnd in range(args.repeat):
                order = plan[:]
                rng.shuffle(order)
                print(f"round {rnd + 1}: " + ", ".join(f"{a} {x.name}" for x, a in order)
                      + f"; load average {load_average():.2f}", flush=True)
                for setup, alg in order:
                    run_setup(topo, setup, alg, slots[(setup.name, alg)], s, port, rnd)
    except KeyboardInterrupt:
        print("interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    finally:
        failed = any(r.error for r in results)
        if args.keep or failed:
            print(f"logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print()
    print(format_table(results))
    loads = [x.load for r in results for x in r.samples]
    if loads:
        print(f"load average during the runs: {min(loads):.2f}..{max(loads):.2f}, "
              f"now {load_average():.2f}")
    if args.profile is not None:
        for path in sorted(args.profile.glob("*.collapsed")):
            print(f"\nprofile {path.name}:")
            print("\n".join(profile_summary(path)))
        for path in sorted(args.profile.glob("*.perf")):
            print(f"\nperf profile {path.name}:")
            print("\n".join(perf_summary(path)))
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
