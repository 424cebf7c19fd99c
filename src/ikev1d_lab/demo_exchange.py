"""Step 1 of the demo: a strongSwan <-> strongSwan exchange, decoded and decrypted by ikev1d.

The capture in ``ikev1d_lab/demo_data`` was recorded by
``scripts/capture_strongswan_vectors.py``: two strongSwan 5.9.8 charons in network
namespaces doing Main Mode + Quick Mode with a pre-shared key.  From the bytes on
the wire our codec reads every message; with only the pre-shared key and the
Diffie-Hellman secret g^xy from charon's log, our key derivation (RFC 2409 §5)
and IV chain (Appendix B) decrypt messages 5 and 6, Quick Mode and the closing
Informational exchange, and the HASH payloads recompute.  Nothing here trusts
strongSwan's own key values; they are only compared against at the end.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ikev1d.crypto import (
    CIPHERS,
    CryptoError,
    IkeCipher,
    Phase1Keys,
    cipher_key_length,
    derive_phase1_keys,
    encryption_key,
    hash_i,
    hash_r,
    informational_hash,
    last_cipher_block,
    phase1_iv,
    phase2_iv,
    qm_hash1,
    qm_hash2,
    qm_hash3,
    skeyid_psk,
    transforms,
)
from ikev1d.wire import (
    DecodedPayload,
    ExchangeType,
    HashPayload,
    Header,
    IdPayload,
    IkeAttr,
    KePayload,
    NoncePayload,
    SaPayload,
    WireError,
)
from ikev1d.wire.describe import describe_message, describe_payload
from ikev1d.wire.message import decode_payloads_with_spans, split_message
from ikev1d_lab.demo_pcap import IsakmpFrame, PcapError, isakmp_frames, read_capture
from ikev1d_lab.errors import LabError

__all__ = [
    "DEMO_PCAP",
    "DEMO_VECTOR",
    "DemoDataError",
    "ExchangeView",
    "MessageView",
    "decode_exchange",
    "load_demo_exchange",
]

DEMO_PCAP = "strongswan-main-quick-mode.pcap"
DEMO_VECTOR = "strongswan-main-quick-mode.json"


class DemoDataError(LabError):
    """The recorded exchange is missing or is not a PSK Main Mode we can follow."""


@dataclass(frozen=True)
class MessageView:
    """One ISAKMP message of the capture, described for people."""

    frame: IsakmpFrame
    title: str  # "Main Mode 1", "Quick Mode 2", "Informational"
    sender: str  # "initiator" | "responder"
    wire: tuple[str, ...]  # describe_message(): header, and payloads when in the clear
    encrypted: bool
    decrypted: tuple[str, ...] = ()  # the payloads inside, when we could decrypt them
    checks: tuple[str, ...] = ()  # e.g. "HASH_I verified"
    problem: str = ""  # why decryption or a check failed


@dataclass(frozen=True)
class ExchangeView:
    source: str  # who recorded it
    suite: str  # "aes128-sha256-modp2048" (as the vector names it)
    messages: tuple[MessageView, ...]
    key_checks: tuple[str, ...]  # our derived values against charon's logged ones
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems and all(not m.problem for m in self.messages)


@dataclass
class _Phase1:
    prf: str
    cipher: IkeCipher
    keys: Phase1Keys
    cky_i: bytes
    cky_r: bytes
    sa_i_b: bytes
    g_xi: bytes
    g_xr: bytes


def _demo_bytes(name: str) -> bytes:
    try:
        return (resources.files("ikev1d_lab") / "demo_data" / name).read_bytes()
    except OSError as exc:
        raise DemoDataError(f"demo data {name} is missing: {exc}") from exc


def load_demo_exchange() -> ExchangeView:
    """Decode the packaged strongSwan capture with the packaged keys."""
    try:
        frames = isakmp_frames(read_capture(_demo_bytes(DEMO_PCAP)))
    except PcapError as exc:
        raise DemoDataError(f"{DEMO_PCAP}: {exc}") from exc
    try:
        vector: dict[str, Any] = json.loads(_demo_bytes(DEMO_VECTOR))
    except ValueError as exc:
        raise DemoDataError(f"{DEMO_VECTOR}: {exc}") from exc
    return decode_exchange(frames, vector)


def _spans(header: Header, body: bytes, trailing: bool = False) -> tuple[DecodedPayload, ...]:
    return decode_payloads_with_spans(header.next_payload, body, allow_trailing=trailing)


def _one(spans: Sequence[DecodedPayload], kind: type[Any], where: str) -> DecodedPayload:
    found = [s for s in spans if isinstance(s.payload, kind)]
    if len(found) != 1:
        raise DemoDataError(f"{where}: expected one {kind.__name__}, found {len(found)}")
    return found[0]


def _body(data: bytes, span: DecodedPayload) -> bytes:
    """The payload body without its generic header (SAi_b, IDii_b, Ni_b of RFC 2409 §5)."""
    return data[span.start + 4 : span.end]


def _suite_of(sa: SaPayload) -> tuple[str, int | None, str]:
    """(cipher, key bits, prf hash) of the responder's chosen transform (Main Mode 2)."""
    (proposal,) = sa.proposals[:1] or (None,)
    if proposal is None or not proposal.transforms:
        raise DemoDataError("Main Mode 2 carries no transform")
    attrs = {a.type: a.int_value() for a in proposal.transforms[0].attributes}
    # IKE attribute values (RFC 2409 Appendix A) -> ikev1d.crypto algorithm names.
    cipher = transforms.encryption_by_ike_id(attrs.get(IkeAttr.ENCRYPTION_ALGORITHM, 0))
    prf = transforms.integrity_by_ike_hash_id(attrs.get(IkeAttr.HASH_ALGORITHM, 0))
    if cipher is None or cipher.name not in CIPHERS or prf is None:
        raise DemoDataError(f"unsupported Phase 1 transform {proposal.transforms[0]}")
    return cipher.name, attrs.get(IkeAttr.KEY_LENGTH), prf.name


