"""ikev1d.crypto.algorithms: the HMAC PRF against RFC 4231 / RFC 2202 vectors, hashes
against FIPS 180 / RFC 1321 "abc" digests, CBC against NIST SP 800-38A, padding."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, modes

from ikev1d.crypto import (
    HASHES,
    CryptoError,
    DecryptError,
    IkeCipher,
    cipher_key_length,
    digest_size,
    hash_digest,
    pad_plaintext,
    prf,
    transforms,
)

# RFC 4231 §4.2 (test case 1) and §4.3 (test case 2); RFC 2202 §2/§3 test cases 1 and 2.
HMAC_VECTORS = [
    ("md5", b"\x0b" * 16, b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d"),
    ("md5", b"Jefe", b"what do ya want for nothing?", "750c783e6ab0b503eaa86e310a5db738"),
    ("sha1", b"\x0b" * 20, b"Hi There", "b617318655057264e28bc0b6fb378c8ef146be00"),
    ("sha1", b"Jefe", b"what do ya want for nothing?", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    (
        "sha256",
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
    ),
    (
        "sha256",
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
    (
        "sha384",
        b"\x0b" * 20,
        b"Hi There",
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
        "faea9ea9076ede7f4af152e8b2fa9cb6",
    ),
    (
        "sha512",
        b"\x0b" * 20,
        b"Hi There",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
    ),
]


@pytest.mark.parametrize(("alg", "key", "data", "expected"), HMAC_VECTORS)
def test_prf_is_hmac_rfc_vectors(alg: str, key: bytes, data: bytes, expected: str) -> None:
    assert prf(alg, key, data) == bytes.fromhex(expected)
    assert digest_size(alg) == len(bytes.fromhex(expected))


def test_prf_long_key_rfc4231_case6() -> None:
    # RFC 4231 §4.7: a 131-octet key is hashed first (HMAC detail the PRF inherits).
    key = b"\xaa" * 131
    data = b"Test Using Larger Than Block-Size Key - Hash Key First"
    expected = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    assert prf("sha256", key, data) == bytes.fromhex(expected)


def test_hash_digest_abc() -> None:
    # RFC 1321 appendix A.5, FIPS 180-2 appendix B.1
    assert hash_digest("md5", b"abc").hex() == "900150983cd24fb0d6963f7d28e17f72"
    assert hash_digest("sha1", b"abc").hex() == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert hash_digest("sha256", b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert HASHES == {"md5", "sha1", "sha256", "sha384", "sha512"}
    with pytest.raises(CryptoError):
        hash_digest("sha3", b"")
    with pytest.raises(CryptoError):
        prf("whirlpool", b"k", b"")


def test_hash_digest_calls_are_independent() -> None:
    """Each digest starts from an empty context, however many came before."""
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    for _ in range(3):
        assert hash_digest("sha256", b"abc").hex() == abc
        assert hash_digest("sha256", b"").hex() == empty
    assert hash_digest("sha1", b"abc").hex() == "a9993e364706816aba3e25717850c26c9cd0d89d"


def test_aes_cbc_nist_sp800_38a() -> None:
    # NIST SP 800-38A F.2.1 CBC-AES128.Encrypt, first two blocks
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    iv = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    plaintext = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
    ciphertext = bytes.fromhex("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2")
    cipher = IkeCipher("aes", key)
    assert (cipher.block_size, cipher.key_length) == (16, 16)
    assert cipher.encrypt(iv, plaintext) == ciphertext
    assert cipher.decrypt(iv, ciphertext) == plaintext
    # CBC chaining: the second block decrypts alone with the first ciphertext block as IV,
    # which is how IKEv1 chains IVs across messages (RFC 2409 Appendix B).
    assert cipher.decrypt(ciphertext[:16], ciphertext[16:]) == plaintext[16:]


def test_3des_roundtrip_and_sizes() -> None:
    key = bytes(range(24))
    cipher = IkeCipher("3des", key)
    assert (cipher.block_size, cipher.key_length) == (8, 24)
    iv = b"\x01" * 8
    data = pad_plaintext(b"hello isakmp", 8)
    ciphertext = cipher.encrypt(iv, data)
    assert ciphertext != data and len(ciphertext) == 16
    assert cipher.decrypt(iv, ciphertext) == data
    assert "key_length=24" in repr(cipher) and key.hex() not in repr(cipher)


def test_cipher_rejects_bad_lengths() -> None:
    cipher = IkeCipher("aes", bytes(32))
    for bad in (b"", bytes(15), bytes(17)):
        with pytest.raises(DecryptError):
            cipher.decrypt(bytes(16), bad)
    with pytest.raises(DecryptError):
        cipher.decrypt(bytes(8), bytes(16))
    with pytest.raises(CryptoError):
        cipher.encrypt(bytes(16), bytes(15))
    with pytest.raises(CryptoError):
        cipher.encrypt(bytes(8), bytes(16))
    for alg, key in (("aes", bytes(20)), ("3des", bytes(16)), ("blowfish", bytes(16))):
        with pytest.raises(CryptoError):
            IkeCipher(alg, key)


def test_cipher_key_length() -> None:
    assert cipher_key_length("3des", None) == 24
    assert cipher_key_length("aes", 128) == 16
    assert cipher_key_length("aes", 256) == 32
    for alg, bits in (("aes", None), ("aes", 512), ("3des", 128), ("des", 64)):
        with pytest.raises(CryptoError):
            cipher_key_length(alg, bits)


@pytest.mark.parametrize("length", range(0, 34))
def test_pad_plaintext_like_strongswan(length: int) -> None:
    data = bytes([0xAA]) * length
    padded = pad_plaintext(data, 16)
    # strongSwan encrypt_v1: always 1..block_size zero octets.
    assert len(padded) % 16 == 0
    assert padded[:length] == data
    assert 1 <= len(padded) - length <= 16
    assert set(padded[length:]) == {0}


def _primitive(alg: str) -> Callable[[bytes], CipherAlgorithm]:
    """The `cryptography` block cipher behind a Phase 1 cipher name."""
    primitive = next(r.primitive for r in transforms.ENCRYPTIONS if r.name == alg)
    if primitive is None:
        pytest.fail(f"{alg} has no primitive")
    return primitive


@pytest.mark.parametrize("alg,key_octets", [("aes", 16), ("aes", 24), ("aes", 32), ("3des", 24)])
def test_cbc_decrypt_matches_a_cbc_context(alg: str, key_octets: int) -> None:
    """decrypt() chains the blocks itself over one ECB context per key; it must
    give what a fresh CBC context gives, for every length and across messages
    (the context is reused, so no state may carry from one call to the next)."""
    primitive = _primitive(alg)
    key = os.urandom(key_octets)
    cipher = IkeCipher(alg, key)
    block = cipher.block_size
    for blocks in (1, 2, 3, 7, 16, 65):
        for _ in range(3):
            iv = os.urandom(block)
            ciphertext = os.urandom(blocks * block)
            reference = Cipher(primitive(key), modes.CBC(iv)).decryptor()
            expected = reference.update(ciphertext) + reference.finalize()
            assert cipher.decrypt(iv, ciphertext) == expected
            plaintext = os.urandom(blocks * block)
            assert cipher.decrypt(iv, cipher.encrypt(iv, plaintext)) == plaintext


@pytest.mark.parametrize("alg,key_octets", [("aes", 16), ("aes", 32), ("3des", 24)])
def test_cbc_encrypt_matches_a_cbc_context(alg: str, key_octets: int) -> None:
    """encrypt() continues one CBC context per key from message to message; each
    message must come out as a fresh CBC context with its own IV makes it, the
    same IV twice in a row and an IV equal to the last ciphertext block too."""
    primitive = _primitive(alg)
    key = os.urandom(key_octets)
    cipher = IkeCipher(alg, key)
    block = cipher.block_size
    last = bytes(block)
    for blocks in (1, 2, 3, 1, 7, 16, 65, 2):
        for iv in (os.urandom(block), bytes(block), bytes(block), last):
            plaintext = os.urandom(blocks * block)
            reference = Cipher(primitive(key), modes.CBC(iv)).encryptor()
            expected = reference.update(plaintext) + reference.finalize()
            got = cipher.encrypt(iv, plaintext)
            assert got == expected
            last = got[-block:]


def test_only_the_last_warmed_ciphers_keep_their_contexts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Contexts are memory outside Python's heap: at most _WARM_MAX ciphers hold
    them; one that let them go builds them again, and its messages still come out
    as a fresh CBC context with their IV makes them (its chaining starts over)."""
    import os

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from ikev1d.crypto import algorithms as ours

    monkeypatch.setattr(ours, "_WARM_MAX", 2)
    monkeypatch.setattr(ours, "_warm", {})
    keys = [os.urandom(16) for _ in range(3)]
    ciphers = [IkeCipher("aes", key) for key in keys]
    for _ in range(4):
        for key, cipher in zip(keys, ciphers, strict=True):
            iv, plaintext = os.urandom(16), os.urandom(48)
            reference = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            assert cipher.encrypt(iv, plaintext) == reference.update(plaintext)
            assert cipher.decrypt(iv, cipher.encrypt(iv, plaintext)) == plaintext
        warm = [c for c in ciphers if c._cbc_encrypt is not None]
        assert warm == ciphers[1:], "the first one built its contexts longest ago"
    assert len(ours._warm) == 2
