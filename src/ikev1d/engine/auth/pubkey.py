"""Authentication with signatures (RFC 2409 section 5.1; ECDSA: RFC 4754).

    SKEYID = prf(Ni_b | Nr_b, g^xy)
    HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)
    HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b)

Messages 3 and 4 add certificate requests (CR, RFC 2408 section 3.10) naming
the CAs we trust: strongSwan sends its certificate only when asked. Messages 5
and 6 carry the sender's ID, its certificates (CERT, end entity first, then
intermediates) and SIG, the signature of HASH_I or HASH_R:

- RSA (method 3): PKCS#1 v1.5 over the raw hash, without DigestInfo, as the
  IKEv1 implementations in the field sign and verify it;
- ECDSA (methods 9, 10, 11 for P-256, P-384, P-521): HASH_I/HASH_R computed
  with HMAC over the curve's hash (SHA-256, SHA-384, SHA-512; RFC 4754) instead
  of the negotiated PRF, signed as the digest, the signature as r | s of fixed
  length (RFC 4754 section 7).

The peer's certificate is verified against the connection's ``cacerts`` and
``crls`` (or compared with a pinned ``pubkey``), and its ID must be the
certificate's subject or one of its subjectAltNames (RFC 4945 section 3.1).
SKEYID does not depend on who the peer is, so the responder settles on a
connection only after message 5: the one whose identity and CAs the peer
satisfies.
"""

from __future__ import annotations

import abc
import datetime
import logging
from dataclasses import dataclass
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ikev1d.config import Auth, ConnectionConfig, Identity
from ikev1d.config.credentials import PrivateKey, PublicKey
from ikev1d.crypto import (
    ecdsa_sign_hash,
    ecdsa_verify_hash,
    rsa_sign_hash,
    rsa_verify_hash,
    skeyid_sig,
)
from ikev1d.crypto.certs import (
    MAX_PATH,
    CertificateError,
    Problem,
    anchor_subject,
    anchor_text,
    dn_text,
    same_public_key,
    verify_path,
)
from ikev1d.engine.auth.base import Authenticator, id_text, our_id, peer_matches
from ikev1d.engine.ike_sa import Parsed, ProtocolFailure, first
from ikev1d.errors import Ikev1dError
from ikev1d.text import printable
from ikev1d.wire import (
    AuthMethod,
    CertEncoding,
    CertPayload,
    CrPayload,
    IdPayload,
    NotifyType,
    Payload,
    PayloadType,
    SigPayload,
)

log = logging.getLogger("ikev1d.engine")

#: Larger RSA keys are refused: verifying with them costs more than any
#: deployment needs, and the peer is not authenticated yet.
MAX_RSA_BITS = 8192

_NOTIFY_BY_PROBLEM = {
    Problem.UNTRUSTED: NotifyType.INVALID_CERT_AUTHORITY,
    Problem.INVALID: NotifyType.INVALID_CERTIFICATE,
}


@dataclass(frozen=True)
class _Refusal:
    """Why one candidate connection does not accept the peer's proof."""

    reason: str
    notify: NotifyType


class CertificateRefused(Ikev1dError):
    """The peer's certificate (or its absence) does not satisfy a connection."""

    def __init__(self, reason: str, notify: NotifyType) -> None:
        super().__init__(reason)
        self.refusal = _Refusal(reason, notify)


