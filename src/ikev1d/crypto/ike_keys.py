"""IKEv1 key material, authentication hashes and IVs (RFC 2409 §5, Appendix B).

All functions are pure. `prf_alg` / `hash_alg` are hash names from
ikev1d.crypto.algorithms.HASHES; the PRF is HMAC with that hash (RFC 2409 §4).
Names follow the RFC: Ni_b / Nr_b are nonce payload bodies, CKY-I / CKY-R the
8-octet cookies, g^xi / g^xr the KE payload data, SAi_b the initiator's SA payload
body, IDii_b / IDir_b the ID payload bodies (all without the generic payload header).
"""

from __future__ import annotations

from dataclasses import dataclass

from ikev1d.crypto.algorithms import IkeCipher, digest_size, hash_digest, prf
from ikev1d.crypto.errors import CryptoError, DecryptError

__all__ = [
    "Phase1Keys",
    "derive_phase1_keys",
    "encryption_key",
    "hash_i",
    "hash_r",
    "informational_hash",
    "keymat",
    "last_cipher_block",
    "nat_d_hash",
    "phase1_iv",
    "phase2_iv",
    "pke_hash_1",
    "prf_output_length",
    "qm_hash1",
    "qm_hash2",
    "qm_hash3",
    "revised_pke_decrypt",
    "revised_pke_encrypt",
    "revised_pke_key",
    "skeyid_pke",
    "skeyid_psk",
    "skeyid_sig",
]


def _message_id(message_id: int) -> bytes:
    if not 0 <= message_id <= 0xFFFFFFFF:
        raise CryptoError(f"message ID {message_id} does not fit in 4 octets")
    return message_id.to_bytes(4, "big")


# --- SKEYID, RFC 2409 §5 -------------------------------------------------------------


def skeyid_psk(prf_alg: str, psk: bytes, ni_b: bytes, nr_b: bytes) -> bytes:
    """For pre-shared keys: SKEYID = prf(pre-shared-key, Ni_b | Nr_b)."""
    return prf(prf_alg, psk, ni_b + nr_b)


def skeyid_sig(prf_alg: str, ni_b: bytes, nr_b: bytes, g_xy: bytes) -> bytes:
    """For signatures: SKEYID = prf(Ni_b | Nr_b, g^xy)."""
    return prf(prf_alg, ni_b + nr_b, g_xy)


def skeyid_pke(
    prf_alg: str, hash_alg: str, ni_b: bytes, nr_b: bytes, cky_i: bytes, cky_r: bytes
) -> bytes:
    """For public key encryption: SKEYID = prf(hash(Ni_b | Nr_b), CKY-I | CKY-R)."""
    return prf(prf_alg, hash_digest(hash_alg, ni_b + nr_b), cky_i + cky_r)


@dataclass(frozen=True, slots=True)
class Phase1Keys:
    """SKEYID and the three keys derived from it (RFC 2409 §5)."""

    skeyid: bytes
    skeyid_d: bytes  # derives Phase 2 KEYMAT
    skeyid_a: bytes  # authenticates ISAKMP messages (HASH payloads)
    skeyid_e: bytes  # source of the ISAKMP SA encryption key

    def __repr__(self) -> str:  # key material stays out of logs and tracebacks
        return "Phase1Keys(<secret>)"


def derive_phase1_keys(
    prf_alg: str, skeyid: bytes, g_xy: bytes, cky_i: bytes, cky_r: bytes
) -> Phase1Keys:
    """RFC 2409 §5:
    SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0)
    SKEYID_a = prf(SKEYID, SKEYID_d | g^xy | CKY-I | CKY-R | 1)
    SKEYID_e = prf(SKEYID, SKEYID_a | g^xy | CKY-I | CKY-R | 2)
    """
    tail = g_xy + cky_i + cky_r
    skeyid_d = prf(prf_alg, skeyid, tail + b"\x00")
    skeyid_a = prf(prf_alg, skeyid, skeyid_d + tail + b"\x01")
    skeyid_e = prf(prf_alg, skeyid, skeyid_a + tail + b"\x02")
    return Phase1Keys(skeyid=skeyid, skeyid_d=skeyid_d, skeyid_a=skeyid_a, skeyid_e=skeyid_e)


