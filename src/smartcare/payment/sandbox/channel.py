"""The books of a sandbox payment channel, whatever its dialect.

WeChat Pay, Alipay and UnionPay differ in how they speak (signatures, field names, error codes) but keep
the same books: orders by the merchant's number, refunds by the merchant's refund number, the payer's
agreement behind each payment code, asynchronous notifications with retries, and a daily bill. Each
dialect server (``sandbox/wechat.py`` …) translates its wire format to these calls and ``BooksError``
codes to its own errors, so the three sandboxes behave alike where the real channels do.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Literal
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter

from smartcare.platform.auth import sign_request
from smartcare.platform.clock import china_now

log = logging.getLogger(__name__)

BooksErrorCode = Literal["AUTH_CODE_INVALID", "ORDER_CLOSED", "ORDER_PAID", "AMOUNT_MISMATCH", "NOT_FOUND",
                         "REFUND_TOO_MUCH", "NOT_PAID", "SYSTEM_ERROR"]
OrderState = Literal["paying", "paid", "failed", "reversed"]

Redeem = Callable[[str], Awaitable[str | None]]
SendNotification = Callable[["SandboxOrder"], Awaitable[bool]]

#: Seconds between notification attempts that the platform did not acknowledge: a scaled-down version of
#: the real channels' schedules (WeChat: 15 s, 15 s, 30 s, 3 min … over 24 h), so tests see retries.
NOTIFY_BACKOFF = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)

_ID_PREFIX = {"wechat": "4200", "alipay": "2088", "unionpay": "6200"}


class BooksError(Exception):
    """A business refusal of the books; each dialect maps ``code`` to its own error format."""

    def __init__(self, code: BooksErrorCode, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class SandboxOrder:
    out_trade_no: str
    amount: int
    description: str
    state: OrderState
    transaction_id: str
    payer: str | None  # the payer's agreement number, once the payment code is redeemed
    created_at: datetime
    paid_at: datetime | None = None
    notify_url: str | None = None
    refunded: int = 0


@dataclass
class SandboxRefund:
    out_refund_no: str
    out_trade_no: str
    amount: int
    refund_id: str
    state: Literal["succeeded"]
    at: datetime
    reversal: bool = False  # the money of a reversed paid order (numbered REVERSE-<out_trade_no>)


@dataclass(frozen=True)
class BillLine:
    """One line of a day's bill: a payment, or money returned (a refund or the reversal of a payment)."""

    kind: Literal["pay", "refund"]
    out_trade_no: str
    transaction_id: str
    amount: int
    at: datetime
    payer: str | None
    out_refund_no: str | None = None
    refund_id: str | None = None
    description: str = ""
    reversal: bool = False  # money returned by reversing a paid order, not by a refund request


@dataclass
class NotificationRecord:
    out_trade_no: str
    attempts: int = 0
    acknowledged: bool = False
    deliveries: int = 0  # how many deliveries were started (2 under notify_twice)
    dropped: bool = False  # notify_never


