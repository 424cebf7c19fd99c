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
    return recognise_extensions(frozenset(found))


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


def responder_vendor_ids(peer: PeerVendors, *, xauth: bool = False,
                         unity: bool = False) -> list[bytes]:
    """Answer the known VIDs: exactly one NAT-T flavour, the best both speak, and
    the extensions of ``answer_vendor_ids``."""
    vids = [VID_IKEV1D]
    if Extension.NAT_T_RFC in peer.extensions:
        vids.append(VID_NAT_T_RFC)
    elif Extension.NAT_T_DRAFT in peer.extensions:
        vids.append(VID_NAT_T_DRAFTS[0])
    return vids + answer_vendor_ids(peer.extensions, xauth=xauth, unity=unity)


def answer_vendor_ids(extensions: frozenset[Extension], *, xauth: bool,
                      unity: bool) -> list[bytes]:
    """The VIDs that answer a peer's announcements of DPD (RFC 3706 section 5.1:
    DPD is used only when both sides sent the VID), of XAUTH when the connection
    has an XAUTH round (``xauth``), and of Cisco Unity when we are its Mode Config
    server (``unity``: our pools send UNITY_SPLIT_INCLUDE); Cisco and VPN clients
    of its kind turn these extensions on only when the gateway answers them."""
    vids = []
    if Extension.DPD in extensions:
        vids.append(VID_DPD)
    if xauth and Extension.XAUTH in extensions:
        vids.append(VID_XAUTH)
    if unity and Extension.CISCO_UNITY in extensions:
        vids.append(VID_CISCO_UNITY)
    return vids


#: Extensions a peer cannot start announcing after Main Mode messages 1 and 2:
#: NAT-D goes in messages 3 and 4, so NAT-T is agreed before (RFC 3947 section 3).
FIRST_MESSAGES_ONLY = frozenset({Extension.NAT_T_RFC, Extension.NAT_T_DRAFT})


def merge_later(first: PeerVendors, later: PeerVendors) -> PeerVendors:
    """What a peer announced in Main Mode messages 1/2 (``first``) and then in 3/4
    (``later``): Cisco IOS, for one, sends its DPD, XAUTH and Unity VIDs in
    messages 3 and 4 only. NAT-T announced that late is not taken up."""
    added = later.extensions - first.extensions - FIRST_MESSAGES_ONLY
    if not added and not later.unknown:
        return first
    extensions = first.extensions | added
    unknown = first.unknown + later.unknown
    if not unknown:
        return recognise_extensions(extensions)
    sample = (first.unknown_sample + later.unknown_sample)[:UNKNOWN_SAMPLE]
    return PeerVendors(extensions, unknown, sample)


def recognise_extensions(extensions: frozenset[Extension]) -> PeerVendors:
    """The shared PeerVendors of a set of extensions and no unknown VIDs."""
    shared = _SHARED.get(extensions)
    if shared is None:
        shared = _SHARED[extensions] = PeerVendors(extensions, 0)
    return shared


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
