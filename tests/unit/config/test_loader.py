"""The TOML configuration: every documented key, every error path, the lookups."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from ikev1d.config import (
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    Auth,
    AuthConfig,
    Config,
    ConfigError,
    ConnectionConfig,
    DaemonConfig,
    Dataplane,
    DpdAction,
    Fragmentation,
    Identity,
    IdKind,
    IpsecMode,
    LogLevel,
    ModeCfg,
    StartAction,
    Unique,
    config_warnings,
    load_config,
    parse_config,
)
from ikev1d.durations import DurationError, format_duration, parse_duration
from ikev1d.proposals import EspProposal, IkeProposal, parse_esp_proposal, parse_ike_proposal

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

# Every key set (values differ from the defaults where possible; keys of features
# that do not exist yet hold their empty value).
FULL = """
[daemon]
listen = ["192.0.2.1", "2001:db8::1"]
port = 5000
port_nat_t = 5001
dataplane = "kernel"
retransmit_timeout = "3s"
retransmit_tries = 7
half_open_per_peer = 4
half_open_total = 100
half_open_timeout = "1m"
log_level = "debug"
allow_insecure_algorithms = false
metrics = ""
keylog_dir = ""

[connections.site-b]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
proposals = ["aes256-sha256-modp2048", "aes128-sha1-modp2048"]
encap = true
dpd_delay = "20s"
dpd_timeout = "2m"
dpd_action = "clear"
rekey_time = "4h"
reauth_time = "0s"
start_action = "start"
vips = []
pools = []
modecfg = "pull"
fragmentation = "accept"
unique = "replace"
aggressive = false
version = 1

[connections.site-b.local]
auth = "psk"
id = "gw-a.example.org"
certs = []
private_key = ""

[connections.site-b.remote]
auth = "psk"
id = "192.0.2.2"
cacerts = []
crls = []
pubkey = ""

[connections.site-b.local_xauth]
xauth_id = ""

[connections.site-b.remote_xauth]

