"""Known-answer tests: our RFC 2409 derivations against a real strongSwan (charon 5.9).

Fixtures: tests/vectors/strongswan/<scenario>.json, written by
scripts/capture_strongswan_vectors.py from two charons talking IKEv1 in network
namespaces, charon logging at ike=4 (which prints g^xy, SKEYID, SKEYID_d/a/e, the
encryption key). Each holds the PSK, the raw ISAKMP messages in wire order (hex,
non-ESP marker stripped) and the values charon logged.

From the raw messages alone we extract Ni_b / Nr_b, g^xi / g^xr, the cookies and
SAi_b, then check that
- SKEYID, SKEYID_d/a/e and the encryption key equal what charon logged;
- messages 5 and 6 decrypt with our key and IV chain (Phase 1 IV, then the last
  ciphertext block) into a valid payload chain whose HASH_I / HASH_R we recompute;
- Quick Mode messages decrypt with phase2_iv() and their HASH(1)/(2)/(3) verify,
  as do the HASH(1) of any Informational exchange;
- KEYMAT (with g(qm)^xy for PFS) equals the ESP keys charon logged, when it logged them.

g^xy is logged by charon, so no private DH value is needed. The ISAKMP walking is a
tiny local TLV reader on purpose: this test checks crypto against strongSwan without
depending on our own wire codec.

Until the capture script has written tests/vectors/strongswan/ at all, the tests
skip; once the directory exists, every scenario below must be there (a missing file
fails).
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ikev1d.crypto import (
    IkeCipher,
    cipher_key_length,
    derive_phase1_keys,
    encryption_key,
    hash_i,
    hash_r,
    informational_hash,
    keymat,
    last_cipher_block,
    phase1_iv,
    phase2_iv,
    qm_hash1,
    qm_hash2,
    qm_hash3,
    skeyid_psk,
)

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors" / "strongswan"
SCENARIOS = [
    "psk-aes128-sha256-modp2048",
    "psk-aes128-sha256-ecp256",
    "psk-aes128-sha256-curve25519",
    "psk-3des-sha1-modp1024",
    "psk-aes128-sha256-modp2048-pfs",
]

# RFC 2408 §3.1 / §3.2 and RFC 2409 Appendix A numbers used below.
HEADER_LENGTH = 28
FLAG_ENCRYPTION = 0x01
EXCHANGE_MAIN_MODE = 2
EXCHANGE_INFORMATIONAL = 5
EXCHANGE_QUICK_MODE = 32
PAYLOAD_SA = 1
PAYLOAD_PROPOSAL = 2
PAYLOAD_KE = 4
PAYLOAD_ID = 5
PAYLOAD_HASH = 8
PAYLOAD_NONCE = 10
PROTO_ESP = 3


# --- fixture loading -----------------------------------------------------------------


def _norm(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


def _flatten(obj: Any, out: dict[str, Any]) -> None:
    """Every key of every nested mapping, normalised; the first occurrence wins."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.setdefault(_norm(str(key)), value)
        for value in obj.values():
            _flatten(value, out)


def _hex(value: Any) -> bytes:
    if isinstance(value, dict):
        for key in ("hex", "value", "data"):
            if key in value:
                return _hex(value[key])
    assert isinstance(value, str), f"expected a hex string, got {value!r}"
    return bytes.fromhex(re.sub(r"[\s:]", "", value))


# Names the fixture may use for a logged value (compared after _norm). charon's own
# ike=4 labels come first: "shared Diffie Hellman secret", "encryption key Ka", ...
LOGGED = {
    "g_xy": ("shared Diffie Hellman secret", "g_xy", "gxy", "shared_secret", "dh_secret"),
    "g_qm_xy": ("DH secret", "g_qm_xy", "gqmxy", "qm_shared_secret", "pfs_shared_secret"),
    "skeyid": ("SKEYID",),
    "skeyid_d": ("SKEYID_d",),
    "skeyid_a": ("SKEYID_a",),
    "skeyid_e": ("SKEYID_e",),
    "encryption_key": ("encryption key Ka", "encryption_key", "ka", "enc_key"),
    "initial_iv": ("initial IV", "phase1_iv", "iv"),
    "encr_i": ("encryption initiator key", "encr_i", "esp_encr_i"),
    "encr_r": ("encryption responder key", "encr_r", "esp_encr_r"),
    "integ_i": ("integrity initiator key", "integ_i", "esp_integ_i"),
    "integ_r": ("integrity responder key", "integ_r", "esp_integ_r"),
}


