"""Public-key primitives for IKEv1 authentication (RFC 2409 §5.1, §5.2; RFC 4754).

- Signatures (RFC 2409 §5.1): the SIG payload carries a signature over HASH_I /
  HASH_R, which is already a PRF output. For RSA, IKEv1 implementations sign it as
  PKCS#1 v1.5 "type 1" padding around the raw hash with no DigestInfo (strongSwan:
  SIGN_RSA_EMSA_PKCS1_NULL, Libreswan the same). For ECDSA (RFC 4754) HASH_I is
  computed with HMAC over the curve's hash instead of the negotiated PRF (the
  authenticator picks it), signed as the digest (strongSwan: SIGN_ECDSA_WITH_NULL)
  and encoded as r | s, two fixed-length integers (RFC 4754 §7).
- Public key encryption (RFC 2409 §5.2): Ni_b / Nr_b and the ID payload body are
  sent encrypted with the peer's RSA key, PKCS#1 v1.5.

Checked against strongSwan 5.9.8 (tests/unit/test_crypto_pubkey.py): our RSA
signature of charon's HASH_I is byte-identical to charon's SIG payload, and charon's
ECDSA P-256 signature verifies; tests/interop/test_pubkey_strongswan.py
authenticates both ways with RSA, ECDSA P-256 and P-384. RSA encryption against a
peer is not checked yet.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    NoDigestInfo,
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from ikev1d.crypto.errors import CryptoError, DecryptError

__all__ = [
    "ecdsa_sign_hash",
    "ecdsa_verify_hash",
    "pke_decrypt",
    "pke_encrypt",
    "rsa_sign_hash",
    "rsa_verify_hash",
]

# ECDSA over a precomputed digest: cryptography wants a hash object whose length
# matches the digest it is given; any algorithm of that length does (the bytes are
# used as the digest, nothing is hashed).
_PREHASH_BY_LENGTH: dict[int, hashes.HashAlgorithm] = {
    16: hashes.MD5(),  # noqa: S303 - only labels a 16-octet digest, nothing is hashed
    20: hashes.SHA1(),  # noqa: S303 - likewise
    32: hashes.SHA256(),
    48: hashes.SHA384(),
    64: hashes.SHA512(),
}


def rsa_sign_hash(private_key: rsa.RSAPrivateKey, hash_value: bytes) -> bytes:
    """SIG payload data: PKCS#1 v1.5 signature over the raw HASH_I/HASH_R, no DigestInfo."""
    return private_key.sign(hash_value, padding.PKCS1v15(), NoDigestInfo())


def rsa_verify_hash(public_key: rsa.RSAPublicKey, signature: bytes, hash_value: bytes) -> bool:
    """Whether `signature` is the peer's PKCS#1 v1.5 (no DigestInfo) signature of the hash."""
    try:
        # cryptography's stubs lag its runtime, which accepts NoDigestInfo here too
        public_key.verify(signature, hash_value, padding.PKCS1v15(), NoDigestInfo())  # type: ignore[arg-type]
    except (InvalidSignature, ValueError):
        return False
    return True


def _prehash(hash_value: bytes) -> Prehashed:
    algorithm = _PREHASH_BY_LENGTH.get(len(hash_value))
    if algorithm is None:
        raise CryptoError(f"no ECDSA digest of {len(hash_value)} octets")
    return Prehashed(algorithm)


def _coordinate_length(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def ecdsa_sign_hash(private_key: ec.EllipticCurvePrivateKey, hash_value: bytes) -> bytes:
    """ECDSA over HASH_I/HASH_R as the digest; r | s, each the curve's coordinate length."""
    der = private_key.sign(hash_value, ec.ECDSA(_prehash(hash_value)))
    r, s = decode_dss_signature(der)
    n = _coordinate_length(private_key.curve)
    return r.to_bytes(n, "big") + s.to_bytes(n, "big")


def ecdsa_verify_hash(
    public_key: ec.EllipticCurvePublicKey, signature: bytes, hash_value: bytes
) -> bool:
    """Whether `signature` (r | s, RFC 4754 §7) signs the hash with the peer's ECDSA key."""
    n = _coordinate_length(public_key.curve)
    if len(signature) != 2 * n:
        return False
    r, s = int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), hash_value, ec.ECDSA(_prehash(hash_value)))
    except (InvalidSignature, ValueError, CryptoError):
        return False
    return True


def pke_encrypt(public_key: rsa.RSAPublicKey, plaintext: bytes) -> bytes:
    """RSA PKCS#1 v1.5 encryption of a nonce or ID body (RFC 2409 §5.2).

    Uses OpenSSL's CSPRNG for the padding (stated randomness).
    """
    try:
        return public_key.encrypt(plaintext, padding.PKCS1v15())
    except ValueError as exc:
        raise CryptoError(f"cannot RSA-encrypt {len(plaintext)} octets: {exc}") from exc


def pke_decrypt(private_key: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes:
    """RSA PKCS#1 v1.5 decryption (RFC 2409 §5.2).

    A malformed ciphertext raises DecryptError, or, with OpenSSL's implicit
    rejection, yields unrelated bytes: either way authentication then fails, which
    is where the engine must report it (never distinguish the two to the peer).
    """
    if len(ciphertext) != (private_key.key_size + 7) // 8:
        raise DecryptError("RSA ciphertext length differs from the modulus length")
    try:
        return private_key.decrypt(ciphertext, padding.PKCS1v15())
    except ValueError as exc:
        raise DecryptError("RSA decryption failed") from exc
