"""The demo's own capture reader and exchange decoder, on the packaged strongSwan capture.

The reader's output is checked against an independent source: the JSON written by
scripts/capture_strongswan_vectors.py from charon's logs lists every ISAKMP message
with its sender and port, and tshark's numbering of the same file (ESP in frames
10 and 11).
"""

from __future__ import annotations

import json
import struct
from importlib import resources
from typing import Any

import pytest

from ikev1d_lab.demo_exchange import DEMO_PCAP, DEMO_VECTOR, decode_exchange, load_demo_exchange
from ikev1d_lab.demo_pcap import (
    PcapError,
    PcapPacket,
    ipv4_of,
    isakmp_frames,
    read_capture,
    udp_of,
)


def _data(name: str) -> bytes:
    return (resources.files("ikev1d_lab") / "demo_data" / name).read_bytes()


@pytest.fixture(scope="module")
def pcap() -> bytes:
    return _data(DEMO_PCAP)


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_data(DEMO_VECTOR))
    return document


def _records(pcap: bytes) -> list[tuple[int, int, bytes]]:
    """(seconds, microseconds, frame) of a little-endian classic pcap, read independently."""
    out, offset = [], 24
    while offset < len(pcap):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", pcap, offset)
        out.append((sec, usec, pcap[offset + 16 : offset + 16 + caplen]))
        offset += 16 + caplen
    return out


def _pcapng(records: list[tuple[int, int, bytes]], big_endian: bool = False) -> bytes:
    """A minimal pcapng file (SHB, one Ethernet IDB, one EPB per frame)."""
    e = ">" if big_endian else "<"

    def block(block_type: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        length = 12 + len(body)
        return struct.pack(e + "II", block_type, length) + body + struct.pack(e + "I", length)

    out = block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack(e + "HHI", 1, 0, 0))
    for sec, usec, frame in records:
        ts = sec * 1_000_000 + usec
        out += block(6, struct.pack(e + "IIIII", 0, ts >> 32, ts & 0xFFFFFFFF,
                                    len(frame), len(frame)) + frame)
    return out


def test_classic_pcap_frames_match_the_capture_script(pcap: bytes, vector: dict[str, Any]) -> None:
    packets = read_capture(pcap)
    assert len(packets) == 13
    assert {p.linktype for p in packets} == {1}  # Ethernet
    frames = isakmp_frames(packets)
    # tshark numbers the two ESP packets 10 and 11; they are not ISAKMP.
    assert [f.number for f in frames] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13]
    addresses = {"initiator": vector["initiator"]["address"],
                 "responder": vector["responder"]["address"]}
    assert len(frames) == len(vector["messages"])
    for frame, message in zip(frames, vector["messages"], strict=True):
        assert frame.data.hex() == message["data"]  # non-ESP marker stripped on 4500
        assert frame.src == addresses[message["from"]]
        assert frame.sport == frame.dport == message["port"]
    assert frames[0].timestamp < frames[-1].timestamp


def test_esp_frames_are_udp_4500_without_the_marker(pcap: bytes, vector: dict[str, Any]) -> None:
    packets = read_capture(pcap)
    esp = [udp_of(ip) for ip in (ipv4_of(p) for p in packets[9:11]) if ip is not None]
    assert [d.payload.hex() if d else None for d in esp] == [
        p["data"] for p in vector["esp_packets"]
    ]


def test_pcapng_gives_the_same_frames(pcap: bytes) -> None:
    records = _records(pcap)
    for big_endian in (False, True):
        packets = read_capture(_pcapng(records, big_endian))
        assert [p.data for p in packets] == [r[2] for r in records]
        assert packets[0].timestamp == pytest.approx(records[0][0] + records[0][1] / 1e6)
        ours = [(f.number, f.src, f.sport, f.data) for f in isakmp_frames(packets)]
        assert ours == [(f.number, f.src, f.sport, f.data)
                        for f in isakmp_frames(read_capture(pcap))]


def test_big_endian_classic_pcap(pcap: bytes) -> None:
    fields = struct.unpack_from("<IHHiIII", pcap, 0)
    out = bytearray(struct.pack(">IHHiIII", *fields))
    for sec, usec, frame in _records(pcap):
        out += struct.pack(">IIII", sec, usec, len(frame), len(frame)) + frame
    assert read_capture(bytes(out)) == read_capture(pcap)


