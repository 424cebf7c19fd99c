"""Road-warrior setup rate: ikev1d as XAUTH + Mode Config server against strongSwan.

Run by hand, as root (it creates network namespaces)::

    .venv/bin/python bench/roadwarriors.py [--clients N] [--window W] [--repeat R]

The load generator is one strongSwan charon with N road-warrior connections
``rw0`` .. ``rwN-1`` (the rig and vici driver of bench/handshakes.py, shared
through bench/benchlib.py), equal except for the local ID
(``rwI.bench.example``) and the XAUTH user (``userI``, each with its own
password).  Each asks for a virtual IP (``vips = 0.0.0.0``), so every tunnel is
Main Mode (one group PSK, IDs differ) + XAUTH (the server asks, the client
answers, the server sends STATUS) + Mode Config pull (CFG_REQUEST/CFG_REPLY)
+ Quick Mode from the virtual IP to the server's network.  N users rather than
one shared user: both servers look each user's password up among N secrets,
and leases are keyed by the road warrior's identity either way.

The responders, in a random order in every round, each a fresh process at the
same address: ikev1d (``pools``, ``remote_xauth``, secrets of type xauth;
``dataplane = "none"`` as in bench/handshakes.py: the data plane is not what
is measured) and a strongSwan charon (``pools``, ``remote-2 { auth = xauth }``,
the xauth-generic plugin with the same users, the same proposals, the openssl
plugin first; its IPsec SAs go to kernel-libipsec as in bench/handshakes.py).
The responder's CPU time is utime+stime from /proc/PID/stat before and after
the run; beside it, the time its threads were runnable but waited for a CPU
(/proc/PID/task/*/schedstat), which tells a server held back by other load on
the machine from one that waits for the network.  A run counts only when
every client is a complete road warrior: N ISAKMP SAs with an installed IPsec
SA on the server, N distinct virtual IPs from the pool there, and the client's
charon naming the same N addresses; otherwise the row says FAILED.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    cpu_seconds,
    drive,
    find_pid,
    median,
    percentile,
    profile_summary,
    runqueue_wait,
    start_charon,
    start_profiler,
    stop_profiler,
    summarize_log,
)
from handshakes import CHARON_THREADS, LOAD_OPENSSL_FIRST

from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon
from ikev1d_lab.netns import Topology
from ikev1d_lab.strongswan import Charon, roadwarrior_server_conf

PSK = "bench-roadwarriors-group-key"
CHILD = "net"
ID_DOMAIN = "bench.example"
IKE_PROPOSAL = "aes128-sha256-modp2048"
ESP_PROPOSAL = "aes128-sha256"
POOL = "rw"
RESPONDERS = ("ikev1d", "strongSwan(openssl)")


def pool_network(clients: int) -> ipaddress.IPv4Network:
    """The smallest subnet of 10.64.0.0/10 with room for every client (less network and
    broadcast address), so that each gets a fresh address."""
    prefix = 32 - max(2, math.ceil(math.log2(clients + 2)))
    if prefix < 10:
        raise ValueError(f"{clients} clients do not fit into 10.64.0.0/10")
    return ipaddress.IPv4Network(f"10.64.0.0/{prefix}")


def user(i: int) -> tuple[str, str]:
    """XAUTH user name and password of client i."""
    return f"user{i}", f"password of user{i}"


# --- configurations ---------------------------------------------------------------------------


def client_swanctl_conf(n: int, local: str, remote: str, remote_net: str) -> str:
    """N road-warrior connections rw0..rwN-1: own ID, own XAUTH user, ``vips = 0.0.0.0``."""
    conns = []
    for i in range(n):
        name, _ = user(i)
        conns.append(
            f"  rw{i} {{\n"
            "    version = 1\n"
            "    aggressive = no\n"
            f"    local_addrs = {local}\n"
            f"    remote_addrs = {remote}\n"
            f"    proposals = {IKE_PROPOSAL}\n"
            "    encap = no\n"
            "    rekey_time = 0\n"
            "    reauth_time = 0\n"
            "    dpd_delay = 0\n"
            "    vips = 0.0.0.0\n"
            f"    local {{\n      auth = psk\n      id = rw{i}.{ID_DOMAIN}\n    }}\n"
            f"    local-2 {{\n      auth = xauth\n      xauth_id = {name}\n    }}\n"
            f"    remote {{\n      auth = psk\n      id = {remote}\n    }}\n"
            "    children {\n"
            f"      {CHILD} {{\n"
            f"        remote_ts = {remote_net}\n"
            f"        esp_proposals = {ESP_PROPOSAL}\n"
            "        rekey_time = 0\n"
            "      }\n"
            "    }\n"
            "  }\n"
        )
    secrets = [f"  ike-group {{\n    secret = 0x{PSK.encode().hex()}\n  }}\n"]
    for i in range(n):
        name, password = user(i)
        secrets.append(
            f"  xauth-{i} {{\n    id = {name}\n    secret = 0x{password.encode().hex()}\n  }}\n"
        )
    return f"connections {{\n{''.join(conns)}}}\nsecrets {{\n{''.join(secrets)}}}\n"


def ikev1d_server_conf(n: int, local: str, local_net: str, pool: ipaddress.IPv4Network) -> str:
    """The ikev1d server: any client ID with the group PSK, an XAUTH round against N users
    of type xauth, addresses from `pool` (Mode Config pull), the child's remote side the
    client's virtual IP.  Retransmission and half-open limits as in bench/handshakes.py."""
    lines = [
        "[daemon]",
        f'listen = ["{local}"]',
        'dataplane = "none"',
        'retransmit_timeout = "4s"',
        "retransmit_tries = 5",
        "half_open_per_peer = 1000000",
        "half_open_total = 1000000",
        'half_open_timeout = "60s"',
        "",
        "[connections.rw]",
        f'local_addrs = ["{local}"]',
        'remote_addrs = ["%any"]',
        f'proposals = ["{IKE_PROPOSAL}"]',
        "encap = false",
        'rekey_time = "24h"',
        f'pools = ["{POOL}"]',
        'modecfg = "pull"',
        'unique = "no"',
        'dpd_action = "clear"',
        "[connections.rw.local]",
        'auth = "psk"',
        f'id = "{local}"',
        "[connections.rw.remote]",
        'auth = "psk"',
        'id = "%any"',
        "[connections.rw.remote_xauth]",
        'auth = "xauth"',
        f"[connections.rw.children.{CHILD}]",
        f'local_ts = ["{local_net}"]',
        f'esp_proposals = ["{ESP_PROPOSAL}"]',
        'rekey_time = "8h"',
        "",
        f"[pools.{POOL}]",
        f'addrs = "{pool}"',
        "",
        "[secrets.group]",
        f'secret = "{PSK}"',
        'ids = ["%any"]',
    ]
    for i in range(n):
        name, password = user(i)
        lines += ["", f"[secrets.xauth{i}]", 'type = "xauth"', f'ids = ["{name}"]',
                  f'secret = "{password}"']
    return "\n".join(lines) + "\n"


