"""A WeChat Pay API v3 stand-in (付款码支付 and what goes with it) over ``ChannelBooks``.

It checks each request's ``Authorization`` signature with the merchant's public key (a timestamp more than
5 minutes off or a nonce seen before is refused: 401 SIGN_ERROR), signs every answer and notification
with the channel key, and answers in WeChat's terms: a paid order 200 with the transaction, a payer still
typing a password 202 USERPAYING, business errors ``{"code", "message"}`` with a 4xx, system errors 500.
Every API request runs under the injected faults (``refuse`` is a 500 SYSTEM_ERROR).

Unlike the real service, the bill of *today* can be downloaded (tests reconcile the same day), and a
paid order's notification goes to the ``notify_url`` of its pay request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from datetime import date
from typing import Annotated

import httpx
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from smartcare.payment.channels import wechat as wire
from smartcare.payment.channels.credentials import Credentials, verify_rsa_sha256
from smartcare.payment.sandbox.channel import (
    BooksError,
    ChannelBooks,
    Redeem,
    SandboxOrder,
    SandboxRefund,
    books_router,
)
from smartcare.payment.sandbox.faults import Faults, control_router, handle
from smartcare.platform.clock import china_now
from smartcare.platform.money import format_yuan

OutNo = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_*-]{6,32}$")]
OutRefundNo = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_*@|-]{1,64}$")]
Fen = Annotated[int, Field(gt=0, strict=True)]

#: BooksError code → (HTTP status, WeChat error code)
ERRORS = {
    "AUTH_CODE_INVALID": (400, "AUTH_CODE_INVALID"),
    "ORDER_CLOSED": (400, "ORDER_CLOSED"),
    "ORDER_PAID": (400, "ORDER_PAID"),
    "AMOUNT_MISMATCH": (403, "OUT_TRADE_NO_USED"),
    "NOT_FOUND": (404, "ORDER_NOT_EXIST"),
    "REFUND_TOO_MUCH": (400, "INVALID_REQUEST"),
    "NOT_PAID": (400, "INVALID_REQUEST"),
    "SYSTEM_ERROR": (500, "SYSTEM_ERROR"),
}


class WeChatError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AmountIn(_In):
    total: Fen
    currency: str = "CNY"


class PayerIn(_In):
    auth_code: Annotated[str, StringConstraints(min_length=10, max_length=32)]


class CodePayIn(_In):
    appid: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    mchid: str
    description: Annotated[str, StringConstraints(min_length=1, max_length=127)]
    out_trade_no: OutNo
    notify_url: str | None = None
    amount: AmountIn
    payer: PayerIn


class ReverseIn(_In):
    mchid: str
    appid: str | None = None


class RefundAmountIn(_In):
    refund: Fen
    total: Fen
    currency: str = "CNY"


class RefundIn(_In):
    out_trade_no: OutNo
    out_refund_no: OutRefundNo
    amount: RefundAmountIn
    reason: str | None = None


def _parse(model: type[BaseModel], body: bytes):
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise WeChatError(400, "PARAM_ERROR", f"{where}: {first['msg']}") from None


def _rfc3339(moment) -> str:
    return moment.isoformat(timespec="seconds")


class WeChatSandbox:
    """The request handling of one sandbox: signature checks, translation to and from the books."""

    def __init__(self, credentials: Credentials, books: ChannelBooks):
        self.credentials = credentials
        self.books = books
        self.appids: dict[str, str] = {}
        self.bill_files: dict[str, tuple[bytes, float]] = {}
        self._nonces: dict[str, float] = {}
        self.http: httpx.AsyncClient | None = None

    # -- signing

    def answer(self, status: int, payload: dict | None = None, *, signed: bool = True) -> Response:
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Request-ID": uuid.uuid4().hex}
        if signed:
            headers |= wire.signed_headers(self.credentials.channel_key, self.credentials.channel_serial, body)
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    def error(self, exc: WeChatError) -> Response:
        return self.answer(exc.status, {"code": exc.code, "message": exc.message})

    def system_error(self) -> Response:
        return self.answer(500, {"code": "SYSTEM_ERROR", "message": "系统异常,请使用相同参数稍后重新调用"})

    def check_request(self, request: Request, body: bytes) -> None:
        """The merchant's ``Authorization``: our merchant, a fresh unused nonce, a valid signature."""
        try:
            auth = wire.parse_authorization(request.headers.get("authorization", ""))
        except ValueError as exc:
            raise WeChatError(401, "SIGN_ERROR", str(exc)) from None
        if auth["mchid"] != self.credentials.merchant_id:
            raise WeChatError(401, "SIGN_ERROR", f"unknown mchid {auth['mchid']}")
        if auth["serial_no"] != self.credentials.merchant_serial:
            raise WeChatError(401, "SIGN_ERROR", f"unknown merchant certificate serial {auth['serial_no']}")
        now = time.time()
        try:
            skew = abs(now - int(auth["timestamp"]))
        except ValueError:
            raise WeChatError(401, "SIGN_ERROR", "timestamp is not a number") from None
        if skew > wire.CLOCK_SKEW_SECONDS:
            raise WeChatError(401, "SIGN_ERROR", f"timestamp is {int(skew)} s off")
        self._nonces = {n: t for n, t in self._nonces.items() if now - t <= 2 * wire.CLOCK_SKEW_SECONDS}
        if auth["nonce_str"] in self._nonces:
            raise WeChatError(401, "SIGN_ERROR", "nonce_str used before (replayed request)")
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.scope.get("query_string") or b""
        url = raw_path.decode("ascii") + (f"?{query.decode('ascii')}" if query else "")
        message = wire.request_message(request.method, url, auth["timestamp"], auth["nonce_str"], body)
        try:
            signature = base64.b64decode(auth["signature"], validate=True)
        except ValueError:
            raise WeChatError(401, "SIGN_ERROR", "signature is not base64") from None
        if not verify_rsa_sha256(self.credentials.merchant_public, message, signature):
            raise WeChatError(401, "SIGN_ERROR", "signature does not verify with the merchant certificate")
        self._nonces[auth["nonce_str"]] = now

    def check_mchid(self, mchid: str) -> None:
        if mchid != self.credentials.merchant_id:
            raise WeChatError(400, "MCH_NOT_EXISTS", f"mchid {mchid} is not this merchant")

    # -- translation

    def transaction(self, order: SandboxOrder) -> dict:
        data = {"appid": self.appids.get(order.out_trade_no, wire.DEFAULT_APPID), "mchid": self.credentials.merchant_id,
                "out_trade_no": order.out_trade_no, "transaction_id": order.transaction_id,
                "trade_type": "MICROPAY", "trade_state": self.trade_state(order),
                "trade_state_desc": order.state, "bank_type": "OTHERS",
                "amount": {"total": order.amount, "currency": "CNY"}}
        if order.paid_at is not None:
            data |= {"success_time": _rfc3339(order.paid_at),
                     "amount": {"total": order.amount, "payer_total": order.amount, "currency": "CNY",
                                "payer_currency": "CNY"}}
        if order.payer is not None and order.paid_at is not None:
            data["payer"] = {"openid": order.payer}
        return data

    @staticmethod
    def trade_state(order: SandboxOrder) -> str:
        if order.state == "paid":
            return "REFUND" if order.refunded else "SUCCESS"
        if order.state == "paying":
            return "USERPAYING"
        if order.state == "failed":
            return "PAYERROR"
        return "REVOKED" if order.paid_at is not None else "CLOSED"

    def refund_answer(self, refund: SandboxRefund) -> dict:
        order = self.books.query(refund.out_trade_no)
        total = order.amount if order else refund.amount
        return {"refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no,
                "transaction_id": order.transaction_id if order else "", "out_trade_no": refund.out_trade_no,
                "channel": "ORIGINAL", "user_received_account": "支付用户零钱", "status": "SUCCESS",
                "create_time": _rfc3339(refund.at), "success_time": _rfc3339(refund.at), "funds_account": "AVAILABLE",
                "amount": {"total": total, "refund": refund.amount, "payer_total": total,
                           "payer_refund": refund.amount, "settlement_total": total,
                           "settlement_refund": refund.amount, "discount_refund": 0, "currency": "CNY"}}

    def bill_file(self, day: date) -> bytes:
        """The trade bill CSV: each field prefixed with a backtick, amounts in yuan, a summary at the end."""
        def cells(values) -> str:
            return ",".join(f"`{v}" for v in values)

        def y(fen: int) -> str:
            return format_yuan(fen, symbol=False).replace(",", "")

        lines = [",".join(wire.BILL_COLUMNS)]
        paid = refunded = 0
        entries = self.books.bill(day)
        for e in entries:
            common = [e.at.strftime(wire.BILL_TIME), self.appids.get(e.out_trade_no, wire.DEFAULT_APPID),
                      self.credentials.merchant_id, "0", "", e.transaction_id, e.out_trade_no, e.payer or "",
                      "MICROPAY"]
            description = e.description.replace(",", " ").replace("\n", " ")
            if e.kind == "pay":
                paid += e.amount
                row = common + ["SUCCESS", "OTHERS", "CNY", y(e.amount), "0.00", "0", "0", "0.00", "0.00", "", "",
                                description, "", "0.00", "0.00%", y(e.amount), "0.00", ""]
            else:
                refunded += e.amount
                # a reversal (撤销) shows as REVOKED with no merchant refund number, as in WeChat's bills
                status, refund_no = ("REVOKED", "") if e.reversal else ("REFUND", e.out_refund_no or "")
                row = common + [status, "OTHERS", "CNY", "0.00", "0.00", e.refund_id or "", refund_no,
                                y(e.amount), "0.00", "ORIGINAL", "SUCCESS", description, "", "0.00", "0.00%",
                                "0.00", y(e.amount), ""]
            lines.append(cells(row))
        lines.append(",".join(wire.BILL_SUMMARY))
        lines.append(cells([len(entries), y(paid), y(refunded), "0.00", "0.00", y(paid), y(refunded)]))
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    # -- notifications

    def sender(self, notify_url: str | None):
        async def send(order: SandboxOrder) -> bool:
            if not notify_url or self.http is None:
                return True  # nowhere to deliver: nothing to retry
            plaintext = json.dumps(self.transaction(order), ensure_ascii=False).encode()
            envelope = {"id": str(uuid.uuid5(uuid.NAMESPACE_OID, order.transaction_id)),
                        "create_time": _rfc3339(china_now()), "resource_type": "encrypt-resource",
                        "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
                        "resource": wire.encrypt_resource(self.credentials.secret, plaintext)}
            body = json.dumps(envelope, ensure_ascii=False).encode()
            headers = wire.signed_headers(self.credentials.channel_key, self.credentials.channel_serial, body)
            response = await self.http.post(notify_url, content=body,
                                            headers={**headers, "Content-Type": "application/json"})
            return 200 <= response.status_code < 300

        return send


