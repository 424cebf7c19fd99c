"""Pure parts of `ikev1d demo`: output, log cursor, wire classification, refusal without root."""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import pytest

from ikev1d_lab import demo
from ikev1d_lab.demo import Console, LogCursor, run_demo
from ikev1d_lab.demo_exchange import DEMO_PCAP
from ikev1d_lab.demo_pcap import read_capture
from ikev1d_lab.strongswan import DEFAULT_LOAD


class _Tty(io.StringIO):
    def __init__(self, encoding: str = "utf-8") -> None:
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    def isatty(self) -> bool:
        return True


def test_console_colours_only_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    plain = io.StringIO()
    Console(plain).ok("done")
    assert plain.getvalue() == "   ok done\n"  # StringIO has no encoding: ASCII marks
    tty = _Tty()
    Console(tty).ok("done")
    assert tty.getvalue() == "   \x1b[32m✓ done\x1b[0m\n"
    monkeypatch.setenv("NO_COLOR", "1")
    quiet = _Tty()
    Console(quiet).ok("done")
    assert "\x1b[" not in quiet.getvalue()
    forced = io.StringIO()
    Console(forced, color=True).error("bad")
    assert forced.getvalue().startswith("\x1b[31m")


def test_console_survives_an_ascii_terminal() -> None:
    class Ascii(_Tty):
        def write(self, s: str) -> int:
            s.encode("ascii")  # raises like a real ASCII stream
            return super().write(s)

    out = Ascii("ascii")
    con = Console(out, color=False)
    con.write("1  192.0.2.1 → 192.0.2.2  ESP")
    assert out.getvalue() == "1  192.0.2.1 ? 192.0.2.2  ESP\n"
    assert con.check_mark == "ok"


def test_highlight_marks_event_words() -> None:
    con = Console(io.StringIO(), color=True)
    text = con.highlight("[x] ISAKMP SA established: a...b")
    assert "\x1b[32mISAKMP SA established\x1b[0m" in text
    assert con.highlight("IPsec SA deleted").startswith("\x1b[33m")


def test_log_cursor_shows_only_new_first_matches() -> None:
    log = ["2026-11-27T07:13:15Z INFO [a] ISAKMP SA established: old\n"]
    cursor = LogCursor(lambda: "".join(log))
    cursor.mark()
    assert cursor.first_lines_with(["ISAKMP SA established"]) == []
    log.append("2026-11-27T07:13:16Z INFO [a] ISAKMP SA established: new one\n")
    log.append("2026-11-27T07:13:16Z INFO [a] ISAKMP SA established same event again\n")
    log.append("2026-11-27T07:13:16Z WARNING [a] IPsec SA established: child\n")
    lines = cursor.first_lines_with(["ISAKMP SA established", "IPsec SA established"])
    assert lines == ["[a] ISAKMP SA established: new one", "[a] IPsec SA established: child"]
    assert cursor.wait_for(["never logged"], timeout=0.1) == []


def test_charon_line_and_error_line() -> None:
    line = "07:25:00 11[IKE] <site-a|1> IKE_SA site-a[1] established between 192.0.2.2"
    assert demo._charon_line(line) == "[IKE] IKE_SA site-a[1] established between 192.0.2.2"
    assert demo._charon_line("something else") == "something else"
    text = ("ikev1d did not start: ikev1d exited with 1: 2026-11-27T07:22:20Z ERROR "
            "cannot start: no TUN\nTraceback")
    assert demo._first_error_line(text) == "cannot start: no TUN"
    assert demo._first_error_line("plain failure\nmore") == "plain failure"


