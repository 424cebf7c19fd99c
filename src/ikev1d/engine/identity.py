"""IKE identities: configured strings <-> ID payloads (RFC 2407 section 4.6.2)."""

from __future__ import annotations

import functools
import ipaddress

from cryptography import x509

from ikev1d.errors import Ikev1dError
from ikev1d.wire import IdPayload, IdType, id_from_address, id_from_fqdn, id_from_user_fqdn


class IdentityError(Ikev1dError, ValueError):
    pass


@functools.lru_cache(maxsize=1024)
def id_payload(text: str) -> IdPayload:
    """The Phase 1 ID for a configured identity; protocol and port zero (RFC 2407 4.6.2)."""
    try:
        return id_from_address(ipaddress.ip_address(text))
    except ValueError:
        pass
    if "=" in text:
        try:
            name = x509.Name.from_rfc4514_string(_to_rfc4514(text))
        except ValueError as exc:
            raise IdentityError(f"invalid distinguished name {text!r}: {exc}") from exc
        return IdPayload(IdType.DER_ASN1_DN, 0, 0, name.public_bytes())
    if "@" in text and not text.startswith("@"):
        return id_from_user_fqdn(text)
    return id_from_fqdn(text.lstrip("@"))


def _to_rfc4514(text: str) -> str:
    """strongSwan writes DNs most-significant first, "C=DE, O=X, CN=gw"; RFC 4514 the reverse."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return ",".join(reversed(parts))


def matches(expected: str | None, received: IdPayload) -> bool:
    """Does the peer's ID equal the configured one? None or %any accept any."""
    if expected is None or expected == "%any":
        return True
    try:
        wanted = id_payload(expected)
    except IdentityError:
        return False
    if wanted.id_type != received.id_type:
        return False
    if wanted.id_type in (IdType.FQDN, IdType.USER_FQDN):
        return wanted.data.lower() == received.data.lower()
    return wanted.data == received.data


def describe(payload: IdPayload) -> str:
    return payload.to_text()