@dataclass
class Vector:
    name: str
    raw: dict[str, Any]
    flat: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _flatten(self.raw, self.flat)

    def get(self, *names: str) -> Any:
        for name in names:
            value = self.flat.get(_norm(name))
            if value not in (None, "", []):
                return value
        return None

    def logged_all(self, what: str) -> list[bytes]:
        """Every value charon logged under the label for `what`, in log order."""
        value = self.get(*LOGGED[what])
        if value is None:
            return []
        return [_hex(v) for v in value] if isinstance(value, list) else [_hex(value)]

    def logged(self, what: str) -> bytes | None:
        """The value logged for `what`; if logged several times, all copies must agree."""
        values = set(self.logged_all(what))
        assert len(values) <= 1, f"{self.name}: charon logged differing {what} values"
        return values.pop() if values else None

    def psk(self) -> bytes:
        hex_value = self.get("psk_hex", "secret_hex")
        if hex_value is not None:
            return _hex(hex_value)
        text = self.get("psk", "secret", "pre_shared_key")
        assert isinstance(text, str), f"{self.name}: no PSK in fixture"
        if text.startswith("0x"):
            return bytes.fromhex(text[2:])
        return text.encode()

    def messages(self) -> list[bytes]:
        entries = self.get("messages", "packets", "isakmp_messages")
        assert isinstance(entries, list) and entries, f"{self.name}: no messages in fixture"
        out: list[bytes] = []
        for entry in entries:
            if isinstance(entry, dict):
                entry = next(
                    entry[k] for k in ("hex", "data", "raw", "bytes", "isakmp") if k in entry
                )
            data = _hex(entry)
            if data[:4] == b"\x00\x00\x00\x00":  # non-ESP marker, should be stripped already
                data = data[4:]
            if not out or out[-1] != data:  # drop retransmissions
                out.append(data)
        return out


def _load(name: str) -> Vector:
    path = VECTOR_DIR / f"{name}.json"
    if not VECTOR_DIR.is_dir():
        pytest.skip(f"strongSwan vectors not captured yet ({VECTOR_DIR} missing)")
    if not path.is_file():
        pytest.fail(f"fixture {path} is missing: run scripts/capture_strongswan_vectors.py")
    return Vector(name, json.loads(path.read_text()))


# --- a tiny ISAKMP reader (RFC 2408 §3.1-3.2), independent of ikev1d.wire --------------


@dataclass(frozen=True)
class Header:
    cky_i: bytes
    cky_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int


@dataclass(frozen=True)
class Payload:
    type: int
    start: int  # offset of the generic header within the chain data
    end: int
    body: bytes


def parse_header(data: bytes) -> Header:
    assert len(data) >= HEADER_LENGTH
    length = int.from_bytes(data[24:28], "big")
    assert length == len(data), "ISAKMP length field disagrees with the datagram"
    return Header(
        cky_i=data[0:8],
        cky_r=data[8:16],
        next_payload=data[16],
        exchange=data[18],
        flags=data[19],
        message_id=int.from_bytes(data[20:24], "big"),
        length=length,
    )


def walk(first: int, data: bytes) -> list[Payload]:
    """The payload chain starting at data[0]; trailing bytes (CBC padding) are ignored."""
    payloads: list[Payload] = []
    offset, ptype = 0, first
    while ptype != 0:
        assert offset + 4 <= len(data), "payload header runs past the data"
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        assert 4 <= length <= len(data) - offset, f"bad payload length {length}"
        payloads.append(Payload(ptype, offset, offset + length, data[offset + 4 : offset + length]))
        ptype = data[offset]
        offset += length
    return payloads


def body_of(payloads: list[Payload], ptype: int) -> bytes:
    found = [p.body for p in payloads if p.type == ptype]
    assert len(found) == 1, f"expected one payload of type {ptype}, found {len(found)}"
    return found[0]


def ke_data(body: bytes) -> bytes:
    return body  # KE payload: the generic header is already stripped, the rest is data


def first_spi(sa_body: bytes) -> bytes:
    """SPI of the first proposal of an SA payload body (RFC 2408 §3.4-3.5)."""
    proposals = sa_body[8:]  # DOI (4) + Situation (4), IPsec DOI
    spi_size = proposals[6]
    return proposals[8 : 8 + spi_size]


