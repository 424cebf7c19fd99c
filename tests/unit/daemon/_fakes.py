"""A scripted engine, a real configuration and a recording data plane for the daemon,
control and CLI tests.

FakeEngine is an ``ikev1d.engine.Engine`` (its configuration, its output queues and
its timers are the real ones, so the daemon's timer scheduling is exercised too)
whose protocol is scripted per connection name instead of negotiated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from ikev1d.config import Config, parse_config
from ikev1d.daemon.runtime import Daemon, DaemonOptions
from ikev1d.daemon.systemd import Notifier
from ikev1d.dataplane.base import Address, DataplaneError, NoneBackend, SendUdp
from ikev1d.engine import Engine
from ikev1d.engine.api import (
    ChildSaDeleted,
    ChildSaEstablished,
    ConnectionFailed,
    Datagram,
    Endpoint,
    EngineError,
    IkeSaDeleted,
    IkeSaEstablished,
    Network,
)
from ikev1d.status import ChildSaStatus, Counters, IkeSaStatus, StatusDocument

PEER: Endpoint = ("127.0.0.1", 40999)

# "ok" connections establish after a timer; "fail" fail; "hang" never answer.
CONFIG = """
[daemon]
listen = [{listen}]
port = {port}
port_nat_t = {port_nat_t}
dataplane = "none"

[connections.site-ok]
remote_addrs = ["127.0.0.2"]
[connections.site-ok.children.net]
[connections.site-ok.children.net2]

[connections.site-fail]
remote_addrs = ["127.0.0.2"]
[connections.site-fail.children.net]

[connections.site-hang]
remote_addrs = ["127.0.0.2"]
[connections.site-hang.children.net]

