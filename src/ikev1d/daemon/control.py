"""The control protocol between ``ikev1d`` commands and the daemon (no I/O here).

Over a Unix stream socket, one connection per command:

* the client sends one request: a JSON object on one line (UTF-8, ``\\n``-terminated)::

      {"command": "up", "name": "site-b", "child": null, "timeout": 90}
      {"command": "down", "name": "site-b"}
      {"command": "down", "name": "rw", "peer": "alice@example.org"}
      {"command": "down", "name": "rw", "ike_id": 7}
      {"command": "status"}
      {"command": "reload"}
      {"command": "ping"}

* the daemon answers with JSON lines. Zero or more progress lines
  (``{"progress": "ISAKMP SA established ..."}``, only for ``up``) are followed
  by exactly one final line that has an ``ok`` member and a ``message``::

      {"ok": true, "message": "site-b: established net"}
      {"ok": false, "message": "site-b: NO-PROPOSAL-CHOSEN ..."}
      {"ok": true, "message": "", "status": {"ike_sas": [...]}}

  then it closes the connection.

The socket path is ``--socket``, else ``$IKEV1D_SOCKET``, else
``/run/ikev1d/ikev1d.sock``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from ikev1d.errors import Ikev1dError

if TYPE_CHECKING:
    from ikev1d.status import StatusDocument

DEFAULT_SOCKET_PATH = "/run/ikev1d/ikev1d.sock"
SOCKET_ENV = "IKEV1D_SOCKET"
MAX_REQUEST_LINE = 1 << 16
"""Longest request line the daemon reads."""
MAX_RESPONSE_LINE = 1 << 26
"""Longest response line a client reads (a status document with many thousand SAs)."""
DEFAULT_UP_TIMEOUT = 90.0
"""Seconds ``up`` waits: longer than the default retransmission schedule."""


class ControlProtocolError(Ikev1dError):
    """A malformed request or response line; the message is for people."""


@dataclass(frozen=True)
class UpRequest:
    name: str
    child: str | None = None
    timeout: float = DEFAULT_UP_TIMEOUT


@dataclass(frozen=True)
class DownRequest:
    """All SAs of connection ``name``, or only those with peer ``peer`` (its ID or
    address), or only ISAKMP SA ``ike_id`` (as status numbers them)."""

    name: str
    peer: str | None = None
    ike_id: int | None = None


@dataclass(frozen=True)
class StatusRequest:
    pass


@dataclass(frozen=True)
class ReloadRequest:
    pass


@dataclass(frozen=True)
class PingRequest:
    pass


Request: TypeAlias = UpRequest | DownRequest | StatusRequest | ReloadRequest | PingRequest


def resolve_socket_path(option: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--socket``, else ``$IKEV1D_SOCKET``, else the default path."""
    if option:
        return option
    env = os.environ if environ is None else environ
    return env.get(SOCKET_ENV) or DEFAULT_SOCKET_PATH


def encode_request(request: Request) -> bytes:
    body: dict[str, Any]
    match request:
        case UpRequest(name=name, child=child, timeout=timeout):
            body = {"command": "up", "name": name, "child": child, "timeout": timeout}
        case DownRequest(name=name, peer=peer, ike_id=ike_id):
            body = {"command": "down", "name": name}
            if peer is not None:
                body["peer"] = peer
            if ike_id is not None:
                body["ike_id"] = ike_id
        case StatusRequest():
            body = {"command": "status"}
        case ReloadRequest():
            body = {"command": "reload"}
        case PingRequest():
            body = {"command": "ping"}
    return _line(body)


MAX_DEPTH = 32
"""Deepest nesting of arrays and objects read: requests are flat, a status
document is 4 levels deep; 100,000 ``[`` would otherwise exhaust the stack."""


