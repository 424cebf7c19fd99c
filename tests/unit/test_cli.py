"""The `ikev1d` command line: parsing, error messages, the status table, and the
control commands against a daemon that drives a fake engine."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import types
from dataclasses import replace
from pathlib import Path

import pytest

from ikev1d import cli
from ikev1d.cli import build_parser, format_status, main
from ikev1d.daemon.control import Response
from ikev1d.status import PoolStatus, StatusDocument, TrapStatus
from tests.unit.daemon._fakes import running_daemon

SPEC_STATUS = {"ike_sas": [{
    "name": "site-b", "state": "ESTABLISHED",
    "local": "192.0.2.1:500", "remote": "192.0.2.2:500",
    "local_id": "192.0.2.1", "remote_id": "192.0.2.2",
    "initiator": True, "cookies": "a1b2:c3d4",
    "proposal": "aes256-sha256-modp2048", "auth": "psk",
    "nat_local": False, "nat_remote": True,
    "established_s": 12, "rekey_in_s": 14300, "virtual_ip": None,
    "children": [{
        "name": "net", "state": "INSTALLED", "mode": "tunnel",
        "encap": True, "spi_in": "c1234567", "spi_out": "c7654321",
        "proposal": "aes128gcm16-modp2048",
        "local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24", "10.3.0.0/24"],
        "bytes_in": 1500, "bytes_out": 84, "packets_in": 3, "packets_out": 1,
        "rekey_in_s": 3300, "expires_in_s": 3600}]}]}

VALID_CONFIG = """
[daemon]
listen = ["127.0.0.1"]
dataplane = "none"

[connections.site-b]
local_addrs = ["127.0.0.1"]
remote_addrs = ["127.0.0.2"]
proposals = ["aes256-sha256-modp2048"]

[connections.site-b.local]
auth = "psk"
id = "127.0.0.1"

[connections.site-b.remote]
auth = "psk"
id = "127.0.0.2"

