"""The daemon's side of the data plane's crash recovery and expiry reports."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import tempfile

import pytest

from ikev1d.daemon.runtime import Daemon, DaemonOptions, dataplane_state_file
from ikev1d.dataplane.base import AcquireHandler, DataplaneError, ExpireHandler
from ikev1d.engine.api import (
    ChildSaEstablished,
    ChildSaInboundReady,
    ChildSaInboundWithdrawn,
    ConnectionFailed,
    Datagram,
    TrapInstalled,
    TrapRemoved,
    VirtualIpAssigned,
    VirtualIpReleased,
)
from tests.unit.daemon._fakes import (
    FakeEngine,
    RecordingBackend,
    collecting_factory,
    free_udp_ports,
    make_config,
    running_daemon,
)


class StatefulBackend(RecordingBackend):
    def __init__(self) -> None:
        super().__init__()
        self.recovered: list[str] = []
        self.handler: ExpireHandler | None = None

    def recover(self, state_file: str) -> None:
        self.recovered.append(state_file)

    def set_expire_handler(self, handler: ExpireHandler) -> None:
        self.handler = handler


class ExpiryEngine(FakeEngine):
    def child_soft_expired(self, child_id: int, reason: str, now: float) -> None:
        self.calls.append(f"soft {child_id} {reason}")

    def child_hard_expired(self, child_id: int, reason: str, now: float) -> None:
        self.calls.append(f"hard {child_id} {reason}")


def test_state_file_sits_beside_the_control_socket() -> None:
    assert dataplane_state_file("/run/ikev1d/ikev1d.sock", "kernel") == (
        "/run/ikev1d/ikev1d.kernel-dataplane.json")
    assert dataplane_state_file("/tmp/x/ctl", "userspace") == "/tmp/x/ctl.userspace-dataplane.json"


def test_daemon_recovers_before_start_and_passes_expiry_to_the_engine() -> None:
    async def body() -> None:
        port, port_nat_t = free_udp_ports(2)
        config = make_config(port, port_nat_t)
        backend = StatefulBackend()
        engines: list[FakeEngine] = []
        factory = collecting_factory(engines)

        def engine_factory(cfg: object, rnd: object) -> FakeEngine:
            engine = factory(cfg, rnd)  # type: ignore[arg-type]
            engine.__class__ = ExpiryEngine
            return engine

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ikev1d.sock")
            daemon = Daemon(DaemonOptions("x.toml", path, linger_s=0.05),
                            config_loader=lambda p: config, engine_factory=engine_factory,
                            backend_factory=lambda n, c: backend, warnings=lambda c: [],
                            install_signal_handlers=False)
            await daemon.start()
            try:
                assert backend.recovered == [os.path.join(tmp, "ikev1d.recording-dataplane.json")]
                assert backend.handler is not None
                backend.handler(5, False, "life_bytes nearly reached")
                backend.handler(6, True, "life_bytes reached")
                assert engines[0].calls == []  # not from inside the packet path
                await asyncio.sleep(0.01)
                assert engines[0].calls == ["soft 5 life_bytes nearly reached",
                                            "hard 6 life_bytes reached"]
            finally:
                await daemon.stop()

    asyncio.run(body())


class TrappingBackend(RecordingBackend):
    def __init__(self) -> None:
        super().__init__()
        self.traps: list[str] = []
        self.acquire: AcquireHandler | None = None

    def set_acquire_handler(self, handler: AcquireHandler) -> None:
        self.acquire = handler

    def install_trap(self, trap: TrapInstalled) -> None:
        self.traps.append(f"+{trap.conn}/{trap.child}")

    def remove_trap(self, conn: str, child: str) -> None:
        self.traps.append(f"-{conn}/{child}")


class TrapEngine(FakeEngine):
    def start(self, now: float) -> None:
        self.emit(TrapInstalled("gw", "net", "192.0.2.1", "192.0.2.2", "tunnel", (), ()))

    def acquire(self, conn: str, child: str, now: float) -> None:
        self.calls.append(f"acquire {conn}/{child}")
        self.emit(TrapRemoved(conn, child))


def test_daemon_hands_traps_to_the_data_plane_and_acquires_to_the_engine() -> None:
    async def body() -> None:
        port, port_nat_t = free_udp_ports(2)
        config = make_config(port, port_nat_t)
        backend = TrappingBackend()
        engines: list[FakeEngine] = []
        factory = collecting_factory(engines)

        def engine_factory(cfg: object, rnd: object) -> FakeEngine:
            engine = factory(cfg, rnd)  # type: ignore[arg-type]
            engine.__class__ = TrapEngine
            return engine

        with tempfile.TemporaryDirectory() as tmp:
            daemon = Daemon(DaemonOptions("x.toml", os.path.join(tmp, "ikev1d.sock"),
                                          linger_s=0.05),
                            config_loader=lambda p: config, engine_factory=engine_factory,
                            backend_factory=lambda n, c: backend, warnings=lambda c: [],
                            install_signal_handlers=False)
            await daemon.start()
            try:
                assert backend.traps == ["+gw/net"]
                assert backend.acquire is not None
                backend.acquire("gw", "net")
                assert engines[0].calls == []  # not from inside the packet path
                await asyncio.sleep(0.01)
                assert engines[0].calls == ["acquire gw/net"]
                assert backend.traps == ["+gw/net", "-gw/net"]
            finally:
                await daemon.stop()

    asyncio.run(body())


def test_virtual_ip_goes_onto_the_data_plane_and_off_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vip = ipaddress.ip_address("10.3.0.7")

    async def body() -> None:
        async with running_daemon() as h:
            caplog.set_level("INFO")
            h.engine.emit(VirtualIpAssigned("site-ok", 4, vip, (ipaddress.ip_address("10.2.0.53"),),
                                            (ipaddress.ip_network("10.2.0.0/16"),)))
            h.daemon._pump()
            assert h.backend.vips == {4: ("10.3.0.7", ("10.2.0.0/16",))}
            h.engine.emit(VirtualIpReleased("site-ok", 4, ipaddress.ip_address("10.3.0.8")))
            h.daemon._pump()
            assert 4 in h.backend.vips  # another address: not this one's to remove
            h.engine.emit(VirtualIpReleased("site-ok", 4, vip))
            h.daemon._pump()
            assert h.backend.vips == {}
            # A data plane that refuses: logged, and the daemon goes on.
            h.backend.refuse = "no TUN"
            h.engine.emit(VirtualIpAssigned("site-ok", 5, vip))
            h.daemon._pump()
            assert "virtual IP 10.3.0.7 not put on this host: no TUN" in caplog.text

    asyncio.run(body())


def _pair(spi_in: int = 0xC1000001, spi_out: int = 0xD1000001) -> ChildSaEstablished:
    return ChildSaEstablished(
        "site-ok", "net", 1, 7, spi_in, spi_out, "aes128gcm16", "aes-gcm-16", 16, 16, None,
        "tunnel", False, ("127.0.0.1", 500), ("127.0.0.2", 500),
        (ipaddress.ip_network("10.1.0.0/24"),), (ipaddress.ip_network("10.2.0.0/24"),),
        b"i" * 20, b"o" * 20)


def test_inbound_half_goes_to_the_data_plane_before_quick_mode_message_2_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RFC 2409 section 5.5: the initiator may send on the SAs once it has our message 2,
    so the data plane gets their inbound half before the datagram leaves; message 3
    completes the pair, a withdrawal removes the half; no updown, no waiter."""
    async def body() -> None:
        async with running_daemon() as h:
            order: list[str] = []
            backend = h.backend
            real_inbound = backend.install_inbound

            def install_inbound(sa: ChildSaEstablished) -> None:
                order.append(f"inbound {sa.spi_in:08x}")
                real_inbound(sa)

            backend.install_inbound = install_inbound  # type: ignore[method-assign]
            udp = h.daemon._udp
            assert udp is not None
            def send_ike(d: Datagram) -> bool:
                order.append("send")
                return True

            udp.send_ike = send_ike  # type: ignore[method-assign,assignment]
            pair = _pair()
            h.engine.emit(ConnectionFailed("site-ok", None, "an earlier event"))
            h.engine.send(Datagram(b"qm2", ("127.0.0.1", 500), ("127.0.0.2", 500)))
            h.engine.emit(ChildSaInboundReady(pair))
            h.daemon._pump()
            assert order == ["inbound c1000001", "send"]
            assert backend.inbound_only == {(pair.spi_in, pair.spi_out): pair}
            assert backend.installed == {}
            h.engine.emit(pair)  # message 3
            h.daemon._pump()
            assert backend.inbound_only == {} and (pair.spi_in, pair.spi_out) in backend.installed
            other = _pair(0xC1000002, 0xD1000002)
            h.engine.emit(ChildSaInboundReady(other))
            h.engine.emit(ChildSaInboundWithdrawn("site-ok", "net", 1, 8, other.spi_in,
                                                  other.spi_out, "no response to Quick Mode"))
            h.daemon._pump()
            assert backend.inbound_only == {}
            assert [(r.spi_in, r.reason) for r in backend.removed] == [
                (other.spi_in, "no response to Quick Mode")]
            # A data plane that cannot: a warning, and the whole pair goes in on message 3.
            def refuse(sa: ChildSaEstablished) -> None:
                raise DataplaneError("no room")

            backend.install_inbound = refuse  # type: ignore[method-assign]
            caplog.set_level("WARNING")
            h.engine.emit(ChildSaInboundReady(_pair(0xC1000003, 0xD1000003)))
            h.daemon._pump()
            assert "inbound IPsec SA c1000003_i of net not installed before Quick Mode " \
                   "message 3: no room" in caplog.text

    asyncio.run(body())
