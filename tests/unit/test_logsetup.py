"""Log line format: timestamp, level, [conn peer], message, one line per event."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from ikev1d.logsetup import EventFormatter, LogSetupError, parse_level, setup_logging


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("ikev1d.engine", logging.INFO, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    record.created = 1795762800.0  # 2026-11-27T07:00:00Z
    return record


def test_format_with_and_without_extras() -> None:
    fmt = EventFormatter()
    assert fmt.format(_record("ISAKMP SA established", conn="site-b", peer="192.0.2.2")) == (
        "2026-11-27T07:00:00Z INFO [site-b 192.0.2.2] ISAKMP SA established")
    assert fmt.format(_record("x", conn="site-b", peer=("192.0.2.2", 4500))) == (
        "2026-11-27T07:00:00Z INFO [site-b 192.0.2.2] x")
    assert fmt.format(_record("x", conn="site-b")) == "2026-11-27T07:00:00Z INFO [site-b] x"
    assert fmt.format(_record("x", peer="192.0.2.2")) == "2026-11-27T07:00:00Z INFO [192.0.2.2] x"
    assert fmt.format(_record("x", conn=None, peer=None)) == "2026-11-27T07:00:00Z INFO x"
    assert fmt.format(_record("two\nlines")) == "2026-11-27T07:00:00Z INFO two lines"


def test_levels() -> None:
    assert parse_level("DEBUG") == logging.DEBUG
    assert parse_level("warn") == logging.WARNING
    with pytest.raises(LogSetupError, match="unknown log level 'loud'"):
        parse_level("loud")


def test_every_level_name_has_the_logging_modules_value() -> None:
    # ikev1d.levels writes the numbers out (the command line checks names without
    # importing logging): they must be logging's own.
    assert {name: parse_level(name) for name in ("debug", "info", "warning", "error",
                                                 "critical")} == {
        "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
        "error": logging.ERROR, "critical": logging.CRITICAL}


def test_setup_writes_stderr_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ikev1d.log"
    logger = logging.getLogger("ikev1d")
    saved = (logger.level, list(logger.handlers))
    try:
        setup_logging("warning", str(path))
        logging.getLogger("ikev1d.engine").info("hidden", extra={"conn": "a"})
        logging.getLogger("ikev1d.engine").warning("shown", extra={"conn": "a", "peer": "p"})
        for handler in logger.handlers:
            handler.flush()
        line = path.read_text().strip()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ WARNING \[a p\] shown", line)
        assert "shown" in capsys.readouterr().err
        # A second setup replaces the handlers instead of doubling every line.
        setup_logging("info")
        assert len(logger.handlers) == len(saved[1]) + 1
        with pytest.raises(LogSetupError, match="cannot open log file"):
            setup_logging("info", str(tmp_path / "missing" / "x.log"))
    finally:
        for handler in list(logger.handlers):
            if handler not in saved[1]:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(saved[0])


def test_a_record_is_formatted_once_for_stderr_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "ikev1d.log"
    logger = logging.getLogger("ikev1d")
    saved = (logger.level, list(logger.handlers))
    built: list[str] = []
    original = EventFormatter._format

    def counting(self: EventFormatter, record: logging.LogRecord) -> str:
        built.append(record.getMessage())
        return original(self, record)

    monkeypatch.setattr(EventFormatter, "_format", counting)
    try:
        setup_logging("info", str(path))
        logging.getLogger("ikev1d.engine").info("one %s", "line", extra={"conn": "a"})
        for handler in logger.handlers:
            handler.flush()
        assert path.read_text().endswith(" INFO [a] one line\n")
        assert capsys.readouterr().err.endswith(" INFO [a] one line\n")
        assert built == ["one line"]
    finally:
        for handler in list(logger.handlers):
            if handler not in saved[1]:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(saved[0])


def test_the_timestamp_follows_each_second() -> None:
    fmt = EventFormatter()
    first, same, later = _record("a"), _record("b"), _record("c")
    same.created = first.created + 0.999
    later.created = first.created + 61.0
    assert fmt.format(first).startswith("2026-11-27T07:00:00Z ")
    assert fmt.format(same).startswith("2026-11-27T07:00:00Z ")
    assert fmt.format(later).startswith("2026-11-27T07:01:01Z ")
    assert fmt.formatTime(first, "%H.%M") == "07.00"