def strongswan_server_conf(
    n: int, local: str, local_net: str, pool: ipaddress.IPv4Network
) -> str:
    return roadwarrior_server_conf(
        "rw", local, local, PSK, [IKE_PROPOSAL], [ESP_PROPOSAL], local_net,
        pool=POOL, addrs=str(pool), xauth_users=dict(user(i) for i in range(n)),
        child=CHILD, encap=False, unique="no",
    )  # fmt: skip


# --- complete road warriors on each side -----------------------------------------------------


def ikev1d_vips(daemon: Ikev1dDaemon) -> list[str]:
    """The virtual IP of every ISAKMP SA that is ESTABLISHED with an INSTALLED IPsec SA."""
    return [
        str(sa.get("virtual_ip"))
        for sa in daemon.status().get("ike_sas", [])
        if sa.get("state") == "ESTABLISHED"
        and any(c.get("state") == "INSTALLED" for c in sa.get("children", []))
    ]


def charon_vips(charon: Charon, key: str) -> list[str]:
    """`key` (``remote-vips`` on the server, ``local-vips`` on the client) of every
    ESTABLISHED IKE SA with an INSTALLED IPsec SA (one address each, else all of them)."""
    vips: list[str] = []
    for sa in charon.list_sas():
        if sa.get("state") == "ESTABLISHED" and any(
            c.get("state") == "INSTALLED" for c in sa.get("children", [])
        ):
            vips += [str(v) for v in sa.get(key) or ["(none)"]]
    return vips


