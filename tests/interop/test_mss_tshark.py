"""MSS clamping and ICMP "too big" packets, checked by tshark's dissectors.

tshark (Wireshark 4.0: packet-tcp.c, packet-ip.c, packet-icmp.c, packet-icmpv6.c)
verifies the IPv4 header, TCP, ICMP and ICMPv6 checksums when told to
(``-o tcp.check_checksum:TRUE``, ``-o ip.check_checksum:TRUE``); a decoder nobody
here wrote. One pcap holds clamped SYNs (IPv4 and IPv6, MSS option at an even
and at an odd offset) and the ICMP errors for oversized packets; a deliberately
broken copy of one SYN must be reported bad, which shows the check is really done.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ikev1d.dataplane.mss import clamp_mss, too_big
from ikev1d_lab.capture import tshark_fields, write_raw_pcap
from tests.unit.dataplane.test_mss import LINUX_SYN_OPTIONS, mss_option, tcp_segment

pytestmark = pytest.mark.interop
# Wireshark's proto_checksum_enum_e: 0 bad, 1 good, 2 unverified, 3 not present
GOOD, BAD = "1", "0"
FIELDS = ["frame.number", "ip.checksum.status", "tcp.checksum.status", "tcp.options.mss_val",
          "icmp.type", "icmp.code", "icmp.checksum.status", "icmp.mtu", "icmpv6.type",
          "icmpv6.checksum.status", "icmpv6.mtu"]


def _packets() -> list[bytes]:
    out: list[bytes] = []
    for src, dst in (("10.1.0.1", "10.2.0.1"), ("fd00:1::1", "fd00:2::1")):
        for prefix in (b"", b"\x01"):
            syn = tcp_segment(src, dst, options=prefix + mss_option(1460) + LINUX_SYN_OPTIONS)
            clamped = clamp_mss(syn, 1300)
            assert clamped is not None
            out.append(clamped)
        big = tcp_segment(src, dst, flags=0x10, payload=bytes(1400))
        icmp = too_big(big, 1300)
        assert icmp is not None
        out.append(icmp)
    broken = bytearray(out[0])
    broken[-1] ^= 1  # a wrong TCP checksum: tshark must say so
    out.append(bytes(broken))
    return out


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    tmp: Path = tmp_path_factory.mktemp("mss_tshark")
    pcap = write_raw_pcap(tmp / "mss.pcap", _packets())
    return tshark_fields(pcap, FIELDS, ["tcp.check_checksum:TRUE", "ip.check_checksum:TRUE"])


def test_clamped_syns_have_good_checksums(rows: list[dict[str, str]]) -> None:
    syns = [rows[0], rows[1], rows[3], rows[4]]
    for row, mss in zip(syns, (1260, 1260, 1240, 1240), strict=True):
        assert row["tcp.checksum.status"] == GOOD, row
        assert row["tcp.options.mss_val"] == str(mss), row
    assert rows[0]["ip.checksum.status"] == GOOD


def test_icmp_errors_are_well_formed(rows: list[dict[str, str]]) -> None:
    v4, v6 = rows[2], rows[5]
    assert (v4["icmp.type"], v4["icmp.code"], v4["icmp.mtu"]) == ("3", "4", "1300"), v4
    assert v4["icmp.checksum.status"] == GOOD and v4["ip.checksum.status"] == GOOD, v4
    assert (v6["icmpv6.type"], v6["icmpv6.mtu"]) == ("2", "1300"), v6
    assert v6["icmpv6.checksum.status"] == GOOD, v6


def test_a_broken_checksum_is_seen(rows: list[dict[str, str]]) -> None:
    assert rows[6]["tcp.checksum.status"] == BAD
