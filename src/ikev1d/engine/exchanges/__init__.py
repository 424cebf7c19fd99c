"""The exchanges of IKEv1, one module each, and the table that dispatches to them."""

from ikev1d.engine.exchanges import informational
from ikev1d.engine.exchanges.base import Exchange, Handler, Message
from ikev1d.engine.exchanges.main_mode import MainMode
from ikev1d.engine.exchanges.quick_mode import QuickMode
from ikev1d.engine.exchanges.transaction import Transaction
from ikev1d.wire import ExchangeType

#: Which handler takes a message of an established or negotiating ISAKMP SA, by
#: its exchange type. A type not listed is logged and ignored.
DISPATCH: dict[int, Handler] = {
    ExchangeType.IDENTITY_PROTECTION: MainMode.receive,
    ExchangeType.QUICK_MODE: QuickMode.receive,
    ExchangeType.INFORMATIONAL: informational.receive,
    ExchangeType.TRANSACTION: Transaction.receive,
}

__all__ = ["DISPATCH", "Exchange", "MainMode", "Message", "QuickMode", "Transaction"]
