"""keylog_dir and updown in one session with strongSwan: tshark decrypts the capture
with nothing but the files ikev1d wrote, and the child's script sees the tunnel come
up and go down.

ikev1d (A, userspace data plane) initiates to a strongSwan charon (B, kernel-libipsec,
``encap = yes``, so IKE moves to UDP 4500 after Main Mode 3/4 and ESP is
UDP-encapsulated, RFC 3948). A capture on A's veth holds all of Main Mode, Quick Mode,
pings and a TCP exchange. The two key files, copied while the SAs are up into the
configuration directory of a private HOME, are all tshark gets: it must show the
identification payloads of Main Mode 5/6, the Quick Mode payloads, and the inner ICMP
and TCP of the ESP packets in both directions. Without the files (the control) it
shows none of that.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, swanctl_conf

from .conftest import CaptureFactory, CharonFactory
from .test_dataplane_ikev1d import tcp_echo

pytestmark = pytest.mark.interop

PSK = "keylog-psk-0123456789abcdef"
IKE = ["aes256-sha256-modp2048"]
# ESP proposal -> Wireshark's names of its algorithms, as esp_sa must give them.
ESP = {
    "aes128-sha256": ('"AES-CBC [RFC3602]"', '"HMAC-SHA-256-128 [RFC4868]"'),
    "aes256gcm16": ('"AES-GCM with 16 octet ICV [RFC4106]"', '"NULL"'),
}

RECORDER = """#!/bin/sh
{ echo "--- $PLUTO_VERB"; env; } >> "$1"
"""

FIELDS = ["frame.number", "ip.src", "ip.dst", "isakmp.exchangetype", "isakmp.id.type",
          "isakmp.ispi", "esp.spi", "icmp.type", "tcp.srcport", "tcp.dstport"]


@dataclass
class Session:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon
    pcap: Path
    keys: Path
    """The key files as they were while the SAs were up."""
    keylog_dir: Path
    record: Path
    esp: str


def _records(path: Path) -> list[tuple[str, dict[str, str]]]:
    records: list[tuple[str, dict[str, str]]] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("--- "):
            records.append((line[4:], {}))
        elif "=" in line and records:
            name, value = line.split("=", 1)
            records[-1][1][name] = value
    return records


@pytest.fixture(params=list(ESP))
def session(
    two_hosts: Topology, charon_factory: CharonFactory, capture_factory: CaptureFactory,
    tmp_path: Path, request: pytest.FixtureRequest,
) -> Iterator[Session]:
    topo = two_hosts
    esp = [request.param]
    script = tmp_path / "updown"
    script.write_text(RECORDER)
    script.chmod(0o755)
    record = tmp_path / "updown.record"
    keylog_dir = tmp_path / "keylog"
    ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", ikev1d_conf(
        "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK, IKE, esp,
        topo.inner_net_a, topo.inner_net_b, dataplane="userspace",
        extra_daemon=f'keylog_dir = "{keylog_dir}"',
        extra_child=f'updown = "{script} {record}"',
    ))
    theirs = charon_factory(topo.b, "b")
    theirs.load_config(swanctl_conf(
        "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK, IKE, esp,
        topo.inner_net_b, topo.inner_net_a,
    ))
    cap = capture_factory(topo.a, topo.if_a)
    ours.start()
    try:
        result = ours.up("gw")
        assert result.returncode == 0, result.stdout + result.stderr + ours.log_text()[-3000:]
        assert ping(topo.a, topo.inner_addr_b, count=3) == (3, 3)
        tcp_echo(topo.b, topo.inner_addr_b, topo.a, topo.inner_addr_a, nbytes=20_000)
        keys = tmp_path / "keys-while-up"
        shutil.copytree(keylog_dir, keys)
        pcap = cap.stop()
        down = ours.down("gw")
        assert down.returncode == 0, down.stdout + down.stderr
        yield Session(topo, ours, theirs, pcap, keys, keylog_dir, record, request.param)
    finally:
        code = ours.stop()
        assert code == 0, ours.log_text()[-3000:]


def _tshark(pcap: Path, home: Path, decrypt: bool) -> list[dict[str, str]]:
    """tshark with a private HOME; the key files (if any) are in its Wireshark config dir."""
    cmd = ["tshark", "-n", "-r", str(pcap)]
    if decrypt:
        cmd += ["-o", "esp.enable_encryption_decode:TRUE"]
    cmd += ["-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in FIELDS:
        cmd += ["-e", field]
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return [dict(zip(FIELDS, line.split("|"), strict=True))
            for line in proc.stdout.splitlines() if line]


def _profile(tmp: Path, keys: Path | None) -> Path:
    home = tmp / ("home-with-keys" if keys else "home-without")
    config = home / ".config" / "wireshark"
    config.mkdir(parents=True)
    if keys is not None:
        for name in ("ikev1_decryption_table", "esp_sa"):
            shutil.copy(keys / name, config / name)
    return home


def test_tshark_decrypts_the_session_with_the_key_files_and_updown_ran(
    session: Session, tmp_path: Path,
) -> None:
    topo = session.topo
    # The files: 0600 in a 0700 directory, one ISAKMP SA and one IPsec SA pair in them,
    # and empty again once the SAs are deleted.
    assert stat.S_IMODE(session.keylog_dir.stat().st_mode) == 0o700
    for name in ("ikev1_decryption_table", "esp_sa"):
        assert stat.S_IMODE((session.keylog_dir / name).stat().st_mode) == 0o600
        assert (session.keylog_dir / name).read_text() == ""
    (ike_line,) = (session.keys / "ikev1_decryption_table").read_text().splitlines()
    esp_lines = (session.keys / "esp_sa").read_text().splitlines()
    assert len(esp_lines) == 2
    encryption, authentication = ESP[session.esp]
    assert all(f",{encryption}," in line and f",{authentication}," in line
               for line in esp_lines), esp_lines

    decrypted = _tshark(session.pcap, _profile(tmp_path, session.keys), decrypt=True)
    plain = _tshark(session.pcap, _profile(tmp_path, None), decrypt=False)
    assert len(decrypted) == len(plain) > 10

    # Main Mode (exchange type 2): the ID payloads of messages 5 and 6 are encrypted;
    # tshark reads them, ID_IPV4_ADDR (RFC 2407 section 4.6.2.1), only with the key.
    cookie = ike_line.split(",")[0]
    main_mode = [p for p in decrypted if p["isakmp.exchangetype"] == "2"]
    assert all(p["isakmp.ispi"] == cookie for p in main_mode), main_mode
    assert [p["isakmp.id.type"] for p in main_mode].count("1") == 2, main_mode
    assert not any(p["isakmp.id.type"] for p in plain if p["isakmp.exchangetype"] == "2")
    # Quick Mode (32): the client IDs, ID_IPV4_ADDR_SUBNET (4), two in each of QM1/QM2.
    quick = [p for p in decrypted if p["isakmp.exchangetype"] == "32"]
    assert len(quick) == 3
    assert sum(p["isakmp.id.type"].split(",").count("4") for p in quick) == 4, quick
    assert not any(p["isakmp.id.type"] for p in plain if p["isakmp.exchangetype"] == "32")

    # ESP: the inner packets, both directions, pings and TCP.
    esp = [p for p in decrypted if p["esp.spi"]]
    assert len({p["esp.spi"] for p in esp}) == 2
    inner = topo.inner_addr_a, topo.inner_addr_b
    echo_requests = [p for p in esp if p["icmp.type"] == "8"
                     and p["ip.src"].split(",")[-1] == inner[0]]
    echo_replies = [p for p in esp if p["icmp.type"] == "0"
                    and p["ip.src"].split(",")[-1] == inner[1]]
    assert len(echo_requests) == len(echo_replies) == 3
    tcp = [p for p in esp if p["tcp.srcport"]]
    assert {p["ip.src"].split(",")[-1] for p in tcp} == set(inner)
    assert len(tcp) > 10
    assert not any(p["icmp.type"] or p["tcp.srcport"] for p in plain if p["esp.spi"])

    # updown: up once the tunnel carried traffic, down when it was taken down.
    (up_verb, up), (down_verb, down) = _records(session.record)
    assert (up_verb, down_verb) == ("up-client", "down-client")
    for env in (up, down):
        assert env["PLUTO_VERSION"] == "1.1"
        assert env["PLUTO_CONNECTION"] == "net"
        assert env["PLUTO_ME"] == topo.addr_a and env["PLUTO_PEER"] == topo.addr_b
        assert env["PLUTO_MY_ID"] == topo.addr_a and env["PLUTO_PEER_ID"] == topo.addr_b
        assert env["PLUTO_MY_CLIENT"] == topo.inner_net_a
        assert env["PLUTO_PEER_CLIENT"] == topo.inner_net_b
        assert env["PLUTO_INTERFACE"] == topo.if_a
        assert env["PLUTO_PROTO"] == "esp"
        assert env["PLUTO_UDP_ENC"] == "4500"
