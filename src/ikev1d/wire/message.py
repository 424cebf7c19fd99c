"""ISAKMP header and payload chain (RFC 2408 §3.1, §3.2).

A plaintext message is ``Message(header, payloads)``. Encrypted messages
(E flag, RFC 2408 §3.1) are taken apart in two steps because decryption
belongs to the engine: ``split_message`` gives the header and the ciphertext,
the engine decrypts, then ``decode_payloads(header.next_payload, plaintext,
allow_trailing=True)`` ignores the RFC 2409 §5.3 padding after the last
payload.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from .constants import NON_ESP_MARKER
from .enums import ExchangeType, Flags, PayloadType
from .errors import (
    EncryptedMessageError,
    InvalidPayloadTypeError,
    InvalidVersionError,
    LengthMismatchError,
    TruncatedError,
    WireError,
)
from .payloads import (
    GENERIC_HEADER_LENGTH,
    AttributePayload,
    CertPayload,
    CrPayload,
    DeletePayload,
    FragmentPayload,
    HashPayload,
    IdPayload,
    KePayload,
    NatDPayload,
    NatOaPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    SigPayload,
    UnknownPayload,
    VendorIdPayload,
)

__all__ = [
    "HEADER_LENGTH",
    "ISAKMP_VERSION",
    "NON_ESP_MARKER",
    "DecodedPayload",
    "Header",
    "Message",
    "decode_header",
    "decode_message",
    "decode_payloads",
    "decode_payloads_with_spans",
    "encode_header",
    "encode_header_fields",
    "encode_payloads",
    "first_payload_type",
    "split_message",
    "strip_non_esp_marker",
]

HEADER_LENGTH = 28
ISAKMP_VERSION = 0x10  # major 1, minor 0 (RFC 2408 §3.1)
COOKIE_LENGTH = 8



@dataclass(frozen=True, slots=True)
class Header:
    """RFC 2408 §3.1 ISAKMP header."""

    initiator_cookie: bytes
    responder_cookie: bytes
    next_payload: int
    exchange_type: int
    flags: int
    message_id: int
    length: int = 0
    major_version: int = 1
    minor_version: int = 0

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & Flags.ENCRYPTION)

    @property
    def cookies(self) -> bytes:
        """CKY-I | CKY-R, the ISAKMP SPI of RFC 2408 §2.4."""
        return self.initiator_cookie + self.responder_cookie


_HEADER = struct.Struct("!8s8sBBBBII")
# Every datagram's header names three registry values; calling the enum class costs
# ten times a dictionary lookup, so known values come from these (a copy: a value
# nobody assigned still goes through the class and gets its pseudo-member).
_PAYLOAD_TYPES: dict[int, PayloadType] = {member.value: member for member in PayloadType}
_EXCHANGE_TYPES: dict[int, ExchangeType] = {member.value: member for member in ExchangeType}
_FLAGS: dict[int, Flags] = {value: Flags(value) for value in range(8)}


def decode_header(data: bytes) -> Header:
    """Parse the 28-byte header; the length field must be >= 28 and <= len(data)."""
    if len(data) < HEADER_LENGTH:
        raise TruncatedError(f"ISAKMP header needs {HEADER_LENGTH} bytes, got {len(data)}")
    # One unpack for the fixed 28 bytes: this runs for every datagram received.
    icookie, rcookie, next_raw, version, exchange_raw, flags_raw, message_id, length = (
        _HEADER.unpack_from(data)
    )
    next_payload = _PAYLOAD_TYPES.get(next_raw)
    if next_payload is None:
        next_payload = PayloadType(next_raw)
    exchange_type = _EXCHANGE_TYPES.get(exchange_raw)
    if exchange_type is None:
        exchange_type = ExchangeType(exchange_raw)
    flags = _FLAGS.get(flags_raw)
    if flags is None:
        flags = Flags(flags_raw)
    major, minor = version >> 4, version & 0x0F
    if major != 1:
        # RFC 2408 §5.2: a major version we do not speak is INVALID-MAJOR-VERSION.
        raise InvalidVersionError(f"ISAKMP major version {major}, only 1 is supported")
    if length < HEADER_LENGTH:
        raise LengthMismatchError(f"ISAKMP length field {length} < {HEADER_LENGTH}")
    if length > len(data):
        raise TruncatedError(f"ISAKMP length field {length} > {len(data)} bytes received")
    return Header(
        icookie, rcookie, next_payload, exchange_type, flags, message_id, length, major, minor
    )


def split_message(data: bytes) -> tuple[Header, bytes]:
    """The header and the body ``data[28:length]`` (ciphertext when encrypted).

    Bytes after ``length`` in the datagram are ignored.
    """
    header = decode_header(data)
    return header, bytes(data[HEADER_LENGTH : header.length])


def encode_header_fields(
    initiator_cookie: bytes, responder_cookie: bytes, next_payload: int, exchange_type: int,
    flags: int, message_id: int, body_length: int,
) -> bytes:
    """:func:`encode_header` of a version 1.0 header from its fields, without a
    :class:`Header` built first: every message we send has one."""
    length = HEADER_LENGTH + body_length
    if (len(initiator_cookie) == COOKIE_LENGTH and len(responder_cookie) == COOKIE_LENGTH
            and 0 <= body_length and length <= 0xFFFFFFFF):
        try:
            return _HEADER.pack(initiator_cookie, responder_cookie, next_payload,
                                ISAKMP_VERSION, exchange_type, flags, message_id, length)
        except struct.error:
            pass
    # Out of range somewhere: the general encoder says which field.
    return encode_header(
        Header(initiator_cookie, responder_cookie, next_payload, exchange_type, flags,
               message_id), body_length)


def encode_header(header: Header, body_length: int) -> bytes:
    """The 28 header bytes, with length = 28 + body_length (``header.length`` is ignored)."""
    if (
        len(header.initiator_cookie) != COOKIE_LENGTH
        or len(header.responder_cookie) != COOKIE_LENGTH
    ):
        raise ValueError("ISAKMP cookies are 8 bytes each")
    if not (0 <= header.major_version < 16 and 0 <= header.minor_version < 16):
        raise ValueError("ISAKMP version fields are 4 bits")
    length = HEADER_LENGTH + body_length
    if body_length < 0 or length > 0xFFFFFFFF:
        raise ValueError(f"body length {body_length} out of range")
    try:
        # One pack for every message sent; struct checks the 8- and 32-bit ranges.
        return _HEADER.pack(
            header.initiator_cookie, header.responder_cookie, header.next_payload,
            (header.major_version << 4) | header.minor_version, header.exchange_type,
            header.flags, header.message_id, length,
        )
    except struct.error:
        pass
    for field, value in (
        ("next payload", header.next_payload),
        ("exchange type", header.exchange_type),
        ("flags", header.flags),
    ):
        if not 0 <= value <= 0xFF:
            raise ValueError(f"ISAKMP {field} {value} does not fit in 8 bits")
    raise ValueError(f"message id {header.message_id} does not fit in 32 bits")


# --------------------------------------------------------------------------- payload chain


def first_payload_type(payloads: Sequence[Payload]) -> int:
    """The header's next-payload value for this chain (NONE when empty)."""
    return int(payloads[0].payload_type) if payloads else int(PayloadType.NONE)


