"""Scale benchmark: N tunnels held established against ikev1d and against strongSwan.

Run by hand, as root (it creates network namespaces)::

    .venv/bin/python bench/scale.py [--tunnels N] [--window W] [--rate R]
        [--responders ikev1d,strongswan]

The load is the one of bench/handshakes.py and comes from its helpers: one
charon initiator with N connections ``t1`` .. ``tN`` (Main Mode + one Quick
Mode each, PSK, equal but for the local ID), initiated over vici with at most W
handshakes in flight.  The responder is ikev1d with its userspace data plane
(every IPsec SA in its SAD, with its cipher contexts) or a strongSwan charon
whose IPsec SAs go to kernel-libipsec (also userspace, the throughput
benchmark's strongSwan).  For each responder it prints:

* resident memory (VmRSS) before the first handshake and with the N tunnels
  held, and the growth per tunnel;
* the responder's CPU milliseconds per tunnel for the first and for the last
  tenth of the tunnels (at most 1,000 each): flat when the cost of a new tunnel
  does not grow with the number held;
* the wall time of ``ikev1d status --json`` (``swanctl --list-sas`` for
  strongSwan) with no tunnels and with the N tunnels;
* while holding them, one more connection, ``probe``, between the responder and
  a second address of the initiator: ``up`` (``ikev1d up probe``,
  ``swanctl --initiate``), a few seconds of DPD (the load generator's side of
  ``probe`` sends R-U-THERE every second, the only DPD in the run; counted in
  its log: requests sent and R-U-THERE-ACKs received), ``down``
  (``ikev1d down probe``, ``swanctl --terminate``) and ``up`` again, each in
  wall time of the command;
* for ikev1d, how long its event loop answered nothing while it made the
  ``status --json`` answer and while it answered a Prometheus scrape with the N
  tunnels: the longest round trip of ``ping`` requests sent over its control
  socket every 2 ms meanwhile (each ping is answered by the loop);

then the ratios ikev1d / strongSwan.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from benchlib import (
    cpu_times,
    drive,
    find_pid,
    gc_pause_summary,
    gc_pauses,
    start_charon,
    summarize_log,
    wait_count,
)
from handshakes import (
    CHARON_THREADS,
    CHILD,
    GROUPS,
    LOAD_OPENSSL_FIRST,
    PSK,
    Group,
    count_charon,
    count_ikev1d,
    initiator_swanctl_conf,
    responder_swanctl_conf,
)

from ikev1d.daemon.control import PingRequest
from ikev1d.daemon.control_client import send_request
from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.strongswan import Charon

#: The probe connection's end on the initiator host: a second address, so that no
#: responder has to tell it from the N benchmark connections by anything but address.
PROBE_ADDR = "192.0.2.11"
PROBE_ID = "probe.bench.example"
PROBE_NET_A = "10.9.1.0/24"
PROBE_NET_B = "10.9.2.0/24"
#: Seconds the probe is held with DPD every second before it is taken down.
DPD_HOLD = 6.0
#: charon logs each IKEv1 Informational it builds or parses with its payloads;
#: N(DPD) is R-U-THERE, N(DPD_ACK) R-U-THERE-ACK (RFC 3706).
DPD_SENT_RE = re.compile(r"generating INFORMATIONAL_V1 request \d+ \[ HASH N\(DPD\) \]")
DPD_ACKED_RE = re.compile(r"parsed INFORMATIONAL_V1 request \d+ \[ HASH N\(DPD_ACK\) \]")


def vm_rss_kib(pid: int) -> int:
    """Resident memory of process `pid` in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def context_switches(pid: int) -> int:
    """Voluntary context switches of process `pid`, all threads: how often it slept
    (an event loop's wakeups, a worker thread's waits), from /proc/PID/task/*/status."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


@dataclass
class SliceFigures:
    """One slice of tunnels: the responder's user and system CPU, how often it woke
    up, and the handshake rate and load meanwhile (to tell the cost of holding many
    SAs from the cost of a slower initiator: fewer datagrams per wakeup)."""

    tunnels: int
    user_s: float
    system_s: float
    wakeups: int
    seconds: float
    load: float

    @property
    def rate(self) -> float:
        return self.tunnels / self.seconds if self.seconds else 0.0

    def line(self, label: str) -> str:
        n = self.tunnels or 1
        return (f"{label} {self.tunnels}: user {1000 * self.user_s / n:.2f} + system "
                f"{1000 * self.system_s / n:.2f} ms, {self.wakeups / n:.1f} wakeups per "
                f"tunnel, {self.rate:.0f} tunnels/s, load {self.load:.1f}")


UNEQUAL_PACE: Final = 1.25
"""Slice rates further apart than this make last/first a figure of the arrival
pattern as much as of the SAs held (see :func:`pace_warning`)."""


def pace_warning(first: SliceFigures | None, last: SliceFigures | None) -> str | None:
    """A warning when the two slices came at rates too far apart to compare.

    Uncapped, the generator slows down as it holds more SAs; a responder then
    wakes for each message instead of for a batch, and each message costs more
    with cold caches whatever the SA count. Only ``--rate`` below what every
    party sustains to the end gives both slices the same arrivals."""
    if first is None or last is None or not first.rate or not last.rate:
        return None
    fast, slow = max(first.rate, last.rate), min(first.rate, last.rate)
    if fast <= UNEQUAL_PACE * slow:
        return None
    return (f"the slices came at {first.rate:.0f} and {last.rate:.0f} tunnels/s: "
            "last/first is the arrival pattern's as much as the SAs'; compare at an "
            "equal pace with --rate")


def slice_size(tunnels: int) -> int:
    """Tunnels in the first and the last slice: a tenth, at most 1,000, at least 1."""
    return max(1, min(1000, tunnels // 10))


def slices(names: Sequence[str]) -> tuple[Sequence[str], Sequence[str], Sequence[str]]:
    """(first slice, middle, last slice) of the tunnels, in initiation order."""
    k = slice_size(len(names))
    if len(names) < 2 * k:
        return names, (), ()
    return names[:k], names[k : len(names) - k], names[len(names) - k :]


def timed(fn: Callable[[], object]) -> float:
    began = time.monotonic()
    fn()
    return time.monotonic() - began


def median_time(fn: Callable[[], object], repeat: int = 3) -> float:
    return statistics.median(timed(fn) for _ in range(repeat))


@dataclass
class ScaleResult:
    responder: str
    tunnels: int
    established: int = 0
    initiated_ok: int = 0
    seconds: float = 0.0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    slice: int = 0
    cpu_first_s: float = 0.0
    cpu_last_s: float = 0.0
    status_empty_s: float = 0.0
    status_full_s: float = 0.0
    status_bytes: int = 0
    up_s: float = float("nan")
    down_s: float = float("nan")
    up_again_s: float = float("nan")
    dpd_sent: int = 0
    dpd_acked: int = 0
    errors: list[str] = field(default_factory=list)
    first: SliceFigures | None = None
    last: SliceFigures | None = None
    gc_pauses: str = ""
    """ikev1d's collector pauses from the first tunnel to the end (``--gc-pauses``)."""
    status_stall_s: float = float("nan")
    """ikev1d: the longest control-socket ping round trip while it made ``status``."""
    scrape_s: float = float("nan")
    scrape_stall_s: float = float("nan")
    """ikev1d: a metrics scrape's wall time and the longest ping round trip during it."""

    @property
    def complete(self) -> bool:
        return (self.established == self.tunnels and self.initiated_ok == self.tunnels
                and self.dpd_acked > 0 and self.dpd_acked >= self.dpd_sent - 1
                and not any(e.startswith("probe") for e in self.errors))

    @property
    def kib_per_tunnel(self) -> float:
        grown = self.rss_after_kib - self.rss_before_kib
        return grown / self.established if self.established else float("nan")

    @property
    def ms_first(self) -> float:
        return 1000 * self.cpu_first_s / self.slice if self.slice else float("nan")

    @property
    def ms_last(self) -> float:
        return 1000 * self.cpu_last_s / self.slice if self.slice else float("nan")


