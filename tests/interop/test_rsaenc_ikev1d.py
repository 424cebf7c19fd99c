"""Public key encryption authentication (RFC 2409 sections 5.2 and 5.3) between
two ikev1d in network namespaces, with traffic through the userspace data plane.

No other IKEv1 daemon implements auth methods 4 and 5 (strongSwan 5.9 maps them
to nothing, Libreswan and racoon refuse them), so ikev1d is the only peer here;
tests/unit/engine/test_rsaenc.py checks the exchange against the RFC's formulas
independently. tshark dissects every message without a malformed flag: it reads
the encrypted nonce, ID and (revised mode) KE bodies of messages 3 and 4 as
their payload types' data, and decrypts messages 5 and 6 with the key ikev1d
logs at debug (section 5.2; in the revised mode tshark cannot compute their IV,
which hashes the KE values it only sees encrypted). In the revised mode the
initiator may also send its certificate in message 3, encrypted with Ke_i, for
a responder that verifies it against its CA instead of pinning the initiator's
key: tshark then reads the CERT payload's header but not its body.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ikev1d_lab import pki
from ikev1d_lab.capture import isakmp_decryption_table, tshark_json
from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import swanctl_conf

from .conftest import CaptureFactory, CharonFactory
from .test_dataplane_ikev1d import traffic_both_ways

pytestmark = pytest.mark.interop

A_ID, B_ID = "gw-a.example.org", "gw-b.example.org"
METHOD = {"rsa-encryption": "4", "rsa-encryption-revised": "5"}


@dataclass
class Pair:
    topo: Topology
    a: Ikev1dDaemon
    b: Ikev1dDaemon


def rsa_conf(base: str, auth: str, key: Path, peer_key: Path, *,
             cert: Path | None = None, cacert: Path | None = None) -> str:
    """ikev1d_conf's PSK connection turned into public key encryption; ``cert``
    is sent in message 3 (revised mode), ``cacert`` verifies the peer's instead
    of pinning its key."""
    text = re.sub(r"\n\[secrets\.[^\n]*\n(?:[^\n\[][^\n]*\n?)*", "\n", base)
    local = f'auth = "{auth}"\nprivate_key = "{key}"'
    if cert is not None:
        local += f'\ncerts = ["{cert}"]'
    text = text.replace('[connections.gw.local]\nauth = "psk"',
                        f'[connections.gw.local]\n{local}')
    remote = f'cacerts = ["{cacert}"]' if cacert is not None else f'pubkey = "{peer_key}"'
    return text.replace('[connections.gw.remote]\nauth = "psk"',
                        f'[connections.gw.remote]\nauth = "{auth}"\n{remote}')


@pytest.fixture
def make_pair(two_hosts: Topology, tmp_path: Path) -> Iterator[Callable[[str], Pair]]:
    started: list[Ikev1dDaemon] = []

    def make(auth: str, with_cert: bool = False) -> Pair:
        """With ``with_cert``, A sends its CA-issued certificate in message 3 and
        B verifies it with the CA instead of pinning A's key."""
        topo = two_hosts
        ca = pki.issue("C=CH, O=ikev1d, CN=Interop Root CA", ca=True)
        a = pki.issue("C=CH, O=ikev1d, CN=gw-a", ca if with_cert else None,
                      sans=(f"dns:{A_ID}",), key_encipherment=True)
        b = pki.issue("C=CH, O=ikev1d, CN=gw-b")
        keys = tmp_path / "keys"
        a_cert, a_key = a.write(keys, "a")
        ca_cert = keys / "ca.pem"
        ca_cert.write_bytes(ca.cert_pem())
        b_cert, b_key = b.write(keys, "b")
        if not isinstance(a.key, rsa.RSAPrivateKey):
            raise TypeError("RSA expected")
        a_pub = keys / "a.pub.pem"  # B pins A's bare key, A pins B's certificate
        a_pub.write_bytes(a.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        daemons = []
        for label, ns, local, remote, lid, rid, lnet, rnet, key, peer in (
            ("a", topo.a, topo.addr_a, topo.addr_b, A_ID, B_ID, topo.inner_net_a,
             topo.inner_net_b, a_key, b_cert),
            ("b", topo.b, topo.addr_b, topo.addr_a, B_ID, A_ID, topo.inner_net_b,
             topo.inner_net_a, b_key, a_pub),
        ):
            base = ikev1d_conf("gw", local, remote, lid, rid, "unused-psk-0123456789",
                               ["aes128-sha256-modp2048"], ["aes128gcm16"], lnet, rnet,
                               dataplane="userspace")
            text = rsa_conf(base, auth, key, peer,
                            cert=a_cert if with_cert and label == "a" else None,
                            cacert=ca_cert if with_cert and label == "b" else None)
            d = Ikev1dDaemon(ns, tmp_path / f"ikev1d-{label}", text)
            started.append(d)
            d.start()
            daemons.append(d)
        return Pair(topo, daemons[0], daemons[1])

    yield make
    for d in started:
        code = d.stop()
        assert code == 0, d.log_text()[-3000:]


def _values(node: Any, field: str) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == field:
                found += value if isinstance(value, list) else [value]
            found += _values(value, field)
    elif isinstance(node, list):
        for value in node:
            found += _values(value, field)
    return found


@pytest.mark.parametrize("auth", list(METHOD))
def test_two_ikev1d_authenticate_by_public_key_encryption(
        make_pair: Callable[[str], Pair], capture_factory: CaptureFactory, auth: str) -> None:
    pair = make_pair(auth)
    topo = pair.topo
    cap = capture_factory(topo.a, topo.if_a, "udp port 500 or udp port 4500")
    assert pair.a.up("gw").returncode == 0

    for daemon, peer in ((pair.a, B_ID), (pair.b, A_ID)):
        (sa,) = daemon.status()["ike_sas"]
        assert sa["auth"] == auth and sa["remote_id"] == peer, sa
    assert ping(topo.a, topo.inner_addr_b, count=3) == (3, 3)
    traffic_both_ways(topo)

    pcap = cap.stop()
    match = re.search(r"CKY-I ([0-9a-f]{16}) .* Ka ([0-9a-f]+)", pair.a.log_text())
    assert match, "ikev1d logs the Phase 1 key at debug level"
    # tshark derives the first Phase 1 IV from the KE payloads as it sees them
    # (RFC 2409 Appendix B): in the revised mode they are encrypted, so it could
    # only decrypt messages 5 and 6 to garbage; there they stay opaque.
    revised = auth == "rsa-encryption-revised"
    packets = tshark_json(pcap, [] if revised else
                          isakmp_decryption_table({match[1]: match[2]}))
    main_mode = [p for p in packets
                 if _values(p, "isakmp.exchangetype") == ["2"]]
    assert len(main_mode) == 6, [_values(p, "isakmp.exchangetype") for p in packets]
    for packet in packets:
        layers = packet["_source"]["layers"]
        assert "isakmp" in layers
        assert "_ws.malformed" not in str(layers), layers
    assert METHOD[auth] in _values(main_mode[0], "isakmp.ike.attr.authentication_method")
    # The header's next payload, then each payload's: the chain as tshark reads it.
    chains = [_values(p, "isakmp.nextpayload")[:-1] for p in main_mode]
    # Message 3 begins with KE (5.2) or HASH(1) (5.3), then ID and nonce (5.2)
    # or nonce, KE, ID (5.3), NAT-D after; message 4 the same without HASH(1);
    # messages 5 and 6, decrypted by tshark, carry HASH only.
    expected_3 = ["4", "8", "5", "10"] if auth == "rsa-encryption" else ["8", "10", "4", "5"]
    expected_4 = ["4", "5", "10"] if auth == "rsa-encryption" else ["10", "4", "5"]
    assert chains[2][:len(expected_3)] == expected_3, chains
    assert chains[3][:len(expected_4)] == expected_4, chains
    if not revised:
        # Message 5 adds INITIAL-CONTACT (RFC 2407 section 4.6.3.3): first contact.
        assert chains[4] == ["8", "11"] and chains[5] == ["8"], chains
        assert _values(main_mode[4], "isakmp.notify.msgtype") == ["24578"]
    else:
        assert all(_values(p, "isakmp.enc.data") for p in main_mode[4:]), chains
    # The identities never cross the wire in the clear.
    assert A_ID.encode() not in pcap.read_bytes() and B_ID.encode() not in pcap.read_bytes()


def test_revised_mode_with_the_initiators_certificate(
        make_pair: Callable[..., Pair], capture_factory: CaptureFactory) -> None:
    """RFC 2409 section 5.3: A sends its certificate in message 3, encrypted with
    Ke_i; B has no key pinned for A, verifies the certificate against its CA and
    encrypts its nonce to the certificate's key."""
    pair = make_pair("rsa-encryption-revised", with_cert=True)
    topo = pair.topo
    cap = capture_factory(topo.a, topo.if_a, "udp port 500 or udp port 4500")
    assert pair.a.up("gw").returncode == 0
    for daemon, peer in ((pair.a, B_ID), (pair.b, A_ID)):
        (sa,) = daemon.status()["ike_sas"]
        assert sa["auth"] == "rsa-encryption-revised" and sa["remote_id"] == peer, sa
    assert ping(topo.a, topo.inner_addr_b, count=3) == (3, 3)
    assert (f'peer {A_ID} authenticated by its certificate ("C=CH, O=ikev1d, CN=gw-a" <- '
            '"C=CH, O=ikev1d, CN=Interop Root CA")') in pair.b.log_text()
    pcap = cap.stop()
    packets = tshark_json(pcap, [])
    # tshark reassembles message 3 from its IKE fragments and reads the payload
    # chain up to the CERT payload: HASH(1), nonce, KE, ID, CERT, every header
    # in the clear. Its body, encrypted with Ke_i, is no certificate to tshark's
    # BER parser, which may then give up on the rest of the message (the NAT-D
    # payloads): only there a malformed mark is expected; every other message
    # dissects cleanly.
    chain = ["8", "10", "4", "5", "6"]
    message_3 = []
    for packet in packets:
        found = _values(packet, "isakmp.typepayload")
        if any(found[i:i + len(chain)] == chain for i in range(len(found))):
            message_3.append(packet)
            assert _values(packet, "isakmp.cert.data"), packet
            continue
        layers = packet["_source"]["layers"]
        assert "isakmp" in layers and "_ws.malformed" not in str(layers), layers
    assert len(message_3) == 1, [_values(p, "isakmp.typepayload") for p in packets]
    assert b"CN=gw-a" not in pcap.read_bytes() and A_ID.encode() not in pcap.read_bytes()


def test_strongswan_offered_rsa_encryption_fails_cleanly(
        two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path) -> None:
    """strongSwan 5.9 has no auth method 4: offered it, it refuses or answers with
    another method; ikev1d fails at once, says why, and no SA remains on either
    side."""
    topo = two_hosts
    ca = pki.issue("C=CH, O=ikev1d, CN=Interop Root CA", ca=True)
    a, b = pki.issue("C=CH, O=ikev1d, CN=gw-a", ca), pki.issue("C=CH, O=ikev1d, CN=gw-b", ca)
    keys = tmp_path / "keys"
    _, a_key = a.write(keys, "a")
    b_cert, _ = b.write(keys, "b")
    base = ikev1d_conf("gw", topo.addr_a, topo.addr_b, A_ID, B_ID, "unused-psk-0123456789",
                       ["aes128-sha256-modp2048"], ["aes128-sha256"], topo.inner_net_a,
                       topo.inner_net_b, retransmit_tries=2)
    daemon = Ikev1dDaemon(topo.a, tmp_path / "ikev1d",
                          rsa_conf(base, "rsa-encryption", a_key, b_cert))
    charon = charon_factory(topo.b, "b")
    for sub in ("x509", "x509ca", "private"):
        (charon.work_dir / sub).mkdir(exist_ok=True)
    (charon.work_dir / "x509" / "b.pem").write_bytes(b.cert_pem())
    (charon.work_dir / "private" / "b.pem").write_bytes(b.key_pem())
    (charon.work_dir / "x509ca" / "ca.pem").write_bytes(ca.cert_pem())
    charon.load_config(swanctl_conf(
        "gw", topo.addr_b, topo.addr_a, B_ID, A_ID, "", ["aes128-sha256-modp2048"],
        ["aes128-sha256"], topo.inner_net_b, topo.inner_net_a, auth="pubkey",
        certs=["b.pem"], cacerts=["ca.pem"]))
    with daemon:
        result = daemon.up("gw", timeout=10, check=False)
        assert result.returncode != 0
        failure = [line for line in daemon.log_text().splitlines() if "Main Mode failed" in line]
        assert failure, daemon.log_text()[-2000:]
        # strongSwan 5.9 answers with a method of its own.
        assert ("with authentication method PRE_SHARED_KEY; we offered RSA_ENC, which the "
                "peer seems not to support") in failure[0], failure
        assert "Traceback" not in daemon.log_text()
        assert daemon.status()["ike_sas"] == []
    assert charon.list_sas() == []
