"""strongSwan proposal syntax and the IKEv1 numbers behind it."""

from __future__ import annotations

import pytest

from ikev1d.proposals import (
    DH_GROUPS,
    SUPPORTED_DH_GROUPS,
    EspProposal,
    IkeProposal,
    ProposalError,
    dh_group_name,
    esp_auth_alg,
    esp_encryption_key_bytes,
    esp_icv_bytes,
    esp_integrity_key_bytes,
    esp_key_length,
    esp_proposal_from_attributes,
    esp_transform_id,
    ike_encryption_block_bytes,
    ike_encryption_id,
    ike_encryption_key_bytes,
    ike_hash_id,
    ike_proposal_from_attributes,
    parse_esp_proposal,
    parse_ike_proposal,
)

CANONICAL_IKE = [
    "aes256-sha256-modp2048",
    "aes128-sha1-modp2048",
    "3des-sha1-modp1024",
    "aes128-sha256-ecp256",
    "aes192-sha384-ecp384",
    "aes256-sha512-ecp521",
    "aes128-sha256-curve25519",
    "aes256-sha256-modp1536",
    "aes256-sha256-modp3072",
    "aes256-sha256-modp4096",
    "aes256-sha512-modp6144",
    "aes256-sha512-modp8192",
]

CANONICAL_ESP = [
    "aes128gcm16-modp2048",
    "aes128gcm16",
    "aes256gcm12",
    "aes192gcm8",
    "aes256-sha256",
    "aes128-sha1",
    "3des-sha1",
    "aes256-sha384-ecp384",
    "aes256-sha512-curve25519",
    "null-sha256",
    "aes128gcm16-esn",
    "aes128-sha256-modp2048-esn",
]


@pytest.mark.parametrize("text", CANONICAL_IKE)
def test_ike_render_parse_round_trip(text: str) -> None:
    (proposal,) = parse_ike_proposal(text)
    assert proposal.render() == text
    assert str(proposal) == text


@pytest.mark.parametrize("text", CANONICAL_ESP)
def test_esp_render_parse_round_trip(text: str) -> None:
    (proposal,) = parse_esp_proposal(text)
    assert proposal.render() == text


def test_ike_fields() -> None:
    assert parse_ike_proposal("aes256-sha256-modp2048") == [
        IkeProposal("aes", 256, "sha256", 14)
    ]
    assert parse_ike_proposal("3des-sha1-modp1024") == [IkeProposal("3des", 192, "sha1", 2)]


def test_esp_fields() -> None:
    (gcm,) = parse_esp_proposal("aes128gcm16-modp2048")
    assert gcm == EspProposal("aesgcm", 128, 16, None, 14)
    assert gcm.is_aead and gcm.pfs and not gcm.esn
    (cbc,) = parse_esp_proposal("aes256-sha256")
    assert cbc == EspProposal("aes", 256, 0, "sha256", None)
    assert not cbc.is_aead and not cbc.pfs


def test_multi_algorithm_expansion_order() -> None:
    got = [p.render() for p in parse_ike_proposal("aes128-aes256-sha256-sha1-modp2048-ecp256")]
    assert got == [
        "aes128-sha256-modp2048",
        "aes128-sha256-ecp256",
        "aes128-sha1-modp2048",
        "aes128-sha1-ecp256",
        "aes256-sha256-modp2048",
        "aes256-sha256-ecp256",
        "aes256-sha1-modp2048",
        "aes256-sha1-ecp256",
    ]


def test_esp_multi_expansion_with_pfs_choice_and_esn() -> None:
    got = [p.render() for p in parse_esp_proposal("aes128gcm16-aes256gcm16-modp2048-modpnone")]
    assert got == ["aes128gcm16-modp2048", "aes128gcm16", "aes256gcm16-modp2048", "aes256gcm16"]
    got = [p.render() for p in parse_esp_proposal("aes128-sha256-sha1-noesn-esn")]
    assert got == ["aes128-sha256", "aes128-sha256-esn", "aes128-sha1", "aes128-sha1-esn"]


