"""The Informational exchange (RFC 2409 section 5.7, RFC 2408 section 4.8).

One-way: one message, no response, no retransmission. After Phase 1 it is
encrypted with its own IV chain and carries HASH(1) first; during Phase 1 a
peer may send an unprotected one, under message ID zero like Main Mode. So it
is dispatched, never kept in the SA's table of exchanges: notifications go to
the exchange they concern (Main Mode, a Quick Mode), Deletes to the engine.
"""

from __future__ import annotations

import hmac
import logging

from ikev1d.crypto import informational_hash, phase2_iv
from ikev1d.engine.exchanges.base import PHASE1_MESSAGE_ID, Message
from ikev1d.engine.exchanges.main_mode import notify_name
from ikev1d.engine.exchanges.quick_mode import QmState, QuickMode
from ikev1d.engine.ike_sa import IkeSa, IkeState, ProtocolFailure
from ikev1d.engine.rules import INFORMATIONAL, check
from ikev1d.wire import (
    DeletePayload,
    Flags,
    NotifyPayload,
    NotifyType,
    Payload,
    ProtocolId,
    WireError,
    decode_payloads,
)

log = logging.getLogger("ikev1d.engine")

#: RFC 2408 section 3.14.1: types 1 to 8191 are the errors the RFCs define;
#: from here on come private-use errors and the status types (CONNECTED,
#: RESPONDER-LIFETIME, DPD's R-U-THERE), which end no exchange.
FIRST_PRIVATE_TYPE = 8192


def is_error(notify: NotifyPayload) -> bool:
    """A defined error notification: the peer refuses something of ours."""
    return notify.notify_type < FIRST_PRIVATE_TYPE


def receive(sa: IkeSa, message: Message, now: float) -> None:
    """The dispatch entry: protected or not, as the header says."""
    if message.header.flags & Flags.ENCRYPTION:
        receive_protected(sa, message, now)
    else:
        receive_unprotected(sa, message, now)


def receive_unprotected(sa: IkeSa, message: Message, now: float) -> None:
    """Unprotected notifications: anyone can send one, so they are believed only
    while Phase 1 runs, before keys exist (RFC 2408 section 5.1: a responder
    refusing message 1 or 3 can say so in no other way), from the address and
    port we send to, with our cookie (the engine found the SA by it). Once we
    initiated with keys (message 4 read) the responder has them too and can
    protect what it says; an unprotected error then is only a hint, named when
    our retransmissions give up (strongSwan ignores them). A responder's keys
    say nothing of the initiator's: one that refuses message 4 has none."""
    if message.remote != sa.remote:
        sa.ctx.logs.log(log, logging.INFO, "unprotected-notify", now,
                        "ignoring unprotected notification from %s:%d, not the peer's "
                        "%s:%d", message.remote[0], message.remote[1], sa.remote[0],
                        sa.remote[1], extra=sa.log_extra)
        return
    if sa.cky_r != bytes(8) and message.header.responder_cookie not in (bytes(8), sa.cky_r):
        sa.ctx.logs.log(log, logging.INFO, "unprotected-notify", now,
                        "ignoring unprotected notification with another responder cookie",
                        extra=sa.log_extra)
        return
    try:
        payloads = decode_payloads(message.header.next_payload, message.body)
    except WireError as exc:
        sa.ctx.logs.log(log, logging.INFO, "malformed", now,
                        "dropping malformed notification: %s", exc, extra=sa.log_extra)
        return
    for payload in payloads:
        if not isinstance(payload, NotifyPayload):
            continue
        if sa.state is not IkeState.CONNECTING or not is_error(payload):
            sa.ctx.logs.log(log, logging.INFO, "unprotected-notify", now,
                            "ignoring unprotected %s notification",
                            notify_name(payload.notify_type), extra=sa.log_extra)
            continue
        phase1 = sa.exchanges.get(PHASE1_MESSAGE_ID)
        if phase1 is None:
            continue
        if sa.keys is not None and sa.initiator:
            phase1.hint = f"unprotected {notify_name(payload.notify_type)}"
            sa.ctx.logs.log(log, logging.INFO, "unprotected-notify", now,
                            "ignoring unprotected %s notification: keys exist, the peer "
                            "would protect it", notify_name(payload.notify_type),
                            extra=sa.log_extra)
            continue
        if phase1.peer_notified(payload, False, now):
            return


def _open_before_phase1_end(sa: IkeSa, message: Message) -> tuple[Payload, ...] | None:
    """An error notification Libreswan (pluto 4.10) sends while Main Mode still runs,
    e.g. INVALID-ID-INFORMATION for a certificate it refuses in message 5, is encrypted
    with the IV hash(M-ID) alone: RFC 2409 Appendix B's "last Phase 1 CBC output block"
    is empty for it until Phase 1 ends. Read such a message that way too; HASH(1) still
    has to verify, so nothing unauthenticated gets through."""
    if sa.state is not IkeState.CONNECTING or sa.cipher is None:
        return None
    iv = phase2_iv(sa.hash_alg, b"", message.header.message_id, sa.cipher.block_size)
    try:
        return _open(sa, message, iv)
    except ProtocolFailure:
        return None


