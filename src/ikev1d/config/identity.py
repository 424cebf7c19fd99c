"""IKE identities as the configuration writes them (RFC 2407 section 4.6.2)."""

from __future__ import annotations

import ipaddress
import re

__all__ = ["ANY", "classify_id", "normalize_id"]

ANY = "%any"
_FQDN_LABEL_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_USER_RE = re.compile(r"^[^\s@]+$")


def classify_id(text: str) -> tuple[str, str]:
    """(kind, value) of a configured IKE identity (RFC 2407 section 4.6.2.1 types).

    kind is one of ``ipv4_addr``, ``ipv6_addr``, ``fqdn``, ``user_fqdn``,
    ``der_asn1_dn`` or ``any``.  ``@name`` forces an FQDN (as in strongSwan).
    Raises ValueError with the reason for anything else.
    """
    value = text.strip()
    if value == ANY:
        return "any", value
    if not value:
        raise ValueError("empty identity")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return ("ipv4_addr" if address.version == 4 else "ipv6_addr"), str(address)
    if "=" in value:
        _check_dn(value)
        return "der_asn1_dn", value
    if value.startswith("@"):
        name = value[1:]
        if not _valid_fqdn(name):
            raise ValueError(f"{value!r} is not a valid FQDN identity")
        return "fqdn", name
    if "@" in value:
        user, _, domain = value.rpartition("@")
        if not _USER_RE.match(user) or not _valid_fqdn(domain):
            raise ValueError(f"{value!r} is not a valid user FQDN (name@domain) identity")
        return "user_fqdn", value
    if not _valid_fqdn(value):
        raise ValueError(
            f"{value!r} is not a valid identity: use an IP address, an FQDN "
            "(gw.example.org), a user FQDN (me@example.org) or a DN (\"C=DE, O=X, CN=gw\")"
        )
    return "fqdn", value


def _valid_fqdn(name: str) -> bool:
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        return False
    return all(_FQDN_LABEL_RE.match(label) for label in name.split("."))


def _check_dn(value: str) -> None:
    # The engine encodes DNs with cryptography (most significant RDN first as
    # strongSwan writes them, reversed for RFC 4514); parse the same way here
    # so that what loads can also be sent.
    from cryptography import x509

    parts = [p.strip() for p in value.split(",") if p.strip()]
    for part in parts:
        key, sep, val = part.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise ValueError(f"invalid distinguished name {value!r}: {part!r} is not KEY=VALUE")
    try:
        x509.Name.from_rfc4514_string(",".join(reversed(parts)))
    except ValueError as exc:
        raise ValueError(f"invalid distinguished name {value!r}: {exc}") from exc


def normalize_id(text: str | None) -> str:
    if text is None:
        return ""
    try:
        kind, value = classify_id(text)
    except ValueError:
        return text.strip()
    if kind == "der_asn1_dn":
        return ", ".join(
            f"{k.strip().upper()}={v.strip()}"
            for k, _, v in (p.partition("=") for p in value.split(",") if p.strip())
        )
    if kind in ("fqdn", "user_fqdn"):
        return value.lower().removesuffix(".")
    return value