[connections.site-b.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24", "2001:db8:2::/48"]
esp_proposals = ["aes128gcm16-modp2048", "aes128-sha256"]
mode = "transport"
rekey_time = "1h"
life_bytes = 1000000
start_action = "start"

[connections.dyn]
remote_addrs = ["%any"]
dpd_action = "clear"

[connections.dyn.children.lan]
local_ts = ["10.2.0.0/16"]

[secrets.site-b]
type = "ike"
secret = "a long random string, long enough"
ids = ["192.0.2.2"]

[pools]
"""


def load(text: str) -> Config:
    return parse_config(text, "test.toml")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value)


MINIMAL = """
[connections.c]
remote_addrs = ["192.0.2.2"]
"""


# --- every key --------------------------------------------------------------------


def test_every_documented_key() -> None:
    cfg = load(FULL)
    assert cfg.source == "test.toml"
    assert cfg.daemon == DaemonConfig(
        listen=("192.0.2.1", "2001:db8::1"), port=5000, port_nat_t=5001,
        dataplane=Dataplane.KERNEL,
        retransmit_timeout=3.0, retransmit_tries=7, half_open_per_peer=4,
        half_open_total=100, half_open_timeout=60.0, log_level=LogLevel.DEBUG,
        allow_insecure_algorithms=False,
    )
    assert list(cfg.connections) == ["site-b", "dyn"]
    conn = cfg.connections["site-b"]
    assert conn.name == "site-b"
    assert conn.local_addrs == ("192.0.2.1",)
    assert conn.remote_addrs == ("192.0.2.2",)
    assert conn.proposals == (
        IkeProposal("aes", 256, "sha256", 14), IkeProposal("aes", 128, "sha1", 14)
    )
    assert conn.encap is True
    assert (conn.dpd_delay, conn.dpd_timeout, conn.dpd_action) == (20.0, 120.0, "clear")
    assert (conn.rekey_time, conn.reauth_time) == (14400.0, 0.0)
    assert conn.phase1_lifetime == 14400.0
    assert conn.start_action == "start"
    assert conn.vips == () and conn.pools == ()
    assert (conn.modecfg, conn.fragmentation) == ("pull", "accept")
    assert conn.unique is Unique.REPLACE
    assert conn.local == AuthConfig(auth=Auth.PSK, id=Identity.parse("gw-a.example.org"))
    assert conn.remote == AuthConfig(auth=Auth.PSK, id=Identity.parse("192.0.2.2"))
    child = conn.children["net"]
    assert child.name == "net"
    assert child.local_ts == (ipaddress.ip_network("10.1.0.0/24"),)
    assert child.remote_ts == (
        ipaddress.ip_network("10.2.0.0/24"), ipaddress.ip_network("2001:db8:2::/48")
    )
    assert child.esp_proposals == (
        EspProposal("aesgcm", 128, 16, None, 14), EspProposal("aes", 128, 0, "sha256", None)
    )
    assert (child.mode, child.rekey_time, child.life_bytes, child.start_action) == (
        "transport", 3600.0, 1000000, "start"
    )
    secret = cfg.secrets["site-b"]
    assert (secret.name, secret.ids) == ("site-b", (Identity.parse("192.0.2.2"),))
    assert secret.value == b"a long random string, long enough"
    assert "long random" not in repr(secret)  # secrets stay out of logs
    assert cfg.pools == {}


def test_choices_are_str_enums_equal_to_their_text() -> None:
    cfg = load(FULL)
    conn = cfg.connections["site-b"]
    child = conn.children["net"]
    assert cfg.daemon.dataplane is Dataplane.KERNEL and cfg.daemon.log_level is LogLevel.DEBUG
    assert conn.dpd_action == "clear"  # as code that compares with strings expects
    assert conn.dpd_action is DpdAction.CLEAR
    assert conn.start_action is StartAction.START and conn.modecfg is ModeCfg.PULL
    assert conn.fragmentation is Fragmentation.ACCEPT
    assert conn.local.auth is Auth.PSK
    assert child.mode is IpsecMode.TRANSPORT
    assert json.dumps({"mode": child.mode}) == '{"mode": "transport"}'
    assert f"{child.mode}" == "transport"


def test_defaults() -> None:
    cfg = load(MINIMAL)
    assert cfg.daemon == DaemonConfig()
    assert cfg.daemon.listen == ("0.0.0.0",)
    conn = cfg.connections["c"]
    assert conn.proposals == tuple(
        p for text in DEFAULT_IKE_PROPOSALS for p in parse_ike_proposal(text)
    )
    assert not any(p.weak for p in conn.proposals)
    assert (conn.encap, conn.dpd_delay, conn.dpd_timeout, conn.dpd_action) == (
        False, 30.0, 150.0, "restart"
    )
    assert (conn.rekey_time, conn.start_action, conn.modecfg) == (14400.0, "none", "pull")
    assert conn.local == AuthConfig(auth=Auth.PSK, id=None)  # filled from the address at runtime
    assert str(conn.remote.id) == "192.0.2.2"  # the single remote address
    assert conn.children == {}


def test_default_child_and_ids() -> None:
    cfg = load("""
[connections.c]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2", "192.0.2.3"]
[connections.c.children.x]
""")
    conn = cfg.connections["c"]
    assert str(conn.local.id) == "192.0.2.1"
    assert conn.remote.id is not None and conn.remote.id.is_any  # several possible peers
    child = conn.children["x"]
    assert child.local_ts == () and child.remote_ts == ()  # dynamic
    assert child.esp_proposals == tuple(
        p for text in DEFAULT_ESP_PROPOSALS for p in parse_esp_proposal(text)
    )
    assert (child.mode, child.rekey_time, child.life_bytes) == ("tunnel", 3600.0, 0)
    assert child.traffic_selectors("192.0.2.1", "2001:db8::7") == (
        (ipaddress.ip_network("192.0.2.1/32"),), (ipaddress.ip_network("2001:db8::7/128"),)
    )
    static = load(FULL).connections["site-b"].children["net"]
    assert static.traffic_selectors("192.0.2.1", "192.0.2.2") == (
        static.local_ts, static.remote_ts
    )


def test_multi_algorithm_proposals_flatten_in_order_without_duplicates() -> None:
    cfg = load("""
[connections.c]
remote_addrs = ["192.0.2.2"]
proposals = ["aes128-aes256-sha256-modp2048", "aes128-sha256-modp2048-ecp256"]
""")
    assert [p.render() for p in cfg.connections["c"].proposals] == [
        "aes128-sha256-modp2048", "aes256-sha256-modp2048", "aes128-sha256-ecp256",
    ]


def test_comma_separated_proposal_string_as_in_swanctl() -> None:
    cfg = load("""
[connections.c]
remote_addrs = ["192.0.2.2"]
proposals = "aes256-sha256-modp2048, aes128-sha1-modp2048"
""")
    assert len(cfg.connections["c"].proposals) == 2


def test_ipv6_normalized_and_cidr_remote() -> None:
    cfg = load("""
[connections.c]
local_addrs = ["2001:DB8:0::1"]
remote_addrs = ["2001:db8::/64"]
""")
    conn = cfg.connections["c"]
    assert conn.local_addrs == ("2001:db8::1",)
    assert conn.remote_addrs == ("2001:db8::/64",)
    assert conn.remote.id is not None and conn.remote.id.is_any


def test_integer_durations_are_seconds() -> None:
    cfg = load(MINIMAL.replace("]\n", "]\nrekey_time = 7200\ndpd_delay = 0\n", 1))
    assert cfg.connections["c"].rekey_time == 7200.0
    assert cfg.connections["c"].dpd_delay == 0.0


def test_insecure_allowed_when_configured() -> None:
    cfg = load("""
[daemon]
allow_insecure_algorithms = true
[connections.c]
remote_addrs = ["192.0.2.2"]
proposals = ["aes128-md5-modp2048"]
""")
    assert cfg.connections["c"].proposals[0].integrity == "md5"
    assert any("allow_insecure_algorithms" in w for w in config_warnings(cfg))


def test_secret_encodings() -> None:
    cfg = load("""
[secrets.hex]
secret = "0x00112233"
ids = ["192.0.2.2"]
[secrets.b64]
secret = "0sAAECAw=="
ids = ["192.0.2.3"]
""")
    assert cfg.secrets["hex"].value == b"\x00\x11\x22\x33"
    assert cfg.secrets["b64"].value == b"\x00\x01\x02\x03"


def test_aggressive_false_is_only_a_note() -> None:
    cfg = load(MINIMAL + "aggressive = false\n")
    assert any("aggressive" in w for w in config_warnings(cfg))


def test_version_1_is_accepted() -> None:
    load(MINIMAL + "version = 1\n")


@pytest.mark.parametrize("name", ["site-a.toml", "site-b.toml", "dynamic-peers.toml"])
def test_examples_load(name: str) -> None:
    cfg = load_config(EXAMPLES / name)
    assert cfg.connections


def test_site_examples_match_each_other() -> None:
    a = load_config(EXAMPLES / "site-a.toml").connections["site-b"]
    b = load_config(EXAMPLES / "site-b.toml").connections["site-a"]
    assert a.local_addrs == b.remote_addrs and a.remote_addrs == b.local_addrs
    assert a.local.id == b.remote.id and a.remote.id == b.local.id
    assert set(a.proposals) & set(b.proposals)
    assert a.children["net"].local_ts == b.children["net"].remote_ts
    assert a.children["net"].remote_ts == b.children["net"].local_ts
    assert set(a.children["net"].esp_proposals) & set(b.children["net"].esp_proposals)
    cfg_a = load_config(EXAMPLES / "site-a.toml")
    cfg_b = load_config(EXAMPLES / "site-b.toml")
    assert cfg_a.psk_for("192.0.2.1", "192.0.2.2") == cfg_b.psk_for("192.0.2.2", "192.0.2.1")
    # A checkout's file modes follow the umask: the examples may be world-readable here.
    for cfg in (cfg_a, cfg_b):
        assert [w for w in config_warnings(cfg) if "holds secrets" not in w] == []


# --- errors: FILE: KEY: reason ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[daemon]\nlisten = ['x']", "daemon.listen[0]", "not an IP address"),
        ("[daemon]\nlisten = []", "daemon.listen", "at least one"),
        ("[daemon]\nlisten = '0.0.0.0'", "daemon.listen", "expected a list"),
        ("[daemon]\nport = 0", "daemon.port", "out of range"),
        ("[daemon]\nport = '500'", "daemon.port", "expected an integer"),
        ("[daemon]\nport = true", "daemon.port", "expected an integer"),
        ("[daemon]\nport_nat_t = 500", "daemon.port_nat_t", "must differ"),
        ("[daemon]\ndataplane = 'xfrm'", "daemon.dataplane", "userspace | kernel | none"),
        ("[daemon]\ndataplane_workers = 3", "daemon.dataplane_workers", "out of range"),
        ("[daemon]\ndataplane_workers = 0", "daemon.dataplane_workers", "out of range"),
        ("[daemon]\ndataplane = 'kernel'\ndataplane_workers = 2", "daemon.dataplane_workers",
         'need dataplane = "userspace"'),
        ("[daemon]\ndataplane = 'none'\ndataplane_workers = 2", "daemon.dataplane_workers",
         'need dataplane = "userspace"'),
        ("[daemon]\ntun_offload = 'tso'\ndataplane_workers = 2", "daemon.dataplane_workers",
         'tun_offload = "tso"'),
        ("[daemon]\nretransmit_timeout = '2x'", "daemon.retransmit_timeout", "invalid duration"),
        ("[daemon]\nretransmit_timeout = '0s'", "daemon.retransmit_timeout", "longer than 0s"),
        ("[daemon]\nretransmit_tries = -1", "daemon.retransmit_tries", "out of range"),
        ("[daemon]\nhalf_open_per_peer = 0", "daemon.half_open_per_peer", "out of range"),
        ("[daemon]\nhalf_open_total = 0", "daemon.half_open_total", "out of range"),
        ("[daemon]\nfragment_size = 500", "daemon.fragment_size", "out of range"),
        ("[daemon]\nhalf_open_timeout = -5", "daemon.half_open_timeout", "non-negative"),
        ("[daemon]\nlog_level = 'loud'", "daemon.log_level", "debug | info"),
        ("[daemon]\nallow_insecure_algorithms = 1", "daemon.allow_insecure_algorithms",
         "true or false"),
        ("[daemon]\nlisten_addr = []", "daemon.listen_addr", "did you mean 'listen'"),
        ("daemon = 3", "daemon", "expected a table"),
        ("[deamon]", "deamon", "did you mean 'daemon'"),
        ("[connection.x]", "connection", "did you mean 'connections'"),
    ],
)
def test_daemon_and_top_level_errors(text: str, key: str, reason: str) -> None:
    message = error(text)
    assert message.startswith(f"test.toml: {key}: ")
    assert reason in message


C = "[connections.c]\nremote_addrs = ['192.0.2.2']\n"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[connections.c]\n", "connections.c.remote_addrs", "required"),
        ("[connections.c]\nremote_addrs = ['gw.example.org']", "connections.c.remote_addrs[0]",
         "host names are not resolved"),
        ("[connections.c]\nremote_addrs = ['%any', '192.0.2.2']", "connections.c.remote_addrs",
         "cannot be combined"),
        ("[connections.c]\nremote_addrs = ['10.0.0.1/8']", "connections.c.remote_addrs[0]",
         "did you mean '10.0.0.0/8'"),
        (C + "local_addrs = ['%any']", "connections.c.local_addrs[0]", "not an IP address"),
        (C + "proposals = ['aes128-sha1-modp2048', 'blowfish-sha1-modp2048']",
         "connections.c.proposals[1]",
         "unknown algorithm 'blowfish' in proposal 'blowfish-sha1-modp2048'"),
        (C + "proposals = ['aes128-sha1-modp768']", "connections.c.proposals[0]",
         "DH group 1"),
        (C + "proposals = ['aes128-md5-modp2048']", "connections.c.proposals[0]",
         "allow_insecure_algorithms"),
        (C + "proposals = ['aes128-sha256']", "connections.c.proposals[0]", "no DH group"),
        (C + "proposals = []", "connections.c.proposals", "must not be empty"),
        (C + "proposals = [1]", "connections.c.proposals[0]", "expected a string"),
        (C + "encap = 'yes'", "connections.c.encap", "true or false"),
        (C + "dpd_delay = '30 seconds'", "connections.c.dpd_delay", "invalid duration"),
        (C + "dpd_delay = '60s'\ndpd_timeout = '30s'", "connections.c.dpd_timeout",
         "longer than dpd_delay"),
        (C + "dpd_action = 'trap'", "connections.c.dpd_action", "clear | hold | restart"),
        (C + "rekey_time = '0s'", "connections.c.rekey_time", "longer than 0s"),
        (C + "reauth_time = 'soon'", "connections.c.reauth_time", "invalid duration"),
        (C + "start_action = 'route'", "connections.c.start_action", "none | start | trap"),
        (C + "fragmentation = 'maybe'", "connections.c.fragmentation", "yes | accept"),
        (C + "unique = 'yes'", "connections.c.unique", "no | never | replace | keep"),
        (C + "modecfg = 'both'", "connections.c.modecfg", "pull | push"),
        (C + "aggressive = true", "connections.c.aggressive", "Aggressive Mode is not supported"),
        (C + "version = 2", "connections.c.version", "IKEv1 only"),
        (C + "aggressive = 'no'", "connections.c.aggressive", "Aggressive Mode is not supported"),
        (C + "[connections.c.remote_xauth]\nauth = 'eap'", "connections.c.remote_xauth.auth",
         "expected xauth"),
        (C + "[connections.c.remote_xauth]\nxauth_id = ''", "connections.c.remote_xauth.xauth_id",
         "unknown key"),
        (C + "rekey = '1h'", "connections.c.rekey", "did you mean 'rekey_time'"),
        ("[connections.'bad name']\nremote_addrs = ['192.0.2.2']", "connections.bad name",
         "invalid name"),
        ("[connections.c]\nremote_addrs = ['%any']\nstart_action = 'start'",
         "connections.c.start_action", "cannot initiate"),
        ("[connections.c]\nremote_addrs = ['%any']\n[connections.c.children.x]\n"
         "start_action = 'start'", "connections.c.children.x.start_action", "cannot initiate"),
        ("[connections.c]\nremote_addrs = ['%any']\nstart_action = 'trap'",
         "connections.c.start_action", "cannot initiate"),
        ("[connections.c]\nremote_addrs = ['%any']\n[connections.c.children.x]\n"
         "start_action = 'trap'", "connections.c.children.x.start_action", "cannot initiate"),
    ],
)
def test_connection_errors(text: str, key: str, reason: str) -> None:
    message = error(text)
    assert message.startswith(f"test.toml: {key}: ")
    assert reason in message


L = C + "[connections.c.local]\n"
R = C + "[connections.c.remote]\n"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (L + "auth = 'eap'", "connections.c.local.auth", "psk | pubkey | rsa-encryption"),
        (L + "id = '%any'", "connections.c.local.id", "only allowed for the remote"),
        (L + "id = 'not valid!'", "connections.c.local.id", "not a valid identity"),
        (L + "id = 'me@'", "connections.c.local.id", "not a valid user FQDN"),
        (L + "id = 'C=DE, O'", "connections.c.local.id", "not KEY=VALUE"),
        (L + "id = 'XX=DE'", "connections.c.local.id", "invalid distinguished name"),
        (L + "cacerts = []", "connections.c.local.cacerts", "belongs in [connections.c.remote]"),
        (R + "private_key = 'k.pem'", "connections.c.remote.private_key",
         "belongs in [connections.c.local]"),
        (R + "idd = 'x'", "connections.c.remote.idd", "did you mean 'id'"),
        (R + "pubkey = 3", "connections.c.remote.pubkey", "expected a string"),
        ("[connections.c]\nremote_addrs = ['192.0.2.2']\nlocal = 'psk'", "connections.c.local",
         "expected a table"),
    ],
)
def test_auth_errors(text: str, key: str, reason: str) -> None:
    message = error(text)
    assert message.startswith(f"test.toml: {key}: ")
    assert reason in message


# Every value that asks for a feature that does not exist yet: (text, key).  The
# configuration reference must mark each of these keys "not implemented yet".
NOT_IMPLEMENTED = [
    (C + "reauth_time = '1h'", "connections.c.reauth_time"),
]


@pytest.mark.parametrize(("text", "key"), NOT_IMPLEMENTED)
def test_not_implemented_yet(text: str, key: str) -> None:
    message = error(text)
    assert message.startswith(f"test.toml: {key}: not implemented yet")


def test_trap_and_hold_load() -> None:
    config = parse_config(C + "dpd_action = 'hold'\nstart_action = 'trap'\n"
                          "[connections.c.children.x]\nstart_action = 'trap'\n")
    conn = config.connections["c"]
    assert conn.dpd_action is DpdAction.HOLD and conn.start_action is StartAction.TRAP
    assert conn.children["x"].start_action is StartAction.TRAP


def _rsa_files(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    for name, key in (("key.pem", rsa.generate_private_key(65537, 2048)),
                      ("ec.pem", ec.generate_private_key(ec.SECP256R1()))):
        (tmp_path / name).write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (tmp_path / f"pub-{name}").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.mark.parametrize("auth", ["rsa-encryption", "rsa-encryption-revised"])
def test_rsa_encryption_loads_with_our_key_and_the_peers(tmp_path: Path, auth: str) -> None:
    _rsa_files(tmp_path)
    text = (C + f"[connections.c.local]\nauth = '{auth}'\nprivate_key = 'key.pem'\n"
            f"[connections.c.remote]\nauth = '{auth}'\npubkey = 'pub-key.pem'\n")
    conn = parse_config(text, "t.toml", tmp_path).connections["c"]
    assert str(conn.local.auth) == auth and conn.remote.credentials.pubkey is not None


@pytest.mark.parametrize(("local", "remote", "key", "reason"), [
    ("private_key = 'key.pem'", "", "remote.pubkey", "needs the peer's public key"),
    ("", "pubkey = 'pub-key.pem'", "local.private_key", "needs our private key"),
    ("private_key = 'ec.pem'", "pubkey = 'pub-key.pem'", "local.private_key",
     "needs an RSA key"),
    ("private_key = 'key.pem'", "pubkey = 'pub-ec.pem'", "remote.pubkey", "needs an RSA key"),
])
def test_rsa_encryption_errors(tmp_path: Path, local: str, remote: str, key: str,
                               reason: str) -> None:
    _rsa_files(tmp_path)
    text = (C + f"[connections.c.local]\nauth = 'rsa-encryption'\n{local}\n"
            f"[connections.c.remote]\nauth = 'rsa-encryption'\n{remote}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.toml", tmp_path)
    assert str(info.value).startswith(f"t.toml: connections.c.{key}: "), str(info.value)
    assert reason in str(info.value)


def _ca_file(tmp_path: Path) -> None:
    from ikev1d_lab import pki
    (tmp_path / "ca.pem").write_bytes(pki.issue("CN=CA", ca=True).cert_pem())


def test_revised_rsa_encryption_verifies_the_initiators_certificate_with_cacerts(
        tmp_path: Path) -> None:
    """RFC 2409 section 5.3: the initiator may send its certificate in message 3,
    so the responder's remote side can name trust anchors instead of a key."""
    _rsa_files(tmp_path)
    _ca_file(tmp_path)
    auth = "rsa-encryption-revised"
    text = (C + f"[connections.c.local]\nauth = '{auth}'\nprivate_key = 'key.pem'\n"
            f"[connections.c.remote]\nauth = '{auth}'\ncacerts = ['ca.pem']\n")
    conn = parse_config(text, "t.toml", tmp_path).connections["c"]
    assert conn.remote.credentials.pubkey is None
    assert len(conn.remote.credentials.cacerts) == 1


@pytest.mark.parametrize(("remote", "key", "reason"), [
    ("cacerts = ['ca.pem']", "remote.pubkey",
     'only auth = "rsa-encryption-revised" can use cacerts'),
    ("pubkey = 'pub-key.pem'\ncacerts = ['ca.pem']", "remote.cacerts",
     "section 5.2 has no certificate payload in message 3"),
])
def test_rsa_encryption_section_5_2_refuses_cacerts(tmp_path: Path, remote: str, key: str,
                                                   reason: str) -> None:
    _rsa_files(tmp_path)
    _ca_file(tmp_path)
    text = (C + "[connections.c.local]\nauth = 'rsa-encryption'\nprivate_key = 'key.pem'\n"
            f"[connections.c.remote]\nauth = 'rsa-encryption'\n{remote}\n")
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.toml", tmp_path)
    assert str(info.value).startswith(f"t.toml: connections.c.{key}: "), str(info.value)
    assert reason in str(info.value)


def test_empty_and_default_values_of_features_not_implemented_yet_load() -> None:
    cfg = load("""
[daemon]
metrics = ""
keylog_dir = ""
[connections.c]
remote_addrs = ["192.0.2.2"]
vips = []
pools = []
modecfg = "pull"
dpd_action = "clear"
fragmentation = "no"
reauth_time = 0
[connections.c.local]
auth = "psk"
certs = []
private_key = ""
[connections.c.remote]
auth = "psk"
cacerts = []
crls = []
pubkey = " "
[connections.c.local_xauth]
xauth_id = ""
[connections.c.remote_xauth]
[secrets.s]
type = "ike"
secret = "a long random string, long enough"
ids = ["192.0.2.2"]
[pools]
""")
    conn = cfg.connections["c"]
    assert conn.fragmentation is Fragmentation.NO and conn.remote.pubkey is None
    assert cfg.pools == {}


CH = C + "[connections.c.children.x]\n"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (CH + "local_ts = ['10.1.0.1/24']", "connections.c.children.x.local_ts[0]",
         "host bits set; did you mean '10.1.0.0/24'"),
        (CH + "remote_ts = ['nowhere']", "connections.c.children.x.remote_ts[0]",
         "not a network"),
        (CH + "remote_ts = ['dynamic', '10.0.0.0/8']", "connections.c.children.x.remote_ts",
         "cannot be combined"),
        (CH + "esp_proposals = ['aes128']", "connections.c.children.x.esp_proposals[0]",
         "no integrity algorithm"),
        (CH + "esp_proposals = ['aes128gcm16', 'aes128gcm16-sha1']",
         "connections.c.children.x.esp_proposals[1]", "remove 'sha1'"),
        (CH + "mode = 'beet'", "connections.c.children.x.mode", "tunnel | transport"),
        (CH + "rekey_time = '-1h'", "connections.c.children.x.rekey_time", "invalid duration"),
        (CH + "life_bytes = -1", "connections.c.children.x.life_bytes", "out of range"),
        (CH + "lifetime = '1h'", "connections.c.children.x.lifetime", "unknown key"),
        (C + "[connections.c.children.'a b']", "connections.c.children.a b", "invalid name"),
        (C + "children = 1", "connections.c.children", "expected a table"),
    ],
)
def test_child_errors(text: str, key: str, reason: str) -> None:
    message = error(text)
    assert message.startswith(f"test.toml: {key}: ")
    assert reason in message


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[secrets.s]\nids = ['%any']", "secrets.s.secret", "required"),
        ("[secrets.s]\nsecret = ''\nids = ['%any']", "secrets.s.secret", "must not be empty"),
        ("[secrets.s]\nsecret = '0xzz'\nids = ['%any']", "secrets.s.secret", "encoding"),
        ("[secrets.s]\nsecret = 'long enough secret here'", "secrets.s.ids", "required"),
        ("[secrets.s]\nsecret = 'x'\nids = ['a b']", "secrets.s.ids[0]", "not a valid"),
        ("[secrets.s]\nsecret = 'x'\nid = ['%any']", "secrets.s.id", "did you mean 'ids'"),
        ("[secrets.s]\ntype = 'eap'\nsecret = 'x'\nids = ['%any']", "secrets.s.type",
         "ike | xauth"),
        ("pools = 1", "pools", "expected a table"),
    ],
)
def test_secret_and_pool_errors(text: str, key: str, reason: str) -> None:
    message = error(text)
    assert message.startswith(f"test.toml: {key}: ")
    assert reason in message


