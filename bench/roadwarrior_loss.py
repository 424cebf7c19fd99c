"""Mode Config through 30 % random loss: an ikev1d road warrior against an ikev1d server.

Run by hand, as root (network namespaces, nftables)::

    .venv/bin/python bench/roadwarrior_loss.py [--attempts 20] [--percent 30]
        [--retransmissions 10] [--modecfg pull,push]

For each Mode Config mode, a fresh pair of namespaces: the client (A, ``vips =
["0.0.0.0"]``) and the server (B, a pool), both dropping `percent` % of the IKE
datagrams they receive (nft ``numgen random``, ikev1d_lab.loss). Each attempt
starts from a clean state (loss lifted, ``ikev1d down``, both sides without SAs,
loss back) and counts when ``ikev1d up`` succeeds and both sides show the same
virtual IP. Main Mode (3 rounds), Mode Config (1) and Quick Mode (2, a lost QM3
recovered by the responder's QM2 retransmissions) make six request/response
rounds, so an attempt succeeds with (1 - 0.51^(N+1))^6 for N retransmissions:
99.6 % for N = 10, 19 or more of 20 attempts in 99.7 % of runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ikev1d_lab import netns
from ikev1d_lab.daemon import Ikev1dDaemon, roadwarrior_client_toml, roadwarrior_server_toml
from ikev1d_lab.loss import clear_loss, dropped, set_loss

PSK = "road warriors through a lossy path, group key"
PROPOSALS = ["aes128-sha256-modp2048"]
ESP = ["aes128gcm16"]
SERVER_ID = "gw.example.org"
ROUNDS = 6
TIMEOUT_S = 0.25


def expected_rate(percent: int, retransmissions: int) -> float:
    through = (1 - percent / 100) ** 2
    return float((1 - (1 - through) ** (retransmissions + 1)) ** ROUNDS)


def _with_daemon_keys(toml: str, span: float) -> str:
    # Both sides keep a half-open exchange for the whole retransmission span, or a
    # Main Mode that needs many retransmissions meets a responder that forgot it.
    return toml.replace("[daemon]\n", f'[daemon]\nhalf_open_timeout = "{span:.0f}s"\n', 1)


def _sas(daemon: Ikev1dDaemon) -> list[dict[str, object]]:
    sas: list[dict[str, object]] = daemon.status().get("ike_sas", [])
    return sas


def run(modecfg: str, attempts: int, percent: int, retransmissions: int,
        work: Path) -> tuple[int, list[str], int]:
    """(attempts that established on both sides, failure reasons, datagrams dropped)."""
    tries = retransmissions + 1  # ikev1d counts the first transmission too
    span = TIMEOUT_S * (2 ** tries) + 10
    with netns.two_hosts(inner_a=None) as topo:
        network = str(ipaddress.ip_interface(topo.inner_b).network)
        server = Ikev1dDaemon(topo.b, work / "server", _with_daemon_keys(roadwarrior_server_toml(
            "rw", topo.outer_b.split("/")[0], SERVER_ID, PSK, PROPOSALS, ESP, network,
            modecfg=modecfg, dataplane="none", retransmit_timeout=f"{TIMEOUT_S}s",
            retransmit_tries=tries), span), log_level="info")
        client = Ikev1dDaemon(topo.a, work / "client", _with_daemon_keys(roadwarrior_client_toml(
            "home", topo.outer_a.split("/")[0], topo.outer_b.split("/")[0],
            topo.outer_a.split("/")[0], SERVER_ID, PSK, PROPOSALS, ESP, network,
            modecfg=modecfg, encap=False, dataplane="none", retransmit_timeout=f"{TIMEOUT_S}s",
            retransmit_tries=tries), span), log_level="info")
        server.start(timeout=30.0)
        client.start(timeout=30.0)
        ok, failures, drops = 0, [], 0
        try:
            for number in range(attempts):
                for ns in (topo.a, topo.b):
                    drops += dropped(ns)  # the counters go with the rule
                    clear_loss(ns)
                client.cli("down", "home", check=False)
                deadline = time.monotonic() + 30
                while (_sas(client) or _sas(server)) and time.monotonic() < deadline:
                    time.sleep(0.2)
                for ns in (topo.a, topo.b):
                    set_loss(ns, percent)
                result = client.up("home", timeout=span * 2, check=False)
                # The server may still be retransmitting its last Quick Mode message.
                deadline = time.monotonic() + span
                theirs: list[dict[str, object]] = []
                while time.monotonic() < deadline:
                    theirs = [s for s in _sas(server) if s.get("children")]
                    if theirs:
                        break
                    time.sleep(0.2)
                ours = [s.get("virtual_ip") for s in _sas(client) if s.get("children")]
                vips = [s.get("virtual_ip") for s in theirs]
                if result.returncode == 0 and ours and ours[0] in vips:
                    ok += 1
                else:
                    failures.append(f"attempt {number + 1}: up {result.returncode} "
                                    f"{(result.stdout + result.stderr).strip()[-200:]}; "
                                    f"client {ours}, server {vips}")
            drops += dropped(topo.a) + dropped(topo.b)
        finally:
            client.stop()
            server.stop()
    return ok, failures, drops


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attempts", type=int, default=20)
    parser.add_argument("--percent", type=int, default=30)
    parser.add_argument("--retransmissions", type=int, default=10)
    parser.add_argument("--modecfg", default="pull,push")
    args = parser.parse_args(argv)
    expected = expected_rate(args.percent, args.retransmissions)
    worst = 0
    with tempfile.TemporaryDirectory(prefix="ikev1d-rwloss-") as tmp:
        for modecfg in args.modecfg.split(","):
            started = time.monotonic()
            ok, failures, drops = run(modecfg, args.attempts, args.percent,
                                      args.retransmissions, Path(tmp) / modecfg)
            print(f"modecfg {modecfg}: {ok}/{args.attempts} established through "
                  f"{args.percent} % loss each way, {args.retransmissions} retransmissions "
                  f"(expected {expected:.1%}), {drops} datagrams dropped, "
                  f"{time.monotonic() - started:.0f} s", flush=True)
            for failure in failures:
                print(f"  {failure}")
            worst = max(worst, len(failures))
    return 0 if worst <= max(1, args.attempts // 20) else 1


if __name__ == "__main__":
    sys.exit(main())
