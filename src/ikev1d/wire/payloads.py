"""ISAKMP payload bodies as frozen dataclasses (RFC 2408 §3.2-§3.16 and extensions).

Each class encodes and decodes only its *body*: the bytes after the 4-byte
generic payload header (RFC 2408 §3.2). The header, and with it the
next-payload chain, is handled by :mod:`ikev1d.wire.message`. The exception
is the SA payload, whose body contains its own chain of Proposal payloads,
each containing a chain of Transform payloads (RFC 2408 §3.4-§3.6).

``decode_body`` raises only :class:`~ikev1d.wire.errors.WireError`
subclasses; ``encode_body`` raises ``ValueError`` when a field does not fit
its wire width (our own misuse, never the peer's).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeVar

from ._reader import Reader
from .enums import IdType, NotifyType, PayloadType
from .errors import InvalidIdError, TruncatedError, WireError

__all__ = [
    "GENERIC_HEADER_LENGTH",
    "Attribute",
    "AttributePayload",
    "CertPayload",
    "CrPayload",
    "DeletePayload",
    "FragmentPayload",
    "HashPayload",
    "IdPayload",
    "KePayload",
    "NatDPayload",
    "NatOaPayload",
    "NoncePayload",
    "NotifyPayload",
    "Payload",
    "Proposal",
    "SaPayload",
    "SigPayload",
    "Transform",
    "UnknownPayload",
    "VendorIdPayload",
    "decode_attributes",
    "encode_attributes",
    "id_to_network",
    "id_to_text",
    "make_attribute",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

GENERIC_HEADER_LENGTH = 4
_MAX_PAYLOAD_LENGTH = 0xFFFF

# RFC 2408 §3.3: the high bit of the attribute type is the Attribute Format bit.
_AF_TV = 0x8000


def _check_uint(value: int, bits: int, field: str) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{field}={value} does not fit in {bits} bits")


def _generic(next_payload: int, body: bytes, what: str) -> bytes:
    """RFC 2408 §3.2 generic payload header + body."""
    length = GENERIC_HEADER_LENGTH + len(body)
    if length > _MAX_PAYLOAD_LENGTH:
        raise ValueError(f"{what} is {length} bytes, more than the 16-bit length field allows")
    return bytes((next_payload, 0)) + length.to_bytes(2, "big") + body


# --------------------------------------------------------------------------- attributes


_TV_ATTRIBUTE = struct.Struct("!HH")
# RFC 2408 section 3.14: DOI, protocol, SPI size, notify message type.
_NOTIFY_FIXED = struct.Struct("!IBBH")
_NOTIFY_TYPES: dict[int, NotifyType] = {member.value: member for member in NotifyType}


@dataclass(frozen=True, slots=True)
class Attribute:
    """RFC 2408 §3.3 data attribute.

    An ``int`` value is the TV (Type/Value, AF=1) form with a 16-bit value; a
    ``bytes`` value is the TLV (AF=0) form, kept byte-exact.
    """

    type: int
    value: int | bytes

    @property
    def is_tv(self) -> bool:
        return isinstance(self.value, int)

    def int_value(self) -> int:
        """The TV value, or the TLV value read as a big-endian integer (RFC 2408 §3.3)."""
        if isinstance(self.value, int):
            return self.value
        return int.from_bytes(self.value, "big")

    def encode(self) -> bytes:
        value = self.value
        if isinstance(value, int) and 0 <= self.type < 0x8000 and 0 <= value < 0x10000:
            # The common case (TV, in range) in one pack; the checks below explain the rest.
            return _TV_ATTRIBUTE.pack(self.type | _AF_TV, value)
        _check_uint(self.type, 15, "attribute type")
        if isinstance(self.value, int):
            _check_uint(self.value, 16, f"TV attribute {self.type} value")
            return (self.type | _AF_TV).to_bytes(2, "big") + self.value.to_bytes(2, "big")
        _check_uint(len(self.value), 16, f"TLV attribute {self.type} length")
        return self.type.to_bytes(2, "big") + len(self.value).to_bytes(2, "big") + self.value

    @classmethod
    def decode_from(cls, r: Reader) -> Attribute:
        af_type = r.u16("attribute type")
        if af_type & _AF_TV:
            return cls(af_type & 0x7FFF, r.u16("TV attribute value"))
        length = r.u16("TLV attribute length")
        return cls(af_type, r.take(length, "TLV attribute value"))


def make_attribute(type: int, value: int) -> Attribute:
    """An attribute for a numeric value: TV when it fits in 16 bits, else a TLV of
    the minimal big-endian length but at least 4 bytes (how strongSwan and
    Libreswan send long life durations)."""
    if value < 0:
        raise ValueError(f"attribute {type}: negative value {value}")
    if value < 0x10000:
        return Attribute(type, value)
    n = max(4, (value.bit_length() + 7) // 8)
    return Attribute(type, value.to_bytes(n, "big"))


def encode_attributes(attributes: tuple[Attribute, ...]) -> bytes:
    return b"".join(a.encode() for a in attributes)


def decode_attributes(r: Reader) -> tuple[Attribute, ...]:
    """Decode attributes until ``r`` is exhausted; a partial attribute is an error."""
    # Indexes over the bytes left rather than a Reader call per field: SA payloads
    # carry dozens of attributes. The checks and messages are the Reader's.
    data = r.rest()
    size = len(data)
    pos = 0
    out: list[Attribute] = []
    while pos < size:
        if size - pos < 4:
            field = "attribute type" if size - pos < 2 else (
                "TV attribute value" if data[pos] & 0x80 else "TLV attribute length")
            need_at = pos if size - pos < 2 else pos + 2
            raise TruncatedError(
                f"{r.what}: {field} needs 2 bytes, only {size - need_at} left")
        af_type = (data[pos] << 8) | data[pos + 1]
        value = (data[pos + 2] << 8) | data[pos + 3]
        pos += 4
        if af_type & _AF_TV:
            out.append(Attribute(af_type & 0x7FFF, value))
            continue
        if value > size - pos:
            raise TruncatedError(
                f"{r.what}: TLV attribute value needs {value} bytes, only {size - pos} left")
        out.append(Attribute(af_type, data[pos:pos + value]))
        pos += value
    return tuple(out)


# --------------------------------------------------------------------------- SA

# Decoded transforms and SA payloads by their body bytes (see Transform.decode_body);
# emptied when full, since the bytes are whatever peers send, and only bodies of
# ordinary size: a peer's usual offer is a few hundred octets, and an unauthenticated
# sender must not make each entry cost up to a datagram.
_DECODED_CACHED = 256
_CACHED_BODY_MAX = 2048
_TRANSFORMS: dict[bytes, Transform] = {}
_SA_PAYLOADS: dict[bytes, SaPayload] = {}
_SA_PAYLOADS_BY_SHAPE: dict[bytes, SaPayload] = {}


class _DecodesBody(Protocol):
    @classmethod
    def _decode_body(cls, data: bytes) -> Self: ...


_D = TypeVar("_D", bound=_DecodesBody)


def _decoded_once(cache: dict[bytes, Any], cls: type[_D], data: bytes) -> _D:
    """``cls._decode_body(data)``, or the value decoded from the same bytes before.
    Bounded (emptied when full), since the bytes are the peer's; only what decoded
    is kept, so malformed input is never cached."""
    if type(data) is not bytes:  # a cache key must be hashable
        data = bytes(data)
    if len(data) > _CACHED_BODY_MAX:
        return cls._decode_body(data)
    known = cache.get(data)
    if known is not None and type(known) is cls:
        return known
    decoded = cls._decode_body(data)
    if len(cache) >= _DECODED_CACHED:
        cache.clear()
    cache[data] = decoded
    return decoded
_TRANSFORM_ENCODINGS: dict[int, tuple[Transform, bytes]] = {}
_LAST_TRANSFORMS: dict[int, tuple[Transform, bytes]] = {}
"""A proposal's only transform, with its generic header (next payload NONE)."""
_IPSEC_DOI_IDENTITY_ONLY = bytes((0, 0, 0, 1, 0, 0, 0, 1))
_IDS: dict[bytes, IdPayload] = {}
_ID_ENCODINGS: dict[int, tuple[IdPayload, bytes]] = {}
_PROPOSALS: dict[bytes, Proposal] = {}


