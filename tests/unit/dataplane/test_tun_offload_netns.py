"""TUN offloads with the real kernel (root, a namespace of its own).

A TCP connection is routed into a TUN device; the test answers the SYN itself
(a hand-made SYN-ACK written into the device) and then has the socket send
60,000 octets, which the kernel's TCP hands to the device:

* ``tso``: at least one read is a TCPv4 super-packet; its segments, cut by
  :func:`~ikev1d.dataplane.linux.offload.packets`, carry the sent octets in order
  and every IPv4 and TCP checksum verifies under a slow RFC 1071 sum;
* ``gro``: the header is there but never asks for anything: plain packets,
  checksums complete, none larger than the MTU;
* a kernel refusing ``TUNSETOFFLOAD``: the device is opened again without the
  header, and reads are plain packets (the fallback);
* ``gro`` on the write side: a coalesced super-packet written to the device is
  taken by the kernel as the segments it stands for (the socket receives them all).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ikev1d_lab.netns import Namespace, netns_available

_SCRIPT = r"""
import fcntl, json, os, socket, struct, sys, time
sys.path.insert(0, sys.argv[2])
from ikev1d.dataplane.linux import tun as tunmod
from ikev1d.dataplane.linux.offload import (VNET_HDR, ZERO_VNET_HDR, coalesce_tcp, csum_complement,
                                            csum_remainder, packets)
from tests.unit.dataplane.test_offload import pseudo_header, refreshed, verifies

mode = sys.argv[1]
if mode == "refused":
    real_ioctl = fcntl.ioctl
    def ioctl(fd, request, arg=0, *rest):
        if request == tunmod._TUNSETOFFLOAD:
            raise OSError(22, "Invalid argument")
        return real_ioctl(fd, request, arg, *rest)
    fcntl.ioctl = ioctl
nl = tunmod.Netlink()
dev = tunmod.TunDevice(nl, "tt%d", 1400, offload="off" if mode == "off" else
                       "gro" if mode == "gro" else "tso")
os.system("ip addr add 10.77.0.1/32 dev lo; "
          f"ip route add 10.78.0.0/24 dev {dev.name} src 10.77.0.1")

def read_one():
    for _ in range(300):
        got = dev.read()
        if got:
            return got
        time.sleep(0.01)
    raise SystemExit("nothing to read")

def plain(buf):
    return packets(buf) if dev.vnet_hdr else [buf]

client = socket.socket()
client.setblocking(False)
try:
    client.connect(("10.78.0.2", 80))
except BlockingIOError:
    pass
while True:
    (syn,) = plain(read_one())
    if syn[0] >> 4 == 4 and syn[9] == 6 and syn[33] & 2:
        break
iss = 5000
ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 44, 0, 0x4000, 64, 6, 0, syn[16:20],
                           syn[12:16]))
ip[10:12] = csum_complement(csum_remainder(ip)).to_bytes(2, "big")
synack = bytes(ip) + struct.pack("!HHIIBBHHH", 80, int.from_bytes(syn[20:22], "big"), iss,
                                 int.from_bytes(syn[24:28], "big") + 1, 6 << 4, 0x12, 65535,
                                 0, 0) + bytes((2, 4, 0x05, 0x44))
synack = refreshed(synack)
dev.write(synack)
client.setblocking(True)
data = bytes(range(256)) * 234 + bytes(96)
client.sendall(data)
time.sleep(0.3)
reads, segments = [], []
while True:
    got = dev.read()
    if got is None:
        break
    if dev.vnet_hdr:
        reads.append(list(VNET_HDR.unpack_from(got)))
    segments += plain(got)
by_seq = {}
ok = True
mss_ok = True
for seg in segments:
    if seg[9] != 6 or len(seg) <= 40:
        continue
    ok &= verifies(seg[:20]) and verifies(pseudo_header(seg, len(seg) - 20) + seg[20:])
    mss_ok &= len(seg) <= 1400
    # Nothing is acknowledged: a tail loss probe may send the last segment again.
    by_seq[int.from_bytes(seg[24:28], "big")] = seg[40:]
