"""The daemon answers the engine's XauthCheck with the RADIUS server's verdict
(the client itself is tested against a real FreeRADIUS in tests/interop)."""

from __future__ import annotations

import asyncio

import pytest

from ikev1d.daemon.radius import RadiusResult, RadiusServer
from ikev1d.engine.api import XauthCheck
from tests.unit.daemon._fakes import FakeEngine, eventually, running_daemon

XAUTH = """
[xauth]
radius = "127.0.0.1:18999"
radius_timeout = "1s"
radius_tries = 2

[secrets.radius]
type = "radius"
secret = "radius shared secret"
"""


class XauthEngine(FakeEngine):
    answers: list[tuple[int, bool]]

    def xauth_result(self, request_id: int, ok: bool, now: float) -> None:
        self.answers.append((request_id, ok))


class StubRadius:
    """Accepts alice with "right", refuses everything else, after a short wait."""

    def __init__(self, server: RadiusServer) -> None:
        self.server = server
        self.asked: list[tuple[str, bytes]] = []
        self.closed = False

    async def check(self, user: str, password: bytes, state: bytes = b"") -> RadiusResult:
        self.asked.append((user, password))
        await asyncio.sleep(0.01)
        if (user, password) == ("alice", b"right"):
            return RadiusResult(True, "Access-Accept")
        return RadiusResult(False, "Access-Reject")

    def close(self) -> None:
        self.closed = True


def test_xauth_checks_are_answered_with_the_radius_verdict(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubs: list[StubRadius] = []

    def factory(server: RadiusServer) -> StubRadius:
        stubs.append(StubRadius(server))
        return stubs[-1]

    async def body() -> None:
        async with running_daemon(extra_config=XAUTH) as h:
            caplog.set_level("INFO")
            engine = h.engine
            engine.__class__ = XauthEngine
            assert isinstance(engine, XauthEngine)
            engine.answers = []
            h.daemon.radius_factory = factory
            engine.emit(XauthCheck(1, 7, "alice", b"right"))
            engine.emit(XauthCheck(2, 8, "bob", b"guess"))
            h.daemon._pump()
            assert engine.answers == []  # asked off the event loop, not inside the pump
            await eventually(lambda: len(engine.answers) == 2)
            assert sorted(engine.answers) == [(7, True), (8, False)]
            (stub,) = stubs  # one client for both
            assert stub.server == RadiusServer("127.0.0.1", 18999, b"radius shared secret",
                                               1.0, 2)
            assert "RADIUS server 127.0.0.1:18999 accepted user 'alice'" in caplog.text
            assert "refused user 'bob': Access-Reject" in caplog.text
            assert "guess" not in caplog.text and "right" not in caplog.text
        assert stubs[0].closed

    asyncio.run(body())


def test_without_a_radius_server_the_user_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with running_daemon() as h:
            engine = h.engine
            engine.__class__ = XauthEngine
            assert isinstance(engine, XauthEngine)
            engine.answers = []
            engine.emit(XauthCheck(1, 3, "alice", b"pw"))
            h.daemon._pump()
            assert engine.answers == [(3, False)]
            assert "no RADIUS server configured" in caplog.text

    asyncio.run(body())


class ChallengingEngine(XauthEngine):
    challenges: list[tuple[int, str, bytes]]

    def xauth_challenge(self, request_id: int, message: str, state: bytes,
                        now: float) -> None:
        self.challenges.append((request_id, message, state))


class ChallengingRadius(StubRadius):
    """Challenges carol once (state b"s1"), then accepts her answer with that state."""

    async def check(self, user: str, password: bytes, state: bytes = b"") -> RadiusResult:
        self.asked.append((user, password))
        if state == b"s1" and password == b"code":
            return RadiusResult(True, "Access-Accept")
        if not state:
            return RadiusResult(False, "Access-Challenge", challenge="Code?", state=b"s1")
        return RadiusResult(False, "Access-Reject")


def test_a_challenge_goes_to_the_engine_and_the_answer_back_with_its_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        async with running_daemon(extra_config=XAUTH) as h:
            caplog.set_level("INFO")
            engine = h.engine
            engine.__class__ = ChallengingEngine
            assert isinstance(engine, ChallengingEngine)
            engine.answers, engine.challenges = [], []
            h.daemon.radius_factory = ChallengingRadius
            engine.emit(XauthCheck(1, 7, "carol", b"pw"))
            h.daemon._pump()
            await eventually(lambda: bool(engine.challenges))
            assert engine.challenges == [(7, "Code?", b"s1")] and engine.answers == []
            engine.emit(XauthCheck(1, 8, "carol", b"code", b"s1"))
            h.daemon._pump()
            await eventually(lambda: bool(engine.answers))
            assert engine.answers == [(8, True)]
            assert "RADIUS server 127.0.0.1:18999 challenges user 'carol'" in caplog.text

    asyncio.run(body())

