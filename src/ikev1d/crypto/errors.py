"""Typed errors raised by ikev1d.crypto.

The engine maps them to notifications: InvalidPublicValue to INVALID-KEY-INFORMATION
(RFC 2408 §3.14.1), DecryptError to PAYLOAD-MALFORMED / a silently dropped message.
"""

from __future__ import annotations

from ikev1d.errors import Ikev1dError


class CryptoError(Ikev1dError):
    """A crypto primitive was asked for something it cannot do (unknown algorithm,
    unsupported group, wrong key or IV length)."""


class InvalidPublicValue(CryptoError):
    """The peer's Diffie-Hellman public value (KE payload data) is malformed or weak."""


class DecryptError(CryptoError):
    """Ciphertext cannot be decrypted (empty, or not a multiple of the block size)."""
