"""docs/configuration.md and the loader agree: the same keys, table by table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ikev1d.config.loader import KEY_TABLES
from tests.unit.config.test_loader import NOT_IMPLEMENTED

REFERENCE = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"

_HEADING = re.compile(r"^## (?:`\[(?P<table>[^\]]+)\]`|(?P<top>Top level))\s*$")
_ROW = re.compile(r"^\| `(?P<key>[^`]+)` \|")


def documented() -> dict[str, dict[str, str]]:
    """Table -> key -> its row, from the reference's "## `[table]`" sections."""
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = _HEADING.match(line)
            assert heading, f"unexpected heading in {REFERENCE.name}: {line!r}"
            name = "" if heading["top"] else heading["table"]
            assert name not in tables, f"{name!r} documented twice"
            current = tables[name] = {}
        elif current is not None and (row := _ROW.match(line)):
            assert row["key"] not in current, f"{row['key']!r} documented twice"
            current[row["key"]] = line
    return tables


def test_reference_lists_exactly_the_keys_the_loader_accepts() -> None:
    doc = {table: set(keys) for table, keys in documented().items()}
    loader = {table: set(keys) for table, keys in KEY_TABLES.items()}
    assert doc.keys() == loader.keys()
    for table in loader:
        assert doc[table] == loader[table], (
            f"[{table}]: undocumented {sorted(loader[table] - doc[table])}, "
            f"documented but not accepted {sorted(doc[table] - loader[table])}"
        )


def _table_and_key(path: str) -> tuple[str, str]:
    """connections.c.local.auth -> ("connections.<name>.local", "auth")."""
    parts = path.split(".")
    if parts[0] == "pools":
        return "", "pools"
    for i, part in enumerate(parts[:-1]):
        if part in ("connections", "secrets", "children"):
            parts[i + 1] = "<name>"
    return ".".join(parts[:-1]), parts[-1]


@pytest.mark.parametrize(("text", "key"), NOT_IMPLEMENTED)
def test_reference_marks_what_is_not_implemented_yet(text: str, key: str) -> None:
    table, name = _table_and_key(key)
    assert "not implemented yet" in documented()[table][name].lower(), (table, name)
