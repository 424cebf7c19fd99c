"""How long a configuration reload holds the daemon's event loop, with N static peers.

Run by hand (no root: the daemon listens on loopback ports above 1024)::

    .venv/bin/python bench/reload_stall.py [--peers 1000,3000,10000] [--repeat 3]

A hub with N static peers has a connection and a pre-shared key per peer. The
benchmark writes such a configuration, starts a real ikev1d daemon in this process
(`dataplane = "none"`, nothing else changed), and while a ticker on the daemon's
event loop notes every millisecond it got to run, reloads the same file through the
daemon's own reload path (what `ikev1d reload` and SIGHUP do). It prints the reload's
wall time and the longest gap between two ticks during it: how long the daemon
answered nothing (no IKE message, no DPD, no control request and, with the userspace
data plane in the daemon, no packet). No strongSwan: the figure is ikev1d's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ikev1d.daemon.runtime import Daemon, DaemonOptions

TICK_S = 0.001


def peer_address(j: int) -> str:
    """Peer ``j`` (198.18.0.0/15, as in handshakes.py --peers)."""
    return f"198.{18 + j // 64000}.{(j // 250) % 256}.{1 + j % 250}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def hub_config(peers: int, port: int, port_nat_t: int) -> str:
    head = (f'[daemon]\nlisten = ["127.0.0.1"]\nport = {port}\nport_nat_t = {port_nat_t}\n'
            'dataplane = "none"\n\n')
    return head + "".join(f"""
[connections.p{j}]
local_addrs = ["127.0.0.1"]
remote_addrs = ["{peer_address(j)}"]
proposals = ["aes128-sha256-ecp256"]

[connections.p{j}.local]
auth = "psk"
id = "127.0.0.1"

[connections.p{j}.remote]
auth = "psk"
id = "%any"

[connections.p{j}.children.net]
local_ts = ["10.2.0.0/24"]
remote_ts = ["10.1.{j % 250}.0/24"]
esp_proposals = ["aes128-sha256"]

[secrets.p{j}]
secret = "hub-secret-of-peer-number-{j}"
ids = ["{peer_address(j)}"]
""" for j in range(peers))


async def one_reload(folder: Path, peers: int) -> tuple[float, float, int]:
    """(reload wall seconds, longest loop gap seconds, ticks during the reload)."""
    config = folder / "ikev1d.toml"
    config.write_text(hub_config(peers, free_port(), free_port()))
    config.chmod(0o600)
    daemon = Daemon(DaemonOptions(str(config), str(folder / "ikev1d.sock")),
                    install_signal_handlers=False)
    await daemon.start()
    loop = asyncio.get_running_loop()
    ticks: list[float] = []
    running = True

    def tick() -> None:
        ticks.append(time.perf_counter())
        if running:
            loop.call_later(TICK_S, tick)

    try:
        tick()
        await asyncio.sleep(0.05)
        began = time.perf_counter()
        # Before the reload left the event loop (a synchronous method), it was called
        # the same way; the benchmark takes either, so that both can be compared.
        pending: Any = daemon.reload()
        ok, message = (await pending) if inspect.isawaitable(pending) else pending
        ended = time.perf_counter()
        await asyncio.sleep(0.05)
        if not ok:
            raise SystemExit(f"reload failed: {message}")
    finally:
        running = False
        daemon.request_stop()
        await daemon.stop()
    # Gaps that overlap the reload, counting from the last tick before it to the first
    # after it.
    before = [t for t in ticks if t <= began]
    during = [t for t in ticks if began < t <= ended]
    after = [t for t in ticks if t > ended]
    marks = before[-1:] + during + after[:1]
    gap = max((b - a for a, b in itertools.pairwise(marks)), default=0.0)
    return ended - began, gap, len(during)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--peers", default="1000,3000,10000",
                        help="comma-separated counts of static peers (connections + keys)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.peers.split(",") if n.strip()]
    print(f"{'peers':>7} {'reload s':>9} {'longest stall ms':>17} {'loop ticks':>11}")
    with tempfile.TemporaryDirectory(prefix="ikev1d-reload-") as tmp:
        for peers in counts:
            runs = [asyncio.run(one_reload(Path(tmp), peers)) for _ in range(args.repeat)]
            wall = sorted(r[0] for r in runs)[len(runs) // 2]
            gap = sorted(r[1] for r in runs)[len(runs) // 2]
            n = sorted(r[2] for r in runs)[len(runs) // 2]
            print(f"{peers:>7} {wall:>9.2f} {1000 * gap:>17.0f} {n:>11}   "
                  f"(medians of {len(runs)}; stalls "
                  f"{', '.join(f'{1000 * r[1]:.0f}' for r in runs)} ms)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
