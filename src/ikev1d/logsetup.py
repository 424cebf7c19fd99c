"""Log lines: one line per event, with the connection name and the peer.

    2026-11-27T07:00:00Z INFO [site-b 192.0.2.2] ISAKMP SA established ...

Modules log through ``logging.getLogger("ikev1d.<module>")`` and pass
``extra={"conn": name, "peer": address}`` when they know them; either may be
missing, and ``peer`` may be an address string or an (address, port) endpoint.
"""

from __future__ import annotations

import logging
import time

from ikev1d.errors import Ikev1dError

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
"""Accepted ``--log-level`` / ``[daemon] log_level`` values (case-insensitive)."""

ROOT_LOGGER = "ikev1d"


class LogSetupError(Ikev1dError):
    """An unknown log level or an unusable log file; the message is for people."""


def parse_level(name: str) -> int:
    """Map a level name (``info``, ``DEBUG``, ``warn``) to a logging level."""
    key = name.strip().lower()
    if key == "warn":
        key = "warning"
    try:
        return LEVELS[key]
    except KeyError:
        raise LogSetupError(
            f"unknown log level {name!r} (use one of: {', '.join(LEVELS)})"
        ) from None


def _peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) == 2:
        return str(peer[0])
    return str(peer)


class EventFormatter(logging.Formatter):
    """``TIMESTAMP LEVEL [conn peer] message``; tolerates records without extras."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime(datefmt or "%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))

    def format(self, record: logging.LogRecord) -> str:
        conn = getattr(record, "conn", None)
        peer = getattr(record, "peer", None)
        context = " ".join(
            part for part in (conn and str(conn), peer and _peer_text(peer)) if part
        )
        prefix = f"{self.formatTime(record)} {record.levelname}"
        if context:
            prefix += f" [{context}]"
        text = f"{prefix} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        # One event, one line: a message with embedded newlines stays greppable.
        head, sep, tail = text.partition("\n")
        if sep and not record.exc_info and not record.stack_info:
            return head + " " + tail.replace("\n", " ")
        return text


_handlers: list[logging.Handler] = []


def setup_logging(level: str | int = "info", log_file: str | None = None) -> None:
    """Send ``ikev1d.*`` logs to stderr (and ``log_file``), replacing an earlier setup.

    Raises LogSetupError for an unknown level or a log file that cannot be opened.
    """
    numeric = parse_level(level) if isinstance(level, str) else level
    # Records need no caller, thread or process details (the line shows none), and
    # gathering them costs more than formatting the line: every handshake logs some.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the documented way to skip the caller lookup
    formatter = EventFormatter()
    new_handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        try:
            new_handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            raise LogSetupError(f"cannot open log file {log_file}: {exc.strerror}") from None
    root = logging.getLogger(ROOT_LOGGER)
    for old in _handlers:
        root.removeHandler(old)
        old.close()
    _handlers.clear()
    for handler in new_handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
        _handlers.append(handler)
    root.setLevel(numeric)


def set_level(level: str | int) -> None:
    """Change the level of an existing setup (config reload)."""
    numeric = parse_level(level) if isinstance(level, str) else level
    logging.getLogger(ROOT_LOGGER).setLevel(numeric)
