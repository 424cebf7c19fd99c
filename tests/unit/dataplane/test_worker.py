"""The sealing worker: its message format, its SA table, and the daemon's side of it.

The worker's loop is exercised in this process over a real ``SOCK_SEQPACKET``
pair (the "TUN device" is another such pair, which keeps packet boundaries as a
TUN device does, and ESP-in-UDP goes to a UDP socket on loopback, opened here
with the receiving direction's keys). The daemon's side runs a fake worker, and
one real worker process that sends garbage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import socket
import sys
from collections.abc import Callable, Iterator, Sequence

import pytest

from ikev1d.dataplane.esp import InboundSa, esp_algorithm, peek_seq, peek_spi
from ikev1d.dataplane.userspace import UserspaceBackend
from ikev1d.dataplane.worker import SEQ_BLOCK, SealingWorker, _Worker
from ikev1d.dataplane.worker_protocol import (
    FIELDS,
    MAX_MESSAGE,
    Message,
    MsgType,
    WorkerProtocolError,
    decode,
    encode,
)
from ikev1d.engine.api import ChildSaDeleted
from tests.unit.dataplane.test_userspace import FakeRaw, FakeRoutes, FakeTun, child, udp_packet

KEYMAT = bytes(range(20))
SAMPLES: dict[MsgType, dict[str, object]] = {
    MsgType.SETUP: {"tun_fd": 5, "tun_name": "ikev1d0", "vnet_hdr": True, "raw4_fd": 6,
                    "raw6_fd": -1, "udp": ["7 0.0.0.0 4500 1"], "log_level": 20},
    MsgType.INSTALL_SA: {
        "spi_in": 0xC0000001, "spi_out": 0xC0000002, "encryption": "aesgcm",
        "key_length": 128, "integrity": "", "icv_length": 16, "keymat": KEYMAT,
        "local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24"], "local": "127.0.0.1",
        "local_port": 4500, "remote": "127.0.0.1", "remote_port": 4501, "encap": True,
        "name": "gw/net", "child_id": 7, "mtu": 1400, "hard_bytes": 1 << 62,
        "soft_bytes": 1 << 62, "soft_seq": 1 << 62, "seq": 0, "bytes_out": 0,
        "packets_out": 0, "dropped_out": 0, "standby": False},
    MsgType.REMOVE_SA: {"spi_in": 1, "spi_out": 2},
    MsgType.INSTALL_TRAP: {"conn": "gw", "child": "net", "local_ts": ["10.1.0.0/24"],
                           "remote_ts": ["10.2.0.0/24"]},
    MsgType.REMOVE_TRAP: {"conn": "gw", "child": "net"},
    MsgType.SA_REMOTE: {"spi_in": 1, "spi_out": 2, "remote": "192.0.2.9", "remote_port": 1},
    MsgType.SA_PROMOTE: {"spi_in": 1, "spi_out": 2},
    MsgType.COUNTERS_REQUEST: {},
    MsgType.SHUTDOWN: {},
    MsgType.READY: {"pid": 42},
    MsgType.COUNTERS: {"sas": [[1, 2, 3, 4, 5]], "drops": [0] * 15},
    MsgType.SEQ_RESERVED: {"spi_in": 1, "spi_out": 2, "upto": 65536},
    MsgType.ACQUIRE: {"conn": "gw", "child": "net"},
    MsgType.EXPIRE: {"child_id": 7, "hard": False, "reason": "soft"},
    MsgType.LOG: {"level": 20, "text": "hello"},
}


# --- the message format ---------------------------------------------------------------


def test_every_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(MsgType) == set(FIELDS)


@pytest.mark.parametrize("msg_type", list(MsgType))
def test_round_trip(msg_type: MsgType) -> None:
    data = encode(msg_type, **SAMPLES[msg_type])
    assert data[:4] == b"IW\x01" + bytes((msg_type,))
    msg = decode(data)
    assert msg.type == msg_type
    assert dict(msg.fields) == SAMPLES[msg_type]


def test_keys_never_in_repr() -> None:
    msg = decode(encode(MsgType.INSTALL_SA, **SAMPLES[MsgType.INSTALL_SA]))
    assert msg.get_bytes("keymat") == KEYMAT
    assert KEYMAT.hex() not in repr(msg) and "<secret>" in repr(msg)


def _body(msg_type: MsgType, body: bytes) -> bytes:
    return b"IW\x01" + bytes((msg_type,)) + body


@pytest.mark.parametrize(("data", "why"), [
    (b"", "shorter than its header"),
    (b"IW\x01", "shorter than its header"),
    (b"XX\x01\x07{}", "bad magic"),
    (b"IW\x02\x07{}", "format version 2"),
    (b"IW\x01\x63{}", "unknown message type 99"),
    (_body(MsgType.REMOVE_SA, b"{"), "not JSON"),
    (_body(MsgType.REMOVE_SA, b"\xff\xfe"), "not JSON"),
    (_body(MsgType.REMOVE_SA, b"[1, 2]"), "not an object"),
    (_body(MsgType.REMOVE_SA, b'{"spi_in": 1}'), "fields"),
    (_body(MsgType.REMOVE_SA, b'{"spi_in": 1, "spi_out": 2, "x": 3}'), "fields"),
    (_body(MsgType.REMOVE_SA, b'{"spi_in": true, "spi_out": 2}'), "int expected"),
    (_body(MsgType.REMOVE_SA, b'{"spi_in": 1.5, "spi_out": 2}'), "int expected"),
    (_body(MsgType.EXPIRE, b'{"child_id": 1, "hard": 1, "reason": ""}'), "bool expected"),
    (_body(MsgType.COUNTERS, b'{"sas": [[1, "2"]], "drops": []}'), "rows expected"),
    (_body(MsgType.LOG, b'{"level": 1, "text": ["x"]}'), "str expected"),
    (_body(MsgType.SETUP, b'{"tun_fd": 1, "tun_name": "t", "vnet_hdr": false, "raw4_fd": 1,'
                          b' "raw6_fd": 1, "udp": [1], "log_level": 1}'), "strs expected"),
    (encode(MsgType.INSTALL_SA, **SAMPLES[MsgType.INSTALL_SA]).replace(
        KEYMAT.hex().encode(), b"zz"), "not hex"),
    (_body(MsgType.LOG, b" " * MAX_MESSAGE), "is over"),
    (_body(MsgType.LOG, b"[" * 100000), "is over"),
])
def test_bad_messages_are_typed_errors(data: bytes, why: str) -> None:
    with pytest.raises(WorkerProtocolError, match=why):
        decode(data)


def test_garbage_is_only_ever_a_typed_error() -> None:
    rng = random.Random(11)
    valid = [encode(t, **f) for t, f in SAMPLES.items()]
    for _ in range(4000):
        base = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 6)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        cut = bytes(base[:rng.randint(0, len(base))]) if rng.random() < 0.3 else bytes(base)
        try:
            decode(cut)
        except WorkerProtocolError:
            pass


def test_deep_json_is_a_typed_error() -> None:
    with pytest.raises(WorkerProtocolError):
        decode(_body(MsgType.LOG, b"[" * 60000 + b"]" * 60000)[:MAX_MESSAGE])


# --- the worker's SA table and sealing ------------------------------------------------


class WorkerRig:
    """A worker in this process: its control socket, a TUN stand-in, a UDP receiver."""

    def __init__(self) -> None:
        self.daemon_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        worker_end.setblocking(False)
        self.daemon_end.setblocking(False)
        self.tun_ours, tun_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.bind(("127.0.0.1", 0))
        self.receiver.settimeout(2)
        self.worker = _Worker(worker_end)
        self._keep = (worker_end, tun_theirs)
        # The worker adopts the descriptors it is given (as it adopts inherited ones)
        # and closes them when its objects go: it gets copies of its own, or it would
        # close descriptor numbers that a later test's sockets reuse.
        self.worker.handle(decode(encode(
            MsgType.SETUP, tun_fd=os.dup(tun_theirs.fileno()), tun_name="faketun",
            vnet_hdr=False, raw4_fd=-1, raw6_fd=-1,
            udp=[f"{os.dup(self.udp.fileno())} 127.0.0.1 {self.udp.getsockname()[1]} 0"],
            log_level=20)))
        assert self.messages()[0].type == MsgType.READY

    def install(self, **changes: object) -> None:
        fields = dict(SAMPLES[MsgType.INSTALL_SA])
        fields.update(local_port=self.udp.getsockname()[1],
                      remote_port=self.receiver.getsockname()[1])
        fields.update(changes)
        self.worker.handle(decode(encode(MsgType.INSTALL_SA, **fields)))

    def send(self, msg_type: MsgType, **fields: object) -> None:
        self.worker.handle(decode(encode(msg_type, **fields)))

    def seal(self, *packets: bytes) -> None:
        for p in packets:
            self.tun_ours.send(p)
        sealer = self.worker.sealer
        assert sealer is not None
        sealer.handle_tun_readable()

    def received(self, n: int) -> list[bytes]:
        return [self.receiver.recv(65535) for _ in range(n)]

    def messages(self) -> list[Message]:
        out = []
        while True:
            try:
                out.append(decode(self.daemon_end.recv(MAX_MESSAGE + 1)))
            except BlockingIOError:
                return out

    def close(self) -> None:
        for s in (self.daemon_end, self.tun_ours, self.udp, self.receiver, *self._keep):
            s.close()


@pytest.fixture
def rig() -> Iterator[WorkerRig]:
    r = WorkerRig()
    yield r
    r.close()


def opener() -> InboundSa:
    return InboundSa(0xC0000002, esp_algorithm("aesgcm", 128, None, 16), KEYMAT)


PACKET = udp_packet("10.1.0.1", "10.2.0.1", b"x" * 100)


def test_seals_with_the_installed_sa_and_reserves_first(rig: WorkerRig) -> None:
    rig.install()
    (reserved,) = rig.messages()
    assert reserved.type == MsgType.SEQ_RESERVED and reserved.get_int("upto") == SEQ_BLOCK
    rig.seal(PACKET, PACKET)
    inbound = opener()
    for esp in rig.received(2):
        assert inbound.open(esp) == (4, PACKET)
    assert rig.messages() == []  # no reservation per packet


def test_continues_after_the_sequence_number_it_is_given(rig: WorkerRig) -> None:
    rig.install(seq=3 * SEQ_BLOCK, packets_out=7)
    (reserved,) = rig.messages()
    assert reserved.get_int("upto") == 4 * SEQ_BLOCK
    rig.seal(PACKET)
    (esp,) = rig.received(1)
    assert peek_seq(esp) == 3 * SEQ_BLOCK + 1
    rig.send(MsgType.COUNTERS_REQUEST)
    (counters,) = rig.messages()
    assert counters.get_rows("sas") == [[0xC0000001, 0xC0000002, len(PACKET), 8, 0]]


def test_reserves_the_next_block_before_using_it(rig: WorkerRig) -> None:
    rig.install(seq=SEQ_BLOCK - 2)
    assert [m.get_int("upto") for m in rig.messages()] == [2 * SEQ_BLOCK - 2]
    (entry,) = list(rig.worker.sad)
    entry.outbound.seq = 2 * SEQ_BLOCK - 3
    rig.seal(PACKET)  # seq 2 * SEQ_BLOCK - 2: the last reserved one
    assert [m.get_int("upto") for m in rig.messages()] == [3 * SEQ_BLOCK - 2]
    rig.seal(PACKET)
    assert [peek_seq(e) for e in rig.received(2)] == [2 * SEQ_BLOCK - 2, 2 * SEQ_BLOCK - 1]
    assert rig.messages() == []


def test_soft_sequence_limit_is_reported_once(rig: WorkerRig) -> None:
    rig.install(soft_seq=3)
    rig.messages()
    rig.seal(PACKET, PACKET, PACKET, PACKET)
    expires = [m for m in rig.messages() if m.type == MsgType.EXPIRE]
    assert [(m.get_int("child_id"), m.get_bool("hard")) for m in expires] == [(7, False)]


def test_hard_volume_limit(rig: WorkerRig) -> None:
    rig.install(hard_bytes=len(PACKET) * 2)
    rig.messages()
    rig.seal(PACKET, PACKET, PACKET)
    assert len(rig.received(2)) == 2
    kinds = [(m.type, m.fields.get("hard")) for m in rig.messages()]
    assert (MsgType.EXPIRE, True) in kinds
    assert rig.worker.drops["life_bytes"] == 1


def test_removed_sa_is_not_used_and_traps_acquire(rig: WorkerRig) -> None:
    rig.install()
    rig.send(MsgType.REMOVE_SA, spi_in=0xC0000001, spi_out=0xC0000002)
    rig.seal(PACKET)
    assert rig.worker.drops["no_sa"] == 1
    rig.send(MsgType.INSTALL_TRAP, conn="gw", child="net", local_ts=["10.1.0.0/24"],
             remote_ts=["10.2.0.0/16"])
    rig.messages()
    rig.seal(PACKET, PACKET)
    acquires = [m for m in rig.messages() if m.type == MsgType.ACQUIRE]
    assert [(m.get_str("conn"), m.get_str("child")) for m in acquires] == [("gw", "net")]
    assert rig.worker.drops["trapped"] == 2
    rig.send(MsgType.REMOVE_TRAP, conn="gw", child="net")
    rig.seal(PACKET)
    assert rig.worker.drops["no_sa"] == 2


def test_nat_rebinding_moves_the_sa(rig: WorkerRig) -> None:
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.settimeout(2)
    rig.install()
    rig.send(MsgType.SA_REMOTE, spi_in=0xC0000001, spi_out=0xC0000002, remote="127.0.0.1",
             remote_port=other.getsockname()[1])
    rig.seal(PACKET)
    assert opener().open(other.recv(65535)) == (4, PACKET)
    other.close()


def test_a_renewed_pair_stands_by_until_promoted(rig: WorkerRig) -> None:
    """Make before break across the processes: the pair we renewed as Quick Mode
    initiator is installed standing by, the old one keeps sending until the daemon
    promotes the new one (the peer has shown it has it)."""
    rig.install()
    rig.install(spi_in=0xC0000003, spi_out=0xC0000004, standby=True)
    rig.messages()
    rig.seal(PACKET)
    assert [peek_spi(e) for e in rig.received(1)] == [0xC0000002]
    rig.send(MsgType.SA_PROMOTE, spi_in=0xC0000003, spi_out=0xC0000004)
    rig.seal(PACKET)
    assert [peek_spi(e) for e in rig.received(1)] == [0xC0000004]


def test_a_hard_limit_promotes_the_successor_standing_by(rig: WorkerRig) -> None:
    rig.install(hard_bytes=len(PACKET))
    rig.install(spi_in=0xC0000003, spi_out=0xC0000004, standby=True)
    rig.messages()
    rig.seal(PACKET, PACKET, PACKET)  # the second one meets the old pair's hard limit
    assert [peek_spi(e) for e in rig.received(2)] == [0xC0000002, 0xC0000004]
    assert rig.worker.drops["life_bytes"] == 1


def test_idle_sas_let_their_contexts_go_in_the_worker_too(rig: WorkerRig) -> None:
    rig.install()
    rig.messages()
    rig.seal(PACKET)
    rig.received(1)
    (entry,) = list(rig.worker.sad)
    assert entry.outbound.warm
    for _ in range(2):  # two sweeps without a packet between them: idle
        rig.worker._next_cool = 0.0
        rig.send(MsgType.COUNTERS_REQUEST)
    assert not entry.outbound.warm
    rig.seal(PACKET)  # built again on use, the sequence number carrying on
    (esp,) = rig.received(1)
    assert peek_seq(esp) == 2 and opener().open(esp) == (4, PACKET)


def test_commands_before_setup_and_daemon_only_types_are_refused() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker = _Worker(b)
    with pytest.raises(WorkerProtocolError, match="before SETUP"):
        worker.handle(decode(encode(MsgType.REMOVE_SA, spi_in=1, spi_out=2)))
    a.close()
    b.close()


def test_bad_install_is_a_typed_error(rig: WorkerRig) -> None:
    with pytest.raises(WorkerProtocolError):
        rig.install(encryption="rot13")
    with pytest.raises(WorkerProtocolError):
        rig.install(local_ts=["10.1.0.0/33"])
    with pytest.raises(WorkerProtocolError):
        rig.install(seq=-1)
    with pytest.raises(WorkerProtocolError, match="not for the worker"):
        rig.send(MsgType.READY, pid=1)


# --- the daemon's side ----------------------------------------------------------------


class FakeWorker:
    def __init__(self, setup: dict[str, object], on_message: Callable[[Message], None],
                 on_lost: Callable[[str], None]) -> None:
        self.setup = setup
        self.on_message = on_message
        self.on_lost = on_lost
        self.sent: list[Message] = []
        self.started = self.stopped = False
        self.fail_start = False

    @property
    def pid(self) -> int | None:
        return 4242

    def start(self) -> None:
        if self.fail_start:
            from ikev1d.dataplane.base import DataplaneError

            raise DataplaneError("cannot start")
        self.started = True

    def send(self, data: bytes) -> bool:
        self.sent.append(decode(data))
        return True

    def stop(self) -> None:
        self.stopped = True

    def reply(self, msg_type: MsgType, **fields: object) -> None:
        self.on_message(decode(encode(msg_type, **fields)))

    def of(self, msg_type: MsgType) -> list[Message]:
        return [m for m in self.sent if m.type == msg_type]


class TwoWorkerSide:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.tun, self.raw = FakeTun(), FakeRaw()
        self.workers: list[FakeWorker] = []
        self.expired: list[tuple[int, bool, str]] = []
        self.backend = UserspaceBackend(self.tun, self.raw, FakeRoutes(["10.1.0.1"]),
                                        workers=2, worker_factory=self._factory)
        self.backend.attach_udp_sockets([(9, "0.0.0.0", 4500, True)])
        self.backend.attach(lambda *a: None, loop)
        self.backend.set_expire_handler(lambda *a: self.expired.append(a))

    def _factory(self, loop: asyncio.AbstractEventLoop, setup: dict[str, object],
                 fds: Sequence[int], on_message: Callable[[Message], None],
                 on_lost: Callable[[str], None]) -> FakeWorker:
        worker = FakeWorker(setup, on_message, on_lost)
        self.workers.append(worker)
        return worker

    @property
    def worker(self) -> FakeWorker:
        return self.workers[-1]


@pytest.fixture
def two(loop: asyncio.AbstractEventLoop) -> Iterator[TwoWorkerSide]:
    side = TwoWorkerSide(loop)
    yield side
    side.backend.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def test_daemon_hands_the_worker_its_descriptors_and_sas(two: TwoWorkerSide) -> None:
    assert two.worker.started
    assert two.worker.setup["udp"] == ["9 0.0.0.0 4500 1"]
    sa = child()
    two.backend.install(sa)
    (install,) = two.worker.of(MsgType.INSTALL_SA)
    assert install.get_bytes("keymat") == sa.keymat_out
    assert install.get_int("seq") == 0 and install.get_str("integrity") == ""
    # The daemon does not seal: nothing read from the TUN device here.
    assert two.tun.fileno() < 0 or two.tun.fileno() not in two.backend._readers


def test_a_pair_standing_by_is_promoted_in_the_worker_too(
        two: TwoWorkerSide, loop: asyncio.AbstractEventLoop,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon decides when a renewed pair stops standing by (a packet from the
    peer on it, or STANDBY_S); the worker, which seals, must hear of it."""
    from ikev1d.dataplane import userspace

    monkeypatch.setattr(userspace, "STANDBY_S", 0.01)
    two.backend.install(child())
    two.backend.install(dataclasses.replace(child(spis=(0xC0000011, 0xC0000012)),
                                            child_id=2, initiator=True))
    installs = two.worker.of(MsgType.INSTALL_SA)
    assert [m.get_bool("standby") for m in installs] == [False, True]
    assert two.worker.of(MsgType.SA_PROMOTE) == []
    loop.run_until_complete(asyncio.sleep(0.05))
    (promote,) = two.worker.of(MsgType.SA_PROMOTE)
    assert (promote.get_int("spi_in"), promote.get_int("spi_out")) == (0xC0000011, 0xC0000012)


