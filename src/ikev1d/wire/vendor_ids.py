"""Vendor ID payload contents (RFC 2408 §3.16) that announce IKEv1 extensions.

A Vendor ID payload carries an opaque value; the extensions below each define
theirs, most as the MD5 hash of a text that names the extension. A peer answers
the values it knows and ignores the rest (RFC 2408 §3.16). The engine decides
which to send and what a received one means; ``describe`` names them for people.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "KNOWN_VENDOR_IDS",
    "VID_CISCO_UNITY",
    "VID_DPD",
    "VID_FRAGMENTATION",
    "VID_IKEV1D",
    "VID_NAT_T_DRAFTS",
    "VID_NAT_T_RFC",
    "VID_STRONGSWAN",
    "VID_XAUTH",
]


def _md5(text: bytes) -> bytes:
    return hashlib.md5(text, usedforsecurity=False).digest()


VID_NAT_T_RFC = _md5(b"RFC 3947")
"""RFC 3947 §3.1: MD5("RFC 3947")."""
VID_NAT_T_DRAFTS = (
    _md5(b"draft-ietf-ipsec-nat-t-ike-02\n"),
    _md5(b"draft-ietf-ipsec-nat-t-ike-02"),
    _md5(b"draft-ietf-ipsec-nat-t-ike-03"),
    _md5(b"draft-ietf-ipsec-nat-t-ike-00"),
)
"""The pre-RFC NAT-T drafts that strongSwan and Libreswan still send and accept."""
VID_DPD = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")
"""RFC 3706 §5: Dead Peer Detection, version 1.0."""
VID_FRAGMENTATION = _md5(b"FRAGMENTATION")
"""IKE fragmentation as strongSwan, Cisco and Windows speak it; four flag octets follow."""
VID_XAUTH = _md5(b"draft-ietf-ipsra-isakmp-xauth-06.txt")[:8]
"""Extended Authentication (draft-ietf-ipsra-isakmp-xauth-06): the first 8 octets."""
VID_CISCO_UNITY = bytes.fromhex("12f5f28c457168a9702d9fe274cc0100")
"""Cisco Unity client extensions (Mode Config attributes, split tunnelling)."""
VID_STRONGSWAN = _md5(b"strongSwan")
VID_IKEV1D = _md5(b"ikev1d")

KNOWN_VENDOR_IDS: tuple[tuple[bytes, str], ...] = (
    (VID_NAT_T_RFC, "RFC 3947 NAT-T"),
    (VID_NAT_T_DRAFTS[0], "draft-ietf-ipsec-nat-t-ike-02\\n"),
    (VID_NAT_T_DRAFTS[1], "draft-ietf-ipsec-nat-t-ike-02"),
    (VID_NAT_T_DRAFTS[2], "draft-ietf-ipsec-nat-t-ike-03"),
    (VID_NAT_T_DRAFTS[3], "draft-ietf-ipsec-nat-t-ike-00"),
    (VID_DPD, "DPD (RFC 3706)"),
    (VID_FRAGMENTATION, "IKE fragmentation"),
    (VID_XAUTH, "XAUTH"),
    (VID_CISCO_UNITY, "Cisco Unity"),
    (VID_STRONGSWAN, "strongSwan"),
    (VID_IKEV1D, "ikev1d"),
)
"""Every value above with the name ``describe`` shows; a received value that starts
with one of them is that extension (fragmentation appends its flags)."""
