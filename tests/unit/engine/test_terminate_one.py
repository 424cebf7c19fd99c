"""Deleting one road warrior of a ``%any`` connection: ``Engine.terminate_ike`` and
``Engine.terminate_peer`` remove exactly that ISAKMP SA and its IPsec SAs, with
Deletes the peer acts on, and leave the other peers' SAs alone."""

from __future__ import annotations

import pytest

from ikev1d.engine.api import ChildSaDeleted, EngineError, IkeSaDeleted
from tests.unit.engine.test_delete_scope import two_road_warriors
from tests.unit.engine.test_engine import pump_many


def test_terminate_ike_deletes_one_peer_and_tells_it() -> None:
    b, peers, _ = two_road_warriors()
    doc = b.status(1.0)
    assert len(doc.ike_sas) == 2 and len({s.ike_id for s in doc.ike_sas}) == 2
    victim = next(s for s in doc.ike_sas if s.remote[0] == "192.0.2.11")
    assert b.terminate_ike(victim.ike_id, 1.0) is True
    events = pump_many(b, peers)
    assert [type(e) for e in events if isinstance(e, ChildSaDeleted | IkeSaDeleted)] == [
        ChildSaDeleted, IkeSaDeleted]
    left = b.status(2.0).ike_sas
    assert [s.remote[0] for s in left] == ["192.0.2.12"] and len(left[0].children) == 1
    # The peer received the Deletes: its SAs are gone too; the other peer's are not.
    assert peers["192.0.2.11"].status(2.0).ike_sas == ()
    assert len(peers["192.0.2.12"].status(2.0).ike_sas[0].children) == 1
    assert b.terminate_ike(victim.ike_id, 3.0) is False  # gone already
    assert b.terminate_ike(999, 3.0) is False


def test_terminate_peer_matches_the_id_or_address_within_the_connection() -> None:
    b, peers, _ = two_road_warriors()
    assert b.terminate_peer("gw", "192.0.2.99", 1.0) == 0
    assert b.terminate_peer("gw", "192.0.2.12", 1.0) == 1  # the peer's ID (its address here)
    pump_many(b, peers)
    assert [s.remote[0] for s in b.status(2.0).ike_sas] == ["192.0.2.11"]
    with pytest.raises(EngineError):
        b.terminate_peer("nope", "192.0.2.11", 2.0)


def test_the_xauth_user_tells_road_warriors_with_one_group_id_apart() -> None:
    b, peers, _ = two_road_warriors()
    first, second = sorted(b.all_sas(), key=lambda sa: sa.ike_id)
    first.xauth_user, second.xauth_user = "alice", "bob"
    assert b.peer_ike_ids("gw", "bob") == [second.ike_id]
    assert b.terminate_peer("gw", "bob", 1.0) == 1
    pump_many(b, peers)
    assert [s.ike_id for s in b.status(2.0).ike_sas] == [first.ike_id]
