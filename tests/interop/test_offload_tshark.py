"""TCP segments cut from TSO super-packets, checked by tshark's dissectors.

tshark (Wireshark 4.0: packet-ip.c, packet-tcp.c) verifies the IPv4 header and
TCP checksums when told to, and follows the TCP stream: a decoder nobody here
wrote. One pcap holds the segments of an IPv4 and an IPv6 super-packet (odd
last segment, PSH and FIN on the super-packet), then a deliberately broken
copy of one segment, which must be reported bad (the check is really done).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ikev1d.dataplane.linux.offload import GSO_TCPV4, GSO_TCPV6, segment_tcp
from ikev1d_lab.capture import tshark_fields, write_raw_pcap
from tests.unit.dataplane.test_offload import ACK, FIN, PSH, tcp_packet

pytestmark = pytest.mark.interop
GOOD, BAD = "1", "0"
FIELDS = ["frame.number", "ip.checksum.status", "tcp.checksum.status", "tcp.seq_raw",
          "tcp.len", "tcp.flags.push", "tcp.flags.fin", "tcp.analysis.flags", "ipv6.plen"]
PAYLOAD = bytes((i * 31 + 7) & 0xFF for i in range(10_001))


def _packets() -> tuple[list[bytes], int]:
    v4 = tcp_packet("10.1.0.1", "10.2.0.1", PAYLOAD, seq=1_000_000, flags=ACK | PSH | FIN,
                    options=bytes((1, 1, 8, 10)) + bytes(8))
    v6 = tcp_packet("fd00:1::1", "fd00:2::1", PAYLOAD, seq=2_000_000, flags=ACK | PSH,
                    options=bytes((1, 1, 8, 10)) + bytes(8))
    out = segment_tcp(v4, GSO_TCPV4, 1348, 20) + segment_tcp(v6, GSO_TCPV6, 1328, 40)
    count = len(out)
    broken = bytearray(out[3])
    broken[-1] ^= 1
    out.append(bytes(broken))
    return out, count


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    tmp: Path = tmp_path_factory.mktemp("offload_tshark")
    pcap = write_raw_pcap(tmp / "segments.pcap", _packets()[0])
    return tshark_fields(pcap, FIELDS, ["tcp.check_checksum:TRUE", "ip.check_checksum:TRUE"])


def test_every_segment_has_good_checksums_and_follows_on(rows: list[dict[str, str]]) -> None:
    count = _packets()[1]
    v4 = [r for r in rows[:count] if not r["ipv6.plen"]]
    v6 = [r for r in rows[:count] if r["ipv6.plen"]]
    assert len(v4) == 8 and len(v6) == 8
    for group, base in ((v4, 1_000_000), (v6, 2_000_000)):
        seq = base
        for row in group:
            assert row["tcp.checksum.status"] == GOOD, row
            assert int(row["tcp.seq_raw"]) == seq, row
            # tshark finds no retransmission, gap or overlap in the stream.
            assert row["tcp.analysis.flags"] == "", row
            seq += int(row["tcp.len"])
        assert seq - base == len(PAYLOAD)
        assert [r["tcp.flags.push"] for r in group] == ["0"] * 7 + ["1"]
    for row in v4:
        assert row["ip.checksum.status"] == GOOD, row
    assert [r["tcp.flags.fin"] for r in v4] == ["0"] * 7 + ["1"]


def test_a_broken_segment_is_seen(rows: list[dict[str, str]]) -> None:
    assert rows[-1]["tcp.checksum.status"] == BAD
