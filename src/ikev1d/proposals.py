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
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from typing import TypeVar

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


class ProposalError(ValueError):
    """A proposal string or value we cannot or will not use."""


_T = TypeVar("_T")


# --- token tables -----------------------------------------------------------

# DH group token -> IANA group number (RFC 2409 6.1/6.2, RFC 3526, RFC 5903, RFC 8031).
DH_GROUPS: dict[str, int] = {
    "modp768": 1,
    "modp1024": 2,
    "modp1536": 5,
    "modp2048": 14,
    "modp3072": 15,
    "modp4096": 16,
    "modp6144": 17,
    "modp8192": 18,
    "ecp256": 19,
    "ecp384": 20,
    "ecp521": 21,
    "curve25519": 31,
}
_DH_ALIASES: dict[str, int] = {**DH_GROUPS, "x25519": 31}
_DH_NAMES: dict[int, str] = {number: name for name, number in DH_GROUPS.items()}

# Group 1 (768-bit MODP) is refused outright (SPEC: "group 1 is refused at config load").
SUPPORTED_DH_GROUPS: frozenset[int] = frozenset(n for n in DH_GROUPS.values() if n != 1)
_WEAK_DH_GROUPS: dict[int, str] = {
    2: "modp1024 (1024-bit MODP, DH group 2) is weak",
    5: "modp1536 (1536-bit MODP, DH group 5) is weak",
}

_INTEGRITY_ALIASES: dict[str, str] = {
    "md5": "md5",
    "sha": "sha1",
    "sha1": "sha1",
    "sha256": "sha256",
    "sha2_256": "sha256",
    "sha384": "sha384",
    "sha2_384": "sha384",
    "sha512": "sha512",
    "sha2_512": "sha512",
}
_PRF_TOKENS: frozenset[str] = frozenset(
    {"prfmd5", "prfsha1", "prfsha256", "prfsha384", "prfsha512"}
)
_INSECURE_INTEGRITY: frozenset[str] = frozenset({"md5"})
_INSECURE_ENCRYPTION: frozenset[str] = frozenset({"des"})

_IKE_ENCRYPTIONS: frozenset[str] = frozenset({"aes", "3des", "des"})
_ESP_ENCRYPTIONS: frozenset[str] = frozenset({"aes", "aesgcm", "3des", "des", "null"})
_INTEGRITIES: frozenset[str] = frozenset({"md5", "sha1", "sha256", "sha384", "sha512"})
_AES_KEY_LENGTHS: frozenset[int] = frozenset({128, 192, 256})
_FIXED_KEY_LENGTHS: dict[str, int] = {"3des": 192, "des": 64, "null": 0}

# aes128gcm16, aes256gcm8, aes128gcm128 (ICV in bits), aes192gcm (= 16 octets).
_GCM_RE = re.compile(r"^aes(128|192|256)gcm(8|12|16|64|96|128)?$")
_GCM_ICV_TOKENS: dict[str, int] = {
    "": 16, "8": 8, "64": 8, "12": 12, "96": 12, "16": 16, "128": 16,
}
_CBC_RE = re.compile(r"^aes(128|192|256)?$")


@dataclass(frozen=True)
class _Encryption:
    name: str
    key_length: int
    icv_length: int = 0


def _encryption_token(token: str) -> _Encryption | None:
    match = _CBC_RE.match(token)
    if match:
        return _Encryption("aes", int(match.group(1) or 128))
    match = _GCM_RE.match(token)
    if match:
        return _Encryption("aesgcm", int(match.group(1)), _GCM_ICV_TOKENS[match.group(2) or ""])
    if token in _FIXED_KEY_LENGTHS:
        return _Encryption(token, _FIXED_KEY_LENGTHS[token])
    return None


def dh_group_name(number: int) -> str:
    """strongSwan token for a DH group number; ``group<N>`` for one we do not know."""
    return _DH_NAMES.get(number, f"group{number}")


def _encryption_text(encryption: str, key_length: int, icv_length: int = 0) -> str:
    if encryption == "aes":
        return f"aes{key_length}"
    if encryption == "aesgcm":
        return f"aes{key_length}gcm{icv_length}"
    return encryption


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
        enc = _encryption_text(self.encryption, self.key_length)
        return f"{enc}-{self.integrity}-{dh_group_name(self.dh_group)}"

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
        if self.encryption == "aesgcm":
            if self.icv_length not in (8, 12, 16):
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
        return self.encryption == "aesgcm"

    @property
    def pfs(self) -> bool:
        """Quick Mode runs a fresh DH exchange (RFC 2409 section 5.5)."""
        return self.dh_group is not None

    def render(self) -> str:
        """strongSwan syntax, e.g. ``aes128gcm16-modp2048`` or ``aes256-sha256``."""
        parts = [_encryption_text(self.encryption, self.key_length, self.icv_length)]
        if self.integrity is not None:
            parts.append(self.integrity)
        if self.dh_group is not None:
            parts.append(dh_group_name(self.dh_group))
        if self.esn:
            parts.append("esn")
        return "-".join(parts)

    def __str__(self) -> str:
        return self.render()

    @property
    def weaknesses(self) -> tuple[str, ...]:
        return _weaknesses(self.encryption, self.integrity, self.dh_group, self.icv_length)

    @property
    def weak(self) -> bool:
        return bool(self.weaknesses)


