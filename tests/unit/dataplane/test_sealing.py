"""The sealing direction on its own: what :class:`Sealer` puts into the ESP it sends.

The peer's opening direction clamps an unclamped SYN again (test_mss), so a SYN
clamped only there would hide a sealer that forgot to: these tests open the ESP
the sealer produced and look at the inner packet itself, for IPv4 and IPv6, with
and without the virtio-net header in front of each read.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence

import pytest

from ikev1d.dataplane.esp import InboundSa, OutboundSa, esp_algorithm, keymat_length
from ikev1d.dataplane.linux.offload import VNET_HDR_LEN
from ikev1d.dataplane.sad import Sad, SaEntry, prefixes
from ikev1d.dataplane.sealing import DROP_REASONS, DropLog, Sealer
from ikev1d.engine.api import Endpoint
from tests.unit.dataplane.test_mss import l4_ok, mss_of, mss_option, tcp_segment

ALG = esp_algorithm("aesgcm", 128, None, 16)
KEYMAT = bytes(range(keymat_length(ALG)))
MTU = 1300


class ListTun:
    name = "test0"

    def __init__(self, vnet: bool) -> None:
        self.vnet_hdr = vnet
        self.to_read: list[bytes] = []
        self.written: list[bytes] = []

    def fileno(self) -> int:
        return -1

    def read(self) -> bytes | None:
        if not self.to_read:
            return None
        packet = self.to_read.pop(0)
        return bytes(VNET_HDR_LEN) + packet if self.vnet_hdr else packet

    def write(self, packet: bytes) -> None:
        self.written.append(packet)

    def close(self) -> None:
        pass


def sealed(packets: list[bytes], *, vnet: bool) -> list[bytes]:
    """The inner packets of what a sealer sends for ``packets`` read from its TUN."""
    sad = Sad()
    for version, local, remote in ((4, "10.1.0.0/16", "10.2.0.0/16"),
                                   (6, "fd01::/64", "fd02::/64")):
        out = OutboundSa(0x1000 + version, ALG, KEYMAT)
        sad.add(SaEntry(
            spi_in=0x2000 + version, spi_out=0x1000 + version, inbound=None, outbound=out,
            local_ts=prefixes([ipaddress.ip_network(local)]),
            remote_ts=prefixes([ipaddress.ip_network(remote)]),
            local=("192.0.2.1", 4500), remote=("192.0.2.2", 4500), encap=True, mtu=MTU))
    tun = ListTun(vnet)
    sealer = Sealer(tun, sad, DropLog(dict.fromkeys(DROP_REASONS, 0), time.monotonic), {},
                    time.monotonic)
    sent: list[bytes] = []

    def send_many(datagrams: Sequence[bytes], local: Endpoint, remote: Endpoint) -> None:
        sent.extend(datagrams)

    sealer.send_udp_many = send_many
    tun.to_read.extend(packets)
    sealer.handle_tun_readable()
    opener = {spi: InboundSa(spi, ALG, KEYMAT) for spi in (0x1004, 0x1006)}
    inner = []
    for esp in sent:
        _next_header, packet = opener[int.from_bytes(esp[:4], "big")].open(esp)
        inner.append(packet)
    return inner


@pytest.mark.parametrize("vnet", [False, True])
@pytest.mark.parametrize(("src", "dst", "headers"), [("10.1.0.1", "10.2.0.1", 40),
                                                     ("fd01::1", "fd02::1", 60)])
def test_syns_are_clamped_before_sealing(vnet: bool, src: str, dst: str, headers: int) -> None:
    syn = tcp_segment(src, dst, options=mss_option(1460))
    synack = tcp_segment(src, dst, flags=0x12, options=mss_option(1460))  # as a responder
    ack = tcp_segment(src, dst, flags=0x10, options=mss_option(1460), payload=bytes(100))
    small = tcp_segment(src, dst, options=mss_option(1000))
    out = sealed([syn, synack, ack, small], vnet=vnet)
    assert [mss_of(p) for p in out] == [MTU - headers, MTU - headers, 1460, 1000]
    assert all(l4_ok(p) for p in out)
    assert out[2:] == [ack, small]  # not a SYN, or small enough: sealed as it came


@pytest.mark.parametrize("vnet", [False, True])
def test_other_packets_are_sealed_as_they_came(vnet: bool) -> None:
    """Not TCP (UDP, protocol 6's octet elsewhere), truncated TCP: never rewritten."""
    udp = bytearray(tcp_segment("10.1.0.1", "10.2.0.1", options=mss_option(1460)))
    udp[9] = 17
    v6_udp = bytearray(tcp_segment("fd01::1", "fd02::1", options=mss_option(1460)))
    v6_udp[6] = 17
    short = tcp_segment("10.1.0.1", "10.2.0.1")[:30]
    packets = [bytes(udp), bytes(v6_udp), short]
    assert sealed(packets, vnet=vnet) == packets
