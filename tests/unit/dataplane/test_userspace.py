"""The userspace backend with fake I/O: two backends wired back to back.

A's fake raw socket delivers into B's and the reverse, so every test checks
real sealing by one side and opening by the other, selector enforcement,
counters, drops, routes and cleanup, without a TUN device or root.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
from collections import deque
from collections.abc import Iterator
from dataclasses import replace

import pytest

from ikev1d.dataplane.base import DataplaneBackend, DataplaneError
from ikev1d.dataplane.packet import build_ipv4_packet
from ikev1d.dataplane.userspace import UserspaceBackend
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, Endpoint, Network
from ikev1d.status import Counters, DropCounters

net = ipaddress.ip_network


class FakeTun:
    name = "faketun0"

    def __init__(self) -> None:
        self.to_read: deque[bytes | OSError] = deque()
        self.written: list[bytes] = []
        self.closed = False
        self.fail_write = False

    def fileno(self) -> int:
        return -1

    def read(self) -> bytes | None:
        if not self.to_read:
            return None
        item = self.to_read.popleft()
        if isinstance(item, OSError):
            raise item
        return item

    def write(self, packet: bytes) -> None:
        if self.fail_write:
            raise OSError(5, "EIO")
        self.written.append(bytes(packet))

    def close(self) -> None:
        self.closed = True


class FakeRaw:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str, str]] = []
        self.to_recv: deque[tuple[bytes, str] | OSError] = deque()
        self.closed = False

    def fileno(self) -> int:
        return -1

    def recv(self) -> tuple[bytes, str] | None:
        if not self.to_recv:
            return None
        item = self.to_recv.popleft()
        if isinstance(item, OSError):
            raise item
        return item

    def send(self, esp: bytes, local: str, remote: str) -> None:
        self.sent.append((esp, local, remote))

    def close(self) -> None:
        self.closed = True


class FakeRoutes:
    def __init__(self, local_addrs: list[str], fail_on: str | None = None) -> None:
        self.local_addrs = [ipaddress.ip_address(a) for a in local_addrs]
        self.routes: dict[str, str | None] = {}
        self.bypasses: set[str] = set()
        self.addresses: set[str] = set()
        """Virtual IPs put on the TUN device."""
        self.stale: set[str] = set()
        """Host routes with our proto that an earlier run left."""
        self.log: list[str] = []
        self.fail_on = fail_on
        self.closed = False

    def local_address_in(self, networks: tuple[Network, ...]) -> str | None:
        for a in self.local_addrs:
            if any(a.version == n.version and a in n for n in networks):
                return str(a)
        return None

    def add(self, network: Network, src: str | None) -> None:
        if str(network) == self.fail_on:
            raise OSError(17, f"cannot add route to {network}")
        self.routes[str(network)] = src
        self.log.append(f"add {network}")

    def remove(self, network: Network) -> None:
        self.routes.pop(str(network), None)
        self.log.append(f"del {network}")

    def add_bypass(self, peer: str) -> bool:
        self.bypasses.add(peer)
        self.log.append(f"bypass {peer}")
        return True

    def remove_bypass(self, peer: str) -> None:
        self.bypasses.discard(peer)
        self.log.append(f"unbypass {peer}")

    def add_address(self, address: str) -> bool:
        if ipaddress.ip_address(address) in self.local_addrs:
            return False
        self.addresses.add(address)
        self.log.append(f"addr {address}")
        return True

    def remove_address(self, address: str) -> None:
        self.addresses.discard(address)
        self.log.append(f"unaddr {address}")

    def owned_bypasses(self) -> list[str]:
        return sorted(self.bypasses)

    def remove_stale_bypass(self, peer: str) -> bool:
        self.log.append(f"stale {peer}")
        if peer not in self.stale:
            return False
        self.stale.discard(peer)
        return True

    def close(self) -> None:
        self.routes.clear()
        self.closed = True


KEYS = {  # (encryption, key bits, integrity, icv) -> keymat length per direction
    "aes128gcm16": ("aesgcm", 128, None, 16, 20),
    "aes256-sha256": ("aes", 256, "sha256", 16, 64),
    "3des-sha1": ("3des", 192, "sha1", 12, 44),
}


def child(
    proposal: str = "aes128gcm16",
    *,
    initiator: bool = True,
    local_ts: tuple[str, ...] = ("10.1.0.0/24",),
    remote_ts: tuple[str, ...] = ("10.2.0.0/24",),
    encap: bool = False,
    spis: tuple[int, int] = (0xC0000001, 0xC0000002),
) -> ChildSaEstablished:
    """A's view (initiator=True) or B's view of the same SA pair."""
    enc, bits, integ, icv, klen = KEYS[proposal]
    key_a_to_b = bytes((i * 7 + 1) & 0xFF for i in range(klen))
    key_b_to_a = bytes((i * 13 + 5) & 0xFF for i in range(klen))
    a, b = ("192.0.2.1", 4500 if encap else 500), ("192.0.2.2", 4500 if encap else 500)
    spi_a_in, spi_b_in = spis
    if initiator:
        local, remote, spi_in, spi_out, kin, kout = a, b, spi_a_in, spi_b_in, key_b_to_a, key_a_to_b
    else:
        local, remote, spi_in, spi_out, kin, kout = b, a, spi_b_in, spi_a_in, key_a_to_b, key_b_to_a
        local_ts, remote_ts = remote_ts, local_ts
    return ChildSaEstablished(
        conn="gw", child="net", ike_id=1, child_id=1, spi_in=spi_in, spi_out=spi_out,
        proposal=proposal, encryption=enc, key_length=bits, icv_length=icv, integrity=integ,
        mode="tunnel", encap=encap, local=local, remote=remote,
        local_ts=tuple(net(n) for n in local_ts), remote_ts=tuple(net(n) for n in remote_ts),
        keymat_in=kin, keymat_out=kout,
    )


def deleted(sa: ChildSaEstablished) -> ChildSaDeleted:
    return ChildSaDeleted("gw", "net", 1, 1, sa.spi_in, sa.spi_out, "test")


class Side:
    def __init__(self, local_addrs: list[str]) -> None:
        self.tun = FakeTun()
        self.raw = FakeRaw()
        self.routes = FakeRoutes(local_addrs)
        self.backend = UserspaceBackend(self.tun, self.raw, self.routes)
        self.udp_sent: list[tuple[bytes, Endpoint, Endpoint]] = []

    def send_udp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        self.udp_sent.append((data, local, remote))


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def sides(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[Side, Side]]:
    a, b = Side(["10.1.0.1"]), Side(["10.2.0.1"])
    for s in (a, b):
        s.backend.attach(s.send_udp, loop)
    yield a, b
    for s in (a, b):
        s.backend.close()


def carry_raw(src: Side, dst: Side) -> int:
    """Move what ``src`` sent as raw ESP into ``dst``'s raw socket and let it read."""
    n = len(src.raw.sent)
    for esp, _local, remote in src.raw.sent:
        assert remote in ("192.0.2.1", "192.0.2.2")
        dst.raw.to_recv.append((esp, remote))
    src.raw.sent.clear()
    dst.backend.handle_raw_readable()
    return n


