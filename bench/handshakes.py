"""Handshake benchmark: ikev1d as IKEv1 responder against strongSwan as responder.

Run by hand, as root (it creates network namespaces)::

    .venv/bin/python bench/handshakes.py [--tunnels N] [--window W] [--rate R] [--quick]

The load generator is a real strongSwan charon (independent of our code).
strongSwan's `load-tester` plugin is not shipped by Debian 12 (it is missing
from libcharon-extra-plugins), so the charon initiator gets N identical
IKEv1 connections (``t1`` .. ``tN``, same addresses and PSK, IDs of their own;
with ``--peers M`` each from one of M addresses with that address's own PSK) and the
benchmark initiates them over vici from W threads, so at most W handshakes
(Main Mode + Quick Mode, PSK, no PFS) are in flight at any time.  charon
never reuses an IKE SA across connection configs, so every initiate is a full
Main Mode.

The same load is then pointed at each responder in turn (ikev1d, then charon
with the openssl plugin preferred, then charon with its default gmp-first
plugin order), each a fresh process in the same namespace and address.  The
responder's CPU time is utime+stime from /proc/PID/stat before and after the
run.  Rates are only reported when every tunnel is established on the
responder (an IKE SA in ESTABLISHED with an INSTALLED IPsec SA); otherwise the
row says FAILED with the count.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from benchlib import (
    cpu_seconds,
    cpu_times,
    drive,
    find_pid,
    gc_pause_summary,
    gc_pauses,
    median,
    own_cpu,
    percentile,
    profile_summary,
    start_charon,
    start_profiler,
    stop_profiler,
    summarize_log,
    wait_count,
)

from ikev1d_lab import capture, netns, pki
from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.strongswan import DEFAULT_LOAD, Charon

PSK = "bench-handshakes-shared-secret"
OPENING_WINDOWS: Final = 2
"""The opening of a run, in windows: the first ``OPENING_WINDOWS x W`` handshakes
to complete, begun together while the generator offers more than the box can
serve. ``p95 after`` leaves them out."""
CHILD = "net"
# charon's default worker thread count; initiates do not block workers (vici timeout -1).
CHARON_THREADS = 16
# Each initiator connection has its own ID (t17.bench.example): charon reuses an IKEv1 IKE SA
# for any connection whose settings are equal (names are not compared), so identical
# connections would all share one Main Mode.
ID_DOMAIN = "bench.example"
# Load order decides which plugin provides DH: the first one that offers the group.
LOAD_OPENSSL_FIRST = DEFAULT_LOAD.replace(" gmp", "").replace("openssl", "openssl gmp")
LOAD_GMP_FIRST = DEFAULT_LOAD
SHORT_EXPONENTS = "  dh_exponent_ansi_x9_42 = no\n"


@dataclass(frozen=True)
class Group:
    """One DH group under test: the Phase 1 proposal and the (no-PFS) ESP proposal."""

    name: str
    ike_proposal: str
    esp_proposal: str


GROUPS = (
    Group("modp2048", "aes128-sha256-modp2048", "aes128-sha256"),
    Group("ecp256", "aes128-sha256-ecp256", "aes128-sha256"),
)
# Phase 1 authentication: pre-shared key, or signatures with certificates (RFC 2409 5.1)
# whose keys (CA, responder, initiators) are RSA-2048 or ECDSA P-256 (RFC 4754).
AUTHS = {"psk": None, "rsa": "rsa", "ecdsa": "p256"}
RESPONDER_ID = f"responder.{ID_DOMAIN}"
CA_DN = "C=CH, O=ikev1d bench, CN=Bench CA"


@dataclass
class Credentials:
    """A CA, the responder's certificate and one per initiator connection (t1..tN).

    The N initiator certificates certify one key pair, each for its own ID
    (subject CN and subjectAltName tI.bench.example): every handshake presents a
    different certificate and the responder checks each chain, as with N clients,
    without generating N keys.
    """

    kind: str
    ca: pki.Issued
    responder: pki.Issued
    clients: list[pki.Issued]

    @classmethod
    def make(cls, kind: str, n: int) -> Credentials:
        key = AUTHS[kind] or "rsa"
        # A year: ikev1d warns about certificates that expire within 30 days.
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
        ca = pki.issue(CA_DN, ca=True, key=key, not_after=until)
        responder = pki.issue(f"C=CH, O=ikev1d bench, CN={RESPONDER_ID}", ca, key=key,
                              sans=(f"dns:{RESPONDER_ID}",), not_after=until)
        client_key = pki.new_key(key)
        clients = [
            pki.issue(f"C=CH, O=ikev1d bench, CN=t{i}.{ID_DOMAIN}", ca,
                      sans=(f"dns:t{i}.{ID_DOMAIN}",), private_key=client_key,
                      not_after=until)
            for i in range(1, n + 1)
        ]
        return cls(kind, ca, responder, clients)

    def install_charon(self, work_dir: Path, responder: bool) -> None:
        """PEM files into the folders beside swanctl.conf that --load-all reads."""
        for sub in ("x509", "x509ca", "private"):
            (work_dir / sub).mkdir(parents=True, exist_ok=True)
        (work_dir / "x509ca" / "ca.pem").write_bytes(self.ca.cert_pem())
        if responder:
            (work_dir / "x509" / "responder.pem").write_bytes(self.responder.cert_pem())
            (work_dir / "private" / "responder.pem").write_bytes(self.responder.key_pem())
            return
        for i, client in enumerate(self.clients, 1):
            (work_dir / "x509" / f"t{i}.pem").write_bytes(client.cert_pem())
        (work_dir / "private" / "client.pem").write_bytes(self.clients[0].key_pem())

    def install_ikev1d(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.responder.write(folder, "responder")
        (folder / "ca.cert.pem").write_bytes(self.ca.cert_pem())


def ikev1d_pubkey_conf(psk_conf: str, ca_path: str = "ca.cert.pem") -> str:
    """The responder's PSK configuration turned into certificate authentication."""
    local = (
        'auth = "pubkey"\n'
        f'id = "{RESPONDER_ID}"\n'
        'certs = ["responder.cert.pem"]\n'
        'private_key = "responder.key.pem"\n'
    )
    remote = f'auth = "pubkey"\nid = "%any"\ncacerts = ["{ca_path}"]\n'
    conf = re.sub(r'(\[connections\.bench\.local\]\n)auth = "psk"\nid = "[^"]*"\n',
                  lambda m: m.group(1) + local, psk_conf)
    conf = re.sub(r'(\[connections\.bench\.remote\]\n)auth = "psk"\nid = "[^"]*"\n',
                  lambda m: m.group(1) + remote, conf)
    conf = re.sub(r"\n\[secrets\.bench\]\n.*\Z", "\n", conf, flags=re.DOTALL)
    if 'auth = "psk"' in conf or "[secrets." in conf:
        raise ValueError("the PSK template changed; update ikev1d_pubkey_conf")
    return conf


