"""The engine's timer heap: closures and (callback, argument) timers alike."""

from __future__ import annotations

from ikev1d.engine.timers import Timers


def test_schedule_call_passes_its_argument_and_runs_in_deadline_order() -> None:
    timers = Timers()
    seen: list[tuple[str, float]] = []

    def on(arg: str, now: float) -> None:
        seen.append((arg, now))

    timers.schedule_call(2.0, on, "second")
    timers.schedule_call(1.0, on, "first")
    timers.schedule(1.5, lambda now: seen.append(("closure", now)))
    assert timers.next_deadline() == 1.0
    timers.run_due(1.7)
    assert seen == [("first", 1.7), ("closure", 1.7)]
    timers.run_due(5.0)
    assert seen[-1] == ("second", 5.0) and len(timers) == 0


def test_cancelled_call_lets_go_of_its_argument_and_never_runs() -> None:
    timers = Timers()
    ran: list[object] = []
    payload = object()
    timer = timers.schedule_call(1.0, lambda arg, now: ran.append(arg), payload)
    timer.cancel()
    assert timer.arg is None and timer.cancelled
    timers.run_due(2.0)
    assert ran == [] and len(timers) == 0
