"""Every transform ikev1d knows, one row each: the facts the rest derives from.

A transform is named in five vocabularies that must agree: the strongSwan
proposal keywords of the configuration, the IKE attribute values of Phase 1
(RFC 2409 Appendix A), the IPsec DOI values of Phase 2 (RFC 2407 §4.4.4 and
§4.5, IANA "IPsec ESP Transform Identifiers"), the Linux XFRM algorithm names
(net/xfrm/xfrm_algo.c), and the `cryptography` primitive that computes it.
Each row below holds all of them with the sizes that follow from the
algorithm (key, block, IV, ICV), so ``ikev1d.proposals``, the crypto
functions, ESP processing and the kernel backend look facts up here instead
of keeping tables of their own.

Diffie-Hellman groups are rows of ``ikev1d.crypto.dh.GROUPS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import algorithms

from ikev1d.wire.enums import EspTransformId, IkeEncryption, IkeHash, IpsecAuthAlg

__all__ = [
    "ENCRYPTIONS",
    "ESP_ALIGNMENT",
    "INTEGRITIES",
    "EncryptionTransform",
    "IntegrityTransform",
    "encryption_by_esp_id",
    "encryption_by_esp_name",
    "encryption_by_ike_id",
    "encryption_by_name",
    "encryption_by_token",
    "integrity_by_esp_auth_id",
    "integrity_by_esp_name",
    "integrity_by_ike_hash_id",
    "integrity_by_name",
    "integrity_by_token",
    "or_list",
]

ESP_ALIGNMENT = 4
"""RFC 4303 §2.4: the ESP trailer ends on a 4-octet boundary whatever the cipher."""


@dataclass(frozen=True)
class EncryptionTransform:
    """One encryption transform (for AES-GCM: one per ICV length, as ESP numbers them)."""

    name: str
    """strongSwan keyword family, as ``IkeProposal``/``EspProposal.encryption`` hold it."""
    tokens: tuple[str, ...]
    """Proposal keywords; ``{bits}`` stands for each key length, a keyword without it
    for the first one. The first keyword is how the transform is written back."""
    key_bits: tuple[int, ...]
    """Key lengths the cipher takes; one value means a fixed length (no Key Length
    attribute is sent for it, RFC 2409 Appendix A, RFC 2407 §4.5)."""
    block_bytes: int
    """Cipher block size: plaintext is padded to a multiple of it (1 for counter modes)."""
    iv_bytes: int
    """IV carried in front of the ciphertext (RFC 3602 §3, RFC 2451 §2.3, RFC 4106 §3.1)."""
    icv_bytes: int = 0
    """Integrity check value of a combined-mode (AEAD) cipher; 0 for the others."""
    salt_bytes: int = 0
    """KEYMAT octets after the key that form the nonce salt (RFC 4106 §8.1)."""
    ike_id: IkeEncryption | None = None
    """Phase 1 Encryption Algorithm attribute (RFC 2409 Appendix A), None if not for IKE."""
    esp_id: EspTransformId | None = None
    """IPsec ESP transform identifier (RFC 2407 §4.4.4, RFC 4106 §8.4)."""
    esp_name: str | None = None
    """Name in ESP processing (``ikev1d.dataplane.esp``), None if it has no data plane."""
    xfrm: str | None = None
    """Linux crypto API name for an XFRM state (net/xfrm/xfrm_algo.c)."""
    primitive: type[algorithms.AES] | type[TripleDES] | None = None
    """The block cipher in `cryptography`; None for NULL and for DES, which it lacks."""
    insecure: bool = False
    """Refused in a proposal unless ``allow_insecure_algorithms`` is set."""
    weakness: str = ""
    """Why check-config warns about it (empty: no warning)."""

    @property
    def aead(self) -> bool:
        """Combined mode: encryption and integrity in one (RFC 4106)."""
        return self.icv_bytes > 0

    @property
    def fixed_key(self) -> bool:
        return len(self.key_bits) == 1

    @property
    def esp_block_bytes(self) -> int:
        """What ESP pads the ciphertext to a multiple of (RFC 4303 §2.4)."""
        return max(self.block_bytes, ESP_ALIGNMENT)

    def token(self, key_bits: int) -> str:
        """The proposal keyword for this transform with `key_bits`, e.g. ``aes128gcm16``."""
        return self.tokens[0].format(bits=key_bits)


@dataclass(frozen=True)
class IntegrityTransform:
    """A hash: the Phase 1 Hash Algorithm (and PRF through HMAC) and the ESP HMAC."""

    name: str
    """strongSwan keyword, as the proposals hold it."""
    tokens: tuple[str, ...]
    """Proposal keywords that mean it."""
    hash_bytes: int
    """Digest length, which is also the HMAC key length in ESP (RFC 2404 §3, RFC 4868 §2.1)."""
    icv_bytes: int
    """Truncated HMAC length in ESP (RFC 2403 §2, RFC 2404 §2, RFC 4868 §2.3)."""
    ike_hash_id: IkeHash
    """Phase 1 Hash Algorithm attribute (RFC 2409 Appendix A, IANA for SHA-2)."""
    esp_auth_id: IpsecAuthAlg
    """Phase 2 Authentication Algorithm attribute (RFC 2407 §4.5, RFC 4868 §3)."""
    esp_name: str
    """Name in ESP processing, after the RFC's name of the truncated HMAC."""
    xfrm: str
    """Linux crypto API name of the HMAC (net/xfrm/xfrm_algo.c)."""
    primitive: type[hashes.HashAlgorithm]
    insecure: bool = False
    weakness: str = ""

    @property
    def prf_token(self) -> str:
        """strongSwan's PRF keyword; IKEv1 takes the PRF from the hash (RFC 2409 §4)."""
        return f"prf{self.name}"


