"""A bug met by some input costs exactly the SA it happened in, and one log line."""

from __future__ import annotations

import logging
import random

import pytest

from ikev1d.engine.exchanges.main_mode import MainMode
from ikev1d.wire import Attribute, IkeAttr
from tests.unit.engine._mm import ike_transform, message_1, tables
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, default_net, establish

LOCAL = (B_ADDR, 500)


def test_huge_attributes_cost_no_state_and_no_internal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """64 KB TLV values (RFC 2408 section 3.3 allows them) where lifetimes and key
    lengths are read: interpreted within bounds, never an exception."""
    net = default_net(b_remote_addrs='["%any"]')
    engine = net.b.engine
    rng = random.Random(3)
    huge = Attribute(IkeAttr.LIFE_DURATION, b"\xff" * 3000)
    huge_key = Attribute(IkeAttr.KEY_LENGTH, b"\x01" * 3000)
    with caplog.at_level(logging.INFO):
        for i in range(200):
            src = (f"198.51.100.{i % 250 + 1}", 500)
            transform = ike_transform(life=huge) if i % 2 else ike_transform(key_length=huge_key)
            engine.receive_datagram(message_1(rng.randbytes(8), [transform]), LOCAL, src, net.now)
    assert "internal error" not in caplog.text
    # Only the acceptable offers (the huge lifetime, clamped) are half-open.
    assert tables(engine)["half_open"] == 100
    net.advance(120)
    assert tables(engine) == {"sas": 0, "initiating": 0, "half_open": 0, "timers": 0, "spis": 0}


def test_an_internal_error_removes_exactly_its_sa_and_logs_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = default_net()
    establish(net)
    engine = net.b.engine
    before = tables(engine)
    rng = random.Random(4)

    def broken(self: MainMode, *args: object) -> None:
        raise OverflowError("int too large to convert to float")

    # Half-open SAs that meet a bug in message 3: each goes, the established one stays.
    requests = [message_1(rng.randbytes(8), [ike_transform()]) for _ in range(8)]
    for data in requests:
        engine.receive_datagram(data, LOCAL, (A_ADDR, 500), net.now)
    responses = engine.datagrams_to_send()
    assert tables(engine)["half_open"] == 8
    monkeypatch.setattr(MainMode, "_process_message_3", broken)
    with caplog.at_level(logging.INFO):
        for response in responses:
            # A message 3 carrying the responder's cookie (its content does not matter).
            engine.receive_datagram(response.data, LOCAL, (A_ADDR, 500), net.now)
    assert tables(engine) == before
    assert len(engine.all_sas()) == 1 and engine.all_sas()[0].usable
    lines = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert 1 <= len(lines) <= 10  # rate-limited: a burst, then silence
    assert all(r.levelno == logging.ERROR for r in lines)


def test_an_internal_error_in_a_timer_removes_its_sa(monkeypatch: pytest.MonkeyPatch) -> None:
    net = default_net()
    establish(net)
    engine = net.b.engine
    (sa,) = engine.all_sas()

    def broken(*args: object) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(engine.lifecycle, "_ike_rekey", broken)
    monkeypatch.setattr(engine.lifecycle, "_dpd_tick", broken)
    net.drop = lambda d: True  # B alone: nothing from A renews or deletes anything
    if sa.rekey_at is None:
        raise AssertionError("no renewal scheduled")
    net.advance(sa.rekey_at - net.now + 1)
    assert sa not in engine.all_sas()
    assert tables(engine) == {"sas": 0, "initiating": 0, "half_open": 0, "timers": 0, "spis": 0}
