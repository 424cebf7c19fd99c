"""Running under systemd: readiness notifications, journal priorities, log reopening,
and the unit file.

The daemon runs as a real ``ikev1d daemon`` process (data plane "none", loopback
high ports), with ``NOTIFY_SOCKET`` naming a Unix datagram socket of the test, as
systemd would pass it under ``Type=notify``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ikev1d.daemon.systemd import Notifier
from ikev1d.logsetup import stderr_is_journal, syslog_priority
from tests.unit.daemon._fakes import free_udp_ports

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "contrib" / "ikev1d.service"

CONFIG = """\
[daemon]
listen = ["127.0.0.1"]
port = {port}
port_nat_t = {port_nat_t}
dataplane = "none"

[connections.site]
remote_addrs = ["127.0.0.2"]
[connections.site.children.net]
"""


class NotifySocket:
    """What systemd listens on: a Unix datagram socket; ``@name`` for an abstract one."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.name = path

    def receive(self, timeout: float = 10.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def nothing_more(self, wait: float = 0.3) -> bool:
        self.sock.settimeout(wait)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def ikev1d(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ikev1d", *args], capture_output=True,
                          text=True, timeout=60, env=env)


class Daemon:
    def __init__(self, tmp: Path, *extra_env: tuple[str, str]) -> None:
        port, port_nat_t = free_udp_ports(2)
        self.port = port
        self.config = tmp / "ikev1d.toml"
        self.config.write_text(CONFIG.format(port=port, port_nat_t=port_nat_t))
        self.socket = str(tmp / "ikev1d.sock")
        self.log = tmp / "ikev1d.log"
        self.stderr = tmp / "stderr.txt"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(extra_env)}
        with open(self.stderr, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ikev1d", "daemon", "-c", str(self.config),
                 "--socket", self.socket, "--log-file", str(self.log)],
                stdout=subprocess.DEVNULL, stderr=err, env=env)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ikev1d(*args, "--socket", self.socket)

    def wait_started(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(self.stderr.read_text())
            if os.path.exists(self.socket) and self.cli("status").returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("daemon did not start")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(20)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify"))
    yield sock
    sock.close()


def test_ready_reloading_stopping_in_order(tmp_path: Path, notify_socket: NotifySocket) -> None:
    daemon = Daemon(tmp_path, ("NOTIFY_SOCKET", notify_socket.name))
    try:
        ready = notify_socket.receive(20)
        assert ready.split("\n")[0] == "READY=1", ready
        # READY=1 came after the sockets were bound: the control socket answers and the
        # IKE port is taken.
        assert daemon.cli("status").returncode == 0
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError):
            probe.bind(("127.0.0.1", daemon.port))
        probe.close()
        assert notify_socket.nothing_more()

        result = daemon.cli("reload")
        assert result.returncode == 0, result.stderr
        assert notify_socket.receive() == "RELOADING=1"
        assert notify_socket.receive().split("\n")[0] == "READY=1"

        # A broken file: `ikev1d reload` waits for the answer and fails, saying why;
        # the daemon keeps its configuration and tells systemd it is ready again.
        good = daemon.config.read_text()
        daemon.config.write_text(good + "[connections.site.children.net]\nmode = 'nope'\n")
        result = daemon.cli("reload")
        assert result.returncode != 0
        assert "reload failed" in result.stderr and str(daemon.config) in result.stderr
        assert notify_socket.receive() == "RELOADING=1"
        assert notify_socket.receive().split("\n")[0] == "READY=1"
        assert daemon.cli("status").returncode == 0
        assert notify_socket.nothing_more()

        assert daemon.stop() == 0
        assert notify_socket.receive() == "STOPPING=1"
        assert notify_socket.nothing_more()
    finally:
        daemon.stop()


def test_abstract_notify_socket_and_no_socket(tmp_path: Path) -> None:
    name = f"@ikev1d-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifySocket(name)
    try:
        env = {"NOTIFY_SOCKET": name, "OTHER": "x"}
        notifier = Notifier(env)
        assert env == {"OTHER": "x"}, "the variable is not passed on to children"
        assert notifier.ready("running")
        assert listener.receive() == "READY=1\nSTATUS=running"
        assert notifier.stopping() and listener.receive() == "STOPPING=1"
    finally:
        listener.close()
    # Nobody listens any more: a warning, not an exception.
    assert not notifier.reloading()
    # Outside systemd nothing is sent and nothing fails.
    assert not Notifier({}).ready() and not Notifier({}).enabled
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1"}).enabled


