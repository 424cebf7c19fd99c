"""The cyclic garbage collector, tuned for a daemon that holds thousands of SAs.

Python's collector scans, in its middle and full collections, every tracked object
that survived a young one: the state of every SA held. While 10,000 tunnels came
up, the middle collections (one per ten young ones) stopped the event loop for up
to 27 ms each; a full collection, which Python runs once the survivors have grown
by a quarter since the last, takes 35-40 ms over 100,000 objects and 65 over
200,000 (some 7,000 tunnels' worth). Meanwhile the IKE messages and, in the
userspace data plane, the packets of every tunnel wait.

The protocol engine leaves no reference cycles behind when an SA comes up, is
renewed or ends (a test holds it to that), nor does the userspace data plane when
it installs and removes one: what handling a message makes is freed by reference
counting, and an SA's state lives as long as the SA and is freed by reference
counting when it goes. So whatever survives a collection is frozen (``gc.freeze``)
right after it: no collection scans it again, and each one sees only what was made
since the last (a young collection stays the only pause, a few milliseconds). A
frozen object is still freed when its reference count drops to zero; only a cycle
that becomes garbage after it was frozen stays (asyncio's socket transports are
such cycles: some five objects per control connection that a collection found
open). As a bound on such leftovers, a full collection of everything runs on the
event loop (never inside the collector) when the frozen objects have doubled since
the last one and are at least :data:`FULL_COLLECTION_MIN_FROZEN`, checked at most
once per :data:`FULL_COLLECTION_INTERVAL_S`. A reload adds nothing to this: the
configuration it replaces holds no cycles and goes by reference counting (a
collection after each reload, over a hub's ten thousand connections, stopped the
loop for 400 ms; even counting the frozen objects took 45).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = ["GC_YOUNG_THRESHOLD", "Collector"]

log = logging.getLogger("ikev1d.daemon")

GC_YOUNG_THRESHOLD: Final = 10_000
"""Net allocations of container objects between two young collections of the cyclic
garbage collector while the daemon runs (Python's default is 700). Handling one IKE
message allocates and frees hundreds of them (decoded payloads, events, log records);
at 700 a young collection caught many of them still in use, to be frozen with the
SAs' state. At 10,000 most are freed by reference counting before a collection sees
them: over 1,500 handshakes a third of the young collections (0.15 ms each, median)."""

FULL_COLLECTION_GROWTH: Final = 2
"""A full collection runs when the frozen objects have grown this many times over
since the last one, ..."""
FULL_COLLECTION_MIN_FROZEN: Final = 500_000
"""... are at least this many (some 16,000 tunnels' worth; start-up freezes about
50,000), ..."""
FULL_COLLECTION_INTERVAL_S: Final = 3600.0
"""... checked at most this often (start-up's full collection counts)."""


class Collector:
    """The daemon's collector policy: ``settle()`` once running, ``restore()`` at the
    end.

    ``schedule(fn)`` runs ``fn`` soon on the event loop, from any thread (the
    collector may run in any thread that allocates)."""

    def __init__(self, schedule: Callable[[Callable[[], None]], object]) -> None:
        self._schedule = schedule
        self._threshold: tuple[int, int, int] | None = None
        self._check_due = False
        self._collecting_all = False
        self._last_check = 0.0
        self.frozen_after_full = 0
        """Objects frozen right after the last full collection."""
        self.full_collections = 0
        """Full collections this policy ran (start-up's and reloads' included)."""

    def settle(self) -> None:
        """Start-up is over: what it made is frozen, the young threshold goes up, and
        from now on what survives a collection is frozen after it."""
        if self._threshold is not None:
            return
        self._threshold = gc.get_threshold()
        young, *older = self._threshold
        self._full()
        gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), *older)
        gc.callbacks.append(self._after_collection)

    def restore(self) -> None:
        """Python's own settings again, nothing frozen."""
        threshold, self._threshold = self._threshold, None
        if threshold is None:
            return
        if self._after_collection in gc.callbacks:
            gc.callbacks.remove(self._after_collection)
        gc.unfreeze()
        gc.set_threshold(*threshold)

    def _full(self) -> None:
        began = time.perf_counter()
        self._collecting_all = True
        try:
            gc.unfreeze()
            freed = gc.collect()
            gc.freeze()
        finally:
            self._collecting_all = False
        self.frozen_after_full = gc.get_freeze_count()
        self._last_check = time.monotonic()
        self.full_collections += 1
        log.debug("collector: full collection freed %d objects in %.1f ms; %d frozen",
                  freed, 1000 * (time.perf_counter() - began), self.frozen_after_full)

    def _check(self) -> None:
        """On the loop, at most once per :data:`FULL_COLLECTION_INTERVAL_S`: count the
        frozen objects (a walk over them, a millisecond or two for 300,000) and
        collect everything if they have doubled since the last full collection."""
        self._check_due = False
        if self._threshold is None:
            return
        self._last_check = time.monotonic()
        frozen = gc.get_freeze_count()
        if frozen >= max(FULL_COLLECTION_GROWTH * self.frozen_after_full,
                         FULL_COLLECTION_MIN_FROZEN):
            self._full()

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, in whatever thread allocated: nothing here may
        # collect (the collector is busy) or touch the loop's state.
        if phase != "stop" or self._threshold is None or self._collecting_all:
            return
        gc.freeze()
        if (not self._check_due
                and time.monotonic() - self._last_check >= FULL_COLLECTION_INTERVAL_S):
            self._check_due = True
            self._schedule(self._check)
