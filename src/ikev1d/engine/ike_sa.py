"""The state of one ISAKMP SA: cookies, keys, IV chains, peers, children,
its table of exchanges and its queue of work after Phase 1.

Exchanges (Main Mode, Quick Mode, Informational) are tasks that read and
change this state; the engine routes messages to them.
"""

from __future__ import annotations

import datetime
import enum
import hmac
import ipaddress
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol, TypeVar

from ikev1d.config import Fragmentation
from ikev1d.crypto import (
    CryptoError,
    IkeCipher,
    Phase1Keys,
    hash_digest,
    informational_hash,
    pad_plaintext,
    phase2_iv,
)
from ikev1d.engine.api import Datagram, Endpoint, Event, Network
from ikev1d.engine.fragments import Fragmenter, fragment_payload_room, message_room
from ikev1d.engine.ratelimit import LogLimiter
from ikev1d.engine.stats import EngineStats
from ikev1d.engine.timers import Timer, Timers
from ikev1d.engine.vendor import Extension, PeerVendors
from ikev1d.errors import Ikev1dError
from ikev1d.wire import (
    AttributePayload,
    DecodedPayload,
    DeletePayload,
    ExchangeType,
    Flags,
    HashPayload,
    Header,
    NotifyPayload,
    NotifyType,
    Payload,
    PayloadType,
    ProtocolId,
    WireError,
    decode_payloads_with_spans,
    encode_header_fields,
    encode_payloads,
    first_payload_type,
)

if TYPE_CHECKING:
    from ikev1d.config import ChildConfig, Config, ConnectionConfig
    from ikev1d.crypto import DhKeyPair
    from ikev1d.engine.api import ChildSaEstablished
    from ikev1d.engine.auth.base import CredentialCache, XauthRole
    from ikev1d.engine.exchanges.base import Exchange
    from ikev1d.engine.exchanges.quick_mode import QuickMode
    from ikev1d.engine.exchanges.transaction import Answer
    from ikev1d.engine.pools import Owner
    from ikev1d.proposals import EspProposal, IkeProposal

log = logging.getLogger("ikev1d.engine")

T = TypeVar("T")

_ENCRYPTION = int(Flags.ENCRYPTION)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Context(Protocol):
    """What an SA and its exchanges need from the engine."""

    config: Config
    timers: Timers
    credentials: CredentialCache
    stats: EngineStats
    logs: LogLimiter

    def random_bytes(self, n: int) -> bytes: ...
    def wall_time(self) -> datetime.datetime | None: ...
    def send(self, datagram: Datagram) -> None: ...
    def emit(self, event: Event) -> None: ...
    def next_id(self) -> int: ...
    def allocate_spi(self) -> bytes: ...
    def release_spi(self, spi: bytes) -> None: ...
    def on_phase1_authenticated(self, sa: IkeSa, now: float) -> None: ...
    def on_transaction_request(
        self, sa: IkeSa, request: AttributePayload, now: float
    ) -> Answer | None: ...
    def on_phase1_failed(self, sa: IkeSa, reason: str, *, quiet: bool = False) -> None: ...
    def on_quick_mode_done(
        self,
        qm: QuickMode,
        result: tuple[ChildSa, ChildSaEstablished] | None,
        reason: str,
        now: float,
    ) -> None: ...
    def peer_deleted(self, sa: IkeSa, delete: DeletePayload) -> None: ...
    def send_initial_contact(self, sa: IkeSa) -> bool: ...
    def refuses_identity(self, sa: IkeSa) -> bool: ...
    def initial_contact(self, sa: IkeSa, now: float) -> None: ...


class IkeState(enum.Enum):
    CONNECTING = "CONNECTING"
    ESTABLISHED = "ESTABLISHED"
    REKEYING = "REKEYING"
    DELETING = "DELETING"


class ProtocolFailure(Ikev1dError):
    """The peer's message cannot be accepted; ``notify`` tells the peer why (if any)."""

    def __init__(self, message: str, notify: NotifyType | None = None) -> None:
        super().__init__(message)
        self.notify = notify


class Unauthenticated(ProtocolFailure):
    """The message did not prove that it comes from the peer (it does not
    decrypt, parse or carry the right HASH): anyone who sees the cookies can
    send one, so it is dropped and changes nothing, not even the exchange it
    names (RFC 2409 section 5.5: the HASH authenticates the message)."""


