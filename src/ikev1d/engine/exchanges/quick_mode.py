"""Phase 2, Quick Mode (RFC 2409 section 5.5).

    Initiator                                   Responder
    HDR*, HASH(1), SA, Ni [, KE] [, IDci, IDcr] -->
                                  <--   HDR*, HASH(2), SA, Nr [, KE] [, IDci, IDcr]
    HDR*, HASH(3)                               -->

The tunnel (IDci/IDcr, source and destination networks) must match a child
configured on the responder exactly, else INVALID-ID-INFORMATION; the first
acceptable ESP proposal is taken, else NO-PROPOSAL-CHOSEN.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ikev1d.crypto import (
    DhKeyPair,
    InvalidPublicValue,
    generate_keypair,
    keymat,
    qm_hash1,
    qm_hash2,
    qm_hash3,
)
from ikev1d.engine import rules
from ikev1d.engine.api import (
    ChildSaEstablished,
    ChildSaInboundReady,
    ChildSaInboundWithdrawn,
    Network,
)
from ikev1d.engine.exchanges.base import (
    NONCE_LENGTH,
    PHASE1_MESSAGE_ID,
    Exchange,
    Message,
    replay,
)
from ikev1d.engine.ike_sa import (
    ChildMode,
    ChildSa,
    IkeSa,
    Parsed,
    ProtocolFailure,
    Unauthenticated,
    first,
)
from ikev1d.engine.lifetimes import agreed_life_bytes, agreed_lifetime
from ikev1d.engine.ratelimit import Lazy, truncated
from ikev1d.engine.sa_proposals import (
    EspChoice,
    attribute_value,
    encapsulation_mode,
    esp_sa_payload,
    mode_of,
    offered_esp,
    select_esp,
)
from ikev1d.engine.stats import PHASE2
from ikev1d.engine.timers import Timer
from ikev1d.proposals import (
    EspProposal,
    esp_encryption_key_bytes,
    esp_icv_bytes,
    esp_integrity_key_bytes,
)
from ikev1d.wire import (
    ExchangeType,
    Flags,
    HashPayload,
    Header,
    IdPayload,
    IpsecAttr,
    KePayload,
    LifeType,
    NoncePayload,
    NotifyPayload,
    NotifyType,
    Payload,
    PayloadType,
    ProtocolId,
    SaPayload,
    WireError,
    encode_payloads,
    first_payload_type,
    id_from_network,
    make_attribute,
)
from ikev1d.wire._reader import Reader
from ikev1d.wire.payloads import decode_attributes, encode_attributes

if TYPE_CHECKING:
    from ikev1d.config import ChildConfig, ConnectionConfig

log = logging.getLogger("ikev1d.engine")

QM = ExchangeType.QUICK_MODE
_COMMIT = int(Flags.COMMIT)  # tested on int(flags): an IntFlag's & is Python code


class QmState(enum.Enum):
    QM1_SENT = 1
    QM2_SENT = 2
    AWAIT_CONNECTED = 3
    """QM3 sent; the responder set the commit bit, so wait for its CONNECTED."""
    DONE = 4
    FAILED = 5


#: How long an initiator waits for CONNECTED before it installs anyway: some
#: peers set the commit bit and never send the notification.
CONNECTED_WAIT_S = 10.0


def spi_text(spi: bytes) -> str:
    return spi.hex()


def ts_text(nets: Sequence[Network]) -> str:
    return ",".join(str(n) for n in nets)


class QuickMode(Exchange):
    """One Quick Mode, for either role. As initiator we never set the commit bit
    (RFC 2408 section 3.1), as strongSwan does not; a responder's, or an
    initiator's, is honoured."""

    exchange_type = QM

    def __init__(self, sa: IkeSa, message_id: int, initiator: bool) -> None:
        super().__init__(sa, message_id, initiator)
        self.state = QmState.QM1_SENT if initiator else QmState.QM2_SENT
        self.child: ChildConfig | None = None
        self.local_ts: Network | None = None
        self.remote_ts: Network | None = None
        self.spi_in = b""
        self.spi_out = b""
        self.ni = b""
        self.nr = b""
        self.dh: DhKeyPair | None = None
        self.g_qm_xy: bytes | None = None
        self.choice: EspChoice | None = None
        self.proposal: EspProposal | None = None
        self.lifetime_s = 0.0
        self.life_bytes = 0
        """The agreed volume lifetime in bytes (0: none), for the data plane."""
        self.encap = False
        self.mode = ChildMode.TUNNEL
        self.commit = False
        """The commit bit is in play for this exchange (RFC 2408 section 3.1)."""
        self.connected_timer: Timer | None = None
        self.replaces: ChildSa | None = None
        """The IPsec SA this exchange renews, deleted once this one is up (make
        before break, so that traffic never lacks an SA)."""
        self.negotiated: tuple[ChildSa, ChildSaEstablished] | None = None
        """As responder, from message 1 on: the pair announced as inbound-ready,
        established by a valid message 3."""
        self.end_reason = "Quick Mode not completed"

    @staticmethod
    def receive(sa: IkeSa, message: Message, now: float) -> None:
        """The dispatch entry for Quick Mode messages: a known exchange, or a new
        one the peer starts."""
        if not sa.usable and not sa.authenticated:
            sa.ctx.logs.log(log, logging.INFO, "qm-too-early", now,
                            "dropping Quick Mode before the ISAKMP SA is established",
                            extra=sa.log_extra)
            return
        if not sa.usable or not sa.work.configured:
            sa.ctx.logs.log(log, logging.INFO, "qm-too-early", now,
                            "dropping Quick Mode before XAUTH and Mode Config are done",
                            extra=sa.log_extra)
            return
        message_id = message.header.message_id
        if message_id == PHASE1_MESSAGE_ID:
            return
        exchange = sa.exchanges.get(message_id)
        if exchange is not None:
            if exchange.exchange_type == QM:
                exchange.handle(message, now)
            return
        if message_id in sa.completed_message_ids:
            replay(sa, message_id, message.raw)
            return
        # The exchange enters the SA's table only once HASH(1) proves the message
        # (first_message does that): a forged request leaves nothing behind.
        qm = QuickMode(sa, message_id, initiator=False)
        stats = sa.ctx.stats
        try:
            qm.first_message(message, now)
        except Unauthenticated as exc:
            # Not counted as a handshake: anyone can send these.
            sa.ctx.logs.log(log, logging.INFO, "unauthenticated", now,
                            "dropping unauthenticated Quick Mode request: %s", exc,
                            extra=sa.log_extra)
            return
        except QuickModeRefused as exc:
            stats.handshake_started(PHASE2, False)
            stats.handshake_failed(PHASE2, False, str(exc))
            sa.end_exchange(message_id)
            return
        except ProtocolFailure as exc:
            sa.ctx.logs.log(log, logging.WARNING, "qm-refused", now,
                            "Quick Mode request refused: %s", exc, extra=sa.log_extra)
            stats.handshake_started(PHASE2, False)
            stats.handshake_failed(PHASE2, False, str(exc))
            if message_id in sa.exchanges:
                sa.end_exchange(message_id)
            return
        stats.handshake_started(PHASE2, False)

    @property
    def finished(self) -> bool:
        return self.state in (QmState.DONE, QmState.FAILED)

    # -- helpers ------------------------------------------------------------

    @property
    def _keys(self) -> tuple[str, bytes, bytes]:
        keys = self.sa.keys
        if keys is None:
            raise ProtocolFailure("Quick Mode without Phase 1 keys")
        return self.sa.hash_alg, keys.skeyid_a, keys.skeyid_d

    def _decrypt(self, header: Header, body: bytes) -> tuple[Parsed, bytes]:
        """(the payloads, the IV that follows this message). The caller moves the
        IV chain on only once the message's HASH verifies: a forged message must
        not desynchronise the chain (RFC 2409 Appendix B, section 5.5)."""
        sa = self.sa
        plaintext, next_iv = sa.decrypt(header, body, sa.exchange_iv(self.message_id))
        try:
            parsed = sa.parse_plaintext(header, plaintext)
        except ProtocolFailure as exc:
            raise Unauthenticated(str(exc), exc.notify) from exc
        return parsed, next_iv

    def _verify(self, parsed: Parsed, what: str, expected_hash: bytes | None = None,
                rest_hash: Callable[[bytes], bytes] | None = None) -> None:
        """HASH(n) first, over what follows it (RFC 2409 section 5.5)."""
        try:
            received_hash, rest = parsed.after_hash()
        except ProtocolFailure as exc:
            raise Unauthenticated(str(exc), exc.notify) from exc
        expected = expected_hash if rest_hash is None else rest_hash(rest)
        if expected is None or not hmac.compare_digest(expected, received_hash):
            raise Unauthenticated(f"Quick Mode {what} does not verify",
                                  NotifyType.INVALID_HASH_INFORMATION)

    def _encrypt(self, payloads: Sequence[Payload], flags: int = 0) -> bytes:
        sa = self.sa
        data, next_iv = sa.encrypted_message(
            QM, self.message_id, payloads, sa.exchange_iv(self.message_id), flags
        )
        sa.exchange_ivs[self.message_id] = next_iv
        return data

    def _encrypt_after_hash(self, hash_data: bytes, rest: Sequence[Payload], encoded: bytes,
                            flags: int = 0) -> bytes:
        """:meth:`_encrypt` of HASH(n) followed by ``rest``, whose encoding (what
        the hash covers) is ``encoded``: encoded once, not again for the message."""
        sa = self.sa
        body = encode_payloads([HashPayload(hash_data)], first_payload_type(rest)) + encoded
        data, next_iv = sa.encrypted_body(
            QM, self.message_id, PayloadType.HASH, body, sa.exchange_iv(self.message_id), flags
        )
        sa.exchange_ivs[self.message_id] = next_iv
        return data

    def _pfs_public(self, group: int | None) -> list[Payload]:
        if group is None:
            return []
        self.dh = generate_keypair(group)
        return [KePayload(self.dh.public_bytes)]

    def _pfs_secret(self, payloads: Sequence[Payload]) -> None:
        if self.proposal is None or self.proposal.dh_group is None:
            return
        if self.dh is None:
            raise ProtocolFailure(
                "PFS group chosen but no key exchange", NotifyType.NO_PROPOSAL_CHOSEN
            )
        ke = [p for p in payloads if isinstance(p, KePayload)]
        if not ke:
            raise ProtocolFailure("PFS needs a KE payload", NotifyType.PAYLOAD_MALFORMED)
        try:
            self.g_qm_xy = self.dh.shared_secret(ke[0].data)
        except InvalidPublicValue as exc:
            raise ProtocolFailure(
                f"invalid PFS key exchange value: {exc}", NotifyType.INVALID_KEY_INFORMATION
            ) from exc

    def discard(self) -> None:
        """An exchange that installed nothing gives its inbound SPI back, and the
        inbound half it had announced (timed out, or its ISAKMP SA went away)."""
        super().discard()
        if self.state is not QmState.DONE and self.negotiated is not None:
            event = self.negotiated[1]
            self.negotiated = None
            self.sa.ctx.emit(ChildSaInboundWithdrawn(
                event.conn, event.child, event.ike_id, event.child_id, event.spi_in,
                event.spi_out, self.end_reason))
        if self.state is not QmState.DONE and self.spi_in:
            self.sa.ctx.release_spi(self.spi_in)
            self.spi_in = b""
        if self.connected_timer is not None:
            self.connected_timer.cancel()

    def give_up(self, now: float) -> None:
        self.fail("no response to Quick Mode", now)

    def failed(self, error: ProtocolFailure, now: float) -> None:
        if not self.initiator:
            self.sa.ctx.logs.log(log, logging.WARNING, "qm-failed", now,
                                 "Quick Mode failed: %s", error, extra=self.sa.log_extra)
            return
        if error.notify is not None and error.notify != NotifyType.INVALID_HASH_INFORMATION:
            self.sa.send_notify(error.notify, self.spi_in, ProtocolId.ESP)
        self.fail(str(error), now)

    def fail(self, reason: str, now: float) -> None:
        self.end_reason = reason
        self.cancel()
        self.state = QmState.FAILED
        self.sa.ctx.on_quick_mode_done(self, None, reason, now)

    def _install(self, now: float) -> None:
        """Established: the pair goes to the data plane (the responder's inbound half
        is there already, since message 2)."""
        if self.negotiated is None:
            self.negotiated = self._negotiate(now)
        child_sa, event = self.negotiated
        child_sa.established_at = now
        self.state = QmState.DONE
        self.cancel()
        self.sa.ctx.on_quick_mode_done(self, (child_sa, event), "", now)

    def _negotiate(self, now: float) -> tuple[ChildSa, ChildSaEstablished]:
        """The IPsec SA pair with its KEYMAT (RFC 2409 section 5.5), once both nonces,
        both SPIs, the proposal and any PFS secret are known."""
        sa = self.sa
        proposal = self.proposal
        child = self.child
        if proposal is None or child is None or self.local_ts is None or self.remote_ts is None:
            raise ProtocolFailure("Quick Mode incomplete")
        prf, _a, skeyid_d = self._keys
        length = esp_encryption_key_bytes(proposal) + esp_integrity_key_bytes(proposal)
        ni, nr = self.ni, self.nr
        keymat_in = keymat(prf, skeyid_d, ProtocolId.ESP, self.spi_in, ni, nr, length, self.g_qm_xy)
        keymat_out = keymat(
            prf, skeyid_d, ProtocolId.ESP, self.spi_out, ni, nr, length, self.g_qm_xy
        )
        child_sa = ChildSa(
            child_id=sa.ctx.next_id(),
            config=child,
            spi_in=self.spi_in,
            spi_out=self.spi_out,
            proposal=proposal,
            mode=self.mode,
            encap=self.encap,
            local_ts=_selectors(self.local_ts),
            remote_ts=_selectors(self.remote_ts),
            established_at=now,
            lifetime_s=self.lifetime_s,
            life_bytes=self.life_bytes,
        )
        if log.isEnabledFor(logging.DEBUG):  # hex dumps: built only when logged
            log.debug(
                "KEYMAT in %s out %s", keymat_in.hex(), keymat_out.hex(), extra=sa.log_extra
            )
        event = ChildSaEstablished(
            conn=sa.name,
            child=child.name,
            ike_id=sa.ike_id,
            child_id=child_sa.child_id,
            spi_in=int.from_bytes(self.spi_in, "big"),
            spi_out=int.from_bytes(self.spi_out, "big"),
            proposal=proposal.render(),
            encryption=proposal.encryption,
            key_length=proposal.key_length,
            icv_length=esp_icv_bytes(proposal),
            integrity=proposal.integrity,
            mode=self.mode,
            encap=self.encap,
            local=sa.local,
            remote=sa.remote,
            local_ts=child_sa.local_ts,
            remote_ts=child_sa.remote_ts,
            keymat_in=keymat_in,
            keymat_out=keymat_out,
            lifetime_s=self.lifetime_s,
            life_bytes=self.life_bytes,
            initiator=self.initiator,
        )
        return child_sa, event

    def _lifetime(self, peer_seconds: int | None, peer_kilobytes: int | None) -> None:
        ours = self.child.rekey_time if self.child is not None else 3600.0
        self.lifetime_s = agreed_lifetime(ours, peer_seconds, self._min_lifetime, "Phase 2",
                                          self.sa.log_extra)
        our_bytes = self.child.life_bytes if self.child is not None else 0
        self.life_bytes = agreed_life_bytes(our_bytes, peer_kilobytes, "Phase 2",
                                            self.sa.log_extra)

    @property
    def _min_lifetime(self) -> float:
        return self.sa.ctx.config.daemon.min_phase2_lifetime

    # -- initiator -------------------------------------------------------------

    def start(self, child: ChildConfig, local_ts: Network, remote_ts: Network, now: float) -> None:
        sa = self.sa
        self.child, self.local_ts, self.remote_ts = child, local_ts, remote_ts
        self.spi_in = sa.ctx.allocate_spi()
        self.ni = sa.ctx.random_bytes(NONCE_LENGTH)
        self.encap = sa.udp_encap
        self.mode = ChildMode(child.mode)
        encap_value = encapsulation_mode(child.mode, self.encap, sa.nat_t_rfc)
        sa_payload = esp_sa_payload(
            child.esp_proposals, self.spi_in, encap_value, int(child.rekey_time),
            child.life_bytes // 1024,
        )
        pfs_group = next((p.dh_group for p in child.esp_proposals if p.dh_group), None)
        rest: list[Payload] = [sa_payload, NoncePayload(self.ni)]
        rest += self._pfs_public(pfs_group)
        rest += [id_from_network(local_ts), id_from_network(remote_ts)]
        prf, skeyid_a, _d = self._keys
        encoded = encode_payloads(rest)
        hash_1 = qm_hash1(prf, skeyid_a, self.message_id, encoded)
        self.send_request(self._encrypt_after_hash(hash_1, rest, encoded), now)

    def process(self, message: Message, now: float) -> None:
        if self.initiator:
            self._process_qm2(message, now)
        else:
            self._process_qm3(message, now)

    def _process_qm2(self, message: Message, now: float) -> None:
        sa = self.sa
        header = message.header
        parsed, next_iv = self._decrypt(header, message.body)
        payloads = parsed.payloads
        prf, skeyid_a, _d = self._keys
        self._verify(parsed, "HASH(2)",
                     rest_hash=lambda rest: qm_hash2(prf, skeyid_a, self.message_id, self.ni, rest))
        sa.exchange_ivs[self.message_id] = next_iv
        rules.check(rules.QUICK_MODE[2], payloads, "Quick Mode message 2")
        nonce = first(payloads, NoncePayload)
        rules.check_nonce(nonce.data, "Quick Mode message 2")
        self.nr = nonce.data
        response_sa = first(payloads, SaPayload)
        if self.child is None:
            raise ProtocolFailure("no child")
        choice = select_esp(response_sa, self.child.esp_proposals)
        if choice is None or sum(len(p.transforms) for p in response_sa.proposals) != 1:
            raise ProtocolFailure(
                "responder chose an ESP proposal we did not offer: "
                + truncated(offered_esp(response_sa)),
                NotifyType.NO_PROPOSAL_CHOSEN,
            )
        ids = [p for p in payloads if isinstance(p, IdPayload)]
        if ids and (
            len(ids) != 2
            or ids[0].to_network() != self.local_ts
            or ids[1].to_network() != self.remote_ts
        ):
            raise ProtocolFailure("responder changed the traffic selectors",
                                  NotifyType.INVALID_ID_INFORMATION)
        self.choice = choice
        self.proposal = choice.proposal
        self.spi_out = choice.spi
        self._pfs_secret(payloads)
        self._lifetime(choice.lifetime_s, choice.life_kilobytes)
        for notify in payloads:
            if isinstance(notify, NotifyPayload) and (
                notify.notify_type == NotifyType.RESPONDER_LIFETIME
            ):
                self._responder_lifetime(notify.data)
        hash_3 = qm_hash3(prf, skeyid_a, self.message_id, self.ni, self.nr)
        self.respond(message.raw, self._encrypt([HashPayload(hash_3)]))
        if header.flags & Flags.COMMIT:
            # RFC 2408 3.1: the side that did not set the commit bit waits for the
            # CONNECTED notification before it uses the SA (the 4th message).
            self.commit = True
            self.state = QmState.AWAIT_CONNECTED
            self.cancel()
            self.connected_timer = sa.schedule(now + CONNECTED_WAIT_S, self._connected_timeout)
            return
        self._install(now)

    def _connected_timeout(self, now: float) -> None:
        if self.state is QmState.AWAIT_CONNECTED:
            log.info("no CONNECTED notification after the commit bit; installing anyway",
                     extra=self.sa.log_extra)
            self._install(now)

    def connected(self, now: float) -> None:
        """The peer's CONNECTED notification for this exchange arrived."""
        if self.state is QmState.AWAIT_CONNECTED:
            if self.connected_timer is not None:
                self.connected_timer.cancel()
            self._install(now)

    def _responder_lifetime(self, data: bytes) -> None:
        """RFC 2407 4.6.3.1: the responder may shorten the lifetime it will honour."""
        try:
            attributes = decode_attributes(Reader(data, "RESPONDER-LIFETIME"))
        except WireError:
            return  # a malformed optional notification changes nothing
        current = None
        for attribute in attributes:
            if attribute.type == IpsecAttr.SA_LIFE_TYPE:
                current = attribute_value(attribute)
            elif attribute.type == IpsecAttr.SA_LIFE_DURATION and current == LifeType.SECONDS:
                self.lifetime_s = agreed_lifetime(self.lifetime_s, attribute_value(attribute),
                                                  self._min_lifetime, "Phase 2 (RESPONDER-"
                                                  "LIFETIME)", self.sa.log_extra)
            elif attribute.type == IpsecAttr.SA_LIFE_DURATION and current == LifeType.KILOBYTES:
                self.life_bytes = agreed_life_bytes(self.life_bytes, attribute_value(attribute),
                                                    "Phase 2 (RESPONDER-LIFETIME)",
                                                    self.sa.log_extra)

    # -- responder ---------------------------------------------------------------

    def first_message(self, message: Message, now: float) -> None:
        sa = self.sa
        parsed, next_iv = self._decrypt(message.header, message.body)
        payloads = parsed.payloads
        prf, skeyid_a, _d = self._keys
        self._verify(parsed, "HASH(1)",
                     rest_hash=lambda rest: qm_hash1(prf, skeyid_a, self.message_id, rest))
        # Authenticated: from here on the exchange exists and its IV chain moves.
        sa.exchanges[self.message_id] = self
        sa.exchange_ivs[self.message_id] = next_iv
        rules.check(rules.QUICK_MODE[1], payloads, "Quick Mode message 1")
        offer = first(payloads, SaPayload)
        self.ni = first(payloads, NoncePayload).data
        rules.check_nonce(self.ni, "Quick Mode message 1")
        ids = [p for p in payloads if isinstance(p, IdPayload)]
        peer_spi = next((p.spi for p in offer.proposals if p.protocol_id == ProtocolId.ESP), b"")
        child = self._choose_tunnel(ids, peer_spi)
        choice = self._choose_proposal(offer, child, peer_spi)
        self.choice = choice
        self.proposal = choice.proposal
        mode, self.encap = mode_of(choice.encapsulation_mode)
        self.mode = ChildMode(mode)
        self.spi_out = choice.spi
        self.spi_in = sa.ctx.allocate_spi()
        self.nr = sa.ctx.random_bytes(NONCE_LENGTH)
        self._lifetime(choice.lifetime_s, choice.life_kilobytes)
        out_rest: list[Payload] = [choice.response_sa(self.spi_in), NoncePayload(self.nr)]
        out_rest += self._pfs_public(choice.proposal.dh_group)
        self._pfs_secret(payloads)
        if ids:
            out_rest += list(ids)
        notify = self._responder_lifetime_notify(choice)
        if notify is not None:
            out_rest.append(notify)
        rest = encode_payloads(out_rest)
        hash_2 = qm_hash2(prf, skeyid_a, self.message_id, self.ni, rest)
        # An initiator that asks for the commit bit gets it back, and a CONNECTED
        # notification once QM3 is in (the 4th message).
        self.commit = bool(int(message.header.flags) & _COMMIT)
        data = self._encrypt_after_hash(hash_2, out_rest, rest, _COMMIT if self.commit else 0)
        self.remember(message.raw, data)
        self.state = QmState.QM2_SENT
        # RFC 2409 section 5.5: the initiator may send on the new SAs as soon as it
        # has message 2 (strongSwan does), so our inbound half must exist before
        # message 2 leaves; the outbound half waits for message 3, which proves the
        # initiator has the SAs too (and HASH(3) that it is the peer).
        self.negotiated = self._negotiate(now)
        sa.ctx.emit(ChildSaInboundReady(self.negotiated[1]))
        self.send_request(data, now)

    def _choose_tunnel(self, ids: list[IdPayload], peer_spi: bytes) -> ChildConfig:
        """The child whose tunnel is IDci/IDcr (without them: between the IKE
        addresses, RFC 2409 section 5.5); INVALID-ID-INFORMATION if none."""
        sa = self.sa
        if ids and len(ids) != 2:
            raise ProtocolFailure("Quick Mode needs both IDci and IDcr",
                                  NotifyType.INVALID_ID_INFORMATION)
        conn = sa.conn
        key: tuple[int, int, int, str, str] | None = None
        if ids and conn is not None and not sa.local_vips and not sa.remote_vips:
            # Without virtual IPs the child depends only on the connection, the two
            # IDs (decoded once per peer, so the same objects each time) and the
            # IKE addresses: a tunnel's renewals and its peer's next handshakes
            # find it again here.
            key = (id(conn), id(ids[0]), id(ids[1]), sa.local[0], sa.remote[0])
            known = _TUNNELS.get(key)
            if known is not None and known[0] is conn and known[1] is ids[0] \
                    and known[2] is ids[1]:
                self.child, self.local_ts, self.remote_ts = known[3], known[4], known[5]
                return known[3]
        if ids:
            remote_net, local_net = ids[0].to_network(), ids[1].to_network()
        else:
            remote_net = _host(sa.remote[0])
            local_net = _host(sa.local[0])
        child = self._find_child(local_net, remote_net)
        if child is None or local_net is None or remote_net is None:
            offered = f"{remote_net or ids[0].to_text()} === {local_net or ids[1].to_text()}"
            sa.ctx.logs.log(
                log, logging.WARNING, "invalid-id", sa.ctx.logs.now,
                "INVALID-ID-INFORMATION: no child matches the peer's tunnel %s", offered,
                extra=sa.log_extra,
            )
            sa.send_notify(NotifyType.INVALID_ID_INFORMATION, peer_spi, ProtocolId.ESP)
            raise QuickModeRefused("INVALID-ID-INFORMATION")
        self.child, self.local_ts, self.remote_ts = child, local_net, remote_net
        if key is not None and conn is not None:
            if len(_TUNNELS) >= _TUNNELS_CACHED:
                _TUNNELS.clear()
            _TUNNELS[key] = (conn, ids[0], ids[1], child, local_net, remote_net)
        return child

    def _choose_proposal(self, offer: SaPayload, child: ChildConfig, peer_spi: bytes) -> EspChoice:
        """The first offered ESP proposal the child accepts, in the child's mode;
        NO-PROPOSAL-CHOSEN if none."""
        choice = select_esp(offer, child.esp_proposals)
        if choice is not None:
            mode, _udp = mode_of(choice.encapsulation_mode)
            if mode != child.mode:
                choice = None
        if choice is None:
            sa = self.sa
            sa.ctx.logs.log(
                log, logging.WARNING, "no-proposal-chosen", sa.ctx.logs.now,
                "NO-PROPOSAL-CHOSEN: peer offered %s; child %s accepts %s (mode %s)",
                Lazy(lambda: truncated(offered_esp(offer)) or "nothing"), child.name,
                Lazy(lambda: truncated([p.render() for p in child.esp_proposals])), child.mode,
                extra=sa.log_extra,
            )
            sa.send_notify(NotifyType.NO_PROPOSAL_CHOSEN, peer_spi, ProtocolId.ESP)
            raise QuickModeRefused("NO-PROPOSAL-CHOSEN")
        return choice

    def _responder_lifetime_notify(self, choice: EspChoice) -> NotifyPayload | None:
        """RFC 2407 section 4.6.3.1: when we keep the SA for less time or fewer
        kilobytes than the initiator proposed, say so, for each life type."""
        attributes = []
        if choice.lifetime_s and self.lifetime_s < choice.lifetime_s:
            attributes += [make_attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.SECONDS),
                           make_attribute(IpsecAttr.SA_LIFE_DURATION, int(self.lifetime_s))]
        if choice.life_kilobytes and self.life_bytes // 1024 < choice.life_kilobytes:
            attributes += [make_attribute(IpsecAttr.SA_LIFE_TYPE, LifeType.KILOBYTES),
                           make_attribute(IpsecAttr.SA_LIFE_DURATION, self.life_bytes // 1024)]
        if not attributes:
            return None
        return NotifyPayload(
            notify_type=NotifyType.RESPONDER_LIFETIME,
            spi=self.spi_out,
            protocol_id=ProtocolId.ESP,
            data=encode_attributes(tuple(attributes)),
        )

    def _find_child(
        self, local_net: Network | None, remote_net: Network | None
    ) -> ChildConfig | None:
        """RFC 2409 section 5.5: the responder takes the identities as the peer
        proposed them or refuses them; so a tunnel must be configured alike on both
        sides."""
        conn = self.sa.conn
        if conn is None or local_net is None or remote_net is None:
            return None
        if local_net.version != remote_net.version:
            # No packet has a source of one family and a destination of the other:
            # such a pair names no tunnel. (strongSwan's IKEv1 client proposes one
            # when a dual-stack child's first dynamic selector is the other
            # family's virtual IP.)
            return None
        sa = self.sa
        # With Mode Config, a side's dynamic end is its virtual IP; a dual-stack
        # client holds one per family, and the one of the proposed ID's family counts.
        local_addr = str(sa.local_vip) if sa.local_vip is not None else sa.local[0]
        remote_vip = sa.remote_vip_for(remote_net.version)
        remote_addr = str(remote_vip) if remote_vip is not None else sa.remote[0]
        for child in conn.children.values():
            if conn.pools and remote_vip is None and not child.remote_ts:
                continue  # the peer's end is the address it did not get from a pool
            local_nets, remote_nets = child.traffic_selectors(local_addr, remote_addr)
            if local_net in local_nets and remote_net in remote_nets:
                return child
        return None

    def _process_qm3(self, message: Message, now: float) -> None:
        parsed, next_iv = self._decrypt(message.header, message.body)
        payloads = parsed.payloads
        prf, skeyid_a, _d = self._keys
        self._verify(parsed, "HASH(3)",
                     expected_hash=qm_hash3(prf, skeyid_a, self.message_id, self.ni, self.nr))
        self.sa.exchange_ivs[self.message_id] = next_iv
        rules.check(rules.QUICK_MODE[3], payloads, "Quick Mode message 3")
        self._install(now)
        # The peer sent message 3, so it has our message 2 (and, before its first
        # Quick Mode, had our Main Mode message 6): neither is asked for again. The
        # message ID stays among the completed ones, so a late copy of message 1 is
        # still not processed twice.
        self.sa.responses.pop(self.message_id, None)
        self.sa.release_main_mode()
        if self.commit:
            self.sa.send_informational([NotifyPayload(
                notify_type=NotifyType.CONNECTED, spi=self.spi_in, protocol_id=ProtocolId.ESP,
            )])


# The child a responder found for (connection, IDci, IDcr, our address, the
# peer's), SAs without virtual IPs only; entries hold the connection and the ID
# objects, so that their ids stay unique. Only found children are kept, and
# the IDs are the peer's: bounded, emptied when full.
_TUNNELS: dict[tuple[int, int, int, str, str],
               tuple[ConnectionConfig, IdPayload, IdPayload, ChildConfig, Network, Network]] = {}
_TUNNELS_CACHED = 1024


class QuickModeRefused(ProtocolFailure):
    """We told the peer why already; log nothing more than the engine does."""


# Every IPsec SA keeps its selectors for its lifetime, and a gateway's tunnels
# mostly share a few networks: one tuple per network, not one per SA. Bounded,
# since the networks are whatever peers propose.
_SELECTORS: dict[Network, tuple[Network]] = {}
_SELECTORS_CACHED = 1024


def _selectors(network: Network) -> tuple[Network]:
    try:
        return _SELECTORS[network]
    except KeyError:
        pass
    if len(_SELECTORS) >= _SELECTORS_CACHED:
        _SELECTORS.clear()
    selectors = _SELECTORS[network] = (network,)
    return selectors


def _host(address: str) -> Network:
    import ipaddress

    return ipaddress.ip_network(address)
