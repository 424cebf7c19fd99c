"""The responder engine's CPU per tunnel, in process: no sockets, no root, no strongSwan.

Run by hand::

    .venv/bin/python bench/engine_cost.py [--tunnels N] [--groups modp2048,ecp256]
        [--auth psk,rsa,ecdsa] [--cprofile] [--evict MB] [--peers N]

One ikev1d Engine is the responder; every tunnel has a fresh initiator
Engine (so each is a full Main Mode + Quick Mode, PSK, no PFS, the
handshakes.py load; with ``--auth rsa`` or ``ecdsa`` signatures with RSA-2048 or
ECDSA P-256 certificates, each initiator presenting its own certificate as in
handshakes.py).  Datagrams are handed over in memory, as in
tests/unit/engine/test_engine.py.  Only the responder's calls (receive_datagram,
datagrams_to_send, events) are timed, with time.process_time, so the figure
is the protocol work ikev1d does per tunnel as a responder, without the
asyncio/UDP layer and without logging (the engine loggers are set to
WARNING).  Compare with the daemon's figure from handshakes.py to see what
the I/O layer and logging add.

``--evict MB`` writes one octet per 64-octet cache line of an MB-sized buffer
before each message the responder is given (outside the timed part), so that
every message finds the caches as a wakeup of the live daemon finds them, after
charon, the kernel and other processes ran on the core: the in-process model
of the daemon's cold-cache cost per message.

``--peers N`` (PSK) makes the responder a hub with a connection and a key per peer
address, as ``handshakes.py --peers`` does: tunnel I comes from peer (I - 1) mod N, so
what a responder works out per new peer is in the figure.

``--cprofile`` profiles the responder calls only and prints the top functions
with calls per tunnel: what to make cheaper, deterministically (py-spy in
handshakes.py --profile samples the real daemon instead).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import logging
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaEstablished, Datagram
from ikev1d_lab import pki

INITIATOR = "192.0.2.1"
RESPONDER = "192.0.2.2"
PSK = "bench-engine-cost-shared-secret"


@dataclass(frozen=True)
class Group:
    name: str
    ike_proposal: str
    esp_proposal: str


GROUPS = (
    Group("modp2048", "aes128-sha256-modp2048", "aes128-sha256"),
    Group("ecp256", "aes128-sha256-ecp256", "aes128-sha256"),
)


def config_text(local: str, remote: str, local_ts: str, remote_ts: str, group: Group,
                auth: str = "psk", cert: str = "", same_id: bool = False) -> str:
    text = _psk_config_text(local, remote, local_ts, remote_ts, group)
    if auth == "psk":
        if same_id:
            return text
        # As in handshakes.py: initiator tI has the ID tI.bench.example, the responder
        # takes any ID from the initiators' address (the PSK is found by address).
        if cert == "responder":
            return text.replace(f'auth = "psk"\nid = "{remote}"\n', 'auth = "psk"\nid = "%any"\n')
        return text.replace(f'auth = "psk"\nid = "{local}"\n',
                            f'auth = "psk"\nid = "{cert}.bench.example"\n')
    # Certificates: `cert` is the stem of CERT.cert.pem / CERT.key.pem beside ca.cert.pem.
    text = text.replace(f'auth = "psk"\nid = "{local}"\n',
                        f'auth = "pubkey"\nid = "{cert}.bench.example"\n'
                        f'certs = ["{cert}.cert.pem"]\nprivate_key = "{cert}.key.pem"\n')
    text = text.replace(f'auth = "psk"\nid = "{remote}"\n',
                        'auth = "pubkey"\nid = "%any"\ncacerts = ["ca.cert.pem"]\n')
    return text[: text.index("[secrets.bench]")]


def _psk_config_text(local: str, remote: str, local_ts: str, remote_ts: str,
                     group: Group) -> str:
    return f"""
[daemon]
dataplane = "none"
half_open_per_peer = 1000000
half_open_total = 1000000

[connections.bench]
local_addrs = ["{local}"]
remote_addrs = ["{remote}"]
proposals = ["{group.ike_proposal}"]