def _check_key_length(encryption: str, key_length: int) -> None:
    if encryption in ("aes", "aesgcm"):
        if key_length not in _AES_KEY_LENGTHS:
            raise ProposalError(f"AES key length {key_length} is not 128, 192 or 256")
    elif key_length != _FIXED_KEY_LENGTHS[encryption]:
        raise ProposalError(
            f"{encryption} key length is {_FIXED_KEY_LENGTHS[encryption]}, not {key_length}"
        )


def _weaknesses(
    encryption: str, integrity: str | None, dh_group: int | None, icv_length: int
) -> tuple[str, ...]:
    reasons: list[str] = []
    if encryption == "des":
        reasons.append("des (56-bit key) is broken")
    elif encryption == "3des":
        reasons.append("3des (64-bit block cipher) is weak")
    elif encryption == "null":
        reasons.append("null encryption provides no confidentiality")
    if encryption == "aesgcm" and icv_length == 8:
        reasons.append("an 8-octet AES-GCM ICV is weak")
    if integrity == "md5":
        reasons.append("md5 is broken")
    if dh_group is not None and dh_group in _WEAK_DH_GROUPS:
        reasons.append(_WEAK_DH_GROUPS[dh_group])
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
        if encryption is not None:
            if encryption.name in _INSECURE_ENCRYPTION and not allow_insecure:
                raise ProposalError(
                    f"{word} is insecure and refused in proposal {proposal!r}; set "
                    "[daemon] allow_insecure_algorithms = true to accept it"
                )
            if not esp and encryption.name == "aesgcm":
                raise ProposalError(
                    f"{word} is an AEAD algorithm, which IKEv1 Phase 1 cannot use, "
                    f"in proposal {proposal!r}"
                )
            if not esp and encryption.name == "null":
                raise ProposalError(f"null encryption is not allowed for IKE in proposal "
                                    f"{proposal!r}")
            _add(slots.encryptions, encryption)
        elif word in _INTEGRITY_ALIASES:
            integrity = _INTEGRITY_ALIASES[word]
            if integrity in _INSECURE_INTEGRITY and not allow_insecure:
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
            if group == 1:
                raise ProposalError(
                    f"{word} (DH group 1) is refused in proposal {proposal!r}: far too weak"
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
    aead = {enc.name == "aesgcm" for enc in slots.encryptions}
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

# RFC 2409 appendix A, Encryption Algorithm (class 1); AES-CBC from RFC 3602 section 5.3.
_IKE_ENCRYPTION_IDS: dict[str, int] = {"des": 1, "3des": 5, "aes": 7}
# RFC 2409 appendix A, Hash Algorithm (class 2); SHA2 values from RFC 4868 / IANA.
_IKE_HASH_IDS: dict[str, int] = {"md5": 1, "sha1": 2, "sha256": 4, "sha384": 5, "sha512": 6}
# RFC 2407 section 4.4.4 (IPSEC ESP transform identifiers), RFC 4106 section 8.4 for GCM.
_ESP_CBC_IDS: dict[str, int] = {"des": 2, "3des": 3, "null": 11, "aes": 12}
_ESP_GCM_IDS: dict[int, int] = {8: 18, 12: 19, 16: 20}
# RFC 2407 section 4.5 Authentication Algorithm; SHA2 values from RFC 4868 section 3.
_ESP_AUTH_IDS: dict[str, int] = {"md5": 1, "sha1": 2, "sha256": 5, "sha384": 6, "sha512": 7}

_HASH_BYTES: dict[str, int] = {"md5": 16, "sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
# HMAC-MD5-96 / HMAC-SHA1-96 (RFC 2403/2404), HMAC-SHA2-N-N/2 (RFC 4868 section 2.3).
_ICV_BYTES: dict[str, int] = {"md5": 12, "sha1": 12, "sha256": 16, "sha384": 24, "sha512": 32}
_BLOCK_BYTES: dict[str, int] = {"aes": 16, "3des": 8, "des": 8}


def _reverse(table: dict[str, int]) -> dict[int, str]:
    return {value: name for name, value in table.items()}


def ike_encryption_id(p: IkeProposal) -> tuple[int, int | None]:
    """(Encryption Algorithm value, Key Length attribute or None).

    AES has a variable key length, so the Key Length attribute is sent
    (RFC 2409 appendix A); 3DES and DES have fixed keys and none is sent.
    """
    key_length = p.key_length if p.encryption == "aes" else None
    return _IKE_ENCRYPTION_IDS[p.encryption], key_length


def ike_hash_id(p: IkeProposal) -> int:
    """Hash Algorithm attribute value (RFC 2409 appendix A)."""
    return _IKE_HASH_IDS[p.integrity]


def ike_encryption_key_bytes(p: IkeProposal) -> int:
    """Phase 1 cipher key length in bytes (RFC 2409 appendix B expands SKEYID_e to it)."""
    return p.key_length // 8


def ike_encryption_block_bytes(p: IkeProposal) -> int:
    """Cipher block size, which is also the IV length (RFC 2409 appendix B)."""
    return _BLOCK_BYTES[p.encryption]


def ike_proposal_from_attributes(
    encryption_alg: int, key_length: int | None, hash_alg: int, group: int
) -> IkeProposal | None:
    """The Phase 1 proposal these SA attribute values mean, or None if unsupported.

    AES without a Key Length attribute is not accepted (strongSwan behaves the
    same); a Key Length on a fixed-length cipher must match the cipher's.
    """
    encryption = _reverse(_IKE_ENCRYPTION_IDS).get(encryption_alg)
    integrity = _reverse(_IKE_HASH_IDS).get(hash_alg)
    if encryption is None or integrity is None:
        return None
    if encryption != "aes":
        if key_length is not None and key_length != _FIXED_KEY_LENGTHS[encryption]:
            return None
        key_length = _FIXED_KEY_LENGTHS[encryption]
    if key_length is None:
        return None
    try:
        return IkeProposal(encryption, key_length, integrity, group)
    except ProposalError:
        return None


def esp_transform_id(p: EspProposal) -> int:
    """IPSEC ESP transform identifier (RFC 2407 4.4.4, RFC 4106 8.4)."""
    if p.encryption == "aesgcm":
        return _ESP_GCM_IDS[p.icv_length]
    return _ESP_CBC_IDS[p.encryption]


def esp_auth_alg(p: EspProposal) -> int | None:
    """Authentication Algorithm attribute (RFC 2407 4.5), None for AES-GCM.

    RFC 4106 section 8.4: with AES-GCM in IKEv1 the attribute is not sent.
    """
    if p.integrity is None:
        return None
    return _ESP_AUTH_IDS[p.integrity]


def esp_proposal_from_attributes(
    transform_id: int, key_length: int | None, auth_alg: int | None, group: int | None
) -> EspProposal | None:
    """The ESP proposal these transform values mean, or None if unsupported."""
    integrity: str | None = None
    if auth_alg is not None:
        integrity = _reverse(_ESP_AUTH_IDS).get(auth_alg)
        if integrity is None:
            return None
    gcm_icv = _reverse_int(_ESP_GCM_IDS).get(transform_id)
    try:
        if gcm_icv is not None:
            if key_length is None:
                return None
            return EspProposal("aesgcm", key_length, gcm_icv, integrity, group)
        encryption = _reverse(_ESP_CBC_IDS).get(transform_id)
        if encryption is None:
            return None
        if encryption != "aes":
            if key_length is not None and key_length != _FIXED_KEY_LENGTHS[encryption]:
                return None
            key_length = _FIXED_KEY_LENGTHS[encryption]
        if key_length is None:
            return None
        return EspProposal(encryption, key_length, 0, integrity, group)
    except ProposalError:
        return None


def _reverse_int(table: dict[int, int]) -> dict[int, int]:
    return {value: key for key, value in table.items()}


def esp_encryption_key_bytes(p: EspProposal) -> int:
    """Encryption KEYMAT length: for AES-GCM the key plus the 4-byte salt (RFC 4106 8.1)."""
    if p.encryption == "aesgcm":
        return p.key_length // 8 + 4
    return p.key_length // 8


def esp_integrity_key_bytes(p: EspProposal) -> int:
    """HMAC key length: the hash output length (RFC 2403/2404, RFC 4868 2.1); 0 for GCM."""
    if p.integrity is None:
        return 0
    return _HASH_BYTES[p.integrity]


def esp_icv_bytes(p: EspProposal) -> int:
    """ICV length on the wire (truncated HMAC, RFC 4868 2.3; or the GCM ICV)."""
    if p.integrity is None:
        return p.icv_length
    return _ICV_BYTES[p.integrity]
