"""ikev1d.crypto.pubkey: IKEv1 signature and public-key-encryption primitives.

The RSA signature encoding is checked by redoing the RSA operation with Python
integers and reading the PKCS#1 v1.5 block: 00 01 FF..FF 00 || HASH, no DigestInfo
(what strongSwan calls SIGN_RSA_EMSA_PKCS1_NULL).
"""

from __future__ import annotations

from functools import cache

import pytest
from cryptography.hazmat.primitives import serialization
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
    key = serialization.load_pem_private_key(STRONGSWAN_RSA_KEY_PEM, None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


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


# Captured from strongSwan 5.9.8 (charon <-> charon, IKEv1 Main Mode, certificates,
# aes128-sha256-modp2048, 2026-11-27): the initiator's HASH_I as charon logged it at
# ike=4, the SIG payload data from decrypted message 5, and the initiator's
# (throwaway, test-only) key. The responder accepted these with "RSA_EMSA_PKCS1_NULL"
# and "ECDSA_WITH_NULL". Our own derivation of that HASH_I from the raw messages
# (skeyid_sig, derive_phase1_keys, hash_i) matched charon's during the capture.
STRONGSWAN_RSA_SPKI = (
    "30820122300d06092a864886f70d01010105000382010f003082010a0282010100b5eb758765d9fc"
    "1f0b8199e1a011c63a665e1b4a59be910e940838d0b68b9d5dbd672555b8ee63b5bcca5ae675e393"
    "a10bac78917643ce992e6a42d1d18a9ceb359dc5456eb477741df1eb45bd5114b62f70c351142516"
    "3101345756249c4a066668e70ba6b0a268559c1f40ed981bf08a6a96564f77f3fa21d784ef590fc6"
    "3311c1015454cb58d13255b7570161c9e8c9f73232856856945feaf6c04e3e57500547f95af740fc"
    "ae585b3ab875509ff18b7b16d0eeea9726bcfbf804e70c3c76300df018cfec9d817f2dabc4c00b75"
    "0c2a7b1d1bfb06225ad77bb428da3d82dc7a8942d691122b0c97926507eaa496f59a98c7d1375e27"
    "a20879eb1ce3d33f850203010001"
)
STRONGSWAN_RSA_HASH_I = "8d78dda31a1c6657852bce4e33b611e6dcc43f81973273394ebda6210ab1c85b"
STRONGSWAN_RSA_SIG_I = (
    "76efe9fceea600ccb3d041ce35d018720a12df48a06e1e3d7b3379ba4d8d4a55857abdef91718a45"
    "923daa620e2b42c1e38ad35a5ed510126d2899858f8d7f089bac2d36fb3a0dc3c9953816bbbf97f1"
    "af4a75dc02ae6591ecc72e071901728099dd0ead24428b46c8caccca3e76503f804722ba5c3ab9c5"
    "b0640d6ebbd4ce5aadb8596ff91544cdf1b4bfac1de63db442a6ef68695bfde670cfaa85210abcf3"
    "4d45f4d91566018e4d2433ab6b334959a97af752794916debec81ab2dc8addad7fc479efd59e8855"
    "9895fc50ac5af08008426834e1547e20ad0161afd9d97a25b5c43ba3b6df67c3e32a31f825dc67f3"
    "7ed258ee1a1fa668cb5b97d4fdf6ac87"
)
STRONGSWAN_RSA_KEY_PEM = b"""\
-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQC163WHZdn8HwuB
meGgEcY6Zl4bSlm+kQ6UCDjQtoudXb1nJVW47mO1vMpa5nXjk6ELrHiRdkPOmS5q
QtHRipzrNZ3FRW60d3Qd8etFvVEUti9ww1EUJRYxATRXViScSgZmaOcLprCiaFWc
H0DtmBvwimqWVk938/oh14TvWQ/GMxHBAVRUy1jRMlW3VwFhyejJ9zIyhWhWlF/q
9sBOPldQBUf5WvdA/K5YWzq4dVCf8Yt7FtDu6pcmvPv4BOcMPHYwDfAYz+ydgX8t
q8TAC3UMKnsdG/sGIlrXe7Qo2j2C3HqJQtaREisMl5JlB+qklvWamMfRN14nogh5
6xzj0z+FAgMBAAECggEACsNnHT8v8gRONHlLyaIzlcH3wGqaO7WuZKDF58ddJE7n
BWLGmx3zpU2JtW4cPH5AEYY/Te/u3BrhDaVtb5XhaeMutfzBK4lDw//LuUEVuoF6
9hOASQ5WrUiSdbZhjSOuFEIRpXVTzxAYPJf2yfftc0JlQwbRRdoYCweK1HRzA/lo
s6KlNA/H33vT4E5/7Zompjoz6v6PcAoZzxKL7j+Dj2oB2UUJWIDeo8LxAL0ShoFG
b9ZzSTy+APweqgiy0ooRx6BulzbEUeO+d9V3AuT451vmgjEhTc/HodGmggpvSkrg
ITYk68Ft+16UIuCacgPikIqxAGz5z+RvVZumMzae8QKBgQD8EQwYYu7XZCVaKE1m
mOAyoNegkNWvLzIfUrN6lvbhxQF/o5ufqz4x3S77F8Cn5ADcnH5VX/ItnlOEFOzU
g6j3yoON7IDDE+rMTE0GJ+gDP9ceEvFu/vEGt5sCFDiE9Xk4PjzBbhmf3ounQbfg
nHnBa4RWcX3auVfkXz/4YcOVrQKBgQC4wjCqHydHmzhE7ujXngbHEf4Nm5SxF7N4
JAptYCq4IYHd+MvQCg98VycMYgNOiwf1q6rLqefKs79Jdql+wr+kLmX1QqJQi8vS
obq5KCIjLVuXh28DEcifHnCJKtoU71pzPhkv6kSV0popkIe1FjAdJaeiyJoashxf
dH4P84gcOQKBgQCEvy2RgjiqcnFBY8wvZf9calxkkSIX2lEZMeKXgv2NtMSvRahl
lDdy5zsgvUeWo3rYtAnMSHUwFRuCicqXuKa5qItTqOO+2LRk1yIRRd7oJyzRB8Ti
YZzpnrQhiiihzO0D87LnY2ZXTUpa0T9XKNDuTgMpyycuk0F4Ybk8w6/PGQKBgQCC
WJ40p13y6tM77sFevSJS96Kgvw6cEfiP3f1tRNdeqGUS0SAZWb+rHWFzHwLuOrAW
5lHM9cWOAFoH3iuePo8tqX5NFgGlibr2kxtE3ceXwbxIn0f2hmlfuP30B8Nr2aGa
hEkIwOI6QSZ6BHl5jHnNVm96LMRr6RSTU4BMiKeSIQKBgQCpdPp+pW/F7CTGRhKl
pahRIbVGV6GvfwKzWfMVocP+ONhomsYKxm6jbidhAnJXStsclGi9k2VRX0IQrYH7
zD62AMko5BY9Tzq62oQnhVcq7+yhFTyr8Yn6PgtvdC7qrpm6gDpgwnGJNXGvXIlK
Apd8IMJjzf9eaWx6M6O+zbx5Lg==
-----END PRIVATE KEY-----
"""
STRONGSWAN_ECDSA_SPKI = (
    "3059301306072a8648ce3d020106082a8648ce3d03010703420004f4c7c96c2e2d614fedb085d4ad"
    "22d0e3d8de6100ef369f383d10ad6b52071d33697d070f0f616ff6177b346383a1f4381055db6c74"
    "dcfc8643d9746c35707e1a"
)
STRONGSWAN_ECDSA_HASH_I = "3df36141bf95d9f7d8c873b4e80da4cbc0f51f0d04747044666dd06833703a09"
STRONGSWAN_ECDSA_SIG_I = (
    "7b872efc14d2d9734f91eabd8caceae4e96139c5ae996dde21448b06bff4187f580bd826621375cc"
    "e5962a2374953c927d620db05378d13784705a98aba7a21f"
)


def test_rsa_signature_matches_strongswan() -> None:
    public = serialization.load_der_public_key(bytes.fromhex(STRONGSWAN_RSA_SPKI))
    assert isinstance(public, rsa.RSAPublicKey)
    hash_i, sig_i = bytes.fromhex(STRONGSWAN_RSA_HASH_I), bytes.fromhex(STRONGSWAN_RSA_SIG_I)
    assert rsa_verify_hash(public, sig_i, hash_i)
    assert not rsa_verify_hash(public, sig_i, hash_i[::-1])
    # PKCS#1 v1.5 signatures are deterministic: ours must be charon's, byte for byte.
    private = serialization.load_pem_private_key(STRONGSWAN_RSA_KEY_PEM, None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert rsa_sign_hash(private, hash_i) == sig_i


def test_ecdsa_signature_matches_strongswan() -> None:
    public = serialization.load_der_public_key(bytes.fromhex(STRONGSWAN_ECDSA_SPKI))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    hash_i, sig_i = bytes.fromhex(STRONGSWAN_ECDSA_HASH_I), bytes.fromhex(STRONGSWAN_ECDSA_SIG_I)
    assert len(sig_i) == 64  # r | s, 32 octets each for P-256 (RFC 4754 section 7)
    assert ecdsa_verify_hash(public, sig_i, hash_i)
    assert not ecdsa_verify_hash(public, sig_i, hash_i[::-1])