@dataclass(frozen=True, slots=True)
class Transform:
    """RFC 2408 §3.6 transform payload (nested in a Proposal)."""

    number: int
    transform_id: int
    attributes: tuple[Attribute, ...] = ()

    payload_type: ClassVar[PayloadType] = PayloadType.TRANSFORM

    def encode_body(self) -> bytes:
        # A responder answers with the transform it accepted, which (see
        # decode_body) is the same object in every handshake with that peer: its
        # encoding is kept beside it. Keyed by identity, holding the object, so the
        # identity cannot be reused while the entry exists.
        known = _TRANSFORM_ENCODINGS.get(id(self))
        if known is not None and known[0] is self:
            return known[1]
        _check_uint(self.number, 8, "transform number")
        _check_uint(self.transform_id, 8, "transform id")
        encoded = bytes((self.number, self.transform_id, 0, 0)) + encode_attributes(
            self.attributes)
        if len(_TRANSFORM_ENCODINGS) >= _DECODED_CACHED:
            _TRANSFORM_ENCODINGS.clear()
        _TRANSFORM_ENCODINGS[id(self)] = (self, encoded)
        return encoded

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        # A peer offers the same transforms in every handshake and renewal (only the
        # SPI of a Quick Mode proposal changes): a transform decoded once is the same
        # immutable value next time. Bounded, since the bytes are the peer's.
        return _decoded_once(_TRANSFORMS, cls, data)

    @classmethod
    def _decode_body(cls, data: bytes) -> Self:
        r = Reader(data, "transform payload")
        number = r.u8("transform number")
        transform_id = r.u8("transform id")
        r.take(2, "transform reserved")
        return cls(number, transform_id, decode_attributes(r))


