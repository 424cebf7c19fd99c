"""Exchanges are found through one table keyed by exchange type."""

from __future__ import annotations

import logging

import pytest

from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaEstablished, ConnectionFailed, Datagram, IkeSaEstablished
from ikev1d.engine.exchanges import (
    DISPATCH,
    MainMode,
    Message,
    QuickMode,
    Transaction,
    informational,
    main_mode,
    quick_mode,
)
from ikev1d.engine.ike_sa import IkeSa
from ikev1d.wire import (
    ExchangeType,
    Header,
    NotifyPayload,
    NotifyType,
    ProtocolId,
    encode_header,
    encode_payloads,
    split_message,
)
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, default_net, establish


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


def _plain_notify(cky_i: bytes, cky_r: bytes, notify: NotifyType) -> bytes:
    payload = NotifyPayload(notify_type=notify, spi=cky_i + cky_r,
                            protocol_id=ProtocolId.ISAKMP)
    body = encode_payloads([payload])
    header = Header(initiator_cookie=cky_i, responder_cookie=cky_r,
                    next_payload=payload.payload_type,
                    exchange_type=ExchangeType.INFORMATIONAL, flags=0, message_id=0)
    return encode_header(header, len(body)) + body


def _deliver(src: Engine, dst: Engine) -> list[Datagram]:
    out = src.datagrams_to_send()
    for d in out:
        dst.receive_datagram(d.data, d.remote, d.local, 0.0)
    return out


def test_unprotected_notification_from_elsewhere_does_not_end_our_main_mode() -> None:
    net = default_net()
    a, b = net.a.engine, net.b.engine
    a.initiate("gw", None, 0.0)
    (message_1,) = a.datagrams_to_send()
    cky_i = message_1.data[:8]
    forged = _plain_notify(cky_i, b"\x01" * 8, NotifyType.NO_PROPOSAL_CHOSEN)
    a.receive_datagram(forged, (A_ADDR, 500), ("198.51.100.7", 500), 0.0)  # other address
    a.receive_datagram(forged, (A_ADDR, 500), (B_ADDR, 4501), 0.0)  # other port
    assert not any(isinstance(e, ConnectionFailed) for e in a.events())
    b.receive_datagram(message_1.data, message_1.remote, message_1.local, 0.0)
    net.pump()
    assert net.a.of(IkeSaEstablished) and net.b.of(IkeSaEstablished)


def test_unprotected_notification_from_the_peer_ends_main_mode_before_keys_exist() -> None:
    net = default_net()
    a = net.a.engine
    a.initiate("gw", None, 0.0)
    (message_1,) = a.datagrams_to_send()
    refusal = _plain_notify(message_1.data[:8], b"\x01" * 8, NotifyType.NO_PROPOSAL_CHOSEN)
    a.receive_datagram(refusal, (A_ADDR, 500), (B_ADDR, 500), 0.0)
    failed = [e for e in a.events() if isinstance(e, ConnectionFailed)]
    assert failed and "NO-PROPOSAL-CHOSEN" in failed[0].reason


def test_unprotected_notification_after_keys_exist_is_only_a_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    net = default_net()
    a, b = net.a.engine, net.b.engine
    a.initiate("gw", None, 0.0)
    for _ in range(2):  # messages 1 to 4: A now holds keys and has sent message 5
        _deliver(a, b)
        _deliver(b, a)
    (sa,) = a.all_sas()
    assert sa.keys is not None
    with caplog.at_level(logging.INFO, logger="ikev1d.engine"):
        a.receive_datagram(_plain_notify(sa.cky_i, sa.cky_r, NotifyType.AUTHENTICATION_FAILED),
                           sa.local, sa.remote, 0.0)
    assert not any(isinstance(e, ConnectionFailed) for e in a.events())
    assert "keys exist" in caplog.text
    net.pump()
    assert net.a.of(IkeSaEstablished)


@pytest.mark.parametrize("length", [7, 257])
def test_main_mode_nonce_outside_8_to_256_bytes_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, length: int,
) -> None:
    """RFC 2409 section 5: nonces of 8 to 256 bytes; the responder answers
    another length (in message 3) with PAYLOAD-MALFORMED."""
    monkeypatch.setattr(main_mode, "NONCE_LENGTH", length)
    net = default_net()
    with caplog.at_level(logging.INFO, logger="ikev1d.engine"):
        establish(net)
    assert not net.a.of(IkeSaEstablished) and not net.b.of(IkeSaEstablished)
    assert f"nonce of {length} bytes" in caplog.text
    assert net.b.engine.ike_sa_count() == 0


@pytest.mark.parametrize(("length", "ok"), [(7, False), (8, True), (256, True), (257, False)])
def test_quick_mode_nonce_length(monkeypatch: pytest.MonkeyPatch, length: int, ok: bool) -> None:
    monkeypatch.setattr(quick_mode, "NONCE_LENGTH", length)
    net = default_net()
    establish(net)
    assert net.a.of(IkeSaEstablished) and net.b.of(IkeSaEstablished)
    assert bool(net.b.of(ChildSaEstablished)) is ok
    assert bool(net.a.of(ChildSaEstablished)) is ok