def test_duplicates_collapse() -> None:
    assert len(parse_ike_proposal("aes128-aes-sha1-sha-modp2048")) == 1


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("aes-sha-modp2048", "aes128-sha1-modp2048"),
        ("aes128-sha2_256-modp2048", "aes128-sha256-modp2048"),
        ("aes256-sha2_384-ecp384", "aes256-sha384-ecp384"),
        ("aes256-sha2_512-ecp521", "aes256-sha512-ecp521"),
        ("aes128-sha256-x25519", "aes128-sha256-curve25519"),
        ("AES256-SHA256-MODP2048", "aes256-sha256-modp2048"),
        (" aes256-sha256-modp2048 ", "aes256-sha256-modp2048"),
    ],
)
def test_ike_aliases(alias: str, canonical: str) -> None:
    assert [p.render() for p in parse_ike_proposal(alias)] == [canonical]


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("aes128gcm128", "aes128gcm16"),
        ("aes128gcm", "aes128gcm16"),
        ("aes256gcm64", "aes256gcm8"),
        ("aes128gcm96", "aes128gcm12"),
        ("aes-sha", "aes128-sha1"),
        ("aes256-sha2_256-noesn", "aes256-sha256"),
    ],
)
def test_esp_aliases(alias: str, canonical: str) -> None:
    assert [p.render() for p in parse_esp_proposal(alias)] == [canonical]


def test_prf_token_is_ignored_with_a_note() -> None:
    notes: list[str] = []
    assert parse_ike_proposal("aes128-sha256-prfsha256-modp2048", notes=notes) == [
        IkeProposal("aes", 128, "sha256", 14)
    ]
    assert len(notes) == 1
    assert "prfsha256" in notes[0]
    assert "ignored" in notes[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("blowfish-sha1-modp2048",
         "unknown algorithm 'blowfish' in proposal 'blowfish-sha1-modp2048'"),
        ("aes128-sha256", "no DH group"),
        ("aes128-modp2048", "no integrity"),
        ("sha256-modp2048", "no encryption"),
        ("", "empty proposal"),
        ("aes128--sha1-modp2048", "empty algorithm name"),
        ("aes128gcm16-modp2048", "AEAD"),
        ("null-sha1-modp2048", "null encryption"),
        ("aes128-sha1-modp2048-esn", "esn has no meaning"),
        ("aes128-sha1-modpnone", "modpnone has no meaning"),
        ("aes-sha1-modp768", "modp768 (DH group 1) is refused"),
        ("aes-md5-modp2048", "md5 is insecure"),
        ("des-sha1-modp2048", "des is insecure"),
        ("aes128-sha1-ecp192", "unknown algorithm 'ecp192'"),
    ],
)
def test_ike_errors(text: str, message: str) -> None:
    with pytest.raises(ProposalError) as info:
        parse_ike_proposal(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("aes128", "no integrity algorithm"),
        ("aes128gcm16-sha256", "remove 'sha256'"),
        ("aes128-aes128gcm16-sha256", "mixes AEAD"),
        ("aes128-sha256-prfsha256", "PRF"),
        ("chacha20poly1305", "unknown algorithm 'chacha20poly1305'"),
        ("aes128gcm10", "unknown algorithm 'aes128gcm10'"),
        ("aes128-md5", "md5 is insecure"),
        ("aes128gcm16-modp768", "refused"),
    ],
)
def test_esp_errors(text: str, message: str) -> None:
    with pytest.raises(ProposalError) as info:
        parse_esp_proposal(text)
    assert message in str(info.value)


def test_insecure_allowed_when_configured() -> None:
    (md5,) = parse_ike_proposal("aes-md5-modp2048", allow_insecure=True)
    assert md5.integrity == "md5" and md5.weak
    (des,) = parse_esp_proposal("des-md5", allow_insecure=True)
    assert des.encryption == "des" and des.key_length == 64 and des.weak
    # group 1 stays refused whatever the setting
    with pytest.raises(ProposalError):
        parse_ike_proposal("aes-sha1-modp768", allow_insecure=True)


def test_weak_flags() -> None:
    (legacy,) = parse_ike_proposal("3des-sha1-modp1024")
    assert legacy.weak
    assert any("3des" in r for r in legacy.weaknesses)
    assert any("modp1024" in r for r in legacy.weaknesses)
    (modern,) = parse_ike_proposal("aes256-sha256-modp2048")
    assert not modern.weak and modern.weaknesses == ()
    assert parse_esp_proposal("aes128gcm8")[0].weak
    assert not parse_esp_proposal("aes128gcm16")[0].weak
    assert parse_esp_proposal("null-sha256")[0].weak


