"""Warnings for what loads but deserves a look: files holding secrets that other
users may read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ikev1d.config import config_warnings, load_config

WITH_SECRET = """
[connections.c]
remote_addrs = ["192.0.2.2"]

[secrets.c]
secret = "a long random string, long enough"
ids = ["192.0.2.2"]
"""


def _write(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "ikev1d.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(("mode", "who"), [
    (0o644, "group and world"), (0o640, "group"), (0o604, "world"),
])
def test_readable_file_with_secrets_is_flagged(tmp_path: Path, mode: int, who: str) -> None:
    path = _write(tmp_path, WITH_SECRET, mode)
    flagged = [w for w in config_warnings(load_config(path)) if "holds secrets" in w]
    assert flagged == [f"{path}: secrets: {path} holds secrets and is readable by {who}; "
                       f"chmod go-rwx {path}"]


def test_private_file_with_secrets_and_readable_file_without_are_fine(tmp_path: Path) -> None:
    path = _write(tmp_path, WITH_SECRET, 0o600)
    assert not [w for w in config_warnings(load_config(path)) if "holds secrets" in w]
    path = _write(tmp_path, WITH_SECRET.split("[secrets.c]")[0], 0o644)
    assert not [w for w in config_warnings(load_config(path)) if "holds secrets" in w]


def test_readable_private_key_is_flagged(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, 2048)
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    pub_path = tmp_path / "peer.pem"
    pub_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    os.chmod(key_path, 0o644)
    text = f"""
[connections.c]
remote_addrs = ["192.0.2.2"]
[connections.c.local]
auth = "rsa-encryption-revised"
id = "gw.example.org"
private_key = "{key_path}"
[connections.c.remote]
auth = "rsa-encryption-revised"
pubkey = "{pub_path}"
"""
    path = _write(tmp_path, text, 0o600)
    flagged = [w for w in config_warnings(load_config(path)) if "holds secrets" in w]
    assert flagged == [f"{path}: connections.c.local.private_key: {key_path} holds secrets "
                       f"and is readable by group and world; chmod go-rwx {key_path}"]


@pytest.mark.parametrize(("extra", "warned"), [
    ('start_action = "start"\ndpd_action = "clear"', True),
    ('dpd_action = "clear"', False),
])
def test_revised_rsa_encryption_responder_without_pubkey_cannot_initiate(
        tmp_path: Path, extra: str, warned: bool) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ikev1d_lab import pki

    key = rsa.generate_private_key(65537, 2048)
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    (tmp_path / "ca.pem").write_bytes(pki.issue("CN=CA", ca=True).cert_pem())
    text = f"""
[connections.c]
remote_addrs = ["192.0.2.2"]
{extra}
[connections.c.local]
auth = "rsa-encryption-revised"
id = "gw.example.org"
private_key = "{key_path}"
[connections.c.remote]
auth = "rsa-encryption-revised"
cacerts = ["{tmp_path / 'ca.pem'}"]
"""
    path = _write(tmp_path, text, 0o600)
    flagged = [w for w in config_warnings(load_config(path)) if "can only respond" in w]
    assert flagged == ([f"{path}: connections.c.remote.pubkey: not set, so with auth = "
                        "\"rsa-encryption-revised\" this connection can only respond (cacerts "
                        "verify the initiator's certificate); it cannot start, trap or restart"]
                       if warned else [])