def encryption_key(prf_alg: str, skeyid_e: bytes, key_length: int) -> bytes:
    """The ISAKMP SA cipher key from SKEYID_e (RFC 2409 Appendix B).

    If SKEYID_e is long enough its leading octets are the key; otherwise
    Ka = K1 | K2 | K3 ... with K1 = prf(SKEYID_e, 0), K2 = prf(SKEYID_e, K1), ...
    (the "0" is a single zero octet) and the key is the leading octets of Ka.
    """
    if key_length <= 0:
        raise CryptoError("key length must be positive")
    if len(skeyid_e) >= key_length:
        return skeyid_e[:key_length]
    block = prf(prf_alg, skeyid_e, b"\x00")
    ka = block
    while len(ka) < key_length:
        block = prf(prf_alg, skeyid_e, block)
        ka += block
    return ka[:key_length]


# --- Public key encryption, RFC 2409 §5.2 and §5.3 --------------------------------


def pke_hash_1(hash_alg: str, certificate: bytes) -> bytes:
    """HASH(1) of message 3: a hash, with the negotiated hash function, of the
    certificate (or public key) the initiator encrypted to (RFC 2409 §5.2)."""
    return hash_digest(hash_alg, certificate)


def revised_pke_key(prf_alg: str, nonce_b: bytes, cky: bytes, key_length: int) -> bytes:
    """Ke_i (or Ke_r) of the revised mode (RFC 2409 §5.3): Ne_i = prf(Ni_b, CKY-I)
    (Ne_r = prf(Nr_b, CKY-R)), the key taken from it as from SKEYID_e (Appendix B)."""
    return encryption_key(prf_alg, prf(prf_alg, nonce_b, cky), key_length)


def revised_pke_encrypt(cipher: IkeCipher, bodies: list[bytes]) -> list[bytes]:
    """The payload bodies after the nonce, each encrypted with Ke_i / Ke_r (RFC 2409
    §5.3): CBC with a zero IV for the first, the previous payload's last ciphertext
    block for the next; every body is padded with zeros and a last octet counting
    the padding octets before it, so there is always padding."""
    iv = bytes(cipher.block_size)
    out: list[bytes] = []
    for body in bodies:
        pad = cipher.block_size - len(body) % cipher.block_size
        ciphertext = cipher.encrypt(iv, body + bytes(pad - 1) + bytes((pad - 1,)))
        iv = ciphertext[-cipher.block_size:]
        out.append(ciphertext)
    return out


def revised_pke_decrypt(cipher: IkeCipher, bodies: list[bytes]) -> list[bytes]:
    """Inverse of revised_pke_encrypt; DecryptError if a body is not whole blocks or
    its padding count does not fit in the body."""
    iv = bytes(cipher.block_size)
    out: list[bytes] = []
    for body in bodies:
        plaintext = cipher.decrypt(iv, body)
        iv = body[-cipher.block_size:]
        count = plaintext[-1] + 1
        if count > len(plaintext):
            raise DecryptError("padding longer than the payload")
        out.append(plaintext[:-count])
    return out


# --- Main Mode authentication, RFC 2409 §5 ------------------------------------------


def hash_i(
    prf_alg: str,
    skeyid: bytes,
    g_xi: bytes,
    g_xr: bytes,
    cky_i: bytes,
    cky_r: bytes,
    sa_i_b: bytes,
    id_ii_b: bytes,
) -> bytes:
    """HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b)."""
    return prf(prf_alg, skeyid, g_xi + g_xr + cky_i + cky_r + sa_i_b + id_ii_b)


def hash_r(
    prf_alg: str,
    skeyid: bytes,
    g_xr: bytes,
    g_xi: bytes,
    cky_r: bytes,
    cky_i: bytes,
    sa_i_b: bytes,
    id_ir_b: bytes,
) -> bytes:
    """HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b)."""
    return prf(prf_alg, skeyid, g_xr + g_xi + cky_r + cky_i + sa_i_b + id_ir_b)


# --- IVs, RFC 2409 Appendix B -------------------------------------------------------


def phase1_iv(hash_alg: str, g_xi: bytes, g_xr: bytes, block_size: int) -> bytes:
    """IV for the first encrypted Phase 1 message: hash(g^xi | g^xr), truncated.

    Every later message in the exchange uses the last ciphertext block of the
    previous one (see last_cipher_block).
    """
    return _truncated_iv(hash_digest(hash_alg, g_xi + g_xr), block_size)


def phase2_iv(hash_alg: str, last_phase1_iv: bytes, message_id: int, block_size: int) -> bytes:
    """IV for the first message of a Phase 2 / informational exchange:
    hash(last Phase 1 CBC output block | M-ID), truncated to the block size."""
    return _truncated_iv(
        hash_digest(hash_alg, last_phase1_iv + _message_id(message_id)), block_size
    )


