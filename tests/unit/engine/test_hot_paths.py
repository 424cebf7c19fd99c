"""The responder's shortcuts for what repeats between handshakes must decide and
answer exactly as the whole path does: each case runs once through the whole
path (caches emptied) and once through the shortcut, and compares the bytes
sent and the state kept."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import pytest

from ikev1d.config import Config, parse_config
from ikev1d.engine import Engine, ike_sa
from ikev1d.engine.exchanges import main_mode
from ikev1d.engine.ike_sa import IkeSa, Parsed, ResponseCache
from ikev1d.proposals import EspProposal
from ikev1d.wire import (
    Attribute,
    Header,
    IkeAttr,
    Payload,
    VendorIdPayload,
)
from ikev1d.wire.vendor_ids import (
    VID_CISCO_UNITY,
    VID_DPD,
    VID_FRAGMENTATION,
    VID_NAT_T_DRAFTS,
    VID_NAT_T_RFC,
    VID_STRONGSWAN,
    VID_XAUTH,
)
from tests.unit.engine._mm import ike_transform, message_1
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, config_text

INITIATOR = (A_ADDR, 500)
RESPONDER = (B_ADDR, 500)
FLAGS = bytes.fromhex("80000000")


def _vids(*data: bytes) -> list[Payload]:
    return [VendorIdPayload(d) for d in data]


# (name, transforms, further payloads): the offers the responder config accepts
# in several shapes, with the vendor IDs peers send.
OFFERS: list[tuple[str, Callable[[], list[Any]], list[Payload]]] = [
    ("plain", lambda: [ike_transform()], []),
    ("strongswan", lambda: [ike_transform()],
     _vids(VID_STRONGSWAN, VID_XAUTH, VID_DPD, VID_NAT_T_RFC, VID_FRAGMENTATION + FLAGS)),
    ("draft-nat-t", lambda: [ike_transform()], _vids(VID_NAT_T_DRAFTS[0], VID_CISCO_UNITY)),
    ("unknown-vid", lambda: [ike_transform()], _vids(VID_DPD, b"\x01\x02\x03\x04" * 4)),
    ("short-life", lambda: [ike_transform(life=Attribute(IkeAttr.LIFE_DURATION, 1200))], []),
    ("second-transform", lambda: [
        ike_transform(1, key_length=Attribute(IkeAttr.KEY_LENGTH, 192)), ike_transform(2),
    ], _vids(VID_DPD)),
]


def _config(encap: bool, **settings: str) -> Config:
    return parse_config(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24", encap=encap,
                                    **settings))


def _state(engine: Engine) -> dict[str, Any]:
    (sa,) = engine._sas.values()
    assert isinstance(sa, IkeSa)
    mm = sa.exchanges[0]
    assert isinstance(mm, main_mode.MainMode)
    return {
        "cookies": (sa.cky_i, sa.cky_r),
        "candidates": [id(c) for c in sa.candidates],
        "conn": id(sa.conn),
        "proposal": sa.proposal,
        "auth_method": sa.auth_method,
        "hash_alg": sa.hash_alg,
        "lifetime_s": sa.lifetime_s,
        "xauth_role": sa.xauth_role,
        "peer_vendors": sa.peer_vendors,
        "nat_t": (sa.nat_t, sa.nat_t_rfc),
        "sa_i_b": mm.material.sa_i_b,
        "mm_state": mm.state,
        "auth": type(mm.auth),
        "responses": {k: (v.request_key, v.responses, v.request_length)
                      for k, v in sa.responses.items()},
    }


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The message bodies Main Mode parses from now on (the whole path parses message 1,
    the cached one does not)."""
    parses: list[bytes] = []
    real_parse = ike_sa.parse

    def counted_parse(header: Header, body: bytes, **kw: Any) -> Parsed:
        parses.append(body)
        return real_parse(header, body, **kw)

    monkeypatch.setattr(main_mode, "parse", counted_parse)
    return parses


def _answer(config: Config, request: bytes) -> tuple[list[bytes], dict[str, Any]]:
    engine = Engine(config, random_bytes=random.Random(7).randbytes, wall_clock=lambda: 0.0)
    engine.receive_datagram(request, RESPONDER, INITIATOR, 10.0)
    return [d.data for d in engine.datagrams_to_send()], _state(engine)


