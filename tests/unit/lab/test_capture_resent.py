"""``resent_frames``: which datagrams of a capture repeat an earlier one (tshark reads it)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from ikev1d_lab.capture import resent_frames

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")


def _udp_frame(payload: bytes, sport: int = 4500, dport: int = 4500) -> bytes:
    """An IPv4/UDP packet (raw IP link type) with zero checksums."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))
    return ip + udp


def _pcap(path: Path, frames: list[bytes]) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)  # LINKTYPE_RAW
    for n, frame in enumerate(frames):
        out += struct.pack("<IIII", 1000 + n, 0, len(frame), len(frame)) + frame
    path.write_bytes(out)
    return path


def test_a_payload_seen_before_is_a_resent_frame(tmp_path: Path) -> None:
    first, other = b"\x00" * 4 + b"first message", b"\x00" * 4 + b"another one"
    pcap = _pcap(tmp_path / "c.pcap", [
        _udp_frame(first), _udp_frame(other), _udp_frame(first),
        _udp_frame(first, 500, 500),  # the same octets again, on other ports
        _udp_frame(other + b"!"),
    ])
    assert resent_frames(pcap) == {"3", "4"}
