"""A small JSON file in which a data plane records what it left outside the process.

XFRM entries and routes outlive a daemon that is killed (SIGKILL, OOM killer,
power cut of a container): the next run reads this file to know which of them
were its predecessor's. The file is rewritten whole (a temporary file renamed
over it, so a crash mid-write leaves the old or the new version, never half of
one) and readable by root only, although it holds no keys.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["StateFile"]

log = logging.getLogger(__name__)

VERSION = 1


class StateFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """What the last run recorded; empty when there is no (readable, valid) file."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("data plane state file %s unreadable, ignored: %s", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION:
            log.warning("data plane state file %s has an unknown format, ignored", self.path)
            return {}
        return data

    def save(self, data: Mapping[str, Any]) -> None:
        """Replace the file's contents; OSError is logged, not raised (the data plane
        still works, only recovery after a crash would miss entries)."""
        tmp = f"{self.path}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": VERSION, **data}, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write data plane state file %s: %s", self.path, exc)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove data plane state file %s: %s", self.path, exc)
