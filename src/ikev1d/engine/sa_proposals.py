"""SA payloads from our proposals, and choosing from the peer's.

The initiator lists its combinations most preferred first; the responder
takes the first one it also accepts, so both ends agree without another
round trip. In IKEv1 each combination is one transform of a single proposal,
and the responder answers with exactly that one (RFC 2408 section 4.2).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ikev1d.proposals import (
    EspProposal,
    IkeProposal,
    esp_auth_alg,
    esp_key_length,
    esp_proposal_from_attributes,
    esp_transform_id,
    ike_encryption_id,
    ike_hash_id,
    ike_proposal_from_attributes,
)
from ikev1d.wire import (
    Attribute,
    EncapsulationMode,
    EspTransformId,
    IkeAttr,
    IkeTransformId,
    IpsecAttr,
    LifeType,
    Proposal,
    ProtocolId,
    SaPayload,
    Transform,
    make_attribute,
)

#: The largest attribute value we interpret. RFC 2408 section 3.3 lets a TLV
#: attribute carry up to 64 KB, which as an integer overflows float() and
#: str(); no algorithm, key length or group is numbered that high, and a
#: lifetime beyond 2^32 - 1 seconds or kilobytes means "as long as we allow".
MAX_ATTRIBUTE_VALUE = 0xFFFFFFFF


def attribute_value(attribute: Attribute) -> int:
    """The attribute's value, clamped to :data:`MAX_ATTRIBUTE_VALUE`."""
    if isinstance(attribute.value, bytes) and len(attribute.value.lstrip(b"\0")) > 4:
        return MAX_ATTRIBUTE_VALUE
    return min(attribute.int_value(), MAX_ATTRIBUTE_VALUE)


@dataclass(frozen=True)
class IkeChoice:
    proposal: IkeProposal
    auth_method: int
    lifetime_s: int | None
    proposal_number: int
    transform: Transform

    def response_sa(self) -> SaPayload:
        """The responder's SA: the accepted transform, exactly as offered."""
        return SaPayload(
            (Proposal(self.proposal_number, ProtocolId.ISAKMP, b"", (self.transform,)),)
        )


class EspChoice(NamedTuple):
    """The ESP proposal a responder accepted from an offer. A named tuple: one is
    made per Quick Mode, mostly from the one kept for the same offer (select_esp)."""

    proposal: EspProposal
    spi: bytes
    encapsulation_mode: int
    lifetime_s: int | None
    life_kilobytes: int | None
    proposal_number: int
    transform: Transform

    def response_sa(self, our_spi: bytes) -> SaPayload:
        return SaPayload(
            (Proposal(self.proposal_number, ProtocolId.ESP, our_spi, (self.transform,)),)
        )


def ike_sa_payload(
    proposals: Sequence[IkeProposal], auth_method: int, lifetime_s: int
) -> SaPayload:
    transforms: list[Transform] = []
    for number, proposal in enumerate(proposals, 1):
        encryption, key_length = ike_encryption_id(proposal)
        attributes = [make_attribute(IkeAttr.ENCRYPTION_ALGORITHM, encryption)]
        if key_length is not None:
            attributes.append(make_attribute(IkeAttr.KEY_LENGTH, key_length))
        attributes += [
            make_attribute(IkeAttr.HASH_ALGORITHM, ike_hash_id(proposal)),
            make_attribute(IkeAttr.AUTHENTICATION_METHOD, auth_method),
            make_attribute(IkeAttr.GROUP_DESCRIPTION, proposal.dh_group),
            make_attribute(IkeAttr.LIFE_TYPE, LifeType.SECONDS),
            make_attribute(IkeAttr.LIFE_DURATION, lifetime_s),
        ]
        transforms.append(Transform(number, IkeTransformId.KEY_IKE, tuple(attributes)))
    return SaPayload((Proposal(1, ProtocolId.ISAKMP, b"", tuple(transforms)),))


def _lifetimes(
    attributes: Sequence[Attribute], type_attr: int, duration_attr: int
) -> tuple[int | None, int | None]:
    """RFC 2407 4.5: each Life Duration follows the Life Type it qualifies."""
    seconds: int | None = None
    kilobytes: int | None = None
    current: int | None = None
    for attribute in attributes:
        if attribute.type == type_attr:
            current = attribute_value(attribute)
        elif attribute.type == duration_attr and current is not None:
            if current == LifeType.SECONDS:
                seconds = attribute_value(attribute)
            elif current == LifeType.KILOBYTES:
                kilobytes = attribute_value(attribute)
    return seconds, kilobytes