[connections.bench.local]
auth = "psk"
id = "{local}"

[connections.bench.remote]
auth = "psk"
id = "{remote}"

[connections.bench.children.net]
local_ts = ["{local_ts}"]
remote_ts = ["{remote_ts}"]
esp_proposals = ["{group.esp_proposal}"]

[secrets.bench]
secret = "{PSK}"
ids = ["{remote}"]
"""


CACHE_LINE = 64


class TimedResponder:
    """The responder engine; only time spent inside it is counted (and profiled)."""

    def __init__(self, engine: Engine, profiler: cProfile.Profile | None,
                 evict_mb: int = 0) -> None:
        self.engine = engine
        self.profiler = profiler
        self._evict = bytearray(evict_mb * 1024 * 1024)
        self._lines = bytes(-(-len(self._evict) // CACHE_LINE))
        self.cpu = 0.0
        self.established = 0

    def deliver(self, dgram: Datagram, now: float) -> list[Datagram]:
        if self._evict:
            self._evict[::CACHE_LINE] = self._lines  # untimed: the caches emptied
        if self.profiler is not None:
            self.profiler.enable()
        began = time.process_time()
        self.engine.receive_datagram(dgram.data, dgram.remote, dgram.local, now)
        out = self.engine.datagrams_to_send()
        events = self.engine.events()
        self.cpu += time.process_time() - began
        if self.profiler is not None:
            self.profiler.disable()
        self.established += sum(1 for e in events if isinstance(e, ChildSaEstablished))
        return out


def one_tunnel(responder: TimedResponder, initiator_cfg: str, base_dir: Path) -> None:
    initiator = Engine(parse_config(initiator_cfg, base_dir=base_dir), random_bytes=os.urandom,
                       wall_clock=time.time)
    now = time.monotonic()
    initiator.initiate("bench", None, now)
    for _ in range(20):
        moved = False
        for dgram in initiator.datagrams_to_send():
            moved = True
            for reply in responder.deliver(dgram, now):
                initiator.receive_datagram(reply.data, reply.remote, reply.local, now)
        initiator.events()
        if not moved:
            return


# Key types of the certificate rows (CA, responder and initiators alike).
AUTH_KEYS = {"rsa": "rsa", "ecdsa": "p256"}


def write_credentials(folder: Path, kind: str, tunnels: int) -> None:
    """ca.cert.pem, responder.{cert,key}.pem and t1..tN (one key pair, N certificates)."""
    key = AUTH_KEYS[kind]
    ca = pki.issue("C=CH, O=ikev1d bench, CN=Bench CA", ca=True, key=key)
    (folder / "ca.cert.pem").write_bytes(ca.cert_pem())
    pki.issue("C=CH, O=ikev1d bench, CN=responder.bench.example", ca, key=key,
              sans=("dns:responder.bench.example",)).write(folder, "responder")
    client_key = pki.new_key(key)
    for i in range(1, tunnels + 1):
        pki.issue(f"C=CH, O=ikev1d bench, CN=t{i}.bench.example", ca, private_key=client_key,
                  sans=(f"dns:t{i}.bench.example",)).write(folder, f"t{i}")


def peer_address(j: int) -> str:
    """Initiator address ``j`` with ``--peers`` (198.18.0.0/15, as in handshakes.py)."""
    return f"198.{18 + j // 64000}.{(j // 250) % 256}.{1 + j % 250}"


def as_peer(text: str, j: int) -> str:
    """``text`` (a configuration) with the initiator's address and the PSK of peer ``j``."""
    return (text.replace(f'"{INITIATOR}"', f'"{peer_address(j)}"')
            .replace(f'secret = "{PSK}"', f'secret = "{PSK}-{j}"'))


def hub_config(text: str, peers: int) -> str:
    """The responder's configuration with its connection and secret repeated for each of
    ``peers`` addresses, a key of its own each: a hub with static peers."""
    at = text.index("[connections.bench]")
    head, block = text[:at], text[at:]
    return head + "".join(
        as_peer(block.replace("[connections.bench", f"[connections.p{j}")
                .replace("[secrets.bench]", f"[secrets.p{j}]"), j)
        for j in range(peers))


