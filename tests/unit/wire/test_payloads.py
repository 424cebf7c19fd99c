"""Hand-built examples with exact bytes (from the RFC 2408/2407 layouts), the typed
errors for each kind of malformation, the open enums and the ID helpers."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from ikev1d.wire import (
    Attribute,
    AttributePayload,
    DeletePayload,
    EncryptedMessageError,
    ExchangeType,
    Flags,
    FragmentPayload,
    Header,
    IdPayload,
    IdType,
    InvalidIdError,
    InvalidPayloadTypeError,
    InvalidVersionError,
    KePayload,
    LengthMismatchError,
    Message,
    ModeCfgAttr,
    ModeCfgType,
    NatDPayload,
    NatOaPayload,
    NotifyPayload,
    NotifyType,
    PayloadType,
    Proposal,
    ProtocolId,
    SaPayload,
    Transform,
    TruncatedError,
    UnknownPayload,
    WireError,
    decode_header,
    decode_message,
    decode_payloads,
    encode_payloads,
    id_from_address,
    id_from_fqdn,
    id_from_key_id,
    id_from_network,
    id_from_range,
    id_from_user_fqdn,
    id_to_network,
    id_to_text,
    make_attribute,
    split_message,
    strip_non_esp_marker,
)
from ikev1d.wire.enums import ExchangeType as ET

H = bytes.fromhex

# Main Mode SA: AES-CBC-128, SHA, PSK, group 2, life 28800 s as a 4-byte TLV.
SA_BODY = H(
    "00000001 00000001"  # DOI IPsec, SIT_IDENTITY_ONLY
    "00000030 01010001"  # proposal: last, len 48, #1, ISAKMP, SPI size 0, 1 transform
    "00000028 01010000"  # transform: last, len 40, #1, KEY_IKE
    "80010007 800e0080 80020002 80030001 80040002 800b0001 000c0004 00007080"
)
SA = SaPayload(
    (
        Proposal(
            1,
            ProtocolId.ISAKMP,
            b"",
            (
                Transform(
                    1,
                    1,
                    (
                        Attribute(1, 7),
                        Attribute(14, 128),
                        Attribute(2, 2),
                        Attribute(3, 1),
                        Attribute(4, 2),
                        Attribute(11, 1),
                        Attribute(12, H("00007080")),
                    ),
                ),
            ),
        ),
    )
)


def test_sa_exact_bytes() -> None:
    assert SA.encode_body() == SA_BODY
    assert SaPayload.decode_body(SA_BODY) == SA
    assert encode_payloads([SA]) == H("0000003c") + SA_BODY
    assert SA.proposals[0].transforms[0].attributes[-1].int_value() == 28800


def test_make_attribute_picks_tv_or_4_byte_tlv() -> None:
    assert make_attribute(12, 28800) == Attribute(12, 28800)
    assert make_attribute(12, 28800).encode() == H("800c7080")
    assert make_attribute(12, 86400) == Attribute(12, H("00015180"))
    assert make_attribute(12, 86400).encode() == H("000c0004 00015180")
    assert make_attribute(12, 1 << 40).encode() == H("000c0006 010000000000")
    with pytest.raises(ValueError):
        Attribute(1, 70000).encode()


def test_ke_exact_bytes() -> None:
    assert encode_payloads([KePayload(H("010203"))]) == H("00000007 010203")


def test_id_exact_bytes() -> None:
    p = id_from_network("10.1.0.0/24", 17, 500)
    assert p.encode_body() == H("041101f4 0a010000 ffffff00")
    assert encode_payloads([p]) == H("00000010 041101f4 0a010000 ffffff00")
    assert id_from_address("192.0.2.1").encode_body() == H("01000000 c0000201")
    assert id_from_fqdn("gw.example.org").encode_body() == H("02000000") + b"gw.example.org"


def test_notify_exact_bytes() -> None:
    spi = H("0123456789abcdef fedcba9876543210")
    p = NotifyPayload(NotifyType.R_U_THERE, spi, H("000004d2"))
    assert p.encode_body() == H("00000001 01 10 8d28") + spi + H("000004d2")
    assert NotifyPayload.decode_body(p.encode_body()) == p
    assert NotifyPayload.decode_body(p.encode_body()).notify_type is NotifyType.R_U_THERE


def test_delete_exact_bytes() -> None:
    p = DeletePayload(ProtocolId.ESP, (H("c1234567"), H("c7654321")))
    assert p.encode_body() == H("00000001 03 04 0002 c1234567 c7654321")
    assert p.spi_size == 4
    with pytest.raises(ValueError):
        DeletePayload(3, (H("00"), H("0000"))).encode_body()


def test_attribute_payload_exact_bytes() -> None:
    p = AttributePayload(
        ModeCfgType.ISAKMP_CFG_REQUEST,
        0x1234,
        (Attribute(ModeCfgAttr.INTERNAL_IP4_ADDRESS, b""), Attribute(ModeCfgAttr.XAUTH_TYPE, 0)),
    )
    assert p.encode_body() == H("01 00 1234 0001 0000 c088 0000")
    assert AttributePayload.decode_body(p.encode_body()) == p


def test_attribute_payload_zero_padding_to_four_octets() -> None:
    """Libreswan 4.10 pads its Mode Config replies' attribute payload to a multiple of
    four octets (here a 6-octet CISCO_SPLIT_INC-like TLV leaves two zeros); one to
    three zero octets are padding, anything else after the attributes is an error."""
    body = H("02 00 0000 0001 0004 0a030105 7000 0002 0a02")
    expected = AttributePayload(
        ModeCfgType.ISAKMP_CFG_REPLY, 0,
        (Attribute(ModeCfgAttr.INTERNAL_IP4_ADDRESS, H("0a030105")), Attribute(0x7000, H("0a02"))),
    )
    for pad in (b"", b"\0", b"\0\0", b"\0\0\0"):
        assert AttributePayload.decode_body(body + pad) == expected
    for bad in (b"\0\1", b"\1", b"\0\0\1"):
        with pytest.raises(TruncatedError):
            AttributePayload.decode_body(body + bad)


def test_fragment_and_natt_exact_bytes() -> None:
    assert FragmentPayload(7, 2, True, b"ab").encode_body() == H("0007 02 01") + b"ab"
    assert encode_payloads([NatDPayload(b"x", draft=True)]) == H("00000005") + b"x"
    assert NatDPayload(b"x", draft=True).payload_type == 130
    oa = NatOaPayload(IdType.IPV4_ADDR, H("c0000201"))
    assert oa.encode_body() == H("01000000 c0000201")
    assert oa.payload_type == PayloadType.NAT_OA


def test_message_exact_bytes() -> None:
    m = Message(
        Header(H("0102030405060708"), bytes(8), 0, ExchangeType.MAIN_MODE, 0, 0),
        (KePayload(b"\xaa"), NatDPayload(b"\xbb")),
    )
    assert m.encode() == (
        H("0102030405060708 0000000000000000 04 10 02 00 00000000 00000026")
        + H("14000005 aa")
        + H("00000005 bb")
    )


# --------------------------------------------------------------------------- errors


def _msg(body: bytes, first: int, *, version: int = 0x10, flags: int = 0) -> bytes:
    return (
        bytes(16)
        + bytes((first, version, 2, flags))
        + bytes(4)
        + (28 + len(body)).to_bytes(4, "big")
        + body
    )


def test_header_errors() -> None:
    with pytest.raises(TruncatedError):
        decode_header(bytes(27))
    with pytest.raises(InvalidVersionError) as e:
        decode_message(_msg(b"", 0, version=0x20))
    assert e.value.notify == NotifyType.INVALID_MAJOR_VERSION
    bad_len = bytearray(_msg(b"", 0))
    bad_len[24:28] = (27).to_bytes(4, "big")
    with pytest.raises(LengthMismatchError):
        decode_header(bytes(bad_len))
    bad_len[24:28] = (29).to_bytes(4, "big")
    with pytest.raises(TruncatedError):
        decode_header(bytes(bad_len))
    # minor version is kept for the engine to judge
    assert decode_header(_msg(b"", 0, version=0x11)).minor_version == 1


def test_header_registry_values_known_and_unknown() -> None:
    """Known values decode to the registry members, unassigned ones to pseudo-members
    (named, equal to the number), in every header field that names one."""
    for first, exchange, flags in ((PayloadType.SA, ExchangeType.IDENTITY_PROTECTION, 0),
                                   (PayloadType.NONE, ExchangeType.INFORMATIONAL, 1),
                                   (200, 200, 0xF8), (0, 2, 7)):
        data = bytearray(_msg(b"", first, flags=flags))
        data[18] = exchange
        header = decode_header(bytes(data))
        assert type(header.next_payload) is PayloadType and header.next_payload == first
        assert type(header.exchange_type) is ExchangeType and header.exchange_type == exchange
        assert isinstance(header.flags, Flags) and header.flags == flags
        assert str(header.next_payload) == str(PayloadType(first))
        assert str(header.exchange_type) == str(ExchangeType(exchange))
    assert str(decode_header(_msg(b"", 200)).next_payload) == "PayloadType_200"
    # An unknown value is not remembered: a peer must not grow a table.
    assert 201 not in PayloadType._value2member_map_
    decode_header(_msg(b"", 201))
    assert 201 not in PayloadType._value2member_map_


def test_split_message_ignores_bytes_after_length_and_decode_refuses_encrypted() -> None:
    data = _msg(H("00000005 aa"), PayloadType.KE, flags=Flags.ENCRYPTION)
    header, body = split_message(data + b"junk")
    assert header.encrypted and body == H("00000005 aa")
    with pytest.raises(EncryptedMessageError):
        decode_message(data)


def test_payload_length_errors() -> None:
    with pytest.raises(LengthMismatchError):
        decode_payloads(PayloadType.KE, H("00000003"))
    with pytest.raises(TruncatedError):
        decode_payloads(PayloadType.KE, H("00000009 aa"))
    with pytest.raises(TruncatedError):
        decode_payloads(PayloadType.KE, H("0a000005 aa"))  # says a nonce follows
    with pytest.raises(TruncatedError):
        decode_payloads(PayloadType.KE, b"")
    with pytest.raises(LengthMismatchError):
        decode_payloads(PayloadType.NONE, b"\x00")
    assert decode_payloads(PayloadType.NONE, b"\x00", allow_trailing=True) == ()
    with pytest.raises(WireError) as e:
        decode_payloads(PayloadType.KE, H("00000005 aa") + b"pad")
    assert e.value.notify == NotifyType.PAYLOAD_MALFORMED


def test_nested_sa_errors() -> None:
    def sa_with(proposal: bytes) -> bytes:
        return H("00000001 00000001") + proposal

    # transform count says 2, one present
    with pytest.raises(WireError) as e:
        SaPayload.decode_body(sa_with(H("00000010 01010002 00000008 01010000")))
    assert e.value.notify == NotifyType.BAD_PROPOSAL_SYNTAX
    # next payload inside a proposal chain must be TRANSFORM or NONE
    with pytest.raises(WireError) as e:
        SaPayload.decode_body(sa_with(H("00000010 01010001 05000008 01010000")))
    assert e.value.notify == NotifyType.BAD_PROPOSAL_SYNTAX
    # transform length overruns the proposal
    with pytest.raises(TruncatedError):
        SaPayload.decode_body(sa_with(H("00000010 01010001 0000000c 01010000")))
    # a TLV attribute longer than the transform
    with pytest.raises(TruncatedError):
        SaPayload.decode_body(sa_with(H("00000014 01010001 0000000c 01010000 000c0004")))
    # a half attribute
    with pytest.raises(TruncatedError):
        SaPayload.decode_body(sa_with(H("00000012 01010001 0000000a 01010000 8001")))
    # bytes after the last proposal
    with pytest.raises(LengthMismatchError):
        SaPayload.decode_body(sa_with(H("00000008 01010000 ffff")))
    # SPI longer than the proposal
    with pytest.raises(TruncatedError):
        SaPayload.decode_body(sa_with(H("00000008 01031000")))


def test_proposal_or_transform_at_top_level_is_invalid_payload_type() -> None:
    for t in (PayloadType.PROPOSAL, PayloadType.TRANSFORM):
        with pytest.raises(InvalidPayloadTypeError) as e:
            decode_payloads(t, H("00000008 01010000"))
        assert e.value.notify == NotifyType.INVALID_PAYLOAD_TYPE


def test_unknown_payload_types_are_kept() -> None:
    ps = decode_payloads(200, H("0a000006 abcd 00000005 ee"))
    assert ps[0] == UnknownPayload(200, H("abcd"))
    assert ps[1] == decode_payloads(PayloadType.NONCE, H("00000005 ee"))[0]
    assert str(PayloadType(200)) == "PayloadType_200"


def test_id_length_checks() -> None:
    with pytest.raises(InvalidIdError) as e:
        IdPayload.decode_body(H("01000000 c00002"))
    assert e.value.notify == NotifyType.INVALID_ID_INFORMATION
    with pytest.raises(InvalidIdError):
        IdPayload.decode_body(H("06000000") + bytes(16))
    with pytest.raises(InvalidIdError):
        NatOaPayload.decode_body(H("05000000") + bytes(4))
    with pytest.raises(WireError):
        decode_payloads(PayloadType.ID, H("00000007 040000"))  # nothing after the port


def test_delete_with_zero_spi_size_but_a_count() -> None:
    with pytest.raises(WireError) as e:
        DeletePayload.decode_body(H("00000001 03 00 0005"))
    assert e.value.notify == NotifyType.INVALID_SPI
    with pytest.raises(LengthMismatchError):
        DeletePayload.decode_body(H("00000001 03 04 0001 c1234567 00"))


# --------------------------------------------------------------------------- enums


def test_open_enums() -> None:
    assert ET(2) is ET.MAIN_MODE
    assert ET(2) is ET.IDENTITY_PROTECTION
    assert ET(99).name == "ExchangeType_99" and ET(99) == 99 and not ET(99).is_known
    assert f"{NotifyType.NO_PROPOSAL_CHOSEN}" == "NO_PROPOSAL_CHOSEN"
    assert NotifyType.NO_PROPOSAL_CHOSEN.rfc_name == "NO-PROPOSAL-CHOSEN"
    assert NotifyType.INVALID_ID_INFORMATION.rfc_name == "INVALID-ID-INFORMATION"
    assert f"{NotifyType.R_U_THERE:x}" == "8d28"
    assert int(NotifyType.UNEQUAL_PAYLOAD_LENGTHS) == 30
    assert NotifyType(30).is_error
    assert not NotifyType.INITIAL_CONTACT.is_error
    assert ModeCfgType(2) is ModeCfgType.REPLY
    assert ModeCfgType(2) is ModeCfgType.ISAKMP_CFG_REPLY
    assert Flags(0xFF) & Flags.ENCRYPTION


# --------------------------------------------------------------------------- IDs


def test_id_constructors_and_text() -> None:
    assert id_to_text(id_from_address("192.0.2.1")) == "192.0.2.1"
    assert id_to_text(id_from_address("2001:db8::1")) == "2001:db8::1"
    assert id_from_network("10.1.0.7/32").id_type == IdType.IPV4_ADDR
    assert id_from_network("2001:db8::/128").id_type == IdType.IPV6_ADDR
    assert id_to_text(id_from_network("10.1.0.0/24")) == "10.1.0.0/24"
    assert id_to_text(id_from_network("2001:db8::/32")) == "2001:db8::/32"
    assert id_to_text(id_from_range("10.0.0.1", "10.0.0.9")) == "10.0.0.1-10.0.0.9"
    assert id_to_text(id_from_fqdn("gw.example.org")) == "gw.example.org"
    assert id_to_text(id_from_user_fqdn("me@example.org")) == "me@example.org"
    assert id_to_text(IdPayload(IdType.KEY_ID, 0, 0, H("0102ff"))) == "0102ff"
    assert id_from_key_id(H("0102")) == IdPayload(IdType.KEY_ID, 0, 0, H("0102"))
    # non-contiguous mask: shown as address/mask, no network
    odd = IdPayload(IdType.IPV4_ADDR_SUBNET, 0, 0, H("0a000000 ff00ff00"))
    assert id_to_network(odd) is None
    assert id_to_text(odd) == "10.0.0.0/255.0.255.0"


def test_id_to_network() -> None:
    v4 = ipaddress.IPv4Network
    assert id_to_network(id_from_address("192.0.2.1")) == v4("192.0.2.1/32")
    assert id_from_network("10.1.0.0/24").to_network() == v4("10.1.0.0/24")
    assert id_to_network(id_from_range("10.0.0.0", "10.0.0.255")) == v4("10.0.0.0/24")
    assert id_to_network(id_from_range("10.0.0.1", "10.0.0.9")) is None
    assert id_to_network(id_from_range("10.0.0.9", "10.0.0.1")) is None
    assert id_to_network(id_from_range("::", "::ffff")) == ipaddress.IPv6Network("::/112")
    assert id_to_network(id_from_fqdn("x")) is None
    # host bits set in a subnet ID are masked, as strongSwan does
    sloppy = IdPayload(IdType.IPV4_ADDR_SUBNET, 0, 0, H("0a010005 ffffff00"))
    assert id_to_network(sloppy) == v4("10.1.0.0/24")
    with pytest.raises(InvalidIdError):
        id_to_network(IdPayload(IdType.IPV4_ADDR, 0, 0, H("0a")))


def test_dn_id_text_is_hex() -> None:
    # The wire layer keeps a DN as bytes; ikev1d.config.identity reads X.501 names.
    der = H("3012 3110 300e 0603 550403 0c07 67772e74657374")
    assert id_to_text(IdPayload(IdType.DER_ASN1_DN, 0, 0, der)) == "DN:" + der.hex()
    assert id_to_text(IdPayload(IdType.DER_ASN1_DN, 0, 0, H("3005"))) == "DN:3005"


def test_non_esp_marker() -> None:
    assert strip_non_esp_marker(b"\x00\x00\x00\x00abc") == b"abc"
    assert strip_non_esp_marker(b"\xc1\x23\x45\x67abc") is None
    assert strip_non_esp_marker(b"\xff") is None


def test_decoded_transforms_and_sa_payloads_are_reused_by_their_bytes() -> None:
    from ikev1d.wire import payloads

    def transform(number: int, life: int) -> Transform:
        return Transform(number, 1, (Attribute(1, 7), Attribute(12, life)))

    a, b = transform(1, 3600), transform(2, 28800)
    sa_a = SaPayload((Proposal(1, ProtocolId.ISAKMP, b"", (a,)),))
    sa_b = SaPayload((Proposal(1, ProtocolId.ISAKMP, b"", (a, b)),))
    # Each body decodes to its own value, the second time too (from the cache).
    for _ in range(2):
        assert Transform.decode_body(a.encode_body()) == a
        assert Transform.decode_body(b.encode_body()) == b
        assert SaPayload.decode_body(sa_a.encode_body()) == sa_a
        assert SaPayload.decode_body(sa_b.encode_body()) == sa_b
    decoded = Transform.decode_body(b.encode_body())
    assert Transform.decode_body(b.encode_body()) is decoded
    # A transform's kept encoding is its own, not the last one's.
    assert decoded.encode_body() == b.encode_body() != a.encode_body()
    assert Transform.decode_body(a.encode_body()).encode_body() == a.encode_body()
    # Bounded: the bytes are the peer's.
    for n in range(3 * payloads._DECODED_CACHED):
        Transform.decode_body(transform(1, n).encode_body()).encode_body()
    assert len(payloads._TRANSFORMS) <= payloads._DECODED_CACHED
    assert len(payloads._TRANSFORM_ENCODINGS) <= payloads._DECODED_CACHED
    # An unusually large body (here an SA payload of 120 proposals) decodes but is
    # not kept: no entry may cost up to a datagram.
    big = SaPayload(tuple(Proposal(1, ProtocolId.ISAKMP, b"", (transform(1, n),))
                          for n in range(120)))
    body = big.encode_body()
    assert len(body) > payloads._CACHED_BODY_MAX
    assert SaPayload.decode_body(body) == big
    assert body not in payloads._SA_PAYLOADS
    # A malformed body is an error every time, never cached.
    for _ in range(2):
        with pytest.raises(WireError):
            Transform.decode_body(a.encode_body()[:-1])


def test_decoded_proposals_keep_their_own_spi() -> None:
    # Quick Mode proposals differ only in the SPI from one exchange to the next:
    # the rest is reused, the SPI never.
    transforms = (Transform(1, 12, (Attribute(4, 1), Attribute(5, 2))),)
    for spi in (b"\x01\x02\x03\x04", b"\xca\xfe\xba\xbe", b"\x01\x02\x03\x04", b""):
        proposal = Proposal(1, ProtocolId.ESP, spi, transforms)
        assert Proposal.decode_body(proposal.encode_body()) == proposal
        sa = SaPayload((proposal,))
        assert SaPayload.decode_body(sa.encode_body()) == sa
    with pytest.raises(WireError):
        Proposal.decode_body(Proposal(1, ProtocolId.ESP, b"\x01\x02\x03\x04",
                                      transforms).encode_body()[:-1])


def test_decoded_ids_are_reused_by_their_bytes_and_encode_as_their_own() -> None:
    from ikev1d.wire import payloads

    subnet = IdPayload(IdType.IPV4_ADDR_SUBNET, 17, 500, H("0a010000 ffffff00"))
    fqdn = IdPayload(IdType.FQDN, 0, 0, b"gw.example")
    for _ in range(2):
        for payload in (subnet, fqdn):
            decoded = IdPayload.decode_body(payload.encode_body())
            assert decoded == payload
            assert decoded.encode_body() == payload.encode_body()
    assert IdPayload.decode_body(subnet.encode_body()) is IdPayload.decode_body(
        subnet.encode_body())
    # Another ID's kept encoding is never given for this one.
    assert IdPayload.decode_body(fqdn.encode_body()).encode_body() != subnet.encode_body()
    # Bounded: the bytes are the peer's; malformed bodies fail every time.
    for n in range(3 * payloads._DECODED_CACHED):
        IdPayload.decode_body(IdPayload(IdType.FQDN, 0, 0, b"h%d" % n).encode_body()).encode_body()
    assert len(payloads._IDS) <= payloads._DECODED_CACHED
    assert len(payloads._ID_ENCODINGS) <= payloads._DECODED_CACHED
    for _ in range(2):
        with pytest.raises(WireError):
            IdPayload.decode_body(subnet.encode_body()[:-1])


def test_quick_mode_offers_are_decoded_alike_whatever_their_spi() -> None:
    """The decode kept by the bytes around a proposal's SPI must give what the
    whole decoder gives, with this offer's SPI, for each shape of offer."""
    from ikev1d.wire import payloads

    def transform(number: int, life: int) -> Transform:
        return Transform(number, 12, (Attribute(1, 1), Attribute(2, life), Attribute(4, 1),
                                      Attribute(5, 12), Attribute(6, 128)))

    offers: list[Callable[[bytes], SaPayload]] = [
        lambda spi: SaPayload((Proposal(1, ProtocolId.ESP, spi, (transform(1, 3600),)),)),
        lambda spi: SaPayload((Proposal(1, ProtocolId.ESP, spi,
                                        (transform(1, 3600), transform(2, 28800))),)),
        lambda spi: SaPayload((Proposal(1, ProtocolId.ESP, spi, (transform(1, 3600),)),
                               Proposal(2, ProtocolId.ESP, spi, (transform(1, 60),)))),
        lambda spi: SaPayload((Proposal(3, ProtocolId.AH, spi, (transform(1, 3600),)),),
                              situation=1),
        lambda spi: SaPayload((Proposal(1, ProtocolId.ISAKMP, spi, (transform(1, 3600),)),)),
    ]
    payloads._SA_PAYLOADS_BY_SHAPE.clear()
    for make in offers:
        for spi in (b"\x01\x02\x03\x04", b"\xff\xfe\xfd\xfc", bytes(4), b"\x07" * 8, b""):
            body = make(spi).encode_body()
            for _ in range(2):
                decoded = SaPayload.decode_body(body)
                assert decoded == SaPayload._decode_body(body) == make(spi)
                assert decoded.encode_body() == body
    assert payloads._SA_PAYLOADS_BY_SHAPE
    # A malformed offer of a known shape is an error every time, never kept.
    body = offers[0](b"\x01\x02\x03\x04").encode_body()
    for bad in (body[:-1], body[:10] + b"\x00\x05" + body[12:], body[:14] + b"\x09" + body[15:]):
        for _ in range(2):
            with pytest.raises(WireError):
                SaPayload.decode_body(bad)


