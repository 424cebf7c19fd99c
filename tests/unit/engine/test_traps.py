"""Trapped children: start_action = "trap", dpd_action = "hold", and acquires,
with two engines in memory (tests/interop/test_trap_strongswan.py does the same
against strongSwan through the data plane)."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from ikev1d.config import parse_config
from ikev1d.engine.api import (
    ChildSaEstablished,
    IkeSaDeleted,
    TrapInstalled,
    TrapRemoved,
)
from ikev1d.status import StatusDocument
from ikev1d.wire import ExchangeType, split_message
from tests.unit.engine.test_engine import (
    A_ADDR,
    B_ADDR,
    Net,
    Peer,
    config_text,
    make_net,
)


def trap_config(*, conn: str = "", child: str = "", dpd_action: str = "") -> str:
    """A's side of the default pair, with start_action / dpd_action set as asked."""
    text = config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24")
    head = "[connections.gw]\n"
    if conn:
        text = text.replace(head, f'{head}start_action = "{conn}"\n')
    if dpd_action:
        text = text.replace(head, f'{head}dpd_action = "{dpd_action}"\n')
    if child:
        text = text.replace("[connections.gw.children.net]\n",
                            f'[connections.gw.children.net]\nstart_action = "{child}"\n')
    return text


def trap_net(a_text: str) -> Net:
    return make_net(a_text, config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"))


def traps_of(peer: Peer) -> list[TrapInstalled]:
    return [e for e in peer.events if isinstance(e, TrapInstalled)]


def established_of(peer: Peer) -> list[ChildSaEstablished]:
    return [e for e in peer.events if isinstance(e, ChildSaEstablished)]


def main_modes_from_a(net: Net, since: int = 0) -> int:
    """Main Modes A started (retransmissions of message 1 counted once)."""
    headers = [split_message(d.data)[0] for src, d in net.wire[since:] if src == A_ADDR]
    return len({h.initiator_cookie for h in headers
                if h.exchange_type == ExchangeType.IDENTITY_PROTECTION
                and h.responder_cookie == bytes(8)})


@pytest.mark.parametrize("where", ["conn", "child"])
def test_start_action_trap_installs_a_trap_and_negotiates_nothing(where: str) -> None:
    net = trap_net(trap_config(**{where: "trap"}))
    net.a.engine.start(net.now)
    net.pump()
    traps = net.a.of(TrapInstalled)
    assert traps == [TrapInstalled(
        "gw", "net", A_ADDR, B_ADDR, "tunnel", (ipaddress.ip_network("10.1.0.0/24"),),
        (ipaddress.ip_network("10.2.0.0/24"),), "start_action")]
    assert not net.wire  # no SA until traffic
    document = net.a.engine.status(net.now)
    assert [(t.name, t.child, t.origin) for t in document.traps] == [
        ("gw", "net", "start_action")]
    # The document carries them through JSON.
    assert StatusDocument.from_json(document.to_json()) == document


def test_acquire_negotiates_the_child_once_however_many_packets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = trap_net(trap_config(conn="trap"))
    net.a.engine.start(net.now)
    with caplog.at_level(logging.INFO):
        for _ in range(50):  # a burst of packets before the first answer
            net.a.engine.acquire("gw", "net", net.now)
        net.pump()
    assert main_modes_from_a(net) == 1
    assert [e.child for e in established_of(net.a)] == ["net"]
    assert caplog.text.count("acquire for gw/net: initiating") == 1
    assert net.a.engine.stats.acquires == 1
    # Packets racing the installation change nothing.
    mark = len(net.wire)
    net.a.engine.acquire("gw", "net", net.now + 1)
    net.pump()
    assert len(net.wire) == mark
    # The trap stays while the SA is up: no removal, no second installation.
    assert not net.a.of(TrapRemoved) and len(net.a.of(TrapInstalled)) == 1


def test_acquire_while_the_peer_does_not_answer_is_bounded() -> None:
    net = trap_net(trap_config(conn="trap"))
    net.drop = lambda d: True
    net.a.engine.start(net.now)
    for _ in range(20):  # one packet a second for 20 s
        net.a.engine.acquire("gw", "net", net.now)
        net.pump()
        net.advance(1)
    # retransmit_timeout 1 s, 3 tries: one Main Mode gives up after 7 s; each acquire
    # after that may start one more, so at most one per retransmission budget.
    assert main_modes_from_a(net) <= 3
    assert main_modes_from_a(net) >= 2  # and the trap keeps working after a failure


def test_acquire_for_an_unknown_trap_does_nothing() -> None:
    net = trap_net(trap_config())
    net.a.engine.start(net.now)
    net.a.engine.acquire("gw", "net", net.now)
    net.a.engine.acquire("nope", "net", net.now)
    net.pump()
    assert not net.wire and not net.a.of(TrapInstalled)


def test_the_trap_brings_the_tunnel_back_after_the_peer_deletes_it() -> None:
    net = trap_net(trap_config(conn="trap"))
    net.a.engine.start(net.now)
    net.a.engine.acquire("gw", "net", net.now)
    net.pump()
    net.b.engine.terminate("gw", net.now)
    net.pump()
    assert net.a.of(IkeSaDeleted)
    assert not net.a.engine.child_is_up("gw", "net")
    net.a.engine.acquire("gw", "net", net.now)
    net.pump()
    assert len(net.a.of(ChildSaEstablished)) == 2


def test_dpd_action_hold_traps_after_the_peer_died(caplog: pytest.LogCaptureFixture) -> None:
    net = trap_net(trap_config(dpd_action="hold"))
    net.a.engine.initiate("gw", None, net.now)
    net.pump()
    assert not net.a.of(TrapInstalled)
    net.drop = lambda d: d.local[0] == B_ADDR  # the peer goes silent
    mark = len(net.wire)
    with caplog.at_level(logging.INFO):
        net.advance(200)
    assert "not responding" in caplog.text and "action hold" in caplog.text
    assert net.a.of(IkeSaDeleted)
    # Unlike restart, nothing is sent until traffic comes ...
    assert main_modes_from_a(net, mark) == 0
    assert [(t.child, t.origin) for t in traps_of(net.a)] == [("net", "dpd_action")]
    # ... and traffic brings the tunnel back once the peer answers again.
    net.drop = lambda d: False
    net.a.engine.acquire("gw", "net", net.now)
    net.pump()
    assert len(net.a.of(ChildSaEstablished)) == 2
    # down removes what DPD installed.
    net.a.engine.terminate("gw", net.now)
    net.pump()
    assert net.a.of(TrapRemoved) == [TrapRemoved("gw", "net")]
    assert not net.a.engine.status(net.now).traps


def test_down_leaves_a_configured_trap() -> None:
    net = trap_net(trap_config(child="trap"))
    net.a.engine.start(net.now)
    net.a.engine.acquire("gw", "net", net.now)
    net.pump()
    net.a.engine.terminate("gw", net.now)
    net.pump()
    assert not net.a.of(TrapRemoved)
    assert len(net.a.engine.status(net.now).traps) == 1


def test_reload_installs_changes_and_removes_traps() -> None:
    net = trap_net(trap_config())
    engine = net.a.engine
    engine.start(net.now)
    engine.reload(parse_config(trap_config(conn="trap")), net.now)
    assert [type(e).__name__ for e in engine.events()] == ["TrapInstalled"]
    engine.reload(parse_config(trap_config(conn="trap")), net.now)  # unchanged: kept
    assert engine.events() == []
    changed = trap_config(conn="trap").replace('remote_ts = ["10.2.0.0/24"]',
                                               'remote_ts = ["10.3.0.0/24"]')
    engine.reload(parse_config(changed), net.now)
    events = engine.events()
    assert [type(e).__name__ for e in events] == ["TrapRemoved", "TrapInstalled"]
    assert isinstance(events[1], TrapInstalled)
    assert events[1].remote_ts == (ipaddress.ip_network("10.3.0.0/24"),)
    engine.reload(parse_config(trap_config()), net.now)
    assert engine.events() == [TrapRemoved("gw", "net")]
    assert not engine.status(net.now).traps


def test_shutdown_removes_the_traps() -> None:
    net = trap_net(trap_config(conn="trap"))
    net.a.engine.start(net.now)
    net.a.engine.shutdown(net.now)
    net.pump()
    assert net.a.of(TrapRemoved) == [TrapRemoved("gw", "net")]


def test_acquire_while_a_negotiation_for_the_child_runs_starts_no_other() -> None:
    net = trap_net(trap_config(conn="trap"))
    engine = net.a.engine
    engine.start(net.now)
    engine.acquire("gw", "net", net.now)
    # An unrelated ISAKMP SA of the connection went: the bound is lifted, but the
    # Main Mode that will carry the child still runs.
    engine.traps.observe(IkeSaDeleted("gw", 99, "test"))
    engine.acquire("gw", "net", net.now)
    net.pump()
    assert main_modes_from_a(net) == 1
    assert len(established_of(net.a)) == 1
    # The same while its Quick Mode runs on an established ISAKMP SA: the peer
    # deletes only the IPsec SA, then stops answering.
    b_sa = net.b.engine.all_sas()[0]
    net.b.engine.deletion.delete_child(b_sa, b_sa.children[0], "test", send=True)
    net.pump()
    assert not engine.child_is_up("gw", "net")
    mark = len(net.wire)
    net.drop = lambda d: True
    engine.acquire("gw", "net", net.now)
    engine.traps.observe(IkeSaDeleted("gw", 99, "test"))
    engine.acquire("gw", "net", net.now)
    net.pump()
    net.advance(20)  # the Quick Mode gives up; no second one was queued behind it
    quick_modes = {split_message(d.data)[0].message_id for src, d in net.wire[mark:]
                   if src == A_ADDR
                   and split_message(d.data)[0].exchange_type == ExchangeType.QUICK_MODE}
    assert len(quick_modes) == 1


def test_reload_keeps_a_held_trap_only_while_dpd_action_is_hold() -> None:
    net = trap_net(trap_config(dpd_action="hold"))
    engine = net.a.engine
    engine.initiate("gw", None, net.now)
    net.pump()
    net.drop = lambda d: d.local[0] == B_ADDR
    net.advance(200)
    assert len(engine.status(net.now).traps) == 1
    engine.events()
    engine.reload(parse_config(trap_config(dpd_action="hold")), net.now)
    assert engine.events() == [] and len(engine.status(net.now).traps) == 1
    engine.reload(parse_config(trap_config(dpd_action="clear")), net.now)
    assert engine.events() == [TrapRemoved("gw", "net")]