def test_truncated_files_raise_pcap_error_only(pcap: bytes) -> None:
    full = read_capture(pcap)
    ng = _pcapng(_records(pcap))
    for data in (pcap, ng):
        for n in range(len(data)):
            try:
                packets = read_capture(data[:n])
            except PcapError:
                continue
            # a cut exactly between records: a prefix of the frames
            assert [p.data for p in packets] == [p.data for p in full[: len(packets)]]


def test_not_a_capture() -> None:
    for data in (b"", b"hello world, not a pcap", bytes(64)):
        with pytest.raises(PcapError):
            read_capture(data)


def test_malformed_ip_and_udp_lengths_raise_pcap_error(pcap: bytes) -> None:
    frame = read_capture(pcap)[0].data
    bad_ip = frame[:16] + b"\xff\xff" + frame[18:]  # IPv4 total length beyond the frame
    with pytest.raises(PcapError):
        ipv4_of(PcapPacket(0.0, 1, bad_ip))
    bad_udp = frame[:38] + b"\xff\xff" + frame[40:]  # UDP length beyond the packet
    ip = ipv4_of(PcapPacket(0.0, 1, bad_udp))
    assert ip is not None
    with pytest.raises(PcapError):
        udp_of(ip)


def test_fragments_and_other_link_types_are_skipped(pcap: bytes) -> None:
    frame = read_capture(pcap)[0].data
    more_fragments = frame[:20] + b"\x20\x00" + frame[22:]
    assert ipv4_of(PcapPacket(0.0, 1, more_fragments)) is None
    assert ipv4_of(PcapPacket(0.0, 105, frame)) is None  # 802.11: not understood
    raw = ipv4_of(PcapPacket(0.0, 101, frame[14:]))  # the same packet as raw IP
    assert raw == ipv4_of(PcapPacket(0.0, 1, frame))


def test_keepalive_on_4500_is_not_isakmp(pcap: bytes) -> None:
    frame = read_capture(pcap)[4].data  # Main Mode 5, on UDP 4500
    ihl = (frame[14] & 0x0F) * 4
    udp_start = 14 + ihl
    keepalive = bytearray(frame[: udp_start + 8] + b"\xff")
    struct.pack_into("!H", keepalive, 16, ihl + 9)  # IPv4 total length
    struct.pack_into("!H", keepalive, udp_start + 4, 9)  # UDP length
    assert isakmp_frames([PcapPacket(0.0, 1, bytes(keepalive))]) == []


def test_exchange_decrypts_and_every_hash_verifies() -> None:
    view = load_demo_exchange()
    assert view.ok, (view.problems, [m.problem for m in view.messages])
    titles = [m.title for m in view.messages]
    assert titles == [*(f"Main Mode {i}" for i in range(1, 7)),
                      "Quick Mode 1", "Quick Mode 2", "Quick Mode 3",
                      "Informational", "Informational"]
    assert [m.encrypted for m in view.messages] == [False] * 4 + [True] * 7
    checks = [c for m in view.messages for c in m.checks]
    assert checks == ["HASH_I verified", "HASH_R verified", "HASH(1) verified",
                      "HASH(2) verified", "HASH(3) verified", "HASH(1) verified",
                      "HASH(1) verified"]
    mm5 = view.messages[4]
    assert "ID IPV4_ADDR 192.0.2.1 proto=0 port=0" in mm5.decrypted
    qm1 = view.messages[6]
    assert any("ESP spi=dc7e297f" in line for line in qm1.decrypted)
    assert any("10.2.0.0/24" in line for line in qm1.decrypted)
    assert view.key_checks and "SKEYID_e" in view.key_checks[0]


def test_wrong_psk_is_noticed(pcap: bytes, vector: dict[str, Any]) -> None:
    frames = isakmp_frames(read_capture(pcap))
    wrong = {**vector, "psk": b"not the secret".hex()}
    view = decode_exchange(frames, wrong)
    assert not view.ok
    assert "SKEYID differs from charon's logged value" in view.problems
    assert not any(m.checks for m in view.messages)


def test_tampered_quick_mode_does_not_verify(pcap: bytes, vector: dict[str, Any]) -> None:
    frames = isakmp_frames(read_capture(pcap))
    qm1 = frames[6]
    data = bytearray(qm1.data)
    data[-1] ^= 0x01  # last ciphertext byte: garbles only the padding block's last octet
    data[-17] ^= 0x80  # and a byte of the block before: garbles the plaintext
    frames[6] = type(qm1)(qm1.number, qm1.timestamp, qm1.src, qm1.sport, qm1.dst,
                          qm1.dport, bytes(data))
    view = decode_exchange(frames, vector)
    assert not view.ok
    assert view.messages[6].problem
