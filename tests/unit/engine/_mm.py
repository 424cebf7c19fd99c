"""Hand-built Main Mode messages 1, as an attacker (or a fuzzer) sends them."""

from __future__ import annotations

from ikev1d.engine import Engine
from ikev1d.wire import (
    Attribute,
    ExchangeType,
    Header,
    IkeAttr,
    IkeTransformId,
    LifeType,
    Payload,
    Proposal,
    ProtocolId,
    SaPayload,
    Transform,
    VendorIdPayload,
    encode_header,
    encode_payloads,
)


def ike_transform(number: int = 1, life: Attribute | None = None,
                  key_length: Attribute | None = None) -> Transform:
    """aes128-sha256-modp2048 with PSK, as the test configurations accept it."""
    attributes = [
        Attribute(IkeAttr.ENCRYPTION_ALGORITHM, 7),
        key_length or Attribute(IkeAttr.KEY_LENGTH, 128),
        Attribute(IkeAttr.HASH_ALGORITHM, 4),
        Attribute(IkeAttr.AUTHENTICATION_METHOD, 1),
        Attribute(IkeAttr.GROUP_DESCRIPTION, 14),
        Attribute(IkeAttr.LIFE_TYPE, LifeType.SECONDS),
        life or Attribute(IkeAttr.LIFE_DURATION, 28800),
    ]
    return Transform(number, IkeTransformId.KEY_IKE, tuple(attributes))


def message_1(cky_i: bytes, transforms: list[Transform], extra: list[Payload] | None = None
              ) -> bytes:
    sa = SaPayload((Proposal(1, ProtocolId.ISAKMP, b"", tuple(transforms)),))
    payloads: list[Payload] = [sa, *(extra or [])]
    body = encode_payloads(payloads)
    header = Header(initiator_cookie=cky_i, responder_cookie=bytes(8),
                    next_payload=payloads[0].payload_type,
                    exchange_type=ExchangeType.IDENTITY_PROTECTION, flags=0, message_id=0)
    return encode_header(header, len(body)) + body


def vendor_ids(count: int, size: int = 1) -> list[Payload]:
    return [VendorIdPayload(i.to_bytes(4, "big") * size) for i in range(count)]


def tables(engine: Engine) -> dict[str, int]:
    """What the engine holds: every table a message could add to."""
    return {
        "sas": len(engine._sas),
        "initiating": len(engine._initiating),
        "half_open": len(engine._half_open),
        "timers": sum(1 for _d, _s, t in engine.timers._heap if not t.cancelled),
        "spis": len(engine._spis),
    }
