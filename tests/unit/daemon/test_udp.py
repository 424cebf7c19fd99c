"""UdpTransport on its own: IP_PKTINFO local addresses, socket choice, NAT-T demux, bind errors."""

from __future__ import annotations

import asyncio
import socket

import pytest

from ikev1d.daemon.udp import (
    BATCH,
    DRAIN,
    KEEPING_UP_S,
    RecentCookies,
    RequestBudget,
    UdpError,
    UdpSocket,
    UdpTransport,
)
from ikev1d.engine.api import Datagram, Endpoint
from ikev1d.wire.constants import NON_ESP_MARKER
from tests.unit.daemon._fakes import UdpPeer, eventually, free_udp_ports

Packets = list[tuple[bytes, Endpoint, Endpoint]]


def _transport(
    loop: asyncio.AbstractEventLoop, listen: tuple[str, ...], ike: Packets, esp: Packets,
    *, many: bool = False,
) -> UdpTransport:
    """``many``: ESP is taken in runs (``on_esp_many``), and recorded one by one."""
    port, port_nat_t = free_udp_ports(2)
    return UdpTransport(
        loop, listen, port, port_nat_t,
        on_ike=lambda d, lo, re: ike.append((d, lo, re)),
        on_esp=lambda d, lo, re: esp.append((d, lo, re)),
        on_esp_many=(lambda ds, lo, re: esp.extend((d, lo, re) for d in ds)) if many else None,
    )


def test_wildcard_socket_reports_each_destination_address() -> None:
    async def body() -> None:
        ike: Packets = []
        esp: Packets = []
        udp = _transport(asyncio.get_running_loop(), ("0.0.0.0",), ike, esp)
        udp.open()
        peer = UdpPeer()
        try:
            for n, address in enumerate(("127.0.0.1", "127.0.0.3", "127.0.0.4")):
                peer.send(b"x%d" % n, (address, udp.port))
            await eventually(lambda: len(ike) == 3)
            assert sorted(local for _, local, _ in ike) == [
                ("127.0.0.1", udp.port), ("127.0.0.3", udp.port), ("127.0.0.4", udp.port)]
            # Replies leave from the address chosen by the engine, on either port.
            udp.send_ike(Datagram(b"r1", ("127.0.0.4", udp.port), peer.endpoint))
            assert await peer.recv() == (b"r1", ("127.0.0.4", udp.port))
            udp.send_ike(Datagram(b"r2", ("127.0.0.3", udp.port_nat_t), peer.endpoint))
            assert await peer.recv() == (NON_ESP_MARKER + b"r2", ("127.0.0.3", udp.port_nat_t))
        finally:
            peer.close()
            udp.close()

    asyncio.run(body())


def test_specific_binds_pick_the_socket_by_local_address() -> None:
    async def body() -> None:
        ike: Packets = []
        udp = _transport(asyncio.get_running_loop(), ("127.0.0.5", "127.0.0.6"), ike, [])
        udp.open()
        peer = UdpPeer()
        try:
            assert len(udp.sockets) == 4
            udp.send_ike(Datagram(b"a", ("127.0.0.6", udp.port), peer.endpoint))
            assert await peer.recv() == (b"a", ("127.0.0.6", udp.port))
            udp.send_ike(Datagram(b"b", ("127.0.0.5", udp.port), peer.endpoint))
            assert await peer.recv() == (b"b", ("127.0.0.5", udp.port))
            # No socket for this address: dropped with a warning, not an exception.
            assert not udp.send_ike(Datagram(b"c", ("127.0.0.7", udp.port), peer.endpoint))
            assert not udp.send_ike(Datagram(b"d", ("127.0.0.5", 1), peer.endpoint))
        finally:
            peer.close()
            udp.close()

    asyncio.run(body())


