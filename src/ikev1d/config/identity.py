"""IKE identities (RFC 2407 section 4.6.2): one type for what we configure and what
a peer sends.

An :class:`Identity` is parsed once, when the configuration loads, from the
spelling strongSwan users know:

* ``192.0.2.1`` / ``2001:db8::1``: ID_IPV4_ADDR / ID_IPV6_ADDR;
* ``gw.example.org``, or ``@gw`` (the ``@`` forces an FQDN): ID_FQDN;
* ``me@example.org``: ID_USER_FQDN;
* ``C=DE, O=X, CN=gw``: ID_DER_ASN1_DN, most significant RDN first as
  strongSwan writes it (RFC 4514 strings run the other way);
* ``@#0102ab`` or ``keyid:0102ab``: ID_KEY_ID, hex;
* ``%any``: any identity that authenticates.

The engine sends :meth:`Identity.to_id_payload`, compares what the peer sent
with :meth:`Identity.matches`, and shows :meth:`Identity.from_id_payload`
in logs and status.  X.501 names are read and written by
``cryptography.x509`` only.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from dataclasses import InitVar, dataclass, field
from typing import Self

from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ikev1d.errors import Ikev1dError
from ikev1d.wire import IdPayload, IdType, id_to_text

__all__ = ["ANY", "IdKind", "Identity", "IdentityError", "ip_or_none"]

ANY = "%any"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)

_FQDN_LABEL_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_USER_RE = re.compile(r"^[^\s@]+$")
_KEY_ID_PREFIXES = ("@#", "keyid:")
# A comma not escaped by a backslash separates RDNs (RFC 4514 section 2.4).
_RDN_SEPARATOR_RE = re.compile(r"(?<!\\),")

# The attribute names strongSwan writes and reads; cryptography knows only some
# of them by name and prints the rest as dotted OIDs.
_DN_ATTRIBUTES: dict[str, ObjectIdentifier] = {
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "SN": NameOID.SURNAME,
    "G": NameOID.GIVEN_NAME,
    "T": NameOID.TITLE,
    "E": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "STREET": NameOID.STREET_ADDRESS,
    "serialNumber": NameOID.SERIAL_NUMBER,
}
_DN_NAMES_BY_UPPER = {name.upper(): name for name in _DN_ATTRIBUTES}
_DN_SHORT_NAMES = {oid: name for name, oid in _DN_ATTRIBUTES.items()}


class IdentityError(Ikev1dError, ValueError):
    """A configured identity that is not one; the message says why."""


class IdKind(enum.StrEnum):
    """What an identity is; the values are RFC 2407 section 4.6.2.1's type names."""

    IPV4_ADDR = "ipv4_addr"
    IPV6_ADDR = "ipv6_addr"
    FQDN = "fqdn"
    USER_FQDN = "user_fqdn"
    DN = "der_asn1_dn"
    KEY_ID = "key_id"
    #: ``%any``: configured only, never on the wire.
    ANY = "any"
    #: A type a peer may send that is never configured (subnets, ranges, ...).
    OTHER = "other"


_ID_TYPES: dict[IdKind, IdType] = {
    IdKind.IPV4_ADDR: IdType.IPV4_ADDR,
    IdKind.IPV6_ADDR: IdType.IPV6_ADDR,
    IdKind.FQDN: IdType.FQDN,
    IdKind.USER_FQDN: IdType.USER_FQDN,
    IdKind.DN: IdType.DER_ASN1_DN,
    IdKind.KEY_ID: IdType.KEY_ID,
}
_KINDS: dict[int, IdKind] = {int(t): k for k, t in _ID_TYPES.items()}


