"""One interface for every exchange, and what requests and responses share.

An exchange is a task with explicit states for one message ID of one ISAKMP
SA (Main Mode has ID zero). The engine looks up the handler for a message's
exchange type in a table; the handler finds or creates the exchange in the
SA's table and lets it process the message. Written once here: sending a
request and retransmitting it until answered or given up, and answering a
repeated request with the response sent before (RFC 2408 section 5).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import ClassVar, NamedTuple

from ikev1d.engine.api import Endpoint
from ikev1d.engine.ike_sa import (
    PHASE1_MESSAGE_ID as PHASE1_MESSAGE_ID,
)
from ikev1d.engine.ike_sa import (
    IkeSa,
    ProtocolFailure,
    ResponseCache,
    Unauthenticated,
)
from ikev1d.engine.timers import Timer
from ikev1d.wire import Header, NotifyPayload

NONCE_LENGTH = 32
"""Bytes of every nonce we send (RFC 2409 section 5: between 8 and 256; 32 as strongSwan)."""

log = logging.getLogger("ikev1d.engine")



class Message(NamedTuple):
    """One received ISAKMP message, split into header and payload bytes (a named
    tuple: one is made for every datagram)."""

    header: Header
    body: bytes
    raw: bytes
    local: Endpoint
    remote: Endpoint


Handler = Callable[[IkeSa, Message, float], None]
"""What the dispatch table holds per exchange type."""


class Retransmission:
    """Resends a request with exponential backoff until answered or given up.

    RFC 2408 section 5: "the initiator retransmits"; the interval doubles each
    time (``retransmit_timeout`` * 2^n), ``retransmit_tries`` in all.
    """

    def __init__(
        self, sa: IkeSa, data: bytes, now: float, on_give_up: Callable[[float], None]
    ) -> None:
        self.sa = sa
        self.data = data
        self.tries = 0
        self.on_give_up = on_give_up
        self.timer: Timer | None = None
        self._arm(now)

    def _arm(self, now: float) -> None:
        daemon = self.sa.ctx.config.daemon
        delay = daemon.retransmit_timeout * (2**self.tries)
        self.timer = self.sa.ctx.timers.schedule(now + delay, self._fire, owner=self.sa)

    def _fire(self, now: float) -> None:
        if self.tries + 1 >= self.sa.ctx.config.daemon.retransmit_tries:
            self.timer = None
            self.on_give_up(now)
            return
        self.tries += 1
        log.debug("retransmitting (try %d)", self.tries + 1, extra=self.sa.log_extra)
        self.sa.transmit(self.data)
        self._arm(now)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def replay(sa: IkeSa, message_id: int, raw: bytes) -> bool:
    """A repeated request gets the same answer again and is not processed twice."""
    cached = sa.responses.get(message_id)
    if cached is None or not cached.answers(raw):
        return False
    for response in cached.responses:
        sa.transmit(response)
    return True


class Exchange(abc.ABC):
    """One exchange of one ISAKMP SA, in either role."""

    exchange_type: ClassVar[int]

    def __init__(self, sa: IkeSa, message_id: int, initiator: bool) -> None:
        self.sa = sa
        self.message_id = message_id
        self.initiator = initiator
        self.retransmission: Retransmission | None = None
        self.hint = ""
        """An unprotected notification we did not believe, named if we give up."""

    @property
    @abc.abstractmethod
    def finished(self) -> bool:
        """Done or failed: it only answers repeated requests from now on."""

    @abc.abstractmethod
    def process(self, message: Message, now: float) -> None:
        """Take the next message of this exchange (after the first, for a responder)."""

    @abc.abstractmethod
    def failed(self, error: ProtocolFailure, now: float) -> None:
        """A message could not be accepted: tell the peer if needed and give up."""

    @abc.abstractmethod
    def give_up(self, now: float) -> None:
        """Our request went unanswered after every retransmission."""

    def peer_notified(self, notify: NotifyPayload, protected: bool, now: float) -> bool:
        """A notification from the peer may end this exchange; True if it did."""
        return False

    def unreadable_answer(self, now: float) -> bool:
        """An encrypted Informational we cannot read may end this exchange; True if so."""
        return False

    def handle(self, message: Message, now: float) -> None:
        """A message for this exchange: a repeated request is answered from the
        cache; a finished exchange takes nothing more."""
        if replay(self.sa, self.message_id, message.raw) or self.finished:
            return
        try:
            self.process(message, now)
        except Unauthenticated as exc:
            self.sa.ctx.logs.log(log, logging.INFO, "unauthenticated", now,
                                 "dropping unauthenticated message: %s", exc,
                                 extra=self.sa.log_extra)
        except ProtocolFailure as exc:
            self.failed(exc, now)

    def send_request(self, data: bytes, now: float) -> None:
        self.cancel()
        self.sa.transmit(data)
        self.retransmission = Retransmission(self.sa, data, now, self.give_up)

    def remember(self, request: bytes, response: bytes) -> None:
        """Keep our response to ``request`` for when the request comes again."""
        self.sa.responses[self.message_id] = ResponseCache.of(request, response)

    def respond(self, request: bytes, response: bytes) -> None:
        self.remember(request, response)
        self.sa.transmit(response)

    def discard(self) -> None:
        """The exchange leaves its SA's table: stop it and let go of what it holds."""
        self.cancel()

    def cancel(self) -> None:
        if self.retransmission is not None:
            self.retransmission.cancel()
            self.retransmission = None
