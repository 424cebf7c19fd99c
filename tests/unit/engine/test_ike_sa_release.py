"""What an established ISAKMP SA lets go of, and what it keeps for a while.

An SA lives for hours; the Main Mode task (nonces, DH values, the SA payloads
its hashes covered), the DH private value and the responses kept for repeated
requests are needed only while the peer may still repeat a request (RFC 2408
section 5): after that, tens of thousands of tunnels would carry them for nothing.
"""

from __future__ import annotations

import math

from ikev1d.engine.api import ChildSaEstablished, Datagram
from ikev1d.engine.ike_sa import IkeSa
from ikev1d.wire import ExchangeType, split_message
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, Net, default_net, establish


def only_sa(net: Net, which: str) -> IkeSa:
    (sa,) = (net.a if which == "a" else net.b).engine.all_sas()
    return sa


def sent(net: Net, src: str, exchange: int) -> list[Datagram]:
    return [d for s, d in net.wire
            if s == src and split_message(d.data)[0].exchange_type == exchange]


def test_an_established_tunnel_keeps_no_main_mode_state() -> None:
    net = default_net()
    establish(net)
    assert net.a.of(ChildSaEstablished) and net.b.of(ChildSaEstablished)
    for which in ("a", "b"):
        sa = only_sa(net, which)
        assert sa.exchanges == {}, which
        assert 0 not in sa.responses, which  # Main Mode's message ID
        assert sa.dh is None, which
        assert sa.keys is not None and sa.cipher is not None  # Phase 2 still needs them
    # The Quick Mode responder's message 2 went with message 3; the initiator keeps
    # message 3 for a repeated message 2 (the responder retransmits until it has it).
    assert only_sa(net, "b").responses == {}
    assert len(only_sa(net, "a").responses) == 1


def test_message_6_is_answered_again_until_the_peer_cannot_need_it() -> None:
    net = default_net()
    # A's Quick Mode never arrives: B cannot tell that A has message 6.
    net.drop = lambda d: (d.local[0] == A_ADDR and split_message(d.data)[0].exchange_type
                          == ExchangeType.QUICK_MODE)
    establish(net)
    mm_a = sent(net, A_ADDR, ExchangeType.IDENTITY_PROTECTION)
    mm_b = sent(net, B_ADDR, ExchangeType.IDENTITY_PROTECTION)
    message_5, message_6 = mm_a[-1], mm_b[-1]
    b = net.b.engine
    # A repeated message 5 gets message 6 again, byte for byte, and nothing else.
    b.receive_datagram(message_5.data, message_5.remote, message_5.local, net.now)
    assert [d.data for d in b.datagrams_to_send()] == [message_6.data]
    # Once the peer's retransmissions would be over, message 6 is gone.
    later = net.now + b.retransmit_budget() + 1
    b.handle_timer(later)
    b.datagrams_to_send()
    assert only_sa(net, "b").exchanges == {}
    b.receive_datagram(message_5.data, message_5.remote, message_5.local, later)
    assert b.datagrams_to_send() == []
    assert only_sa(net, "b").usable


def test_a_late_quick_mode_message_1_is_neither_answered_nor_processed_again() -> None:
    net = default_net()
    establish(net)
    (qm1,) = sent(net, A_ADDR, ExchangeType.QUICK_MODE)[:1]
    b = net.b.engine
    b.receive_datagram(qm1.data, qm1.remote, qm1.local, net.now)
    assert b.datagrams_to_send() == []
    assert [e for e in b.events() if isinstance(e, ChildSaEstablished)] == []
    assert len(only_sa(net, "b").children) == 1


def test_the_releases_of_tunnels_set_up_within_one_second_fall_due_together() -> None:
    # Each would otherwise be a wakeup of the daemon of its own, cold caches and all.
    nets = []
    for start in (1000.1, 1000.6):
        net = default_net()
        net.now = start
        # A's Quick Mode never arrives, so B keeps message 6 until the release.
        net.drop = lambda d: (d.local[0] == A_ADDR and split_message(d.data)[0].exchange_type
                              == ExchangeType.QUICK_MODE)
        establish(net)
        nets.append(net)
    budget = nets[0].b.engine.retransmit_budget()
    together = math.ceil(1000.6 + budget)
    assert together > 1000.6 + budget > 1000.1 + budget
    for net in nets:
        b = net.b.engine
        assert b.get_timer() == together  # nothing else falls due before
        b.handle_timer(together - 0.01)
        assert only_sa(net, "b").exchanges != {}  # message 6 still kept
    for net in nets:
        net.b.engine.handle_timer(together)
        assert only_sa(net, "b").exchanges == {}
        assert only_sa(net, "b").usable
