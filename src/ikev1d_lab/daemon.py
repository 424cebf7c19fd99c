"""Run ikev1d daemons in test namespaces and drive them through the CLI.

Tests, the demo and the benchmarks talk to ikev1d only through its public
interfaces, the ones a user has: the TOML config, `ikev1d daemon`, `up`,
`down`, `status --json`, and the log lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ikev1d_lab.errors import LabError
from ikev1d_lab.netns import Namespace


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"



def _daemon_section(local_addr: str, dataplane: str, retransmit_timeout: str,
                    retransmit_tries: int) -> str:
    """The ``[daemon]`` table every lab configuration starts with."""
    return (f"[daemon]\nlisten = [{json.dumps(local_addr)}]\n"
            f"dataplane = {json.dumps(dataplane)}\n"
            f"retransmit_timeout = {json.dumps(retransmit_timeout)}\n"
            f"retransmit_tries = {retransmit_tries}\n")


def ikev1d_conf(
    name: str,
    local_addr: str,
    remote_addr: str,
    local_id: str,
    remote_id: str,
    psk: str,
    proposals: Sequence[str],
    esp_proposals: Sequence[str],
    local_ts: Sequence[str] | str,
    remote_ts: Sequence[str] | str,
    *,
    child: str = "net",
    encap: bool = False,
    mode: str = "tunnel",
    dataplane: str = "none",
    retransmit_timeout: str = "1s",
    retransmit_tries: int = 4,
    rekey_time: str = "4h",
    child_rekey_time: str = "1h",
    secret_ids: Sequence[str] | None = None,
    extra_daemon: str = "",
    extra_child: str = "",
) -> str:
    """TOML for one PSK connection with one child, mirroring testbed.strongswan.swanctl_conf."""
    lts = [local_ts] if isinstance(local_ts, str) else list(local_ts)
    rts = [remote_ts] if isinstance(remote_ts, str) else list(remote_ts)
    ids = list(secret_ids) if secret_ids is not None else [remote_id]
    return _daemon_section(local_addr, dataplane, retransmit_timeout, retransmit_tries) + f"""\
{extra_daemon}

[connections.{name}]
local_addrs = [{json.dumps(local_addr)}]
remote_addrs = [{json.dumps(remote_addr)}]
proposals = {_toml_list(proposals)}
encap = {"true" if encap else "false"}
rekey_time = {json.dumps(rekey_time)}

[connections.{name}.local]
auth = "psk"
id = {json.dumps(local_id)}

[connections.{name}.remote]
auth = "psk"
id = {json.dumps(remote_id)}

[connections.{name}.children.{child}]
local_ts = {_toml_list(lts)}
remote_ts = {_toml_list(rts)}
esp_proposals = {_toml_list(esp_proposals)}
mode = {json.dumps(mode)}
rekey_time = {json.dumps(child_rekey_time)}
{extra_child}

[secrets.{name}]
secret = {json.dumps(psk)}
ids = {_toml_list(ids)}
"""


def roadwarrior_client_toml(
    name: str,
    local_addr: str,
    remote_addr: str,
    local_id: str,
    remote_id: str,
    psk: str,
    proposals: Sequence[str],
    esp_proposals: Sequence[str],
    remote_ts: Sequence[str] | str,
    *,
    modecfg: str = "pull",
    xauth_id: str | None = None,
    xauth_password: str = "",
    child: str = "net",
    encap: bool = True,
    dataplane: str = "userspace",
    retransmit_timeout: str = "1s",
    retransmit_tries: int = 4,
) -> str:
    """TOML for an ikev1d road warrior: ``vips = ["0.0.0.0"]`` asks for a virtual IP, the
    child's ``local_ts`` is left out (the virtual IP), ``modecfg`` pull or push; with
    ``xauth_id`` a second round ``local_xauth`` and that user's password."""
    rts = [remote_ts] if isinstance(remote_ts, str) else list(remote_ts)
    xauth = ""
    if xauth_id is not None:
        xauth = (f"\n[connections.{name}.local_xauth]\nauth = \"xauth\"\n"
                 f"xauth_id = {json.dumps(xauth_id)}\n")
    secrets = ""
    if xauth_id is not None:
        secrets = (f"\n[secrets.{name}-xauth]\ntype = \"xauth\"\n"
                   f"ids = [{json.dumps(xauth_id)}]\nsecret = {json.dumps(xauth_password)}\n")
    return _daemon_section(local_addr, dataplane, retransmit_timeout, retransmit_tries) + f"""\

[connections.{name}]
local_addrs = [{json.dumps(local_addr)}]
remote_addrs = [{json.dumps(remote_addr)}]
proposals = {_toml_list(proposals)}
encap = {"true" if encap else "false"}
vips = ["0.0.0.0"]
modecfg = {json.dumps(modecfg)}

[connections.{name}.local]
auth = "psk"
id = {json.dumps(local_id)}

[connections.{name}.remote]
auth = "psk"
id = {json.dumps(remote_id)}
{xauth}
[connections.{name}.children.{child}]
remote_ts = {_toml_list(rts)}
esp_proposals = {_toml_list(esp_proposals)}

[secrets.{name}]
secret = {json.dumps(psk)}
ids = [{json.dumps(remote_id)}]
{secrets}"""