_GENERIC_HEADER = struct.Struct("!BxH")


def encode_payloads(payloads: Sequence[Payload], then: int = 0) -> bytes:
    """Payloads with their generic headers, next-payload fields chained, the last
    one's ``then`` (NONE unless already encoded payloads of that type follow)."""
    parts: list[bytes] = []
    last = len(payloads) - 1
    pack = _GENERIC_HEADER.pack
    for i, p in enumerate(payloads):
        body = p.encode_body()
        length = GENERIC_HEADER_LENGTH + len(body)
        if length > 0xFFFF:
            raise ValueError(f"{p.payload_type} payload is {length} bytes, over 65535")
        parts.append(pack(payloads[i + 1].payload_type if i < last else then, length))
        parts.append(body)
    return b"".join(parts)


def _decode_unknown(payload_type: int) -> Callable[[bytes], Payload]:
    def decode(body: bytes) -> Payload:
        return UnknownPayload(payload_type, body)

    return decode


def _decode_natd_draft(body: bytes) -> Payload:
    return NatDPayload(body, draft=True)


def _decode_natoa_draft(body: bytes) -> Payload:
    p = NatOaPayload.decode_body(body)
    return NatOaPayload(p.id_type, p.data, draft=True)


_DECODERS: dict[int, Callable[[bytes], Payload]] = {
    PayloadType.SA: SaPayload.decode_body,
    PayloadType.KE: KePayload.decode_body,
    PayloadType.ID: IdPayload.decode_body,
    PayloadType.CERT: CertPayload.decode_body,
    PayloadType.CR: CrPayload.decode_body,
    PayloadType.HASH: HashPayload.decode_body,
    PayloadType.SIG: SigPayload.decode_body,
    PayloadType.NONCE: NoncePayload.decode_body,
    PayloadType.NOTIFICATION: NotifyPayload.decode_body,
    PayloadType.DELETE: DeletePayload.decode_body,
    PayloadType.VENDOR_ID: VendorIdPayload.decode_body,
    PayloadType.ATTRIBUTE: AttributePayload.decode_body,
    PayloadType.NAT_D: NatDPayload.decode_body,
    PayloadType.NAT_OA: NatOaPayload.decode_body,
    PayloadType.NAT_D_DRAFT: _decode_natd_draft,
    PayloadType.NAT_OA_DRAFT: _decode_natoa_draft,
    PayloadType.FRAGMENT: FragmentPayload.decode_body,
}

# RFC 2408 §3.5/§3.6: proposal and transform payloads only exist inside an SA.
_NESTED_ONLY = frozenset({int(PayloadType.PROPOSAL), int(PayloadType.TRANSFORM)})