def _phase1(mm: Sequence[IsakmpFrame], vector: dict[str, Any]) -> _Phase1:
    """Keys from messages 1-4 of Main Mode, the PSK and charon's g^xy."""
    parsed = []
    for frame in mm[:4]:
        header, body = split_message(frame.data)
        parsed.append((header, body, _spans(header, body)))
    (h1, b1, s1), (h2, _b2, s2), (_h3, b3, s3), (_h4, b4, s4) = parsed
    sa_r = _one(s2, SaPayload, "Main Mode 2").payload
    if not isinstance(sa_r, SaPayload):
        raise DemoDataError("Main Mode 2: SA payload expected")
    cipher_name, key_bits, prf_name = _suite_of(sa_r)
    psk = bytes.fromhex(vector["psk"])
    g_xy = bytes.fromhex(vector["phase1"]["g_xy"])
    ni_b = _body(b3, _one(s3, NoncePayload, "Main Mode 3"))
    nr_b = _body(b4, _one(s4, NoncePayload, "Main Mode 4"))
    skeyid = skeyid_psk(prf_name, psk, ni_b, nr_b)
    keys = derive_phase1_keys(prf_name, skeyid, g_xy, h1.initiator_cookie, h2.responder_cookie)
    key = encryption_key(prf_name, keys.skeyid_e, cipher_key_length(cipher_name, key_bits))
    return _Phase1(
        prf=prf_name,
        cipher=IkeCipher(cipher_name, key),
        keys=keys,
        cky_i=h1.initiator_cookie,
        cky_r=h2.responder_cookie,
        sa_i_b=_body(b1, _one(s1, SaPayload, "Main Mode 1")),
        g_xi=_body(b3, _one(s3, KePayload, "Main Mode 3")),
        g_xr=_body(b4, _one(s4, KePayload, "Main Mode 4")),
    )


def _key_checks(p1: _Phase1, vector: dict[str, Any]) -> tuple[list[str], list[str]]:
    logged = vector.get("phase1", {})
    ours = {
        "SKEYID": p1.keys.skeyid,
        "SKEYID_d": p1.keys.skeyid_d,
        "SKEYID_a": p1.keys.skeyid_a,
        "SKEYID_e": p1.keys.skeyid_e,
    }
    names = {"SKEYID": "skeyid", "SKEYID_d": "skeyid_d", "SKEYID_a": "skeyid_a",
             "SKEYID_e": "skeyid_e"}  # fmt: skip
    same = [n for n, v in ours.items() if logged.get(names[n]) == v.hex()]
    differ = [n for n in ours if n not in same]
    checks = []
    if same:
        checks.append(f"{', '.join(same)} computed by ikev1d.crypto equal charon's logged values")
    return checks, [f"{n} differs from charon's logged value" for n in differ]


def _title(exchange: int, counters: dict[int, int]) -> str:
    counters[exchange] = counters.get(exchange, 0) + 1
    n = counters[exchange]
    if exchange == ExchangeType.IDENTITY_PROTECTION:
        return f"Main Mode {n}"
    if exchange == ExchangeType.QUICK_MODE:
        return f"Quick Mode {n}"
    if exchange == ExchangeType.INFORMATIONAL:
        return "Informational"
    return str(ExchangeType(exchange))


