"""Traps in the userspace data plane, with the fake TUN device, raw socket and routes:
the route stays across the SA coming and going, packets without SA ask once."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest

from ikev1d.dataplane.base import CatchesTraffic, DataplaneError
from ikev1d.engine.api import TrapInstalled
from tests.unit.dataplane.test_userspace import Side, child, deleted, udp_packet

net = ipaddress.ip_network


def trap(remote_ts: str = "10.2.0.0/24", mode: str = "tunnel") -> TrapInstalled:
    return TrapInstalled("gw", "net", "192.0.2.1", "192.0.2.2", mode,
                         (net("10.1.0.0/24"),), (net(remote_ts),))


class TrapSide(Side):
    def __init__(self) -> None:
        super().__init__(["10.1.0.1"])
        self.acquired: list[tuple[str, str]] = []
        self.backend.set_acquire_handler(lambda c, ch: self.acquired.append((c, ch)))


@pytest.fixture
def side() -> Iterator[TrapSide]:
    loop = asyncio.new_event_loop()
    s = TrapSide()
    s.backend.attach(s.send_udp, loop)
    yield s
    s.backend.close()
    loop.close()


def send(side: Side, dst: str = "10.2.0.7", n: int = 1) -> None:
    side.tun.to_read.extend(udp_packet("10.1.0.1", dst, b"x") for _ in range(n))
    side.backend.handle_tun_readable()


def test_catches_traffic(side: TrapSide) -> None:
    assert isinstance(side.backend, CatchesTraffic)


def test_a_trap_routes_and_asks_once_per_burst(side: TrapSide) -> None:
    side.backend.install_trap(trap())
    assert side.routes.routes == {"10.2.0.0/24": "10.1.0.1"}
    send(side, n=20)
    assert side.acquired == [("gw", "net")]
    assert side.backend.drops["trapped"] == 20 and side.backend.drops["no_sa"] == 0
    assert side.raw.sent == []
    send(side, dst="10.9.0.1")  # outside the trap: an ordinary drop, no acquire
    assert side.backend.drops["no_sa"] == 1
    assert side.acquired == [("gw", "net")]


def test_the_route_stays_while_the_sa_comes_and_goes(side: TrapSide) -> None:
    side.backend.install_trap(trap())
    sa = child()
    side.backend.install(sa)
    send(side)
    assert len(side.raw.sent) == 1 and side.acquired == []
    side.backend.remove(deleted(sa))
    assert side.routes.log == ["add 10.2.0.0/24"]  # no flap
    side.backend.remove_trap("gw", "net")
    assert side.routes.log == ["add 10.2.0.0/24", "del 10.2.0.0/24"]
    assert side.routes.routes == {}


def test_replacing_a_trap_does_not_flap_its_route(side: TrapSide) -> None:
    side.backend.install_trap(trap())
    side.backend.install_trap(trap())
    assert side.routes.log == ["add 10.2.0.0/24"]
    side.backend.install_trap(trap("10.3.0.0/24"))
    assert side.routes.routes == {"10.3.0.0/24": "10.1.0.1"}
    send(side, dst="10.2.0.7")
    assert side.acquired == []


def test_a_full_tunnel_trap_pins_the_peer(side: TrapSide) -> None:
    side.backend.install_trap(trap("0.0.0.0/0"))
    assert side.routes.bypasses == {"192.0.2.2"}
    assert set(side.routes.routes) == {"0.0.0.0/1", "128.0.0.0/1"}
    side.backend.remove_trap("gw", "net")
    assert side.routes.bypasses == set() and side.routes.routes == {}


def test_transport_mode_cannot_be_trapped(side: TrapSide) -> None:
    with pytest.raises(DataplaneError, match="tunnel only"):
        side.backend.install_trap(trap(mode="transport"))
    assert side.routes.routes == {}


def test_a_trap_for_any_source_names_no_route_source(side: TrapSide) -> None:
    """A road warrior's trap (its virtual IP still to come) catches every source and
    leaves the route's source to the kernel, which takes the virtual IP once it is on
    the TUN device: a source pinned now would be the host's, and stay so."""
    side.backend.install_trap(TrapInstalled("gw", "net", "192.0.2.1", "192.0.2.2", "tunnel",
                                            (net("0.0.0.0/0"),), (net("10.2.0.0/24"),)))
    assert side.routes.routes == {"10.2.0.0/24": None}
    send(side)
    assert side.acquired == [("gw", "net")]