@dataclass
class RunResult:
    group: str
    responder: str
    tunnels: int
    initiated_ok: int = 0
    established: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    initiator_cpu_seconds: float = 0.0
    driver_cpu_seconds: float = 0.0
    sys_seconds: float = 0.0  # the kernel's part of cpu_seconds
    latency_p50: float = float("nan")
    latency_p95: float = float("nan")
    latency_p95_after: float = float("nan")
    """p95 of the handshakes completed after the opening (:func:`after_opening`)."""
    errors: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.established == self.tunnels and self.initiated_ok == self.tunnels

    @property
    def rate(self) -> float:
        return self.established / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_tunnel(self) -> float:
        return 1000.0 * self.cpu_seconds / self.established if self.established else 0.0



# --- swanctl.conf for the initiator (N connections) and the strongSwan responder ----------


def _swanctl_conn(
    name: str,
    local: str,
    remote: str,
    local_id: str,
    remote_id: str,
    group: Group,
    local_net: str,
    remote_net: str,
    auth: str = "psk",
    cert: str = "",
) -> str:
    if auth == "psk":
        local_auth = f"      auth = psk\n      id = {local_id}\n"
        remote_auth = f"      auth = psk\n      id = {remote_id}\n"
    else:
        local_auth = f"      auth = pubkey\n      id = {local_id}\n      certs = {cert}\n"
        remote_auth = f"      auth = pubkey\n      id = {remote_id}\n"
    return (
        f"  {name} {{\n"
        "    version = 1\n"
        f"    local_addrs = {local}\n"
        f"    remote_addrs = {remote}\n"
        f"    proposals = {group.ike_proposal}\n"
        "    rekey_time = 0\n"
        "    reauth_time = 0\n"
        "    unique = no\n"
        # Certificates go only to a peer that asked for them (send_cert = ifasked).
        f"    send_certreq = {'no' if auth == 'psk' else 'yes'}\n"
        f"    local {{\n{local_auth}    }}\n"
        f"    remote {{\n{remote_auth}    }}\n"
        "    children {\n"
        f"      {CHILD} {{\n"
        f"        local_ts = {local_net}\n"
        f"        remote_ts = {remote_net}\n"
        f"        esp_proposals = {group.esp_proposal}\n"
        "        rekey_time = 0\n"
        "      }\n"
        "    }\n"
        "  }\n"
    )


def _swanctl_secret(initiator: str, *responders: str) -> str:
    # One PSK for both addresses: charon's Main Mode responder looks it up by its own and the
    # peer's IP (the peer's ID is not known yet), the initiator finds it by the responder's ID.
    ids = "".join(f"    id-{k} = {address}\n"
                  for k, address in enumerate((initiator, *responders), 1))
    return (
        f"secrets {{\n  ike-bench {{\n{ids}"
        f"    secret = 0x{PSK.encode().hex()}\n  }}\n}}\n"
    )


