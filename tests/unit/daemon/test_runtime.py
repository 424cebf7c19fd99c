"""The daemon runtime with a fake engine on loopback high ports."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import socket
import stat
import tempfile
import threading

import pytest

from ikev1d.config import Config, parse_config
from ikev1d.daemon.control import UpRequest
from ikev1d.daemon.runtime import (
    TIMER_GRID_S,
    ConfigLoadError,
    Daemon,
    DaemonError,
    DaemonOptions,
)
from ikev1d.daemon.systemd import Notifier
from ikev1d.dataplane.base import DataplaneError
from ikev1d.status import Counters
from ikev1d.wire.constants import NON_ESP_MARKER
from tests.unit.daemon._fakes import (
    CONFIG,
    FakeEngine,
    RecordingBackend,
    UdpPeer,
    collecting_factory,
    eventually,
    free_udp_ports,
    fresh_config,
    make_config,
    running_daemon,
)


def test_datagram_reaches_engine_and_answer_comes_back() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            peer = UdpPeer()
            try:
                port = h.config.daemon.port
                peer.send(b"ping-1", ("127.0.0.1", port))
                data, source = await peer.recv()
                assert data == b"pong-1"
                assert source == ("127.0.0.1", port)
                assert h.engine.received == [(b"ping-1", ("127.0.0.1", port), peer.endpoint)]
            finally:
                peer.close()

    asyncio.run(body())


def test_wildcard_bind_learns_local_address_and_replies_from_it() -> None:
    async def body() -> None:
        async with running_daemon(listen=("0.0.0.0",)) as h:
            peer = UdpPeer()
            try:
                port = h.config.daemon.port
                # 127.0.0.2 is on lo but is not the address the peer's packets come from.
                peer.send(b"ping-2", ("127.0.0.2", port))
                data, source = await peer.recv()
                assert data == b"pong-2"
                assert source == ("127.0.0.2", port)
                assert h.engine.received[0][1] == ("127.0.0.2", port)
            finally:
                peer.close()

    asyncio.run(body())


def test_nat_t_port_strips_marker_drops_keepalive_and_hands_esp_to_data_plane() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            peer = UdpPeer()
            try:
                nat_t = ("127.0.0.1", h.config.daemon.port_nat_t)
                peer.send(b"\xff", nat_t)
                peer.send(b"\x00\x00\x10\x01esp-payload", nat_t)
                peer.send(NON_ESP_MARKER + b"ping-3", nat_t)
                data, source = await peer.recv()
                # The answer leaves the NAT-T port with the marker added back.
                assert data == NON_ESP_MARKER + b"pong-3"
                assert source == nat_t
                assert h.engine.received == [(b"ping-3", nat_t, peer.endpoint)]
                assert h.backend.esp == [(b"\x00\x00\x10\x01esp-payload", nat_t, peer.endpoint)]
                # The backend sends UDP-encapsulated ESP without a marker.
                assert h.backend.send_udp is not None
                h.backend.send_udp(b"\x00\x00\x10\x01out", nat_t, peer.endpoint)
                data, _ = await peer.recv()
                assert data == b"\x00\x00\x10\x01out"
            finally:
                peer.close()

    asyncio.run(body())


def test_engine_exception_is_logged_and_daemon_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        async with running_daemon() as h:
            peer = UdpPeer()
            try:
                port = ("127.0.0.1", h.config.daemon.port)
                peer.send(b"crash", port)
                peer.send(b"ping-4", port)
                data, _ = await peer.recv()
                assert data == b"pong-4"
            finally:
                peer.close()

    asyncio.run(body())
    assert "internal error while processing a datagram" in caplog.text


def test_stop_calls_shutdown_flushes_deletes_and_cleans_up() -> None:
    async def body() -> None:
        peer = UdpPeer()
        try:
            async with running_daemon() as h:
                port = ("127.0.0.1", h.config.daemon.port)
                peer.send(b"ping-5", port)
                await peer.recv()
                h.engine.local = port
                h.engine.peer = peer.endpoint
                h.daemon.request_stop()
                socket_path = h.socket_path
                assert os.path.exists(socket_path)
                engine, backend = h.engine, h.backend
            # running_daemon's exit awaited daemon.stop()
            assert "shutdown" in engine.calls
            assert backend.closed
            assert not os.path.exists(socket_path)
            data, source = await peer.recv()
            assert (data, source) == (b"shutdown-delete", port)
        finally:
            peer.close()

    asyncio.run(body())


def test_sigterm_sends_deletes_and_run_returns() -> None:
    async def body() -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.bind(("127.0.0.1", 0))
        listener.setblocking(False)
        port, port_nat_t = free_udp_ports(2)
        config = make_config(port, port_nat_t)
        engines: list[FakeEngine] = []
        backend = RecordingBackend()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ikev1d.sock")
            daemon = Daemon(
                DaemonOptions("x.toml", path, linger_s=0.05),
                config_loader=lambda p: config,
                engine_factory=collecting_factory(engines),
                backend_factory=lambda n, c: backend,
                warnings=lambda c: [],
            )
            task = asyncio.create_task(daemon.run())
            await daemon.wait_started()
            engines[0].peer = listener.getsockname()
            engines[0].local = ("127.0.0.1", port)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(task, 2.0)
            data = await asyncio.wait_for(
                asyncio.get_running_loop().sock_recv(listener, 100), 1.0
            )
            assert data == b"shutdown-delete"
            assert engines[0].calls == ["shutdown"]
            assert backend.closed
            assert not os.path.exists(path)
            # The handlers are gone: SIGHUP must not be routed to the stopped daemon.
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        listener.close()

    asyncio.run(body())


def test_sighup_reloads_and_a_bad_config_keeps_the_old_one() -> None:
    port, port_nat_t = free_udp_ports(2)
    second = make_config(port, port_nat_t)
    configs: list[Config | ConfigLoadError] = [
        make_config(port, port_nat_t),
        second,
        ConfigLoadError("x.toml: connections.a.proposals: unknown algorithm 'foo'"),
    ]

    def loader(path: str) -> Config:
        item = configs.pop(0)
        if isinstance(item, ConfigLoadError):
            raise item
        return item

    async def body() -> None:
        async with running_daemon(install_signal_handlers=True, config_loader=loader) as h:
            os.kill(os.getpid(), signal.SIGHUP)
            await eventually(lambda: "reload" in h.engine.calls)
            assert len(h.engine.reloaded) == 1 and h.engine.reloaded[0] is second
            assert h.engine.config is second
            ok, message = await h.daemon.reload()
            assert not ok
            assert "unknown algorithm 'foo'" in message
            assert h.engine.calls.count("reload") == 1

    asyncio.run(body())


class GatedLoader:
    """A config loader for reloads that waits, in whatever thread calls it, until the
    test opens its gate (at most 5 s), noting how many calls overlapped."""

    def __init__(self, configs: list[Config]) -> None:
        self.configs = configs
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.threads: set[int] = set()
        self.running = 0
        self.most_at_once = 0
        self.started = False  # the daemon's own start-up load passes straight through

    def __call__(self, path: str) -> Config:
        if not self.started:
            self.started = True
            return self.configs.pop(0)
        self.threads.add(threading.get_ident())
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        self.entered.set()
        try:
            self.gate.wait(5.0)
            return self.configs.pop(0)
        finally:
            self.running -= 1


def test_a_reload_loads_the_file_while_the_loop_goes_on() -> None:
    """With thousands of connections parsing takes seconds: the loop serves meanwhile
    (the loader runs in another thread), and only the result is applied on the loop."""
    port, port_nat_t = free_udp_ports(2)
    second = make_config(port, port_nat_t)
    loader = GatedLoader([make_config(port, port_nat_t), second])

    async def body() -> None:
        async with running_daemon(config_loader=loader) as h:
            loop = asyncio.get_running_loop()
            reload = asyncio.ensure_future(h.daemon.reload())
            await loop.run_in_executor(None, loader.entered.wait, 5.0)
            ticks = 0
            for _ in range(5):  # the loop runs while the loader is held
                await asyncio.sleep(0.01)
                ticks += 1
            assert not reload.done() and "reload" not in h.engine.calls
            loader.gate.set()
            ok, message = await asyncio.wait_for(reload, 5.0)
            assert ok, message
            assert ticks == 5
            assert threading.get_ident() not in loader.threads
            assert h.engine.reloaded == [second]

    asyncio.run(body())


def test_reloads_asked_together_are_loaded_and_applied_one_at_a_time_in_order() -> None:
    port, port_nat_t = free_udp_ports(2)
    second, third = make_config(port, port_nat_t), make_config(port, port_nat_t)
    loader = GatedLoader([make_config(port, port_nat_t), second, third])

    async def body() -> None:
        async with running_daemon(config_loader=loader) as h:
            first = asyncio.ensure_future(h.daemon.reload())
            then = asyncio.ensure_future(h.daemon.reload())
            await asyncio.sleep(0.05)
            loader.gate.set()
            results = await asyncio.wait_for(asyncio.gather(first, then), 5.0)
            assert [ok for ok, _ in results] == [True, True]
            assert loader.most_at_once == 1
            assert h.engine.reloaded == [second, third]

    asyncio.run(body())


class RecordingNotifier(Notifier):
    """What the daemon would tell systemd, in order."""

    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[str] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.append(" ".join(assignments))
        return True


def test_a_reload_still_loading_when_the_daemon_stops_is_not_applied() -> None:
    port, port_nat_t = free_udp_ports(2)
    loader = GatedLoader([make_config(port, port_nat_t), make_config(port, port_nat_t)])
    notifier = RecordingNotifier()

    async def body() -> None:
        async with running_daemon(config_loader=loader, notifier=notifier) as h:
            loop = asyncio.get_running_loop()
            reload = asyncio.ensure_future(h.daemon.reload())
            await loop.run_in_executor(None, loader.entered.wait, 5.0)
            h.daemon.request_stop()
            await h.daemon.stop()
            loader.gate.set()
            ok, message = await asyncio.wait_for(reload, 5.0)
            assert not ok and "shutting down" in message
            assert "reload" not in h.engine.calls
            # systemd heard of the reload and then of the stop, and nothing after it.
            assert notifier.sent[-2:] == ["RELOADING=1", "STOPPING=1"]

    asyncio.run(body())


def test_a_loader_that_fails_unexpectedly_leaves_the_daemon_running_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, port_nat_t = free_udp_ports(2)
    configs: list[Config] = [make_config(port, port_nat_t)]

    def loader(path: str) -> Config:
        if configs:
            return configs.pop(0)
        raise RuntimeError("disk on fire")

    async def body() -> None:
        async with running_daemon(config_loader=loader) as h:
            ok, message = await h.daemon.reload()
            assert not ok and "disk on fire" in message
            assert "reload" not in h.engine.calls
            ok, message = await h.daemon.reload()  # and it can be asked again
            assert not ok

    with caplog.at_level(logging.ERROR, logger="ikev1d"):
        asyncio.run(body())
    assert "reload failed while loading" in caplog.text


def test_the_lookup_indexes_are_built_with_the_configuration() -> None:
    """At start-up and on a reload (in the loading thread): not by the first peer's
    request, which would wait for them."""
    port, port_nat_t = free_udp_ports(2)
    second = make_config(port, port_nat_t)
    configs = [make_config(port, port_nat_t), second]

    async def body() -> None:
        async with running_daemon(config_loader=lambda path: configs.pop(0)) as h:
            for config in (h.engine.config, second):
                if config is second:
                    ok, message = await h.daemon.reload()
                    assert ok, message
                assert {"_address_index", "_ike_secrets", "_xauth_passwords"} <= \
                    set(vars(config))

    asyncio.run(body())


def test_port_in_use_fails_cleanly() -> None:
    async def body() -> None:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", 0))
        port_nat_t = blocker.getsockname()[1]
        port = free_udp_ports(1)[0]
        config = make_config(port, port_nat_t)
        backend = RecordingBackend()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ikev1d.sock")
            daemon = Daemon(
                DaemonOptions("x.toml", path),
                config_loader=lambda p: config,
                engine_factory=FakeEngine,
                backend_factory=lambda n, c: backend,
                warnings=lambda c: [],
            )
            with pytest.raises(DaemonError, match=f"cannot bind UDP 127.0.0.1 port {port_nat_t}"):
                await daemon.start()
            assert backend.closed
            assert not os.path.exists(path)
            # The port 500 socket that did bind was closed again.
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", port))
            probe.close()
        blocker.close()

    asyncio.run(body())


def test_bad_config_and_data_plane_errors_fail_start() -> None:
    def bad_loader(path: str) -> Config:
        raise ConfigLoadError("x.toml: daemon.port: must be 1..65535")

    def bad_backend(name: str, cfg: object) -> RecordingBackend:
        raise DataplaneError("data plane 'userspace' is not available: no /dev/net/tun")

    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "ikev1d.sock")
            daemon = Daemon(DaemonOptions("x.toml", path), config_loader=bad_loader,
                            engine_factory=FakeEngine, warnings=lambda c: [])
            with pytest.raises(DaemonError, match=r"daemon\.port: must be"):
                await daemon.start()
            config = fresh_config()
            daemon = Daemon(DaemonOptions("x.toml", path), config_loader=lambda p: config,
                            engine_factory=FakeEngine, backend_factory=bad_backend,
                            warnings=lambda c: [])
            with pytest.raises(DaemonError, match="no /dev/net/tun"):
                await daemon.start()
            assert not os.path.exists(path)

            def bad_engine(cfg: object, rnd: object) -> FakeEngine:
                raise ValueError("no usable proposal")

            backend = RecordingBackend()
            daemon = Daemon(DaemonOptions("x.toml", path), config_loader=lambda p: config,
                            engine_factory=bad_engine, backend_factory=lambda n, c: backend,
                            warnings=lambda c: [])
            with pytest.raises(DaemonError, match="engine cannot start: no usable proposal"):
                await daemon.start()
            assert backend.closed
            assert not os.path.exists(path)

    asyncio.run(body())


def test_control_socket_permissions_stale_socket_and_running_daemon() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            mode = os.stat(h.socket_path).st_mode
            assert stat.S_IMODE(mode) == 0o600
            assert stat.S_IMODE(os.stat(os.path.dirname(h.socket_path)).st_mode) == 0o700
            # A second daemon on the same socket refuses to start and leaves the socket alone.
            config = fresh_config()
            second = Daemon(DaemonOptions("x.toml", h.socket_path),
                            config_loader=lambda p: config, engine_factory=FakeEngine,
                            backend_factory=lambda n, c: RecordingBackend(),
                            warnings=lambda c: [], install_signal_handlers=False)
            with pytest.raises(DaemonError, match="already running"):
                await second.start()
            assert os.path.exists(h.socket_path)

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "stale.sock")
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stale.bind(path)
            stale.close()  # the file stays, nobody listens
            config = fresh_config()
            daemon = Daemon(DaemonOptions("x.toml", path, linger_s=0.0),
                            config_loader=lambda p: config, engine_factory=FakeEngine,
                            backend_factory=lambda n, c: RecordingBackend(),
                            warnings=lambda c: [], install_signal_handlers=False)
            await daemon.start()
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            await daemon.stop()
            assert not os.path.exists(path)

    asyncio.run(body())


def test_child_events_reach_data_plane_and_counters_reach_status() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            h.daemon.engine.initiate("site-ok", None, h.daemon.now())
            h.daemon._pump()  # what every input path does
            await eventually(lambda: len(h.backend.installed) == 2)
            # The engine knows no traffic; the daemon puts the data plane's counters in.
            assert all(child.counters == Counters() for ike_sa in
                       h.engine.status(h.daemon.now()).ike_sas for child in ike_sa.children)
            status = h.daemon.status()
            child = status.ike_sas[0].children[0]
            assert child.counters == Counters(bytes_in=0x01, bytes_out=2, packets_in=3,
                                              packets_out=4)
            ok, message = h.daemon.down("site-ok")
            assert ok, message
            assert "deleted 1 ISAKMP SA(s) and 2 IPsec SA(s)" in message
            assert [sa.child for sa in h.backend.removed] == ["net", "net2"]
            assert h.backend.installed == {}

    asyncio.run(body())


def test_failed_install_fails_up_and_tells_the_engine() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            h.backend.refuse = "no route to the TUN device"
            ok, message = await h.daemon.up(UpRequest("site-ok", None, 5.0), lambda text: None)
            assert not ok
            assert "no route to the TUN device" in message
            engine = h.engines[-1]
            assert any(call.startswith("install_failed") for call in engine.calls)
            assert h.backend.installed == {}

    asyncio.run(body())


def test_start_action_start_initiates_when_the_daemon_starts() -> None:
    port, port_nat_t = free_udp_ports(2)
    text = CONFIG.format(listen='"127.0.0.1"', port=port, port_nat_t=port_nat_t)
    section = "[connections.site-ok]\n"
    text = text.replace(section, section + 'start_action = "start"\n')
    config = parse_config(text, "ikev1d.toml")

    async def main() -> None:
        async with running_daemon(config_loader=lambda path: config) as h:
            await eventually(lambda: any(c.startswith("initiate") for c in h.engine.calls))
            assert [c for c in h.engine.calls if c.startswith("initiate")] == [
                "initiate site-ok None"
            ]

    asyncio.run(main())


def test_engine_timers_run_together_on_the_grid_and_never_early() -> None:
    """Timers due within one TIMER_GRID_S slot share one wakeup (one handle_timer call),
    each run with a ``now`` at or after its deadline."""
    async def body() -> None:
        async with running_daemon() as h:
            engine, daemon = h.engine, h.daemon
            calls: list[float] = []
            handle_timer = engine.handle_timer

            def counting(now: float) -> None:
                calls.append(now)
                handle_timer(now)

            engine.handle_timer = counting  # type: ignore[method-assign]
            ran: list[tuple[float, float]] = []
            grid = TIMER_GRID_S
            slot = math.ceil(daemon.now() / grid) * grid + grid
            deadlines = [slot + grid * f for f in (0.1, 0.5, 0.9)]
            for deadline in deadlines:
                def record(now: float, deadline: float = deadline) -> None:
                    ran.append((deadline, now))
                engine.timers.schedule(deadline, record)
            daemon._pump()
            await eventually(lambda: len(ran) == 3)
            assert all(now >= deadline for deadline, now in ran)
            assert len(calls) == 1
            assert calls[0] < slot + grid + 0.5  # on time, give or take a loaded machine

    asyncio.run(body())
