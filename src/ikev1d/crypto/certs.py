"""X.509 certificate paths for IKEv1 signature authentication (RFC 2409 section 5.1).

``cryptography.x509.verification`` is built for the Web PKI: it wants a server
name or a client certificate with the matching extended key usage, which IPsec
certificates often lack. What IKE needs is smaller and is checked here, in the
manner of RFC 5280 section 6 reduced to what IPsec peers use:

- a path from the peer's end-entity certificate through the intermediates it
  sent (CERT payloads) to one of the connection's trust anchors: each issuer
  name equals the next subject and each signature verifies with the issuer's
  key;
- every certificate of the path, the anchor included, valid at ``now`` (the
  caller's clock: nothing here reads the wall clock);
- intermediates and the anchor are CAs (basicConstraints cA, its pathLen
  respected) and, when keyUsage is present, may sign certificates; the end
  entity, when keyUsage is present, may sign (digitalSignature or
  nonRepudiation), or, for public key encryption authentication (RFC 2409
  section 5.3), encipher the nonce (keyEncipherment, RFC 5280 section 4.2.1.3);
- an unknown critical extension rejects its certificate (RFC 5280 section 4.2);
- each certificate below the anchor is looked up in the CRLs its issuer signed
  (RFC 5280 section 6.3).
"""

from __future__ import annotations

import datetime
import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.x509.oid import ExtensionOID

from ikev1d.crypto.errors import CryptoError
from ikev1d.text import printable

__all__ = [
    "CertificateError",
    "Problem",
    "anchor_subject",
    "anchor_text",
    "dn_text",
    "same_public_key",
    "verify_path",
]

#: Longest path we build (end entity, intermediates, anchor): bounds the work a
#: peer's CERT payloads can cause.
MAX_PATH = 8

#: Critical extensions this verifier understands (RFC 5280 section 4.2: a
#: certificate with any other critical extension must be rejected).
_HANDLED_CRITICAL = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.CERTIFICATE_POLICIES,
})

_SHORT_NAMES = {
    x509.NameOID.COUNTRY_NAME: "C",
    x509.NameOID.STATE_OR_PROVINCE_NAME: "ST",
    x509.NameOID.LOCALITY_NAME: "L",
    x509.NameOID.ORGANIZATION_NAME: "O",
    x509.NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    x509.NameOID.COMMON_NAME: "CN",
    x509.NameOID.EMAIL_ADDRESS: "E",
    x509.NameOID.DOMAIN_COMPONENT: "DC",
}


class Problem(enum.Enum):
    """What is wrong with a path; the engine picks the notification by it
    (RFC 2408 section 3.14.1)."""

    UNTRUSTED = "untrusted"  # INVALID-CERT-AUTHORITY
    INVALID = "invalid"  # INVALID-CERTIFICATE: expired, revoked, not a CA, bad extension


class CertificateError(CryptoError):
    """The peer's certificate path does not verify; the message says why."""

    def __init__(self, message: str, problem: Problem) -> None:
        super().__init__(message)
        self.problem = problem


def dn_text(name: x509.Name) -> str:
    """A DN as strongSwan prints it, most significant RDN first: "C=DE, O=X, CN=gw";
    control characters in it (the peer chose them) come out escaped."""
    return printable(", ".join(rdn.rfc4514_string(_SHORT_NAMES) for rdn in name.rdns),
                     limit=1024)


@functools.lru_cache(maxsize=64)
def anchor_text(anchor: x509.Certificate) -> str:
    """:func:`dn_text` of a trust anchor's subject, kept: a path ends in one of the
    configured anchors on every handshake (only they are passed here; a
    certificate hashes and compares by its encoding)."""
    return dn_text(anchor.subject)


@functools.lru_cache(maxsize=64)
def anchor_subject(anchor: x509.Certificate) -> bytes:
    """A trust anchor's subject DN, DER-encoded (the CR payload's data, RFC 2408
    section 3.10), kept like :func:`anchor_text`."""
    return anchor.subject.public_bytes()


def _public_der(key: object) -> bytes:
    public: Any = key.public_key() if hasattr(key, "public_key") else key
    der: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def same_public_key(a: object, b: object) -> bool:
    """Whether two keys (private keys, public keys or certificates) hold the same public key."""
    return _public_der(a) == _public_der(b)


@dataclass(frozen=True)
class _Link:
    cert: x509.Certificate
    is_anchor: bool


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Issuer name equals the issuer's subject and the signature verifies with its key."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.Extension[
    x509.ExtensionType
] | None:
    try:
        return cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None


def _subject(cert: x509.Certificate) -> str:
    return f'"{dn_text(cert.subject)}"'