# Transforms are immutable and peers offer the same few again and again (every
# handshake of a peer, every renewal): what a transform means is worked out once.
# Bounded, since the attributes are whatever a peer sends.
@functools.lru_cache(maxsize=512)
def describe_ike_transform(transform: Transform) -> tuple[IkeProposal | None, int | None, str]:
    """(proposal if we know all its parts, auth method, strongSwan-style text)."""
    values: dict[int, int] = {}
    for attribute in transform.attributes:
        if attribute.type in (IkeAttr.LIFE_TYPE, IkeAttr.LIFE_DURATION):
            continue
        values[attribute.type] = attribute_value(attribute)
    auth = values.get(IkeAttr.AUTHENTICATION_METHOD)
    proposal = None
    if (
        transform.transform_id == IkeTransformId.KEY_IKE
        and IkeAttr.ENCRYPTION_ALGORITHM in values
        and IkeAttr.HASH_ALGORITHM in values
        and IkeAttr.GROUP_DESCRIPTION in values
    ):
        proposal = ike_proposal_from_attributes(
            values[IkeAttr.ENCRYPTION_ALGORITHM],
            values.get(IkeAttr.KEY_LENGTH),
            values[IkeAttr.HASH_ALGORITHM],
            values[IkeAttr.GROUP_DESCRIPTION],
        )
    if proposal is not None:
        text = proposal.render()
    else:
        text = "unsupported(" + ",".join(f"{k}={v}" for k, v in sorted(values.items())) + ")"
    return proposal, auth, text


def select_ike(
    sa: SaPayload, acceptable: Sequence[IkeProposal], auth_methods: set[int]
) -> IkeChoice | None:
    for proposal in sa.proposals:
        if proposal.protocol_id != ProtocolId.ISAKMP:
            continue
        for transform in proposal.transforms:
            candidate, auth, _ = describe_ike_transform(transform)
            if candidate is None or auth not in auth_methods or candidate not in acceptable:
                continue
            lifetime, _kb = _lifetimes(
                transform.attributes, IkeAttr.LIFE_TYPE, IkeAttr.LIFE_DURATION
            )
            return IkeChoice(candidate, auth, lifetime, proposal.number, transform)
    return None


def offered_ike(sa: SaPayload) -> list[str]:
    return [
        describe_ike_transform(t)[2]
        for p in sa.proposals
        if p.protocol_id == ProtocolId.ISAKMP
        for t in p.transforms
    ]


def offered_auth_methods(sa: SaPayload) -> list[int]:
    """The authentication methods of an SA payload's ISAKMP transforms."""
    return [
        auth
        for p in sa.proposals
        if p.protocol_id == ProtocolId.ISAKMP
        for t in p.transforms
        if (auth := describe_ike_transform(t)[1]) is not None
    ]


def encapsulation_mode(mode: str, udp: bool, rfc3947: bool) -> int:
    """RFC 3947 section 5.1 values, or the draft's for peers that spoke a draft."""
    if not udp:
        return EncapsulationMode.TRANSPORT if mode == "transport" else EncapsulationMode.TUNNEL
    if mode == "transport":
        return (
            EncapsulationMode.UDP_TRANSPORT if rfc3947 else EncapsulationMode.UDP_TRANSPORT_DRAFT
        )
    return EncapsulationMode.UDP_TUNNEL if rfc3947 else EncapsulationMode.UDP_TUNNEL_DRAFT


def mode_of(encapsulation: int) -> tuple[str, bool]:
    """(tunnel|transport, UDP-encapsulated) for an Encapsulation Mode value."""
    if encapsulation == EncapsulationMode.TUNNEL:
        return "tunnel", False
    if encapsulation == EncapsulationMode.TRANSPORT:
        return "transport", False
    if encapsulation in (EncapsulationMode.UDP_TUNNEL, EncapsulationMode.UDP_TUNNEL_DRAFT):
        return "tunnel", True
    if encapsulation in (EncapsulationMode.UDP_TRANSPORT, EncapsulationMode.UDP_TRANSPORT_DRAFT):
        return "transport", True
    return "unknown", False


