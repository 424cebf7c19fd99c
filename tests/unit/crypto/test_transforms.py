"""ikev1d.crypto.transforms: every row checked against a source that does not read it.

The IANA values are written here from the RFC tables (RFC 2409 Appendix A,
RFC 2407 §4.4.4 and §4.5, RFC 4106 §8.4, RFC 4868 §3 / IANA "IPsec
Authentication Algorithms"), the sizes from the `cryptography` primitives and
the RFCs defining the ESP transforms, and the XFRM names from the kernel's
algorithm list (net/xfrm/xfrm_algo.c), as the kernel backend tests pin them.
"""

from __future__ import annotations

import pytest

from ikev1d.crypto import transforms
from ikev1d.crypto.dh import GROUPS, DhKind
from ikev1d.crypto.transforms import ENCRYPTIONS, INTEGRITIES
from ikev1d.proposals import DH_GROUPS, IkeProposal, parse_esp_proposal, parse_ike_proposal
from ikev1d.wire.enums import DhGroup as WireDhGroup
from ikev1d.wire.enums import EspTransformId, IkeEncryption, IkeHash, IpsecAuthAlg

# (name, ICV octets) -> (IKE Encryption Algorithm, ESP transform ID, XFRM name).
ENCRYPTION_SOURCES: dict[tuple[str, int], tuple[int | None, int, str | None]] = {
    ("aes", 0): (7, 12, "cbc(aes)"),  # RFC 3602 §5.3 (IKE 7 is IANA's AES-CBC)
    ("aesgcm", 16): (None, 20, "rfc4106(gcm(aes))"),  # RFC 4106 §8.4
    ("aesgcm", 12): (None, 19, "rfc4106(gcm(aes))"),
    ("aesgcm", 8): (None, 18, "rfc4106(gcm(aes))"),
    ("3des", 0): (5, 3, "cbc(des3_ede)"),  # RFC 2409 Appendix A, RFC 2407 §4.4.4
    ("des", 0): (1, 2, None),
    ("null", 0): (None, 11, "ecb(cipher_null)"),  # RFC 2410, RFC 2407 §4.4.4
}
# name -> (IKE Hash Algorithm, ESP Authentication Algorithm, ICV octets, XFRM name).
INTEGRITY_SOURCES: dict[str, tuple[int, int, int, str]] = {
    "md5": (1, 1, 12, "hmac(md5)"),  # HMAC-MD5-96, RFC 2403
    "sha1": (2, 2, 12, "hmac(sha1)"),  # HMAC-SHA-1-96, RFC 2404
    "sha256": (4, 5, 16, "hmac(sha256)"),  # HMAC-SHA-256-128, RFC 4868 §2.3
    "sha384": (5, 6, 24, "hmac(sha384)"),
    "sha512": (6, 7, 32, "hmac(sha512)"),
}


def test_every_encryption_row_has_a_source_and_the_source_a_row() -> None:
    assert {(row.name, row.icv_bytes) for row in ENCRYPTIONS} == set(ENCRYPTION_SOURCES)
    assert len(ENCRYPTIONS) == len(ENCRYPTION_SOURCES)
    assert {row.name for row in INTEGRITIES} == set(INTEGRITY_SOURCES)
    assert len(INTEGRITIES) == len(INTEGRITY_SOURCES)


@pytest.mark.parametrize("row", ENCRYPTIONS, ids=lambda r: r.tokens[0])
def test_encryption_row(row: transforms.EncryptionTransform) -> None:
    ike_id, esp_id, xfrm = ENCRYPTION_SOURCES[(row.name, row.icv_bytes)]
    assert row.ike_id == ike_id and row.esp_id == esp_id and row.xfrm == xfrm
    # the wire registries carry the same numbers under the RFC's names
    if row.ike_id is not None:
        assert isinstance(row.ike_id, IkeEncryption) and row.ike_id.name.endswith("_CBC")
    assert isinstance(row.esp_id, EspTransformId)
    if row.aead:
        assert row.esp_id.name == f"AES_GCM_{row.icv_bytes}"
        # RFC 4106 §3.1 (8-octet explicit IV), §8.1 (4-octet salt); no IKEv1 Phase 1 value
        assert (row.iv_bytes, row.salt_bytes, row.ike_id) == (8, 4, None)
    if row.primitive is not None:
        # key lengths the primitive accepts; CBC: IV = one block (RFC 3602 §3, RFC 2451 §2.3)
        assert set(row.key_bits) <= set(row.primitive.key_sizes)
        if not row.aead:
            assert row.block_bytes * 8 == row.primitive.block_size
            assert row.iv_bytes == row.block_bytes
    assert row.esp_block_bytes % 4 == 0  # RFC 4303 §2.4
    if row.esp_name is not None:
        assert row.xfrm is not None  # what the data plane runs, the kernel can run