def udp_packet(src: str, dst: str, payload: bytes) -> bytes:
    return build_ipv4_packet(src, dst, 17, b"\x30\x39\x00\x35" + bytes(4) + payload)


def test_is_a_dataplane_backend(sides: tuple[Side, Side]) -> None:
    assert isinstance(sides[0].backend, DataplaneBackend)


@pytest.mark.parametrize("proposal", list(KEYS))
def test_packets_cross_both_ways_and_counters_agree(
    sides: tuple[Side, Side], proposal: str
) -> None:
    a, b = sides
    a.backend.install(child(proposal))
    b.backend.install(child(proposal, initiator=False))
    assert a.routes.routes == {"10.2.0.0/24": "10.1.0.1"}
    assert b.routes.routes == {"10.1.0.0/24": "10.2.0.1"}

    to_b = [udp_packet("10.1.0.1", "10.2.0.1", bytes([i]) * (i * 50)) for i in range(1, 6)]
    a.tun.to_read.extend(to_b)
    a.backend.handle_tun_readable()
    assert len(a.raw.sent) == 5
    for esp, local, remote in a.raw.sent:
        assert (local, remote) == ("192.0.2.1", "192.0.2.2")
        assert esp[:4] == (0xC0000002).to_bytes(4, "big")  # B's inbound SPI
        assert to_b[0][20:] not in esp
    carry_raw(a, b)
    assert b.tun.written == to_b

    back = udp_packet("10.2.0.1", "10.1.0.1", b"reply")
    b.tun.to_read.append(back)
    b.backend.handle_tun_readable()
    carry_raw(b, a)
    assert a.tun.written == [back]

    ca = a.backend.counters(0xC0000001, 0xC0000002)
    cb = b.backend.counters(0xC0000002, 0xC0000001)
    assert ca.packets_out == cb.packets_in == 5
    assert ca.bytes_out == cb.bytes_in == sum(map(len, to_b))
    assert ca.packets_in == cb.packets_out == 1
    assert ca.bytes_in == cb.bytes_out == len(back)
    assert ca.drops == cb.drops == DropCounters()
    # an SA pair it does not know: zeros, and no drop reasons to show
    assert a.backend.counters(1, 2) == Counters(0, 0, 0, 0, drops=None)


