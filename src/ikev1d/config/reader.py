"""Typed access to parsed TOML: every problem becomes ``FILE: KEY: reason``."""

from __future__ import annotations

import difflib
import enum
import ipaddress
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from ikev1d.durations import DurationError, parse_duration

from .errors import ConfigError
from .identity import ANY, Identity, IdentityError
from .model import IPNetwork

__all__ = ["TomlReader"]

_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.StrEnum)


class TomlReader:
    """One file's TOML, read key by key; errors name the file and the key path."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.notes: list[str] = []
        #: Passphrases of encrypted private key files, by absolute file name
        #: ([secrets.*] with type = "private_key").
        self.passphrases: dict[str, bytes] = {}

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.source, key, reason)

    # -- generic typed getters -------------------------------------------------

    def table(self, value: object, key: str) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table ([{key}]), got {_type_name(value)}")
        return value

    def check_keys(
        self, data: Mapping[str, object], path: str, allowed: Collection[str],
        elsewhere: Mapping[str, str] | None = None,
    ) -> None:
        for key in data:
            if key in allowed:
                continue
            where = f"{path}.{key}" if path else key
            if elsewhere and key in elsewhere:
                raise self.error(where, f"unknown key; {key!r} belongs in {elsewhere[key]}")
            hint = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            raise self.error(
                where, f"unknown key{suffix} (known keys: {', '.join(sorted(allowed))})"
            )

    def get_str(self, data: Mapping[str, object], path: str, key: str, default: str) -> str:
        value = data.get(key, default)
        if not isinstance(value, str):
            raise self.error(f"{path}.{key}", f"expected a string, got {_type_name(value)}")
        return value

    def get_optional_str(self, data: Mapping[str, object], path: str, key: str) -> str | None:
        if key not in data:
            return None
        value = self.get_str(data, path, key, "")
        return value if value.strip() else None

    def get_choice(
        self, data: Mapping[str, object], path: str, key: str, default: _E, choices: type[_E],
        not_yet: Collection[_E] = (),
    ) -> _E:
        """One of a StrEnum's values; the error lists them all.  A value in
        ``not_yet`` names a feature that does not exist yet and is refused."""
        value = self.get_str(data, path, key, default)
        try:
            choice = choices(value)
        except ValueError:
            raise self.error(
                f"{path}.{key}",
                f"invalid value {value!r}: expected one of {' | '.join(choices)}",
            ) from None
        if choice in not_yet:
            raise self.not_implemented(f"{path}.{key}", f"{key} = \"{choice}\"")
        return choice

    # -- features that do not exist yet ------------------------------------------------

    def not_implemented(self, key: str, what: str = "") -> ConfigError:
        """Refuse a value whose feature does not exist yet, rather than load it
        and silently do something else."""
        return self.error(key, "not implemented yet" + (f": {what}" if what else ""))

    def refuse_unless_empty(self, data: Mapping[str, object], path: str, key: str) -> None:
        """A key of a feature that does not exist yet loads only when absent or
        empty ("", [] or an empty table)."""
        value = data.get(key)
        if value is None or value == [] or value == {}:
            return
        if isinstance(value, str):
            if value.strip():
                raise self.not_implemented(f"{path}.{key}")
            return
        if isinstance(value, list | dict):
            raise self.not_implemented(f"{path}.{key}")
        raise self.error(f"{path}.{key}", f"expected a string or a list, got {_type_name(value)}")

    def get_bool(self, data: Mapping[str, object], path: str, key: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"{path}.{key}", f"expected true or false, got {_type_name(value)}")
        return value

    def get_int(
        self, data: Mapping[str, object], path: str, key: str, default: int,
        low: int, high: int | None = None,
    ) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{path}.{key}", f"expected an integer, got {_type_name(value)}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise self.error(f"{path}.{key}", f"{value} is out of range: must be {bound}")
        return value

    def get_duration(
        self, data: Mapping[str, object], path: str, key: str, default: float,
        *, allow_zero: bool = False,
    ) -> float:
        if key not in data:
            return default
        try:
            seconds = parse_duration(data[key])
        except DurationError as exc:
            raise self.error(f"{path}.{key}", str(exc)) from None
        if seconds == 0 and not allow_zero:
            raise self.error(f"{path}.{key}", "must be longer than 0s")
        return seconds

    def get_list(
        self, data: Mapping[str, object], path: str, key: str, default: Iterable[_T],
        convert: Callable[[str, str], _T], *, split_commas: bool = False,
    ) -> tuple[_T, ...]:
        """A list of strings, each converted with convert(text, key_path)."""
        if key not in data:
            return tuple(default)
        value = data[key]
        if isinstance(value, str) and split_commas:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise self.error(
                f"{path}.{key}", f"expected a list of strings, got {_type_name(value)}"
            )
        result: list[_T] = []
        for index, item in enumerate(value):
            item_key = f"{path}.{key}[{index}]"
            if not isinstance(item, str):
                raise self.error(item_key, f"expected a string, got {_type_name(item)}")
            result.append(convert(item, item_key))
        return tuple(result)

    # -- converters ---------------------------------------------------------------

    def address(self, text: str, key: str) -> str:
        try:
            return str(ipaddress.ip_address(text.strip()))
        except ValueError:
            raise self.error(key, f"{text!r} is not an IP address") from None

    def remote_address(self, text: str, key: str) -> str:
        value = text.strip()
        if value == ANY:
            return ANY
        if "/" in value:
            return str(self.network(value, key))
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise self.error(
                key,
                f"{text!r} is not an IP address, a subnet or \"%any\" (host names are not "
                "resolved; use the peer's address)",
            ) from None

    def network(self, text: str, key: str) -> IPNetwork:
        value = text.strip()
        try:
            return ipaddress.ip_network(value)
        except ValueError:
            pass
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise self.error(key, f"{text!r} is not a network (like 10.1.0.0/24)") from None
        raise self.error(key, f"{text!r} has host bits set; did you mean {str(loose)!r}?")

    def file(self, text: str, key: str) -> str:
        path = Path(text.strip()).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        if not path.is_file():
            raise self.error(key, f"file not found: {path}")
        if not os.access(path, os.R_OK):
            raise self.error(key, f"file not readable: {path}")
        return str(path)

    def identity(self, text: str, key: str, *, allow_any: bool) -> Identity:
        try:
            identity = Identity.parse(text)
        except IdentityError as exc:
            raise self.error(key, str(exc)) from None
        if identity.is_any and not allow_any:
            raise self.error(key, "\"%any\" is only allowed for the remote side")
        return identity


def _type_name(value: object) -> str:
    names = {
        bool: "a boolean", int: "an integer", float: "a float", str: "a string",
        list: "a list", dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