@dataclass(frozen=True, slots=True)
class Proposal:
    """RFC 2408 §3.5 proposal payload (nested in an SA payload).

    Several proposals with the same number form one AND-ed offer (RFC 2408
    §4.2); they stay separate entries here.
    """

    number: int
    protocol_id: int
    spi: bytes
    transforms: tuple[Transform, ...]

    payload_type: ClassVar[PayloadType] = PayloadType.PROPOSAL

    def encode_body(self) -> bytes:
        transforms = self.transforms
        spi = self.spi
        if len(transforms) == 1 and 0 <= self.number <= 0xFF \
                and 0 <= self.protocol_id <= 0xFF and len(spi) <= 0xFF:
            # A responder's answer: the one transform it accepted, the same object in
            # every exchange with that peer (see Transform.encode_body), after a
            # new SPI. Its payload is kept by identity, holding the transform.
            transform = transforms[0]
            known = _LAST_TRANSFORMS.get(id(transform))
            if known is None or known[0] is not transform:
                known = (transform, _generic(PayloadType.NONE, transform.encode_body(),
                                             "transform payload"))
                if len(_LAST_TRANSFORMS) >= _DECODED_CACHED:
                    _LAST_TRANSFORMS.clear()
                _LAST_TRANSFORMS[id(transform)] = known
            return bytes((self.number, self.protocol_id, len(spi), 1)) + spi + known[1]
        return self._encode_body()

    def _encode_body(self) -> bytes:
        """encode_body without the shortcut (tests compare the two)."""
        _check_uint(self.number, 8, "proposal number")
        _check_uint(self.protocol_id, 8, "protocol id")
        _check_uint(len(self.spi), 8, "SPI size")
        _check_uint(len(self.transforms), 8, "number of transforms")
        out = bytearray((self.number, self.protocol_id, len(self.spi), len(self.transforms)))
        out += self.spi
        last = len(self.transforms) - 1
        for i, t in enumerate(self.transforms):
            nxt = PayloadType.NONE if i == last else PayloadType.TRANSFORM
            out += _generic(nxt, t.encode_body(), "transform payload")
        return bytes(out)

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        # What follows the SPI is the same in every Quick Mode a peer starts (its
        # transforms) and decodes the same whatever the SPI holds: kept by the
        # bytes around the SPI, like a transform (the SPI size is among them).
        if type(data) is not bytes:
            data = bytes(data)
        spi_end = 4 + data[2] if 4 <= len(data) <= _CACHED_BODY_MAX else -1
        if 0 <= spi_end <= len(data):
            key = data[:4] + data[spi_end:]
            known = _PROPOSALS.get(key)
            if known is not None and type(known) is cls:
                return cls(known.number, known.protocol_id, data[4:spi_end], known.transforms)
            decoded = cls._decode_body(data)
            if len(_PROPOSALS) >= _DECODED_CACHED:
                _PROPOSALS.clear()
            _PROPOSALS[key] = decoded
            return decoded
        return cls._decode_body(data)

    @classmethod
    def _decode_body(cls, data: bytes) -> Self:
        r = Reader(data, "proposal payload")
        number = r.u8("proposal number")
        protocol_id = r.u8("protocol id")
        spi_size = r.u8("SPI size")
        count = r.u8("number of transforms")
        spi = r.take(spi_size, "SPI")
        transforms: list[Transform] = []
        for _body in _nested_chain(r, PayloadType.TRANSFORM, "transform", count):
            transforms.append(Transform.decode_body(_body))
        return cls(number, protocol_id, spi, tuple(transforms))


