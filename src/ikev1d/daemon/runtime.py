"""The daemon: drives the sans-I/O engine from sockets, a timer, signals and the control socket.

The engine logs the protocol events (``ISAKMP SA established`` ...) itself; the
daemon logs them again only at DEBUG, and logs what is its own business: sockets,
the data plane, reloads, start and stop.

It makes no protocol decisions (like aioquic's asyncio adapter): after
every input to the engine (datagram, timer, command, reload) it sends what the
engine wants sent, hands IPsec SA events to the data plane, answers waiting
``up`` commands, and re-arms one timer at ``engine.get_timer()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from ikev1d import config as config_module
from ikev1d import logsetup
from ikev1d.config import Config
from ikev1d.daemon.collector import Collector
from ikev1d.daemon.control import (
    MAX_REQUEST_LINE,
    ControlProtocolError,
    DownRequest,
    PingRequest,
    ReloadRequest,
    Request,
    StatusRequest,
    UpRequest,
    decode_request,
    encode_progress,
    encode_response,
    status_response_parts,
)
from ikev1d.daemon.keylog import KeyLog, KeyLogError
from ikev1d.daemon.malloc import limit_arenas
from ikev1d.daemon.metrics import MetricsError, MetricsServer, MetricsSnapshot
from ikev1d.daemon.radius import RadiusClient, RadiusError, RadiusResult, RadiusServer
from ikev1d.daemon.systemd import Notifier
from ikev1d.daemon.udp import UdpError, UdpTransport
from ikev1d.daemon.updown import UpdownRunner
from ikev1d.dataplane.base import (
    CarriesVirtualIps,
    CatchesTraffic,
    DataplaneBackend,
    DataplaneError,
    InstallsInboundFirst,
    KeepsState,
    ReceivesEspBatches,
    ReportsExpiry,
    create_backend,
)
from ikev1d.engine import Engine
from ikev1d.engine.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaInboundReady,
    ChildSaInboundWithdrawn,
    ConnectionFailed,
    Endpoint,
    EngineError,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    TrapInstalled,
    TrapRemoved,
    VirtualIpAssigned,
    VirtualIpReleased,
    XauthCheck,
)
from ikev1d.engine.engine import STATUS_CHUNK
from ikev1d.errors import Ikev1dError
from ikev1d.status import ChildSaStatus, IkeSaStatus, StatusDocument

log = logging.getLogger("ikev1d.daemon")

LINGER_S = 0.5
"""How long the daemon keeps running after shutdown so the Delete messages leave."""
TIMER_GRID_S = 0.05
"""The engine's timers are run at the next multiple of this many seconds of the loop
clock at or after their deadline, never before it. Each established SA holds a few
timers (releasing Main Mode state, DPD, renewal, expiry) set when it came up, so with
thousands of SAs their deadlines are spread as the handshakes were, and run one at a
time every deadline would cost the process a wakeup of its own; gathered on a grid,
a wakeup runs all that fell due in its slot. Retransmission (seconds), DPD (seconds)
and lifetimes (hours) are late by at most this much."""
CONTROL_READ_TIMEOUT_S = 10.0


@runtime_checkable
class AnswersXauthChecks(Protocol):
    """An engine that asks the daemon to check XAUTH passwords (``XauthCheck``)."""

    def xauth_result(self, request_id: int, ok: bool, now: float) -> None: ...


@runtime_checkable
class AnswersXauthChallenges(Protocol):
    """An engine that relays a checker's challenge to the XAUTH client."""

    def xauth_challenge(self, request_id: int, message: str, state: bytes,
                        now: float) -> None: ...


class RadiusChecker(Protocol):
    server: RadiusServer

    async def check(self, user: str, password: bytes, state: bytes = b"") -> RadiusResult: ...
    def close(self) -> None: ...


class DaemonError(Ikev1dError):
    """The daemon cannot start or run; the message is for people."""


class ConfigLoadError(Ikev1dError):
    """The configuration file is unreadable or invalid ("FILE: KEY: reason")."""


ConfigLoader = Callable[[str], Config]
EngineFactory = Callable[[Config, Callable[[int], bytes]], Engine]
BackendFactory = Callable[[str, Config], DataplaneBackend]


def load_config(path: str) -> Config:
    """``ikev1d.config.load_config`` with its errors as ConfigLoadError."""
    try:
        return config_module.load_config(path)
    except config_module.ConfigError as exc:
        raise ConfigLoadError(str(exc)) from None


def create_engine(config: Config, random_bytes: Callable[[int], bytes]) -> Engine:
    return Engine(config, random_bytes=random_bytes, wall_clock=time.time)


def _create_backend(name: str, config: Config) -> DataplaneBackend:
    return create_backend(name, config)


# --- pending `up` commands ----------------------------------------------------------


@dataclass
class _UpWaiter:
    conn: str
    children: set[str]
    """Children still to be established; empty: waiting for the ISAKMP SA only."""
    progress: Callable[[str], None]
    result: asyncio.Future[tuple[bool, str]]
    established: list[str] = field(default_factory=list)

    def finish(self, ok: bool, message: str) -> None:
        if not self.result.done():
            self.result.set_result((ok, message))


def _endpoint_text(endpoint: Endpoint) -> str:
    address, port = endpoint
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --- the daemon ---------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonOptions:
    config_path: str
    socket_path: str
    log_level: str | None = None
    """From the command line; overrides ``[daemon] log_level``."""
    linger_s: float = LINGER_S
    tune_gc: bool = True
    """Freeze start-up's objects and raise the young collection threshold while running."""