PHASE1_MESSAGE_ID = 0
"""Phase 1 runs under message ID zero (RFC 2408 section 3.1), and so do the
unprotected notifications sent during it."""

NO_VENDORS = PeerVendors(frozenset(), 0)
"""What a peer announced before its first message is read: nothing."""

#: Ended exchanges whose message IDs (and responses, for repeated requests)
#: an ISAKMP SA remembers; older ones are forgotten (a peer that repeats a
#: request 32 exchanges later gets no answer, which costs it a retransmission).
MAX_COMPLETED = 32


class ChildState(enum.StrEnum):
    INSTALLED = "INSTALLED"
    REKEYING = "REKEYING"
    """A renewal is under way; the SA carries traffic until the new one is up."""


class ChildMode(enum.StrEnum):
    """RFC 2407 section 4.5, Encapsulation Mode (with or without UDP)."""

    TUNNEL = "tunnel"
    TRANSPORT = "transport"


@dataclass(slots=True)
class ChildSa:
    child_id: int
    config: ChildConfig
    spi_in: bytes
    spi_out: bytes
    proposal: EspProposal
    mode: ChildMode
    encap: bool
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]
    # No KEYMAT: it goes to the data plane in ChildSaEstablished and is not kept here.
    established_at: float
    lifetime_s: float
    life_bytes: int
    state: ChildState = ChildState.INSTALLED
    expiry: Timer | None = None
    rekey: Timer | None = None


class WorkKind(enum.IntEnum):
    """What we run on an ISAKMP SA after Phase 1, in this order: XAUTH proves
    the user, Mode Config then hands out the address, and the Quick Modes
    negotiate tunnels that may use it."""

    XAUTH = 1
    MODE_CONFIG = 2
    QUICK_MODE = 3


class Work(Protocol):
    kind: ClassVar[WorkKind]


@dataclass(frozen=True)
class QuickModeWork:
    """A Quick Mode we will initiate: a tunnel of a child, or a renewal of an IPsec SA."""

    kind: ClassVar[WorkKind] = WorkKind.QUICK_MODE
    child: ChildConfig
    local_ts: Network
    remote_ts: Network
    replaces: ChildSa | None = None


# An SA holds its two endpoints for its lifetime, and many SAs share them (ours
# always, the peer's when one peer has many tunnels): one tuple per endpoint.
# Bounded, since peers' addresses are whatever arrives.
_ENDPOINTS: dict[Endpoint, Endpoint] = {}
_ENDPOINTS_CACHED = 4096


def shared_endpoint(endpoint: Endpoint) -> Endpoint:
    found = _ENDPOINTS.get(endpoint)
    if found is not None:
        return found
    if len(_ENDPOINTS) >= _ENDPOINTS_CACHED:
        _ENDPOINTS.clear()
    _ENDPOINTS[endpoint] = endpoint
    return endpoint


PeerKey = tuple[str, str, str, str | None]
"""(connection, our ID, the peer's ID, the XAUTH user): one authenticated peer."""


def peer_key(sa: IkeSa) -> PeerKey:
    return (sa.name, sa.local_id, sa.remote_id, sa.xauth_user)


class WorkQueue:
    """Our work on one ISAKMP SA after Phase 1: one item at a time, in the
    order of :class:`WorkKind`, first come first served within a kind.

    One at a time also for Quick Modes, as strongSwan initiates them: it keeps
    the IVs of only a few exchanges, so a burst of parallel Quick Modes (one
    per child) loses some of them on its side.
    """

    __slots__ = ("_pending", "running")

    def __init__(self) -> None:
        self._pending: list[Work] = []
        self.running: object | None = None
        """The exchange that carries the current item, until it ends."""

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, work: Work) -> None:
        at = len(self._pending)
        while at > 0 and self._pending[at - 1].kind > work.kind:
            at -= 1
        self._pending.insert(at, work)

    def peek(self) -> Work | None:
        """The next item to run, unless one is running; it stays queued."""
        if self.running is not None or not self._pending:
            return None
        return self._pending[0]

    @property
    def configured(self) -> bool:
        """XAUTH and Mode Config are done (or were never to be done): the peer's
        Quick Modes are welcome from now on."""
        if self.running is None and not self._pending:
            return True  # nothing queued: every Quick Mode of an established SA
        if any(w.kind < WorkKind.QUICK_MODE for w in self._pending):
            return False
        kind = getattr(self.running, "kind", WorkKind.QUICK_MODE)
        return bool(kind >= WorkKind.QUICK_MODE)

    def pending(self) -> tuple[Work, ...]:
        """The items still to run, in order."""
        return tuple(self._pending)

    def next(self) -> Work | None:
        """The next item to run, unless one is running."""
        if self.running is not None or not self._pending:
            return None
        return self._pending.pop(0)

    def ended(self, exchange: object) -> bool:
        """An exchange ended; True if it carried the current item."""
        if self.running is None or self.running is not exchange:
            return False
        self.running = None
        return True


