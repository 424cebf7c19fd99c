"""The log level names ``--log-level`` and ``[daemon] log_level`` accept.

Their values are the ``logging`` module's numbers, written out so that every
``ikev1d`` command can check a name without importing ``logging``.
"""

from __future__ import annotations

LEVELS: dict[str, int] = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "error": 40,
    "critical": 50,
}
"""Accepted ``--log-level`` / ``[daemon] log_level`` values (case-insensitive)."""
