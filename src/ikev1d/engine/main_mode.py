"""Phase 1, Main Mode with pre-shared keys (RFC 2409 section 5, seed 43.6.1).

    Initiator                          Responder
    HDR, SA, VID                 -->
                                 <--   HDR, SA, VID
    HDR, KE, Ni, NAT-D, NAT-D    -->
                                 <--   HDR, KE, Nr, NAT-D, NAT-D
    HDR*, IDii, HASH_I           -->                      (port 4500 once NAT is seen)
                                 <--   HDR*, IDir, HASH_R

Six messages; Aggressive Mode is refused by the engine before it gets here.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from ikev1d.crypto import (
    IkeCipher,
    InvalidPublicValue,
    cipher_key_length,
    derive_phase1_keys,
    encryption_key,
    generate_keypair,
    hash_i,
    hash_r,
    phase1_iv,
    skeyid_psk,
)
from ikev1d.engine import natd, rules, vendor
from ikev1d.engine.identity import IdentityError, describe, id_payload, matches
from ikev1d.engine.ike_sa import (
    IkeSa,
    ProtocolFailure,
    ResponseCache,
    Retransmission,
    parse,
)
from ikev1d.engine.sa_proposals import IkeChoice, ike_sa_payload, offered_ike, select_ike
from ikev1d.wire import (
    AuthMethod,
    ExchangeType,
    HashPayload,
    Header,
    IdPayload,
    KePayload,
    NatDPayload,
    NoncePayload,
    NotifyPayload,
    NotifyType,
    Payload,
    SaPayload,
    VendorIdPayload,
)

if TYPE_CHECKING:
    from ikev1d.config import ConnectionConfig
    from ikev1d.proposals import IkeProposal

log = logging.getLogger("ikev1d.engine")

NONCE_LENGTH = 32
MM = ExchangeType.IDENTITY_PROTECTION


class MmState(enum.Enum):
    MM1_SENT = 1
    MM2_SENT = 2
    MM3_SENT = 3
    MM4_SENT = 4
    MM5_SENT = 5
    DONE = 6
    FAILED = 7


T = TypeVar("T")


def first(payloads: Sequence[Payload], kind: type[T]) -> T:
    for payload in payloads:
        if isinstance(payload, kind):
            return payload
    raise ProtocolFailure(f"missing {kind.__name__}", NotifyType.PAYLOAD_MALFORMED)


def acceptable_proposals(candidates: Sequence[ConnectionConfig]) -> list[IkeProposal]:
    """Seed 43.6.1: a static peer's connection decides; dynamic peers share a common set."""
    seen: list[IkeProposal] = []
    for conn in candidates:
        for proposal in conn.proposals:
            if proposal not in seen:
                seen.append(proposal)
    return seen


