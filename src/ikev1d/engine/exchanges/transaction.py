"""The Transaction exchange (draft-dukes-ike-mode-cfg-02 section 3.2), which
carries Mode Config and XAUTH (draft-beaulieu-ike-xauth-02):

    Initiator                                   Responder
    HDR*, HASH, ATTR(REQUEST or SET)  -->
                                      <--       HDR*, HASH, ATTR(REPLY or ACK)

Protected like the Informational exchange after Phase 1 (draft-dukes section
3.2 and RFC 2409 section 5.7): encrypted under the ISAKMP SA with the CBC
chain of its own message ID (RFC 2409 Appendix B), and HASH = prf(SKEYID_a,
M-ID | ATTR) first. A message whose HASH does not verify changes nothing: not
the IV chain, not the tables. What a request means (which attributes to
answer with) is not decided here but by the road-warrior steps the engine
runs (``roadwarrior.py``); this module only moves the messages.
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ikev1d.crypto import informational_hash
from ikev1d.engine.exchanges.base import PHASE1_MESSAGE_ID, Exchange, Message, replay
from ikev1d.engine.ike_sa import (
    IkeSa,
    IkeState,
    ProtocolFailure,
    Unauthenticated,
    first,
)
from ikev1d.engine.rules import TRANSACTION, check
from ikev1d.wire import (
    AttributePayload,
    ExchangeType,
    HashPayload,
    ModeCfgType,
    NotifyType,
    encode_payloads,
)

log = logging.getLogger("ikev1d.engine")

TX = ExchangeType.TRANSACTION

#: At most this many attributes in one message: real clients and servers send
#: a dozen or two; more is someone testing our patience.
MAX_ATTRIBUTES = 64

#: What answers what (draft-dukes-ike-mode-cfg-02 section 3.2).
ANSWER_TO: dict[int, int] = {
    ModeCfgType.ISAKMP_CFG_REQUEST: ModeCfgType.ISAKMP_CFG_REPLY,
    ModeCfgType.ISAKMP_CFG_SET: ModeCfgType.ISAKMP_CFG_ACK,
}


@dataclass(frozen=True)
class Answer:
    """Our response to a peer's request, and what to do once it is sent."""

    payload: AttributePayload
    then: Callable[[float], None] | None = None


class TxState(enum.Enum):
    SENT = 1
    DONE = 2
    FAILED = 3


def cfg_name(cfg_type: int) -> str:
    return ModeCfgType(cfg_type).name