ENCRYPTIONS: tuple[EncryptionTransform, ...] = (
    EncryptionTransform(
        "aes", ("aes{bits}", "aes"), (128, 192, 256), block_bytes=16, iv_bytes=16,
        ike_id=IkeEncryption.AES_CBC, esp_id=EspTransformId.AES_CBC,  # RFC 3602 §5.3
        esp_name="aes-cbc", xfrm="cbc(aes)", primitive=algorithms.AES,
    ),
    # AES-GCM (RFC 4106): 8-octet explicit IV (§3.1), 4-octet salt (§8.1); one ESP
    # transform ID per ICV length (§8.4); never in IKEv1 Phase 1, which has no AEAD.
    EncryptionTransform(
        "aesgcm", ("aes{bits}gcm16", "aes{bits}gcm128", "aes{bits}gcm"), (128, 192, 256),
        block_bytes=1, iv_bytes=8, icv_bytes=16, salt_bytes=4,
        esp_id=EspTransformId.AES_GCM_16, esp_name="aes-gcm", xfrm="rfc4106(gcm(aes))",
        primitive=algorithms.AES,
    ),
    EncryptionTransform(
        "aesgcm", ("aes{bits}gcm12", "aes{bits}gcm96"), (128, 192, 256),
        block_bytes=1, iv_bytes=8, icv_bytes=12, salt_bytes=4,
        esp_id=EspTransformId.AES_GCM_12, esp_name="aes-gcm", xfrm="rfc4106(gcm(aes))",
        primitive=algorithms.AES,
    ),
    EncryptionTransform(
        "aesgcm", ("aes{bits}gcm8", "aes{bits}gcm64"), (128, 192, 256),
        block_bytes=1, iv_bytes=8, icv_bytes=8, salt_bytes=4,
        esp_id=EspTransformId.AES_GCM_8, esp_name="aes-gcm", xfrm="rfc4106(gcm(aes))",
        primitive=algorithms.AES, weakness="an 8-octet AES-GCM ICV is weak",
    ),
    EncryptionTransform(
        "3des", ("3des",), (192,), block_bytes=8, iv_bytes=8,  # RFC 2451 §2.3
        ike_id=IkeEncryption.TRIPLE_DES_CBC, esp_id=EspTransformId.TRIPLE_DES,
        esp_name="3des-cbc", xfrm="cbc(des3_ede)", primitive=TripleDES,
        weakness="3des (64-bit block cipher) is weak",
    ),
    EncryptionTransform(
        "des", ("des",), (64,), block_bytes=8, iv_bytes=8,
        ike_id=IkeEncryption.DES_CBC, esp_id=EspTransformId.DES,
        insecure=True, weakness="des (56-bit key) is broken",
    ),
    # RFC 2410: no key, no IV, no block; ESP with it needs an integrity algorithm.
    EncryptionTransform(
        "null", ("null",), (0,), block_bytes=1, iv_bytes=0,
        esp_id=EspTransformId.NULL, esp_name="null", xfrm="ecb(cipher_null)",
        weakness="null encryption provides no confidentiality",
    ),
)