def initiator_swanctl_conf(
    n: int, local: str, remote: str | Sequence[str], group: Group, local_net: str,
    remote_net: str, auth: str = "psk", peers: int = 1,
) -> str:
    """N connections t1..tN, equal except for the local ID (tI.bench.example) and, with
    ``peers`` > 1, the local address: tI comes from peer_address((I - 1) % peers). With
    several ``remote`` addresses (``--shards``), tI goes to the ((I - 1) % count)th.

    With certificates each presents its own (``x509/tI.pem``, see Credentials).
    """
    remotes = [remote] if isinstance(remote, str) else list(remote)
    remote = remotes[0]

    def remote_of(i: int) -> str:
        return remotes[(i - 1) % len(remotes)]

    body = "".join(
        _swanctl_conn(
            f"t{i}", local if peers == 1 else peer_address((i - 1) % peers), remote_of(i),
            f"t{i}.{ID_DOMAIN}", remote_of(i) if auth == "psk" else RESPONDER_ID, group,
            local_net, remote_net, auth, f"t{i}.pem",
        )
        for i in range(1, n + 1)
    )
    if auth != "psk":
        secrets = ""
    elif peers == 1:
        secrets = _swanctl_secret(local, *remotes)
    else:
        # Each peer address its own key: tunnel I presents the one of its address,
        # found by its own ID and the responder's.
        secrets = "secrets {\n" + "".join(
            f"  ike-t{i} {{\n    id-1 = t{i}.{ID_DOMAIN}\n    id-2 = {remote}\n"
            f"    secret = 0x{peer_psk((i - 1) % peers).encode().hex()}\n  }}\n"
            for i in range(1, n + 1)) + "}\n"
    return f"connections {{\n{body}}}\n{secrets}"


def responder_swanctl_conf(
    local: str, remote: str, group: Group, local_net: str, remote_net: str, auth: str = "psk",
    peers: int = 1,
) -> str:
    """One connection accepting any initiator ID from `remote`; with ``peers`` > 1 (PSK
    only), one such connection and one PSK per peer address instead, as a hub has."""
    local_id = local if auth == "psk" else RESPONDER_ID
    if peers > 1:
        conns = "".join(
            _swanctl_conn(f"p{j}", local, peer_address(j), local_id, "%any", group,
                          local_net, remote_net)
            for j in range(peers))
        secrets = "".join(
            f"  ike-p{j} {{\n    id-1 = {peer_address(j)}\n"
            f"    secret = 0x{peer_psk(j).encode().hex()}\n  }}\n"
            for j in range(peers))
        return f"connections {{\n{conns}}}\nsecrets {{\n{secrets}}}\n"
    conn = _swanctl_conn("bench", local, remote, local_id, "%any", group, local_net,
                         remote_net, auth, "responder.pem")
    secrets = _swanctl_secret(remote, local) if auth == "psk" else ""
    return f"connections {{\n{conn}}}\n{secrets}"


def peer_address(j: int) -> str:
    """Initiator address ``j`` with ``--peers``: 198.18.0.0/15 (RFC 2544, set aside for
    benchmarks), added to A's link."""
    return f"198.{18 + j // 64000}.{(j // 250) % 256}.{1 + j % 250}"


PEER_NET = "198.18.0.0/15"


def peer_psk(j: int) -> str:
    """The pre-shared key of peer address ``j``: one of its own, so that a key looked up
    for the wrong peer fails the handshake."""
    return f"{PSK}-{j}"


def add_peer_addresses(topo: Topology, peers: int, work_dir: Path) -> None:
    """Give A the ``peers`` initiator addresses and B a route to them through A's own
    address (on-link, B's neighbour table would overflow beyond 1,024 peers)."""
    batch = work_dir / "peer-addresses.ip"
    batch.write_text("".join(f"addr add {peer_address(j)}/32 dev {topo.if_a}\n"
                             for j in range(peers)))
    topo.a.run(["ip", "-batch", str(batch)])
    topo.b.run(["ip", "route", "add", PEER_NET, "via", topo.addr_a, "dev", topo.if_b])


SHARD_NET = "198.51.100.0/24"


def shard_address(topo: Topology, k: int) -> str:
    """The responder address of keying shard ``k`` with ``--shards``: B's own address for
    shard 0, 198.51.100.k (TEST-NET-2, inside the namespaces only) for the others."""
    return topo.addr_b if k == 0 else f"198.51.100.{k}"


def add_shard_addresses(topo: Topology, shards: int) -> None:
    """Give B the addresses of shards 1..N-1 and A a route to them through B's address."""
    for k in range(1, shards):
        topo.b.run(["ip", "addr", "add", f"{shard_address(topo, k)}/32", "dev", topo.if_b])
    topo.a.run(["ip", "route", "add", SHARD_NET, "via", topo.addr_b, "dev", topo.if_a])


def group_processes(pids: Sequence[int], name: str) -> Path | None:
    """Put ``pids`` (every thread) into one new CPU cgroup ``name`` at the root, as systemd
    puts a service's processes into one: the scheduler then shares the CPU between that
    group and the others (charon's threads are one session, one autogroup) rather than
    between each process's own group. cgroup v1 (``cpu`` hierarchy) or v2; None where
    neither offers the CPU controller."""
    for root in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")):
        controllers = root / "cgroup.controllers"
        if root.name != "cpu" and not (controllers.exists()
                                       and "cpu" in controllers.read_text().split()):
            continue
        if not (root / "cgroup.procs").exists():
            continue
        group = root / name
        try:
            group.mkdir(exist_ok=True)
            for pid in pids:
                (group / "cgroup.procs").write_text(str(pid))
        except OSError:
            continue
        return group
    return None


