"""The configuration: TOML -> validated frozen dataclasses, with clear errors.

``load_config`` / ``parse_config`` read a file or text (:mod:`.loader`), the
dataclasses are in :mod:`.model`, identities in :mod:`.identity`, and
``config_warnings`` (:mod:`.warnings`) lists what loads but deserves a look.
"""

from __future__ import annotations

from ikev1d.durations import format_duration, parse_duration

from .errors import ConfigError
from .identity import Identity, IdentityError, IdKind
from .loader import load_config, parse_config
from .model import (
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    Auth,
    AuthConfig,
    ChildConfig,
    Config,
    ConnectionConfig,
    DaemonConfig,
    Dataplane,
    DpdAction,
    Fragmentation,
    IPNetwork,
    IpsecMode,
    LogLevel,
    ModeCfg,
    PoolConfig,
    SecretConfig,
    SecretType,
    StartAction,
    XauthConfig,
    XauthRound,
)
from .warnings import config_warnings

__all__ = [
    "DEFAULT_ESP_PROPOSALS",
    "DEFAULT_IKE_PROPOSALS",
    "Auth",
    "AuthConfig",
    "ChildConfig",
    "Config",
    "ConfigError",
    "ConnectionConfig",
    "DaemonConfig",
    "Dataplane",
    "DpdAction",
    "Fragmentation",
    "IPNetwork",
    "IdKind",
    "Identity",
    "IdentityError",
    "IpsecMode",
    "LogLevel",
    "ModeCfg",
    "PoolConfig",
    "SecretConfig",
    "SecretType",
    "StartAction",
    "XauthConfig",
    "XauthRound",
    "config_warnings",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
]
