"""Which payloads each message may and must carry: protocol rules as data.

Checked before an exchange sees the message, as strongSwan's message rules
are. Keys are the message number within the exchange (and, for Main Mode
messages 3 to 6, the authentication method first: RFC 2409 sections 5.1 to
5.3 change those messages with it); values are the payload types that must be
present and those that may be. Vendor IDs and notifications are tolerated
where peers are known to add them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ikev1d.engine.ike_sa import ProtocolFailure
from ikev1d.wire import AuthMethod, NotifyType, Payload, PayloadType

P = PayloadType
_NAT_D = {P.NAT_D, P.NAT_D_DRAFT}
_NAT_OA = {P.NAT_OA, P.NAT_OA_DRAFT}


@dataclass(frozen=True)
class Rule:
    required: frozenset[int]
    allowed: frozenset[int]
    encrypted: bool
    #: Payloads whose bodies arrive as ciphertext and are decoded by the
    #: authenticator, not the codec (RFC 2409 sections 5.2 and 5.3).
    opaque: frozenset[int] = frozenset()


def _rule(required: set[int], optional: set[int], encrypted: bool,
          opaque: set[int] | None = None) -> Rule:
    return Rule(frozenset(required), frozenset(required | optional), encrypted,
                frozenset(opaque or ()))


#: Messages 1 and 2 negotiate the method, so they cannot depend on it.
MAIN_MODE_SA = {
    1: _rule({P.SA}, {P.VENDOR_ID}, False),
    2: _rule({P.SA}, {P.VENDOR_ID, P.NOTIFICATION}, False),
}

#: Messages 3 to 6 by authentication method (RFC 2409 section 5.4 for pre-shared keys).
_MAIN_MODE_PSK = {
    3: _rule({P.KE, P.NONCE}, _NAT_D | {P.VENDOR_ID, P.CR}, False),
    4: _rule({P.KE, P.NONCE}, _NAT_D | {P.VENDOR_ID, P.CR}, False),
    5: _rule({P.ID, P.HASH}, {P.NOTIFICATION, P.VENDOR_ID, P.CERT, P.CR}, True),
    6: _rule({P.ID, P.HASH}, {P.NOTIFICATION, P.VENDOR_ID, P.CERT}, True),
}

#: Signatures (RFC 2409 section 5.1): CR in messages 3 and 4 asks for the
#: peer's certificate; messages 5 and 6 carry ID, CERT(s) and SIG. strongSwan
#: may repeat a CR in message 5 and 6.
_MAIN_MODE_SIG = {
    3: _rule({P.KE, P.NONCE}, _NAT_D | {P.VENDOR_ID, P.CR}, False),
    4: _rule({P.KE, P.NONCE}, _NAT_D | {P.VENDOR_ID, P.CR}, False),
    5: _rule({P.ID, P.SIG}, {P.NOTIFICATION, P.VENDOR_ID, P.CERT, P.CR}, True),
    6: _rule({P.ID, P.SIG}, {P.NOTIFICATION, P.VENDOR_ID, P.CERT, P.CR}, True),
}

#: Public key encryption (RFC 2409 section 5.2): messages 3 and 4 carry KE and
#: the ID and nonce bodies encrypted with the peer's public key, message 3
#: optionally HASH(1), the hash of the certificate it encrypted to; messages 5
#: and 6 carry only HASH_I / HASH_R.
_MAIN_MODE_PKE = {
    3: _rule({P.KE, P.ID, P.NONCE}, _NAT_D | {P.VENDOR_ID, P.HASH}, False, {P.ID, P.NONCE}),
    4: _rule({P.KE, P.ID, P.NONCE}, _NAT_D | {P.VENDOR_ID}, False, {P.ID, P.NONCE}),
    5: _rule({P.HASH}, {P.NOTIFICATION, P.VENDOR_ID}, True),
    6: _rule({P.HASH}, {P.NOTIFICATION, P.VENDOR_ID}, True),
}

#: The revised mode (RFC 2409 section 5.3): the nonce encrypted with the public
#: key, KE and ID with the symmetric key derived from the nonce; message 3 may
#: add the initiator's certificate, encrypted like them ([<Cert-I_b>Ke_i]).
_MAIN_MODE_RPKE = {
    3: _rule({P.KE, P.ID, P.NONCE}, _NAT_D | {P.VENDOR_ID, P.HASH, P.CERT}, False,
             {P.KE, P.ID, P.NONCE, P.CERT}),
    4: _rule({P.KE, P.ID, P.NONCE}, _NAT_D | {P.VENDOR_ID}, False, {P.KE, P.ID, P.NONCE}),
    5: _rule({P.HASH}, {P.NOTIFICATION, P.VENDOR_ID}, True),
    6: _rule({P.HASH}, {P.NOTIFICATION, P.VENDOR_ID}, True),
}

MAIN_MODE_AUTH: dict[int, dict[int, Rule]] = {
    AuthMethod.PRE_SHARED_KEY: _MAIN_MODE_PSK,
    AuthMethod.RSA_SIG: _MAIN_MODE_SIG,
    AuthMethod.ECDSA_256: _MAIN_MODE_SIG,
    AuthMethod.ECDSA_384: _MAIN_MODE_SIG,
    AuthMethod.ECDSA_521: _MAIN_MODE_SIG,
    AuthMethod.RSA_ENC: _MAIN_MODE_PKE,
    AuthMethod.RSA_REV_ENC: _MAIN_MODE_RPKE,
}

QUICK_MODE = {
    1: _rule({P.HASH, P.SA, P.NONCE}, {P.KE, P.ID, P.NOTIFICATION} | _NAT_OA, True),
    2: _rule({P.HASH, P.SA, P.NONCE}, {P.KE, P.ID, P.NOTIFICATION} | _NAT_OA, True),
    3: _rule({P.HASH}, set(), True),
}

INFORMATIONAL = _rule({P.HASH}, {P.NOTIFICATION, P.DELETE}, True)

#: draft-dukes-ike-mode-cfg-02 section 3.2: HASH, then one attribute payload.
TRANSACTION = _rule({P.HASH, P.ATTRIBUTE}, set(), True)


#: RFC 2409 section 5: "The length of nonce payload MUST be between 8 and 256
#: bytes inclusive" (Main Mode and Quick Mode alike).
NONCE_MIN, NONCE_MAX = 8, 256


def check_nonce(nonce: bytes, what: str) -> None:
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise ProtocolFailure(
            f"{what}: nonce of {len(nonce)} bytes (RFC 2409 section 5: {NONCE_MIN} to "
            f"{NONCE_MAX})", NotifyType.PAYLOAD_MALFORMED)


def check(rule: Rule, payloads: Sequence[Payload], what: str) -> None:
    present = {int(p.payload_type) for p in payloads}
    missing = rule.required - present
    if missing:
        names = ", ".join(PayloadType(t).name for t in sorted(missing))
        raise ProtocolFailure(f"{what} lacks {names}", NotifyType.PAYLOAD_MALFORMED)
    extra = present - rule.allowed
    if extra:
        names = ", ".join(PayloadType(t).name for t in sorted(extra))
        raise ProtocolFailure(f"{what} carries unexpected {names}", NotifyType.INVALID_PAYLOAD_TYPE)
