"""Signature authentication (RFC 2409 section 5.1, RFC 4754): two engines in memory
with certificates made by the test (ikev1d_lab.pki).

This proves ikev1d agrees with itself and refuses what it must;
tests/interop/test_pubkey_strongswan.py checks the same against strongSwan.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import random
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from ikev1d.cli import format_status
from ikev1d.config import ConfigError, Identity, SecretConfig, SecretType, XauthRound, parse_config
from ikev1d.config.model import Config
from ikev1d.crypto.certs import dn_text
from ikev1d.engine import Engine
from ikev1d.engine.api import ChildSaEstablished, IkeSaEstablished
from ikev1d.engine.auth.pubkey import RsaSignatureAuthenticator
from ikev1d.wire import (
    AuthMethod,
    CertEncoding,
    CertPayload,
    CrPayload,
    ExchangeType,
    Payload,
    decode_message,
    split_message,
)
from ikev1d_lab import pki
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, Net, Peer

DAY = datetime.timedelta(days=1)


def conf(folder: Path, *, local_id: str | None, remote_id: str, certs: list[str],
         key: str, cacerts: list[str], crls: tuple[str, ...] = (), pubkey: str | None = None,
         local: str, remote: str, local_ts: str, remote_ts: str) -> str:
    def files(names: list[str]) -> str:
        return "[" + ", ".join(f'"{n}"' for n in names) + "]"
    lines = [
        "[daemon]", 'dataplane = "none"', 'retransmit_timeout = "1s"', "retransmit_tries = 2",
        "[connections.gw]", f'local_addrs = ["{local}"]', f'remote_addrs = ["{remote}"]',
        'proposals = ["aes128-sha256-modp2048"]',
        "[connections.gw.local]", 'auth = "pubkey"',
        f"certs = {files(certs)}", f'private_key = "{key}"',
        "[connections.gw.remote]", 'auth = "pubkey"', f'id = "{remote_id}"',
        f"cacerts = {files(cacerts)}", f"crls = {files(list(crls))}",
        "[connections.gw.children.net]", f'local_ts = ["{local_ts}"]',
        f'remote_ts = ["{remote_ts}"]', 'esp_proposals = ["aes128gcm16"]',
    ]
    if local_id is not None:
        lines.insert(lines.index('auth = "pubkey"') + 1, f'id = "{local_id}"')
    if pubkey is not None:
        lines.insert(lines.index("[connections.gw.children.net]"), f'pubkey = "{pubkey}"')
    (folder / "ikev1d.toml").write_text("\n".join(lines) + "\n")
    return str(folder / "ikev1d.toml")


@dataclasses.dataclass
class Pki:
    folder: Path
    ca: pki.Issued

    def issue(self, stem: str, subject: str, issuer: pki.Issued | None = None,
              **kw: Any) -> tuple[pki.Issued, str, str]:
        issued = pki.issue(subject, issuer or self.ca, **kw)
        cert, key = issued.write(self.folder, stem)
        return issued, str(cert), str(key)


@pytest.fixture
def ca(tmp_path: Path) -> Pki:
    authority = pki.issue("C=CH, O=Test, CN=Test Root CA", ca=True)
    (tmp_path / "ca.cert.pem").write_bytes(authority.cert_pem())
    return Pki(tmp_path, authority)


def load(path: str) -> Config:
    return parse_config(Path(path).read_text(), path, Path(path).parent)


def net_of(a: Config, b: Config) -> Net:
    rng = random.Random(3)
    clock = time.time
    return Net(Peer(Engine(a, random_bytes=rng.randbytes, wall_clock=clock), A_ADDR),
               Peer(Engine(b, random_bytes=rng.randbytes, wall_clock=clock), B_ADDR))


def pair(ca: Pki, *, key: str = "rsa", a_id: str | None = None, b_id: str | None = None,
         a_sans: tuple[str, ...] = (), b_sans: tuple[str, ...] = (),
         b_cacerts: list[str] | None = None, b_crls: tuple[str, ...] = (),
         a_extra: tuple[str, ...] = (), a_cert_kw: dict[str, Any] | None = None
         ) -> tuple[Config, Config, pki.Issued, pki.Issued]:
    """A initiates to B; both have certificates from ``ca``."""
    a, a_cert, a_key = ca.issue("a", "C=CH, O=Test, CN=gw-a", key=key, sans=a_sans,
                                **(a_cert_kw or {}))
    b, b_cert, b_key = ca.issue("b", "C=CH, O=Test, CN=gw-b", key=key, sans=b_sans)
    a_dir, b_dir = ca.folder / "A", ca.folder / "B"
    a_dir.mkdir(exist_ok=True)
    b_dir.mkdir(exist_ok=True)
    cacert = str(ca.folder / "ca.cert.pem")
    a_cfg = conf(a_dir, local_id=a_id, remote_id=b_id or b.subject,
                 certs=[a_cert, *a_extra], key=a_key, cacerts=[cacert], local=A_ADDR,
                 remote=B_ADDR, local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24")
    b_cfg = conf(b_dir, local_id=b_id, remote_id=a_id or a.subject, certs=[b_cert],
                 key=b_key, cacerts=b_cacerts or [cacert], crls=b_crls, local=B_ADDR,
                 remote=A_ADDR, local_ts="10.2.0.0/24", remote_ts="10.1.0.0/24")
    return load(a_cfg), load(b_cfg), a, b


def run(net: Net) -> Net:
    net.a.engine.initiate("gw", None, net.now)
    net.pump()
    return net


def established(net: Net) -> bool:
    return bool(net.a.of(IkeSaEstablished)) and bool(net.b.of(IkeSaEstablished))


def nothing_established(net: Net) -> bool:
    return not net.a.of(IkeSaEstablished) and not net.b.of(IkeSaEstablished) \
        and not net.a.of(ChildSaEstablished) and not net.b.of(ChildSaEstablished)


@pytest.mark.parametrize(("key", "method"), [
    ("rsa", AuthMethod.RSA_SIG),
    ("p256", AuthMethod.ECDSA_256),
    ("p384", AuthMethod.ECDSA_384),
])
def test_signatures_with_dn_identities_establish(ca: Pki, key: str, method: int) -> None:
    a_cfg, b_cfg, _, _ = pair(ca, key=key)
    net = run(net_of(a_cfg, b_cfg))
    assert established(net)
    assert net.a.of(ChildSaEstablished) and net.b.of(ChildSaEstablished)
    statuses = [sa for sa in net.a.engine.status(net.now).ike_sas]
    assert statuses[0].auth == ("pubkey-rsa" if key == "rsa" else "pubkey-ecdsa")
    assert statuses[0].remote_id == "C=CH, O=Test, CN=gw-b"
    # The peer's certificate subject, in the JSON and the table.
    assert statuses[0].remote_cert == "C=CH, O=Test, CN=gw-b"
    assert statuses[0].to_json()["remote_cert"] == "C=CH, O=Test, CN=gw-b"
    assert '  peer certificate "C=CH, O=Test, CN=gw-b"' in format_status(
        net.a.engine.status(net.now)).splitlines()
    # Messages 3 and 4 carry a CR naming the CA; 5 and 6 are encrypted.
    for number in (3, 4):
        message = decode_message(net.wire[number - 1][1].data)
        (request,) = [p for p in message.payloads if isinstance(p, CrPayload)]
        assert request.data == ca.ca.cert.subject.public_bytes()
    for number in (5, 6):
        header, _ = split_message(net.wire[number - 1][1].data)
        assert header.flags & 1
    assert net.a.engine.status(net.now).ike_sas[0].auth == {
        int(AuthMethod.RSA_SIG): "pubkey-rsa", int(AuthMethod.ECDSA_256): "pubkey-ecdsa",
        int(AuthMethod.ECDSA_384): "pubkey-ecdsa"}[method]


def test_fqdn_identities_from_subject_alt_names(ca: Pki) -> None:
    a_cfg, b_cfg, _, _ = pair(ca, key="p256", a_id="gw-a.example.org",
                              b_id="gw-b.example.org", a_sans=("dns:gw-a.example.org",),
                              b_sans=("dns:gw-b.example.org",))
    net = run(net_of(a_cfg, b_cfg))
    assert established(net)
    assert net.b.engine.status(net.now).ike_sas[0].remote_id == "gw-a.example.org"


def test_chain_with_intermediate_sent_as_cert(ca: Pki) -> None:
    intermediate, inter_cert, _ = ca.issue("inter", "C=CH, O=Test, CN=Intermediate CA",
                                           ca=True)
    _, a_cert, a_key = ca.issue("a2", "C=CH, O=Test, CN=gw-a", issuer=intermediate)
    a_cfg, b_cfg, _, _ = pair(ca)
    # A's certificate now comes from the intermediate, which A sends along.
    local = dataclasses.replace(
        a_cfg.connections["gw"].local,
        credentials=load(conf(ca.folder / "A", local_id=None, remote_id="x", certs=[
            a_cert, inter_cert], key=a_key, cacerts=[str(ca.folder / "ca.cert.pem")],
            local=A_ADDR, remote=B_ADDR, local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24"))
        .connections["gw"].local.credentials,
    )
    a_cfg = replace_local(a_cfg, local)
    assert len(local.credentials.certs) == 2
    net = run(net_of(a_cfg, b_cfg))
    assert established(net)


def replace_local(cfg: Config, local: object) -> Config:
    conn = dataclasses.replace(cfg.connections["gw"], local=local)  # type: ignore[arg-type]
    return dataclasses.replace(cfg, connections={"gw": conn})


def refused(net: Net, caplog: pytest.LogCaptureFixture, text: str) -> None:
    assert nothing_established(net)
    failures = [r.getMessage() for r in caplog.records if "Main Mode failed" in r.getMessage()]
    assert any(text in f for f in failures), failures


def test_certificate_of_unknown_ca_is_refused(ca: Pki, caplog: pytest.LogCaptureFixture) -> None:
    other = pki.issue("C=CH, O=Evil, CN=Evil CA", ca=True)
    (ca.folder / "evil.pem").write_bytes(other.cert_pem())
    a_cfg, b_cfg, _, _ = pair(ca, b_cacerts=[str(ca.folder / "evil.pem")])
    with caplog.at_level(logging.INFO):
        net = run(net_of(a_cfg, b_cfg))
    refused(net, caplog, 'authentication failed: certificate "C=CH, O=Test, CN=gw-a" not '
                         'trusted (issuer "C=CH, O=Test, CN=Test Root CA" unknown)')
    # The responder told the initiator why, encrypted under the Phase 1 keys.
    refused(net, caplog, "authentication failed: peer sent INVALID-CERT-AUTHORITY")
    header, _ = split_message(next(d for src, d in reversed(net.wire) if src == B_ADDR).data)
    assert header.exchange_type == ExchangeType.INFORMATIONAL and header.flags & 1


def test_revoked_certificate_is_refused(ca: Pki, caplog: pytest.LogCaptureFixture) -> None:
    crl_path = ca.folder / "ca.crl.der"
    crl_path.write_bytes(pki.crl(ca.ca, ()).public_bytes(serialization.Encoding.DER))
    a_cfg, b_cfg, a, _ = pair(ca, b_crls=(str(crl_path),))
    assert establish_ok(a_cfg, b_cfg)
    crl_path.write_bytes(
        pki.crl(ca.ca, (a.cert.serial_number,)).public_bytes(serialization.Encoding.DER))
    b_cfg = load(b_cfg.source)  # as a reload re-reads the CRL
    with caplog.at_level(logging.INFO):
        net = run(net_of(a_cfg, b_cfg))
    refused(net, caplog, 'certificate "C=CH, O=Test, CN=gw-a" revoked on')
    refused(net, caplog, "(keyCompromise)")


def establish_ok(a_cfg: Config, b_cfg: Config) -> bool:
    return established(run(net_of(a_cfg, b_cfg)))


def test_expired_certificate_is_refused(ca: Pki, caplog: pytest.LogCaptureFixture) -> None:
    now = datetime.datetime.now(datetime.UTC)
    a_cfg, b_cfg, _, _ = pair(ca, a_cert_kw={"not_before": now - 10 * DAY,
                                             "not_after": now - DAY})
    with caplog.at_level(logging.INFO):
        net = run(net_of(a_cfg, b_cfg))
    refused(net, caplog, 'certificate "C=CH, O=Test, CN=gw-a" expired on')


def test_id_not_in_certificate_is_refused(ca: Pki, caplog: pytest.LogCaptureFixture) -> None:
    a_cfg, b_cfg, _, _ = pair(ca, a_id="gw-a.example.org", a_sans=("dns:gw-a.example.org",))
    # A claims an identity its certificate does not hold (the loader refuses that
    # for our own configuration, so the test edits the loaded one).
    claimed = Identity.parse("C=CH, O=Test, CN=someone-else")
    a_cfg = replace_local(a_cfg, dataclasses.replace(a_cfg.connections["gw"].local, id=claimed))
    b_conn = b_cfg.connections["gw"]
    b_cfg = dataclasses.replace(b_cfg, connections={"gw": dataclasses.replace(
        b_conn, remote=dataclasses.replace(b_conn.remote, id=Identity.parse("%any")))})
    with caplog.at_level(logging.INFO):
        net = run(net_of(a_cfg, b_cfg))
    refused(net, caplog, 'ID "C=CH, O=Test, CN=someone-else" not in certificate '
                         '"C=CH, O=Test, CN=gw-a"')


def test_wrong_private_key_fails_the_signature(ca: Pki, caplog: pytest.LogCaptureFixture) -> None:
    a_cfg, b_cfg, _, _ = pair(ca)
    local = a_cfg.connections["gw"].local
    wrong = dataclasses.replace(local.credentials, private_key=pki.new_key("rsa"))
    a_cfg = replace_local(a_cfg, dataclasses.replace(local, credentials=wrong))
    with caplog.at_level(logging.INFO):
        net = run(net_of(a_cfg, b_cfg))
    refused(net, caplog, 'signature of HASH_I by "C=CH, O=Test, CN=gw-a" does not verify')
    refused(net, caplog, "authentication failed: peer sent AUTHENTICATION-FAILED")


def test_pinned_certificate_without_a_ca(ca: Pki) -> None:
    a_cfg, b_cfg, a, _ = pair(ca)
    b_conn = b_cfg.connections["gw"]
    pinned = dataclasses.replace(b_conn.remote.credentials, cacerts=(), pubkey=a.key.public_key(),
                                 pinned_cert=a.cert)
    b_cfg = dataclasses.replace(b_cfg, connections={"gw": dataclasses.replace(
        b_conn, remote=dataclasses.replace(b_conn.remote, credentials=pinned))})
    net = run(net_of(a_cfg, b_cfg))
    assert established(net)
    # No CERT came: the pinned certificate names the peer.
    assert net.b.engine.status(net.now).ike_sas[0].remote_cert == dn_text(a.cert.subject)


def test_pinned_certificate_must_name_the_peer(ca: Pki,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A sends no certificate and signs with the pinned key, but the pinned
    certificate (for the same key) names someone else: A's ID is refused."""
    a_cfg, b_cfg, a, _ = pair(ca)
    a_local = a_cfg.connections["gw"].local
    a_cfg = replace_local(a_cfg, dataclasses.replace(
        a_local, credentials=dataclasses.replace(a_local.credentials, certs=())))
    other = pki.issue("C=CH, O=Test, CN=someone else", ca.ca, private_key=a.key)
    b_conn = b_cfg.connections["gw"]
    pinned = dataclasses.replace(b_conn.remote.credentials, cacerts=(), pubkey=a.key.public_key(),
                                 pinned_cert=other.cert)
    b_cfg = dataclasses.replace(b_cfg, connections={"gw": dataclasses.replace(
        b_conn, remote=dataclasses.replace(b_conn.remote, credentials=pinned))})
    with caplog.at_level(logging.INFO):
        net = run(net_of(a_cfg, b_cfg))
    refused(net, caplog, 'ID "C=CH, O=Test, CN=gw-a" not in the pinned certificate '
                         '"C=CH, O=Test, CN=someone else"')