class Transaction(Exchange):
    """One Transaction exchange. As initiator we send a REQUEST or SET and wait
    for the answer (retransmitting); as responder we answer at once, and a
    repeated request gets the same answer from the cache."""

    exchange_type = TX

    def __init__(
        self,
        sa: IkeSa,
        message_id: int,
        initiator: bool,
        on_answer: Callable[[AttributePayload, float], None] | None = None,
        on_fail: Callable[[str, float], None] | None = None,
    ) -> None:
        super().__init__(sa, message_id, initiator)
        self.state = TxState.SENT
        self.request: AttributePayload | None = None
        self.on_answer = on_answer
        self.on_fail = on_fail
        self.end_iv: bytes | None = None
        """As initiator, once answered: where this exchange's CBC chain ended (the
        last block of the peer's answer), for a next exchange that continues it."""

    @staticmethod
    def receive(sa: IkeSa, message: Message, now: float) -> None:
        """The dispatch entry: the answer to one of ours, or a new request of the peer's."""
        logs = sa.ctx.logs
        if not sa.authenticated or sa.keys is None or sa.state is IkeState.DELETING:
            # Before Main Mode has authenticated the peer, nothing here can be
            # believed (draft-dukes section 3.2: Transactions follow Phase 1).
            logs.log(log, logging.INFO, "tx-too-early", now,
                     "dropping Transaction exchange before Phase 1 is complete",
                     extra=sa.log_extra)
            return
        message_id = message.header.message_id
        if message_id == PHASE1_MESSAGE_ID:
            logs.log(log, logging.INFO, "unauthenticated", now,
                     "dropping Transaction exchange with message ID zero", extra=sa.log_extra)
            return
        exchange = sa.exchanges.get(message_id)
        if exchange is not None:
            if exchange.exchange_type == TX:
                exchange.handle(message, now)
            return
        if message_id in sa.completed_message_ids:
            if replay(sa, message_id, message.raw):
                return
            end = sa.peer_tx_end
            if end is None or end[0] != message_id:
                logs.log(log, logging.INFO, "tx-reused", now,
                         "dropping Transaction exchange under the message ID %08x of a "
                         "finished exchange", message_id, extra=sa.log_extra)
                return
            # Libreswan (4.10) as Mode Config server in push mode sends its CFG_SET
            # under the message ID of the XAUTH exchange that has just ended (its SET
            # of XAUTH_STATUS and our ACK), continuing that exchange's CBC chain from
            # our ACK, instead of starting an exchange of its own (RFC 2409 Appendix
            # B). Taken as a new request only if its HASH verifies on that chain.
            sa.exchange_ivs[message_id] = end[1]
        tx = Transaction(sa, message_id, initiator=False)
        try:
            request = tx.read(message)
        except Unauthenticated as exc:
            sa.exchange_ivs.pop(message_id, None)
            logs.log(log, logging.INFO, "unauthenticated", now,
                     "dropping unauthenticated Transaction exchange: %s", exc,
                     extra=sa.log_extra)
            return
        except ProtocolFailure as exc:
            logs.log(log, logging.WARNING, "tx-refused", now,
                     "Transaction exchange refused: %s", exc, extra=sa.log_extra)
            sa.end_exchange(message_id)
            return
        if request.cfg_type not in ANSWER_TO:
            logs.log(log, logging.INFO, "tx-unexpected", now,
                     "ignoring unexpected %s from the peer", cfg_name(request.cfg_type),
                     extra=sa.log_extra)
            sa.end_exchange(message_id)
            return
        answer = sa.ctx.on_transaction_request(sa, request, now)
        if answer is None:
            # Not answered (and not remembered): the peer may try again later.
            sa.exchange_ivs.pop(message_id, None)
            return
        tx.respond(message.raw, tx.encrypt(answer.payload))
        tx.state = TxState.DONE
        sa.peer_tx_end = (message_id, sa.exchange_iv(message_id))
        sa.end_exchange(message_id)
        if answer.then is not None:
            answer.then(now)

    @property
    def finished(self) -> bool:
        return self.state is not TxState.SENT

    # -- protection --------------------------------------------------------------

    def _hash(self, rest: bytes) -> bytes:
        keys = self.sa.keys
        if keys is None:
            raise ProtocolFailure("Transaction exchange without Phase 1 keys")
        return informational_hash(self.sa.hash_alg, keys.skeyid_a, self.message_id, rest)

    def encrypt(self, payload: AttributePayload) -> bytes:
        """HDR*, HASH, ATTR under this message ID's CBC chain, which moves on."""
        sa = self.sa
        hash_payload = HashPayload(self._hash(encode_payloads([payload])))
        data, next_iv = sa.encrypted_message(
            TX, self.message_id, [hash_payload, payload], sa.exchange_iv(self.message_id)
        )
        sa.exchange_ivs[self.message_id] = next_iv
        return data

    def read(self, message: Message) -> AttributePayload:
        """Decrypt and verify a message of this exchange; the IV chain moves on only
        once its HASH verifies (RFC 2409 section 5.5, Appendix B)."""
        sa = self.sa
        plaintext, next_iv = sa.decrypt(message.header, message.body,
                                        sa.exchange_iv(self.message_id))
        try:
            parsed = sa.parse_plaintext(message.header, plaintext)
            received, rest = parsed.after_hash()
        except ProtocolFailure as exc:
            raise Unauthenticated(str(exc), exc.notify) from exc
        if not hmac.compare_digest(self._hash(rest), received):
            raise Unauthenticated("HASH does not verify", NotifyType.INVALID_HASH_INFORMATION)
        sa.exchange_ivs[self.message_id] = next_iv
        payloads = parsed.payloads
        check(TRANSACTION, payloads, "Transaction exchange")
        attribute = first(payloads, AttributePayload)
        if len(attribute.attributes) > MAX_ATTRIBUTES:
            raise ProtocolFailure(
                f"{len(attribute.attributes)} attributes, more than the {MAX_ATTRIBUTES} "
                "we take", NotifyType.PAYLOAD_MALFORMED)
        return attribute

    # -- initiator ---------------------------------------------------------------

    def start(self, payload: AttributePayload, now: float) -> None:
        self.request = payload
        self.send_request(self.encrypt(payload), now)

    def process(self, message: Message, now: float) -> None:
        if not self.initiator or self.request is None:
            return
        answer = self.read(message)
        expected = ANSWER_TO.get(self.request.cfg_type)
        if answer.cfg_type != expected:
            raise ProtocolFailure(
                f"peer answered {cfg_name(self.request.cfg_type)} with "
                f"{cfg_name(answer.cfg_type)}", NotifyType.PAYLOAD_MALFORMED)
        self.state = TxState.DONE
        self.cancel()
        self.end_iv = self.sa.exchange_iv(self.message_id)
        self.sa.end_exchange(self.message_id)
        if self.on_answer is not None:
            self.on_answer(answer, now)

    def failed(self, error: ProtocolFailure, now: float) -> None:
        self._fail(str(error), now)

    def give_up(self, now: float) -> None:
        what = cfg_name(self.request.cfg_type) if self.request is not None else "request"
        self._fail(f"no answer to our {what}", now)

    def _fail(self, reason: str, now: float) -> None:
        if self.state is not TxState.SENT:
            return
        self.state = TxState.FAILED
        self.cancel()
        self.sa.end_exchange(self.message_id)
        if self.on_fail is not None:
            self.on_fail(reason, now)
