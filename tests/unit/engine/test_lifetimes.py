"""Lifetime floors and renewals asked for by the data plane (volume, sequence numbers).

Two engines in memory, as in test_engine.py.
"""

from __future__ import annotations

import pytest

from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, IkeSaEstablished
from ikev1d.engine.lifecycle import RENEWED_DELETE_DELAY_S, RETIRE_MAX_S
from ikev1d.engine.lifetimes import (
    MIN_LIFE_BYTES,
    RENEWAL_RETRANSMITS,
    agreed_life_bytes,
    agreed_lifetime,
    rekey_delay,
)
from tests.unit.engine.test_engine import (
    A_ADDR,
    B_ADDR,
    Net,
    _short_lifetimes,
    config_text,
    establish,
    make_net,
)


def _net(a_ike: str, a_child: str, b_ike: str = "4h", b_child: str = "1h",
         b_daemon: str = "") -> Net:
    return make_net(
        _short_lifetimes(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"),
                         a_ike, a_child),
        _short_lifetimes(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24",
                                     extra_daemon=b_daemon), b_ike, b_child),
    )


def test_agreed_lifetime_takes_the_shorter_but_not_below_the_floor() -> None:
    assert agreed_lifetime(3600, None, 60, "x") == 3600
    assert agreed_lifetime(3600, 1800, 60, "x") == 1800
    assert agreed_lifetime(3600, 1, 60, "x") == 60  # raised to the floor
    assert agreed_lifetime(30, 1, 60, "x") == 30  # our own shorter choice stands
    assert agreed_lifetime(30, 20, 60, "x") == 30  # raised, but never above ours
    assert agreed_lifetime(3600, 1, 0, "x") == 1  # floor off


def test_renewal_margin_is_a_tenth_of_long_lifetimes() -> None:
    # 1 h with a 2 s retransmission interval: 6 minutes before the end, then up to
    # a minute of jitter; the responder waits half as long.
    assert rekey_delay(3600, True, 2.0, 0.0) == 3240
    assert rekey_delay(3600, True, 2.0, 1.0) == 3180
    assert rekey_delay(3600, False, 2.0, 0.0) == 3420
    assert rekey_delay(86400, True, 2.0, 0.0) == 86400 - 540  # at most 9 minutes


@pytest.mark.parametrize("lifetime", [2.0, 5.0, 12.0, 30.0])
def test_short_lifetimes_leave_time_for_retransmissions(lifetime: float) -> None:
    """Ten percent of a few seconds is less than one retransmission (or a slow host):
    the old SA would end before its successor is up. The margin is at least
    RENEWAL_RETRANSMITS intervals, never more than half the lifetime."""
    timeout = 1.0
    for fraction in (0.0, 0.5, 1.0):
        for initiator in (True, False):
            delay = rekey_delay(lifetime, initiator, timeout, fraction)
            assert delay >= lifetime / 2
            wanted = min(RENEWAL_RETRANSMITS * timeout, lifetime / 2)
            assert lifetime - delay >= (wanted if initiator else wanted / 2) - 1e-9
        # the initiator renews first, so the responder normally sees the new SA arrive
        assert rekey_delay(lifetime, True, timeout, fraction) < rekey_delay(
            lifetime, False, timeout, 0.0)