def test_nat_t_demultiplexing() -> None:
    async def body() -> None:
        ike: Packets = []
        esp: Packets = []
        udp = _transport(asyncio.get_running_loop(), ("127.0.0.1",), ike, esp)
        udp.open()
        peer = UdpPeer()
        try:
            nat_t = ("127.0.0.1", udp.port_nat_t)
            ike500 = ("127.0.0.1", udp.port)
            peer.send(NON_ESP_MARKER + b"ike", nat_t)
            peer.send(b"\xff", nat_t)  # keepalive: nobody sees it
            peer.send(b"\x01\x02\x03\x04esp", nat_t)
            peer.send(NON_ESP_MARKER + b"on-500", ike500)  # port 500 has no marker handling
            await eventually(lambda: len(ike) == 2 and len(esp) == 1)
            await asyncio.sleep(0.02)
            assert sorted(ike) == sorted([
                (b"ike", nat_t, peer.endpoint),
                (NON_ESP_MARKER + b"on-500", ike500, peer.endpoint),
            ])
            assert esp == [(b"\x01\x02\x03\x04esp", nat_t, peer.endpoint)]
        finally:
            peer.close()
            udp.close()

    asyncio.run(body())


def test_bind_conflict_closes_everything_and_names_the_port() -> None:
    async def body() -> None:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", 0))
        try:
            port = free_udp_ports(1)[0]
            udp = UdpTransport(asyncio.get_running_loop(), ("127.0.0.1",), port,
                               blocker.getsockname()[1], lambda *a: None, lambda *a: None)
            with pytest.raises(UdpError, match=r"(?i)address already in use"):
                udp.open()
            assert udp.sockets == []
        finally:
            blocker.close()
        bad = UdpTransport(asyncio.get_running_loop(), ("not-an-ip",), 1, 2,
                           lambda *a: None, lambda *a: None)
        with pytest.raises(UdpError, match="not an IP address"):
            bad.open()

    asyncio.run(body())


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no ::1 here")

    async def body() -> None:
        ike: Packets = []
        udp = _transport(asyncio.get_running_loop(), ("::",), ike, [])
        udp.open()
        peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        peer.bind(("::1", 0))
        peer.setblocking(False)
        try:
            peer.sendto(b"v6", ("::1", udp.port))
            await eventually(lambda: len(ike) == 1)
            assert ike[0][1] == ("::1", udp.port)
            udp.send_ike(Datagram(b"r6", ("::1", udp.port), ike[0][2]))
            data = await asyncio.wait_for(
                asyncio.get_running_loop().sock_recv(peer, 100), 2.0)
            assert data == b"r6"
        finally:
            peer.close()
            udp.close()

    asyncio.run(body())


def _esp_batch(count: int, size: int, last: int) -> list[bytes]:
    """ESP-looking datagrams (non-zero SPI), each numbered, the last one shorter."""
    out = [b"\x01\x02\x03\x04" + i.to_bytes(4, "big") + bytes([i % 251]) * (size - 8)
           for i in range(count - 1)]
    out.append(b"\x01\x02\x03\x04" + (count - 1).to_bytes(4, "big") + b"\xee" * (last - 8))
    return out


@pytest.mark.parametrize("many", [False, True])
@pytest.mark.parametrize("wildcard", [False, True])
def test_esp_batches_arrive_as_the_datagrams_they_were(wildcard: bool, many: bool) -> None:
    """One sendmsg with UDP_SEGMENT (GSO) to a socket with UDP_GRO: the receiver gets
    the batch coalesced and hands on every datagram, in order, none merged or lost."""
    async def body() -> None:
        esp: Packets = []
        sender = _transport(asyncio.get_running_loop(),
                            ("0.0.0.0",) if wildcard else ("127.0.0.1",), [], [])
        receiver = _transport(asyncio.get_running_loop(), ("127.0.0.1",), [], esp, many=many)
        sender.open()
        receiver.open()
        try:
            (nat_t,) = [s for s in receiver.sockets if s.port == receiver.port_nat_t]
            assert nat_t.gro
            to = ("127.0.0.1", receiver.port_nat_t)
            local = ("127.0.0.1", sender.port_nat_t)
            batches = [_esp_batch(54, 1200, 700), _esp_batch(2, 100, 100),
                       _esp_batch(1, 60, 60), _esp_batch(30, 1438, 1438)]
            for batch in batches:
                sender.send_esp_udp_many(batch, local, to)
            expected = [d for b in batches for d in b]
            await eventually(lambda: len(esp) >= len(expected))
            await asyncio.sleep(0.02)
            assert [d for d, _, _ in esp] == expected
            assert {(lo, re) for _, lo, re in esp} == {(to, local)}
            (out,) = [s for s in sender.sockets if s.port == sender.port_nat_t]
            assert out.gso  # the kernel took the batches as GSO
        finally:
            sender.close()
            receiver.close()

    asyncio.run(body())


