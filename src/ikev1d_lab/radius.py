"""A real FreeRADIUS server for XAUTH tests, with its own configuration in a work dir.

Debian's ``freeradius`` (3.2) is run in the foreground (``-X``: one process,
debug log) with a minimal configuration written here: one client (the given
address, with the shared secret), the ``files`` module reading a users file of
``Cleartext-Password`` entries, and PAP; users named in ``challenge_once`` get an
Access-Challenge (Reply-Message and State, RFC 2865 section 4.4) for a request
without State before their password is checked, those in ``challenge_always``
one for every request. It listens on one address and port,
in a namespace when one is given, else on this host's loopback with a port the
caller picked free.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from ikev1d_lab.errors import LabError
from ikev1d_lab.netns import Namespace

__all__ = ["CHALLENGE_MESSAGE", "CHALLENGE_STATE", "FREERADIUS", "FreeRadius",
           "FreeRadiusError", "free_udp_port", "freeradius_available"]

FREERADIUS = "freeradius"
_READY = "Ready to process requests"


class FreeRadiusError(LabError):
    """FreeRADIUS did not start."""


def freeradius_available() -> tuple[bool, str]:
    if shutil.which(FREERADIUS) is None:
        return False, "freeradius is not installed (Debian package freeradius)"
    return True, ""


def free_udp_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _quote(text: str) -> str:
    """A FreeRADIUS double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: The State of the lab's challenges.
CHALLENGE_STATE = b"ikev1d-lab-challenge"
CHALLENGE_MESSAGE = "Second factor: enter your password again"


def _challenge_policy(once: Sequence[str], always: Sequence[str]) -> str:
    """unlang that answers Access-Challenge (FreeRADIUS 3: the reply packet type set
    in control, then ``handled``)."""
    state = "0x" + CHALLENGE_STATE.hex()
    out = []
    for users, condition in ((once, "!&State"), (always, "true")):
        for user in users:
            out.append(f"""    if (&User-Name == {_quote(user)} && {condition}) {{
      update reply {{
        &Reply-Message := {_quote(CHALLENGE_MESSAGE)}
        &State := {state}
      }}
      update control {{
        &Response-Packet-Type := Access-Challenge
      }}
      handled
    }}
""")
    if out:
        out.append(f"""    if (&State && &State != {state}) {{
      reject
    }}
""")
    return "".join(out)


def radiusd_conf(directory: Path, listen: str, port: int, client: str, secret: str,
                 challenge_once: Sequence[str] = (),
                 challenge_always: Sequence[str] = ()) -> str:
    d = str(directory)
    policy = _challenge_policy(challenge_once, challenge_always)
    return f"""\
prefix = /usr
exec_prefix = /usr
sysconfdir = {d}
localstatedir = {d}
sbindir = /usr/sbin
logdir = {d}
raddbdir = {d}
radacctdir = {d}
name = freeradius
confdir = {d}
modconfdir = {d}
run_dir = {d}
db_dir = {d}
libdir = /usr/lib/freeradius
pidfile = {d}/radiusd.pid
max_request_time = 10
cleanup_delay = 1
max_requests = 1024
hostname_lookups = no
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = no
}}
client ikev1d {{
  ipaddr = {client}
  secret = {_quote(secret)}
  require_message_authenticator = yes
}}
modules {{
  files {{
    filename = {d}/users
  }}
  pap {{
  }}
  # The return codes the challenge policy ends with (rlm_always).
  always handled {{
    rcode = handled
  }}
  always reject {{
    rcode = reject
  }}
}}
server default {{
  listen {{
    type = auth
    ipaddr = {listen}
    port = {port}
  }}
  authorize {{
{policy}    files
    pap
  }}
  authenticate {{
    Auth-Type PAP {{
      pap
    }}
  }}
}}
"""


def users_file(users: Mapping[str, str]) -> str:
    return "".join(f"{_quote(name)} Cleartext-Password := {_quote(password)}\n"
                   for name, password in users.items())


class FreeRadius:
    """``with FreeRadius(workdir, users, secret) as server:`` ... ``server.port``."""

    def __init__(self, workdir: Path, users: Mapping[str, str], secret: str,
                 ns: Namespace | None = None, listen: str = "127.0.0.1",
                 port: int | None = None, client: str = "127.0.0.1",
                 challenge_once: Sequence[str] = (),
                 challenge_always: Sequence[str] = ()) -> None:
        self.dir = Path(workdir)
        self.ns = ns
        self.listen = listen
        self.port = port if port is not None else (1812 if ns is not None else free_udp_port())
        self.secret = secret
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "radiusd.conf").write_text(
            radiusd_conf(self.dir, listen, self.port, client, secret, challenge_once,
                         challenge_always), encoding="utf-8")
        (self.dir / "users").write_text(users_file(users), encoding="utf-8")
        (self.dir / "dictionary").write_text("", encoding="utf-8")
        self.log = self.dir / "radiusd.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.listen}:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        cmd = [FREERADIUS, "-X", "-d", str(self.dir)]
        out = self.log.open("wb")
        try:
            if self.ns is not None:
                self.proc = self.ns.popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            else:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if _READY in text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise FreeRadiusError(f"freeradius did not start:\n{tail}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> FreeRadius:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