def test_restart_continues_after_the_reservation_and_the_counters(
        two: TwoWorkerSide) -> None:
    two.backend.install(child())
    first = two.worker
    first.reply(MsgType.SEQ_RESERVED, spi_in=0xC0000001, spi_out=0xC0000002, upto=SEQ_BLOCK)
    first.reply(MsgType.COUNTERS, sas=[[0xC0000001, 0xC0000002, 5000, 40, 1]],
                drops=[0, 1] + [0] * 13)
    counters = two.backend.counters(0xC0000001, 0xC0000002)
    assert counters.drops is not None
    assert (counters.bytes_out, counters.packets_out, counters.drops.dropped_out) == (5000, 40, 1)
    assert two.backend.drops["no_sa"] == 1
    first.on_lost("it exited, killed by signal 9")
    assert len(two.workers) == 2 and two.worker.started
    (install,) = two.worker.of(MsgType.INSTALL_SA)
    assert install.get_int("seq") == SEQ_BLOCK
    assert (install.get_int("bytes_out"), install.get_int("packets_out")) == (5000, 40)
    # The new worker's drop totals start at zero again; the daemon's sum goes on.
    two.worker.reply(MsgType.COUNTERS, sas=[], drops=[0, 2] + [0] * 13)
    assert two.backend.drops["no_sa"] == 3


