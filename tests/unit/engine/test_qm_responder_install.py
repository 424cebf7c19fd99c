"""As Quick Mode responder the inbound half of a new IPsec SA pair is announced before
message 2 leaves, the pair established only by a valid message 3 (RFC 2409 section
5.5: the initiator may use the SAs as soon as it holds message 2), and the inbound
half withdrawn when message 3 never comes or the ISAKMP SA goes away."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from ikev1d.engine.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaInboundReady,
    ChildSaInboundWithdrawn,
    Datagram,
    Event,
)
from ikev1d.wire import ExchangeType, Flags, split_message
from tests.unit.engine.test_engine import (
    A_ADDR,
    B_ADDR,
    Net,
    commit_bit_in_qm1,
    default_net,
    establish,
)


def _is_qm3_from_a() -> tuple[set[int], Callable[[Datagram], bool]]:
    """A predicate for A's Quick Mode message 3s (A's second message of a message ID)."""
    seen: set[int] = set()

    def is_qm3(d: Datagram) -> bool:
        header = split_message(d.data)[0]
        if d.local[0] != A_ADDR or header.exchange_type != ExchangeType.QUICK_MODE:
            return False
        if header.message_id not in seen:
            seen.add(header.message_id)
            return False
        return True

    return seen, is_qm3


def _held_at_qm3() -> Net:
    """A initiates; every Quick Mode message 3 of A is lost."""
    net = default_net()
    _, is_qm3 = _is_qm3_from_a()
    net.drop = is_qm3
    establish(net)
    return net


def _kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events
            if isinstance(e, ChildSaInboundReady | ChildSaInboundWithdrawn | ChildSaEstablished
                          | ChildSaDeleted)]


def test_inbound_half_is_announced_with_message_2_and_the_pair_only_on_message_3(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ikev1d")
    net = default_net()
    held: list[Datagram] = []
    _, is_qm3 = _is_qm3_from_a()

    def hold(d: Datagram) -> bool:
        if is_qm3(d):
            held.append(d)
            return True
        return False

    net.drop = hold
    establish(net)
    # A installed on message 2 (as before); B announced the inbound half only.
    (ca,) = net.a.of(ChildSaEstablished)
    assert _kinds(net.b.events) == ["ChildSaInboundReady"]
    (ready,) = net.b.of(ChildSaInboundReady)
    assert isinstance(ready, ChildSaInboundReady) and isinstance(ca, ChildSaEstablished)
    pair = ready.pair
    assert (pair.spi_in, pair.spi_out) == (ca.spi_out, ca.spi_in)
    assert pair.keymat_in == ca.keymat_out and pair.keymat_out == ca.keymat_in
    assert not pair.initiator
    # Nothing established on B yet: no status entry, no log line.
    (ike,) = net.b.engine.status(net.now).to_json()["ike_sas"]
    assert ike["children"] == []
    def established_lines(peer: str) -> int:
        return sum(1 for r in caplog.records if "IPsec SA established" in r.getMessage()
                   and str(r.__dict__.get("peer", "")).startswith(peer + ":"))

    assert established_lines(B_ADDR) == 1  # A's, whose peer is B
    assert established_lines(A_ADDR) == 0  # none of B's
    assert held, "A's message 3 was not sent"
    # Message 3 arrives: the same pair established, announced once, never withdrawn.
    net.drop = lambda d: False
    for d in held[:1]:
        net.b.engine.receive_datagram(d.data, d.remote, d.local, net.now)
    net.pump()
    assert _kinds(net.b.events) == ["ChildSaInboundReady", "ChildSaEstablished"]
    assert established_lines(A_ADDR) == 1
    (cb,) = net.b.of(ChildSaEstablished)
    assert cb == pair
    (ike,) = net.b.engine.status(net.now).to_json()["ike_sas"]
    assert [c["spi_in"] for c in ike["children"]] == [f"{pair.spi_in:08x}"]
    net.advance(60)
    assert _kinds(net.b.events) == ["ChildSaInboundReady", "ChildSaEstablished"]


def test_initiator_side_announces_nothing_early() -> None:
    net = default_net()
    establish(net)
    assert _kinds(net.a.events) == ["ChildSaEstablished"]
    assert _kinds(net.b.events) == ["ChildSaInboundReady", "ChildSaEstablished"]


def test_no_message_3_withdraws_the_inbound_half_when_the_exchange_times_out() -> None:
    net = _held_at_qm3()
    (ready,) = net.b.of(ChildSaInboundReady)
    assert isinstance(ready, ChildSaInboundReady)
    net.advance(60)  # B retransmits message 2, A answers with message 3 again: lost
    assert _kinds(net.b.events) == ["ChildSaInboundReady", "ChildSaInboundWithdrawn"]
    (gone,) = net.b.of(ChildSaInboundWithdrawn)
    assert isinstance(gone, ChildSaInboundWithdrawn)
    assert (gone.spi_in, gone.spi_out, gone.child_id) == (
        ready.pair.spi_in, ready.pair.spi_out, ready.pair.child_id)
    assert gone.conn == "gw" and gone.child == ready.pair.child
    (ike,) = net.b.engine.status(net.now).to_json()["ike_sas"]
    assert ike["children"] == []


def test_message_3_with_a_bad_hash_establishes_nothing_and_the_half_goes_at_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ikev1d")
    net = default_net()
    _, is_qm3 = _is_qm3_from_a()

    def corrupt(d: Datagram) -> Datagram:
        if not is_qm3(d):
            return d
        data = bytearray(d.data)
        data[-1] ^= 0x01  # the last encrypted block: HASH(3) no longer verifies
        return Datagram(bytes(data), d.local, d.remote)

    net.rewrite = corrupt
    establish(net)
    assert _kinds(net.b.events) == ["ChildSaInboundReady"]
    assert any("dropping unauthenticated" in r.getMessage() for r in caplog.records)
    net.advance(60)
    assert _kinds(net.b.events) == ["ChildSaInboundReady", "ChildSaInboundWithdrawn"]


def test_isakmp_sa_going_away_withdraws_the_inbound_half() -> None:
    net = _held_at_qm3()
    (ready,) = net.b.of(ChildSaInboundReady)
    assert isinstance(ready, ChildSaInboundReady)
    net.b.engine.terminate("gw", net.now)
    net.pump()
    net.b.events += net.b.engine.events()
    assert "ChildSaInboundWithdrawn" in _kinds(net.b.events)
    assert "ChildSaEstablished" not in _kinds(net.b.events)
    (gone,) = net.b.of(ChildSaInboundWithdrawn)
    assert isinstance(gone, ChildSaInboundWithdrawn)
    assert gone.spi_in == ready.pair.spi_in
    # Withdrawn once only, even as timers run on.
    net.advance(60)
    assert len(net.b.of(ChildSaInboundWithdrawn)) == 1


def test_with_the_commit_bit_too_the_inbound_half_comes_first_and_connected_last() -> None:
    net = default_net()
    net.rewrite = commit_bit_in_qm1()
    establish(net)
    assert _kinds(net.b.events) == ["ChildSaInboundReady", "ChildSaEstablished"]
    headers = [split_message(d.data)[0] for _, d in net.wire]
    qm = [h for h in headers if h.exchange_type == ExchangeType.QUICK_MODE]
    assert [bool(h.flags & Flags.COMMIT) for h in qm] == [True, True, False]
    assert headers[-1].exchange_type == ExchangeType.INFORMATIONAL  # CONNECTED
    assert len(net.a.of(ChildSaEstablished)) == 1
