"""The engine leaves no reference cycles behind.

The daemon freezes whatever survives a collection of the cyclic garbage collector
(``ikev1d.daemon.collector``): a frozen object is still freed when its reference count
drops to zero, but a reference cycle that becomes garbage after it was frozen stays
until the next full collection, which runs rarely. So an SA's state, once it ends,
must go by reference counting alone: these scenarios (both roles) make no cyclic
garbage at all.
"""

from __future__ import annotations

import collections
import gc
from collections.abc import Callable, Iterator

import pytest

from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, IkeSaDeleted, IkeSaEstablished
from tests.unit.engine.test_engine import (
    A_ADDR,
    B_ADDR,
    Net,
    _short_lifetimes,
    config_text,
    default_net,
    establish,
    make_net,
)


@pytest.fixture
def cyclic_garbage() -> Iterator[Callable[[], list[str]]]:
    """A function that collects and returns the types of the cyclic garbage made since
    the fixture began (or since it was last called)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.garbage.clear()

    def found() -> list[str]:
        gc.collect()
        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        gc.garbage.clear()
        return [f"{n} {kind}" for kind, n in kinds.most_common()]

    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _renewing_net(ike: str, child: str) -> Net:
    return make_net(
        _short_lifetimes(config_text(A_ADDR, B_ADDR, "10.1.0.0/24", "10.2.0.0/24"), ike, child),
        _short_lifetimes(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"), ike, child),
    )


def test_setting_up_and_deleting_sas_makes_no_cyclic_garbage(
    cyclic_garbage: Callable[[], list[str]],
) -> None:
    net = default_net()
    establish(net)
    assert net.a.of(ChildSaEstablished) and net.b.of(ChildSaEstablished)
    net.advance(100)  # DPD exchanges, the Main Mode state released
    assert cyclic_garbage() == []
    net.a.engine.terminate("gw", net.now)
    net.pump()
    net.advance(60)
    assert net.b.of(IkeSaDeleted) and net.b.of(ChildSaDeleted)
    assert cyclic_garbage() == []


def test_renewals_make_no_cyclic_garbage(cyclic_garbage: Callable[[], list[str]]) -> None:
    net = _renewing_net("120s", "60s")
    establish(net)
    net.advance(600)  # some ten Phase 2 and four Phase 1 renewals, each side's old SAs gone
    assert len(net.a.of(IkeSaEstablished)) >= 4 and len(net.a.of(ChildSaEstablished)) >= 8
    assert len(net.b.of(ChildSaDeleted)) >= 7
    assert cyclic_garbage() == []


def test_a_dead_peer_and_the_restart_make_no_cyclic_garbage(
    cyclic_garbage: Callable[[], list[str]],
) -> None:
    net = default_net()  # dpd_action = restart
    establish(net)
    net.drop = lambda d: d.local[0] == B_ADDR  # the responder goes silent
    net.advance(400)  # DPD gives up, the restart's Main Mode retransmits and gives up
    assert net.a.of(IkeSaDeleted) and net.a.of(ChildSaDeleted)
    assert cyclic_garbage() == []