def remove_groups(groups: Sequence[Path]) -> None:
    """Remove the cgroups of group_processes once their processes are gone."""
    for group in groups:
        with contextlib.suppress(OSError):
            group.rmdir()


def ikev1d_peers_conf(conf: str, initiator: str, peers: int) -> str:
    """The responder's configuration with its one connection (and PSK) for the initiator's
    address repeated for each peer address, as a hub has one per static peer."""
    at = conf.index("[connections.bench]")
    head, block = conf[:at], conf[at:]
    return head + "".join(
        block.replace("[connections.bench", f"[connections.p{j}")
        .replace("[secrets.bench]", f"[secrets.p{j}]")
        .replace(f'"{initiator}"', f'"{peer_address(j)}"')
        .replace(f'secret = "{PSK}"', f'secret = "{peer_psk(j)}"')
        for j in range(peers))



# --- counting tunnels on the responders ------------------------------------------------------


def count_ikev1d(daemon: Ikev1dDaemon) -> int:
    doc = daemon.status()
    return sum(
        1
        for sa in doc.get("ike_sas", [])
        if sa.get("state") == "ESTABLISHED"
        and any(c.get("state") == "INSTALLED" for c in sa.get("children", []))
    )


def count_charon(charon: Charon) -> int:
    return sum(
        1
        for sa in charon.list_sas()
        if sa.get("state") == "ESTABLISHED"
        and any(c.get("state") == "INSTALLED" for c in sa.get("children", []))
    )



# --- one run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    tunnels: int
    window: int
    timeout: float
    work_dir: Path
    profile_dir: Path | None
    charon_log_level: int
    ikev1d_log_level: str
    half_open: int
    timeline: bool = False
    rate: float | None = None
    peers: int = 1
    responder_nice: int = 0
    gc_pauses: bool = False


IKEV1D_USERSPACE = "ikev1d(userspace)"
IKEV1D_NONE = "ikev1d(none)"


