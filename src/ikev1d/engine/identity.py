"""IKE identities in Main Mode (RFC 2407 section 4.6.2), on top of ikev1d.config's Identity."""

from __future__ import annotations

from ikev1d.config.identity import Identity, IdentityError
from ikev1d.text import printable
from ikev1d.wire import IdPayload

__all__ = ["IdentityError", "describe", "id_payload", "matches"]


def id_payload(identity: Identity | str) -> IdPayload:
    """Our Phase 1 ID: the configured identity, or our IKE address (text) when none is."""
    if isinstance(identity, str):
        identity = Identity.parse(identity)
    return identity.to_id_payload()


def matches(expected: Identity | None, received: IdPayload) -> bool:
    """Does the peer's ID equal the configured one? None or %any accept any."""
    return expected is None or expected.matches(received)


def describe(payload: IdPayload) -> str:
    """The peer's ID for logs and status, e.g. ``gw.example.org`` or ``C=DE, O=X, CN=gw``;
    control characters the peer put in it come out escaped."""
    return printable(str(Identity.from_id_payload(payload)), limit=1024)
