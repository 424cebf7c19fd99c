"""The anti-replay window (RFC 4303 §3.4.3) against a plain set-based model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ikev1d.dataplane.replay import ReplayWindow


def test_fresh_window_accepts_anything_but_zero() -> None:
    w = ReplayWindow(64)
    assert not w.check(0)  # the first packet is number 1 (RFC 4303 §3.3.3)
    assert w.check(1) and w.check(2**32 - 1)


def test_duplicate_and_left_of_window() -> None:
    w = ReplayWindow(64)
    w.update(100)
    assert not w.check(100)
    assert w.check(37) and not w.check(36)  # 37..100 is the window
    w.update(37)
    assert not w.check(37) and w.check(38)
    assert w.seen(100) and w.seen(37) and not w.seen(38)


def test_slide_forgets_and_far_jump_resets() -> None:
    w = ReplayWindow(32)
    for seq in range(1, 33):
        w.update(seq)
    assert not any(w.check(s) for s in range(1, 33))
    w.update(40)  # window 9..40: 9..32 seen, 33..39 not
    assert [s for s in range(1, 41) if w.check(s)] == list(range(33, 40))
    w.update(1000)  # further than the window: everything older is out
    assert [s for s in range(900, 1001) if w.check(s)] == list(range(969, 1000))


def test_update_is_idempotent_and_ignores_the_stale() -> None:
    w = ReplayWindow(32)
    w.update(50)
    w.update(50)
    w.update(3)  # left of the window: no effect, no error
    w.update(0)
    assert w.top == 50 and not w.seen(3) and w.seen(50)


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ReplayWindow(0)


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from([1, 32, 64, 128]),
    seqs=st.lists(st.integers(min_value=0, max_value=400), max_size=120),
)
def test_matches_model(size: int, seqs: list[int]) -> None:
    """Accept a number iff it is > 0, unseen, and > highest - size; as a set-based model."""
    w = ReplayWindow(size)
    seen: set[int] = set()
    top = 0
    for seq in seqs:
        new = seq > 0 and seq not in seen and seq > top - size
        assert w.check(seq) == new, (seq, top)
        if new:
            w.update(seq)
            seen.add(seq)
            top = max(top, seq)
        assert w.top == top
