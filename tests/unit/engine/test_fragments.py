"""IKE fragmentation (payload 132): cutting our large Main Mode messages,
reassembling the peer's within fixed bounds, and two engines in memory with
RSA certificate chains whose messages 5 and 6 need fragments.

tests/interop/test_fragmentation_strongswan.py checks the same against strongSwan.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from ikev1d.config import Fragmentation
from ikev1d.config.model import Config
from ikev1d.engine.api import Datagram, IkeSaEstablished
from ikev1d.engine.fragments import (
    FRAGMENT_SIZE,
    MAX_MESSAGE,
    MAX_PARTIAL_PER_SOURCE,
    MAX_PARTIAL_TOTAL,
    REASSEMBLY_TIMEOUT_S,
    Fragmenter,
    Reassembler,
    fragment,
    fragment_payload_room,
    message_room,
)
from ikev1d.engine.vendor import Extension, fragmentation_vendor_ids, recognise
from ikev1d.wire import (
    ExchangeType,
    FragmentPayload,
    Header,
    PayloadType,
    VendorIdPayload,
    decode_payloads,
    encode_header,
    encode_payloads,
    split_message,
)
from ikev1d.wire.vendor_ids import VID_FRAGMENTATION
from ikev1d_lab import pki
from tests.unit.engine.auth.test_pubkey import conf, load, net_of
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, Net

SRC = ("198.51.100.7", 500)
CKY_I, CKY_R = bytes(range(1, 9)), bytes(range(9, 17))
ROOM = 1000
#: UDP payload of a 1280-byte IPv4 datagram.
MAX_UDP_PAYLOAD = FRAGMENT_SIZE - 20 - 8


def message(size: int, *, cky_r: bytes = CKY_R, exchange: int = ExchangeType.IDENTITY_PROTECTION,
            seed: int = 1) -> bytes:
    """A complete (encrypted-looking) ISAKMP message of ``size`` bytes."""
    body = random.Random(seed).randbytes(size - 28)
    header = Header(initiator_cookie=CKY_I, responder_cookie=cky_r, next_payload=5,
                    exchange_type=exchange, flags=1, message_id=0)
    return encode_header(header, len(body)) + body


def feed(r: Reassembler, packets: list[bytes], now: float = 0.0,
         src: tuple[str, int] = SRC) -> list[bytes]:
    out = []
    for packet in packets:
        header, body = split_message(packet)
        whole = r.add(header, body, src, now)
        if whole is not None:
            out.append(whole)
    return out


@pytest.mark.parametrize(("local", "datagram"), [
    (("192.0.2.1", 500), 1280 - 20 - 8),
    (("192.0.2.1", 4500), 1280 - 20 - 8 - 4),  # RFC 3948 non-ESP marker
    (("2001:db8::1", 500), 1280 - 40 - 8),
    (("2001:db8::1", 4500), 1280 - 40 - 8 - 4),
])
def test_fragments_fill_a_1280_byte_ip_datagram(local: tuple[str, int], datagram: int) -> None:
    room = fragment_payload_room(local, 4500)
    assert message_room(local, 4500) == datagram
    packets = fragment(message(5000), 1, room)
    assert all(len(p) == datagram for p in packets[:-1])
    assert len(packets[-1]) <= datagram


def test_fragments_are_well_formed_and_reassemble() -> None:
    whole = message(3500)
    packets = fragment(whole, 7, ROOM)
    assert len(packets) == 4
    for number, packet in enumerate(packets, start=1):
        header, body = split_message(packet)
        assert (header.next_payload, header.message_id, header.flags) == (PayloadType.FRAGMENT,
                                                                            0, 0)
        assert header.cookies == CKY_I + CKY_R
        assert header.exchange_type == ExchangeType.IDENTITY_PROTECTION
        (payload,) = decode_payloads(header.next_payload, body)
        assert isinstance(payload, FragmentPayload)
        assert (payload.fragment_id, payload.number, payload.last) == (7, number, number == 4)
        assert len(packet) <= 28 + 8 + ROOM
        # decode(encode(x)) == x for the payload itself
        assert decode_payloads(PayloadType.FRAGMENT, encode_payloads([payload])) == (payload,)
    assert b"".join(p[36:] for p in packets) == whole
    assert feed(Reassembler(), packets) == [whole]


def test_out_of_order_and_duplicate_fragments() -> None:
    whole = message(5000)
    packets = fragment(whole, 1, ROOM)
    r = Reassembler()
    overlapping = fragment(message(5000, seed=2), 1, ROOM)[2]  # same ID and number
    shuffled = [packets[4], packets[2], packets[2], overlapping, packets[0], packets[4],
                packets[3]]
    assert feed(r, shuffled) == []
    assert len(r) == 1
    # The first copy of each number counts; a different one later changes nothing.
    assert feed(r, [packets[1]]) == [whole]
    assert len(r) == 0
    # A late duplicate starts over (bounded like any partial message), and a whole
    # retransmission completes again: the peer may not have had our answer.
    assert feed(r, [packets[1]]) == []
    assert feed(r, packets) == [whole]
    assert len(r) == 0


def test_a_missing_fragment_times_out() -> None:
    packets = fragment(message(3000), 1, ROOM)
    r = Reassembler()
    assert feed(r, packets[:-1], now=0.0) == []
    assert len(r) == 1
    # The last fragment after the timeout: the rest was forgotten, nothing completes.
    assert feed(r, packets[-1:], now=REASSEMBLY_TIMEOUT_S + 0.1) == []
    assert len(r) == 1 and r.held_bytes() == len(packets[-1]) - 36


def test_retransmission_fills_the_gap_of_the_first_try() -> None:
    whole = message(3000)
    packets = Fragmenter().packets(whole, ROOM)
    again = Fragmenter().packets(whole, ROOM)
    assert packets == again  # same ID: a retransmission repeats the same fragments
    r = Reassembler()
    assert feed(r, packets[:1] + packets[2:], now=0.0) == []
    assert feed(r, again, now=2.0) == [whole]


def test_fragmenter_keeps_ids_per_message() -> None:
    f = Fragmenter()
    one, two = message(3000, seed=1), message(3000, seed=2)
    id_of = [decode_payloads(PayloadType.FRAGMENT, f.packets(m, ROOM)[0][28:])[0]
             for m in (one, two, one)]
    ids = [p.fragment_id for p in id_of if isinstance(p, FragmentPayload)]
    assert ids == [1, 2, 1]


def test_a_new_fragment_id_supersedes_the_partial_message() -> None:
    first, second = message(3000, seed=1), message(3000, seed=2)
    r = Reassembler()
    assert feed(r, fragment(first, 1, ROOM)[:2]) == []
    assert feed(r, fragment(second, 2, ROOM)) == [second]
    assert len(r) == 0


@pytest.mark.parametrize("bad", ["zero", "beyond-last", "two-lasts", "encrypted", "quick-mode",
                                 "inner-mismatch", "empty"])
def test_inconsistent_fragments_are_dropped(bad: str) -> None:
    whole = message(3000)
    packets = fragment(whole, 1, ROOM)
    r = Reassembler()

    def forged(fid: int, number: int, last: bool, data: bytes, *, flags: int = 0,
               exchange: int = ExchangeType.IDENTITY_PROTECTION) -> bytes:
        body = encode_payloads([FragmentPayload(fid, number, last, data)])
        header = Header(initiator_cookie=CKY_I, responder_cookie=CKY_R,
                        next_payload=PayloadType.FRAGMENT, exchange_type=exchange,
                        flags=flags, message_id=0)
        return encode_header(header, len(body)) + body

    if bad == "zero":
        got = feed(r, [forged(1, 0, False, b"x"), *packets])
        assert got == [whole]  # the bad one is dropped, the rest completes
    elif bad == "beyond-last":
        got = feed(r, [*packets[:-1], forged(1, len(packets) + 1, False, b"x"),
                       packets[-1]])
        assert got == [] and len(r) == 0 and r.dropped == 1  # the whole partial is gone
    elif bad == "two-lasts":
        got = feed(r, [forged(1, 5, True, b"x"), *packets])
        assert got == [] and r.dropped >= 1
    elif bad == "encrypted":
        got = feed(r, [forged(1, 1, True, whole, flags=1)])
        assert got == [] and len(r) == 0
    elif bad == "quick-mode":
        got = feed(r, [forged(1, 1, True, whole, exchange=ExchangeType.QUICK_MODE)])
        assert got == [] and len(r) == 0
    elif bad == "inner-mismatch":
        other = message(900, cky_r=bytes(8))
        got = feed(r, [forged(1, 1, True, other)])
        assert got == [] and r.dropped == 1
    elif bad == "empty":
        got = feed(r, [forged(1, 1, True, b"")])
        assert got == [] and len(r) == 0


def test_oversized_message_is_refused() -> None:
    packets = fragment(message(MAX_MESSAGE + 500), 1, ROOM)
    r = Reassembler()
    assert feed(r, packets) == []
    assert len(r) <= 1 and r.held_bytes() <= MAX_MESSAGE


def test_a_fragment_flood_stays_bounded() -> None:
    r = Reassembler()
    # One source opening partial messages under ever new cookies.
    for n in range(200):
        packet = fragment(message(3000, cky_r=n.to_bytes(8, "big")), 1, ROOM)[0]
        feed(r, [packet])
    assert len(r) == MAX_PARTIAL_PER_SOURCE
    # Many sources: at most MAX_PARTIAL_TOTAL in all.
    for n in range(400):
        packet = fragment(message(3000, cky_r=n.to_bytes(8, "big")), 1, ROOM)[0]
        feed(r, [packet], src=(f"10.{n // 250}.{n % 250}.1", 500))
    assert len(r) == MAX_PARTIAL_TOTAL
    assert r.held_bytes() <= MAX_PARTIAL_TOTAL * MAX_MESSAGE
    # Everything held goes away with the timeout, and new messages are taken again.
    whole = message(3000)
    assert feed(r, fragment(whole, 9, ROOM), now=REASSEMBLY_TIMEOUT_S + 1) == [whole]
    assert len(r) == 0


def test_vendor_id_follows_the_setting() -> None:
    assert fragmentation_vendor_ids(True) == [VID_FRAGMENTATION + bytes.fromhex("80000000")]
    assert fragmentation_vendor_ids(False) == []
    told = recognise([VID_FRAGMENTATION + bytes.fromhex("c0000000")])
    assert Extension.FRAGMENTATION in told.extensions
    assert fragmentation_vendor_ids(True, told) != []
    assert fragmentation_vendor_ids(True, recognise([])) == []


# -- two engines with 4096-bit certificate chains -----------------------------------


@pytest.fixture(scope="module")
def chain_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """root -> intermediate -> gw-a / gw-b, RSA 2048 (4096 in the interop test, kept small
    here for speed): Main Mode messages 5 and 6
    each carry two large certificates and a 512-byte signature."""
    folder = tmp_path_factory.mktemp("frag")
    root = pki.issue("C=CH, O=Test, CN=Frag Root CA", ca=True, key="rsa")
    inter = pki.issue("C=CH, O=Test, CN=Frag Intermediate CA", root, ca=True, key="rsa")
    (folder / "ca.cert.pem").write_bytes(root.cert_pem())
    (folder / "inter.cert.pem").write_bytes(inter.cert_pem())
    files = {"ca": str(folder / "ca.cert.pem"), "inter": str(folder / "inter.cert.pem")}
    for name in ("a", "b"):
        cert, key = pki.issue(f"C=CH, O=Test, CN=gw-{name}", inter, key="rsa").write(
            folder, name)
        files[name], files[f"{name}_key"] = str(cert), str(key)
    return folder, files


def chain_configs(chain_pki: tuple[Path, dict[str, str]], a_mode: str,
                  b_mode: str) -> tuple[Config, Config]:
    folder, f = chain_pki
    out = []
    for me, peer, local, remote, lts, rts, mode in (
            ("a", "b", A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24", a_mode),
            ("b", "a", B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24", b_mode)):
        sub = folder / me.upper()
        sub.mkdir(exist_ok=True)
        cfg = load(conf(sub, local_id=None, remote_id=f"C=CH, O=Test, CN=gw-{peer}",
                        certs=[f[me], f["inter"]], key=f[f"{me}_key"], cacerts=[f["ca"]],
                        local=local, remote=remote, local_ts=lts, remote_ts=rts))
        conn = dataclasses.replace(cfg.connections["gw"], fragmentation=Fragmentation(mode))
        out.append(dataclasses.replace(cfg, connections={"gw": conn}))
    return out[0], out[1]


def is_fragment(d: Datagram) -> bool:
    return d.data[16] == PayloadType.FRAGMENT


def establish(a: Config, b: Config, drop_big: bool = False) -> Net:
    net = net_of(a, b)
    if drop_big:
        # A path that loses every datagram a 1300-byte IPv4 packet cannot hold.
        net.drop = lambda d: len(d.data) + 28 > 1300
    net.a.engine.initiate("gw", None, net.now)
    net.pump()
    for _ in range(4):
        if net.a.of(IkeSaEstablished) and net.b.of(IkeSaEstablished):
            break
        net.advance(3)
    return net


def senders_of_fragments(net: Net) -> set[str]:
    return {src for src, d in net.wire if is_fragment(d)}


@pytest.mark.parametrize(("a_mode", "b_mode", "lossy"), [
    ("yes", "yes", True), ("force", "force", True), ("force", "no", False),
    ("no", "force", False), ("accept", "force", False)])
def test_large_chains_establish_with_fragments(chain_pki: tuple[Path, dict[str, str]],
                                               a_mode: str, b_mode: str, lossy: bool) -> None:
    a, b = chain_configs(chain_pki, a_mode, b_mode)
    # Where one side sends whole messages, the path must carry them.
    net = establish(a, b, drop_big=lossy)
    assert net.a.of(IkeSaEstablished) and net.b.of(IkeSaEstablished)
    # "yes" fragments because the peer announced support; "force" regardless of
    # it; "no" sends whole messages but still takes the peer's fragments.
    expected = {addr for addr, mode in ((A_ADDR, a_mode), (B_ADDR, b_mode))
                if mode in ("yes", "force")}
    assert senders_of_fragments(net) == expected
    assert all(len(d.data) <= MAX_UDP_PAYLOAD for src, d in net.wire if src in expected)


@pytest.mark.parametrize(("a_mode", "b_mode"), [("no", "no"), ("accept", "accept"),
                                                ("yes", "no")])
def test_without_fragments_a_path_dropping_big_packets_fails(
        chain_pki: tuple[Path, dict[str, str]], a_mode: str, b_mode: str) -> None:
    a, b = chain_configs(chain_pki, a_mode, b_mode)
    net = establish(a, b, drop_big=True)
    assert not net.a.of(IkeSaEstablished)
    assert senders_of_fragments(net) == set()
    # The same pair without the lossy path establishes: it is the size that failed.
    net = establish(a, b)
    assert net.a.of(IkeSaEstablished) and net.b.of(IkeSaEstablished)


def test_lost_fragment_is_recovered_by_retransmission(
        chain_pki: tuple[Path, dict[str, str]]) -> None:
    a, b = chain_configs(chain_pki, "yes", "yes")
    lost: list[bytes] = []

    def drop_once(d: Datagram) -> bool:
        if is_fragment(d) and d.data[28 + 4 + 2] == 2 and not lost:  # fragment number 2
            lost.append(d.data)
            return True
        return False

    net = net_of(a, b)
    net.drop = drop_once
    net.a.engine.initiate("gw", None, net.now)
    net.pump()
    net.advance(3)
    assert lost and net.a.of(IkeSaEstablished) and net.b.of(IkeSaEstablished)
    # The retransmission resent every fragment, the lost one with the same bytes.
    assert sum(1 for _, d in net.wire if d.data == lost[0]) == 2


def test_fragments_for_an_unknown_sa_are_not_held(chain_pki: tuple[Path, dict[str, str]]
                                                  ) -> None:
    a, b = chain_configs(chain_pki, "yes", "yes")
    net = net_of(a, b)
    for packet in fragment(message(3000), 1, ROOM)[:2]:
        net.b.engine.receive_datagram(packet, (B_ADDR, 500), (A_ADDR, 500), net.now)
    assert len(net.b.engine.reassembler) == 0
    # Message 1 fragments (no responder cookie yet) are held: "force" sends those.
    for packet in fragment(message(3000, cky_r=bytes(8)), 1, ROOM)[:2]:
        net.b.engine.receive_datagram(packet, (B_ADDR, 500), (A_ADDR, 500), net.now)
    assert len(net.b.engine.reassembler) == 1


def test_vendor_ids_in_message_1(chain_pki: tuple[Path, dict[str, str]]) -> None:
    for mode, present in (("yes", True), ("accept", True), ("force", True), ("no", False)):
        a, b = chain_configs(chain_pki, mode, "yes")
        net = net_of(a, b)
        net.a.engine.initiate("gw", None, net.now)
        first = net.a.engine.datagrams_to_send()[0].data
        header, body = split_message(first)
        vids = [p.data for p in decode_payloads(header.next_payload, body)
                if isinstance(p, VendorIdPayload)]
        assert any(v.startswith(VID_FRAGMENTATION) for v in vids) is present, mode



def test_an_unauthenticated_fragment_flood_leaves_the_engine_bounded(
        chain_pki: tuple[Path, dict[str, str]]) -> None:
    a, b = chain_configs(chain_pki, "yes", "yes")
    net = net_of(a, b)
    reassembler = net.b.engine.reassembler
    # Message 1 fragments (no responder cookie, so no SA to check against) under
    # ever new cookies and IDs, from many addresses, never completed.
    for n in range(500):
        cky = n.to_bytes(8, "big")
        header = Header(initiator_cookie=cky, responder_cookie=bytes(8), next_payload=1,
                        exchange_type=ExchangeType.IDENTITY_PROTECTION, flags=0, message_id=0)
        whole = encode_header(header, 2972) + bytes(2972)
        packet = fragment(whole, n & 0xFFFF, ROOM)[n % 2]
        net.b.engine.receive_datagram(packet, (B_ADDR, 500), (f"10.9.{n // 200}.{n % 200}", 500),
                                      net.now)
    assert len(reassembler) == MAX_PARTIAL_TOTAL
    assert reassembler.held_bytes() <= MAX_PARTIAL_TOTAL * MAX_MESSAGE
    assert net.b.engine.half_open_count() == 0  # nothing reached Main Mode
    # Once the flood's partial messages time out, a real peer gets through.
    net.now += REASSEMBLY_TIMEOUT_S + 1
    net.a.engine.initiate("gw", None, net.now)
    net.pump()
    assert net.a.of(IkeSaEstablished) and net.b.of(IkeSaEstablished)


def test_fragment_size_sets_the_largest_datagram(chain_pki: tuple[Path, dict[str, str]]
                                                 ) -> None:
    """`[daemon] fragment_size` below the default: a path that drops IPv4 packets
    above 900 bytes still carries every fragment, and none exceeds the setting."""
    a, b = chain_configs(chain_pki, "force", "force")
    a, b = (dataclasses.replace(c, daemon=dataclasses.replace(c.daemon, fragment_size=900))
            for c in (a, b))
    net = net_of(a, b)
    net.drop = lambda d: len(d.data) + 28 > 900
    net.a.engine.initiate("gw", None, net.now)
    net.pump()
    for _ in range(4):
        if net.a.of(IkeSaEstablished) and net.b.of(IkeSaEstablished):
            break
        net.advance(3)
    assert net.a.of(IkeSaEstablished) and net.b.of(IkeSaEstablished)
    fragments = [d for _, d in net.wire if is_fragment(d)]
    assert fragments and max(len(d.data) + 28 for d in fragments) == 900
