"""Known-answer check between the kernel's ESP and ikev1d's own (VM only).

``python esp_peer.py install`` (in namespace A, 192.0.2.1, with 10.1.N.1 on
lo): installs one fixed SA pair per transform in :data:`PROPOSALS` (transform
N joins 10.1.N.0/24 and 10.2.N.0/24) with :class:`KernelBackend` over
netlink and exits, leaving the states and policies in the kernel.

``python esp_peer.py exchange COUNT`` (in namespace B, 192.0.2.2, no XFRM at
all): for each transform, seals ICMP echo requests 10.2.N.1 -> 10.1.N.1 in
tunnel-mode ESP with :class:`ikev1d.dataplane.esp.OutboundSa`, sends them as
raw IP protocol 50 to A, and opens A's ESP answers with :class:`InboundSa`:
exit 0 when every request came back as the matching echo reply. So the kernel
decrypted what ikev1d's userspace ESP encrypted, and the other way round,
from one KEYMAT.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import sys
import time

from ikev1d.dataplane.esp import InboundSa, OutboundSa, esp_algorithm
from ikev1d.engine.api import ChildSaEstablished

A, B = "192.0.2.1", "192.0.2.2"
PROPOSALS: dict[str, tuple[str, int, str | None, int]] = {
    "aes128gcm16": ("aesgcm", 128, None, 16),
    "aes256-sha256": ("aes", 256, "sha256", 16),
    "3des-sha1": ("3des", 192, "sha1", 12),
    "aes128-sha512": ("aes", 128, "sha512", 32),
}


def spis(index: int) -> tuple[int, int]:
    """(A's inbound SPI, A's outbound SPI) of transform ``index``."""
    return 0xA1000001 + index, 0xB2000002 + index


def inner(side: int, index: int) -> str:
    return f"10.{side}.{index}.1"


def a_side(index: int, proposal: str) -> ChildSaEstablished:
    """The SA pair as A's engine would have handed it to the data plane."""
    encryption, bits, integrity, icv = PROPOSALS[proposal]
    spi_in, spi_out = spis(index)
    return ChildSaEstablished(
        conn="kat", child=proposal, ike_id=1, child_id=index, spi_in=spi_in, spi_out=spi_out,
        proposal=proposal, encryption=encryption, key_length=bits, icv_length=icv,
        integrity=integrity, mode="tunnel", encap=False, local=(A, 500), remote=(B, 500),
        local_ts=(ipaddress.ip_network(f"10.1.{index}.0/24"),),
        remote_ts=(ipaddress.ip_network(f"10.2.{index}.0/24"),),
        keymat_in=bytes((7 * i + index + 1) & 0xFF for i in range(128)),
        keymat_out=bytes((11 * i + index + 5) & 0xFF for i in range(128)),
    )  # fmt: skip


def install() -> int:
    from ikev1d.dataplane.kernel import KernelBackend
    from ikev1d.dataplane.linux.xfrm import XfrmSocket

    backend = KernelBackend(XfrmSocket())
    for index, proposal in enumerate(PROPOSALS):
        backend.install(a_side(index, proposal))
    return 0  # no close(): the SAs stay for the exchange


def _checksum(data: bytes) -> int:
    # RFC 1071.
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def _echo(kind: int, ident: int, seq: int, data: bytes) -> bytes:
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + data
    return body[:2] + struct.pack("!H", _checksum(body)) + body[4:]


def _exchange_one(raw: socket.socket, index: int, proposal: str, count: int) -> int:
    sa = a_side(index, proposal)
    encryption, bits, integrity, icv = PROPOSALS[proposal]
    alg = esp_algorithm(encryption, bits, integrity, icv)
    # B's outbound SA is A's inbound one, and the other way round.
    outbound = OutboundSa(sa.spi_in, alg, sa.keymat_in)
    inbound = InboundSa(sa.spi_out, alg, sa.keymat_out)
    ident = (os.getpid() + index) & 0xFFFF
    src, dst = inner(2, index), inner(1, index)
    answered = 0
    for seq in range(1, count + 1):
        data = os.urandom(48)
        packet = _ipv4(src, dst, 1, _echo(8, ident, seq, data))
        raw.sendto(outbound.seal(packet, 4), (A, 0))  # next header 4: IPv4 (RFC 4303 §2.6)
        deadline = time.monotonic() + 5
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([raw], [], [], left)[0]:
                break
            received, _addr = raw.recvfrom(65535)
            esp = received[(received[0] & 0x0F) * 4 :]
            if int.from_bytes(esp[:4], "big") != sa.spi_out:
                continue
            next_header, reply = inbound.open(esp)
            icmp = reply[(reply[0] & 0x0F) * 4 :]
            ok = (next_header == 4 and reply[12:16] == socket.inet_aton(dst)
                  and reply[16:20] == socket.inet_aton(src)
                  and icmp == _echo(0, ident, seq, data))
            sys.stdout.write(f"{proposal} seq {seq}: reply {'ok' if ok else 'WRONG'}\n")
            answered += ok
            break
    return answered


def exchange(count: int) -> int:
    failed = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 50) as raw:
        raw.bind((B, 0))
        for index, proposal in enumerate(PROPOSALS):
            answered = _exchange_one(raw, index, proposal, count)
            sys.stdout.write(f"{proposal}: {answered}/{count} answered\n")
            failed += answered != count
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if argv == ["install"]:
        return install()
    if len(argv) == 2 and argv[0] == "exchange":
        return exchange(int(argv[1]))
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
