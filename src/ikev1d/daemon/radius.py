"""XAUTH user names and passwords checked by a RADIUS server (``[xauth] radius``).

An XAUTH server (draft-beaulieu-ike-xauth-02) learns a user name and password
in the Transaction exchange; with ``[xauth] radius`` set, the engine hands them
out as an ``XauthCheck`` event and the daemon asks the server with an
Access-Request (RFC 2865 section 4.1): User-Name, User-Password hidden with the
shared secret (section 5.2), NAS-Identifier, and a Message-Authenticator
(RFC 3579 section 3.2). The answer's Response Authenticator (RFC 2865 section
3) is always checked, and its Message-Authenticator when it has one: servers
before the 2024 hardening (FreeRADIUS 3.2.1 in Debian 12, for one) send none in
Access-Accept, so one cannot be required. Access-Accept lets the user in;
Access-Reject and silence refuse them. An Access-Challenge (RFC 2865 section
4.4) comes back with its Reply-Message and State: the engine shows the message
to the client in another XAUTH request and the answer goes to the server in a
new Access-Request carrying that State (section 5.24).

pyrad does the packet work. Its client blocks (a poll loop with the
retransmissions), so each check runs in a small thread pool off the event loop,
and the wait is bounded from the outside too: a check never takes longer than
``radius_timeout`` times ``radius_tries`` and a second. The password is never
logged; the reasons are.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from ikev1d.config.model import Config, SecretType
from ikev1d.errors import Ikev1dError

__all__ = ["RadiusClient", "RadiusError", "RadiusResult", "RadiusServer"]

log = logging.getLogger("ikev1d.daemon")

NAS_IDENTIFIER: Final = "ikev1d"
_WORKERS: Final = 4
"""Checks in flight at once; more wait their turn (each is bounded in time)."""
_SLACK_S: Final = 1.0

# The attributes this client sends or reads (RFC 2865 section 5, RFC 3579 section 3.2),
# in FreeRADIUS dictionary syntax, which pyrad reads.
_DICTIONARY: Final = """\
ATTRIBUTE User-Name 1 string
ATTRIBUTE User-Password 2 string encrypt=1
ATTRIBUTE NAS-IP-Address 4 ipaddr
ATTRIBUTE Reply-Message 18 string
ATTRIBUTE State 24 octets
ATTRIBUTE NAS-Identifier 32 string
ATTRIBUTE Message-Authenticator 80 octets
"""

_ACCESS_ACCEPT: Final = 2
_ACCESS_REJECT: Final = 3
_ACCESS_CHALLENGE: Final = 11


class RadiusError(Ikev1dError):
    """The RADIUS client cannot be set up (no secret, pyrad missing); for people."""


@dataclass(frozen=True)
class RadiusServer:
    """Where to ask, with what secret, how patiently."""

    host: str
    port: int
    secret: bytes
    timeout: float = 3.0
    tries: int = 3

    @classmethod
    def from_config(cls, config: Config) -> RadiusServer | None:
        """The ``[xauth]`` RADIUS server, or None when there is none configured."""
        text = config.xauth.radius
        if not text:
            return None
        host, _, port = text.rpartition(":")
        host = host.strip("[]")
        ipaddress.ip_address(host)  # the loader checked it; a ValueError here is a bug
        secret = next((s.value for s in config.secrets.values()
                       if s.type is SecretType.RADIUS), None)
        if secret is None:
            raise RadiusError("[xauth] radius is set but no [secrets] of type \"radius\"")
        return cls(host, int(port), secret, config.xauth.radius_timeout,
                   config.xauth.radius_tries)

    @property
    def text(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


#: RFC 2865 section 5: an attribute holds at most 253 octets; a Reply-Message
#: longer than what we relay is cut.
MAX_REPLY_MESSAGE: Final = 253


@dataclass(frozen=True)
class RadiusResult:
    ok: bool
    reason: str
    """For the log: "Access-Accept", "Access-Reject", "no answer from ...", ..."""
    challenge: str | None = None
    """An Access-Challenge: its Reply-Message (several joined by new lines), for the
    user; ``ok`` is False."""
    state: bytes = field(default=b"", repr=False)
    """The challenge's State, to send back with the answer (RFC 2865 section 5.24)."""


class RadiusClient:
    """Checks user names and passwords against one RADIUS server; ``close`` once done."""

    def __init__(self, server: RadiusServer) -> None:
        try:
            from pyrad.dictionary import Dictionary
        except ImportError as exc:  # a dependency of the package; only a broken install
            raise RadiusError(f"the RADIUS client library is missing: {exc}") from None
        self.server = server
        self._dictionary: Any = Dictionary(io.StringIO(_DICTIONARY))
        self._pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="ikev1d-radius")

    async def check(self, user: str, password: bytes, state: bytes = b"") -> RadiusResult:
        """Ask the server (with ``state``: the answer to its challenge); never raises,
        never waits much longer than timeout times tries."""
        loop = asyncio.get_running_loop()
        limit = self.server.timeout * self.server.tries + _SLACK_S
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._ask, user, password, state), limit)
        except TimeoutError:
            return RadiusResult(False, f"no answer from RADIUS server {self.server.text} "
                                f"within {limit:g}s")
        except Exception as exc:  # a library bug must not take the daemon down
            log.exception("RADIUS check of user %r failed unexpectedly", user)
            return RadiusResult(False, f"RADIUS client error: {exc}")

    def _ask(self, user: str, password: bytes, state: bytes) -> RadiusResult:
        """The blocking exchange, in a worker thread."""
        from pyrad import packet
        from pyrad.client import Client, Timeout

        server = self.server
        client: Any = Client(server=server.host, authport=server.port, secret=server.secret,
                             dict=self._dictionary, retries=server.tries,
                             timeout=server.timeout, enforce_ma=False)
        try:
            request = client.CreateAuthPacket(code=packet.AccessRequest, User_Name=user,
                                              NAS_Identifier=NAS_IDENTIFIER)
            request["User-Password"] = request.PwCrypt(password)
            if state:
                request["State"] = state
            request.add_message_authenticator()
            try:
                reply = client.SendPacket(request)
            except Timeout:
                return RadiusResult(False, f"no answer from RADIUS server {server.text} "
                                    f"after {server.tries} tries of {server.timeout:g}s")
            except OSError as exc:
                return RadiusResult(False, f"RADIUS server {server.text}: {exc.strerror or exc}")
        finally:
            client._CloseSocket()
        code = int(reply.code)
        if code == _ACCESS_ACCEPT:
            return RadiusResult(True, "Access-Accept")
        if code == _ACCESS_REJECT:
            return RadiusResult(False, "Access-Reject")
        if code == _ACCESS_CHALLENGE:
            return _challenge(reply)
        return RadiusResult(False, f"unexpected RADIUS answer code {code}")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _challenge(reply: Any) -> RadiusResult:
    """An Access-Challenge: its Reply-Message and State (RFC 2865 section 4.4)."""
    messages = [_text(value) for value in _values(reply, "Reply-Message")]
    states = [bytes(value) for value in _values(reply, "State")
              if isinstance(value, bytes | bytearray)]
    message = "\n".join(messages)[:MAX_REPLY_MESSAGE]
    return RadiusResult(False, "Access-Challenge", challenge=message,
                        state=states[0] if states else b"")


def _values(reply: Any, name: str) -> list[Any]:
    try:
        return list(reply[name]) if name in reply else []
    except (KeyError, TypeError, ValueError):
        return []


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
