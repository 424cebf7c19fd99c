"""IKE fragmentation (payload 132) against a real strongSwan.

Both sides use 4096-bit RSA certificates from an intermediate CA (4096 bits too)
that each sends along, so Main Mode messages 5 and 6 exceed 1280 bytes. The
path drops every IP packet over 1300 bytes (nft in our namespace, both
directions; IP fragments are reassembled before the input hook, so a fragmented
datagram is dropped whole). With fragmentation on both ends the SA is
established in both roles, and tshark sees payload 132 from both sides and
reassembles the ISAKMP messages without anything malformed; with it off on both
ends the same path fails, which shows the feature is what makes it work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ikev1d_lab import pki
from ikev1d_lab.capture import isakmp_decryption_table, tshark_json
from ikev1d_lab.daemon import Ikev1dDaemon
from ikev1d_lab.netns import Namespace, Topology
from ikev1d_lab.strongswan import Charon, swanctl_conf

from .conftest import CaptureFactory, CharonFactory
from .test_pubkey_strongswan import ESP, PROPOSAL, _values, ikev1d_toml

pytestmark = pytest.mark.interop

A_DN, B_DN = "C=CH, O=ikev1d, CN=frag-a", "C=CH, O=ikev1d, CN=frag-b"
PATH_LIMIT = 1300


@dataclass
class Chain:
    ca: pki.Issued
    intermediate: pki.Issued
    a: pki.Issued
    b: pki.Issued


@pytest.fixture(scope="module")
def chain() -> Chain:
    ca = pki.issue("C=CH, O=ikev1d, CN=Fragmentation Root CA", ca=True)
    intermediate = pki.issue("C=CH, O=ikev1d, CN=Fragmentation Intermediate CA", ca,
                             ca=True, key="rsa4096")
    return Chain(ca, intermediate, pki.issue(A_DN, intermediate, key="rsa4096"),
                 pki.issue(B_DN, intermediate, key="rsa4096"))


def drop_big_packets(ns: Namespace, folder: Path) -> None:
    """A path whose MTU is below what certificates need, and that loses the IP
    fragments too (as many NATs and firewalls do)."""
    rules = f"""