@pytest.mark.parametrize("row", INTEGRITIES, ids=lambda r: r.name)
def test_integrity_row(row: transforms.IntegrityTransform) -> None:
    ike_id, esp_id, icv, xfrm = INTEGRITY_SOURCES[row.name]
    assert (row.ike_hash_id, row.esp_auth_id, row.icv_bytes, row.xfrm) == (
        ike_id, esp_id, icv, xfrm
    )
    assert isinstance(row.ike_hash_id, IkeHash) and isinstance(row.esp_auth_id, IpsecAuthAlg)
    assert row.hash_bytes == row.primitive().digest_size
    assert row.esp_name == f"hmac-{row.name}-{row.icv_bytes * 8}"


def test_every_token_parses_to_its_row_and_renders_back() -> None:
    for row in ENCRYPTIONS:
        for bits in row.key_bits:
            token = row.token(bits)
            assert transforms.encryption_by_token(token) == (row, bits)
            if row.esp_id is not None:
                integ = "" if row.aead else "-sha256"
                (esp,) = parse_esp_proposal(token + integ, allow_insecure=True)
                assert (esp.encryption, esp.key_length, esp.icv_length) == (
                    row.name, bits, row.icv_bytes
                )
                assert esp.render() == token + integ
            if row.ike_id is not None:
                (ike,) = parse_ike_proposal(f"{token}-sha256-modp2048", allow_insecure=True)
                assert ike == IkeProposal(row.name, bits, "sha256", 14)
    for integrity in INTEGRITIES:
        for token in integrity.tokens:
            assert transforms.integrity_by_token(token) is integrity


def test_lookups_are_unambiguous() -> None:
    ike_ids = [row.ike_id for row in ENCRYPTIONS if row.ike_id is not None]
    esp_ids = [row.esp_id for row in ENCRYPTIONS if row.esp_id is not None]
    assert len(set(ike_ids)) == len(ike_ids) and len(set(esp_ids)) == len(esp_ids)
    tokens = [t for row in ENCRYPTIONS for t in row.tokens]
    tokens += [t for row in INTEGRITIES for t in row.tokens]
    assert len(set(tokens)) == len(tokens)
    for row in ENCRYPTIONS:
        if row.ike_id is not None:
            assert transforms.encryption_by_ike_id(row.ike_id) is row
        if row.esp_id is not None:
            assert transforms.encryption_by_esp_id(row.esp_id) is row
    for integrity in INTEGRITIES:
        assert transforms.integrity_by_ike_hash_id(integrity.ike_hash_id) is integrity
        assert transforms.integrity_by_esp_auth_id(integrity.esp_auth_id) is integrity
        assert transforms.integrity_by_esp_name(integrity.esp_name) is integrity
    assert transforms.encryption_by_ike_id(8) is None  # Camellia: not implemented
    assert transforms.integrity_by_esp_auth_id(9) is None  # AES-XCBC-MAC: not implemented


def test_dh_group_rows_match_the_wire_registry_and_their_rfcs() -> None:
    # The DH groups' row table is crypto.dh.GROUPS; the IANA names are the wire enum's.
    for number, group in GROUPS.items():
        member = WireDhGroup(number)
        assert member.name.startswith(group.kind.name), (number, member.name)
        bits = int(member.name.rsplit("_", 1)[1]) if "_" in member.name else 255
        if group.kind is DhKind.MODP:  # RFC 2409 §6, RFC 3526: g^x is one modulus long
            assert group.public_length * 8 == bits
        elif group.kind is DhKind.ECP:  # RFC 5903 §7: x | y, each ceil(bits / 8) octets
            assert group.public_length == 2 * ((bits + 7) // 8)
        else:  # RFC 8031 §2: 32 octets
            assert group.public_length == 32
        assert str(bits) in group.name or group.kind is DhKind.CURVE25519
    assert DH_GROUPS == {g.name: n for n, g in GROUPS.items()}