METRICS_PORT = 9616


def longest_ping_while(socket_path: Path, fn: Callable[[], object]) -> float:
    """Run ``fn`` while a thread sends ``ping`` over the daemon's control socket every
    2 ms: the longest round trip, how long the daemon's loop answered nothing."""
    stop = threading.Event()
    rtts: list[float] = []

    def pinger() -> None:
        while not stop.is_set():
            began = time.monotonic()
            send_request(str(socket_path), PingRequest())
            rtts.append(time.monotonic() - began)
            time.sleep(0.002)

    thread = threading.Thread(target=pinger, daemon=True)
    thread.start()
    time.sleep(0.1)
    try:
        fn()
    finally:
        stop.set()
        thread.join(60)
    return max(rtts, default=float("nan"))


def scrape(ns: Namespace) -> int:
    """One Prometheus scrape of the daemon in ``ns``: the size of the answer."""
    code = ("import urllib.request; print(len(urllib.request.urlopen("
            f"'http://127.0.0.1:{METRICS_PORT}/metrics', timeout=300).read()))")
    return int(ns.run([sys.executable, "-c", code], timeout=330).stdout)


def ikev1d_responder_conf(topo: Topology, group: Group, log_dataplane: str) -> str:
    """The bench connection of handshakes.py (any initiator ID from the initiator's
    address) and the probe connection to the initiator's second address."""
    a, b = topo.addr_a, topo.addr_b
    bench = ikev1d_conf(
        "bench", b, a, b, "%any", PSK, [group.ike_proposal], [group.esp_proposal],
        topo.inner_net_b, topo.inner_net_a, child=CHILD, dataplane=log_dataplane,
        secret_ids=[a], retransmit_timeout="4s", retransmit_tries=5, rekey_time="24h",
        child_rekey_time="8h",
        extra_daemon=('half_open_per_peer = 1000000\nhalf_open_total = 1000000\n'
                      f'half_open_timeout = "60s"\nmetrics = "127.0.0.1:{METRICS_PORT}"'),
    )
    probe = ikev1d_conf(
        "probe", b, PROBE_ADDR, b, PROBE_ID, PSK, [group.ike_proposal],
        [group.esp_proposal], PROBE_NET_B, PROBE_NET_A, child=CHILD,
        secret_ids=[PROBE_ADDR], rekey_time="24h", child_rekey_time="8h",
    )
    # No DPD of our own on the N tunnels: the strongSwan responder's connection has none
    # either (and the generator's t1..tN do not ask); DPD is measured on the probe.
    bench = bench.replace("[connections.bench]\n", '[connections.bench]\ndpd_delay = "0s"\n')
    return bench + probe[probe.index("[connections.probe]"):]


