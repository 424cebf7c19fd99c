"""sendmmsg / recvmmsg through ctypes (``dataplane/linux/mmsg.py``) with the real kernel.

The mechanics are the same for any datagram socket, so most of these run over UDP
on the loopback device (no root): datagrams of different sizes keep their order
and exact lengths (a short one after a long one in the same slot shows nothing of
the long one), a datagram larger than its slot is counted as truncated and
dropped while the others arrive, one refused in the middle of a batch is reported
alone, and a missing or refused call falls back to plain calls for good. The last
test sends and receives real raw ESP (IP protocol 50) through
:class:`RawEspSocket` in a network namespace of its own (root).
"""

from __future__ import annotations

import ctypes
import errno
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ikev1d.dataplane.linux.mmsg import MmsgCall, MmsgSocket, libc_mmsg
from ikev1d_lab.netns import Namespace, netns_available


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    yield tx, rx
    tx.close()
    rx.close()


def _items(rx: socket.socket, payloads: list[bytes]) -> list[tuple[bytes, str, str]]:
    # The UDP port rides in the sockaddr that MmsgSocket builds with port 0, so send
    # through a connected socket instead: a connected UDP socket takes no address.
    return [(p, "", rx.getsockname()[0]) for p in payloads]


def _connected(tx: socket.socket, rx: socket.socket) -> None:
    tx.connect(rx.getsockname())


class _Plain:
    """The plain-call fallback: sends on the connected socket and remembers what."""

    def __init__(self, tx: socket.socket) -> None:
        self.tx = tx
        self.sent: list[bytes] = []

    def __call__(self, packet: bytes, local: str, remote: str) -> None:
        self.tx.send(packet)
        self.sent.append(packet)


def _drain(m: MmsgSocket) -> tuple[list[bytes], int]:
    got: list[bytes] = []
    truncated = 0
    while (batch := m.recv_many()) is not None:
        got += batch[0]
        truncated += batch[1]
    return got, truncated


def _sender(tx: socket.socket, rx: socket.socket, **kw: object) -> MmsgSocket:
    """A sender whose sockaddr is left out (the socket is connected)."""
    _connected(tx, rx)
    m = MmsgSocket(tx, **kw)  # type: ignore[arg-type]
    # Connected UDP: msg_name must be NULL or match; zero the name length.
    for i in range(m.slots):
        m._slot_route[i] = ("", rx.getsockname()[0])
        m._send_vec[i].msg_hdr.msg_namelen = 0
        m._send_vec[i].msg_hdr.msg_controllen = 0
    return m


def test_the_c_library_has_both_calls() -> None:
    send, recv = libc_mmsg()
    assert send is not None and recv is not None


def test_batch_keeps_order_and_exact_lengths(pair: tuple[socket.socket, socket.socket]) -> None:
    tx, rx = pair
    sender = _sender(tx, rx)
    receiver = MmsgSocket(rx)
    assert not receiver.ip_header  # UDP: nothing to cut off
    payloads = [bytes([i]) * n for i, n in enumerate((1400, 3, 900, 1, 0, 60000, 17), 1)]
    calls = []
    real_send = sender._sendmmsg

    def counting(fd: int, vec: int, vlen: int, flags: int, timeout: int) -> int:
        calls.append(vlen)
        assert real_send is not None
        return real_send(fd, vec, vlen, flags, timeout)
    sender._sendmmsg = counting
    assert sender.send_many(_items(rx, payloads), lambda *a: pytest.fail("fallback")) == []
    assert calls == [len(payloads)]  # one system call for all of them
    got, truncated = _drain(receiver)
    assert got == payloads and truncated == 0
    # A second, shorter round through the same slots: nothing of the first shows.
    short = [b"x", b"yz"]
    assert sender.send_many(_items(rx, short), lambda *a: None) == []
    assert _drain(receiver) == (short, 0)


def test_more_packets_than_slots_take_several_calls(
        pair: tuple[socket.socket, socket.socket]) -> None:
    tx, rx = pair
    sender = _sender(tx, rx, slots=4)
    receiver = MmsgSocket(rx, slots=4)
    payloads = [i.to_bytes(2, "big") * 50 for i in range(11)]
    assert sender.send_many(_items(rx, payloads), lambda *a: None) == []
    assert _drain(receiver) == (payloads, 0)


def test_a_datagram_larger_than_its_slot_is_dropped_alone(
        pair: tuple[socket.socket, socket.socket]) -> None:
    tx, rx = pair
    _connected(tx, rx)
    receiver = MmsgSocket(rx, slot_size=4096)
    payloads = [b"a" * 100, b"b" * 5000, b"c" * 4096, b"d" * 200]
    for p in payloads:
        tx.send(p)
    got, truncated = _drain(receiver)
    assert got == [payloads[0], payloads[2], payloads[3]]
    assert truncated == 1


def test_a_packet_larger_than_a_send_slot_goes_the_plain_way(
        pair: tuple[socket.socket, socket.socket]) -> None:
    tx, rx = pair
    sender = _sender(tx, rx, slot_size=4096)
    plain = _Plain(tx)
    payloads = [b"a" * 10, b"b" * 5000, b"c" * 20]
    assert sender.send_many(_items(rx, payloads), plain) == []
    assert plain.sent == [payloads[1]] and sender.send_batching
    assert _drain(MmsgSocket(rx))[0] == payloads