def test_esp_batches_without_gso_go_one_by_one() -> None:
    async def body() -> None:
        esp: Packets = []
        sender = _transport(asyncio.get_running_loop(), ("127.0.0.1",), [], [])
        receiver = _transport(asyncio.get_running_loop(), ("127.0.0.1",), [], esp)
        sender.open()
        receiver.open()
        try:
            for s in sender.sockets:
                s.gso = False
            batch = _esp_batch(10, 500, 200)
            sender.send_esp_udp_many(batch, ("127.0.0.1", sender.port_nat_t),
                                     ("127.0.0.1", receiver.port_nat_t))
            await eventually(lambda: len(esp) >= 10)
            assert [d for d, _, _ in esp] == batch
        finally:
            sender.close()
            receiver.close()

    asyncio.run(body())


class _FakeSocket:
    """Delivers a fixed queue of datagrams like a non-blocking UdpSocket."""

    def __init__(self, port: int, datagrams: list[bytes], *, behind: bool = False) -> None:
        self.port = port
        self.pending = False
        self._queue = list(datagrams)
        self._behind = behind
        """After the datagrams, more keep waiting (truncated ones, skipped unserved)."""

    def recv_many(self, limit: int) -> tuple[list[bytes], Endpoint, Endpoint] | None:
        if not self._queue:
            return ([b""], ("192.0.2.1", self.port), ("198.18.0.2", 500)) if self._behind \
                else None
        return [self._queue.pop(0)], ("192.0.2.1", self.port), ("198.18.0.1", 500)


class _FakeLoop:
    def __init__(self) -> None:
        self.soon: list[object] = []

    def call_soon(self, callback: object, *args: object) -> None:
        self.soon.append((callback, args))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _isakmp(initiator: int, responder: int, tag: bytes) -> bytes:
    return initiator.to_bytes(8, "big") + responder.to_bytes(8, "big") + b"\x01\x10\x02\x00" + tag


def _sorting_transport(clock: _Clock, cost: float, seen: Packets,
                       esp: Packets) -> tuple[UdpTransport, _FakeLoop]:
    loop = _FakeLoop()

    def on_ike(data: bytes, local: Endpoint, remote: Endpoint) -> None:
        seen.append((data, local, remote))
        if data[8:16] == bytes(8):
            clock.now += cost  # what processing a new request costs the engine

    udp = UdpTransport(loop, ("192.0.2.1",), 500, 4500, on_ike=on_ike,  # type: ignore[arg-type]
                       on_esp=lambda d, lo, re: esp.append((d, lo, re)))
    udp.budget = RequestBudget(share=0.5, burst_s=0.05, clock=clock)
    return udp, loop


def test_exchanges_under_way_are_served_before_new_requests_and_excess_requests_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    seen: Packets = []
    udp, loop = _sorting_transport(clock, 0.04, seen, [])
    requests = [_isakmp(n, 0, b"req%d" % n) for n in range(1, 7)]
    later = [_isakmp(100 + n, 7, b"msg3-%d" % n) for n in range(3)]
    batch = [requests[0], requests[1], later[0], requests[2], later[1], requests[3],
             requests[4], b"\x01\x02", later[2], requests[5]]
    with caplog.at_level("WARNING", logger="ikev1d.daemon"):
        udp._readable(_FakeSocket(500, batch, behind=True))  # type: ignore[arg-type]
    order = [data for data, _, _ in seen]
    # Every message of an exchange under way first, in arrival order (the short
    # datagram is not a request: the engine drops it), then the requests.
    assert order[:4] == [later[0], later[1], b"\x01\x02", later[2]]
    # The budget (50 ms, refilled by half the time spent) pays for three requests
    # of 40 ms; the other three are dropped.
    assert order[4:] == requests[:3]
    assert udp.requests_dropped == 3
    assert [r.getMessage() for r in caplog.records] == [
        "busy: dropped 3 new Main Mode requests (the last from 198.18.0.1) to serve "
        "exchanges under way first"]
    assert len(loop.soon) == 1  # more is waiting: read again soon
    # 40 ms later the budget holds 10 ms again: one more fresh request, not two.
    clock.now += 0.04
    seen.clear()
    fresh = [_isakmp(n, 0, b"req%d" % n) for n in (7, 8)]
    udp._readable(_FakeSocket(500, fresh, behind=True))  # type: ignore[arg-type]
    assert [data for data, _, _ in seen] == [fresh[0]]
    assert udp.requests_dropped == 4
    # A daemon that keeps up (the socket drained) serves every request, budget or not.
    seen.clear()
    udp._readable(_FakeSocket(500, requests))  # type: ignore[arg-type]
    assert [data for data, _, _ in seen] == requests
    assert udp.requests_dropped == 4