first = int.from_bytes(syn[24:28], "big") + 1
stream = b""
while first + len(stream) in by_seq:
    stream += by_seq.pop(first + len(stream))
result = {"vnet": dev.vnet_hdr, "tso": dev.tso, "reads": reads, "checksums": bool(ok),
          "within_mtu": bool(mss_ok), "complete": stream == data[:len(stream)] and not by_seq,
          "octets": len(stream)}

# The write side: the server half of another connection, its data coalesced.
server = socket.socket()
server.bind(("10.77.0.1", 8080))
server.listen()
server.settimeout(5)
sport = 40000
ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 44, 0, 0x4000, 64, 6, 0,
                           bytes((10, 78, 0, 3)), bytes((10, 77, 0, 1))))
ip[10:12] = csum_complement(csum_remainder(ip)).to_bytes(2, "big")
syn2 = refreshed(bytes(ip) + struct.pack("!HHIIBBHHH", sport, 8080, 100, 0, 6 << 4, 0x02, 65535,
                                          0, 0) + bytes((2, 4, 0x05, 0x44)))
dev.write(syn2)
while True:
    (sa,) = plain(read_one())
    if sa[9] == 6 and sa[33] & 0x12 == 0x12:
        break
srv_seq = int.from_bytes(sa[24:28], "big") + 1
def seg(seq, payload, flags=0x10):
    ipb = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 7, 0x4000, 64, 6,
                                0, bytes((10, 78, 0, 3)), bytes((10, 77, 0, 1))))
    ipb[10:12] = csum_complement(csum_remainder(ipb)).to_bytes(2, "big")
    return refreshed(bytes(ipb) + struct.pack("!HHIIBBHHH", sport, 8080, seq, srv_seq, 5 << 4,
                                              flags, 65535, 0, 0) + payload)
dev.write(seg(101, b""))
conn, _ = server.accept()
body = bytes((i * 7) & 0xFF for i in range(1300 * 20))
run = [seg(101 + i * 1300, body[i * 1300:(i + 1) * 1300], 0x18 if i == 19 else 0x10)
       for i in range(20)]
if dev.vnet_hdr:
    buffers = coalesce_tcp(run)
    result["written"] = len(buffers)
    for b in buffers:
        dev.write_vnet(b)
else:
    for p in run:
        dev.write(p)
conn.settimeout(5)
got = b""
while len(got) < len(body):
    chunk = conn.recv(65536)
    if not chunk:
        break
    got += chunk
result["received"] = got == body
print(json.dumps(result))
dev.close()
nl.close()
"""


def _run(mode: str) -> dict[str, object]:
    ok, why = netns_available()
    if not ok or os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip(why or "needs root and /dev/net/tun")
    root = str(Path(__file__).resolve().parents[3])
    with Namespace("tso") as ns:
        proc = ns.run([sys.executable, "-c", _SCRIPT, mode, root], check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_tso_reads_super_packets_that_segment_into_valid_packets() -> None:
    r = _run("tso")
    assert r["vnet"] is True and r["tso"] is True
    reads = r["reads"]
    assert isinstance(reads, list)
    assert any(h[1] == 1 and h[3] > 0 for h in reads), reads  # GSO_TCPV4 with a gso_size
    assert r["checksums"] is True and r["within_mtu"] is True and r["complete"] is True
    assert isinstance(r["octets"], int) and r["octets"] >= 10 * 1300  # the initial window
    assert r["received"] is True and r["written"] == 1


def test_gro_only_reads_plain_packets() -> None:
    r = _run("gro")
    assert r["vnet"] is True and r["tso"] is False
    reads = r["reads"]
    assert isinstance(reads, list) and reads
    assert all(h == [0, 0, 0, 0, 0, 0] for h in reads), reads
    assert r["checksums"] is True and r["within_mtu"] is True and r["complete"] is True
    assert isinstance(r["octets"], int) and r["octets"] >= 10 * 1300
    assert r["received"] is True and r["written"] == 1


def test_refused_offload_falls_back_to_the_plain_device() -> None:
    r = _run("refused")
    assert r["vnet"] is False and r["tso"] is False and r["reads"] == []
    assert r["checksums"] is True and r["complete"] is True and r["received"] is True
