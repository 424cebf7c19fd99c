"""Capture IKEv1 test vectors from two real strongSwan charons.

Runs strongSwan <-> strongSwan (IKEv1, PSK, Main Mode + Quick Mode) in two
network namespaces for each scenario, with charon's file log at levels that
print the key material (``ike = 4``: g^xy, SKEYID*, Ka, initial IV, HASH_I/R;
``chd = 4``: Quick Mode DH secret, KEYMAT seeds, ESP keys; ``enc = 4``: the
IV, plaintext and ciphertext of every encrypted message), captures the wire
with dumpcap, sends one ICMP echo through the tunnel (UDP-encapsulated ESP),
deletes the SAs, and writes tests/vectors/strongswan/<scenario>.json.

    .venv/bin/python scripts/capture_strongswan_vectors.py [--only NAME] [--keep]

Needs root, iproute2, strongSwan 5.9 (charon, swanctl) and dumpcap.  The JSON
files are regenerated data: every run has fresh randomness.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes

from ikev1d.wire.constants import NAT_KEEPALIVE, NAT_T_PORT, NON_ESP_MARKER
from ikev1d_lab.capture import Capture
from ikev1d_lab.netns import Topology, cleanup_stale, two_hosts
from ikev1d_lab.ping import ping
from ikev1d_lab.strongswan import Charon, swanctl_conf

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "vectors" / "strongswan"
DEMO_DIR = REPO / "src" / "ikev1d_lab" / "demo_data"
DEMO_SCENARIO = "psk-aes128-sha256-modp2048"
DEMO_NAME = "strongswan-main-quick-mode"

PSK = "ikev1d-test-vector-psk"  # test-only secret, published with the vectors
ATTEMPTS = 3
LOG_LEVELS = {"default": 2, "ike": 4, "enc": 4, "cfg": 2, "chd": 4}


@dataclass(frozen=True)
class Scenario:
    name: str
    ike_proposal: str
    esp_proposal: str
    note: str = ""


SCENARIOS = [
    Scenario("psk-aes128-sha256-modp2048", "aes128-sha256-modp2048", "aes128-sha256"),
    Scenario("psk-aes128-sha256-ecp256", "aes128-sha256-ecp256", "aes128-sha256",
             "ECP group 19: g^xy is the x coordinate only (RFC 5903 section 9)"),
    Scenario("psk-aes128-sha256-curve25519", "aes128-sha256-curve25519", "aes128-sha256",
             "Curve25519 (group 31, RFC 8031)"),
    Scenario("psk-3des-sha1-modp1024", "3des-sha1-modp1024", "3des-sha1",
             "3DES needs 24 key bytes but SHA-1 gives 20: Ka is expanded as in "
             "RFC 2409 Appendix B"),
    Scenario("psk-aes128-sha256-modp2048-pfs", "aes128-sha256-modp2048",
             "aes128-sha256-modp2048", "PFS: Quick Mode carries KE payloads (RFC 2409 5.5)"),
    Scenario("psk-aes256-sha512-ecp384-pfs-gcm", "aes256-sha512-ecp384",
             "aes256gcm16-ecp384",
             "SHA-512 PRF; ESP AES-GCM-16 (RFC 4106): each ESP encryption key is "
             "32 key bytes followed by the 4-byte salt"),
]  # fmt: skip

# charon's hexdump labels -> our names (RFC 2409 words).
PHASE1_LABELS = {
    "shared Diffie Hellman secret": "g_xy",
    "SKEYID": "skeyid",
    "SKEYID_d": "skeyid_d",
    "SKEYID_a": "skeyid_a",
    "SKEYID_e": "skeyid_e",
    "encryption key Ka": "encryption_key",
    "initial IV": "initial_iv",
    "HASH_I data": "hash_i_prf_input",
    "HASH_I": "hash_i",
    "HASH_R data": "hash_r_prf_input",
    "HASH_R": "hash_r",
}
PHASE2_LABELS = {
    "Hash(1)": "hash_1",
    "Hash(2)": "hash_2",
    "Hash(3)": "hash_3",
    "DH secret": "g_qm_xy",
}
ESP_LABELS = {
    # strongSwan's "initiator" keys protect what the initiator sends (seeded with the
    # responder's SPI), "responder" keys what the responder sends (initiator's SPI).
    "initiator SA seed": ("initiator_to_responder", "keymat_seed"),
    "encryption initiator key": ("initiator_to_responder", "encryption_key"),
    "integrity initiator key": ("initiator_to_responder", "integrity_key"),
    "responder SA seed": ("responder_to_initiator", "keymat_seed"),
    "encryption responder key": ("responder_to_initiator", "encryption_key"),
    "integrity responder key": ("responder_to_initiator", "integrity_key"),
}

EXCHANGES = {2: "ID_PROT", 4: "AGGRESSIVE", 5: "INFORMATIONAL", 6: "TRANSACTION", 32: "QUICK_MODE"}
PAYLOAD_SA, PAYLOAD_KE, PAYLOAD_NONCE, PAYLOAD_HASH, PAYLOAD_NATD = 1, 4, 10, 8, 20

DOC = {
    "scenario": "name of this vector set",
    "source": "how and by what these values were produced",
    "note": "what is special about this scenario",
    "psk": "pre-shared key (hex of the ASCII text in psk_text)",
    "proposal": "Phase 1 proposal, strongSwan syntax, both sides configured with only this",
    "esp_proposal": "Phase 2 (ESP) proposal, strongSwan syntax; a DH group means PFS",
    "initiator / responder": "outer address, ID (ID_IPV4_ADDR) and inner network of each side",
    "initiator_cookie / responder_cookie": "CKY-I / CKY-R (ISAKMP header SPIs)",
    "negotiated": "algorithms as charon's vici list-sas reported them after establishment",
    "messages": (
        "every ISAKMP message on the wire in order: from (initiator|responder), UDP port "
        "(500, or 4500 after the NAT-T float; the 4-byte non-ESP marker is stripped), "
        "exchange, message_id, data = whole ISAKMP message as sent. Encrypted messages also "
        "have iv (CBC IV used), plaintext (payload chain before padding) and padding, from "
        "the sender's enc=4 log; the receiver's decrypted text was checked to match"
    ),
    "phase1": (
        "RFC 2409 section 5 values: g_xy (DH shared secret; x coordinate for ECP), skeyid, "
        "skeyid_d, skeyid_a, skeyid_e, encryption_key (Ka, section 5.3/Appendix B), "
        "initial_iv (hash(g^xi | g^xr) truncated to the block size), hash_i / hash_r and the "
        "exact prf inputs charon hashed (g^x | g^x' | CKY | CKY' | SAi_b | IDii_b / IDir_b); "
        "ke_i, ke_r, nonce_i, nonce_r are payload bodies taken from messages 3 and 4"
    ),
    "phase2": (
        "Quick Mode (RFC 2409 section 5.5): message_id, hash_1..hash_3, nonce_i / nonce_r "
        "and (with PFS) ke_i / ke_r payload bodies from the decrypted messages, g_qm_xy "
        "(PFS DH secret)"
    ),
    "esp": (
        "ESP SAs: initiator_to_responder uses the responder's SPI, responder_to_initiator the "
        "initiator's; keymat_seed = [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b, KEYMAT = "
        "prf(SKEYID_d, seed) expanded (RFC 2409 5.5); encryption_key then integrity_key are "
        "its first bytes (for AES-GCM the key includes the 4-byte salt, RFC 4106 8.1)"
    ),
    "esp_packets": (
        "UDP-encapsulated ESP (RFC 3948) packets of one ICMP echo request 10.1.0.1 -> 10.2.0.1 "
        "and its reply through the tunnel: from, spi, seq, data (UDP payload = ESP packet)"
    ),
    "natd": "NAT-D (RFC 3947): hash input (CKY-I | CKY-R | IP | port) and hash, as logged",
    "logged_by": "for each logged value (dotted path): which charon(s) printed it",
}


# --- charon log parsing -------------------------------------------------------------------

_LINE_RE = re.compile(r"^\S+ (?P<thr>\d+)\[(?P<grp>\w+)\] (?:<[^>]*> )?(?P<msg>.*)$")
_DUMP_HEAD_RE = re.compile(r"^(?P<label>.*?) => (?P<n>\d+) bytes @ (?:0x[0-9a-fA-F]+|\(nil\))$")
_DUMP_DATA_RE = re.compile(r"^\s*\d+: (?P<hex>.*)$")
_VERSION_RE = re.compile(r"Starting IKE charon daemon \(strongSwan (?P<v>[\w.]+)")


@dataclass
class Dump:
    label: str
    data: bytes


@dataclass
class Crypt:
    direction: str  # "encrypt" | "decrypt"
    parts: dict[str, bytes] = field(default_factory=dict)


@dataclass
class CharonLog:
    dumps: list[Dump]
    crypts: list[Crypt]
    version: str

    def values(self, label: str) -> list[bytes]:
        return [d.data for d in self.dumps if d.label == label]


def parse_charon_log(text: str) -> CharonLog:
    """Hexdumps (label => N bytes, then offset lines) and en/decryption records per thread."""
    dumps: list[Dump] = []
    crypts: list[Crypt] = []
    open_dump: dict[str, tuple[str, int, bytearray]] = {}
    crypt_state: dict[str, Crypt] = {}
    version = ""

    def finish(thr: str, label: str, data: bytes) -> None:
        if not label:
            return
        dumps.append(Dump(label, data))
        state = crypt_state.get(thr)
        if state is None or label not in ("IV", "plain", "padding", "encrypted"):
            return
        state.parts[label] = data
        done = label == "encrypted" if state.direction == "encrypt" else label == "plain"
        if done:
            crypts.append(state)
            del crypt_state[thr]

    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if m is None:
            continue
        thr, msg = m.group("thr"), m.group("msg")
        if (v := _VERSION_RE.search(msg)) is not None:
            version = v.group("v")
        if thr in open_dump:
            label, n, buf = open_dump[thr]
            d = _DUMP_DATA_RE.match(msg)
            if d is not None:
                tokens = d.group("hex").split(" ")[: min(16, n - len(buf))]
                buf.extend(bytes.fromhex("".join(tokens)))
                if len(buf) >= n:
                    del open_dump[thr]
                    finish(thr, label, bytes(buf))
                continue
            del open_dump[thr]  # truncated dump: drop it
        h = _DUMP_HEAD_RE.match(msg)
        if h is not None:
            label, n = h.group("label").strip(), int(h.group("n"))
            if n == 0:
                finish(thr, label, b"")
            else:
                open_dump[thr] = (label, n, bytearray())
            continue
        if msg.startswith("encrypting payloads"):
            crypt_state[thr] = Crypt("encrypt")
        elif msg.startswith("decrypting payloads"):
            crypt_state[thr] = Crypt("decrypt")
    return CharonLog(dumps, crypts, version)


# --- wire parsing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    src: str
    sport: int
    dport: int
    payload: bytes


def read_pcap_udp(path: Path) -> list[Datagram]:
    """UDP/IPv4 datagrams of a classic Ethernet pcap file, in capture order."""
    raw = path.read_bytes()
    magic = raw[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}.get(magic)
    if endian is None:
        raise ValueError(f"{path}: not a classic pcap file")
    (linktype,) = struct.unpack_from(endian + "I", raw, 20)
    if linktype != 1:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet")
    out: list[Datagram] = []
    off = 24
    while off + 16 <= len(raw):
        _ts, _us, caplen, _origlen = struct.unpack_from(endian + "IIII", raw, off)
        frame = raw[off + 16 : off + 16 + caplen]
        off += 16 + caplen
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ip[9] != 17:
            continue
        src = ".".join(str(b) for b in ip[12:16])
        udp = ip[ihl:total]
        sport, dport, ulen = struct.unpack_from("!HHH", udp, 0)
        out.append(Datagram(src, sport, dport, udp[8:ulen]))
    return out


def walk_payloads(first: int, chain: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of each generic-header payload (RFC 2408 3.2); stops at padding."""
    out: list[tuple[int, bytes]] = []
    ptype, off = first, 0
    while ptype != 0 and off + 4 <= len(chain):
        nxt, _res, length = struct.unpack_from("!BBH", chain, off)
        if length < 4 or off + length > len(chain):
            raise ValueError(f"bad payload length {length} at {off}")
        out.append((ptype, chain[off + 4 : off + length]))
        ptype, off = nxt, off + length
    return out


