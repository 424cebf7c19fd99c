"""Raw ESP in batches: one sendmmsg per readiness event, one recvmmsg per 64 packets.

The fake raw sockets here have the batch calls of ``RawEspSocket`` (``send_many``,
``recv_many``): A's batches are carried into B's receive queue as they were sent.
A bad packet in the middle of a received batch (a wrong ICV, an unknown SPI, a
replay) is lost alone; a packet the kernel refused in the middle of a sent batch
is counted as dropped alone; a truncated datagram is a drop with a log line.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator

import pytest

from ikev1d.dataplane.sealing import RAW_BATCH, RawBatchLike
from tests.unit.dataplane.test_userspace import FakeRaw, Side, child, udp_packet


class FakeBatchRaw(FakeRaw):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[tuple[bytes, str, str]]] = []
        self.received: deque[tuple[list[bytes], int] | OSError] = deque()
        self.refuse: set[int] = set()
        """Indexes (within a batch) the kernel refuses."""

    def send_many(self, packets: list[tuple[bytes, str, str]]) -> list[tuple[int, OSError]]:
        self.batches.append(list(packets))
        failed = [(i, OSError(105, "No buffer space available")) for i in sorted(self.refuse)
                  if i < len(packets)]
        self.sent.extend(p for i, p in enumerate(packets) if i not in self.refuse)
        return failed

    def recv_many(self) -> tuple[list[bytes], int] | None:
        if not self.received:
            return None
        item = self.received.popleft()
        if isinstance(item, OSError):
            raise item
        return item


class BatchRawSide(Side):
    raw: FakeBatchRaw

    def __init__(self, local: str) -> None:
        super().__init__([local])
        self.raw = FakeBatchRaw()
        self.backend.raw4 = self.raw


@pytest.fixture
def sides(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[BatchRawSide, BatchRawSide]]:
    a, b = BatchRawSide("10.1.0.1"), BatchRawSide("10.2.0.1")
    for s in (a, b):
        s.backend.attach(s.send_udp, loop)
    a.backend.install(child("aes256-sha256"))
    b.backend.install(child("aes256-sha256", initiator=False))
    yield a, b
    for s in (a, b):
        s.backend.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _seal(a: BatchRawSide, count: int) -> list[bytes]:
    inner = [udp_packet("10.1.0.1", "10.2.0.1", i.to_bytes(2, "big") * 100) for i in range(count)]
    a.raw.sent.clear()
    a.raw.batches.clear()
    a.tun.to_read.extend(inner)
    a.backend.handle_tun_readable()
    return inner


def test_the_fake_is_a_batching_socket() -> None:
    assert isinstance(FakeBatchRaw(), RawBatchLike)
    assert not isinstance(FakeRaw(), RawBatchLike)


def test_one_readiness_event_is_one_send_per_batch(
        sides: tuple[BatchRawSide, BatchRawSide]) -> None:
    a, b = sides
    inner = _seal(a, RAW_BATCH + 6)
    assert [len(batch) for batch in a.raw.batches] == [RAW_BATCH, 6]
    assert {(local, remote) for batch in a.raw.batches for _, local, remote in batch} == {
        ("192.0.2.1", "192.0.2.2")}
    esp = [p for batch in a.raw.batches for p, _, _ in batch]
    b.raw.received.extend([(esp[:RAW_BATCH], 0), (esp[RAW_BATCH:], 0)])
    b.backend.handle_raw_readable()
    assert b.tun.written == inner
    counters = a.backend.counters(0xC0000001, 0xC0000002)
    assert counters.packets_out == RAW_BATCH + 6


def test_a_refused_packet_in_a_sent_batch_is_dropped_alone(
        sides: tuple[BatchRawSide, BatchRawSide]) -> None:
    a, _ = sides
    a.raw.refuse = {3}
    inner = _seal(a, 8)
    assert len(a.raw.batches) == 1 and len(a.raw.sent) == 7
    counters = a.backend.counters(0xC0000001, 0xC0000002)
    assert counters.packets_out == 7
    assert counters.bytes_out == sum(map(len, inner)) - len(inner[3])
    assert a.backend.drops["send_error"] == 1
    assert counters.drops is not None and counters.drops.dropped_out == 1


@pytest.mark.parametrize("spoil", ["icv", "unknown_spi", "replay", "malformed"])
def test_a_bad_packet_in_a_received_batch_is_lost_alone(
        sides: tuple[BatchRawSide, BatchRawSide], spoil: str) -> None:
    a, b = sides
    inner = _seal(a, 9)
    esp = [p for p, _, _ in a.raw.sent]
    bad = list(esp)
    if spoil == "icv":
        bad[4] = esp[4][:-1] + bytes([esp[4][-1] ^ 1])
    elif spoil == "unknown_spi":
        bad[4] = b"\x00\x00\x00\x09" + esp[4][4:]
    elif spoil == "replay":
        bad[4] = esp[2]
    else:
        bad[4] = b""  # what recv_many gives for a datagram shorter than its IP header
    b.raw.received.append((bad, 0))
    b.backend.handle_raw_readable()
    # Only the spoilt one is lost (a replayed copy of 2 is refused; 4 never came).
    assert b.tun.written == inner[:4] + inner[5:]
    assert b.backend.drops[spoil] == 1
    assert sum(b.backend.drops.values()) == 1


def test_truncated_datagrams_are_dropped_and_logged(
        sides: tuple[BatchRawSide, BatchRawSide], caplog: pytest.LogCaptureFixture) -> None:
    a, b = sides
    inner = _seal(a, 3)
    esp = [p for p, _, _ in a.raw.sent]
    b.raw.received.append((esp, 2))
    with caplog.at_level("INFO", logger="ikev1d.dataplane.userspace"):
        b.backend.handle_raw_readable()
    assert b.tun.written == inner
    assert b.backend.drops["malformed"] == 2
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_a_socket_error_between_batches_loses_nothing_else(
        sides: tuple[BatchRawSide, BatchRawSide]) -> None:
    a, b = sides
    inner = _seal(a, 4)
    esp = [p for p, _, _ in a.raw.sent]
    b.raw.received.extend([(esp[:2], 0), OSError(113, "No route to host"), (esp[2:], 0)])
    b.backend.handle_raw_readable()
    assert b.tun.written == inner
    assert b.backend.drops["socket_error"] == 1


def test_a_renewal_asked_stops_reading_after_its_batch(
        sides: tuple[BatchRawSide, BatchRawSide]) -> None:
    """A packet that asks for a renewal lets the engine run before more is read: the
    rest of its recvmmsg batch (out of the kernel already) is opened, the next
    batch waits for the next wakeup."""
    a, b = sides
    inner = _seal(a, 8)
    esp = [p for p, _, _ in a.raw.sent]
    (entry,) = b.backend.sad
    entry.soft_bytes_in = sum(map(len, inner[:2]))  # reached by the second packet
    b.raw.received.extend([(esp[:4], 0), (esp[4:], 0)])
    b.backend.handle_raw_readable()
    assert b.tun.written == inner[:4]
    assert len(b.raw.received) == 1
    b.backend.handle_raw_readable()
    assert b.tun.written == inner