def test_toml_syntax_error() -> None:
    message = error("[daemon\n")
    assert message.startswith("test.toml: not valid TOML: ")
    assert "line 1" in message


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value).startswith(f"{missing}: cannot read")
    bad = tmp_path / "ikev1d.toml"
    bad.write_text(C + "proposals = ['aes128-sha1-modp2048', 'blowfish-sha1-modp2048']\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == (
        f"{bad}: connections.c.proposals[1]: unknown algorithm 'blowfish' in proposal "
        "'blowfish-sha1-modp2048'"
    )
    assert (info.value.source, info.value.key) == (str(bad), "connections.c.proposals[1]")


# --- warnings --------------------------------------------------------------------


def test_any_psk_warning() -> None:
    cfg = load("""
[connections.rw]
remote_addrs = ["%any"]
dpd_action = "clear"
[connections.rw.children.x]
local_ts = ["10.0.0.0/8"]
remote_ts = ["10.9.0.0/16"]
[secrets.any]
secret = "a shared secret that is long"
ids = ["%any"]
""")
    warnings = config_warnings(cfg)
    shared = [w for w in warnings if "share one pre-shared key" in w]
    assert len(shared) == 1
    assert shared[0].startswith("test.toml: connections.rw, secrets.any: ")
    assert "security risk" in shared[0]
    assert "certificate" in shared[0]


