"""The responder engine's CPU per tunnel, in process: no sockets, no root, no strongSwan.

Run by hand::

    .venv/bin/python bench/engine_cost.py [--tunnels N] [--groups modp2048,ecp256] [--cprofile]

One ikev1d Engine is the responder; every tunnel has a fresh initiator
Engine (so each is a full Main Mode + Quick Mode, PSK, no PFS, the
handshakes.py load).  Datagrams are handed over in memory, as in
tests/unit/engine/test_engine.py.  Only the responder's calls (receive_datagram,
datagrams_to_send, events) are timed, with time.process_time, so the figure
is the protocol work ikev1d does per tunnel as a responder, without the
asyncio/UDP layer and without logging (the engine loggers are set to
WARNING).  Compare with the daemon's figure from handshakes.py to see what
the I/O layer and logging add.

``--cprofile`` profiles the responder calls only and prints the top functions
with calls per tunnel: what to make cheaper, deterministically (py-spy in
handshakes.py --profile samples the real daemon instead).
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaEstablished, Datagram

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


def config_text(local: str, remote: str, local_ts: str, remote_ts: str, group: Group) -> str:
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


class TimedResponder:
    """The responder engine; only time spent inside it is counted (and profiled)."""

    def __init__(self, engine: Engine, profiler: cProfile.Profile | None) -> None:
        self.engine = engine
        self.profiler = profiler
        self.cpu = 0.0
        self.established = 0

    def deliver(self, dgram: Datagram, now: float) -> list[Datagram]:
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


def one_tunnel(responder: TimedResponder, initiator_cfg: str) -> None:
    initiator = Engine(parse_config(initiator_cfg), random_bytes=os.urandom)
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


def measure(group: Group, tunnels: int, profiler: cProfile.Profile | None) -> TimedResponder:
    responder_cfg = config_text(RESPONDER, INITIATOR, "10.2.0.0/24", "10.1.0.0/24", group)
    initiator_cfg = config_text(INITIATOR, RESPONDER, "10.1.0.0/24", "10.2.0.0/24", group)
    responder = TimedResponder(
        Engine(parse_config(responder_cfg), random_bytes=os.urandom), profiler
    )
    for _ in range(tunnels):
        one_tunnel(responder, initiator_cfg)
    return responder


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tunnels", type=int, default=500)
    parser.add_argument("--groups", default="modp2048,ecp256")
    parser.add_argument("--cprofile", action="store_true", help="profile the responder calls")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    logging.getLogger("ikev1d").setLevel(logging.WARNING)
    wanted = {g.strip() for g in args.groups.split(",")}
    print(f"{'group':<9} {'tunnels':>8} {'responder engine CPU ms/tunnel':>32}")
    ok = True
    for group in (g for g in GROUPS if g.name in wanted):
        profiler = cProfile.Profile() if args.cprofile else None
        responder = measure(group, args.tunnels, profiler)
        if responder.established != args.tunnels:
            print(f"{group.name:<9} FAILED: {responder.established}/{args.tunnels} established")
            ok = False
            continue
        per_tunnel = 1000 * responder.cpu / args.tunnels
        note = " (under cProfile: inflated)" if profiler else ""
        print(f"{group.name:<9} {args.tunnels:>8} {per_tunnel:>32.3f}{note}", flush=True)
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