def test_removal_traps_and_events_go_through(two: TwoWorkerSide) -> None:
    from ikev1d.engine.api import TrapInstalled

    sa = child()
    two.backend.install(sa)
    two.backend.install_trap(TrapInstalled("gw", "tr", "192.0.2.1", "192.0.2.2", "tunnel",
                                           sa.local_ts, sa.remote_ts))
    assert len(two.worker.of(MsgType.INSTALL_TRAP)) == 1
    two.backend.remove_trap("gw", "tr")
    assert len(two.worker.of(MsgType.REMOVE_TRAP)) == 1
    from tests.unit.dataplane.test_userspace import deleted

    two.backend.remove(deleted(sa))
    assert len(two.worker.of(MsgType.REMOVE_SA)) == 1
    two.worker.reply(MsgType.EXPIRE, child_id=1, hard=True, reason="sequence numbers used up")
    assert two.expired == [(1, True, "sequence numbers used up")]


def test_a_worker_that_keeps_dying_gives_way_to_sealing_in_process(
        two: TwoWorkerSide) -> None:
    two.backend.install(child())
    two.worker.reply(MsgType.SEQ_RESERVED, spi_in=0xC0000001, spi_out=0xC0000002,
                     upto=2 * SEQ_BLOCK)
    for _ in range(4):
        two.worker.on_lost("it exited")
    assert len(two.workers) == 5
    two.worker.on_lost("it exited")
    assert len(two.workers) == 5 and two.backend.workers == 1 and two.backend.worker is None
    two.tun.to_read.append(PACKET)
    two.backend.handle_tun_readable()
    (esp, _local, _remote) = two.raw.sent[-1]
    assert peek_seq(esp) == 2 * SEQ_BLOCK + 1  # after the last reservation, never reused


