"""Exchanges are found through one table keyed by exchange type."""

from __future__ import annotations

import logging

import pytest

from ikev1d.engine.api import ChildSaEstablished, IkeSaEstablished
from ikev1d.engine.exchanges import (
    DISPATCH,
    MainMode,
    Message,
    QuickMode,
    Transaction,
    informational,
)
from ikev1d.engine.ike_sa import IkeSa
from ikev1d.wire import ExchangeType, split_message
from tests.unit.engine.test_engine import default_net, establish


def test_the_table_covers_the_exchanges_we_speak() -> None:
    assert DISPATCH == {
        ExchangeType.IDENTITY_PROTECTION: MainMode.receive,
        ExchangeType.QUICK_MODE: QuickMode.receive,
        ExchangeType.INFORMATIONAL: informational.receive,
        ExchangeType.TRANSACTION: Transaction.receive,
    }


def test_engine_dispatches_through_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def record(sa: IkeSa, message: Message, now: float) -> None:
        seen.append(message.header.exchange_type)

    monkeypatch.setitem(DISPATCH, ExchangeType.QUICK_MODE, record)
    net = default_net()
    establish(net)
    assert len(net.b.of(IkeSaEstablished)) == 1
    # B's Quick Mode handler is the recorder: it saw QM1 and nothing came of it.
    assert ExchangeType.QUICK_MODE in seen
    assert not net.b.of(ChildSaEstablished)


def test_an_exchange_type_without_handler_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    net = default_net()
    establish(net)
    qm1 = next(d for s, d in net.wire
               if split_message(d.data)[0].exchange_type == ExchangeType.QUICK_MODE)
    data = bytearray(qm1.data)
    data[18] = ExchangeType.NEW_GROUP_MODE  # the exchange type octet (RFC 2408 section 3.1)
    with caplog.at_level(logging.INFO):
        net.b.engine.receive_datagram(bytes(data), qm1.remote, qm1.local, net.now)
    assert "ignoring unsupported NEW_GROUP_MODE exchange" in caplog.text
    assert net.b.engine.datagrams_to_send() == []