# A request up to this size is kept as it is, not as its digest: hashing every
# request answered cost more than holding the few hundred octets until the next
# message of the exchange (or the first Quick Mode) replaces them.
_REQUEST_KEPT_MAX = 2048


@dataclass
class ResponseCache:
    """The last request seen and what we answered: a repeated request gets the
    same answer again and is not processed twice (RFC 2408 section 5). A request
    of ordinary size is kept; a longer one as a digest, since it may be as long
    as the peer likes."""

    request_key: bytes
    """The request (up to _REQUEST_KEPT_MAX octets), else its SHA-256."""
    responses: list[bytes]
    request_length: int = -1
    """The request's length: the next message of an exchange (not a repetition)
    mostly differs in length, and then needs no comparison."""

    @staticmethod
    def digest(request: bytes) -> bytes:
        return hash_digest("sha256", request)

    @classmethod
    def of(cls, request: bytes, response: bytes) -> ResponseCache:
        length = len(request)
        if length > _REQUEST_KEPT_MAX:
            return cls(cls.digest(request), [response], length)
        return cls(request, [response], length)

    def answers(self, request: bytes) -> bool:
        length = len(request)
        if length != self.request_length:
            return False
        if length > _REQUEST_KEPT_MAX:
            return hmac.compare_digest(self.request_key, self.digest(request))
        return hmac.compare_digest(self.request_key, request)


