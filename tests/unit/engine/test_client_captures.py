"""Other IKEv1 implementations' Main Mode messages, as public captures show them,
answered by our responder.

Each vector is built here, field by field, by our own encoder from what tshark
shows in a public capture (named in its docstring: repository and path); no
captured bytes are copied. Our responder gets the message and must answer as
that implementation expects: with the proposal and transform it offered (its
numbers and attributes as sent, RFC 2408 section 4.2), with the Vendor IDs that
turn on the extensions it announced, and with NAT-D where it sent NAT-D.
tests/unit/wire/test_public_captures.py runs the captures themselves through
the decoder.

No public capture of a Transaction exchange (XAUTH, Mode Config) in the clear
was found: after Phase 1 it is always encrypted, so the captures show only its
header (tests/unit/engine/test_roadwarrior.py and the interop tests cover the
attributes strongSwan and Libreswan send).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest

from ikev1d.config import Config, parse_config
from ikev1d.crypto.dh import generate_keypair
from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaEstablished, Datagram, Endpoint
from ikev1d.engine.natd import natd_payload_data
from ikev1d.engine.vendor import Extension, recognise
from ikev1d.wire import (
    Attribute,
    AuthMethod,
    CrPayload,
    DhGroup,
    ExchangeType,
    Header,
    IkeAttr,
    IkeEncryption,
    IkeHash,
    IkeTransformId,
    KePayload,
    LifeType,
    Message,
    NatDPayload,
    NoncePayload,
    NotifyPayload,
    NotifyType,
    Payload,
    Proposal,
    ProtocolId,
    SaPayload,
    Transform,
    VendorIdPayload,
    decode_message,
    split_message,
)
from ikev1d.wire.vendor_ids import (
    VID_CISCO_UNITY,
    VID_DPD,
    VID_FRAGMENTATION,
    VID_IKEV1D,
    VID_NAT_T_DRAFTS,
    VID_NAT_T_RFC,
    VID_XAUTH,
)
from tests.unit.engine.auth.test_pubkey import Pki, ca, pair
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, default_net, establish

__all__ = ["ca"]  # the fixture, used by name


def replace_proposals(config: Config, proposals: str) -> Config:
    conn = config.connections["gw"]
    (proposal,) = parse_config(gateway_config(f'["{proposals}"]')).connections["gw"].proposals
    return dataclasses.replace(config, connections={
        "gw": dataclasses.replace(conn, proposals=(proposal,))})

# Vendor IDs these implementations send that ikev1d does not act on; their values
# are the published ones (MD5 of the draft names; Wireshark's vendor table).
VID_NAT_T_DRAFT_07 = bytes.fromhex("439b59f8ba676c4c7737ae22eab8f582")
"""MD5("draft-ietf-ipsec-nat-t-ike-07"): with it Cisco IOS sends NAT-D as payload
type 15, which RFC 3547 has since assigned to SA KEK; ikev1d answers an older draft
the client offered too (whose NAT-D is payload 130)."""
VID_FORTIGATE = bytes.fromhex("8299031757a36082c6a621de00000000")
"""FortiGate's Vendor ID (its build in the last octets, zero here)."""
VID_CISCO_FRAGMENTATION = VID_FRAGMENTATION + bytes.fromhex("c0000000")
"""IKE fragmentation with Cisco's flag octets."""
VID_PRIVATE = bytes(range(0xA0, 0xB0))
"""Stands for a VID of the vendor's own that ikev1d does not know (Cisco IOS sends
one that varies per session; these octets are made up)."""

CLIENT = ("192.0.2.10", 500)
GATEWAY = ("192.0.2.1", 500)
PSK = "a pre-shared key long enough for the tests"


