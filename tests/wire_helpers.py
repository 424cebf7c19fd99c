"""Shared test helpers for the ISAKMP codec: hypothesis strategies, sample
messages that look like real exchanges, and a tiny pcap writer for tshark."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from ikev1d.wire import (
    Attribute,
    AttributePayload,
    AuthMethod,
    CertEncoding,
    CertPayload,
    CrPayload,
    DeletePayload,
    DhGroup,
    EncapsulationMode,
    EspTransformId,
    ExchangeType,
    Flags,
    FragmentPayload,
    HashPayload,
    Header,
    IdPayload,
    IdType,
    IkeAttr,
    IkeEncryption,
    IkeHash,
    IkeTransformId,
    IpsecAttr,
    IpsecAuthAlg,
    KePayload,
    LifeType,
    Message,
    ModeCfgAttr,
    ModeCfgType,
    NatDPayload,
    NatOaPayload,
    NoncePayload,
    NotifyPayload,
    NotifyType,
    Payload,
    Proposal,
    ProtocolId,
    SaPayload,
    SigPayload,
    Transform,
    UnknownPayload,
    VendorIdPayload,
    id_from_address,
    id_from_fqdn,
    id_from_network,
    id_from_range,
    id_from_user_fqdn,
    make_attribute,
)
from ikev1d.wire.payloads import ID_DATA_LENGTHS

# --------------------------------------------------------------------------- strategies

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def small_bytes(max_size: int = 40) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


attributes = st.one_of(
    st.builds(Attribute, st.integers(0, 0x7FFF), u16),
    st.builds(Attribute, st.integers(0, 0x7FFF), small_bytes(12)),
)
attribute_tuples = st.lists(attributes, max_size=5).map(tuple)
transforms = st.builds(Transform, u8, u8, attribute_tuples)
proposals = st.builds(
    Proposal, u8, u8, small_bytes(16), st.lists(transforms, max_size=4).map(tuple)
)
sa_payloads = st.builds(SaPayload, st.lists(proposals, max_size=3).map(tuple), u32, u32)


@st.composite
def id_payloads(draw: st.DrawFn) -> IdPayload:
    id_type = draw(st.one_of(st.sampled_from(list(IdType)), u8))
    want = ID_DATA_LENGTHS.get(id_type)
    data = draw(st.binary(min_size=want, max_size=want) if want is not None else small_bytes())
    return IdPayload(id_type, draw(u8), draw(u16), data)


@st.composite
def nat_oa_payloads(draw: st.DrawFn) -> NatOaPayload:
    id_type = draw(st.one_of(st.sampled_from([IdType.IPV4_ADDR, IdType.IPV6_ADDR]), u8))
    want = ID_DATA_LENGTHS.get(id_type)
    data = draw(st.binary(min_size=want, max_size=want) if want is not None else small_bytes())
    return NatOaPayload(id_type, data, draw(st.booleans()))


@st.composite
def delete_payloads(draw: st.DrawFn) -> DeletePayload:
    size = draw(st.integers(1, 16))
    spis = draw(st.lists(st.binary(min_size=size, max_size=size), max_size=5))
    return DeletePayload(draw(u8), tuple(spis), draw(u32))


_MODELLED = {0, 2, 3, 1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 20, 21, 130, 131, 132}
unknown_payloads = st.builds(UnknownPayload, u8.filter(lambda t: t not in _MODELLED), small_bytes())

payloads: st.SearchStrategy[Payload] = st.one_of(
    sa_payloads,
    st.builds(KePayload, small_bytes(64)),
    id_payloads(),
    st.builds(CertPayload, u8, small_bytes()),
    st.builds(CrPayload, u8, small_bytes()),
    st.builds(HashPayload, small_bytes()),
    st.builds(SigPayload, small_bytes()),
    st.builds(NoncePayload, small_bytes()),
    st.builds(NotifyPayload, u16, small_bytes(16), small_bytes(), u8, u32),
    delete_payloads(),
    st.builds(VendorIdPayload, small_bytes()),
    st.builds(AttributePayload, u8, u16, attribute_tuples),
    st.builds(NatDPayload, small_bytes(), st.booleans()),
    nat_oa_payloads(),
    st.builds(FragmentPayload, u16, u8, st.booleans(), small_bytes()),
    unknown_payloads,
)

payload_tuples = st.lists(payloads, max_size=6).map(tuple)

headers = st.builds(
    Header,
    initiator_cookie=st.binary(min_size=8, max_size=8),
    responder_cookie=st.binary(min_size=8, max_size=8),
    next_payload=st.just(0),
    exchange_type=u8,
    flags=u8.map(lambda f: f & ~int(Flags.ENCRYPTION)),
    message_id=u32,
    minor_version=st.integers(0, 15),
)

messages = st.builds(Message, headers, payload_tuples)


# --------------------------------------------------------------------------- samples


ICOOKIE = bytes.fromhex("0123456789abcdef")
RCOOKIE = bytes.fromhex("fedcba9876543210")


def ike_transform(
    number: int,
    enc: int,
    key_len: int | None,
    hash_alg: int,
    group: int,
    auth: int = AuthMethod.PRE_SHARED_KEY,
    life: int = 28800,
) -> Transform:
    attrs = [Attribute(IkeAttr.ENCRYPTION_ALGORITHM, enc)]
    if key_len is not None:
        attrs.append(Attribute(IkeAttr.KEY_LENGTH, key_len))
    attrs += [
        Attribute(IkeAttr.HASH_ALGORITHM, hash_alg),
        Attribute(IkeAttr.AUTHENTICATION_METHOD, auth),
        Attribute(IkeAttr.GROUP_DESCRIPTION, group),
        Attribute(IkeAttr.LIFE_TYPE, LifeType.SECONDS),
        make_attribute(IkeAttr.LIFE_DURATION, life),
    ]
    return Transform(number, IkeTransformId.KEY_IKE, tuple(attrs))


def main_mode_sa() -> SaPayload:
    return SaPayload(
        (
            Proposal(
                1,
                ProtocolId.ISAKMP,
                b"",
                (
                    ike_transform(
                        1,
                        IkeEncryption.AES_CBC,
                        256,
                        IkeHash.SHA2_256,
                        DhGroup.MODP_2048,
                        life=86400,
                    ),
                    ike_transform(2, IkeEncryption.AES_CBC, 128, IkeHash.SHA, DhGroup.MODP_2048),
                    ike_transform(
                        3,
                        IkeEncryption.TRIPLE_DES_CBC,
                        None,
                        IkeHash.MD5,
                        DhGroup.MODP_1024,
                        auth=AuthMethod.RSA_SIG,
                    ),
                ),
            ),
        )
    )


def quick_mode_sa(spi: bytes = bytes.fromhex("c1234567")) -> SaPayload:
    def esp(number: int, tid: int, key_len: int, auth: int | None) -> Transform:
        attrs = [
            Attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.SECONDS),
            make_attribute(IpsecAttr.SA_LIFE_DURATION, 3600),
            Attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.KILOBYTES),
            make_attribute(IpsecAttr.SA_LIFE_DURATION, 4_608_000),
            Attribute(IpsecAttr.GROUP_DESCRIPTION, DhGroup.MODP_2048),
            Attribute(IpsecAttr.ENCAPSULATION_MODE, EncapsulationMode.UDP_TUNNEL),
            Attribute(IpsecAttr.KEY_LENGTH, key_len),
        ]
        if auth is not None:
            attrs.append(Attribute(IpsecAttr.AUTH_ALGORITHM, auth))
        return Transform(number, tid, tuple(attrs))

    return SaPayload(
        (
            Proposal(
                1,
                ProtocolId.ESP,
                spi,
                (
                    esp(1, EspTransformId.AES_GCM_16, 128, None),
                    esp(2, EspTransformId.AES_CBC, 256, IpsecAuthAlg.HMAC_SHA2_256),
                ),
            ),
            Proposal(
                2,
                ProtocolId.ESP,
                spi,
                (esp(1, EspTransformId.AES_CBC, 128, IpsecAuthAlg.HMAC_SHA),),
            ),
        )
    )


@dataclass(frozen=True)
class Sample:
    name: str
    message: Message
    nat_t: bool = False  # send on UDP 4500 with the non-ESP marker


def _hdr(exchange: int, message_id: int = 0, rcookie: bytes = RCOOKIE) -> Header:
    return Header(ICOOKIE, rcookie, 0, exchange, 0, message_id)


@functools.cache
def test_certificate_der() -> bytes:
    """A small self-signed ECDSA certificate, so dissectors see a well-formed CERT."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    key = ec.derive_private_key(1234567, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gw.example.org")])
    when = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(when)
        .not_valid_after(when + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


def fragment_samples() -> list[Sample]:
    """Message "ids_v4" cut into two type-132 fragments, as an IKEv1 fragmenting
    peer sends it; a dissector that reassembles sees the whole message again."""
    whole = next(s for s in sample_messages(with_fragments=False) if s.name == "ids_v4")
    data = whole.message.encode()
    half = len(data) // 2
    hdr = _hdr(ExchangeType.IDENTITY_PROTECTION)
    return [
        Sample("frag1", Message(hdr, (FragmentPayload(7, 1, False, data[:half]),))),
        Sample("frag2", Message(hdr, (FragmentPayload(7, 2, True, data[half:]),))),
    ]


def sample_messages(with_fragments: bool = True) -> list[Sample]:
    """Plaintext messages shaped like the ones the engine sends (all payloads in the
    clear, so an external dissector can check every field)."""
    mm = ExchangeType.IDENTITY_PROTECTION
    qm = ExchangeType.QUICK_MODE
    info = ExchangeType.INFORMATIONAL
    samples = [
        Sample(
            "mm1",
            Message(
                _hdr(mm, rcookie=bytes(8)),
                (
                    main_mode_sa(),
                    VendorIdPayload(bytes.fromhex("4a131c81070358455c5728f20e95452f")),  # RFC 3947
                    VendorIdPayload(bytes.fromhex("afcad71368a1f1c96b8696fc77570100")),  # DPD
                    VendorIdPayload(bytes.fromhex("4048b7d56ebce88525e7de7f00d6c2d3")),  # frag
                ),
            ),
        ),
        Sample(
            "mm3",
            Message(
                _hdr(mm),
                (
                    KePayload(bytes(range(256))),
                    NoncePayload(bytes(range(100, 132))),
                    NatDPayload(bytes(range(20))),
                    NatDPayload(bytes(range(20, 40))),
                ),
            ),
        ),
        Sample(
            "ids_v4",
            Message(
                _hdr(mm),
                (
                    id_from_address("192.0.2.1", 17, 500),
                    id_from_network("10.1.0.0/24"),
                    id_from_range("10.0.0.1", "10.0.0.9", 6, 80),
                    id_from_fqdn("gw.example.org"),
                    id_from_user_fqdn("me@example.org"),
                ),
            ),
        ),
        Sample(
            "ids_v6",
            Message(
                _hdr(mm),
                (
                    id_from_address("2001:db8::1"),
                    id_from_network("2001:db8:1::/48"),
                    IdPayload(IdType.KEY_ID, 0, 0, b"\x01\x02keyid"),
                ),
            ),
            nat_t=True,
        ),
        Sample(
            "notify",
            Message(
                _hdr(info, 0x11223344),
                (
                    NotifyPayload(
                        NotifyType.R_U_THERE, ICOOKIE + RCOOKIE, (1234).to_bytes(4, "big")
                    ),
                    NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN, b"", b"", 1, 1),
                ),
            ),
        ),
        Sample(
            "delete",
            Message(
                _hdr(info, 0x55667788),
                (
                    DeletePayload(
                        ProtocolId.ESP,
                        (
                            bytes.fromhex("c1234567"),
                            bytes.fromhex("c7654321"),
                            bytes.fromhex("deadbeef"),
                        ),
                    ),
                    DeletePayload(ProtocolId.ISAKMP, (ICOOKIE + RCOOKIE,)),
                ),
            ),
            nat_t=True,
        ),
        Sample(
            "modecfg",
            Message(
                _hdr(ExchangeType.TRANSACTION, 0x0A0B0C0D),
                (
                    AttributePayload(
                        ModeCfgType.ISAKMP_CFG_REPLY,
                        0x1234,
                        (
                            Attribute(
                                ModeCfgAttr.INTERNAL_IP4_ADDRESS,
                                ipaddress.IPv4Address("10.3.0.7").packed,
                            ),
                            Attribute(
                                ModeCfgAttr.INTERNAL_IP4_DNS,
                                ipaddress.IPv4Address("10.3.0.1").packed,
                            ),
                            Attribute(
                                ModeCfgAttr.INTERNAL_IP4_SUBNET, bytes.fromhex("0a020000ffff0000")
                            ),
                            Attribute(ModeCfgAttr.XAUTH_TYPE, 0),
                        ),
                    ),
                ),
            ),
        ),
        Sample(
            "qm1",
            Message(
                _hdr(qm, 0xA1B2C3D4),
                (
                    HashPayload(bytes(range(32))),
                    quick_mode_sa(),
                    NoncePayload(bytes(range(32))),
                    KePayload(bytes(range(256))[::-1]),
                    id_from_network("10.1.0.0/24"),
                    id_from_network("10.2.0.0/16"),
                    NatOaPayload(IdType.IPV4_ADDR, bytes([192, 0, 2, 77])),
                ),
            ),
            nat_t=True,
        ),
        Sample(
            "natd_draft",
            Message(
                _hdr(mm),
                (
                    KePayload(bytes(128)),
                    NoncePayload(bytes(16)),
                    NatDPayload(bytes(range(16)), draft=True),
                    NatDPayload(bytes(range(16, 32)), draft=True),
                    NatOaPayload(
                        IdType.IPV6_ADDR, ipaddress.IPv6Address("2001:db8::77").packed, draft=True
                    ),
                ),
            ),
        ),
        Sample(
            "certs",
            Message(
                _hdr(mm),
                (
                    CertPayload(CertEncoding.X509_SIG, test_certificate_der()),
                    CrPayload(CertEncoding.X509_SIG, b""),
                    SigPayload(bytes(range(64))),
                    UnknownPayload(200, b"unknown"),
                ),
            ),
        ),
    ]
    if with_fragments:
        samples += fragment_samples()
    return samples


# --------------------------------------------------------------------------- pcap


def _ip_checksum(header: bytes) -> int:
    s: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(
    payload: bytes, sport: int, dport: int, src: str = "192.0.2.1", dst: str = "192.0.2.2"
) -> bytes:
    """Ethernet + IPv4 + UDP (checksum 0: "not computed", RFC 768) around ``payload``."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0x4000,
        64,
        17,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    eth = bytes.fromhex("0200000000020200000000010800")
    return eth + ip + udp


def write_pcap(path: str, frames: Iterable[bytes]) -> None:
    """Classic libpcap format, LINKTYPE_ETHERNET."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)))
            f.write(frame)


def isakmp_frame(sample: Sample) -> bytes:
    data = sample.message.encode()
    if sample.nat_t:
        return udp_frame(b"\x00\x00\x00\x00" + data, 4500, 4500)
    return udp_frame(data, 500, 500)


def sample_frames(samples: Sequence[Sample]) -> list[bytes]:
    return [isakmp_frame(s) for s in samples]