def _frame(proto: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                     bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
    return b"\x00" * 12 + b"\x08\x00" + ip + payload


def _udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def _pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    return out


def test_classify_tells_esp_ike_and_the_rest_apart() -> None:
    frames = [
        _frame(50, b"\x12\x34\x56\x78" + bytes(40)),  # raw ESP
        _frame(17, _udp(4500, 4500, b"\x12\x34\x56\x78" + bytes(40))),  # ESP in UDP
        _frame(17, _udp(4500, 4500, bytes(4) + bytes(28))),  # IKE behind the marker
        _frame(17, _udp(4500, 4500, b"\xff")),  # NAT-T keepalive: not counted
        _frame(17, _udp(500, 500, bytes(28))),  # IKE
        _frame(6, bytes(20)),  # TCP in clear: must be noticed
        b"\x00" * 12 + b"\x08\x06" + bytes(28),  # ARP: not IP, ignored
    ]
    assert demo._classify(_pcap(frames)) == (1, 1, 2, 1)


def test_classify_the_recorded_exchange() -> None:
    from importlib import resources

    data = (resources.files("ikev1d_lab") / "demo_data" / DEMO_PCAP).read_bytes()
    assert len(read_capture(data)) == 13
    assert demo._classify(data) == (0, 2, 11, 0)


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    out = io.StringIO()
    assert run_demo([], out=out) == 2
    assert "ikev1d demo needs root" in out.getvalue()
    assert "sudo make demo" in out.getvalue()


def test_options() -> None:
    args = demo._parse(["--no-strongswan", "--dataplane", "none", "--color", "never"])
    assert (args.no_strongswan, args.dataplane, args.color) == (True, "none", "never")
    assert demo._parse([]).dataplane == "auto"
    with pytest.raises(SystemExit):
        demo._parse(["--dataplane", "kernel-magic"])


def test_embedded_echo_scripts_compile() -> None:
    # They run as `python -c` in the namespaces; a syntax slip would only show as a
    # failed traffic step.
    compile(demo._ECHO_SERVER, "<echo server>", "exec")
    compile(demo._ECHO_CLIENT, "<echo client>", "exec")
    assert 'sys.stdout.write("ready\\n")' in demo._ECHO_SERVER


_ALL_STRONGSWAN = [
    "strongswan-charon", "strongswan-swanctl", "libstrongswan-extra-plugins",
    "libstrongswan-standard-plugins", "libcharon-extra-plugins",
]  # fmt: skip


def _fake_strongswan(root: Path, monkeypatch: pytest.MonkeyPatch, plugins: list[str]) -> Path:
    """charon, swanctl and the given plugins as empty files under root; PATH only there."""
    bin_dir, plugin_dir = root / "bin", root / "plugins"
    bin_dir.mkdir()
    plugin_dir.mkdir()
    for program in (bin_dir / "charon", bin_dir / "swanctl"):
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    for plugin in plugins:
        (plugin_dir / f"libstrongswan-{plugin}.so").touch()
    monkeypatch.setattr(demo, "CHARON", str(bin_dir / "charon"))
    monkeypatch.setattr(demo, "STRONGSWAN_PLUGIN_DIR", plugin_dir)
    monkeypatch.setenv("PATH", str(bin_dir))
    return root


def test_strongswan_missing_names_the_debian_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = DEFAULT_LOAD.split()
    _fake_strongswan(tmp_path, monkeypatch, plugins)
    assert demo.strongswan_missing() == []
    # The plugins of libstrongswan-standard-plugins (openssl) alone missing: what a
    # fresh Debian had after installing strongswan-charon without recommends.
    (tmp_path / "plugins" / "libstrongswan-openssl.so").unlink()
    assert demo.strongswan_missing() == ["libstrongswan-standard-plugins"]
    # No strongSwan at all: no charon, no swanctl on PATH, no plugins.
    (tmp_path / "bin" / "charon").unlink()
    (tmp_path / "bin" / "swanctl").unlink()
    for plugin in plugins:
        (tmp_path / "plugins" / f"libstrongswan-{plugin}.so").unlink(missing_ok=True)
    assert demo.strongswan_missing() == _ALL_STRONGSWAN


def test_without_strongswan_step_4_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_strongswan(tmp_path, monkeypatch, plugins=[])
    (tmp_path / "bin" / "charon").unlink()
    (tmp_path / "bin" / "swanctl").unlink()
    out = io.StringIO()
    with contextlib.ExitStack() as stack:
        d = demo.Demo(Console(out, color=False), tmp_path, stack, with_strongswan=True,
                      dataplane="none")
        d.step_strongswan()  # no namespaces exist: it must not get as far as needing them
    text = out.getvalue()
    assert "[4/7] Against strongSwan" in text
    assert "skipped: strongSwan is not installed here" in text
    assert f"apt-get install {' '.join(_ALL_STRONGSWAN)}" in text
    assert d.charon is None
    assert d.outcome.strongswan == "skipped (strongSwan not installed)"
    assert d.install_hint == f"apt-get install {' '.join(_ALL_STRONGSWAN)}"
