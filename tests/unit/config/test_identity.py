"""ikev1d.config.identity: one Identity from the configuration to the ID payload and back."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from ikev1d.config import Identity, IdKind, identity, parse_config
from ikev1d.engine.api import IkeSaEstablished
from ikev1d.engine.identity import describe, id_payload, matches
from ikev1d.wire import IdPayload, IdType
from tests.unit.engine.test_engine import A_ADDR, B_ADDR, config_text, establish, make_net


def _strongswan_dn() -> bytes:
    """C=DE, O=X, CN=gw as an independent encoder writes it: the country as a
    PrintableString, the rest as UTF8String, most significant RDN first."""
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "X"),
        x509.NameAttribute(NameOID.COMMON_NAME, "gw"),
    ]).public_bytes()


@pytest.mark.parametrize(
    ("text", "id_type", "data"),
    [
        ("192.0.2.1", IdType.IPV4_ADDR, bytes([192, 0, 2, 1])),
        ("2001:db8::1", IdType.IPV6_ADDR, bytes.fromhex("20010db8" + "0" * 23 + "1")),
        ("gw.example.org", IdType.FQDN, b"gw.example.org"),
        ("@gw", IdType.FQDN, b"gw"),
        ("me@example.org", IdType.USER_FQDN, b"me@example.org"),
        ("@#0102ff", IdType.KEY_ID, b"\x01\x02\xff"),
    ],
)
def test_to_id_payload(text: str, id_type: IdType, data: bytes) -> None:
    # RFC 2407 section 4.6.2: Phase 1 IDs with protocol and port zero.
    assert Identity.parse(text).to_id_payload() == IdPayload(id_type, 0, 0, data)


def test_dn_encodes_most_significant_first() -> None:
    payload = Identity.parse("C=DE, O=X, CN=gw").to_id_payload()
    assert payload.id_type == IdType.DER_ASN1_DN
    assert payload.data == _strongswan_dn()


def test_any_sends_nothing() -> None:
    with pytest.raises(ValueError):
        Identity.parse("%any").to_id_payload()


@pytest.mark.parametrize(
    ("payload", "shown", "kind"),
    [
        (IdPayload(IdType.IPV4_ADDR, 0, 0, bytes([192, 0, 2, 9])), "192.0.2.9", IdKind.IPV4_ADDR),
        (IdPayload(IdType.FQDN, 0, 0, b"GW.example.org"), "GW.example.org", IdKind.FQDN),
        (IdPayload(IdType.USER_FQDN, 0, 0, b"me@x.org"), "me@x.org", IdKind.USER_FQDN),
        (IdPayload(IdType.DER_ASN1_DN, 0, 0, _strongswan_dn()), "C=DE, O=X, CN=gw", IdKind.DN),
        (IdPayload(IdType.KEY_ID, 0, 0, b"\x01\x02"), "@#0102", IdKind.KEY_ID),
        # what cannot be read is shown as hex and matches nothing configured
        (IdPayload(IdType.DER_ASN1_DN, 0, 0, bytes.fromhex("3005")), "DN:3005", IdKind.DN),
        (IdPayload(IdType.IPV4_ADDR, 0, 0, b"\x0a"), "IPV4_ADDR:0a", IdKind.OTHER),
        (IdPayload(IdType.IPV4_ADDR_SUBNET, 0, 0, bytes.fromhex("0a010000ffffff00")),
         "10.1.0.0/24", IdKind.OTHER),
        (IdPayload(200, 0, 0, b"\xff"), "IdType_200:ff", IdKind.OTHER),
    ],
)
def test_from_id_payload(payload: IdPayload, shown: str, kind: IdKind) -> None:
    identity = Identity.from_id_payload(payload)
    assert (str(identity), identity.kind) == (shown, kind)
    assert describe(payload) == shown


def test_matches() -> None:
    dn = IdPayload(IdType.DER_ASN1_DN, 0, 0, _strongswan_dn())
    assert Identity.parse("C=DE, O=X, CN=gw").matches(dn)
    assert Identity.parse("c=DE,o=X,cn=gw").matches(dn)
    assert not Identity.parse("C=DE, O=X, CN=other").matches(dn)
    assert not Identity.parse("CN=gw, O=X, C=DE").matches(dn)  # order is significant
    # the same DN with the country as UTF8String still names the same peer
    utf8 = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE", x509.name._ASN1Type.UTF8String),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "X"),
        x509.NameAttribute(NameOID.COMMON_NAME, "gw"),
    ])
    assert Identity.parse("C=DE, O=X, CN=gw").matches(
        IdPayload(IdType.DER_ASN1_DN, 0, 0, utf8.public_bytes()))
    fqdn = IdPayload(IdType.FQDN, 0, 0, b"GW.Example.Org")
    assert Identity.parse("gw.example.org").matches(fqdn)
    assert Identity.parse("@gw.example.org").matches(fqdn)
    assert not Identity.parse("me@gw.example.org").matches(fqdn)
    assert not Identity.parse("192.0.2.1").matches(fqdn)
    assert Identity.parse("%any").matches(fqdn)
    assert matches(None, fqdn) and matches(Identity.parse("%any"), fqdn)
    assert not Identity.parse("C=DE, O=X, CN=gw").matches(
        IdPayload(IdType.DER_ASN1_DN, 0, 0, bytes.fromhex("3005")))


def test_engine_id_payload_of_an_address() -> None:
    assert id_payload("2001:db8::2") == Identity.parse("2001:db8::2").to_id_payload()


def test_psk_for_takes_identities_and_text() -> None:
    cfg = parse_config("""
