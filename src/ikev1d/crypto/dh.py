"""Diffie-Hellman groups for IKEv1 (the Key Exchange payload and g^xy).

- MODP groups 1, 2: RFC 2409 §6.1, §6.2; groups 5, 14-18: RFC 3526.
- ECP groups 19-21: RFC 5903 (KE data is x | y without the 0x04 prefix, §7;
  the shared secret is the x coordinate of the product point, §7 / RFC 5903 §9 errata
  as used by IKEv1 implementations).
- Curve25519, group 31: RFC 8031 (KE data and shared secret are the raw 32 octets,
  RFC 7748 §5/§6.1; an all-zero shared secret is rejected, RFC 8031 §2.3).

Randomness: generate_keypair() draws the private value from OpenSSL's CSPRNG through
`cryptography`; everything else is deterministic.
"""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING, cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.utils import CryptographyDeprecationWarning

from ikev1d.crypto.errors import CryptoError, InvalidPublicValue

# FFDH is marked deprecated in recent `cryptography` releases (every attribute access on
# the dh module warns), but IKEv1 peers still negotiate MODP groups: import the names
# once, silencing exactly that warning, so the hot path pays nothing for it. Releases
# that move FFDH to the `decrepit` package (without the warning) are preferred; the
# types are checked against the module every supported release has.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.dh import (
        DHParameterNumbers,
        DHParameters,
        DHPrivateKey,
        DHPrivateNumbers,
        DHPublicNumbers,
    )
else:
    try:
        from cryptography.hazmat.decrepit.asymmetric.dh import (
            DHParameterNumbers,
            DHParameters,
            DHPrivateKey,
            DHPrivateNumbers,
            DHPublicNumbers,
        )
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            from cryptography.hazmat.primitives.asymmetric.dh import (
                DHParameterNumbers,
                DHParameters,
                DHPrivateKey,
                DHPrivateNumbers,
                DHPublicNumbers,
            )

__all__ = [
    "GROUPS",
    "DhGroup",
    "DhKeyPair",
    "DhKind",
    "generate_keypair",
    "get_group",
    "group_by_name",
    "keypair_from_private",
    "modp_prime",
]


class DhKind(Enum):
    MODP = "modp"
    ECP = "ecp"
    CURVE25519 = "curve25519"


@dataclass(frozen=True)
class DhGroup:
    """An IKE Diffie-Hellman group (RFC 2409 §6 "Group Description" attribute value)."""

    number: int
    name: str  # strongSwan proposal token
    public_length: int  # length of the KE payload data in octets
    kind: DhKind
    aliases: tuple[str, ...] = ()  # other strongSwan tokens for the same group
    weakness: str = ""  # why check-config warns about it (empty: no warning)


