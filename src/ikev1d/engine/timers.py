"""A heap of deadlines with cancellation, for the engine's single timer.

A cancelled timer lets go of its callback at once (the closure may hold a
whole SA), and the heap is compacted when cancelled entries outnumber live
ones, so that SAs created and given up by the thousand (a flood of spoofed
requests) leave nothing behind.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Below this many entries the heap is not worth compacting.
COMPACT_MIN = 64


def _nothing(now: float) -> None:
    """The callback of a cancelled timer."""


@dataclass(eq=False, slots=True)
class Timer:
    deadline: float
    seq: int
    callback: Callable[..., None]
    """Called with ``now``, or with ``arg`` and ``now`` when ``arg`` is not None."""
    cancelled: bool = False
    owner: object | None = None
    """The ISAKMP SA the timer works for: an internal error while it runs
    destroys that SA and nothing else."""
    timers: Timers | None = field(default=None, repr=False)
    arg: Any = None
    """What the callback works on (see :meth:`Timers.schedule_call`)."""

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = _nothing
            self.owner = None
            self.arg = None
            if self.timers is not None:
                self.timers.cancelled_one()
                self.timers = None


class Timers:
    def __init__(self) -> None:
        # (deadline, sequence, timer): the heap compares plain tuples, in C, rather
        # than calling a dataclass's ordering for each of its log(n) comparisons.
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        """Timers still to run (cancelled ones excluded)."""
        return len(self._heap) - self._cancelled

    def schedule(
        self, deadline: float, callback: Callable[[float], None], owner: object | None = None
    ) -> Timer:
        seq = next(self._seq)
        timer = Timer(deadline, seq, callback, owner=owner, timers=self)
        heapq.heappush(self._heap, (deadline, seq, timer))
        return timer

    def schedule_call(
        self, deadline: float, callback: Callable[[_T, float], None], arg: _T,
        owner: object | None = None,
    ) -> Timer:
        """:meth:`schedule` for ``callback(arg, now)``: with a callback shared by many
        timers (a method bound once), a timer costs no closure of its own, which
        matters for the expiry and renewal timers every established SA holds."""
        seq = next(self._seq)
        timer = Timer(deadline, seq, callback, owner=owner, timers=self, arg=arg)
        heapq.heappush(self._heap, (deadline, seq, timer))
        return timer

    def cancelled_one(self) -> None:
        self._cancelled += 1
        if self._cancelled > COMPACT_MIN and self._cancelled * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _pop(self) -> Timer:
        timer = heapq.heappop(self._heap)[2]
        if timer.cancelled:
            self._cancelled -= 1
        return timer

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            self._pop()
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> Timer | None:
        """The next live timer due by ``now``, taken off the heap, or None."""
        while self._heap and self._heap[0][0] <= now:
            timer = self._pop()
            if not timer.cancelled:
                timer.timers = None
                return timer
        return None

    def run_due(self, now: float) -> None:
        while (timer := self.pop_due(now)) is not None:
            callback, arg = timer.callback, timer.arg
            timer.cancel()
            if arg is None:
                callback(now)
            else:
                callback(arg, now)
