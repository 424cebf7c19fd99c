"""Cross-check of the ISAKMP encoder against Wireshark's dissector (tshark).

Every sample message (tests/wire_helpers.py) is written into one pcap
(Ethernet/IPv4/UDP 500, or UDP 4500 with the RFC 3948 non-ESP marker), tshark
dissects it once per module (``-T pdml``, which keeps the payload tree and
repeated fields in order), and each packet's dissection is compared field by
field with the message we meant to encode: header, payload chain (type, next
payload, length), SA proposals / transforms / attributes, IDs, notifications,
deletes, Mode Config attributes, NAT-D / NAT-OA, fragments. Any malformed or
expert warning/error in tshark's output fails the test.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ikev1d.wire import (
    Attribute,
    AttributePayload,
    CertPayload,
    CrPayload,
    DeletePayload,
    FragmentPayload,
    HashPayload,
    IdPayload,
    IdType,
    KePayload,
    Message,
    NatDPayload,
    NatOaPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    SigPayload,
    UnknownPayload,
    VendorIdPayload,
    decode_message,
    id_to_text,
)
from tests.wire_helpers import Sample, sample_frames, sample_messages, udp_frame, write_pcap

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

EXPERT_WARNING = 6291456  # _ws.expert.severity: PI_WARN (0x00600000); PI_ERROR is 0x00800000


@dataclass(frozen=True)
class Dissected:
    sample: Sample
    packet: ET.Element
    isakmp: ET.Element


def _broken_control_frame() -> bytes:
    """A deliberately malformed message (first payload claims 0xffff bytes): proves the
    malformed-packet detection below can fail."""
    data = bytearray(sample_messages()[0].message.encode())
    data[30:32] = b"\xff\xff"
    return udp_frame(bytes(data), 500, 500)


@pytest.fixture(scope="module")
def pdml(tmp_path_factory: pytest.TempPathFactory) -> list[ET.Element]:
    samples = sample_messages()
    pcap: Path = tmp_path_factory.mktemp("wire_tshark") / "isakmp.pcap"
    write_pcap(str(pcap), [*sample_frames(samples), _broken_control_frame()])
    out = subprocess.run(
        ["tshark", "-n", "-r", str(pcap), "-T", "pdml", "-o", "udp.check_checksum:FALSE"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    packets = ET.fromstring(out).findall("packet")
    assert len(packets) == len(samples) + 1
    return packets


@pytest.fixture(scope="module")
def dissected(pdml: list[ET.Element]) -> list[Dissected]:
    samples = sample_messages()
    result = []
    for sample, packet in zip(samples, pdml[:-1], strict=True):
        isakmp = packet.find("proto[@name='isakmp']")
        assert isakmp is not None, f"{sample.name}: tshark did not dissect ISAKMP"
        result.append(Dissected(sample, packet, isakmp))
    return result


# --------------------------------------------------------------------------- PDML access


def _child(e: ET.Element, name: str) -> ET.Element:
    found = e.find(f"field[@name='{name}']")
    assert found is not None, f"tshark shows no {name} under {e.get('name')}"
    return found


def _children(e: ET.Element, name: str) -> list[ET.Element]:
    return e.findall(f"field[@name='{name}']")


def show(e: ET.Element, name: str) -> str:
    return _child(e, name).get("show", "")


def num(e: ET.Element, name: str) -> int:
    return int(show(e, name), 0)


def raw(e: ET.Element, name: str) -> bytes:
    return bytes.fromhex(_child(e, name).get("value", ""))


def _walk(e: ET.Element) -> Iterator[ET.Element]:
    yield e
    for c in e:
        yield from _walk(c)


# --------------------------------------------------------------------------- comparisons


def check_attributes(parent: ET.Element, kind: str, attrs: tuple[Attribute, ...]) -> None:
    seen = _children(parent, f"isakmp.{kind}.attr")
    assert len(seen) == len(attrs)
    for e, a in zip(seen, attrs, strict=True):
        assert num(e, f"isakmp.{kind}.attr.type") == a.type
        assert num(e, f"isakmp.{kind}.attr.format") == (1 if a.is_tv else 0)
        if isinstance(a.value, int):
            assert raw(e, f"isakmp.{kind}.attr.value") == a.value.to_bytes(2, "big")
        else:
            assert num(e, f"isakmp.{kind}.attr.length") == len(a.value)
            if a.value:
                assert raw(e, f"isakmp.{kind}.attr.value") == a.value


def check_sa(e: ET.Element, p: SaPayload) -> None:
    assert num(e, "isakmp.sa.doi") == p.doi
    assert int.from_bytes(raw(e, "isakmp.sa.situation"), "big") == p.situation
    props = _children(e, "isakmp.typepayload")
    assert len(props) == len(p.proposals)
    for i, (pe, prop) in enumerate(zip(props, p.proposals, strict=True)):
        assert int(pe.get("show", "")) == 2
        assert num(pe, "isakmp.nextpayload") == (0 if i == len(props) - 1 else 2)
        assert num(pe, "isakmp.payloadlength") == 4 + len(prop.encode_body())
        assert num(pe, "isakmp.prop.number") == prop.number
        assert num(pe, "isakmp.prop.protoid") == prop.protocol_id
        assert num(pe, "isakmp.spisize") == len(prop.spi)
        assert num(pe, "isakmp.prop.transforms") == len(prop.transforms)
        if prop.spi:
            assert raw(pe, "isakmp.spi") == prop.spi
        kind = "ike" if prop.protocol_id == 1 else "ipsec"
        transforms = _children(pe, "isakmp.typepayload")
        assert len(transforms) == len(prop.transforms)
        for j, (te, t) in enumerate(zip(transforms, prop.transforms, strict=True)):
            assert int(te.get("show", "")) == 3
            assert num(te, "isakmp.nextpayload") == (0 if j == len(transforms) - 1 else 3)
            assert num(te, "isakmp.payloadlength") == 4 + len(t.encode_body())
            assert num(te, "isakmp.trans.number") == t.number
            assert num(te, "isakmp.trans.id") == t.transform_id
            check_attributes(te, kind, t.attributes)


def check_id(e: ET.Element, p: IdPayload) -> None:
    assert num(e, "isakmp.id.type") == p.id_type
    assert num(e, "isakmp.id.protoid") == p.protocol
    assert num(e, "isakmp.id.port") == p.port
    data = _child(e, "isakmp.id.data")
    t = p.id_type
    text = id_to_text(p)
    if t in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        name = "ipv4_addr" if t == IdType.IPV4_ADDR else "ipv6_addr"
        assert show(data, f"isakmp.id.data.{name}") == text
    elif t in (IdType.IPV4_ADDR_SUBNET, IdType.IPV6_ADDR_SUBNET):
        v = "ipv4" if t == IdType.IPV4_ADDR_SUBNET else "ipv6"
        net = p.to_network()
        assert net is not None
        assert show(data, f"isakmp.id.data.{v}_addr") == str(net.network_address)
        assert show(data, f"isakmp.id.data.{v}_subnet") == str(net.netmask)
    elif t in (IdType.IPV4_ADDR_RANGE, IdType.IPV6_ADDR_RANGE):
        v = "ipv4" if t == IdType.IPV4_ADDR_RANGE else "ipv6"
        first, last = text.split("-")
        assert show(data, f"isakmp.id.data.{v}_range_start") == first
        assert show(data, f"isakmp.id.data.{v}_range_end") == last
    elif t == IdType.FQDN:
        assert show(data, "isakmp.id.data.fqdn") == text
    elif t == IdType.USER_FQDN:
        assert show(data, "isakmp.id.data.user_fqdn") == text
    elif t == IdType.KEY_ID:
        assert raw(data, "isakmp.id.data.key_id") == p.data
    else:  # pragma: no cover - samples only use the types above
        pytest.fail(f"no check for ID type {t}")


def check_payload(e: ET.Element, p: Payload) -> None:
    if isinstance(p, SaPayload):
        check_sa(e, p)
    elif isinstance(p, KePayload):
        assert raw(e, "isakmp.key_exchange.data") == p.data
    elif isinstance(p, NoncePayload):
        assert raw(e, "isakmp.nonce") == p.data
    elif isinstance(p, HashPayload):
        assert raw(e, "isakmp.hash") == p.data
    elif isinstance(p, SigPayload):
        assert raw(e, "isakmp.sig") == p.data
    elif isinstance(p, VendorIdPayload):
        assert raw(e, "isakmp.vid_bytes") == p.data
    elif isinstance(p, IdPayload):
        check_id(e, p)
    elif isinstance(p, NotifyPayload):
        assert num(e, "isakmp.notify.doi") == p.doi
        assert num(e, "isakmp.notify.protoid") == p.protocol_id
        assert num(e, "isakmp.spisize") == len(p.spi)
        assert num(e, "isakmp.notify.msgtype") == p.notify_type
        if p.spi:
            assert raw(e, "isakmp.spi") == p.spi
        assert raw(e, "isakmp.notify.data") == p.data
    elif isinstance(p, DeletePayload):
        assert num(e, "isakmp.delete.doi") == p.doi
        assert num(e, "isakmp.delete.protoid") == p.protocol_id
        assert num(e, "isakmp.spisize") == p.spi_size
        assert num(e, "isakmp.spinum") == len(p.spis)
        spis = [bytes.fromhex(s.get("value", "")) for s in _children(e, "isakmp.delete.spi")]
        assert spis == list(p.spis)
    elif isinstance(p, AttributePayload):
        assert num(e, "isakmp.cfg.type") == p.cfg_type
        assert num(e, "isakmp.cfg.identifier") == p.identifier
        check_attributes(e, "cfg", p.attributes)
    elif isinstance(p, NatDPayload):
        assert raw(e, "isakmp.ike.nat_hash") == p.data
    elif isinstance(p, NatOaPayload):
        assert num(e, "isakmp.id.type") == p.id_type
        family = "ipv4" if p.id_type == IdType.IPV4_ADDR else "ipv6"
        assert raw(e, f"isakmp.ike.nat_original_address_{family}") == p.data
    elif isinstance(p, FragmentPayload):
        assert num(e, "isakmp.frag.packetid") == p.fragment_id
        assert num(e, "isakmp.frag.seq") == p.number
        assert num(e, "isakmp.frag.last") == int(p.last)
    elif isinstance(p, CertPayload):
        assert num(e, "isakmp.cert.encoding") == p.encoding
        assert _child(e, "isakmp.cert.data") is not None
    elif isinstance(p, CrPayload):
        assert num(e, "isakmp.certreq.type") == p.encoding
    elif isinstance(p, UnknownPayload):
        assert raw(e, "isakmp.datapayload") == p.data
    else:  # pragma: no cover
        pytest.fail(f"no check for {type(p).__name__}")


def check_message(isakmp: ET.Element, m: Message) -> None:
    data = m.encode()
    decoded = decode_message(data)
    h = decoded.header
    assert raw(isakmp, "isakmp.ispi") == h.initiator_cookie
    assert raw(isakmp, "isakmp.rspi") == h.responder_cookie
    assert num(isakmp, "isakmp.nextpayload") == h.next_payload
    assert num(isakmp, "isakmp.version") == 0x10
    assert num(isakmp, "isakmp.exchangetype") == h.exchange_type
    assert num(isakmp, "isakmp.flags") == h.flags
    assert num(isakmp, "isakmp.messageid") == h.message_id
    assert num(isakmp, "isakmp.length") == len(data)
    seen = _children(isakmp, "isakmp.typepayload")
    assert [int(e.get("show", "")) for e in seen] == [int(p.payload_type) for p in m.payloads]
    for i, (e, p) in enumerate(zip(seen, m.payloads, strict=True)):
        nxt = int(m.payloads[i + 1].payload_type) if i + 1 < len(m.payloads) else 0
        assert num(e, "isakmp.nextpayload") == nxt
        assert num(e, "isakmp.payloadlength") == 4 + len(p.encode_body())
        check_payload(e, p)


# --------------------------------------------------------------------------- tests


def dissector_problems(packet: ET.Element) -> list[str]:
    problems = []
    for e in _walk(packet):
        name = e.get("name", "")
        if name.startswith("_ws.malformed"):
            problems.append(e.get("showname") or name)
        if name == "_ws.expert.severity" and int(e.get("show", "0")) >= EXPERT_WARNING:
            problems.append(f"expert severity {e.get('show')}")
    return problems


def test_no_malformed_or_expert_warnings(
    dissected: list[Dissected], pdml: list[ET.Element]
) -> None:
    for d in dissected:
        assert not dissector_problems(d.packet), d.sample.name
    # control: the deliberately broken last frame must be flagged
    assert dissector_problems(pdml[-1])


def test_checker_rejects_a_mismatching_model(dissected: list[Dissected]) -> None:
    """The field comparison is not vacuous: a model differing in one SPI fails it."""
    (d,) = [d for d in dissected if d.sample.name == "delete"]
    first = d.sample.message.payloads[0]
    assert isinstance(first, DeletePayload)
    wrong = replace(first, spis=(bytes.fromhex("c1234568"), *first.spis[1:]))
    with pytest.raises(AssertionError):
        check_message(
            d.isakmp, replace(d.sample.message, payloads=(wrong, *d.sample.message.payloads[1:]))
        )


@pytest.mark.parametrize("name", [s.name for s in sample_messages()])
def test_tshark_sees_what_we_encoded(dissected: list[Dissected], name: str) -> None:
    (d,) = [d for d in dissected if d.sample.name == name]
    check_message(d.isakmp, d.sample.message)


def test_nat_t_marker_recognised(dissected: list[Dissected]) -> None:
    for d in dissected:
        marker = d.packet.find("proto[@name='udpencap']/field[@name='udpencap.non_esp_marker']")
        assert (marker is not None) == d.sample.nat_t, d.sample.name


def test_fragments_reassemble_to_the_original_message(dissected: list[Dissected]) -> None:
    (last,) = [d for d in dissected if d.sample.name == "frag2"]
    frag = _children(last.isakmp, "isakmp.typepayload")[0]
    inner = frag.find("proto[@name='isakmp']")
    assert inner is not None, "tshark did not reassemble the IKEv1 fragments"
    (whole,) = [d for d in dissected if d.sample.name == "ids_v4"]
    check_message(inner, whole.sample.message)