def gateway_config(proposals: str, *, local: str = GATEWAY[0], pools: bool = False,
                   xauth: bool = False, fragmentation: str = "yes") -> str:
    """A gateway for any peer, PSK; with a Mode Config pool and an XAUTH round."""
    rw = """[connections.gw.remote_xauth]
auth = "xauth"
[secrets.alice]
type = "xauth"
ids = ["alice"]
secret = "alice's password"
""" if xauth else ""
    if pools:
        rw += """[pools.clients]
addrs = "10.3.0.0/24"
split_include = ["10.2.0.0/16"]
"""
    family_any = "::/0" if ":" in local else "0.0.0.0/0"
    return f"""
[daemon]
dataplane = "none"
[connections.gw]
local_addrs = ["{local}"]
remote_addrs = ["%any"]
proposals = {proposals}
fragmentation = "{fragmentation}"
{'pools = ["clients"]' if pools else ''}
[connections.gw.local]
id = "gw.example.org"
[connections.gw.remote]
id = "%any"
[connections.gw.children.net]
local_ts = ["{family_any}"]
esp_proposals = ["aes128-sha1"]
[secrets.group]
secret = "{PSK}"
ids = ["%any"]
{rw}"""


@dataclass
class Gateway:
    """Our responder, fed one message at a time."""

    engine: Engine
    local: Endpoint
    remote: Endpoint

    def answer(self, data: bytes) -> Message:
        self.engine.receive_datagram(data, self.local, self.remote, 1000.0)
        (reply,) = self.engine.datagrams_to_send()
        assert reply.remote == self.remote and reply.local == self.local
        return decode_message(reply.data)


def gateway(config: str, local: Endpoint = GATEWAY, remote: Endpoint = CLIENT) -> Gateway:
    engine = Engine(parse_config(config), random_bytes=random.Random(9).randbytes)
    return Gateway(engine, local, remote)


def main_mode(cky_i: bytes, cky_r: bytes, payloads: Sequence[Payload]) -> bytes:
    header = Header(initiator_cookie=cky_i, responder_cookie=cky_r, next_payload=0,
                    exchange_type=ExchangeType.IDENTITY_PROTECTION, flags=0, message_id=0)
    return Message(header, tuple(payloads)).encode()


def one_proposal(number: int, transforms: Sequence[Transform]) -> SaPayload:
    return SaPayload((Proposal(number, ProtocolId.ISAKMP, b"", tuple(transforms)),))


def vids(message: Message) -> list[bytes]:
    return [p.data for p in message.payloads if isinstance(p, VendorIdPayload)]


def kinds(message: Message) -> list[type]:
    return [type(p) for p in message.payloads]


# --------------------------------------------------------------------------- Cisco IOS

CISCO_COOKIE = bytes.fromhex("0102030405060708")


def cisco_ios_transform() -> Transform:
    """OISF/suricata-verify tests/ikev1-rules/ikev1-isakmp-main-mode.pcap, frame 1:
    transform #1 KEY_IKE, attributes in this order: AES-CBC, Key-Length 128, SHA,
    group 2, pre-shared key, life type seconds, Life-Duration 86400 as a TLV of 4
    octets."""
    return Transform(1, IkeTransformId.KEY_IKE, (
        Attribute(IkeAttr.ENCRYPTION_ALGORITHM, IkeEncryption.AES_CBC),
        Attribute(IkeAttr.KEY_LENGTH, 128),
        Attribute(IkeAttr.HASH_ALGORITHM, IkeHash.SHA),
        Attribute(IkeAttr.GROUP_DESCRIPTION, DhGroup.MODP_1024),
        Attribute(IkeAttr.AUTHENTICATION_METHOD, AuthMethod.PRE_SHARED_KEY),
        Attribute(IkeAttr.LIFE_TYPE, LifeType.SECONDS),
        Attribute(IkeAttr.LIFE_DURATION, (86400).to_bytes(4, "big")),
    ))


