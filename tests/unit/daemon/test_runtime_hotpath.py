"""What the daemon does around the engine on every input: the event table, the timer's
re-arming, and the garbage collector's settings while it runs."""

from __future__ import annotations

import asyncio
import gc
import math
import weakref
from typing import get_args

import pytest

from ikev1d.daemon.collector import GC_YOUNG_THRESHOLD
from ikev1d.daemon.runtime import TIMER_GRID_S
from ikev1d.engine.api import ConnectionFailed, Endpoint, Event, IkeSaDeleted
from tests.unit.daemon._fakes import UdpPeer, free_udp_ports, make_config, running_daemon


def test_every_engine_event_type_has_a_handler() -> None:
    """The daemon looks events up by their exact type: a type missing from the table
    would be dropped without a word."""
    async def body() -> None:
        async with running_daemon() as h:
            handled = set(h.daemon._handlers)
            assert set(get_args(Event)) <= handled

    asyncio.run(body())


def test_events_reach_their_handlers_in_order() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            seen: list[str] = []
            daemon = h.daemon
            daemon._handlers[ConnectionFailed] = lambda e: seen.append(f"failed {e.reason}")
            daemon._handlers[IkeSaDeleted] = lambda e: seen.append(f"deleted {e.reason}")
            h.engine.emit(ConnectionFailed("site-ok", None, "one"))
            h.engine.emit(IkeSaDeleted("site-ok", 1, "two"))
            h.engine.emit(ConnectionFailed("site-ok", None, "three"))
            daemon._pump()
            assert seen == ["failed one", "deleted two", "failed three"]

    asyncio.run(body())


def test_timer_is_rearmed_exactly_when_the_deadline_moves_to_another_slot() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            engine, daemon = h.engine, h.daemon
            grid = TIMER_GRID_S
            base = math.ceil(daemon.now() / grid) * grid + 100 * grid
            late = engine.timers.schedule(base + 0.5 * grid, lambda now: None)
            daemon._pump()
            first = daemon._timer
            assert first is not None and daemon._timer_at == pytest.approx(base + grid)
            # A later deadline, and one in the same slot: the loop's timer stays as it is.
            engine.timers.schedule(base + 3.5 * grid, lambda now: None)
            engine.timers.schedule(base + 0.9 * grid, lambda now: None)
            daemon._pump()
            assert daemon._timer is first
            # An earlier slot: re-armed there.
            early = engine.timers.schedule(base - 1.5 * grid, lambda now: None)
            daemon._pump()
            assert daemon._timer is not first and daemon._timer_at == pytest.approx(base - grid)
            assert first.cancelled()
            # The earliest one cancelled: back to the slot of the next deadline.
            early.cancel()
            late.cancel()
            daemon._pump()
            assert daemon._timer_at == pytest.approx(base + grid)
            # None left: no timer at all.
            for timer in list(engine.timers._heap):
                timer[2].cancel()
            daemon._pump()
            assert daemon._timer is None and daemon._timer_at is None

    asyncio.run(body())


def test_collector_is_tuned_while_running_and_restored_at_stop() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()

    async def body() -> None:
        async with running_daemon() as h:
            assert gc.isenabled()
            assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
            assert gc.get_threshold()[1:] == before[1:]
            assert gc.get_freeze_count() > frozen_before
            # What survives a collection from now on is frozen after it.
            collector = h.daemon._collector
            assert collector is not None
            assert collector._after_collection in gc.callbacks
            kept = [object()]
            gc.collect(0)
            assert not any(o is kept for g in range(3) for o in gc.get_objects(g))

    asyncio.run(body())
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cycles_made_while_running_are_still_collected() -> None:
    """Freezing must not keep a reference cycle that the daemon made and dropped before
    a collection found it alive (what frees the others: ``test_collector.py``)."""
    class Node:
        other: object = None

    async def body() -> None:
        async with running_daemon() as h:
            a, b = Node(), Node()
            a.other, b.other = b, a
            gone = weakref.ref(a)
            del a, b
            h.daemon._pump()  # what every input does
            await asyncio.sleep(0)
            gc.collect()
            assert gone() is None

    asyncio.run(body())


def test_a_reload_runs_no_full_collection() -> None:
    """Start-up's objects are frozen (never collected by the cyclic collector). The
    configuration a reload replaces has no cycles and goes by reference counting, so a
    reload adds no full collection (over a hub's configuration one stopped the loop
    for 400 ms): frozen leftovers wait for the collector's check (its own tests)."""
    class Node:
        other: object = None

    async def body() -> None:
        a, b = Node(), Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        port, port_nat_t = free_udp_ports(2)
        async with running_daemon(
                config_loader=lambda path: make_config(port, port_nat_t)) as h:
            collector = h.daemon._collector
            assert collector is not None
            old = weakref.ref(h.daemon._config) if h.daemon._config is not None else None
            del a, b
            full = collector.full_collections
            ok, message = await h.daemon.reload()
            assert ok, message
            assert collector.full_collections == full
            assert gone() is not None  # frozen at start-up: left to the check
            assert old is not None and old() is None  # the replaced configuration: freed

    asyncio.run(body())


def test_a_datagram_reaches_the_engine_with_the_loop_clock_and_its_answer_leaves() -> None:
    """The reader calls the engine directly: with the loop's clock (the engine's timers
    run on it), then sends what the engine wants sent."""
    async def body() -> None:
        async with running_daemon() as h:
            engine, daemon = h.engine, h.daemon
            seen: list[float] = []
            receive = engine.receive_datagram

            def recording(data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
                seen.append(now)
                receive(data, local, remote, now)

            engine.receive_datagram = recording  # type: ignore[method-assign]
            peer = UdpPeer()
            try:
                peer.send(b"ping-7", ("127.0.0.1", h.config.daemon.port))
                data, _ = await peer.recv()
            finally:
                peer.close()
            assert data == b"pong-7"
            assert len(seen) == 1
            assert daemon.now() - 1.0 < seen[0] <= daemon.now()

    asyncio.run(body())
