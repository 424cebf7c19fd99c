"""ESP packets sealed by a real strongSwan (charon 5.9.8, kernel-libipsec) open in ikev1d.

The packets and the keys charon logged at `chd = 4` were recorded by
scripts/capture_strongswan_vectors.py into tests/vectors/strongswan/. The keys
are also re-derived from the Phase 1 values with our own KEYMAT function, so the
test covers the whole path from SKEYID_d to a decrypted inner packet.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from ikev1d.crypto import keymat
from ikev1d.dataplane.esp import InboundSa, esp_algorithm
from ikev1d.dataplane.packet import parse_ip_header
from ikev1d.proposals import parse_esp_proposal, parse_ike_proposal

VECTORS = sorted((Path(__file__).resolve().parents[2] / "vectors" / "strongswan").glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_strongswan_esp_packets_open_with_our_keymat(path: Path) -> None:
    vector = _load(path)
    packets = vector["esp_packets"]
    assert packets, "the capture holds ESP packets"
    (proposal,) = parse_esp_proposal(vector["esp_proposal"])
    alg = esp_algorithm(proposal.encryption, proposal.key_length, proposal.integrity,
                        proposal.icv_length or 16)
    directions = {
        d["spi"]: d for d in (vector["esp"]["initiator_to_responder"],
                              vector["esp"]["responder_to_initiator"])
    }
    phase1, phase2 = vector["phase1"], vector["phase2"]
    g_qm_xy = bytes.fromhex(phase2["g_qm_xy"]) if phase2.get("g_qm_xy") else None
    inner_nets = [ipaddress.ip_network(vector[side]["inner_net"])
                  for side in ("initiator", "responder")]
    opened = 0
    for packet in packets:
        keys = directions[packet["spi"]]
        # GCM has no integrity key: its encryption key carries the 4-byte salt.
        logged = bytes.fromhex(keys["encryption_key"]) + bytes.fromhex(
            keys.get("integrity_key") or "")
        # RFC 2409 5.5: KEYMAT for an SA from SKEYID_d, its SPI and both nonces.
        ours = keymat(
            parse_ike_proposal(vector["proposal"])[0].integrity,
            bytes.fromhex(phase1["skeyid_d"]), 3, bytes.fromhex(packet["spi"]),
            bytes.fromhex(phase2["nonce_i"]), bytes.fromhex(phase2["nonce_r"]),
            len(logged), g_qm_xy,
        )
        assert ours == logged
        sa = InboundSa(int(packet["spi"], 16), alg, ours)
        next_header, inner = sa.open(bytes.fromhex(packet["data"]))
        assert next_header == 4
        header = parse_ip_header(inner)
        assert any(header.src in net for net in inner_nets)
        assert any(header.dst in net for net in inner_nets)
        opened += 1
    assert opened == len(packets)


def test_a_flipped_bit_in_a_strongswan_packet_fails_the_icv() -> None:
    from ikev1d.dataplane.esp import EspIcvError

    vector = _load(VECTORS[0])
    packet = vector["esp_packets"][0]
    keys = next(d for d in (vector["esp"]["initiator_to_responder"],
                            vector["esp"]["responder_to_initiator"])
                if d["spi"] == packet["spi"])
    (proposal,) = parse_esp_proposal(vector["esp_proposal"])
    alg = esp_algorithm(proposal.encryption, proposal.key_length, proposal.integrity)
    sa = InboundSa(int(packet["spi"], 16), alg,
                   bytes.fromhex(keys["encryption_key"]) + bytes.fromhex(keys["integrity_key"]))
    data = bytearray.fromhex(packet["data"])
    data[20] ^= 0x01
    with pytest.raises(EspIcvError):
        sa.open(bytes(data))
    assert sa.counters.failed_icv == 1 and sa.counters.packets == 0