def test_any_secret_alone_also_warns() -> None:
    cfg = load("""
[secrets.any]
secret = "a shared secret that is long"
ids = ["%any"]
""")
    assert any("share one pre-shared key" in w for w in config_warnings(cfg))


def test_no_any_psk_warning_for_static_peers() -> None:
    cfg = load(FULL.replace("remote_addrs = [\"%any\"]", "remote_addrs = [\"192.0.2.3\"]"))
    assert not cfg.connections["dyn"].dynamic_peer
    assert not any("share one pre-shared key" in w for w in config_warnings(cfg))


def test_weak_short_psk_and_other_warnings() -> None:
    cfg = load("""
[connections.c]
remote_addrs = ["192.0.2.2"]
proposals = ["3des-sha1-modp1024"]
rekey_time = "1h"
[connections.c.children.x]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
esp_proposals = ["3des-sha1"]
rekey_time = "2h"
[connections.d]
remote_addrs = ["192.0.2.3"]
[secrets.c]
secret = "short"
ids = ["192.0.2.2"]
""")
    warnings = config_warnings(cfg)
    text = "\n".join(warnings)
    assert "test.toml: connections.c.proposals: 3des-sha1-modp1024: 3des" in text
    assert "modp1024" in text
    assert "test.toml: connections.c.children.x.esp_proposals: 3des-sha1: 3des" in text
    assert "test.toml: secrets.c.secret: the pre-shared key is only 5 characters" in text
    assert "test.toml: connections.d: auth = \"psk\" but no [secrets.*] entry" in text
    assert "test.toml: connections.d.children: no children" in text
    assert "test.toml: connections.c.children.x.rekey_time: Phase 2 lifetime" in text
    assert not any("connections.c: auth" in w for w in warnings)