table inet lossy {{
    chain in {{ type filter hook input priority 0; meta length > {PATH_LIMIT} drop; }}
    chain out {{ type filter hook output priority 0; meta length > {PATH_LIMIT} drop; }}
}}
"""
    path = folder / "lossy.nft"
    path.write_text(rules)
    ns.run(["nft", "-f", str(path)])


@dataclass
class Pair:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon


@pytest.fixture
def make_pair(two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path
              ) -> Iterator[Any]:
    started: list[Ikev1dDaemon] = []

    def make(chain: Chain, ours: str, theirs: str) -> Pair:
        topo = two_hosts
        drop_big_packets(topo.a, tmp_path)
        folder = tmp_path / "ikev1d"
        toml = ikev1d_toml(topo, folder, chain.a, chain.ca, A_DN, B_DN,
                           chain=(chain.intermediate,))
        toml = toml.replace(f'proposals = ["{PROPOSAL}"]\n',
                            f'proposals = ["{PROPOSAL}"]\nfragmentation = "{ours}"\n', 1)
        daemon = Ikev1dDaemon(topo.a, folder, toml)
        started.append(daemon)
        daemon.start()
        charon = charon_factory(topo.b, "b")
        work = charon.work_dir
        for sub in ("x509", "x509ca", "private"):
            (work / sub).mkdir(exist_ok=True)
        (work / "x509" / "b.pem").write_bytes(chain.b.cert_pem())
        (work / "x509" / "chain0.pem").write_bytes(chain.intermediate.cert_pem())
        (work / "private" / "b.pem").write_bytes(chain.b.key_pem())
        (work / "x509ca" / "ca.pem").write_bytes(chain.ca.cert_pem())
        charon.load_config(swanctl_conf(
            "gw", topo.addr_b, topo.addr_a, B_DN, A_DN, "", [PROPOSAL], [ESP],
            topo.inner_net_b, topo.inner_net_a, auth="pubkey", certs=["b.pem"],
            cacerts=["ca.pem"], extra_conn=f"fragmentation = {theirs}"))
        return Pair(topo, daemon, charon)

    yield make
    for daemon in started:
        code = daemon.stop()
        assert code == 0, daemon.log_text()[-3000:]


def establish(pair: Pair, we_initiate: bool) -> tuple[bool, str]:
    if we_initiate:
        result = pair.ours.up("gw", timeout=12, check=False)
        return result.returncode == 0, result.stdout + result.stderr
    return pair.theirs.initiate("net", "gw")


@pytest.mark.parametrize(("we_initiate", "ours", "theirs"), [
    pytest.param(True, "force", "force", id="ikev1d-initiates-force"),
    pytest.param(False, "yes", "yes", id="strongswan-initiates-yes"),
    pytest.param(True, "yes", "yes", id="ikev1d-initiates-yes"),
    pytest.param(False, "force", "force", id="strongswan-initiates-force"),
])
def test_fragments_carry_certificate_chains_over_a_small_path(
        make_pair: Any, capture_factory: CaptureFactory, chain: Chain, we_initiate: bool,
        ours: str, theirs: str) -> None:
    pair = make_pair(chain, ours, theirs)
    cap = capture_factory(pair.topo.a, pair.topo.if_a, "udp port 500 or udp port 4500")
    ok, out = establish(pair, we_initiate)
    assert ok, out + pair.ours.log_text()[-3000:]
    pcap = cap.stop()
    (ike,) = pair.ours.status()["ike_sas"]
    assert ike["state"] == "ESTABLISHED" and ike["remote_id"] == B_DN
    (their_sa,) = pair.theirs.list_sas()
    assert their_sa["state"] == "ESTABLISHED"

    match = re.search(r"CKY-I ([0-9a-f]{16}) .* Ka ([0-9a-f]+)", pair.ours.log_text())
    assert match, "ikev1d logs the Phase 1 key at debug level"
    packets = tshark_json(pcap, [*isakmp_decryption_table({match[1]: match[2]})])
    assert packets
    fragments_from: dict[str, int] = {}
    reassembled = []
    for packet in packets:
        layers = packet["_source"]["layers"]
        assert "_ws.malformed" not in json.dumps(layers), layers
        assert int(layers["frame"]["frame.len"]) - 14 <= PATH_LIMIT
        if "132" in _values(packet, "isakmp.nextpayload") + _values(
                packet, "isakmp.typepayload"):
            source = layers["ip"]["ip.src"]
            fragments_from[source] = fragments_from.get(source, 0) + 1
        reassembled += _values(packet, "isakmp.reassembled.length")
    assert set(fragments_from) == {pair.topo.addr_a, pair.topo.addr_b}, fragments_from
    # tshark put fragments back together (messages 5 and 6 at least), and read
    # the certificates and signatures inside once decrypted.
    assert len(reassembled) >= 2, reassembled
    assert all(int(n) > 1280 for n in reassembled), reassembled
    ours_decrypted = [p for p in packets
                      if p["_source"]["layers"]["ip"]["ip.src"] == pair.topo.addr_a]
    assert [v for p in ours_decrypted for v in _values(p, "isakmp.sig")]
    log = pair.ours.log_text()
    assert "IKE fragmentation" in log  # the peer's VID was recognised
    assert "dropping IKE fragment" not in log
    assert re.search(r"sending a \d+-byte message in [2-9] fragments", log)
    assert re.search(r"reassembled a \d+-byte message from [2-9] fragments", log)


def test_without_fragmentation_the_small_path_fails(make_pair: Any, chain: Chain) -> None:
    pair = make_pair(chain, "no", "no")
    ok, out = establish(pair, True)
    assert not ok, out
    assert not [sa for sa in pair.ours.status()["ike_sas"] if sa["state"] == "ESTABLISHED"]