class IkeSa:
    # One per tunnel, held as long as the tunnel: slots instead of a per-instance
    # dict (about a kilobyte less per SA with tens of thousands of tunnels).
    __slots__ = (
        "__weakref__",  # tests check that a dropped SA is freed
        "auth_method",
        "authenticated",
        "candidates",
        "children",
        "cipher",
        "cky_i",
        "cky_r",
        "completed_message_ids",
        "conn",
        "created_at",
        "ctx",
        "dh",
        "dpd_seq",
        "dpd_unanswered_since",
        "established_at",
        "exchange_ivs",
        "exchanges",
        "fragmenter",
        "half_open_timer",
        "hash_alg",
        "ike_id",
        "indexed_as",
        "initial_contact_seen",
        "initiator",
        "keys",
        "leases",
        "lifetime_s",
        "local",
        "local_id",
        "local_vips",
        "nat_local",
        "nat_remote",
        "nat_t",
        "nat_t_rfc",
        "peer_certificate",
        "peer_tx_end",
        "peer_vendors",
        "phase1_iv",
        "previous_vips",
        "proposal",
        "push_continues",
        "registered_as",
        "rekey_at",
        "remote",
        "remote_id",
        "remote_vips",
        "replaces",
        "requested_children",
        "responses",
        "state",
        "timers",
        "vip_dns",
        "vip_split",
        "work",
        "xauth_role",
        "xauth_user",
    )

    def __init__(
        self,
        ctx: Context,
        *,
        initiator: bool,
        local: Endpoint,
        remote: Endpoint,
        conn: ConnectionConfig | None,
        candidates: Sequence[ConnectionConfig],
        now: float,
    ) -> None:
        self.ctx = ctx
        self.ike_id = ctx.next_id()
        self.initiator = initiator
        self.local = shared_endpoint(local)
        self.remote = shared_endpoint(remote)
        self.conn = conn
        self.candidates = list(candidates)
        self.state = IkeState.CONNECTING
        self.created_at = now
        self.established_at: float | None = None
        self.cky_i = b""
        self.cky_r = bytes(8)
        self.proposal: IkeProposal | None = None
        self.auth_method = 1
        self.lifetime_s: float = 0.0
        self.dh: DhKeyPair | None = None
        self.keys: Phase1Keys | None = None
        self.cipher: IkeCipher | None = None
        self.hash_alg = "sha1"
        self.phase1_iv = b""
        """Phase 1 CBC chain (RFC 2409 Appendix B); after Main Mode, its last block."""
        self.exchange_ivs: dict[int, bytes] = {}
        self.peer_tx_end: tuple[int, bytes] | None = None
        """The message ID of the last Transaction exchange the peer started and the
        end of its CBC chain, for a peer that continues it (see transaction.py)."""
        self.push_continues: tuple[int, bytes] | None = None
        """As XAUTH server: the message ID of our XAUTH status exchange and the end of
        its CBC chain (the client's ACK), under which a Mode Config push follows
        (see roadwarrior.py)."""
        self.peer_vendors = NO_VENDORS
        self.nat_t_rfc = False
        self.nat_t = False
        self.nat_local = False
        self.nat_remote = False
        self.local_id = ""
        self.remote_id = ""
        self.children: list[ChildSa] = []
        self.exchanges: dict[int, Exchange] = {}
        """The exchanges under way or done, by message ID (Main Mode: zero)."""
        self.completed_message_ids: tuple[int, ...] = ()
        """The last :data:`MAX_COMPLETED` ended exchanges, oldest first."""
        self.responses: dict[int, ResponseCache] = {}
        self.timers: list[Timer] = []
        self.requested_children: list[str] | None = None
        self.replaces: IkeSa | None = None
        """The ISAKMP SA this one renews; its IPsec SAs move here once it is up."""
        self.rekey_at: float | None = None
        self.dpd_seq = 0
        self.work = WorkQueue()
        self.xauth_role: XauthRole | None = None
        """Who answers XAUTH after Phase 1, from the negotiated method; read by
        the work queue once the Transaction exchange exists."""
        self.dpd_unanswered_since: float | None = None
        self.fragmenter: Fragmenter | None = None
        """Made when a message first needs fragments (few SAs ever do)."""
        self.authenticated = False
        """Main Mode has proven the peer's identity; XAUTH may still be under way
        (the SA counts as established only after it, as in strongSwan)."""
        self.xauth_user: str | None = None
        """The user XAUTH proved (as server: the peer; as client: us): part of the
        peer's identity (with our ID and the peer's ID) for INITIAL-CONTACT, ``unique``
        and the pools' leases."""
        self.registered_as: PeerKey | None = None
        """The key under which the engine indexes this SA once established."""
        self.indexed_as: str | None = None
        """The connection name under which the engine lists this SA (``sas_of``)."""
        self.peer_certificate: str | None = None
        """The subject DN of the certificate the peer authenticated with (sent in
        CERT or pinned), for ``status``."""
        self.initial_contact_seen = False
        """The peer's authenticated Main Mode message 5/6 carried INITIAL-CONTACT."""
        self.local_vips: tuple[IPAddress, ...] = ()
        """Mode Config client: the virtual IPs the server gave us, at most one per
        address family."""
        self.remote_vips: tuple[IPAddress, ...] = ()
        """Mode Config server: the addresses we leased to the peer, at most one per
        address family (a dual-stack client asks for both), in the order asked."""
        self.vip_dns: tuple[IPAddress, ...] = ()
        self.vip_split: tuple[Network, ...] = ()
        self.leases: tuple[tuple[str, Owner], ...] = ()
        """(pool name, lease owner) of each address in ``remote_vips``, in step."""
        self.previous_vips: tuple[IPAddress, ...] = ()
        """The virtual IPs of the ISAKMP SA this one renewed: asked for again, and
        released only if this SA does not keep them."""

        self.half_open_timer: Timer | None = None
        """A responder's deadline for authenticating the peer; cancelled once it has."""

    @property
    def remote_vip(self) -> IPAddress | None:
        """Mode Config server: the (first) address we leased to the peer."""
        return self.remote_vips[0] if self.remote_vips else None

    @property
    def local_vip(self) -> IPAddress | None:
        """Mode Config client: the (first) virtual IP the server gave us."""
        return self.local_vips[0] if self.local_vips else None

    def local_vip_for(self, version: int) -> IPAddress | None:
        """Our virtual IP of that family, if any."""
        return next((a for a in self.local_vips if a.version == version), None)

    def remote_vip_for(self, version: int) -> IPAddress | None:
        """The address of that family we leased to the peer, if any."""
        return next((a for a in self.remote_vips if a.version == version), None)

    # -- identification -----------------------------------------------------

    @property
    def name(self) -> str:
        return self.conn.name if self.conn is not None else "(unknown)"

    @property
    def log_extra(self) -> dict[str, str]:
        return {"conn": self.name, "peer": f"{self.remote[0]}:{self.remote[1]}"}

    @property
    def usable(self) -> bool:
        """Established, possibly with its successor being negotiated: it still
        carries Quick Modes and Informational exchanges."""
        return self.state in (IkeState.ESTABLISHED, IkeState.REKEYING)

    @property
    def udp_encap(self) -> bool:
        return self.nat_local or self.nat_remote

    def transmit(self, data: bytes) -> None:
        """Send a complete message; a Main Mode message too large for one
        datagram goes out in fragments when fragmentation is on for this SA."""
        nat_t_port = self.ctx.config.daemon.port_nat_t
        size = self.ctx.config.daemon.fragment_size
        if (len(data) > message_room(self.local, nat_t_port, size) and self.sends_fragments
                and data[18] == ExchangeType.IDENTITY_PROTECTION):
            room = fragment_payload_room(self.local, nat_t_port, size)
            if self.fragmenter is None:
                self.fragmenter = Fragmenter()
            packets = self.fragmenter.packets(data, room)
            log.debug("sending a %d-byte message in %d fragments", len(data), len(packets),
                      extra=self.log_extra)
            for packet in packets:
                self.ctx.send(Datagram(packet, self.local, self.remote))
            return
        self.ctx.send(Datagram(data, self.local, self.remote))

    @property
    def sends_fragments(self) -> bool:
        """strongSwan's meanings of `fragmentation`: "yes" fragments once the
        peer announced support, "force" from the first message on, "accept" and
        "no" never."""
        if self.conn is None:
            return False
        mode = self.conn.fragmentation
        if mode is Fragmentation.FORCE:
            return True
        return (mode is Fragmentation.YES
                and Extension.FRAGMENTATION in self.peer_vendors.extensions)

    def float_to_nat_t_port(self) -> None:
        """RFC 3947 section 4: once a NAT is detected, IKE moves to port 4500."""
        nat_t_port = self.ctx.config.daemon.port_nat_t
        if self.local[1] != nat_t_port:
            self.local = shared_endpoint((self.local[0], nat_t_port))
        if self.remote[1] != nat_t_port:
            self.remote = shared_endpoint((self.remote[0], nat_t_port))

    # -- message protection (RFC 2409 section 5.3, Appendix B) ---------------

    def plain_message(self, exchange: int, message_id: int, payloads: Sequence[Payload]) -> bytes:
        return self.plain_body(exchange, message_id, first_payload_type(payloads),
                               encode_payloads(payloads))

    def plain_body(self, exchange: int, message_id: int, first_type: int, body: bytes) -> bytes:
        """An unencrypted message of already encoded payloads, ``first_type`` first."""
        return encode_header_fields(
            self.cky_i, self.cky_r, first_type, exchange, 0, message_id, len(body),
        ) + body

    def encrypted_message(
        self,
        exchange: int,
        message_id: int,
        payloads: Sequence[Payload],
        iv: bytes,
        flags: int = 0,
    ) -> tuple[bytes, bytes]:
        """The message and the IV for the next one in this CBC chain."""
        return self.encrypted_body(
            exchange, message_id, first_payload_type(payloads), encode_payloads(payloads), iv,
            flags,
        )

    def encrypted_body(
        self,
        exchange: int,
        message_id: int,
        first_type: int,
        body: bytes,
        iv: bytes,
        flags: int = 0,
    ) -> tuple[bytes, bytes]:
        """:meth:`encrypted_message` for a payload chain already encoded (starting
        with a payload of ``first_type``): a Quick Mode or Informational message
        encodes what follows its HASH once, for the hash and the message."""
        cipher = self.cipher
        if cipher is None:
            raise ProtocolFailure("no keys yet")
        block_size = cipher.block_size
        ciphertext = cipher.encrypt(iv, pad_plaintext(body, block_size))
        header = encode_header_fields(
            self.cky_i, self.cky_r, first_type, exchange, int(flags) | _ENCRYPTION, message_id,
            len(ciphertext),
        )
        return header + ciphertext, ciphertext[-block_size:]

    def decrypt(self, header: Header, body: bytes, iv: bytes) -> tuple[bytes, bytes]:
        """(plaintext, IV for the next message); ProtocolFailure if it cannot be."""
        if self.cipher is None:
            raise ProtocolFailure("encrypted message before keys exist")
        if not int(header.flags) & _ENCRYPTION:  # int(): an IntFlag's & is Python code
            raise ProtocolFailure("message should be encrypted", NotifyType.INVALID_FLAGS)
        try:
            plaintext = self.cipher.decrypt(iv, body)
        except CryptoError as exc:
            raise Unauthenticated(f"cannot decrypt: {exc}", NotifyType.PAYLOAD_MALFORMED) from exc
        return plaintext, body[-self.cipher.block_size :]

    def parse_plaintext(self, header: Header, plaintext: bytes) -> Parsed:
        """A decrypted chain: bytes after the last payload are padding (RFC 2409 5.3)."""
        return parse(header, plaintext, allow_trailing=True)

    def exchange_iv(self, message_id: int) -> bytes:
        """RFC 2409 Appendix B: an exchange after Phase 1 starts its own CBC chain."""
        iv = self.exchange_ivs.get(message_id)
        if iv is None:
            if self.cipher is None:
                raise ProtocolFailure("no keys yet")
            iv = phase2_iv(self.hash_alg, self.phase1_iv, message_id, self.cipher.block_size)
        return iv

    # -- informational exchange (RFC 2409 section 5.7) -----------------------

    def send_informational(self, payloads: Sequence[Payload]) -> None:
        """An encrypted Informational exchange with HASH(1); one message, no reply."""
        if self.keys is None or self.cipher is None:
            return
        message_id = self.new_message_id()
        rest = encode_payloads(payloads)
        hash_1 = informational_hash(self.hash_alg, self.keys.skeyid_a, message_id, rest)
        iv = phase2_iv(self.hash_alg, self.phase1_iv, message_id, self.cipher.block_size)
        body = encode_payloads([HashPayload(hash_1)], first_payload_type(payloads)) + rest
        data, _ = self.encrypted_body(
            ExchangeType.INFORMATIONAL, message_id, PayloadType.HASH, body, iv
        )
        self.transmit(data)

    def send_notify(
        self, notify: NotifyType, spi: bytes = b"", protocol: int = ProtocolId.ISAKMP
    ) -> None:
        """Tell the peer why: encrypted once keys exist, else in the clear (RFC 2408 5.1)."""
        if not spi and protocol == ProtocolId.ISAKMP:
            spi = self.cky_i + self.cky_r
        payload = NotifyPayload(notify_type=notify, spi=spi, protocol_id=protocol)
        if self.keys is not None and self.usable:
            self.send_informational([payload])
        else:
            self.transmit(self.plain_message(ExchangeType.INFORMATIONAL, 0, [payload]))

    def new_message_id(self) -> int:
        while True:
            message_id = int.from_bytes(self.ctx.random_bytes(4), "big")
            if message_id and message_id not in self.exchanges and (
                message_id not in self.completed_message_ids
            ):
                return message_id

    def end_exchange(self, message_id: int) -> None:
        """The exchange is over: forget it and its IV chain, but not (for a while)
        its message ID nor its response."""
        exchange = self.exchanges.pop(message_id, None)
        if exchange is not None:
            exchange.discard()
        self.exchange_ivs.pop(message_id, None)
        # A tuple, oldest first: an established SA mostly remembers one or two IDs,
        # and a dict (which never shrinks) would cost several times more for each SA.
        done = self.completed_message_ids
        if message_id in done:
            done = tuple(m for m in done if m != message_id)
        done += (message_id,)
        if len(done) > MAX_COMPLETED:
            for oldest in done[:-MAX_COMPLETED]:
                if oldest not in self.exchanges:
                    self.responses.pop(oldest, None)
            done = done[-MAX_COMPLETED:]
        self.completed_message_ids = done
        self.shrink_tables()

    def shrink_tables(self) -> None:
        """Emptied per-exchange tables become new empty dicts: a dict keeps the room
        it once grew to, and an established SA holds these for its lifetime."""
        if not self.exchanges:
            self.exchanges = {}
        if not self.exchange_ivs:
            self.exchange_ivs = {}
        if not self.responses:
            self.responses = {}

    def release_main_mode(self) -> None:
        """Main Mode is over and the peer has our last message: let go of its task
        (nonces, DH values, the SA payloads its hashes covered) and of message 6
        kept for a repeated message 5. From now on a Main Mode message for this SA
        is dropped (engine dispatch finds no exchange), as one for an unknown SA."""
        mm = self.exchanges.get(PHASE1_MESSAGE_ID)
        if mm is not None and mm.finished:
            del self.exchanges[PHASE1_MESSAGE_ID]
            mm.discard()
            self.responses.pop(PHASE1_MESSAGE_ID, None)
            if self.keys is not None:
                # SKEYID only authenticated Main Mode (HASH_I/HASH_R, RFC 2409 §5);
                # what follows uses SKEYID_d, _a and _e.
                keys = self.keys
                self.keys = Phase1Keys(b"", keys.skeyid_d, keys.skeyid_a, keys.skeyid_e)
        self.shrink_tables()

    def schedule(self, deadline: float, callback: Callable[[float], None]) -> Timer:
        timer = self.ctx.timers.schedule(deadline, callback, owner=self)
        self.timers.append(timer)
        self.timers = [t for t in self.timers if not t.cancelled]
        return timer

    def schedule_call(self, deadline: float, callback: Callable[[IkeSa, float], None]) -> Timer:
        """:meth:`schedule` for ``callback(self, now)``, without a closure per timer."""
        timer = self.ctx.timers.schedule_call(deadline, callback, self, owner=self)
        self.timers.append(timer)
        self.timers = [t for t in self.timers if not t.cancelled]
        return timer

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        for child in self.children:
            for child_timer in (child.expiry, child.rekey):
                if child_timer is not None:
                    child_timer.cancel()


