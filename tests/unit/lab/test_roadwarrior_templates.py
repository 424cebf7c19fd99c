"""The road-warrior templates of the lab: strongSwan as Mode Config/XAUTH server and
client (swanctl.conf), ikev1d as client and server (TOML, read by the real loader)."""

from __future__ import annotations

import ipaddress

from ikev1d.config import parse_config
from ikev1d.config.model import ModeCfg, SecretType
from ikev1d_lab.daemon import roadwarrior_client_toml, roadwarrior_server_toml
from ikev1d_lab.strongswan import (
    ROADWARRIOR_LOAD,
    roadwarrior_client_conf,
    roadwarrior_server_conf,
    strongswan_conf,
)

P1, P2 = ["aes128-sha256-modp2048"], ["aes128gcm16"]


def _block(text: str, start: str) -> str:
    """The lines of the ``start { ... }`` block (one level of braces)."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() == f"{start} {{")
    depth, out = 0, []
    for line in lines[first:]:
        depth += line.count("{") - line.count("}")
        out.append(line.strip())
        if depth == 0:
            break
    return "\n".join(out)


def test_strongswan_server_pull_with_xauth() -> None:
    text = roadwarrior_server_conf(
        "rw", "192.0.2.2", "gw.example.org", "group key", P1, P2, "10.2.0.0/16",
        addrs="10.3.0.0/24", dns=["10.2.0.53"], split_include=["10.2.0.0/16"],
        xauth_users={"alice": "alice's password", "bob": "b"})
    assert "remote_addrs = %any" in text and "pools = rw" in text and "pull = no" not in text
    assert "remote-2 {\n      auth = xauth\n    }" in text
    child = _block(text, "net")
    assert "local_ts = 10.2.0.0/16" in child and "remote_ts" not in child
    pool = _block(text, "pools")
    assert "addrs = 10.3.0.0/24" in pool and "dns = 10.2.0.53" in pool
    assert "split_include = 10.2.0.0/16" in pool
    secrets = _block(text, "secrets")
    assert secrets.count("id = ") == 2 and "id = alice" in secrets
    assert "0x" + b"alice's password".hex() in secrets
    assert "xauth-generic" in ROADWARRIOR_LOAD
    assert "xauth-generic" in strongswan_conf(__import__("pathlib").Path("/w"),
                                              load=ROADWARRIOR_LOAD)


def test_strongswan_server_push_without_xauth() -> None:
    text = roadwarrior_server_conf("rw", "192.0.2.2", "gw", "k", P1, P2, ["10.2.0.0/16"],
                                   push=True)
    assert "    pull = no" in text and "remote-2" not in text and "xauth-" not in text


def test_strongswan_client_with_xauth_and_push() -> None:
    text = roadwarrior_client_conf("home", "192.0.2.1", "192.0.2.2", "192.0.2.1", "gw",
                                   "k", P1, P2, "10.2.0.0/16", push=True, xauth_id="alice",
                                   xauth_password="pw")
    assert "vips = 0.0.0.0" in text and "pull = no" in text
    assert "local-2 {\n      auth = xauth\n      xauth_id = alice\n    }" in text
    child = _block(text, "net")
    assert "remote_ts = 10.2.0.0/16" in child and "local_ts" not in child
    assert "xauth-client {\n    id = alice" in text
    plain = roadwarrior_client_conf("home", "192.0.2.1", "192.0.2.2", "192.0.2.1", "gw",
                                    "k", P1, P2, "10.2.0.0/16")
    assert "pull = no" not in plain and "local-2" not in plain


def test_ikev1d_client_loads_with_vips_and_xauth() -> None:
    text = roadwarrior_client_toml("home", "192.0.2.1", "192.0.2.2", "192.0.2.1",
                                   "gw.example.org", "group key", P1, P2, "10.2.0.0/16",
                                   modecfg="push", xauth_id="alice", xauth_password="pw")
    config = parse_config(text)
    conn = config.connections["home"]
    assert conn.vips == ("0.0.0.0",)
    assert conn.modecfg is ModeCfg.PUSH
    assert conn.local_xauth is not None and conn.local_xauth.xauth_id == "alice"
    assert config.xauth_secret("alice") == b"pw"
    assert conn.children["net"].remote_ts == (ipaddress.ip_network("10.2.0.0/16"),)
    plain = parse_config(roadwarrior_client_toml(
        "home", "192.0.2.1", "192.0.2.2", "192.0.2.1", "gw", "k" * 24, P1, P2, "10.2.0.0/16"))
    assert plain.connections["home"].local_xauth is None


def test_ikev1d_server_loads_with_pool_and_users() -> None:
    text = roadwarrior_server_toml("rw", "192.0.2.1", "gw.example.org", "group key", P1, P2,
                                   "10.2.0.0/16", dns=["10.2.0.53"],
                                   split_include=["10.2.0.0/16"],
                                   xauth_users={"alice": "a", "bob": "b"})
    config = parse_config(text)
    conn = config.connections["rw"]
    assert conn.pools == ("rw",) and conn.remote_xauth is not None
    assert str(config.pools["rw"].first) == "10.3.0.1"
    assert {s.name for s in config.secrets.values() if s.type is SecretType.XAUTH} == {
        "rw-user0", "rw-user1"}
