"""Decoder vectors produced by a real peer: strongSwan 5.9.8 (Debian charon) on this
machine, IKEv1 Main Mode initiated over loopback in a network namespace and captured
with dumpcap (UDP payloads as tshark printed them), 2026-11-27.

Connection: proposals aes256-sha256-modp2048, aes128-sha1-modp1024, 3des-md5-modp1024,
PSK, rekey_time 8h. The responder side accepted only aes128-sha1-modp1024.
MM1_B/MM2 are the second attempt; the two informational messages are strongSwan's
answers (NO-PROPOSAL-CHOSEN when no responder config existed; INVALID-PAYLOAD-TYPE
from the confused same-daemon exchange that followed).
"""

from __future__ import annotations

from ikev1d.wire import (
    AuthMethod,
    DhGroup,
    ExchangeType,
    IkeAttr,
    IkeEncryption,
    IkeHash,
    LifeType,
    NotifyPayload,
    NotifyType,
    PayloadType,
    ProtocolId,
    SaPayload,
    VendorIdPayload,
    decode_message,
    decode_payloads_with_spans,
    split_message,
)
from ikev1d.wire.describe import describe_message, vendor_id_name

STRONGSWAN_MM1 = bytes.fromhex(
    "8b35ad8605dd725500000000000000000110020000000000000000f80d00007c000000010000000100000070"
    "01010003030000240101000080010007800e0100800200048004000e80030001800b0001800c7bc003000024"
    "0201000080010007800e0080800200028004000280030001800b0001800c7bc0000000200301000080010005"
    "800200018004000280030001800b0001800c7bc00d00000c09002689dfd6b7120d000014afcad71368a1f1c9"
    "6b8696fc775701000d0000184048b7d56ebce88525e7de7f00d6c2d3800000000d0000144a131c8107035845"
    "5c5728f20e95452f0000001490cb80913ebb696e086381b5ec427b1f"
)

STRONGSWAN_NO_PROPOSAL_CHOSEN = bytes.fromhex(
    "8b35ad8605dd725591a6604a6c4111680b100500cd4e2146000000280000000c000000010100000e"
)

STRONGSWAN_MM1_B = bytes.fromhex(
    "80338c19b1837d6800000000000000000110020000000000000000f80d00007c000000010000000100000070"
    "01010003030000240101000080010007800e0100800200048004000e80030001800b0001800c7bc003000024"
    "0201000080010007800e0080800200028004000280030001800b0001800c7bc0000000200301000080010005"
    "800200018004000280030001800b0001800c7bc00d00000c09002689dfd6b7120d000014afcad71368a1f1c9"
    "6b8696fc775701000d0000184048b7d56ebce88525e7de7f00d6c2d3800000000d0000144a131c8107035845"
    "5c5728f20e95452f0000001490cb80913ebb696e086381b5ec427b1f"
)

STRONGSWAN_MM2 = bytes.fromhex(
    "80338c19b1837d685d9b95fd662cb9030110020000000000000000a00d00003800000001000000010000002c"
    "01010001000000240201000080010007800e0080800200028004000280030001800b0001800c7bc00d00000c"
    "09002689dfd6b7120d000014afcad71368a1f1c96b8696fc775701000d0000184048b7d56ebce88525e7de7f"
    "00d6c2d380000000000000144a131c81070358455c5728f20e95452f"
)

STRONGSWAN_INVALID_PAYLOAD_TYPE = bytes.fromhex(
    "80338c19b1837d685d9b95fd662cb9030b100500ea489c85000000380000001c000000010110000180338c19"
    "b1837d685d9b95fd662cb903"
)

ALL = [
    STRONGSWAN_MM1,
    STRONGSWAN_NO_PROPOSAL_CHOSEN,
    STRONGSWAN_MM1_B,
    STRONGSWAN_MM2,
    STRONGSWAN_INVALID_PAYLOAD_TYPE,
]


def test_real_messages_reencode_byte_exact() -> None:
    for data in ALL:
        assert decode_message(data).encode() == data