def _tag(responder: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", responder).strip("_")


def after_opening(latencies: Sequence[float], window: int) -> Sequence[float]:
    """The latencies, in the order the handshakes completed, without the opening's
    ``OPENING_WINDOWS x window``; none when that would leave fewer than as many
    again (a run too short to have anything after its opening)."""
    opening = OPENING_WINDOWS * window
    return latencies[opening:] if len(latencies) >= 2 * opening else ()


def run_one(
    topo: Topology,
    group: Group,
    responder: str,
    load: str | None,
    s: Settings,
    rep: int = 0,
    extra_conf: str = "",
    creds: Credentials | None = None,
    shards: int = 1,
) -> RunResult:
    """One measured run: fresh responder (ikev1d if `load` is None, else charon) and initiator.

    Without `creds` the tunnels authenticate with the PSK, else with those certificates.
    With ``shards`` > 1 (ikev1d only) that many daemons answer, each on an address of its
    own, and the initiator spreads its connections over them.
    """
    auth = creds.kind if creds is not None else "psk"
    swan_auth = "psk" if creds is None else "pubkey"
    result = RunResult(f"{group.name}/{auth}", responder, s.tunnels)
    tag = f"{group.name}-{auth}-{_tag(responder)}"
    run_dir = s.work_dir / f"{tag}-{rep + 1}"
    a, b = topo.addr_a, topo.addr_b
    net_a, net_b = topo.inner_net_a, topo.inner_net_b
    threads = CHARON_THREADS
    gc_prefix: Path | None = None
    window = (0.0, 0.0)
    with contextlib.ExitStack() as stack:
        daemons: list[Ikev1dDaemon] = []
        resp_charon: Charon | None = None
        remotes = [shard_address(topo, k) for k in range(shards)] if load is None else [b]
        cgroups: list[Path] = []  # removed after the daemons stopped (callbacks run LIFO)
        stack.callback(remove_groups, cgroups)
        if load is None:
            for k, address in enumerate(remotes):
                conf = ikev1d_conf(
                    "bench",
                    address,
                    a,
                    address,
                    "%any",
                    PSK,
                    [group.ike_proposal],
                    [group.esp_proposal],
                    net_b,
                    net_a,
                    child=CHILD,
                    # ikev1d(userspace): every IPsec SA goes into the userspace data plane,
                    # as charon puts each into kernel-libipsec; ikev1d(none) keys only.
                    dataplane="none" if responder.startswith(IKEV1D_NONE) else "userspace",
                    secret_ids=[a],
                    retransmit_timeout="4s",
                    retransmit_tries=5,
                    rekey_time="24h",
                    child_rekey_time="8h",
                    extra_daemon=(
                        f"half_open_per_peer = {s.half_open}\n"
                        f"half_open_total = {s.half_open}\n"
                        'half_open_timeout = "60s"'
                    ),
                )
                folder = run_dir / ("ikev1d" if shards == 1 else f"ikev1d-{k}")
                if creds is not None:
                    conf = ikev1d_pubkey_conf(conf)
                    creds.install_ikev1d(folder)
                elif s.peers > 1:
                    conf = ikev1d_peers_conf(conf, a, s.peers)
                daemon = Ikev1dDaemon(topo.b, folder, conf, log_level=s.ikev1d_log_level)
                if s.gc_pauses:
                    gc_prefix = run_dir / "gc-pauses"
                with gc_pauses(gc_prefix):
                    daemon.start()
                stack.callback(daemon.stop)
                daemons.append(daemon)
            resp_pids = [find_pid(topo.b, "python", d.process.pid if d.process else None)
                         for d in daemons]
            if shards > 1:
                # Each daemon is a session (an autogroup) of its own; N of them would get N
                # shares of the CPU against charon's one. One group, as one service.
                cgroup = group_processes(resp_pids, f"{run_dir.parent.name}-{tag}-{rep}")
                if cgroup is None:
                    result.errors.append("no CPU cgroup for the shards: each got a share")
                else:
                    cgroups.append(cgroup)
        else:
            resp_charon = start_charon(
                topo.b, run_dir / "responder", load, threads, s.charon_log_level, extra_conf
            )
            stack.callback(resp_charon.stop)
            if creds is not None:
                creds.install_charon(resp_charon.work_dir, responder=True)
            resp_charon.load_config(
                responder_swanctl_conf(b, a, group, net_b, net_a, swan_auth,
                                       s.peers if creds is None else 1),
                timeout=30.0 + s.peers / 50)
            resp_pids = [find_pid(
                topo.b, "charon", resp_charon.proc.pid if resp_charon.proc else None
            )]
        if s.responder_nice:
            for pid in resp_pids:
                renice_all(pid, s.responder_nice)
        initiator = start_charon(
            topo.a, run_dir / "initiator", LOAD_OPENSSL_FIRST, threads, s.charon_log_level
        )
        stack.callback(initiator.stop)
        if creds is not None:
            creds.install_charon(initiator.work_dir, responder=False)
        initiator.load_config(
            initiator_swanctl_conf(s.tunnels, a, remotes, group, net_a, net_b, swan_auth,
                                   s.peers if creds is None else 1),
            timeout=30.0 + s.tunnels / 50)

        cap: capture.Capture | None = None
        if s.timeline:
            # Headers are enough: the cookies and exchange type tell the messages apart.
            cap = capture.Capture(topo.b, topo.if_b, run_dir / "responder.pcap",
                                  "udp port 500 or udp port 4500")
        profiler: subprocess.Popen[bytes] | None = None
        if s.profile_dir is not None and daemons and rep == 0:
            profiler = start_profiler(
                resp_pids[0], s.profile_dir / f"{group.name}-{auth}-{_tag(responder)}.collapsed")

        init_pid = find_pid(topo.a, "charon", initiator.proc.pid if initiator.proc else None)
        init_before = cpu_seconds(init_pid)
        driver_before = own_cpu()
        sys_before = sum(cpu_times(pid)[1] for pid in resp_pids)
        cpu_before = sum(cpu_seconds(pid) for pid in resp_pids)
        names = [f"t{i}" for i in range(1, s.tunnels + 1)]
        began = time.monotonic()
        driven = drive(initiator, names, CHILD, s.window, s.timeout, s.rate)
        time.sleep(0.3)  # the responder finishes the last QM3s
        window = (began, time.monotonic())
        cpu_after = sum(cpu_seconds(pid) for pid in resp_pids)
        result.sys_seconds = sum(cpu_times(pid)[1] for pid in resp_pids) - sys_before
        result.initiator_cpu_seconds = cpu_seconds(init_pid) - init_before
        result.driver_cpu_seconds = own_cpu() - driver_before
        if profiler is not None:
            stop_profiler(profiler)
        if cap is not None:
            result.timeline = timeline(cap.stop(), remotes)

        result.initiated_ok = driven.succeeded
        result.seconds = driven.seconds
        result.latency_p50 = percentile(driven.latencies, 0.5)
        result.latency_p95 = percentile(driven.latencies, 0.95)
        result.latency_p95_after = percentile(after_opening(driven.latencies, s.window), 0.95)
        errors = driven.errors
        result.cpu_seconds = cpu_after - cpu_before
        result.errors = errors[:5] + ([f"... {len(errors) - 5} more"] if len(errors) > 5 else [])
        if daemons:
            result.established = wait_count(
                lambda: sum(count_ikev1d(d) for d in daemons), s.tunnels, 10.0)
            for daemon in daemons:
                result.errors += [f"log: {line}" for line in summarize_log(daemon.log_text())]
                if daemon.process is not None and daemon.process.poll() is not None:
                    result.errors.append(f"ikev1d exited with {daemon.process.returncode}")
        elif resp_charon is not None:
            result.established = wait_count(lambda: count_charon(resp_charon), s.tunnels, 10.0)
    if gc_prefix is not None:  # written as the daemon exited
        result.timeline.append(f"collector pauses: {gc_pause_summary(gc_prefix, *window)}")
    return result


AUTOGROUP_SWITCH: Final = Path("/proc/sys/kernel/sched_autogroup_enabled")


def autogroups_on() -> bool:
    """Whether the kernel groups the CPU share by session (sched(7))."""
    try:
        return AUTOGROUP_SWITCH.read_text().strip() == "1"
    except OSError:
        return False


def renice_all(pid: int, nice: int) -> None:
    """Every thread of ``pid`` and of its child processes to ``nice`` (Linux keeps a
    nice value per thread), and with autogroups on, their session too.

    With autogroups (sched(7), "The autogroup feature"; on unless a cgroup of the
    CPU controller holds the processes) a thread's nice value weighs only against
    the threads of its own session: against the generator's and the driver's
    sessions the session's own nice value counts (``/proc/PID/autogroup``). The
    responder is a session of its own (``Ikev1dDaemon.start``, ``start_charon``),
    so that is the value that puts it before the generator."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(c) for c in (task / "children").read_text().split()]
    for p in pids:
        for task in Path(f"/proc/{p}/task").iterdir():
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
    if not autogroups_on():
        return
    for p in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{p}/autogroup").write_text(f"{nice}\n")


# --- where a handshake waits (--timeline) -------------------------------------------------


def timeline(pcap: Path, responders: Sequence[str]) -> list[str]:
    """Per handshake (initiator cookie), from a capture at the responder's interface:
    how long each request waited there before its answer left (queueing + processing
    in the responder), and how long each answer took to bring the next request (the
    initiator and the way back). Lines with p50/p95 in milliseconds."""
    rows = capture.tshark_fields(pcap, ["frame.time_epoch", "ip.src", "isakmp.ispi"])
    flows: dict[str, list[tuple[float, bool]]] = {}
    for row in rows:
        if row["isakmp.ispi"]:
            flows.setdefault(row["isakmp.ispi"], []).append(
                (float(row["frame.time_epoch"]), row["ip.src"] in responders))
    at_responder: dict[int, list[float]] = {}
    responder_total: list[float] = []
    initiator_total: list[float] = []
    repeated = 0
    for packets in flows.values():
        packets.sort()
        # MM1, MM3, MM5, QM1, QM3: more from the initiator means it sent one again.
        repeated += sum(1 for _, outgoing in packets if not outgoing) > 5
        waited = away = 0.0
        request: float | None = None
        n = 0
        for i, (when, outgoing) in enumerate(packets):
            if not outgoing:
                n += 1
                request = when
                if i and packets[i - 1][1] and n <= 5:  # up to QM3
                    away += when - packets[i - 1][0]
            elif request is not None:
                # The handshake's four requests; later exchanges (a responder's own
                # Informational, say) are not part of it.
                if n <= 4:
                    at_responder.setdefault(n, []).append(when - request)
                    waited += when - request
                request = None
        responder_total.append(waited)
        initiator_total.append(away)

    def p(values: list[float]) -> str:
        return (f"p50 {1000 * percentile(values, 0.5):.1f} / "
                f"p95 {1000 * percentile(values, 0.95):.1f} ms")

    lines = [f"{len(flows)} handshakes ({repeated} with a message sent again); per handshake "
             f"at the responder {p(responder_total)}, at the initiator and on the way "
             f"{p(initiator_total)}"]
    names = {1: "MM1->MM2", 2: "MM3->MM4", 3: "MM5->MM6", 4: "QM1->QM2"}
    for n, values in sorted(at_responder.items()):
        lines.append(f"  {names[n]} at the responder: {p(values)}")
    return lines


# --- profiling (py-spy, optional) ----------------------------------------------------------


# --- output ---------------------------------------------------------------------------------



def format_table(results: Sequence[RunResult]) -> str:
    """One row per (group, responder): medians over the repeats; FAILED if any run failed."""
    rows = [f"{'group/auth':<15} {'responder':<24} {'tunnels/s':>10} {'CPU ms/tunnel':>14} "
            f"{'p95 ms':>7} {'after':>6}  note"]
    for group in dict.fromkeys(r.group for r in results):
        medians: dict[str, tuple[float, float, float, float]] = {}
        for responder in dict.fromkeys(r.responder for r in results if r.group == group):
            runs = [r for r in results if r.group == group and r.responder == responder]
            failed = [r for r in runs if not r.complete]
            if failed:
                f = failed[0]
                rows.append(
                    f"{group:<15} {responder:<24} {'FAILED':>10} {'-':>14}  "
                    f"{len(failed)}/{len(runs)} runs failed; first: {f.established}/{f.tunnels} "
                    f"established on responder, {f.initiated_ok}/{f.tunnels} initiates ok"
                )
                continue
            rate = median([r.rate for r in runs])
            cpu = median([r.cpu_ms_per_tunnel for r in runs])
            p95 = median([1000 * r.latency_p95 for r in runs])
            after = median([1000 * r.latency_p95_after for r in runs])
            init = median([1000 * r.initiator_cpu_seconds / r.established for r in runs])
            medians[responder] = (rate, cpu, p95, after)
            note = f"initiator {init:.1f} ms/tunnel"
            if len(runs) > 1:
                note = (
                    f"median of {len(runs)}: rate {min(r.rate for r in runs):.0f}.."
                    f"{max(r.rate for r in runs):.0f}, CPU "
                    f"{min(r.cpu_ms_per_tunnel for r in runs):.2f}.."
                    f"{max(r.cpu_ms_per_tunnel for r in runs):.2f}; {note}"
                )
            rows.append(
                f"{group:<15} {responder:<24} {rate:>10.1f} {cpu:>14.2f} {p95:>7.0f} "
                f"{after:>6.0f}  {note}")
        theirs = {k: v for k, v in medians.items() if not k.startswith("ikev1d")}
        best = min(theirs, key=lambda k: theirs[k][1]) if theirs else None
        for ours_name, ours in medians.items():
            if not ours_name.startswith("ikev1d"):
                continue
            for responder, (rate, cpu, p95, after) in theirs.items():
                label = f"{group} ratio {ours_name}/{responder}"
                rate_ratio = ours[0] / rate if rate else float("nan")
                cpu_ratio = ours[1] / cpu if cpu else float("nan")
                p95_ratio = ours[2] / p95 if p95 else float("nan")
                after_ratio = ours[3] / after if after else float("nan")
                mark = ("  <- strongSwan's lowest CPU (target: CPU <= 0.50, rate > 1, "
                        "p95 <= 1)")
                rows.append(
                    f"{label:<40} {rate_ratio:>10.2f} {cpu_ratio:>14.2f} {p95_ratio:>7.2f} "
                    f"{after_ratio:>6.2f}"
                    + (mark if responder == best and len(theirs) > 1 else "")
                )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tunnels", type=int, default=1000, help="tunnels per run (1000)")
    parser.add_argument("--window", type=int, default=32, help="concurrent handshakes (32)")
    parser.add_argument(
        "--rate", type=float, default=None, metavar="R",
        help="also at most R initiates per second on a fixed schedule, so that every "
        "responder sees the same offered load (latency compared at equal load; by default "
        "only the window limits, and a faster responder is offered more)",
    )
    parser.add_argument("--quick", action="store_true", help="sanity run: 100 tunnels")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="run everything R times, interleaved, responders in a random order per round, "
        "and report medians (3; the box is shared)",
    )
    parser.add_argument(
        "--groups", default="modp2048,ecp256", help="comma-separated: modp2048,ecp256"
    )
    parser.add_argument(
        "--auth", default="psk,rsa,ecdsa",
        help="comma-separated: psk, rsa (RSA-2048 certificates), ecdsa (P-256 certificates)",
    )
    parser.add_argument(
        "--responders",
        default="ikev1d,ikev1d-none,openssl,gmp,gmp-short",
        help="comma-separated: ikev1d (its userspace data plane installs every IPsec SA, "
        "as charon's kernel-libipsec does), ikev1d-none (dataplane = none: keying only), "
        "openssl (strongSwan, openssl plugin first), "
        "gmp (strongSwan, default gmp-first order; MODP only), "
        "gmp-short (the same with dh_exponent_ansi_x9_42 = no; MODP only)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds one handshake may take before it counts as failed",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the ikev1d responder with py-spy into DIR and summarize",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--timeline", action="store_true",
        help="capture at the responder (dumpcap) and print where each handshake waited: "
        "per message at the responder, and at the initiator (the capture costs CPU too: "
        "compare rows of one run, not with runs without it)",
    )
    parser.add_argument(
        "--peers", type=int, default=1, metavar="N",
        help="the tunnels come from N initiator addresses (198.18.0.0/15, tunnel I from "
        "address (I - 1) %% N) and each responder has a connection and a PSK per address, "
        "as a hub with N static peers (PSK rows only; 1: one address, one connection)",
    )
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the responders' order per round (random by default)")
    parser.add_argument("--ikev1d-log-level", default="info")
    parser.add_argument("--charon-log-level", type=int, default=1)
    parser.add_argument(
        "--ikev1d-half-open",
        type=int,
        default=1_000_000,
        help="ikev1d half_open_per_peer and half_open_total (all tunnels come from one address)",
    )
    parser.add_argument(
        "--gc-pauses", action="store_true",
        help="time the cyclic garbage collector's pauses in ikev1d during each run "
             "(bench/gcprobe): collections per generation, their total and longest pause")
    parser.add_argument(
        "--responder-nice", type=int, default=0,
        help="nice value for the responder under test, whichever it is (every thread and "
             "child process, and its session's autogroup; e.g. -5: the responder before "
             "the load generator, as on a gateway that does not share its cores with its "
             "peers)")
    parser.add_argument(
        "--shards", type=int, default=1, metavar="N",
        help="also a row of N ikev1d daemons (dataplane = none), each on an address of its "
             "own, the initiator's connections spread over them: what keying in N processes "
             "would buy at most, with no state shared between them (PSK, one peer address)")
    args = parser.parse_args(argv)
    if args.shards > 1 and (args.peers > 1 or set(a.strip() for a in args.auth.split(","))
                            != {"psk"}):
        parser.error("--shards: with --auth psk and one peer address only")
    if not 1 <= args.shards <= 200:
        parser.error("--shards: 1 to 200")
    if args.quick:
        args.tunnels = 100
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    wanted = [g.strip() for g in args.groups.split(",") if g.strip()]
    groups = [g for g in GROUPS if g.name in wanted]
    kinds = {k.strip() for k in args.responders.split(",") if k.strip()}
    if not kinds or not kinds <= {"ikev1d", "ikev1d-none", "openssl", "gmp", "gmp-short"}:
        parser.error("--responders: choose from ikev1d, ikev1d-none, openssl, gmp, gmp-short")
    if not groups:
        parser.error(f"--groups: choose from {', '.join(g.name for g in GROUPS)}")
    auths = [a.strip() for a in args.auth.split(",") if a.strip()]
    if not auths or not set(auths) <= set(AUTHS):
        parser.error(f"--auth: choose from {', '.join(AUTHS)}")
    # One set of certificates per key type for the whole run (issuing is not measured).
    credentials = {kind: Credentials.make(kind, args.tunnels) for kind in auths
                   if AUTHS[kind] is not None}

    netns.cleanup_stale()
    work_dir = Path(tempfile.mkdtemp(prefix="ikev1d-bench-"))
    settings = Settings(
        args.tunnels,
        args.window,
        args.timeout,
        work_dir,
        args.profile,
        args.charon_log_level,
        args.ikev1d_log_level,
        args.ikev1d_half_open,
        args.timeline,
        args.rate,
        args.peers,
        args.responder_nice,
        args.gc_pauses,
    )
    if not 1 <= args.peers <= 128000:
        parser.error("--peers: 1 to 128000")
    pace = f", at most {args.rate:g} initiates/s" if args.rate else ""
    if args.peers > 1:
        pace += f", from {args.peers} peer addresses"
    print(f"{args.tunnels} tunnels, window {args.window}{pace}, work dir {work_dir}", flush=True)
    results: list[RunResult] = []
    rng = random.Random(args.seed)
    ok = True
    try:
        with netns.two_hosts() as topo:
            if args.peers > 1:
                add_peer_addresses(topo, args.peers, work_dir)
            if args.shards > 1:
                add_shard_addresses(topo, args.shards)
            for rep, group, auth in itertools.product(range(args.repeat), groups, auths):
                responders: list[tuple[str, str | None, str]] = []
                if "ikev1d" in kinds:
                    responders.append((IKEV1D_USERSPACE, None, ""))
                if "ikev1d-none" in kinds:
                    responders.append((IKEV1D_NONE, None, ""))
                if args.shards > 1:
                    responders.append((f"{IKEV1D_NONE}x{args.shards}", None, ""))
                if "openssl" in kinds:
                    responders.append(("strongSwan(openssl)", LOAD_OPENSSL_FIRST, ""))
                # gmp has no ECP groups; openssl does those in both plugin orders.
                modp = group.name.startswith("modp")
                if "gmp" in kinds and modp:
                    responders.append(("strongSwan(gmp)", LOAD_GMP_FIRST, ""))
                # charon draws full-length (ANSI X9.42) MODP exponents by default; gmp honours
                # dh_exponent_ansi_x9_42 = no (openssl does not, measured): short exponents
                # sized to the group's strength, like the ones ikev1d uses.
                if "gmp-short" in kinds and modp:
                    responders.append(("strongSwan(gmp,short)", LOAD_GMP_FIRST, SHORT_EXPONENTS))
                # A random order per round: the box's load drifts, and no responder
                # should always run first (or last) in a round.
                rng.shuffle(responders)
                for name, load, extra in responders:
                    shards = args.shards if name.startswith(f"{IKEV1D_NONE}x") else 1
                    r = run_one(topo, group, name, load, settings, rep, extra,
                                credentials.get(auth), shards)
                    results.append(r)
                    state = "ok" if r.complete else "FAILED"
                    print(
                        f"  {r.group} {name}: {state}, {r.established}/{r.tunnels} in "
                        f"{r.seconds:.1f}s, responder CPU {r.cpu_seconds:.2f}s "
                        f"({r.sys_seconds:.2f}s system), "
                        f"initiator charon {r.initiator_cpu_seconds:.2f}s, "
                        f"vici driver {r.driver_cpu_seconds:.2f}s; handshake latency "
                        f"p50 {1000 * r.latency_p50:.0f} ms, p95 {1000 * r.latency_p95:.0f} ms "
                        f"(after the first {OPENING_WINDOWS * args.window}: "
                        f"{1000 * r.latency_p95_after:.0f} ms)",
                        flush=True,
                    )
                    for err in r.errors:
                        print(f"    {err}", flush=True)
                    for line in r.timeline:
                        print(f"    {line}", flush=True)
                    ok = ok and r.complete
    finally:
        if args.keep or not ok:
            print(f"logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print()
    print(format_table(results))
    if args.profile is not None:
        for path in sorted(args.profile.glob("*.collapsed")):
            print(f"\nikev1d responder profile, {path.stem}:")
            print("\n".join(profile_summary(path)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
