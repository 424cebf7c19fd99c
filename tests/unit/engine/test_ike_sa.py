"""The per-ISAKMP-SA work queue: one item at a time, XAUTH before Mode Config
before Quick Modes, first come first served within a kind."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from ikev1d.config import ChildConfig
from ikev1d.engine.ike_sa import QuickModeWork, WorkKind, WorkQueue


@dataclass(frozen=True)
class Xauth:
    kind: ClassVar[WorkKind] = WorkKind.XAUTH


def _qm(n: int) -> QuickModeWork:
    return QuickModeWork(ChildConfig(name=f"c{n}"), ipaddress.ip_network(f"10.1.{n}.0/24"),
                         ipaddress.ip_network("10.2.0.0/24"))


def test_one_item_at_a_time_in_order() -> None:
    queue = WorkQueue()
    first, second = _qm(1), _qm(2)
    queue.add(first)
    queue.add(second)
    assert queue.next() is first
    exchange = object()
    queue.running = exchange
    assert queue.next() is None  # one at a time
    assert not queue.ended(object())  # not the running one
    assert queue.next() is None
    assert queue.ended(exchange)
    assert queue.next() is second
    assert queue.next() is None and len(queue) == 0


def test_earlier_kinds_go_first() -> None:
    queue = WorkQueue()
    quick_modes = [_qm(n) for n in range(3)]
    for qm in quick_modes:
        queue.add(qm)
    xauth = Xauth()
    queue.add(xauth)
    order: list[object] = []
    while (item := queue.next()) is not None:
        order.append(item)
    assert order == [xauth, *quick_modes]
