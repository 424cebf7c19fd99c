"""The demo renderer: key fields visible, encrypted bodies summarised, never raises."""

from __future__ import annotations

from dataclasses import replace

from ikev1d.wire import Flags, Message, encode_header
from ikev1d.wire.describe import describe_message, vendor_id_name
from tests.wire_helpers import sample_messages


def _sample(name: str) -> Message:
    return next(s.message for s in sample_messages() if s.name == name)


def test_main_mode_sa_rendering() -> None:
    lines = describe_message(_sample("mm1").encode())
    assert lines[0].startswith("IDENTITY_PROTECTION (Main Mode) i_cookie=0123456789abcdef")
    assert "msgid=00000000" in lines[0]
    assert "    transform #1: AES_CBC-256 SHA2_256 MODP_2048 PSK life 86400s" in lines
    assert "    transform #3: TRIPLE_DES_CBC MD5 MODP_1024 RSA_SIG life 28800s" in lines
    assert any("(RFC 3947 NAT-T)" in line for line in lines)


def test_quick_mode_and_others() -> None:
    text = "\n".join(describe_message(_sample("qm1").encode()))
    assert "proposal #1 ESP spi=c1234567" in text
    assert "AES_GCM_16-128 MODP_2048 UDP_TUNNEL life 3600s life 4608000KB" in text
    assert "ID IPV4_ADDR_SUBNET 10.2.0.0/16" in text
    assert "NAT-OA 192.0.2.77" in text
    text = "\n".join(describe_message(_sample("notify").encode()))
    assert "N(R-U-THERE) ISAKMP spi=0123456789abcdeffedcba9876543210 data=000004d2" in text
    text = "\n".join(describe_message(_sample("delete").encode()))
    assert "DELETE ESP spis c1234567, c7654321, deadbeef" in text


def test_encrypted_and_malformed() -> None:
    m = _sample("mm3")
    hdr = replace(m.header, flags=Flags.ENCRYPTION, next_payload=5)
    data = encode_header(hdr, 48) + bytes(48)
    lines = describe_message(data)
    assert lines[-1] == "encrypted, 48 bytes"
    assert "flags=ENCRYPTION" in lines[0]
    assert describe_message(b"\x00" * 10)[0].startswith("malformed ISAKMP message (10 bytes)")
    broken = bytearray(_sample("mm3").encode())
    broken[30:32] = b"\x00\x02"  # first payload length 2
    assert describe_message(bytes(broken))[-1].startswith("malformed payloads")


def test_vendor_id_names() -> None:
    assert vendor_id_name(bytes.fromhex("afcad71368a1f1c96b8696fc77570100")) == "DPD (RFC 3706)"
    assert vendor_id_name(b"nobody") is None
