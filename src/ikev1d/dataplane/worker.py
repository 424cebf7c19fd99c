"""The data plane worker: the sealing direction in a process of its own.

With ``[daemon] dataplane_workers = 2`` the keying daemon keeps IKE, the routes,
the opening direction and NAT keepalives, and a worker process seals: it reads
the TUN device, finds the SA, clamps the MSS or answers "too big", seals and
sends (:class:`~ikev1d.dataplane.sealing.Sealer`, the same code the daemon runs
with one worker). It is the README's N-worker design ("More cores") with one
worker per direction: the unit of ownership is the outbound SA, whose sequence
numbers only its owner touches (RFC 4303 §3.3.3), so sharding SAs by SPI over
more workers changes who owns what, not how.

The worker is a fresh interpreter (``python -m ikev1d.dataplane.worker FD``),
never a fork of the daemon's event loop. It inherits the TUN device, the raw
ESP sockets and the daemon's UDP sockets (so ESP-in-UDP leaves from the daemon's
port 4500, RFC 3948 §2) and is driven over an ``AF_UNIX`` ``SOCK_SEQPACKET``
socket pair (:mod:`ikev1d.dataplane.worker_protocol`): SAs and traps go in,
counters, acquires, limit events, sequence number reservations and log lines
come back.

Sequence numbers survive a worker's death: before an SA seals beyond what it
has reserved, the worker reserves the next ``SEQ_BLOCK`` numbers and tells the
daemon (a blocking send, so the reservation is in the socket before the first
packet using it is sealed). A restarted worker continues after the highest
reservation: the numbers are skipped, never reused, and the peer's replay window
(RFC 4303 §3.4.3) simply moves on. Counters come back every
``COUNTERS_INTERVAL`` seconds; what a killed worker counted after its last
report is lost.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from ikev1d.dataplane.base import DataplaneError
from ikev1d.dataplane.esp import EspError, OutboundSa, esp_algorithm
from ikev1d.dataplane.linux import gso
from ikev1d.dataplane.linux.tun import RawEspSocket, TunDevice
from ikev1d.dataplane.sad import CONTEXT_IDLE_S, NO_LIMIT, Sad, SaEntry, prefixes
from ikev1d.dataplane.sealing import DROP_REASONS, DropLog, Sealer, Trap
from ikev1d.dataplane.worker_protocol import (
    MAX_MESSAGE,
    Message,
    MsgType,
    WorkerProtocolError,
    decode,
    encode,
)
from ikev1d.engine.api import Endpoint, Network

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "COUNTERS_INTERVAL",
    "SEQ_BLOCK",
    "SealingWorker",
    "WorkerSealer",
    "main",
    "networks",
]

log = logging.getLogger(__name__)

SEQ_BLOCK: Final = 1 << 16
"""Sequence numbers reserved at a time: one message per 65,536 packets of an SA,
and at most that many skipped when a worker dies."""
COUNTERS_INTERVAL: Final = 0.5
"""Seconds between two counter snapshots: ``status`` is at most this old (plus a
round trip) for the outbound direction."""
SEND_TIMEOUT: Final = 5.0
"""A peer process that takes no message for this long is treated as stuck."""
_ROWS_PER_MESSAGE: Final = 1000


def networks(texts: Sequence[str]) -> tuple[Network, ...]:
    import ipaddress

    try:
        return tuple(ipaddress.ip_network(t) for t in texts)
    except ValueError as exc:
        raise WorkerProtocolError(f"bad network: {exc}") from None


def send_message(sock: socket.socket, data: bytes, timeout: float = SEND_TIMEOUT) -> None:
    """Send one datagram on a non-blocking socket, waiting at most ``timeout`` for room;
    OSError (TimeoutError when the other side takes nothing) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.send(data)
            return
        except (BlockingIOError, InterruptedError):
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the other process takes no messages")
        select.select([], [sock], [], left)


# --- the worker process ---------------------------------------------------------------


