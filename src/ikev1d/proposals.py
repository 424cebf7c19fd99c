"""Algorithm proposals in strongSwan syntax, and their IKEv1 numbers.

A proposal string such as ``aes256-sha256-modp2048`` names one algorithm per
slot (encryption, integrity, Diffie-Hellman group); strongSwan also allows
several per slot (``aes128-aes256-sha256-sha1-modp2048-ecp256``).  IKEv1 has
no such lists inside a transform (RFC 2409 section 5: each transform carries
exactly one value per attribute), so a string expands into every combination,
one transform each, encryption varying slowest and the DH group fastest, each
slot in the order written: the first combination is the most preferred.
(strongSwan 5.9.8 itself, as an IKEv1 initiator, sends only the first
combination -- seen with tshark on its Main Mode message 1 -- so that one
comes first here too, and the rest are extra offers it would not make.)

Token names follow strongSwan's proposal keywords (proposal_keywords_static.txt).
In IKEv1 the "integrity" token of a Phase 1 proposal is the Hash Algorithm
attribute, which also gives the PRF (RFC 2409 section 4, HMAC of the hash).

The engine never needs the token strings: the functions at the end map
proposals to and from the IANA values carried in SA payloads
(RFC 2409 appendix A for Phase 1, RFC 2407 section 4.4/4.5 for ESP).
Keywords, values and sizes are read from the transform table
(``ikev1d.crypto.transforms``) and the DH groups from ``ikev1d.crypto.dh``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from typing import TypeVar

from ikev1d.crypto import transforms
from ikev1d.crypto.dh import GROUPS
from ikev1d.errors import Ikev1dError
from ikev1d.wire.enums import DhGroup as DhGroupId

__all__ = [
    "DH_GROUPS",
    "SUPPORTED_DH_GROUPS",
    "EspProposal",
    "IkeProposal",
    "ProposalError",
    "dh_group_name",
    "esp_auth_alg",
    "esp_encryption_key_bytes",
    "esp_icv_bytes",
    "esp_integrity_key_bytes",
    "esp_key_length",
    "esp_proposal_from_attributes",
    "esp_transform_id",
    "ike_encryption_block_bytes",
    "ike_encryption_id",
    "ike_encryption_key_bytes",
    "ike_hash_id",
    "ike_proposal_from_attributes",
    "parse_esp_proposal",
    "parse_ike_proposal",
]


class ProposalError(Ikev1dError, ValueError):
    """A proposal string or value we cannot or will not use."""


_T = TypeVar("_T")


# --- token tables, derived from the transform rows ---------------------------

# DH group token -> IANA group number (RFC 2409 6.1/6.2, RFC 3526, RFC 5903, RFC 8031).
DH_GROUPS: dict[str, int] = {group.name: number for number, group in GROUPS.items()}
_DH_ALIASES: dict[str, int] = {
    name: number for number, group in GROUPS.items() for name in (group.name, *group.aliases)
}
_DH_NAMES: dict[int, str] = {number: name for name, number in DH_GROUPS.items()}

# Group 1 (768-bit MODP, RFC 2409 6.1) is refused outright when the configuration loads.
_REFUSED_DH_GROUP = int(DhGroupId.MODP_768)
SUPPORTED_DH_GROUPS: frozenset[int] = frozenset(
    n for n in DH_GROUPS.values() if n != _REFUSED_DH_GROUP
)

_PRF_TOKENS: frozenset[str] = frozenset(row.prf_token for row in transforms.INTEGRITIES)
_IKE_ENCRYPTIONS: frozenset[str] = frozenset(
    row.name for row in transforms.ENCRYPTIONS if row.ike_id is not None
)
_ESP_ENCRYPTIONS: frozenset[str] = frozenset(
    row.name for row in transforms.ENCRYPTIONS if row.esp_id is not None
)
_INTEGRITIES: frozenset[str] = frozenset(row.name for row in transforms.INTEGRITIES)


@dataclass(frozen=True)
class _Encryption:
    name: str
    key_length: int
    icv_length: int = 0


def _encryption_token(token: str) -> _Encryption | None:
    found = transforms.encryption_by_token(token)
    if found is None:
        return None
    row, key_bits = found
    return _Encryption(row.name, key_bits, row.icv_bytes)


def _encryption_row(name: str, icv_length: int = 0) -> transforms.EncryptionTransform:
    row = transforms.encryption_by_name(name, icv_length)
    if row is None:
        raise ProposalError(f"unsupported encryption {name!r}")
    return row


def _integrity_row(name: str) -> transforms.IntegrityTransform:
    row = transforms.integrity_by_name(name)
    if row is None:
        raise ProposalError(f"unsupported integrity {name!r}")
    return row


def dh_group_name(number: int) -> str:
    """strongSwan token for a DH group number; ``group<N>`` for one we do not know."""
    return _DH_NAMES.get(number, f"group{number}")


def _encryption_text(encryption: str, key_length: int, icv_length: int = 0) -> str:
    return _encryption_row(encryption, icv_length).token(key_length)


# --- proposals --------------------------------------------------------------


@dataclass(frozen=True)
class IkeProposal:
    """One Phase 1 transform: encryption, hash (= PRF in IKEv1) and DH group."""

    encryption: str
    key_length: int
    integrity: str
    dh_group: int

    def __post_init__(self) -> None:
        if self.encryption not in _IKE_ENCRYPTIONS:
            raise ProposalError(f"unsupported IKE encryption {self.encryption!r}")
        _check_key_length(self.encryption, self.key_length)
        if self.integrity not in _INTEGRITIES:
            raise ProposalError(f"unsupported IKE hash {self.integrity!r}")
        if self.dh_group not in SUPPORTED_DH_GROUPS:
            raise ProposalError(f"unsupported DH group {self.dh_group}")

    def render(self) -> str:
        """strongSwan syntax, e.g. ``aes256-sha256-modp2048``."""
        # Every tunnel's events and log lines name its proposal: the text is kept on
        # the (immutable) proposal, outside the fields that equality and hashing use.
        text: str | None = self.__dict__.get("_text")
        if text is None:
            enc = _encryption_text(self.encryption, self.key_length)
            text = self.__dict__["_text"] = f"{enc}-{self.integrity}-{dh_group_name(self.dh_group)}"
        return text

    def __str__(self) -> str:
        return self.render()

    @property
    def weaknesses(self) -> tuple[str, ...]:
        """Why this proposal is weak (empty when it is not)."""
        return _weaknesses(self.encryption, self.integrity, self.dh_group, 0)

    @property
    def weak(self) -> bool:
        """Usable for legacy peers, but check-config should warn."""
        return bool(self.weaknesses)


@dataclass(frozen=True)
class EspProposal:
    """One ESP transform (RFC 2407 section 4.4.4), optionally with PFS."""

    encryption: str
    key_length: int
    icv_length: int
    integrity: str | None
    dh_group: int | None
    esn: bool = False

    def __post_init__(self) -> None:
        if self.encryption not in _ESP_ENCRYPTIONS:
            raise ProposalError(f"unsupported ESP encryption {self.encryption!r}")
        _check_key_length(self.encryption, self.key_length)
        if self.is_aead:
            if transforms.encryption_by_name(self.encryption, self.icv_length) is None:
                raise ProposalError(f"AES-GCM ICV length {self.icv_length} is not 8, 12 or 16")
            if self.integrity is not None:
                raise ProposalError("AES-GCM provides its own integrity; no integrity algorithm")
        else:
            if self.icv_length != 0:
                raise ProposalError("an ICV length is only meaningful for AES-GCM")
            if self.integrity is None:
                raise ProposalError(f"ESP encryption {self.encryption!r} needs an integrity "
                                    "algorithm")
            if self.integrity not in _INTEGRITIES:
                raise ProposalError(f"unsupported ESP integrity {self.integrity!r}")
        if self.dh_group is not None and self.dh_group not in SUPPORTED_DH_GROUPS:
            raise ProposalError(f"unsupported DH group {self.dh_group}")

    @property
    def is_aead(self) -> bool:
        return _is_aead(self.encryption)

    @property
    def pfs(self) -> bool:
        """Quick Mode runs a fresh DH exchange (RFC 2409 section 5.5)."""
        return self.dh_group is not None

    def render(self) -> str:
        """strongSwan syntax, e.g. ``aes128gcm16-modp2048`` or ``aes256-sha256``."""
        text: str | None = self.__dict__.get("_text")  # kept as IkeProposal.render does
        if text is not None:
            return text
        parts = [_encryption_text(self.encryption, self.key_length, self.icv_length)]
        if self.integrity is not None:
            parts.append(self.integrity)
        if self.dh_group is not None:
            parts.append(dh_group_name(self.dh_group))
        if self.esn:
            parts.append("esn")
        text = self.__dict__["_text"] = "-".join(parts)
        return text

    def __str__(self) -> str:
        return self.render()

    @property
    def weaknesses(self) -> tuple[str, ...]:
        return _weaknesses(self.encryption, self.integrity, self.dh_group, self.icv_length)

    @property
    def weak(self) -> bool:
        return bool(self.weaknesses)


def _is_aead(encryption: str) -> bool:
    return any(row.aead for row in transforms.ENCRYPTIONS if row.name == encryption)


def _key_bits(encryption: str) -> tuple[int, ...]:
    """Key lengths the cipher family takes (the same for every ICV length of AES-GCM)."""
    for row in transforms.ENCRYPTIONS:
        if row.name == encryption:
            return row.key_bits
    raise ProposalError(f"unsupported encryption {encryption!r}")


def _fixed_key_bits(encryption: str) -> int | None:
    """The key length of a fixed-key cipher, None for a variable one (AES)."""
    lengths = _key_bits(encryption)
    return lengths[0] if len(lengths) == 1 else None


def _check_key_length(encryption: str, key_length: int) -> None:
    lengths = _key_bits(encryption)
    fixed = _fixed_key_bits(encryption)
    if fixed is None:
        if key_length not in lengths:
            allowed = transforms.or_list(lengths)
            raise ProposalError(f"AES key length {key_length} is not {allowed}")
    elif key_length != fixed:
        raise ProposalError(f"{encryption} key length is {fixed}, not {key_length}")


def _weaknesses(
    encryption: str, integrity: str | None, dh_group: int | None, icv_length: int
) -> tuple[str, ...]:
    reasons: list[str] = []
    cipher = _encryption_row(encryption, icv_length)
    if cipher.weakness:
        reasons.append(cipher.weakness)
    if integrity is not None and _integrity_row(integrity).weakness:
        reasons.append(_integrity_row(integrity).weakness)
    if dh_group is not None and GROUPS[dh_group].weakness:
        reasons.append(GROUPS[dh_group].weakness)
    return tuple(reasons)


# --- parsing ----------------------------------------------------------------


@dataclass
class _Slots:
    encryptions: list[_Encryption]
    integrities: list[str]
    dh_groups: list[int | None]
    esns: list[bool]


def _add(items: list[_T], item: _T) -> None:
    if item not in items:
        items.append(item)


def _split(text: str, *, esp: bool, allow_insecure: bool, notes: list[str] | None) -> _Slots:
    proposal = text.strip()
    if not proposal:
        raise ProposalError("empty proposal")
    slots = _Slots([], [], [], [])
    for raw in proposal.split("-"):
        word = raw.strip().lower()
        if not word:
            raise ProposalError(f"empty algorithm name in proposal {proposal!r}")
        encryption = _encryption_token(word)
        integrity_row = transforms.integrity_by_token(word)
        if encryption is not None:
            row = _encryption_row(encryption.name, encryption.icv_length)
            if row.insecure and not allow_insecure:
                raise ProposalError(
                    f"{word} is insecure and refused in proposal {proposal!r}; set "
                    "[daemon] allow_insecure_algorithms = true to accept it"
                )
            if not esp and row.aead:
                raise ProposalError(
                    f"{word} is an AEAD algorithm, which IKEv1 Phase 1 cannot use, "
                    f"in proposal {proposal!r}"
                )
            if not esp and row.ike_id is None:
                raise ProposalError(f"{row.name} encryption is not allowed for IKE in proposal "
                                    f"{proposal!r}")
            _add(slots.encryptions, encryption)
        elif integrity_row is not None:
            integrity = integrity_row.name
            if integrity_row.insecure and not allow_insecure:
                raise ProposalError(
                    f"{word} is insecure and refused in proposal {proposal!r}; set "
                    "[daemon] allow_insecure_algorithms = true to accept it"
                )
            _add(slots.integrities, integrity)
        elif word in _PRF_TOKENS:
            if esp:
                raise ProposalError(f"a PRF ({word}) has no meaning in an ESP proposal "
                                    f"{proposal!r}")
            # RFC 2409 section 4: IKEv1 uses the HMAC of the negotiated hash as PRF.
            if notes is not None:
                notes.append(
                    f"{word} in proposal {proposal!r} ignored: IKEv1 uses the hash "
                    "algorithm as PRF"
                )
        elif word in _DH_ALIASES:
            group = _DH_ALIASES[word]
            if group == _REFUSED_DH_GROUP:
                raise ProposalError(
                    f"{word} (DH group {group}) is refused in proposal {proposal!r}: far too weak"
                )
            _add(slots.dh_groups, group)
        elif word in ("modpnone", "esn", "noesn"):
            if not esp:
                raise ProposalError(f"{word} has no meaning in an IKE proposal {proposal!r}")
            if word == "modpnone":
                _add(slots.dh_groups, None)
            else:
                _add(slots.esns, word == "esn")
        else:
            raise ProposalError(f"unknown algorithm {raw.strip()!r} in proposal {proposal!r}")
    if not slots.encryptions:
        raise ProposalError(f"proposal {proposal!r} has no encryption algorithm")
    return slots


def parse_ike_proposal(
    text: str, *, allow_insecure: bool = False, notes: list[str] | None = None
) -> list[IkeProposal]:
    """All Phase 1 transforms a strongSwan IKE proposal string stands for, best first.

    Raises ProposalError naming the offending token and the proposal.  Tokens that
    are accepted but have no effect (``prfsha256``) are explained in ``notes``.
    """
    slots = _split(text, esp=False, allow_insecure=allow_insecure, notes=notes)
    proposal = text.strip()
    if not slots.integrities:
        raise ProposalError(
            f"proposal {proposal!r} has no integrity (hash) algorithm; IKEv1 Phase 1 needs "
            "encryption, integrity and a DH group, e.g. aes256-sha256-modp2048"
        )
    if not slots.dh_groups:
        raise ProposalError(
            f"proposal {proposal!r} has no DH group; IKEv1 Phase 1 needs encryption, "
            "integrity and a DH group, e.g. aes256-sha256-modp2048"
        )
    return [
        IkeProposal(enc.name, enc.key_length, integrity, group)
        for enc, integrity, group in product(slots.encryptions, slots.integrities,
                                             _not_none(slots.dh_groups))
    ]


def _not_none(groups: Iterable[int | None]) -> list[int]:
    return [g for g in groups if g is not None]


def parse_esp_proposal(
    text: str, *, allow_insecure: bool = False, notes: list[str] | None = None
) -> list[EspProposal]:
    """All ESP transforms a strongSwan ESP proposal string stands for, best first.

    A DH group means PFS; ``modpnone`` offers no PFS; ``esn``/``noesn`` select
    64-bit extended sequence numbers (RFC 4304); default is ``noesn``.
    """
    slots = _split(text, esp=True, allow_insecure=allow_insecure, notes=notes)
    proposal = text.strip()
    aead = {_is_aead(enc.name) for enc in slots.encryptions}
    if len(aead) > 1:
        raise ProposalError(
            f"proposal {proposal!r} mixes AEAD (aes*gcm*) and non-AEAD encryption; "
            "write them as separate proposals"
        )
    integrities: list[str | None]
    if aead == {True}:
        if slots.integrities:
            first = slots.encryptions[0]
            name = _encryption_text(first.name, first.key_length, first.icv_length)
            raise ProposalError(
                f"{name} is an AEAD algorithm with its own integrity; remove "
                f"{slots.integrities[0]!r} from proposal {proposal!r}"
            )
        integrities = [None]
    else:
        if not slots.integrities:
            raise ProposalError(
                f"proposal {proposal!r} has no integrity algorithm; non-AEAD encryption "
                "needs one, e.g. aes128-sha256"
            )
        integrities = list(slots.integrities)
    groups = slots.dh_groups or [None]
    esns = slots.esns or [False]
    return [
        EspProposal(enc.name, enc.key_length, enc.icv_length, integrity, group, esn)
        for enc, integrity, group, esn in product(slots.encryptions, integrities, groups, esns)
    ]


# --- IANA values for SA payloads ---------------------------------------------


def ike_encryption_id(p: IkeProposal) -> tuple[int, int | None]:
    """(Encryption Algorithm value, Key Length attribute or None).

    AES has a variable key length, so the Key Length attribute is sent
    (RFC 2409 appendix A); 3DES and DES have fixed keys and none is sent.
    """
    row = _encryption_row(p.encryption)
    if row.ike_id is None:  # IkeProposal admits only ciphers with an IKE value
        raise ProposalError(f"{p.encryption} has no IKE Encryption Algorithm value")
    key_length = None if row.fixed_key else p.key_length
    return int(row.ike_id), key_length


def ike_hash_id(p: IkeProposal) -> int:
    """Hash Algorithm attribute value (RFC 2409 appendix A)."""
    return int(_integrity_row(p.integrity).ike_hash_id)


def ike_encryption_key_bytes(p: IkeProposal) -> int:
    """Phase 1 cipher key length in bytes (RFC 2409 appendix B expands SKEYID_e to it)."""
    return p.key_length // 8


def ike_encryption_block_bytes(p: IkeProposal) -> int:
    """Cipher block size, which is also the IV length (RFC 2409 appendix B)."""
    return _encryption_row(p.encryption).block_bytes


def _key_length(
    row: transforms.EncryptionTransform, key_length: int | None
) -> int | None:
    """The key length a transform's attributes give, None if they do not give one.

    A variable-length cipher needs the Key Length attribute; a fixed-length one
    may omit it, and if it sends one it must be the cipher's (RFC 2407 §4.5).
    """
    if not row.fixed_key:
        return key_length
    if key_length is not None and key_length != row.key_bits[0]:
        return None
    return row.key_bits[0]


def ike_proposal_from_attributes(
    encryption_alg: int, key_length: int | None, hash_alg: int, group: int
) -> IkeProposal | None:
    """The Phase 1 proposal these SA attribute values mean, or None if unsupported.

    AES without a Key Length attribute is not accepted (strongSwan behaves the
    same); a Key Length on a fixed-length cipher must match the cipher's.
    """
    cipher = transforms.encryption_by_ike_id(encryption_alg)
    hash_row = transforms.integrity_by_ike_hash_id(hash_alg)
    if cipher is None or hash_row is None:
        return None
    bits = _key_length(cipher, key_length)
    if bits is None:
        return None
    try:
        return IkeProposal(cipher.name, bits, hash_row.name, group)
    except ProposalError:
        return None


def esp_transform_id(p: EspProposal) -> int:
    """IPSEC ESP transform identifier (RFC 2407 4.4.4, RFC 4106 8.4)."""
    row = _encryption_row(p.encryption, p.icv_length)
    if row.esp_id is None:  # EspProposal admits only ciphers with an ESP value
        raise ProposalError(f"{p.encryption} has no ESP transform identifier")
    return int(row.esp_id)


def esp_key_length(p: EspProposal) -> int | None:
    """Key Length attribute (RFC 2407 §4.5): sent for a variable-length cipher only."""
    return None if _encryption_row(p.encryption, p.icv_length).fixed_key else p.key_length


def esp_auth_alg(p: EspProposal) -> int | None:
    """Authentication Algorithm attribute (RFC 2407 4.5), None for AES-GCM.

    RFC 4106 section 8.4: with AES-GCM in IKEv1 the attribute is not sent.
    """
    if p.integrity is None:
        return None
    return int(_integrity_row(p.integrity).esp_auth_id)


def esp_proposal_from_attributes(
    transform_id: int, key_length: int | None, auth_alg: int | None, group: int | None
) -> EspProposal | None:
    """The ESP proposal these transform values mean, or None if unsupported."""
    integrity: str | None = None
    if auth_alg is not None:
        hash_row = transforms.integrity_by_esp_auth_id(auth_alg)
        if hash_row is None:
            return None
        integrity = hash_row.name
    cipher = transforms.encryption_by_esp_id(transform_id)
    if cipher is None:
        return None
    bits = _key_length(cipher, key_length)
    if bits is None:
        return None
    try:
        return EspProposal(cipher.name, bits, cipher.icv_bytes, integrity, group)
    except ProposalError:
        return None


def esp_encryption_key_bytes(p: EspProposal) -> int:
    """Encryption KEYMAT length: for AES-GCM the key plus the 4-byte salt (RFC 4106 8.1)."""
    return p.key_length // 8 + _encryption_row(p.encryption, p.icv_length).salt_bytes


def esp_integrity_key_bytes(p: EspProposal) -> int:
    """HMAC key length: the hash output length (RFC 2403/2404, RFC 4868 2.1); 0 for GCM."""
    if p.integrity is None:
        return 0
    return _integrity_row(p.integrity).hash_bytes


def esp_icv_bytes(p: EspProposal) -> int:
    """ICV length on the wire (truncated HMAC, RFC 4868 2.3; or the GCM ICV)."""
    if p.integrity is None:
        return p.icv_length
    return _integrity_row(p.integrity).icv_bytes
