"""The daemon's policy for the cyclic garbage collector (``ikev1d.daemon.collector``)."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from ikev1d.daemon import collector as collector_module
from ikev1d.daemon.collector import GC_YOUNG_THRESHOLD, Collector


class Node:
    other: object = None


class Settled:
    """A settled Collector whose scheduled calls wait in ``due`` until run."""

    def __init__(self) -> None:
        self.due: list[Callable[[], None]] = []
        self.collector = Collector(self.due.append)

    def run_due(self) -> None:
        due, self.due[:] = list(self.due), []
        for fn in due:
            fn()


@pytest.fixture
def settled() -> Iterator[Settled]:
    before = gc.get_threshold()
    s = Settled()
    s.collector.settle()
    try:
        yield s
    finally:
        s.collector.restore()
        assert gc.get_threshold() == before


def _in_a_generation(obj: object) -> bool:
    return any(o is obj for generation in range(3) for o in gc.get_objects(generation))


def _cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_settle_freezes_start_up_raises_the_young_threshold_and_restore_undoes_it() -> None:
    before = gc.get_threshold()
    collector = Collector(lambda fn: None)
    collector.settle()
    try:
        assert gc.get_threshold() == (max(before[0], GC_YOUNG_THRESHOLD), *before[1:])
        assert 0 < gc.get_freeze_count() <= collector.frozen_after_full  # some freed since
        assert collector.full_collections == 1
    finally:
        collector.restore()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert collector._after_collection not in gc.callbacks


def test_what_survives_a_collection_is_frozen_after_it(settled: Settled) -> None:
    kept = [Node()]  # a container the collector tracks
    assert _in_a_generation(kept)
    gc.collect(0)
    assert not _in_a_generation(kept)  # in the permanent generation: never scanned again
    assert gc.is_tracked(kept)


def test_a_frozen_object_is_still_freed_by_its_reference_count(settled: Settled) -> None:
    node = Node()
    gone = weakref.ref(node)
    gc.collect(0)
    assert not _in_a_generation(node)
    del node
    assert gone() is None


def test_a_cycle_dropped_before_a_collection_is_collected(settled: Settled) -> None:
    gone = _cycle()
    gc.collect(0)
    assert gone() is None


def test_a_cycle_frozen_alive_and_dropped_later_waits_for_a_full_collection(
    settled: Settled, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    gc.collect(0)  # alive: frozen
    del a, b
    gc.collect()
    assert gone() is not None  # frozen: no collection frees it ...
    # ... but the full one does, which the check runs once the frozen have doubled.
    monkeypatch.setattr(collector_module, "FULL_COLLECTION_MIN_FROZEN", 0)
    monkeypatch.setattr(collector_module, "FULL_COLLECTION_INTERVAL_S", 0.0)
    settled.collector.frozen_after_full = gc.get_freeze_count() // 10
    gc.collect(0)
    settled.run_due()
    assert gone() is None and settled.collector.full_collections == 2
    assert gc.get_freeze_count() > 0


def test_the_full_collection_is_due_when_the_frozen_objects_have_doubled(
    settled: Settled, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked at most once per interval; due only once the frozen objects have doubled
    since the last full collection and are at least the floor."""
    collector = settled.collector
    monkeypatch.setattr(collector_module, "FULL_COLLECTION_MIN_FROZEN", 0)
    monkeypatch.setattr(collector_module, "FULL_COLLECTION_INTERVAL_S", 0.0)
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    gc.collect(0)
    del a, b
    # A check is scheduled on the loop, never run inside the collector.
    assert len(settled.due) == 1
    settled.run_due()
    assert collector.full_collections == 1 and gone() is not None  # not doubled
    # As if the last full collection had left a tenth of what is frozen now.
    collector.frozen_after_full = gc.get_freeze_count() // 10
    gc.collect(0)
    settled.run_due()
    assert collector.full_collections == 2 and gone() is None
    # The floor: nothing is due below it, however much the frozen objects grew.
    monkeypatch.setattr(collector_module, "FULL_COLLECTION_MIN_FROZEN", 10**12)
    collector.frozen_after_full = 1
    gc.collect(0)
    settled.run_due()
    assert collector.full_collections == 2


def test_the_check_runs_at_most_once_per_interval(
    settled: Settled, monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [time.monotonic() + 1e6]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(collector_module, "FULL_COLLECTION_INTERVAL_S", 60.0)
    gc.collect(0)  # long after start-up's full collection: a check ...
    settled.run_due()  # ... and the interval runs from now
    for _ in range(3):
        gc.collect(0)
    assert settled.due == []
    clock[0] += 61
    for _ in range(3):
        gc.collect(0)
    assert len(settled.due) == 1  # one check, however many collections
    settled.run_due()
    gc.collect(0)
    assert settled.due == []  # the next one an interval later