def _check_extensions(cert: x509.Certificate, *, ca: bool, below: int,
                      encipher: bool = False) -> None:
    """RFC 5280 sections 4.2.1.3, 4.2.1.9 and 4.2: the extensions of one certificate.

    ``below``: how many intermediates stand between this CA and the end entity;
    ``encipher``: the end entity's key encrypts a secret (the nonce) instead of
    signing.
    """
    try:
        extensions = list(cert.extensions)
    except ValueError as exc:
        raise CertificateError(f"certificate {_subject(cert)} has a malformed extension: "
                               f"{exc}", Problem.INVALID) from exc
    for ext in extensions:
        if ext.critical and ext.oid not in _HANDLED_CRITICAL:
            raise CertificateError(
                f"certificate {_subject(cert)} has an unsupported critical extension "
                f"{ext.oid.dotted_string}", Problem.INVALID)
    usage = _extension(cert, ExtensionOID.KEY_USAGE)
    if ca:
        basic = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
        if basic is None or not isinstance(basic.value, x509.BasicConstraints) \
                or not basic.value.ca:
            raise CertificateError(f"certificate {_subject(cert)} signs others but is no CA "
                                   "(basicConstraints)", Problem.INVALID)
        path_length = basic.value.path_length
        if path_length is not None and below > path_length:
            raise CertificateError(f"CA {_subject(cert)} allows {path_length} intermediate(s) "
                                   f"below it, the path has {below}", Problem.INVALID)
        if usage is not None and isinstance(usage.value, x509.KeyUsage) \
                and not usage.value.key_cert_sign:
            raise CertificateError(f"CA {_subject(cert)} may not sign certificates (keyUsage)",
                                   Problem.INVALID)
    elif encipher:
        if usage is not None and isinstance(usage.value, x509.KeyUsage) \
                and not usage.value.key_encipherment:
            raise CertificateError(f"certificate {_subject(cert)} may not encipher keys "
                                   "(keyUsage)", Problem.INVALID)
    elif usage is not None and isinstance(usage.value, x509.KeyUsage) and not (
        usage.value.digital_signature or usage.value.content_commitment
    ):
        raise CertificateError(f"certificate {_subject(cert)} may not sign (keyUsage)",
                               Problem.INVALID)


@functools.lru_cache(maxsize=64)
def _check_anchor(anchor: x509.Certificate, below: int) -> None:
    """:func:`_check_extensions` of a configured trust anchor as the CA above
    ``below`` intermediates. What passed is kept (the anchor and the count
    decide it); a refusal is not, and is worked out and raised again each time."""
    _check_extensions(anchor, ca=True, below=below)


def _check_validity(cert: x509.Certificate, now: datetime.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"certificate {_subject(cert)} is not valid before "
                               f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
                               Problem.INVALID)
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"certificate {_subject(cert)} expired on "
                               f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
                               Problem.INVALID)


def _check_revocation(
    cert: x509.Certificate,
    issuer_key: CertificateIssuerPublicKeyTypes,
    crls: Sequence[x509.CertificateRevocationList],
) -> None:
    """RFC 5280 section 6.3, reduced: any CRL its issuer signed that lists the serial."""
    for crl in crls:
        if crl.issuer != cert.issuer:
            continue
        try:
            signed = crl.is_signature_valid(issuer_key)
        except (TypeError, ValueError):
            signed = False
        if not signed:
            continue
        revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if revoked is None:
            continue
        reason = ""
        try:
            ext = revoked.extensions.get_extension_for_class(x509.CRLReason)
            reason = f" ({ext.value.reason.value})"
        except (x509.ExtensionNotFound, ValueError):
            pass
        raise CertificateError(
            f"certificate {_subject(cert)} revoked on "
            f"{revoked.revocation_date_utc:%Y-%m-%d %H:%M:%S} UTC{reason}", Problem.INVALID)


def _build(
    end_entity: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> list[_Link]:
    path = [_Link(end_entity, False)]
    if any(end_entity == a for a in anchors):
        # The end entity is itself configured as trusted (a pinned self-signed peer).
        return [_Link(end_entity, True)]
    current = end_entity
    while len(path) < MAX_PATH:
        anchor = next((a for a in anchors if _issued_by(current, a)), None)
        if anchor is not None:
            path.append(_Link(anchor, True))
            return path
        used = {id(link.cert) for link in path}
        step = next((c for c in intermediates
                     if id(c) not in used and _issued_by(current, c)), None)
        if step is None:
            break
        path.append(_Link(step, False))
        current = step
    raise CertificateError(
        f"certificate {_subject(end_entity)} not trusted (issuer "
        f'"{dn_text(current.issuer)}" unknown)', Problem.UNTRUSTED)


def verify_path(
    end_entity: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    now: datetime.datetime,
    *,
    encipher: bool = False,
) -> list[x509.Certificate]:
    """The verified path, end entity first and the trust anchor last; with
    ``encipher``, for an end entity whose key the nonce is encrypted to.

    Raises CertificateError naming the first certificate that fails and why.
    """
    path = _build(end_entity, intermediates, anchors)
    for index, link in enumerate(path):
        _check_validity(link.cert, now)
        if link.is_anchor and index == 0:
            _check_extensions(link.cert, ca=False, below=0, encipher=encipher)
        elif link.is_anchor:
            _check_anchor(link.cert, index - 1)
        else:
            _check_extensions(link.cert, ca=index > 0, below=max(index - 1, 0),
                              encipher=encipher)
    for index, link in enumerate(path[:-1]):
        # Every key that could sign the path's certificates can sign a CRL.
        issuer = cast(CertificateIssuerPublicKeyTypes, path[index + 1].cert.public_key())
        _check_revocation(link.cert, issuer, crls)
    return [link.cert for link in path]
