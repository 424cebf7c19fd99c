"""Phase 1 authentication behind one interface (RFC 2409 section 5).

The negotiated authentication method decides what SKEYID is, which payloads
Main Mode messages 3 to 6 carry and how they are built and read (with public
key encryption, RFC 2409 sections 5.2 and 5.3, ID and nonce travel encrypted
in messages 3/4 and messages 5/6 carry HASH only), how the proof of identity
is built and verified, and what a failure most likely means. Main Mode asks
the authenticator for all of that and knows none of it.

One module per method implements :class:`Authenticator`; a :class:`Registry`
picks the implementation from the negotiated (wire) method.
"""

from __future__ import annotations

import abc
import enum
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

from ikev1d.config.identity import Identity
from ikev1d.crypto import hash_i, hash_r
from ikev1d.engine import rules
from ikev1d.engine.identity import IdentityError, describe, id_payload, matches
from ikev1d.engine.ike_sa import ProtocolFailure, first
from ikev1d.wire import AuthMethod, IdPayload, KePayload, NoncePayload, NotifyType, Payload

if TYPE_CHECKING:
    from ikev1d.config import ConnectionConfig
    from ikev1d.engine.ike_sa import IkeSa, Parsed

T = TypeVar("T")


class XauthRole(enum.Enum):
    """Which side answers XAUTH requests after Phase 1 (draft-beaulieu-ike-xauth-02
    section 7.2: the "XAUTHInit*" methods authenticate the initiator)."""

    NONE = "none"
    INITIATOR_IS_CLIENT = "initiator-is-client"
    RESPONDER_IS_CLIENT = "responder-is-client"


@dataclass(frozen=True)
class Method:
    """A wire authentication method: the method it builds on and its XAUTH role."""

    wire: int
    base: int
    xauth: XauthRole


#: The XAUTH methods authenticate Phase 1 as their base method does; XAUTH
#: itself runs afterwards, in a Transaction exchange.
_XAUTH_METHODS: dict[int, tuple[AuthMethod, XauthRole]] = {
    AuthMethod.XAUTH_INIT_PSK: (AuthMethod.PRE_SHARED_KEY, XauthRole.INITIATOR_IS_CLIENT),
    AuthMethod.XAUTH_RESP_PSK: (AuthMethod.PRE_SHARED_KEY, XauthRole.RESPONDER_IS_CLIENT),
    AuthMethod.XAUTH_INIT_RSA: (AuthMethod.RSA_SIG, XauthRole.INITIATOR_IS_CLIENT),
    AuthMethod.XAUTH_RESP_RSA: (AuthMethod.RSA_SIG, XauthRole.RESPONDER_IS_CLIENT),
}


def xauth_variant(base: int, conn: ConnectionConfig, initiator: bool) -> int | None:
    """The wire method for ``base`` on a connection with an XAUTH round: the
    "XAUTHInit*" variant when the Main Mode initiator is the XAUTH client
    (draft-beaulieu-ike-xauth-02 section 7.2), else "XAUTHResp*"; ``base``
    itself without a round, None when the method has no XAUTH variant."""
    if conn.local_xauth is not None:
        client_initiates = initiator
    elif conn.remote_xauth is not None:
        client_initiates = not initiator
    else:
        return base
    for wire, (method, role) in _XAUTH_METHODS.items():
        if method == base and (role is XauthRole.INITIATOR_IS_CLIENT) == client_initiates:
            return int(wire)
    return None


def resolve(wire: int) -> Method:
    base, role = _XAUTH_METHODS.get(wire, (wire, XauthRole.NONE))
    return Method(wire, int(base), role)


class UnknownAuthMethod(ProtocolFailure):
    """An authentication method we do not implement."""

    def __init__(self, wire: int) -> None:
        super().__init__(
            f"authentication method {AuthMethod(wire).name} is not supported",
            NotifyType.NO_PROPOSAL_CHOSEN,
        )


@dataclass
class Phase1Material:
    """What Main Mode has gathered that SKEYID and the proofs of identity cover
    (RFC 2409 section 5): SAi_b, both DH public values, both nonces, g^xy."""

    sa_i_b: bytes = b""
    g_xi: bytes = b""
    g_xr: bytes = b""
    ni: bytes = b""
    nr: bytes = b""
    g_xy: bytes = b""


class CredentialCache:
    """Credential lookups per peer, done once per configuration: they parse
    addresses and IDs, which showed in handshake profiles. Keyed by peer
    addresses that any sender chooses, so bounded (least recently used go)."""

    SIZE = 1024

    def __init__(self) -> None:
        self._values: OrderedDict[tuple[object, ...], object] = OrderedDict()

    def get(self, key: tuple[object, ...], compute: Callable[[], T]) -> T:
        if key not in self._values:
            self._values[key] = compute()
            while len(self._values) > self.SIZE:
                self._values.popitem(last=False)
        else:
            self._values.move_to_end(key)
        return self._values[key]  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self._values)


