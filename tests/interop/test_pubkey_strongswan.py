"""Signature authentication with X.509 certificates against a real strongSwan.

Both roles, RSA with DN identities and ECDSA P-256 with FQDN identities held in
subjectAltName; a certificate from a CA the other side does not trust is
refused in both directions. Certificates are made by the test (ikev1d_lab.pki).
Each successful exchange is captured and tshark must dissect it, decrypted with
the key ikev1d logs at debug level, with our CERT and SIG payloads in messages
5/6 and nothing malformed.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from ikev1d_lab import pki
from ikev1d_lab.capture import isakmp_decryption_table, tshark_json
from ikev1d_lab.daemon import Ikev1dDaemon
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, swanctl_conf

from .conftest import CaptureFactory, CharonFactory

pytestmark = pytest.mark.interop

PROPOSAL = "aes128-sha256-modp2048"
ESP = "aes128-sha256"
A_DN, B_DN = "C=CH, O=ikev1d, CN=gw-a", "C=CH, O=ikev1d, CN=gw-b"
A_FQDN, B_FQDN = "gw-a.example.org", "gw-b.example.org"


@dataclass
class Certs:
    ca: pki.Issued
    evil: pki.Issued
    a: dict[str, pki.Issued]
    b: dict[str, pki.Issued]


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca = pki.issue("C=CH, O=ikev1d, CN=Interop Root CA", ca=True)
    evil = pki.issue("C=CH, O=Evil, CN=Evil CA", ca=True)
    keys = ("rsa", "p256", "p384")
    a = {k: pki.issue(A_DN, ca, key=k, sans=(f"dns:{A_FQDN}",)) for k in keys}
    b = {k: pki.issue(B_DN, ca, key=k, sans=(f"dns:{B_FQDN}",)) for k in keys}
    a["untrusted"] = pki.issue(A_DN, evil, sans=(f"dns:{A_FQDN}",))
    return Certs(ca, evil, a, b)


def ikev1d_toml(topo: Topology, folder: Path, ours: pki.Issued, ca: pki.Issued,
                local_id: str, remote_id: str, *, chain: tuple[pki.Issued, ...] = (),
                dataplane: str = "none", pinned: pki.Issued | None = None,
                revoked: tuple[int, ...] = ()) -> str:
    ours.write(folder, "a")
    (folder / "ca.cert.pem").write_bytes(ca.cert_pem())
    certs = ["a.cert.pem"]
    for index, intermediate in enumerate(chain):
        (folder / f"chain{index}.pem").write_bytes(intermediate.cert_pem())
        certs.append(f"chain{index}.pem")
    trust = 'cacerts = ["ca.cert.pem"]'
    if revoked:
        (folder / "ca.crl.der").write_bytes(
            pki.crl(ca, revoked).public_bytes(serialization.Encoding.DER))
        trust += '\ncrls = ["ca.crl.der"]'
    if pinned is not None:
        (folder / "peer.cert.pem").write_bytes(pinned.cert_pem())
        trust = 'pubkey = "peer.cert.pem"'
    return f"""\
[daemon]
listen = ["{topo.addr_a}"]
dataplane = "{dataplane}"
retransmit_timeout = "1s"
retransmit_tries = 3

[connections.gw]
local_addrs = ["{topo.addr_a}"]
remote_addrs = ["{topo.addr_b}"]
proposals = ["{PROPOSAL}"]

[connections.gw.local]
auth = "pubkey"
id = {json.dumps(local_id)}
certs = {json.dumps(certs)}
private_key = "a.key.pem"

[connections.gw.remote]
auth = "pubkey"
id = {json.dumps(remote_id)}
{trust}

