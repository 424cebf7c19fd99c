"""A heap of deadlines with cancellation, for the engine's single timer."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class Timer:
    deadline: float
    seq: int
    callback: Callable[[float], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    def __init__(self) -> None:
        self._heap: list[Timer] = []
        self._seq = itertools.count()

    def schedule(self, deadline: float, callback: Callable[[float], None]) -> Timer:
        timer = Timer(deadline, next(self._seq), callback)
        heapq.heappush(self._heap, timer)
        return timer

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].deadline if self._heap else None

    def run_due(self, now: float) -> None:
        while self._heap and self._heap[0].deadline <= now:
            timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.callback(now)
