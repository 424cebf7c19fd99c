"""Phase 1, Main Mode (RFC 2409 section 5).

    Initiator                          Responder
    HDR, SA, VID                 -->
                                 <--   HDR, SA, VID
    HDR, KE, Ni, NAT-D, NAT-D    -->
                                 <--   HDR, KE, Nr, NAT-D, NAT-D
    HDR*, IDii, [CERT,] proof    -->                      (port 4500 once NAT is seen)
                                 <--   HDR*, IDir, [CERT,] proof

Six messages; Aggressive Mode is refused by the engine before it gets here.
What messages 3 to 6 carry, SKEYID and the proof of identity come from the
authenticator of the negotiated method (``ikev1d.engine.auth``).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from ikev1d.config import Fragmentation
from ikev1d.crypto import (
    IkeCipher,
    InvalidPublicValue,
    cipher_key_length,
    derive_phase1_keys,
    encryption_key,
    generate_keypair,
    phase1_iv,
)
from ikev1d.engine import natd, rules, vendor
from ikev1d.engine.auth import REGISTRY
from ikev1d.engine.auth.base import (
    Authenticator,
    Phase1Material,
    UnknownAuthMethod,
    XauthRole,
    id_text,
    our_id,
    peer_matches,
    peer_matching,
)
from ikev1d.engine.exchanges.base import NONCE_LENGTH, PHASE1_MESSAGE_ID, Exchange, Message
from ikev1d.engine.halfopen import MAX_SA_OFFER
from ikev1d.engine.ike_sa import (
    IkeSa,
    Parsed,
    ProtocolFailure,
    first,
    parse,
    shared_endpoint,
)
from ikev1d.engine.lifetimes import agreed_lifetime
from ikev1d.engine.ratelimit import Lazy, truncated
from ikev1d.engine.sa_proposals import (
    IkeChoice,
    ike_sa_payload,
    offered_auth_methods,
    offered_ike,
    select_ike,
)
from ikev1d.engine.vendor import Extension
from ikev1d.wire import (
    AuthMethod,
    ExchangeType,
    Flags,
    IdPayload,
    NatDPayload,
    NotifyPayload,
    NotifyType,
    Payload,
    PayloadType,
    ProtocolId,
    SaPayload,
    VendorIdPayload,
    encode_payloads,
)

if TYPE_CHECKING:
    from ikev1d.config import ConnectionConfig
    from ikev1d.proposals import IkeProposal

log = logging.getLogger("ikev1d.engine")

MM = ExchangeType.IDENTITY_PROTECTION
_ENCRYPTION = int(Flags.ENCRYPTION)  # tested on int(flags): an IntFlag's & is Python code


class _Mm1Answer(NamedTuple):
    """What a Main Mode request decided (see MainMode.first_message): a peer
    sends the same message 1 payloads in every handshake, so the decision and
    our answer's payloads are kept by those bytes and the kind of connections
    offered (:func:`_mm1_profile`)."""

    kept: tuple[int, ...]
    """The positions, among the connections offered, of those that offered the choice."""
    choice: IkeChoice
    sa_i_b: bytes
    peer_vendors: vendor.PeerVendors
    answer: bytes
    """Message 2's payloads, encoded (the SA payload first)."""


# Keyed by (first payload type, the payloads' bytes, the profiles of the connections
# offered). Bounded and emptied when full, since the bytes are the peer's; only
# requests that were answered are kept, so malformed or refused ones always take
# the whole path, and so do bodies of more than ordinary size.
_MM1_ANSWERS: dict[tuple[int, bytes, tuple[int, ...]], _Mm1Answer] = {}
_MM1_ANSWERS_CACHED = 256
_MM1_BODY_MAX = 2048
_MM1_PROFILES: dict[tuple[object, ...], int] = {}
"""Each distinct profile (what message 1's answer takes from a candidate) by its number."""
_MM1_PROFILE_OF: dict[int, tuple[ConnectionConfig, int]] = {}
"""id(connection) -> (the connection, held so that its id stays its own; its profile)."""
_MM1_PROFILES_KEPT = 4096


