"""Certificates, keys and CRLs named by the configuration, read when it loads.

The engine never opens a file: the loader reads what ``certs``,
``private_key``, ``cacerts``, ``crls`` and ``pubkey`` name into a
:class:`Credentials` held by the connection, so a ``reload`` re-reads them.
PEM (one or several objects per file) and DER are both accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ikev1d.errors import Ikev1dError

__all__ = [
    "Credentials",
    "CredentialsError",
    "PrivateKey",
    "PublicKey",
    "load_certificates",
    "load_crls",
    "load_private_key",
    "load_public_key",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

#: The curves of RFC 4754 (auth methods 9, 10, 11).
CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_CRL = b"-----BEGIN X509 CRL-----"


class CredentialsError(Ikev1dError):
    """A credential file that cannot be used; the message says why."""


@dataclass(frozen=True, eq=False)
class Credentials:
    """One side's credentials, parsed.

    Local side: ``certs`` (ours, end entity first) and ``private_key``.
    Remote side: ``cacerts`` (trust anchors), ``crls`` and ``pubkey`` (the
    peer's key, pinned; ``pinned_cert`` when it was given as a certificate).
    """

    certs: tuple[x509.Certificate, ...] = ()
    private_key: PrivateKey | None = None
    cacerts: tuple[x509.Certificate, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    pubkey: PublicKey | None = None
    pinned_cert: x509.Certificate | None = None


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror or exc}") from None


def _usable_key(key: object, path: str) -> None:
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise CredentialsError(f"{path}: RSA key of {key.key_size} bits is too short")
        return
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, CURVES):
            raise CredentialsError(f"{path}: curve {key.curve.name} is not usable in IKEv1 "
                                   "(RFC 4754: P-256, P-384, P-521)")
        return
    raise CredentialsError(f"{path}: {type(key).__name__.lstrip('_')} keys are not usable "
                           "in IKEv1 (RSA or ECDSA P-256/384/521)")


def load_certificates(path: str) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM file, or the one of a DER file."""
    data = _read(path)
    try:
        certs = (x509.load_pem_x509_certificates(data) if _PEM_CERT in data
                 else [x509.load_der_x509_certificate(data)])
    except ValueError as exc:
        raise CredentialsError(f"{path}: not an X.509 certificate (PEM or DER): {exc}") from None
    for cert in certs:
        try:
            _usable_key(cert.public_key(), path)
        except (ValueError, x509.UnsupportedGeneralNameType) as exc:
            raise CredentialsError(f"{path}: unreadable public key: {exc}") from None
    return tuple(certs)


def load_crls(path: str) -> tuple[x509.CertificateRevocationList, ...]:
    data = _read(path)
    try:
        if _PEM_CRL not in data:
            return (x509.load_der_x509_crl(data),)
        crls: list[x509.CertificateRevocationList] = []
        for block in data.split(_PEM_CRL)[1:]:
            crls.append(x509.load_pem_x509_crl(_PEM_CRL + block))
        return tuple(crls)
    except ValueError as exc:
        raise CredentialsError(f"{path}: not a CRL (PEM or DER): {exc}") from None


def load_private_key(path: str, passphrase: bytes | None = None) -> PrivateKey:
    """A PEM or DER private key (PKCS#1, SEC1 or PKCS#8), encrypted with
    ``passphrase`` or not encrypted at all."""
    data = _read(path)
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=passphrase)
        else:
            key = serialization.load_der_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise CredentialsError(f"{path}: the private key is encrypted: give its "
                                   "passphrase in a [secrets.<name>] table with type = "
                                   "\"private_key\" that lists this file") from None
        raise CredentialsError(f"{path}: the private key is not encrypted, but a "
                               "passphrase is configured for it") from None
    except ValueError as exc:
        if passphrase is not None:
            raise CredentialsError(f"{path}: cannot decrypt the private key (wrong "
                                   "passphrase?) or it is no private key") from None
        raise CredentialsError(f"{path}: not a private key (PEM or DER): {exc}") from None
    _usable_key(key, path)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CredentialsError(f"{path}: not an RSA or ECDSA key")
    return key


def load_public_key(path: str) -> tuple[PublicKey, x509.Certificate | None]:
    """A pinned peer key: a certificate (PEM/DER) or a public key (PEM/DER)."""
    data = _read(path)
    cert: x509.Certificate | None = None
    try:
        if _PEM_CERT in data:
            cert = x509.load_pem_x509_certificate(data)
            key: object = cert.public_key()
        elif b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            try:
                cert = x509.load_der_x509_certificate(data)
                key = cert.public_key()
            except ValueError:
                key = serialization.load_der_public_key(data)
    except ValueError as exc:
        raise CredentialsError(f"{path}: not a certificate or public key: {exc}") from None
    _usable_key(key, path)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CredentialsError(f"{path}: not an RSA or ECDSA key")
    return key, cert