def _nested_chain(r: Reader, kind: PayloadType, what: str, count: int | None) -> list[bytes]:
    """Bodies of a nested proposal/transform chain (RFC 2408 §3.5, §3.6).

    Inside these chains the next-payload field may only be ``kind`` (more follow)
    or NONE (last); the chain must end exactly at the end of ``r``.
    """
    bodies: list[bytes] = []
    if count == 0:
        r.expect_end()
        return bodies
    if count is None and not r.remaining():
        return bodies
    header_field = f"{what} header"
    body_field = f"{what} payload"
    while True:
        nxt = r.u8(header_field)
        r.u8(header_field)
        length = r.u16(header_field)
        if length < GENERIC_HEADER_LENGTH:
            raise WireError(f"{what} payload length {length} < 4")
        bodies.append(r.take(length - GENERIC_HEADER_LENGTH, body_field))
        if nxt == PayloadType.NONE:
            break
        if nxt != kind:
            raise WireError(
                f"{what} chain: next payload {PayloadType(nxt)} where only {kind} or NONE "
                "may appear",
                NotifyType.BAD_PROPOSAL_SYNTAX,
            )
    r.expect_end()
    if count is not None and len(bodies) != count:
        raise WireError(
            f"proposal says {count} transforms, carries {len(bodies)}",
            NotifyType.BAD_PROPOSAL_SYNTAX,
        )
    return bodies


@dataclass(frozen=True, slots=True)
class SaPayload:
    """RFC 2408 §3.4 security association payload, DOI and situation per RFC 2407 §4.6.1."""

    proposals: tuple[Proposal, ...]
    doi: int = 1
    situation: int = 1

    payload_type: ClassVar[PayloadType] = PayloadType.SA

    def encode_body(self) -> bytes:
        if self.doi == 1 and self.situation == 1 and len(self.proposals) == 1:
            # The IPsec DOI with SIT_IDENTITY_ONLY and one proposal: every answer.
            return _IPSEC_DOI_IDENTITY_ONLY + _generic(
                PayloadType.NONE, self.proposals[0].encode_body(), "proposal payload")
        return self._encode_body()

    def _encode_body(self) -> bytes:
        """encode_body without the shortcut (tests compare the two)."""
        _check_uint(self.doi, 32, "DOI")
        _check_uint(self.situation, 32, "situation")
        out = bytearray(self.doi.to_bytes(4, "big") + self.situation.to_bytes(4, "big"))
        last = len(self.proposals) - 1
        for i, p in enumerate(self.proposals):
            nxt = PayloadType.NONE if i == last else PayloadType.PROPOSAL
            out += _generic(nxt, p.encode_body(), "proposal payload")
        return bytes(out)

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        # Main Mode message 1 carries the same offer in every handshake of a peer
        # (no SPI in an ISAKMP proposal): decoded once, like a transform above.
        # A Quick Mode offer differs between exchanges only in its proposals'
        # SPIs; the usual one proposal (DOI, situation, then a proposal header
        # whose next payload is NONE and whose length reaches the end) is kept by
        # the bytes around its SPI, as Proposal.decode_body does.
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if 16 <= size <= _CACHED_BODY_MAX and data[14] and not data[8] \
                and (data[10] << 8 | data[11]) == size - 8 and 16 + data[14] <= size:
            spi_end = 16 + data[14]
            key = data[:16] + data[spi_end:]
            known = _SA_PAYLOADS_BY_SHAPE.get(key)
            if known is not None and type(known) is cls:
                (proposal,) = known.proposals
                return cls((Proposal(proposal.number, proposal.protocol_id, data[16:spi_end],
                                     proposal.transforms),), known.doi, known.situation)
            decoded = cls._decode_body(data)
            if len(_SA_PAYLOADS_BY_SHAPE) >= _DECODED_CACHED:
                _SA_PAYLOADS_BY_SHAPE.clear()
            _SA_PAYLOADS_BY_SHAPE[key] = decoded
            return decoded
        return _decoded_once(_SA_PAYLOADS, cls, data)

    @classmethod
    def _decode_body(cls, data: bytes) -> Self:
        r = Reader(data, "SA payload")
        doi = r.u32("DOI")
        situation = r.u32("situation")
        # RFC 2407 §4.6.1: with SIT_SECRECY/SIT_INTEGRITY labelled-domain fields would
        # follow; nobody sends them, so they are not modelled and such an SA fails
        # to parse here (the engine answers SITUATION-NOT-SUPPORTED either way).
        bodies = _nested_chain(r, PayloadType.PROPOSAL, "proposal", None)
        proposals = tuple(Proposal.decode_body(b) for b in bodies)
        return cls(proposals, doi, situation)


