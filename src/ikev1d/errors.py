"""The root of ikev1d's exceptions.

Every exception class ikev1d defines derives from :class:`Ikev1dError`, most
through the root of their layer (``WireError``, ``CryptoError``,
``ConfigError``, ``DataplaneError``, ``EspError``, ``DaemonError``...), so a
caller can tell an error ikev1d raised on purpose from a bug. Classes that
callers also catch as a built-in type keep that base as well (``ProposalError``
is a ``ValueError``, ``XfrmError`` an ``OSError``).

This module imports nothing, so every layer, the wire codec included, may
import it.
"""

from __future__ import annotations

__all__ = ["Ikev1dError"]


class Ikev1dError(Exception):
    """The root of every error ikev1d raises on purpose."""
