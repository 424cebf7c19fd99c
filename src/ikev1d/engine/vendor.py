"""Vendor ID payloads: how IKEv1 peers announce the extensions they speak.

Vendor IDs (RFC 2408 section 3.16) travel in Phase 1: ours go along with the
proposals in message 1, a responder answers the ones it knows, and unknown
ones are ignored, so an extension is used only when both sides announce it.
Most of these IDs are MD5 hashes of a string, as the drafts define them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ikev1d.wire.vendor_ids import (
    VID_CISCO_UNITY,
    VID_DPD,
    VID_FRAGMENTATION,
    VID_IKEV1D,
    VID_NAT_T_DRAFTS,
    VID_NAT_T_RFC,
    VID_STRONGSWAN,
    VID_XAUTH,
)


class Extension(enum.Enum):
    NAT_T_RFC = "NAT-T (RFC 3947)"
    NAT_T_DRAFT = "NAT-T (draft)"
    DPD = "DPD (RFC 3706)"
    FRAGMENTATION = "IKE fragmentation"
    XAUTH = "XAuth"
    CISCO_UNITY = "Cisco Unity"
    STRONGSWAN = "strongSwan"
    IKEV1D = "ikev1d"


@dataclass(frozen=True)
class PeerVendors:
    """What a peer's Vendor ID payloads told us."""

    extensions: frozenset[Extension]
    unknown: int
    """How many Vendor IDs we did not recognise: counted, not kept (anyone may
    send thousands in one message 1)."""
    unknown_sample: tuple[bytes, ...] = ()
    """The first few of them, cut short, for one log line."""

    @property
    def nat_t(self) -> bool:
        return bool(self.extensions & {Extension.NAT_T_RFC, Extension.NAT_T_DRAFT})

    @property
    def nat_t_rfc(self) -> bool:
        return Extension.NAT_T_RFC in self.extensions


#: Unknown Vendor IDs shown in the log, and how many of their bytes.
UNKNOWN_SAMPLE = 3
UNKNOWN_SAMPLE_BYTES = 16


def recognise(vids: list[bytes]) -> PeerVendors:
    found: set[Extension] = set()
    unknown = 0
    sample: list[bytes] = []
    for vid in vids:
        if vid == VID_NAT_T_RFC:
            found.add(Extension.NAT_T_RFC)
        elif vid in VID_NAT_T_DRAFTS:
            found.add(Extension.NAT_T_DRAFT)
        elif vid == VID_DPD:
            found.add(Extension.DPD)
        elif vid[:16] == VID_FRAGMENTATION:
            found.add(Extension.FRAGMENTATION)
        elif vid == VID_XAUTH:
            found.add(Extension.XAUTH)
        elif vid == VID_CISCO_UNITY:
            found.add(Extension.CISCO_UNITY)
        elif vid == VID_STRONGSWAN:
            found.add(Extension.STRONGSWAN)
        elif vid == VID_IKEV1D:
            found.add(Extension.IKEV1D)
        else:
            unknown += 1
            if len(sample) < UNKNOWN_SAMPLE:
                sample.append(vid[:UNKNOWN_SAMPLE_BYTES])
    if unknown:
        return PeerVendors(frozenset(found), unknown, tuple(sample))
    # Every ISAKMP SA keeps its peer's PeerVendors for its whole life; peers of one
    # kind send the same Vendor IDs, so one shared object per set of extensions (at
    # most 2^len(Extension) of them, whatever peers send) serves them all.
    key = frozenset(found)
    shared = _SHARED.get(key)
    if shared is None:
        shared = _SHARED[key] = PeerVendors(key, 0)
    return shared


_SHARED: dict[frozenset[Extension], PeerVendors] = {}


def our_vendor_ids() -> list[bytes]:
    """The IDs we send in the first Main Mode message of each side.

    NAT-T in its RFC and draft forms (the peer's answer tells which it speaks),
    DPD and our own; fragmentation comes from ``fragmentation_vendor_ids``.
    """
    return [
        VID_IKEV1D,
        VID_NAT_T_RFC,
        *VID_NAT_T_DRAFTS[:2],
        VID_DPD,
    ]


def responder_vendor_ids(peer: PeerVendors) -> list[bytes]:
    """Answer the known VIDs: exactly one NAT-T flavour, the best both speak."""
    vids = [VID_IKEV1D]
    if Extension.NAT_T_RFC in peer.extensions:
        vids.append(VID_NAT_T_RFC)
    elif Extension.NAT_T_DRAFT in peer.extensions:
        vids.append(VID_NAT_T_DRAFTS[0])
    if Extension.DPD in peer.extensions:
        vids.append(VID_DPD)
    return vids


FRAGMENTATION_FLAGS = bytes.fromhex("80000000")
"""The four octets after the FRAGMENTATION hash as strongSwan and Windows send
them (Cisco's variant carries c0000000; the hash alone identifies it)."""


def fragmentation_vendor_ids(announce: bool, peer: PeerVendors | None = None) -> list[bytes]:
    """The FRAGMENTATION VID unless `fragmentation = "no"`; a responder
    (``peer`` given) answers it only when the initiator sent it."""
    if not announce:
        return []
    if peer is not None and Extension.FRAGMENTATION not in peer.extensions:
        return []
    return [VID_FRAGMENTATION + FRAGMENTATION_FLAGS]
