"""Test certificates made on the fly with ``cryptography``: CAs, end entities, CRLs.

Nothing here is meant for production: keys are generated per test run and
written unencrypted into the test's directory.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_CURVES: dict[str, ec.EllipticCurve] = {
    "p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1(),
}
_NAME_OIDS = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME,
              "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME}


def new_key(kind: str = "rsa") -> PrivateKey:
    """``rsa`` (2048 bits), ``rsa4096``, ``p256``, ``p384`` or ``p521``."""
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:] or 2048))
    return ec.generate_private_key(_CURVES[kind])


def dn(text: str) -> x509.Name:
    """"C=DE, O=X, CN=gw" (most significant first) as an X.501 Name."""
    attrs = []
    for part in text.split(","):
        key, _, value = part.strip().partition("=")
        attrs.append(x509.NameAttribute(_NAME_OIDS[key.strip()], value.strip()))
    return x509.Name(attrs)


@dataclass
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def subject(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in _pairs(self.cert.subject))

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def pkcs12(self, name: str, password: str) -> bytes:
        """Certificate and key as PKCS#12 with friendly name `name` (for NSS's pk12util)."""
        return pkcs12.serialize_key_and_certificates(
            name.encode(), self.key, self.cert, None,
            serialization.BestAvailableEncryption(password.encode()))

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """``stem.cert.pem`` and ``stem.key.pem`` in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{stem}.cert.pem", folder / f"{stem}.key.pem"
        cert_path.write_bytes(self.cert_pem())
        key_path.write_bytes(self.key_pem())
        key_path.chmod(0o600)
        return cert_path, key_path


def _pairs(name: x509.Name) -> list[tuple[str, str]]:
    short = {v: k for k, v in _NAME_OIDS.items()}
    return [(short.get(a.oid, a.oid.dotted_string), str(a.value)) for a in name]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def issue(
    subject: str,
    issuer: Issued | None = None,
    *,
    key: str = "rsa",
    ca: bool = False,
    sans: tuple[str, ...] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    serial: int | None = None,
    key_usage: bool = True,
    private_key: PrivateKey | None = None,
    key_encipherment: bool = False,
) -> Issued:
    """A certificate: self-signed without ``issuer``. SANs: "dns:x", "email:x", "ip:x".

    `private_key` certifies an existing key (several certificates for one key pair)
    instead of a new one of kind `key`.
    """
    private = private_key if private_key is not None else new_key(key)
    now = _now()
    name = dn(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(private.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(hours=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if key_usage:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False,
            key_encipherment=key_encipherment and not ca,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    names: list[x509.GeneralName] = []
    for san in sans:
        kind, _, value = san.partition(":")
        if kind == "dns":
            names.append(x509.DNSName(value))
        elif kind == "email":
            names.append(x509.RFC822Name(value))
        else:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    signer = issuer.key if issuer else private
    cert = builder.sign(signer, hashes.SHA256())
    return Issued(cert, private)


def crl(issuer: Issued, revoked_serials: tuple[int, ...]) -> x509.CertificateRevocationList:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - datetime.timedelta(minutes=5))
        .next_update(now + datetime.timedelta(days=7))
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - datetime.timedelta(minutes=1))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build())
    return builder.sign(issuer.key, hashes.SHA256())
