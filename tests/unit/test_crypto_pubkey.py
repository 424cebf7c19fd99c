"""ikev1d.crypto.pubkey: IKEv1 signature and public-key-encryption primitives.

The RSA signature encoding is checked by redoing the RSA operation with Python
integers and reading the PKCS#1 v1.5 block: 00 01 FF..FF 00 || HASH, no DigestInfo
(what strongSwan calls SIGN_RSA_EMSA_PKCS1_NULL).
"""

from __future__ import annotations

from functools import cache

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ikev1d.crypto import CryptoError, DecryptError
from ikev1d.crypto.pubkey import (
    ecdsa_sign_hash,
    ecdsa_verify_hash,
    pke_decrypt,
    pke_encrypt,
    rsa_sign_hash,
    rsa_verify_hash,
)


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("length", [16, 20, 32, 48, 64])
def test_rsa_signature_is_pkcs1_type1_without_digestinfo(length: int) -> None:
    key = rsa_key()
    hash_value = bytes(range(length))
    signature = rsa_sign_hash(key, hash_value)
    numbers = key.public_key().public_numbers()
    k = (numbers.n.bit_length() + 7) // 8
    block = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(k, "big")
    assert block == b"\x00\x01" + b"\xff" * (k - 3 - length) + b"\x00" + hash_value
    assert rsa_verify_hash(key.public_key(), signature, hash_value)
    assert not rsa_verify_hash(key.public_key(), signature, bytes(length))
    assert not rsa_verify_hash(key.public_key(), signature[:-1] + b"\x00", hash_value)
    assert not rsa_verify_hash(key.public_key(), b"short", hash_value)


@pytest.mark.parametrize(
    ("curve", "length"), [(ec.SECP256R1(), 32), (ec.SECP384R1(), 48), (ec.SECP521R1(), 66)]
)
def test_ecdsa_signature_r_s_fixed_length(curve: ec.EllipticCurve, length: int) -> None:
    key = ec.generate_private_key(curve)
    for hash_value in (b"\x11" * 20, b"\x22" * 32, b"\x33" * 64):
        signature = ecdsa_sign_hash(key, hash_value)
        assert len(signature) == 2 * length
        assert ecdsa_verify_hash(key.public_key(), signature, hash_value)
        assert not ecdsa_verify_hash(key.public_key(), signature, b"\x44" * len(hash_value))
        assert not ecdsa_verify_hash(key.public_key(), signature[1:], hash_value)
    with pytest.raises(CryptoError):
        ecdsa_sign_hash(key, b"\x00" * 17)


def test_pke_roundtrip_and_errors() -> None:
    key = rsa_key()
    nonce = bytes(range(32))
    ciphertext = pke_encrypt(key.public_key(), nonce)
    assert len(ciphertext) == 256 and ciphertext != pke_encrypt(key.public_key(), nonce)
    assert pke_decrypt(key, ciphertext) == nonce
    with pytest.raises(DecryptError):
        pke_decrypt(key, ciphertext[:-1])
    with pytest.raises(CryptoError):
        pke_encrypt(key.public_key(), bytes(250))
    # A tampered ciphertext either fails or (OpenSSL implicit rejection) decrypts to
    # something else; it never yields the nonce.
    tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    try:
        assert pke_decrypt(key, tampered) != nonce
    except DecryptError:
        pass