def test_answers_encode_as_the_whole_encoder_does() -> None:
    """The shortcut for an SA payload of one proposal with one transform (every
    responder's answer) gives the bytes of the whole encoder."""
    transforms = [Transform(n, t, (Attribute(1, life), Attribute(4, 1), Attribute(6, 128)))
                  for n, t, life in ((1, 12, 3600), (2, 12, 28800), (1, 3, 60))]
    for _ in range(2):  # the second time from what the first one kept
        for transform in transforms:
            for spi in (b"", b"\x01\x02\x03\x04", b"\xfe" * 8):
                for number, protocol in ((1, ProtocolId.ISAKMP), (3, ProtocolId.ESP)):
                    proposal = Proposal(number, protocol, spi, (transform,))
                    assert proposal.encode_body() == proposal._encode_body()
                    sa = SaPayload((proposal,))
                    assert sa.encode_body() == sa._encode_body()
                    assert SaPayload.decode_body(sa.encode_body()) == sa
                    other = SaPayload((proposal,), doi=2, situation=4)
                    assert other.encode_body()[:8] == bytes.fromhex("0000000200000004")
    # Values out of range are refused as by the whole encoder.
    for bad in (Proposal(256, 3, b"", (transforms[0],)), Proposal(1, 3, bytes(256), (
            transforms[0],)), Proposal(1, -1, b"", (transforms[0],))):
        with pytest.raises(ValueError, match=r"proposal number|protocol id|SPI size"):
            bad.encode_body()


def test_notifications_decode_as_the_reader_decodes_them() -> None:
    """The one-unpack decode of a notification gives what the field-by-field one
    gives, and a short body fails alike."""
    import random

    rng = random.Random(11)
    bodies = [NotifyPayload(t, spi, data, proto).encode_body()
              for t in (24578, 16384, 14, 36136, 65535, 1)
              for spi in (b"", bytes(4), rng.randbytes(16))
              for data in (b"", b"\x01", rng.randbytes(40))
              for proto in (1, 3)]
    bodies += [rng.randbytes(n) for n in range(0, 40) for _ in range(5)]
    for body in bodies:
        try:
            expected: NotifyPayload | str = NotifyPayload._decode_body(body)
        except WireError as exc:
            expected = f"{type(exc).__name__}: {exc}"
        try:
            got: NotifyPayload | str = NotifyPayload.decode_body(body)
        except WireError as exc:
            got = f"{type(exc).__name__}: {exc}"
        assert got == expected
        if isinstance(got, NotifyPayload) and isinstance(expected, NotifyPayload):
            assert type(got.notify_type) is type(expected.notify_type)