def test_a_worker_that_cannot_start_gives_way_too(loop: asyncio.AbstractEventLoop) -> None:
    def failing(*args: object) -> FakeWorker:
        w = FakeWorker({}, lambda m: None, lambda r: None)
        w.fail_start = True
        return w

    tun, raw = FakeTun(), FakeRaw()
    backend = UserspaceBackend(tun, raw, FakeRoutes(["10.1.0.1"]), workers=2,
                               worker_factory=failing)
    backend.attach(lambda *a: None, loop)
    assert backend.workers == 1
    backend.install(child())
    tun.to_read.append(PACKET)
    backend.handle_tun_readable()
    assert len(raw.sent) == 1
    backend.close()


def test_three_workers_are_refused() -> None:
    from ikev1d.dataplane.base import DataplaneError

    with pytest.raises(DataplaneError, match="1 or 2"):
        UserspaceBackend(FakeTun(), FakeRaw(), FakeRoutes([]), workers=3)


# --- a real worker process ------------------------------------------------------------


def test_a_worker_sending_garbage_is_dropped_not_crashed_on(
        loop: asyncio.AbstractEventLoop) -> None:
    """A worker process that talks nonsense: the daemon's side reports it lost with
    the typed error's text, kills it, and nothing raises into the event loop."""
    script = ("import os, socket, sys, time\n"
              "s = socket.socket(fileno=int(sys.argv[1]))\n"
              "s.recv(65536)\n"
              "s.send(b'IW\\x01\\x41{not json')\n"
              "time.sleep(30)\n")
    lost: list[str] = []
    worker = SealingWorker(loop, dict(SAMPLES[MsgType.SETUP]), [], lambda m: None,
                           lost.append, command=[sys.executable, "-c", script])
    worker.start()
    deadline = loop.time() + 20
    while not lost and loop.time() < deadline:
        loop.run_until_complete(asyncio.sleep(0.05))
    assert lost and "bad message" in lost[0] and "not JSON" in lost[0], lost
    assert worker.proc is not None and worker.proc.poll() is not None
    worker.stop()


