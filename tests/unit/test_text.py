"""Peer-chosen text is escaped before logs and status show it."""

from __future__ import annotations

from ikev1d.engine.identity import describe
from ikev1d.text import printable
from ikev1d.wire import IdPayload, IdType


def test_control_characters_are_escaped() -> None:
    assert printable("gw\nINFO forged line\x1b[2J\x7f\x85") == (
        "gw\\x0aINFO forged line\\x1b[2J\\x7f\\x85")
    assert printable("a\u202eb\u2028c") == "a\\u202eb\\u2028c"
    assert printable("Grüße, CN=gw.example.org") == "Grüße, CN=gw.example.org"
    assert printable(None) == ""


def test_long_text_is_cut() -> None:
    assert printable("x" * 300) == "x" * 256 + "..."


def test_peer_ids_reach_logs_and_status_escaped() -> None:
    payload = IdPayload(id_type=IdType.FQDN, protocol=0, port=0,
                        data=b"evil.example.org\nISAKMP SA established")
    assert describe(payload) == "evil.example.org\\x0aISAKMP SA established"


def test_certificate_subjects_are_escaped() -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from ikev1d.crypto.certs import dn_text

    name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "gw\r\nforged")])
    assert dn_text(name) == "C=CH, CN=gw\\x0d\\x0aforged"
