"""IP header helpers and RFC 3948 port-4500 demultiplexing used by the ESP data plane."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ikev1d.dataplane.packet import (
    IPPROTO_ESP,
    IPPROTO_IPIP,
    IPPROTO_IPV6,
    NAT_KEEPALIVE,
    NON_ESP_MARKER,
    PacketError,
    build_ipv4_header,
    build_ipv4_packet,
    build_udp_header,
    inet_checksum,
    parse_ip_header,
    tunnel_next_header,
    udp_encap_classify,
    udp_encapsulate,
)

# RFC 1071 §3 example words 0001 f203 f4f5 f6f7: sum ddf2, checksum 220d.
RFC1071_EXAMPLE = bytes.fromhex("0001f203f4f5f6f7")

# A real IPv4 header (Wikipedia "IPv4 header checksum" example): checksum b861.
KNOWN_HEADER = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")


def test_inet_checksum_known_values() -> None:
    assert inet_checksum(RFC1071_EXAMPLE) == 0x220D
    assert inet_checksum(KNOWN_HEADER) == 0xB861
    assert inet_checksum(b"\x01") == inet_checksum(b"\x01\x00")  # odd length: zero pad


def test_build_ipv4_header_matches_known_header() -> None:
    header = build_ipv4_header("192.168.0.1", "192.168.0.199", 17, 0x73 - 20)
    assert header == KNOWN_HEADER[:10] + bytes.fromhex("b861") + KNOWN_HEADER[12:]
    assert inet_checksum(header) == 0  # a correct header sums to zero


def test_parse_ipv4() -> None:
    packet = build_ipv4_packet("10.0.0.1", "10.0.0.2", IPPROTO_ESP, b"x" * 30) + b"trailer"
    h = parse_ip_header(packet)
    assert (h.version, h.src, h.dst, h.protocol, h.header_length, h.total_length) == (
        4, IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), 50, 20, 50)
    assert tunnel_next_header(packet) == IPPROTO_IPIP


def test_parse_ipv6() -> None:
    src, dst = IPv6Address("fd00::1"), IPv6Address("fd00::2")
    packet = struct.pack("!IHBB", 6 << 28, 5, 17, 64) + src.packed + dst.packed + b"hello"
    h = parse_ip_header(packet)
    assert (h.version, h.src, h.dst, h.protocol, h.header_length, h.total_length) == (
        6, src, dst, 17, 40, 45)
    assert tunnel_next_header(packet) == IPPROTO_IPV6


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45" + bytes(18),  # shorter than the header
        bytes.fromhex("46") + KNOWN_HEADER[1:],  # IHL 24 but total length covers only 20+
        build_ipv4_packet("1.1.1.1", "2.2.2.2", 1, b"abc")[:-1],  # total length > packet
        bytes.fromhex("44") + KNOWN_HEADER[1:],  # IHL below 5
        b"\x60" + bytes(38),
        struct.pack("!IHBB", 6 << 28, 10, 17, 64) + bytes(32) + b"short",
        b"\x50" + bytes(40),  # version 5
    ],
)
def test_parse_refuses_malformed(packet: bytes) -> None:
    with pytest.raises(PacketError):
        parse_ip_header(packet)


@given(st.binary(max_size=80))
def test_parse_garbage_raises_only_packet_error(data: bytes) -> None:
    try:
        h = parse_ip_header(data)
    except PacketError:
        return
    assert h.total_length <= len(data)


def test_tunnel_next_header_refuses_non_ip() -> None:
    with pytest.raises(PacketError):
        tunnel_next_header(b"")
    with pytest.raises(PacketError):
        tunnel_next_header(b"\x10")


def test_udp_header_and_checksum() -> None:
    payload = b"ikev1d"
    header = build_udp_header(4500, 4500, payload)
    assert header == struct.pack("!HHHH", 4500, 4500, 14, 0)  # RFC 3948 §2.1: zero checksum
    checked = build_udp_header(1234, 53, payload, "10.0.0.1", "10.0.0.2")
    pseudo = IPv4Address("10.0.0.1").packed + IPv4Address("10.0.0.2").packed + b"\x00\x11\x00\x0e"
    assert inet_checksum(pseudo + checked + payload) == 0
    assert udp_encapsulate(b"ESPDATA!", 4500, 1025) == struct.pack(
        "!HHHH", 4500, 1025, 16, 0) + b"ESPDATA!"


def test_udp_encap_classify() -> None:
    assert udp_encap_classify(NAT_KEEPALIVE) == "keepalive"  # RFC 3948 §2.3
    assert udp_encap_classify(NON_ESP_MARKER + bytes(28)) == "ike"  # RFC 3948 §2.2
    assert udp_encap_classify(b"\xc1\x23\x45\x67\x00\x00\x00\x01" + bytes(40)) == "esp"
    assert udp_encap_classify(b"") == "invalid"
    assert udp_encap_classify(b"\xff\xff") == "invalid"
    assert udp_encap_classify(b"\x01\x02\x03\x04\x05\x06\x07") == "invalid"
    assert udp_encap_classify(NON_ESP_MARKER) == "invalid"


def test_oversized_packets_refused() -> None:
    with pytest.raises(PacketError):
        build_ipv4_header("1.1.1.1", "2.2.2.2", 17, 65536 - 20)
    with pytest.raises(PacketError):
        build_udp_header(1, 2, bytes(65536 - 8))