[secrets.gw]
secret = "a secret for the gateway, long"
ids = ["@gw.example.org", "C=DE, O=X, CN=peer"]
[secrets.any]
secret = "a secret for everybody, long!"
ids = ["%any"]
""", "t.toml")
    assert cfg.psk_for(None, "GW.example.org") == b"a secret for the gateway, long"
    assert cfg.psk_for(None, Identity.parse("c=DE, o=X, cn=peer")) == \
        b"a secret for the gateway, long"
    assert cfg.psk_for(None, "other.example.org") == b"a secret for everybody, long!"
    assert cfg.psk_for(None, "not an id") == b"a secret for everybody, long!"


@pytest.mark.parametrize(
    ("a_id", "b_id", "a_sees", "b_sees"),
    [
        ("@gw-a", "C=DE, O=X, CN=gw-b", "C=DE, O=X, CN=gw-b", "gw-a"),
        ("admin@a.example.org", "@#c0ffee", "@#c0ffee", "admin@a.example.org"),
    ],
)
def test_two_engines_agree_on_identities(a_id: str, b_id: str, a_sees: str, b_sees: str) -> None:
    def text(local: str, remote: str, lid: str, rid: str, lts: str, rts: str) -> str:
        return config_text(local, remote, lts, rts).replace(
            f'id = "{local}"', f'id = "{lid}"').replace(
            f'id = "{remote}"', f'id = "{rid}"').replace(
            f'ids = ["{remote}"]', f'ids = ["{rid}"]')

    net = make_net(text(A_ADDR, B_ADDR, a_id, b_id, "10.1.0.0/24", "10.2.0.0/24"),
                   text(B_ADDR, A_ADDR, b_id, a_id, "10.2.0.0/24", "10.1.0.0/24"))
    establish(net)
    (ike_a,) = net.a.of(IkeSaEstablished)
    (ike_b,) = net.b.of(IkeSaEstablished)
    assert isinstance(ike_a, IkeSaEstablished) and isinstance(ike_b, IkeSaEstablished)
    assert (ike_a.local_id, ike_a.remote_id) == (str(Identity.parse(a_id)), a_sees)
    assert (ike_b.local_id, ike_b.remote_id) == (str(Identity.parse(b_id)), b_sees)


def test_ip_or_none_parses_once_per_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Addresses as text (configuration, sockets): parsed, blanks ignored, anything
    else None; a text asked about again is answered without parsing it again."""
    identity.ip_or_none.cache_clear()
    parsed: list[object] = []
    real = ipaddress.ip_address

    def counted(value: object) -> object:
        parsed.append(value)
        return real(value)  # type: ignore[arg-type]

    monkeypatch.setattr(ipaddress, "ip_address", counted)
    assert identity.ip_or_none(" 192.0.2.1 ") == ipaddress.IPv4Address("192.0.2.1")
    assert identity.ip_or_none("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert identity.ip_or_none("gw.example.org") is None
    assert identity.ip_or_none("") is None
    count = len(parsed)
    assert identity.ip_or_none(" 192.0.2.1 ") == ipaddress.IPv4Address("192.0.2.1")
    assert len(parsed) == count
    assert identity.ip_or_none.cache_info().maxsize == 4096


def test_address_identity_from_an_address_object_is_not_parsed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = ipaddress.IPv6Address("2001:db8::7")
    monkeypatch.setattr(ipaddress, "ip_address", lambda value: pytest.fail(
        f"parsed {value!r} again"))
    made = Identity.from_address(address)
    assert (made.kind, made.data, made.text) == (IdKind.IPV6_ADDR, address.packed, "2001:db8::7")


def _ids(*payloads: IdPayload) -> list[Identity]:
    return [Identity.from_id_payload(p) for p in payloads]


def test_in_certificate_is_membership_of_the_certificates_identities() -> None:
    """``in_certificate`` (asked of every peer's certificate) answers what
    ``identity in Identity.of_certificate(cert)`` answers, for identities as peers
    send them and as configured, of every kind, against certificates with and
    without subjectAltNames."""
    from ikev1d_lab import pki

    root = pki.issue("C=CH, O=Test, CN=Root", ca=True, key="p256")
    certs = [
        pki.issue("C=DE, O=X, CN=gw", root, key="p256",
                  sans=("dns:gw.example.org", "email:me@example.org", "ip:192.0.2.1",
                        "ip:2001:db8::1")).cert,
        pki.issue("C=DE, O=X, CN=gw", root, key="p256").cert,
        pki.issue("CN=other", root, key="p256", sans=("dns:Other.Example.ORG",)).cert,
        root.cert,
    ]
    dn_der = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "X"),
        x509.NameAttribute(NameOID.COMMON_NAME, "gw"),
    ]).public_bytes()
    # The same attributes in other string types: other octets, the same DN.
    other_types = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE", _type=_ASN1Type.UTF8String),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "X", _type=_ASN1Type.PrintableString),
        x509.NameAttribute(NameOID.COMMON_NAME, "gw", _type=_ASN1Type.PrintableString),
    ]).public_bytes()
    assert other_types != dn_der
    retyped = Identity.from_id_payload(IdPayload(IdType.DER_ASN1_DN, 0, 0, other_types))
    candidates = [
        retyped,
        *(Identity.parse(text) for text in (
            "C=DE, O=X, CN=gw", "C=DE, O=Y, CN=gw", "CN=other", "C=CH, O=Test, CN=Root",
            "gw.example.org", "GW.example.org.", "other.example.org", "@gw",
            "me@example.org", "ME@Example.org", "you@example.org",
            "192.0.2.1", "192.0.2.2", "2001:db8::1", "@#0102", "%any")),
        *_ids(
            IdPayload(IdType.DER_ASN1_DN, 0, 0, dn_der),
            IdPayload(IdType.DER_ASN1_DN, 0, 0, _strongswan_dn()),
            IdPayload(IdType.DER_ASN1_DN, 0, 0, b"\x30\x03not a name"),
            IdPayload(IdType.FQDN, 0, 0, b"gw.example.org"),
            IdPayload(IdType.USER_FQDN, 0, 0, b"me@example.org"),
            IdPayload(IdType.IPV4_ADDR, 0, 0, bytes([192, 0, 2, 1])),
            IdPayload(IdType.IPV4_ADDR, 0, 0, bytes(16)),
            IdPayload(IdType.IPV6_ADDR, 0, 0, ipaddress.IPv6Address("2001:db8::1").packed),
            IdPayload(IdType.IPV4_ADDR_SUBNET, 0, 0, bytes([192, 0, 2, 1, 255, 255, 255, 255])),
            IdPayload(IdType.KEY_ID, 0, 0, b"gw.example.org"),
        ),
    ]
    answers = [[c.in_certificate(cert) for cert in certs] for c in candidates]
    assert answers == [[c in Identity.of_certificate(cert) for cert in certs]
                       for c in candidates]
    # Both ways of being vouched for occur, and so does not being vouched for.
    vouched = {(str(c), i) for c, row in zip(candidates, answers, strict=True)
               for i, yes in enumerate(row) if yes}
    assert answers[0] == [True, True, False, False]  # retyped: the DN of the first two
    assert {("C=DE, O=X, CN=gw", 1), ("gw.example.org", 0), ("GW.example.org.", 0),
            ("2001:db8::1", 0), ("other.example.org", 2), ("ME@Example.org", 0),
            ("C=CH, O=Test, CN=Root", 3)} <= vouched
    assert not {("gw.example.org", 1), ("192.0.2.2", 0), ("@gw", 0)} & vouched
