"""Durations as swanctl.conf writes them: "90s", "30m", "4h", "1d" or plain seconds."""

from __future__ import annotations

import math
import re

from ikev1d.errors import Ikev1dError

__all__ = ["DurationError", "format_duration", "parse_duration"]


class DurationError(Ikev1dError, ValueError):
    """A duration we cannot read; the message says what is accepted."""


_UNITS: dict[str, int] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")


def parse_duration(value: object) -> float:
    """Seconds for ``"90s"``, ``"30m"``, ``"4h"``, ``"1d"``, ``"45"`` or a number (seconds).

    Negative, fractional-unit-less garbage, booleans and non-finite numbers are
    refused with a DurationError.
    """
    if isinstance(value, bool):
        raise DurationError(f"expected a duration like \"90s\", \"30m\", \"4h\", \"1d\", "
                            f"got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise DurationError(f"duration must be a non-negative number of seconds, "
                                f"got {value!r}")
        return seconds
    if not isinstance(value, str):
        raise DurationError(f"expected a duration like \"90s\", \"30m\", \"4h\", \"1d\", "
                            f"got {type(value).__name__}")
    match = _DURATION_RE.match(value.strip().lower())
    if match is None:
        raise DurationError(
            f"invalid duration {value!r}: use a number with an optional unit s, m, h or d "
            "(\"90s\", \"30m\", \"4h\", \"1d\")"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact form: 14400 -> "4h", 90 -> "90s", 1.5 -> "1.5s"."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"
