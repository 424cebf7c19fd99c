"""The file side of ``ikev1d import-swanctl``: read swanctl.conf and its includes,
and list the private keys beside it.  Everything else is pure (settings, convert)."""

from __future__ import annotations

import glob
from pathlib import Path, PurePath

from ikev1d.swanctl.convert import Conversion, convert_swanctl
from ikev1d.swanctl.settings import SettingsError, parse_settings

__all__ = ["import_swanctl_file", "read_include"]

# Where swanctl --load-creds looks for private keys, relative to swanctl.conf.
_KEY_FOLDERS = ("private", "rsa", "ecdsa", "pkcs8")


def _read(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SettingsError(shown, 1, "not UTF-8 text") from None


def read_include(pattern: str, base: PurePath) -> list[tuple[str, str]]:
    """Files an ``include`` names, sorted as the shell expands the pattern.

    A pattern that matches nothing is no error (strongSwan skips it too); a
    plain file name that does not exist is (OSError)."""
    full = Path(pattern).expanduser()
    if not full.is_absolute():
        full = Path(base) / full
    if glob.has_magic(str(full)):
        names = sorted(glob.glob(str(full)))
    else:
        if not full.is_file():
            raise FileNotFoundError(2, f"no such file: {full}")
        names = [str(full)]
    return [(name, _read(Path(name), name)) for name in names if Path(name).is_file()]


def import_swanctl_file(path: str | Path) -> Conversion:
    """Parse and convert a swanctl.conf file (raises SettingsError, OSError)."""
    file = Path(path)
    text = _read(file, str(path))
    root = parse_settings(text, str(path), read_include)
    base = file.resolve().parent
    keys = sorted(str(p) for folder in _KEY_FOLDERS if (base / folder).is_dir()
                  for p in (base / folder).iterdir() if p.is_file())
    return convert_swanctl(root, base_dir=base, private_keys=keys, source=str(path))