# --- scenario description --------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    cipher: str
    key_bits: int | None
    hash: str
    pfs: bool


def suite_of(name: str) -> Suite:
    match = re.fullmatch(r"psk-(aes(\d+)|3des)-(md5|sha1|sha256|sha384|sha512)-(\w+?)(-pfs)?", name)
    assert match, name
    cipher = "3des" if match.group(1) == "3des" else "aes"
    key_bits = int(match.group(2)) if match.group(2) else None
    return Suite(cipher, key_bits, match.group(3), match.group(5) is not None)


# --- the exchange, decrypted step by step -------------------------------------------------


@dataclass
class Exchange:
    """What the raw messages give us, plus what we derived and decrypted."""

    vector: Vector
    suite: Suite
    cky_i: bytes = b""
    cky_r: bytes = b""
    sa_i_b: bytes = b""
    g_xi: bytes = b""
    g_xr: bytes = b""
    ni_b: bytes = b""
    nr_b: bytes = b""
    main_mode: list[bytes] = field(default_factory=list)
    later: list[bytes] = field(default_factory=list)


def split_exchange(vector: Vector) -> Exchange:
    ex = Exchange(vector, suite_of(vector.name))
    for data in vector.messages():
        header = parse_header(data)
        if header.exchange == EXCHANGE_MAIN_MODE and len(ex.main_mode) < 6:
            ex.main_mode.append(data)
        else:
            ex.later.append(data)
    assert len(ex.main_mode) == 6, f"{vector.name}: {len(ex.main_mode)} Main Mode messages"
    m1, m2, m3, m4 = (parse_header(m) for m in ex.main_mode[:4])
    ex.cky_i, ex.cky_r = m1.cky_i, m2.cky_r
    assert m1.cky_r == bytes(8) and ex.cky_r != bytes(8)
    assert all(h.flags & FLAG_ENCRYPTION == 0 for h in (m1, m2, m3, m4))
    p1 = walk(m1.next_payload, ex.main_mode[0][HEADER_LENGTH:])
    ex.sa_i_b = body_of(p1, PAYLOAD_SA)  # RFC 2409 §5: SAi_b without the generic header
    p3 = walk(m3.next_payload, ex.main_mode[2][HEADER_LENGTH:])
    p4 = walk(m4.next_payload, ex.main_mode[3][HEADER_LENGTH:])
    ex.g_xi, ex.ni_b = ke_data(body_of(p3, PAYLOAD_KE)), body_of(p3, PAYLOAD_NONCE)
    ex.g_xr, ex.nr_b = ke_data(body_of(p4, PAYLOAD_KE)), body_of(p4, PAYLOAD_NONCE)
    return ex


@pytest.fixture(params=SCENARIOS)
def exchange(request: pytest.FixtureRequest) -> Exchange:
    return split_exchange(_load(request.param))


def test_scenario_list_matches_fixture_directory() -> None:
    if not VECTOR_DIR.is_dir():
        pytest.skip(f"strongSwan vectors not captured yet ({VECTOR_DIR} missing)")
    present = {p.stem for p in VECTOR_DIR.glob("*.json")}
    missing = set(SCENARIOS) - present
    assert not missing, f"missing strongSwan fixtures: {sorted(missing)}"


def phase1_g_xy(vector: Vector) -> bytes:
    """charon's Phase 1 g^xy: the first "shared Diffie Hellman secret" it logged."""
    values = vector.logged_all("g_xy")
    assert values, f"{vector.name}: charon's g^xy missing from the fixture"
    return values[0]


def quick_mode_g_xy(vector: Vector) -> bytes | None:
    """g(qm)^xy for PFS: logged separately, or as charon's second DH secret."""
    explicit = vector.logged("g_qm_xy")
    if explicit is not None:
        return explicit
    values = vector.logged_all("g_xy")
    return values[1] if len(values) > 1 else None


def _phase1(ex: Exchange) -> tuple[Any, bytes, IkeCipher]:
    s = ex.suite
    g_xy = phase1_g_xy(ex.vector)
    skeyid = skeyid_psk(s.hash, ex.vector.psk(), ex.ni_b, ex.nr_b)
    keys = derive_phase1_keys(s.hash, skeyid, g_xy, ex.cky_i, ex.cky_r)
    key = encryption_key(s.hash, keys.skeyid_e, cipher_key_length(s.cipher, s.key_bits))
    return keys, key, IkeCipher(s.cipher, key)