# --------------------------------------------------------------------------- opaque ones


@dataclass(frozen=True, slots=True)
class _Opaque:
    data: bytes

    def encode_body(self) -> bytes:
        return bytes(self.data)

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        return cls(bytes(data))


@dataclass(frozen=True, slots=True)
class KePayload(_Opaque):
    """RFC 2408 §3.7 key exchange payload (the DH public value)."""

    payload_type: ClassVar[PayloadType] = PayloadType.KE


@dataclass(frozen=True, slots=True)
class NoncePayload(_Opaque):
    """RFC 2408 §3.13 nonce payload."""

    payload_type: ClassVar[PayloadType] = PayloadType.NONCE


@dataclass(frozen=True, slots=True)
class HashPayload(_Opaque):
    """RFC 2408 §3.11 hash payload."""

    payload_type: ClassVar[PayloadType] = PayloadType.HASH


@dataclass(frozen=True, slots=True)
class SigPayload(_Opaque):
    """RFC 2408 §3.12 signature payload."""

    payload_type: ClassVar[PayloadType] = PayloadType.SIG


@dataclass(frozen=True, slots=True)
class VendorIdPayload(_Opaque):
    """RFC 2408 §3.16 vendor ID payload."""

    payload_type: ClassVar[PayloadType] = PayloadType.VENDOR_ID


# --------------------------------------------------------------------------- ID

# RFC 2407 §4.6.2: the data length each address-carrying ID type requires.
ID_DATA_LENGTHS: dict[int, int] = {
    1: 4,  # ID_IPV4_ADDR
    4: 8,  # ID_IPV4_ADDR_SUBNET
    5: 16,  # ID_IPV6_ADDR
    6: 32,  # ID_IPV6_ADDR_SUBNET
    7: 8,  # ID_IPV4_ADDR_RANGE
    8: 32,  # ID_IPV6_ADDR_RANGE
}


def check_id_data(id_type: int, data: bytes, what: str = "ID payload") -> None:
    """Raise InvalidIdError unless ``data`` has the length ``id_type`` requires."""
    want = ID_DATA_LENGTHS.get(id_type)
    if want is not None and len(data) != want:
        raise InvalidIdError(
            f"{what}: {IdType(id_type)} needs {want} bytes of data, got {len(data)}"
        )


@dataclass(frozen=True, slots=True)
class IdPayload:
    """RFC 2408 §3.8 identification payload with the RFC 2407 §4.6.2 IPsec DOI fields.

    ``encode_body()`` is exactly the ``IDii_b`` / ``IDir_b`` of RFC 2409 §5.
    """

    id_type: int
    protocol: int
    port: int
    data: bytes

    payload_type: ClassVar[PayloadType] = PayloadType.ID

    def encode_body(self) -> bytes:
        # A Quick Mode responder echoes the peer's IDci/IDcr, decoded objects that
        # are the same in every exchange (see decode_body): their encoding is kept
        # beside them, by identity and holding the object, as for transforms.
        known = _ID_ENCODINGS.get(id(self))
        if known is not None and known[0] is self:
            return known[1]
        _check_uint(self.id_type, 8, "ID type")
        _check_uint(self.protocol, 8, "protocol")
        _check_uint(self.port, 16, "port")
        encoded = bytes((self.id_type, self.protocol)) + self.port.to_bytes(2, "big") + self.data
        if len(_ID_ENCODINGS) >= _DECODED_CACHED:
            _ID_ENCODINGS.clear()
        _ID_ENCODINGS[id(self)] = (self, encoded)
        return encoded

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        # A peer's Quick Mode IDs (its tunnel's networks) are the same in every
        # exchange: decoded once, bounded, like a transform.
        return _decoded_once(_IDS, cls, data)

    @classmethod
    def _decode_body(cls, data: bytes) -> Self:
        r = Reader(data, "ID payload")
        id_type = r.u8("ID type")
        protocol = r.u8("protocol")
        port = r.u16("port")
        body = r.rest()
        check_id_data(id_type, body)
        return cls(id_type, protocol, port, body)

    def to_network(self) -> IPNetwork | None:
        """The traffic selector as one network, or None (see id_to_network)."""
        return id_to_network(self)

    def to_text(self) -> str:
        """Readable form, e.g. ``10.1.0.0/24`` or ``gw.example.org`` (see id_to_text)."""
        return id_to_text(self)