def test_a_wakeup_that_keeps_up_still_stops_serving_requests_after_a_while() -> None:
    # Not behind (less than a batch was waiting), but 20 requests of 40 ms: after
    # KEEPING_UP_S the rest waits for the next wakeup rather than delaying what
    # arrives; it is not dropped (nothing floods: a real peer would lose seconds).
    clock = _Clock()
    seen: Packets = []
    udp, loop = _sorting_transport(clock, 0.04, seen, [])
    requests = [_isakmp(n, 0, b"req%d" % n) for n in range(1, 21)]
    sock = _FakeSocket(500, requests)
    udp._readable(sock)  # type: ignore[arg-type]
    served = int(KEEPING_UP_S / 0.04) + 1
    assert [data for data, _, _ in seen] == requests[:served]
    assert udp.requests_dropped == 0
    assert loop.soon == [(udp._readable, (sock,))]  # back soon for the rest
    # Meanwhile a message 3 arrived: at the next wakeup it goes before the rest.
    msg3 = _isakmp(500, 7, b"msg3")
    sock._queue.append(msg3)
    seen.clear()
    udp._readable(sock)  # type: ignore[arg-type]
    assert [data for data, _, _ in seen] == [msg3, *requests[served:2 * served]]
    seen.clear()
    udp._readable(sock)  # type: ignore[arg-type]
    assert [data for data, _, _ in seen] == requests[2 * served:]
    assert udp.requests_dropped == 0 and len(loop.soon) == 2


def test_requests_left_over_count_towards_a_batch() -> None:
    # What a wakeup had no time for is bounded: with the requests read next it
    # makes a batch's worth, that wakeup is behind, and the budget decides.
    clock = _Clock()
    seen: Packets = []
    udp, _ = _sorting_transport(clock, 0.04, seen, [])
    first = [_isakmp(n, 0, b"a") for n in range(1, 201)]
    sock = _FakeSocket(500, first)
    udp._readable(sock)  # type: ignore[arg-type]
    served = int(KEEPING_UP_S / 0.04) + 1
    assert len(seen) == served and udp.requests_dropped == 0
    sock._queue.extend(_isakmp(n, 0, b"b") for n in range(1000, 1100))
    seen.clear()
    udp._readable(sock)  # type: ignore[arg-type]
    # 193 left + 100 new >= BATCH: the budget (50 ms, refilled by half the time
    # spent) pays for three requests of 40 ms; the rest is dropped, none kept.
    assert len(seen) == 3
    assert udp.requests_dropped == 200 - served + 100 - 3
    assert not udp._deferred


def test_nat_t_batches_serve_esp_and_later_messages_before_new_requests() -> None:
    clock = _Clock()
    seen: Packets = []
    esp: Packets = []
    udp, _ = _sorting_transport(clock, 0.0, seen, esp)
    request = NON_ESP_MARKER + _isakmp(1, 0, b"req")
    later = NON_ESP_MARKER + _isakmp(2, 9, b"msg5")
    esp_packet = b"\x00\x00\x10\x00" + bytes(20)
    udp._readable(_FakeSocket(4500, [request, b"\xff", esp_packet, later]))  # type: ignore[arg-type]
    assert [data for data, _, _ in seen] == [later[4:], request[4:]]
    assert [data for data, _, _ in esp] == [esp_packet]
    assert udp.requests_dropped == 0