def test_dynamic_peer_warnings() -> None:
    cfg = load("""
[connections.a]
remote_addrs = ["%any"]
proposals = ["aes256-sha256-modp2048"]
[connections.b]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-ecp256"]
dpd_action = "clear"
[connections.c]
remote_addrs = ["%any"]
proposals = ["aes256-sha256-modp2048"]
dpd_action = "hold"
""")
    text = "\n".join(config_warnings(cfg))
    assert "test.toml: connections.a.dpd_action: \"restart\" cannot re-initiate" in text
    assert "test.toml: connections.c.dpd_action: \"hold\" cannot re-initiate" in text
    assert "different proposals" in text
    assert "connections.b.dpd_action" not in text


def test_prf_note_reaches_warnings() -> None:
    cfg = load(C + "proposals = ['aes128-sha256-prfsha256-modp2048']\n")
    assert any("prfsha256" in w and "ignored" in w for w in config_warnings(cfg))


# --- lookups ------------------------------------------------------------------------

LOOKUP = """
[connections.any-a]
remote_addrs = ["%any"]
proposals = ["aes256-sha256-modp2048"]
dpd_action = "clear"
[connections.static]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
proposals = ["aes128-sha1-modp2048"]
[connections.subnet]
remote_addrs = ["198.51.100.0/24"]
[connections.static-any-local]
remote_addrs = ["192.0.2.2"]
[connections.other-local]
local_addrs = ["192.0.2.9"]
remote_addrs = ["192.0.2.2"]
[connections.any-b]
remote_addrs = ["%any"]
proposals = ["aes128-sha256-ecp256", "aes256-sha256-modp2048"]
dpd_action = "clear"
[connections.named]
remote_addrs = ["203.0.113.7"]
[connections.named.remote]
id = "branch.example.org"
[secrets.static]
secret = "static secret, long enough"
ids = ["192.0.2.2"]
[secrets.any]
secret = "shared secret for everyone"
ids = ["%any"]
[secrets.static-with-local]
secret = "static secret with our id listed"
ids = ["192.0.2.2", "gw-a.example.org"]
[secrets.branch]
secret = "branch secret, long enough!"
ids = ["Branch.Example.org"]
"""


def names(conns: list[ConnectionConfig]) -> list[str]:
    return [c.name for c in conns]


def test_connections_for_addresses() -> None:
    cfg = load(LOOKUP)
    assert names(cfg.connections_for_addresses("192.0.2.1", "192.0.2.2")) == [
        "static", "static-any-local", "any-a", "any-b",
    ]
    assert names(cfg.connections_for_addresses("192.0.2.5", "192.0.2.2")) == [
        "static-any-local", "any-a", "any-b",
    ]
    assert names(cfg.connections_for_addresses("192.0.2.1", "198.51.100.9")) == [
        "subnet", "any-a", "any-b",
    ]
    assert names(cfg.connections_for_addresses("192.0.2.1", "192.0.2.99")) == ["any-a", "any-b"]
    assert names(cfg.connections_for_addresses("2001:db8::1", "2001:db8::2")) == [
        "any-a", "any-b",
    ]
    assert cfg.connections_for_addresses("not-an-ip", "192.0.2.2") == []


def test_responder_candidates_name_the_very_address_if_any_do() -> None:
    cfg = load(LOOKUP)
    assert names(cfg.responder_candidates("192.0.2.1", "192.0.2.2")) == [
        "static", "static-any-local",
    ]
    assert names(cfg.responder_candidates("192.0.2.1", "198.51.100.9")) == [
        "subnet", "any-a", "any-b",
    ]
    assert names(cfg.responder_candidates("192.0.2.1", "192.0.2.99")) == ["any-a", "any-b"]
    assert cfg.responder_candidates("192.0.2.1", "not-an-ip") == []
    # However the configuration spells it.
    v6 = load("[connections.c]\nremote_addrs = ['2001:DB8::0:2']\n"
              "[connections.d]\nremote_addrs = ['%any']\n")
    assert names(v6.responder_candidates("2001:db8::1", "2001:db8::2")) == ["c"]


