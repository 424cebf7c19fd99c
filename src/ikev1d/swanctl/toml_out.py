"""Write the converted configuration as TOML (the subset ikev1d's files use).

Values are strings, booleans, integers and lists of strings; tables nest.
Strings are TOML basic strings with every character that needs it escaped,
so a pre-shared key with quotes, backslashes or control characters survives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["TomlTable", "TomlValue", "dump_toml", "toml_key", "toml_string"]

TomlValue = str | bool | int | list[str]
TomlTable = dict[str, "TomlValue | TomlTable"]

_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
            "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string for ``text``."""
    out = ['"']
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """A key as written in a table header or before ``=``: bare when it can be."""
    return key if _BARE_KEY_RE.match(key) else toml_string(key)


def _value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    return "[" + ", ".join(toml_string(item) for item in value) + "]"


def dump_toml(table: Mapping[str, TomlValue | TomlTable], path: tuple[str, ...] = ()) -> str:
    """Tables as ``[a.b]`` headers, each table's plain keys before its subtables.

    Tables without plain keys of their own get no header (TOML creates them
    implicitly), except an empty leaf, which keeps its header.
    """
    lines: list[str] = []
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    if path and (scalars or not tables):
        lines.append("[" + ".".join(toml_key(p) for p in path) + "]")
    for key, value in scalars:
        if isinstance(value, dict):  # pragma: no cover - split above
            continue
        lines.append(f"{toml_key(key)} = {_value(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, sub in tables:
        if not isinstance(sub, dict):  # pragma: no cover - split above
            continue
        body = dump_toml(sub, (*path, key))
        if body:
            text += ("\n" if text else "") + body
    return text
