"""ESP-in-UDP in batches: what one TUN readiness event yields goes out in few sends (GSO).

The batches must be what UDP_SEGMENT can carry (every datagram the size of the
first but the last, which may be shorter; at most 64 of them and 65000 octets),
keep the packets' order, and lose none: B opens every datagram in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest

from ikev1d.dataplane.linux.gso import MAX_BYTES, MAX_SEGMENTS
from ikev1d.engine.api import Endpoint
from tests.unit.dataplane.test_userspace import Side, child, udp_packet


class BatchSide(Side):
    def __init__(self, local: str) -> None:
        super().__init__([local])
        self.batches: list[list[bytes]] = []
        self.fail = False

    def send_many(self, datagrams: Sequence[bytes], local: Endpoint, remote: Endpoint) -> None:
        if self.fail:
            raise OSError(105, "No buffer space available")
        self.batches.append(list(datagrams))


@pytest.fixture
def pair() -> Iterator[tuple[BatchSide, BatchSide]]:
    loop = asyncio.new_event_loop()
    a, b = BatchSide("10.1.0.1"), BatchSide("10.2.0.1")
    for s in (a, b):
        s.backend.attach(s.send_udp, loop)
        s.backend.attach_batch(s.send_many)
    a.backend.install(child(encap=True))
    b.backend.install(child(encap=True, initiator=False))
    yield a, b
    for s in (a, b):
        s.backend.close()
    loop.close()


def test_batches_fit_gso_and_lose_nothing(pair: tuple[BatchSide, BatchSide]) -> None:
    a, b = pair
    sizes = [1372] * 100 + [20] + [1372] * 3 + [600, 1372, 1372] + [100] * 70 + [1000]
    packets = [udp_packet("10.1.0.1", "10.2.0.1", i.to_bytes(4, "big") + bytes(n))
               for i, n in enumerate(sizes)]
    a.tun.to_read.extend(packets)
    a.backend.handle_tun_readable()
    assert a.udp_sent == []  # nothing went the one-by-one way
    assert sum(map(len, a.batches)) == len(packets)
    for batch in a.batches:
        assert 1 <= len(batch) <= MAX_SEGMENTS and sum(map(len, batch)) <= MAX_BYTES
        assert all(len(d) == len(batch[0]) for d in batch[:-1])
        assert len(batch[-1]) <= len(batch[0])
    assert len(a.batches) < len(packets) // 10
    for batch in a.batches:
        for esp in batch:
            b.backend.receive_esp_udp(esp, ("192.0.2.2", 4500), ("192.0.2.1", 4500))
    assert b.tun.written == packets
    c = a.backend.counters(0xC0000001, 0xC0000002)
    assert c.packets_out == len(packets) and c.bytes_out == sum(map(len, packets))


def test_a_refused_batch_is_counted_as_dropped(pair: tuple[BatchSide, BatchSide]) -> None:
    a, _b = pair
    a.fail = True
    a.tun.to_read.extend(udp_packet("10.1.0.1", "10.2.0.1", bytes(100)) for _ in range(5))
    a.backend.handle_tun_readable()
    c = a.backend.counters(0xC0000001, 0xC0000002)
    assert (c.packets_out, c.bytes_out) == (0, 0)
    assert c.drops is not None and c.drops.dropped_out == 5
    assert a.backend.drops["send_error"] == 5


def _sealed(a: BatchSide, count: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` inner packets and the ESP-in-UDP datagrams A sealed them into."""
    packets = [udp_packet("10.1.0.1", "10.2.0.1", i.to_bytes(4, "big") + bytes(100))
               for i in range(count)]
    a.tun.to_read.extend(packets)
    a.backend.handle_tun_readable()
    return packets, [esp for batch in a.batches for esp in batch]


def test_a_received_batch_is_opened_as_its_datagrams_one_by_one(
    pair: tuple[BatchSide, BatchSide],
) -> None:
    """Replays inside one batch, a forged datagram, an unknown SPI and garbage between
    good ones: each is judged as it would be alone, the rest delivered in order."""
    a, b = pair
    packets, esp = _sealed(a, 6)
    forged = bytearray(esp[3])
    forged[-1] ^= 1
    batch = [esp[0], esp[1], esp[1], bytes(forged), b"\x12\x34\x56\x78" + bytes(40), b"ab",
             esp[2], esp[0], esp[4], esp[3], esp[5]]
    b.backend.receive_esp_udp_many(batch, ("192.0.2.2", 4500), ("192.0.2.1", 4500))
    assert b.tun.written == [packets[i] for i in (0, 1, 2, 4, 3, 5)]
    assert b.backend.drops["replay"] == 2 and b.backend.drops["icv"] == 1
    assert b.backend.drops["unknown_spi"] == 1 and b.backend.drops["malformed"] == 1
    c = b.backend.counters(0xC0000002, 0xC0000001)
    assert c.packets_in == 6 and c.bytes_in == sum(map(len, packets))


def test_an_unexpected_error_loses_one_packet_of_a_batch_not_the_rest(
    pair: tuple[BatchSide, BatchSide], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = pair
    packets, esp = _sealed(a, 4)
    real = b.tun.write

    def write(packet: bytes) -> None:
        if packet == packets[1]:
            raise RuntimeError("a bug")
        real(packet)

    monkeypatch.setattr(b.tun, "write", write)
    with caplog.at_level("ERROR", logger="ikev1d.dataplane.userspace"):
        b.backend.receive_esp_udp_many(esp, ("192.0.2.2", 4500), ("192.0.2.1", 4500))
    assert b.tun.written == [packets[0], packets[2], packets[3]]
    assert [r.getMessage() for r in caplog.records] == [
        "userspace: unexpected error on UDP-encapsulated ESP"]


def test_a_batch_from_a_new_port_moves_the_sa_once_at_its_newest_packet(
    pair: tuple[BatchSide, BatchSide],
) -> None:
    a, b = pair
    _packets, esp = _sealed(a, 3)
    entry = b.backend.sad.by_spi_in(0xC0000002)
    assert entry is not None
    b.backend.receive_esp_udp_many(esp[1:], ("192.0.2.2", 4500), ("198.51.100.7", 4501))
    assert entry.remote == ("198.51.100.7", 4501)
    b.backend.receive_esp_udp_many(esp[:1], ("192.0.2.2", 4500), ("203.0.113.9", 1))
    assert entry.remote == ("198.51.100.7", 4501)  # older: ignored