class Authenticator(abc.ABC):
    """Phase 1 authentication of one ISAKMP SA, for either role."""

    #: The method as offered and accepted in the SA payload.
    method: ClassVar[AuthMethod]
    #: How logs and the status name it.
    name: ClassVar[str]
    #: The configuration's ``auth`` value that selects it.
    config_name: ClassVar[str]

    def __init__(self, sa: IkeSa, material: Phase1Material, xauth: XauthRole) -> None:
        self.sa = sa
        self.material = material
        self.xauth = xauth

    @classmethod
    def offer_for(cls, conn: ConnectionConfig) -> bool:
        """Whether this method is the one to offer (and accept) for ``conn``: its
        ``auth`` selects it, and for public keys our key's type fits it too."""
        return str(conn.local.auth) == cls.config_name

    def rule(self, number: int) -> rules.Rule:
        """Which payloads Main Mode message ``number`` (3 to 6) carries with this method."""
        return rules.MAIN_MODE_AUTH[self.method][number]

    def proof_prf(self) -> str:
        """The PRF of HASH_I and HASH_R: the negotiated one, unless the method
        prescribes its own (ECDSA, RFC 4754)."""
        return self.sa.hash_alg

    def proof_hash(self, of_initiator: bool, id_b: bytes) -> bytes:
        """HASH_I or HASH_R (RFC 2409 section 5): what pre-shared keys send as is
        and signatures sign."""
        sa, m = self.sa, self.material
        if sa.keys is None:
            raise ProtocolFailure("no keys")
        prf = self.proof_prf()
        if of_initiator:
            return hash_i(prf, sa.keys.skeyid, m.g_xi, m.g_xr, sa.cky_i, sa.cky_r,
                          m.sa_i_b, id_b)
        return hash_r(prf, sa.keys.skeyid, m.g_xr, m.g_xi, sa.cky_r, sa.cky_i,
                      m.sa_i_b, id_b)

    # -- messages 3 and 4 ----------------------------------------------------------

    def key_exchange_payloads(self) -> list[Payload]:
        """Our KE and nonce for message 3 (initiator) or 4 (responder)."""
        m = self.material
        if self.sa.initiator:
            return [KePayload(m.g_xi), NoncePayload(m.ni)]
        return [KePayload(m.g_xr), NoncePayload(m.nr)]

    def read_key_exchange(self, payloads: Iterable[Payload]) -> None:
        """The peer's KE and nonce from message 3 or 4 into the material."""
        chain = tuple(payloads)
        ke, nonce = first(chain, KePayload).data, first(chain, NoncePayload).data
        rules.check_nonce(nonce, "Main Mode")
        if self.sa.initiator:
            self.material.g_xr, self.material.nr = ke, nonce
        else:
            self.material.g_xi, self.material.ni = ke, nonce

    # -- SKEYID and messages 5 and 6 ------------------------------------------------

    @abc.abstractmethod
    def skeyid(self) -> bytes:
        """SKEYID for this method (RFC 2409 section 5); ProtocolFailure if it cannot be."""

    @abc.abstractmethod
    def proof_payloads(self) -> list[Payload]:
        """Our message 5 (initiator) or 6 (responder): identity and its proof."""

    @abc.abstractmethod
    def verify_proof(self, parsed: Parsed, notify: NotifyType | None) -> IdPayload:
        """Check the peer's message 5 or 6; the peer's ID once it is proven.

        Raises ProtocolFailure (with ``notify`` for the peer) if the proof fails.
        """

    # -- what a failure means, for the log --------------------------------------------

    @abc.abstractmethod
    def unreadable_message(self, number: int, error: ProtocolFailure) -> str:
        """Why message 5 or 6 decrypted to something that does not parse."""

    @abc.abstractmethod
    def no_answer(self) -> str:
        """Why the peer never answered our message 5."""

    @abc.abstractmethod
    def unreadable_answer(self) -> str:
        """Why the peer's encrypted answer to our message 5 cannot be read."""