def esp_sa_payload(
    proposals: Sequence[EspProposal],
    spi: bytes,
    encapsulation: int,
    lifetime_s: int,
    life_kilobytes: int,
) -> SaPayload:
    transforms: list[Transform] = []
    for number, proposal in enumerate(proposals, 1):
        attributes = [
            make_attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.SECONDS),
            make_attribute(IpsecAttr.SA_LIFE_DURATION, lifetime_s),
        ]
        if life_kilobytes:
            attributes += [
                make_attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.KILOBYTES),
                make_attribute(IpsecAttr.SA_LIFE_DURATION, life_kilobytes),
            ]
        if proposal.dh_group is not None:
            attributes.append(make_attribute(IpsecAttr.GROUP_DESCRIPTION, proposal.dh_group))
        attributes.append(make_attribute(IpsecAttr.ENCAPSULATION_MODE, encapsulation))
        auth = esp_auth_alg(proposal)
        if auth is not None:
            attributes.append(make_attribute(IpsecAttr.AUTH_ALGORITHM, auth))
        key_length = esp_key_length(proposal)
        if key_length is not None:
            attributes.append(make_attribute(IpsecAttr.KEY_LENGTH, key_length))
        transforms.append(Transform(number, esp_transform_id(proposal), tuple(attributes)))
    return SaPayload((Proposal(1, ProtocolId.ESP, spi, tuple(transforms)),))


@functools.lru_cache(maxsize=512)
def describe_esp_transform(transform: Transform) -> tuple[EspProposal | None, int | None, str]:
    values: dict[int, int] = {}
    for attribute in transform.attributes:
        if attribute.type in (IpsecAttr.SA_LIFE_TYPE, IpsecAttr.SA_LIFE_DURATION):
            continue
        values[attribute.type] = attribute_value(attribute)
    proposal = esp_proposal_from_attributes(
        transform.transform_id,
        values.get(IpsecAttr.KEY_LENGTH),
        values.get(IpsecAttr.AUTH_ALGORITHM),
        values.get(IpsecAttr.GROUP_DESCRIPTION),
    )
    if proposal is not None:
        text = proposal.render()
    else:
        name = EspTransformId(transform.transform_id).name
        text = f"unsupported({name}," + ",".join(
            f"{k}={v}" for k, v in sorted(values.items())
        ) + ")"
    return proposal, values.get(IpsecAttr.ENCAPSULATION_MODE), text


# What select_esp chose for an offer of one proposal, by the identities of the
# offered transforms (decoded once per peer: see Proposal.decode_body) and of the
# acceptable proposals (a child's, immutable), with the SPI size and the proposal
# number and protocol: all the choice depends on but the SPI. Entries hold both
# objects, so that their ids stay unique; bounded, since the offers are the peer's.
_ESP_CHOICES: dict[tuple[int, int, int, int, int],
                   tuple[Sequence[EspProposal], tuple[Transform, ...], EspChoice | None]] = {}
_ESP_CHOICES_CACHED = 256


def select_esp(sa: SaPayload, acceptable: Sequence[EspProposal]) -> EspChoice | None:
    """The first offered ESP transform we accept (RFC 2408 section 4.2), with the
    offer's SPI; None if there is none."""
    if len(sa.proposals) != 1:
        return _select_esp(sa, acceptable)
    offered = sa.proposals[0]
    transforms = offered.transforms
    key = (id(acceptable), id(transforms), offered.number, offered.protocol_id,
           len(offered.spi))
    known = _ESP_CHOICES.get(key)
    if known is not None and known[0] is acceptable and known[1] is transforms:
        choice = known[2]
        return None if choice is None else choice._replace(spi=offered.spi)
    choice = _select_esp(sa, acceptable)
    if len(_ESP_CHOICES) >= _ESP_CHOICES_CACHED:
        _ESP_CHOICES.clear()
    _ESP_CHOICES[key] = (acceptable, transforms, choice)
    return choice


def _select_esp(sa: SaPayload, acceptable: Sequence[EspProposal]) -> EspChoice | None:
    proposal_protocols: dict[int, set[int]] = {}
    for proposal in sa.proposals:
        proposal_protocols.setdefault(proposal.number, set()).add(proposal.protocol_id)
    for proposal in sa.proposals:
        # A proposal number shared with AH or IPComp is a bundle; we do ESP alone.
        if proposal.protocol_id != ProtocolId.ESP or proposal_protocols[proposal.number] != {
            ProtocolId.ESP
        }:
            continue
        if len(proposal.spi) != 4:
            continue
        for transform in proposal.transforms:
            candidate, encapsulation, _ = describe_esp_transform(transform)
            if candidate is None or candidate not in acceptable or encapsulation is None:
                continue
            seconds, kilobytes = _lifetimes(
                transform.attributes, IpsecAttr.SA_LIFE_TYPE, IpsecAttr.SA_LIFE_DURATION
            )
            return EspChoice(
                candidate, proposal.spi, encapsulation, seconds, kilobytes,
                proposal.number, transform,
            )
    return None


def offered_esp(sa: SaPayload) -> list[str]:
    return [
        describe_esp_transform(t)[2]
        for p in sa.proposals
        if p.protocol_id == ProtocolId.ESP
        for t in p.transforms
    ]
