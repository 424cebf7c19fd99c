"""The certificate path check (ikev1d.crypto.certs), with certificates made by the test."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from ikev1d.crypto.certs import CertificateError, Problem, verify_path
from ikev1d_lab import pki

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def root() -> pki.Issued:
    return pki.issue("C=CH, O=Test, CN=Root", ca=True, key="p256")


def test_direct_and_intermediate_paths(root: pki.Issued) -> None:
    leaf = pki.issue("CN=leaf", root, key="p256")
    assert verify_path(leaf.cert, [], [root.cert], [], NOW) == [leaf.cert, root.cert]
    inter = pki.issue("CN=Inter", root, ca=True, key="p256")
    leaf2 = pki.issue("CN=leaf2", inter, key="p256")
    path = verify_path(leaf2.cert, [inter.cert], [root.cert], [], NOW)
    assert path == [leaf2.cert, inter.cert, root.cert]


def test_unknown_issuer(root: pki.Issued) -> None:
    other = pki.issue("CN=Other Root", ca=True, key="p256")
    leaf = pki.issue("CN=leaf", other, key="p256")
    with pytest.raises(CertificateError) as info:
        verify_path(leaf.cert, [], [root.cert], [], NOW)
    assert info.value.problem is Problem.UNTRUSTED
    assert str(info.value) == 'certificate "CN=leaf" not trusted (issuer "CN=Other Root" unknown)'


def test_same_name_other_key_is_not_trusted(root: pki.Issued) -> None:
    impostor = pki.issue("C=CH, O=Test, CN=Root", ca=True, key="p256")
    leaf = pki.issue("CN=leaf", impostor, key="p256")
    with pytest.raises(CertificateError, match="not trusted"):
        verify_path(leaf.cert, [], [root.cert], [], NOW)


def test_intermediate_that_is_no_ca(root: pki.Issued) -> None:
    not_ca = pki.issue("CN=Not a CA", root, key="p256")
    leaf = pki.issue("CN=leaf", not_ca, key="p256")
    with pytest.raises(CertificateError, match="is no CA"):
        verify_path(leaf.cert, [not_ca.cert], [root.cert], [], NOW)


def test_validity_is_checked_against_the_given_time(root: pki.Issued) -> None:
    leaf = pki.issue("CN=leaf", root, key="p256")
    with pytest.raises(CertificateError, match='"CN=leaf" expired on'):
        verify_path(leaf.cert, [], [root.cert], [], NOW + datetime.timedelta(days=60))
    with pytest.raises(CertificateError, match="not valid before"):
        verify_path(leaf.cert, [], [root.cert], [], NOW - datetime.timedelta(days=1))


def test_revocation_needs_a_crl_signed_by_the_issuer(root: pki.Issued) -> None:
    leaf = pki.issue("CN=leaf", root, key="p256")
    forged_issuer = pki.issue("C=CH, O=Test, CN=Root", ca=True, key="p256")
    forged = pki.crl(forged_issuer, (leaf.cert.serial_number,))
    assert verify_path(leaf.cert, [], [root.cert], [forged], NOW)
    real = pki.crl(root, (leaf.cert.serial_number,))
    with pytest.raises(CertificateError, match=r"revoked on .* \(keyCompromise\)") as info:
        verify_path(leaf.cert, [], [root.cert], [real], NOW)
    assert info.value.problem is Problem.INVALID


def test_unknown_critical_extension_is_refused(root: pki.Issued) -> None:
    leaf = pki.issue("CN=leaf", root, key="p256")
    builder = (x509.CertificateBuilder().subject_name(leaf.cert.subject)
               .issuer_name(root.cert.subject).public_key(leaf.key.public_key())
               .serial_number(7).not_valid_before(leaf.cert.not_valid_before_utc)
               .not_valid_after(leaf.cert.not_valid_after_utc)
               .add_extension(x509.UnrecognizedExtension(
                   x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), critical=True))
    odd = builder.sign(root.key, hashes.SHA256())
    with pytest.raises(CertificateError, match="unsupported critical extension"):
        verify_path(odd, [], [root.cert], [], NOW)


def test_end_entity_without_signing_key_usage(root: pki.Issued) -> None:
    ca_like = pki.issue("CN=leaf", root, key="p256", ca=True)
    # A CA certificate's keyUsage (keyCertSign, cRLSign) does not allow signing IKE.
    with pytest.raises(CertificateError, match="may not sign"):
        verify_path(ca_like.cert, [], [root.cert], [], NOW)


def test_end_entity_to_encrypt_to_needs_key_encipherment(root: pki.Issued) -> None:
    """RFC 2409 section 5.3 encrypts the nonce to the end entity's key: when
    keyUsage is present, it must allow keyEncipherment (RFC 5280 section 4.2.1.3);
    signing alone is enough only for signatures."""
    signing = pki.issue("CN=leaf", root)
    both = pki.issue("CN=leaf2", root, key_encipherment=True)
    bare = pki.issue("CN=leaf3", root, key_usage=False)
    with pytest.raises(CertificateError, match="may not encipher keys"):
        verify_path(signing.cert, [], [root.cert], [], NOW, encipher=True)
    assert verify_path(both.cert, [], [root.cert], [], NOW, encipher=True)[0] == both.cert
    assert verify_path(both.cert, [], [root.cert], [], NOW)[0] == both.cert
    assert verify_path(bare.cert, [], [root.cert], [], NOW, encipher=True)[0] == bare.cert


def test_anchor_checks_kept_only_when_passed(root: pki.Issued,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A configured anchor's extensions are checked once per anchor and path length
    and then kept; its validity is checked every time, and an anchor that fails is
    refused every time (a refusal is not kept)."""
    from ikev1d.crypto import certs

    checked: list[str] = []
    real = certs._check_extensions

    def counting(cert: x509.Certificate, **kwargs: object) -> None:
        checked.append(cert.subject.rfc4514_string())
        real(cert, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(certs, "_check_extensions", counting)
    certs._check_anchor.cache_clear()
    anchor = pki.issue("CN=Kept Root", ca=True, key="p256")
    leaf = pki.issue("CN=leaf", anchor, key="p256",
                     not_after=NOW + datetime.timedelta(days=60))
    for _ in range(3):
        assert verify_path(leaf.cert, [], [anchor.cert], [], NOW)[-1] == anchor.cert
    assert checked == ["CN=leaf", "CN=Kept Root", "CN=leaf", "CN=leaf"]
    # The anchor (30 days) has expired by then, the leaf (60) not: refused although
    # its extensions passed before.
    with pytest.raises(CertificateError, match='"CN=Kept Root" expired'):
        verify_path(leaf.cert, [], [anchor.cert], [], NOW + datetime.timedelta(days=40))
    not_ca = pki.issue("CN=No CA Root", key="p256")
    leaf2 = pki.issue("CN=leaf2", not_ca, key="p256")
    for _ in range(2):
        with pytest.raises(CertificateError, match="is no CA"):
            verify_path(leaf2.cert, [], [not_ca.cert], [], NOW)
    assert certs._check_anchor.cache_info().maxsize == 64
    assert certs.anchor_text.cache_info().maxsize == 64
    assert certs.anchor_subject.cache_info().maxsize == 64