def test_dynamic_peer_proposals_are_the_union() -> None:
    cfg = load(LOOKUP)
    assert [p.render() for p in cfg.dynamic_peer_proposals()] == [
        "aes256-sha256-modp2048", "aes128-sha256-ecp256",
    ]


def test_psk_for() -> None:
    cfg = load(LOOKUP)
    # by peer address; the secret that also lists our ID wins a tie
    assert cfg.psk_for(None, "192.0.2.2") == b"static secret, long enough"
    assert cfg.psk_for("gw-a.example.org", "192.0.2.2") == b"static secret with our id listed"
    # unknown peer: the %any secret
    assert cfg.psk_for(None, "192.0.2.77") == b"shared secret for everyone"
    # the address selects exactly one connection, whose remote ID a secret lists
    assert cfg.psk_for(None, "203.0.113.7") == b"branch secret, long enough!"
    # by ID, case-insensitively for FQDNs
    assert cfg.psk_for(None, "branch.example.ORG") == b"branch secret, long enough!"


def test_psk_for_without_any_secret() -> None:
    cfg = load(C + "[secrets.s]\nsecret = 'a secret of some length'\nids = ['192.0.2.2']\n")
    assert cfg.psk_for(None, "192.0.2.2") == b"a secret of some length"
    assert cfg.psk_for(None, "192.0.2.3") is None
    assert cfg.psk_for(None, "::ffff:192.0.2.3") is None


def test_psk_for_normalizes_ipv6() -> None:
    cfg = load("[secrets.s]\nsecret = 'a secret of some length'\nids = ['2001:DB8::0:2']\n")
    assert cfg.psk_for(None, "2001:db8::2") == b"a secret of some length"


# --- identities and durations -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "shown"),
    [
        ("192.0.2.1", IdKind.IPV4_ADDR, "192.0.2.1"),
        ("2001:DB8::1", IdKind.IPV6_ADDR, "2001:db8::1"),
        ("gw.example.org", IdKind.FQDN, "gw.example.org"),
        ("@gw", IdKind.FQDN, "gw"),  # the @ forces an FQDN, as in strongSwan
        ("@192.0.2.1", IdKind.FQDN, "@192.0.2.1"),
        ("me@example.org", IdKind.USER_FQDN, "me@example.org"),
        ("C=DE, O=X, CN=gw", IdKind.DN, "C=DE, O=X, CN=gw"),
        ("c=DE,o=X,  cn=gw", IdKind.DN, "C=DE, O=X, CN=gw"),
        ("C=DE, O=X\\, Inc., E=gw@x.org", IdKind.DN, "C=DE, O=X\\, Inc., E=gw@x.org"),
        ("@#0102ff", IdKind.KEY_ID, "@#0102ff"),
        ("keyid:0102FF", IdKind.KEY_ID, "@#0102ff"),
        ("%any", IdKind.ANY, "%any"),
    ],
)
def test_identity_parse(text: str, kind: IdKind, shown: str) -> None:
    identity = Identity.parse(text)
    assert identity.kind is kind
    assert str(identity) == shown
    assert Identity.parse(shown) == identity  # what is shown reads back


@pytest.mark.parametrize(
    "text", ["", "a b", "-gw.example.org", "me@", "@", "CN=", "C=DE, O", "XX=DE", "@#zz",
             "m\u00e9@example.org"],
)
def test_identity_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Identity.parse(text)