@dataclass(frozen=True, eq=False)
class Identity:
    """One IKE identity: its kind, the ID payload's identification data (RFC 2407
    section 4.6.2) and its text for people.

    Two identities are equal when they name the same thing: FQDNs and user
    FQDNs ignore case and a trailing dot, DNs compare attribute by attribute
    whatever string type carried them, everything else compares bytes.
    """

    kind: IdKind
    data: bytes
    text: str
    #: The ID type on the wire; it tells OTHER identities apart.
    id_type: int = 0
    _key: object = field(init=False, repr=False, compare=False)
    #: A DN identity's data already parsed (it is not parsed again for the key);
    #: passed by position, never stored.
    _parsed: InitVar[x509.Name | None] = None

    def __post_init__(self, _parsed: x509.Name | None) -> None:
        object.__setattr__(self, "_key", (self.id_type, _comparison_key(self, _parsed)))

    # -- construction ----------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> Self:
        """A configured identity; raises IdentityError with the reason."""
        value = text.strip()
        if value == ANY:
            return cls(IdKind.ANY, b"", ANY)
        if not value:
            raise IdentityError("empty identity")
        address = ip_or_none(value)
        if address is not None:
            return cls.from_address(address)
        if value.startswith(_KEY_ID_PREFIXES):
            return cls._key_id(value)
        if "=" in value:
            return cls._dn(value)
        if value.startswith("@"):
            name = value[1:]
            if not _valid_fqdn(name):
                raise IdentityError(f"{value!r} is not a valid FQDN identity")
            return cls._fqdn(name)
        if "@" in value:
            user, _, domain = value.rpartition("@")
            if not _USER_RE.match(user) or not user.isascii() or not _valid_fqdn(domain):
                raise IdentityError(
                    f"{value!r} is not a valid user FQDN (name@domain) identity"
                )
            return cls(IdKind.USER_FQDN, value.encode("ascii"), value, IdType.USER_FQDN)
        if not _valid_fqdn(value):
            raise IdentityError(
                f"{value!r} is not a valid identity: use an IP address, an FQDN "
                "(gw.example.org), a user FQDN (me@example.org) or a DN (\"C=DE, O=X, CN=gw\")"
            )
        return cls._fqdn(value)

    @classmethod
    def from_address(cls, address: str | IPAddress) -> Self:
        """ID_IPV4_ADDR / ID_IPV6_ADDR: our IKE address when no ``id`` is configured."""
        # An address object as it is: parsing its text again costs microseconds, and a
        # responder makes an identity of every new peer's address.
        ip = address if isinstance(address, _ADDRESS_TYPES) else ipaddress.ip_address(address)
        if ip.version == 4:
            return cls(IdKind.IPV4_ADDR, ip.packed, str(ip), IdType.IPV4_ADDR)
        return cls(IdKind.IPV6_ADDR, ip.packed, str(ip), IdType.IPV6_ADDR)

    @classmethod
    def from_id_payload(cls, payload: IdPayload) -> Self:
        """What a peer sent.  Never raises: data that does not fit its type (a DN
        that is no X.501 Name, an address of the wrong length) becomes an
        identity that matches no configured one, shown as hex."""
        kind = _KINDS.get(payload.id_type, IdKind.OTHER)
        data = payload.data
        if kind in (IdKind.IPV4_ADDR, IdKind.IPV6_ADDR):
            if len(data) == (4 if kind is IdKind.IPV4_ADDR else 16):
                return cls.from_address(ipaddress.ip_address(data))
            kind = IdKind.OTHER
        elif kind is IdKind.DN:
            name = _name_or_none(data)
            if name is None:
                return cls(kind, data, "DN:" + data.hex(), payload.id_type)
            return cls(kind, data, _dn_text(name), payload.id_type, name)
        elif kind is IdKind.KEY_ID:
            return cls(kind, data, "@#" + data.hex(), payload.id_type)
        elif kind in (IdKind.FQDN, IdKind.USER_FQDN):
            return cls(kind, data, data.decode("ascii", errors="backslashreplace"),
                       payload.id_type)
        return cls(IdKind.OTHER, data, id_to_text(payload), payload.id_type)

    @classmethod
    def of_certificate(cls, cert: x509.Certificate) -> tuple[Self, ...]:
        """The identities a certificate vouches for: its subject DN and each
        subjectAltName of a type IKE names (dNSName, rfc822Name, iPAddress;
        RFC 4945 section 3.1)."""
        subject = cert.subject
        found = [cls(IdKind.DN, subject.public_bytes(), _dn_text(subject),
                     IdType.DER_ASN1_DN, subject)]
        found.extend(identity for identity in map(cls._of_general_name, _alt_names(cert))
                     if identity is not None)
        return tuple(found)

    def in_certificate(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` vouches for this identity: ``self in of_certificate(cert)``,
        without making the identities of the other names (a responder asks this of
        every peer's certificate)."""
        if self.kind is IdKind.DN:
            return self._key == (IdType.DER_ASN1_DN, _dn_key(cert.subject))
        wanted = _ALT_NAME_TYPES.get(self.kind)
        if wanted is None:
            return False
        return any(self == self._of_general_name(name)
                   for name in _alt_names(cert) if isinstance(name, wanted))

    @classmethod
    def _of_general_name(cls, name: x509.GeneralName) -> Self | None:
        """The identity a subjectAltName entry names, None for types IKE does not."""
        if isinstance(name, x509.DNSName) and name.value.isascii():
            return cls(IdKind.FQDN, name.value.encode("ascii"), name.value, IdType.FQDN)
        if isinstance(name, x509.RFC822Name) and name.value.isascii():
            return cls(IdKind.USER_FQDN, name.value.encode("ascii"), name.value,
                       IdType.USER_FQDN)
        if isinstance(name, x509.IPAddress) and isinstance(
            name.value, ipaddress.IPv4Address | ipaddress.IPv6Address
        ):
            return cls.from_address(name.value)
        return None

    @classmethod
    def _fqdn(cls, name: str) -> Self:
        # Shown with the "@" only where the bare name would read as something else.
        ambiguous = ip_or_none(name) is not None or name.startswith(_KEY_ID_PREFIXES)
        text = "@" + name if ambiguous else name
        return cls(IdKind.FQDN, name.encode("ascii"), text, IdType.FQDN)

    @classmethod
    def _key_id(cls, value: str) -> Self:
        digits = value.removeprefix("@#").removeprefix("keyid:")
        try:
            data = bytes.fromhex(digits)
        except ValueError:
            raise IdentityError(f"{value!r} is not a valid key ID: expected hex digits") from None
        if not data:
            raise IdentityError(f"{value!r} is not a valid key ID: it is empty")
        return cls(IdKind.KEY_ID, data, "@#" + data.hex(), IdType.KEY_ID)

    @classmethod
    def _dn(cls, value: str) -> Self:
        name = _parse_dn(value)
        return cls(IdKind.DN, name.public_bytes(), _dn_text(name), IdType.DER_ASN1_DN)

    # -- use ---------------------------------------------------------------------------

    @property
    def is_any(self) -> bool:
        return self.kind is IdKind.ANY

    @property
    def address(self) -> IPAddress | None:
        """The IP address of an address identity, else None."""
        if self.kind in (IdKind.IPV4_ADDR, IdKind.IPV6_ADDR):
            return ipaddress.ip_address(self.data)
        return None

    def to_id_payload(self) -> IdPayload:
        """The Phase 1 ID payload, protocol and port zero (RFC 2407 section 4.6.2:
        "ignored" is the usual choice, and strongSwan sends zero)."""
        if self.kind is IdKind.ANY:
            raise IdentityError("\"%any\" names no identity to send")
        return IdPayload(self.id_type, 0, 0, self.data)

    def matches(self, payload: IdPayload) -> bool:
        """Is the peer's ID this one?  ``%any`` accepts any."""
        return self.is_any or self == Identity.from_id_payload(payload)

    @property
    def compare_key(self) -> object:
        """What equality compares: equal keys, equal identities."""
        return self._key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return self.text


def _comparison_key(identity: Identity, name: x509.Name | None = None) -> object:
    if identity.kind in (IdKind.FQDN, IdKind.USER_FQDN):
        return identity.data.lower().removesuffix(b".")
    if identity.kind is IdKind.DN:
        if name is None:
            name = _name_or_none(identity.data)
        if name is not None:
            return _dn_key(name)
    return identity.data


def _dn_key(name: x509.Name) -> object:
    """What DN equality compares: attribute by attribute, whatever string type."""
    return tuple(frozenset((a.oid.dotted_string, a.value) for a in rdn) for rdn in name.rdns)


#: The subjectAltName entry type that can name an identity of each kind.
_ALT_NAME_TYPES: dict[IdKind, type[x509.GeneralName]] = {
    IdKind.FQDN: x509.DNSName,
    IdKind.USER_FQDN: x509.RFC822Name,
    IdKind.IPV4_ADDR: x509.IPAddress,
    IdKind.IPV6_ADDR: x509.IPAddress,
}


def _alt_names(cert: x509.Certificate) -> list[x509.GeneralName]:
    """The certificate's subjectAltName entries; none when it has none or a bad one."""
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except (x509.ExtensionNotFound, ValueError):
        return []


# -- helpers -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def ip_or_none(text: str) -> IPAddress | None:
    """``text`` (surrounding blanks ignored) as an IP address, or None.

    Cached: a responder asks about the same peer and local address texts several times
    per handshake (its connections, its key, the peer's identity), and parsing one costs
    a few microseconds in Python. The texts come from the configuration and from the
    sockets (any sender chooses its source address), so the cache is bounded; the
    addresses are immutable, so sharing them is safe."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _valid_fqdn(name: str) -> bool:
    name = name.removesuffix(".")
    if not name or len(name) > 253:
        return False
    return all(_FQDN_LABEL_RE.match(label) for label in name.split("."))


def _parse_dn(value: str) -> x509.Name:
    """strongSwan's "C=DE, O=X, CN=gw" (attribute names in any case) as an X.501 Name."""
    parts: list[str] = []
    for part in (p.strip() for p in _RDN_SEPARATOR_RE.split(value)):
        if not part:
            continue
        key, sep, val = part.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise IdentityError(f"invalid distinguished name {value!r}: {part!r} is not KEY=VALUE")
        key = _DN_NAMES_BY_UPPER.get(key.strip().upper(), key.strip())
        parts.append(f"{key}={val.strip()}")
    try:
        # RFC 4514 writes the least significant RDN first: reverse strongSwan's order.
        return x509.Name.from_rfc4514_string(",".join(reversed(parts)), _DN_ATTRIBUTES)
    except ValueError as exc:
        reason = str(exc) or "unknown attribute type (known: " + ", ".join(_DN_ATTRIBUTES) + ")"
        raise IdentityError(f"invalid distinguished name {value!r}: {reason}") from exc


def _name_or_none(der: bytes) -> x509.Name | None:
    try:
        return x509.Name.from_bytes(der)
    except ValueError:
        return None


def _dn_text(name: x509.Name) -> str:
    """Most significant RDN first, as strongSwan prints DNs: "C=DE, O=X, CN=gw"."""
    return ", ".join(rdn.rfc4514_string(_DN_SHORT_NAMES) for rdn in name.rdns)