def test_dh_names() -> None:
    assert DH_GROUPS["modp2048"] == 14
    for name, number in DH_GROUPS.items():
        assert dh_group_name(number) == name
    assert dh_group_name(31) == "curve25519"
    assert dh_group_name(99) == "group99"


def test_constructor_validates() -> None:
    with pytest.raises(ProposalError):
        IkeProposal("aes", 100, "sha1", 14)
    with pytest.raises(ProposalError):
        IkeProposal("3des", 128, "sha1", 14)
    with pytest.raises(ProposalError):
        IkeProposal("aes", 128, "sha1", 1)
    with pytest.raises(ProposalError):
        EspProposal("aesgcm", 128, 16, "sha1", None)
    with pytest.raises(ProposalError):
        EspProposal("aes", 128, 0, None, None)
    with pytest.raises(ProposalError):
        EspProposal("aesgcm", 128, 10, None, None)


# --- IANA numbers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "enc", "key_length", "hash_alg", "group"),
    [
        ("aes128-sha1-modp2048", 7, 128, 2, 14),
        ("aes256-sha256-modp2048", 7, 256, 4, 14),
        ("aes192-sha384-ecp384", 7, 192, 5, 20),
        ("aes256-sha512-curve25519", 7, 256, 6, 31),
        ("3des-sha1-modp1024", 5, None, 2, 2),
    ],
)
def test_ike_ids(
    text: str, enc: int, key_length: int | None, hash_alg: int, group: int
) -> None:
    (p,) = parse_ike_proposal(text)
    assert ike_encryption_id(p) == (enc, key_length)
    assert ike_hash_id(p) == hash_alg
    assert ike_proposal_from_attributes(enc, key_length, hash_alg, group) == p


def test_ike_md5_ids() -> None:
    (p,) = parse_ike_proposal("aes-md5-modp2048", allow_insecure=True)
    assert ike_hash_id(p) == 1
    assert ike_proposal_from_attributes(7, 128, 1, 14) == p


@pytest.mark.parametrize(
    ("enc", "key_length", "hash_alg", "group"),
    [
        (7, None, 2, 14),  # AES without Key Length
        (7, 100, 2, 14),  # bad AES key length
        (3, None, 2, 14),  # Blowfish
        (5, 128, 2, 14),  # 3DES with a wrong Key Length
        (7, 128, 3, 14),  # Tiger
        (7, 128, 2, 1),  # group 1
        (7, 128, 2, 22),  # unknown group
    ],
)
def test_ike_unsupported_attributes(
    enc: int, key_length: int | None, hash_alg: int, group: int
) -> None:
    assert ike_proposal_from_attributes(enc, key_length, hash_alg, group) is None


def test_ike_3des_with_matching_key_length_attribute() -> None:
    assert ike_proposal_from_attributes(5, 192, 2, 14) == IkeProposal("3des", 192, "sha1", 14)


def test_ike_key_and_block_sizes() -> None:
    (aes,) = parse_ike_proposal("aes256-sha256-modp2048")
    (tdes,) = parse_ike_proposal("3des-sha1-modp2048")
    assert (ike_encryption_key_bytes(aes), ike_encryption_block_bytes(aes)) == (32, 16)
    assert (ike_encryption_key_bytes(tdes), ike_encryption_block_bytes(tdes)) == (24, 8)