def wait_vips(counter: Any, n: int, timeout: float) -> list[str]:
    """Poll `counter()` until it names n addresses (QM3 may still be in flight) or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        vips: list[str] = counter()
        if len(vips) >= n or time.monotonic() > deadline:
            return vips
        time.sleep(0.5)


def check_vips(
    server: Sequence[str], client: Sequence[str], n: int, pool: ipaddress.IPv4Network
) -> list[str]:
    """What keeps the run from counting N complete road warriors (empty: nothing)."""
    problems = []
    distinct = set(server)
    if len(server) != n or len(distinct) != n:
        problems.append(f"server: {len(server)} road warriors, {len(distinct)} distinct "
                        f"virtual IPs, {n} expected")
    outside = [v for v in distinct if v == "None" or v == "(none)"
               or ipaddress.ip_address(v) not in pool]
    if outside:
        problems.append(f"{len(outside)} virtual IPs not from {pool}, e.g. {outside[0]}")
    if set(client) != distinct:
        problems.append(f"client's charon names {len(set(client))} virtual IPs, "
                        f"{len(set(client) ^ distinct)} differ from the server's")
    return problems


# --- one run ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    responder: str
    clients: int
    initiated_ok: int = 0
    established: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    initiator_cpu_seconds: float = 0.0
    runqueue_seconds: float = 0.0  # the server's threads, runnable but not running
    latency_p50: float = float("nan")
    latency_p95: float = float("nan")
    errors: list[str] = field(default_factory=list)
    vip_problems: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return (self.initiated_ok == self.clients and self.established == self.clients
                and not self.vip_problems)

    @property
    def rate(self) -> float:
        return self.established / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_client(self) -> float:
        return 1000.0 * self.cpu_seconds / self.established if self.established else 0.0


@dataclass(frozen=True)
class Settings:
    clients: int
    window: int
    timeout: float
    work_dir: Path
    profile_dir: Path | None
    charon_log_level: int
    ikev1d_log_level: str


def run_one(topo: Topology, responder: str, s: Settings, rep: int) -> RunResult:
    """One measured run: a fresh server (`responder`) and a fresh client charon."""
    result = RunResult(responder, s.clients)
    run_dir = s.work_dir / f"{'ikev1d' if responder == 'ikev1d' else 'strongswan'}-{rep + 1}"
    a, b = topo.addr_a, topo.addr_b
    server_net = topo.inner_net_b
    pool = pool_network(s.clients)
    with contextlib.ExitStack() as stack:
        daemon: Ikev1dDaemon | None = None
        server: Charon | None = None
        if responder == "ikev1d":
            daemon = Ikev1dDaemon(topo.b, run_dir / "ikev1d",
                                  ikev1d_server_conf(s.clients, b, server_net, pool),
                                  log_level=s.ikev1d_log_level)
            daemon.start()
            stack.callback(daemon.stop)
            resp_pid = find_pid(topo.b, "python", daemon.process.pid if daemon.process else None)
        else:
            server = start_charon(topo.b, run_dir / "server",
                                  LOAD_OPENSSL_FIRST + " xauth-generic", CHARON_THREADS,
                                  s.charon_log_level)
            stack.callback(server.stop)
            server.load_config(strongswan_server_conf(s.clients, b, server_net, pool))
            resp_pid = find_pid(topo.b, "charon", server.proc.pid if server.proc else None)
        client = start_charon(topo.a, run_dir / "client", LOAD_OPENSSL_FIRST + " xauth-generic",
                              CHARON_THREADS, s.charon_log_level)
        stack.callback(client.stop)
        client.load_config(client_swanctl_conf(s.clients, a, b, server_net))
        client_pid = find_pid(topo.a, "charon", client.proc.pid if client.proc else None)

        profiler = None
        if s.profile_dir is not None and daemon is not None and rep == 0:
            profiler = start_profiler(resp_pid, s.profile_dir / "roadwarriors.collapsed")
        client_before = cpu_seconds(client_pid)
        cpu_before = cpu_seconds(resp_pid)
        wait_before = runqueue_wait(resp_pid)
        driven = drive(client, [f"rw{i}" for i in range(s.clients)], CHILD, s.window, s.timeout)
        time.sleep(0.3)  # the server finishes the last QM3s
        result.cpu_seconds = cpu_seconds(resp_pid) - cpu_before
        result.runqueue_seconds = runqueue_wait(resp_pid) - wait_before
        result.initiator_cpu_seconds = cpu_seconds(client_pid) - client_before
        if profiler is not None:
            stop_profiler(profiler)

        result.initiated_ok = driven.succeeded
        result.seconds = driven.seconds
        result.latency_p50 = percentile(driven.latencies, 0.5)
        result.latency_p95 = percentile(driven.latencies, 0.95)
        errors = driven.errors
        result.errors = errors[:5] + ([f"... {len(errors) - 5} more"] if len(errors) > 5 else [])
        if daemon is not None:
            server_vips = wait_vips(lambda: ikev1d_vips(daemon), s.clients, 10.0)
            result.errors += [f"log: {line}" for line in summarize_log(daemon.log_text())]
            if daemon.process is not None and daemon.process.poll() is not None:
                result.errors.append(f"ikev1d exited with {daemon.process.returncode}")
        elif server is not None:
            server_vips = wait_vips(lambda: charon_vips(server, "remote-vips"), s.clients, 10.0)
        result.established = len(server_vips)
        client_vips = charon_vips(client, "local-vips")
        result.vip_problems = check_vips(server_vips, client_vips, s.clients, pool)
    return result


# --- output -----------------------------------------------------------------------------------


def format_table(results: Sequence[RunResult]) -> str:
    """One row per server: medians over the rounds; FAILED if any run failed; the ratio."""
    rows = [f"{'server':<22} {'tunnels/s':>10} {'CPU ms/client':>14}  note"]
    medians: dict[str, tuple[float, float]] = {}
    for responder in dict.fromkeys(r.responder for r in results):
        runs = [r for r in results if r.responder == responder]
        failed = [r for r in runs if not r.complete]
        if failed:
            f = failed[0]
            rows.append(
                f"{responder:<22} {'FAILED':>10} {'-':>14}  {len(failed)}/{len(runs)} runs "
                f"failed; first: {f.established}/{f.clients} on the server, "
                f"{f.initiated_ok}/{f.clients} initiates ok; {'; '.join(f.vip_problems)}"
            )
            continue
        rate = median([r.rate for r in runs])
        cpu = median([r.cpu_ms_per_client for r in runs])
        init = median([1000 * r.initiator_cpu_seconds / r.established for r in runs])
        medians[responder] = (rate, cpu)
        note = f"client charon {init:.1f} ms/client"
        if len(runs) > 1:
            note = (f"median of {len(runs)}: rate {min(r.rate for r in runs):.0f}.."
                    f"{max(r.rate for r in runs):.0f}, CPU "
                    f"{min(r.cpu_ms_per_client for r in runs):.2f}.."
                    f"{max(r.cpu_ms_per_client for r in runs):.2f}; {note}")
        rows.append(f"{responder:<22} {rate:>10.1f} {cpu:>14.2f}  {note}")
    ours = medians.get("ikev1d")
    for responder, (rate, cpu) in medians.items():
        if ours is None or responder == "ikev1d":
            continue
        rate_ratio = ours[0] / rate if rate else float("nan")
        cpu_ratio = ours[1] / cpu if cpu else float("nan")
        rows.append(f"ratio ikev1d/{responder}: tunnels/s {rate_ratio:.2f}, CPU {cpu_ratio:.2f}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=500, help="road warriors per run (500)")
    parser.add_argument("--window", type=int, default=32, help="concurrent setups (32)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds, each server once per round in a random order; medians")
    parser.add_argument("--responders", default=",".join(RESPONDERS),
                        help=f"comma-separated: {', '.join(RESPONDERS)}")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds one setup may take before it counts as failed")
    parser.add_argument("--seed", type=int, default=None, help="seed of the server order")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record the ikev1d server with py-spy into DIR and summarize")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--ikev1d-log-level", default="info")
    parser.add_argument("--charon-log-level", type=int, default=1)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    responders = [r.strip() for r in args.responders.split(",") if r.strip()]
    if not responders or not set(responders) <= set(RESPONDERS):
        parser.error(f"--responders: choose from {', '.join(RESPONDERS)}")
    pool_network(args.clients)  # fails early if the clients do not fit
    order = random.Random(args.seed)

    netns.cleanup_stale()
    work_dir = Path(tempfile.mkdtemp(prefix="ikev1d-bench-rw-"))
    settings = Settings(args.clients, args.window, args.timeout, work_dir, args.profile,
                        args.charon_log_level, args.ikev1d_log_level)
    print(f"{args.clients} road warriors (Main Mode + XAUTH + Mode Config pull + Quick Mode), "
          f"window {args.window}, pool {pool_network(args.clients)}, work dir {work_dir}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results: list[RunResult] = []
    ok = True
    try:
        with netns.two_hosts() as topo:
            for rep in range(args.repeat):
                for name in order.sample(responders, len(responders)):
                    r = run_one(topo, name, settings, rep)
                    results.append(r)
                    print(
                        f"  round {rep + 1} {name}: {'ok' if r.complete else 'FAILED'}, "
                        f"{r.established}/{r.clients} in {r.seconds:.1f}s, server CPU "
                        f"{r.cpu_seconds:.2f}s (its threads waited {r.runqueue_seconds:.2f}s "
                        "for a CPU), "
                        f"client charon {r.initiator_cpu_seconds:.2f}s; "
                        f"setup latency p50 {1000 * r.latency_p50:.0f} ms, "
                        f"p95 {1000 * r.latency_p95:.0f} ms; load average "
                        f"{os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
                    for line in r.errors + r.vip_problems:
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
        print("\nikev1d server profile:")
        print("\n".join(profile_summary(args.profile / "roadwarriors.collapsed")))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