def _answer_flags(conn: ConnectionConfig | None) -> dict[str, bool]:
    """Which extensions a connection answers beyond DPD (responder): XAUTH when it has
    an XAUTH round, Cisco Unity when it hands out addresses."""
    if conn is None:
        return {"xauth": False, "unity": False}
    return {"xauth": conn.remote_xauth is not None or conn.local_xauth is not None,
            "unity": bool(conn.pools)}


def _announces_fragmentation(conn: ConnectionConfig) -> bool:
    return conn.fragmentation is not Fragmentation.NO


def _mm1_profile(conn: ConnectionConfig) -> int:
    """A number for what a candidate connection contributes to the answer to Main Mode
    message 1: its proposals, the wire methods it accepts, and what the answer's vendor
    IDs take from it (see first_message). Candidates with equal numbers give equal
    answers, so the cache serves a hub whose static peers each have a connection of
    their own, alike but for addresses and IDs, instead of missing for every new peer.
    The numbers come from configurations, not from peers; both tables are bounded and
    emptied (with the answers keyed by them) when full."""
    known = _MM1_PROFILE_OF.get(id(conn))
    if known is not None and known[0] is conn:
        return known[1]
    if len(_MM1_PROFILE_OF) >= _MM1_PROFILES_KEPT:
        _MM1_PROFILE_OF.clear()  # replaced configurations, or a hub's many peers: again
    profile = (conn.proposals, frozenset(REGISTRY.accepted_methods([conn])),
               tuple(_answer_flags(conn).items()), _announces_fragmentation(conn))
    number = _MM1_PROFILES.get(profile)
    if number is None:
        if len(_MM1_PROFILES) >= _MM1_PROFILES_KEPT:
            # New numbers from here on: nothing may keep an old one.
            _MM1_PROFILES.clear()
            _MM1_PROFILE_OF.clear()
            _MM1_ANSWERS.clear()
        number = len(_MM1_PROFILES)
        _MM1_PROFILES[profile] = number
    _MM1_PROFILE_OF[id(conn)] = (conn, number)
    return number


class MmState(enum.Enum):
    MM1_SENT = 1
    MM2_SENT = 2
    MM3_SENT = 3
    MM4_SENT = 4
    MM5_SENT = 5
    DONE = 6
    FAILED = 7


def notify_name(value: int) -> str:
    """RFC 2408 spells notification names with hyphens, as logs and people do."""
    return NotifyType(value).name.replace("_", "-")


def acceptable_proposals(candidates: Sequence[ConnectionConfig]) -> list[IkeProposal]:
    """A static peer's connection decides; dynamic peers share a common set."""
    seen: list[IkeProposal] = []
    for conn in candidates:
        for proposal in conn.proposals:
            if proposal not in seen:
                seen.append(proposal)
    return seen


