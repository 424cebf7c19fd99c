"""Two real `ikev1d daemon` processes (dataplane "none") as road-warrior client
and server: `ikev1d up` succeeds with the right XAUTH password, with the
client's virtual IP in both sides' status, and reports a refused password as
an XAUTH failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ikev1d.cli import main
from tests.unit.daemon.test_two_daemons import _ports_free_on_both

COMMON = """
[daemon]
listen = ["{local}"]
port = {port}
port_nat_t = {port_nat_t}
dataplane = "none"
retransmit_timeout = "1s"
"""

SERVER = COMMON + """
[connections.rw]
local_addrs = ["127.0.0.2"]
remote_addrs = ["%any"]
proposals = ["aes256-sha256-modp2048"]
pools = ["clients"]
[connections.rw.local]
id = "gw.example.org"
[connections.rw.remote]
id = "%any"
[connections.rw.remote_xauth]
auth = "xauth"
[connections.rw.children.net]
local_ts = ["10.2.0.0/16"]
[pools.clients]
addrs = "10.3.0.0/24"
dns = ["10.2.0.53"]
[secrets.group]
secret = "a long random group key for testing"
ids = ["%any"]
[secrets.alice]
type = "xauth"
ids = ["alice"]
secret = "alice's password"
"""

CLIENT = COMMON + """
[connections.home]
local_addrs = ["127.0.0.1"]
remote_addrs = ["127.0.0.2"]
proposals = ["aes256-sha256-modp2048"]
vips = ["0.0.0.0"]
[connections.home.local]
id = "laptop.example.org"
[connections.home.remote]
id = "gw.example.org"
[connections.home.local_xauth]
auth = "xauth"
xauth_id = "alice"
[connections.home.children.net]
remote_ts = ["10.2.0.0/16"]
[secrets.group]
secret = "a long random group key for testing"
ids = ["127.0.0.2"]
[secrets.alice]
type = "xauth"
ids = ["alice"]
secret = "{password}"
"""


class Daemon:
    def __init__(self, tmp: Path, name: str, text: str) -> None:
        config = tmp / f"{name}.toml"
        config.write_text(text)
        self.socket = str(tmp / f"{name}.sock")
        self.log = tmp / f"{name}.log"
        self.stderr = tmp / f"{name}.stderr"
        with self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ikev1d", "daemon", "-c", str(config),
                 "--socket", self.socket, "--log-file", str(self.log)],
                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"daemon {name} did not start: {self.stderr.read_text()}")
            time.sleep(0.02)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def status(self, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
        capsys.readouterr()
        assert main(["status", "--json", "--socket", self.socket]) == 0
        result: dict[str, object] = json.loads(capsys.readouterr().out)
        return result


def _start(tmp: Path, password: str) -> tuple[Daemon, Daemon]:
    port, port_nat_t = _ports_free_on_both()
    server = Daemon(tmp, "server", SERVER.format(local="127.0.0.2", port=port,
                                                 port_nat_t=port_nat_t))
    try:
        client = Daemon(tmp, "client", CLIENT.format(local="127.0.0.1", port=port,
                                                     port_nat_t=port_nat_t,
                                                     password=password))
    except BaseException:
        server.stop()
        raise
    return client, server


@pytest.fixture
def started(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Daemon, Daemon]]:
    client, server = _start(tmp_path, request.param)
    try:
        yield client, server
    finally:
        client.stop()
        server.stop()


@pytest.mark.parametrize("started", ["alice's password"], indirect=True)
def test_up_with_xauth_and_mode_config(started: tuple[Daemon, Daemon],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    client, server = started
    assert main(["up", "home", "--timeout", "10", "--socket", client.socket]) == 0
    ours = client.status(capsys)["ike_sas"][0]  # type: ignore[index]
    theirs = server.status(capsys)["ike_sas"][0]  # type: ignore[index]
    assert ours["virtual_ip"] == theirs["virtual_ip"] == "10.3.0.1"
    assert ours["dns"] == ["10.2.0.53"]
    assert ours["children"][0]["local_ts"] == ["10.3.0.1/32"]
    assert theirs["children"][0]["remote_ts"] == ["10.3.0.1/32"]
    assert "XAUTH authentication of 'alice' successful" in server.log.read_text()
    assert server.status(capsys)["pools"] == [
        {"name": "clients", "addrs": "10.3.0.0/24", "size": 254, "online": 1, "offline": 0}]


@pytest.mark.parametrize("started", ["a wrong password"], indirect=True)
def test_up_reports_an_xauth_failure(started: tuple[Daemon, Daemon],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    client, server = started
    capsys.readouterr()
    assert main(["up", "home", "--timeout", "10", "--socket", client.socket]) != 0
    captured = capsys.readouterr()
    assert "XAUTH authentication failed for user 'alice'" in captured.out + captured.err
    assert "XAUTH authentication failed for user 'alice'" in server.log.read_text()
    assert "a wrong password" not in server.log.read_text() + client.log.read_text()
    assert client.status(capsys)["ike_sas"] == []
    assert server.status(capsys)["ike_sas"] == []
