"""The userspace backend with TUN offloads, fake I/O: A's TUN hands over TCP
super-packets (``tso``), B's takes coalesced writes (``gro``).

A reads a virtio-net header and a 64 KiB super-packet, seals each segment and
sends them; B opens them and, after the receive batch, writes them to its TUN
as one super-packet with a GSO header. Segmenting that again gives exactly the
segments A sealed. A malformed header is dropped and counted, and the loop goes
on with the next read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from ikev1d.dataplane.linux.offload import (
    GSO_NONE,
    GSO_TCPV4,
    NEEDS_CSUM,
    VNET_HDR,
    ZERO_VNET_HDR,
    segment_tcp,
)
from tests.unit.dataplane.test_offload import check_segments, stream, tcp_packet
from tests.unit.dataplane.test_userspace import FakeTun, Side, carry_raw, child, udp_packet


class OffloadTun(FakeTun):
    """Reads and writes carry a virtio-net header, as the real device's do."""

    vnet_hdr = True
    tso = True

    def __init__(self) -> None:
        super().__init__()
        self.vnet_written: list[bytes] = []

    def write(self, packet: bytes) -> None:
        self.vnet_written.append(ZERO_VNET_HDR + packet)

    def write_vnet(self, buffer: bytes) -> None:
        if self.fail_write:
            raise OSError(5, "EIO")
        self.vnet_written.append(bytes(buffer))


@pytest.fixture
def pair() -> Iterator[tuple[Side, Side, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    a, b = Side(["10.1.0.1"]), Side(["10.2.0.1"])
    for s in (a, b):
        s.tun = OffloadTun()
        s.backend.tun = s.tun
        s.backend.attach(s.send_udp, loop)
    a.backend.install(child())
    b.backend.install(child(initiator=False))
    yield a, b, loop
    for s in (a, b):
        s.backend.close()
    loop.close()


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Run what the backends scheduled (B's TUN write after its receive batch)."""
    loop.run_until_complete(asyncio.sleep(0))


def test_super_packet_crosses_and_is_coalesced_again(
        pair: tuple[Side, Side, asyncio.AbstractEventLoop]) -> None:
    a, b, loop = pair
    payload = bytes(range(256)) * 200
    packet = tcp_packet("10.1.0.1", "10.2.0.1", payload, options=bytes((1, 1, 8, 10)) + bytes(8))
    a.tun.to_read.append(VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 52, 1348, 20, 16) + packet)
    a.backend.handle_tun_readable()
    assert len(a.raw.sent) == 38  # 51200 / 1348, rounded up
    segments = segment_tcp(packet, GSO_TCPV4, 1348, 20)
    check_segments(packet, segments, 1348)
    assert carry_raw(a, b) == 38
    settle(loop)
    assert isinstance(b.tun, OffloadTun)
    (written,) = b.tun.vnet_written
    header = VNET_HDR.unpack_from(written)
    assert header[:2] == (NEEDS_CSUM, GSO_TCPV4) and header[3] == 1348
    assert segment_tcp(written[VNET_HDR.size:], GSO_TCPV4, 1348, 20) == segments
    counters = b.backend.counters(child(initiator=False).spi_in, child(initiator=False).spi_out)
    assert counters.packets_in == 38
    assert counters.bytes_in == sum(map(len, segments))


def test_a_failed_coalesced_write_moves_the_packets_to_the_drops(
        pair: tuple[Side, Side, asyncio.AbstractEventLoop]) -> None:
    a, b, loop = pair
    for segment in stream("10.1.0.1", "10.2.0.1", [1348] * 5):
        a.tun.to_read.append(ZERO_VNET_HDR + segment)
    a.backend.handle_tun_readable()
    b.tun.fail_write = True
    carry_raw(a, b)
    settle(loop)
    sa = child(initiator=False)
    counters = b.backend.counters(sa.spi_in, sa.spi_out)
    assert counters.packets_in == 0 and counters.bytes_in == 0
    assert counters.drops is not None and counters.drops.tun_dropped_in == 5
    assert b.backend.drops["tun_error"] == 1


def test_other_packets_are_written_one_by_one_in_order(
        pair: tuple[Side, Side, asyncio.AbstractEventLoop]) -> None:
    a, b, loop = pair
    udp = [udp_packet("10.1.0.1", "10.2.0.1", bytes([i]) * 100) for i in range(3)]
    for p in udp:
        a.tun.to_read.append(ZERO_VNET_HDR + p)
    a.backend.handle_tun_readable()
    carry_raw(a, b)
    settle(loop)
    assert isinstance(b.tun, OffloadTun)
    assert [VNET_HDR.unpack_from(w)[1] for w in b.tun.vnet_written] == [GSO_NONE] * 3
    assert [w[VNET_HDR.size:] for w in b.tun.vnet_written] == udp


@pytest.mark.parametrize("garbage", [
    b"",
    b"\x01\x01",
    VNET_HDR.pack(0, 3, 0, 1000, 20, 6) + bytes(100),            # UDP GSO: never enabled
    VNET_HDR.pack(NEEDS_CSUM, 0, 0, 0, 2000, 16) + bytes(100),   # checksum past the end
    VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 0, 0, 20, 16) + bytes(100),  # gso_size 0
])
def test_a_malformed_header_is_dropped_and_the_loop_goes_on(
        pair: tuple[Side, Side, asyncio.AbstractEventLoop], garbage: bytes) -> None:
    a, b, loop = pair
    good = udp_packet("10.1.0.1", "10.2.0.1", b"after the garbage")
    a.tun.to_read.extend([garbage, ZERO_VNET_HDR + good])
    a.backend.handle_tun_readable()
    assert a.backend.drops["offload"] == 1
    assert carry_raw(a, b) == 1
    settle(loop)
    assert isinstance(b.tun, OffloadTun)
    assert [w[VNET_HDR.size:] for w in b.tun.vnet_written] == [good]


def test_too_big_judges_the_segments_not_the_super_packet(
        pair: tuple[Side, Side, asyncio.AbstractEventLoop]) -> None:
    """A 40 KB super-packet whose segments fit the tunnel MTU goes out whole; one
    whose segments do not (DF set) is answered with ICMP "fragmentation needed"."""
    a, _b, _loop = pair
    entry = next(iter(a.backend.sad))
    assert 1400 < entry.mtu < 1500
    packet = tcp_packet("10.1.0.1", "10.2.0.1", bytes(40_000))
    a.tun.to_read.append(VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 40, 1360, 20, 16) + packet)
    a.backend.handle_tun_readable()
    assert len(a.raw.sent) == 30 and a.backend.drops["too_big"] == 0
    a.raw.sent.clear()
    a.tun.to_read.append(VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, 40, 1460, 20, 16) + packet)
    a.backend.handle_tun_readable()
    # 27 full segments are too big; the last (580 octets of payload) fits and goes.
    assert len(a.raw.sent) == 1 and a.backend.drops["too_big"] == 27
    assert isinstance(a.tun, OffloadTun)
    icmp = a.tun.vnet_written[0][VNET_HDR.size:]
    assert icmp[9] == 1 and icmp[20:22] == b"\x03\x04"  # ICMP fragmentation needed
    assert int.from_bytes(icmp[26:28], "big") == entry.mtu
