"""Main Mode + Quick Mode against a real strongSwan, ikev1d in both roles.

Success is read from both sides: `swanctl --list-sas` (vici) on strongSwan's,
`ikev1d status --json` on ours, with the same cookies, SPIs and proposal.
strongSwan uses kernel-libipsec here, which needs `encap = yes`: it then
fakes its NAT-D hash and both sides float to UDP 4500 (RFC 3947).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ikev1d_lab.daemon import Ikev1dDaemon, ikev1d_conf
from ikev1d_lab.netns import Topology
from ikev1d_lab.strongswan import Charon, swanctl_conf

from .conftest import CharonFactory
from .strongswan_configs import ALGORITHMS, ONLY_THE_SECOND, THREE_PROPOSALS, TWO_PROPOSALS

pytestmark = pytest.mark.interop

PSK = "interop-psk-0123456789abcdef"

# strongSwan's vici names for what our proposal strings say.
_ENCR = {"aes128": ("AES_CBC", "128"), "aes256": ("AES_CBC", "256"), "3des": ("3DES_CBC", None),
         "aes128gcm16": ("AES_GCM_16", "128")}
_INTEG = {"sha256": "HMAC_SHA2_256_128", "sha1": "HMAC_SHA1_96", "sha384": "HMAC_SHA2_384_192"}
_DH = {"modp2048": "MODP_2048", "ecp256": "ECP_256", "curve25519": "CURVE_25519",
       "modp1024": "MODP_1024"}


def _vici_ike_proposal(ike: dict[str, Any]) -> str:
    encr = {v: k for k, v in _ENCR.items()}[(ike["encr-alg"], ike.get("encr-keysize"))]
    integ = {v: k for k, v in _INTEG.items()}[ike["integ-alg"]]
    dh = {v: k for k, v in _DH.items()}[ike["dh-group"]]
    return f"{encr}-{integ}-{dh}"


def _vici_esp_proposal(child: dict[str, Any]) -> str:
    encr = {v: k for k, v in _ENCR.items()}[(child["encr-alg"], child.get("encr-keysize"))]
    parts = [encr]
    if child.get("integ-alg"):
        parts.append({v: k for k, v in _INTEG.items()}[child["integ-alg"]])
    if child.get("dh-group"):
        parts.append({v: k for k, v in _DH.items()}[child["dh-group"]])
    return "-".join(parts)


@dataclass
class Pair:
    topo: Topology
    ours: Ikev1dDaemon
    theirs: Charon


@pytest.fixture
def make_pair(
    two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path
) -> Iterator[Any]:
    started: list[Ikev1dDaemon] = []

    def make(
        *,
        proposals: list[str],
        esp: list[str],
        their_proposals: list[str] | None = None,
        their_esp: list[str] | None = None,
        their_psk: str = PSK,
        their_ts: tuple[str, str] | None = None,
        aggressive: bool = False,
        child_rekey_time: str = "1h",
        their_child_rekey_time: str = "1h",
        their_child_life_time: str | None = None,
        their_extra_conf: str = "",
        our_extra_conn: str = "",
    ) -> Pair:
        topo = two_hosts
        text = ikev1d_conf(
            "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
            proposals, esp, topo.inner_net_a, topo.inner_net_b,
            child_rekey_time=child_rekey_time,
        )
        if our_extra_conn:
            text = text.replace("encap = false\n", f"encap = false\n{our_extra_conn}", 1)
        ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", text)
        started.append(ours)
        ours.start()
        theirs = charon_factory(topo.b, "b", extra_conf=their_extra_conf)
        local_ts, remote_ts = their_ts or (topo.inner_net_b, topo.inner_net_a)
        theirs.load_config(swanctl_conf(
            "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, their_psk,
            their_proposals or proposals, their_esp or esp, local_ts, remote_ts,
            aggressive=aggressive, child_rekey_time=their_child_rekey_time,
            life_time=their_child_life_time,
            # charon renews at rekey_time minus up to rand_time (default: the rest of
            # the lifetime); keep the jitter small so a renewal comes when expected.
            extra_child="        rand_time = 2s" if their_child_life_time else "",
        ))
        return Pair(topo, ours, theirs)

    yield make
    for daemon in started:
        code = daemon.stop()
        assert code == 0, daemon.log_text()[-3000:]


def _assert_same_sas(pair: Pair, ike_proposal: str, esp_proposal: str, *,
                     we_initiated: bool) -> None:
    (ike,) = pair.ours.status()["ike_sas"]
    (theirs,) = pair.theirs.list_sas()
    assert ike["state"] == "ESTABLISHED" and theirs["state"] == "ESTABLISHED"
    assert ike["initiator"] is we_initiated
    assert ike["proposal"] == ike_proposal == _vici_ike_proposal(theirs)
    cky_i, cky_r = ike["cookies"].split(":")
    assert (cky_i, cky_r) == (theirs["initiator-spi"], theirs["responder-spi"])
    assert ike["remote_id"] == pair.topo.addr_b
    (child,) = ike["children"]
    (their_child,) = theirs["children"]
    assert child["state"] == "INSTALLED" and their_child["state"] == "INSTALLED"
    assert child["spi_in"] == their_child["spi-out"]
    assert child["spi_out"] == their_child["spi-in"]
    assert child["proposal"] == esp_proposal == _vici_esp_proposal(their_child)
    assert child["encap"] is True and their_child.get("encap") == "yes"
    assert child["local_ts"] == [pair.topo.inner_net_a]
    assert child["remote_ts"] == [pair.topo.inner_net_b]


@pytest.mark.parametrize(("ike_proposal", "esp_proposal"), ALGORITHMS)
def test_ikev1d_initiates(make_pair: Any, ike_proposal: str, esp_proposal: str) -> None:
    pair = make_pair(proposals=[ike_proposal], esp=[esp_proposal])
    result = pair.ours.up("gw")
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_same_sas(pair, ike_proposal, esp_proposal, we_initiated=True)
    log = pair.ours.log_text()
    assert "ISAKMP SA established" in log and "IPsec SA established" in log


@pytest.mark.parametrize(("ike_proposal", "esp_proposal"), ALGORITHMS)
def test_strongswan_initiates(make_pair: Any, ike_proposal: str, esp_proposal: str) -> None:
    pair = make_pair(proposals=[ike_proposal], esp=[esp_proposal])
    ok, out = pair.theirs.initiate("net", "gw")
    assert ok, out + pair.ours.log_text()[-3000:]
    _assert_same_sas(pair, ike_proposal, esp_proposal, we_initiated=False)


def test_three_proposals_peer_accepts_only_the_second(make_pair: Any) -> None:
    # strongSwan accepts the second of ours, and one we do not offer.
    pair = make_pair(proposals=THREE_PROPOSALS, esp=["aes128-sha256"],
                     their_proposals=ONLY_THE_SECOND)
    assert pair.ours.up("gw").returncode == 0
    _assert_same_sas(pair, "aes128-sha256-ecp256", "aes128-sha256", we_initiated=True)


def test_three_proposals_from_strongswan_we_take_the_second(make_pair: Any) -> None:
    pair = make_pair(proposals=TWO_PROPOSALS, esp=["aes128-sha256"],
                     their_proposals=THREE_PROPOSALS)
    ok, out = pair.theirs.initiate("net", "gw")
    assert ok, out
    _assert_same_sas(pair, "aes128-sha256-ecp256", "aes128-sha256", we_initiated=False)


@pytest.mark.parametrize("we_initiate", [True, False])
def test_pfs(make_pair: Any, we_initiate: bool) -> None:
    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256-modp2048"])
    if we_initiate:
        assert pair.ours.up("gw").returncode == 0
    else:
        ok, out = pair.theirs.initiate("net", "gw")
        assert ok, out
    _assert_same_sas(pair, "aes128-sha256-modp2048", "aes128-sha256-modp2048",
                     we_initiated=we_initiate)


@pytest.mark.parametrize("we_initiate", [True, False])
def test_phase1_no_proposal_chosen(make_pair: Any, we_initiate: bool) -> None:
    pair = make_pair(proposals=["aes256-sha512-modp4096"], esp=["aes128-sha256"],
                     their_proposals=["aes128-sha256-modp2048"])
    if we_initiate:
        result = pair.ours.up("gw", timeout=10, check=False)
        assert result.returncode != 0
        assert "NO-PROPOSAL-CHOSEN" in result.stdout + result.stderr + pair.ours.log_text()
        assert "NO_PROPOSAL_CHOSEN" in pair.theirs.log_text() or \
            "no proposal" in pair.theirs.log_text().lower()
    else:
        ok, _ = pair.theirs.initiate("net", "gw", timeout=5)
        assert not ok
        log = pair.ours.log_text()
        assert "NO-PROPOSAL-CHOSEN" in log
        assert "aes128-sha256-modp2048" in log and "aes256-sha512-modp4096" in log
        assert "NO_PROPOSAL_CHOSEN" in pair.theirs.log_text()
    assert pair.ours.status()["ike_sas"] == []


@pytest.mark.parametrize("we_initiate", [True, False])
def test_phase2_no_proposal_chosen(make_pair: Any, we_initiate: bool) -> None:
    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes256-sha512"],
                     their_esp=["aes128gcm16"])
    if we_initiate:
        result = pair.ours.up("gw", timeout=10, check=False)
        assert result.returncode != 0
        assert "NO-PROPOSAL-CHOSEN" in result.stdout + result.stderr + pair.ours.log_text()
    else:
        ok, _ = pair.theirs.initiate("net", "gw", timeout=5)
        assert not ok
        assert "NO-PROPOSAL-CHOSEN" in pair.ours.log_text()
        assert "NO_PROPOSAL_CHOSEN" in pair.theirs.log_text()
    (ike,) = pair.ours.status()["ike_sas"]
    assert ike["state"] == "ESTABLISHED" and ike["children"] == []


@pytest.mark.parametrize("we_initiate", [True, False])
def test_invalid_id_information(make_pair: Any, two_hosts: Topology, we_initiate: bool) -> None:
    # strongSwan narrows a subset, so as responder it refuses only a disjoint
    # network; ikev1d accepts only the configured networks exactly (it does not
    # narrow), so a /16 is refused with INVALID-ID-INFORMATION (RFC 2408 §3.14.1).
    their_local = "10.3.0.0/24" if we_initiate else "10.2.0.0/16"
    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256"],
                     their_ts=(their_local, two_hosts.inner_net_a))
    if we_initiate:
        result = pair.ours.up("gw", timeout=10, check=False)
        assert result.returncode != 0
        assert "INVALID-ID-INFORMATION" in result.stdout + result.stderr + pair.ours.log_text()
    else:
        ok, _ = pair.theirs.initiate("net", "gw", timeout=5)
        assert not ok
        assert "INVALID-ID-INFORMATION" in pair.ours.log_text()
        assert "INVALID_ID_INFORMATION" in pair.theirs.log_text()


@pytest.mark.parametrize("we_initiate", [True, False])
def test_wrong_psk(make_pair: Any, we_initiate: bool) -> None:
    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256"],
                     their_psk="a-different-psk-for-this-test")
    if we_initiate:
        result = pair.ours.up("gw", timeout=15, check=False)
        assert result.returncode != 0
        # strongSwan answers a message 5 it cannot decrypt with an encrypted
        # notification we cannot read either: that fails at once, no retransmits.
        assert "authentication failed" in result.stdout + result.stderr
    else:
        ok, _ = pair.theirs.initiate("net", "gw", timeout=5)
        assert not ok
        assert pair.ours.wait_log("authentication failed", timeout=10)
    assert "authentication failed" in pair.ours.log_text()
    assert all(sa["state"] != "ESTABLISHED" for sa in pair.ours.status()["ike_sas"])
    assert all(sa["state"] != "ESTABLISHED" for sa in pair.theirs.list_sas())


def test_aggressive_mode_from_strongswan_is_refused(make_pair: Any) -> None:
    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256"],
                     aggressive=True)
    ok, _ = pair.theirs.initiate("net", "gw", timeout=5)
    assert not ok
    assert "Aggressive Mode is not supported" in pair.ours.log_text()
    assert pair.ours.status()["ike_sas"] == []
    # charon prints IKEv1 notify 7 (INVALID-EXCHANGE-TYPE) with its IKEv2 name.
    assert "received INVALID_SYNTAX error notify" in pair.theirs.log_text()


def test_delete_from_ikev1d(make_pair: Any) -> None:
    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256"])
    assert pair.ours.up("gw").returncode == 0
    pair.ours.down("gw")
    pair.theirs.wait_for(lambda sas: sas == [], timeout=10)
    log = pair.ours.log_text()
    assert "IPsec SA deleted" in log and "ISAKMP SA deleted" in log
    assert pair.ours.status()["ike_sas"] == []


def test_delete_from_strongswan(make_pair: Any) -> None:
    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256"])
    assert pair.ours.up("gw").returncode == 0
    ok, out = pair.theirs.terminate(ike="gw")
    assert ok, out
    assert pair.ours.wait_log("ISAKMP SA deleted", timeout=10)
    assert "IPsec SA deleted" in pair.ours.log_text()
    assert pair.ours.status()["ike_sas"] == []


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@pytest.mark.parametrize("we_initiate", [True, False])
def test_tshark_dissects_and_decrypts_what_ikev1d_sent(
    make_pair: Any, capture_factory: Any, we_initiate: bool
) -> None:
    import re

    from ikev1d_lab.capture import isakmp_decryption_table, tshark_json

    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256-modp2048"])
    cap = capture_factory(pair.topo.a, pair.topo.if_a, "udp port 500 or udp port 4500")
    if we_initiate:
        assert pair.ours.up("gw").returncode == 0
    else:
        ok, out = pair.theirs.initiate("net", "gw")
        assert ok, out
    pcap = cap.stop()
    match = re.search(r"CKY-I ([0-9a-f]{16}) .* Ka ([0-9a-f]+)", pair.ours.log_text())
    assert match, "ikev1d logs the Phase 1 key at debug level"
    packets = tshark_json(
        pcap, [*isakmp_decryption_table({match[1]: match[2]}), "--no-duplicate-keys"]
    )
    ours = [p for p in packets
            if p["_source"]["layers"]["ip"]["ip.src"] == pair.topo.addr_a]
    # Main Mode 3 messages + Quick Mode 1 or 2 messages from our side.
    assert len(ours) >= 4
    for packet in packets:
        layers = packet["_source"]["layers"]
        assert "isakmp" in layers
        assert "_ws.malformed" not in str(layers), layers
    # Messages 5 and 6 (and Quick Mode) decrypted: tshark shows ID and HASH payloads in them.
    id_types: list[str] = []
    for packet in packets:
        for key, value in _walk(packet["_source"]["layers"]):
            if key == "isakmp.id.type":
                id_types += value if isinstance(value, list) else [value]
    # IPV4_ADDR in Main Mode 5 and 6, IPV4_ADDR_SUBNET twice in each Quick Mode 1/2.
    assert id_types.count("1") == 2, id_types
    assert id_types.count("4") == 4, id_types


def test_ikev1d_renews_the_ipsec_sa(make_pair: Any) -> None:
    import time

    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256"],
                     child_rekey_time="12s")
    assert pair.ours.up("gw").returncode == 0
    (first,) = pair.ours.status()["ike_sas"][0]["children"]
    assert pair.ours.wait_log("IPsec SA renewed", timeout=15)
    # The old pair still receives for a few seconds (the peer's last packets), then goes
    # (renewed, or here its 12 s lifetime ends first).
    assert pair.ours.wait_log(f"IPsec SA deleted: child net, SPIs {first['spi_in']}_i",
                              timeout=10)
    time.sleep(0.5)
    (ike,) = pair.ours.status()["ike_sas"]
    (child,) = ike["children"]
    assert child["spi_in"] != first["spi_in"]
    # strongSwan has the new pair and deleted the old one on our Delete.
    (theirs,) = pair.theirs.list_sas()
    assert [c["spi-out"] for c in theirs["children"]] == [child["spi_in"]]
    assert f"received DELETE for ESP CHILD_SA with SPI {first['spi_in']}" in \
        pair.theirs.log_text()


def test_strongswan_renews_the_ipsec_sa(make_pair: Any) -> None:
    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256"],
                     their_child_rekey_time="8s", their_child_life_time="30s",
                     # IKEv1 charon keeps a renewed SA until it expires unless told.
                     their_extra_conf="delete_rekeyed = yes\n")
    assert pair.ours.up("gw").returncode == 0
    (first,) = pair.ours.status()["ike_sas"][0]["children"]
    # charon renews 6-8 s in and deletes the old SA: we keep only the new one.
    assert pair.ours.wait_log("IPsec SA deleted", timeout=30), pair.ours.log_text()[-2000:]
    (ike,) = pair.ours.status()["ike_sas"]
    (child,) = ike["children"]
    assert child["spi_in"] != first["spi_in"]
    (theirs,) = pair.theirs.list_sas()
    assert [c["spi-out"] for c in theirs["children"]] == [child["spi_in"]]


def test_dpd_detects_a_dead_strongswan(make_pair: Any) -> None:
    import time

    pair = make_pair(proposals=["aes128-sha256-modp2048"], esp=["aes128-sha256"],
                     our_extra_conn='dpd_delay = "1s"\ndpd_timeout = "4s"\n'
                                    'dpd_action = "clear"\n')
    assert pair.ours.up("gw").returncode == 0
    time.sleep(3)  # charon answers R-U-THERE: still up
    assert pair.ours.status()["ike_sas"][0]["state"] == "ESTABLISHED"
    log = pair.theirs.log_text()
    assert log.count("[ HASH N(DPD) ]") >= 2 and log.count("[ HASH N(DPD_ACK) ]") >= 2
    # The peer vanishes without a word (a stopped charon would send Deletes).
    pair.topo.b.run(["ip", "link", "set", pair.topo.if_b, "down"])
    assert pair.ours.wait_log("DPD: peer 192.0.2.2 not responding", timeout=10)
    assert pair.ours.status()["ike_sas"] == []


def test_five_children_come_up_one_quick_mode_after_another(
    two_hosts: Topology, charon_factory: CharonFactory, tmp_path: Path
) -> None:
    """Five tunnels of one connection: strongSwan keeps the IVs of only a few
    Quick Modes, so ikev1d runs them one at a time; all five must agree."""
    topo = two_hosts
    pairs = [(f"10.1.{i}.0/24", f"10.2.{i}.0/24") for i in range(5)]
    # kernel-libipsec needs an address of its own inside each local network.
    for i in range(1, 5):
        topo.a.add_lo_address(f"10.1.{i}.1/24")
        topo.b.add_lo_address(f"10.2.{i}.1/24")
    text = ikev1d_conf("gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b, PSK,
                       ["aes128-sha256-modp2048"], ["aes128gcm16"], pairs[0][0], pairs[0][1],
                       child="c0")
    for i, (lts, rts) in enumerate(pairs[1:], 1):
        text += (f'\n[connections.gw.children.c{i}]\nlocal_ts = ["{lts}"]\n'
                 f'remote_ts = ["{rts}"]\nesp_proposals = ["aes128gcm16"]\n')
    ours = Ikev1dDaemon(topo.a, tmp_path / "ikev1d", text)
    ours.start()
    try:
        theirs = charon_factory(topo.b, "b")
        conf = swanctl_conf("gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a, PSK,
                            ["aes128-sha256-modp2048"], ["aes128gcm16"], pairs[0][1],
                            pairs[0][0], child="c0")
        extra = "".join(
            f"      c{i} {{\n        local_ts = {rts}\n        remote_ts = {lts}\n"
            f"        esp_proposals = aes128gcm16\n      }}\n"
            for i, (lts, rts) in enumerate(pairs[1:], 1))
        conf = conf.replace("    children {\n", "    children {\n" + extra, 1)
        theirs.load_config(conf)
        result = ours.up("gw", timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        (ike,) = ours.status()["ike_sas"]
        assert len(ike["children"]) == 5
        sas = theirs.wait_for(lambda s: len(s) == 1 and len(s[0]["children"]) == 5)
        theirs_by_spi = {c["spi-out"]: c for c in sas[0]["children"]}
        for child in ike["children"]:
            assert theirs_by_spi[child["spi_in"]]["spi-in"] == child["spi_out"]
            assert theirs_by_spi[child["spi_in"]]["state"] == "INSTALLED"
        assert "decryption failed" not in theirs.log_text()
    finally:
        assert ours.stop() == 0