class _UdpSenders:
    """The daemon's UDP sockets (inherited): ESP-in-UDP leaves from its port 4500."""

    def __init__(self, specs: Sequence[str]) -> None:
        self._socks: list[tuple[socket.socket, str, int, bool]] = []
        for spec in specs:
            fd_text, address, port_text, wildcard = spec.split()
            sock = socket.socket(fileno=int(fd_text))
            self._socks.append((sock, address, int(port_text), wildcard == "1"))
        self._cache: dict[Endpoint, tuple[socket.socket, list[tuple[int, int, bytes]]] | None] = {}
        self.gso = True

    def close(self) -> None:
        for sock, *_ in self._socks:
            sock.close()

    def _find(self, local: Endpoint) -> tuple[socket.socket, list[tuple[int, int, bytes]]] | None:
        try:
            return self._cache[local]
        except KeyError:
            pass
        import ipaddress

        found: tuple[socket.socket, list[tuple[int, int, bytes]]] | None = None
        try:
            ip = ipaddress.ip_address(local[0])
        except ValueError:
            ip = None
        if ip is not None:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            for sock, address, port, wildcard in self._socks:
                if port != local[1]:
                    continue
                if address == ip.compressed:
                    found = (sock, [])
                    break
                if wildcard and sock.family == family and found is None:
                    found = (sock, _source_cmsgs(family, ip.packed))
        self._cache[local] = found
        return found

    def send(self, data: bytes, local: Endpoint, remote: Endpoint) -> None:
        found = self._find(local)
        if found is None:
            raise OSError(f"no socket for {local[0]} port {local[1]}")
        sock, cmsgs = found
        if cmsgs:
            sock.sendmsg([data], cmsgs, 0, remote)
        else:
            sock.sendto(data, remote)

    def send_many(self, datagrams: Sequence[bytes], local: Endpoint, remote: Endpoint) -> None:
        """UDP GSO (udp(7) ``UDP_SEGMENT``) as the daemon's own sockets do."""
        if len(datagrams) > 1 and self.gso:
            found = self._find(local)
            if found is None:
                raise OSError(f"no socket for {local[0]} port {local[1]}")
            sock, cmsgs = found
            refused = gso.send_segmented(sock, datagrams, list(cmsgs), remote)
            if refused is None:
                return
            self.send(datagrams[0], local, remote)  # raises if the destination refuses it
            self.gso = False
            log.info("data plane worker: no UDP segmentation offload (%s); sending "
                     "ESP-in-UDP datagrams one by one", refused.strerror or refused)
            datagrams = datagrams[1:]
        for data in datagrams:
            self.send(data, local, remote)


def _source_cmsgs(family: int, packed: bytes) -> list[tuple[int, int, bytes]]:
    """IP_PKTINFO / IPV6_PKTINFO choosing the source address on a wildcard socket."""
    if not any(packed):
        return []
    if family == socket.AF_INET:
        return [(socket.IPPROTO_IP, 8, struct.pack("@i4s4s", 0, packed, bytes(4)))]
    return [(socket.IPPROTO_IPV6, 50, struct.pack("@16sI", packed, 0))]


class WorkerSealer(Sealer):
    """A :class:`Sealer` that reserves sequence numbers with the daemon before using them.

    Each SA's ``soft_seq`` mark is lowered to the end of its reservation: crossing
    it extends the reservation (:meth:`seq_mark`), and asks for renewal only when
    the SA's own soft limit is reached."""

    def __init__(self, tun: TunDevice, sad: Sad, drop: DropLog,
                 traps: dict[tuple[str, str], Trap], clock: Callable[[], float], *,
                 reserve: Callable[[SaEntry, int], None]) -> None:
        super().__init__(tun, sad, drop, traps, clock)
        self._reserve = reserve
        self.reserved: dict[tuple[int, int], int] = {}
        self.real_soft_seq: dict[tuple[int, int], int] = {}

    def arm(self, entry: SaEntry, real_soft_seq: int) -> None:
        """Reserve the first block of a newly installed SA, before it seals anything."""
        self.real_soft_seq[(entry.spi_in, entry.spi_out)] = real_soft_seq
        self._rearm(entry)

    def forget(self, entry: SaEntry) -> None:
        pair = (entry.spi_in, entry.spi_out)
        self.reserved.pop(pair, None)
        self.real_soft_seq.pop(pair, None)

    def _rearm(self, entry: SaEntry) -> None:
        """Reserve more when the SA has used up its reservation; set its mark."""
        pair = (entry.spi_in, entry.spi_out)
        reserved = self.reserved.get(pair, -1)
        seq = entry.outbound.seq
        if seq >= reserved:
            upto = min(seq + SEQ_BLOCK, entry.outbound.max_seq)
            if upto > reserved:
                self._reserve(entry, upto)  # in the daemon's socket before it is used
                self.reserved[pair] = reserved = upto
        real = self.real_soft_seq.get(pair, NO_LIMIT)
        entry.soft_seq = min(real, reserved) if reserved > seq else real

    def seq_mark(self, entry: SaEntry) -> None:
        pair = (entry.spi_in, entry.spi_out)
        if entry.outbound.seq >= self.real_soft_seq.get(pair, NO_LIMIT):
            self.soft_limit(entry, "sequence numbers nearly used up: renewing")
        else:
            self._rearm(entry)  # only the reservation ran out

    def soft_limit(self, entry: SaEntry, reason: str) -> None:
        super().soft_limit(entry, reason)  # clears the limits: renewal is asked once
        self.real_soft_seq[(entry.spi_in, entry.spi_out)] = NO_LIMIT
        self._rearm(entry)


