"""The engine's ISAKMP SAs by connection (``Engine.sas_of``): the same SAs as a walk
over every SA held would find, kept in step through handshakes, renewals and
deletes, and what asks about one connection does not walk every SA."""

from __future__ import annotations

import pytest

from ikev1d.engine import Engine
from ikev1d.engine.ike_sa import IkeSa, IkeState
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, Net, make_net

PSK = "a very long shared secret for tests"


def _initiator(connections: int) -> str:
    text = '[daemon]\ndataplane = "none"\nretransmit_timeout = "1s"\nretransmit_tries = 3\n'
    for i in range(connections):
        text += f"""
[connections.c{i}]
local_addrs = ["{A_ADDR}"]
remote_addrs = ["{B_ADDR}"]
proposals = ["aes128-sha256-ecp256"]
rekey_time = "{60 if i == 0 else 3600}s"
[connections.c{i}.local]
auth = "psk"
id = "c{i}.example.org"
[connections.c{i}.remote]
auth = "psk"
id = "{B_ADDR}"
[connections.c{i}.children.net]
local_ts = ["10.1.0.0/16"]
remote_ts = ["10.2.0.0/16"]
esp_proposals = ["aes128gcm16"]
"""
    return text + f'[secrets.b]\nsecret = "{PSK}"\nids = ["{B_ADDR}"]\n'


RESPONDER = f"""
[daemon]
dataplane = "none"
retransmit_timeout = "1s"
retransmit_tries = 3
[connections.hub]
local_addrs = ["{B_ADDR}"]
remote_addrs = ["{A_ADDR}"]
proposals = ["aes128-sha256-ecp256"]
[connections.hub.local]
auth = "psk"
id = "{B_ADDR}"
[connections.hub.remote]
auth = "psk"
id = "%any"
[connections.hub.children.net]
local_ts = ["10.2.0.0/16"]
remote_ts = ["10.1.0.0/16"]
esp_proposals = ["aes128gcm16"]
[secrets.a]
secret = "{PSK}"
ids = ["{A_ADDR}"]
"""


def _walk(engine: Engine, name: str) -> set[int]:
    """The definition: every SA held, of that connection, ours or established."""
    return {sa.ike_id for sa in engine.all_sas()
            if sa.conn is not None and sa.name == name
            and (sa.initiator or sa.state is not IkeState.CONNECTING)}


def _check(net: Net, names: list[str]) -> None:
    for engine in (net.a.engine, net.b.engine):
        for name in [*names, "hub"]:
            assert {sa.ike_id for sa in engine.sas_of(name)} == _walk(engine, name), name


def _step(net: Net, names: list[str]) -> None:
    """Pump one round at a time, checking the index after each."""
    for _ in range(50):
        before = len(net.wire)
        net.pump(rounds=1)
        _check(net, names)
        if len(net.wire) == before:
            return


def test_the_index_holds_what_a_walk_over_every_sa_finds() -> None:
    names = [f"c{i}" for i in range(3)]
    net = make_net(_initiator(3), RESPONDER)
    for name in names:
        net.a.engine.initiate(name, None, net.now)
        _check(net, names)
        _step(net, names)
    assert len(net.b.engine.sas_of("hub")) == 3
    assert all(len(net.a.engine.sas_of(n)) == 1 for n in names)
    # c0 renews its Phase 1 (rekey_time 60 s): old and new held, then the old goes.
    for _ in range(12):
        net.advance(10.0)
        _check(net, names)
    assert len(net.a.engine.sas_of("c0")) >= 1
    net.a.engine.terminate("c1", net.now)
    _check(net, names)
    _step(net, names)
    assert net.a.engine.sas_of("c1") == [] and len(net.b.engine.sas_of("hub")) == 2
    # Unanswered: our SA is listed while it tries, and not after it gave up.
    net.drop = lambda d: True
    net.a.engine.initiate("c1", None, net.now)
    assert len(net.a.engine.sas_of("c1")) == 1
    net.advance(30.0)
    _check(net, names)
    assert net.a.engine.sas_of("c1") == []
    assert net.a.engine.sas_of("nope") == []


def test_one_connection_asked_about_does_not_walk_every_sa(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A gateway initiating thousands of connections asked, for each one it started
    # (and for INITIAL-CONTACT in each Main Mode), about every SA it held: O(SAs)
    # per tunnel. With the walk made impossible the next tunnel still comes up.
    net = make_net(_initiator(6), RESPONDER)
    for i in range(5):
        net.a.engine.initiate(f"c{i}", None, net.now)
        net.pump()
    a = net.a.engine

    def no_walk(self: Engine) -> list[IkeSa]:
        raise AssertionError("walked every SA")

    monkeypatch.setattr(Engine, "_all_sas", no_walk)
    monkeypatch.setattr(Engine, "all_sas", no_walk)
    a.initiate("c5", None, net.now)
    net.pump()
    assert len(a.sas_of("c5")) == 1 and a.sas_of("c5")[0].state is IkeState.ESTABLISHED
    assert a.child_is_up("c5", "net") and not a.child_in_progress("c5", "net")
    a.initiate("c5", None, net.now)  # up already: nothing new
    assert len(a.sas_of("c5")) == 1
    # `down --peer` and an install the data plane refused: no walk either.
    assert a.terminate_peer("c4", B_ADDR, net.now) == 1
    assert a.sas_of("c4") == [] and a.terminate_peer("c4", B_ADDR, net.now) == 0
    c3 = a.sas_of("c3")[0]
    a.install_failed(c3.children[0].child_id, "refused", net.now)
    assert c3.children == [] and len(a.sas_of("c3")) == 1