# The primes below are the published RFC 2409 §6 / RFC 3526 values
# p = 2^N - 2^(N-64) - 1 + 2^64 * (floor(2^(N-130) * pi) + k); tests recompute them from
# that formula and OpenSSL recognises 1536..8192 as its built-in named groups. Generator 2.
_MODP_768 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A63A3620FFFFFFFFFFFFFFFF",
    16,
)
_MODP_1024 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
    16,
)
_MODP_1536 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA237327FFFFFFFFFFFFFFFF",
    16,
)
_MODP_2048 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
_MODP_3072 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)
_MODP_4096 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF",
    16,
)
_MODP_6144 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C93402849236C3FAB4D27C7026"
    "C1D4DCB2602646DEC9751E763DBA37BDF8FF9406AD9E530EE5DB382F413001AE"
    "B06A53ED9027D831179727B0865A8918DA3EDBEBCF9B14ED44CE6CBACED4BB1B"
    "DB7F1447E6CC254B332051512BD7AF426FB8F401378CD2BF5983CA01C64B92EC"
    "F032EA15D1721D03F482D7CE6E74FEF6D55E702F46980C82B5A84031900B1C9E"
    "59E7C97FBEC7E8F323A97A7E36CC88BE0F1D45B7FF585AC54BD407B22B4154AA"
    "CC8F6D7EBF48E1D814CC5ED20F8037E0A79715EEF29BE32806A1D58BB7C5DA76"
    "F550AA3D8A1FBFF0EB19CCB1A313D55CDA56C9EC2EF29632387FE8D76E3C0468"
    "043E8F663F4860EE12BF2D5B0B7474D6E694F91E6DCC4024FFFFFFFFFFFFFFFF",
    16,
)
_MODP_8192 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33"
    "A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864"
    "D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
    "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D7"
    "88719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8"
    "DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2"
    "233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA9"
    "93B4EA988D8FDDC186FFB7DC90A6C08F4DF435C93402849236C3FAB4D27C7026"
    "C1D4DCB2602646DEC9751E763DBA37BDF8FF9406AD9E530EE5DB382F413001AE"
    "B06A53ED9027D831179727B0865A8918DA3EDBEBCF9B14ED44CE6CBACED4BB1B"
    "DB7F1447E6CC254B332051512BD7AF426FB8F401378CD2BF5983CA01C64B92EC"
    "F032EA15D1721D03F482D7CE6E74FEF6D55E702F46980C82B5A84031900B1C9E"
    "59E7C97FBEC7E8F323A97A7E36CC88BE0F1D45B7FF585AC54BD407B22B4154AA"
    "CC8F6D7EBF48E1D814CC5ED20F8037E0A79715EEF29BE32806A1D58BB7C5DA76"
    "F550AA3D8A1FBFF0EB19CCB1A313D55CDA56C9EC2EF29632387FE8D76E3C0468"
    "043E8F663F4860EE12BF2D5B0B7474D6E694F91E6DBE115974A3926F12FEE5E4"
    "38777CB6A932DF8CD8BEC4D073B931BA3BC832B68D9DD300741FA7BF8AFC47ED"
    "2576F6936BA424663AAB639C5AE4F5683423B4742BF1C978238F16CBE39D652D"
    "E3FDB8BEFC848AD922222E04A4037C0713EB57A81A23F0C73473FC646CEA306B"
    "4BCBC8862F8385DDFA9D4B7FA2C087E879683303ED5BDD3A062B3CF5B3A278A6"
    "6D2A13F83F44F82DDF310EE074AB6A364597E899A0255DC164F31CC50846851D"
    "F9AB48195DED7EA1B1D510BD7EE74D73FAF36BC31ECFA268359046F4EB879F92"
    "4009438B481C6CD7889A002ED5EE382BC9190DA6FC026E479558E4475677E9AA"
    "9E3050E2765694DFC81F56E880B96E7160C980DD98EDD3DFFFFFFFFFFFFFFFFF",
    16,
)

_MODP_PRIMES: dict[int, int] = {
    1: _MODP_768,
    2: _MODP_1024,
    5: _MODP_1536,
    14: _MODP_2048,
    15: _MODP_3072,
    16: _MODP_4096,
    17: _MODP_6144,
    18: _MODP_8192,
}
_MODP_GENERATOR = 2

_ECP_CURVES: dict[int, ec.EllipticCurve] = {
    19: ec.SECP256R1(),  # RFC 5903 §3.1, 256-bit random ECP group
    20: ec.SECP384R1(),  # RFC 5903 §3.2
    21: ec.SECP521R1(),  # RFC 5903 §3.3
}

GROUPS: dict[int, DhGroup] = {
    1: DhGroup(1, "modp768", 96, DhKind.MODP),  # known, refused at config load (too weak)
    2: DhGroup(2, "modp1024", 128, DhKind.MODP,
               weakness="modp1024 (1024-bit MODP, DH group 2) is weak"),
    5: DhGroup(5, "modp1536", 192, DhKind.MODP,
               weakness="modp1536 (1536-bit MODP, DH group 5) is weak"),
    14: DhGroup(14, "modp2048", 256, DhKind.MODP),
    15: DhGroup(15, "modp3072", 384, DhKind.MODP),
    16: DhGroup(16, "modp4096", 512, DhKind.MODP),
    17: DhGroup(17, "modp6144", 768, DhKind.MODP),
    18: DhGroup(18, "modp8192", 1024, DhKind.MODP),
    19: DhGroup(19, "ecp256", 64, DhKind.ECP),
    20: DhGroup(20, "ecp384", 96, DhKind.ECP),
    21: DhGroup(21, "ecp521", 132, DhKind.ECP),
    31: DhGroup(31, "curve25519", 32, DhKind.CURVE25519, aliases=("x25519",)),
}

_GROUPS_BY_NAME: dict[str, DhGroup] = {
    name: g for g in GROUPS.values() for name in (g.name, *g.aliases)
}


def get_group(number: int) -> DhGroup:
    """The group for a Group Description value; CryptoError if we do not implement it."""
    group = GROUPS.get(number)
    if group is None:
        raise CryptoError(f"unsupported Diffie-Hellman group {number}")
    return group


def group_by_name(name: str) -> DhGroup:
    """The group for a strongSwan proposal token such as "modp2048" or "ecp256"."""
    group = _GROUPS_BY_NAME.get(name.lower())
    if group is None:
        raise CryptoError(f"unknown Diffie-Hellman group name {name!r}")
    return group


