"""No cryptographic state moves before a message is authenticated: forged
messages from someone who sees (and can inject) the traffic change neither IV
chains nor message IDs nor ports, and leave nothing in the SA's tables."""

from __future__ import annotations

import logging
import random

import pytest

from ikev1d.engine.api import ChildSaEstablished, Datagram, IkeSaEstablished
from ikev1d.engine.ike_sa import IkeSa
from ikev1d.wire import (
    ExchangeType,
    Flags,
    HashPayload,
    Header,
    NoncePayload,
    encode_header,
    split_message,
)
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, Net, default_net, establish


def hold(net: Net, exchange: int, index: int) -> list[Datagram]:
    """Drop the index-th message of this exchange type from A, keeping it."""
    held: list[Datagram] = []
    seen = [0]

    def drop(d: Datagram) -> bool:
        header, _ = split_message(d.data)
        if d.local[0] != A_ADDR or header.exchange_type != exchange:
            return False
        seen[0] += 1
        if seen[0] == index + 1:
            held.append(d)
            return True
        return False

    net.drop = drop
    return held


def only_sa(net: Net) -> IkeSa:
    (sa,) = net.b.engine.all_sas()
    return sa


def forged(sa: IkeSa, exchange: int, message_id: int, payloads: list[object]) -> bytes:
    """Encrypted under the right key and IV (the best a forger could hope for),
    so it decrypts and parses; only its HASH is wrong."""
    data, _next = sa.encrypted_message(exchange, message_id, payloads,  # type: ignore[arg-type]
                                       sa.exchange_iv(message_id))
    return data


def test_forged_quick_mode_message_3_does_not_desynchronise_the_responder() -> None:
    net = default_net()
    held = hold(net, ExchangeType.QUICK_MODE, 1)  # QM3
    establish(net)
    assert len(held) == 1 and not net.b.of(ChildSaEstablished)
    sa = only_sa(net)
    (message_id,) = [m for m in sa.exchanges if m]
    iv_before = sa.exchange_ivs[message_id]
    for _ in range(3):
        data = forged(sa, ExchangeType.QUICK_MODE, message_id, [HashPayload(bytes(32))])
        net.b.engine.receive_datagram(data, (B_ADDR, 500), (A_ADDR, 500), net.now)
    assert sa.exchange_ivs[message_id] == iv_before
    d = held[0]
    net.b.engine.receive_datagram(d.data, d.remote, d.local, net.now)
    net.pump()
    assert len(net.b.of(ChildSaEstablished)) == 1


def test_forged_quick_mode_message_2_does_not_end_the_initiators_exchange() -> None:
    net = default_net()
    held: list[Datagram] = []

    def drop(d: Datagram) -> bool:
        header, _ = split_message(d.data)
        if d.local[0] == B_ADDR and header.exchange_type == ExchangeType.QUICK_MODE:
            held.append(d)
            return True
        return False

    net.drop = drop
    establish(net)
    (sa,) = net.a.engine.all_sas()
    (message_id,) = [m for m in sa.exchanges if m]
    data = forged(sa, ExchangeType.QUICK_MODE, message_id,
                  [HashPayload(bytes(32)), NoncePayload(bytes(32))])
    net.a.engine.receive_datagram(data, (A_ADDR, 500), (B_ADDR, 500), net.now)
    assert message_id in sa.exchanges
    net.drop = lambda d: False
    d = held[0]
    net.a.engine.receive_datagram(d.data, d.remote, d.local, net.now)
    net.pump()
    assert len(net.a.of(ChildSaEstablished)) == 1 and len(net.b.of(ChildSaEstablished)) == 1


def test_forged_quick_mode_requests_leave_nothing_behind(caplog: pytest.LogCaptureFixture) -> None:
    net = default_net()
    establish(net)
    sa = only_sa(net)
    before = (dict(sa.exchanges), sorted(sa.completed_message_ids), dict(sa.exchange_ivs),
              dict(sa.responses))
    rng = random.Random(8)
    with caplog.at_level(logging.INFO):
        caplog.clear()  # count only what the forged messages cause
        for _ in range(500):
            message_id = rng.randrange(1, 2**32)
            if rng.random() < 0.5:
                data = forged(sa, ExchangeType.QUICK_MODE, message_id, [HashPayload(bytes(32))])
            else:
                body = rng.randbytes(16 * rng.randint(1, 8))
                header = Header(sa.cky_i, sa.cky_r, 8, ExchangeType.QUICK_MODE,
                                Flags.ENCRYPTION, message_id)
                data = encode_header(header, len(body)) + body
            net.b.engine.receive_datagram(data, (B_ADDR, 500), (A_ADDR, 500), net.now)
    after = (dict(sa.exchanges), sorted(sa.completed_message_ids), dict(sa.exchange_ivs),
             dict(sa.responses))
    assert after == before
    assert sa.usable
    assert len(caplog.records) <= 12  # a burst of lines, then a rate limit


def test_completed_exchanges_are_remembered_for_a_while_only() -> None:
    net = default_net()
    establish(net)
    sa = only_sa(net)
    for _ in range(50):
        net.a.engine.initiate("gw", "net", net.now)
        net.pump()
    assert len(net.b.of(ChildSaEstablished)) == 51
    assert len(sa.completed_message_ids) <= 32
    assert len([m for m in sa.responses if m]) <= 32
    assert set(sa.exchange_ivs) <= set(sa.exchanges)


def test_forged_main_mode_message_5_does_not_move_the_responder_to_another_port() -> None:
    net = default_net()
    held = hold(net, ExchangeType.IDENTITY_PROTECTION, 2)  # message 5
    establish(net)
    assert len(held) == 1
    sa = only_sa(net)
    header, _ = split_message(held[0].data)
    body = random.Random(1).randbytes(64)
    data = encode_header(header, len(body)) + body
    net.b.engine.receive_datagram(data, (B_ADDR, 4500), (A_ADDR, 6666), net.now)
    assert sa.remote == (A_ADDR, 500) and sa.local == (B_ADDR, 500)


def test_main_mode_follows_an_authenticated_move_to_port_4500() -> None:
    net = default_net(a_encap=True)
    establish(net)
    assert len(net.b.of(IkeSaEstablished)) == 1
    (sa,) = net.b.engine.all_sas()
    assert sa.remote == (A_ADDR, 4500)