def _probe_swanctl(local: str, remote: str, local_id: str, remote_id: str, group: Group,
                   local_net: str, remote_net: str, dpd: bool) -> str:
    dpd_lines = "    dpd_delay = 1s\n    dpd_timeout = 10s\n" if dpd else ""
    return (
        "  probe {\n    version = 1\n"
        f"    local_addrs = {local}\n    remote_addrs = {remote}\n"
        f"    proposals = {group.ike_proposal}\n"
        "    rekey_time = 0\n    reauth_time = 0\n    unique = no\n" + dpd_lines +
        f"    local {{\n      auth = psk\n      id = {local_id}\n    }}\n"
        f"    remote {{\n      auth = psk\n      id = {remote_id}\n    }}\n"
        f"    children {{\n      {CHILD} {{\n        local_ts = {local_net}\n"
        f"        remote_ts = {remote_net}\n        esp_proposals = {group.esp_proposal}\n"
        "        rekey_time = 0\n      }\n    }\n  }\n"
    )


def _with_probe(conf: str, probe: str, local: str, remote: str) -> str:
    """swanctl.conf text with the probe connection and its secret added."""
    at = conf.index("connections {\n") + len("connections {\n")
    secret = (f"  ike-probe {{\n    id-1 = {local}\n    id-2 = {remote}\n"
              f"    secret = 0x{PSK.encode().hex()}\n  }}\n")
    conf = conf[:at] + probe + conf[at:]
    at = conf.index("secrets {\n") + len("secrets {\n")
    return conf[:at] + secret + conf[at:]