def test_g_xy_length_matches_group(exchange: Exchange) -> None:
    g_xy = phase1_g_xy(exchange.vector)
    group = exchange.vector.name.split("-")[3]
    expected = {"modp2048": 256, "modp1024": 128, "ecp256": 32, "curve25519": 32}[group]
    assert len(g_xy) == expected
    # KE data lengths: MODP = prime length, ECP = x|y, Curve25519 = 32 (RFC 5903 §7, 8031)
    ke_len = {"modp2048": 256, "modp1024": 128, "ecp256": 64, "curve25519": 32}[group]
    assert len(exchange.g_xi) == len(exchange.g_xr) == ke_len


def test_phase1_keys_match_charon(exchange: Exchange) -> None:
    keys, key, _ = _phase1(exchange)
    v = exchange.vector
    for ours, what in (
        (keys.skeyid, "skeyid"),
        (keys.skeyid_d, "skeyid_d"),
        (keys.skeyid_a, "skeyid_a"),
        (keys.skeyid_e, "skeyid_e"),
        (key, "encryption_key"),
    ):
        logged = v.logged(what)
        assert logged is not None, f"{v.name}: charon's {what} missing from the fixture"
        assert ours == logged, f"{v.name}: our {what} differs from charon's"


def _decrypt(cipher: IkeCipher, data: bytes, iv: bytes) -> tuple[Header, list[Payload], bytes]:
    header = parse_header(data)
    assert header.flags & FLAG_ENCRYPTION
    body = data[HEADER_LENGTH:]
    plain = cipher.decrypt(iv, body)
    return header, walk(header.next_payload, plain), plain


def _main_mode_5_6(ex: Exchange) -> tuple[Any, IkeCipher, bytes]:
    """Decrypt and authenticate messages 5 and 6; return keys, cipher, last Phase 1 IV."""
    s = ex.suite
    keys, _, cipher = _phase1(ex)
    iv = phase1_iv(s.hash, ex.g_xi, ex.g_xr, cipher.block_size)
    logged_iv = ex.vector.logged("initial_iv")
    if logged_iv is not None and len(logged_iv) == cipher.block_size:
        assert iv == logged_iv
    m5, m6 = ex.main_mode[4], ex.main_mode[5]
    _, p5, _ = _decrypt(cipher, m5, iv)
    iv = last_cipher_block(m5[HEADER_LENGTH:], cipher.block_size)
    _, p6, _ = _decrypt(cipher, m6, iv)
    iv = last_cipher_block(m6[HEADER_LENGTH:], cipher.block_size)

    expected_i = hash_i(
        s.hash,
        keys.skeyid,
        ex.g_xi,
        ex.g_xr,
        ex.cky_i,
        ex.cky_r,
        ex.sa_i_b,
        body_of(p5, PAYLOAD_ID),
    )
    assert hmac.compare_digest(body_of(p5, PAYLOAD_HASH), expected_i), "HASH_I mismatch"
    expected_r = hash_r(
        s.hash,
        keys.skeyid,
        ex.g_xr,
        ex.g_xi,
        ex.cky_r,
        ex.cky_i,
        ex.sa_i_b,
        body_of(p6, PAYLOAD_ID),
    )
    assert hmac.compare_digest(body_of(p6, PAYLOAD_HASH), expected_r), "HASH_R mismatch"
    return keys, cipher, iv


def test_main_mode_messages_5_and_6_decrypt_and_authenticate(exchange: Exchange) -> None:
    _main_mode_5_6(exchange)


def test_wrong_psk_does_not_authenticate(exchange: Exchange) -> None:
    # The checks above can fail: a different PSK gives a different key, so message 5
    # no longer decrypts into a chain whose HASH_I verifies.
    exchange.vector.raw = dict(exchange.vector.raw)
    exchange.vector.flat = {**exchange.vector.flat, "psk": "not the secret", "pskhex": None}
    with pytest.raises(AssertionError):
        _main_mode_5_6(exchange)