def peer_certificate_key(
    conn: ConnectionConfig,
    peer: Identity,
    certs: list[x509.Certificate],
    now: datetime.datetime,
    *,
    encipher: bool = False,
    subject_text: str | None = None,
) -> tuple[PublicKey, str, str]:
    """The key the peer must have signed (or, RFC 2409 section 5.3, encrypted)
    with for ``conn``, who it is, and the rest of the verified chain for the
    log. CertificateRefused says why ``certs`` do not satisfy ``conn``.
    ``encipher``: the key is to encrypt to (keyUsage keyEncipherment);
    ``subject_text``: ``dn_text`` of the end entity's subject, if the caller has it."""
    credentials = conn.remote.credentials
    if not certs:
        if credentials.pubkey is None:
            raise CertificateRefused("the peer sent no certificate and no pubkey is configured "
                                     f"for connection {conn.name}",
                           NotifyType.CERTIFICATE_UNAVAILABLE)
        pinned = credentials.pinned_cert
        if pinned is not None and not peer.in_certificate(pinned):
            raise CertificateRefused(
                f'ID "{printable(str(peer))}" not in the pinned certificate '
                f'"{dn_text(pinned.subject)}"', NotifyType.INVALID_ID_INFORMATION)
        return credentials.pubkey, "the pinned key", ""
    end_entity = certs[0]
    if subject_text is None:
        subject_text = dn_text(end_entity.subject)
    subject = f'"{subject_text}"'
    if credentials.pubkey is not None and not same_public_key(end_entity, credentials.pubkey):
        raise CertificateRefused(f"certificate {subject} does not hold the pinned pubkey",
                       NotifyType.INVALID_CERTIFICATE)
    chain = ", pinned"
    if credentials.cacerts or credentials.pubkey is None:
        try:
            path = verify_path(end_entity, certs[1:], credentials.cacerts,
                               credentials.crls, now, encipher=encipher)
        except CertificateError as exc:
            raise CertificateRefused(str(exc), _NOTIFY_BY_PROBLEM[exc.problem]) from None
        chain = "".join(f' <- "{dn_text(c.subject)}"' for c in path[1:-1])
        if len(path) > 1:
            chain += f' <- "{anchor_text(path[-1])}"'
    if not peer.in_certificate(end_entity):
        raise CertificateRefused(f'ID "{printable(str(peer))}" not in certificate {subject}',
                       NotifyType.INVALID_ID_INFORMATION)
    try:
        key = end_entity.public_key()
    except ValueError:
        raise CertificateRefused(f"certificate {subject} holds an unreadable key",
                       NotifyType.INVALID_CERTIFICATE) from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CertificateRefused(f"certificate {subject} holds neither an RSA nor an ECDSA key",
                       NotifyType.INVALID_KEY_INFORMATION)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size > MAX_RSA_BITS:
        # Bounds the work one unauthenticated message can cause.
        raise CertificateRefused(f"certificate {subject} holds an RSA key of {key.key_size} bits "
                       f"(at most {MAX_RSA_BITS})", NotifyType.INVALID_KEY_INFORMATION)
    return key, subject, chain