def test_a_full_wakeup_reads_again_soon_and_the_rest_waits() -> None:
    clock = _Clock()
    seen: Packets = []
    esp: Packets = []
    udp, loop = _sorting_transport(clock, 0.0, seen, esp)
    # The IKE port is read up to DRAIN datagrams per wakeup ...
    sock = _FakeSocket(500, [_isakmp(n, 5, b"") for n in range(DRAIN + 10)])
    udp._readable(sock)  # type: ignore[arg-type]
    assert len(seen) == DRAIN
    assert loop.soon == [(udp._readable, (sock,))]
    udp._readable(sock)  # type: ignore[arg-type]
    assert len(seen) == DRAIN + 10
    # ... the NAT-T port, mostly ESP, a batch at a time.
    loop.soon.clear()
    nat_t = _FakeSocket(4500, [b"\x00\x00\x10\x00" + bytes(20)] * (BATCH + 10))
    udp._readable(nat_t)  # type: ignore[arg-type]
    assert len(esp) == BATCH
    assert loop.soon == [(udp._readable, (nat_t,))]


def test_a_message_3_behind_thousands_of_requests_is_served_at_the_same_wakeup() -> None:
    # A daemon short of CPU used to read 256 datagrams per wakeup: a flood kept its
    # socket queue seconds long, and a peer's message 3 deep in it arrived after its
    # half-open entry had been evicted.
    clock = _Clock()
    seen: Packets = []
    udp, loop = _sorting_transport(clock, 0.002, seen, [])
    requests = [_isakmp(n, 0, b"flood") for n in range(1, 3001)]
    message_3 = _isakmp(0xABCDEF, 0x123456, b"msg3")
    udp._readable(_FakeSocket(500, [*requests, message_3]))  # type: ignore[arg-type]
    assert seen[0][0] == message_3
    assert loop.soon == []  # nothing left waiting
    # Behind: requests within the budget (50 ms at 2 ms each, plus what the wakeup
    # earned meanwhile), the rest dropped.
    assert 25 <= len(seen) - 1 < 60
    assert udp.requests_dropped == 3000 - (len(seen) - 1)


def test_a_retransmitted_request_that_was_dropped_goes_first() -> None:
    clock = _Clock()
    seen: Packets = []
    udp, _ = _sorting_transport(clock, 0.04, seen, [])
    flood = [_isakmp(n, 0, b"flood") for n in range(1, 5)]
    peer = _isakmp(0xABCDEF, 0, b"peer")
    udp._readable(_FakeSocket(500, [*flood[:3], peer], behind=True))  # type: ignore[arg-type]
    assert [data for data, _, _ in seen] == flood[:3]  # the peer lost the draw
    clock.now += 0.04
    seen.clear()
    # Its retransmission, the same message 1, behind fresh requests: served first.
    udp._readable(_FakeSocket(500, [flood[3], _isakmp(99, 0, b"flood"), peer],  # type: ignore[arg-type]
                              behind=True))
    assert [data for data, _, _ in seen] == [peer]


def test_a_retransmission_is_served_when_the_budget_was_just_spent() -> None:
    # The bucket is usually spent when the next full batch is read: a retransmitted
    # request may overdraw it by one burst (paid back later), fresh ones may not.
    clock = _Clock()
    seen: Packets = []
    udp, _ = _sorting_transport(clock, 0.12, seen, [])
    flood = [_isakmp(n, 0, b"flood") for n in range(1, 4)]
    peer = _isakmp(0xABCDEF, 0, b"peer")
    udp._readable(_FakeSocket(500, [flood[0], peer], behind=True))  # type: ignore[arg-type]
    # 50 ms of budget, 120 ms spent, 60 ms earned back while spending it: 10 ms short.
    assert [data for data, _, _ in seen] == [flood[0]]
    seen.clear()
    udp._readable(_FakeSocket(500, [flood[1], peer, flood[2]], behind=True))  # type: ignore[arg-type]
    assert [data for data, _, _ in seen] == [peer]
    assert udp.requests_dropped == 3
    # Paid back: with the bucket 60 ms below empty, not even a retransmission.
    seen.clear()
    clock.now += 0.02
    udp._readable(_FakeSocket(500, [flood[1]], behind=True))  # type: ignore[arg-type]
    assert seen == []