def _later_exchanges(ex: Exchange) -> Iterator[tuple[int, int, list[bytes]]]:
    """(exchange type, message ID, messages) for every exchange after Main Mode."""
    groups: dict[int, tuple[int, list[bytes]]] = {}
    for data in ex.later:
        header = parse_header(data)
        groups.setdefault(header.message_id, (header.exchange, []))[1].append(data)
    for message_id, (exchange_type, messages) in groups.items():
        yield exchange_type, message_id, messages


def test_quick_mode_hashes_verify(exchange: Exchange) -> None:
    ex = exchange
    s = ex.suite
    keys, cipher, p1_iv = _main_mode_5_6(ex)
    quick_modes = 0
    for exchange_type, message_id, messages in _later_exchanges(ex):
        iv = phase2_iv(s.hash, p1_iv, message_id, cipher.block_size)
        if exchange_type == EXCHANGE_INFORMATIONAL:
            _, payloads, plain = _decrypt(cipher, messages[0], iv)
            assert payloads[0].type == PAYLOAD_HASH
            rest = plain[payloads[0].end : payloads[-1].end]
            expected = informational_hash(s.hash, keys.skeyid_a, message_id, rest)
            assert payloads[0].body == expected, "Informational HASH(1) mismatch"
            continue
        if exchange_type != EXCHANGE_QUICK_MODE:
            continue
        quick_modes += 1
        assert len(messages) >= 3, f"Quick Mode {message_id:#x}: {len(messages)} messages"
        decrypted = []
        for data in messages[:3]:
            _, payloads, plain = _decrypt(cipher, data, iv)
            iv = last_cipher_block(data[HEADER_LENGTH:], cipher.block_size)
            assert payloads[0].type == PAYLOAD_HASH, "Quick Mode must start with HASH"
            decrypted.append((payloads, plain))
        (q1, plain1), (q2, plain2), (q3, _) = decrypted
        ni_b, nr_b = body_of(q1, PAYLOAD_NONCE), body_of(q2, PAYLOAD_NONCE)
        rest1 = plain1[q1[0].end : q1[-1].end]
        rest2 = plain2[q2[0].end : q2[-1].end]
        assert q1[0].body == qm_hash1(s.hash, keys.skeyid_a, message_id, rest1), "HASH(1)"
        assert q2[0].body == qm_hash2(s.hash, keys.skeyid_a, message_id, ni_b, rest2), "HASH(2)"
        assert q3[0].body == qm_hash3(s.hash, keys.skeyid_a, message_id, ni_b, nr_b), "HASH(3)"
        if ex.suite.pfs:
            assert any(p.type == PAYLOAD_KE for p in q1), "PFS scenario without KE in QM"
            assert any(p.type == PAYLOAD_KE for p in q2)
        _check_keymat(ex, keys.skeyid_d, q1, q2, ni_b, nr_b)
    assert quick_modes >= 1, f"{ex.vector.name}: no Quick Mode in the capture"


def _check_keymat(
    ex: Exchange,
    skeyid_d: bytes,
    q1: list[Payload],
    q2: list[Payload],
    ni_b: bytes,
    nr_b: bytes,
) -> None:
    """KEYMAT (RFC 2409 §5.5) against the ESP keys charon logged.

    An SA's KEYMAT uses the SPI its receiver chose (RFC 2409 §5.5). charon's
    "initiator" keys protect initiator -> responder traffic, i.e. the SA whose SPI the
    responder chose (QM2); the "responder" keys use the initiator's SPI (QM1).
    """
    v = ex.vector
    g_qm_xy: bytes | None = None
    if ex.suite.pfs:
        g_qm_xy = quick_mode_g_xy(v)
        assert g_qm_xy is not None, f"{v.name}: g(qm)^xy not in the fixture"
    spi_i = first_spi(body_of(q1, PAYLOAD_SA))
    spi_r = first_spi(body_of(q2, PAYLOAD_SA))
    for spi, encr_what, integ_what in ((spi_r, "encr_i", "integ_i"), (spi_i, "encr_r", "integ_r")):
        encr, integ = v.logged(encr_what), v.logged(integ_what)
        assert encr is not None and integ is not None, f"{v.name}: ESP keys not in the fixture"
        expected = encr + integ  # KEYMAT: encryption key first, then integrity key
        ours = keymat(ex.suite.hash, skeyid_d, PROTO_ESP, spi, ni_b, nr_b, len(expected), g_qm_xy)
        assert ours == expected, f"KEYMAT for SPI {spi.hex()} differs from charon's ESP keys"