class Daemon:
    """One running daemon. ``await run()``; ``request_stop()`` (or SIGTERM) ends it."""

    def __init__(
        self,
        options: DaemonOptions,
        *,
        config_loader: ConfigLoader = load_config,
        engine_factory: EngineFactory = create_engine,
        backend_factory: BackendFactory = _create_backend,
        warnings: Callable[[Config], list[str]] = config_module.config_warnings,
        random_bytes: Callable[[int], bytes] = os.urandom,
        install_signal_handlers: bool = True,
        notifier: Notifier | None = None,
    ) -> None:
        self.options = options
        self._notifier = notifier if notifier is not None else Notifier({})
        self._config_loader = config_loader
        self._engine_factory = engine_factory
        self._backend_factory = backend_factory
        self._warnings = warnings
        self._random_bytes = random_bytes
        self._install_signals = install_signal_handlers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._time: Callable[[], float] = time.monotonic
        """The loop's clock once started (``now()`` without the property's check)."""
        self._config: Config | None = None
        self._engine: Engine | None = None
        self._backend: DataplaneBackend | None = None
        self._udp: UdpTransport | None = None
        self._server: asyncio.AbstractServer | None = None
        self._metrics: MetricsServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._waiters: list[_UpWaiter] = []
        self._keylog: KeyLog | None = None
        self._updown: UpdownRunner | None = None
        self._cleanups: list[tuple[str, Callable[[], None]]] = []
        self._stop: asyncio.Event | None = None
        self._started = asyncio.Event()
        self._stopped = False
        self.radius_factory: Callable[[RadiusServer], RadiusChecker] = RadiusClient
        """Makes the client that answers XauthCheck events (tests hand in another)."""
        self._radius: RadiusChecker | None = None
        self._radius_tasks: set[asyncio.Task[None]] = set()
        self._reload_lock = asyncio.Lock()
        """One reload at a time: a second waits for the first to be applied."""
        self._reload_tasks: set[asyncio.Task[tuple[bool, str]]] = set()
        """Reloads SIGHUP started, cancelled when the daemon stops."""
        self._handlers = self._event_handlers()
        self._collector: Collector | None = None
        """The collector's thresholds before ``start`` tuned them (None: not tuned)."""

    # properties for tests and callers that know the daemon is started

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise DaemonError("daemon not started")
        return self._engine

    @property
    def udp(self) -> UdpTransport:
        if self._udp is None:
            raise DaemonError("daemon not started")
        return self._udp

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise DaemonError("daemon not started")
        return self._loop

    def now(self) -> float:
        # The loop clock is time.monotonic(), the clock the engine's timers use.
        return self.loop.time()

    @property
    def metrics_server(self) -> MetricsServer | None:
        return self._metrics

    async def wait_started(self) -> None:
        await self._started.wait()

    # --- start and stop ---

    async def run(self) -> None:
        """Start, serve until stopped, shut down. Raises DaemonError if it cannot start."""
        await self.start()
        try:
            if self._stop is not None:
                await self._stop.wait()
        finally:
            await self.stop()

    async def start(self) -> None:
        """Bring everything up, or leave nothing behind and raise DaemonError."""
        self._loop = asyncio.get_running_loop()
        self._time = self._loop.time
        self._stop = asyncio.Event()
        try:
            self._start()
            await self._start_control_server()
            await self._start_metrics()
        except BaseException:
            self._run_cleanups()
            raise
        log.info("ikev1d started (config %s, control socket %s)",
                 self.options.config_path, self.options.socket_path)
        self._started.set()
        # start_action = "start": initiate what the configuration says to, now that
        # the sockets and the data plane are up.
        self.engine.start(self.now())
        self._pump()
        self._settle_gc()
        # Sockets bound, data plane up, control socket answering: ready for systemd
        # (Type=notify), which starts units ordered after this one only now.
        self._notifier.ready("running")

    def _start(self) -> None:
        try:
            config, warnings = self._load()
        except ConfigLoadError as exc:
            raise DaemonError(str(exc)) from None
        self._config = config
        self._apply_log_level(config)
        self._log_warnings(warnings)
        _check_control_socket(self.options.socket_path)
        self._open_keylog(config)
        self._updown = UpdownRunner()

        try:
            backend = self._backend_factory(config.daemon.dataplane, config)
        except DataplaneError as exc:
            raise DaemonError(str(exc)) from None
        self._backend = backend
        self._cleanups.append(("data plane", backend.close))
        if isinstance(backend, KeepsState):
            # Before anything is installed: what a killed predecessor left must go first.
            backend.recover(dataplane_state_file(self.options.socket_path, backend.name))

        udp = UdpTransport(
            self.loop,
            config.daemon.listen,
            config.daemon.port,
            config.daemon.port_nat_t,
            on_ike=self._on_ike,
            on_esp=self._on_esp,
            on_esp_many=(self._esp_many_to(backend)
                         if isinstance(backend, ReceivesEspBatches) else None),
        )
        try:
            udp.open()
        except UdpError as exc:
            raise DaemonError(str(exc)) from None
        self._udp = udp
        self._cleanups.append(("UDP sockets", udp.close))
        try:
            attach_sockets = getattr(backend, "attach_udp_sockets", None)
            if attach_sockets is not None:  # a sealing worker sends from our NAT-T port
                attach_sockets([(s.fileno(), s.address, s.port, s.wildcard)
                                for s in udp.sockets if s.port == config.daemon.port_nat_t])
            backend.attach(udp.send_esp_udp, self.loop)
            attach_batch = getattr(backend, "attach_batch", None)
            if attach_batch is not None:  # the userspace data plane: batches via UDP GSO
                attach_batch(udp.send_esp_udp_many)
        except (DataplaneError, OSError) as exc:
            raise DaemonError(f"data plane {backend.name!r}: {exc}") from None
        if isinstance(backend, ReportsExpiry):
            backend.set_expire_handler(self._on_dataplane_expired)
        if isinstance(backend, CatchesTraffic):
            backend.set_acquire_handler(self._on_acquire)

        try:
            self._engine = self._engine_factory(config, self._random_bytes)
        except DaemonError:
            raise
        except Exception as exc:
            log.debug("engine construction failed", exc_info=True)
            raise DaemonError(f"the protocol engine cannot start: {exc}") from exc
        self._cleanups.append(("timer", self._cancel_timer))
        self._cleanups.append(("RADIUS client", self._close_radius))

        if self._install_signals:
            self.loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self.loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            self.loop.add_signal_handler(signal.SIGINT, self.request_stop)
            self.loop.add_signal_handler(signal.SIGUSR1, self._on_sigusr1)
            self._cleanups.append(("signal handlers", self._remove_signal_handlers))

    def _settle_gc(self) -> None:
        """Tune the cyclic garbage collector for a long-running daemon (see
        :mod:`ikev1d.daemon.collector`); ``stop()`` undoes it."""
        if not self.options.tune_gc or self._collector is not None:
            return
        loop = self.loop

        def schedule(fn: Callable[[], None]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn)

        self._collector = Collector(schedule)
        self._collector.settle()

    def _restore_gc(self) -> None:
        collector, self._collector = self._collector, None
        if collector is not None:
            collector.restore()

    def _open_keylog(self, config: Config) -> None:
        directory = config.daemon.keylog_dir
        if not directory:
            return
        keylog = KeyLog(directory)
        try:
            keylog.open()
        except KeyLogError as exc:
            raise DaemonError(str(exc)) from None
        self._keylog = keylog
        log.warning("keylog_dir: writing the keys of every SA to %s (anyone who can read"
                    " them can decrypt the traffic)", directory)

    async def _start_control_server(self) -> None:
        path = self.options.socket_path
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            try:
                os.makedirs(parent, mode=0o700)
            except OSError as exc:
                raise DaemonError(f"cannot create {parent}: {exc.strerror}") from None
        # umask so the socket is 0600 from the first moment, not after a chmod.
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._handle_client, path=path, limit=MAX_REQUEST_LINE
            )
        except OSError as exc:
            raise DaemonError(f"cannot create control socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        self._cleanups.append(("control socket", self._remove_control_socket))

    async def _start_metrics(self) -> None:
        config = self._config
        if config is None or config.daemon.metrics is None:
            return
        server = MetricsServer(self.metrics_snapshot_async, config.daemon.metrics)
        try:
            await server.start()
        except MetricsError as exc:
            raise DaemonError(str(exc)) from None
        self._metrics = server
        self._cleanups.append(("metrics listener", server.close))
        host = config.daemon.metrics[0]
        log.info("serving Prometheus metrics on http://%s:%d/metrics",
                 f"[{host}]" if ":" in host else host, server.port)

    def metrics_snapshot(self) -> MetricsSnapshot:
        """What a scrape shows; runs on the loop, like every other use of the engine."""
        return self._metrics_snapshot(self.status())

    async def metrics_snapshot_async(self) -> MetricsSnapshot:
        """:meth:`metrics_snapshot` with the SAs described a chunk at a time, the loop
        serving in between (:meth:`status_snapshot`)."""
        return self._metrics_snapshot(await self.status_snapshot())

    def _metrics_snapshot(self, status: StatusDocument) -> MetricsSnapshot:
        engine = self.engine
        drops = getattr(self._backend, "drops", None)
        return MetricsSnapshot(
            status=status,
            stats=engine.stats.snapshot(),
            half_open=engine.half_open_count(),
            requests_dropped=self._udp.requests_dropped if self._udp is not None else 0,
            esp_drops=dict(drops) if isinstance(drops, dict) else None,
        )

    def _remove_control_socket(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.options.socket_path)

    def _remove_signal_handlers(self) -> None:
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            self.loop.remove_signal_handler(signum)

    def _run_cleanups(self) -> None:
        while self._cleanups:
            what, cleanup = self._cleanups.pop()
            try:
                cleanup()
            except Exception:
                log.exception("error while closing %s", what)

    def request_stop(self) -> None:
        """Begin the shutdown (SIGTERM, SIGINT)."""
        if self._stop is not None and not self._stop.is_set():
            log.info("shutting down: deleting all SAs")
            self._notifier.stopping()
            self._stop.set()

    async def stop(self) -> None:
        """Send Deletes for every SA, let them leave, close everything. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._stop is None or not self._stop.is_set():
            self._notifier.stopping()
        if self._server is not None:
            self._server.close()
        if self._metrics is not None:
            self._metrics.close()
        for waiter in self._waiters:
            waiter.finish(False, f"{waiter.conn}: the daemon is shutting down")
        for task in list(self._reload_tasks):
            task.cancel()  # a file still being parsed is not applied any more
        if self._engine is not None:
            self._call_engine("shutting down", lambda e, now: e.shutdown(now))
            await asyncio.sleep(self.options.linger_s)
        if self._updown is not None:
            # The "down" scripts of the SAs just deleted; each has its own timeout.
            await self._updown.drain()
        self._run_cleanups()
        self._restore_gc()
        log.info("ikev1d stopped")

    # --- signals and reload ---

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading %s", self.options.config_path)
        task = self.loop.create_task(self.reload())
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    def _on_sigusr1(self) -> None:
        # logrotate has moved the file away: write to a new one at the old name.
        try:
            reopened = logsetup.reopen_log_files()
        except logsetup.LogSetupError as exc:
            log.error("SIGUSR1: %s", exc)
            return
        log.info("SIGUSR1: reopened %s", ", ".join(reopened) or "no log file")

    async def reload(self) -> tuple[bool, str]:
        """Load the config file again; on error keep running with the old one.

        The file is read, parsed, checked and indexed in a worker thread, so that the
        event loop goes on serving IKE, DPD, the control socket and the data plane
        meanwhile (with thousands of connections that takes seconds; the thread and the
        loop share the interpreter, so the loop runs at least every switch interval);
        only applying the result to the engine happens on the loop. Reloads run one at
        a time, in the order asked.

        systemd hears RELOADING=1 before and READY=1 after, whatever the outcome:
        the daemon runs on either way (with the old configuration on failure), and
        ``ikev1d reload`` reports the failure to systemd's ExecReload."""
        async with self._reload_lock:
            self._notifier.reloading()
            try:
                try:
                    loaded = await asyncio.to_thread(self._load)
                except ConfigLoadError as exc:
                    message = f"reload failed, keeping the previous configuration: {exc}"
                    log.error("%s", message)
                    return False, message
                except Exception as exc:
                    log.exception("reload failed while loading %s", self.options.config_path)
                    return False, f"reload failed, keeping the previous configuration: {exc}"
                return self._reload(*loaded)
            finally:
                if not self._stopped:  # no READY=1 after STOPPING=1
                    self._notifier.ready("running")

    def _load(self) -> tuple[Config, list[str]]:
        """The configuration file loaded, its indexes built and its warnings made: all
        that does not touch the running daemon (a reload runs it in a worker thread)."""
        config = self._config_loader(self.options.config_path)
        config.build_indexes()
        try:
            warnings = self._warnings(config)
        except Exception:
            log.exception("cannot compute configuration warnings")
            warnings = []
        return config, warnings

    def _reload(self, config: Config, warnings: list[str]) -> tuple[bool, str]:
        if self._stopped:
            return False, "reload not applied: the daemon is shutting down"
        old = self._config
        if old is not None and _daemon_section_changed(old, config):
            log.warning("changes to [daemon] listen/port/port_nat_t/dataplane/metrics/"
                        "keylog_dir/tun_offload/dataplane_workers need a restart")
        self._log_warnings(warnings)
        self._apply_log_level(config)
        try:
            self.engine.reload(config, self.now())
        except Exception as exc:
            log.exception("reload failed in the engine")
            self._pump()
            return False, f"reload failed: {exc}"
        self._config = config
        self._pump()
        message = f"reloaded {self.options.config_path}"
        log.info("%s", message)
        return True, message

    def _apply_log_level(self, config: Config) -> None:
        if self.options.log_level is not None:
            return
        level = config.daemon.log_level
        if level:
            try:
                logsetup.set_level(level)
            except logsetup.LogSetupError as exc:
                log.warning("[daemon] log_level: %s", exc)

    @staticmethod
    def _log_warnings(warnings: list[str]) -> None:
        for warning in warnings:
            log.warning("config: %s", warning)

    # --- driving the engine ---

    def _call_engine(
        self, what: str | Callable[[], str], call: Callable[[Engine, float], None]
    ) -> None:
        """Run one engine input, then flush its output; a bug in it must not kill the daemon.

        ``what`` may be a callable, so that a path formats no text unless something
        goes wrong."""
        try:
            call(self.engine, self.now())
        except Exception:
            log.exception("internal error while %s", what() if callable(what) else what)
        self._pump()

    def _pump(self) -> None:
        engine = self._engine
        if engine is None:
            return
        try:
            datagrams = engine.datagrams_to_send()
            events = engine.events()
        except Exception:
            log.exception("internal error collecting engine output")
            datagrams, events = [], []
        if events:
            ready = [e for e in events if type(e) is ChildSaInboundReady]
            if ready:
                # Before the datagrams: the Quick Mode message 2 among them lets the peer
                # send on the new SAs at once (RFC 2409 section 5.5).
                for first in ready:
                    self._dispatch_logged(first)
                events = [e for e in events if type(e) is not ChildSaInboundReady]
        udp = self._udp
        if udp is not None:
            for datagram in datagrams:
                udp.send_ike(datagram)
        for event in events:
            self._dispatch_logged(event)
        self._reschedule()

    def _dispatch_logged(self, event: Event) -> None:
        try:
            self._dispatch(event)
        except Exception:
            log.exception("internal error handling %s", type(event).__name__)

    def _reschedule(self) -> None:
        # After every input: most leave the engine's next deadline where it was (a
        # handshake's timers fall due later than the earliest one held), and then
        # neither the loop's timer nor its heap is touched.
        engine = self._engine
        if engine is None:
            return
        try:
            when = engine.get_timer()
        except Exception:
            log.exception("internal error asking the engine for its timer")
            when = None
        if when is not None:
            when = math.ceil(when / TIMER_GRID_S) * TIMER_GRID_S
        if when == self._timer_at and (when is None or self._timer is not None):
            return
        self._cancel_timer()
        if when is not None:
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._call_engine("handling a timer", lambda e, now: e.handle_timer(now))

    def _on_ike(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        # _call_engine inlined: this runs for every IKE datagram, and building its two
        # closures and asking the ``engine`` property each time cost more than the call.
        engine = self._engine
        if engine is None:
            return
        try:
            engine.receive_datagram(data, local, remote, self._time())
        except Exception:
            log.exception("internal error while processing a datagram from %s",
                          _endpoint_text(remote))
        self._pump()

    def _on_esp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        if self._backend is None:
            return
        try:
            self._backend.receive_esp_udp(data, local, remote)
        except Exception:
            log.exception("data plane error on ESP from %s", _endpoint_text(remote))

    @staticmethod
    def _esp_many_to(backend: ReceivesEspBatches) -> Callable[[list[bytes], Endpoint, Endpoint],
                                                               None]:
        """What the NAT-T socket hands the ESP datagrams of one wakeup to, a run at a time."""
        receive = backend.receive_esp_udp_many

        def on_esp_many(datagrams: list[bytes], local: Endpoint, remote: Endpoint) -> None:
            try:
                receive(datagrams, local, remote)
            except Exception:
                log.exception("data plane error on ESP from %s", _endpoint_text(remote))

        return on_esp_many

    def _on_dataplane_expired(self, child_id: int, hard: bool, reason: str) -> None:
        """An IPsec SA reached a volume or sequence-number limit. This runs on the
        packet path, so the engine is called right after it, not inside it."""
        def call(engine: Engine, now: float) -> None:
            if hard:
                engine.child_hard_expired(child_id, reason, now)
            else:
                engine.child_soft_expired(child_id, reason, now)

        self.loop.call_soon(self._call_engine, "handling an expiring IPsec SA", call)

    def _on_acquire(self, conn: str, child: str) -> None:
        """A packet for a trapped child found no IPsec SA. This runs on the packet
        path (or the netlink reader), so the engine is called right after it."""
        self.loop.call_soon(self._call_engine, "handling an acquire",
                            lambda e, now: e.acquire(conn, child, now))

    # --- events ---

    def _event_handlers(self) -> dict[type, Callable[[Any], None]]:
        """What each event type runs: one dictionary lookup per event instead of a
        chain of class patterns (events come from the engine as exactly these types).
        The key log and updown bookkeeping (:meth:`_observe_*`) go first; the "up"
        script runs from _on_child_established, once the data plane carries the SA."""
        def both(first: Callable[[Any], None],
                 then: Callable[[Any], None]) -> Callable[[Any], None]:
            def handler(event: Any) -> None:
                first(event)
                then(event)
            return handler

        return {
            IkeSaEstablished: both(self._observe_ike_established, self._on_ike_established),
            IkeSaDeleted: both(self._observe_ike_deleted, self._on_ike_deleted),
            ChildSaEstablished: both(self._observe_child_established,
                                     self._on_child_established),
            ChildSaDeleted: both(self._observe_child_deleted, self._on_child_deleted),
            ChildSaInboundReady: self._on_child_inbound_ready,
            ChildSaInboundWithdrawn: self._on_child_inbound_withdrawn,
            ConnectionFailed: self._on_failed,
            TrapInstalled: self._on_trap,
            TrapRemoved: self._on_trap,
            VirtualIpAssigned: self._on_virtual_ip_assigned,
            VirtualIpReleased: self._on_virtual_ip_released,
            XauthCheck: self._on_xauth_check,
        }

    def _dispatch(self, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _observe_ike_established(self, event: IkeSaEstablished) -> None:
        if self._keylog is not None:
            self._keylog.ike_established(event)
        if self._updown is not None:
            self._updown.ike_established(event)

    def _observe_ike_deleted(self, event: IkeSaDeleted) -> None:
        if self._keylog is not None:
            self._keylog.ike_deleted(event)
        if self._updown is not None:
            self._updown.ike_deleted(event)

    def _observe_child_established(self, event: ChildSaEstablished) -> None:
        if self._keylog is not None:
            self._keylog.child_established(event)

    def _observe_child_deleted(self, event: ChildSaDeleted) -> None:
        if self._keylog is not None:
            self._keylog.child_deleted(event)
        if self._updown is not None:
            self._updown.child_down(event)

    @staticmethod
    def _on_ike_deleted(event: IkeSaDeleted) -> None:
        log.debug("event: ISAKMP SA deleted: %s", event.reason, extra={"conn": event.conn})

    def _updown_argv(self, conn: str, child: str) -> tuple[str, ...]:
        config = self._config
        if config is None or conn not in config.connections:
            return ()
        child_config = config.connections[conn].children.get(child)
        return child_config.updown if child_config is not None else ()

    @property
    def _backend_name(self) -> str:
        return self._backend.name if self._backend is not None else "-"

    def _waiters_for(self, conn: str) -> list[_UpWaiter]:
        return [w for w in self._waiters if w.conn == conn and not w.result.done()]

    def _on_ike_established(self, event: IkeSaEstablished) -> None:
        waiters = self._waiters_for(event.conn)
        if not waiters and not log.isEnabledFor(logging.DEBUG):
            return  # a responder's SA with nobody waiting: no text to build
        text = (
            f"ISAKMP SA established {_endpoint_text(event.local)} '{event.local_id}'"
            f" ... {_endpoint_text(event.remote)} '{event.remote_id}'"
            f" ({event.proposal}, {event.auth}, {'initiator' if event.initiator else 'responder'})"
        )
        log.debug("event: %s", text, extra={"conn": event.conn, "peer": event.remote})
        for waiter in waiters:
            waiter.progress(f"{event.conn}: {text}")
            if not waiter.children:
                waiter.finish(True, f"{event.conn}: ISAKMP SA established")

    def _on_child_established(self, event: ChildSaEstablished) -> None:
        extra = {"conn": event.conn, "peer": event.remote}
        backend = self._backend
        if backend is not None:
            try:
                backend.install(event)
            except Exception as exc:
                if not isinstance(exc, DataplaneError | OSError):
                    log.exception("data plane failed installing %s", event.child, extra=extra)
                reason = f"installing IPsec SA {event.child} failed: {exc}"
                log.error("%s", reason, extra=extra)
                # Tell the engine, which deletes the SA on both sides: nothing stays
                # negotiated that the data plane does not carry.
                self.engine.install_failed(event.child_id, reason, self.now())
                self._pump()
                for waiter in self._waiters_for(event.conn):
                    if event.child in waiter.children:
                        waiter.finish(False, f"{event.conn}: {reason}")
                return
        if self._updown is not None:
            self._updown.child_up(event, self._updown_argv(event.conn, event.child))
        waiters = self._waiters_for(event.conn)
        if not waiters and not log.isEnabledFor(logging.DEBUG):
            return  # nobody waits for this one: no text to build
        text = (
            f"IPsec SA established {event.child} SPIs {event.spi_in:08x}_i {event.spi_out:08x}_o"
            f" ({event.proposal}, {event.mode}{', UDP-encapsulated' if event.encap else ''})"
            f" {', '.join(map(str, event.local_ts))} === {', '.join(map(str, event.remote_ts))}"
        )
        log.debug("event: %s (installed in data plane %r)", text, self._backend_name, extra=extra)
        for waiter in waiters:
            if event.child in waiter.children:
                waiter.children.discard(event.child)
                waiter.established.append(event.child)
                waiter.progress(f"{event.conn}: {text}")
                if not waiter.children:
                    waiter.finish(
                        True, f"{event.conn}: established {', '.join(waiter.established)}"
                    )

    def _on_child_inbound_ready(self, event: ChildSaInboundReady) -> None:
        """We answered a Quick Mode: receive on its SAs before our message 2 leaves
        (the engine hands this over first), as the initiator may send at once."""
        backend, sa = self._backend, event.pair
        if not isinstance(backend, InstallsInboundFirst):
            return
        try:
            backend.install_inbound(sa)
        except Exception as exc:
            extra = {"conn": sa.conn, "peer": sa.remote}
            if not isinstance(exc, DataplaneError | OSError):
                log.exception("data plane failed installing the inbound half of %s",
                              sa.child, extra=extra)
            # Not fatal: the whole pair is installed when message 3 arrives.
            log.warning("inbound IPsec SA %08x_i of %s not installed before Quick Mode "
                        "message 3: %s", sa.spi_in, sa.child, exc, extra=extra)
            return
        log.debug("event: inbound IPsec SA %08x_i of %s installed before Quick Mode "
                  "message 3", sa.spi_in, sa.child, extra={"conn": sa.conn})

    def _on_child_inbound_withdrawn(self, event: ChildSaInboundWithdrawn) -> None:
        backend = self._backend
        if not isinstance(backend, InstallsInboundFirst):
            return
        try:
            backend.remove(ChildSaDeleted(event.conn, event.child, event.ike_id,
                                          event.child_id, event.spi_in, event.spi_out,
                                          event.reason))
        except Exception:
            log.exception("data plane failed removing the inbound half of %s", event.child,
                          extra={"conn": event.conn})
        log.debug("event: inbound IPsec SA %08x_i of %s withdrawn: %s", event.spi_in,
                  event.child, event.reason, extra={"conn": event.conn})

    def _on_child_deleted(self, event: ChildSaDeleted) -> None:
        if self._backend is not None:
            try:
                self._backend.remove(event)
            except Exception:
                log.exception("data plane failed removing %s", event.child,
                              extra={"conn": event.conn})
        log.debug(
            "event: IPsec SA deleted %s SPIs %08x_i %08x_o: %s",
            event.child, event.spi_in, event.spi_out, event.reason,
            extra={"conn": event.conn},
        )

    def _on_trap(self, event: TrapInstalled | TrapRemoved) -> None:
        backend = self._backend
        extra = {"conn": event.conn}
        if not isinstance(backend, CatchesTraffic):
            if isinstance(event, TrapInstalled):
                log.warning("trap for %s/%s: data plane %r cannot catch traffic; only "
                            "\"up\" starts the child", event.conn, event.child,
                            self._backend_name, extra=extra)
            return
        try:
            if isinstance(event, TrapInstalled):
                backend.install_trap(event)
            else:
                backend.remove_trap(event.conn, event.child)
        except DataplaneError as exc:
            log.error("trap for %s/%s: %s", event.conn, event.child, exc, extra=extra)
        except Exception:
            log.exception("data plane failed with the trap for %s/%s", event.conn,
                          event.child, extra=extra)

    def _on_virtual_ip_assigned(self, event: VirtualIpAssigned) -> None:
        """Mode Config gave us an address: onto the data plane, before the Quick Modes
        that follow it install their IPsec SAs (the engine runs Mode Config first)."""
        extra = {"conn": event.conn}
        # The engine logs the assignment with its DNS servers and split networks (INFO).
        log.debug("event: virtual IP %s assigned", event.address, extra=extra)
        backend = self._backend
        if not isinstance(backend, CarriesVirtualIps):
            return
        try:
            backend.add_virtual_ip(event.ike_id, event.address, event.split)
        except Exception as exc:
            if not isinstance(exc, DataplaneError | OSError):
                log.exception("data plane failed adding virtual IP %s", event.address,
                              extra=extra)
            log.error("virtual IP %s not put on this host: %s", event.address, exc, extra=extra)

    def _on_virtual_ip_released(self, event: VirtualIpReleased) -> None:
        log.debug("event: virtual IP %s released", event.address, extra={"conn": event.conn})
        backend = self._backend
        if not isinstance(backend, CarriesVirtualIps):
            return
        try:
            backend.remove_virtual_ip(event.ike_id, event.address)
        except Exception:
            log.exception("data plane failed removing virtual IP %s", event.address,
                          extra={"conn": event.conn})

    def _radius_client(self) -> RadiusChecker | None:
        """The client for the configured ``[xauth] radius`` server (a new one after a
        reload that changed it); None when there is none or it cannot be made."""
        config = self._config
        if config is None:
            return None
        try:
            server = RadiusServer.from_config(config)
        except RadiusError as exc:
            log.error("XAUTH: %s", exc)
            return None
        current = self._radius
        if current is not None and current.server == server:
            return current
        if current is not None:
            current.close()
            self._radius = None
        if server is None:
            return None
        try:
            self._radius = self.radius_factory(server)
        except RadiusError as exc:
            log.error("XAUTH: %s", exc)
            return None
        return self._radius

    def _on_xauth_check(self, event: XauthCheck) -> None:
        """Ask the RADIUS server off the event loop, then give the engine the answer."""
        engine = self.engine
        if not isinstance(engine, AnswersXauthChecks):
            return
        client = self._radius_client()
        if client is None:
            log.warning("XAUTH: user %r refused: no RADIUS server configured", event.user)
            self._call_engine("answering an XAUTH check",
                              lambda e, now: engine.xauth_result(event.request_id, False, now))
            return
        task = self.loop.create_task(self._xauth_check(engine, client, event))
        self._radius_tasks.add(task)
        task.add_done_callback(self._radius_tasks.discard)

    async def _xauth_check(self, engine: AnswersXauthChecks, client: RadiusChecker,
                           event: XauthCheck) -> None:
        result = await client.check(event.user, event.password, event.state)
        if self._stopped:
            return
        if result.challenge is not None and isinstance(engine, AnswersXauthChallenges):
            log.info("XAUTH: RADIUS server %s challenges user %r", client.server.text,
                     event.user)
            message, state = result.challenge, result.state
            self._call_engine("relaying an XAUTH challenge",
                              lambda e, now: engine.xauth_challenge(event.request_id, message,
                                                                    state, now))
            return
        if result.ok:
            log.info("XAUTH: RADIUS server %s accepted user %r", client.server.text, event.user)
        else:
            log.warning("XAUTH: RADIUS server %s refused user %r: %s", client.server.text,
                        event.user, result.reason)
        self._call_engine("answering an XAUTH check",
                          lambda e, now: engine.xauth_result(event.request_id, result.ok, now))

    def _close_radius(self) -> None:
        for task in list(self._radius_tasks):
            task.cancel()
        if self._radius is not None:
            self._radius.close()
            self._radius = None

    def _on_failed(self, event: ConnectionFailed) -> None:
        what = f"{event.conn}/{event.child}" if event.child else event.conn
        log.debug("event: connection %s failed: %s", what, event.reason, extra={"conn": event.conn})
        for waiter in self._waiters_for(event.conn):
            if event.child is None or event.child in waiter.children or not waiter.children:
                waiter.finish(False, f"{what}: {event.reason}")

    # --- control commands ---

    async def _handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), CONTROL_READ_TIMEOUT_S)
                request = decode_request(line)
            except (ValueError, ControlProtocolError, TimeoutError) as exc:
                writer.write(encode_response(False, f"bad request: {exc or 'timeout'}"))
            else:
                try:
                    answer = await self.execute(
                        request, lambda text: writer.write(encode_progress(text))
                    )
                except Exception as exc:
                    log.exception("internal error answering %s", type(request).__name__)
                    answer = encode_response(False, f"internal error: {exc}")
                writer.write(answer)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("internal error answering a control request")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def execute(self, request: Request, progress: Callable[[str], None]) -> bytes:
        """Carry out one control request; the final response line."""
        match request:
            case UpRequest():
                ok, message = await self.up(request, progress)
                return encode_response(ok, message)
            case DownRequest(name=name, peer=peer, ike_id=ike_id):
                if peer is None and ike_id is None:
                    ok, message = self.down(name)
                else:
                    ok, message = self.down_one(name, peer, ike_id)
                return encode_response(ok, message)
            case StatusRequest():
                # Made and encoded a piece at a time, serving in between: with 10,000
                # SAs the document is 0.2 s of work and its 6.6 MB of JSON 0.13 s more.
                # (Not in a thread: the JSON encoder holds the interpreter throughout.)
                document = await self.status_snapshot()
                parts = []
                for part in status_response_parts(document, STATUS_CHUNK):
                    parts.append(part)
                    await asyncio.sleep(0)
                return b"".join(parts)
            case ReloadRequest():
                ok, message = await self.reload()
                return encode_response(ok, message)
            case PingRequest():
                return encode_response(True, "pong", pid=os.getpid())
        return encode_response(False, "unknown command")

    def _children_of(self, name: str) -> list[str] | None:
        config = self._config
        if config is None or name not in config.connections:
            return None
        return list(config.connections[name].children)

    async def up(self, request: UpRequest, progress: Callable[[str], None]) -> tuple[bool, str]:
        name = request.name
        children = self._children_of(name)
        if children is None:
            return False, f"no connection named {name!r}"
        if request.child is not None:
            if request.child not in children:
                return False, f"connection {name!r} has no child {request.child!r}"
            children = [request.child]
        if self._already_up(name, children):
            return True, f"{name}: already established"
        waiter = _UpWaiter(name, set(children), progress, self.loop.create_future())
        self._waiters.append(waiter)
        try:
            try:
                self.engine.initiate(name, request.child, self.now())
            except EngineError as exc:
                self._pump()
                return False, f"{name}: {exc}"
            except Exception as exc:
                log.exception("internal error initiating %s", name, extra={"conn": name})
                self._pump()
                return False, f"{name}: internal error: {exc}"
            log.debug("up: initiating%s", f" child {request.child}" if request.child else "",
                      extra={"conn": name})
            self._pump()
            try:
                return await asyncio.wait_for(asyncio.shield(waiter.result), request.timeout)
            except TimeoutError:
                missing = ", ".join(sorted(waiter.children)) or "ISAKMP SA"
                return False, (
                    f"{name}: timed out after {request.timeout:g}s waiting for {missing}"
                    " (the daemon keeps trying)"
                )
        finally:
            self._waiters.remove(waiter)

    def _already_up(self, name: str, children: list[str]) -> bool:
        try:
            document = self.engine.status(self.now(), conn=name)
        except Exception:
            return False
        for ike_sa in document.ike_sas:
            if ike_sa.state != "ESTABLISHED":
                continue
            installed = {child.name for child in ike_sa.children if child.state == "INSTALLED"}
            if set(children) <= installed:
                return True
        return False

    def down(self, name: str) -> tuple[bool, str]:
        if self._children_of(name) is None:
            return False, f"no connection named {name!r}"
        before = self._count_sas(name)
        try:
            self.engine.terminate(name, self.now())
        except EngineError as exc:
            self._pump()
            return False, f"{name}: {exc}"
        except Exception as exc:
            log.exception("internal error terminating %s", name, extra={"conn": name})
            self._pump()
            return False, f"{name}: internal error: {exc}"
        self._pump()
        for waiter in self._waiters_for(name):
            waiter.finish(False, f"{name}: taken down")
        ike, child = before
        if ike == 0 and child == 0:
            return True, f"{name}: no SAs to delete"
        return True, f"{name}: deleted {ike} ISAKMP SA(s) and {child} IPsec SA(s)"

    def down_one(self, name: str, peer: str | None, ike_id: int | None) -> tuple[bool, str]:
        """Delete the ISAKMP SAs of ``name`` with that peer (ID, address or XAUTH user), or
        the one numbered ``ike_id``, each with its IPsec SAs; the connection's other SAs (other
        road warriors) stay, and so do its waiting ``up`` commands."""
        if self._children_of(name) is None:
            return False, f"no connection named {name!r}"
        try:
            document = self.engine.status(self.now(), conn=name)
        except Exception as exc:
            log.exception("internal error listing SAs", extra={"conn": name})
            return False, f"{name}: internal error: {exc}"
        mine = document.ike_sas
        if ike_id is not None:
            chosen = [s for s in mine if s.ike_id == ike_id]
            what = f"ISAKMP SA #{ike_id}"
        else:
            try:
                ids = set(self.engine.peer_ike_ids(name, peer or ""))
            except Exception as exc:
                log.exception("internal error matching peer %r", peer, extra={"conn": name})
                return False, f"{name}: internal error: {exc}"
            chosen = [s for s in mine if s.ike_id in ids]
            what = f"ISAKMP SA with peer {peer!r}"
        if not chosen:
            known = ", ".join(f"#{s.ike_id} {s.remote_id or s.remote[0]}" for s in mine)
            return False, (f"{name}: no {what}"
                           f" (its ISAKMP SAs: {known or 'none'}; see ikev1d status)")
        deleted_children = 0
        try:
            for ike_sa in chosen:
                if self.engine.terminate_ike(ike_sa.ike_id, self.now()):
                    deleted_children += len(ike_sa.children)
        except Exception as exc:
            log.exception("internal error terminating an ISAKMP SA", extra={"conn": name})
            self._pump()
            return False, f"{name}: internal error: {exc}"
        self._pump()
        peers = ", ".join(f"#{s.ike_id} {s.remote_id or s.remote[0]}" for s in chosen)
        return True, (f"{name}: deleted {len(chosen)} ISAKMP SA(s) ({peers}) and "
                      f"{deleted_children} IPsec SA(s)")

    def _count_sas(self, name: str) -> tuple[int, int]:
        try:
            document = self.engine.status(self.now(), conn=name)
        except Exception:
            return 0, 0
        ike_sas = document.ike_sas
        return len(ike_sas), sum(len(s.children) for s in ike_sas)

    def status(self) -> StatusDocument:
        """The engine's status document with the data plane's counters in place of the
        engine's zeros."""
        document = self.engine.status(self.now())
        if self._backend is None:
            return document
        return replace(document, ike_sas=self._counted(document.ike_sas))

    async def status_snapshot(self) -> StatusDocument:
        """:meth:`status`, made a chunk of SAs at a time with the loop serving IKE, the
        data plane and the control socket between two chunks: with 10,000 SAs the whole
        document is 0.2 s of work. An SA that goes meanwhile is left out, one that comes
        is not listed yet."""
        engine = self.engine
        ike_sas: list[IkeSaStatus] = []
        for chunk in engine.status_chunks(self.now()):
            ike_sas.extend(self._counted(chunk))
            await asyncio.sleep(0)
        return engine.status_document(tuple(ike_sas))

    def _counted(self, ike_sas: tuple[IkeSaStatus, ...]) -> tuple[IkeSaStatus, ...]:
        backend = self._backend
        if backend is None:
            return ike_sas
        return tuple(
            replace(ike_sa, children=tuple(
                self._with_counters(backend, child) for child in ike_sa.children))
            for ike_sa in ike_sas)

    @staticmethod
    def _with_counters(backend: DataplaneBackend, child: ChildSaStatus) -> ChildSaStatus:
        try:
            counters = backend.counters(child.spi_in, child.spi_out)
        except Exception:
            # Status still answers, with the engine's zeros for this SA.
            log.exception("data plane failed reporting counters")
            return child
        return replace(child, counters=counters)


def _daemon_section_changed(old: Config, new: Config) -> bool:
    a, b = old.daemon, new.daemon
    return (
        tuple(a.listen) != tuple(b.listen)
        or a.port != b.port
        or a.port_nat_t != b.port_nat_t
        or a.dataplane != b.dataplane
        or a.metrics != b.metrics
        or a.keylog_dir != b.keylog_dir
        or a.tun_offload != b.tun_offload
        or a.dataplane_workers != b.dataplane_workers
    )


def dataplane_state_file(socket_path: str, backend: str) -> str:
    """Where a data plane records what it installed: beside the control socket, whose
    check at start makes sure no running daemon uses the same name."""
    directory, name = os.path.split(socket_path)
    stem = name.removesuffix(".sock") or "ikev1d"
    return os.path.join(directory, f"{stem}.{backend}-dataplane.json")


def _check_control_socket(path: str) -> None:
    """Refuse to start when a daemon answers on ``path``; remove a stale socket file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DaemonError(f"control socket {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise DaemonError(f"control socket {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("removing stale control socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except OSError as exc:
        raise DaemonError(f"control socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise DaemonError(f"another ikev1d is already running on control socket {path}")


def run_daemon(options: DaemonOptions) -> int:
    """Run in the foreground until SIGTERM/SIGINT; exit status. Raises DaemonError."""
    limit_arenas()  # before any thread allocates: see ikev1d.daemon.malloc
    daemon = Daemon(options, notifier=Notifier())
    asyncio.run(daemon.run())
    return 0
