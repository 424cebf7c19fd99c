"""INITIAL-CONTACT (RFC 2407 section 4.6.3.3) and the ``unique`` policy, between
engines in memory; tests/interop/test_initial_contact_strongswan.py does the
same against strongSwan."""

from __future__ import annotations

import logging
import random

import pytest

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaDeleted, ConnectionFailed, IkeSaDeleted, IkeSaEstablished
from ikev1d.engine.ike_sa import IkeSa
from ikev1d.wire import ExchangeType, NotifyPayload, NotifyType
from tests.unit.engine.test_engine import (
    A_ADDR,
    B_ADDR,
    Net,
    Peer,
    config_text,
    default_net,
    establish,
    pump_many,
)


def _restart_a(net: Net, a_text: str, seed: int = 7) -> None:
    """The initiator loses all its state (kill -9) and comes back."""
    net.a = Peer(Engine(parse_config(a_text), random_bytes=random.Random(seed).randbytes),
                 A_ADDR)


def _established(engine: Engine) -> list[dict[str, object]]:
    """The usable ISAKMP SAs: an older one that the peer's newer SA supersedes is
    REKEYING (it stops renewing itself) but still there, which is what INITIAL-CONTACT
    is about."""
    return [ike for ike in engine.status(0.0).to_json()["ike_sas"]
            if ike["state"] in ("ESTABLISHED", "REKEYING")]


def _a_text(**kw: object) -> str:
    return config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24", **kw)  # type: ignore[arg-type]