[connections.site-b.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
esp_proposals = ["aes128gcm16-modp2048"]

[secrets.site-b]
secret = "a long random string for testing"
ids = ["127.0.0.2"]
"""


# --- parsing -------------------------------------------------------------------------


def test_parser_accepts_the_spec_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(["daemon", "-c", "f.toml", "--socket", "/s", "--log-file", "/l",
                              "--log-level", "DEBUG"])
    assert (args.config, args.socket, args.log_file, args.log_level) == (
        "f.toml", "/s", "/l", "debug")
    args = parser.parse_args(["up", "site-b", "--child", "net", "--timeout", "7.5"])
    assert (args.name, args.child, args.timeout, args.socket) == ("site-b", "net", 7.5, None)
    assert parser.parse_args(["up", "x"]).timeout == 90.0
    assert parser.parse_args(["down", "x"]).name == "x"
    assert parser.parse_args(["status", "--json"]).json is True
    assert parser.parse_args(["status"]).json is False
    assert parser.parse_args(["reload"]).command == "reload"
    assert parser.parse_args(["check-config", "f.toml"]).file == "f.toml"
    assert parser.parse_args(["demo"]).command == "demo"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["daemon"], "-c/--config"),
        (["up"], "NAME"),
        (["up", "x", "--timeout", "0"], "positive number of seconds"),
        (["up", "x", "--timeout", "soon"], "not a number of seconds"),
        (["daemon", "-c", "f", "--log-level", "loud"], "use one of"),
        (["fly"], "invalid choice"),
        (["status", "--yaml"], "unrecognized arguments: --yaml"),
        ([], "COMMAND"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# --- errors for people ---------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["status"], ["status", "--json"], ["up", "x"], ["down", "x"], ["reload"]]
)
def test_no_daemon_is_a_clear_one_line_error(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ikev1d.sock")
        monkeypatch.setenv("IKEV1D_SOCKET", path)
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"ikev1d: cannot reach the daemon at {path}: is `ikev1d daemon` running?\n"


def test_default_socket_path_in_the_message(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IKEV1D_SOCKET", raising=False)
    if os.path.exists("/run/ikev1d/ikev1d.sock"):
        pytest.skip("a real daemon is running here")
    assert main(["status"]) == 1
    assert "cannot reach the daemon at /run/ikev1d/ikev1d.sock" in capsys.readouterr().err


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(VALID_CONFIG)
    assert main(["check-config", str(good)]) == 0
    assert f"{good}: OK (1 connection" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text(VALID_CONFIG.replace('dataplane = "none"', "dataplane = 5"))
    assert main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}: daemon.dataplane: ")
    assert "Traceback" not in err

    assert main(["check-config", str(tmp_path / "missing.toml")]) == 1
    assert "missing.toml: cannot read" in capsys.readouterr().err


def test_check_config_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `%any` peers sharing one PSK are accepted, but check-config warns about them.
    text = VALID_CONFIG.replace('remote_addrs = ["127.0.0.2"]', 'remote_addrs = ["%any"]')
    text = text.replace('id = "127.0.0.2"', 'id = "%any"').replace(
        'ids = ["127.0.0.2"]', 'ids = ["%any"]')
    path = tmp_path / "any.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "OK" in captured.out
    assert "warning: " in captured.err


def test_demo_dispatches_to_run_demo(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = types.ModuleType("ikev1d_lab.demo")
    calls: list[list[str]] = []

    def run_demo(argv: list[str]) -> int:
        calls.append(argv)
        return 3

    module.run_demo = run_demo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ikev1d_lab.demo", module)
    assert main(["demo"]) == 3
    # the demo's own options (and -h) are passed through
    assert main(["demo", "--color", "never", "-h"]) == 3
    assert calls == [[], ["--color", "never", "-h"]]


def test_demo_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ikev1d_lab.demo", None)  # makes the import fail
    assert main(["demo"]) == 1
    assert "demo is not available" in capsys.readouterr().err


def test_daemon_with_a_bad_config_exits_1_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nport = 0\n")
    sock = tmp_path / "run" / "ikev1d.sock"
    result = subprocess.run(
        [sys.executable, "-m", "ikev1d", "daemon", "-c", str(bad), "--socket", str(sock)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert f"cannot start: {bad}: daemon.port" in result.stderr
    assert "Traceback" not in result.stderr
    assert not sock.exists()


def test_daemon_unusable_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["daemon", "-c", "x.toml", "--log-file", str(tmp_path / "no" / "dir.log")]) == 1
    assert "cannot open log file" in capsys.readouterr().err


# --- the status table ----------------------------------------------------------------


def test_status_table_shows_what_people_look_for() -> None:
    text = format_status(StatusDocument.from_json(SPEC_STATUS))
    lines = text.splitlines()
    assert lines[0] == "site-b: ESTABLISHED, IKEv1, initiator, cookies a1b2:c3d4, ike-id 0"
    assert "  local  '192.0.2.1' @ 192.0.2.1:500" in lines
    assert "  remote '192.0.2.2' @ 192.0.2.2:500, behind NAT" in lines
    assert "  aes256-sha256-modp2048, auth psk" in lines
    assert "  established 12s ago, rekeying in 3h58m" in lines
    assert "  net: INSTALLED, TUNNEL, UDP-encapsulated, aes128gcm16-modp2048" in lines
    assert any(line.split() == ["in", "c1234567,", "1500", "bytes,", "3", "packets"]
               for line in lines)
    assert any(line.split() == ["out", "c7654321,", "84", "bytes,", "1", "packets"]
               for line in lines)
    assert "    remote 10.2.0.0/24, 10.3.0.0/24" in lines
    assert "    rekeying in 55m00s, expires in 1h00m" in lines
    assert format_status(StatusDocument()) == "no SAs\n"


def test_status_of_a_connecting_sa_shows_dashes_for_what_is_not_known_yet() -> None:
    (ike,) = StatusDocument.from_json(SPEC_STATUS).ike_sas
    connecting = replace(ike, state="CONNECTING", remote_id=None, proposal=None,
                         cookies=(ike.cookies[0], bytes(8)), established_s=None,
                         rekey_in_s=None, children=())
    assert format_status(StatusDocument((connecting,))).splitlines() == [
        "site-b: CONNECTING, IKEv1, initiator, cookies a1b2:0000000000000000, ike-id 0",
        "  local  '192.0.2.1' @ 192.0.2.1:500",
        "  remote '-' @ 192.0.2.2:500, behind NAT",
        "  -, auth psk",
    ]


@pytest.mark.parametrize(("status", "reason"), [
    ({"ike_sas": [{"name": "x", "children": [{}]}]}, "ike_sas[0]: missing member 'state'"),
    ({"ike_sas": "none"}, "status.ike_sas: expected an array, got 'none'"),
    (None, "status: expected an object, got null"),
])
def test_a_malformed_status_answer_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    status: object, reason: str,
) -> None:
    body = {"ok": True, "message": "", "status": status}
    if status is None:
        del body["status"]
    monkeypatch.setattr(cli, "_request", lambda *args: Response(True, True, "", body))
    assert main(["status", "--json"]) == 1
    assert capsys.readouterr() == ("", f"ikev1d: malformed status document: {reason}\n")


# --- against a daemon ----------------------------------------------------------------


def test_control_commands_against_a_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    async def cli(*argv: str) -> int:
        return await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(main, list(argv)))

    async def body() -> None:
        async with running_daemon() as h:
            sock = ("--socket", h.socket_path)
            assert await cli("up", "site-ok", "--timeout", "5", *sock) == 0
            out = capsys.readouterr().out
            assert "ISAKMP SA established" in out
            assert out.endswith("site-ok: established net, net2\n")

            assert await cli("status", "--json", *sock) == 0
            out = capsys.readouterr().out
            # exactly the daemon's document, read into the typed form and written back
            assert out == json.dumps(h.daemon.status().to_json(), indent=2) + "\n"
            document = json.loads(out)
            assert [c["name"] for c in document["ike_sas"][0]["children"]] == ["net", "net2"]

            assert await cli("status", *sock) == 0
            assert "site-ok: ESTABLISHED" in capsys.readouterr().out

            assert await cli("up", "site-fail", *sock) == 1
            assert capsys.readouterr().err == (
                "ikev1d: site-fail: NO-PROPOSAL-CHOSEN from peer\n")

            assert await cli("up", "site-hang", "--timeout", "0.1", *sock) == 1
            assert "timed out" in capsys.readouterr().err

            assert await cli("down", "site-ok", *sock) == 0
            assert "deleted 1 ISAKMP SA(s)" in capsys.readouterr().out

            assert await cli("down", "nope", *sock) == 1
            assert "no connection named 'nope'" in capsys.readouterr().err

            assert await cli("reload", *sock) == 0
            assert "reloaded" in capsys.readouterr().out

    asyncio.run(body())


def test_status_text_lists_traps() -> None:
    trap = TrapStatus("gw", "net", "dpd_action", "tunnel",
                      (ipaddress.ip_network("10.1.0.0/24"),),
                      (ipaddress.ip_network("10.2.0.0/24"),))
    assert format_status(StatusDocument((), traps=(trap,))).splitlines() == [
        "no SAs",
        "traps: 1",
        "  gw/net: TRAPPED (dpd_action), TUNNEL, 10.1.0.0/24 === 10.2.0.0/24",
    ]


def test_status_table_shows_virtual_ips_and_pools() -> None:
    (ike,) = StatusDocument.from_json(SPEC_STATUS).ike_sas
    with_vip = replace(ike, virtual_ip="10.3.0.7", dns=("10.2.0.53",),
                       split_include=(ipaddress.ip_network("10.2.0.0/16"),))
    pool = PoolStatus(name="clients", addrs="10.3.0.0/24", size=254, online=1, offline=2)
    lines = format_status(StatusDocument((with_vip,), (pool,))).splitlines()
    assert "  virtual IP 10.3.0.7, DNS 10.2.0.53, split 10.2.0.0/16" in lines
    assert lines[-1] == "pool clients: 10.3.0.0/24, 254 addresses, 1 online, 2 offline"
    assert format_status(StatusDocument((), (pool,))).splitlines()[0] == "no SAs"
    dual = replace(with_vip, virtual_ips=("10.3.0.7", "fd00:3::7"))
    assert "  virtual IPs 10.3.0.7, fd00:3::7, DNS 10.2.0.53, split 10.2.0.0/16" in (
        format_status(StatusDocument((dual,), (pool,))).splitlines())
    # The JSON document carries them both, and back.
    document = StatusDocument((dual,), (pool,))
    assert document.to_json()["ike_sas"][0]["virtual_ips"] == ["10.3.0.7", "fd00:3::7"]
    assert StatusDocument.from_json(document.to_json()) == document


def test_a_command_does_not_load_what_only_status_or_the_daemon_needs() -> None:
    # Every `ikev1d up/down/reload` starts a fresh interpreter: the status document's
    # module and logging are loaded by `status` and `daemon` when they run, not by
    # the command line itself (together about half of a command's start-up).
    probe = ("import sys, ikev1d.cli; "
             "print(sorted(m for m in ('logging', 'ikev1d.status') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