def test_identity_equality_ignores_fqdn_case_and_trailing_dot() -> None:
    assert Identity.parse("GW.Example.org.") == Identity.parse("@gw.example.org")
    assert Identity.parse("Me@Example.org") == Identity.parse("me@example.org")
    assert Identity.parse("gw.example.org") != Identity.parse("me@gw.example.org")
    assert Identity.parse("2001:db8::0:1") == Identity.parse("2001:DB8::1")
    assert len({Identity.parse("a.example"), Identity.parse("A.EXAMPLE")}) == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("30m", 1800.0), ("4h", 14400.0), ("1d", 86400.0), ("45", 45.0),
     (120, 120.0), ("1.5h", 5400.0), (" 2 m ", 120.0), ("0s", 0.0)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "4 hours", "-1s", "1w", True, -3, [1], "nan"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(14400.0, "4h"), (90.0, "90s"), (1800.0, "30m"), (86400.0, "1d"), (1.5, "1.5s"),
     (0.0, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


# The complete sample configuration (every key, with the comments a swanctl user
# reads), verbatim.
FULL_SAMPLE = """
[daemon]
listen = ["0.0.0.0"]          # addresses for UDP 500 and 4500
port = 500
port_nat_t = 4500
dataplane = "userspace"       # userspace (TUN + ESP in ikev1d) | kernel (Linux XFRM) | none
retransmit_timeout = "2s"     # first retransmission; backs off exponentially
retransmit_tries = 5
metrics = ""                  # "127.0.0.1:9616": Prometheus /metrics (off when empty)
keylog_dir = ""               # Wireshark ikev1_decryption_table + esp_sa files (off when empty)

[connections.site-b]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]  # ["%any"] for peers with dynamic addresses
proposals = ["aes256-sha256-modp2048", "aes128-sha1-modp2048"]  # strongSwan syntax, preference order
encap = false                 # force UDP encapsulation even without NAT
dpd_delay = "30s"             # 0 disables DPD
dpd_timeout = "150s"
dpd_action = "restart"        # clear | hold | restart
rekey_time = "4h"             # Phase 1 lifetime offered; rekeyed before it ends
start_action = "none"         # none | start (initiate when loaded)
vips = []                     # Mode Config client: ["0.0.0.0"] requests an address
pools = []                    # Mode Config server: names of [pools.*]
modecfg = "pull"              # pull | push
fragmentation = "yes"         # IKE fragmentation: yes | accept | force | no

[connections.site-b.local]
auth = "psk"                  # psk | pubkey | rsa-encryption-revised | rsa-encryption
id = "192.0.2.1"              # IP, FQDN ("gw.example.org"), user FQDN ("me@example.org"), DN ("C=DE, O=X, CN=gw")
certs = []                    # PEM files, for pubkey
private_key = ""              # PEM file, for pubkey / rsa-encryption

[connections.site-b.remote]
auth = "psk"
id = "192.0.2.2"              # "%any" accepts any ID that authenticates
cacerts = []                  # trust anchors for the peer's certificate
crls = []                     # revocation lists (PEM or DER) for the chain
pubkey = ""                   # peer's public key / certificate (pinned; rsa-encryption needs it)

[connections.site-b.remote_xauth]   # optional second round (swanctl's remote-2): XAUTH server
auth = "xauth"
# client side: [connections.X.local_xauth] auth = "xauth", xauth_id = "alice";
# XAUTH passwords: [secrets.NAME] type = "xauth", ids = ["alice"], secret = "..."

[connections.site-b.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
esp_proposals = ["aes128gcm16-modp2048", "aes128-sha256"]  # a DH group means PFS
mode = "tunnel"               # tunnel | transport
rekey_time = "1h"
life_bytes = 0                # 0: no volume limit
start_action = "none"         # none | start

[secrets.site-b]
type = "ike"                  # ike (pre-shared key, the default) | xauth (a user's password)
secret = "a long random string"
ids = ["192.0.2.2"]           # peer IDs or addresses it is for; "%any" for dynamic peers

[pools.clients]
addrs = "10.3.0.0/24"
dns = ["10.3.0.1"]
split_include = ["10.2.0.0/16"]
"""  # noqa: E501  (long comment lines, kept verbatim)


# Its two parts that ask for features that do not exist yet.
SAMPLE_XAUTH = """
[connections.site-b.remote_xauth]   # optional second round (swanctl's remote-2): XAUTH server
auth = "xauth"
# client side: [connections.X.local_xauth] auth = "xauth", xauth_id = "alice";
# XAUTH passwords: [secrets.NAME] type = "xauth", ids = ["alice"], secret = "..."
"""
SAMPLE_POOL = """
[pools.clients]
addrs = "10.3.0.0/24"
dns = ["10.3.0.1"]
split_include = ["10.2.0.0/16"]
"""


def test_sample_loads() -> None:
    cfg = load(FULL_SAMPLE)
    conn = cfg.connections["site-b"]
    assert conn.remote_xauth is not None and conn.local_xauth is None
    pool = cfg.pools["clients"]
    assert (str(pool.first), str(pool.last), pool.size) == ("10.3.0.1", "10.3.0.254", 254)
    assert [str(a) for a in pool.dns] == ["10.3.0.1"]
    assert any("every XAUTH login will fail" in w for w in config_warnings(cfg))
    conn = load(FULL_SAMPLE.replace(SAMPLE_POOL.strip(), "").replace(
        SAMPLE_XAUTH.strip(), "")).connections["site-b"]
    assert conn.remote_xauth is None
    assert [p.render() for p in conn.proposals] == [
        "aes256-sha256-modp2048", "aes128-sha1-modp2048",
    ]
    assert conn.local.private_key is None and conn.remote.pubkey is None
    assert conn.fragmentation is Fragmentation.YES and conn.dpd_action is DpdAction.RESTART
    assert conn.children["net"].esp_proposals[0].pfs
    assert cfg.psk_for("192.0.2.1", "192.0.2.2") == b"a long random string"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("127.0.0.1:9616", ("127.0.0.1", 9616)),
        (" [::1]:9100 ", ("::1", 9100)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_metrics_listener(value: str, expected: tuple[str, int] | None) -> None:
    assert load(f"[daemon]\nmetrics = {value!r}").daemon.metrics == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("127.0.0.1", "is not ADDRESS:PORT"),
        ("127.0.0.1:", "is not ADDRESS:PORT"),
        (":9616", "is not ADDRESS:PORT"),
        ("localhost:9616", "is not an IP address"),
        ("::1:9616", "in brackets"),
        ("127.0.0.1:0", "not in 1-65535"),
        ("127.0.0.1:70000", "not in 1-65535"),
        ("127.0.0.1:96x6", "is not ADDRESS:PORT"),
    ],
)
def test_metrics_listener_errors(value: str, reason: str) -> None:
    message = error(f"[daemon]\nmetrics = {value!r}")
    assert message.startswith("test.toml: daemon.metrics: "), message
    assert reason in message
    assert "metrics = 9616" not in message
    assert "expected a string" in error("[daemon]\nmetrics = 9616")


def test_metrics_off_loopback_is_warned_about() -> None:
    assert not config_warnings(load("[daemon]\nmetrics = '127.0.0.1:9616'"))
    assert not config_warnings(load("[daemon]\nmetrics = '[::1]:9616'"))
    (warning,) = config_warnings(load("[daemon]\nmetrics = '0.0.0.0:9616'"))
    assert warning.startswith("test.toml: daemon.metrics: /metrics on 0.0.0.0 is reachable")


# --- certificates ---------------------------------------------------------------------


def _pubkey_files(tmp_path: Path, *, key: str = "rsa", **kw: Any) -> Any:
    from ikev1d_lab import pki
    ca = pki.issue("C=CH, O=Test, CN=Root", ca=True)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    gw = pki.issue("C=CH, O=Test, CN=gw", ca, key=key, sans=("dns:gw.example.org",), **kw)
    gw.write(tmp_path, "gw")
    return ca, gw


def _pubkey_conf(local: str = "", remote: str = "") -> str:
    return (C + "[connections.c.local]\nauth = 'pubkey'\ncerts = ['gw.cert.pem']\n"
            "private_key = 'gw.key.pem'\n" + local
            + "[connections.c.remote]\nauth = 'pubkey'\ncacerts = ['ca.pem']\n" + remote)


def test_pubkey_loads_relative_files_and_defaults_the_id_to_the_subject(tmp_path: Path) -> None:
    _pubkey_files(tmp_path, key="p256")
    cfg = parse_config(_pubkey_conf(), "t.toml", tmp_path)
    local = cfg.connections["c"].local
    assert local.certs == (str(tmp_path / "gw.cert.pem"),)
    assert str(local.id) == "C=CH, O=Test, CN=gw"
    assert local.credentials.private_key is not None
    assert len(cfg.connections["c"].remote.credentials.cacerts) == 1
    cfg = parse_config(_pubkey_conf("id = 'gw.example.org'\n"), "t.toml", tmp_path)
    assert str(cfg.connections["c"].local.id) == "gw.example.org"


@pytest.mark.parametrize(("local", "remote", "key", "reason"), [
    ("id = 'other.example.org'\n", "", "connections.c.local.id",
     "neither the subject nor a subjectAltName"),
    ("", "crls = ['gw.cert.pem']\n", "connections.c.remote.crls", "not a CRL"),
    ("", "pubkey = 'gw.key.pem'\n", "connections.c.remote.pubkey",
     "not a certificate or public key"),
])
def test_pubkey_file_errors(tmp_path: Path, local: str, remote: str, key: str,
                            reason: str) -> None:
    _pubkey_files(tmp_path)
    with pytest.raises(ConfigError) as info:
        parse_config(_pubkey_conf(local, remote), "t.toml", tmp_path)
    assert str(info.value).startswith(f"t.toml: {key}: ")
    assert reason in str(info.value)


def test_private_key_must_match_the_certificate(tmp_path: Path) -> None:
    from ikev1d_lab import pki
    _pubkey_files(tmp_path)
    other = pki.issue("CN=other")
    (tmp_path / "gw.key.pem").write_bytes(other.key_pem())
    with pytest.raises(ConfigError) as info:
        parse_config(_pubkey_conf(), "t.toml", tmp_path)
    assert "connections.c.local.private_key" in str(info.value)
    assert "does not match the certificate" in str(info.value)