def modp_prime(number: int) -> int:
    """The prime modulus of a MODP group (RFC 2409 §6, RFC 3526)."""
    prime = _MODP_PRIMES.get(number)
    if prime is None:
        raise CryptoError(f"group {number} is not a MODP group")
    return prime


@cache
def _modp_parameter_numbers(number: int) -> DHParameterNumbers:
    return DHParameterNumbers(_MODP_PRIMES[number], _MODP_GENERATOR)


@cache
def _modp_parameters(number: int) -> DHParameters:
    # Building the parameter object makes OpenSSL match the prime against its named
    # groups (RFC 3526 primes are built in), which selects short private exponents:
    # cached once per group, this is what makes a modp2048 keypair cost well under 1 ms.
    return _modp_parameter_numbers(number).parameters()


# OpenSSL knows the RFC 3526 groups (5, 14-18) by name and loads a peer's public value
# for them cheaply; for groups 1 and 2 it runs a full parameter check (primality
# tests, ~40 ms) on every peer value loaded. For those two legacy groups we do the
# arithmetic with Python's pow() and a 256-bit private exponent instead (RFC 3526 §8:
# an exponent of twice the group's security strength suffices; 1024-bit MODP gives
# about 80 bits), which costs ~1.6 ms per exchange. Not constant-time, but these
# groups are weak anyway and only offered for legacy peers.
_PYTHON_MODP_GROUPS = frozenset({1, 2})
_PYTHON_MODP_EXPONENT_BITS = 256


class _PythonModpKey:
    """A MODP private exponent handled by Python's pow() (groups 1 and 2 only)."""

    __slots__ = ("public", "x")

    def __init__(self, number: int, x: int) -> None:
        self.x = x
        self.public = pow(_MODP_GENERATOR, x, _MODP_PRIMES[number])


_PrivateKey = DHPrivateKey | ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey | _PythonModpKey


def _left_pad(value: bytes, length: int) -> bytes:
    if len(value) > length:
        raise CryptoError("value longer than its fixed field")
    return value.rjust(length, b"\x00")


