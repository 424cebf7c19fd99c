"""Rate limits for the log lines that unauthenticated input can trigger.

Anyone can send us datagrams, so a line written per received message lets a
sender turn bandwidth into disk writes (one 60 KB message with unknown Vendor
IDs used to write thousands of lines). Every such line goes through one
:class:`LogLimiter`, keyed by a fixed *kind* chosen in the code (never by
attacker-chosen values, so the table of kinds stays small): a burst of lines
passes, then at most one per interval, and the next line that passes says how
many similar lines were suppressed since the last one. Sans-I/O like the rest
of the engine: the time is passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: Lines of one kind that pass at once, and how fast the allowance refills.
BURST = 10
INTERVAL_S = 5.0


@dataclass
class _Bucket:
    tokens: float
    updated: float
    suppressed: int = 0


class LogLimiter:
    """A token bucket per kind of log line."""

    def __init__(self, burst: int = BURST, interval_s: float = INTERVAL_S) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._buckets: dict[str, _Bucket] = {}
        self.now = 0.0
        """The time of the input being handled, set by the engine, for code
        paths that are not handed the time themselves."""

    def allow(self, kind: str, now: float) -> tuple[bool, int]:
        """(whether a line of this kind may be written now, how many were
        suppressed before it; the count restarts once reported)."""
        bucket = self._buckets.get(kind)
        if bucket is None:
            bucket = self._buckets[kind] = _Bucket(float(self.burst), now)
        elapsed = max(now - bucket.updated, 0.0)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed / self.interval_s)
        bucket.updated = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            return False, 0
        bucket.tokens -= 1.0
        suppressed, bucket.suppressed = bucket.suppressed, 0
        return True, suppressed

    def log(
        self,
        logger: logging.Logger,
        level: int,
        kind: str,
        now: float,
        msg: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """``logger.log(level, msg, *args)`` unless the kind is over its rate."""
        if not logger.isEnabledFor(level):
            return
        allowed, suppressed = self.allow(kind, now)
        if not allowed:
            return
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        logger.log(level, msg, *args, extra=extra, stacklevel=2)


class Lazy:
    """A log argument computed only if the line is written (``%s`` calls
    ``str``): describing every transform of an offer costs more than the
    offer took to send, so a suppressed line must not pay for it."""

    def __init__(self, make: Callable[[], str]) -> None:
        self._make = make

    def __str__(self) -> str:
        return self._make()


def truncated(items: Sequence[str], limit: int = 5, total: int | None = None) -> str:
    """A list for a log line, cut after ``limit`` items: "a, b, ... and 57 more"
    (``total``: how many there are, when only the first few were kept)."""
    count = len(items) if total is None else total
    shown = ", ".join(items[:limit])
    if count > min(limit, len(items)):
        shown += f", ... and {count - min(limit, len(items))} more"
    return shown