def test_udp_encapsulated_sa_goes_through_send_udp(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.backend.install(child(encap=True))
    b.backend.install(child(encap=True, initiator=False))
    packet = udp_packet("10.1.0.1", "10.2.0.1", b"hello")
    a.tun.to_read.append(packet)
    a.backend.handle_tun_readable()
    assert a.raw.sent == []
    ((esp, local, remote),) = a.udp_sent
    assert local == ("192.0.2.1", 4500) and remote == ("192.0.2.2", 4500)
    b.backend.receive_esp_udp(esp, ("192.0.2.2", 4500), ("192.0.2.1", 4500))
    assert b.tun.written == [packet]
    assert b.backend.counters(0xC0000002, 0xC0000001).packets_in == 1


def test_nat_keepalives_for_encapsulated_peers(sides: tuple[Side, Side]) -> None:
    a, _ = sides
    a.backend.install(child(encap=True))
    a.backend._send_keepalives()
    assert a.udp_sent == [(b"\xff", ("192.0.2.1", 4500), ("192.0.2.2", 4500))]
    assert a.backend._keepalive is not None  # rescheduled


def test_no_keepalives_without_encapsulation(sides: tuple[Side, Side]) -> None:
    a, _ = sides
    a.backend.install(child())
    a.backend._send_keepalives()
    assert a.udp_sent == [] and a.backend._keepalive is None


def test_idle_sas_let_their_cipher_contexts_go(sides: tuple[Side, Side]) -> None:
    """The periodic sweep cools SAs that carried nothing since the last one; traffic
    then crosses as before (the first packet builds the contexts again)."""
    a, b = sides
    assert a.backend._cool is not None  # armed by attach
    a.backend.install(child())
    b.backend.install(child(initiator=False))
    packet = udp_packet("10.1.0.1", "10.2.0.1", b"before")
    a.tun.to_read.append(packet)
    a.backend.handle_tun_readable()
    carry_raw(a, b)
    (entry,) = a.backend.sad
    assert entry.inbound is not None
    assert entry.outbound.warm and not entry.inbound.warm
    a.backend._cool_idle()
    assert entry.outbound.warm and a.backend._cool is not None  # rescheduled
    a.backend._cool_idle()
    assert not entry.outbound.warm
    again = udp_packet("10.1.0.1", "10.2.0.1", b"after idle")
    a.tun.to_read.append(again)
    a.backend.handle_tun_readable()
    carry_raw(a, b)
    assert b.tun.written == [packet, again]
    a.backend.close()
    assert a.backend._cool is None


def test_replayed_and_tampered_packets_are_dropped_and_counted(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.backend.install(child("aes256-sha256"))
    b.backend.install(child("aes256-sha256", initiator=False))
    a.tun.to_read.append(udp_packet("10.1.0.1", "10.2.0.1", b"one"))
    a.tun.to_read.append(udp_packet("10.1.0.1", "10.2.0.1", b"two"))
    a.backend.handle_tun_readable()
    first, second = (esp for esp, _, _ in a.raw.sent)
    a.raw.sent.clear()
    flipped = bytearray(second)
    flipped[40] ^= 0x01
    for esp in (first, first, bytes(flipped), second):
        b.raw.to_recv.append((esp, "192.0.2.1"))
    b.backend.handle_raw_readable()
    assert len(b.tun.written) == 2  # first once, then second: not the replay, not the flipped one
    c = b.backend.counters(0xC0000002, 0xC0000001)
    assert c.drops is not None
    assert (c.packets_in, c.drops.replayed_in, c.drops.icv_failed_in) == (2, 1, 1)
    assert b.backend.drops["replay"] == 1 and b.backend.drops["icv"] == 1


def test_unknown_spi_and_garbage_are_dropped(sides: tuple[Side, Side]) -> None:
    _, b = sides
    b.backend.install(child(initiator=False))
    b.raw.to_recv.extend([(b"\x12\x34\x56\x78" + bytes(40), "192.0.2.1"), (b"\x01", "x")])
    b.backend.handle_raw_readable()
    b.backend.receive_esp_udp(b"abc", ("192.0.2.2", 4500), ("192.0.2.1", 4500))
    assert b.tun.written == []
    assert b.backend.drops["unknown_spi"] == 1 and b.backend.drops["malformed"] == 2


def test_inbound_packet_outside_the_selectors_is_dropped(sides: tuple[Side, Side]) -> None:
    a, b = sides
    # A (misconfigured or hostile) believes the SA covers 10.9.0.0/16 too; B does not.
    a.backend.install(child(local_ts=("10.1.0.0/24", "10.9.0.0/16")))
    b.backend.install(child(initiator=False))
    # In one read: a spoofed packet right after a permitted one is judged on its own.
    a.tun.to_read.extend([
        udp_packet("10.9.0.1", "10.2.0.1", b"spoofed source"),
        udp_packet("10.1.0.1", "10.2.0.1", b"fine"),
        udp_packet("10.9.0.1", "10.2.0.1", b"spoofed source"),
        udp_packet("10.1.0.1", "10.2.0.1", b"fine"),
    ])
    a.backend.handle_tun_readable()
    assert carry_raw(a, b) == 4
    assert len(b.tun.written) == 2 and all(p.endswith(b"fine") for p in b.tun.written)
    c = b.backend.counters(0xC0000002, 0xC0000001)
    assert c.drops is not None
    assert c.drops.policy_dropped_in == 2 and c.packets_in == 2
    assert b.backend.drops["policy"] == 2


def test_outbound_without_matching_sa_is_dropped(sides: tuple[Side, Side]) -> None:
    a, _ = sides
    a.backend.install(child())
    a.tun.to_read.extend([udp_packet("10.1.0.1", "10.7.0.1", b"x"), b"\x00junk", b""])
    a.backend.handle_tun_readable()
    assert a.raw.sent == []
    assert a.backend.drops["no_sa"] == 1 and a.backend.drops["not_ip"] == 2


def test_tun_write_error_is_counted_not_raised(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.backend.install(child())
    b.backend.install(child(initiator=False))
    b.tun.fail_write = True
    a.tun.to_read.append(udp_packet("10.1.0.1", "10.2.0.1", b"x"))
    a.backend.handle_tun_readable()
    carry_raw(a, b)
    assert b.backend.drops["tun_error"] == 1
    c = b.backend.counters(0xC0000002, 0xC0000001)
    assert c.drops is not None
    assert (c.packets_in, c.drops.tun_dropped_in) == (0, 1)


def test_reads_are_batched(sides: tuple[Side, Side]) -> None:
    a, _ = sides
    a.backend.install(child())
    a.tun.to_read.extend(udp_packet("10.1.0.1", "10.2.0.1", b"x") for _ in range(300))
    a.backend.handle_tun_readable()
    assert len(a.raw.sent) == 256 and len(a.tun.to_read) == 44
    a.backend.handle_tun_readable()
    assert len(a.raw.sent) == 300


def test_remove_drops_routes_and_sa(sides: tuple[Side, Side]) -> None:
    a, _ = sides
    sa = child(remote_ts=("10.2.0.0/24", "10.4.0.0/16"))
    a.backend.install(sa)
    assert set(a.routes.routes) == {"10.2.0.0/24", "10.4.0.0/16"}
    a.backend.remove(deleted(sa))
    a.backend.remove(deleted(sa))  # unknown pair: not an error
    assert a.routes.routes == {}
    a.tun.to_read.append(udp_packet("10.1.0.1", "10.2.0.1", b"x"))
    a.backend.handle_tun_readable()
    assert a.raw.sent == [] and a.backend.drops["no_sa"] == 1


def test_rekey_new_sa_takes_over_outbound_old_still_accepted(sides: tuple[Side, Side]) -> None:
    a, b = sides
    old, new = child(), child(spis=(0xC0000003, 0xC0000004))
    a.backend.install(old)
    b.backend.install(child(initiator=False))
    a.backend.install(new)
    b.backend.install(child(initiator=False, spis=(0xC0000003, 0xC0000004)))
    a.tun.to_read.append(udp_packet("10.1.0.1", "10.2.0.1", b"x"))
    a.backend.handle_tun_readable()
    assert a.raw.sent[0][0][:4] == (0xC0000004).to_bytes(4, "big")
    carry_raw(a, b)
    a.backend.remove(deleted(old))
    assert a.routes.routes == {"10.2.0.0/24": "10.1.0.1"}  # still needed by the new SA
    b.tun.to_read.append(udp_packet("10.2.0.1", "10.1.0.1", b"y"))
    b.backend.handle_tun_readable()
    carry_raw(b, a)
    assert len(a.tun.written) == 1


def test_transport_mode_and_bad_algorithms_are_refused(sides: tuple[Side, Side]) -> None:
    a, _ = sides
    with pytest.raises(DataplaneError, match="tunnel only"):
        a.backend.install(replace(child(), mode="transport"))
    with pytest.raises(DataplaneError, match="KEYMAT"):
        a.backend.install(replace(child(), keymat_in=b"short"))
    assert len(a.backend.sad) == 0 and a.routes.routes == {}


def test_route_failure_undoes_the_install(sides: tuple[Side, Side]) -> None:
    a, _ = sides
    a.routes.fail_on = "10.4.0.0/16"
    with pytest.raises(DataplaneError, match=r"10\.4\.0\.0/16"):
        a.backend.install(child(remote_ts=("10.2.0.0/24", "10.4.0.0/16")))
    assert a.routes.routes == {} and len(a.backend.sad) == 0


def test_no_src_when_no_local_address_inside(loop: asyncio.AbstractEventLoop) -> None:
    s = Side(["172.16.0.1"])
    s.backend.attach(s.send_udp, loop)
    s.backend.install(child())
    assert s.routes.routes == {"10.2.0.0/24": None}
    s.backend.close()


def test_close_releases_everything_once(sides: tuple[Side, Side]) -> None:
    a, _ = sides
    a.backend.install(child(encap=True))
    a.backend.close()
    a.backend.close()
    assert a.tun.closed and a.raw.closed and a.routes.closed
    assert len(a.backend.sad) == 0 and a.backend._keepalive is None
    with pytest.raises(DataplaneError):
        a.backend.install(child())


def test_socket_errors_are_counted_and_reading_goes_on(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.backend.install(child())
    b.backend.install(child(initiator=False))
    a.tun.to_read.extend([udp_packet("10.1.0.1", "10.2.0.1", b"x"), OSError(5, "EIO")])
    a.backend.handle_tun_readable()
    (esp, _, _), = a.raw.sent
    b.raw.to_recv.extend([ConnectionRefusedError(111, "refused"), (esp, "192.0.2.1")])
    b.backend.handle_raw_readable()
    assert len(b.tun.written) == 1
    assert a.backend.drops["socket_error"] == 1 and b.backend.drops["socket_error"] == 1


def test_authenticated_newest_esp_from_a_new_port_moves_the_sa(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.backend.install(child(encap=True))
    b.backend.install(child(encap=True, initiator=False))
    a.tun.to_read.extend(udp_packet("10.1.0.1", "10.2.0.1", bytes([i])) for i in range(3))
    a.backend.handle_tun_readable()
    first, second, third = (esp for esp, _, _ in a.udp_sent)
    rebound = ("192.0.2.1", 31337)
    b.backend.receive_esp_udp(second, ("192.0.2.2", 4500), ("192.0.2.1", 4500))
    b.backend.receive_esp_udp(first, ("192.0.2.2", 4500), ("203.0.113.9", 1))  # older: ignored
    forged = bytearray(third)
    forged[-1] ^= 1
    b.backend.receive_esp_udp(bytes(forged), ("192.0.2.2", 4500), ("203.0.113.9", 2))
    entry = b.backend.sad.by_spi_in(0xC0000002)
    assert entry is not None and entry.remote == ("192.0.2.1", 4500)
    b.backend.receive_esp_udp(third, ("192.0.2.2", 4500), rebound)  # newest and authentic
    assert entry.remote == rebound
    b.tun.to_read.append(udp_packet("10.2.0.1", "10.1.0.1", b"back"))
    b.backend.handle_tun_readable()
    assert b.udp_sent[-1][2] == rebound


def test_installing_the_same_pair_twice_keeps_one_route_reference(
    sides: tuple[Side, Side],
) -> None:
    a, _ = sides
    sa = child()
    a.backend.install(sa)
    a.backend.install(sa)
    a.backend.remove(deleted(sa))
    assert a.routes.routes == {} and len(a.backend.sad) == 0


def test_source_address_is_looked_up_only_for_a_new_route(sides: tuple[Side, Side]) -> None:
    """Looking the source up lists the host's addresses over netlink; SAs of other
    peers over the same networks reuse the route and must not ask again."""
    a, _ = sides
    asked: list[tuple[Network, ...]] = []
    lookup = a.routes.local_address_in

    def counting(networks: tuple[Network, ...]) -> str | None:
        asked.append(networks)
        return lookup(networks)

    a.routes.local_address_in = counting  # type: ignore[method-assign]
    first = child(spis=(0xC0000001, 0xC0000002))
    second = child(spis=(0xC0000003, 0xC0000004))
    a.backend.install(first)
    a.backend.install(second)
    assert len(asked) == 1 and a.routes.routes == {"10.2.0.0/24": "10.1.0.1"}
    a.backend.remove(deleted(first))
    a.backend.remove(deleted(second))
    a.backend.install(second)  # the route went with the last SA: looked up again
    assert len(asked) == 2 and a.routes.routes == {"10.2.0.0/24": "10.1.0.1"}


def test_full_tunnel_splits_the_default_route_and_pins_the_peer(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    sa = child(remote_ts=("0.0.0.0/0",))
    a.backend.install(sa)
    assert a.routes.log == ["bypass 192.0.2.2", "add 0.0.0.0/1", "add 128.0.0.0/1"]
    assert a.routes.routes == {"0.0.0.0/1": "10.1.0.1", "128.0.0.0/1": "10.1.0.1"}
    b.backend.install(child(initiator=False, remote_ts=("0.0.0.0/0",)))  # B's local_ts is /0
    assert b.routes.bypasses == set() and set(b.routes.routes) == {"10.1.0.0/24"}
    a.tun.to_read.append(udp_packet("10.1.0.1", "198.51.100.7", b"anywhere"))
    a.backend.handle_tun_readable()
    carry_raw(a, b)
    assert len(b.tun.written) == 1
    a.backend.remove(deleted(sa))
    assert a.routes.routes == {} and a.routes.bypasses == set()
    assert a.routes.log[-1] == "unbypass 192.0.2.2"


def test_tun_routes_and_peer_inside() -> None:
    from ikev1d.dataplane.userspace import peer_inside, tun_routes

    assert tun_routes((net("::/0"), net("10.0.0.0/8"), net("10.0.0.0/8"))) == (
        net("::/1"), net("8000::/1"), net("10.0.0.0/8"))
    assert peer_inside("192.0.2.2", (net("192.0.0.0/16"),))
    assert not peer_inside("192.0.2.2", (net("10.0.0.0/8"), net("::/0")))
    assert not peer_inside("not-an-address", (net("0.0.0.0/0"),))


def test_send_errors_are_counted_per_sa(sides: tuple[Side, Side]) -> None:
    a, _ = sides
    a.backend.install(child())

    def refuse(esp: bytes, local: str, remote: str) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    a.raw.send = refuse  # type: ignore[method-assign]
    a.tun.to_read.extend(udp_packet("10.1.0.1", "10.2.0.1", b"x") for _ in range(3))
    a.backend.handle_tun_readable()
    c = a.backend.counters(0xC0000001, 0xC0000002)
    assert c.drops is not None
    assert (c.packets_out, c.drops.dropped_out) == (0, 3)
    assert a.backend.drops["send_error"] == 3


# --- the responder's inbound half before Quick Mode message 3 --------------------------------


def test_inbound_half_opens_before_completion_and_seals_only_after(
    sides: tuple[Side, Side],
) -> None:
    """B answered A's Quick Mode: A sends on the pair at once (RFC 2409 section 5.5),
    B opens it from message 2 on but seals on it only once message 3 completes it.
    Its routes are taken at once, so B's answers meanwhile stay in the TUN device."""
    a, b = sides
    a.backend.install(child())
    b.backend.install_inbound(child(initiator=False))
    assert b.routes.routes == {"10.1.0.0/24": "10.2.0.1"}
    ping = udp_packet("10.1.0.1", "10.2.0.1", b"early")
    a.tun.to_read.append(ping)
    a.backend.handle_tun_readable()
    carry_raw(a, b)
    assert b.tun.written == [ping] and b.backend.drops["unknown_spi"] == 0
    back = udp_packet("10.2.0.1", "10.1.0.1", b"reply")
    b.tun.to_read.append(back)
    b.backend.handle_tun_readable()
    assert b.raw.sent == [] and b.backend.drops["no_sa"] == 1
    assert b.backend.counters(0xC0000002, 0xC0000001) == Counters(0, 0, 0, 0, drops=None)
    b.backend.install(child(initiator=False))  # message 3
    b.tun.to_read.append(back)
    b.backend.handle_tun_readable()
    assert [esp[:4] for esp, _, _ in b.raw.sent] == [(0xC0000001).to_bytes(4, "big")]
    carry_raw(b, a)
    assert a.tun.written == [back]
    # What it opened before completion is the completed pair's, as is its replay window.
    counters = b.backend.counters(0xC0000002, 0xC0000001)
    assert (counters.packets_in, counters.packets_out) == (1, 1)
    b.backend.remove(deleted(child(initiator=False)))
    assert b.routes.routes == {}


def test_withdrawn_inbound_half_leaves_nothing(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.backend.install(child())
    half = child(initiator=False)
    b.backend.install_inbound(half)
    b.backend.install_inbound(half)  # again: one route reference
    b.backend.remove(deleted(half))
    assert b.routes.routes == {} and len(b.backend.sad) == 0
    a.tun.to_read.append(udp_packet("10.1.0.1", "10.2.0.1", b"late"))
    a.backend.handle_tun_readable()
    carry_raw(a, b)
    assert b.tun.written == [] and b.backend.drops["unknown_spi"] == 1
    b.backend.install_inbound(half)
    b.backend.close()  # an inbound half goes with the rest
    assert b.backend.sad.by_spi_in(half.spi_in) is None
    assert b.backend.sad.inbound_only_entries() == []


def test_renewal_inbound_half_does_not_take_outbound_traffic(sides: tuple[Side, Side]) -> None:
    """The pair it renews seals until message 3 completes the new one."""
    _, b = sides
    b.backend.install(child(initiator=False))
    renewal = child(initiator=False, spis=(0xC0000003, 0xC0000004))
    b.backend.install_inbound(renewal)
    b.tun.to_read.append(udp_packet("10.2.0.1", "10.1.0.1", b"x"))
    b.backend.handle_tun_readable()
    assert b.raw.sent[-1][0][:4] == (0xC0000001).to_bytes(4, "big")
    b.backend.install(renewal)
    b.tun.to_read.append(udp_packet("10.2.0.1", "10.1.0.1", b"y"))
    b.backend.handle_tun_readable()
    assert b.raw.sent[-1][0][:4] == (0xC0000003).to_bytes(4, "big")
    b.backend.remove(deleted(child(initiator=False)))
    assert b.routes.routes == {"10.1.0.0/24": "10.2.0.1"}  # the renewal's


def test_sas_installed_used_and_removed_leave_no_reference_cycles(
    sides: tuple[Side, Side],
) -> None:
    """The daemon freezes what survives a collection (``ikev1d.daemon.collector``): an
    SA's entries must be freed by reference counting when it goes, cycles would stay."""
    a, b = sides
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.garbage.clear()
    try:
        for spis in ((0xC0000001, 0xC0000002), (0xC0000003, 0xC0000004)):
            sa_a, sa_b = child(spis=spis), child(initiator=False, spis=spis)
            a.backend.install_inbound(sa_a)
            a.backend.install(sa_a)
            b.backend.install(sa_b)
            a.tun.to_read.append(udp_packet("10.1.0.1", "10.2.0.1", b"x" * 100))
            a.backend.handle_tun_readable()
            assert carry_raw(a, b) == 1
            a.backend.remove(deleted(sa_a))
            b.backend.remove(deleted(sa_b))
        gc.collect()
        assert [type(o).__qualname__ for o in gc.garbage] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
