"""The one error the configuration loader raises."""

from __future__ import annotations

from ikev1d.errors import Ikev1dError

__all__ = ["ConfigError"]


class ConfigError(Ikev1dError):
    """An invalid configuration; str() is ``FILE: KEY: reason``."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(source, key, reason)
        self.source = source
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        if self.key:
            return f"{self.source}: {self.key}: {self.reason}"
        return f"{self.source}: {self.reason}"