def test_psk_responder_refuses_a_signature_proposal(ca: Pki) -> None:
    from tests.unit.engine.test_engine import config_text
    a_cfg, _, _, _ = pair(ca)
    b_cfg = parse_config(config_text(B_ADDR, A_ADDR, "10.2.0.0/24", "10.1.0.0/24"))
    net = run(net_of(a_cfg, b_cfg))
    assert nothing_established(net)
    assert any("NO_PROPOSAL_CHOSEN" in str(e) or "NO-PROPOSAL-CHOSEN" in str(e)
               for e in net.a.events)


def test_any_responder_asks_for_every_ca_and_picks_the_matching_connection(
    ca: Pki, tmp_path: Path
) -> None:
    # B serves %any peers with two connections, each trusting another CA; A's
    # certificate comes from the second CA.
    second = pki.issue("C=CH, O=Test, CN=Second CA", ca=True)
    (tmp_path / "second.pem").write_bytes(second.cert_pem())
    a, a_cert, a_key = ca.issue("a", "C=CH, O=Test, CN=gw-a", issuer=second)
    b, b_cert, b_key = ca.issue("b", "C=CH, O=Test, CN=gw-b")
    (tmp_path / "A").mkdir()
    a_cfg = load(conf(tmp_path / "A", local_id=None, remote_id=b.subject, certs=[a_cert], key=a_key,
                      cacerts=[str(tmp_path / "ca.cert.pem")], local=A_ADDR, remote=B_ADDR,
                      local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24"))
    b_text = "\n".join([
        "[daemon]", 'dataplane = "none"',
        *[line for name, cacert in (("first", "ca.cert.pem"), ("second", "second.pem"))
          for line in (
              f"[connections.{name}]", 'remote_addrs = ["%any"]',
              'proposals = ["aes128-sha256-modp2048"]',
              f"[connections.{name}.local]", 'auth = "pubkey"', f'certs = ["{b_cert}"]',
              f'private_key = "{b_key}"',
              f"[connections.{name}.remote]", 'auth = "pubkey"', 'id = "%any"',
              f'cacerts = ["{tmp_path / cacert}"]',
              f"[connections.{name}.children.net]", 'local_ts = ["10.2.0.0/24"]',
              'remote_ts = ["10.1.0.0/24"]', 'esp_proposals = ["aes128gcm16"]')],
    ])
    b_cfg = parse_config(b_text, "b.toml", tmp_path)
    net = run(net_of(a_cfg, b_cfg))
    assert established(net)
    (ike,) = net.b.engine.status(net.now).ike_sas
    assert ike.name == "second" and ike.remote_id == a.subject
    # Message 4 asked for certificates of both CAs.
    message_4 = decode_message(net.wire[3][1].data)
    requested = {p.data for p in message_4.payloads if isinstance(p, CrPayload)}
    assert requested == {ca.ca.cert.subject.public_bytes(), second.cert.subject.public_bytes()}


def test_reload_rereads_the_crl_and_keeps_the_established_sa(
    ca: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    crl_path = ca.folder / "ca.crl.pem"
    crl_path.write_bytes(pki.crl(ca.ca, ()).public_bytes(serialization.Encoding.PEM))
    a_cfg, b_cfg, a, _ = pair(ca, b_crls=(str(crl_path),))
    net = run(net_of(a_cfg, b_cfg))
    assert established(net)
    crl_path.write_bytes(
        pki.crl(ca.ca, (a.cert.serial_number,)).public_bytes(serialization.Encoding.PEM))
    net.b.engine.reload(load(b_cfg.source), net.now)
    assert len(net.b.engine.status(net.now).ike_sas) == 1
    # A new Main Mode is checked against the CRL as re-read.
    net.a.engine.terminate("gw", net.now)
    net.pump()
    with caplog.at_level(logging.INFO):
        net.a.engine.initiate("gw", None, net.now)
        net.pump()
    failures = [r.getMessage() for r in caplog.records if "Main Mode failed" in r.getMessage()]
    assert any("revoked on" in f for f in failures), failures


@pytest.mark.parametrize("garbage", [b"", b"\x30\x03\x02\x01\x01", b"not a certificate"])
def test_malformed_certificate_is_refused_without_a_traceback(
    ca: Pki, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, garbage: bytes
) -> None:
    original = RsaSignatureAuthenticator.proof_payloads

    def with_garbage(self: RsaSignatureAuthenticator) -> list[Payload]:
        own, *rest = original(self)
        return [own, CertPayload(CertEncoding.X509_SIG, garbage), *rest]

    monkeypatch.setattr(RsaSignatureAuthenticator, "proof_payloads", with_garbage)
    a_cfg, b_cfg, _, _ = pair(ca)
    with caplog.at_level(logging.INFO):
        net = run(net_of(a_cfg, b_cfg))
    refused(net, caplog, "authentication failed: the peer sent a malformed certificate")
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(("a_id", "san"), [
    (A_ADDR, f"ip:{A_ADDR}"),
    ("gw-a@example.org", "email:gw-a@example.org"),
])
def test_address_and_user_fqdn_identities_from_subject_alt_names(
    ca: Pki, a_id: str, san: str
) -> None:
    a_cfg, b_cfg, _, _ = pair(ca, key="p256", a_id=a_id, a_sans=(san,))
    net = run(net_of(a_cfg, b_cfg))
    assert established(net)
    assert net.b.engine.status(net.now).ike_sas[0].remote_id == a_id


def test_xauth_after_rsa_signatures_uses_65005(ca: Pki) -> None:
    a_cfg, b_cfg, _, _ = pair(ca, key="rsa")
    password = SecretConfig("alice", "her password", (Identity.parse("alice"),),
                            SecretType.XAUTH)

    def with_round(cfg: Config, client: bool) -> Config:
        conn = cfg.connections["gw"]
        if client:
            conn = dataclasses.replace(conn, local_xauth=XauthRound("alice"))
        else:
            conn = dataclasses.replace(conn, remote_xauth=XauthRound())
        return dataclasses.replace(cfg, connections={"gw": conn},
                                   secrets={**cfg.secrets, "alice": password})

    net = run(net_of(with_round(a_cfg, True), with_round(b_cfg, False)))
    assert established(net) and net.a.of(ChildSaEstablished)
    for peer in (net.a, net.b):
        (sa,) = peer.engine.all_sas()
        assert sa.auth_method == AuthMethod.XAUTH_INIT_RSA and sa.xauth_user == "alice"


def test_xauth_is_refused_with_ecdsa_keys(ca: Pki) -> None:
    a_cfg, _, _, _ = pair(ca, key="p256")
    path = Path(a_cfg.source)
    text = path.read_text() + '[connections.gw.local_xauth]\nauth = "xauth"\nxauth_id = "a"\n'
    with pytest.raises(ConfigError, match="with an RSA key"):
        parse_config(text, str(path), path.parent)