def initiator_conf(topo: Topology, group: Group, n: int) -> str:
    conf = initiator_swanctl_conf(n, topo.addr_a, topo.addr_b, group, topo.inner_net_a,
                                  topo.inner_net_b)
    probe = _probe_swanctl(PROBE_ADDR, topo.addr_b, PROBE_ID, topo.addr_b, group,
                           PROBE_NET_A, PROBE_NET_B, dpd=True)
    return _with_probe(conf, probe, PROBE_ADDR, topo.addr_b)


def strongswan_responder_conf(topo: Topology, group: Group) -> str:
    a, b = topo.addr_a, topo.addr_b
    conf = responder_swanctl_conf(b, a, group, topo.inner_net_b, topo.inner_net_a)
    probe = _probe_swanctl(b, PROBE_ADDR, b, PROBE_ID, group, PROBE_NET_B, PROBE_NET_A,
                           dpd=False)
    return _with_probe(conf, probe, b, PROBE_ADDR)


def _count_dpd(initiator: Charon, since: int) -> tuple[int, int]:
    text = initiator.log_text()[since:]
    return len(DPD_SENT_RE.findall(text)), len(DPD_ACKED_RE.findall(text))


class Responder:
    """What the benchmark does to a responder; one subclass each."""

    name = ""
    pid = 0

    def status(self) -> int:
        """List the SAs as a user would; the size of the answer in bytes."""
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def up(self) -> str | None:
        """Establish the probe; None, or why it failed."""
        raise NotImplementedError

    def down(self) -> str | None:
        raise NotImplementedError

    def probe_up(self) -> bool:
        raise NotImplementedError

    def log_lines(self) -> list[str]:
        return []


class Ikev1dResponder(Responder):
    name = "ikev1d"

    def __init__(self, daemon: Ikev1dDaemon) -> None:
        self.daemon = daemon
        proc = daemon.process
        self.pid = find_pid(daemon.ns, "python", proc.pid if proc else None)

    def status(self) -> int:
        return len(self.daemon.cli("status", "--json", timeout=300).stdout)

    def count(self) -> int:
        return count_ikev1d(self.daemon)

    def up(self) -> str | None:
        result = self.daemon.up("probe", CHILD, timeout=30, check=False)
        return None if result.returncode == 0 else f"probe up: {result.stdout}{result.stderr}"

    def down(self) -> str | None:
        result = self.daemon.cli("down", "probe", check=False)
        return None if result.returncode == 0 else f"probe down: {result.stdout}{result.stderr}"

    def probe_up(self) -> bool:
        doc = json.loads(self.daemon.cli("status", "--json", timeout=300).stdout)
        return any(sa["name"] == "probe" and sa["state"] == "ESTABLISHED"
                   for sa in doc["ike_sas"])

    def log_lines(self) -> list[str]:
        return [f"log: {line}" for line in summarize_log(self.daemon.log_text())]


class CharonResponder(Responder):
    name = "strongSwan"

    def __init__(self, charon: Charon) -> None:
        self.charon = charon
        proc = charon.proc
        self.pid = find_pid(charon.ns, "charon", proc.pid if proc else None)

    def status(self) -> int:
        return len(self.charon.swanctl(["--list-sas"], timeout=300).stdout)

    def count(self) -> int:
        return count_charon(self.charon)

    def up(self) -> str | None:
        ok, out = self.charon.initiate(CHILD, "probe", timeout=30)
        return None if ok else f"probe up: {out[-300:]}"

    def down(self) -> str | None:
        ok, out = self.charon.terminate(ike="probe", timeout=30)
        return None if ok else f"probe down: {out[-300:]}"

    def probe_up(self) -> bool:
        return any(sa["name"] == "probe" and sa["state"] == "ESTABLISHED"
                   for sa in self.charon.list_sas())


