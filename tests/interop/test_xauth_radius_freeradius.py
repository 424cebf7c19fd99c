"""XAUTH passwords checked by a real FreeRADIUS 3.2 (Debian's ``freeradius``).

One server for the module, on this host's loopback with a free port and its
own configuration in a temp dir (users alice and bob). The RADIUS client is
checked directly (right and wrong password, unknown user, wrong shared secret,
server down: refused within timeout times tries) and through the daemon, which
answers the engine's XauthCheck events with the server's verdict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ikev1d.daemon.radius import RadiusClient, RadiusServer
from ikev1d.engine.api import XauthCheck
from ikev1d_lab.radius import (
    CHALLENGE_MESSAGE,
    CHALLENGE_STATE,
    FreeRadius,
    free_udp_port,
    freeradius_available,
)
from tests.unit.daemon._fakes import eventually, running_daemon
from tests.unit.daemon.test_xauth_radius import XauthEngine

SECRET = "a RADIUS secret for tests"
USERS = {"alice": "alice's password", "bob": "bob-pw", "dave": "dave-pw"}


@pytest.fixture(scope="module")
def freeradius(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreeRadius]:
    ok, reason = freeradius_available()
    if not ok:
        pytest.skip(reason)
    with FreeRadius(tmp_path_factory.mktemp("freeradius"), USERS, SECRET,
                    challenge_once=["dave"]) as server:
        yield server


def check(server: RadiusServer, user: str, password: str) -> tuple[bool, str, float]:
    async def body() -> tuple[bool, str, float]:
        client = RadiusClient(server)
        try:
            start = time.monotonic()
            result = await client.check(user, password.encode())
            return result.ok, result.reason, time.monotonic() - start
        finally:
            client.close()

    return asyncio.run(body())


def test_right_and_wrong_passwords(freeradius: FreeRadius) -> None:
    server = RadiusServer("127.0.0.1", freeradius.port, SECRET.encode(), 1.0, 2)
    assert check(server, "alice", "alice's password")[:2] == (True, "Access-Accept")
    assert check(server, "bob", "bob-pw")[:2] == (True, "Access-Accept")
    assert check(server, "bob", "alice's password")[:2] == (False, "Access-Reject")
    assert check(server, "mallory", "x")[:2] == (False, "Access-Reject")
    log = freeradius.log_text()
    assert "Sent Access-Accept" in log and "Sent Access-Reject" in log
    # Our requests carry a Message-Authenticator (the server requires it).
    assert "Message-Authenticator = 0x" in log


def test_an_access_challenge_and_its_answer_with_the_state(freeradius: FreeRadius) -> None:
    server = RadiusServer("127.0.0.1", freeradius.port, SECRET.encode(), 1.0, 2)

    async def body() -> None:
        client = RadiusClient(server)
        try:
            first = await client.check("dave", b"dave-pw")
            assert not first.ok and first.reason == "Access-Challenge"
            assert first.challenge == CHALLENGE_MESSAGE and first.state == CHALLENGE_STATE
            assert "dave-pw" not in repr(first) and CHALLENGE_STATE.decode() not in repr(first)
            answer = await client.check("dave", b"dave-pw", first.state)
            assert (answer.ok, answer.reason, answer.challenge) == (True, "Access-Accept", None)
            wrong = await client.check("dave", b"wrong", first.state)
            assert (wrong.ok, wrong.reason) == (False, "Access-Reject")
            forged = await client.check("dave", b"dave-pw", b"not the state")
            assert (forged.ok, forged.reason) == (False, "Access-Reject")
        finally:
            client.close()

    asyncio.run(body())
    assert "Sent Access-Challenge" in freeradius.log_text()


def test_wrong_secret_and_server_down_refuse_without_hanging(
    freeradius: FreeRadius, tmp_path: Path,
) -> None:
    wrong = RadiusServer("127.0.0.1", freeradius.port, b"not the secret", 0.3, 2)
    ok, reason, took = check(wrong, "alice", "alice's password")
    assert not ok and "no answer" in reason and took < 0.3 * 2 + 1
    assert "invalid Message-Authenticator" in freeradius.log_text()
    # A server that is not there (a stopped one's port).
    down = FreeRadius(tmp_path / "down", USERS, SECRET, port=free_udp_port())
    down.start()
    down.stop()
    gone = RadiusServer("127.0.0.1", down.port, SECRET.encode(), 0.3, 3)
    ok, reason, took = check(gone, "alice", "alice's password")
    assert not ok and "no answer" in reason and took < 0.3 * 3 + 1, reason


def test_the_daemon_answers_xauth_checks_from_freeradius(freeradius: FreeRadius) -> None:
    xauth = f"""
[xauth]
radius = "127.0.0.1:{freeradius.port}"
radius_timeout = "1s"
radius_tries = 2

[secrets.radius]
type = "radius"
secret = "{SECRET}"
"""

    async def body() -> None:
        async with running_daemon(extra_config=xauth) as h:
            engine = h.engine
            engine.__class__ = XauthEngine
            assert isinstance(engine, XauthEngine)
            engine.answers = []
            engine.emit(XauthCheck(1, 11, "alice", b"alice's password"))
            engine.emit(XauthCheck(2, 12, "bob", b"wrong"))
            h.daemon._pump()
            await eventually(lambda: len(engine.answers) == 2, timeout=5.0)
            assert sorted(engine.answers) == [(11, True), (12, False)]

    asyncio.run(body())