class DecodedPayload(NamedTuple):
    """A decoded payload and where it sat in the body: ``body[start:end]`` is the whole
    payload including its generic header, ``body[start + 4:end]`` its body (e.g.
    SAi_b of RFC 2409 §5 exactly as the peer sent it).

    A named tuple rather than a frozen dataclass: one is made for every payload
    received, and a tuple is built in a fraction of the time."""

    payload: Payload
    start: int
    end: int

    @property
    def payload_type(self) -> int:
        return int(self.payload.payload_type)

    def body(self, data: bytes) -> bytes:
        """The payload body as received, without the generic header (the "_b" of RFC 2409)."""
        return data[self.start + GENERIC_HEADER_LENGTH : self.end]

    def raw(self, data: bytes) -> bytes:
        """The whole payload as received, generic header included."""
        return data[self.start : self.end]


def decode_payloads_with_spans(
    first_type: int, body: bytes, *, allow_trailing: bool = False,
    opaque: frozenset[int] = frozenset(),
) -> tuple[DecodedPayload, ...]:
    """Like :func:`decode_payloads`, also giving each payload's byte range in ``body``.

    Payload types in ``opaque`` are kept as :class:`UnknownPayload` with their raw
    body: with public key encryption (RFC 2409 sections 5.2 and 5.3) the bodies of
    ID, nonce and KE payloads in Main Mode messages 3 and 4 are ciphertext.
    """
    # Indexes over ``body`` rather than a Reader: this loop runs for every payload of
    # every message, and each length is checked here before it is used.
    if type(body) is not bytes:
        body = bytes(body)
    size = len(body)
    pos = 0
    spans: list[DecodedPayload] = []
    current = int(first_type)
    index = 0
    while current != PayloadType.NONE:
        start = pos
        left = size - pos
        if current in _NESTED_ONLY:
            raise InvalidPayloadTypeError(
                f"payload {index} ({PayloadType(current)}) outside an SA payload")
        if left < GENERIC_HEADER_LENGTH:
            what = f"payload {index} ({PayloadType(current)})"
            raise TruncatedError(f"{what}: {left} bytes left, header needs 4")
        nxt = body[pos]
        length = (body[pos + 2] << 8) | body[pos + 3]
        if length < GENERIC_HEADER_LENGTH:
            what = f"payload {index} ({PayloadType(current)})"
            raise LengthMismatchError(f"{what}: length field {length} < 4")
        if length > left:
            what = f"payload {index} ({PayloadType(current)})"
            raise TruncatedError(f"{what}: length field {length}, only {left} bytes left")
        pos += length
        payload_body = body[start + GENERIC_HEADER_LENGTH : pos]
        decoder = (_decode_unknown(current) if current in opaque
                   else _DECODERS.get(current) or _decode_unknown(current))
        try:
            payload = decoder(payload_body)
        except WireError as e:
            what = f"payload {index} ({PayloadType(current)})"
            raise type(e)(f"{what}: {e}", e.notify) from e
        spans.append(DecodedPayload(payload, start, pos))
        current = nxt
        index += 1
    if pos != size and not allow_trailing:
        raise LengthMismatchError(
            f"{size - pos} bytes after the last payload (next payload NONE)"
        )
    return tuple(spans)


def decode_payloads(
    first_type: int, body: bytes, *, allow_trailing: bool = False
) -> tuple[Payload, ...]:
    """Decode a payload chain starting with ``first_type`` (the header's next payload).

    Every generic length must be >= 4 and fit in what is left; every nested
    length too. With ``allow_trailing`` bytes after the payload whose next
    payload is NONE are ignored (padding of a decrypted body, RFC 2409 §5.3);
    without, they are a LengthMismatchError.
    """
    return tuple(
        s.payload
        for s in decode_payloads_with_spans(first_type, body, allow_trailing=allow_trailing)
    )


# --------------------------------------------------------------------------- message


@dataclass(frozen=True, slots=True)
class Message:
    """A plaintext ISAKMP message."""

    header: Header
    payloads: tuple[Payload, ...]

    def encode(self) -> bytes:
        """Wire bytes; the header's next payload and length are filled in."""
        body = encode_payloads(self.payloads)
        header = replace(self.header, next_payload=first_payload_type(self.payloads))
        return encode_header(header, len(body)) + body

    def normalized(self) -> Message:
        """This message with the header fields encode() fills in, as decode would give it."""
        body_len = len(encode_payloads(self.payloads))
        return replace(
            self,
            header=replace(
                self.header,
                next_payload=first_payload_type(self.payloads),
                length=HEADER_LENGTH + body_len,
            ),
        )


def decode_message(data: bytes) -> Message:
    """Decode a plaintext message; one with the E flag set raises EncryptedMessageError."""
    header, body = split_message(data)
    if header.encrypted:
        raise EncryptedMessageError("message is encrypted; use split_message + decrypt")
    return Message(header, decode_payloads(header.next_payload, body))


def strip_non_esp_marker(datagram: bytes) -> bytes | None:
    """For a datagram on UDP 4500: the IKE message after the non-ESP marker, or
    None when it is ESP (RFC 3948 §2.2: a non-zero SPI where the marker would be)."""
    if len(datagram) >= 4 and datagram[:4] == NON_ESP_MARKER:
        return datagram[4:]
    return None