# The conversions live here, next to the payload they read, so that ids.py (the
# constructors) depends on this module and not the other way round.


def _addresses(p: IdPayload) -> tuple[IPAddress, IPAddress]:
    """The two halves of a subnet/range ID, after the length check."""
    check_id_data(p.id_type, p.data)
    half = len(p.data) // 2
    a = ipaddress.ip_address(p.data[:half])
    b = ipaddress.ip_address(p.data[half:])
    return a, b


def id_to_network(p: IdPayload) -> IPNetwork | None:
    """The ID as one CIDR network: *_ADDR as a host, *_ADDR_SUBNET with a contiguous
    mask, *_ADDR_RANGE only when the range is exactly one CIDR block. Otherwise None."""
    key = (p.id_type, p.data)
    try:
        return _NETWORKS[key]
    except KeyError:
        pass
    network = _id_to_network(p)
    if len(_NETWORKS) >= _NETWORKS_CACHED:
        _NETWORKS.clear()
    _NETWORKS[key] = network
    return network


# Every Quick Mode names its tunnel with two ID payloads, and the same few tunnels
# come back with every peer and renewal: the networks (immutable) are kept rather
# than parsed again. Bounded, since the bytes are whatever a peer sends.
_NETWORKS: dict[tuple[int, bytes], IPNetwork | None] = {}
_NETWORKS_CACHED = 1024


def _id_to_network(p: IdPayload) -> IPNetwork | None:
    t = p.id_type
    if t in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        check_id_data(t, p.data)
        return ipaddress.ip_network(ipaddress.ip_address(p.data))
    if t in (IdType.IPV4_ADDR_SUBNET, IdType.IPV6_ADDR_SUBNET):
        addr, mask = _addresses(p)
        bits = addr.max_prefixlen
        host = ~int(mask) & ((1 << bits) - 1)
        if host & (host + 1):  # non-contiguous mask: not a CIDR block
            return None
        return ipaddress.ip_network((addr, bits - host.bit_length()), strict=False)
    if t in (IdType.IPV4_ADDR_RANGE, IdType.IPV6_ADDR_RANGE):
        first, last = _addresses(p)
        if int(first) > int(last):
            return None
        nets: list[IPNetwork]
        if isinstance(first, ipaddress.IPv4Address) and isinstance(last, ipaddress.IPv4Address):
            nets = list(ipaddress.summarize_address_range(first, last))
        elif isinstance(first, ipaddress.IPv6Address) and isinstance(last, ipaddress.IPv6Address):
            nets = list(ipaddress.summarize_address_range(first, last))
        else:
            return None
        return nets[0] if len(nets) == 1 else None
    return None


def id_to_text(p: IdPayload) -> str:
    """Readable ID: ``192.0.2.1``, ``gw.example.org``, ``10.1.0.0/24``,
    ``10.0.0.1-10.0.0.9``, KEY_ID as hex, other types as ``TYPE:hex``.

    A DN stays bytes here (``DN:hex``): reading X.501 names is the job of
    ``cryptography.x509``, which the wire layer does not use."""
    t = p.id_type
    try:
        if t in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            check_id_data(t, p.data)
            return str(ipaddress.ip_address(p.data))
        if t in (IdType.IPV4_ADDR_SUBNET, IdType.IPV6_ADDR_SUBNET):
            net = id_to_network(p)
            if net is not None:
                return str(net)
            addr, mask = _addresses(p)
            return f"{addr}/{mask}"
        if t in (IdType.IPV4_ADDR_RANGE, IdType.IPV6_ADDR_RANGE):
            first, last = _addresses(p)
            return f"{first}-{last}"
        if t in (IdType.FQDN, IdType.USER_FQDN):
            return p.data.decode("ascii", errors="backslashreplace")
    except InvalidIdError:
        pass
    if t == IdType.DER_ASN1_DN:
        return "DN:" + p.data.hex()
    if t == IdType.KEY_ID:
        return p.data.hex()
    return f"{IdType(t)}:{p.data.hex()}"


# --------------------------------------------------------------------------- CERT / CR