def body_of(payloads: Iterable[tuple[int, bytes]], ptype: int) -> bytes | None:
    for t, body in payloads:
        if t == ptype:
            return body
    return None


# --- self-check with an independent implementation of the RFC 2409 formulas ---------------

_PRF: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}  # fmt: skip


def _prf(alg: str, key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, _PRF[alg])
    h.update(data)
    return h.finalize()


def _cbc_decrypt(cipher: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    algo: BlockCipherAlgorithm = (
        TripleDES(key) if cipher == "3des" else algorithms.AES(key)
    )
    dec = Cipher(algo, modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


def verify_vector(v: dict[str, Any]) -> None:
    """Recompute SKEYID* (RFC 2409 5, PSK) and decrypt every message; raise on mismatch.

    Guards against log-parsing mistakes; the project's own crypto is tested
    against these files elsewhere.
    """
    tokens = v["proposal"].split("-")
    cipher, prf = tokens[0], tokens[1]
    p1 = v["phase1"]
    h = bytes.fromhex
    ck = h(v["initiator_cookie"]) + h(v["responder_cookie"])
    skeyid = _prf(prf, h(v["psk"]), h(p1["nonce_i"]) + h(p1["nonce_r"]))
    d = _prf(prf, skeyid, h(p1["g_xy"]) + ck + b"\x00")
    a = _prf(prf, skeyid, d + h(p1["g_xy"]) + ck + b"\x01")
    e = _prf(prf, skeyid, a + h(p1["g_xy"]) + ck + b"\x02")
    got = [skeyid.hex(), d.hex(), a.hex(), e.hex()]
    want = [p1["skeyid"], p1["skeyid_d"], p1["skeyid_a"], p1["skeyid_e"]]
    if got != want:
        raise VectorError(f"{v['scenario']}: SKEYID chain does not recompute")
    for msg in v["messages"]:
        if msg["encrypted"]:
            plain = _cbc_decrypt(cipher, h(p1["encryption_key"]), h(msg["iv"]),
                                 h(msg["data"])[28:])  # fmt: skip
            if plain != h(msg["plaintext"]) + h(msg["padding"]):
                raise VectorError(f"{v['scenario']}: a {msg['exchange']} message "
                                  "does not decrypt to its logged plaintext")  # fmt: skip


# --- one scenario ----------------------------------------------------------------------


class VectorError(RuntimeError):
    pass


def _agree(
    name: str, found: dict[str, list[bytes]], logged_by: dict[str, list[str]], path: str
) -> str | None:
    """The single value both logs agree on (hex), noting who logged it."""
    distinct = {v for vals in found.values() for v in vals}
    if not distinct:
        return None
    if len(distinct) > 1:
        raise VectorError(f"{name}: charons logged {len(distinct)} different values for {path}")
    logged_by[path] = [side for side, vals in found.items() if vals]
    return distinct.pop().hex()


def run_scenario(sc: Scenario, work: Path) -> tuple[dict[str, Any], Path]:
    pcap = work / f"{sc.name}.pcap"
    with two_hosts() as topo:
        ini = Charon(topo.a, work / "initiator", LOG_LEVELS)
        res = Charon(topo.b, work / "responder", LOG_LEVELS)
        try:
            return _exchange(sc, topo, ini, res, pcap), pcap
        finally:
            ini.stop()
            res.stop()


def _exchange(sc: Scenario, topo: Topology, ini: Charon, res: Charon, pcap: Path) -> dict[str, Any]:
    common: dict[str, Any] = {
        "psk": PSK, "proposals": [sc.ike_proposal], "esp_proposals": [sc.esp_proposal],
    }  # fmt: skip
    ini.load_config(swanctl_conf(
        "gw", topo.addr_a, topo.addr_b, topo.addr_a, topo.addr_b,
        local_ts=topo.inner_net_a, remote_ts=topo.inner_net_b, **common,
    ))  # fmt: skip
    res.load_config(swanctl_conf(
        "gw", topo.addr_b, topo.addr_a, topo.addr_b, topo.addr_a,
        local_ts=topo.inner_net_b, remote_ts=topo.inner_net_a, **common,
    ))  # fmt: skip
    cap = Capture(topo.a, topo.if_a, pcap, "udp port 500 or udp port 4500")
    try:
        ok, out = ini.initiate("net", "gw", timeout=15)
        if not ok:
            raise VectorError(f"{sc.name}: initiate failed:\n{out}")
        sas = ini.list_sas()
        echo = ping(topo.a, topo.inner_addr_b, src=topo.inner_addr_a, count=1)
        if echo.received != 1:
            raise VectorError(f"{sc.name}: no echo reply through the tunnel")
        ini.terminate(ike="gw")
        res.wait_for(lambda s: not s, timeout=5)
    finally:
        cap.stop()
    logs = {"initiator": parse_charon_log(ini.log_text()),
            "responder": parse_charon_log(res.log_text())}  # fmt: skip
    return build_vector(sc, topo, sas, logs, read_pcap_udp(pcap))


def build_vector(
    sc: Scenario,
    topo: Topology,
    sas: list[dict[str, Any]],
    logs: dict[str, CharonLog],
    datagrams: list[Datagram],
) -> dict[str, Any]:
    if len(sas) != 1 or len(sas[0]["children"]) != 1:
        raise VectorError(f"{sc.name}: expected one IKE SA with one child, got {sas}")
    ike, child = sas[0], sas[0]["children"][0]
    side_of = {topo.addr_a: "initiator", topo.addr_b: "responder"}
    logged_by: dict[str, list[str]] = {}

    messages: list[dict[str, Any]] = []
    esp_packets: list[dict[str, Any]] = []
    for dg in datagrams:
        sender = side_of[dg.src]
        data = dg.payload
        port = dg.dport if sender == "initiator" else dg.sport
        if port == NAT_T_PORT:
            if data == NAT_KEEPALIVE:
                continue  # RFC 3948 §2.3
            if data[:4] != NON_ESP_MARKER:
                spi, seq = struct.unpack_from("!II", data, 0)
                esp_packets.append(
                    {"from": sender, "spi": f"{spi:08x}", "seq": seq, "data": data.hex()}
                )
                continue
            data = data[len(NON_ESP_MARKER) :]  # RFC 3948 §2.2
        messages.append(_message(sc, sender, port, data, logs))

    cookies = {m["data"][:16] for m in messages}, {m["data"][16:32] for m in messages[1:]}
    if len(cookies[0]) != 1 or len(cookies[1]) != 1:
        raise VectorError(f"{sc.name}: more than one ISAKMP SA on the wire")
    ck_i, ck_r = cookies[0].pop(), cookies[1].pop()
    if (ck_i, ck_r) != (ike["initiator-spi"], ike["responder-spi"]):
        raise VectorError(f"{sc.name}: cookies on the wire differ from vici's")

    def found(label: str) -> dict[str, list[bytes]]:
        return {side: log.values(label) for side, log in logs.items()}

    phase1: dict[str, Any] = {}
    for label, key in PHASE1_LABELS.items():
        value = _agree(sc.name, found(label), logged_by, f"phase1.{key}")
        if value is not None:
            phase1[key] = value
    mm = [m for m in messages if m["exchange"] == "ID_PROT"]
    senders = [m["from"] for m in mm]
    if senders != ["initiator", "responder"] * 3 or int(mm[0]["data"][16:32], 16) != 0:
        raise VectorError(f"{sc.name}: capture does not hold the 6 Main Mode messages")
    for msg, who in ((mm[2], "i"), (mm[3], "r")):
        chain = walk_payloads(bytes.fromhex(msg["data"])[16], bytes.fromhex(msg["data"])[28:])
        for ptype, key in ((PAYLOAD_KE, "ke"), (PAYLOAD_NONCE, "nonce")):
            body = body_of(chain, ptype)
            if body is not None:
                phase1[f"{key}_{who}"] = body.hex()

    phase2: dict[str, Any] = {}
    qm = [m for m in messages if m["exchange"] == "QUICK_MODE"]
    if len(qm) != 3:
        raise VectorError(f"{sc.name}: expected 3 Quick Mode messages, saw {len(qm)}")
    phase2["message_id"] = qm[0]["message_id"]
    for label, key in PHASE2_LABELS.items():
        value = _agree(sc.name, found(label), logged_by, f"phase2.{key}")
        if value is not None:
            phase2[key] = value
    for msg, who in ((qm[0], "i"), (qm[1], "r")):
        first = bytes.fromhex(msg["data"])[16]
        chain = walk_payloads(first, bytes.fromhex(msg["plaintext"]))
        for ptype, key in ((PAYLOAD_NONCE, "nonce"), (PAYLOAD_KE, "ke")):
            body = body_of(chain, ptype)
            if body is not None:
                phase2[f"{key}_{who}"] = body.hex()

    esp: dict[str, Any] = {
        "proposal": sc.esp_proposal,
        "mode": "tunnel",
        "encap": True,
        "initiator_to_responder": {"spi": child["spi-out"]},
        "responder_to_initiator": {"spi": child["spi-in"]},
    }
    for label, (direction, key) in ESP_LABELS.items():
        value = _agree(sc.name, found(label), logged_by, f"esp.{direction}.{key}")
        if value is not None:
            esp[direction][key] = value
    secret_len = len(phase2.get("g_qm_xy", "")) // 2
    for direction in ("initiator_to_responder", "responder_to_initiator"):
        seed = bytes.fromhex(esp[direction]["keymat_seed"])
        if seed[secret_len + 1 : secret_len + 5].hex() != esp[direction]["spi"]:
            raise VectorError(f"{sc.name}: {direction} KEYMAT seed does not carry its SPI")
        if seed[secret_len + 5 :].hex() != phase2["nonce_i"] + phase2["nonce_r"]:
            raise VectorError(f"{sc.name}: {direction} KEYMAT seed does not end in Ni_b | Nr_b")

    natd: list[dict[str, str]] = []
    chunks, hashes = logs["initiator"].values("natd_chunk"), logs["initiator"].values("natd_hash")
    for chunk, digest in zip(chunks, hashes, strict=False):
        entry = {"input": chunk.hex(), "hash": digest.hex()}
        if entry not in natd:
            natd.append(entry)

    version = logs["initiator"].version
    pkg = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "strongswan-charon"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    levels = ", ".join(f"{k} = {v}" for k, v in LOG_LEVELS.items())
    return {
        "_doc": DOC,
        "scenario": sc.name,
        "source": (
            f"strongSwan {version} charon (Debian strongswan-charon {pkg}) as initiator and "
            f"responder in two Linux network namespaces, {today}, generated by "
            f"scripts/capture_strongswan_vectors.py: keys from both charons' filelog at "
            f"{levels}; wire from dumpcap on the initiator's interface."
        ),
        "note": sc.note,
        "psk": PSK.encode().hex(),
        "psk_text": PSK,
        "proposal": sc.ike_proposal,
        "esp_proposal": sc.esp_proposal,
        "initiator": {"address": topo.addr_a, "id": topo.addr_a, "inner_net": topo.inner_net_a},
        "responder": {"address": topo.addr_b, "id": topo.addr_b, "inner_net": topo.inner_net_b},
        "initiator_cookie": ck_i,
        "responder_cookie": ck_r,
        "negotiated": {
            "ike": {k: ike.get(k) for k in _IKE_KEYS},
            "esp": {k: child.get(k) for k in _CHILD_KEYS},
        },
        "messages": messages,
        "phase1": phase1,
        "phase2": phase2,
        "esp": esp,
        "esp_packets": esp_packets,
        "natd": natd,
        "logged_by": logged_by,
    }


_IKE_KEYS = ("encr-alg", "encr-keysize", "integ-alg", "prf-alg", "dh-group")
_CHILD_KEYS = ("encr-alg", "encr-keysize", "integ-alg", "dh-group", "mode", "encap")


def _message(
    sc: Scenario, sender: str, port: int, data: bytes, logs: dict[str, CharonLog]
) -> dict[str, Any]:
    exch, flags = data[18], data[19]
    (mid,) = struct.unpack_from("!I", data, 20)
    msg: dict[str, Any] = {
        "from": sender,
        "port": port,
        "exchange": EXCHANGES.get(exch, str(exch)),
        "message_id": f"{mid:08x}",
        "encrypted": bool(flags & 0x01),
        "data": data.hex(),
    }
    if not msg["encrypted"]:
        return msg
    body = data[28:]
    receiver = "responder" if sender == "initiator" else "initiator"
    sent = [c for c in logs[sender].crypts
            if c.direction == "encrypt" and c.parts.get("encrypted") == body]  # fmt: skip
    if not sent:
        raise VectorError(f"{sc.name}: no encryption record for a {msg['exchange']} message")
    parts = sent[0].parts
    msg["iv"] = parts["IV"].hex()
    msg["plaintext"] = parts["plain"].hex()
    msg["padding"] = parts.get("padding", b"").hex()
    got = [c for c in logs[receiver].crypts
           if c.direction == "decrypt" and c.parts.get("encrypted") == body]  # fmt: skip
    if got and not got[0].parts["plain"].startswith(parts["plain"]):
        raise VectorError(f"{sc.name}: receiver decrypted something else")
    return msg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", action="append", help="scenario name (repeatable)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (charon logs)")
    parser.add_argument("--no-demo", action="store_true", help="don't update demo_data/")
    args = parser.parse_args(argv)
    cleanup_stale()
    args.out.mkdir(parents=True, exist_ok=True)
    work_root = Path(tempfile.mkdtemp(prefix="ikv1d-vectors-"))
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    try:
        for sc in chosen:
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    vector, pcap = run_scenario(sc, work_root / f"{sc.name}-{attempt}")
                    verify_vector(vector)
                    break
                except VectorError as exc:
                    sys.stderr.write(f"{sc.name}: attempt {attempt} failed: {exc}\n")
                    if attempt == ATTEMPTS:
                        raise
            text = json.dumps(vector, indent=1) + "\n"
            (args.out / f"{sc.name}.json").write_text(text)
            sys.stdout.write(
                f"{sc.name}: {len(vector['messages'])} ISAKMP messages, "
                f"{len(vector['esp_packets'])} ESP packets, {len(vector['logged_by'])} logged "
                f"values -> {args.out / (sc.name + '.json')}\n"
            )
            if sc.name == DEMO_SCENARIO and not args.no_demo:
                DEMO_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(pcap, DEMO_DIR / f"{DEMO_NAME}.pcap")
                (DEMO_DIR / f"{DEMO_NAME}.json").write_text(text)
    finally:
        if args.keep:
            sys.stdout.write(f"work dir kept: {work_root}\n")
        else:
            shutil.rmtree(work_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