class SignatureAuthenticator(Authenticator):
    """What RSA and ECDSA signatures share; subclasses name the key type."""

    config_name = "pubkey"
    key_name: ClassVar[str]

    # -- which key fits which method ---------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def fits(cls, key: PrivateKey | PublicKey) -> bool:
        """Whether the key is of the type (and curve) this method signs with."""

    @classmethod
    def offer_for(cls, conn: ConnectionConfig) -> bool:
        key = conn.local.credentials.private_key
        return conn.local.auth is Auth.PUBKEY and key is not None and cls.fits(key)

    @abc.abstractmethod
    def sign(self, key: PrivateKey, hash_value: bytes) -> bytes:
        """SIG payload data over HASH_I or HASH_R."""

    @abc.abstractmethod
    def verify(self, key: PublicKey, signature: bytes, hash_value: bytes) -> bool:
        """Whether ``signature`` signs the hash with ``key``."""

    # -- messages 3 and 4: certificate requests ---------------------------------------

    def _ca_subjects(self) -> list[bytes]:
        """The subject DNs (DER) of our initiator's connection's CAs, or, as
        responder, of the CAs of every connection the peer may still turn out to
        belong to; each once."""
        sa = self.sa
        conns = [sa.conn] if sa.initiator else list(sa.candidates)
        seen: dict[bytes, None] = {}
        for conn in conns:
            if conn is None or conn.remote.auth is not Auth.PUBKEY:
                continue
            for ca in conn.remote.credentials.cacerts:
                seen[anchor_subject(ca)] = None
        return list(seen)

    def key_exchange_payloads(self) -> list[Payload]:
        requests: list[Payload] = [
            CrPayload(CertEncoding.X509_SIG, subject) for subject in self._ca_subjects()
        ]
        return super().key_exchange_payloads() + requests

    # -- SKEYID and messages 5 and 6 ------------------------------------------------------

    def skeyid(self) -> bytes:
        m = self.material
        return skeyid_sig(self.sa.hash_alg, m.ni, m.nr, m.g_xy)

    def proof_payloads(self) -> list[Payload]:
        sa = self.sa
        conn = sa.conn
        if conn is None:
            raise ProtocolFailure("no connection to authenticate as")
        credentials = conn.local.credentials
        key = credentials.private_key
        if key is None or not self.fits(key):
            raise ProtocolFailure(
                f"authentication failed: connection {conn.name} has no {self.key_name} "
                f"private key for {AuthMethod(self.method).name}",
                NotifyType.AUTHENTICATION_FAILED)
        own = our_id(sa)
        signature = self.sign(key, self.proof_hash(sa.initiator, own.encode_body()))
        certs: list[Payload] = [
            CertPayload(CertEncoding.X509_SIG, cert.public_bytes(Encoding.DER))
            for cert in credentials.certs
        ]
        return [own, *certs, SigPayload(signature)]

    def verify_proof(self, parsed: Parsed, notify: NotifyType | None) -> IdPayload:
        sa = self.sa
        payloads = parsed.payloads
        peer_id = first(payloads, IdPayload)
        signature = first(payloads, SigPayload).data
        of_initiator = not sa.initiator
        expected = self.proof_hash(of_initiator, parsed.body_of(PayloadType.ID))

        def failure(reason: str, code: NotifyType) -> ProtocolFailure:
            return ProtocolFailure(f"authentication failed: {reason}",
                                   code if notify is not None else None)

        try:
            certs = self._peer_certificates(payloads)
        except CertificateRefused as refused:
            raise failure(refused.refusal.reason, refused.refusal.notify) from None
        if sa.initiator:
            conns = [sa.conn] if sa.conn is not None else []
        else:
            # Only connections whose own key can answer with this method.
            conns = [c for c in sa.candidates if self.offer_for(c)]
        matching = [c for c in conns if peer_matches(c.remote.id, peer_id)]
        if not matching:
            wanted = ", ".join(str(c.remote.id) for c in conns) or "none"
            raise failure(f"peer identity {id_text(peer_id)} is not the configured one "
                          f"({wanted})", NotifyType.INVALID_ID_INFORMATION)
        now = sa.ctx.wall_time()
        if now is None:
            raise failure("no wall clock to check certificate validity with",
                          NotifyType.AUTHENTICATION_FAILED)
        peer = Identity.from_id_payload(peer_id)
        # The subject's text once: for each candidate's messages and the SA's status.
        subject_text = dn_text(certs[0].subject) if certs else None
        refusals: list[_Refusal] = []
        accepted: list[ConnectionConfig] = []
        subject, chain = "", ""
        for conn in matching:
            try:
                key, subject, chain = peer_certificate_key(conn, peer, certs, now,
                                                           subject_text=subject_text)
                if not self.fits(key):
                    raise CertificateRefused(f"the peer's key is not a {self.key_name} key "
                                             f"({AuthMethod(self.method).name} was negotiated)",
                                   NotifyType.INVALID_KEY_INFORMATION)
                if not self.verify(key, signature, expected):
                    which = "HASH_I" if of_initiator else "HASH_R"
                    raise CertificateRefused(f"signature of {which} by {subject} does not verify",
                                             NotifyType.AUTHENTICATION_FAILED)
            except CertificateRefused as refused:
                refusals.append(refused.refusal)
                continue
            except ValueError:
                # cryptography parses some parts of a certificate only when
                # they are used: a malformed one shows here.
                refusals.append(_Refusal("the peer sent a malformed certificate",
                                         NotifyType.INVALID_CERTIFICATE))
                continue
            accepted.append(conn)
        if not accepted:
            first_refusal = refusals[0]
            raise failure(first_refusal.reason, first_refusal.notify)
        if not sa.initiator:
            # Main Mode settles on the first of these (RFC 2409 section 5: the
            # identity is known only now).
            sa.candidates = accepted
        pinned = accepted[0].remote.credentials.pinned_cert
        if subject_text is None and pinned is not None:
            subject_text = dn_text(pinned.subject)
        sa.peer_certificate = subject_text
        log.info("peer %s authenticated by %s signature (%s%s)", id_text(peer_id),
                 self.key_name, subject, chain, extra=sa.log_extra)
        return peer_id

    def _peer_certificates(self, payloads: tuple[Payload, ...]) -> list[x509.Certificate]:
        certs: list[x509.Certificate] = []
        for payload in payloads:
            if not isinstance(payload, CertPayload):
                continue
            if payload.encoding != CertEncoding.X509_SIG:
                # Debug only: the peer is not authenticated yet.
                log.debug("ignoring a CERT payload of encoding %s",
                         CertEncoding(payload.encoding).name, extra=self.sa.log_extra)
                continue
            if len(certs) >= MAX_PATH:
                break
            try:
                certs.append(x509.load_der_x509_certificate(payload.data))
            except ValueError:
                raise CertificateRefused("the peer sent a malformed certificate",
                                         NotifyType.INVALID_CERTIFICATE) from None
        return certs

    # -- what a failure means, for the log --------------------------------------------

    def unreadable_message(self, number: int, error: ProtocolFailure) -> str:
        # SKEYID does not depend on credentials here: garbage means damage or a bug.
        return f"authentication failed: cannot read message {number} ({error})"

    def no_answer(self) -> str:
        return ("authentication failed: peer did not answer our ID/CERT/SIG (does it "
                "trust our certificate's CA?)")

    def unreadable_answer(self) -> str:
        return "authentication failed: the peer's encrypted answer to our ID/SIG cannot be read"