@dataclass(frozen=True, slots=True)
class _EncodingAndData:
    """A one-octet encoding (certificate type) followed by opaque data."""

    encoding: int
    data: bytes

    def encode_body(self) -> bytes:
        _check_uint(self.encoding, 8, "certificate encoding")
        return bytes((self.encoding,)) + self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        r = Reader(data, f"{cls.__name__}")
        return cls(r.u8("certificate encoding"), r.rest())


@dataclass(frozen=True, slots=True)
class CertPayload(_EncodingAndData):
    """RFC 2408 §3.9 certificate payload."""

    payload_type: ClassVar[PayloadType] = PayloadType.CERT


@dataclass(frozen=True, slots=True)
class CrPayload(_EncodingAndData):
    """RFC 2408 §3.10 certificate request payload (data: a DER DN of an acceptable CA)."""

    payload_type: ClassVar[PayloadType] = PayloadType.CR


# --------------------------------------------------------------------------- N / D


@dataclass(frozen=True, slots=True)
class NotifyPayload:
    """RFC 2408 §3.14 notification payload."""

    notify_type: int
    spi: bytes = b""
    data: bytes = b""
    protocol_id: int = 1
    doi: int = 1

    payload_type: ClassVar[PayloadType] = PayloadType.NOTIFICATION

    def encode_body(self) -> bytes:
        _check_uint(self.doi, 32, "DOI")
        _check_uint(self.protocol_id, 8, "protocol id")
        _check_uint(len(self.spi), 8, "SPI size")
        _check_uint(self.notify_type, 16, "notify message type")
        return (
            self.doi.to_bytes(4, "big")
            + bytes((self.protocol_id, len(self.spi)))
            + self.notify_type.to_bytes(2, "big")
            + self.spi
            + self.data
        )

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        # The fixed fields in one unpack when they and the SPI are all there (every
        # notification a peer sends); otherwise the Reader says what is missing.
        if type(data) is bytes and len(data) >= 8:
            doi, protocol_id, spi_size, raw_type = _NOTIFY_FIXED.unpack_from(data)
            spi_end = 8 + spi_size
            if spi_end <= len(data):
                notify_type = _NOTIFY_TYPES.get(raw_type)
                if notify_type is None:
                    notify_type = NotifyType(raw_type)
                return cls(notify_type, data[8:spi_end], data[spi_end:], protocol_id, doi)
        return cls._decode_body(data)

    @classmethod
    def _decode_body(cls, data: bytes) -> Self:
        r = Reader(data, "notification payload")
        doi = r.u32("DOI")
        protocol_id = r.u8("protocol id")
        spi_size = r.u8("SPI size")
        notify_type = NotifyType(r.u16("notify message type"))
        spi = r.take(spi_size, "SPI")
        return cls(notify_type, spi, r.rest(), protocol_id, doi)


@dataclass(frozen=True, slots=True)
class DeletePayload:
    """RFC 2408 §3.15 delete payload: ISAKMP SPIs are the 16-byte cookie pair
    (RFC 2408 §2.4), ESP/AH SPIs are 4 bytes."""

    protocol_id: int
    spis: tuple[bytes, ...]
    doi: int = 1

    payload_type: ClassVar[PayloadType] = PayloadType.DELETE

    @property
    def spi_size(self) -> int:
        return len(self.spis[0]) if self.spis else 0

    def encode_body(self) -> bytes:
        size = self.spi_size
        if any(len(s) != size for s in self.spis):
            raise ValueError("delete payload: SPIs of different sizes")
        _check_uint(self.doi, 32, "DOI")
        _check_uint(self.protocol_id, 8, "protocol id")
        _check_uint(size, 8, "SPI size")
        _check_uint(len(self.spis), 16, "number of SPIs")
        return (
            self.doi.to_bytes(4, "big")
            + bytes((self.protocol_id, size))
            + len(self.spis).to_bytes(2, "big")
            + b"".join(self.spis)
        )

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        r = Reader(data, "delete payload")
        doi = r.u32("DOI")
        protocol_id = r.u8("protocol id")
        spi_size = r.u8("SPI size")
        count = r.u16("number of SPIs")
        if spi_size == 0 and count:
            raise WireError(f"delete payload: {count} SPIs of size 0", NotifyType.INVALID_SPI)
        spis = tuple(r.take(spi_size, f"SPI {i}") for i in range(count))
        r.expect_end()
        return cls(protocol_id, spis, doi)


# --------------------------------------------------------------------------- NAT-T