def test_the_real_worker_starts_answers_and_stops(loop: asyncio.AbstractEventLoop) -> None:
    """``python -m ikev1d.dataplane.worker`` as the daemon starts it: READY, counters,
    SHUTDOWN, exit status 0."""
    tun_ours, tun_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    got: list[Message] = []
    lost: list[str] = []
    setup = dict(SAMPLES[MsgType.SETUP], tun_fd=tun_theirs.fileno(), raw4_fd=-1, udp=[])
    worker = SealingWorker(loop, setup, [tun_theirs.fileno()], got.append, lost.append)
    worker.start()
    tun_theirs.close()
    worker.send(encode(MsgType.COUNTERS_REQUEST))
    deadline = loop.time() + 30
    while len(got) < 2 and loop.time() < deadline:
        loop.run_until_complete(asyncio.sleep(0.05))
    assert [m.type for m in got] == [MsgType.READY, MsgType.COUNTERS], (got, lost)
    assert got[0].get_int("pid") == worker.pid
    worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0
    assert lost == []
    tun_ours.close()
    assert os.path.exists(sys.executable)


def test_the_worker_gets_a_responder_s_pair_only_on_completion(two: TwoWorkerSide) -> None:
    """The inbound half stays in the daemon, which opens; the worker seals, so it hears
    of the pair when Quick Mode message 3 completes it, and of a withdrawn half never."""
    sa = dataclasses.replace(child(), initiator=False)
    two.backend.install_inbound(sa)
    assert two.worker.of(MsgType.INSTALL_SA) == []
    two.backend.install(sa)
    (install,) = two.worker.of(MsgType.INSTALL_SA)
    assert install.get_bytes("keymat") == sa.keymat_out and not install.get_bool("standby")
    other = dataclasses.replace(sa, spi_in=0xC0000021, spi_out=0xC0000022, child_id=3)
    two.backend.install_inbound(other)
    two.backend.remove(ChildSaDeleted("gw", "net", 1, 3, other.spi_in, other.spi_out, "t"))
    assert len(two.worker.of(MsgType.INSTALL_SA)) == 1
    assert two.worker.of(MsgType.REMOVE_SA) == []


def test_a_destination_that_refuses_does_not_turn_off_segmentation_offload() -> None:
    """EINVAL from a segmented send can mean "no offload" or "not to that destination"
    (port 0 here, a blackhole route elsewhere): only the first turns the offload off."""
    from ikev1d.dataplane.worker import _UdpSenders

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(2)
        port = sock.getsockname()[1]
        senders = _UdpSenders([f"{sock.detach()} 127.0.0.1 {port} 0"])
        with pytest.raises(OSError):
            senders.send_many([bytes(100)] * 3, ("127.0.0.1", port), ("127.0.0.1", 0))
        assert senders.gso
        senders.send_many([bytes(100)] * 3, ("127.0.0.1", port), sink.getsockname())
        assert [len(sink.recv(2000)) for _ in range(3)] == [100, 100, 100]
        senders.close()
    finally:
        sock.close()
        sink.close()
