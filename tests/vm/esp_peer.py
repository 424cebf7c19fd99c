"""Known-answer check between the kernel's ESP and ikev1d's own (VM only).

``python esp_peer.py install PROPOSAL`` (in namespace A, 192.0.2.1, with
10.1.0.1 on lo): installs a fixed SA pair with :class:`KernelBackend` over
netlink and exits, leaving the states and policies in the kernel.

``python esp_peer.py exchange PROPOSAL COUNT`` (in namespace B, 192.0.2.2, no
XFRM at all): seals ICMP echo requests 10.2.0.1 -> 10.1.0.1 in tunnel-mode ESP
with :class:`ikev1d.dataplane.esp.OutboundSa`, sends them as raw IP protocol 50
to A, and opens A's ESP answers with :class:`InboundSa`: exit 0 when every
request came back as the matching echo reply. So the kernel decrypted what
ikev1d's userspace ESP encrypted, and the other way round, with one KEYMAT.
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
INNER_A, INNER_B = "10.1.0.1", "10.2.0.1"
SPI_A_IN, SPI_A_OUT = 0xA1000001, 0xB2000002
PROPOSALS: dict[str, tuple[str, int, str | None, int]] = {
    "aes128gcm16": ("aesgcm", 128, None, 16),
    "aes256-sha256": ("aes", 256, "sha256", 16),
    "3des-sha1": ("3des", 192, "sha1", 12),
}


def a_side(proposal: str) -> ChildSaEstablished:
    """The SA pair as A's engine would have handed it to the data plane."""
    encryption, bits, integrity, icv = PROPOSALS[proposal]
    return ChildSaEstablished(
        conn="kat", child="kat", ike_id=1, child_id=1, spi_in=SPI_A_IN, spi_out=SPI_A_OUT,
        proposal=proposal, encryption=encryption, key_length=bits, icv_length=icv,
        integrity=integrity, mode="tunnel", encap=False, local=(A, 500), remote=(B, 500),
        local_ts=(ipaddress.ip_network("10.1.0.0/24"),),
        remote_ts=(ipaddress.ip_network("10.2.0.0/24"),),
        keymat_in=bytes((7 * i + 1) & 0xFF for i in range(128)),
        keymat_out=bytes((11 * i + 5) & 0xFF for i in range(128)),
    )  # fmt: skip


def install(proposal: str) -> int:
    from ikev1d.dataplane.kernel import KernelBackend
    from ikev1d.io.xfrm import XfrmSocket

    backend = KernelBackend(XfrmSocket())
    backend.install(a_side(proposal))
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


def exchange(proposal: str, count: int) -> int:
    sa = a_side(proposal)
    encryption, bits, integrity, icv = PROPOSALS[proposal]
    alg = esp_algorithm(encryption, bits, integrity, icv)
    # B's outbound SA is A's inbound one, and the other way round.
    outbound = OutboundSa(sa.spi_in, alg, sa.keymat_in)
    inbound = InboundSa(sa.spi_out, alg, sa.keymat_out)
    ident = os.getpid() & 0xFFFF
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, 50) as raw:
        raw.bind((B, 0))
        for seq in range(1, count + 1):
            data = os.urandom(48)
            inner = _ipv4(INNER_B, INNER_A, 1, _echo(8, ident, seq, data))
            raw.sendto(outbound.seal(inner, 4), (A, 0))  # next header 4: IPv4 (RFC 4303 §2.6)
            deadline = time.monotonic() + 5
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([raw], [], [], left)[0]:
                    break
                packet, _addr = raw.recvfrom(65535)
                esp = packet[(packet[0] & 0x0F) * 4 :]
                next_header, reply = inbound.open(esp)
                icmp = reply[(reply[0] & 0x0F) * 4 :]
                ok = (next_header == 4 and reply[12:16] == socket.inet_aton(INNER_A)
                      and reply[16:20] == socket.inet_aton(INNER_B)
                      and icmp == _echo(0, ident, seq, data))
                sys.stdout.write(f"seq {seq}: reply {'ok' if ok else 'WRONG'}\n")
                answered += ok
                break
    sys.stdout.write(f"{answered}/{count} answered\n")
    return 0 if answered == count else 1


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "install":
        return install(argv[1])
    if len(argv) == 3 and argv[0] == "exchange":
        return exchange(argv[1], int(argv[2]))
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
