"""Bring a strongSwan swanctl.conf along: read it, convert it to ikev1d's TOML."""

from ikev1d.swanctl.convert import Conversion, Note, convert_swanctl
from ikev1d.swanctl.settings import Section, Setting, SettingsError, parse_settings

__all__ = [
    "Conversion",
    "Note",
    "Section",
    "Setting",
    "SettingsError",
    "convert_swanctl",
    "parse_settings",
]
