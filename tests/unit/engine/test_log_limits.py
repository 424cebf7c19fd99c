"""Log lines that unauthenticated input can trigger are rate-limited per kind,
with a count of what was suppressed, and long lists are cut short."""

from __future__ import annotations

import logging
import random

import pytest

from ikev1d.config import parse_config
from ikev1d.engine import Engine
from ikev1d.engine.ratelimit import LogLimiter, truncated
from ikev1d.wire import Attribute, IkeAttr, Transform
from tests.unit.engine._mm import ike_transform, message_1
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, config_text

LOCAL = (B_ADDR, 500)


def responder() -> Engine:
    text = config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24", remote_addrs='["%any"]')
    return Engine(parse_config(text), random_bytes=random.Random(5).randbytes)


def unacceptable(number: int) -> Transform:
    """3DES: a cipher the configuration does not accept."""
    t = ike_transform(number)
    return Transform(t.number, t.transform_id,
                     (Attribute(IkeAttr.ENCRYPTION_ALGORITHM, 5), *t.attributes[2:]))


def test_no_proposal_chosen_is_rate_limited_and_lists_are_truncated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = responder()
    rng = random.Random(1)
    offer = [unacceptable(n) for n in range(1, 63)]
    with caplog.at_level(logging.INFO):
        for i in range(300):
            engine.receive_datagram(message_1(rng.randbytes(8), offer), LOCAL,
                                    (f"198.51.100.{i % 200 + 1}", 500), 1000.0 + i * 0.001)
        engine.receive_datagram(message_1(rng.randbytes(8), offer), LOCAL,
                                (A_ADDR, 500), 1100.0)
    lines = [r.getMessage() for r in caplog.records if "NO-PROPOSAL-CHOSEN" in r.getMessage()]
    assert 2 <= len(lines) <= 12
    assert all("... and 57 more" in line for line in lines)
    assert all(len(line) < 600 for line in lines)
    assert "similar messages suppressed" in lines[-1]
    suppressed = int(lines[-1].split("(")[-1].split()[0])
    assert len(lines) + suppressed == 301
    # Every request still got its NO-PROPOSAL-CHOSEN answer.
    assert len(engine.datagrams_to_send()) == 301


def test_malformed_and_unknown_sa_drops_are_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = responder()
    rng = random.Random(2)
    with caplog.at_level(logging.DEBUG, logger="ikev1d"):
        for i in range(2000):
            data = rng.randbytes(8) + rng.randbytes(8) + bytes([1, 0x10, 2, 0]) + bytes(8)
            engine.receive_datagram(data if i % 2 else data[:20], LOCAL, (A_ADDR, 500), 1000.0)
    assert len([r for r in caplog.records if r.levelno >= logging.INFO]) <= 20


def test_the_limiter() -> None:
    limiter = LogLimiter(burst=3, interval_s=10.0)
    assert [limiter.allow("x", 0.0)[0] for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow("y", 0.0) == (True, 0)
    assert limiter.allow("x", 10.0) == (True, 2)
    assert limiter.allow("x", 10.0) == (False, 0)
    assert truncated(["a", "b", "c"], 2) == "a, b, ... and 1 more"
    assert truncated(["a"], 2, total=40) == "a, ... and 39 more"
    assert truncated([], 2) == ""
