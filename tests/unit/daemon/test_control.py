"""The control protocol: codec, and round trips over a real Unix socket to a daemon
driving a fake engine."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

from ikev1d.daemon import runtime
from ikev1d.daemon.control import (
    DEFAULT_SOCKET_PATH,
    ControlProtocolError,
    DownRequest,
    PingRequest,
    ReloadRequest,
    Request,
    Response,
    StatusRequest,
    UpRequest,
    decode_request,
    decode_response,
    decode_status,
    encode_progress,
    encode_request,
    encode_response,
    encode_status_response,
    resolve_socket_path,
    status_response_parts,
)
from ikev1d.daemon.control_client import DaemonUnreachable, send_request
from ikev1d.status import (
    ChildSaStatus,
    Counters,
    IkeSaStatus,
    PoolStatus,
    StatusDocument,
    TrapStatus,
)
from tests.unit.daemon._fakes import running_daemon

# --- codec ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        UpRequest("site-b"),
        UpRequest("site-b", "net", 2.5),
        DownRequest("site-b"),
        StatusRequest(),
        ReloadRequest(),
        PingRequest(),
    ],
)
def test_request_round_trip(request_: Request) -> None:
    line = encode_request(request_)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == request_


def test_wire_format_is_the_documented_one() -> None:
    assert json.loads(encode_request(UpRequest("a", None, 5))) == {
        "command": "up", "name": "a", "child": None, "timeout": 5,
    }
    assert json.loads(encode_response(True, "x", status={"ike_sas": []})) == {
        "ok": True, "message": "x", "status": {"ike_sas": []},
    }
    assert decode_request(b'{"command":"up","name":"a"}\n') == UpRequest("a", None, 90.0)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json\n", "not a JSON line"),
        (b"[1]\n", "not a JSON object"),
        (b"\xff\n", "not a JSON line"),
        (b'{"command":"fly"}\n', "unknown command"),
        (b'{"command":"up"}\n', "'name'"),
        (b'{"command":"up","name":""}\n', "'name'"),
        (b'{"command":"down","name":3}\n', "'name'"),
        (b'{"command":"up","name":"a","child":5}\n', "'child'"),
        (b'{"command":"up","name":"a","timeout":0}\n', "'timeout'"),
        (b'{"command":"up","name":"a","timeout":true}\n', "'timeout'"),
        (b'{"command":"up","name":"a","timeout":"5"}\n', "'timeout'"),
        (b'{"command":"up","name":"a","timeout":1e999}\n', "'timeout'"),
        (b'{"command":"up","name":' + b"[" * 30000 + b"]" * 30000 + b"}\n", "nested deeper"),
        (b"[" * 65000 + b"\n", "nested deeper"),
        (b'{"command":"ping","x":' + b"[" * 33 + b"]" * 33 + b"}\n", "nested deeper"),
    ],
)
def test_bad_requests_are_typed_errors(line: bytes, reason: str) -> None:
    with pytest.raises(ControlProtocolError, match=reason):
        decode_request(line)


def test_nesting_is_counted_outside_strings_only() -> None:
    line = b'{"command":"up","name":"[[[[\\"[[[' + b"[" * 40 + b'","x":[[1]]}\n'
    assert decode_request(line) == UpRequest("[[[[\"[[[" + "[" * 40)


def test_responses_and_progress_lines() -> None:
    assert decode_response(encode_progress("half way")) == Response(
        False, True, "half way", {"progress": "half way"}
    )
    final = decode_response(encode_response(False, "no"))
    assert (final.final, final.ok, final.message) == (True, False, "no")
    with pytest.raises(ControlProtocolError):
        decode_response(b'{"something":"else"}\n')
    with pytest.raises(ControlProtocolError):
        decode_response(b'{"ok":"yes"}\n')


def test_status_answer_carries_the_document_and_reads_back() -> None:
    net = ChildSaStatus(
        name="net", state="INSTALLED", mode="tunnel", encap=True, spi_in=0xC1234567,
        spi_out=0xC7654321, proposal="aes128gcm16", local_ts=(), remote_ts=(),
        rekey_in_s=None, expires_in_s=60, counters=Counters(1, 2, 3, 4),
    )
    document = StatusDocument((IkeSaStatus(
        name="site-b", state="ESTABLISHED", local=("192.0.2.1", 4500),
        remote=("192.0.2.2", 4500), local_id="192.0.2.1", remote_id="192.0.2.2",
        initiator=False, cookies=(b"\xa1" * 8, b"\xc3" * 8), proposal="aes256-sha256-modp2048",
        auth="psk", nat_local=False, nat_remote=True, established_s=5, rekey_in_s=100,
        virtual_ip=None, children=(net,),
    ),))
    line = encode_status_response(document)
    assert json.loads(line) == {"ok": True, "message": "", "status": document.to_json()}
    assert decode_status(decode_response(line)) == document
    with pytest.raises(ControlProtocolError, match="malformed status document: status: missing"):
        decode_status(decode_response(encode_response(True, "", status={})))
    with pytest.raises(ControlProtocolError, match="status: expected an object, got null"):
        decode_status(decode_response(encode_response(True, "")))


def test_the_status_answer_in_pieces_is_the_same_line() -> None:
    """What the daemon writes a piece at a time joins into encode_status_response's
    line, whatever the number of SAs, the piece size, the pools and traps."""
    def sa(i: int) -> IkeSaStatus:
        child = ChildSaStatus(
            name=f"net{i}", state="INSTALLED", mode="tunnel", encap=bool(i % 2),
            spi_in=0xC0000000 + i, spi_out=0xD0000000 + i, proposal="aes128gcm16",
            local_ts=(), remote_ts=(), rekey_in_s=None, expires_in_s=60,
            counters=Counters(i, 2, 3, 4))
        return IkeSaStatus(
            name=f"site-\u00e9{i}", state="ESTABLISHED", local=("192.0.2.1", 500),
            remote=("192.0.2.2", 500), local_id="192.0.2.1", remote_id=f"r\"{i}",
            initiator=False, cookies=(bytes([i % 256]) * 8, b"\xc3" * 8), proposal=None,
            auth="psk", nat_local=False, nat_remote=True, established_s=i, rekey_in_s=None,
            virtual_ip=None, children=(child,) * (i % 3))

    pools = (PoolStatus(name="rw", addrs="10.3.0.0/28", size=14, online=1, offline=0),)
    traps = (TrapStatus(name="t", child="c", origin="start_action", mode="tunnel",
                        local_ts=(), remote_ts=()),)
    for count in (0, 1, 3, 600):
        for extra in ({}, {"pools": pools}, {"traps": traps}, {"pools": pools, "traps": traps}):
            document = StatusDocument(tuple(sa(i) for i in range(count)), **extra)
            line = encode_status_response(document)
            for size in (1, 2, 256):
                parts = list(status_response_parts(document, size))
                assert b"".join(parts) == line
                assert len(parts) == 2 + -(-count // size)


def test_socket_path_resolution() -> None:
    assert resolve_socket_path("/x.sock", {"IKEV1D_SOCKET": "/y.sock"}) == "/x.sock"
    assert resolve_socket_path(None, {"IKEV1D_SOCKET": "/y.sock"}) == "/y.sock"
    assert resolve_socket_path(None, {}) == DEFAULT_SOCKET_PATH == "/run/ikev1d/ikev1d.sock"


# --- round trips over the socket -------------------------------------------------------


async def _call(path: str, request: Request, progress: list[str] | None = None) -> Response:
    """The blocking client, in a thread, against the daemon running in this loop."""
    loop = asyncio.get_running_loop()
    on_progress = progress.append if progress is not None else None
    return await loop.run_in_executor(
        None, functools.partial(send_request, path, request, on_progress)
    )


def test_up_waits_for_every_child_and_streams_progress() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            progress: list[str] = []
            response = await _call(h.socket_path, UpRequest("site-ok", None, 5), progress)
            assert response.ok, response.message
            assert response.message == "site-ok: established net, net2"
            assert "initiate site-ok None" in h.engine.calls
            assert "timer" in h.engine.calls  # established via the daemon's timer
            assert any("ISAKMP SA established" in p for p in progress)
            assert sum("IPsec SA established" in p for p in progress) == 2
            # Asking again does not initiate a second time.
            again = await _call(h.socket_path, UpRequest("site-ok", "net", 5))
            assert again.ok and "already established" in again.message
            assert h.engine.calls.count("initiate site-ok None") == 1

    asyncio.run(body())


def test_commands_about_one_connection_describe_only_its_sas() -> None:
    # `up` (already established?) and `down` (what was deleted?) look at one
    # connection: building the whole status document for it would cost as much as
    # `status` itself on a gateway holding thousands of SAs.
    async def body() -> None:
        async with running_daemon() as h:
            assert (await _call(h.socket_path, UpRequest("site-ok", None, 5))).ok
            assert (await _call(h.socket_path, UpRequest("site-nochild", None, 5))).ok
            h.engine.status_asked.clear()
            again = await _call(h.socket_path, UpRequest("site-ok", None, 5))
            assert again.ok and "already established" in again.message
            down = await _call(h.socket_path, DownRequest("site-ok"))
            assert down.ok and down.message == "site-ok: deleted 1 ISAKMP SA(s) and 2 IPsec SA(s)"
            assert h.engine.status_asked == ["site-ok", "site-ok"]
            status = decode_status(await _call(h.socket_path, StatusRequest()))
            assert [s.name for s in status.ike_sas] == ["site-nochild"]
            assert h.engine.status_asked[2:] == [None]

    asyncio.run(body())


def test_up_one_child_and_a_connection_without_children() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            response = await _call(h.socket_path, UpRequest("site-ok", "net2", 5))
            assert response.ok and response.message == "site-ok: established net2"
            response = await _call(h.socket_path, UpRequest("site-nochild", None, 5))
            assert response.ok and "ISAKMP SA established" in response.message

    asyncio.run(body())


def test_up_failure_carries_the_reason() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            response = await _call(h.socket_path, UpRequest("site-fail", None, 5))
            assert not response.ok
            assert response.message == "site-fail: NO-PROPOSAL-CHOSEN from peer"

    asyncio.run(body())


def test_up_timeout() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            loop = asyncio.get_running_loop()
            start = loop.time()
            response = await _call(h.socket_path, UpRequest("site-hang", None, 0.2))
            assert not response.ok
            assert "timed out after 0.2s waiting for net" in response.message
            assert 0.2 <= loop.time() - start < 2.0
            assert h.daemon._waiters == []

    asyncio.run(body())


def test_up_unknown_names() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            response = await _call(h.socket_path, UpRequest("nope", None, 5))
            assert not response.ok and "no connection named 'nope'" in response.message
            response = await _call(h.socket_path, UpRequest("site-ok", "nope", 5))
            assert not response.ok and "has no child 'nope'" in response.message
            assert not any(c.startswith("initiate") for c in h.engine.calls)

    asyncio.run(body())


def test_status_and_down() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            response = await _call(h.socket_path, StatusRequest())
            assert response.ok and response.body["status"] == {"ike_sas": []}
            assert (await _call(h.socket_path, UpRequest("site-ok", None, 5))).ok
            response = await _call(h.socket_path, StatusRequest())
            ike_sas = response.body["status"]["ike_sas"]
            assert [s["name"] for s in ike_sas] == ["site-ok"]
            # counters come from the data plane, not the engine's zeros
            assert ike_sas[0]["children"][0]["packets_out"] == 4

            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peer.bind(("127.0.0.1", 0))
            peer.setblocking(False)
            h.engine.peer = peer.getsockname()
            h.engine.local = ("127.0.0.1", h.config.daemon.port)
            response = await _call(h.socket_path, DownRequest("site-ok"))
            assert response.ok, response.message
            assert "terminate site-ok" in h.engine.calls
            delete = await asyncio.wait_for(loop_recv(peer), 1.0)
            assert delete == b"delete site-ok"
            peer.close()
            response = await _call(h.socket_path, StatusRequest())
            assert response.body["status"] == {"ike_sas": []}
            response = await _call(h.socket_path, DownRequest("nope"))
            assert not response.ok

    asyncio.run(body())


async def loop_recv(sock: socket.socket) -> bytes:
    return await asyncio.get_running_loop().sock_recv(sock, 1000)


def test_reload_and_ping() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            response = await _call(h.socket_path, ReloadRequest())
            assert response.ok and "reloaded" in response.message
            assert h.engine.calls == ["reload"]
            response = await _call(h.socket_path, PingRequest())
            assert response.ok and response.body["pid"] == os.getpid()

    asyncio.run(body())


def test_garbage_request_gets_an_error_line() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            reader, writer = await asyncio.open_unix_connection(h.socket_path)
            writer.write(b"hello\n")
            line = await reader.readline()
            writer.close()
            response = decode_response(line)
            assert not response.ok and response.message.startswith("bad request")

    asyncio.run(body())


def test_unreachable_daemon() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "none.sock")
        with pytest.raises(DaemonUnreachable) as info:
            send_request(path, StatusRequest())
        assert str(info.value) == (
            f"cannot reach the daemon at {path}: is `ikev1d daemon` running?"
        )
        # a socket file nobody listens on
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)
        stale.close()
        with pytest.raises(DaemonUnreachable):
            send_request(path, StatusRequest())


def test_overlong_request_is_refused() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            reader, writer = await asyncio.open_unix_connection(h.socket_path)
            writer.write(b'{"command":"status","pad":"' + b"x" * 200_000 + b'"}\n')
            line = await reader.readline()
            writer.close()
            response = decode_response(line)
            assert not response.ok and response.message.startswith("bad request")

    asyncio.run(body())


def test_internal_error_is_an_answer_not_a_hangup() -> None:
    async def body() -> None:
        async with running_daemon() as h:
            def broken(now: float, conn: str | None = None) -> StatusDocument:
                raise RuntimeError("status bug")

            h.engine.status = broken  # type: ignore[method-assign]
            response = await _call(h.socket_path, StatusRequest())
            assert not response.ok
            assert response.message == "internal error: status bug"

    asyncio.run(body())


def test_status_is_made_and_encoded_a_chunk_at_a_time_with_the_loop_serving_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 10,000 SAs the document is 0.2 s of work and its JSON 0.13 s more: the loop
    serves between two chunks of SAs, and between two pieces of the JSON."""
    ticks = 0
    described: list[int] = []
    encoded: list[int] = []
    parts = status_response_parts

    def counted_parts(document: StatusDocument, size: int) -> Iterator[bytes]:
        for part in parts(document, 1):
            encoded.append(ticks)
            yield part

    monkeypatch.setattr(runtime, "status_response_parts", counted_parts)

    async def body() -> None:
        nonlocal ticks
        async with running_daemon() as h:
            for name in ("site-ok", "site-nochild"):
                assert (await _call(h.socket_path, UpRequest(name, None, 5))).ok
            chunks = h.engine.status_chunks

            def counted(now: float, conn: str | None = None,
                        size: int = 1) -> Iterator[tuple[IkeSaStatus, ...]]:
                for chunk in chunks(now, conn, size):
                    described.append(ticks)
                    yield chunk

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0)

            monkeypatch.setattr(h.engine, "status_chunks", counted)
            task = asyncio.ensure_future(ticker())
            try:
                status = decode_status(await _call(h.socket_path, StatusRequest()))
            finally:
                task.cancel()
            assert sorted(s.name for s in status.ike_sas) == ["site-nochild", "site-ok"]
            assert len(described) == 2 and described[1] > described[0]
            # head, one piece per SA, tail: the loop ran between any two
            assert len(encoded) == 4 and all(b > a for a, b in itertools.pairwise(encoded))

    asyncio.run(body())