def last_cipher_block(ciphertext: bytes, block_size: int) -> bytes:
    """The CBC output block that is the IV of the next message in the same exchange."""
    if block_size <= 0 or len(ciphertext) < block_size or len(ciphertext) % block_size:
        raise CryptoError("ciphertext is not a whole number of blocks")
    return ciphertext[-block_size:]


def _truncated_iv(digest: bytes, block_size: int) -> bytes:
    if not 0 < block_size <= len(digest):
        raise CryptoError(f"hash of {len(digest)} octets cannot give a {block_size}-octet IV")
    return digest[:block_size]


# --- Quick Mode and Informational hashes, RFC 2409 §5.5 / §5.7 -----------------------


def qm_hash1(prf_alg: str, skeyid_a: bytes, message_id: int, payloads_after_hash: bytes) -> bytes:
    """HASH(1) = prf(SKEYID_a, M-ID | SA | Ni [ | KE ] [ | IDci | IDcr ]): the message
    from the payload after HASH to its end, headers included."""
    return prf(prf_alg, skeyid_a, _message_id(message_id) + payloads_after_hash)


def qm_hash2(
    prf_alg: str, skeyid_a: bytes, message_id: int, ni_b: bytes, payloads_after_hash: bytes
) -> bytes:
    """HASH(2) = prf(SKEYID_a, M-ID | Ni_b | SA | Nr [ | KE ] [ | IDci | IDcr ])."""
    return prf(prf_alg, skeyid_a, _message_id(message_id) + ni_b + payloads_after_hash)


def qm_hash3(prf_alg: str, skeyid_a: bytes, message_id: int, ni_b: bytes, nr_b: bytes) -> bytes:
    """HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b), the "0" a single zero octet."""
    return prf(prf_alg, skeyid_a, b"\x00" + _message_id(message_id) + ni_b + nr_b)


def informational_hash(
    prf_alg: str, skeyid_a: bytes, message_id: int, payloads_after_hash: bytes
) -> bytes:
    """HASH(1) = prf(SKEYID_a, M-ID | N/D) for Informational exchanges (RFC 2409 §5.7)."""
    return prf(prf_alg, skeyid_a, _message_id(message_id) + payloads_after_hash)


# --- KEYMAT, RFC 2409 §5.5 ----------------------------------------------------------


def keymat(
    prf_alg: str,
    skeyid_d: bytes,
    protocol: int,
    spi: bytes,
    ni_b: bytes,
    nr_b: bytes,
    length: int,
    g_qm_xy: bytes | None = None,
) -> bytes:
    """KEYMAT for one IPsec SA (one direction: `spi` is the receiver's SPI).

    KEYMAT = K1 | K2 | K3 | ... with
    K1 = prf(SKEYID_d, [ g(qm)^xy | ] protocol | SPI | Ni_b | Nr_b)
    K(n+1) = prf(SKEYID_d, K(n) | [ g(qm)^xy | ] protocol | SPI | Ni_b | Nr_b)
    truncated to `length` octets (encryption key first, then integrity key).
    """
    if not 0 <= protocol <= 0xFF:
        raise CryptoError(f"protocol {protocol} does not fit in one octet")
    if length <= 0:
        raise CryptoError("KEYMAT length must be positive")
    seed = (g_qm_xy or b"") + bytes([protocol]) + spi + ni_b + nr_b
    block = prf(prf_alg, skeyid_d, seed)
    out = block
    while len(out) < length:
        block = prf(prf_alg, skeyid_d, block + seed)
        out += block
    return out[:length]


# --- NAT traversal, RFC 3947 §3.2 ----------------------------------------------------


def nat_d_hash(hash_alg: str, cky_i: bytes, cky_r: bytes, address: bytes, port: int) -> bytes:
    """NAT-D payload data: HASH(CKY-I | CKY-R | IP | Port) with the negotiated hash;
    `address` is 4 (IPv4) or 16 (IPv6) octets, the port 2 octets in network order."""
    if len(address) not in (4, 16):
        raise CryptoError("address must be 4 or 16 octets")
    if not 0 <= port <= 0xFFFF:
        raise CryptoError(f"port {port} out of range")
    return hash_digest(hash_alg, cky_i + cky_r + address + port.to_bytes(2, "big"))


def prf_output_length(prf_alg: str) -> int:
    """Length of one prf() block, e.g. of SKEYID and of a HASH payload."""
    return digest_size(prf_alg)
