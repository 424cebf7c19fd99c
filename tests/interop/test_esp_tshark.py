"""ESP packets sealed by ikev1d, decrypted and authenticated by tshark.

tshark's ESP dissector (Wireshark 4.0, epan/dissectors/packet-ipsec.c, on
libgcrypt) is a decoder nobody here wrote. We write one pcap with packets of
every transform, raw (IP protocol 50) and UDP-encapsulated (RFC 3948, port
4500), tunnel and transport mode, give tshark the keys in its ``esp_sa`` table,
and check it finds the ICV correct, the padding where RFC 4303 §2.4 puts it, the
next header, and the inner packet (addresses and payload) we sealed. Two
tampered packets per SA (a ciphertext bit, an ICV bit) must be reported as a
bad ICV, which shows the check is really done. tshark runs once for the whole
module (it starts slowly).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path

import pytest

from ikev1d.dataplane.esp import OutboundSa, esp_algorithm, keymat_length
from ikev1d.dataplane.packet import (
    IPPROTO_ESP,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    IPPROTO_UDP,
    build_ipv4_packet,
    build_udp_header,
    inet_checksum,
    udp_encapsulate,
)

OUTER_SRC = "192.0.2.1"
OUTER_DST = "192.0.2.2"
INNER_SRC = "10.1.0.1"
INNER_DST = "10.2.0.7"
INNER6_SRC = "fd00:1::1"
INNER6_DST = "fd00:2::7"
pytestmark = pytest.mark.interop

LINKTYPE_RAW = 101  # pcap link type: raw IPv4/IPv6 packets

# (strongSwan encryption, key bits, integrity, GCM ICV, tshark encryption, tshark integrity)
TRANSFORMS = [
    ("aesgcm", 128, None, 16, "AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
    ("aesgcm", 256, None, 16, "AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
    ("aesgcm", 128, None, 8, "AES-GCM with 8 octet ICV [RFC4106]", "NULL"),
    ("aesgcm", 192, None, 12, "AES-GCM with 12 octet ICV [RFC4106]", "NULL"),
    ("aes", 256, "sha256", 0, "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
    ("aes", 128, "sha256", 0, "AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
    ("aes", 192, "sha384", 0, "AES-CBC [RFC3602]", "HMAC-SHA-384-192 [RFC4868]"),
    ("aes", 256, "sha512", 0, "AES-CBC [RFC3602]", "HMAC-SHA-512-256 [RFC4868]"),
    ("aes", 128, "md5", 0, "AES-CBC [RFC3602]", "HMAC-MD5-96 [RFC2403]"),
    ("3des", 192, "sha1", 0, "TripleDES-CBC [RFC2451]", "HMAC-SHA-1-96 [RFC2404]"),
    ("null", 0, "sha1", 0, "NULL", "HMAC-SHA-1-96 [RFC2404]"),
]


@dataclass(frozen=True)
class Expected:
    """What tshark should report for one frame."""

    spi: int
    seq: int
    next_header: int
    pad_length: int
    inner_src: str | None  # tunnel mode: the inner header's addresses
    inner_dst: str | None
    data: bytes  # the application payload inside ICMP / UDP
    icv_good: bool
    encapsulated: bool


def _icmp_echo(payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1)
    return struct.pack("!BBHHH", 8, 0, inet_checksum(header + payload), 0x4242, 1) + payload


def _udp(src: str, dst: str, payload: bytes) -> bytes:
    return build_udp_header(40001, 40002, payload, src, dst) + payload


def _ipv6_udp(payload: bytes) -> bytes:
    src, dst = IPv6Address(INNER6_SRC).packed, IPv6Address(INNER6_DST).packed
    length = 8 + len(payload)
    pseudo = src + dst + struct.pack("!IxxxB", length, IPPROTO_UDP)
    checksum = inet_checksum(pseudo + struct.pack("!HHHH", 40001, 40002, length, 0) + payload)
    udp = struct.pack("!HHHH", 40001, 40002, length, checksum) + payload
    return struct.pack("!IHBB", 6 << 28, len(udp), IPPROTO_UDP, 64) + src + dst + udp


def _text(size: int) -> bytes:
    """Payload bytes that no tshark heuristic dissector mistakes for a protocol."""
    stem = f"ikev1d-esp-{size}-{os.urandom(4).hex()} ".encode()
    return (stem * (size // len(stem) + 1))[:size]


def _build(tmp: Path) -> tuple[Path, list[str], list[Expected]]:
    frames: list[bytes] = []
    expected: list[Expected] = []
    uat_rows: list[str] = []
    for index, (enc, bits, integ, icv, ws_enc, ws_auth) in enumerate(TRANSFORMS):
        alg = esp_algorithm(enc, bits, integ, icv)
        keymat = os.urandom(keymat_length(alg))
        enc_key = keymat[: alg.key_length + alg.salt_length]
        auth_key = keymat[alg.key_length + alg.salt_length :]
        for encapsulated in (False, True):
            spi = 0xC0000000 | (index << 8) | int(encapsulated)
            sa = OutboundSa(spi, alg, keymat)
            uat_rows.append(
                f'"IPv4","{OUTER_SRC}","{OUTER_DST}","{spi:#010x}","{ws_enc}",'
                f'"0x{enc_key.hex()}","{ws_auth}","0x{auth_key.hex() if auth_key else ""}"'
            )
            cases: list[tuple[int, bytes, str | None, str | None, bytes]] = []
            for size in (0, 1, 13, 100, 1400):
                data = _text(size)
                inner = build_ipv4_packet(INNER_SRC, INNER_DST, 1, _icmp_echo(data))
                cases.append((IPPROTO_IPIP, inner, INNER_SRC, INNER_DST, data))
            data = _text(57)
            udp = _udp(INNER_SRC, INNER_DST, data)
            cases.append((IPPROTO_IPIP, build_ipv4_packet(INNER_SRC, INNER_DST, 17, udp),
                          INNER_SRC, INNER_DST, data))
            data = _text(77)
            cases.append((IPPROTO_IPV6, _ipv6_udp(data), INNER6_SRC, INNER6_DST, data))
            # Transport mode: the upper-layer header follows ESP directly.
            data = _text(33)
            cases.append((IPPROTO_UDP, _udp(OUTER_SRC, OUTER_DST, data), None, None, data))
            data = _text(21)
            cases.append((1, _icmp_echo(data), None, None, data))
            # Two more to be tampered with: one bit of the first ciphertext octet (the
            # trailer stays intact, so tshark still parses the packet), and one of the ICV.
            data = _text(40)
            cases += [(1, _icmp_echo(data), None, None, data)] * 2
            for n, (next_header, payload, isrc, idst, data) in enumerate(cases):
                esp = sa.seal(payload, next_header)
                tamper = n >= len(cases) - 2
                if tamper:
                    flip = 8 + alg.iv_length if n == len(cases) - 2 else len(esp) - 1
                    esp = esp[:flip] + bytes([esp[flip] ^ 0x10]) + esp[flip + 1 :]
                if encapsulated:
                    frame = build_ipv4_packet(OUTER_SRC, OUTER_DST, IPPROTO_UDP,
                                              udp_encapsulate(esp))
                else:
                    frame = build_ipv4_packet(OUTER_SRC, OUTER_DST, IPPROTO_ESP, esp)
                frames.append(frame)
                pad_length = -(len(payload) + 2) % alg.block_size
                expected.append(Expected(spi, sa.seq, next_header, pad_length, isrc, idst, data,
                                         not tamper, encapsulated))
    pcap = tmp / "esp.pcap"
    with pcap.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for i, frame in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame)
    return pcap, uat_rows, expected


FIELDS = ["frame.number", "udp.dstport", "esp.spi", "esp.sequence", "esp.icv_good",
          "esp.icv_bad", "esp.pad", "esp.pad_len", "esp.protocol", "ip.src", "ip.dst",
          "ipv6.src", "ipv6.dst", "data.data"]


@pytest.fixture(scope="module")
def dissected(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Expected, dict[str, str]]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    tmp = tmp_path_factory.mktemp("esp_tshark")
    pcap, uat_rows, expected = _build(tmp)
    cmd = ["tshark", "-n", "-r", str(pcap),
           "-o", "esp.enable_encryption_decode:TRUE",
           "-o", "esp.enable_authentication_check:TRUE"]
    for row in uat_rows:
        cmd += ["-o", f"uat:esp_sa:{row}"]
    cmd += ["-T", "fields", "-E", "separator=|", "-E", "occurrence=a"]
    for field in FIELDS:
        cmd += ["-e", field]
    # A private HOME so no personal Wireshark preferences or UAT files take part.
    env = {**os.environ, "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    rows = [dict(zip(FIELDS, line.split("|"), strict=True))
            for line in proc.stdout.splitlines() if line]
    assert len(rows) == len(expected)
    return list(zip(expected, rows, strict=True))


def test_every_packet_decrypted_and_authenticated(
    dissected: list[tuple[Expected, dict[str, str]]],
) -> None:
    good = [(e, r) for e, r in dissected if e.icv_good]
    assert len(good) == len(TRANSFORMS) * 2 * 9
    for exp, row in good:
        where = f"frame {row['frame.number']} (SPI {exp.spi:#x}, seq {exp.seq})"
        assert int(row["esp.spi"], 0) == exp.spi, where
        assert int(row["esp.sequence"]) == exp.seq, where
        # UDP-encapsulated frames carry the outer UDP header first (RFC 3948 §2.1).
        assert (row["udp.dstport"].split(",")[0] == "4500") == exp.encapsulated, where
        assert (row["esp.icv_good"], row["esp.icv_bad"]) == ("1", "0"), where
        assert int(row["esp.protocol"], 0) == exp.next_header, where
        assert int(row["esp.pad_len"]) == exp.pad_length, where
        # RFC 4303 §2.4: pad bytes 1, 2, 3, ... right before the pad length.
        assert row["esp.pad"] == bytes(range(1, exp.pad_length + 1)).hex(), where
        assert row["data.data"].replace(":", "") == exp.data.hex(), where
        outer = [OUTER_SRC, OUTER_DST]
        ip_src, ip_dst = row["ip.src"].split(","), row["ip.dst"].split(",")
        if exp.next_header == IPPROTO_IPIP:
            assert [ip_src, ip_dst] == [[OUTER_SRC, exp.inner_src], [OUTER_DST, exp.inner_dst]]
        elif exp.next_header == IPPROTO_IPV6:
            assert [ip_src, ip_dst] == [[OUTER_SRC], [OUTER_DST]], where
            assert (row["ipv6.src"], row["ipv6.dst"]) == (exp.inner_src, exp.inner_dst), where
        else:
            assert [ip_src[0], ip_dst[0]] == outer and len(ip_src) == 1, where


def test_tampered_packets_reported_bad(dissected: list[tuple[Expected, dict[str, str]]]) -> None:
    bad = [(e, r) for e, r in dissected if not e.icv_good]
    assert len(bad) == len(TRANSFORMS) * 2 * 2
    for exp, row in bad:
        assert int(row["esp.spi"], 0) == exp.spi
        assert row["esp.icv_bad"] == "1", f"frame {row['frame.number']}"
        assert row["esp.icv_good"] == "0"
