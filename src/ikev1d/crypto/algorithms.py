"""Phase 1 primitives by strongSwan-style names: hashes, the HMAC PRF, CBC ciphers.

RFC 2409 §4: "the pseudo-random function is the HMAC version of the negotiated hash
algorithm" unless a PRF is negotiated (none is, in practice). Encryption is CBC over
the payloads following the ISAKMP header (RFC 2408 §3.1 E flag, RFC 2409 Appendix B).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, modes

from ikev1d.crypto import transforms
from ikev1d.crypto.errors import CryptoError, DecryptError

__all__ = [
    "CIPHERS",
    "HASHES",
    "IkeCipher",
    "cipher_key_length",
    "digest_size",
    "hash_digest",
    "pad_plaintext",
    "prf",
]

_HASH_INSTANCES: dict[str, hashes.HashAlgorithm] = {
    row.name: row.primitive() for row in transforms.INTEGRITIES
}
# The Phase 1 ciphers: an IKE Encryption Algorithm value and a `cryptography` primitive.
_CIPHER_ROWS: dict[str, transforms.EncryptionTransform] = {
    row.name: row
    for row in transforms.ENCRYPTIONS
    if row.ike_id is not None and row.primitive is not None
}

HASHES: frozenset[str] = frozenset(_HASH_INSTANCES)
CIPHERS: frozenset[str] = frozenset(_CIPHER_ROWS)


def _hash(alg: str) -> hashes.HashAlgorithm:
    try:
        return _HASH_INSTANCES[alg]
    except KeyError:
        raise CryptoError(f"unknown hash algorithm {alg!r}") from None


def digest_size(alg: str) -> int:
    """Output length in octets of hash `alg` (and of its HMAC PRF)."""
    return _hash(alg).digest_size


_EMPTY_HASHES: dict[str, hashes.Hash] = {}


def hash_digest(alg: str, data: bytes) -> bytes:
    """The negotiated hash over `data` (used by SKEYID for PKE, IVs and NAT-D).

    A handshake hashes a dozen times (IVs, NAT-D, the digests of requests answered);
    copying an unused context costs half of setting up a new one, so one per
    algorithm is kept, never updated itself."""
    empty = _EMPTY_HASHES.get(alg)
    if empty is None:
        empty = _EMPTY_HASHES[alg] = hashes.Hash(_hash(alg))
    h = empty.copy()
    h.update(data)
    return h.finalize()


_KEYED: dict[tuple[str, bytes], hmac.HMAC] = {}
_KEYED_MAX = 64


def prf(alg: str, key: bytes, data: bytes) -> bytes:
    """prf(key, data): HMAC with the negotiated hash (RFC 2409 §4, RFC 2104).

    A handshake uses each of its few keys (SKEYID, SKEYID_a, SKEYID_d) several
    times; copying a keyed HMAC costs a tenth of keying a new one, so the last
    few keyed objects are kept (bounded, oldest dropped first).
    """
    keyed = _KEYED.get((alg, key))
    if keyed is None:
        keyed = hmac.HMAC(key, _hash(alg))
        if len(_KEYED) >= _KEYED_MAX:
            del _KEYED[next(iter(_KEYED))]
        _KEYED[(alg, key)] = keyed
    mac = keyed.copy()
    mac.update(data)
    return mac.finalize()


def _cipher_row(alg: str) -> transforms.EncryptionTransform:
    try:
        return _CIPHER_ROWS[alg]
    except KeyError:
        raise CryptoError(f"unknown cipher {alg!r}") from None


def cipher_key_length(alg: str, key_bits: int | None) -> int:
    """Encryption key length in octets for a Phase 1 cipher.

    3des: always 24 octets (RFC 2409 Appendix A, the Key Length attribute is not sent).
    aes: the negotiated Key Length attribute (RFC 3602 §5.3 semantics), 128/192/256.
    """
    row = _cipher_row(alg)
    if row.fixed_key:
        if key_bits not in (None, row.key_bits[0]):
            raise CryptoError(f"{alg} has a fixed {row.key_bits[0]}-bit key, not {key_bits}")
        return row.key_bits[0] // 8
    if key_bits not in row.key_bits:
        allowed = transforms.or_list(row.key_bits)
        raise CryptoError(f"{alg} needs a key length of {allowed} bits, not {key_bits}")
    return key_bits // 8


def pad_plaintext(data: bytes, block_size: int) -> bytes:
    """Pad the payload chain to a whole number of cipher blocks before encryption.

    RFC 2409 leaves the padding content open; strongSwan (encrypted_payload.c,
    encrypt_v1) always appends 1..block_size zero octets, so the message is never
    exactly aligned before padding. We do the same: zeros are what every receiver
    tolerates (the payload chain's lengths say where the data ends, and an
    implementation reading the last octet as a pad length reads 0). Receivers must
    accept any padding: ikev1d ignores the octets after the last payload.
    """
    if block_size <= 0:
        raise CryptoError("block size must be positive")
    return data + bytes(block_size - len(data) % block_size)


_WARM_MAX = 256
"""IKE ciphers holding their OpenSSL contexts at once (see IkeCipher)."""
_warm: dict[int, weakref.ReferenceType[IkeCipher]] = {}


def _warmed(cipher: IkeCipher) -> None:
    """Note a cipher that has just built its contexts; the one that built them
    longest ago lets them go when more than _WARM_MAX hold theirs."""
    _warm[id(cipher)] = weakref.ref(cipher)
    if len(_warm) > _WARM_MAX:
        oldest = _warm.pop(next(iter(_warm)))()
        if oldest is not None and oldest is not cipher:
            oldest._cool()


class IkeCipher:
    """CBC encryption of ISAKMP payloads (RFC 2409 Appendix B) with one key.

    Its OpenSSL contexts (about 1.2 KiB of memory outside Python's heap) serve the
    messages of an exchange in quick succession; an established ISAKMP SA then sends
    a message now and then (DPD, Quick Modes, Deletes), and a gateway may hold
    thousands. So only the _WARM_MAX ciphers that built their contexts last keep
    them; another builds them again when it next needs them."""

    __slots__ = ("__weakref__", "_algorithm", "_cbc_chain", "_cbc_encrypt", "_ecb_decrypt",
                 "alg", "block_size", "key_length")

    alg: str
    block_size: int
    key_length: int

    def __init__(self, alg: str, key: bytes) -> None:
        row = _cipher_row(alg)
        octets = [bits // 8 for bits in row.key_bits]
        if len(key) not in octets:
            allowed = transforms.or_list(octets)
            raise CryptoError(f"{alg} key must be {allowed} octets, not {len(key)}")
        if row.primitive is None:  # excluded from _CIPHER_ROWS; keeps mypy informed
            raise CryptoError(f"unknown cipher {alg!r}")
        self._algorithm: CipherAlgorithm = row.primitive(key)
        self.block_size = row.block_bytes
        self.alg = alg
        self.key_length = len(key)
        self._ecb_decrypt: Callable[[bytes], bytes] | None = None
        self._cbc_encrypt: Callable[[bytes], bytes] | None = None
        self._cbc_chain = 0

    def _contexts(self) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
        algorithm = self._algorithm
        # CBC decryption is P_i = D_K(C_i) XOR C_(i-1) with C_0 = IV (NIST SP 800-38A
        # section 6.2): each block's D_K is independent of the others, so one ECB
        # decryption context per key (padding off, so update() returns every whole
        # block and keeps no state between calls) serves every message of the SA,
        # and the chaining is one XOR over the whole message. Setting up a CBC
        # context per message costs some 40 Python calls of `cryptography`'s checks.
        # The ECB here is the block primitive of CBC, never a mode messages use.
        ecb_decrypt = Cipher(algorithm, modes.ECB()).decryptor().update  # noqa: S305
        # CBC encryption chains through the blocks, so it keeps one CBC context per
        # key instead: the context continues from the last ciphertext block it gave
        # (_cbc_chain), and a message with another IV starts from it by XORing its
        # first block with IV XOR that block: C_1 = E_K(P_1 XOR IV) as for a fresh
        # context. Whole blocks only, so update() never holds data back.
        cbc_encrypt = Cipher(algorithm, modes.CBC(bytes(self.block_size))).encryptor().update
        self._ecb_decrypt, self._cbc_encrypt = ecb_decrypt, cbc_encrypt
        self._cbc_chain = 0  # a fresh context starts from an all-zero IV
        _warmed(self)
        return ecb_decrypt, cbc_encrypt

    def _cool(self) -> None:
        self._ecb_decrypt = self._cbc_encrypt = None

    def __repr__(self) -> str:  # never show the key
        return f"IkeCipher({self.alg!r}, key_length={self.key_length})"

    def encrypt(self, iv: bytes, plaintext: bytes) -> bytes:
        """CBC-encrypt already padded plaintext (see pad_plaintext)."""
        if not plaintext or len(plaintext) % self.block_size:
            raise CryptoError(
                f"plaintext length {len(plaintext)} is not a positive multiple of "
                f"the block size {self.block_size}"
            )
        size = self.block_size
        if len(iv) != size:
            raise CryptoError(f"IV must be {size} octets, not {len(iv)}")
        encrypt = self._cbc_encrypt
        if encrypt is None:
            encrypt = self._contexts()[1]
        first = (int.from_bytes(plaintext[:size], "big") ^ int.from_bytes(iv, "big")
                 ^ self._cbc_chain).to_bytes(size, "big")
        ciphertext: bytes = encrypt(first + plaintext[size:])
        self._cbc_chain = int.from_bytes(ciphertext[-size:], "big")
        return ciphertext

    def decrypt(self, iv: bytes, ciphertext: bytes) -> bytes:
        """CBC-decrypt; DecryptError unless the ciphertext is whole, non-empty blocks."""
        if not ciphertext or len(ciphertext) % self.block_size:
            raise DecryptError(
                f"ciphertext length {len(ciphertext)} is not a positive multiple of "
                f"the block size {self.block_size}"
            )
        if len(iv) != self.block_size:
            raise DecryptError(f"IV must be {self.block_size} octets, not {len(iv)}")
        decrypt = self._ecb_decrypt
        if decrypt is None:
            decrypt = self._contexts()[0]
        length = len(ciphertext)
        chained = iv + ciphertext[: length - self.block_size]
        return (int.from_bytes(decrypt(ciphertext), "big")
                ^ int.from_bytes(chained, "big")).to_bytes(length, "big")
