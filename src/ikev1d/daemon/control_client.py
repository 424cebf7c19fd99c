"""The blocking client side of the control protocol (``ikev1d up/down/status/reload``)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from ikev1d.daemon.control import (
    MAX_RESPONSE_LINE,
    ControlProtocolError,
    Request,
    Response,
    UpRequest,
    decode_response,
    encode_request,
)
from ikev1d.errors import Ikev1dError

REPLY_TIMEOUT_S = 30.0
"""How long to wait for the daemon's answer to a command other than ``up``."""


class DaemonUnreachable(Ikev1dError):
    """Nobody answers on the control socket; the message is for people."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        super().__init__(
            f"cannot reach the daemon at {path}: {reason}"
            if reason
            else f"cannot reach the daemon at {path}: is `ikev1d daemon` running?"
        )
        self.path = path


def send_request(
    path: str,
    request: Request,
    on_progress: Callable[[str], None] | None = None,
) -> Response:
    """Send one request and return the final response; progress lines go to ``on_progress``.

    Raises DaemonUnreachable when the daemon does not answer, ControlProtocolError
    for a garbled or missing answer.
    """
    timeout = REPLY_TIMEOUT_S
    if isinstance(request, UpRequest):
        timeout += request.timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnreachable(path) from None
        except PermissionError:
            raise DaemonUnreachable(path, "permission denied (run it as root?)") from None
        except OSError as exc:
            raise DaemonUnreachable(path, exc.strerror or str(exc)) from None
        sock.sendall(encode_request(request))
        stream = sock.makefile("rb")
        while True:
            try:
                line = stream.readline(MAX_RESPONSE_LINE + 1)
            except TimeoutError:
                raise ControlProtocolError(f"no answer from the daemon in {timeout:g}s") from None
            if not line:
                raise ControlProtocolError("the daemon closed the connection without an answer")
            response = decode_response(line)
            if response.final:
                return response
            if on_progress is not None:
                on_progress(response.message)
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise ControlProtocolError(f"connection to the daemon lost: {exc.strerror}") from None
    finally:
        sock.close()