def cisco_ios_message_1() -> bytes:
    """OISF/suricata-verify tests/ikev1-rules/ikev1-isakmp-main-mode.pcap, frame 1
    (Cisco IOS initiating, Cisco MAC addresses on both ends): one proposal #1 with
    the transform above, then Vendor IDs RFC 3947, draft-ietf-ipsec-nat-t-ike-07,
    -03 and -02\\n, in this order; nothing else."""
    return main_mode(CISCO_COOKIE, bytes(8), [
        one_proposal(1, [cisco_ios_transform()]),
        VendorIdPayload(VID_NAT_T_RFC),
        VendorIdPayload(VID_NAT_T_DRAFT_07),
        VendorIdPayload(VID_NAT_T_DRAFTS[2]),  # -03
        VendorIdPayload(VID_NAT_T_DRAFTS[0]),  # -02\n
    ])


def cisco_ios_message_3(cky_r: bytes, hash_alg: str, vendor_ids: Sequence[bytes],
                        client: Endpoint = CLIENT, gw: Endpoint = GATEWAY) -> bytes:
    """The same capture, frame 3: KE (group 2, 128 octets), a 20-octet nonce, Vendor
    IDs DPD, one of Cisco's own and XAUTH (the ones it did not send in message 1),
    then two RFC 3947 NAT-D payloads (type 20): the responder's, then its own."""
    ke = generate_keypair(DhGroup.MODP_1024).public_bytes
    assert len(ke) == 128
    natd = natd_payload_data(hash_alg, CISCO_COOKIE, cky_r, client, gw)
    return main_mode(CISCO_COOKIE, cky_r, [
        KePayload(ke), NoncePayload(bytes(range(20))),
        *(VendorIdPayload(v) for v in vendor_ids),
        *(NatDPayload(h) for h in natd),
    ])


def test_cisco_ios_gets_its_proposal_and_rfc3947_back() -> None:
    gw = gateway(gateway_config('["aes256-sha256-modp2048", "aes128-sha1-modp1024"]'))
    reply = gw.answer(cisco_ios_message_1())
    assert reply.header.exchange_type == ExchangeType.IDENTITY_PROTECTION
    assert reply.header.initiator_cookie == CISCO_COOKIE
    assert reply.header.responder_cookie != bytes(8)
    sa = reply.payloads[0]
    assert isinstance(sa, SaPayload)
    # The transform it offered, as it offered it: number, attribute order, TLV life.
    assert sa == one_proposal(1, [cisco_ios_transform()])
    # One NAT-T flavour, the RFC's (what the Cisco responder in the capture answers);
    # nothing it did not announce (no DPD yet: Cisco announces it in message 3).
    assert vids(reply) == [VID_IKEV1D, VID_NAT_T_RFC]


def test_cisco_ios_message_3_vendor_ids_are_answered_in_message_4() -> None:
    """Cisco IOS announces DPD and XAUTH in message 3, and its responder in the
    capture answers Unity, DPD and XAUTH in message 4 (frame 4); DPD is used only
    when both sides sent the VID (RFC 3706 section 5.1)."""
    gw = gateway(gateway_config('["aes128-sha1-modp1024"]'))
    reply_2 = gw.answer(cisco_ios_message_1())
    cky_r = reply_2.header.responder_cookie
    reply_4 = gw.answer(cisco_ios_message_3(cky_r, "sha1",
                                            [VID_DPD, VID_PRIVATE, VID_XAUTH]))
    assert kinds(reply_4) == [KePayload, NoncePayload, VendorIdPayload, NatDPayload,
                              NatDPayload]
    # DPD answered; XAUTH not, as this gateway runs no XAUTH round.
    assert vids(reply_4) == [VID_DPD]
    ke = reply_4.payloads[0]
    assert isinstance(ke, KePayload) and len(ke.data) == 128
    # RFC 3947 NAT-D (type 20), SHA-1: the client's endpoint first, then ours (RFC
    # 3947 section 3.2), so that the client finds no NAT on this path.
    natd = [p for p in reply_4.payloads if isinstance(p, NatDPayload)]
    assert [p.draft for p in natd] == [False, False]
    assert [p.data for p in natd] == natd_payload_data("sha1", CISCO_COOKIE, cky_r,
                                                       GATEWAY, CLIENT)
    (sa,) = gw.engine._sas.values()
    assert sa.peer_vendors.extensions == {Extension.NAT_T_RFC, Extension.NAT_T_DRAFT,
                                          Extension.DPD, Extension.XAUTH}


