"""The Libreswan rig's reading of pluto's words, on real output of pluto 4.10.

tests/vectors/libreswan/status-*.txt are ``whack --status`` as pluto printed it in
the VM suite (tests/vm/test_libreswan.py writes them), with the tunnel up; the
SPIs there are the ones ikev1d's log of the same run shows (see the README).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from ikev1d_lab import pki
from ikev1d_lab.libreswan import ipsec_conf, ipsec_secrets, parse_status, parse_traffic

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "libreswan"


def _vector(name: str) -> str:
    return (VECTORS / name).read_text()


# ikev1d's log of that run: "IPsec SA established: child net, SPIs e587c4e9_i 370ab110_o"
GCM_SPIS = ("370ab110", "e587c4e9")


def test_status_of_a_gcm_tunnel_libreswan_initiated() -> None:
    view = parse_status(_vector("status-gcm.txt"), "gcm")
    assert (view.local, view.remote) == ("192.0.2.12", "192.0.2.11")
    assert (view.local_net, view.remote_net) == ("10.2.1.0/24", "10.1.1.0/24")
    assert view.ike_algorithm == "AES_CBC_256-HMAC_SHA2_256-MODP2048"
    assert view.esp_algorithm == "AES_GCM_16_128-NONE"
    assert view.established
    (child,) = view.installed
    assert child.state == "STATE_QUICK_I2"
    # pluto's inbound SPI is the one ikev1d sends with, and the other way round
    assert (child.spi_in, child.spi_out) == GCM_SPIS


def test_status_names_pfs_and_keeps_connections_apart() -> None:
    text = _vector("status-pfs.txt")
    view = parse_status(text, "pfs")
    assert view.pfs_group == "MODP2048"
    assert view.installed and view.established
    # another connection of the same pluto, idle at that moment
    other = parse_status(text, "p1none")
    assert not other.installed and not other.ike_sas and other.remote == "192.0.2.61"


def test_status_without_the_connection_is_empty() -> None:
    view = parse_status(_vector("status-gcm.txt"), "no-such-conn")
    assert not view.established and not view.installed and view.local == ""


def test_trafficstatus() -> None:
    text = ('006 #2: "gcm", type=ESP, add_time=1764577356, inBytes=504, outBytes=252, '
            "maxBytes=2^63B, id='192.0.2.11'\n"
            "006 #4: \"gcm-2\", type=ESP, add_time=1764577357, inBytes=0, outBytes=0, "
            "maxBytes=2^63B, id='192.0.2.21'\n")
    assert parse_traffic(text, "gcm") == {2: (504, 252)}
    assert parse_traffic(text, "gcm-2") == {4: (0, 0)}


@pytest.mark.parametrize("psk", ['plain', 'with "quotes" and \\ backslash'])
def test_secrets_quote_the_psk(psk: str) -> None:
    line = ipsec_secrets("192.0.2.2", "192.0.2.1", psk)
    assert line.startswith('192.0.2.2 192.0.2.1 : PSK "') and line.endswith('"\n')
    body = line.split(": PSK ", 1)[1].strip()[1:-1]
    assert body.replace('\\"', '"').replace("\\\\", "\\") == psk


def test_conf_enables_ikev1_and_names_the_tunnel() -> None:
    text = ipsec_conf("gw", "192.0.2.2", "192.0.2.1", "10.2.0.0/24", "10.1.0.0/24",
                      "aes256-sha2_256;modp2048", "aes_gcm128", pfs=True,
                      dpd=(3, 9, "clear"))
    assert "\tikev1-policy=accept" in text  # 4.10 drops IKEv1 otherwise
    for line in ("conn gw", "\tikev2=no", "\tleftsubnet=10.2.0.0/24", "\tleftsourceip=10.2.0.1",
                 "\trightsubnet=10.1.0.0/24", "\tpfs=yes", "\tdpddelay=3", "\tdpdaction=clear",
                 "\tleftupdown=/usr/libexec/ipsec/_updown"):
        assert line in text.splitlines(), line


def test_conf_with_certificates_and_nat() -> None:
    text = ipsec_conf("c", "192.0.2.2", "203.0.113.254", "10.2.0.0/24", "10.1.0.0/24",
                      "aes256-sha2_256;modp2048", "aes_gcm128", authby="rsasig",
                      left_id='"C=CH, O=X, CN=pluto"', right_id="@gw.example.org",
                      encapsulation="auto", extra=("leftcert=pluto", "leftsendcert=always"))
    lines = text.splitlines()
    for line in ("\tauthby=rsasig", '\tleftid="C=CH, O=X, CN=pluto"', "\trightid=@gw.example.org",
                 "\tright=203.0.113.254", "\tencapsulation=auto", "\tleftcert=pluto"):
        assert line in lines, line
    assert "\tauthby=secret" not in lines


def test_pkcs12_carries_key_certificate_and_nickname() -> None:
    issued = pki.issue("C=CH, O=X, CN=pluto", pki.issue("C=CH, O=X, CN=CA", ca=True))
    bundle = pkcs12.load_pkcs12(issued.pkcs12("pluto-x", "secret"), b"secret")
    assert bundle.cert is not None and bundle.cert.certificate == issued.cert
    assert bundle.cert.friendly_name == b"pluto-x"  # what ipsec.conf's leftcert= names
    assert bundle.key is not None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    theirs, ours = bundle.key.public_key(), issued.key.public_key()
    assert theirs.public_bytes(*spki) == ours.public_bytes(*spki)
    with pytest.raises(ValueError):
        pkcs12.load_pkcs12(issued.pkcs12("pluto-x", "secret"), b"wrong")