def _nesting(line: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text, strings skipped; linear,
    so it can run before the recursive parser sees the line."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _load_object(line: bytes, limit: int) -> dict[str, Any]:
    if len(line) > limit:
        raise ControlProtocolError("line too long")
    if _nesting(line) > MAX_DEPTH:
        raise ControlProtocolError(f"not a JSON line: nested deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlProtocolError(f"not a JSON line: {exc}") from None
    except RecursionError:
        raise ControlProtocolError("not a JSON line: nested too deeply") from None
    if not isinstance(body, dict):
        raise ControlProtocolError("not a JSON object")
    return body


def _name(body: Mapping[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise ControlProtocolError("'name' must be a non-empty string")
    return name


def decode_request(line: bytes) -> Request:
    """Parse one request line; raises ControlProtocolError."""
    body = _load_object(line, MAX_REQUEST_LINE)
    command = body.get("command")
    if command == "up":
        child = body.get("child")
        if child is not None and (not isinstance(child, str) or not child):
            raise ControlProtocolError("'child' must be a non-empty string or null")
        timeout = body.get("timeout", DEFAULT_UP_TIMEOUT)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ControlProtocolError("'timeout' must be a positive number of seconds")
        return UpRequest(_name(body), child, float(timeout))
    if command == "down":
        peer = body.get("peer")
        if peer is not None and (not isinstance(peer, str) or not peer):
            raise ControlProtocolError("'peer' must be a non-empty string or absent")
        ike_id = body.get("ike_id")
        if ike_id is not None and (isinstance(ike_id, bool) or not isinstance(ike_id, int)
                                   or ike_id < 0):
            raise ControlProtocolError("'ike_id' must be a non-negative integer or absent")
        if peer is not None and ike_id is not None:
            raise ControlProtocolError("'peer' and 'ike_id' exclude each other")
        return DownRequest(_name(body), peer, ike_id)
    if command == "status":
        return StatusRequest()
    if command == "reload":
        return ReloadRequest()
    if command == "ping":
        return PingRequest()
    raise ControlProtocolError(f"unknown command {command!r}")


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _line(body: Mapping[str, Any]) -> bytes:
    return _compact(body).encode("utf-8") + b"\n"


def encode_progress(message: str) -> bytes:
    return _line({"progress": message})


def encode_response(ok: bool, message: str = "", **extra: Any) -> bytes:
    return _line({"ok": ok, "message": message, **extra})


def encode_status_response(document: StatusDocument) -> bytes:
    """The answer to ``status``: the document in its JSON form under ``status``."""
    return encode_response(True, "", status=document.to_json())


def status_response_parts(document: StatusDocument, size: int) -> Iterator[bytes]:
    """:func:`encode_status_response` in pieces, ``size`` ISAKMP SAs each, which joined
    are the same line: with 10,000 SAs the whole is 6.6 MB of JSON and 0.13 s of work
    that the daemon does a piece at a time, serving in between."""
    yield _line({"ok": True, "message": ""})[:-2] + b',"status":{"ike_sas":['
    sas = document.ike_sas
    for start in range(0, len(sas), size):
        text = ",".join(_compact(sa.to_json()) for sa in sas[start:start + size])
        yield ("," if start else "").encode() + text.encode("utf-8")
    tail = "]"
    if document.pools:
        tail += ',"pools":' + _compact([p.to_json() for p in document.pools])
    if document.traps:
        tail += ',"traps":' + _compact([t.to_json() for t in document.traps])
    yield tail.encode("utf-8") + b"}}\n"


@dataclass(frozen=True)
class Response:
    """A decoded daemon line: ``final`` is False for progress lines."""

    final: bool
    ok: bool
    message: str
    body: dict[str, Any]


def decode_response(line: bytes) -> Response:
    body = _load_object(line, MAX_RESPONSE_LINE)
    if "ok" in body:
        ok = body["ok"]
        message = body.get("message", "")
        if not isinstance(ok, bool) or not isinstance(message, str):
            raise ControlProtocolError("bad final line: 'ok' must be a bool, 'message' a string")
        return Response(True, ok, message, body)
    progress = body.get("progress")
    if not isinstance(progress, str):
        raise ControlProtocolError("line has neither 'ok' nor 'progress'")
    return Response(False, True, progress, body)


def decode_status(response: Response) -> StatusDocument:
    """The document of a successful ``status`` answer; raises ControlProtocolError when
    it is missing or malformed."""
    # Here, not at the top: the status document's module is a fifth of what every
    # `ikev1d` command imports, and only `status` decodes one.
    from ikev1d.status import StatusDocument, StatusFormatError

    try:
        return StatusDocument.from_json(response.body.get("status"))
    except StatusFormatError as exc:
        raise ControlProtocolError(f"malformed status document: {exc}") from None