def test_sigusr1_reopens_the_log_file(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path)
    try:
        daemon.wait_started()
        rotated = tmp_path / "ikev1d.log.1"
        daemon.log.rename(rotated)  # what logrotate does before it signals
        daemon.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not (daemon.log.exists() and "SIGUSR1: reopened" in daemon.log.read_text()):
            assert time.monotonic() < deadline, daemon.stderr.read_text()
            time.sleep(0.1)
        assert daemon.cli("down", "site").returncode == 0
        assert daemon.stop() == 0
        new, old = daemon.log.read_text(), rotated.read_text()
        assert "ikev1d started" in old and "ikev1d started" not in new
        assert "ikev1d stopped" in new and "ikev1d stopped" not in old
        assert str(daemon.log) in new  # the line names the file reopened
    finally:
        daemon.stop()


EMIT = """
import logging
from ikev1d import logsetup
logsetup.setup_logging("debug")
log = logging.getLogger("ikev1d.test")
log.debug("d"); log.info("i"); log.warning("w"); log.error("e"); log.critical("c")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("x")
"""


def _emit(tmp_path: Path, journal_of: Path | None) -> list[str]:
    out = tmp_path / "stderr.txt"
    with open(out, "wb") as err:
        st = os.fstat(err.fileno()) if journal_of is None else os.stat(journal_of)
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        subprocess.run([sys.executable, "-c", EMIT], stderr=err, env=env, check=True,
                       timeout=30)
    return out.read_text().splitlines()


def test_journal_stream_gets_syslog_priorities(tmp_path: Path) -> None:
    lines = _emit(tmp_path, None)
    assert [line[:3] for line in lines[:5]] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert lines[1].endswith(" INFO i")
    # Every line of a traceback keeps the record's priority.
    traceback = lines[5:]
    assert len(traceback) > 3 and all(line.startswith("<3>") for line in traceback)
    assert traceback[-1] == "<3>ZeroDivisionError: division by zero"


def test_no_priorities_when_stderr_is_not_the_journal_stream(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    lines = _emit(tmp_path, other)
    assert lines and not any(line.startswith("<") for line in lines)
    assert not stderr_is_journal({}, sys.__stderr__)
    assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, sys.__stderr__)


def test_syslog_priorities() -> None:
    assert [syslog_priority(n) for n in (5, 10, 20, 25, 30, 40, 50, 60)] == \
        [7, 7, 6, 6, 4, 3, 2, 2]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that the commands exist: point them at this checkout's ikev1d.
    ikev1d_bin = Path(sys.executable).with_name("ikev1d")
    text = UNIT.read_text()
    assert text.count("/usr/local/bin/ikev1d ") == 3
    unit = tmp_path / "ikev1d.service"
    unit.write_text(text.replace("/usr/local/bin/ikev1d", str(ikev1d_bin)))

    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                              capture_output=True, text=True, timeout=60)

    result = verify(unit)
    # verify also loads the units of installed packages (freeradius.service warns about
    # MemoryLimit=): only what it says about ours counts.
    remarks = [line for line in result.stderr.splitlines()
               if not line.startswith(("/lib/systemd/", "/usr/lib/systemd/", "/etc/systemd/"))]
    assert result.returncode == 0 and remarks == [] and result.stdout == "", result
    # And it would say so: a misspelt setting is reported.
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHome=yess"))
    assert "broken.service:" in verify(broken).stderr

    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and
        not line.startswith("#")
    )
    assert settings["Type"] == "notify"
    assert settings["ExecReload"].split()[1] == "reload"
    assert set(settings["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
    assert set(settings["RestrictAddressFamilies"].split()) == {
        "AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert settings["DeviceAllow"] == "/dev/net/tun rw"
    assert "PrivateDevices" not in settings
    assert settings["RuntimeDirectory"] == "ikev1d"