class RsaSignatureAuthenticator(SignatureAuthenticator):
    method = AuthMethod.RSA_SIG
    name = "pubkey-rsa"
    key_name = "RSA"

    @classmethod
    def fits(cls, key: PrivateKey | PublicKey) -> bool:
        return isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey)

    def sign(self, key: PrivateKey, hash_value: bytes) -> bytes:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ProtocolFailure("not an RSA key")
        return rsa_sign_hash(key, hash_value)

    def verify(self, key: PublicKey, signature: bytes, hash_value: bytes) -> bool:
        return isinstance(key, rsa.RSAPublicKey) and rsa_verify_hash(key, signature, hash_value)


class _EcdsaAuthenticator(SignatureAuthenticator):
    curve: ClassVar[type[ec.EllipticCurve]]
    #: The hash that belongs to the curve (RFC 4754 section 3).
    curve_hash: ClassVar[str]
    name = "pubkey-ecdsa"

    def proof_prf(self) -> str:
        # RFC 4754 ties the hash to the curve: HASH_I and HASH_R are computed
        # with HMAC over the curve's hash, keyed with SKEYID (which itself comes
        # from the negotiated PRF), and signed as they are. strongSwan does the
        # same; with another hash its signatures do not verify.
        return self.curve_hash

    @classmethod
    def fits(cls, key: PrivateKey | PublicKey) -> bool:
        return isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) \
            and isinstance(key.curve, cls.curve)

    def sign(self, key: PrivateKey, hash_value: bytes) -> bytes:
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProtocolFailure("not an ECDSA key")
        return ecdsa_sign_hash(key, hash_value)

    def verify(self, key: PublicKey, signature: bytes, hash_value: bytes) -> bool:
        return isinstance(key, ec.EllipticCurvePublicKey) and ecdsa_verify_hash(
            key, signature, hash_value)


class Ecdsa256Authenticator(_EcdsaAuthenticator):
    curve_hash = "sha256"
    method = AuthMethod.ECDSA_256
    curve = ec.SECP256R1
    key_name = "ECDSA P-256"


class Ecdsa384Authenticator(_EcdsaAuthenticator):
    curve_hash = "sha384"
    method = AuthMethod.ECDSA_384
    curve = ec.SECP384R1
    key_name = "ECDSA P-384"


class Ecdsa521Authenticator(_EcdsaAuthenticator):
    curve_hash = "sha512"
    method = AuthMethod.ECDSA_521
    curve = ec.SECP521R1
    key_name = "ECDSA P-521"