[connections.site-nochild]
remote_addrs = ["127.0.0.2"]
"""


def make_config(port: int, port_nat_t: int,
                listen: tuple[str, ...] = ("127.0.0.1",), extra: str = "") -> Config:
    text = CONFIG.format(listen=", ".join(f'"{a}"' for a in listen), port=port,
                         port_nat_t=port_nat_t)
    return parse_config(text + extra, "ikev1d.toml")


def fresh_config() -> Config:
    port, port_nat_t = free_udp_ports(2)
    return make_config(port, port_nat_t)


def collecting_factory(
    engines: list[FakeEngine],
) -> Callable[[Config, Callable[[int], bytes]], FakeEngine]:
    def factory(config: Config, random_bytes: Callable[[int], bytes]) -> FakeEngine:
        engines.append(FakeEngine(config, random_bytes))
        return engines[-1]

    return factory


def free_udp_ports(count: int) -> list[int]:
    """Distinct UDP ports that were free on 127.0.0.1 a moment ago."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class FakeEngine(Engine):
    def __init__(self, config: Config, random_bytes: Callable[[int], bytes]) -> None:
        super().__init__(config, random_bytes=random_bytes)
        self.received: list[tuple[bytes, Endpoint, Endpoint]] = []
        self.calls: list[str] = []
        self.reloaded: list[Config] = []
        self.established: dict[str, list[str]] = {}
        self.local: Endpoint = ("127.0.0.1", 500)
        self.peer: Endpoint = PEER
        """Where terminate/shutdown address their Delete messages."""
        self.next_spi = 0xC0000001
        self.status_asked: list[str | None] = []
        """The ``conn`` of every status call (None: the whole document)."""

    # --- the inputs, scripted ---

    def receive_datagram(self, data: bytes, local: Endpoint, remote: Endpoint, now: float) -> None:
        self.received.append((data, local, remote))
        self.local = local
        if data.startswith(b"ping"):
            self.send(Datagram(b"pong" + data[4:], local, remote))
        if data == b"crash":
            raise RuntimeError("engine bug")

    def initiate(self, conn: str, child: str | None, now: float) -> None:
        self.calls.append(f"initiate {conn} {child}")
        if conn not in self.config.connections:
            raise EngineError(f"no connection {conn!r}")
        if conn == "site-hang":
            return
        self.timers.schedule(now + 0.02, lambda t: self._answer(conn, child))

    def terminate(self, conn: str, now: float) -> None:
        self.calls.append(f"terminate {conn}")
        children = self.established.pop(conn, None)
        if children is None:
            return
        for n, name in enumerate(children):
            self.emit(ChildSaDeleted(conn, name, 1, n, 0xC0000001 + n, 0xD0000001 + n,
                                     "deleted by request"))
        self.emit(IkeSaDeleted(conn, 1, "deleted by request"))
        self.send(Datagram(b"delete " + conn.encode(), self.local, self.peer))

    def install_failed(self, child_id: int, reason: str, now: float) -> None:
        self.calls.append(f"install_failed {child_id}")

    def shutdown(self, now: float) -> None:
        self.calls.append("shutdown")
        self.send(Datagram(b"shutdown-delete", self.local, self.peer))

    def reload(self, config: Config, now: float) -> None:
        self.calls.append("reload")
        self.reloaded.append(config)
        super().reload(config, now)

    def _answer(self, conn: str, child: str | None) -> None:
        """The peer's answer to ``initiate``, when the timer it set fires."""
        self.calls.append("timer")
        if conn == "site-fail":
            self.emit(ConnectionFailed(conn, None, "NO-PROPOSAL-CHOSEN from peer"))
            return
        local, remote = ("127.0.0.1", 500), ("127.0.0.2", 500)
        self.emit(IkeSaEstablished(conn, 1, local, remote, "127.0.0.1", "127.0.0.2",
                                   "aes128-sha256-modp2048", "psk", True))
        names = [child] if child else list(self.config.connections[conn].children)
        for name in names:
            spi_in, spi_out = self.next_spi, self.next_spi + 0x10000000
            self.next_spi += 1
            self.emit(ChildSaEstablished(
                conn, name, 1, spi_in, spi_in, spi_out, "aes128gcm16", "aes-gcm-16", 16,
                16, None, "tunnel", False, local, remote,
                (ipaddress.ip_network("10.1.0.0/24"),),
                (ipaddress.ip_network("10.2.0.0/24"),), b"k" * 20, b"k" * 20,
            ))
        self.established[conn] = names

    # --- the output that follows from the script ---

    def status(self, now: float, conn: str | None = None) -> StatusDocument:
        self.status_asked.append(conn)
        return StatusDocument(tuple(
            IkeSaStatus(
                name=held, state="ESTABLISHED",
                local=("127.0.0.1", 500), remote=("127.0.0.2", 500),
                local_id="127.0.0.1", remote_id="127.0.0.2", initiator=True,
                cookies=(bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718")),
                proposal="aes128-sha256-modp2048", auth="psk",
                nat_local=False, nat_remote=False,
                established_s=1, rekey_in_s=14000, virtual_ip=None,
                children=tuple(
                    ChildSaStatus(
                        name=name, state="INSTALLED", mode="tunnel", encap=False,
                        spi_in=0xC0000001, spi_out=0xD0000001, proposal="aes128gcm16",
                        local_ts=(ipaddress.ip_network("10.1.0.0/24"),),
                        remote_ts=(ipaddress.ip_network("10.2.0.0/24"),),
                        rekey_in_s=3000, expires_in_s=3600,
                    )
                    for name in children
                ),
            )
            for held, children in self.established.items()
            if conn is None or held == conn
        ))


    def status_chunks(self, now: float, conn: str | None = None,
                      size: int = 1) -> Iterator[tuple[IkeSaStatus, ...]]:
        """The scripted SAs, one per chunk (the daemon lets the loop run between)."""
        for sa in self.status(now, conn).ike_sas:
            yield (sa,)


class RecordingBackend(NoneBackend):
    """The none backend plus a record of what the daemon did with it."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.esp: list[tuple[bytes, Endpoint, Endpoint]] = []
        self.removed: list[ChildSaDeleted] = []
        self.send_udp: SendUdp | None = None
        self.refuse: str | None = None
        """When set, install() fails with this message, as a broken data plane would."""
        self.vips: dict[int, tuple[str, tuple[str, ...]]] = {}
        """ISAKMP SA -> (virtual IP, split networks) the daemon put on the data plane."""

    def add_virtual_ip(self, ike_id: int, address: Address, split: tuple[Network, ...]) -> None:
        if self.refuse is not None:
            raise DataplaneError(self.refuse)
        self.vips[ike_id] = (str(address), tuple(map(str, split)))

    def remove_virtual_ip(self, ike_id: int, address: Address) -> None:
        if self.vips.get(ike_id, ("",))[0] == str(address):
            del self.vips[ike_id]

    def attach(self, send_udp: SendUdp, loop: asyncio.AbstractEventLoop) -> None:
        self.send_udp = send_udp

    def install(self, sa: ChildSaEstablished) -> None:
        if self.refuse is not None:
            raise DataplaneError(self.refuse)
        super().install(sa)

    def remove(self, sa: ChildSaDeleted) -> None:
        self.removed.append(sa)
        super().remove(sa)

    def counters(self, spi_in: int, spi_out: int) -> Counters:
        return Counters(bytes_in=spi_in & 0xFF, bytes_out=2, packets_in=3, packets_out=4)

    def receive_esp_udp(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        self.esp.append((data, local, remote))


@dataclass
class Harness:
    daemon: Daemon
    config: Config
    backend: RecordingBackend
    socket_path: str
    engines: list[FakeEngine]

    @property
    def engine(self) -> FakeEngine:
        return self.engines[-1]


@contextlib.asynccontextmanager
async def running_daemon(
    listen: tuple[str, ...] = ("127.0.0.1",),
    install_signal_handlers: bool = False,
    config_loader: Callable[[str], Config] | None = None,
    extra_config: str = "",
    notifier: Notifier | None = None,
) -> AsyncIterator[Harness]:
    """A started Daemon with a FakeEngine on free loopback ports and a temp control socket
    (``extra_config``: more TOML after the fakes' connections)."""
    port, port_nat_t = free_udp_ports(2)
    config = make_config(port, port_nat_t, listen, extra_config)
    backend = RecordingBackend()
    engines: list[FakeEngine] = []
    engine_factory = collecting_factory(engines)

    with tempfile.TemporaryDirectory() as tmp:
        socket_path = os.path.join(tmp, "run", "ikev1d.sock")
        daemon = Daemon(
            DaemonOptions(os.path.join(tmp, "ikev1d.toml"), socket_path, linger_s=0.05),
            config_loader=config_loader or (lambda path: config),
            engine_factory=engine_factory,
            backend_factory=lambda name, cfg: backend,
            warnings=lambda cfg: [],
            install_signal_handlers=install_signal_handlers,
            notifier=notifier,
        )
        await daemon.start()
        try:
            yield Harness(daemon, config, backend, socket_path, engines)
        finally:
            await daemon.stop()


class UdpPeer:
    """A plain non-blocking UDP socket playing the remote peer, usable from a coroutine."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.setblocking(False)
        self.endpoint: Endpoint = self.sock.getsockname()

    def send(self, data: bytes, to: Endpoint) -> None:
        self.sock.sendto(data, to)

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, Endpoint]:
        loop = asyncio.get_running_loop()
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535), timeout)
        return data, (addr[0], addr[1])

    def close(self) -> None:
        self.sock.close()


async def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until ``check()`` holds (the daemon runs in the same loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