@pytest.mark.parametrize("xauth", [False, True])
def test_a_road_warrior_gateway_answers_unity_and_xauth_too(xauth: bool) -> None:
    """The message 3 Vendor IDs of the Cisco IOS initiator in the-tcpdump-group/tcpdump
    tests/ISAKMP_sa_setup.pcap, frame 3: Cisco Unity, DPD, one of its own, XAUTH.
    A gateway with a pool answers Unity; with an XAUTH round also XAUTH, and then
    the offer names XAUTHInitPreShared (65001, draft-beaulieu-ike-xauth-02 section
    6.3), as an XAUTH client's does, in place of the capture's pre-shared key."""
    message_1 = cisco_ios_message_1()
    if xauth:
        transform = cisco_ios_transform()
        attributes = tuple(
            Attribute(a.type, AuthMethod.XAUTH_INIT_PSK)
            if a.type == IkeAttr.AUTHENTICATION_METHOD else a for a in transform.attributes)
        offer = one_proposal(1, [Transform(1, transform.transform_id, attributes)])
        message = decode_message(message_1)
        message_1 = main_mode(CISCO_COOKIE, bytes(8), [offer, *message.payloads[1:]])
    gw = gateway(gateway_config('["aes128-sha1-modp1024"]', pools=True, xauth=xauth))
    reply_2 = gw.answer(message_1)
    assert isinstance(reply_2.payloads[0], SaPayload)
    assert VID_XAUTH not in vids(reply_2) and VID_CISCO_UNITY not in vids(reply_2)
    reply_4 = gw.answer(cisco_ios_message_3(
        reply_2.header.responder_cookie, "sha1",
        [VID_CISCO_UNITY, VID_DPD, VID_PRIVATE, VID_XAUTH]))
    assert vids(reply_4) == ([VID_DPD, VID_XAUTH, VID_CISCO_UNITY] if xauth
                             else [VID_DPD, VID_CISCO_UNITY])


