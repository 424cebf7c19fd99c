"""Authentication with public key encryption (RFC 2409 sections 5.2 and 5.3).

Each side proves it holds its private key by decrypting the nonce the peer
encrypted to its public key: only then can it compute

    SKEYID = prf(hash(Ni_b | Nr_b), CKY-I | CKY-R)
    HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)
    HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b)

and messages 5 and 6 carry only HASH_I / HASH_R. The peer's public key must be
known beforehand (``pubkey``), since message 3 is already encrypted to it.

Section 5.2 (auth method 4), four RSA operations per side:

    HDR, KE, [ HASH(1), ] <IDii_b>PubKey_r, <Ni_b>PubKey_r   -->
                          <--   HDR, KE, <IDir_b>PubKey_i, <Nr_b>PubKey_i

Section 5.3, the revised mode (auth method 5), two RSA operations per side,
and the KE value protected too:

    HDR, [ HASH(1), ] <Ni_b>Pubkey_r, <KE_b>Ke_i, <IDii_b>Ke_i   -->
                          <--   HDR, <Nr_b>PubKey_i, <KE_b>Ke_r, <IDir_b>Ke_r

with Ke_i / Ke_r the negotiated cipher's key derived from Ne_i = prf(Ni_b,
CKY-I) / Ne_r = prf(Nr_b, CKY-R). Message 3 may end with the initiator's
certificate, ``[<Cert-I_b>Ke_i]``: the CERT payload's body (encoding and
certificate) encrypted like KE and ID, its generic header in the clear. ikev1d
sends it when the connection has ``certs``; a responder whose remote side has
``cacerts`` verifies it (chain, validity, CRLs, the ID in it) and encrypts its
nonce to the key it holds, so the initiator's key need not be pinned. A
certificate that is refused still takes the path of one that is accepted until
the proof: message 5 then fails with the notification the signature method
sends for the same refusal (INVALID-CERT-AUTHORITY, INVALID-CERTIFICATE, ...).
Only one that cannot serve at all (malformed, no RSA key) is refused at once,
as a KE that does not decrypt is: who made it knows the nonce.

Section 5.3 asks for every payload after the nonce to be encrypted; the NAT-D
payloads of RFC 3947, which came later, stay in the clear after them, as they
would in any other Main Mode message 3 or 4.

HASH(1) names the key the initiator encrypted to: the hash of the responder's
certificate when ``pubkey`` is a certificate, else of its SubjectPublicKeyInfo.
ikev1d always sends it; as responder it picks its private key by it (the
certificate in ``certs``, or the key itself), and refuses at once a message 3
encrypted to a key it does not hold, unless one of its connections has no
certificate that HASH(1) might name.

RSA encryption is PKCS#1 v1.5, which RFC 2409 implies. Its padding is the
target of Bleichenbacher's attack, where the answer to a forged ciphertext
tells whether its padding was valid. Here a ciphertext that does not decrypt
is never treated differently from one that does: OpenSSL's implicit rejection
turns a bad padding into unrelated bytes, and where it raises instead the
nonce or ID is replaced by random bytes. Either way the exchange continues on
the same path and fails at HASH_I with AUTHENTICATION-FAILED, the answer any
other failed proof gets; no log line before that says why. In the revised
mode a KE that does not decrypt is refused at once, with the same
notification: only a sender that knows the nonce can make one that does.

No other IKEv1 implementation offers these methods (strongSwan, Libreswan and
racoon do not); they are tested ikev1d against ikev1d.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ikev1d.config import Auth, ConnectionConfig, Identity
from ikev1d.crypto import (
    CryptoError,
    IkeCipher,
    cipher_key_length,
    get_group,
    pke_decrypt,
    pke_encrypt,
    pke_hash_1,
    revised_pke_decrypt,
    revised_pke_encrypt,
    revised_pke_key,
    skeyid_pke,
)
from ikev1d.engine import rules
from ikev1d.engine.auth.base import (
    Authenticator,
    Phase1Material,
    XauthRole,
    id_text,
    our_id,
    peer_matching,
)
from ikev1d.engine.auth.pubkey import (
    MAX_RSA_BITS,
    CertificateRefused,
    peer_certificate_key,
)
from ikev1d.engine.ike_sa import Parsed, ProtocolFailure, first
from ikev1d.wire import (
    AuthMethod,
    CertEncoding,
    HashPayload,
    IdPayload,
    KePayload,
    NoncePayload,
    NotifyType,
    Payload,
    PayloadType,
    UnknownPayload,
    WireError,
)

if TYPE_CHECKING:
    from ikev1d.engine.ike_sa import IkeSa

log = logging.getLogger("ikev1d.engine")

#: What a nonce that did not decrypt is replaced with (RFC 2409 section 5:
#: nonces are 8 to 256 octets; ours are 32).
_SUBSTITUTE_NONCE_LENGTH = 32

#: Stands for an ID that did not decrypt to an ID payload: it matches no
#: connection, and the HASH_I that covers the bytes received fails first.
_NO_ID = IdPayload(0, 0, 0, b"")


def _rsa_private(conn: ConnectionConfig | None) -> rsa.RSAPrivateKey:
    key = conn.local.credentials.private_key if conn is not None else None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ProtocolFailure("public key encryption needs our RSA private key")
    return key


def _rsa_public(conn: ConnectionConfig | None) -> rsa.RSAPublicKey:
    key = conn.remote.credentials.pubkey if conn is not None else None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProtocolFailure(
            "public key encryption needs the peer's RSA public key (pubkey): a "
            "connection that verifies the peer's certificate with cacerts can only "
            "respond (RFC 2409 section 5.3: the initiator's certificate comes in "
            "message 3, encrypted to the responder's key)")
    return key


def _verifies_certificates(conn: ConnectionConfig) -> bool:
    """Whether the revised mode takes the peer's key from the certificate it sends
    in message 3 (``cacerts`` on the remote side) rather than a pinned one only."""
    return bool(conn.remote.credentials.cacerts)


def _spki(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _body(payloads: tuple[Payload, ...], payload_type: PayloadType) -> bytes:
    """The body of an opaque payload (its type is decoded by us, not the codec)."""
    for payload in payloads:
        if isinstance(payload, UnknownPayload) and payload.payload_type == payload_type:
            return payload.data
    raise ProtocolFailure(f"missing {payload_type.name} payload", NotifyType.PAYLOAD_MALFORMED)


class PublicKeyEncryptionAuthenticator(Authenticator):
    """What sections 5.2 and 5.3 share; subclasses encrypt messages 3 and 4."""

    revised: ClassVar[bool]

    def __init__(self, sa: IkeSa, material: Phase1Material, xauth: XauthRole) -> None:
        super().__init__(sa, material, xauth)
        #: IDii_b / IDir_b of the peer as decrypted, which HASH_I / HASH_R covers.
        self.peer_id_b = b""
        self.peer_id = _NO_ID
        #: Something in the peer's message 3 or 4 did not decrypt: the proof fails.
        self.undecryptable = False
        #: The key message 4 is encrypted to when it came from the initiator's
        #: certificate (section 5.3), not from ``pubkey``.
        self.peer_key: rsa.RSAPublicKey | None = None
        #: Why the initiator's certificate was refused, told at the proof.
        self.refusal: CertificateRefused | None = None
        #: Subject and chain of the initiator's verified certificate, for the log.
        self.certified = ""
        self.certified_subject: str | None = None

    @classmethod
    def offer_for(cls, conn: ConnectionConfig) -> bool:
        peer_key = (isinstance(conn.remote.credentials.pubkey, rsa.RSAPublicKey)
                    or (cls.revised and _verifies_certificates(conn)))
        return (str(conn.local.auth) == cls.config_name
                and isinstance(conn.local.credentials.private_key, rsa.RSAPrivateKey)
                and peer_key)

    # -- HASH(1): which of our keys the initiator encrypted to -----------------------

    def _hash_1_of_peer(self) -> bytes:
        conn = self.sa.conn
        pinned = conn.remote.credentials.pinned_cert if conn is not None else None
        named = (pinned.public_bytes(Encoding.DER) if pinned is not None
                 else _spki(_rsa_public(conn)))
        return pke_hash_1(self.sa.hash_alg, named)

    def _ours_by_hash_1(self, hash_1: bytes) -> list[ConnectionConfig]:
        """The candidate connections whose certificate or key HASH(1) names."""
        found = []
        for conn in self.sa.candidates:
            key = conn.local.credentials.private_key
            if not isinstance(key, rsa.RSAPrivateKey):
                continue
            names = [_spki(key.public_key())]
            names += [c.public_bytes(Encoding.DER) for c in conn.local.credentials.certs[:1]]
            if any(hmac.compare_digest(pke_hash_1(self.sa.hash_alg, n), hash_1)
                   for n in names):
                found.append(conn)
        return found

    # -- decryption that never tells the peer why it failed ----------------------------

    def _decrypt_nonce(self, ciphertext: bytes) -> bytes:
        try:
            nonce = pke_decrypt(_rsa_private(self.sa.conn), ciphertext)
        except CryptoError:
            nonce = b""  # only without OpenSSL's implicit rejection
        if not rules.NONCE_MIN <= len(nonce) <= rules.NONCE_MAX:
            # Undecryptable, or a length RFC 2409 section 5 forbids: continue as
            # implicit rejection would, so that neither case can be told apart.
            self.undecryptable = True
            return self.sa.ctx.random_bytes(_SUBSTITUTE_NONCE_LENGTH)
        return nonce

    def _read_id(self, id_b: bytes) -> None:
        self.peer_id_b = id_b
        try:
            self.peer_id = IdPayload.decode_body(id_b)
        except WireError:
            self.undecryptable = True
            self.peer_id = _NO_ID

    # -- messages 3 and 4 ----------------------------------------------------------

    def _encrypt(self, plaintext: bytes, what: str) -> bytes:
        key = self.peer_key if self.peer_key is not None else _rsa_public(self.sa.conn)
        try:
            return pke_encrypt(key, plaintext)
        except CryptoError as exc:
            raise ProtocolFailure(f"cannot encrypt our {what} to the peer's key: {exc}") from exc

    def _own(self) -> tuple[bytes, bytes, bytes]:
        """Our (nonce, DH public value, IDii_b / IDir_b) for message 3 or 4."""
        m = self.material
        own_id = our_id(self.sa).encode_body()
        if self.sa.initiator:
            return m.ni, m.g_xi, own_id
        return m.nr, m.g_xr, own_id

    def key_exchange_payloads(self) -> list[Payload]:
        nonce, ke, own_id = self._own()
        out: list[Payload] = []
        if self.sa.initiator:
            out.append(HashPayload(self._hash_1_of_peer()))
        encrypted_nonce = NoncePayload(self._encrypt(nonce, "nonce"))
        if not self.revised:
            return [KePayload(ke), *out,
                    UnknownPayload(PayloadType.ID, self._encrypt(own_id, "ID")),
                    encrypted_nonce]
        cky = self.sa.cky_i if self.sa.initiator else self.sa.cky_r
        bodies = [ke, own_id]
        cert_b = self._own_certificate_body()
        if cert_b is not None:
            bodies.append(cert_b)
        # Section 5.3: each body after the nonce encrypted with Ke_i / Ke_r in
        # this order (the IV chains through them); the headers stay in the clear.
        encrypted = revised_pke_encrypt(self._ephemeral_cipher(nonce, cky), bodies)
        return [*out, encrypted_nonce, KePayload(encrypted[0]),
                UnknownPayload(PayloadType.ID, encrypted[1]),
                *[UnknownPayload(PayloadType.CERT, b) for b in encrypted[2:]]]

    def _own_certificate_body(self) -> bytes | None:
        """Cert-I_b of section 5.3 message 3: the CERT payload's body for our end
        entity certificate (RFC 2408 section 3.9: encoding, then the certificate);
        the responder sends none in message 4."""
        conn = self.sa.conn
        if not self.sa.initiator or conn is None or not conn.local.credentials.certs:
            return None
        der = conn.local.credentials.certs[0].public_bytes(Encoding.DER)
        return bytes((CertEncoding.X509_SIG,)) + der

    def _ephemeral_cipher(self, nonce: bytes, cky: bytes) -> IkeCipher:
        proposal = self.sa.proposal
        if proposal is None:
            raise ProtocolFailure("no proposal")
        length = cipher_key_length(proposal.encryption, proposal.key_length)
        key = revised_pke_key(self.sa.hash_alg, nonce, cky, length)
        return IkeCipher(proposal.encryption, key)

    def read_key_exchange(self, chain: Iterable[Payload]) -> None:
        sa, m = self.sa, self.material
        payloads = tuple(chain)
        if not sa.initiator:
            self._choose_our_key(payloads)
        nonce = self._decrypt_nonce(_body(payloads, PayloadType.NONCE))
        cert_b: bytes | None = None
        if not self.revised:
            ke = first(payloads, KePayload).data
            id_b = self._decrypt_id(_body(payloads, PayloadType.ID))
        else:
            cky = sa.cky_r if sa.initiator else sa.cky_i
            ke, id_b, cert_b = self._decrypt_revised(nonce, cky, payloads)
        self._read_id(id_b)
        if sa.initiator:
            m.g_xr, m.nr = ke, nonce
        else:
            m.g_xi, m.ni = ke, nonce
            self._choose_peer()
            if self.revised:
                self._take_certificate(cert_b)

    def _decrypt_id(self, ciphertext: bytes) -> bytes:
        try:
            return pke_decrypt(_rsa_private(self.sa.conn), ciphertext)
        except CryptoError:
            self.undecryptable = True
            return b""

    def _decrypt_revised(self, nonce: bytes, cky: bytes, payloads: tuple[Payload, ...]
                         ) -> tuple[bytes, bytes, bytes | None]:
        """KE, ID and (message 3) CERT bodies, decrypted in the order they follow
        the nonce."""
        encrypted = [p for p in payloads if isinstance(p, UnknownPayload)
                     and p.payload_type in (PayloadType.KE, PayloadType.ID, PayloadType.CERT)]
        order = [p.payload_type for p in encrypted]
        if len(set(order)) != len(order):
            # Section 5.3 names one of each; the IV chain leaves no room to guess.
            raise ProtocolFailure("more than one encrypted KE, ID or CERT payload",
                                  NotifyType.PAYLOAD_MALFORMED)
        bodies = [p.data for p in encrypted]
        proposal = self.sa.proposal
        try:
            plain = dict(zip(order, revised_pke_decrypt(
                self._ephemeral_cipher(nonce, cky), bodies), strict=True))
            if proposal is None or len(plain[PayloadType.KE]) != get_group(
                    proposal.dh_group).public_length:
                raise CryptoError("KE of the wrong length")
        except CryptoError as exc:
            # Only who encrypted the nonce with our public key knows Ke_i, so
            # this refusal tells the sender nothing it does not know: whether
            # our RSA decryption met a valid padding stays hidden (implicit
            # rejection turns a bad one into a nonce nobody knows).
            raise ProtocolFailure(
                "authentication failed: the peer's KE does not decrypt with the key "
                "derived from its nonce (wrong public key pinned on either side?)",
                NotifyType.AUTHENTICATION_FAILED) from exc
        return plain[PayloadType.KE], plain[PayloadType.ID], plain.get(PayloadType.CERT)

    def _take_certificate(self, cert_b: bytes | None) -> None:
        """As responder in the revised mode: the key to encrypt message 4 to, from
        the initiator's certificate when our connection verifies certificates.
        A refusal is kept for the proof (see the module's docstring)."""
        conn = self.sa.conn
        if conn is None or not _verifies_certificates(conn):
            # The peer's key is pinned (pubkey): its certificate adds nothing.
            return
        certs: list[x509.Certificate] = []
        if cert_b is not None:
            certs.append(self._end_entity(cert_b))
        elif conn.remote.credentials.pubkey is None:
            raise ProtocolFailure(
                "authentication failed: the peer sent no certificate in message 3 and no "
                f"pubkey is configured for connection {conn.name}",
                NotifyType.CERTIFICATE_UNAVAILABLE)
        now = self.sa.ctx.wall_time()
        if now is None:
            raise ProtocolFailure("authentication failed: no wall clock to check "
                                  "certificate validity with", NotifyType.AUTHENTICATION_FAILED)
        if certs:
            key = certs[0].public_key()
            if isinstance(key, rsa.RSAPublicKey):
                self.peer_key = key
        # Like the signature method, settle on the first connection whose CAs and
        # identity the certificate satisfies (its candidates share our key).
        peer = Identity.from_id_payload(self.peer_id)
        refusals: list[CertificateRefused] = []
        for candidate in [conn] + [c for c in self.sa.candidates
                                   if c is not conn and _verifies_certificates(c)]:
            try:
                verified, subject, chain = peer_certificate_key(
                    candidate, peer, certs, now, encipher=True)
            except CertificateRefused as refused:
                refusals.append(refused)
                continue
            except ValueError:
                # cryptography parses some extensions only when they are used.
                refusals.append(CertificateRefused("the peer sent a malformed certificate",
                                                   NotifyType.INVALID_CERTIFICATE))
                continue
            if isinstance(verified, rsa.RSAPublicKey):
                self.peer_key = verified
            self.certified = f" ({subject}{chain})"
            self.certified_subject = subject.strip('"')
            self.sa.conn = candidate
            self.sa.candidates = [candidate] + [c for c in self.sa.candidates
                                                if c is not candidate]
            return
        self.refusal = refusals[0]

    def _end_entity(self, cert_b: bytes) -> x509.Certificate:
        """The certificate in Cert-I_b. One that cannot carry message 4 is refused
        at once: it decrypted with Ke_i, so its sender knows the nonce and learns
        nothing about our RSA decryption."""
        def malformed(why: str) -> ProtocolFailure:
            return ProtocolFailure(f"authentication failed: the certificate in message 3 "
                                   f"{why}", NotifyType.INVALID_CERTIFICATE)
        if not cert_b or cert_b[0] != CertEncoding.X509_SIG:
            raise malformed("is not an X.509 signature certificate (RFC 2408 section 3.9 "
                            "encoding 4)")
        try:
            cert = x509.load_der_x509_certificate(cert_b[1:])
            key = cert.public_key()
        except ValueError:
            raise malformed("is malformed") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise ProtocolFailure(
                "authentication failed: the certificate in message 3 holds no RSA key "
                "(RFC 2409 section 5.3 encrypts to it)", NotifyType.INVALID_KEY_INFORMATION)
        if key.key_size > MAX_RSA_BITS:
            # Bounds the work one unauthenticated message can cause.
            raise ProtocolFailure(
                f"authentication failed: the certificate in message 3 holds an RSA key of "
                f"{key.key_size} bits (at most {MAX_RSA_BITS})",
                NotifyType.INVALID_KEY_INFORMATION)
        return cert

    def _choose_our_key(self, payloads: tuple[Payload, ...]) -> None:
        """As responder, keep the connections configured for this method, and
        with HASH(1) those holding the key it names."""
        sa = self.sa
        configured = [c for c in sa.candidates if self.offer_for(c)]
        if not configured:
            raise ProtocolFailure(f"no connection is configured for {self.name}")
        sa.candidates, sa.conn = configured, configured[0]
        hashes = [p for p in payloads if isinstance(p, HashPayload)]
        if not hashes:
            return
        ours = self._ours_by_hash_1(hashes[0].data)
        if not ours and not all(c.local.credentials.certs for c in self.sa.candidates):
            # It may name a certificate of ours that we were not given: decide
            # by the proof, as without HASH(1).
            return
        if not ours:
            raise ProtocolFailure(
                "authentication failed: the peer encrypted to a key we do not hold "
                "(HASH(1) names none of our certificates or keys)",
                NotifyType.AUTHENTICATION_FAILED)
        self.sa.candidates = ours
        self.sa.conn = ours[0]

    def _choose_peer(self) -> None:
        """As responder, the connection whose peer identity was sent, so that
        message 4 goes out encrypted to that peer's key. Before the proof, an ID
        that matches none must not be answered differently: the first candidate's
        key is used and HASH_I fails."""
        sa = self.sa
        matching = peer_matching(sa.candidates, self.peer_id)
        if not matching:
            self.undecryptable = True
            return
        key = _spki(_rsa_private(sa.conn).public_key())
        same_key = [c for c in matching
                    if _spki(_rsa_private(c).public_key()) == key] or matching
        sa.candidates = same_key
        sa.conn = same_key[0]

    # -- SKEYID and messages 5 and 6 ------------------------------------------------

    def skeyid(self) -> bytes:
        sa, m = self.sa, self.material
        return skeyid_pke(sa.hash_alg, sa.hash_alg, m.ni, m.nr, sa.cky_i, sa.cky_r)

    def proof_payloads(self) -> list[Payload]:
        own_id = our_id(self.sa).encode_body()
        return [HashPayload(self.proof_hash(self.sa.initiator, own_id))]

    def verify_proof(self, parsed: Parsed, notify: NotifyType | None) -> IdPayload:
        received = first(parsed.payloads, HashPayload).data
        of_initiator = not self.sa.initiator
        expected = self.proof_hash(of_initiator, self.peer_id_b)
        verified = hmac.compare_digest(expected, received)
        if self.refusal is not None:
            # The certificate's refusal is what the peer's administrator can
            # act on, as with signatures, where the chain is checked first.
            refusal = self.refusal.refusal
            raise ProtocolFailure(f"authentication failed: {refusal.reason}",
                                  refusal.notify if notify is not None else None)
        if not verified or self.undecryptable:
            which = "HASH_I" if of_initiator else "HASH_R"
            raise ProtocolFailure(
                f"authentication failed: {which} does not verify (the peer's nonce or ID "
                "did not decrypt with our private key, or it holds another private key)",
                notify,
            )
        if self.certified:
            self.sa.peer_certificate = self.certified_subject
            log.info("peer %s authenticated by its certificate%s", id_text(self.peer_id),
                     self.certified, extra=self.sa.log_extra)
        return self.peer_id

    def unreadable_message(self, number: int, error: ProtocolFailure) -> str:
        return (f"authentication failed: cannot read message {number} ({error}); "
                "the nonces did not decrypt: wrong public key pinned (pubkey) on either side?")

    def no_answer(self) -> str:
        return ("authentication failed: peer did not answer our HASH_I (did it decrypt our "
                "nonce? check the public key pinned for it)")

    def unreadable_answer(self) -> str:
        return ("authentication failed: the peer's encrypted answer to our HASH_I cannot be "
                "read (it did not decrypt our nonce: wrong public key pinned?)")


class RsaEncryptionAuthenticator(PublicKeyEncryptionAuthenticator):
    """RFC 2409 section 5.2: nonce and ID encrypted with the peer's public key."""

    method = AuthMethod.RSA_ENC
    name = "rsa-encryption"
    config_name = str(Auth.RSA_ENCRYPTION)
    revised = False


class RevisedRsaEncryptionAuthenticator(PublicKeyEncryptionAuthenticator):
    """RFC 2409 section 5.3: the nonce encrypted with the peer's public key, KE and
    ID with a key derived from the nonce."""

    method = AuthMethod.RSA_REV_ENC
    name = "rsa-encryption-revised"
    config_name = str(Auth.RSA_ENCRYPTION_REVISED)
    revised = True