class DhKeyPair:
    """Our half of one Diffie-Hellman exchange: the KE payload data and the private key."""

    __slots__ = ("_private", "group", "public_bytes")

    group: DhGroup
    public_bytes: bytes

    def __init__(self, group: DhGroup, private: _PrivateKey) -> None:
        self.group = group
        self._private = private
        self.public_bytes = _public_bytes(group, private)

    def __repr__(self) -> str:  # never show the private value
        return f"DhKeyPair(group={self.group.name}, public={self.public_bytes[:8].hex()}...)"

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^xy from the peer's KE payload data (RFC 2409 §5; formats per group above).

        Raises InvalidPublicValue for a value of the wrong length, out of range (MODP:
        not 1 < y < p-1), not on the curve (ECP), or yielding the all-zero secret
        (Curve25519, RFC 8031 §2.3). Nothing else escapes.
        """
        group = self.group
        if len(peer_public) != group.public_length:
            raise InvalidPublicValue(
                f"{group.name}: public value is {len(peer_public)} octets, "
                f"expected {group.public_length}"
            )
        private = self._private
        # By the group's kind, which decided the key's type (generate_keypair,
        # keypair_from_private): isinstance against cryptography's key ABCs runs
        # Python code of the ABC machinery for each check.
        kind = group.kind
        try:
            if kind is DhKind.ECP:
                return _ecp_shared(group, cast("ec.EllipticCurvePrivateKey", private), peer_public)
            if kind is DhKind.MODP:
                return _modp_shared(group, cast("DHPrivateKey | _PythonModpKey", private),
                                    peer_public)
            return _x25519_shared(cast("x25519.X25519PrivateKey", private), peer_public)
        except InvalidPublicValue:
            raise
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidPublicValue(f"{group.name}: peer public value rejected: {exc}") from exc


def _modp_shared(
    group: DhGroup, private: DHPrivateKey | _PythonModpKey, peer_public: bytes
) -> bytes:
    prime = _MODP_PRIMES[group.number]
    y = int.from_bytes(peer_public, "big")
    # 1 and p-1 generate subgroups of order 1 and 2; 0 and >= p are not group elements.
    # For safe primes every other value lies in a subgroup of order q or 2q, so this
    # range check is the whole validation needed (RFC 6989 §2.2 reasoning).
    if not 1 < y < prime - 1:
        raise InvalidPublicValue(f"{group.name}: public value out of range (1 < y < p-1)")
    if isinstance(private, _PythonModpKey):
        secret = pow(y, private.x, prime).to_bytes(group.public_length, "big")
    else:
        peer_key = DHPublicNumbers(y, _modp_parameter_numbers(group.number)).public_key()
        secret = private.exchange(peer_key)
    # g^xy is used as a fixed-length octet string of the prime's length.
    return _left_pad(secret, group.public_length)


def _ecp_shared(group: DhGroup, private: ec.EllipticCurvePrivateKey, peer_public: bytes) -> bytes:
    # from_encoded_point checks that the point is on the curve (ValueError otherwise).
    peer_key = ec.EllipticCurvePublicKey.from_encoded_point(
        _ECP_CURVES[group.number], b"\x04" + peer_public
    )
    secret = private.exchange(ec.ECDH(), peer_key)
    # RFC 5903 §7: the shared secret is the x coordinate, fixed length.
    return _left_pad(secret, group.public_length // 2)


def _x25519_shared(private: x25519.X25519PrivateKey, peer_public: bytes) -> bytes:
    peer_key = x25519.X25519PublicKey.from_public_bytes(peer_public)
    # cryptography raises ValueError for an all-zero result; check too, to be explicit
    # (RFC 7748 §6.1, RFC 8031 §2.3).
    secret = private.exchange(peer_key)
    if secret == bytes(32):
        raise InvalidPublicValue("curve25519: all-zero shared secret")
    return secret


def _public_bytes(group: DhGroup, private: _PrivateKey) -> bytes:
    # By the group's kind, as in DhKeyPair.shared_secret.
    kind = group.kind
    if kind is DhKind.ECP:
        point = cast("ec.EllipticCurvePrivateKey", private).public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint)
        return point[1:]  # RFC 5903 §7: x | y, no point-format octet
    if kind is DhKind.MODP:
        if type(private) is _PythonModpKey:
            return private.public.to_bytes(group.public_length, "big")
        y = cast("DHPrivateKey", private).public_key().public_numbers().y
        return y.to_bytes(group.public_length, "big")  # left-padded, RFC 2409 §5
    return cast("x25519.X25519PrivateKey", private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def generate_keypair(group: int) -> DhKeyPair:
    """A fresh keypair for `group`.

    The private value comes from OpenSSL's CSPRNG through `cryptography`, except for
    the legacy groups 1 and 2, whose 256-bit exponent comes from `secrets`.
    """
    grp = get_group(group)
    if grp.kind is DhKind.MODP:
        if group in _PYTHON_MODP_GROUPS:
            x = secrets.randbits(_PYTHON_MODP_EXPONENT_BITS) | 1 << (_PYTHON_MODP_EXPONENT_BITS - 1)
            return DhKeyPair(grp, _PythonModpKey(group, x))
        return DhKeyPair(grp, _modp_parameters(group).generate_private_key())
    if grp.kind is DhKind.ECP:
        return DhKeyPair(grp, ec.generate_private_key(_ECP_CURVES[group]))
    return DhKeyPair(grp, x25519.X25519PrivateKey.generate())


def keypair_from_private(group: int, private: int | bytes) -> DhKeyPair:
    """A keypair from a known private value, for tests and published vectors.

    MODP and ECP: the private exponent/scalar as an int or big-endian octets.
    Curve25519: the 32-octet scalar as RFC 7748 writes it (an int is encoded
    little-endian, as RFC 7748 §5 decodes scalars).
    """
    grp = get_group(group)
    try:
        if grp.kind is DhKind.CURVE25519:
            raw = private if isinstance(private, bytes) else private.to_bytes(32, "little")
            return DhKeyPair(grp, x25519.X25519PrivateKey.from_private_bytes(raw))
        value = private if isinstance(private, int) else int.from_bytes(private, "big")
        if grp.kind is DhKind.ECP:
            return DhKeyPair(grp, ec.derive_private_key(value, _ECP_CURVES[group]))
        prime = _MODP_PRIMES[group]
        if not 1 < value < prime - 1:
            raise CryptoError(f"{grp.name}: private value out of range")
        if group in _PYTHON_MODP_GROUPS:
            return DhKeyPair(grp, _PythonModpKey(group, value))
        numbers = _modp_parameter_numbers(group)
        public = DHPublicNumbers(pow(_MODP_GENERATOR, value, prime), numbers)
        return DhKeyPair(grp, DHPrivateNumbers(value, public).private_key())
    except (ValueError, OverflowError) as exc:
        raise CryptoError(f"{grp.name}: invalid private value: {exc}") from exc