def test_recent_cookies_are_bounded() -> None:
    recent = RecentCookies(size=4)
    assert not recent
    for n in range(8):
        recent.add(bytes([n]) * 8)
    assert recent and bytes([7]) * 8 in recent and bytes([4]) * 8 in recent
    recent.add(b"x" * 8)
    # Two generations of at most four: the oldest are forgotten.
    assert bytes([3]) * 8 not in recent and bytes([4]) * 8 in recent
    for n in range(4):
        recent.add(bytes([n + 10]) * 8)
    assert bytes([4]) * 8 not in recent and b"x" * 8 in recent


class _MixedSocket:
    """Datagrams from several peers, as (data, local, remote), like a UdpSocket."""

    def __init__(self, port: int, datagrams: list[tuple[bytes, Endpoint, Endpoint]]) -> None:
        self.port = port
        self.pending = False
        self._queue = list(datagrams)

    def recv_many(self, limit: int) -> tuple[list[bytes], Endpoint, Endpoint] | None:
        if not self._queue:
            return None
        data, local, remote = self._queue.pop(0)
        return [data], local, remote


def test_esp_goes_in_runs_per_peer_and_in_order_with_ike() -> None:
    """ESP of one wakeup is handed on in runs from one peer to one address; IKE between
    them keeps its place, and NAT-keepalives (dropped) do not cut a run."""
    events: list[tuple[str, list[bytes], Endpoint, Endpoint]] = []
    udp = UdpTransport(
        _FakeLoop(), ("192.0.2.1",), 500, 4500,  # type: ignore[arg-type]
        on_ike=lambda d, lo, re: events.append(("ike", [d], lo, re)),
        on_esp=lambda d, lo, re: events.append(("esp", [d], lo, re)),
        on_esp_many=lambda ds, lo, re: events.append(("esp", list(ds), lo, re)))
    here, there = ("192.0.2.1", 4500), ("192.0.2.9", 4500)
    r1, r2 = ("198.18.0.1", 4500), ("198.18.0.2", 4500)
    esp = [b"\x00\x00\x10\x00" + bytes([n]) * 20 for n in range(7)]
    ike = NON_ESP_MARKER + _isakmp(1, 2, b"qm")
    udp._readable(_MixedSocket(4500, [  # type: ignore[arg-type]
        (esp[0], here, r1), (esp[1], here, r1), (ike, here, r1), (esp[2], here, r1),
        (esp[3], here, r2), (b"\xff", here, r2), (esp[4], here, r2), (esp[5], there, r2),
        (esp[6], here, r2)]))
    assert events == [
        ("esp", esp[0:2], here, r1), ("ike", [ike[4:]], here, r1), ("esp", [esp[2]], here, r1),
        ("esp", esp[3:5], here, r2), ("esp", [esp[5]], there, r2), ("esp", [esp[6]], here, r2)]


class _GroSock:
    """What recvmsg gives a socket with UDP_GRO: coalesced buffers, then EAGAIN."""

    def __init__(self, buffers: list[tuple[bytes, int]]) -> None:
        self.buffers = buffers

    def recvmsg(self, size: int, anc: int) -> tuple[bytes, list[tuple[int, int, bytes]], int,
                                                    tuple[str, int]]:
        if not self.buffers:
            raise BlockingIOError
        data, segment = self.buffers.pop(0)
        return data, [(17, 104, segment.to_bytes(4, "little"))], 0, ("198.18.0.1", 4500)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def test_a_coalesced_receive_is_handed_out_up_to_the_batch_and_the_rest_later() -> None:
    sock = UdpSocket("127.0.0.1", 0, gro=True)
    sock.sock.close()
    datagrams = [b"\x00\x00\x10\x00" + bytes([n]) * 96 for n in range(64)]
    buffers = [(b"".join(datagrams[:40]), 100)] + [(b"".join(datagrams), 100)] * 4 + [
        (datagrams[0][:50], 100)]
    sock.sock = _GroSock(list(buffers))  # type: ignore[assignment]
    sock.gro = True
    sock.port = 4500
    esp: Packets = []
    loop = _FakeLoop()
    udp = UdpTransport(loop, ("127.0.0.1",), 500, 4500,  # type: ignore[arg-type]
                       on_ike=lambda d, lo, re: None,
                       on_esp=lambda d, lo, re: esp.append((d, lo, re)),
                       on_esp_many=lambda ds, lo, re: esp.extend((d, lo, re) for d in ds))
    udp._readable(sock)
    everything = datagrams[:40] + datagrams * 4 + [datagrams[0][:50]]
    assert [d for d, _, _ in esp] == everything[:BATCH]  # the last buffer cut at 24
    assert sock.pending and loop.soon == [(udp._readable, (sock,))]
    udp._readable(sock)
    assert [d for d, _, _ in esp] == everything
    assert not sock.pending
    # One at a time, as the IKE port reads.
    sock.sock = _GroSock([(b"".join(datagrams[:3]), 100)])
    assert [sock.recv() for _ in range(4)] == [
        (d, ("127.0.0.1", 4500), ("198.18.0.1", 4500)) for d in datagrams[:3]] + [None]


