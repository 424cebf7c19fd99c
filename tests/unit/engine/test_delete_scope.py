"""A Delete acts only on IPsec SAs of the same connection and the same
authenticated peer identity as the ISAKMP SA that carried it."""

from __future__ import annotations

import random

import pytest

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, Event
from ikev1d.wire import DeletePayload, ProtocolId
from tests.unit.engine.test_engine import B_ADDR, config_text, pump_many

NAT = ("198.51.100.7", 4500)


def two_road_warriors() -> tuple[Engine, dict[str, Engine], list[Event]]:
    b_text = config_text(B_ADDR, "%any", "10.2.0.0/24", "x", remote_addrs='["%any"]')
    b_text = b_text.replace('remote_ts = ["x"]\n', "").replace(
        'auth = "psk"\nid = "%any"', 'auth = "psk"')
    b = Engine(parse_config(b_text), random_bytes=random.Random(9).randbytes)
    peers = {}
    for n, address in enumerate(("192.0.2.11", "192.0.2.12")):
        text = config_text(address, B_ADDR, "x", "10.2.0.0/24").replace('local_ts = ["x"]\n', "")
        peers[address] = Engine(parse_config(text), random_bytes=random.Random(n).randbytes)
        peers[address].initiate("gw", None, 0.0)
    events = pump_many(b, peers)
    return b, peers, events


def test_a_peer_behind_the_same_address_cannot_delete_another_peers_ipsec_sa() -> None:
    b, peers, events = two_road_warriors()
    children = [e for e in events if isinstance(e, ChildSaEstablished)]
    assert len(children) == 2
    # Both peers now come from one NAT address (two road warriors behind one NAT).
    b_sas = b.all_sas()
    for sa in b_sas:
        sa.remote = NAT
    one, two = peers["192.0.2.11"], peers["192.0.2.12"]
    (sa_one,) = one.all_sas()
    (sa_two,) = two.all_sas()
    victim = sa_two.children[0]
    # Peer one, authenticated, deletes peer two's IPsec SA by the SPI two receives on.
    sa_one.send_informational([DeletePayload(protocol_id=ProtocolId.ESP,
                                             spis=(victim.spi_in, sa_one.children[0].spi_in))])
    for d in one.datagrams_to_send():
        b.receive_datagram(d.data, d.remote, NAT, 1.0)
    deleted = [e for e in b.events() if isinstance(e, ChildSaDeleted)]
    # Its own IPsec SA goes; the other peer's stays.
    assert [d.spi_out for d in deleted] == [int.from_bytes(sa_one.children[0].spi_in, "big")]
    assert sum(len(sa.children) for sa in b.all_sas()) == 1


def test_a_delete_looks_only_at_the_ike_sas_of_its_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gateway with many tunnels gets a Delete from each peer that goes: each is
    answered from the identity index, not by walking every ISAKMP SA."""
    b, peers, _ = two_road_warriors()
    one = peers["192.0.2.11"]
    (sa_one,) = one.all_sas()

    def walked() -> list[object]:
        raise AssertionError("walked every ISAKMP SA")

    monkeypatch.setattr(b, "all_sas", walked)
    sa_one.send_informational([DeletePayload(protocol_id=ProtocolId.ESP,
                                             spis=(sa_one.children[0].spi_in,))])
    sa_one.send_informational([DeletePayload(protocol_id=ProtocolId.ISAKMP,
                                             spis=(sa_one.cky_i + sa_one.cky_r,))])
    for d in one.datagrams_to_send():
        b.receive_datagram(d.data, d.remote, d.local, 1.0)
    events = b.events()
    assert [(type(e).__name__, getattr(e, "reason", None)) for e in events] == [
        ("ChildSaDeleted", "deleted by peer"), ("IkeSaDeleted", "deleted by peer")]
    monkeypatch.undo()
    assert len(b.all_sas()) == 1 and len(b.all_sas()[0].children) == 1