[connections.gw.children.net]
local_ts = ["{topo.inner_net_a}"]
remote_ts = ["{topo.inner_net_b}"]
esp_proposals = ["{ESP}"]
"""


@dataclass
class Pair:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon


@pytest.fixture
def make_pair(two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path
              ) -> Iterator[Any]:
    started: list[Ikev1dDaemon] = []

    def make(ours: pki.Issued, theirs: pki.Issued, *, our_ca: pki.Issued,
             their_ca: pki.Issued, ids: tuple[str, str], our_chain: tuple[pki.Issued, ...] = (),
             their_chain: tuple[pki.Issued, ...] = (), dataplane: str = "none",
             pinned: bool = False, revoked: tuple[int, ...] = ()) -> Pair:
        topo = two_hosts
        our_id, their_id = ids
        folder = tmp_path / "ikev1d"
        daemon = Ikev1dDaemon(topo.a, folder, ikev1d_toml(
            topo, folder, ours, our_ca, our_id, their_id, chain=our_chain,
            dataplane=dataplane, pinned=theirs if pinned else None, revoked=revoked))
        started.append(daemon)
        daemon.start()
        charon = charon_factory(topo.b, "b")
        work = charon.work_dir
        for sub in ("x509", "x509ca", "private"):
            (work / sub).mkdir(exist_ok=True)
        (work / "x509" / "b.pem").write_bytes(theirs.cert_pem())
        (work / "private" / "b.pem").write_bytes(theirs.key_pem())
        (work / "x509ca" / "ca.pem").write_bytes(their_ca.cert_pem())
        for index, intermediate in enumerate(their_chain):
            # Intermediates in x509/ are sent along, not trusted as anchors.
            (work / "x509" / f"chain{index}.pem").write_bytes(intermediate.cert_pem())
        charon.load_config(swanctl_conf(
            "gw", topo.addr_b, topo.addr_a, their_id, our_id, "", [PROPOSAL], [ESP],
            topo.inner_net_b, topo.inner_net_a, auth="pubkey", certs=["b.pem"],
            cacerts=["ca.pem"]))
        return Pair(topo, daemon, charon)

    yield make
    for daemon in started:
        code = daemon.stop()
        assert code == 0, daemon.log_text()[-3000:]


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _values(packet: dict[str, Any], field: str) -> list[str]:
    found: list[str] = []
    for key, value in _walk(packet["_source"]["layers"]):
        if key == field:
            found += value if isinstance(value, list) else [value]
    return found


def _check_dissection(pair: Pair, pcap: Path, auth_method: str) -> None:
    match = re.search(r"CKY-I ([0-9a-f]{16}) .* Ka ([0-9a-f]+)", pair.ours.log_text())
    assert match, "ikev1d logs the Phase 1 key at debug level"
    packets = tshark_json(pcap, [*isakmp_decryption_table({match[1]: match[2]})])
    for packet in packets:
        layers = packet["_source"]["layers"]
        assert "isakmp" in layers
        assert "_ws.malformed" not in str(layers), layers
    ours = [p for p in packets if p["_source"]["layers"]["ip"]["ip.src"] == pair.topo.addr_a]
    payloads = [t for p in ours for t in _values(p, "isakmp.typepayload")]
    # Our CR (7) in message 3 or 4, then ID (5), CERT (6) and SIG (9) decrypted in 5 or 6.
    for payload_type in ("7", "5", "6", "9"):
        assert payload_type in payloads, payloads
    methods = [v for p in packets for v in _values(p, "isakmp.ike.attr.authentication_method")]
    assert auth_method in methods, methods
    cert_types = [v for p in ours for v in _values(p, "isakmp.cert.encoding")]
    assert "4" in cert_types, cert_types  # X.509 Certificate - Signature
    # tshark reads our certificate (its x509 dissector) and our DN identity.
    assert any("x509af.subject" in str(p) or "x509if" in str(p) for p in ours)
    assert [v for p in ours for v in _values(p, "isakmp.sig")]


def _their_sa(pair: Pair) -> dict[str, Any]:
    (theirs,) = pair.theirs.list_sas()
    assert theirs["state"] == "ESTABLISHED"
    (child,) = theirs["children"]
    assert child["state"] == "INSTALLED"
    return theirs


CASES = [
    # (key, identities (ours, theirs), tshark's auth method value)
    pytest.param("rsa", (A_DN, B_DN), "3", id="rsa-dn"),
    pytest.param("p256", (A_FQDN, B_FQDN), "9", id="ecdsa-p256-fqdn"),
    pytest.param("p384", (A_DN, B_FQDN), "10", id="ecdsa-p384"),
]


@pytest.mark.parametrize(("key", "ids", "method"), CASES)
@pytest.mark.parametrize("we_initiate", [True, False], ids=["ikev1d-initiates",
                                                            "strongswan-initiates"])
def test_certificates_establish(make_pair: Any, capture_factory: CaptureFactory,
                                certs: Certs, key: str, ids: tuple[str, str], method: str,
                                we_initiate: bool) -> None:
    pair = make_pair(certs.a[key], certs.b[key], our_ca=certs.ca, their_ca=certs.ca, ids=ids)
    cap = capture_factory(pair.topo.a, pair.topo.if_a, "udp port 500 or udp port 4500")
    if we_initiate:
        result = pair.ours.up("gw")
        assert result.returncode == 0, result.stdout + result.stderr + pair.ours.log_text()
    else:
        ok, out = pair.theirs.initiate("net", "gw")
        assert ok, out + pair.ours.log_text()[-3000:]
    pcap = cap.stop()
    (ike,) = pair.ours.status()["ike_sas"]
    assert ike["state"] == "ESTABLISHED"
    assert ike["auth"] == ("pubkey-rsa" if key == "rsa" else "pubkey-ecdsa")
    assert ike["remote_id"] == ids[1]
    theirs = _their_sa(pair)
    assert theirs["remote-id"] == ids[0]
    log = pair.ours.log_text()
    name = {"rsa": "RSA", "p256": "ECDSA P-256", "p384": "ECDSA P-384"}[key]
    assert f'authenticated by {name} signature ' \
        f'("{B_DN}" <- "{certs.ca.subject}")' in log
    # strongSwan checked our chain against its CA.
    assert f'using trusted ca certificate "{certs.ca.subject}"' in pair.theirs.log_text()
    _check_dissection(pair, pcap, method)


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ikev1d-initiates",
                                                            "strongswan-initiates"])
def test_chains_through_an_intermediate_carry_traffic(make_pair: Any, certs: Certs,
                                                      we_initiate: bool) -> None:
    # Both end entities come from an intermediate CA that each side sends along;
    # each side trusts only the root.
    intermediate = pki.issue("C=CH, O=ikev1d, CN=Interop Intermediate CA", certs.ca, ca=True)
    ours = pki.issue(A_DN, intermediate)
    theirs = pki.issue(B_DN, intermediate)
    pair = make_pair(ours, theirs, our_ca=certs.ca, their_ca=certs.ca, ids=(A_DN, B_DN),
                     our_chain=(intermediate,), their_chain=(intermediate,),
                     dataplane="userspace")
    if we_initiate:
        result = pair.ours.up("gw")
        assert result.returncode == 0, result.stdout + result.stderr + pair.ours.log_text()
    else:
        ok, out = pair.theirs.initiate("net", "gw")
        assert ok, out + pair.ours.log_text()[-3000:]
    _their_sa(pair)
    assert ping(pair.topo.a, pair.topo.inner_addr_b, count=3) == (3, 3)
    their_log = pair.theirs.log_text()
    assert f'using certificate "{A_DN}"' in their_log
    assert f'using trusted intermediate ca certificate "{intermediate.subject}"' in their_log
    assert f'using trusted ca certificate "{certs.ca.subject}"' in their_log
    assert (f'authenticated by RSA signature ("{B_DN}" <- "{intermediate.subject}" <- '
            f'"{certs.ca.subject}")') in pair.ours.log_text()


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ikev1d-initiates",
                                                            "strongswan-initiates"])
def test_pinned_certificate_without_cert_payloads(make_pair: Any, certs: Certs,
                                                  capture_factory: CaptureFactory,
                                                  we_initiate: bool) -> None:
    # No cacerts: we request no certificate, so charon (send_cert = ifasked)
    # sends none, and its signature is checked with the pinned key alone.
    pair = make_pair(certs.a["rsa"], certs.b["rsa"], our_ca=certs.ca, their_ca=certs.ca,
                     ids=(A_DN, B_DN), pinned=True)
    cap = capture_factory(pair.topo.a, pair.topo.if_a, "udp port 500 or udp port 4500")
    if we_initiate:
        result = pair.ours.up("gw")
        assert result.returncode == 0, result.stdout + result.stderr + pair.ours.log_text()
    else:
        ok, out = pair.theirs.initiate("net", "gw")
        assert ok, out + pair.ours.log_text()[-3000:]
    pcap = cap.stop()
    _their_sa(pair)
    assert "authenticated by RSA signature (the pinned key)" in pair.ours.log_text()
    match = re.search(r"CKY-I ([0-9a-f]{16}) .* Ka ([0-9a-f]+)", pair.ours.log_text())
    assert match
    packets = tshark_json(pcap, [*isakmp_decryption_table({match[1]: match[2]})])
    theirs = [p for p in packets if p["_source"]["layers"]["ip"]["ip.src"] == pair.topo.addr_b]
    their_payloads = [t for p in theirs for t in _values(p, "isakmp.typepayload")]
    assert "9" in their_payloads and "6" not in their_payloads, their_payloads


@pytest.mark.parametrize("problem", ["untrusted", "revoked", "expired"])
def test_bad_certificate_from_strongswan_is_refused(make_pair: Any, certs: Certs,
                                                    problem: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    revoked: tuple[int, ...] = ()
    if problem == "untrusted":
        # strongSwan's certificate comes from a CA we do not trust.
        theirs = pki.issue(B_DN, certs.evil, sans=(f"dns:{B_FQDN}",))
        reason = f'certificate "{B_DN}" not trusted (issuer "{certs.evil.subject}" unknown)'
        notify = "INVALID_CERT_AUTHORITY"
    elif problem == "revoked":
        theirs = pki.issue(B_DN, certs.ca)
        revoked = (theirs.cert.serial_number,)
        reason = f'certificate "{B_DN}" revoked on'
        notify = "INVALID_CERTIFICATE"
    else:
        theirs = pki.issue(B_DN, certs.ca, not_before=now - datetime.timedelta(days=9),
                           not_after=now - datetime.timedelta(days=1))
        reason = f'certificate "{B_DN}" expired on'
        notify = "INVALID_CERTIFICATE"
    pair = make_pair(certs.a["rsa"], theirs, our_ca=certs.ca, their_ca=certs.ca,
                     ids=(A_DN, B_DN), revoked=revoked)
    ok, _ = pair.theirs.initiate("net", "gw", timeout=5)
    assert not ok
    assert pair.ours.wait_log("authentication failed", timeout=5)
    assert f"authentication failed: {reason}" in pair.ours.log_text()
    assert pair.ours.status()["ike_sas"] == []
    # Our notification goes out encrypted, and charon ends its SA on it.
    assert pair.theirs.wait_log(f"received {notify} error notify", timeout=5)
    assert pair.theirs.list_sas() == []


def test_untrusted_certificate_from_ikev1d_is_refused(make_pair: Any, certs: Certs) -> None:
    pair = make_pair(certs.a["untrusted"], certs.b["rsa"], our_ca=certs.ca, their_ca=certs.ca,
                     ids=(A_DN, B_DN))
    result = pair.ours.up("gw", timeout=10, check=False)
    assert result.returncode != 0
    assert "authentication failed" in result.stdout + result.stderr + pair.ours.log_text()
    their_log = pair.theirs.log_text()
    assert f'no issuer certificate found for "{A_DN}"' in their_log, their_log[-3000:]
    assert f"no trusted RSA public key found for '{A_DN}'" in their_log
    assert "authentication failed: peer sent AUTHENTICATION-FAILED" in pair.ours.log_text()
    assert pair.ours.status()["ike_sas"] == []
    assert pair.theirs.list_sas() == []