@dataclass(frozen=True, slots=True)
class NatDPayload:
    """RFC 3947 §3.2 NAT-D (type 20; 130 in the drafts)."""

    data: bytes
    draft: bool = False

    @property
    def payload_type(self) -> PayloadType:
        return PayloadType.NAT_D_DRAFT if self.draft else PayloadType.NAT_D

    def encode_body(self) -> bytes:
        return bytes(self.data)

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        return cls(bytes(data))


@dataclass(frozen=True, slots=True)
class NatOaPayload:
    """RFC 3947 §5.2 NAT-OA (type 21; 131 in the drafts): ID type, 3 reserved, address."""

    id_type: int
    data: bytes
    draft: bool = False

    @property
    def payload_type(self) -> PayloadType:
        return PayloadType.NAT_OA_DRAFT if self.draft else PayloadType.NAT_OA

    def encode_body(self) -> bytes:
        _check_uint(self.id_type, 8, "NAT-OA ID type")
        return bytes((self.id_type, 0, 0, 0)) + self.data

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        r = Reader(data, "NAT-OA payload")
        id_type = r.u8("ID type")
        r.take(3, "reserved")
        body = r.rest()
        check_id_data(id_type, body, "NAT-OA payload")
        return cls(id_type, body)


# --------------------------------------------------------------------------- Mode Config


@dataclass(frozen=True, slots=True)
class AttributePayload:
    """draft-dukes-ike-mode-cfg-02 §3.2 attribute payload (Mode Config and XAUTH)."""

    cfg_type: int
    identifier: int
    attributes: tuple[Attribute, ...]

    payload_type: ClassVar[PayloadType] = PayloadType.ATTRIBUTE

    def encode_body(self) -> bytes:
        _check_uint(self.cfg_type, 8, "attribute payload type")
        _check_uint(self.identifier, 16, "identifier")
        return (
            bytes((self.cfg_type, 0))
            + self.identifier.to_bytes(2, "big")
            + encode_attributes(self.attributes)
        )

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        r = Reader(data, "attribute payload")
        cfg_type = r.u8("type")
        r.u8("reserved")
        identifier = r.u16("identifier")
        attributes: list[Attribute] = []
        while r.remaining():
            if r.remaining() < 4 and not any(r.rest()):
                # Libreswan pads the attribute payload it sends (its Mode Config
                # replies and sets) to a multiple of four octets with zeros, counted in
                # the payload length. No attribute is shorter than four octets (a TV
                # attribute's type and value, a TLV's type and length, RFC 2408
                # section 3.3), so one to three zero octets can only be that padding.
                break
            attributes.append(Attribute.decode_from(r))
        return cls(cfg_type, identifier, tuple(attributes))


# --------------------------------------------------------------------------- fragments


@dataclass(frozen=True, slots=True)
class FragmentPayload:
    """IKEv1 fragment (type 132, the Cisco format strongSwan also speaks):
    fragment ID (2), fragment number (1, from 1), flags (1, bit 0 = last)."""

    fragment_id: int
    number: int
    last: bool
    data: bytes

    payload_type: ClassVar[PayloadType] = PayloadType.FRAGMENT

    def encode_body(self) -> bytes:
        _check_uint(self.fragment_id, 16, "fragment id")
        _check_uint(self.number, 8, "fragment number")
        return (
            self.fragment_id.to_bytes(2, "big")
            + bytes((self.number, 1 if self.last else 0))
            + self.data
        )

    @classmethod
    def decode_body(cls, data: bytes) -> Self:
        r = Reader(data, "fragment payload")
        fragment_id = r.u16("fragment id")
        number = r.u8("fragment number")
        flags = r.u8("flags")
        return cls(fragment_id, number, bool(flags & 1), r.rest())


# --------------------------------------------------------------------------- unknown


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload type this codec does not model, kept as its raw body rather than
    refused here: whether to answer INVALID-PAYLOAD-TYPE (RFC 2408 section 5.2)
    is the engine's decision, not the decoder's."""

    payload_type: int
    data: bytes

    def encode_body(self) -> bytes:
        return bytes(self.data)


Payload = (
    SaPayload
    | KePayload
    | IdPayload
    | CertPayload
    | CrPayload
    | HashPayload
    | SigPayload
    | NoncePayload
    | NotifyPayload
    | DeletePayload
    | VendorIdPayload
    | AttributePayload
    | NatDPayload
    | NatOaPayload
    | FragmentPayload
    | UnknownPayload
)