INTEGRITIES: tuple[IntegrityTransform, ...] = (
    IntegrityTransform(
        "md5", ("md5",), 16, 12, IkeHash.MD5, IpsecAuthAlg.HMAC_MD5,  # RFC 2403
        "hmac-md5-96", "hmac(md5)", hashes.MD5, insecure=True, weakness="md5 is broken",
    ),
    IntegrityTransform(
        "sha1", ("sha1", "sha"), 20, 12, IkeHash.SHA, IpsecAuthAlg.HMAC_SHA,  # RFC 2404
        "hmac-sha1-96", "hmac(sha1)", hashes.SHA1,
    ),
    IntegrityTransform(
        "sha256", ("sha256", "sha2_256"), 32, 16, IkeHash.SHA2_256, IpsecAuthAlg.HMAC_SHA2_256,
        "hmac-sha256-128", "hmac(sha256)", hashes.SHA256,
    ),
    IntegrityTransform(
        "sha384", ("sha384", "sha2_384"), 48, 24, IkeHash.SHA2_384, IpsecAuthAlg.HMAC_SHA2_384,
        "hmac-sha384-192", "hmac(sha384)", hashes.SHA384,
    ),
    IntegrityTransform(
        "sha512", ("sha512", "sha2_512"), 64, 32, IkeHash.SHA2_512, IpsecAuthAlg.HMAC_SHA2_512,
        "hmac-sha512-256", "hmac(sha512)", hashes.SHA512,
    ),
)


# --- lookups, all derived from the rows above ------------------------------------------


def _encryption_tokens() -> dict[str, tuple[EncryptionTransform, int]]:
    table: dict[str, tuple[EncryptionTransform, int]] = {}
    for row in ENCRYPTIONS:
        for template in row.tokens:
            if "{bits}" in template:
                for bits in row.key_bits:
                    table[template.format(bits=bits)] = (row, bits)
            else:
                table[template] = (row, row.key_bits[0])
    return table


_ENCRYPTION_TOKENS = _encryption_tokens()
_ENCRYPTION_NAMES = {(row.name, row.icv_bytes): row for row in ENCRYPTIONS}
_ENCRYPTION_ESP_NAMES = {(row.esp_name, row.icv_bytes): row for row in ENCRYPTIONS
                         if row.esp_name is not None}
_ENCRYPTION_IKE_IDS = {int(row.ike_id): row for row in ENCRYPTIONS if row.ike_id is not None}
_ENCRYPTION_ESP_IDS = {int(row.esp_id): row for row in ENCRYPTIONS if row.esp_id is not None}
_INTEGRITY_TOKENS = {token: row for row in INTEGRITIES for token in row.tokens}
_INTEGRITY_NAMES = {row.name: row for row in INTEGRITIES}
_INTEGRITY_ESP_NAMES = {row.esp_name: row for row in INTEGRITIES}
_INTEGRITY_IKE_IDS = {int(row.ike_hash_id): row for row in INTEGRITIES}
_INTEGRITY_ESP_IDS = {int(row.esp_auth_id): row for row in INTEGRITIES}


def encryption_by_token(token: str) -> tuple[EncryptionTransform, int] | None:
    """(transform, key bits) a proposal keyword such as ``aes256`` or ``aes128gcm16`` means."""
    return _ENCRYPTION_TOKENS.get(token)


def encryption_by_name(name: str, icv_bytes: int = 0) -> EncryptionTransform | None:
    """The transform of a keyword family (``aes``, ``aesgcm`` with its ICV length, ...)."""
    return _ENCRYPTION_NAMES.get((name, icv_bytes))


def encryption_by_esp_name(esp_name: str, icv_bytes: int = 0) -> EncryptionTransform | None:
    """The transform ESP processing calls `esp_name` (``aes-gcm`` with its ICV length)."""
    return _ENCRYPTION_ESP_NAMES.get((esp_name, icv_bytes))


def encryption_by_ike_id(value: int) -> EncryptionTransform | None:
    """The transform of a Phase 1 Encryption Algorithm attribute value."""
    return _ENCRYPTION_IKE_IDS.get(value)


def encryption_by_esp_id(value: int) -> EncryptionTransform | None:
    """The transform of an IPsec ESP transform identifier."""
    return _ENCRYPTION_ESP_IDS.get(value)


def integrity_by_token(token: str) -> IntegrityTransform | None:
    """The hash a proposal keyword (``sha256``, ``sha2_256``, ``sha``...) means."""
    return _INTEGRITY_TOKENS.get(token)


def integrity_by_name(name: str) -> IntegrityTransform | None:
    return _INTEGRITY_NAMES.get(name)


def integrity_by_esp_name(esp_name: str) -> IntegrityTransform | None:
    return _INTEGRITY_ESP_NAMES.get(esp_name)


def integrity_by_ike_hash_id(value: int) -> IntegrityTransform | None:
    """The hash of a Phase 1 Hash Algorithm attribute value."""
    return _INTEGRITY_IKE_IDS.get(value)


def integrity_by_esp_auth_id(value: int) -> IntegrityTransform | None:
    """The hash of a Phase 2 Authentication Algorithm attribute value."""
    return _INTEGRITY_ESP_IDS.get(value)


def or_list(values: tuple[int, ...] | list[int]) -> str:
    """``128, 192 or 256``: allowed values as an error message names them."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" or {words[-1]}"
