"""Times the cyclic garbage collector's pauses in an ikev1d daemon the benchmarks start.

Put this directory first on ``PYTHONPATH`` and name a file prefix in
``IKEV1D_BENCH_GC_LOG``: a Python process whose command line runs the ``daemon``
command then writes, when it exits, one line per collection to ``PREFIX.PID``:
``time.monotonic()`` at its start, generation, pause in milliseconds (from the first
callback's start to the last one's stop, so the daemon's own callback is inside),
objects collected. Other processes ignore it. Not part of ikev1d: only ``bench/`` uses it.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time
from typing import Any


def _install(prefix: str) -> None:
    began = [0.0, 0.0]
    rows: list[tuple[float, int, float, int]] = []

    def head(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            if gc.callbacks[-1] is not tail:  # stay last: time the daemon's callback too
                gc.callbacks.remove(tail)
                gc.callbacks.append(tail)
            began[0] = time.perf_counter()
            began[1] = time.monotonic()

    def tail(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and began[0]:
            rows.append((began[1], info["generation"], time.perf_counter() - began[0],
                         info["collected"]))

    def dump() -> None:
        with open(f"{prefix}.{os.getpid()}", "w", encoding="ascii") as f:
            f.writelines(f"{t:.6f} {g} {1000 * s:.3f} {n}\n" for t, g, s, n in rows)

    gc.callbacks[:0] = [head]
    gc.callbacks.append(tail)
    atexit.register(dump)


if os.environ.get("IKEV1D_BENCH_GC_LOG") and "daemon" in sys.argv:
    _install(os.environ["IKEV1D_BENCH_GC_LOG"])