def test_one_refused_in_the_middle_is_reported_alone(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """UDP refuses a 65,000-octet payload (EMSGSIZE) that fits the slot: the call
    sends what is before it, reports it, and the rest still goes."""
    tx, rx = pair
    sender = _sender(tx, rx)
    payloads = [b"a" * 10, b"b" * 65520, b"c" * 30]
    failed = sender.send_many(_items(rx, payloads), lambda *a: pytest.fail("fallback"))
    assert [(i, e.errno) for i, e in failed] == [(1, errno.EMSGSIZE)]
    assert sender.send_batching
    assert _drain(MmsgSocket(rx))[0] == [payloads[0], payloads[2]]


def _failing(err: int) -> MmsgCall:
    def call(fd: int, vec: int, vlen: int, flags: int, timeout: int) -> int:
        ctypes.set_errno(err)
        return -1
    return call


def test_missing_calls_fall_back_to_plain_ones(
        pair: tuple[socket.socket, socket.socket]) -> None:
    tx, rx = pair
    _connected(tx, rx)
    sender = MmsgSocket(tx, calls=(None, None))
    plain = _Plain(tx)
    assert sender.send_many(_items(rx, [b"1", b"2"]), plain) == []
    assert plain.sent == [b"1", b"2"] and not sender.send_batching
    receiver = MmsgSocket(rx, calls=(None, None))
    assert receiver.recv_many() is None and not receiver.recv_batching


@pytest.mark.parametrize("err", [errno.ENOSYS, errno.EINVAL])
def test_a_refused_batch_call_falls_back_for_good(
        pair: tuple[socket.socket, socket.socket], err: int) -> None:
    """ENOSYS, or EINVAL where the plain call then takes the same packet: the batch
    call is what was refused, so every later packet goes the plain way."""
    tx, rx = pair
    _connected(tx, rx)
    sender = MmsgSocket(tx, calls=(_failing(err), None))
    plain = _Plain(tx)
    payloads = [b"1", b"22", b"333"]
    assert sender.send_many(_items(rx, payloads), plain) == []
    assert plain.sent == payloads and not sender.send_batching
    receiver = MmsgSocket(rx, calls=(None, _failing(err)))
    assert receiver.recv_many() is None and not receiver.recv_batching


def test_einval_for_the_packet_itself_keeps_batching(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """EINVAL where the plain call refuses the packet too: that packet's own error."""
    tx, rx = pair
    real_send, _ = libc_mmsg()
    assert real_send is not None
    refuse_first = [True]

    def once(fd: int, vec: int, vlen: int, flags: int, timeout: int) -> int:
        if refuse_first[0]:
            refuse_first[0] = False
            ctypes.set_errno(errno.EINVAL)
            return -1
        return real_send(fd, vec, vlen, flags, timeout)

    sender = _sender(tx, rx, calls=(once, None))

    def refusing(packet: bytes, local: str, remote: str) -> None:
        raise OSError(errno.EINVAL, "refused")
    failed = sender.send_many(_items(rx, [b"bad", b"good"]), refusing)
    assert [(i, e.errno) for i, e in failed] == [(0, errno.EINVAL)]
    assert sender.send_batching
    assert _drain(MmsgSocket(rx))[0] == [b"good"]


def test_a_pending_socket_error_is_raised(pair: tuple[socket.socket, socket.socket]) -> None:
    _tx, rx = pair
    receiver = MmsgSocket(rx, calls=(None, _failing(errno.ECONNREFUSED)))
    with pytest.raises(ConnectionRefusedError):
        receiver.recv_many()
    assert receiver.recv_batching


_RAW_SCRIPT = r"""
import json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from ikev1d.dataplane.linux.tun import RawEspSocket
os.system("ip link set lo up; ip addr add 127.0.0.2/8 dev lo")
tx, rx = RawEspSocket(), RawEspSocket()
tx._sock.bind(("127.0.0.2", 0))  # rx alone receives what goes to 127.0.0.1
rx._sock.bind(("127.0.0.1", 0))
packets = [(i.to_bytes(4, "big") + bytes([i]) * (40 + 97 * i), "127.0.0.2", "127.0.0.1")
           for i in range(1, 101)]
failed = tx.send_many(packets)
got = []
while (batch := rx.recv_many()) is not None:
    got += batch[0]
print(json.dumps({"failed": len(failed), "batching": [tx._mmsg.send_batching,
                  rx._mmsg.recv_batching],
                  "same": got == [p for p, _, _ in packets], "count": len(got)}))
"""


def test_raw_esp_batches_through_the_kernel() -> None:
    ok, why = netns_available()
    if not ok:
        pytest.skip(why)
    root = str(Path(__file__).resolve().parents[3] / "src")
    with Namespace("mmsg") as ns:
        out = ns.run([sys.executable, "-c", _RAW_SCRIPT, root])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"failed": 0, "batching": [True, True], "same": True, "count": 100}