def roadwarrior_server_toml(
    name: str,
    local_addr: str,
    local_id: str,
    psk: str,
    proposals: Sequence[str],
    esp_proposals: Sequence[str],
    local_ts: Sequence[str] | str,
    *,
    addrs: str = "10.3.0.0/24",
    dns: Sequence[str] = (),
    split_include: Sequence[str] = (),
    modecfg: str = "pull",
    xauth_users: Mapping[str, str] | None = None,
    radius: tuple[str, str] | None = None,
    child: str = "net",
    encap: bool = False,
    dataplane: str = "userspace",
    retransmit_timeout: str = "1s",
    retransmit_tries: int = 4,
) -> str:
    """TOML for an ikev1d Mode Config (and XAUTH) server: any peer with the group
    ``psk``, addresses from pool ``{name}`` (``addrs``, ``dns``, ``split_include``),
    the child's ``remote_ts`` left out (the client's virtual IP); with ``xauth_users``
    (name -> password) a ``remote_xauth`` round and their passwords; with ``radius``
    ("ADDRESS:PORT", shared secret) a ``remote_xauth`` round checked by that server."""
    lts = [local_ts] if isinstance(local_ts, str) else list(local_ts)
    xauth = (f"\n[connections.{name}.remote_xauth]\nauth = \"xauth\"\n"
             if xauth_users or radius else "")
    users = "".join(
        f"\n[secrets.{name}-user{n}]\ntype = \"xauth\"\nids = [{json.dumps(user)}]\n"
        f"secret = {json.dumps(password)}\n"
        for n, (user, password) in enumerate((xauth_users or {}).items()))
    if radius is not None:
        users += (f"\n[secrets.{name}-radius]\ntype = \"radius\"\n"
                  f"secret = {json.dumps(radius[1])}\n\n"
                  f"[xauth]\nradius = {json.dumps(radius[0])}\nradius_timeout = \"1s\"\n")
    return _daemon_section(local_addr, dataplane, retransmit_timeout, retransmit_tries) + f"""\

[connections.{name}]
local_addrs = [{json.dumps(local_addr)}]
remote_addrs = ["%any"]
proposals = {_toml_list(proposals)}
encap = {"true" if encap else "false"}
pools = [{json.dumps(name)}]
modecfg = {json.dumps(modecfg)}

[connections.{name}.local]
auth = "psk"
id = {json.dumps(local_id)}

[connections.{name}.remote]
auth = "psk"
id = "%any"
{xauth}
[connections.{name}.children.{child}]
local_ts = {_toml_list(lts)}
esp_proposals = {_toml_list(esp_proposals)}

[pools.{name}]
addrs = {json.dumps(addrs)}
dns = {_toml_list(dns)}
split_include = {_toml_list(split_include)}

[secrets.{name}]
secret = {json.dumps(psk)}
ids = ["%any"]
{users}"""


class LabDaemonError(LabError):
    """ikev1d in a namespace did not start, or its CLI failed."""


class Ikev1dDaemon:
    """One `ikev1d daemon` inside ``ns``, with its config, socket and log in ``work_dir``."""

    def __init__(self, ns: Namespace, work_dir: Path, config_text: str,
                 log_level: str = "debug") -> None:
        self.ns = ns
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = work_dir / "ikev1d.toml"
        self.config_path.write_text(config_text)
        self.config_path.chmod(0o600)  # it holds the pre-shared key
        self.socket_path = work_dir / "ikev1d.sock"
        self.log_path = work_dir / "ikev1d.log"
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def _cli(self) -> list[str]:
        return [sys.executable, "-m", "ikev1d"]

    def start(self, timeout: float = 30.0) -> None:
        # Generous: on a loaded machine interpreter start-up and imports alone took
        # 9-15 s.
        cmd = [*self._cli(), "daemon", "-c", str(self.config_path), "--socket",
               str(self.socket_path), "--log-file", str(self.log_path),
               "--log-level", self.log_level]
        self.stderr_path = self.work_dir / "stderr.txt"
        # A session of its own, as systemd gives a service and the lab gives charon: with
        # the scheduler's autogroups, the processes of one session share one slice of the
        # CPU, so a daemon in the session of the program that drives it (a benchmark's
        # load generator, iperf3) would compete with them for that slice alone.
        with open(self.stderr_path, "wb") as err:
            self.process = self.ns.popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabDaemonError(f"ikev1d exited with {self.process.returncode}: "
                                     f"{self.stderr_path.read_text()}")
            if self.socket_path.exists():
                result = self.cli("status", "--json", check=False)
                if result.returncode == 0:
                    return
            time.sleep(0.1)
        raise LabDaemonError(f"ikev1d did not start: {self.stderr_path.read_text()}")

    def cli(self, *args: str, check: bool = True,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = [*self._cli(), *args, "--socket", str(self.socket_path)] if args[0] != \
            "check-config" else [*self._cli(), *args]
        result = self.ns.run(cmd, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise LabDaemonError(f"ikev1d {' '.join(args)} failed ({result.returncode}): "
                                 f"{result.stdout}{result.stderr}")
        return result

    def up(self, name: str, child: str | None = None, timeout: float = 20.0,
           check: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["up", name, "--timeout", str(timeout)]
        if child:
            args += ["--child", child]
        return self.cli(*args, check=check, timeout=timeout + 10)

    def down(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.cli("down", name)

    def status(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return document

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> Ikev1dDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