def test_expiring_certificate_is_a_warning(tmp_path: Path) -> None:
    import datetime as dt
    now = dt.datetime.now(dt.UTC)
    _pubkey_files(tmp_path, not_after=now + dt.timedelta(days=5))
    cfg = parse_config(_pubkey_conf(), "t.toml", tmp_path)
    warnings = config_warnings(cfg)
    assert any("connections.c.local.certs" in w and "expires on" in w for w in warnings)
    later = config_warnings(cfg, now + dt.timedelta(days=10))
    assert any("expired on" in w for w in later)


def test_encrypted_private_key_with_its_passphrase_from_secrets(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    _, gw = _pubkey_files(tmp_path)
    (tmp_path / "gw.key.pem").write_bytes(gw.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"key passphrase")))
    secret = "[secrets.gwkey]\ntype = 'private_key'\nsecret = '{}'\nfiles = ['gw.key.pem']\n"
    cfg = parse_config(_pubkey_conf() + secret.format("key passphrase"), "t.toml", tmp_path)
    assert cfg.connections["c"].local.credentials.private_key is not None
    assert not any("secrets.gwkey" in w for w in config_warnings(cfg))
    with pytest.raises(ConfigError) as info:
        parse_config(_pubkey_conf(), "t.toml", tmp_path)
    assert "connections.c.local.private_key" in str(info.value)
    assert 'type = "private_key"' in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config(_pubkey_conf() + secret.format("wrong"), "t.toml", tmp_path)
    assert "wrong passphrase?" in str(info.value)


def test_traps_without_a_data_plane_warn() -> None:
    text = "[daemon]\ndataplane = \"{}\"\n" + C + "dpd_action = 'hold'\n"
    assert "trap policies" in "\n".join(config_warnings(parse_config(text.format("none"))))
    assert "trap policies" not in "\n".join(
        config_warnings(parse_config(text.format("userspace"))))
# -- road warriors: pools, vips, XAUTH -------------------------------------------------

RW = """
[connections.rw]
local_addrs = ["192.0.2.1"]
remote_addrs = ["%any"]
pools = ["clients"]
modecfg = "push"
[connections.rw.remote]
id = "%any"
[connections.rw.remote_xauth]
auth = "xauth"
[connections.rw.children.net]
local_ts = ["10.2.0.0/16"]
[pools.clients]
addrs = "10.3.0.10-10.3.0.12"
dns = ["10.2.0.53"]
split_include = ["10.2.0.0/16"]
[secrets.alice]
type = "xauth"
ids = ["alice"]
secret = "alice's password"
[connections.home]
remote_addrs = ["192.0.2.1"]
vips = ["0.0.0.0"]
[connections.home.local_xauth]
auth = "xauth"
xauth_id = "alice"
"""


def test_road_warrior_keys_load() -> None:
    cfg = load(RW)
    rw, home = cfg.connections["rw"], cfg.connections["home"]
    assert rw.pools == ("clients",) and rw.modecfg is ModeCfg.PUSH
    assert rw.remote_xauth is not None and rw.local_xauth is None
    assert home.vips == ("0.0.0.0",) and home.local_xauth is not None
    assert home.local_xauth.xauth_id == "alice"
    pool = cfg.pools["clients"]
    assert (str(pool.first), str(pool.last), pool.size, pool.prefix) == (
        "10.3.0.10", "10.3.0.12", 3, 32)
    assert cfg.xauth_secret("alice") == b"alice's password"
    assert cfg.xauth_secret("bob") is None
    # An XAUTH password is never a pre-shared key.
    assert cfg.psk_for("192.0.2.1", "alice") is None


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (RW.replace('pools = ["clients"]', 'pools = ["client"]'), "connections.rw.pools[0]",
         "did you mean 'clients'"),
        (RW.replace('"10.3.0.10-10.3.0.12"', '"10.3.0.12-10.3.0.10"'), "pools.clients.addrs",
         "ends before it starts"),
        (RW.replace('"10.3.0.10-10.3.0.12"', '"10.3.0.0/31"'), "pools.clients.addrs",
         "no addresses to hand out"),
        (RW.replace('"10.3.0.10-10.3.0.12"', '"10.3.0.1/24"'), "pools.clients.addrs",
         "host bits set"),
        (RW.replace('"10.3.0.10-10.3.0.12"', '"10.3.0.10-2001:db8::1"'), "pools.clients.addrs",
         "mixes IPv4 and IPv6"),
        (RW.replace('xauth_id = "alice"', 'xauth_id = "carol"'),
         "connections.home.local_xauth.xauth_id", "no [secrets] of type"),
        (RW.replace('xauth_id = "alice"', ""), "connections.home.local_xauth.xauth_id",
         "required"),
        (RW.replace('[connections.home]\nremote_addrs = ["192.0.2.1"]\nvips = ["0.0.0.0"]',
                    '[connections.home]\nremote_addrs = ["192.0.2.1"]\nvips = ["x"]'),
         "connections.home.vips[0]", "not an IP address"),
        (RW.replace('vips = ["0.0.0.0"]', 'vips = ["0.0.0.0"]\npools = ["clients"]'),
         "connections.home.pools", "either a Mode Config client"),
    ],
)
def test_road_warrior_errors(text: str, key: str, reason: str) -> None:
    message = error(text)
    assert message.startswith(f"test.toml: {key}: "), message
    assert reason in message


def test_a_24_pool_hands_out_neither_network_nor_broadcast_address() -> None:
    pool = load(RW.replace('"10.3.0.10-10.3.0.12"', '"10.3.0.0/24"')).pools["clients"]
    assert (str(pool.first), str(pool.last), pool.prefix) == ("10.3.0.1", "10.3.0.254", 24)


def test_road_warrior_warnings() -> None:
    push_alone = (C + "modecfg = 'push'\n[secrets.s]\n"
                  "secret = 'a long random string, long enough'\nids = ['192.0.2.2']\n")
    assert any("modecfg: \"push\" has no effect" in w for w in config_warnings(load(push_alone)))
    fixed = RW.replace('local_ts = ["10.2.0.0/16"]',
                       'local_ts = ["10.2.0.0/16"]\nremote_ts = ["10.9.0.0/16"]')
    assert any("no tunnel uses the leased address" in w for w in config_warnings(load(fixed)))
    assert not any("leased address" in w for w in config_warnings(load(RW)))


def test_xauth_secret_the_first_secret_naming_the_user_among_many() -> None:
    users = "".join(
        f'\n[secrets.u{i}]\ntype = "xauth"\nids = ["user{i}", "alias{i % 3}"]\n'
        f'secret = "pw{i}"\n'
        for i in range(300)
    )
    cfg = load(RW + users)
    assert cfg.xauth_secret("user299") == b"pw299"
    assert cfg.xauth_secret("alias2") == b"pw2"  # file order: u2 names it first
    assert cfg.xauth_secret("alice") == b"alice's password"
    assert cfg.xauth_secret("user300") is None
    assert cfg.xauth_secret("pw1") is None  # a password is not a user name