def measure(group: Group, tunnels: int, profiler: cProfile.Profile | None,
            auth: str = "psk", same_id: bool = False, evict_mb: int = 0,
            peers: int = 1) -> TimedResponder:
    with tempfile.TemporaryDirectory(prefix="ikev1d-engine-cost-") as tmp:
        folder = Path(tmp)
        if auth != "psk":
            write_credentials(folder, auth, tunnels)
        responder_cfg = config_text(RESPONDER, INITIATOR, "10.2.0.0/24", "10.1.0.0/24", group,
                                    auth, "responder", same_id)
        if peers > 1:
            responder_cfg = hub_config(responder_cfg, peers)
        responder = TimedResponder(
            Engine(parse_config(responder_cfg, base_dir=folder), random_bytes=os.urandom,
                   wall_clock=time.time),
            profiler,
            evict_mb,
        )
        for i in range(1, tunnels + 1):
            initiator_cfg = config_text(INITIATOR, RESPONDER, "10.1.0.0/24", "10.2.0.0/24",
                                        group, auth, f"t{i}", same_id)
            if peers > 1:
                initiator_cfg = as_peer(initiator_cfg, (i - 1) % peers)
            one_tunnel(responder, initiator_cfg, folder)
    return responder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tunnels", type=int, default=500)
    parser.add_argument("--groups", default="modp2048,ecp256")
    parser.add_argument("--auth", default="psk",
                        help="comma-separated: psk, rsa (RSA-2048 certificates), ecdsa (P-256)")
    parser.add_argument("--cprofile", action="store_true", help="profile the responder calls")
    parser.add_argument(
        "--same-id", action="store_true",
        help="PSK: every initiator with the same ID (the load before per-tunnel IDs: each "
        "handshake's INITIAL-CONTACT then removes the previous tunnel on the responder)")
    parser.add_argument(
        "--evict", type=int, default=0, metavar="MB",
        help="before each message, write a byte per cache line of an MB-sized buffer "
        "(untimed): every message with cold caches, as in the live daemon (e.g. 16)")
    parser.add_argument(
        "--peers", type=int, default=1, metavar="N",
        help="PSK: the responder as a hub with N static peers (a connection and a key "
        "each, by address); tunnel I comes from peer (I - 1) mod N")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    logging.getLogger("ikev1d").setLevel(logging.WARNING)
    wanted = {g.strip() for g in args.groups.split(",")}
    auths = [a.strip() for a in args.auth.split(",") if a.strip()]
    if not set(auths) <= {"psk", *AUTH_KEYS}:
        parser.error("--auth: choose from psk, rsa, ecdsa")
    if args.peers > 1 and auths != ["psk"]:
        parser.error("--peers: PSK only")
    print(f"{'group/auth':<15} {'tunnels':>8} {'responder engine CPU ms/tunnel':>32}")
    ok = True
    for group, auth in itertools.product([g for g in GROUPS if g.name in wanted], auths):
        label = f"{group.name}/{auth}"
        profiler = cProfile.Profile() if args.cprofile else None
        responder = measure(group, args.tunnels, profiler, auth, args.same_id, args.evict,
                            args.peers)
        if responder.established != args.tunnels:
            print(f"{label:<15} FAILED: {responder.established}/{args.tunnels} established")
            ok = False
            continue
        per_tunnel = 1000 * responder.cpu / args.tunnels
        note = " (under cProfile: inflated)" if profiler else ""
        if args.evict:
            note += f" (caches emptied: {args.evict} MB written before each message)"
        print(f"{label:<15} {args.tunnels:>8} {per_tunnel:>32.3f}{note}", flush=True)
        if profiler is not None:
            print(
                f"\n{group.name}: responder calls, top {args.top} by internal time "
                f"(ncalls / {args.tunnels} = calls per tunnel)"
            )
            stats = pstats.Stats(profiler, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats(os.environ.get("SORT", "cumulative")).print_stats(args.top)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