@dataclass(frozen=True)
class Settings:
    tunnels: int
    window: int
    timeout: float
    group: Group
    work_dir: Path
    charon_log_level: int
    ikev1d_log_level: str
    rate: float | None = None
    gc_pauses: bool = False


def run_one(topo: Topology, kind: str, s: Settings) -> ScaleResult:
    result = ScaleResult("ikev1d" if kind == "ikev1d" else "strongSwan", s.tunnels)
    run_dir = s.work_dir / kind
    daemon: Ikev1dDaemon | None = None
    resp_charon: Charon | None = None
    initiator: Charon | None = None
    gc_prefix = run_dir / "gc-pauses" if s.gc_pauses and kind == "ikev1d" else None
    window = [0.0, 0.0]
    try:
        responder: Responder
        if kind == "ikev1d":
            daemon = Ikev1dDaemon(topo.b, run_dir / "ikev1d",
                                  ikev1d_responder_conf(topo, s.group, "userspace"),
                                  log_level=s.ikev1d_log_level)
            with gc_pauses(gc_prefix):
                daemon.start()
            responder = Ikev1dResponder(daemon)
        else:
            resp_charon = start_charon(topo.b, run_dir / "responder", LOAD_OPENSSL_FIRST,
                                       CHARON_THREADS, s.charon_log_level)
            resp_charon.load_config(strongswan_responder_conf(topo, s.group))
            responder = CharonResponder(resp_charon)
        initiator = start_charon(topo.a, run_dir / "initiator", LOAD_OPENSSL_FIRST,
                                 CHARON_THREADS, s.charon_log_level)
        # swanctl loads N connections over vici: minutes on a loaded box at 10,000.
        initiator.load_config(initiator_conf(topo, s.group, s.tunnels),
                              timeout=max(30.0, s.tunnels / 20))

        time.sleep(1.0)  # settled after start and configuration
        result.status_empty_s = median_time(responder.status)
        result.rss_before_kib = vm_rss_kib(responder.pid)
        names = [f"t{i}" for i in range(1, s.tunnels + 1)]
        first, middle, last = slices(names)
        result.slice = len(last) and len(first)
        began = window[0] = time.monotonic()
        for part, label in ((first, "first"), (middle, ""), (last, "last")):
            if not part:
                continue
            user_before, system_before = cpu_times(responder.pid)
            switches_before = context_switches(responder.pid)
            wall_before = time.monotonic()
            driven = drive(initiator, part, CHILD, s.window, s.timeout, s.rate)
            time.sleep(0.3)  # the responder finishes the last QM3s
            user, system = cpu_times(responder.pid)
            figures = SliceFigures(
                len(part), user - user_before, system - system_before,
                context_switches(responder.pid) - switches_before,
                time.monotonic() - wall_before - 0.3, os.getloadavg()[0])
            cpu = figures.user_s + figures.system_s
            if label == "first":
                result.cpu_first_s = cpu
                result.first = figures
            elif label == "last":
                result.cpu_last_s = cpu
                result.last = figures
            result.initiated_ok += driven.succeeded
            result.errors += driven.errors[:3]
            print(f"    {responder.name}: {result.initiated_ok}/{s.tunnels} up after "
                  f"{time.monotonic() - began:.0f}s", flush=True)
        result.seconds = time.monotonic() - began
        result.established = wait_count(responder.count, s.tunnels, 30.0)
        time.sleep(1.0)
        result.rss_after_kib = vm_rss_kib(responder.pid)
        result.status_full_s = median_time(responder.status)
        result.status_bytes = responder.status()
        if daemon is not None:
            ns = daemon.ns
            result.status_stall_s = longest_ping_while(daemon.socket_path, responder.status)
            result.scrape_s = timed(lambda: scrape(ns))
            result.scrape_stall_s = longest_ping_while(daemon.socket_path, lambda: scrape(ns))

        # Holding N tunnels: one more connection up, DPD on it, down, up again.
        began = time.monotonic()
        error = responder.up()
        result.up_s = time.monotonic() - began
        if error is None:
            since = len(initiator.log_text())
            time.sleep(DPD_HOLD)
            result.dpd_sent, result.dpd_acked = _count_dpd(initiator, since)
            if not responder.probe_up():
                error = "probe: not established after the DPD hold"
        if error is None:
            began = time.monotonic()
            error = responder.down()
            result.down_s = time.monotonic() - began
        if error is None:
            began = time.monotonic()
            error = responder.up()
            result.up_again_s = time.monotonic() - began
        if error is not None:
            result.errors.append(error if error.startswith("probe") else f"probe: {error}")
        held = responder.count()
        if held < s.tunnels:
            result.errors.append(f"only {held}/{s.tunnels} tunnels held after the probe")
            result.established = held
        result.errors += responder.log_lines()
        window[1] = time.monotonic()
    finally:
        if initiator is not None:
            initiator.stop()
        if daemon is not None:
            daemon.stop(timeout=60)
        if resp_charon is not None:
            resp_charon.stop()
    if gc_prefix is not None and window[1]:  # written as the daemon exited
        result.gc_pauses = gc_pause_summary(gc_prefix, window[0], window[1])
    return result