def test_cisco_ios_with_group_1_is_refused_with_no_proposal_chosen(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """the-tcpdump-group/tcpdump tests/ISAKMP_sa_setup.pcap, frame 1: Cisco IOS
    offering AES-CBC 128, SHA, group 1 (768-bit MODP), pre-shared key, 86400 s (TLV
    of 4 octets), and NAT-T drafts -07, -03, -02\\n only. Group 1 is refused (the
    seed forbids it): NO-PROPOSAL-CHOSEN with a log line showing the offer."""
    transform = Transform(1, IkeTransformId.KEY_IKE, (
        Attribute(IkeAttr.ENCRYPTION_ALGORITHM, IkeEncryption.AES_CBC),
        Attribute(IkeAttr.KEY_LENGTH, 128),
        Attribute(IkeAttr.HASH_ALGORITHM, IkeHash.SHA),
        Attribute(IkeAttr.GROUP_DESCRIPTION, DhGroup.MODP_768),
        Attribute(IkeAttr.AUTHENTICATION_METHOD, AuthMethod.PRE_SHARED_KEY),
        Attribute(IkeAttr.LIFE_TYPE, LifeType.SECONDS),
        Attribute(IkeAttr.LIFE_DURATION, (86400).to_bytes(4, "big")),
    ))
    message_1 = main_mode(CISCO_COOKIE, bytes(8), [
        one_proposal(1, [transform]),
        VendorIdPayload(VID_NAT_T_DRAFT_07),
        VendorIdPayload(VID_NAT_T_DRAFTS[2]),
        VendorIdPayload(VID_NAT_T_DRAFTS[0]),
    ])
    gw = gateway(gateway_config('["aes128-sha1-modp1024"]'))
    with caplog.at_level(logging.WARNING):
        reply = gw.answer(message_1)
    assert reply.header.exchange_type == ExchangeType.INFORMATIONAL
    (notify,) = reply.payloads
    assert isinstance(notify, NotifyPayload)
    assert notify.notify_type == NotifyType.NO_PROPOSAL_CHOSEN
    # Group 1 has no name here: the attributes are listed as numbers.
    assert "NO-PROPOSAL-CHOSEN: peer offered unsupported(1=7,2=2,3=1,4=1,14=128)" in caplog.text
    assert not gw.engine._sas


def test_nat_t_drafts_without_the_rfc_get_a_draft_the_client_offered() -> None:
    """The NAT-T VIDs of the Cisco IOS initiator in tcpdump's ISAKMP_sa_setup.pcap
    (drafts -07, -03, -02\\n), with an offer this gateway accepts: the answer is
    draft -02\\n, which it offered, and never -07 (see VID_NAT_T_DRAFT_07)."""
    assert recognise([VID_NAT_T_DRAFT_07, VID_NAT_T_DRAFTS[2], VID_NAT_T_DRAFTS[0]]
                     ).extensions == {Extension.NAT_T_DRAFT}
    message_1 = main_mode(CISCO_COOKIE, bytes(8), [
        one_proposal(1, [cisco_ios_transform()]),
        VendorIdPayload(VID_NAT_T_DRAFT_07),
        VendorIdPayload(VID_NAT_T_DRAFTS[2]),
        VendorIdPayload(VID_NAT_T_DRAFTS[0]),
    ])
    reply = gateway(gateway_config('["aes128-sha1-modp1024"]')).answer(message_1)
    answered = vids(reply)
    assert VID_NAT_T_DRAFTS[0] in answered
    assert VID_NAT_T_RFC not in answered and VID_NAT_T_DRAFT_07 not in answered


# --------------------------------------------------------------------------- FortiGate

FORTI_CLIENT = ("2001:db8::4", 500)
FORTI_GATEWAY = ("2001:db8::2", 500)
FORTI_COOKIE = bytes.fromhex("1112131415161718")


def fortigate_transform() -> Transform:
    """arkime/arkime tests/pcap/IKEv1.pcap, frame 2 (a FortiGate initiating over
    IPv6): transform #1 KEY_IKE with life type and duration first, the duration
    28800 as a TV attribute, then AES-CBC, Key-Length 256, pre-shared key,
    SHA2-512, group 20 (384-bit ECP)."""
    return Transform(1, IkeTransformId.KEY_IKE, (
        Attribute(IkeAttr.LIFE_TYPE, LifeType.SECONDS),
        Attribute(IkeAttr.LIFE_DURATION, 28800),
        Attribute(IkeAttr.ENCRYPTION_ALGORITHM, IkeEncryption.AES_CBC),
        Attribute(IkeAttr.KEY_LENGTH, 256),
        Attribute(IkeAttr.AUTHENTICATION_METHOD, AuthMethod.PRE_SHARED_KEY),
        Attribute(IkeAttr.HASH_ALGORITHM, IkeHash.SHA2_512),
        Attribute(IkeAttr.GROUP_DESCRIPTION, DhGroup.ECP_384),
    ))


def fortigate_message_1() -> bytes:
    """The same frame: the proposal above, then Vendor IDs DPD, FRAGMENTATION
    alone, FRAGMENTATION with Cisco's flags, FortiGate's; no NAT-T VID."""
    return main_mode(FORTI_COOKIE, bytes(8), [
        one_proposal(1, [fortigate_transform()]),
        VendorIdPayload(VID_DPD),
        VendorIdPayload(VID_FRAGMENTATION),
        VendorIdPayload(VID_CISCO_FRAGMENTATION),
        VendorIdPayload(VID_FORTIGATE),
    ])


def test_fortigate_over_ipv6_gets_its_proposal_dpd_and_fragmentation() -> None:
    gw = gateway(gateway_config('["aes256-sha512-ecp384"]', local=FORTI_GATEWAY[0]),
                 FORTI_GATEWAY, FORTI_CLIENT)
    reply_2 = gw.answer(fortigate_message_1())
    sa = reply_2.payloads[0]
    assert sa == one_proposal(1, [fortigate_transform()])
    # What its peer in the capture answered (frame 3): DPD and FRAGMENTATION; no
    # NAT-T, which it did not offer.
    assert vids(reply_2) == [VID_IKEV1D, VID_DPD, VID_FRAGMENTATION + bytes.fromhex("80000000")]
    # Frame 4: message 3 is KE (group 20: 96 octets) and nonce, nothing else, and so
    # is our message 4 (no NAT-D without NAT-T).
    ke = generate_keypair(DhGroup.ECP_384).public_bytes
    assert len(ke) == 96
    reply_4 = gw.answer(main_mode(FORTI_COOKIE, reply_2.header.responder_cookie,
                                  [KePayload(ke), NoncePayload(bytes(range(32)))]))
    assert kinds(reply_4) == [KePayload, NoncePayload]
    (ike_sa,) = gw.engine._sas.values()
    assert Extension.DPD in ike_sa.peer_vendors.extensions
    assert Extension.FRAGMENTATION in ike_sa.peer_vendors.extensions


def test_fortigate_without_fragmentation_configured_gets_no_fragmentation_vid() -> None:
    gw = gateway(gateway_config('["aes256-sha512-ecp384"]', local=FORTI_GATEWAY[0],
                                fragmentation="no"), FORTI_GATEWAY, FORTI_CLIENT)
    assert vids(gw.answer(fortigate_message_1())) == [VID_IKEV1D, VID_DPD]


# --------------------------------------------------------------------------- both roles


def _cisco_style_vendor_ids(dgram: Datagram) -> Datagram:
    """Main Mode as the Cisco IOS initiator of suricata-verify's capture sends it: no
    DPD VID in message 1, DPD in message 3 (which no hash covers, RFC 2409 section
    5, so it may be rewritten here)."""
    header, _body = split_message(dgram.data)
    if header.exchange_type != ExchangeType.IDENTITY_PROTECTION or header.encrypted:
        return dgram
    message = decode_message(dgram.data)
    payloads = list(message.payloads)
    if header.responder_cookie == bytes(8):
        payloads = [p for p in payloads if p != VendorIdPayload(VID_DPD)]
    elif any(isinstance(p, KePayload) for p in payloads) and not any(
            isinstance(p, VendorIdPayload) for p in payloads):
        payloads.append(VendorIdPayload(VID_DPD))  # message 3 (ours carries no VID)
    else:
        return dgram
    return replace(dgram, data=Message(message.header, tuple(payloads)).encode())


def test_dpd_announced_in_message_3_and_answered_in_message_4_is_used_by_both() -> None:
    """Two ikev1d, the initiator announcing DPD as Cisco IOS does: the responder
    answers it in message 4, and both then send R-U-THERE (RFC 3706 section 5)."""
    net = default_net()
    net.rewrite = lambda d: (_cisco_style_vendor_ids(d) if d.remote[0] == B_ADDR else d)
    establish(net)
    assert len(net.a.of(ChildSaEstablished)) == len(net.b.of(ChildSaEstablished)) == 1
    main_modes = [(src, decode_message(d.data)) for src, d in net.wire
                  if not split_message(d.data)[0].encrypted]
    (message_2,) = [m for src, m in main_modes if src == B_ADDR and
                    isinstance(m.payloads[0], SaPayload)]
    (message_4,) = [m for src, m in main_modes if src == B_ADDR and
                    isinstance(m.payloads[0], KePayload)]
    assert VID_DPD not in vids(message_2) and vids(message_4) == [VID_DPD]
    sent_before = len(net.wire)
    net.advance(31)  # dpd_delay 30s by default
    informational = [src for src, d in net.wire[sent_before:]
                     if split_message(d.data)[0].exchange_type == ExchangeType.INFORMATIONAL]
    # Each side's R-U-THERE and its R-U-THERE-ACK to the other's.
    assert sorted(informational) == [A_ADDR, A_ADDR, B_ADDR, B_ADDR]
    for peer in (net.a, net.b):
        (ike_sa,) = peer.engine._sas.values()
        assert Extension.DPD in ike_sa.peer_vendors.extensions


# --------------------------------------------------------------------------- Openswan

OPENSWAN_COOKIE = bytes.fromhex("2122232425262728")


def openswan_transform(number: int, hash_alg: int, group: int) -> Transform:
    """the-tcpdump-group/tcpdump tests/isakmp4500.pcap, frame 3 (Openswan's pluto
    initiating, with RSA signatures, towards a NAT): life type and a TV duration of
    3600 first, then 3DES-CBC, the hash, RSA signatures, the group."""
    return Transform(number, IkeTransformId.KEY_IKE, (
        Attribute(IkeAttr.LIFE_TYPE, LifeType.SECONDS),
        Attribute(IkeAttr.LIFE_DURATION, 3600),
        Attribute(IkeAttr.ENCRYPTION_ALGORITHM, IkeEncryption.TRIPLE_DES_CBC),
        Attribute(IkeAttr.HASH_ALGORITHM, hash_alg),
        Attribute(IkeAttr.AUTHENTICATION_METHOD, AuthMethod.RSA_SIG),
        Attribute(IkeAttr.GROUP_DESCRIPTION, group),
    ))


def test_openswan_numbering_from_zero_gets_its_second_transform_back(ca: Pki) -> None:
    """The same frame: proposal #0 with transforms #0 to #3 (3DES with MD5 or SHA-1,
    groups 5 then 2), then Vendor IDs Openswan's own, DPD, RFC 3947, drafts -03, -02
    and -00. The gateway accepts 3des-sha1-modp1536 (MD5 would need
    ``allow_insecure_algorithms``): transform #1, answered under proposal #0 as
    numbered; RFC 3947 and
    DPD answered as its responder in the capture did (frame 4). Frame 5: KE (group 5,
    192 octets), nonce and two NAT-D; our message 4 has them too, and a CR."""
    _a, b_cfg, _a_cert, _b_cert = pair(ca)
    gw_conf = replace_proposals(b_cfg, "3des-sha1-modp1536")
    engine = Engine(gw_conf, random_bytes=random.Random(5).randbytes)
    gw = Gateway(engine, (B_ADDR, 500), (A_ADDR, 500))
    offer = one_proposal(0, [openswan_transform(0, IkeHash.MD5, DhGroup.MODP_1536),
                             openswan_transform(1, IkeHash.SHA, DhGroup.MODP_1536),
                             openswan_transform(2, IkeHash.SHA, DhGroup.MODP_1024),
                             openswan_transform(3, IkeHash.MD5, DhGroup.MODP_1024)])
    reply_2 = gw.answer(main_mode(OPENSWAN_COOKIE, bytes(8), [
        offer, VendorIdPayload(VID_PRIVATE), VendorIdPayload(VID_DPD),
        VendorIdPayload(VID_NAT_T_RFC), VendorIdPayload(VID_NAT_T_DRAFTS[2]),
        VendorIdPayload(VID_NAT_T_DRAFTS[1]), VendorIdPayload(VID_NAT_T_DRAFTS[3])]))
    assert reply_2.payloads[0] == one_proposal(
        0, [openswan_transform(1, IkeHash.SHA, DhGroup.MODP_1536)])
    assert vids(reply_2) == [VID_IKEV1D, VID_NAT_T_RFC, VID_DPD]
    ke = generate_keypair(DhGroup.MODP_1536).public_bytes
    assert len(ke) == 192
    cky_r = reply_2.header.responder_cookie
    natd = natd_payload_data("sha1", OPENSWAN_COOKIE, cky_r, (A_ADDR, 500), (B_ADDR, 500))
    reply_4 = gw.answer(main_mode(OPENSWAN_COOKIE, cky_r, [
        KePayload(ke), NoncePayload(bytes(range(16))), *(NatDPayload(h) for h in natd)]))
    assert kinds(reply_4) == [KePayload, NoncePayload, CrPayload, NatDPayload, NatDPayload]