class MainMode(Exchange):
    """The Main Mode task of one ISAKMP SA, for either role."""

    exchange_type = MM

    def __init__(self, sa: IkeSa) -> None:
        super().__init__(sa, PHASE1_MESSAGE_ID, sa.initiator)
        self.state = MmState.MM1_SENT if sa.initiator else MmState.MM2_SENT
        self.material = Phase1Material()
        self.auth: Authenticator | None = None
        self.offered: list[IkeProposal] = []
        self.offered_method = 0
        self.sent_natd = False
        self.message_4 = b""

    @staticmethod
    def receive(sa: IkeSa, message: Message, now: float) -> None:
        """The dispatch entry for Main Mode messages of a known ISAKMP SA."""
        mm = sa.exchanges.get(PHASE1_MESSAGE_ID)
        if mm is None or mm.exchange_type != MM:
            return
        mm.handle(message, now)

    @property
    def finished(self) -> bool:
        return self.state in (MmState.DONE, MmState.FAILED)

    @property
    def _auth(self) -> Authenticator:
        if self.auth is None:
            raise ProtocolFailure("no authentication method negotiated yet")
        return self.auth

    # -- failure ------------------------------------------------------------------

    def give_up(self, now: float) -> None:
        reason = "no response from peer"
        if self.state is MmState.MM5_SENT:
            reason = self._auth.no_answer()
        if self.hint:
            reason += f" (it may have sent an {self.hint})"
        self.fail(reason, now)

    def failed(self, error: ProtocolFailure, now: float) -> None:
        self.fail(str(error), now, error.notify)

    def fail(self, reason: str, now: float, notify: NotifyType | None = None) -> None:
        self.cancel()
        self.state = MmState.FAILED
        if notify is not None:
            self.sa.send_notify(notify)
        self.sa.ctx.on_phase1_failed(self.sa, reason)

    def peer_notified(self, notify: NotifyPayload, protected: bool, now: float) -> bool:
        """An error notification while Phase 1 runs ends it. After our message 5,
        or naming authentication, it means the peer did not accept our proof."""
        if self.finished or (protected and self.state is not MmState.MM5_SENT):
            return False
        name = notify_name(notify.notify_type)
        if self.state is MmState.MM5_SENT or notify.notify_type in (
            NotifyType.AUTHENTICATION_FAILED, NotifyType.INVALID_HASH_INFORMATION,
        ):
            self.fail(f"authentication failed: peer sent {name}", now)
        else:
            self.fail(f"peer sent {name}", now)
        return True

    def unreadable_answer(self, now: float) -> bool:
        """An encrypted answer to our message 5 that we cannot read means the peer
        derived other keys: fail now rather than retransmit."""
        if self.state is not MmState.MM5_SENT:
            return False
        self.fail(self._auth.unreadable_answer(), now)
        return True

    # -- common ---------------------------------------------------------------------

    def _natd_payloads(self) -> list[Payload]:
        sa = self.sa
        if not sa.nat_t:
            return []
        conn = sa.conn
        fake = None
        if conn is not None and conn.encap:
            # Force UDP encapsulation: a source hash that cannot match makes the
            # peer see "us" behind a NAT (what strongSwan's encap=yes does too).
            fake = sa.ctx.random_bytes(len(natd.natd_hash(sa.hash_alg, b"", b"", sa.local)))
        hashes = natd.natd_payload_data(
            sa.hash_alg, sa.cky_i, sa.cky_r, sa.local, sa.remote, fake_source=fake
        )
        self.sent_natd = True
        return [NatDPayload(h, draft=not sa.nat_t_rfc) for h in hashes]

    def _process_natd(self, payloads: Sequence[Payload]) -> None:
        sa = self.sa
        received = [p.data for p in payloads if isinstance(p, NatDPayload)]
        result = natd.detect(sa.hash_alg, sa.cky_i, sa.cky_r, sa.local, sa.remote, received)
        if result is None:
            return
        sa.nat_local = result.local_behind_nat
        sa.nat_remote = result.remote_behind_nat
        if sa.conn is not None and sa.conn.encap and not sa.nat_local:
            # encap = true: behave as if we are behind a NAT, so ESP goes in UDP.
            sa.nat_local = True
        if result.any or sa.nat_local:
            sa.ctx.logs.log(
                log, logging.INFO, "nat-detected", sa.ctx.logs.now,
                "NAT detected (local behind NAT: %s, peer behind NAT: %s)",
                "yes" if sa.nat_local else "no",
                "yes" if sa.nat_remote else "no",
                extra=sa.log_extra,
            )

    def _choose(self, choice: IkeChoice) -> None:
        sa = self.sa
        self.auth = REGISTRY.create(choice.auth_method, sa, self.material)
        sa.xauth_role = self.auth.xauth
        sa.proposal = choice.proposal
        sa.auth_method = choice.auth_method
        sa.hash_alg = choice.proposal.integrity
        ours = sa.conn.rekey_time if sa.conn is not None else 14400.0
        sa.lifetime_s = agreed_lifetime(ours, choice.lifetime_s,
                                        sa.ctx.config.daemon.min_phase1_lifetime,
                                        "Phase 1", sa.log_extra)

    def _derive_keys(self) -> None:
        """RFC 2409 section 5: SKEYID (by method), SKEYID_d/a/e, the cipher key, the IV."""
        sa = self.sa
        proposal = sa.proposal
        if proposal is None:
            raise ProtocolFailure("keys derived before the proposal is known")
        prf = proposal.integrity
        skeyid = self._auth.skeyid()
        sa.keys = derive_phase1_keys(prf, skeyid, self.material.g_xy, sa.cky_i, sa.cky_r)
        key_length = cipher_key_length(proposal.encryption, proposal.key_length)
        key = encryption_key(prf, sa.keys.skeyid_e, key_length)
        sa.cipher = IkeCipher(proposal.encryption, key)
        sa.phase1_iv = phase1_iv(prf, self.material.g_xi, self.material.g_xr,
                                 sa.cipher.block_size)
        # Debug level only: with these, tshark or a person can decrypt the exchange.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "Phase 1 keys: CKY-I %s CKY-R %s SKEYID_d %s SKEYID_a %s SKEYID_e %s Ka %s "
                "IV %s", sa.cky_i.hex(), sa.cky_r.hex(), sa.keys.skeyid_d.hex(),
                sa.keys.skeyid_a.hex(), sa.keys.skeyid_e.hex(), key.hex(), sa.phase1_iv.hex(),
                extra=sa.log_extra,
            )

    def _shared_secret(self, peer_public: bytes) -> None:
        if self.sa.dh is None:
            raise ProtocolFailure("no DH key pair")
        try:
            self.material.g_xy = self.sa.dh.shared_secret(peer_public)
        except InvalidPublicValue as exc:
            raise ProtocolFailure(
                f"invalid key exchange value: {exc}", NotifyType.INVALID_KEY_INFORMATION
            ) from exc
        # Our DH private value has done its only job (RFC 2409 section 5: g^xy).
        self.sa.dh = None

    def _recognise(self, payloads: Sequence[Payload], now: float) -> vendor.PeerVendors:
        vids = [p.data for p in payloads if isinstance(p, VendorIdPayload)]
        peer = vendor.recognise(vids)
        self._report_vendors(peer)
        return peer

    def _report_vendors(self, peer: vendor.PeerVendors) -> None:
        sa = self.sa
        if peer.unknown:
            sample = [v.hex() for v in peer.unknown_sample]
            sa.ctx.logs.log(log, logging.INFO, "unknown-vid", sa.ctx.logs.now,
                            "ignoring unknown vendor ID %s",
                            truncated(sample, total=peer.unknown),
                            extra=sa.log_extra)
        if peer.extensions and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "peer supports %s",
                ", ".join(sorted(e.value for e in peer.extensions)),
                extra=sa.log_extra,
            )

    def _vendors(self, payloads: Sequence[Payload], now: float) -> None:
        sa = self.sa
        sa.peer_vendors = self._recognise(payloads, now)
        sa.nat_t = sa.peer_vendors.nat_t
        sa.nat_t_rfc = sa.peer_vendors.nat_t_rfc

    def _later_vendors(self, payloads: Sequence[Payload], now: float) -> frozenset[Extension]:
        """Vendor IDs in Main Mode message 3 or 4 (Cisco IOS announces DPD, XAUTH and
        Unity there): taken up like those of messages 1 and 2, except NAT-T. Returns
        the extensions that are new."""
        sa = self.sa
        before = sa.peer_vendors.extensions
        sa.peer_vendors = vendor.merge_later(sa.peer_vendors, self._recognise(payloads, now))
        return sa.peer_vendors.extensions - before

    def _established(self, now: float) -> None:
        self.state = MmState.DONE
        self.cancel()
        self.sa.ctx.on_phase1_authenticated(self.sa, now)

    def _read_proof(self, message: Message, number: int, notify: NotifyType | None) -> IdPayload:
        """Decrypt Main Mode message 5 or 6 and verify it: the peer's proven ID.

        With keys derived from different credentials the message decrypts to
        garbage, so a message that does not parse is an authentication failure too.
        """
        sa = self.sa
        auth = self._auth
        plaintext, next_iv = sa.decrypt(message.header, message.body, sa.phase1_iv)
        try:
            parsed: Parsed = sa.parse_plaintext(message.header, plaintext)
            rules.check(auth.rule(number), parsed.payloads, f"Main Mode message {number}")
        except ProtocolFailure as exc:
            raise ProtocolFailure(auth.unreadable_message(number, exc), notify) from exc
        try:
            peer_id = auth.verify_proof(parsed, notify)
        except ProtocolFailure as exc:
            if exc.notify is None:
                raise
            # The message decrypted and parsed, so the peer derived our keys:
            # say why under them (an Informational exchange, RFC 2409 section
            # 5.7), which a peer ignoring unprotected notifications still reads.
            # The SA ends here, so moving its IV on changes nothing else.
            sa.phase1_iv = next_iv
            sa.send_informational([NotifyPayload(notify_type=exc.notify,
                                                 spi=sa.cky_i + sa.cky_r,
                                                 protocol_id=ProtocolId.ISAKMP)])
            raise ProtocolFailure(str(exc)) from exc
        sa.phase1_iv = next_iv
        # Believed only now that the message is authenticated; acted on once the
        # SA is established (after XAUTH, which may name the user).
        if any(isinstance(p, NotifyPayload) and p.notify_type == NotifyType.INITIAL_CONTACT
               for p in parsed.payloads):
            sa.initial_contact_seen = True
        return peer_id

    def _send_proof(self, request: bytes, now: float) -> None:
        sa = self.sa
        payloads = self._auth.proof_payloads()
        if sa.initiator and sa.ctx.send_initial_contact(sa):
            # RFC 2407 section 4.6.3.3: we hold no SA with this peer (we may have
            # restarted), so it can drop whatever it still holds for us. In
            # message 5, encrypted, as strongSwan and Libreswan send it; the
            # responder sends none (it answers a peer that already knows).
            log.debug("sending INITIAL-CONTACT", extra=sa.log_extra)
            payloads.append(NotifyPayload(notify_type=NotifyType.INITIAL_CONTACT,
                                          spi=sa.cky_i + sa.cky_r,
                                          protocol_id=ProtocolId.ISAKMP))
        data, sa.phase1_iv = sa.encrypted_message(
            MM, PHASE1_MESSAGE_ID, payloads, sa.phase1_iv
        )
        if sa.initiator:
            self.state = MmState.MM5_SENT
            self.send_request(data, now)
        else:
            self.respond(request, data)

    # -- initiator ------------------------------------------------------------------

    def start(self, now: float) -> None:
        sa = self.sa
        conn = sa.conn
        if conn is None:
            raise ProtocolFailure("initiator without a connection")
        sa.cky_i = sa.ctx.random_bytes(8)
        self.offered = list(conn.proposals)
        self.offered_method = REGISTRY.method_to_offer(conn)
        sa_payload = ike_sa_payload(self.offered, self.offered_method, int(conn.rekey_time))
        self.material.sa_i_b = sa_payload.encode_body()
        payloads: list[Payload] = [sa_payload]
        payloads += [VendorIdPayload(v) for v in vendor.our_vendor_ids()]
        payloads += [VendorIdPayload(v) for v in vendor.fragmentation_vendor_ids(
            _announces_fragmentation(conn))]
        self.send_request(sa.plain_message(MM, PHASE1_MESSAGE_ID, payloads), now)

    def process(self, message: Message, now: float) -> None:
        if not self.sa.initiator:
            self._process_responder(message, now)
        elif self.state is MmState.MM1_SENT:
            self._process_message_2(message, now)
        elif self.state is MmState.MM3_SENT:
            self._process_message_4(message, now)
        elif self.state is MmState.MM5_SENT:
            if message.raw == self.message_4:
                # The responder sent message 4 again: our message 5 did not reach it, or it
                # could not read it (another PSK). A retransmission, not an error (RFC 2408
                # section 5): our own retransmission of message 5 answers it, or gives up.
                log.debug("message 4 again: the peer retransmits", extra=self.sa.log_extra)
                return
            self._process_message_6(message, now)

    def _process_message_2(self, message: Message, now: float) -> None:
        sa = self.sa
        payloads = parse(message.header, message.body).payloads
        rules.check(rules.MAIN_MODE_SA[2], payloads, "Main Mode message 2")
        sa.cky_r = message.header.responder_cookie
        response_sa = first(payloads, SaPayload)
        assert_one_transform(response_sa)
        choice = select_ike(response_sa, self.offered, {self.offered_method})
        if choice is None:
            methods = offered_auth_methods(response_sa)
            other = ""
            if methods and methods[0] != self.offered_method:
                # E.g. public key encryption (RFC 2409 sections 5.2, 5.3), which
                # peers without it may answer with a method of their own.
                other = (f" with authentication method {AuthMethod(methods[0]).name}; we "
                         f"offered {AuthMethod(self.offered_method).name}, which the peer "
                         "seems not to support")
            raise ProtocolFailure(
                "responder chose a proposal we did not offer: "
                + truncated(offered_ike(response_sa)) + other,
                NotifyType.NO_PROPOSAL_CHOSEN,
            )
        self._choose(choice)
        self._vendors(payloads, now)
        sa.dh = generate_keypair(choice.proposal.dh_group)
        self.material.g_xi = sa.dh.public_bytes
        self.material.ni = sa.ctx.random_bytes(NONCE_LENGTH)
        out = self._auth.key_exchange_payloads() + self._natd_payloads()
        self.state = MmState.MM3_SENT
        self.send_request(sa.plain_message(MM, PHASE1_MESSAGE_ID, out), now)

    def _process_message_4(self, message: Message, now: float) -> None:
        sa = self.sa
        auth = self._auth
        payloads = parse(message.header, message.body, opaque=auth.rule(4).opaque).payloads
        rules.check(auth.rule(4), payloads, "Main Mode message 4")
        auth.read_key_exchange(payloads)
        self._later_vendors(payloads, now)
        self._shared_secret(self.material.g_xr)
        if self.sent_natd:
            self._process_natd(payloads)
        self._derive_keys()
        if sa.udp_encap:
            sa.float_to_nat_t_port()
        self.message_4 = message.raw
        self._send_proof(message.raw, now)

    def _process_message_6(self, message: Message, now: float) -> None:
        sa = self.sa
        peer_id = self._read_proof(message, 6, None)
        remote_id = sa.conn.remote.id if sa.conn is not None else None
        if not peer_matches(remote_id, peer_id):
            raise ProtocolFailure(
                f"authentication failed: peer identity {id_text(peer_id)} "
                f"is not the configured {remote_id}",
                NotifyType.INVALID_ID_INFORMATION,
            )
        sa.remote_id = id_text(peer_id)
        self._established(now)

    # -- responder --------------------------------------------------------------------

    def first_message(self, message: Message, now: float) -> None:
        """Main Mode message 1: pick a proposal before any identity is known."""
        sa = self.sa
        sa.cky_i = message.header.initiator_cookie
        header = message.header
        body = message.body
        known = None
        key: tuple[int, bytes, tuple[int, ...]] | None = None
        if len(body) <= _MM1_BODY_MAX:
            key = (header.next_payload, body, tuple(map(_mm1_profile, sa.candidates)))
            known = _MM1_ANSWERS.get(key)
        if known is not None:
            self._answer_known(known, message, now)
            return
        parsed = parse(header, body)
        payloads = parsed.payloads
        rules.check(rules.MAIN_MODE_SA[1], payloads, "Main Mode message 1")
        offer = first(payloads, SaPayload)
        sa_i_b = parsed.body_of(1)
        if len(sa_i_b) > MAX_SA_OFFER:
            raise ProtocolFailure(f"SA payload of {len(sa_i_b)} bytes is longer than "
                                  f"the {MAX_SA_OFFER} we keep")
        offered = sa.candidates
        acceptable = acceptable_proposals(sa.candidates)
        choice = select_ike(offer, acceptable, REGISTRY.accepted_methods(sa.candidates))
        sa.cky_r = sa.ctx.random_bytes(8)
        if choice is None:
            self._no_proposal_chosen(offer, acceptable)
            return
        # Keep the connections that offered the chosen proposal and method.
        kept = tuple(n for n, c in enumerate(offered) if choice.proposal in c.proposals
                     and choice.auth_method in REGISTRY.accepted_methods([c]))
        if not kept:
            self._no_proposal_chosen(offer, acceptable)
            return
        sa.candidates = [offered[n] for n in kept]
        sa.conn = sa.candidates[0]
        try:
            self._choose(choice)
        except UnknownAuthMethod:
            self._no_proposal_chosen(offer, acceptable)
            return
        self.material.sa_i_b = sa_i_b
        self._vendors(payloads, now)
        out: list[Payload] = [choice.response_sa()]
        out += [VendorIdPayload(v) for v in vendor.responder_vendor_ids(
            sa.peer_vendors, **_answer_flags(sa.conn))]
        out += [VendorIdPayload(v) for v in vendor.fragmentation_vendor_ids(
            _announces_fragmentation(sa.conn), sa.peer_vendors)]
        answer = encode_payloads(out)
        if key is not None:
            if len(_MM1_ANSWERS) >= _MM1_ANSWERS_CACHED:
                _MM1_ANSWERS.clear()
            _MM1_ANSWERS[key] = _Mm1Answer(kept, choice, sa_i_b, sa.peer_vendors, answer)
        self.state = MmState.MM2_SENT
        self.respond(message.raw, sa.plain_body(MM, PHASE1_MESSAGE_ID, PayloadType.SA, answer))

    def _answer_known(self, known: _Mm1Answer, message: Message, now: float) -> None:
        """Message 1 with the same payloads as one answered before, offered to the
        same connections: the same proposal, vendor IDs and answer, without
        decoding, choosing and encoding them again. What differs between
        handshakes (the cookies, our authenticator, the lifetime agreed under the
        daemon's current limits) is done here as in first_message."""
        sa = self.sa
        sa.cky_r = sa.ctx.random_bytes(8)
        offered = sa.candidates
        sa.candidates = [offered[n] for n in known.kept]
        sa.conn = sa.candidates[0]
        self._choose(known.choice)
        self.material.sa_i_b = known.sa_i_b
        peer = known.peer_vendors
        self._report_vendors(peer)
        sa.peer_vendors = peer
        sa.nat_t = peer.nat_t
        sa.nat_t_rfc = peer.nat_t_rfc
        self.state = MmState.MM2_SENT
        self.respond(message.raw,
                     sa.plain_body(MM, PHASE1_MESSAGE_ID, PayloadType.SA, known.answer))

    def _no_proposal_chosen(self, offer: SaPayload, acceptable: Sequence[IkeProposal]) -> None:
        sa = self.sa
        sa.ctx.logs.log(
            log, logging.WARNING, "no-proposal-chosen", sa.ctx.logs.now,
            "NO-PROPOSAL-CHOSEN: peer offered %s; we accept %s",
            Lazy(lambda: truncated(offered_ike(offer)) or "nothing"),
            Lazy(lambda: truncated([p.render() for p in acceptable])),
            extra=sa.log_extra,
        )
        sa.transmit(sa.plain_message(
            ExchangeType.INFORMATIONAL, PHASE1_MESSAGE_ID,
            [NotifyPayload(notify_type=NotifyType.NO_PROPOSAL_CHOSEN,
                           spi=sa.cky_i + sa.cky_r, protocol_id=ProtocolId.ISAKMP)],
        ))
        self.state = MmState.FAILED
        sa.ctx.on_phase1_failed(sa, "NO-PROPOSAL-CHOSEN", quiet=True)

    def _process_responder(self, message: Message, now: float) -> None:
        if self.state is MmState.MM2_SENT:
            self._process_message_3(message, now)
        elif self.state is MmState.MM4_SENT:
            self._process_message_5(message, now)

    def _process_message_3(self, message: Message, now: float) -> None:
        sa = self.sa
        auth = self._auth
        if int(message.header.flags) & _ENCRYPTION:
            raise ProtocolFailure("Main Mode message 3 must not be encrypted")
        payloads = parse(message.header, message.body, opaque=auth.rule(3).opaque).payloads
        rules.check(auth.rule(3), payloads, "Main Mode message 3")
        proposal = sa.proposal
        if proposal is None:
            raise ProtocolFailure("no proposal")
        auth.read_key_exchange(payloads)
        sa.dh = generate_keypair(proposal.dh_group)
        self.material.g_xr = sa.dh.public_bytes
        self._shared_secret(self.material.g_xi)
        self.material.nr = sa.ctx.random_bytes(NONCE_LENGTH)
        has_natd = any(isinstance(p, NatDPayload) for p in payloads)
        if has_natd:
            sa.nat_t = True
            self._process_natd(payloads)
        self._derive_keys()
        out = auth.key_exchange_payloads()
        out += [VendorIdPayload(v) for v in vendor.answer_vendor_ids(
            self._later_vendors(payloads, now), **_answer_flags(self.sa.conn))]
        if has_natd:
            out += self._natd_payloads()
        self.state = MmState.MM4_SENT
        self.respond(message.raw, sa.plain_message(MM, PHASE1_MESSAGE_ID, out))

    def _process_message_5(self, message: Message, now: float) -> None:
        sa = self.sa
        peer_id = self._read_proof(message, 5, NotifyType.AUTHENTICATION_FAILED)
        if message.local[1] != sa.local[1] or message.remote[1] != sa.remote[1]:
            # RFC 3947 section 4: the initiator moved to port 4500; follow it, now
            # that the message is authenticated (a forged one must not move us).
            sa.local, sa.remote = shared_endpoint(message.local), shared_endpoint(message.remote)
        # Now that the identity is known, settle on the connection it belongs to.
        found = peer_matching(sa.candidates, peer_id, first=True)
        conn = found[0] if found else None
        if conn is None:
            raise ProtocolFailure(
                f"authentication failed: peer identity {id_text(peer_id)} matches "
                "no configured connection",
                NotifyType.INVALID_ID_INFORMATION,
            )
        sa.conn = conn
        sa.remote_id = id_text(peer_id)
        our_id(sa)  # sets local_id, part of the identity the check compares
        if sa.xauth_role is XauthRole.NONE and sa.ctx.refuses_identity(sa):
            # unique = "keep": as strongSwan, refuse with AUTHENTICATION-FAILED under
            # the keys the peer derived (it cannot read an unprotected one now).
            sa.send_informational([NotifyPayload(notify_type=NotifyType.AUTHENTICATION_FAILED,
                                                 spi=sa.cky_i + sa.cky_r,
                                                 protocol_id=ProtocolId.ISAKMP)])
            raise ProtocolFailure(f"refused: an ISAKMP SA of {sa.remote_id} is up already "
                                  "(unique = keep)")
        self._send_proof(message.raw, now)
        self._established(now)


def assert_one_transform(sa_payload: SaPayload) -> None:
    """RFC 2408 section 4.2: the responder answers with exactly one transform."""
    count = sum(len(p.transforms) for p in sa_payload.proposals)
    if count != 1:
        raise ProtocolFailure(
            f"responder's SA must hold one transform, it holds {count}",
            NotifyType.BAD_PROPOSAL_SYNTAX,
        )
