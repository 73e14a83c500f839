"""The one interface the settlement saga uses for every payment channel.

Each adapter speaks its channel's real conventions (request signing, signed notifications, idempotent
order and refund numbers, query, refund, daily bill) and reports in these terms. A call that gets no
trustworthy answer raises ``remote.OutcomeUnknown``; a definite business refusal raises ``remote.Refused``.
Amounts are integer fen on this side, whatever the channel's wire format.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal, Protocol

#: paid: the money is taken; paying: the payer has not confirmed yet (ask again, or wait for the
#: notification); failed: definitely not paid (payment refused or closed before payment); reversed:
#: the order was cancelled after payment and the money returned; not_found: the channel has no such order.
OrderState = Literal["paid", "paying", "failed", "reversed", "not_found"]
RefundState = Literal["succeeded", "processing", "failed", "not_found"]


@dataclass(frozen=True)
class Order:
    out_trade_no: str
    state: OrderState
    amount: int = 0
    transaction_id: str | None = None
    payer: str | None = None  # the payer's agreement number at the channel (from the redeemed token)
    paid_at: datetime | None = None
    refunded: int = 0


@dataclass(frozen=True)
class Refund:
    out_refund_no: str
    out_trade_no: str
    state: RefundState
    amount: int = 0
    refund_id: str | None = None


@dataclass(frozen=True)
class Notification:
    """A verified, decoded asynchronous notification: the order's state as the channel reports it."""

    order: Order
    notification_id: str


@dataclass(frozen=True)
class BillRow:
    """One line of the channel's daily bill file."""

    kind: Literal["pay", "refund"]
    out_trade_no: str
    transaction_id: str
    amount: int
    at: datetime
    out_refund_no: str | None = None


class Channel(Protocol):
    name: str  # "wechat" | "alipay" | "unionpay"

    def pay(self, *, out_trade_no: str, amount: int, auth_code: str, description: str) -> Order:
        """Take ``amount`` from the payer whose one-time payment code is ``auth_code``; idempotent by
        ``out_trade_no`` (the same number again is the same order)."""

    def query(self, *, out_trade_no: str) -> Order: ...

    def reverse(self, *, out_trade_no: str) -> Order:
        """Cancel the order whatever its outcome: unpaid → closed for good (a late payment with this number
        is refused); paid → the money goes back. The answer is the order's final state."""

    def refund(self, *, out_trade_no: str, out_refund_no: str, amount: int, total: int) -> Refund:
        """Return ``amount`` of a paid order; idempotent by ``out_refund_no``."""

    def query_refund(self, *, out_refund_no: str) -> Refund: ...

    def bill(self, *, day: date) -> list[BillRow]:
        """The channel's bill of ``day`` (China time), downloaded and checked."""

    def read_notification(self, headers: dict[str, str], body: bytes) -> Notification:
        """Verify a notification's signature and decode it; raises ``remote.Refused`` if it is not genuine."""

    def notification_reply(self, ok: bool) -> tuple[int, bytes, str]:
        """What the channel expects back: (status, body, media type)."""