def test_peer_cannot_force_short_lifetimes_on_the_responder(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A proposes 10 s for Phase 1 and 2 s for Phase 2; B (4 h / 1 h) keeps the floors.
    net = _net("10s", "2s")
    with caplog.at_level("INFO"):
        establish(net)
    assert net.b.of(IkeSaEstablished) and net.b.of(ChildSaEstablished)
    (ike,) = net.b.engine.status(net.now).to_json()["ike_sas"]
    assert ike["rekey_in_s"] > 10
    (child,) = ike["children"]
    assert child["expires_in_s"] == 60
    assert "Phase 1 lifetime of 10 s, below the minimum of 300 s: using 300 s" in caplog.text
    assert "Phase 2 lifetime of 2 s, below the minimum of 60 s: using 60 s" in caplog.text


def test_floors_are_configurable_and_can_be_turned_off() -> None:
    net = _net("4h", "2s", b_daemon='min_phase2_lifetime = "0s"')
    establish(net)
    (ike,) = net.b.engine.status(net.now).to_json()["ike_sas"]
    assert ike["children"][0]["expires_in_s"] == 2


def test_soft_expiry_from_the_data_plane_renews_make_before_break() -> None:
    net = _net("4h", "1h")
    establish(net)
    (first,) = net.a.of(ChildSaEstablished)
    assert isinstance(first, ChildSaEstablished)
    net.a.engine.child_soft_expired(first.child_id, "life_bytes nearly reached", net.now)
    net.pump()
    new = [e for e in net.a.of(ChildSaEstablished) if e is not first]
    assert len(new) == 1
    assert not net.a.of(ChildSaDeleted)  # the old one still receives for a moment
    net.a.engine.child_soft_expired(first.child_id, "again", net.now)  # not renewed twice
    net.advance(RENEWED_DELETE_DELAY_S)
    deleted = net.a.of(ChildSaDeleted)
    assert [e.spi_in for e in deleted if isinstance(e, ChildSaDeleted)] == [first.spi_in]
    assert net.a.events.index(new[0]) < net.a.events.index(deleted[0])
    # Asked twice (both directions report): one renewal, not two.
    assert isinstance(new[0], ChildSaEstablished)
    net.a.engine.child_soft_expired(new[0].child_id, "again", net.now)
    net.a.engine.child_soft_expired(new[0].child_id, "again", net.now)
    net.pump()
    net.advance(RENEWED_DELETE_DELAY_S)
    assert len(net.a.of(ChildSaEstablished)) == 3
    # The responder may ask too: B renews its side of the newest pair.
    newest = net.b.of(ChildSaEstablished)[-1]
    assert isinstance(newest, ChildSaEstablished)
    net.b.engine.child_soft_expired(newest.child_id, "sequence numbers", net.now)
    net.pump()
    net.advance(RENEWED_DELETE_DELAY_S)
    assert len(net.b.of(ChildSaEstablished)) == 4
    # Whoever started a Quick Mode says so to its data plane (it installs on message
    # 2, the peer only on message 3): A for the first three pairs, B for the last.
    assert [e.initiator for e in net.a.of(ChildSaEstablished)
            if isinstance(e, ChildSaEstablished)] == [True, True, True, False]
    assert [e.initiator for e in net.b.of(ChildSaEstablished)
            if isinstance(e, ChildSaEstablished)] == [False, False, False, True]
    for peer in (net.a, net.b):
        (ike,) = peer.engine.status(net.now).to_json()["ike_sas"]
        assert len(ike["children"]) == 1


def test_hard_expiry_from_the_data_plane_deletes_on_both_sides() -> None:
    net = _net("4h", "1h")
    establish(net)
    (first,) = net.a.of(ChildSaEstablished)
    assert isinstance(first, ChildSaEstablished)
    net.a.engine.child_hard_expired(first.child_id, "life_bytes reached", net.now)
    net.pump()
    assert len(net.a.of(ChildSaDeleted)) == 1 and len(net.b.of(ChildSaDeleted)) == 1
    net.a.engine.child_hard_expired(first.child_id, "again", net.now)  # gone: nothing
    net.a.engine.child_soft_expired(12345, "unknown", net.now)
    net.pump()
    assert len(net.a.of(ChildSaDeleted)) == 1


def test_agreed_life_bytes_takes_the_smaller_but_not_below_the_floor() -> None:
    mib = MIN_LIFE_BYTES
    assert agreed_life_bytes(0, None, "x") == 0
    assert agreed_life_bytes(0, 4096, "x") == 4096 * 1024  # the peer's alone
    assert agreed_life_bytes(10 * mib, 4096, "x") == 4 * mib
    assert agreed_life_bytes(2 * mib, 4096, "x") == 2 * mib
    assert agreed_life_bytes(0, 1, "x") == mib  # raised to the floor
    assert agreed_life_bytes(mib // 2, 1, "x") == mib // 2  # our own smaller choice stands


def _volume(text: str, life_bytes: int) -> str:
    return text.replace('esp_proposals = ', f"life_bytes = {life_bytes}\nesp_proposals = ", 1)


@pytest.mark.parametrize(("a_bytes", "b_bytes", "agreed"), [
    (8 << 20, 0, 8 << 20),  # the initiator's kilobytes bind the responder too
    (8 << 20, 2 << 20, 2 << 20),  # ours is smaller: RESPONDER-LIFETIME tells the initiator
    (0, 2 << 20, 2 << 20),  # only the responder has a limit: enforced on its side
])
def test_kilobyte_lifetimes_reach_both_data_planes(
    a_bytes: int, b_bytes: int, agreed: int,
) -> None:
    net = make_net(
        _volume(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"), a_bytes),
        _volume(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"), b_bytes),
    )
    establish(net)
    (a_child,) = net.a.of(ChildSaEstablished)
    (b_child,) = net.b.of(ChildSaEstablished)
    assert isinstance(a_child, ChildSaEstablished) and isinstance(b_child, ChildSaEstablished)
    assert b_child.life_bytes == agreed
    # The initiator learns the responder's smaller volume only from RESPONDER-LIFETIME.
    assert a_child.life_bytes == (agreed if a_bytes else 0)


def test_a_phase2_renewal_under_way_moves_to_the_renewed_isakmp_sa() -> None:
    """Phase 2 falls due while our Phase 1 renewal is under way: its Quick Mode
    starts over the old ISAKMP SA. A peer that moved the IPsec SAs to the new
    ISAKMP SA (strongSwan does) no longer answers it there, so the take-over must
    renew the IPsec SA over the new ISAKMP SA, or it ends without a successor."""
    net = _net("4h", "1h")
    establish(net)
    (first,) = net.a.of(ChildSaEstablished)
    assert isinstance(first, ChildSaEstablished)
    (old,) = net.a.engine.all_sas()
    old_cookies = old.cky_i + old.cky_r
    # Quick Modes over the old ISAKMP SA go unanswered from now on.
    net.drop = lambda d: d.data[:16] == old_cookies and d.data[18] == 32
    net.a.engine.lifecycle._ike_rekey(old, net.now)  # Main Mode message 1 queued
    net.a.engine.child_soft_expired(first.child_id, "life_bytes nearly reached", net.now)
    net.pump()
    new_sa = [sa for sa in net.a.engine.all_sas() if sa is not old]
    assert len(new_sa) == 1
    established = [e for e in net.a.of(ChildSaEstablished)
                   if isinstance(e, ChildSaEstablished) and e is not first]
    assert [e.ike_id for e in established] == [new_sa[0].ike_id]
    net.drop = lambda d: False
    net.advance(RENEWED_DELETE_DELAY_S + 1)
    deleted = [e.spi_in for e in net.a.of(ChildSaDeleted) if isinstance(e, ChildSaDeleted)]
    # The renewed SA goes once its successor is up; a late answer over the old
    # ISAKMP SA (here the drop ends and a retransmission gets through) is deleted as
    # a duplicate; the successor stays, on both sides.
    assert first.spi_in in deleted and established[0].spi_in not in deleted
    for peer in (net.a, net.b):
        children = [c for sa in peer.engine.all_sas() for c in sa.children]
        assert len(children) == 1


def test_the_take_over_does_not_renew_an_sa_already_renewed() -> None:
    """An IPsec SA renewed a moment ago waits for its Delete (REKEYING) when Phase 1
    is renewed: only its successor is renewed over the new ISAKMP SA."""
    net = _net("4h", "1h")
    establish(net)
    (first,) = net.a.of(ChildSaEstablished)
    assert isinstance(first, ChildSaEstablished)
    net.a.engine.child_soft_expired(first.child_id, "life_bytes nearly reached", net.now)
    net.pump()
    (old,) = net.a.engine.all_sas()
    net.a.engine.lifecycle._ike_rekey(old, net.now)
    net.pump()
    assert len(net.a.of(ChildSaEstablished)) == 3  # first, its successor, the take-over's
    net.advance(RENEWED_DELETE_DELAY_S + 1)
    for peer in (net.a, net.b):
        children = [c for sa in peer.engine.all_sas() for c in sa.children]
        assert len(children) == 1


def test_ipsec_sas_outlive_a_replaced_isakmp_sa_that_reaches_its_lifetime() -> None:
    """A renewed Phase 1; B still keeps the IPsec SAs on the old ISAKMP SA until A's
    Delete for it comes (B renewed Phase 2 over it meanwhile). If the old ISAKMP SA
    reaches its lifetime on B first, its IPsec SAs move to the successor: dropped
    without a Delete they would vanish on B while A keeps sending on them."""
    net = _net("4h", "1h")
    establish(net)
    (old_a,) = net.a.engine.all_sas()
    net.a.engine.lifecycle._ike_rekey(old_a, net.now)
    (b_first,) = net.b.of(ChildSaEstablished)
    assert isinstance(b_first, ChildSaEstablished)
    net.b.engine.child_soft_expired(b_first.child_id, "life_bytes nearly reached", net.now)
    net.pump()

    def pairs() -> tuple[set[tuple[bytes, bytes]], set[tuple[bytes, bytes]]]:
        return ({(c.spi_in, c.spi_out) for sa in net.a.engine.all_sas() for c in sa.children},
                {(c.spi_out, c.spi_in) for sa in net.b.engine.all_sas() for c in sa.children})

    (old_b,) = [sa for sa in net.b.engine.all_sas()
                if (sa.cky_i, sa.cky_r) == (old_a.cky_i, old_a.cky_r)]
    kept_on_old = {(c.spi_out, c.spi_in) for c in old_b.children}
    assert kept_on_old, "B moved its IPsec SAs before A's Delete: nothing to test"
    a_pairs, b_pairs = pairs()
    assert a_pairs == b_pairs
    net.b.engine.lifecycle._ike_expired(old_b)
    net.pump()
    a_pairs, b_pairs = pairs()
    assert kept_on_old <= b_pairs and a_pairs == b_pairs
    net.advance(RETIRE_MAX_S + RENEWED_DELETE_DELAY_S + 5)
    a_pairs, b_pairs = pairs()
    assert a_pairs and a_pairs == b_pairs