def _unreadable(sa: IkeSa, now: float) -> bool:
    phase1 = sa.exchanges.get(PHASE1_MESSAGE_ID)
    return (sa.state is IkeState.CONNECTING and phase1 is not None
            and phase1.unreadable_answer(now))


def _open(sa: IkeSa, message: Message, iv: bytes) -> tuple[Payload, ...]:
    """The payloads of an encrypted Informational under `iv`, once HASH(1) verifies."""
    if sa.keys is None:
        raise ProtocolFailure("no keys yet")
    header, message_id = message.header, message.header.message_id
    plaintext, _ = sa.decrypt(header, message.body, iv)
    parsed = sa.parse_plaintext(header, plaintext)
    check(INFORMATIONAL, parsed.payloads, "Informational exchange")
    received, rest = parsed.after_hash()
    expected = informational_hash(sa.hash_alg, sa.keys.skeyid_a, message_id, rest)
    if not hmac.compare_digest(expected, received):
        raise ProtocolFailure("HASH(1) does not verify")
    return parsed.payloads


def receive_protected(sa: IkeSa, message: Message, now: float) -> None:
    if sa.keys is None:
        return
    message_id = message.header.message_id
    try:
        payloads = _open(sa, message, sa.exchange_iv(message_id))
    except ProtocolFailure as exc:
        early = _open_before_phase1_end(sa, message)
        if early is None:
            if not _unreadable(sa, now):
                sa.ctx.logs.log(log, logging.INFO, "unauthenticated", now,
                                "dropping Informational exchange: %s", exc,
                                extra=sa.log_extra)
            return
        payloads = early
    phase1 = sa.exchanges.get(PHASE1_MESSAGE_ID)
    if sa.state is IkeState.CONNECTING and phase1 is not None:
        errors = [p for p in payloads if isinstance(p, NotifyPayload) and is_error(p)]
        if errors and phase1.peer_notified(errors[0], True, now):
            return
    for payload in payloads:
        if isinstance(payload, NotifyPayload):
            _notification(sa, payload, now)
        elif isinstance(payload, DeletePayload):
            sa.ctx.peer_deleted(sa, payload)


def _quick_modes(sa: IkeSa) -> list[QuickMode]:
    return [x for x in sa.exchanges.values() if isinstance(x, QuickMode)]


def _notification(sa: IkeSa, notify: NotifyPayload, now: float) -> None:
    if notify.notify_type == NotifyType.R_U_THERE:
        sa.send_informational([NotifyPayload(
            notify_type=NotifyType.R_U_THERE_ACK, spi=sa.cky_i + sa.cky_r,
            protocol_id=ProtocolId.ISAKMP, data=notify.data,
        )])
    elif notify.notify_type == NotifyType.R_U_THERE_ACK:
        if notify.data == sa.dpd_seq.to_bytes(4, "big"):
            sa.dpd_unanswered_since = None
    elif notify.notify_type == NotifyType.CONNECTED:
        _connected(sa, notify, now)
    elif notify.notify_type == NotifyType.INITIAL_CONTACT:
        # RFC 2407 section 4.6.3.3: may also come in an Informational exchange
        # protected by the new ISAKMP SA (HASH(1) verified above).
        sa.ctx.initial_contact(sa, now)
    elif is_error(notify):
        _quick_mode_refused(sa, notify, now)
    else:
        log.info("peer sent %s notification", notify_name(notify.notify_type),
                 extra=sa.log_extra)


def _connected(sa: IkeSa, notify: NotifyPayload, now: float) -> None:
    """RFC 2408 section 3.1: the responder's CONNECTED after a Quick Mode with the
    commit bit; it names the IPsec SA by one of its SPIs."""
    waiting = [qm for qm in _quick_modes(sa) if qm.state is QmState.AWAIT_CONNECTED]
    matching = [qm for qm in waiting if notify.spi in (qm.spi_in, qm.spi_out)]
    for qm in matching or waiting[:1]:
        qm.connected(now)


def _quick_mode_refused(sa: IkeSa, notify: NotifyPayload, now: float) -> None:
    """An error notification ends our Quick Mode it names by SPI, or all of ours
    that wait for an answer."""
    name = notify_name(notify.notify_type)
    pending = [qm for qm in _quick_modes(sa) if qm.initiator and qm.state is QmState.QM1_SENT]
    matching = [qm for qm in pending if notify.spi and qm.spi_in == notify.spi]
    for qm in matching or pending:
        qm.fail(f"peer sent {name}", now)
    if not pending:
        log.warning("peer sent %s", name, extra=sa.log_extra)