class MainMode:
    """The Main Mode task of one ISAKMP SA, for either role."""

    def __init__(self, sa: IkeSa) -> None:
        self.sa = sa
        self.state = MmState.MM1_SENT if sa.initiator else MmState.MM2_SENT
        self.retransmission: Retransmission | None = None
        self.sa_i_b = b""
        self.g_xi = b""
        self.g_xr = b""
        self.ni = b""
        self.nr = b""
        self.g_xy = b""
        self.psk: bytes | None = None
        self.offered: list[IkeProposal] = []
        self.sent_natd = False
        self.last_request = b""

    # -- common ---------------------------------------------------------------

    def _send_request(self, data: bytes, now: float) -> None:
        if self.retransmission is not None:
            self.retransmission.cancel()
        self.sa.transmit(data)
        self.retransmission = Retransmission(self.sa, data, now, self._give_up)

    def _give_up(self, now: float) -> None:
        reason = "no response from peer"
        if self.state is MmState.MM5_SENT:
            reason = (
                "authentication failed: peer did not answer our ID/HASH (wrong pre-shared key?)"
            )
        self.fail(reason, now)

    def fail(self, reason: str, now: float, notify: NotifyType | None = None) -> None:
        if self.retransmission is not None:
            self.retransmission.cancel()
        self.state = MmState.FAILED
        if notify is not None:
            self.sa.send_notify(notify)
        self.sa.ctx.on_phase1_failed(self.sa, reason)

    def cancel(self) -> None:
        if self.retransmission is not None:
            self.retransmission.cancel()

    def _respond(self, request: bytes, response: bytes) -> None:
        self.sa.responses[0] = ResponseCache(request, [response])
        self.sa.transmit(response)

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
            log.info(
                "NAT detected (local behind NAT: %s, peer behind NAT: %s)",
                "yes" if sa.nat_local else "no",
                "yes" if sa.nat_remote else "no",
                extra=sa.log_extra,
            )

    def _choose(self, choice: IkeChoice) -> None:
        sa = self.sa
        sa.proposal = choice.proposal
        sa.auth_method = choice.auth_method
        sa.hash_alg = choice.proposal.integrity
        ours = sa.conn.rekey_time if sa.conn is not None else 14400.0
        sa.lifetime_s = min(ours, float(choice.lifetime_s)) if choice.lifetime_s else ours

    def _derive_keys(self) -> None:
        """RFC 2409 section 5 (PSK): SKEYID, SKEYID_d/a/e, the cipher key and the first IV."""
        sa = self.sa
        proposal = sa.proposal
        if proposal is None or self.psk is None:
            raise ProtocolFailure("keys derived before proposal and key are known")
        prf = proposal.integrity
        skeyid = skeyid_psk(prf, self.psk, self.ni, self.nr)
        sa.keys = derive_phase1_keys(prf, skeyid, self.g_xy, sa.cky_i, sa.cky_r)
        key_length = cipher_key_length(proposal.encryption, proposal.key_length)
        key = encryption_key(prf, sa.keys.skeyid_e, key_length)
        sa.cipher = IkeCipher(proposal.encryption, key)
        sa.phase1_iv = phase1_iv(prf, self.g_xi, self.g_xr, sa.cipher.block_size)
        # Debug level only: with these, tshark or a person can decrypt the exchange.
        log.debug(
            "Phase 1 keys: CKY-I %s CKY-R %s SKEYID_d %s SKEYID_a %s SKEYID_e %s Ka %s IV %s",
            sa.cky_i.hex(), sa.cky_r.hex(), sa.keys.skeyid_d.hex(), sa.keys.skeyid_a.hex(),
            sa.keys.skeyid_e.hex(), key.hex(), sa.phase1_iv.hex(), extra=sa.log_extra,
        )

    def _shared_secret(self, peer_public: bytes) -> None:
        if self.sa.dh is None:
            raise ProtocolFailure("no DH key pair")
        try:
            self.g_xy = self.sa.dh.shared_secret(peer_public)
        except InvalidPublicValue as exc:
            raise ProtocolFailure(
                f"invalid key exchange value: {exc}", NotifyType.INVALID_KEY_INFORMATION
            ) from exc

    def _vendors(self, payloads: Sequence[Payload]) -> None:
        sa = self.sa
        vids = [p.data for p in payloads if isinstance(p, VendorIdPayload)]
        sa.peer_vendors = vendor.recognise(vids)
        for unknown in sa.peer_vendors.unknown:
            log.info("ignoring unknown vendor ID %s", unknown.hex(), extra=sa.log_extra)
        if sa.peer_vendors.extensions:
            log.debug(
                "peer supports %s",
                ", ".join(sorted(e.value for e in sa.peer_vendors.extensions)),
                extra=sa.log_extra,
            )
        sa.nat_t = sa.peer_vendors.nat_t
        sa.nat_t_rfc = sa.peer_vendors.nat_t_rfc

    def _own_id(self) -> IdPayload:
        sa = self.sa
        conn = sa.conn
        text = conn.local.id if conn is not None and conn.local.id else sa.local[0]
        sa.local_id = str(text)
        try:
            return id_payload(text)
        except IdentityError as exc:
            raise ProtocolFailure(str(exc)) from exc

    def _established(self, now: float) -> None:
        sa = self.sa
        self.state = MmState.DONE
        if self.retransmission is not None:
            self.retransmission.cancel()
        sa.ctx.on_phase1_established(sa, now)

    def _read_id_hash(
        self, header: Header, body: bytes, number: int, notify: NotifyType | None
    ) -> tuple[bytes, bytes, IdPayload, bytes, bytes]:
        """Decrypt Main Mode message 5 or 6: (SKEYID, next IV, ID, ID body as sent, HASH).

        With different pre-shared keys the message decrypts to garbage, so a
        message that does not parse is an authentication failure too.
        """
        sa = self.sa
        if sa.keys is None:
            raise ProtocolFailure("no keys")
        plaintext, next_iv = sa.decrypt(header, body, sa.phase1_iv)
        try:
            parsed = sa.parse_plaintext(header, plaintext)
            payloads = parsed.payloads
            rules.check(rules.MAIN_MODE[number], payloads, f"Main Mode message {number}")
        except ProtocolFailure as exc:
            raise ProtocolFailure(
                f"authentication failed: cannot read message {number} ({exc}); "
                "different pre-shared keys?",
                notify,
            ) from exc
        return (
            sa.keys.skeyid,
            next_iv,
            first(payloads, IdPayload),
            parsed.body_of(5),
            first(payloads, HashPayload).data,
        )

    # -- initiator --------------------------------------------------------------

    def start(self, now: float) -> None:
        sa = self.sa
        conn = sa.conn
        if conn is None:
            raise ProtocolFailure("initiator without a connection")
        sa.cky_i = sa.ctx.random_bytes(8)
        self.offered = list(conn.proposals)
        sa_payload = ike_sa_payload(self.offered, AuthMethod.PRE_SHARED_KEY, int(conn.rekey_time))
        self.sa_i_b = sa_payload.encode_body()
        payloads: list[Payload] = [sa_payload]
        payloads += [VendorIdPayload(v) for v in vendor.our_vendor_ids()]
        self._send_request(sa.plain_message(MM, 0, payloads), now)

    def process(self, header: Header, body: bytes, raw: bytes, now: float) -> None:
        sa = self.sa
        if self.state in (MmState.DONE, MmState.FAILED):
            cached = sa.responses.get(0)
            if cached is not None and cached.request == raw:
                for response in cached.responses:
                    sa.transmit(response)
            return
        if sa.initiator:
            self._process_initiator(header, body, raw, now)
        else:
            self._process_responder(header, body, raw, now)

    def _process_initiator(self, header: Header, body: bytes, raw: bytes, now: float) -> None:
        sa = self.sa
        if self.state is MmState.MM1_SENT:
            payloads = parse(header, body).payloads
            rules.check(rules.MAIN_MODE[2], payloads, "Main Mode message 2")
            sa.cky_r = header.responder_cookie
            response_sa = first(payloads, SaPayload)
            assert_one_transform(response_sa)
            choice = select_ike(response_sa, self.offered, {AuthMethod.PRE_SHARED_KEY})
            if choice is None:
                raise ProtocolFailure(
                    "responder chose a proposal we did not offer: "
                    + ", ".join(offered_ike(response_sa)),
                    NotifyType.NO_PROPOSAL_CHOSEN,
                )
            self._choose(choice)
            self._vendors(payloads)
            sa.dh = generate_keypair(choice.proposal.dh_group)
            self.g_xi = sa.dh.public_bytes
            self.ni = sa.ctx.random_bytes(NONCE_LENGTH)
            out: list[Payload] = [KePayload(self.g_xi), NoncePayload(self.ni)]
            out += self._natd_payloads()
            self.state = MmState.MM3_SENT
            self._send_request(sa.plain_message(MM, 0, out), now)
        elif self.state is MmState.MM3_SENT:
            payloads = parse(header, body).payloads
            rules.check(rules.MAIN_MODE[4], payloads, "Main Mode message 4")
            ke = first(payloads, KePayload)
            nonce = first(payloads, NoncePayload)
            self.g_xr = ke.data
            self.nr = nonce.data
            self._shared_secret(self.g_xr)
            if self.sent_natd:
                self._process_natd(payloads)
            remote_id = sa.conn.remote.id if sa.conn is not None else None
            # The secret may name the peer's identity or its address (seed 43.6.1).
            local_id = sa.conn.local.id if sa.conn is not None else None
            self.psk = None
            if remote_id is not None and not remote_id.is_any:
                self.psk = sa.ctx.psk_for(local_id, remote_id)
            if self.psk is None:
                self.psk = sa.ctx.psk_for(local_id, sa.remote[0])
            if self.psk is None:
                self.fail(
                    f"authentication failed: no pre-shared key for {sa.remote[0]}", now,
                )
                return
            self._derive_keys()
            if sa.udp_encap:
                sa.float_to_nat_t_port()
            id_ii = self._own_id()
            if sa.keys is None:
                raise ProtocolFailure("no keys")
            hash_value = hash_i(
                sa.hash_alg, sa.keys.skeyid, self.g_xi, self.g_xr, sa.cky_i, sa.cky_r,
                self.sa_i_b, id_ii.encode_body(),
            )
            out = [id_ii, HashPayload(hash_value)]
            data, sa.phase1_iv = sa.encrypted_message(MM, 0, out, sa.phase1_iv)
            self.state = MmState.MM5_SENT
            self._send_request(data, now)
        elif self.state is MmState.MM5_SENT:
            skeyid, next_iv, id_payload_r, id_ir_b, received = self._read_id_hash(
                header, body, 6, None
            )
            expected = hash_r(
                sa.hash_alg, skeyid, self.g_xr, self.g_xi, sa.cky_r, sa.cky_i,
                self.sa_i_b, id_ir_b,
            )
            if not hmac.compare_digest(expected, received):
                raise ProtocolFailure(
                    "authentication failed: HASH_R does not verify (wrong pre-shared key?)"
                )
            remote_id = sa.conn.remote.id if sa.conn is not None else None
            if not matches(remote_id, id_payload_r):
                raise ProtocolFailure(
                    f"authentication failed: peer identity {describe(id_payload_r)} "
                    f"is not the configured {remote_id}",
                    NotifyType.INVALID_ID_INFORMATION,
                )
            sa.remote_id = describe(id_payload_r)
            sa.phase1_iv = next_iv
            self._established(now)

    # -- responder ----------------------------------------------------------------

    def first_message(self, header: Header, body: bytes, raw: bytes, now: float) -> None:
        """Main Mode message 1: pick a proposal before any identity is known."""
        sa = self.sa
        sa.cky_i = header.initiator_cookie
        parsed = parse(header, body)
        payloads = parsed.payloads
        rules.check(rules.MAIN_MODE[1], payloads, "Main Mode message 1")
        offer = first(payloads, SaPayload)
        acceptable = acceptable_proposals(sa.candidates)
        choice = select_ike(offer, acceptable, {AuthMethod.PRE_SHARED_KEY})
        sa.cky_r = sa.ctx.random_bytes(8)
        if choice is None:
            log.warning(
                "NO-PROPOSAL-CHOSEN: peer offered %s; we accept %s",
                ", ".join(offered_ike(offer)) or "nothing",
                ", ".join(p.render() for p in acceptable),
                extra=sa.log_extra,
            )
            sa.transmit(sa.plain_message(
                ExchangeType.INFORMATIONAL, 0,
                [NotifyPayload(notify_type=NotifyType.NO_PROPOSAL_CHOSEN,
                               spi=sa.cky_i + sa.cky_r, protocol_id=1)],
            ))
            self.state = MmState.FAILED
            sa.ctx.on_phase1_failed(sa, "NO-PROPOSAL-CHOSEN", quiet=True)
            return
        # Keep the connections that offered the chosen proposal.
        sa.candidates = [c for c in sa.candidates if choice.proposal in c.proposals]
        sa.conn = sa.candidates[0]
        self._choose(choice)
        self.sa_i_b = parsed.body_of(1)
        self._vendors(payloads)
        out: list[Payload] = [choice.response_sa()]
        out += [VendorIdPayload(v) for v in vendor.responder_vendor_ids(sa.peer_vendors)]
        self.state = MmState.MM2_SENT
        self._respond(raw, sa.plain_message(MM, 0, out))

    def _process_responder(self, header: Header, body: bytes, raw: bytes, now: float) -> None:
        sa = self.sa
        cached = sa.responses.get(0)
        if cached is not None and cached.request == raw:
            for response in cached.responses:
                sa.transmit(response)
            return
        if self.state is MmState.MM2_SENT:
            if header.flags & 1:
                raise ProtocolFailure("Main Mode message 3 must not be encrypted")
            payloads = parse(header, body).payloads
            rules.check(rules.MAIN_MODE[3], payloads, "Main Mode message 3")
            proposal = sa.proposal
            if proposal is None:
                raise ProtocolFailure("no proposal")
            self.g_xi = first(payloads, KePayload).data
            self.ni = first(payloads, NoncePayload).data
            sa.dh = generate_keypair(proposal.dh_group)
            self.g_xr = sa.dh.public_bytes
            self._shared_secret(self.g_xi)
            self.nr = sa.ctx.random_bytes(NONCE_LENGTH)
            has_natd = any(isinstance(p, NatDPayload) for p in payloads)
            if has_natd:
                sa.nat_t = True
                self._process_natd(payloads)
            conn = sa.conn
            self.psk = sa.ctx.psk_for(
                conn.local.id if conn is not None else None, sa.remote[0]
            )
            if self.psk is None:
                log.warning(
                    "authentication failed: no pre-shared key for peer %s", sa.remote[0],
                    extra=sa.log_extra,
                )
                raise ProtocolFailure(
                    "authentication failed: no pre-shared key", NotifyType.AUTHENTICATION_FAILED
                )
            self._derive_keys()
            out: list[Payload] = [KePayload(self.g_xr), NoncePayload(self.nr)]
            if has_natd:
                out += self._natd_payloads()
            self.state = MmState.MM4_SENT
            self._respond(raw, sa.plain_message(MM, 0, out))
        elif self.state is MmState.MM4_SENT:
            skeyid, next_iv, id_ii, id_ii_b, received = self._read_id_hash(
                header, body, 5, NotifyType.AUTHENTICATION_FAILED
            )
            expected = hash_i(
                sa.hash_alg, skeyid, self.g_xi, self.g_xr, sa.cky_i, sa.cky_r,
                self.sa_i_b, id_ii_b,
            )
            if not hmac.compare_digest(expected, received):
                raise ProtocolFailure(
                    "authentication failed: HASH_I does not verify (wrong pre-shared key?)",
                    NotifyType.AUTHENTICATION_FAILED,
                )
            # Now that the identity is known, settle on the connection it belongs to.
            conn = next(
                (c for c in sa.candidates if matches(c.remote.id, id_ii)),
                None,
            )
            if conn is None:
                raise ProtocolFailure(
                    f"authentication failed: peer identity {describe(id_ii)} matches "
                    "no configured connection",
                    NotifyType.INVALID_ID_INFORMATION,
                )
            sa.conn = conn
            sa.remote_id = describe(id_ii)
            sa.phase1_iv = next_iv
            id_ir = self._own_id()
            hash_value = hash_r(
                sa.hash_alg, skeyid, self.g_xr, self.g_xi, sa.cky_r, sa.cky_i,
                self.sa_i_b, id_ir.encode_body(),
            )
            data, sa.phase1_iv = sa.encrypted_message(
                MM, 0, [id_ir, HashPayload(hash_value)], sa.phase1_iv
            )
            self._respond(raw, data)
            self._established(now)


def assert_one_transform(sa_payload: SaPayload) -> None:
    """RFC 2408 section 4.2: the responder answers with exactly one transform."""
    count = sum(len(p.transforms) for p in sa_payload.proposals)
    if count != 1:
        raise ProtocolFailure(
            f"responder's SA must hold one transform, it holds {count}",
            NotifyType.BAD_PROPOSAL_SYNTAX,
        )


