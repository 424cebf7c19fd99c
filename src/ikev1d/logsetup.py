"""Log lines: one line per event, with the connection name and the peer.

    2026-11-27T07:00:00Z INFO [site-b 192.0.2.2] ISAKMP SA established ...

Modules log through ``logging.getLogger("ikev1d.<module>")`` and pass
``extra={"conn": name, "peer": address}`` when they know them; either may be
missing, and ``peer`` may be an address string or an (address, port) endpoint.

Under systemd, stderr is a stream to the journal (``JOURNAL_STREAM`` names
its device and inode); each line then starts with ``<N>``, the syslog
priority of its level (RFC 5424 section 6.2.1), which the journal strips and
keeps as the entry's priority, so ``journalctl -p warning`` works. SIGUSR1
makes the daemon call ``reopen_log_files`` after logrotate moved the file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

from ikev1d.errors import Ikev1dError
from ikev1d.levels import LEVELS

ROOT_LOGGER = "ikev1d"

SYSLOG_PRIORITIES: tuple[tuple[int, int], ...] = (
    (logging.CRITICAL, 2),  # crit
    (logging.ERROR, 3),     # err
    (logging.WARNING, 4),   # warning
    (logging.INFO, 6),      # info
    (0, 7),                 # debug
)
"""(lowest logging level, syslog priority), RFC 5424 section 6.2.1; the first that
the record's level reaches applies."""


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


_LINE = "_ikev1d_line"
"""The record attribute that keeps its formatted line for the next handler."""


class EventFormatter(logging.Formatter):
    """``TIMESTAMP LEVEL [conn peer] message``; tolerates records without extras.

    Every record goes to stderr and the log file: the line is built once and kept
    on the record for the second handler, and the timestamp text once a second
    (each handshake logs a few lines, and formatting them twice cost more than
    a tenth of the daemon's logging)."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return time.strftime(datefmt, time.gmtime(record.created))
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
            self._second = second
        return self._stamp

    def format(self, record: logging.LogRecord) -> str:
        line = record.__dict__.get(_LINE)
        if isinstance(line, str):
            return line
        line = self._format(record)
        record.__dict__[_LINE] = line
        return line

    def _format(self, record: logging.LogRecord) -> str:
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


def syslog_priority(levelno: int) -> int:
    for level, priority in SYSLOG_PRIORITIES:
        if levelno >= level:
            return priority
    return 7


class JournalFormatter(EventFormatter):
    """The same lines, each prefixed with ``<N>`` for the journal; a traceback's
    lines too, so that they stay in the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def stderr_is_journal(
    environ: Mapping[str, str] | None = None, stream: TextIO | None = None
) -> bool:
    """Whether stderr is the journal's stream: ``JOURNAL_STREAM`` is ``DEVICE:INODE``
    of it. Compared with stderr itself, because a child that inherits the variable
    may have its stderr redirected elsewhere."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


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
    stderr = logging.StreamHandler()
    stderr.setFormatter(JournalFormatter() if stderr_is_journal() else formatter)
    new_handlers: list[logging.Handler] = [stderr]
    if log_file:
        try:
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise LogSetupError(f"cannot open log file {log_file}: {exc.strerror}") from None
        file_handler.setFormatter(formatter)
        new_handlers.append(file_handler)
    root = logging.getLogger(ROOT_LOGGER)
    for old in _handlers:
        root.removeHandler(old)
        old.close()
    _handlers.clear()
    for handler in new_handlers:
        root.addHandler(handler)
        _handlers.append(handler)
    root.setLevel(numeric)


def reopen_log_files() -> list[str]:
    """Close and open again each log file (SIGUSR1, after logrotate renamed it), so
    that lines go to a new file at the configured name; the paths reopened.

    Raises LogSetupError when a file cannot be opened; that handler then stays
    closed (it opens the file again at its next line, and logs nothing if it
    still cannot: logging reports that on stderr)."""
    reopened = []
    for handler in _handlers:
        if not isinstance(handler, logging.FileHandler):
            continue
        handler.acquire()
        try:
            old = handler.stream
            handler.stream = None  # FileHandler opens it again at the next line
            if old is not None:
                old.close()
            try:
                handler.stream = handler._open()
            except OSError as exc:
                raise LogSetupError(
                    f"cannot reopen log file {handler.baseFilename}: {exc.strerror}"
                ) from None
        finally:
            handler.release()
        reopened.append(handler.baseFilename)
    return reopened


def set_level(level: str | int) -> None:
    """Change the level of an existing setup (config reload)."""
    numeric = parse_level(level) if isinstance(level, str) else level
    logging.getLogger(ROOT_LOGGER).setLevel(numeric)