def create_app(*, credentials: Credentials, redeem: Redeem, faults: Faults | None = None,
               password_above: int = 100_000, password_seconds: float = 0.5) -> FastAPI:
    """The WeChat Pay sandbox; ``app.state.books`` are its books (``GET /_sandbox/books`` shows them)."""
    if credentials.channel != "wechat":
        raise ValueError(f"the WeChat sandbox needs wechat credentials, got {credentials.channel!r}")
    holder: dict = {"faults": faults or Faults()}
    books = ChannelBooks("wechat", holder=holder, redeem=redeem, password_above=password_above,
                         password_seconds=password_seconds)
    sandbox = WeChatSandbox(credentials, books)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sandbox.http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0))
        try:
            yield
        finally:
            await books.aclose()
            await sandbox.http.aclose()

    app = FastAPI(title="WeChat Pay sandbox (API v3)", lifespan=lifespan)
    app.state.books = books
    app.state.holder = holder
    app.state.sandbox = sandbox
    app.include_router(control_router(holder))
    app.include_router(books_router(books))

    async def run(request: Request, work) -> Response:
        """Signature check, then ``work(body)`` under the faults; errors become WeChat's answers."""
        body = await request.body()
        try:
            sandbox.check_request(request, body)
        except WeChatError as exc:
            return sandbox.error(exc)

        async def guarded() -> Response:
            try:
                return await work(body)
            except WeChatError as exc:
                return sandbox.error(exc)
            except BooksError as exc:
                status, code = ERRORS[exc.code]
                return sandbox.error(WeChatError(status, code, exc.message))

        return await handle(holder["faults"], guarded, sandbox.system_error)

    @app.post(wire.PAY_PATH)
    async def codepay(request: Request) -> Response:
        async def work(body: bytes) -> Response:
            data = _parse(CodePayIn, body)
            sandbox.check_mchid(data.mchid)
            if data.amount.currency != "CNY":
                raise WeChatError(400, "PARAM_ERROR", f"amount.currency must be CNY, got {data.amount.currency}")
            order = await books.pay(out_trade_no=data.out_trade_no, amount=data.amount.total,
                                    auth_code=data.payer.auth_code, description=data.description,
                                    notify_url=data.notify_url, send_notification=sandbox.sender(data.notify_url))
            sandbox.appids.setdefault(order.out_trade_no, data.appid)
            if order.state == "paying":
                return sandbox.answer(202, {"code": "USERPAYING", "message": "用户支付中,需要输入密码"})
            return sandbox.answer(200, sandbox.transaction(order))

        return await run(request, work)

    @app.get("/v3/pay/transactions/out-trade-no/{out_trade_no}")
    async def query(out_trade_no: str, request: Request) -> Response:
        async def work(body: bytes) -> Response:
            sandbox.check_mchid(request.query_params.get("mchid", ""))
            order = books.query(out_trade_no)
            if order is None:
                raise WeChatError(404, "ORDER_NOT_EXIST", f"订单不存在: {out_trade_no}")
            return sandbox.answer(200, sandbox.transaction(order))

        return await run(request, work)

    @app.post("/v3/pay/transactions/out-trade-no/{out_trade_no}/reverse")
    async def reverse(out_trade_no: str, request: Request) -> Response:
        async def work(body: bytes) -> Response:
            data = _parse(ReverseIn, body)
            sandbox.check_mchid(data.mchid)
            books.reverse(out_trade_no)
            return sandbox.answer(200, {"appid": data.appid or wire.DEFAULT_APPID, "mchid": data.mchid,
                                        "out_trade_no": out_trade_no})

        return await run(request, work)

    @app.post(wire.REFUND_PATH)
    async def refund(request: Request) -> Response:
        async def work(body: bytes) -> Response:
            data = _parse(RefundIn, body)
            order = books.query(data.out_trade_no)
            if order is None:
                raise WeChatError(404, "ORDER_NOT_EXIST", f"订单不存在: {data.out_trade_no}")
            if data.amount.total != order.amount:
                raise WeChatError(400, "PARAM_ERROR",
                                  f"amount.total {data.amount.total} is not the order's {order.amount}")
            found = books.refund(out_trade_no=data.out_trade_no, out_refund_no=data.out_refund_no,
                                 amount=data.amount.refund)
            return sandbox.answer(200, sandbox.refund_answer(found))

        return await run(request, work)

    @app.get(wire.REFUND_PATH + "/{out_refund_no}")
    async def query_refund(out_refund_no: str, request: Request) -> Response:
        async def work(body: bytes) -> Response:
            found = books.query_refund(out_refund_no)
            if found is None:
                raise WeChatError(404, "RESOURCE_NOT_EXISTS", f"退款单不存在: {out_refund_no}")
            return sandbox.answer(200, sandbox.refund_answer(found))

        return await run(request, work)

    @app.get(wire.BILL_PATH)
    async def tradebill(request: Request) -> Response:
        async def work(body: bytes) -> Response:
            text = request.query_params.get("bill_date", "")
            try:
                day = date.fromisoformat(text)
            except ValueError:
                raise WeChatError(400, "PARAM_ERROR", f"bill_date must be yyyy-MM-DD, got {text!r}") from None
            if day > china_now().date():
                raise WeChatError(400, "INVALID_REQUEST", f"bill_date {day} is in the future")
            if not books.bill(day):
                raise WeChatError(400, "NO_STATEMENT_EXIST", f"no trade bill of {day}")
            content = sandbox.bill_file(day)
            token = secrets.token_urlsafe(16)
            now = time.time()
            sandbox.bill_files = {k: v for k, v in sandbox.bill_files.items() if now - v[1] < 300}
            sandbox.bill_files[token] = (content, now)
            url = str(request.base_url).rstrip("/") + f"/v3/billdownload/file?token={token}"
            return sandbox.answer(200, {"hash_type": "SHA1", "hash_value": hashlib.sha1(content).hexdigest(),
                                        "download_url": url})

        return await run(request, work)

    @app.get("/v3/billdownload/file")
    async def download(request: Request) -> Response:
        async def work(body: bytes) -> Response:
            found = sandbox.bill_files.get(request.query_params.get("token", ""))
            if found is None:
                raise WeChatError(400, "INVALID_REQUEST", "download token unknown or expired (valid 5 minutes)")
            # a file download answer is not signed: its SHA1 from the bill answer is the check
            return Response(found[0], media_type="text/csv; charset=utf-8")

        return await run(request, work)

    return app