# --- sends the kernel refuses -------------------------------------------------------------
# A UDP send to port 0 is refused by the kernel (EINVAL) without anything leaving the host,
# as a blackhole route refuses one; an unreachable route gives EHOSTUNREACH the same way.
_REFUSING = ("127.0.0.1", 0)


def test_ike_sends_the_kernel_refuses_are_logged_at_a_limited_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Requests from spoofed, unreachable sources, or every peer's retransmissions while a
    route is gone: each refused answer must not write a line of its own."""
    async def body() -> None:
        transport = _transport(asyncio.get_running_loop(), ("127.0.0.1",), [], [])
        transport.open()
        try:
            local = ("127.0.0.1", transport.port)
            with caplog.at_level("WARNING", logger="ikev1d.daemon"):
                sent = [transport.send_ike(Datagram(b"\x00" * 28, local, _REFUSING))
                        for _ in range(200)]
                sent.append(transport.send_ike(Datagram(b"\x00" * 28, ("127.0.0.9", 500),
                                                        ("127.0.0.1", 500))))
            assert not any(sent)
            lines = [r.getMessage() for r in caplog.records if "cannot send" in r.getMessage()]
            assert 1 <= len(lines) <= 10, lines
            assert "port 0: Invalid argument" in lines[0]
        finally:
            transport.close()

    asyncio.run(body())


@pytest.mark.parametrize("batched", [False, True])
def test_esp_sends_the_kernel_refuses_reach_the_data_plane_as_drops(
    batched: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """The data plane sends ESP-in-UDP through these sockets; a refused packet must come
    back to it as an error, to be counted as dropped (not as sent) and logged at the
    data plane's limited rate, not once per packet here. Segmentation offload stays on:
    the destination refused, not the offload."""
    from dataclasses import replace

    from tests.unit.dataplane.test_userspace import Side, child, udp_packet

    async def body() -> None:
        loop = asyncio.get_running_loop()
        transport = _transport(loop, ("127.0.0.1",), [], [])
        transport.open()
        side = Side(["10.1.0.1"])
        try:
            side.backend.attach(transport.send_esp_udp, loop)
            if batched:
                side.backend.attach_batch(transport.send_esp_udp_many)
            sa = replace(child(encap=True), local=("127.0.0.1", transport.port_nat_t),
                         remote=_REFUSING)
            side.backend.install(sa)
            with caplog.at_level("INFO"):
                for _ in range(5):
                    side.tun.to_read.extend(udp_packet("10.1.0.1", "10.2.0.1", bytes(100))
                                            for _ in range(20))
                    side.backend.handle_tun_readable()
            counters = side.backend.counters(sa.spi_in, sa.spi_out)
            assert counters.drops is not None
            assert (counters.packets_out, counters.bytes_out) == (0, 0)
            assert counters.drops.dropped_out == 100
            assert side.backend.drops["send_error"] == 100
            lines = [r.getMessage() for r in caplog.records]
            assert not [line for line in lines if "cannot send" in line], lines
            refused = [line for line in lines if "ESP packet dropped (send_error)" in line]
            assert len(refused) == 1, lines
            (nat_t,) = [s for s in transport.sockets if s.port == transport.port_nat_t]
            assert nat_t.gso
        finally:
            side.backend.close()
            transport.close()

    asyncio.run(body())
