"""Wireshark key log files: their format, permissions and updates, alone and in the daemon.

That tshark decrypts a real session with these files is checked against strongSwan
in tests/interop/test_keylog_updown_strongswan.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import stat
from pathlib import Path

import pytest

from ikev1d.config import parse_config
from ikev1d.daemon.keylog import ESP_TABLE, IKEV1_TABLE, KeyLog, KeyLogError, esp_rows
from ikev1d.daemon.runtime import Daemon, DaemonError, DaemonOptions
from ikev1d.engine.api import ChildSaDeleted, ChildSaEstablished, IkeSaDeleted, IkeSaEstablished
from tests.unit.daemon._fakes import (
    CONFIG,
    FakeEngine,
    RecordingBackend,
    collecting_factory,
    eventually,
    free_udp_ports,
)
from tests.unit.engine.test_engine import default_net, establish

KEYMAT_IN = bytes(range(0x00, 0x40))
KEYMAT_OUT = bytes(range(0x40, 0x80))


def ike_event(ike_id: int = 1, cky_i: bytes = bytes.fromhex("0102030405060708"),
              key: bytes = bytes.fromhex("a0" * 16)) -> IkeSaEstablished:
    return IkeSaEstablished(
        "gw", ike_id, ("192.0.2.1", 500), ("192.0.2.2", 500), "192.0.2.1", "192.0.2.2",
        "aes128-sha256-modp2048", "psk", True,
        cky_i=cky_i, cky_r=bytes.fromhex("1112131415161718"), encryption_key=key,
    )


def child_event(
    child_id: int = 7, encryption: str = "aesgcm", key_length: int = 128,
    integrity: str | None = None, icv_length: int = 16,
    local: str = "192.0.2.1", remote: str = "192.0.2.2",
    spi_in: int = 0xC1234567, spi_out: int = 0xC7654321,
) -> ChildSaEstablished:
    v6 = ":" in local
    return ChildSaEstablished(
        conn="gw", child="net", ike_id=1, child_id=child_id, spi_in=spi_in, spi_out=spi_out,
        proposal=f"{encryption}{key_length}", encryption=encryption, key_length=key_length,
        icv_length=icv_length, integrity=integrity, mode="tunnel", encap=True,
        local=(local, 4500), remote=(remote, 4500),
        local_ts=(ipaddress.ip_network("fd01::/64" if v6 else "10.1.0.0/24"),),
        remote_ts=(ipaddress.ip_network("fd02::/64" if v6 else "10.2.0.0/24"),),
        keymat_in=KEYMAT_IN, keymat_out=KEYMAT_OUT,
    )


def child_deleted(child_id: int = 7) -> ChildSaDeleted:
    return ChildSaDeleted("gw", "net", 1, child_id, 0xC1234567, 0xC7654321, "deleted")


def test_ike_line_is_initiator_cookie_and_encryption_key_in_bare_hex(tmp_path: Path) -> None:
    keylog = KeyLog(tmp_path / "keys")
    keylog.open()
    keylog.ike_established(ike_event())
    text = (tmp_path / "keys" / IKEV1_TABLE).read_text()
    assert text == "0102030405060708," + "a0" * 16 + "\n"


@pytest.mark.parametrize(("encryption", "bits", "integrity", "icv", "ws_enc", "enc_len",
                          "ws_auth", "auth_len"), [
    # AES-GCM: key and the 4-octet salt together (RFC 4106 section 8.1), no integrity key.
    ("aesgcm", 128, None, 16, "AES-GCM with 16 octet ICV [RFC4106]", 20, "NULL", 0),
    ("aesgcm", 256, None, 8, "AES-GCM with 8 octet ICV [RFC4106]", 36, "NULL", 0),
    ("aesgcm", 192, None, 12, "AES-GCM with 12 octet ICV [RFC4106]", 28, "NULL", 0),
    ("aes", 256, "sha256", 16, "AES-CBC [RFC3602]", 32, "HMAC-SHA-256-128 [RFC4868]", 32),
    ("aes", 128, "sha1", 12, "AES-CBC [RFC3602]", 16, "HMAC-SHA-1-96 [RFC2404]", 20),
    ("aes", 128, "sha384", 24, "AES-CBC [RFC3602]", 16, "HMAC-SHA-384-192 [RFC4868]", 48),
    ("aes", 128, "sha512", 32, "AES-CBC [RFC3602]", 16, "HMAC-SHA-512-256 [RFC4868]", 64),
    ("3des", 0, "md5", 12, "TripleDES-CBC [RFC2451]", 24, "HMAC-MD5-96 [RFC2403]", 16),
])
def test_esp_rows_name_algorithms_as_wireshark_does_and_split_the_keymat(
    encryption: str, bits: int, integrity: str | None, icv: int, ws_enc: str, enc_len: int,
    ws_auth: str, auth_len: int,
) -> None:
    rows = esp_rows(child_event(encryption=encryption, key_length=bits, integrity=integrity,
                                icv_length=icv))
    assert rows is not None
    inbound, outbound = rows
    auth_in = f'"0x{KEYMAT_IN[enc_len:enc_len + auth_len].hex()}"' if auth_len else '""'
    assert inbound.line() == (
        f'"IPv4","192.0.2.2","192.0.2.1","0xc1234567","{ws_enc}",'
        f'"0x{KEYMAT_IN[:enc_len].hex()}","{ws_auth}",{auth_in}'
    )
    assert outbound.src == "192.0.2.1" and outbound.dst == "192.0.2.2"
    assert outbound.spi == 0xC7654321
    assert outbound.encryption_key == KEYMAT_OUT[:enc_len]
    assert outbound.authentication_key == KEYMAT_OUT[enc_len:enc_len + auth_len]


def test_ipv6_sa_and_unknown_algorithm() -> None:
    rows = esp_rows(child_event(local="2001:db8::1", remote="2001:db8::2", spi_in=0x1))
    assert rows is not None
    assert rows[0].line().startswith('"IPv6","2001:db8::2","2001:db8::1","0x00000001",')
    assert esp_rows(child_event(encryption="serpent")) is None


def test_files_0600_directory_0700_stale_keys_removed_updates_as_sas_come_and_go(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "new" / "keys"
    keylog = KeyLog(directory)
    keylog.open()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (directory / ESP_TABLE).write_text("stale\n")
    keylog.open()  # a restart: nothing of an earlier run stays
    for table in (IKEV1_TABLE, ESP_TABLE):
        assert (directory / table).read_text() == ""
        assert stat.S_IMODE((directory / table).stat().st_mode) == 0o600

    keylog.ike_established(ike_event(1))
    keylog.ike_established(ike_event(2, cky_i=bytes.fromhex("aa" * 8), key=b"\xbb" * 32))
    keylog.child_established(child_event(7))
    keylog.child_established(child_event(8, spi_in=0xC0000008, spi_out=0xC0000009))
    ike_lines = (directory / IKEV1_TABLE).read_text().splitlines()
    assert ike_lines == ["0102030405060708," + "a0" * 16, "aa" * 8 + "," + "bb" * 32]
    esp_lines = (directory / ESP_TABLE).read_text().splitlines()
    assert len(esp_lines) == 4
    assert stat.S_IMODE((directory / ESP_TABLE).stat().st_mode) == 0o600

    keylog.child_deleted(child_deleted(7))
    esp_lines = (directory / ESP_TABLE).read_text().splitlines()
    assert len(esp_lines) == 2 and all("0xc000000" in line for line in esp_lines)
    keylog.ike_deleted(IkeSaDeleted("gw", 1, "deleted"))
    assert (directory / IKEV1_TABLE).read_text().splitlines() == [
        "aa" * 8 + "," + "bb" * 32]
    # Every write went through a temporary file that was renamed: none left over.
    assert sorted(p.name for p in directory.iterdir()) == [ESP_TABLE, IKEV1_TABLE]


def test_an_existing_directory_open_to_others_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    os.chmod(tmp_path, 0o755)
    with caplog.at_level(logging.WARNING, "ikev1d.daemon"):
        KeyLog(tmp_path).open()
    assert "open to other users (mode 0755)" in caplog.text


def test_unusable_directory_and_failed_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(KeyLogError, match="keylog_dir"):
        KeyLog(tmp_path / "file").open()
    directory = tmp_path / "keys"
    keylog = KeyLog(directory)
    keylog.open()
    for p in directory.iterdir():
        p.unlink()
    directory.rmdir()
    with caplog.at_level(logging.INFO, "ikev1d.daemon"):
        keylog.ike_established(ike_event(1))  # logged
        keylog.ike_established(ike_event(2))  # not again
        directory.mkdir()
        keylog.ike_established(ike_event(3))
    assert caplog.text.count("cannot write key log") == 1
    assert "written again" in caplog.text
    assert len((directory / IKEV1_TABLE).read_text().splitlines()) == 3


def test_the_encryption_key_never_shows_in_the_event_repr() -> None:
    assert "a0a0" not in repr(ike_event())
    assert str(b"\xa0" * 16) not in repr(ike_event())


# --- in the daemon -----------------------------------------------------------------------


def _daemon(tmp: Path, extra_daemon: str) -> tuple[Daemon, list[FakeEngine]]:
    port, port_nat_t = free_udp_ports(2)
    text = CONFIG.format(listen='"127.0.0.1"', port=port, port_nat_t=port_nat_t)
    text = text.replace('dataplane = "none"\n', f'dataplane = "none"\n{extra_daemon}\n')
    config = parse_config(text, str(tmp / "ikev1d.toml"), base_dir=tmp)
    engines: list[FakeEngine] = []
    daemon = Daemon(
        DaemonOptions(str(tmp / "ikev1d.toml"), str(tmp / "run" / "ikev1d.sock"),
                      linger_s=0.01),
        config_loader=lambda path: config,
        engine_factory=collecting_factory(engines),
        backend_factory=lambda name, cfg: RecordingBackend(),
        warnings=lambda cfg: [],
        install_signal_handlers=False,
    )
    return daemon, engines


def test_daemon_warns_and_keeps_the_files_in_step_with_engine_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    daemon, _ = _daemon(tmp_path, 'keylog_dir = "keys"')  # relative to the config file

    async def body() -> None:
        with caplog.at_level(logging.WARNING, "ikev1d.daemon"):
            await daemon.start()
        try:
            assert "writing the keys of every SA to " + str(tmp_path / "keys") in caplog.text
            daemon.engine.emit(ike_event(1))
            daemon.engine.emit(child_event(7))
            daemon._pump()  # what every input path does
            esp = tmp_path / "keys" / ESP_TABLE
            await eventually(lambda: len(esp.read_text().splitlines()) == 2)
            daemon.engine.emit(child_deleted(7))
            daemon.engine.emit(IkeSaDeleted("gw", 1, "deleted"))
            daemon._pump()
            assert esp.read_text() == ""
            assert (tmp_path / "keys" / IKEV1_TABLE).read_text() == ""
        finally:
            await daemon.stop()

    asyncio.run(body())


def test_daemon_without_keylog_dir_writes_nothing_and_a_bad_one_stops_the_start(
    tmp_path: Path,
) -> None:
    daemon, _ = _daemon(tmp_path, "")

    async def body() -> None:
        await daemon.start()
        daemon.engine.emit(ike_event(1))
        daemon._pump()
        await daemon.stop()

    asyncio.run(body())
    assert not (tmp_path / "keys").exists()

    (tmp_path / "blocker").write_text("")
    bad, _ = _daemon(tmp_path, 'keylog_dir = "blocker/keys"')
    with pytest.raises(DaemonError, match="keylog_dir"):
        asyncio.run(bad.start())


def test_the_engine_reports_the_cookies_and_the_same_ka_on_both_sides() -> None:
    net = default_net()
    establish(net)
    (a,) = net.a.of(IkeSaEstablished)
    (b,) = net.b.of(IkeSaEstablished)
    assert isinstance(a, IkeSaEstablished) and isinstance(b, IkeSaEstablished)
    first = net.wire[0][1].data  # Main Mode message 1: CKY-I, then a zero CKY-R
    assert a.cky_i == b.cky_i == first[:8]
    assert a.cky_r == b.cky_r and a.cky_r != bytes(8)
    # The default proposal's cipher is AES-128 (RFC 3602 key in RFC 2409 Appendix B).
    assert a.encryption_key == b.encryption_key and len(a.encryption_key) == 16