class Registry:
    """The implemented methods, by their wire value (RFC 2409 Appendix A)."""

    def __init__(self, implementations: Iterable[type[Authenticator]]) -> None:
        self._by_method: dict[int, type[Authenticator]] = {
            int(cls.method): cls for cls in implementations
        }
        self._accepted: dict[int, tuple[ConnectionConfig, frozenset[int]]] = {}

    def accepted(self, candidates: Iterable[ConnectionConfig] | None = None) -> set[int]:
        """The wire methods we accept in a proposal: with ``candidates``, those
        one of these connections is configured for (RFC 2409 section 5: the
        responder must be able to finish the method it accepts). The XAUTH
        variants are added by :meth:`accepted_methods` where a connection has an
        XAUTH round."""
        if candidates is None:
            return set(self._by_method)
        out: set[int] = set()
        for conn in candidates:
            out |= self._accepted_by(conn)
        return out

    def _accepted_by(self, conn: ConnectionConfig) -> frozenset[int]:
        """The methods ``conn`` is configured for, worked out once per connection
        object (a configuration is immutable; a reload makes new ones): every Main
        Mode request asks."""
        cached = self._accepted.get(id(conn))
        if cached is not None and cached[0] is conn:
            return cached[1]
        methods = frozenset(method for method, cls in self._by_method.items()
                            if cls.offer_for(conn))
        if len(self._accepted) >= 1024:
            self._accepted.clear()  # configurations replaced by reloads
        self._accepted[id(conn)] = (conn, methods)  # the strong reference keeps id() unique
        return methods

    def accepted_methods(self, candidates: Iterable[ConnectionConfig]) -> set[int]:
        """The wire methods a responder accepts for these connections: a
        connection with an XAUTH round accepts only the XAUTH variants of its
        method, one without only the plain method."""
        out: set[int] = set()
        for conn in candidates:
            for method in self._accepted_by(conn):
                wire = xauth_variant(method, conn, initiator=False)
                if wire is not None:
                    out.add(wire)
        return out

    def method_to_offer(self, conn: ConnectionConfig) -> int:
        """The wire method an initiator offers for ``conn`` (an XAUTH variant when
        it has an XAUTH round and the method has one)."""
        implementation = next(
            (c for c in self._by_method.values() if c.offer_for(conn)), None
        )
        if implementation is None:
            implementation = self.to_offer(str(conn.local.auth))
        method = int(implementation.method)
        wire = xauth_variant(method, conn, initiator=True)
        return wire if wire is not None else method

    def for_config(self, name: str) -> type[Authenticator] | None:
        return next((c for c in self._by_method.values() if c.config_name == name), None)

    def to_offer(self, name: str) -> type[Authenticator]:
        """What an initiator offers for the configuration's ``auth``: its
        implementation, else the first one registered (pre-shared keys), which
        is what ikev1d has always offered while the configuration accepts
        methods that are not implemented."""
        implementation = self.for_config(name)
        if implementation is not None:
            return implementation
        return next(iter(self._by_method.values()))

    def create(self, wire: int, sa: IkeSa, material: Phase1Material) -> Authenticator:
        """The authenticator for a negotiated method; UnknownAuthMethod if none."""
        method = resolve(wire)
        cls = self._by_method.get(method.base)
        if cls is None:
            raise UnknownAuthMethod(wire)
        return cls(sa, material, method.xauth)

    def names(self) -> Mapping[int, str]:
        """How logs and the status name each wire method; an XAUTH variant as its
        base method with "+xauth" (the role follows from who initiated)."""
        names = {method: cls.name for method, cls in self._by_method.items()}
        for wire, (base, _role) in _XAUTH_METHODS.items():
            if base in names:
                names[int(wire)] = f"{names[base]}+xauth"
        return names


# -- identities: the only places Phase 1 turns configured IDs into payloads and back --


def our_id(sa: IkeSa) -> IdPayload:
    """Our ID payload: the configured identity, or our IKE address (RFC 2407 4.6.2)."""
    conn = sa.conn
    identity = conn.local.id if conn is not None and conn.local.id else sa.local[0]
    sa.local_id = str(identity)
    try:
        return id_payload(identity)
    except IdentityError as exc:
        raise ProtocolFailure(str(exc)) from exc


def peer_matches(expected: Identity | None, received: IdPayload) -> bool:
    """Does the peer's proven ID equal the configured one (None or %any: any)?"""
    return matches(expected, received)


def peer_matching(conns: Iterable[ConnectionConfig], received: IdPayload, *,
                  first: bool = False) -> list[ConnectionConfig]:
    """Those of ``conns`` whose remote ID accepts the peer's ``received`` (None or
    %any: any), in order; with ``first``, only the first of them. The peer's ID is
    read once, not once per connection: a gateway with a connection per peer ID has
    thousands of candidates here."""
    peer = Identity.from_id_payload(received).compare_key
    found = []
    for conn in conns:
        expected = conn.remote_id_key
        if expected is None or expected == peer:
            found.append(conn)
            if first:
                break
    return found


def id_text(payload: IdPayload) -> str:
    return describe(payload)