class _ForwardHandler(logging.Handler):
    """The worker's log records, sent to the daemon, which logs them where it logs."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        super().__init__()
        self._send = send
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)[:16000]
            self._send(encode(MsgType.LOG, level=record.levelno, text=text))
        except Exception:  # a log line must never take the worker down
            self.handleError(record)


class _Worker:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.sad = Sad()
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        self.traps: dict[tuple[str, str], Trap] = {}
        self.sealer: WorkerSealer | None = None
        self.tun: TunDevice | None = None
        self.done = False
        self._reported: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._next_cool = time.monotonic() + CONTEXT_IDLE_S
        """When idle SAs next let their cipher contexts go (the daemon asks for
        counters twice a second, which is when this is looked at)."""

    def send(self, data: bytes) -> None:
        send_message(self.control, data)

    def _promote_all(self) -> None:
        """An SA reached its hard limit: a successor standing by sends from now on
        (the daemon, told by the EXPIRE that follows, does the same in its copy)."""
        for entry in self.sad:
            if entry.serial < 0:
                self.sad.promote(entry)

    def _reserve(self, entry: SaEntry, upto: int) -> None:
        self.send(encode(MsgType.SEQ_RESERVED, spi_in=entry.spi_in, spi_out=entry.spi_out,
                         upto=upto))

    def handle(self, msg: Message) -> None:
        kind = msg.type
        if kind == MsgType.SETUP:
            self._setup(msg)
        elif self.sealer is None:
            raise WorkerProtocolError(f"{kind.name} before SETUP")
        elif kind == MsgType.INSTALL_SA:
            self._install(msg, self.sealer)
        elif kind == MsgType.REMOVE_SA:
            entry = self.sad.remove(msg.get_int("spi_in"), msg.get_int("spi_out"))
            if entry is not None:
                self.sealer.forget(entry)
                self._reported.pop((entry.spi_in, entry.spi_out), None)
        elif kind == MsgType.INSTALL_TRAP:
            conn, child = msg.get_str("conn"), msg.get_str("child")
            self.traps[(conn, child)] = Trap(
                f"{conn}/{child}", prefixes(networks(msg.get_strs("local_ts"))),
                prefixes(networks(msg.get_strs("remote_ts"))))
        elif kind == MsgType.REMOVE_TRAP:
            self.traps.pop((msg.get_str("conn"), msg.get_str("child")), None)
        elif kind == MsgType.SA_REMOTE:
            found = self.sad.get(msg.get_int("spi_in"), msg.get_int("spi_out"))
            if found is not None:
                found.remote = (msg.get_str("remote"), msg.get_int("remote_port"))
        elif kind == MsgType.SA_PROMOTE:
            found = self.sad.get(msg.get_int("spi_in"), msg.get_int("spi_out"))
            if found is not None:
                self.sad.promote(found)
        elif kind == MsgType.COUNTERS_REQUEST:
            self._counters()
        elif kind == MsgType.SHUTDOWN:
            self.done = True
        else:
            raise WorkerProtocolError(f"{kind.name} is not for the worker")

    def _setup(self, msg: Message) -> None:
        if self.sealer is not None:
            raise WorkerProtocolError("SETUP twice")
        logging.getLogger().setLevel(msg.get_int("log_level"))
        self.tun = TunDevice.adopt(msg.get_int("tun_fd"), msg.get_str("tun_name"),
                             msg.get_bool("vnet_hdr"))
        sealer = WorkerSealer(self.tun, self.sad, DropLog(self.drops, time.monotonic),
                              self.traps, time.monotonic, reserve=self._reserve)
        for fd_name, attr in (("raw4_fd", "raw4"), ("raw6_fd", "raw6")):
            fd = msg.get_int(fd_name)
            if fd >= 0:
                setattr(sealer, attr, RawEspSocket.adopt(socket.socket(fileno=fd)))
        udp = _UdpSenders(msg.get_strs("udp"))
        sealer.send_udp = udp.send
        sealer.send_udp_many = udp.send_many
        sealer.hard_limited = self._promote_all
        sealer.expired = lambda child_id, hard, reason: self.send(
            encode(MsgType.EXPIRE, child_id=child_id, hard=hard, reason=reason))
        sealer.acquire = lambda conn, child: self.send(
            encode(MsgType.ACQUIRE, conn=conn, child=child))
        self.sealer = sealer
        self.send(encode(MsgType.READY, pid=os.getpid()))

    def _install(self, msg: Message, sealer: WorkerSealer) -> None:
        try:
            alg = esp_algorithm(msg.get_str("encryption"), msg.get_int("key_length"),
                                msg.get_str("integrity") or None, msg.get_int("icv_length"))
            outbound = OutboundSa(msg.get_int("spi_out"), alg, msg.get_bytes("keymat"))
        except EspError as exc:
            raise WorkerProtocolError(f"INSTALL_SA: {exc}") from None
        seq = msg.get_int("seq")
        if not 0 <= seq <= outbound.max_seq:
            raise WorkerProtocolError(f"INSTALL_SA: sequence number {seq} out of range")
        outbound.seq = seq
        entry = SaEntry(
            spi_in=msg.get_int("spi_in"), spi_out=msg.get_int("spi_out"), inbound=None,
            outbound=outbound, local_ts=prefixes(networks(msg.get_strs("local_ts"))),
            remote_ts=prefixes(networks(msg.get_strs("remote_ts"))),
            local=(msg.get_str("local"), msg.get_int("local_port")),
            remote=(msg.get_str("remote"), msg.get_int("remote_port")),
            encap=msg.get_bool("encap"), name=msg.get_str("name"),
            child_id=msg.get_int("child_id"),
            hard_bytes=msg.get_int("hard_bytes"), soft_bytes_out=msg.get_int("soft_bytes"),
        )
        entry.mtu = msg.get_int("mtu")
        entry.counters.bytes_out = msg.get_int("bytes_out")
        entry.counters.packets_out = msg.get_int("packets_out")
        entry.counters.dropped_out = msg.get_int("dropped_out")
        self.sad.add(entry, standby=msg.get_bool("standby"))
        sealer.arm(entry, msg.get_int("soft_seq"))

    def _counters(self) -> None:
        clock = time.monotonic()
        if clock >= self._next_cool:
            self._next_cool = clock + CONTEXT_IDLE_S
            self.sad.cool_idle()
        rows: list[list[int]] = []
        reported = self._reported
        for entry in self.sad:
            c = entry.counters
            now = (c.bytes_out, c.packets_out, c.dropped_out)
            pair = (entry.spi_in, entry.spi_out)
            if reported.get(pair) != now:
                reported[pair] = now
                rows.append([entry.spi_in, entry.spi_out, *now])
        drops = [self.drops[r] for r in DROP_REASONS]
        for start in range(0, max(len(rows), 1), _ROWS_PER_MESSAGE):
            self.send(encode(MsgType.COUNTERS, sas=rows[start:start + _ROWS_PER_MESSAGE],
                             drops=drops))

    def read_control(self) -> None:
        while not self.done:
            try:
                data = self.control.recv(MAX_MESSAGE + 1)
            except (BlockingIOError, InterruptedError):
                return
            if not data:  # the daemon is gone
                self.done = True
                return
            self.handle(decode(data))


def serve(control: socket.socket) -> int:
    """The worker's loop: control messages and TUN reads, until SHUTDOWN or EOF."""
    control.setblocking(False)
    worker = _Worker(control)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardHandler(worker.send)]
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ, None)
    tun_registered = False
    try:
        while not worker.done:
            for key, _events in selector.select():
                if key.data is None:
                    worker.read_control()
                elif worker.sealer is not None:
                    worker.sealer.handle_tun_readable()
            if not tun_registered and worker.tun is not None:
                selector.register(worker.tun.fileno(), selectors.EVENT_READ, "tun")
                tun_registered = True
    except WorkerProtocolError as exc:
        log.error("data plane worker: bad message from the daemon: %s; exiting", exc)
        return 2
    except OSError as exc:  # the daemon stopped taking messages
        sys.stderr.write(f"ikev1d data plane worker: {exc}; exiting\n")
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    # Ctrl-C at a terminal reaches the whole process group: the daemon stops the worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].isdigit():
        sys.stderr.write("usage: python -m ikev1d.dataplane.worker CONTROL_FD\n"
                         "(started by the ikev1d daemon with dataplane_workers = 2)\n")
        return 64
    return serve(socket.socket(fileno=int(args[0])))


