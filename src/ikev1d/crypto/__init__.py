"""ikev1d.crypto: thin, named functions over `cryptography` for IKEv1.

dh          Diffie-Hellman groups and the KE exchange (RFC 2409 §6, RFC 3526, 5903, 8031)
algorithms  hashes, the HMAC PRF and CBC ciphers (RFC 2409 §4, Appendix B)
transforms  one row per encryption and integrity transform: ids, sizes, names
ike_keys    SKEYID, derived keys, HASH_I/R, IVs, Quick Mode hashes, KEYMAT, NAT-D
pubkey      RSA / ECDSA signatures over HASH_I/R, RSA nonce encryption (§5.1, §5.2)
certs       X.509 certificate paths: chain, validity, constraints, CRLs (RFC 5280 §6)
errors      CryptoError, InvalidPublicValue, DecryptError
"""

from __future__ import annotations

from ikev1d.crypto.algorithms import (
    CIPHERS,
    HASHES,
    IkeCipher,
    cipher_key_length,
    digest_size,
    hash_digest,
    pad_plaintext,
    prf,
)
from ikev1d.crypto.dh import (
    GROUPS,
    DhGroup,
    DhKeyPair,
    DhKind,
    generate_keypair,
    get_group,
    group_by_name,
    keypair_from_private,
    modp_prime,
)
from ikev1d.crypto.errors import CryptoError, DecryptError, InvalidPublicValue
from ikev1d.crypto.ike_keys import (
    Phase1Keys,
    derive_phase1_keys,
    encryption_key,
    hash_i,
    hash_r,
    informational_hash,
    keymat,
    last_cipher_block,
    nat_d_hash,
    phase1_iv,
    phase2_iv,
    pke_hash_1,
    prf_output_length,
    qm_hash1,
    qm_hash2,
    qm_hash3,
    revised_pke_decrypt,
    revised_pke_encrypt,
    revised_pke_key,
    skeyid_pke,
    skeyid_psk,
    skeyid_sig,
)
from ikev1d.crypto.pubkey import (
    ecdsa_sign_hash,
    ecdsa_verify_hash,
    pke_decrypt,
    pke_encrypt,
    rsa_sign_hash,
    rsa_verify_hash,
)

__all__ = [
    "CIPHERS",
    "GROUPS",
    "HASHES",
    "CryptoError",
    "DecryptError",
    "DhGroup",
    "DhKeyPair",
    "DhKind",
    "IkeCipher",
    "InvalidPublicValue",
    "Phase1Keys",
    "cipher_key_length",
    "derive_phase1_keys",
    "digest_size",
    "ecdsa_sign_hash",
    "ecdsa_verify_hash",
    "encryption_key",
    "generate_keypair",
    "get_group",
    "group_by_name",
    "hash_digest",
    "hash_i",
    "hash_r",
    "informational_hash",
    "keymat",
    "keypair_from_private",
    "last_cipher_block",
    "modp_prime",
    "nat_d_hash",
    "pad_plaintext",
    "phase1_iv",
    "phase2_iv",
    "pke_decrypt",
    "pke_encrypt",
    "pke_hash_1",
    "prf",
    "prf_output_length",
    "qm_hash1",
    "qm_hash2",
    "qm_hash3",
    "revised_pke_decrypt",
    "revised_pke_encrypt",
    "revised_pke_key",
    "rsa_sign_hash",
    "rsa_verify_hash",
    "skeyid_pke",
    "skeyid_psk",
    "skeyid_sig",
]
