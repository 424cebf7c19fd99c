"""updown scripts: strongSwan's environment, order, failures, timeouts, concurrency, and
the daemon running them for engine events. A real tunnel: tests/interop/
test_keylog_updown_strongswan.py."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from pathlib import Path

import pytest

from ikev1d.config import ConfigError, parse_config
from ikev1d.daemon.runtime import Daemon, DaemonOptions
from ikev1d.daemon.updown import IkeIdentities, UpdownRunner, interface_of, updown_environments
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, IkeSaEstablished
from tests.unit.daemon._fakes import (
    CONFIG,
    FakeEngine,
    RecordingBackend,
    collecting_factory,
    eventually,
    free_udp_ports,
)

# Appends its arguments and environment to the file named by its first argument,
# under a lock: scripts run concurrently, and their records must not interleave.
RECORDER = """#!/bin/sh
exec 9>>"$1"
flock 9
{ echo "--- $*"; env; } >&9
"""


def child_event(
    child_id: int = 5, local_ts: str = "10.1.0.0/24", remote_ts: str = "10.2.0.0/24",
    local: str = "192.0.2.1", remote: str = "192.0.2.2", encap: bool = False,
    remote_port: int = 500, conn: str = "gw", child: str = "net",
) -> ChildSaEstablished:
    return ChildSaEstablished(
        conn=conn, child=child, ike_id=3, child_id=child_id, spi_in=0xC1234567,
        spi_out=0x0000ABCD, proposal="aes128gcm16", encryption="aesgcm", key_length=128,
        icv_length=16, integrity=None, mode="tunnel", encap=encap,
        local=(local, 4500 if encap else 500), remote=(remote, remote_port),
        local_ts=(ipaddress.ip_network(local_ts),), remote_ts=(ipaddress.ip_network(remote_ts),),
        keymat_in=b"\x01" * 20, keymat_out=b"\x02" * 20,
    )


def deleted(event: ChildSaEstablished) -> ChildSaDeleted:
    return ChildSaDeleted(event.conn, event.child, event.ike_id, event.child_id, event.spi_in,
                          event.spi_out, "deleted")


def test_environment_is_strongswans() -> None:
    (env,) = updown_environments(child_event(), IkeIdentities("gw-a", "C=CH, CN=b"), "eth0",
                                 "/bin")
    assert env == {
        "PATH": "/bin",
        "PLUTO_VERSION": "1.1",
        "PLUTO_VERB": "up-client",
        "PLUTO_CONNECTION": "net",
        "PLUTO_INTERFACE": "eth0",
        "PLUTO_PROTO": "esp",
        "PLUTO_UNIQUEID": "3",
        "PLUTO_ME": "192.0.2.1",
        "PLUTO_MY_ID": "gw-a",
        "PLUTO_MY_CLIENT": "10.1.0.0/24",
        "PLUTO_MY_PORT": "0",
        "PLUTO_MY_PROTOCOL": "0",
        "PLUTO_PEER": "192.0.2.2",
        "PLUTO_PEER_ID": "C=CH, CN=b",
        "PLUTO_PEER_CLIENT": "10.2.0.0/24",
        "PLUTO_PEER_PORT": "0",
        "PLUTO_PEER_PROTOCOL": "0",
        "IKEV1D_CONNECTION": "gw",
    }


@pytest.mark.parametrize(("kwargs", "verb"), [
    ({"local_ts": "192.0.2.1/32"}, "up-host"),
    ({"local_ts": "192.0.2.7/32"}, "up-client"),
    ({"local_ts": "2001:db8::1/128", "remote_ts": "2001:db8::2/128", "local": "2001:db8::1",
      "remote": "2001:db8::2"}, "up-host-v6"),
    ({"local_ts": "fd01::/64", "remote_ts": "fd02::/64"}, "up-client-v6"),
])
def test_verb_host_client_and_v6(kwargs: dict[str, str], verb: str) -> None:
    (env,) = updown_environments(child_event(**kwargs), None, None)  # type: ignore[arg-type]
    assert env["PLUTO_VERB"] == verb
    assert env["PLUTO_INTERFACE"] == "unknown"
    assert "PLUTO_MY_ID" not in env and "PLUTO_UDP_ENC" not in env


def test_udp_encapsulation_names_the_peers_port() -> None:
    (env,) = updown_environments(child_event(encap=True, remote_port=4501), None, None)
    assert env["PLUTO_UDP_ENC"] == "4501"


def test_interface_of_loopback() -> None:
    assert interface_of("127.0.0.1") == "lo"
    assert interface_of("::1") == "lo" or not os.path.exists("/proc/net/if_inet6")
    assert interface_of("192.0.2.254") is None
    assert interface_of("not an address") is None


def _script(tmp: Path, name: str, body: str) -> Path:
    path = tmp / name
    path.write_text(body)
    path.chmod(0o755)
    return path


def _records(path: Path) -> list[dict[str, object]]:
    """What RECORDER wrote: one {"argv": [...], "env": {...}} per run."""
    if not path.exists():
        return []
    records: list[dict[str, object]] = []
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("--- "):
            env = {}
            records.append({"argv": line[4:].split(), "env": env})
        elif "=" in line:
            name, value = line.split("=", 1)
            env[name] = value
    return records


def test_up_then_down_in_order_with_arguments_and_identities(tmp_path: Path) -> None:
    # A slow "up": the "down" started at once must still come after it.
    slow_up = RECORDER.replace(
        "#!/bin/sh\n", "#!/bin/sh\ncase $PLUTO_VERB in up-*) sleep 0.3;; esac\n")
    script = _script(tmp_path, "updown", slow_up)
    record = tmp_path / "record"

    async def body() -> None:
        runner = UpdownRunner(find_interface=lambda address: "veth0")
        runner.ike_established(IkeSaEstablished(
            "gw", 3, ("192.0.2.1", 500), ("192.0.2.2", 500), "192.0.2.1", "peer.example",
            "aes128-sha256-modp2048", "psk", True))
        event = child_event()
        runner.child_up(event, (str(script), str(record), "iptables"))
        runner.child_down(deleted(event))  # at once: must still run after the up
        runner.child_down(deleted(child_event(child_id=99)))  # never up: nothing to run
        await runner.drain()

    asyncio.run(body())
    up, down = _records(record)
    assert up["argv"] == [str(record), "iptables"]
    assert isinstance(up["env"], dict) and isinstance(down["env"], dict)
    assert up["env"]["PLUTO_VERB"] == "up-client"
    assert down["env"]["PLUTO_VERB"] == "down-client"
    assert up["env"]["PLUTO_PEER_ID"] == "peer.example"
    assert up["env"]["PLUTO_INTERFACE"] == "veth0"
    assert {k: v for k, v in down["env"].items() if k != "PLUTO_VERB"} == {
        k: v for k, v in up["env"].items() if k != "PLUTO_VERB"}
    # Only PATH and our variables: nothing of the daemon's own environment leaks in.
    assert {k for k in up["env"] if not k.startswith(("PLUTO_", "IKEV1D_"))} <= {
        "PATH", "PWD", "SHLVL", "_"}


def test_a_renewed_sa_runs_no_script_and_down_waits_for_the_last_sa(tmp_path: Path) -> None:
    script = _script(tmp_path, "updown", RECORDER)
    record = tmp_path / "record"
    argv = (str(script), str(record))

    async def body() -> None:
        runner = UpdownRunner()
        first, renewed = child_event(child_id=1), child_event(child_id=2)
        other = child_event(child_id=3, remote_ts="10.3.0.0/24")
        runner.child_up(first, argv)
        runner.child_up(other, argv)  # another tunnel: its own up
        await runner.drain()
        runner.child_up(renewed, argv)  # make before break: no script
        runner.child_down(deleted(first))  # the old SA goes: the tunnel stays
        await runner.drain()
        verbs = [r["env"]["PLUTO_VERB"] for r in _records(record)]  # type: ignore[index]
        assert verbs == ["up-client"] * 2
        runner.child_down(deleted(renewed))
        runner.child_down(deleted(other))
        await runner.drain()

    asyncio.run(body())
    verbs = [(r["env"]["PLUTO_VERB"], r["env"]["PLUTO_PEER_CLIENT"])  # type: ignore[index]
             for r in _records(record)]
    assert sorted(verbs[2:]) == [("down-client", "10.2.0.0/24"), ("down-client", "10.3.0.0/24")]


def test_failing_and_hanging_scripts_are_logged_and_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    failing = _script(tmp_path, "failing", "#!/bin/sh\necho 'no iptables here'\nexit 3\n")
    marker = tmp_path / "survived"
    hanging = _script(tmp_path, "hanging",
                      f"#!/bin/sh\nsleep 30 &\nsleep 30\ntouch {marker}\n")

    async def body() -> float:
        runner = UpdownRunner(timeout_s=0.5)
        runner.child_up(child_event(child_id=1), (str(failing),))
        runner.child_up(child_event(child_id=2, remote_ts="10.3.0.0/24"), (str(hanging),))
        runner.child_up(child_event(child_id=3, remote_ts="10.4.0.0/24"),
                        (str(tmp_path / "missing"),))
        started = time.monotonic()
        # The caller is never blocked: the loop keeps running while scripts do.
        await asyncio.sleep(0.05)
        await runner.drain()
        return time.monotonic() - started

    with caplog.at_level(logging.INFO, "ikev1d.daemon"):
        elapsed = asyncio.run(body())
    assert elapsed < 5
    assert "updown: no iptables here" in caplog.text
    assert "exited with status 3" in caplog.text
    assert "killed after 0.5s" in caplog.text
    assert "cannot run" in caplog.text
    time.sleep(0.2)
    assert not marker.exists()


def test_at_most_max_concurrent_scripts_run_at_once(tmp_path: Path) -> None:
    running = tmp_path / "running"
    running.mkdir()
    seen = tmp_path / "seen"
    script = _script(tmp_path, "slow", (
        "#!/bin/sh\n"
        f"touch {running}/$$\n"
        f"ls {running} | wc -l >> {seen}\n"
        "sleep 0.3\n"
        f"rm {running}/$$\n"
    ))

    async def body() -> None:
        runner = UpdownRunner(max_concurrent=2)
        for n in range(6):
            event = child_event(child_id=n, remote_ts=f"10.{n + 10}.0.0/24")
            runner.child_up(event, (str(script),))
        await runner.drain()

    asyncio.run(body())
    counts = [int(line) for line in seen.read_text().split()]
    assert len(counts) == 6
    assert max(counts) <= 2


# --- in the daemon -----------------------------------------------------------------------


def test_loader_accepts_an_executable_with_arguments_and_refuses_the_rest(tmp_path: Path) -> None:
    script = _script(tmp_path, "updown", RECORDER)
    base = "[connections.c]\nremote_addrs = ['192.0.2.2']\n[connections.c.children.net]\n"
    config = parse_config(base + f"updown = '{script} iptables \"a b\"'", "t.toml")
    assert config.connections["c"].children["net"].updown == (str(script), "iptables", "a b")
    assert parse_config(base, "t.toml").connections["c"].children["net"].updown == ()
    (tmp_path / "plain").write_text("")
    for value, reason in [("updown", "needs an absolute path"),
                          (str(tmp_path / "plain"), "not an executable file"),
                          (str(tmp_path / "none"), "not an executable file"),
                          (f"{script} 'open", "cannot split")]:
        with pytest.raises(ConfigError, match=reason):
            parse_config(base + f"updown = {json.dumps(value)}", "t.toml")


def test_daemon_runs_the_childs_script_when_its_sa_comes_up_and_goes_down(
    tmp_path: Path,
) -> None:
    script = _script(tmp_path, "updown", RECORDER)
    record = tmp_path / "record"
    port, port_nat_t = free_udp_ports(2)
    text = CONFIG.format(listen='"127.0.0.1"', port=port, port_nat_t=port_nat_t)
    text = text.replace("[connections.site-ok.children.net]\n",
                        f"[connections.site-ok.children.net]\nupdown = '{script} {record}'\n")
    config = parse_config(text, "ikev1d.toml")
    engines: list[FakeEngine] = []
    backend = RecordingBackend()
    daemon = Daemon(
        DaemonOptions(str(tmp_path / "ikev1d.toml"), str(tmp_path / "ikev1d.sock"),
                      linger_s=0.01),
        config_loader=lambda path: config, engine_factory=collecting_factory(engines),
        backend_factory=lambda name, cfg: backend, warnings=lambda cfg: [],
        install_signal_handlers=False,
    )

    async def body() -> None:
        await daemon.start()
        try:
            up_net = child_event(child_id=1, conn="site-ok", child="net")
            up_net2 = child_event(child_id=2, conn="site-ok", child="net2")  # no script
            daemon.engine.emit(up_net)
            daemon.engine.emit(up_net2)
            daemon._pump()
            await eventually(lambda: len(_records(record)) == 1, timeout=10)
            assert set(backend.installed) != set()  # installed before the script ran
            daemon.engine.emit(deleted(up_net2))
            daemon.engine.emit(deleted(up_net))
            daemon._pump()
            await eventually(lambda: len(_records(record)) == 2, timeout=10)
        finally:
            await daemon.stop()

    asyncio.run(body())
    up, down = _records(record)
    assert isinstance(up["env"], dict) and isinstance(down["env"], dict)
    assert (up["env"]["PLUTO_VERB"], down["env"]["PLUTO_VERB"]) == ("up-client", "down-client")
    assert up["env"]["PLUTO_CONNECTION"] == "net"
    assert up["env"]["IKEV1D_CONNECTION"] == "site-ok"


def test_a_failed_install_runs_no_script(tmp_path: Path) -> None:
    script = _script(tmp_path, "updown", RECORDER)
    record = tmp_path / "record"
    port, port_nat_t = free_udp_ports(2)
    text = CONFIG.format(listen='"127.0.0.1"', port=port, port_nat_t=port_nat_t)
    text = text.replace("[connections.site-ok.children.net]\n",
                        f"[connections.site-ok.children.net]\nupdown = '{script} {record}'\n")
    config = parse_config(text, "ikev1d.toml")
    backend = RecordingBackend()
    backend.refuse = "no TUN device"
    engines: list[FakeEngine] = []
    daemon = Daemon(
        DaemonOptions(str(tmp_path / "ikev1d.toml"), str(tmp_path / "ikev1d.sock"),
                      linger_s=0.01),
        config_loader=lambda path: config, engine_factory=collecting_factory(engines),
        backend_factory=lambda name, cfg: backend, warnings=lambda cfg: [],
        install_signal_handlers=False,
    )

    async def body() -> None:
        await daemon.start()
        daemon.engine.emit(child_event(child_id=1, conn="site-ok", child="net"))
        daemon._pump()
        await daemon.stop()

    asyncio.run(body())
    assert _records(record) == []


def test_stop_waits_for_the_down_scripts_of_the_sas_it_deletes(tmp_path: Path) -> None:
    script = _script(tmp_path, "updown", RECORDER.replace(
        "#!/bin/sh\n", "#!/bin/sh\ncase $PLUTO_VERB in down-*) sleep 0.3;; esac\n"))
    record = tmp_path / "record"
    port, port_nat_t = free_udp_ports(2)
    text = CONFIG.format(listen='"127.0.0.1"', port=port, port_nat_t=port_nat_t)
    text = text.replace("[connections.site-ok.children.net]\n",
                        f"[connections.site-ok.children.net]\nupdown = '{script} {record}'\n")
    config = parse_config(text, "ikev1d.toml")
    engines: list[FakeEngine] = []
    daemon = Daemon(
        DaemonOptions(str(tmp_path / "ikev1d.toml"), str(tmp_path / "ikev1d.sock"),
                      linger_s=0.01),
        config_loader=lambda path: config, engine_factory=collecting_factory(engines),
        backend_factory=lambda name, cfg: RecordingBackend(), warnings=lambda cfg: [],
        install_signal_handlers=False,
    )
    up = child_event(child_id=1, conn="site-ok", child="net")

    async def body() -> None:
        await daemon.start()
        engine = daemon.engine
        engine.emit(up)
        daemon._pump()
        await eventually(lambda: len(_records(record)) == 1, timeout=10)
        # Shutting down deletes every SA (RFC 2408 section 3.15 Delete), as the real
        # engine does; the slow "down" must still be recorded when stop() returns.
        engine.shutdown = lambda now: engine.emit(deleted(up))  # type: ignore[method-assign]
        await daemon.stop()

    asyncio.run(body())
    assert [r["env"]["PLUTO_VERB"] for r in _records(record)] == [  # type: ignore[index]
        "up-client", "down-client"]