def test_restarted_initiator_sends_initial_contact_and_the_responder_keeps_one_pair(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = default_net()
    establish(net)
    assert len(_established(net.b.engine)) == 1
    old = net.b.of(IkeSaEstablished)[0]
    assert isinstance(old, IkeSaEstablished)
    _restart_a(net, _a_text())
    wire_before = len(net.wire)
    with caplog.at_level(logging.INFO, logger="ikev1d.engine"):
        establish(net)
    status = _established(net.b.engine)
    assert len(status) == 1, status
    assert len(status[0]["children"]) == 1  # type: ignore[arg-type]
    assert status[0]["cookies"] != f"{old.cky_i.hex()}:{old.cky_r.hex()}"
    # The stale pair went at once, reported to the data plane ...
    deleted = net.b.of(IkeSaDeleted)
    assert [e.ike_id for e in deleted if isinstance(e, IkeSaDeleted)] == [old.ike_id]
    assert len(net.b.of(ChildSaDeleted)) == 1
    assert "INITIAL-CONTACT from 192.0.2.1: removing 1 stale ISAKMP SA and 1 IPsec SA" \
        in caplog.text
    # ... and without a Delete: the peer no longer knows those SAs.
    informational = [d for src, d in net.wire[wire_before:]
                     if src == B_ADDR and d.data[18] == ExchangeType.INFORMATIONAL]
    assert informational == []


def test_initial_contact_is_not_sent_while_an_sa_with_the_peer_exists() -> None:
    """A second Main Mode (a Phase 1 renewal) must not make the peer drop the first."""
    net = default_net()
    establish(net)
    engine = net.a.engine
    conn = engine.config.connections["gw"]

    def new_sa(engine: Engine) -> IkeSa:
        sa = IkeSa(engine, initiator=True, local=(A_ADDR, 500), remote=(B_ADDR, 500),
                   conn=conn, candidates=[conn], now=0.0)
        sa.local_id = A_ADDR
        return sa

    assert engine.send_initial_contact(new_sa(engine)) is False
    fresh = Engine(parse_config(_a_text()), random_bytes=random.Random(3).randbytes)
    assert fresh.send_initial_contact(new_sa(fresh)) is True


def test_isakmp_renewal_keeps_the_ipsec_sas_on_both_sides() -> None:
    """A renewal's message 5 has no INITIAL-CONTACT: the responder drops nothing at
    once; the renewing side renews the IPsec SAs over the new ISAKMP SA and deletes
    the old ones with Deletes (make before break), so one pair is left."""
    text_a = _a_text().replace('encap = false', 'encap = false\nrekey_time = "400s"')
    text_b = config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24")
    net = Net(Peer(Engine(parse_config(text_a), random_bytes=random.Random(1).randbytes),
                   A_ADDR),
              Peer(Engine(parse_config(text_b), random_bytes=random.Random(2).randbytes),
                   B_ADDR))
    establish(net)
    net.advance(395)
    reasons = {e.reason for e in net.b.events if isinstance(e, ChildSaDeleted)}
    assert reasons <= {"deleted by peer"}, reasons  # none "INITIAL-CONTACT from the peer"
    children = [ike["children"] for ike in _established(net.b.engine)]
    assert sum(len(c) for c in children) == 1  # type: ignore[arg-type,misc]


def test_unique_never_neither_sends_nor_honours() -> None:
    net = default_net(extra_daemon="")
    establish(net)
    _restart_a(net, _a_text().replace("encap = false", 'encap = false\nunique = "never"'))
    establish(net)
    assert len(_established(net.b.engine)) == 2
    assert net.b.of(IkeSaDeleted) == []


def _road_warriors(b_extra: str = "", ids: tuple[str, str] = ("road@example.org",) * 2,
                   a_extra: str = "") -> tuple[Engine, dict[str, Engine]]:
    """Responder B with a %any connection (one PSK for all, pre-shared key only)
    and two peers at two addresses."""
    b_text = config_text(B_ADDR, "%any", "10.2.0.0/24", "x", remote_addrs='["%any"]')
    b_text = b_text.replace('remote_ts = ["x"]\n', "").replace(
        'auth = "psk"\nid = "%any"', 'auth = "psk"').replace(
        'encap = false', f'encap = false\n{b_extra}')
    b = Engine(parse_config(b_text), random_bytes=random.Random(9).randbytes)
    peers = {}
    for n, (address, ident) in enumerate(zip(("192.0.2.11", "192.0.2.12"), ids, strict=True)):
        text = config_text(address, B_ADDR, "x", "10.2.0.0/24").replace(
            'local_ts = ["x"]\n', "").replace(f'id = "{address}"', f'id = "{ident}"').replace(
            'encap = false', f'encap = false\n{a_extra}')
        peers[address] = Engine(parse_config(text), random_bytes=random.Random(n).randbytes)
    return b, peers


def test_shared_group_id_initial_contact_leaves_the_other_peer_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b, peers = _road_warriors()
    first, second = peers.values()
    first.initiate("gw", None, 0.0)
    pump_many(b, peers)
    with caplog.at_level(logging.INFO, logger="ikev1d.engine"):
        second.initiate("gw", None, 0.0)  # sends INITIAL-CONTACT: it holds no SA
        events = pump_many(b, peers)
    assert [e for e in events if isinstance(e, IkeSaDeleted)] == []
    assert len(_established(b)) == 2
    assert "INITIAL-CONTACT from road@example.org ignored" in caplog.text


def test_initial_contact_from_a_fixed_peer_removes_its_sas_by_informational_too() -> None:
    """An INITIAL-CONTACT in an authenticated Informational exchange acts as in
    message 5: the older SAs of the identity go, the carrying one stays."""
    net = default_net()
    establish(net)
    _restart_a(net, _a_text().replace("encap = false", 'encap = false\nunique = "never"'))
    establish(net)  # no INITIAL-CONTACT in message 5 (unique = never on A)
    assert len(_established(net.b.engine)) == 2
    newest = max(net.a.engine.all_sas(), key=lambda s: s.ike_id)
    newest.send_informational([NotifyPayload(notify_type=NotifyType.INITIAL_CONTACT,
                                             spi=newest.cky_i + newest.cky_r,
                                             protocol_id=1)])
    net.pump()
    status = _established(net.b.engine)
    assert len(status) == 1
    assert status[0]["cookies"] == f"{newest.cky_i.hex()}:{newest.cky_r.hex()}"


def test_unique_replace_deletes_the_older_sa_with_a_delete() -> None:
    b, peers = _road_warriors(b_extra='unique = "replace"')
    first, second = peers.values()
    first.initiate("gw", None, 0.0)
    pump_many(b, peers)
    second.initiate("gw", None, 0.0)
    events = pump_many(b, peers)
    assert len([e for e in events if isinstance(e, IkeSaDeleted)]) == 1
    status = _established(b)
    assert [ike["remote"] for ike in status] == ["192.0.2.12:500"]
    # The first peer was told (Delete payloads) and removed its SAs too.
    assert any(isinstance(e, IkeSaDeleted) for e in first.events())
    assert first.status(0.0).to_json()["ike_sas"] == []


def test_unique_keep_refuses_the_newer_sa(caplog: pytest.LogCaptureFixture) -> None:
    b, peers = _road_warriors(b_extra='unique = "keep"')
    first, second = peers.values()
    first.initiate("gw", None, 0.0)
    pump_many(b, peers)
    with caplog.at_level(logging.INFO, logger="ikev1d.engine"):
        second.initiate("gw", None, 0.0)
        pump_many(b, peers)
    assert [ike["remote"] for ike in _established(b)] == ["192.0.2.11:500"]
    assert "(unique = keep)" in caplog.text
    failed = [e for e in second.events() if isinstance(e, ConnectionFailed)]
    assert failed and "AUTHENTICATION-FAILED" in failed[0].reason
    assert second.status(0.0).to_json()["ike_sas"] == []


def test_unique_keep_lets_different_identities_in() -> None:
    b, peers = _road_warriors(b_extra='unique = "keep"',
                              ids=("alice@example.org", "bob@example.org"))
    for engine in peers.values():
        engine.initiate("gw", None, 0.0)
    pump_many(b, peers)
    assert len(_established(b)) == 2


def test_message_5_carries_initial_contact_only_for_a_fresh_peer() -> None:
    """The responder sees INITIAL-CONTACT in the first contact's message 5 and
    not in the second Main Mode while the first SA is up."""
    net = default_net()
    seen: list[int] = []
    uniqueness = net.b.engine.uniqueness
    original = uniqueness.initial_contact

    def spy(sa: IkeSa, now: float) -> None:
        seen.append(sa.ike_id)
        original(sa, now)

    uniqueness.initial_contact = spy  # type: ignore[method-assign]
    establish(net)
    assert len(seen) == 1
    sa = net.a.engine.all_sas()[0]
    net.a.engine.lifecycle._ike_rekey(sa, net.now)
    net.pump()
    assert len(seen) == 1
    assert len(net.b.of(IkeSaEstablished)) == 2
