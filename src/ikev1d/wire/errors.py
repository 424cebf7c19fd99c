"""Typed decode errors: each carries the notification the engine answers with.

Malformed input never raises anything but a :class:`WireError` subclass, so
that the engine can answer every malformation (RFC 2408 section 5 lists the
checks and their notifications); it maps ``err.notify`` to an RFC 2408 §3.14.1
notification (or silently drops, as RFC 2408 §5.1 allows for unauthenticated
garbage).
"""

from __future__ import annotations

from ikev1d.errors import Ikev1dError

from .enums import NotifyType

__all__ = [
    "EncryptedMessageError",
    "InvalidIdError",
    "InvalidPayloadTypeError",
    "InvalidVersionError",
    "LengthMismatchError",
    "TruncatedError",
    "WireError",
]


class WireError(Ikev1dError):
    """The peer's bytes do not form a valid ISAKMP message."""

    default_notify: NotifyType = NotifyType.PAYLOAD_MALFORMED

    def __init__(self, message: str, notify: NotifyType | None = None) -> None:
        super().__init__(message)
        self.notify: NotifyType = notify if notify is not None else self.default_notify


class TruncatedError(WireError):
    """Fewer bytes than a length field (or a fixed-size field) requires."""


class LengthMismatchError(WireError):
    """A length field disagrees with the bytes present (too short, or bytes left over)."""


class InvalidPayloadTypeError(WireError):
    """A payload type that cannot appear where it was found (RFC 2408 §5.2)."""

    default_notify = NotifyType.INVALID_PAYLOAD_TYPE


class InvalidVersionError(WireError):
    """ISAKMP major version other than 1 (RFC 2408 §5.2)."""

    default_notify = NotifyType.INVALID_MAJOR_VERSION


class InvalidIdError(WireError):
    """An identification payload whose data does not fit its ID type (RFC 2407 §4.6.2)."""

    default_notify = NotifyType.INVALID_ID_INFORMATION


class EncryptedMessageError(WireError):
    """decode_message() was given a message with the E flag set (RFC 2408 §3.1)."""

    default_notify = NotifyType.INVALID_FLAGS