class Parsed(NamedTuple):
    """A decoded payload chain together with the bytes it came from.

    Several IKEv1 hashes cover payloads exactly as received (RFC 2409 section 5:
    SAi_b, IDii_b; section 5.5: everything after the HASH payload), so a message
    is decoded once and both views are kept. (A named tuple: one per message.)
    """

    data: bytes
    spans: tuple[DecodedPayload, ...]
    payloads: tuple[Payload, ...]
    """The payloads of ``spans`` in order (built once: the exchanges ask often)."""

    def body_of(self, payload_type: int) -> bytes:
        """The first payload of that type as received, without its generic header."""
        for span in self.spans:
            if span.payload_type == payload_type:
                return span.body(self.data)
        raise ProtocolFailure(f"missing payload {payload_type}", NotifyType.PAYLOAD_MALFORMED)

    def after_hash(self) -> tuple[bytes, bytes]:
        """(HASH payload data, the exact bytes of the payloads that follow it),
        without the padding after the last payload."""
        spans = self.spans
        if not spans or spans[0].payload_type != PayloadType.HASH:
            raise ProtocolFailure(
                "the first payload must be HASH", NotifyType.INVALID_PAYLOAD_TYPE
            )
        return spans[0].body(self.data), self.data[spans[0].end : spans[-1].end]


def first(payloads: Sequence[Payload], kind: type[T]) -> T:
    """The first payload of a kind the message rules require."""
    for payload in payloads:
        if isinstance(payload, kind):
            return payload
    raise ProtocolFailure(f"missing {kind.__name__}", NotifyType.PAYLOAD_MALFORMED)


def parse(header: Header, body: bytes, *, allow_trailing: bool = False,
          opaque: frozenset[int] = frozenset()) -> Parsed:
    """Decode a payload chain; ``opaque`` payload types are kept undecoded (see
    decode_payloads_with_spans)."""
    try:
        spans = decode_payloads_with_spans(
            header.next_payload, body, allow_trailing=allow_trailing, opaque=opaque
        )
    except WireError as exc:
        raise ProtocolFailure(str(exc), exc.notify) from exc
    return Parsed(body, spans, tuple([span[0] for span in spans]))