# --- the daemon's side ----------------------------------------------------------------


class SealingWorker:
    """The daemon's handle on one worker process: start, message, notice its death, stop.

    ``on_message`` gets every message from the worker; ``on_lost(reason)`` runs once
    when the worker is gone (exited, killed, stuck or talking nonsense)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        setup: dict[str, object],
        fds: Sequence[int],
        on_message: Callable[[Message], None],
        on_lost: Callable[[str], None],
        *,
        command: Sequence[str] | None = None,
    ) -> None:
        self._loop = loop
        self._setup = setup
        self._fds = tuple(fd for fd in fds if fd >= 0)
        self._on_message = on_message
        self._on_lost = on_lost
        self._command = tuple(command) if command is not None else (
            sys.executable, "-m", "ikev1d.dataplane.worker")
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lost = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the process and send SETUP; DataplaneError if it cannot start."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = dict(os.environ)
            # The worker imports ikev1d from where the daemon did.
            here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (here, env.get("PYTHONPATH", "")) if p)
            self.proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [*self._command, str(theirs.fileno())],
                pass_fds=(theirs.fileno(), *self._fds), close_fds=True,
                stdin=subprocess.DEVNULL, env=env)
        except OSError as exc:
            ours.close()
            raise DataplaneError(f"cannot start the data plane worker: {exc}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._lost = False
        self._loop.add_reader(ours.fileno(), self._readable)
        self.send(encode(MsgType.SETUP, **self._setup))

    def send(self, data: bytes) -> bool:
        """Queue a message; False when the worker cannot take it (it is then lost)."""
        sock = self._sock
        if sock is None or self._lost:
            return False
        try:
            send_message(sock, data)
        except OSError as exc:
            self._loop.call_soon(self._gone, f"it takes no messages ({exc})")
            return False
        return True

    def _readable(self) -> None:
        sock = self._sock
        while sock is not None and not self._lost:
            try:
                data = sock.recv(MAX_MESSAGE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._gone(f"its socket failed ({exc})")
                return
            if not data:
                self._gone("it exited")
                return
            try:
                msg = decode(data)
            except WorkerProtocolError as exc:
                self._gone(f"it sent a bad message ({exc})")
                return
            try:
                self._on_message(msg)
            except WorkerProtocolError as exc:
                self._gone(f"it sent a bad message ({exc})")
                return

    def _gone(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        code = self._reap(kill=True)
        self._close_socket()
        detail = "" if code is None else (
            f", killed by signal {-code}" if code < 0 else f", exit status {code}")
        self._on_lost(f"{reason}{detail}")

    def _reap(self, *, kill: bool, wait: float = 1.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            if not kill:
                return None
        proc.kill()
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return None

    def _close_socket(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        try:
            self._loop.remove_reader(sock.fileno())
        except (ValueError, OSError, RuntimeError):
            pass
        sock.close()

    def stop(self) -> None:
        """SHUTDOWN, then wait a little, then kill; the socket pair is closed."""
        if not self._lost:
            self._lost = True
            sock = self._sock
            if sock is not None:
                try:
                    send_message(sock, encode(MsgType.SHUTDOWN), timeout=0.5)
                except OSError:
                    pass
            self._reap(kill=True, wait=2.0)
        self._close_socket()


if __name__ == "__main__":
    sys.exit(main())