class ChannelBooks:
    """In-memory books of one sandbox channel; used from the server's single event loop only."""

    def __init__(self, channel: str, *, holder: dict, redeem: Redeem, password_above: int = 100_000,
                 password_seconds: float = 0.5):
        self.channel = channel
        self.holder = holder
        self.redeem = redeem
        self.password_above = password_above
        self.password_seconds = password_seconds
        self.orders: dict[str, SandboxOrder] = {}
        self.refunds: dict[str, SandboxRefund] = {}
        self.notifications: list[NotificationRecord] = []
        self._inflight: dict[str, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._serial = itertools.count(1)

    # ---- ids ------------------------------------------------------------------------------------

    def _new_id(self, kind: str) -> str:
        """A channel-side number: prefix, China date, a kind digit and a serial (28 digits)."""
        prefix = _ID_PREFIX.get(self.channel, "9900")
        return f"{prefix}{china_now():%Y%m%d}{kind}{next(self._serial):015d}"

    # ---- payments -------------------------------------------------------------------------------

    async def pay(self, *, out_trade_no: str, amount: int, auth_code: str, description: str,
                  notify_url: str | None, send_notification: SendNotification) -> SandboxOrder:
        """Take ``amount`` from the payer behind ``auth_code``; idempotent by ``out_trade_no``."""
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise BooksError("AMOUNT_MISMATCH", f"amount must be a positive number of fen, got {amount!r}")
        while (pending := self._inflight.get(out_trade_no)) is not None:
            await asyncio.shield(pending)  # the same number is being paid right now: answer as it ends
        existing = self.orders.get(out_trade_no)
        if existing is not None:
            return self._repeat(existing, amount)
        order = SandboxOrder(out_trade_no=out_trade_no, amount=amount, description=description, state="paying",
                             transaction_id=self._new_id("1"), payer=None, created_at=china_now(),
                             notify_url=notify_url)
        self.orders[out_trade_no] = order  # reserved before the redeem: a reversal meanwhile closes it
        done = asyncio.get_running_loop().create_future()
        self._inflight[out_trade_no] = done
        try:
            payer = await self.redeem(auth_code)
        except BaseException:
            if order.state == "paying":
                del self.orders[out_trade_no]  # nothing happened: the number stays free for a retry
            raise
        finally:
            del self._inflight[out_trade_no]
            done.set_result(None)
        if order.state == "reversed":
            raise BooksError("ORDER_CLOSED", f"order {out_trade_no} was reversed while it was being paid")
        if payer is None:
            order.state = "failed"
            raise BooksError("AUTH_CODE_INVALID", "the payment code is invalid, expired or already used")
        order.payer = payer
        if amount > self.password_above:
            self._spawn(self._complete_after_password(order, send_notification))
        else:
            self._mark_paid(order, send_notification)
        return order

    def _repeat(self, order: SandboxOrder, amount: int) -> SandboxOrder:
        if order.amount != amount and order.state != "reversed":
            raise BooksError("AMOUNT_MISMATCH",
                             f"order {order.out_trade_no} exists with amount {order.amount}, not {amount}")
        if order.state == "reversed":
            raise BooksError("ORDER_CLOSED", f"order {order.out_trade_no} is closed (reversed)")
        if order.state == "failed":
            raise BooksError("AUTH_CODE_INVALID", f"order {order.out_trade_no} failed: invalid payment code")
        return order

    async def _complete_after_password(self, order: SandboxOrder, send: SendNotification) -> None:
        await asyncio.sleep(self.password_seconds)
        if order.state == "paying":  # a reversal while the payer typed the password wins
            self._mark_paid(order, send)

    def _mark_paid(self, order: SandboxOrder, send: SendNotification) -> None:
        order.state = "paid"
        order.paid_at = china_now()
        self.schedule_notification(order, send)

    def query(self, out_trade_no: str) -> SandboxOrder | None:
        return self.orders.get(out_trade_no)

    def reverse(self, out_trade_no: str) -> SandboxOrder:
        """Cancel whatever the outcome: closes an unknown or unpaid number for good, returns paid money."""
        order = self.orders.get(out_trade_no)
        if order is None:
            order = SandboxOrder(out_trade_no=out_trade_no, amount=0, description="", state="reversed",
                                 transaction_id=self._new_id("1"), payer=None, created_at=china_now())
            self.orders[out_trade_no] = order
        elif order.state == "paying":
            order.state = "reversed"
        elif order.state == "paid":
            remainder = order.amount - order.refunded
            if remainder > 0:
                self.refunds[f"REVERSE-{out_trade_no}"] = SandboxRefund(
                    out_refund_no=f"REVERSE-{out_trade_no}", out_trade_no=out_trade_no, amount=remainder,
                    refund_id=self._new_id("5"), state="succeeded", at=china_now(),
                    reversal=True)
                order.refunded += remainder
            order.state = "reversed"
        return order  # failed and reversed orders are final already

    # ---- refunds --------------------------------------------------------------------------------

    def refund(self, *, out_trade_no: str, out_refund_no: str, amount: int) -> SandboxRefund:
        """Return part of a paid order; idempotent by ``out_refund_no``."""
        existing = self.refunds.get(out_refund_no)
        if existing is not None:
            if existing.out_trade_no != out_trade_no or existing.amount != amount:
                raise BooksError("AMOUNT_MISMATCH", f"refund {out_refund_no} exists for order "
                                 f"{existing.out_trade_no} with amount {existing.amount}")
            return existing
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise BooksError("AMOUNT_MISMATCH", f"refund amount must be a positive number of fen, got {amount!r}")
        order = self.orders.get(out_trade_no)
        if order is None:
            raise BooksError("NOT_FOUND", f"no order {out_trade_no}")
        if order.state != "paid":
            raise BooksError("NOT_PAID", f"order {out_trade_no} is {order.state}, not paid")
        remainder = order.amount - order.refunded
        if amount > remainder:
            raise BooksError("REFUND_TOO_MUCH", f"refund of {amount} exceeds the {remainder} fen not yet refunded "
                             f"of order {out_trade_no}")
        refund = SandboxRefund(out_refund_no=out_refund_no, out_trade_no=out_trade_no, amount=amount,
                               refund_id=self._new_id("5"), state="succeeded", at=china_now())
        self.refunds[out_refund_no] = refund
        order.refunded += amount
        return refund

    def query_refund(self, out_refund_no: str) -> SandboxRefund | None:
        return self.refunds.get(out_refund_no)

    # ---- bill and totals ------------------------------------------------------------------------

    def bill(self, day: date) -> list[BillLine]:
        """Payments and money returned on ``day`` (China time), in time order."""
        lines = [BillLine(kind="pay", out_trade_no=o.out_trade_no, transaction_id=o.transaction_id,
                          amount=o.amount, at=o.paid_at, payer=o.payer, description=o.description)
                 for o in self.orders.values() if o.paid_at is not None and o.paid_at.date() == day]
        for r in self.refunds.values():
            if r.at.date() == day:
                order = self.orders[r.out_trade_no]
                lines.append(BillLine(kind="refund", out_trade_no=r.out_trade_no, transaction_id=order.transaction_id,
                                      amount=r.amount, at=r.at, payer=order.payer, out_refund_no=r.out_refund_no,
                                      refund_id=r.refund_id, description=order.description,
                                      reversal=r.reversal))
        return sorted(lines, key=lambda line: line.at)

    def charged(self) -> dict[str, int]:
        """Per payer: paid − returned. A simulation checks that nobody ends up charged twice."""
        totals: dict[str, int] = {}
        for order in self.orders.values():
            if order.paid_at is not None and order.payer is not None:
                totals[order.payer] = totals.get(order.payer, 0) + order.amount - order.refunded
        return totals

    # ---- notifications --------------------------------------------------------------------------

    def schedule_notification(self, order: SandboxOrder, send: SendNotification) -> None:
        """Notify the platform that ``order`` is paid, under the notification faults, retrying until acknowledged."""
        faults = self.holder["faults"]
        record = NotificationRecord(out_trade_no=order.out_trade_no)
        self.notifications.append(record)
        if faults.roll("notify_never"):
            record.dropped = True
            return
        delay = faults.late_delay() if faults.roll("notify_late") else 0.0
        deliveries = 2 if faults.roll("notify_twice") else 1
        self._spawn(self._deliver(order, send, record, delay, deliveries))

    async def _deliver(self, order: SandboxOrder, send: SendNotification, record: NotificationRecord,
                       delay: float, deliveries: int) -> None:
        if delay:
            await asyncio.sleep(delay)
        for _ in range(deliveries):
            record.deliveries += 1
            for wait in (*NOTIFY_BACKOFF, None):
                record.attempts += 1
                try:
                    acknowledged = await send(order)
                except Exception as exc:  # the platform being down is the reason retries exist
                    log.info("%s notification of %s failed: %s", self.channel, order.out_trade_no, exc)
                    acknowledged = False
                if acknowledged:
                    record.acknowledged = True
                    break
                if wait is None:
                    log.warning("%s gave up notifying %s", self.channel, order.out_trade_no)
                    break
                await asyncio.sleep(wait)

    def _spawn(self, work: Awaitable) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel pending password completions and notifications (server shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def snapshot(self) -> dict:
        return {"channel": self.channel,
                "orders": [asdict(o) for o in self.orders.values()],
                "refunds": [asdict(r) for r in self.refunds.values()],
                "charged": self.charged(),
                "notifications": [asdict(n) for n in self.notifications]}


# ---- the platform's token redemption --------------------------------------------------------------

REDEEM_PATH = "/api/v1/healthcard/payment-tokens/redeem"


class LoopClient:
    """An ``httpx.AsyncClient`` for the running event loop (a client belongs to one loop, and a server
    restarted in the same process, as tests do, runs a new one): call it to get the client."""

    def __init__(self, timeout: float = 5.0):
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 2.0))
        self._clients: dict[int, httpx.AsyncClient] = {}

    def __call__(self) -> httpx.AsyncClient:
        loop_id = id(asyncio.get_running_loop())
        if loop_id not in self._clients:
            self._clients.clear()
            self._clients[loop_id] = httpx.AsyncClient(timeout=self._timeout)
        return self._clients[loop_id]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def platform_redeemer(platform_url: str, *, channel: str, client_id: str, secret: str,
                      timeout: float = 5.0) -> Redeem:
    """Redeem payment codes at the platform, as the real channel does with the health-card token.

    200 → the payer's agreement number; 4xx (unknown, expired or used token) → ``None``; a 5xx, timeout,
    lost connection or rejected signature (401/403: our set-up is wrong, not the token) → ``BooksError``
    ``SYSTEM_ERROR``, which leaves the order number free for a retry.
    """
    url = platform_url.rstrip("/") + REDEEM_PATH
    signed_path = urlsplit(url).path
    http = LoopClient(timeout)

    async def redeem(auth_code: str) -> str | None:
        body = json.dumps({"channel": channel, "token": auth_code}).encode()
        headers = sign_request(client_id=client_id, secret=secret, method="POST", path=signed_path, body=body)
        try:
            response = await http().post(url, content=body,
                                         headers={**headers, "Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise BooksError("SYSTEM_ERROR", f"token redemption failed: {type(exc).__name__}") from None
        if response.status_code == 200:
            agreement = response.json().get("agreement_no")
            if not agreement:
                raise BooksError("SYSTEM_ERROR", "token redemption answered without an agreement_no")
            return str(agreement)
        if response.status_code in (401, 403) or response.status_code >= 500:
            raise BooksError("SYSTEM_ERROR", f"token redemption answered HTTP {response.status_code}")
        return None

    return redeem


def books_router(books: ChannelBooks) -> APIRouter:
    """``GET /_sandbox/books``: the sandbox's books, for tests and simulations."""
    router = APIRouter(prefix="/_sandbox", tags=["sandbox"])

    @router.get("/books")
    def read() -> dict:
        return books.snapshot()

    return router


__all__ = ["BillLine", "BooksError", "ChannelBooks", "NOTIFY_BACKOFF", "SandboxOrder", "SandboxRefund",
           "books_router", "platform_redeemer"]
