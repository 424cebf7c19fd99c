"""Human-readable rendering of ISAKMP messages (for ``make demo`` and debug logs).

``describe_message`` never raises: a malformed message is described as such.
Nothing secret is shown beyond what is on the wire in the clear.
"""

from __future__ import annotations

import ipaddress

from .enums import (
    AuthMethod,
    CertEncoding,
    DhGroup,
    EncapsulationMode,
    EspTransformId,
    ExchangeType,
    Flags,
    IdType,
    IkeAttr,
    IkeEncryption,
    IkeHash,
    IkeTransformId,
    IpsecAttr,
    IpsecAuthAlg,
    LifeType,
    ModeCfgAttr,
    ModeCfgType,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from .errors import WireError
from .ids import id_to_text
from .message import HEADER_LENGTH, decode_payloads, split_message
from .payloads import (
    Attribute,
    AttributePayload,
    CertPayload,
    CrPayload,
    DeletePayload,
    FragmentPayload,
    IdPayload,
    NatDPayload,
    NatOaPayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    Transform,
    UnknownPayload,
    VendorIdPayload,
)
from .vendor_ids import KNOWN_VENDOR_IDS

__all__ = ["describe_message", "describe_payload", "describe_transform", "vendor_id_name"]

_AUTH_SHORT = {
    AuthMethod.PRE_SHARED_KEY: "PSK",
    AuthMethod.RSA_SIG: "RSA_SIG",
    AuthMethod.RSA_ENC: "RSA_ENC",
    AuthMethod.RSA_REV_ENC: "RSA_REV_ENC",
}

_MODE_NAMES = {
    ExchangeType.IDENTITY_PROTECTION: "Main Mode",
    ExchangeType.AGGRESSIVE: "Aggressive Mode",
    ExchangeType.INFORMATIONAL: "Informational",
    ExchangeType.TRANSACTION: "Mode Config",
    ExchangeType.QUICK_MODE: "Quick Mode",
}


def vendor_id_name(data: bytes) -> str | None:
    """The well-known extension a vendor ID announces, if any."""
    for prefix, name in KNOWN_VENDOR_IDS:
        if data.startswith(prefix):
            return name
    return None


def _life_text(life_type: int | None, value: int) -> str:
    unit = {LifeType.SECONDS: "s", LifeType.KILOBYTES: "KB"}.get(LifeType(life_type or 1), "?")
    return f"life {value}{unit}"


def describe_transform(protocol_id: int, t: Transform) -> str:
    """E.g. ``AES_CBC-256 SHA2_256 MODP_2048 PSK life 28800s`` (Phase 1) or
    ``AES_GCM_16-128 MODP_2048 UDP_TUNNEL life 3600s life 4608000KB`` (Phase 2)."""
    slots: dict[str, str] = {}
    lives: list[str] = []
    extra: list[str] = []
    life_type: int | None = None
    key_len: int | None = None
    if protocol_id == ProtocolId.ISAKMP:
        head = (
            "" if t.transform_id == IkeTransformId.KEY_IKE else str(IkeTransformId(t.transform_id))
        )
        for a in t.attributes:
            v = a.int_value()
            k = IkeAttr(a.type)
            if k == IkeAttr.ENCRYPTION_ALGORITHM:
                slots["enc"] = str(IkeEncryption(v))
            elif k == IkeAttr.KEY_LENGTH:
                key_len = v
            elif k == IkeAttr.HASH_ALGORITHM:
                slots["hash"] = str(IkeHash(v))
            elif k == IkeAttr.GROUP_DESCRIPTION:
                slots["group"] = str(DhGroup(v))
            elif k == IkeAttr.AUTHENTICATION_METHOD:
                m = AuthMethod(v)
                slots["auth"] = _AUTH_SHORT.get(m, str(m))
            elif k == IkeAttr.LIFE_TYPE:
                life_type = v
            elif k == IkeAttr.LIFE_DURATION:
                lives.append(_life_text(life_type, v))
            else:
                extra.append(f"{k}={_attr_value(a)}")
    else:
        if protocol_id == ProtocolId.ESP:
            slots["enc"] = str(EspTransformId(t.transform_id))
        else:
            slots["enc"] = f"transform {t.transform_id}"
        head = ""
        for a in t.attributes:
            v = a.int_value()
            p = IpsecAttr(a.type)
            if p == IpsecAttr.KEY_LENGTH:
                key_len = v
            elif p == IpsecAttr.AUTH_ALGORITHM:
                slots["hash"] = str(IpsecAuthAlg(v))
            elif p == IpsecAttr.GROUP_DESCRIPTION:
                slots["group"] = str(DhGroup(v))
            elif p == IpsecAttr.ENCAPSULATION_MODE:
                slots["auth"] = str(EncapsulationMode(v))
            elif p == IpsecAttr.SA_LIFE_TYPE:
                life_type = v
            elif p == IpsecAttr.SA_LIFE_DURATION:
                lives.append(_life_text(life_type, v))
            else:
                extra.append(f"{p}={_attr_value(a)}")
    if "enc" in slots and key_len:
        slots["enc"] += f"-{key_len}"
    elif key_len:
        extra.append(f"KEY_LENGTH={key_len}")
    words = [head] + [slots[k] for k in ("enc", "hash", "group", "auth") if k in slots]
    return " ".join(w for w in words + lives + extra if w)


def _attr_value(a: Attribute) -> str:
    if isinstance(a.value, int):
        return str(a.value)
    if len(a.value) <= 4:
        return str(a.int_value())
    return a.value.hex()


def _proposal_lines(p: Proposal) -> list[str]:
    spi = f" spi={p.spi.hex()}" if p.spi else ""
    lines = [f"  proposal #{p.number} {ProtocolId(p.protocol_id)}{spi}"]
    for t in p.transforms:
        lines.append(f"    transform #{t.number}: {describe_transform(p.protocol_id, t)}")
    return lines


def _modecfg_attr(a: Attribute) -> str:
    name = str(ModeCfgAttr(a.type))
    if isinstance(a.value, bytes) and a.type in (1, 2, 3, 4, 6) and len(a.value) == 4:
        return f"{name}={ipaddress.IPv4Address(a.value)}"
    if isinstance(a.value, bytes) and a.type == 13 and len(a.value) == 8:
        addr, mask = ipaddress.IPv4Address(a.value[:4]), ipaddress.IPv4Address(a.value[4:])
        return f"{name}={addr}/{mask}"
    if isinstance(a.value, bytes) and not a.value:
        return name
    return f"{name}={_attr_value(a)}"


def describe_payload(p: Payload) -> list[str]:
    """One line per payload (SA payloads add a line per proposal and transform)."""
    if isinstance(p, SaPayload):
        lines = [f"SA doi={p.doi} situation={p.situation}, {len(p.proposals)} proposal(s)"]
        for prop in p.proposals:
            lines += _proposal_lines(prop)
        return lines
    if isinstance(p, IdPayload):
        return [f"ID {IdType(p.id_type)} {id_to_text(p)} proto={p.protocol} port={p.port}"]
    if isinstance(p, NotifyPayload):
        spi = f" spi={p.spi.hex()}" if p.spi else ""
        data = f" data={p.data.hex()}" if p.data else ""
        return [f"N({NotifyType(p.notify_type).rfc_name}) {ProtocolId(p.protocol_id)}{spi}{data}"]
    if isinstance(p, DeletePayload):
        return [f"DELETE {ProtocolId(p.protocol_id)} spis {', '.join(s.hex() for s in p.spis)}"]
    if isinstance(p, VendorIdPayload):
        name = vendor_id_name(p.data)
        return [f"VID {p.data.hex()}" + (f" ({name})" if name else "")]
    if isinstance(p, NatDPayload):
        return [f"NAT-D{' (draft)' if p.draft else ''} {p.data.hex()}"]
    if isinstance(p, NatOaPayload):
        oa = IdPayload(p.id_type, 0, 0, p.data)
        return [f"NAT-OA{' (draft)' if p.draft else ''} {id_to_text(oa)}"]
    if isinstance(p, AttributePayload):
        attrs = ", ".join(_modecfg_attr(a) for a in p.attributes)
        return [f"ATTR {ModeCfgType(p.cfg_type)} id={p.identifier:#06x}: {attrs}"]
    if isinstance(p, FragmentPayload):
        last = " (last)" if p.last else ""
        return [f"FRAGMENT id={p.fragment_id} #{p.number}{last} {len(p.data)} bytes"]
    if isinstance(p, CertPayload | CrPayload):
        return [f"{PayloadType(p.payload_type)} {CertEncoding(p.encoding)} {len(p.data)} bytes"]
    if isinstance(p, UnknownPayload):
        return [f"{PayloadType(p.payload_type)} {len(p.data)} bytes (not understood)"]
    return [f"{PayloadType(p.payload_type)} {len(p.data)} bytes"]


def describe_message(data: bytes) -> list[str]:
    """Readable lines for one ISAKMP message; encrypted bodies are summarised."""
    try:
        header, body = split_message(data)
    except WireError as e:
        return [f"malformed ISAKMP message ({len(data)} bytes): {e}"]
    exchange = ExchangeType(header.exchange_type)
    mode = _MODE_NAMES.get(exchange)
    flags = Flags(header.flags)
    lines = [
        f"{exchange}{f' ({mode})' if mode else ''} "
        f"i_cookie={header.initiator_cookie.hex()} r_cookie={header.responder_cookie.hex()} "
        f"msgid={header.message_id:08x} flags={flags.name or int(flags)} "
        f"length={header.length}"
    ]
    if header.encrypted:
        lines.append(f"encrypted, {len(body)} bytes")
        return lines
    try:
        payloads = decode_payloads(header.next_payload, body)
        for p in payloads:
            lines += describe_payload(p)
    except WireError as e:
        lines.append(f"malformed payloads after byte {HEADER_LENGTH}: {e}")
    return lines
