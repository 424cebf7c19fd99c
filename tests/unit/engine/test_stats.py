"""The engine's counters for monitoring, from two engines talking in memory."""

from __future__ import annotations

import logging
import random

import pytest

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.stats import EngineStats, failure_kind
from tests.unit.engine.test_engine import (
    A_ADDR,
    B_ADDR,
    _short_lifetimes,
    config_text,
    default_net,
    establish,
    make_net,
)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("NO-PROPOSAL-CHOSEN", "no_proposal_chosen"),
        ("peer sent NO-PROPOSAL-CHOSEN", "no_proposal_chosen"),
        ("authentication failed: peer sent INVALID-ID-INFORMATION", "authentication_failed"),
        ("Quick Mode HASH(1) does not verify", "authentication_failed"),
        ("INVALID-ID-INFORMATION", "invalid_id_information"),
        ("no response from peer", "timeout"),
        ("no response to Quick Mode", "timeout"),
        ("half-open SA expired", "timeout"),
        ("peer sent INVALID-SPI", "peer_notification"),
        ("cannot decrypt: bad padding", "malformed"),
        ("Main Mode message 3 lacks KE", "malformed"),
        ("something nobody foresaw", "other"),
    ],
)
def test_failure_kinds(reason: str, kind: str) -> None:
    assert failure_kind(reason) == kind


def test_snapshot_is_a_copy() -> None:
    stats = EngineStats()
    stats.handshake_started("1", True)
    copy = stats.snapshot()
    stats.handshake_started("1", True)
    stats.dpd_failures += 1
    assert copy.started["1", "initiator"] == 1 and copy.dpd_failures == 0
    assert stats.started["1", "initiator"] == 2


def test_successful_handshakes_count_on_both_sides() -> None:
    net = default_net()
    establish(net)
    a, b = net.a.engine.stats, net.b.engine.stats
    assert dict(a.started) == {("1", "initiator"): 1, ("2", "initiator"): 1}
    assert dict(a.succeeded) == {("1", "initiator"): 1, ("2", "initiator"): 1}
    assert dict(b.started) == {("1", "responder"): 1, ("2", "responder"): 1}
    assert dict(b.succeeded) == {("1", "responder"): 1, ("2", "responder"): 1}
    assert not a.failed and not b.failed
    assert net.a.engine.half_open_count() == 0 == net.b.engine.half_open_count()


def test_failures_count_by_kind_on_both_sides() -> None:
    net = default_net(a_proposals='["aes256-sha512-modp4096"]',
                      b_proposals='["aes128-sha256-modp2048"]')
    establish(net)
    assert dict(net.a.engine.stats.failed) == {("1", "initiator", "no_proposal_chosen"): 1}
    assert dict(net.b.engine.stats.failed) == {("1", "responder", "no_proposal_chosen"): 1}
    assert not net.a.engine.stats.succeeded

    net = default_net(a_esp='["aes256-sha512"]', b_esp='["aes128gcm16"]')
    establish(net)
    assert dict(net.a.engine.stats.failed) == {("2", "initiator", "no_proposal_chosen"): 1}
    assert dict(net.b.engine.stats.failed) == {("2", "responder", "no_proposal_chosen"): 1}
    assert net.a.engine.stats.succeeded == {("1", "initiator"): 1}


def test_wrong_psk_counts_as_authentication_failure(caplog: pytest.LogCaptureFixture) -> None:
    net = default_net(b_psk="another long but different secret")
    with caplog.at_level(logging.CRITICAL):
        establish(net)
        net.advance(30)
    assert net.a.engine.stats.failed["1", "initiator", "authentication_failed"] == 1


def test_half_open_gauge_and_drops() -> None:
    # Every request is admitted; a full table evicts its oldest entries (engine/halfopen.py).
    net = default_net(b_extra_daemon="half_open_total = 2")
    a_cfg = parse_config(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"))
    for seed in range(5):
        initiator = Engine(a_cfg, random_bytes=random.Random(100 + seed).randbytes)
        initiator.initiate("gw", None, net.now)
        for dgram in initiator.datagrams_to_send():
            net.b.engine.receive_datagram(dgram.data, dgram.remote, dgram.local, net.now)
    b = net.b.engine
    assert b.half_open_count() == 2
    assert b.stats.half_open_dropped == 3
    assert b.stats.started["1", "responder"] == 5
    net.advance(120)  # half_open_timeout
    assert b.half_open_count() == 0
    assert b.stats.failed["1", "responder", "timeout"] == 2


def test_renewals_count() -> None:
    net = make_net(
        _short_lifetimes(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"), "120s", "60s"),
        _short_lifetimes(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"), "120s", "60s"),
    )
    establish(net)
    net.advance(56)
    assert net.a.engine.stats.rekeys["2"] == 1 and net.b.engine.stats.rekeys["2"] == 1
    assert net.a.engine.stats.rekeys["1"] == 0
    net.advance(60)  # the ISAKMP SA renews at 90-108 s
    assert net.a.engine.stats.rekeys["1"] == 1
    assert net.a.engine.stats.rekeys["2"] == 2


def test_dpd_failure_counts(caplog: pytest.LogCaptureFixture) -> None:
    net = default_net()  # dpd_delay 30 s, dpd_timeout 150 s, dpd_action restart
    establish(net)
    net.advance(100)
    assert net.a.engine.stats.dpd_failures == 0
    net.drop = lambda d: d.local[0] == B_ADDR
    with caplog.at_level(logging.CRITICAL):
        net.advance(200)
    assert net.a.engine.stats.dpd_failures == 1