def decode_exchange(frames: Sequence[IsakmpFrame], vector: dict[str, Any]) -> ExchangeView:
    """Describe and (with the PSK and g^xy of `vector`) decrypt a captured PSK Main Mode."""
    if not frames:
        raise DemoDataError("the capture holds no ISAKMP message")
    initiator = frames[0].src  # Main Mode 1 comes from the initiator
    unique: list[IsakmpFrame] = []
    for f in frames:  # drop retransmissions: same bytes again
        if not any(u.data == f.data for u in unique):
            unique.append(f)
    headers = []
    for f in unique:
        try:
            headers.append(split_message(f.data)[0])
        except WireError as exc:
            raise DemoDataError(f"frame {f.number}: {exc}") from exc
    mm = [f for f, h in zip(unique, headers, strict=True)
          if h.exchange_type == ExchangeType.IDENTITY_PROTECTION]  # fmt: skip
    if len(mm) < 4:
        raise DemoDataError(f"the capture holds {len(mm)} Main Mode messages, 4+ needed")
    problems: list[str] = []
    try:
        p1: _Phase1 | None = _phase1(mm, vector)
    except (WireError, CryptoError, KeyError, ValueError) as exc:
        p1 = None
        problems.append(f"cannot derive the Phase 1 keys: {exc}")
    key_checks: list[str] = []
    if p1 is not None:
        key_checks, differ = _key_checks(p1, vector)
        problems += differ

    counters: dict[int, int] = {}
    chains: dict[int, bytes] = {}  # message ID -> IV for the next message
    last_phase1_block = b""
    nonces: dict[int, list[bytes]] = {}  # Quick Mode message ID -> [Ni_b, Nr_b]
    views: list[MessageView] = []
    for frame, header in zip(unique, headers, strict=True):
        sender = "initiator" if frame.src == initiator else "responder"
        title = _title(header.exchange_type, counters)
        wire = tuple(describe_message(frame.data))
        if not header.encrypted:
            views.append(MessageView(frame, title, sender, wire, False))
            continue
        if p1 is None:
            views.append(MessageView(frame, title, sender, wire, True, problem="no keys"))
            continue
        body = split_message(frame.data)[1]
        bs = p1.cipher.block_size
        mid = header.message_id
        try:
            # RFC 2409 Appendix B: Phase 1 starts from hash(g^xi | g^xr); each later
            # exchange from hash(last Phase 1 CBC block | M-ID); then CBC chaining.
            if mid == 0 and mid not in chains:
                chains[0] = phase1_iv(p1.prf, p1.g_xi, p1.g_xr, bs)
            elif mid not in chains:
                chains[mid] = phase2_iv(p1.prf, last_phase1_block, mid, bs)
            plain = p1.cipher.decrypt(chains[mid], body)
            chains[mid] = last_cipher_block(body, bs)
            if mid == 0:
                last_phase1_block = chains[0]
            spans = _spans(header, plain, trailing=True)
        except (CryptoError, WireError) as exc:
            views.append(MessageView(frame, title, sender, wire, True, problem=str(exc)))
            continue
        decrypted = tuple(line for s in spans for line in describe_payload(s.payload))
        checks, problem = _verify(p1, header, title, plain, spans, nonces)
        views.append(MessageView(frame, title, sender, wire, True, decrypted, checks, problem))
    return ExchangeView(
        source=str(vector.get("source", "")),
        suite=str(vector.get("proposal", "")),
        messages=tuple(views),
        key_checks=tuple(key_checks),
        problems=tuple(problems),
    )


def _verify(
    p1: _Phase1,
    header: Header,
    title: str,
    plain: bytes,
    spans: Sequence[DecodedPayload],
    nonces: dict[int, list[bytes]],
) -> tuple[tuple[str, ...], str]:
    """Recompute the message's HASH payload (RFC 2409 §5, §5.5, §5.7)."""
    hashes = [s for s in spans if isinstance(s.payload, HashPayload)]
    if len(hashes) != 1:
        return (), f"{len(hashes)} HASH payloads"
    received = _body(plain, hashes[0])
    # Quick Mode and Informational: HASH comes first and covers everything after it.
    after_hash = plain[hashes[0].end : spans[-1].end]
    mid = header.message_id
    prf, keys = p1.prf, p1.keys
    if title == "Main Mode 5":
        id_b = _body(plain, _one(spans, IdPayload, title))
        name = "HASH_I"
        expected = hash_i(prf, keys.skeyid, p1.g_xi, p1.g_xr, p1.cky_i, p1.cky_r, p1.sa_i_b, id_b)
    elif title == "Main Mode 6":
        id_b = _body(plain, _one(spans, IdPayload, title))
        name = "HASH_R"
        expected = hash_r(prf, keys.skeyid, p1.g_xr, p1.g_xi, p1.cky_r, p1.cky_i, p1.sa_i_b, id_b)
    elif title == "Quick Mode 1":
        nonces[mid] = [_body(plain, _one(spans, NoncePayload, title))]
        name, expected = "HASH(1)", qm_hash1(prf, keys.skeyid_a, mid, after_hash)
    elif title == "Quick Mode 2" and len(nonces.get(mid, ())) == 1:
        ni_b = nonces[mid][0]
        nonces[mid].append(_body(plain, _one(spans, NoncePayload, title)))
        name, expected = "HASH(2)", qm_hash2(prf, keys.skeyid_a, mid, ni_b, after_hash)
    elif title == "Quick Mode 3" and len(nonces.get(mid, ())) == 2:
        ni_b, nr_b = nonces[mid]
        name, expected = "HASH(3)", qm_hash3(prf, keys.skeyid_a, mid, ni_b, nr_b)
    elif title == "Informational":
        name, expected = "HASH(1)", informational_hash(prf, keys.skeyid_a, mid, after_hash)
    else:
        return (), ""
    if hmac.compare_digest(received, expected):
        return (f"{name} verified",), ""
    return (), f"{name} does not verify"
