"""Two real `ikev1d daemon` processes (real engine, dataplane "none") on 127.0.0.1 and
127.0.0.2: `ikev1d up` establishes, status agrees on both sides, SIGHUP reloads,
SIGTERM sends Deletes the other side acts on, and both exit 0 leaving no socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ikev1d.cli import main

CONFIG = """
[daemon]
listen = ["{local}"]
port = {port}
port_nat_t = {port_nat_t}
dataplane = "none"

[connections.peer]
local_addrs = ["{local}"]
remote_addrs = ["{remote}"]
proposals = ["aes256-sha256-modp2048"]

[connections.peer.local]
auth = "psk"
id = "{local}"

[connections.peer.remote]
auth = "psk"
id = "{remote}"

[connections.peer.children.net]
local_ts = ["{local_ts}"]
remote_ts = ["{remote_ts}"]
esp_proposals = ["aes128gcm16-modp2048"]

[secrets.peer]
secret = "a long random string for testing only"
ids = ["{remote}"]
"""


def _ports_free_on_both() -> tuple[int, int]:
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        pair = (port, port + 1)
        try:
            held = []
            for address in ("127.0.0.1", "127.0.0.2"):
                for p in pair:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    held.append(s)
                    s.bind((address, p))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return pair
    raise RuntimeError("no free UDP port pair")


class Daemon:
    def __init__(self, tmp: Path, name: str, local: str, remote: str, ports: tuple[int, int],
                 local_ts: str, remote_ts: str) -> None:
        self.config = tmp / f"{name}.toml"
        self.config.write_text(CONFIG.format(
            local=local, remote=remote, port=ports[0], port_nat_t=ports[1],
            local_ts=local_ts, remote_ts=remote_ts))
        self.socket = str(tmp / f"{name}.sock")
        self.log = tmp / f"{name}.log"
        self.stderr = tmp / f"{name}.stderr"
        with self.stderr.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ikev1d", "daemon", "-c", str(self.config),
                 "--socket", self.socket, "--log-file", str(self.log)],
                stdout=subprocess.DEVNULL, stderr=err,
            )
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


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    ports = _ports_free_on_both()
    b = Daemon(tmp_path, "b", "127.0.0.2", "127.0.0.1", ports, "10.2.0.0/24", "10.1.0.0/24")
    try:
        a = Daemon(tmp_path, "a", "127.0.0.1", "127.0.0.2", ports, "10.1.0.0/24", "10.2.0.0/24")
    except BaseException:
        b.stop()
        raise
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def _wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def test_up_status_reload_and_sigterm(
    pair: tuple[Daemon, Daemon], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = pair
    assert main(["up", "peer", "--timeout", "10", "--socket", a.socket]) == 0
    out = capsys.readouterr().out
    assert "ISAKMP SA established" in out and "IPsec SA established" in out

    sa_a = a.status(capsys)["ike_sas"][0]  # type: ignore[index]
    sa_b = b.status(capsys)["ike_sas"][0]  # type: ignore[index]
    assert (sa_a["state"], sa_b["state"]) == ("ESTABLISHED", "ESTABLISHED")
    assert sa_a["initiator"] and not sa_b["initiator"]
    child_a, child_b = sa_a["children"][0], sa_b["children"][0]
    assert (child_a["spi_in"], child_a["spi_out"]) == (child_b["spi_out"], child_b["spi_in"])
    assert child_a["state"] == "INSTALLED"

    b.proc.send_signal(signal.SIGHUP)
    _wait_for(lambda: "reloaded" in b.log.read_text())

    assert a.stop() == 0
    assert not os.path.exists(a.socket)
    # a's shutdown Delete reached b, which dropped its SAs.
    _wait_for(lambda: b.status(capsys) == {"ike_sas": []})
    assert "ISAKMP SA deleted" in b.log.read_text()
    assert b.stop() == 0
    assert not os.path.exists(b.socket)
    for daemon in (a, b):
        stderr = daemon.stderr.read_text()
        assert "Traceback" not in stderr and "ERROR" not in stderr, stderr
