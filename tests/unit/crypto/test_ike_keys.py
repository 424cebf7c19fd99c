"""ikev1d.crypto.ike_keys: RFC 2409 §5 / Appendix B derivations.

Each derivation is checked against the RFC formula written out again with Python's
stdlib hmac/hashlib (a second implementation, not ours), plus the expansion rules
(Appendix B key stretching, KEYMAT K1|K2|...) and CBC IV chaining. The end-to-end
check against a real peer is tests/unit/crypto/test_kat_strongswan.py.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ikev1d.crypto import (
    CryptoError,
    IkeCipher,
    cipher_key_length,
    derive_phase1_keys,
    encryption_key,
    hash_i,
    hash_r,
    informational_hash,
    keymat,
    last_cipher_block,
    nat_d_hash,
    pad_plaintext,
    phase1_iv,
    phase2_iv,
    qm_hash1,
    qm_hash2,
    qm_hash3,
    skeyid_pke,
    skeyid_psk,
    skeyid_sig,
)


def mac(alg: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, alg).digest()


NI = bytes(range(1, 33))
NR = bytes(range(101, 117))
CKY_I = bytes.fromhex("0102030405060708")
CKY_R = bytes.fromhex("a1a2a3a4a5a6a7a8")
G_XY = bytes(range(256)) * 1
G_XI = b"\x11" * 256
G_XR = b"\x22" * 256


@pytest.mark.parametrize("alg", ["md5", "sha1", "sha256", "sha384", "sha512"])
def test_skeyid_variants(alg: str) -> None:
    psk = b"a long random string"
    assert skeyid_psk(alg, psk, NI, NR) == mac(alg, psk, NI + NR)
    assert skeyid_sig(alg, NI, NR, G_XY) == mac(alg, NI + NR, G_XY)
    assert skeyid_pke(alg, alg, NI, NR, CKY_I, CKY_R) == mac(
        alg, hashlib.new(alg, NI + NR).digest(), CKY_I + CKY_R
    )
    # The order of the nonces matters (initiator first).
    assert skeyid_psk(alg, psk, NR, NI) != skeyid_psk(alg, psk, NI, NR)


@pytest.mark.parametrize("alg", ["sha1", "sha256"])
def test_derive_phase1_keys(alg: str) -> None:
    skeyid = skeyid_psk(alg, b"secret", NI, NR)
    keys = derive_phase1_keys(alg, skeyid, G_XY, CKY_I, CKY_R)
    d = mac(alg, skeyid, G_XY + CKY_I + CKY_R + b"\x00")
    a = mac(alg, skeyid, d + G_XY + CKY_I + CKY_R + b"\x01")
    e = mac(alg, skeyid, a + G_XY + CKY_I + CKY_R + b"\x02")
    assert (keys.skeyid, keys.skeyid_d, keys.skeyid_a, keys.skeyid_e) == (skeyid, d, a, e)
    assert skeyid.hex() not in repr(keys)


def test_encryption_key_truncates_when_skeyid_e_is_long_enough() -> None:
    skeyid_e = bytes(range(32))  # sha256 output length
    assert encryption_key("sha256", skeyid_e, 16) == skeyid_e[:16]
    assert encryption_key("sha256", skeyid_e, 32) == skeyid_e


def test_encryption_key_appendix_b_expansion_sha1_aes256() -> None:
    # SHA-1 gives a 20-octet SKEYID_e, AES-256 needs 32: Ka = K1 | K2,
    # K1 = prf(SKEYID_e, 0), K2 = prf(SKEYID_e, K1).
    skeyid_e = bytes(range(20))
    k1 = mac("sha1", skeyid_e, b"\x00")
    k2 = mac("sha1", skeyid_e, k1)
    key = encryption_key("sha1", skeyid_e, cipher_key_length("aes", 256))
    assert key == (k1 + k2)[:32]
    assert key[:20] != skeyid_e  # not a truncation of SKEYID_e
    # 3DES with MD5 (16 octets): K1 | K2 truncated to 24.
    md5_e = bytes(range(16))
    m1 = mac("md5", md5_e, b"\x00")
    assert encryption_key("md5", md5_e, 24) == (m1 + mac("md5", md5_e, m1))[:24]
    # 3 blocks: md5 with a hypothetical 40-octet key
    m2 = mac("md5", md5_e, m1)
    assert encryption_key("md5", md5_e, 40) == (m1 + m2 + mac("md5", md5_e, m2))[:40]
    with pytest.raises(CryptoError):
        encryption_key("sha1", skeyid_e, 0)


def test_hash_i_and_hash_r() -> None:
    skeyid = b"\x42" * 32
    sa_i_b = b"\x00\x00\x00\x01\x00\x00\x00\x01" + b"\x99" * 40
    id_ii_b = b"\x01\x11\x01\xf4\xc0\x00\x02\x01"
    id_ir_b = b"\x01\x11\x01\xf4\xc0\x00\x02\x02"
    assert hash_i("sha256", skeyid, G_XI, G_XR, CKY_I, CKY_R, sa_i_b, id_ii_b) == mac(
        "sha256", skeyid, G_XI + G_XR + CKY_I + CKY_R + sa_i_b + id_ii_b
    )
    assert hash_r("sha256", skeyid, G_XR, G_XI, CKY_R, CKY_I, sa_i_b, id_ir_b) == mac(
        "sha256", skeyid, G_XR + G_XI + CKY_R + CKY_I + sa_i_b + id_ir_b
    )


def test_phase1_iv_and_chaining() -> None:
    iv = phase1_iv("sha1", G_XI, G_XR, 16)
    assert iv == hashlib.sha1(G_XI + G_XR).digest()[:16]
    assert phase1_iv("sha256", G_XI, G_XR, 8) == hashlib.sha256(G_XI + G_XR).digest()[:8]
    with pytest.raises(CryptoError):
        phase1_iv("md5", G_XI, G_XR, 32)
    # Message 5 is encrypted with the Phase 1 IV, message 6 with the last ciphertext
    # block of message 5 (RFC 2409 Appendix B), and so on.
    cipher = IkeCipher("aes", bytes(16))
    m5 = cipher.encrypt(iv, pad_plaintext(b"ID+HASH_I" * 5, 16))
    iv6 = last_cipher_block(m5, 16)
    assert iv6 == m5[-16:]
    m6_plain = pad_plaintext(b"ID+HASH_R", 16)
    m6 = cipher.encrypt(iv6, m6_plain)
    assert cipher.decrypt(iv6, m6) == m6_plain
    assert cipher.decrypt(iv, m6) != m6_plain
    with pytest.raises(CryptoError):
        last_cipher_block(m5[:-1], 16)


def test_phase2_iv() -> None:
    last = bytes.fromhex("00112233445566778899aabbccddeeff")
    mid = 0xDEADBEEF
    expected = hashlib.sha256(last + bytes.fromhex("deadbeef")).digest()[:16]
    assert phase2_iv("sha256", last, mid, 16) == expected
    assert phase2_iv("sha256", last, mid + 1, 16) != expected
    assert phase2_iv("sha1", last[:8], 1, 8) == hashlib.sha1(last[:8] + b"\0\0\0\1").digest()[:8]
    for bad in (-1, 2**32):
        with pytest.raises(CryptoError):
            phase2_iv("sha1", last, bad, 16)


def test_quick_mode_and_informational_hashes() -> None:
    skeyid_a = b"\x5a" * 20
    mid = 0x01020304
    m = bytes.fromhex("01020304")
    rest = b"SA...Ni...IDci...IDcr"
    assert qm_hash1("sha1", skeyid_a, mid, rest) == mac("sha1", skeyid_a, m + rest)
    assert qm_hash2("sha1", skeyid_a, mid, NI, rest) == mac("sha1", skeyid_a, m + NI + rest)
    assert qm_hash3("sha1", skeyid_a, mid, NI, NR) == mac("sha1", skeyid_a, b"\0" + m + NI + NR)
    assert informational_hash("sha1", skeyid_a, mid, b"N") == mac("sha1", skeyid_a, m + b"N")


@pytest.mark.parametrize("length", [16, 20, 36, 52, 64, 100])
def test_keymat_expansion(length: int) -> None:
    skeyid_d = b"\x0d" * 32
    spi = bytes.fromhex("c1234567")
    seed = bytes([3]) + spi + NI + NR
    k1 = mac("sha256", skeyid_d, seed)
    k2 = mac("sha256", skeyid_d, k1 + seed)
    k3 = mac("sha256", skeyid_d, k2 + seed)
    k4 = mac("sha256", skeyid_d, k3 + seed)
    out = keymat("sha256", skeyid_d, 3, spi, NI, NR, length)
    assert len(out) == length
    assert out == (k1 + k2 + k3 + k4)[:length]


def test_keymat_with_pfs() -> None:
    skeyid_d = b"\x0d" * 20
    spi = bytes.fromhex("c7654321")
    g_qm = b"\x77" * 256
    seed = g_qm + bytes([3]) + spi + NI + NR
    k1 = mac("sha1", skeyid_d, seed)
    k2 = mac("sha1", skeyid_d, k1 + seed)
    assert keymat("sha1", skeyid_d, 3, spi, NI, NR, 36, g_qm_xy=g_qm) == (k1 + k2)[:36]
    assert keymat("sha1", skeyid_d, 3, spi, NI, NR, 36) != (k1 + k2)[:36]
    # Each direction has its own SPI and thus its own keys.
    other = keymat("sha1", skeyid_d, 3, bytes.fromhex("c1234567"), NI, NR, 36, g_qm_xy=g_qm)
    assert other != (k1 + k2)[:36]
    with pytest.raises(CryptoError):
        keymat("sha1", skeyid_d, 256, spi, NI, NR, 36)


def test_nat_d_hash() -> None:
    address = bytes([192, 0, 2, 1])
    expected = hashlib.sha256(CKY_I + CKY_R + address + b"\x01\xf4").digest()
    assert nat_d_hash("sha256", CKY_I, CKY_R, address, 500) == expected
    assert nat_d_hash("sha256", CKY_I, CKY_R, address, 4500) != expected
    v6 = bytes(15) + b"\x01"
    assert (
        nat_d_hash("sha1", CKY_I, CKY_R, v6, 500)
        == hashlib.sha1(CKY_I + CKY_R + v6 + b"\x01\xf4").digest()
    )
    with pytest.raises(CryptoError):
        nat_d_hash("sha1", CKY_I, CKY_R, bytes(5), 500)