@pytest.mark.parametrize(
    ("text", "transform_id", "key_length", "auth", "group", "enc_bytes", "integ_bytes", "icv"),
    [
        ("aes128gcm16-modp2048", 20, 128, None, 14, 20, 0, 16),
        ("aes256gcm16", 20, 256, None, None, 36, 0, 16),
        ("aes128gcm12", 19, 128, None, None, 20, 0, 12),
        ("aes192gcm8", 18, 192, None, None, 28, 0, 8),
        ("aes128-sha1", 12, 128, 2, None, 16, 20, 12),
        ("aes256-sha256", 12, 256, 5, None, 32, 32, 16),
        ("aes256-sha384-ecp384", 12, 256, 6, 20, 32, 48, 24),
        ("aes256-sha512", 12, 256, 7, None, 32, 64, 32),
        ("3des-sha1", 3, None, 2, None, 24, 20, 12),
        ("null-sha256", 11, None, 5, None, 0, 32, 16),
    ],
)
def test_esp_ids_and_sizes(
    text: str,
    transform_id: int,
    key_length: int | None,
    auth: int | None,
    group: int | None,
    enc_bytes: int,
    integ_bytes: int,
    icv: int,
) -> None:
    (p,) = parse_esp_proposal(text)
    assert esp_transform_id(p) == transform_id
    assert esp_auth_alg(p) == auth
    assert esp_encryption_key_bytes(p) == enc_bytes
    assert esp_integrity_key_bytes(p) == integ_bytes
    assert esp_icv_bytes(p) == icv
    assert esp_proposal_from_attributes(transform_id, key_length, auth, group) == p


def test_esp_md5_ids() -> None:
    (p,) = parse_esp_proposal("aes128-md5", allow_insecure=True)
    assert esp_auth_alg(p) == 1
    assert (esp_integrity_key_bytes(p), esp_icv_bytes(p)) == (16, 12)
    assert esp_proposal_from_attributes(12, 128, 1, None) == p


@pytest.mark.parametrize(
    ("transform_id", "key_length", "auth", "group"),
    [
        (20, None, None, None),  # GCM without Key Length
        (20, 128, 2, None),  # GCM with an authentication algorithm
        (12, None, 2, None),  # AES-CBC without Key Length
        (12, 128, None, None),  # AES-CBC without authentication
        (12, 128, 4, None),  # KPDK
        (12, 128, 2, 1),  # group 1 PFS
        (13, 128, 2, None),  # AES-CTR: not supported
        (3, 128, 2, None),  # 3DES with a wrong Key Length
    ],
)
def test_esp_unsupported_attributes(
    transform_id: int, key_length: int | None, auth: int | None, group: int | None
) -> None:
    assert esp_proposal_from_attributes(transform_id, key_length, auth, group) is None


# --- exhaustive: every proposal we can represent ----------------------------------

_IKE_CIPHERS = [("aes", 128), ("aes", 192), ("aes", 256), ("3des", 192), ("des", 64)]
_HASHES = ["md5", "sha1", "sha256", "sha384", "sha512"]
_GROUPS = sorted(SUPPORTED_DH_GROUPS)
ALL_IKE = [
    IkeProposal(enc, key, integrity, group)
    for enc, key in _IKE_CIPHERS
    for integrity in _HASHES
    for group in _GROUPS
]
ALL_ESP = [
    EspProposal(enc, key, icv, integrity, group, esn)
    for enc, key, icv, integrities in (
        [("aesgcm", k, i, [None]) for k in (128, 192, 256) for i in (8, 12, 16)]
        + [(e, k, 0, list(_HASHES)) for e, k in [*_IKE_CIPHERS, ("null", 0)]]
    )
    for integrity in integrities
    for group in [None, *_GROUPS]
    for esn in (False, True)
]


def test_every_ike_proposal_round_trips() -> None:
    assert len(ALL_IKE) == 5 * 5 * 11
    for p in ALL_IKE:
        assert parse_ike_proposal(p.render(), allow_insecure=True) == [p]
        enc, key_length = ike_encryption_id(p)
        assert ike_proposal_from_attributes(enc, key_length, ike_hash_id(p), p.dh_group) == p
        # refused without allow_insecure exactly when md5 or des is in it
        insecure = p.integrity == "md5" or p.encryption == "des"
        if insecure:
            with pytest.raises(ProposalError):
                parse_ike_proposal(p.render())
        else:
            assert parse_ike_proposal(p.render()) == [p]


def test_every_esp_proposal_round_trips() -> None:
    for p in ALL_ESP:
        assert parse_esp_proposal(p.render(), allow_insecure=True) == [p]
        key_length = p.key_length if p.encryption in ("aes", "aesgcm") else None
        assert esp_key_length(p) == key_length
        back = esp_proposal_from_attributes(
            esp_transform_id(p), key_length, esp_auth_alg(p), p.dh_group
        )
        # ESN is its own attribute (RFC 4304), not part of these four values
        assert back == EspProposal(p.encryption, p.key_length, p.icv_length, p.integrity,
                                   p.dh_group)