# --- output ---------------------------------------------------------------------------------


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs and theirs == theirs and ours == ours else "-"


def format_table(results: Sequence[ScaleResult]) -> str:
    rows = [
        f"{'responder':<11} {'tunnels':>7} {'RSS MiB':>13} {'KiB/tunnel':>10} "
        f"{'CPU ms first/last':>18} {'status s 0/N':>13} {'up s':>6} {'down s':>6} "
        f"{'up again':>8} {'DPD ack/sent':>12}"
    ]
    for r in results:
        if not r.complete:
            rows.append(f"{r.responder:<11} FAILED: {r.established}/{r.tunnels} established, "
                        f"{r.initiated_ok} initiates ok, DPD {r.dpd_acked}/{r.dpd_sent}; "
                        + "; ".join(r.errors[:3]) + "; its figures, not counted:")
        rows.append(
            f"{r.responder:<11} {r.tunnels:>7} "
            f"{r.rss_before_kib / 1024:>5.0f}->{r.rss_after_kib / 1024:<6.0f} "
            f"{r.kib_per_tunnel:>10.2f} {r.ms_first:>8.2f}/{r.ms_last:<9.2f} "
            f"{r.status_empty_s:>5.2f}/{r.status_full_s:<7.2f} {r.up_s:>6.2f} {r.down_s:>6.2f} "
            f"{r.up_again_s:>8.2f} {r.dpd_acked:>5}/{r.dpd_sent:<6}"
        )
    ours = next((r for r in results if r.responder == "ikev1d" and r.complete), None)
    theirs = next((r for r in results if r.responder == "strongSwan" and r.complete), None)
    if ours is not None and theirs is not None:
        rows.append(
            f"ratio ikev1d/strongSwan: memory per tunnel "
            f"{_ratio(ours.kib_per_tunnel, theirs.kib_per_tunnel)}, CPU first "
            f"{_ratio(ours.ms_first, theirs.ms_first)} "
            f"last {_ratio(ours.ms_last, theirs.ms_last)}, "
            f"status with N {_ratio(ours.status_full_s, theirs.status_full_s)}, "
            f"up {_ratio(ours.up_s, theirs.up_s)}, down {_ratio(ours.down_s, theirs.down_s)}, "
            f"up again {_ratio(ours.up_again_s, theirs.up_again_s)}"
        )
    for r in results:
        if r.complete:
            growth = r.ms_last / r.ms_first if r.ms_first else float("nan")
            rows.append(f"{r.responder}: CPU per tunnel last/first {growth:.2f} "
                        f"(slices of {r.slice}), status answer {r.status_bytes} bytes, "
                        f"{r.tunnels / r.seconds:.0f} tunnels/s")
            warning = pace_warning(r.first, r.last)
            if warning is not None:
                rows.append(f"{r.responder}: {warning}")
            if r.status_stall_s == r.status_stall_s:  # measured (ikev1d)
                rows.append(
                    f"{r.responder}: with {r.tunnels} tunnels the event loop answered "
                    f"nothing for at most {1000 * r.status_stall_s:.0f} ms while making "
                    f"status, {1000 * r.scrape_stall_s:.0f} ms while answering a metrics "
                    f"scrape ({r.scrape_s:.2f} s)")
        for label, figures in (("first", r.first), ("last", r.last)):
            if figures is not None:
                rows.append(f"  {r.responder} {figures.line(label)}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tunnels", type=int, default=10_000, help="tunnels held (10000)")
    parser.add_argument("--window", type=int, default=32, help="concurrent handshakes (32)")
    parser.add_argument("--group", default="ecp256", choices=[g.name for g in GROUPS])
    parser.add_argument("--responders", default="ikev1d,strongswan",
                        help="comma-separated: ikev1d, strongswan (run in a random order)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one handshake may take before it counts as failed")
    parser.add_argument(
        "--rate", type=float, default=None,
        help="initiates per second at most, on a fixed schedule (default: as fast as the "
        "window allows); below what both responders and the generator sustain, both "
        "responders see the same arrival pattern")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--ikev1d-log-level", default="info")
    parser.add_argument("--charon-log-level", type=int, default=1)
    parser.add_argument(
        "--gc-pauses", action="store_true",
        help="time the cyclic garbage collector's pauses in ikev1d from the first tunnel "
             "to the end (bench/gcprobe): collections per generation, total, longest")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.responders.split(",") if k.strip()]
    if not kinds or not set(kinds) <= {"ikev1d", "strongswan"}:
        parser.error("--responders: choose from ikev1d, strongswan")
    if args.tunnels < 1:
        parser.error("--tunnels: at least 1")
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    random.shuffle(kinds)
    group = next(g for g in GROUPS if g.name == args.group)
    netns.cleanup_stale()
    work_dir = Path(tempfile.mkdtemp(prefix="ikev1d-scale-"))
    settings = Settings(args.tunnels, args.window, args.timeout, group, work_dir,
                        args.charon_log_level, args.ikev1d_log_level, args.rate,
                        args.gc_pauses)
    pace = f", at most {args.rate:g} initiates/s" if args.rate else ""
    print(f"{args.tunnels} tunnels ({group.name}, PSK), window {args.window}{pace}, "
          f"responders {', '.join(kinds)}, work dir {work_dir}; load {os.getloadavg()}",
          flush=True)
    results: list[ScaleResult] = []
    ok = True
    try:
        with netns.two_hosts() as topo:
            topo.a.add_address(topo.if_a, f"{PROBE_ADDR}/24")
            # kernel-libipsec routes an initiator's IPsec SA from an address of its own in
            # the local networks: give both ends one in the probe's networks.
            topo.a.add_lo_address(PROBE_NET_A.replace(".0/24", ".1/24"))
            topo.b.add_lo_address(PROBE_NET_B.replace(".0/24", ".1/24"))
            for kind in kinds:
                try:
                    r = run_one(topo, kind, settings)
                except Exception as exc:  # one responder's failure keeps the other's row
                    r = ScaleResult("ikev1d" if kind == "ikev1d" else "strongSwan",
                                    settings.tunnels, errors=[f"{type(exc).__name__}: {exc}"])
                results.append(r)
                print(f"  {r.responder}: {'ok' if r.complete else 'FAILED'}, "
                      f"{r.established}/{r.tunnels} in {r.seconds:.1f}s; load {os.getloadavg()}",
                      flush=True)
                print(format_table([r]), flush=True)
                if r.gc_pauses:
                    print(f"  ikev1d collector pauses: {r.gc_pauses}", flush=True)
                for err in r.errors:
                    print(f"    {err}", flush=True)
                ok = ok and r.complete
    finally:
        if args.keep or not ok:
            print(f"logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print()
    print(format_table(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