def _attrs(sa: SaPayload, t: int) -> dict[int, int]:
    return {a.type: a.int_value() for a in sa.proposals[0].transforms[t].attributes}


def test_main_mode_1_from_strongswan() -> None:
    m = decode_message(STRONGSWAN_MM1)
    assert m.header.exchange_type == ExchangeType.IDENTITY_PROTECTION
    assert m.header.initiator_cookie.hex() == "8b35ad8605dd7255"
    assert m.header.responder_cookie == bytes(8)
    assert m.header.message_id == 0
    sa = m.payloads[0]
    assert isinstance(sa, SaPayload)
    (prop,) = sa.proposals
    assert prop.protocol_id == ProtocolId.ISAKMP and prop.spi == b""
    assert [t.number for t in prop.transforms] == [1, 2, 3]
    assert _attrs(sa, 0) == {
        IkeAttr.ENCRYPTION_ALGORITHM: IkeEncryption.AES_CBC,
        IkeAttr.KEY_LENGTH: 256,
        IkeAttr.HASH_ALGORITHM: IkeHash.SHA2_256,
        IkeAttr.GROUP_DESCRIPTION: DhGroup.MODP_2048,
        IkeAttr.AUTHENTICATION_METHOD: AuthMethod.PRE_SHARED_KEY,
        IkeAttr.LIFE_TYPE: LifeType.SECONDS,
        IkeAttr.LIFE_DURATION: 31680,  # 8h rekey + strongSwan's 10% over time
    }
    assert _attrs(sa, 2)[IkeAttr.ENCRYPTION_ALGORITHM] == IkeEncryption.TRIPLE_DES_CBC
    vids = [p for p in m.payloads if isinstance(p, VendorIdPayload)]
    assert [vendor_id_name(v.data) for v in vids] == [
        "XAUTH",
        "DPD (RFC 3706)",
        "IKE fragmentation",
        "RFC 3947 NAT-T",
        "draft-ietf-ipsec-nat-t-ike-02\\n",
    ]
    lines = describe_message(STRONGSWAN_MM1)
    assert "    transform #1: AES_CBC-256 SHA2_256 MODP_2048 PSK life 31680s" in lines


def test_main_mode_2_from_strongswan() -> None:
    m = decode_message(STRONGSWAN_MM2)
    assert m.header.initiator_cookie == decode_message(STRONGSWAN_MM1_B).header.initiator_cookie
    assert m.header.responder_cookie.hex() == "5d9b95fd662cb903"
    sa = m.payloads[0]
    assert isinstance(sa, SaPayload)
    # the responder returns the one transform it chose, keeping its number (#2)
    (t,) = sa.proposals[0].transforms
    assert t.number == 2
    assert _attrs(sa, 0)[IkeAttr.HASH_ALGORITHM] == IkeHash.SHA
    assert _attrs(sa, 0)[IkeAttr.KEY_LENGTH] == 128
    # SAr_b as received equals our re-encoding of the decoded SA
    header, body = split_message(STRONGSWAN_MM2)
    spans = decode_payloads_with_spans(header.next_payload, body)
    assert spans[0].payload_type == PayloadType.SA
    assert spans[0].body(body) == sa.encode_body()


def test_informational_from_strongswan() -> None:
    m = decode_message(STRONGSWAN_NO_PROPOSAL_CHOSEN)
    assert m.header.exchange_type == ExchangeType.INFORMATIONAL
    (n,) = m.payloads
    assert isinstance(n, NotifyPayload)
    assert n.notify_type == NotifyType.NO_PROPOSAL_CHOSEN and n.spi == b""
    (n,) = decode_message(STRONGSWAN_INVALID_PAYLOAD_TYPE).payloads
    assert isinstance(n, NotifyPayload)
    assert n.notify_type == NotifyType.INVALID_PAYLOAD_TYPE
    assert n.spi == STRONGSWAN_MM2[:16]  # ISAKMP SPI = CKY-I | CKY-R