@pytest.mark.parametrize("encap", [False, True])
@pytest.mark.parametrize("name,transforms,extra", OFFERS, ids=[o[0] for o in OFFERS])
def test_main_mode_1_answered_alike_from_the_cache(
    name: str, transforms: Callable[[], list[Any]], extra: list[Payload], encap: bool,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    config = _config(encap)
    request = message_1(bytes(range(1, 9)), transforms(), extra)
    main_mode._MM1_ANSWERS.clear()
    caplog.set_level(logging.INFO, logger="ikev1d")
    whole_out, whole_state = _answer(config, request)
    whole_logs = [r.getMessage() for r in caplog.records]
    assert len(whole_out) == 1
    caplog.clear()
    parses = _count_parses(monkeypatch)
    cached_out, cached_state = _answer(config, request)
    assert parses == [], "the second request did not take the shortcut"
    assert cached_out == whole_out
    assert cached_state == whole_state
    assert [r.getMessage() for r in caplog.records] == whole_logs
    if name == "unknown-vid":
        assert any("unknown vendor ID" in line for line in whole_logs)
    # A configuration loaded again (a reload makes new connection objects) with the
    # same settings is answered alike, with its own connections.
    again = _config(encap)
    reloaded_out, reloaded_state = _answer(again, request)
    assert parses == [] and reloaded_out == whole_out
    assert reloaded_state["conn"] == id(again.connections["gw"])
    # One whose connection differs in what the answer takes from it is not.
    _answer(_config(encap, proposals='["aes256-sha256-modp2048", "aes128-sha256-modp2048"]'),
            request)
    assert len(parses) == 1


PEER_A, PEER_B = "192.0.2.10", "192.0.2.11"


def _hub(fragmentation_b: str) -> Config:
    """A responder with a connection (and a key) per static peer, alike but for the
    peer's address, ID and key, and for ``fragmentation`` in the second."""
    text = '[daemon]\ndataplane = "none"\n'
    for name, peer, fragmentation in (("pa", PEER_A, "yes"), ("pb", PEER_B, fragmentation_b)):
        text += f"""
[connections.{name}]
local_addrs = ["{B_ADDR}"]
remote_addrs = ["{peer}"]
proposals = ["aes128-sha256-modp2048"]
fragmentation = "{fragmentation}"
[connections.{name}.local]
auth = "psk"
[connections.{name}.remote]
auth = "psk"
id = "{peer}"
[connections.{name}.children.net]
local_ts = ["10.2.0.0/24"]
remote_ts = ["10.1.0.0/24"]
[secrets.{name}]
secret = "the key of {name}, long enough for a test"
ids = ["{peer}"]
"""
    return parse_config(text)


@pytest.mark.parametrize("fragmentation_b", ["yes", "no"])
def test_main_mode_1_of_a_new_peer_answered_from_an_alike_connection(
    fragmentation_b: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hub's static peers each have a connection of their own: the first request
    of a new peer is answered from what an alike connection decided (and with the
    new peer's own connection), unless its connection differs in what the answer
    takes from it (fragmentation: the answer then lacks the vendor ID)."""
    request = message_1(bytes(range(1, 9)), [ike_transform()],
                        _vids(VID_DPD, VID_FRAGMENTATION + FLAGS))
    config = _hub(fragmentation_b)
    main_mode._MM1_ANSWERS.clear()
    whole: dict[str, tuple[list[bytes], str | None]] = {}
    for peer in (PEER_A, PEER_B):  # each through the whole path
        main_mode._MM1_ANSWERS.clear()
        engine = Engine(config, random_bytes=random.Random(7).randbytes, wall_clock=lambda: 0.0)
        engine.receive_datagram(request, RESPONDER, (peer, 500), 10.0)
        (sa,) = engine._sas.values()
        assert isinstance(sa, IkeSa) and sa.conn is not None
        whole[peer] = ([d.data for d in engine.datagrams_to_send()], sa.conn.name)
    assert (VID_FRAGMENTATION in whole[PEER_B][0][0]) == (fragmentation_b == "yes")

    main_mode._MM1_ANSWERS.clear()
    engine = Engine(config, random_bytes=random.Random(7).randbytes, wall_clock=lambda: 0.0)
    engine.receive_datagram(request, RESPONDER, (PEER_A, 500), 10.0)
    engine.datagrams_to_send()
    parses = _count_parses(monkeypatch)
    second = Engine(config, random_bytes=random.Random(7).randbytes, wall_clock=lambda: 0.0)
    second.receive_datagram(request, RESPONDER, (PEER_B, 500), 10.0)
    (sa,) = second._sas.values()
    assert isinstance(sa, IkeSa) and sa.conn is not None
    assert ([d.data for d in second.datagrams_to_send()], sa.conn.name) == whole[PEER_B]
    assert whole[PEER_B][1] == "pb"
    assert len(parses) == (0 if fragmentation_b == "yes" else 1)


def test_main_mode_1_refusals_are_not_kept() -> None:
    config = _config(False)
    main_mode._MM1_ANSWERS.clear()
    unacceptable = ike_transform(key_length=Attribute(IkeAttr.KEY_LENGTH, 256))
    engine = Engine(config, random_bytes=random.Random(7).randbytes, wall_clock=lambda: 0.0)
    engine.receive_datagram(message_1(bytes(8 * [5]), [unacceptable]), RESPONDER, INITIATOR, 1.0)
    assert not engine._sas and main_mode._MM1_ANSWERS == {}


def test_response_cache_answers_only_the_same_request() -> None:
    """Requests of ordinary size are kept as they are, longer ones as a digest:
    either way only the same bytes are answered again (RFC 2408 section 5)."""
    for size in (1, 100, 2048, 2049, 60000):
        request = bytes(random.Random(size).randbytes(size))
        other = request[:-1] + bytes([request[-1] ^ 1])
        cached = ResponseCache.of(request, b"answer")
        assert cached.answers(bytes(request))
        assert not cached.answers(other)
        assert not cached.answers(request + b"\0")
        assert not cached.answers(request[:-1])
        assert len(cached.request_key) == (size if size <= 2048 else 32)


def test_esp_choice_for_a_known_offer_is_the_whole_path_s() -> None:
    """select_esp keeps its choice per offered transforms and acceptable list: for
    every offer and SPI it must return what the whole selection returns."""
    from ikev1d.engine import sa_proposals
    from ikev1d.proposals import parse_esp_proposal
    from ikev1d.wire import EncapsulationMode, Proposal, ProtocolId, SaPayload

    def accept(*texts: str) -> tuple[EspProposal, ...]:
        return tuple(p for t in texts for p in parse_esp_proposal(t))

    acceptables = [accept("aes128-sha256"), accept("aes256gcm16", "aes128-sha1"),
                   accept("aes128-sha256-modp2048")]
    offers = [sa_proposals.esp_sa_payload(list(a), b"\0\0\0\0", mode, life, kb)
              for a in [*acceptables, accept("aes192-sha384")]
              for mode in (EncapsulationMode.TUNNEL, EncapsulationMode.UDP_TUNNEL)
              for life, kb in ((3600, 0), (1200, 1000))]
    sa_proposals._ESP_CHOICES.clear()
    for _ in range(2):
        for offer in offers:
            (proposal,) = offer.proposals
            for spi in (b"\x01\x02\x03\x04", b"\xaa\xbb\xcc\xdd", b"\x01\x02\x03"):
                # As received: the transforms decoded once, the SPI of each message.
                received = SaPayload.decode_body(SaPayload((Proposal(
                    proposal.number, ProtocolId.ESP, spi, proposal.transforms),)).encode_body())
                for acceptable in acceptables:
                    assert sa_proposals.select_esp(received, acceptable) == \
                        sa_proposals._select_esp(received, acceptable)
    assert sa_proposals._ESP_CHOICES


def test_selector_text_is_each_tuple_s_own() -> None:
    import ipaddress

    from ikev1d.engine import lifecycle

    nets = [(ipaddress.ip_network("10.1.0.0/24"),),
            (ipaddress.ip_network("10.2.0.0/24"), ipaddress.ip_network("fd00::/64")),
            ()]
    for _ in range(2):
        for selectors in nets:
            assert lifecycle._selectors_text(selectors) == ",".join(str(n) for n in selectors)


def test_quick_mode_tunnel_found_again_is_the_whole_path_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The responder keeps the child it found for (connection, IDs, addresses):
    a second run of the same handshakes against the same configuration must
    find the same children and selectors without searching, and establish the
    same IPsec SAs."""
    from ikev1d.engine.api import ChildSaEstablished
    from ikev1d.engine.exchanges import quick_mode
    from tests.unit.engine.test_engine import Net, Peer

    nets_a = '"10.1.0.0/24", "10.1.1.0/24"'
    nets_b = '"10.2.0.0/24", "10.2.1.0/24"'
    a_text = config_text(A_ADDR, B_ADDR, "x", "y").replace(
        'local_ts = ["x"]', f"local_ts = [{nets_a}]").replace(
        'remote_ts = ["y"]', f"remote_ts = [{nets_b}]")
    b_config = parse_config(config_text(B_ADDR, A_ADDR, "x", "y").replace(
        'local_ts = ["x"]', f"local_ts = [{nets_b}]").replace(
        'remote_ts = ["y"]', f"remote_ts = [{nets_a}]"))
    searches: list[int] = []
    real_find = quick_mode.QuickMode._find_child

    def counted_find(self: quick_mode.QuickMode, *args: Any) -> Any:
        searches.append(1)
        return real_find(self, *args)

    monkeypatch.setattr(quick_mode.QuickMode, "_find_child", counted_find)

    def run() -> list[tuple[Any, ...]]:
        rng = random.Random(3)
        a = Engine(parse_config(a_text), random_bytes=rng.randbytes)
        b = Engine(b_config, random_bytes=rng.randbytes)
        net = Net(Peer(a, A_ADDR), Peer(b, B_ADDR))
        net.a.engine.initiate("gw", None, net.now)
        net.pump()
        return [(e.child, e.local_ts, e.remote_ts, e.spi_in, e.spi_out, e.proposal)
                for e in net.b.of(ChildSaEstablished) if isinstance(e, ChildSaEstablished)]

    quick_mode._TUNNELS.clear()
    whole = run()
    assert len(whole) == 4 and len(searches) == 4
    again = run()
    assert len(searches) == 4, "the second run searched again"
    assert again == whole


def test_an_encrypted_main_mode_message_3_is_refused() -> None:
    """Message 3 carries the key exchange in the clear (RFC 2409 section 5): one
    with the E flag set gets no message 4."""
    from dataclasses import replace

    from ikev1d.engine.api import Datagram
    from ikev1d.wire import ExchangeType, split_message
    from tests.unit.engine.test_engine import default_net

    net = default_net()
    sent: list[int] = []

    def set_e_flag_on_message_3(dgram: Datagram) -> Datagram:
        header, _body = split_message(dgram.data)
        if header.exchange_type != ExchangeType.IDENTITY_PROTECTION \
                or dgram.local[0] != A_ADDR:
            return dgram
        sent.append(1)
        if len(sent) != 2:
            return dgram
        data = bytearray(dgram.data)
        data[19] |= 0x01  # the flags octet: E (RFC 2408 section 3.1)
        return replace(dgram, data=bytes(data))

    net.rewrite = set_e_flag_on_message_3
    net.a.engine.initiate("gw", None, net.now)
    net.pump()
    answers = [d for s, d in net.wire if s == B_ADDR
               and split_message(d.data)[0].exchange_type == ExchangeType.IDENTITY_PROTECTION]
    assert len(sent) >= 2 and len(answers) == 1


def test_skeyid_is_dropped_once_main_mode_is_released() -> None:
    """SKEYID only authenticated Main Mode (RFC 2409 section 5): once the first
    Quick Mode is through, only SKEYID_d, _a and _e stay, unchanged."""
    from tests.unit.engine.test_engine import default_net

    net = default_net()
    net.a.engine.initiate("gw", None, net.now)
    net.pump(rounds=3)  # through Main Mode 6 and Quick Mode 1 and 2, not yet 3
    (b_sa,) = net.b.engine.all_sas()
    before = b_sa.keys
    assert before is not None and before.skeyid
    net.pump()
    after = b_sa.keys
    assert after is not None and after.skeyid == b""
    assert (after.skeyid_d, after.skeyid_a, after.skeyid_e) == (
        before.skeyid_d, before.skeyid_a, before.skeyid_e)


def test_main_mode_1_profiles_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile tables are bounded; when the numbers start again, no answer keyed by
    an old number is kept (it could name another profile)."""
    monkeypatch.setattr(main_mode, "_MM1_PROFILES_KEPT", 3)
    main_mode._MM1_PROFILES.clear()
    main_mode._MM1_PROFILE_OF.clear()
    groups = ["modp2048", "modp3072", "ecp256", "ecp384", "modp4096"]
    conns = [_config(False, proposals=f'["aes128-sha256-{g}"]').connections["gw"]
             for g in groups]
    numbers = [main_mode._mm1_profile(c) for c in conns[:3]]
    kept: Any = object()  # an answer, kept while the numbers stand
    main_mode._MM1_ANSWERS[(0, b"", (2,))] = kept
    assert main_mode._mm1_profile(conns[0]) == 0  # known: from the table, nothing cleared
    assert main_mode._MM1_ANSWERS[(0, b"", (2,))] is kept
    numbers += [main_mode._mm1_profile(c) for c in conns[3:]]
    assert numbers == [0, 1, 2, 0, 1]
    assert len(main_mode._MM1_PROFILES) <= 3 and len(main_mode._MM1_PROFILE_OF) <= 3
    assert main_mode._MM1_ANSWERS == {}
    assert main_mode._mm1_profile(conns[4]) == 1
    # Many connections alike (a hub's peers): one profile, the memo by connection bounded.
    alike = [_config(False).connections["gw"] for _ in range(5)]
    assert len({main_mode._mm1_profile(c) for c in alike}) == 1
    assert len(main_mode._MM1_PROFILE_OF) <= 3
    main_mode._MM1_PROFILES.clear()
    main_mode._MM1_PROFILE_OF.clear()
