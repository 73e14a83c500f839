"""A stand-in for Alipay's openapi gateway (face-to-face payment by payment code), on ``ChannelBooks``.

It speaks the wire format of ``channels/alipay.py`` (signed form requests to ``/gateway.do``, answers
whose ``sign`` covers the response node's exact text, signed form notifications, a zipped CSV bill
behind a short-lived download URL) and checks what the real gateway checks before doing anything:
app_id, sign_type, the request signature (with ``merchant_public``) and the timestamp. Everything it
signs, it signs with ``channel_key``.

Unknown methods, missing parameters and malformed amounts are refused with Alipay's codes. Unlike the
real service, the bill of *today* can be downloaded (tests reconcile the same day), and a refund can be
queried by its request number alone (see ``channels/alipay.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request, Response

from smartcare.payment.channels import alipay as wire
from smartcare.payment.channels.credentials import Credentials
from smartcare.payment.sandbox.channel import (
    BillLine,
    BooksError,
    ChannelBooks,
    LoopClient,
    SandboxOrder,
    books_router,
)
from smartcare.payment.sandbox.faults import Faults, control_router, handle
from smartcare.platform.clock import china_now
from smartcare.platform.money import yuan

CLOCK_SKEW = timedelta(minutes=10)
DOWNLOAD_SECONDS = 30  # Alipay's bill download links expire after 30 seconds

#: The books' refusals in Alipay's words (code 40004 with these sub_codes).
SUB_CODES = {
    "AUTH_CODE_INVALID": ("ACQ.PAYMENT_AUTH_CODE_INVALID", "支付失败，获取顾客账户信息失败，请顾客刷新付款码后重新收款"),
    "ORDER_CLOSED": ("ACQ.TRADE_HAS_CLOSE", "交易已经关闭"),
    "ORDER_PAID": ("ACQ.TRADE_HAS_SUCCESS", "交易已被支付"),
    "AMOUNT_MISMATCH": ("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改"),
    "NOT_FOUND": ("ACQ.TRADE_NOT_EXIST", "交易不存在"),
    "REFUND_TOO_MUCH": ("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限"),
    "NOT_PAID": ("ACQ.TRADE_STATUS_ERROR", "交易状态不合法"),
    "SYSTEM_ERROR": ("ACQ.SYSTEM_ERROR", "系统错误"),
}

Answer = dict[str, Any]


class GatewayError(Exception):
    """A refusal before or instead of the work: Alipay's ``code``, ``msg``, ``sub_code``, ``sub_msg``."""

    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str):
        super().__init__(f"{code} {sub_code}: {sub_msg}")
        self.answer: Answer = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


def _business(sub_code: str, sub_msg: str) -> GatewayError:
    return GatewayError(wire.BUSINESS_FAILURE, "Business Failed", sub_code, sub_msg)


def _books_error(exc: BooksError) -> GatewayError:
    sub_code, chinese = SUB_CODES[exc.code]
    return _business(sub_code, f"{chinese}: {exc.message}")


def _success(**fields: Any) -> Answer:
    return {"code": wire.SUCCESS, "msg": "Success", **fields}


def _yuan(fen: int) -> str:
    return str(yuan(fen))


def _time(moment: datetime | None) -> str:
    return moment.strftime(wire.TIME_FORMAT) if moment else ""


def _request_no(line: BillLine) -> str:
    """The refund's request number; a cancellation has none (the books name it REVERSE-<order>)."""
    if line.kind != "refund" or line.out_refund_no == f"REVERSE-{line.out_trade_no}":
        return ""
    return line.out_refund_no or ""


def _trade_status(order: SandboxOrder) -> str:
    if order.state == "paying":
        return "WAIT_BUYER_PAY"
    if order.state == "paid" and order.refunded < order.amount:
        return "TRADE_SUCCESS"
    return "TRADE_CLOSED"  # failed, reversed, or paid and refunded in full


def _biz_str(biz: dict, name: str) -> str:
    value = biz.get(name)
    if not isinstance(value, str) or not value:
        raise _business("ACQ.INVALID_PARAMETER", f"参数无效: biz_content.{name} is missing")
    return value


def _biz_number(biz: dict, name: str) -> str:
    value = _biz_str(biz, name)
    if not wire.NUMBER.fullmatch(value):
        raise _business("ACQ.INVALID_PARAMETER", f"参数无效: {name} must be 1-64 letters, digits or underscores")
    return value


def _biz_amount(biz: dict, name: str) -> int:
    try:
        fen = wire.from_yuan(biz.get(name), name)
    except ValueError as exc:
        raise _business("ACQ.INVALID_PARAMETER", f"参数无效: {exc}") from None
    if not 0 < fen <= 10_000_000_000:
        raise _business("ACQ.INVALID_PARAMETER", f"参数无效: {name} must be 0.01 to 100000000.00 yuan")
    return fen


class _Gateway:
    """The methods of ``/gateway.do`` over one set of books."""

    def __init__(self, credentials: Credentials, books: ChannelBooks, notify: Callable[[SandboxOrder], Awaitable[bool]]):
        self.credentials = credentials
        self.books = books
        self.notify = notify
        self.methods: dict[str, Callable[[dict, dict, Request], Awaitable[Answer]]] = {
            "alipay.trade.pay": self.pay, "alipay.trade.query": self.query, "alipay.trade.cancel": self.cancel,
            "alipay.trade.refund": self.refund, "alipay.trade.fastpay.refund.query": self.refund_query,
            "alipay.data.dataservice.bill.downloadurl.query": self.bill_url}

    def check(self, params: dict[str, str]) -> tuple[str, dict]:
        """The checks the gateway makes before any work: the method and its business content."""
        for name in ("app_id", "method", "charset", "sign_type", "sign", "timestamp", "version", "biz_content"):
            if not params.get(name):
                raise GatewayError("40001", "Missing Required Arguments", f"isv.missing-{name.replace('_', '-')}",
                                   f"缺少必选参数 {name}")
        if params["method"] not in self.methods:
            raise GatewayError("40002", "Invalid Arguments", "isv.invalid-method", f"不存在的方法名 {params['method']}")
        if params["app_id"] != self.credentials.merchant_id:
            raise GatewayError("40002", "Invalid Arguments", "isv.invalid-app-id", f"无效的AppID参数 {params['app_id']}")
        if params["sign_type"] != "RSA2" or params["charset"].lower() != "utf-8" or params["version"] != "1.0":
            raise GatewayError("40002", "Invalid Arguments", "isv.invalid-signature-type",
                               "sign_type must be RSA2, charset utf-8, version 1.0")
        if not wire.verify(self.credentials.merchant_public, wire.canonical(params), params["sign"]):
            raise GatewayError("40002", "Invalid Arguments", "isv.invalid-signature", "验签出错: the request's sign "
                               "does not verify with the merchant's public key over the sorted parameters")
        try:
            sent = wire.parse_time(params["timestamp"], "timestamp")
        except ValueError as exc:
            raise GatewayError("40002", "Invalid Arguments", "isv.invalid-timestamp", str(exc)) from None
        if abs(china_now() - sent) > CLOCK_SKEW:
            raise GatewayError("40002", "Invalid Arguments", "isv.invalid-timestamp",
                               f"timestamp {params['timestamp']} is more than {CLOCK_SKEW} from the gateway's clock")
        try:
            biz = json.loads(params["biz_content"])
        except ValueError:
            biz = None
        if not isinstance(biz, dict):
            raise GatewayError("40002", "Invalid Arguments", "isv.invalid-parameter", "biz_content is not a JSON object")
        return params["method"], biz

    async def pay(self, biz: dict, params: dict, _request: Request) -> Answer:
        out_trade_no = _biz_number(biz, "out_trade_no")
        if biz.get("scene") != "bar_code":
            raise _business("ACQ.INVALID_PARAMETER", "参数无效: scene must be bar_code (payment by payment code)")
        amount = _biz_amount(biz, "total_amount")
        auth_code = _biz_str(biz, "auth_code")
        try:
            order = await self.books.pay(out_trade_no=out_trade_no, amount=amount, auth_code=auth_code,
                                         description=str(biz.get("subject") or ""),
                                         notify_url=params.get("notify_url") or None, send_notification=self.notify)
        except BooksError as exc:
            raise _books_error(exc) from None
        fields = {"trade_no": order.transaction_id, "out_trade_no": order.out_trade_no,
                  "buyer_user_id": order.payer or "", "total_amount": _yuan(order.amount)}
        if order.state == "paying":
            return {"code": wire.WAITING, "msg": "Order success pay inprocess", **fields}
        return _success(**fields, receipt_amount=_yuan(order.amount), gmt_payment=_time(order.paid_at))

    async def query(self, biz: dict, _params: dict, _request: Request) -> Answer:
        order = self.books.query(_biz_number(biz, "out_trade_no"))
        if order is None:
            raise _books_error(BooksError("NOT_FOUND", f"no order {biz['out_trade_no']}"))
        answer = _success(trade_no=order.transaction_id, out_trade_no=order.out_trade_no,
                          buyer_user_id=order.payer or "", trade_status=_trade_status(order),
                          total_amount=_yuan(order.amount))
        if order.paid_at is not None:
            answer["send_pay_date"] = _time(order.paid_at)
        return answer

    async def cancel(self, biz: dict, _params: dict, _request: Request) -> Answer:
        order = self.books.reverse(_biz_number(biz, "out_trade_no"))
        answer = _success(trade_no=order.transaction_id, out_trade_no=order.out_trade_no, retry_flag="N",
                          action="refund" if order.paid_at is not None else "close")
        if order.paid_at is not None:
            answer["gmt_refund_pay"] = _time(china_now())
        return answer

    async def refund(self, biz: dict, _params: dict, _request: Request) -> Answer:
        out_trade_no = _biz_number(biz, "out_trade_no")
        out_request_no = _biz_number(biz, "out_request_no")
        amount = _biz_amount(biz, "refund_amount")
        new = self.books.query_refund(out_request_no) is None
        try:
            refund = self.books.refund(out_trade_no=out_trade_no, out_refund_no=out_request_no, amount=amount)
        except BooksError as exc:
            raise _books_error(exc) from None
        order = self.books.query(out_trade_no)
        return _success(trade_no=order.transaction_id, out_trade_no=out_trade_no, buyer_user_id=order.payer or "",
                        fund_change="Y" if new else "N", refund_fee=_yuan(order.refunded),
                        gmt_refund_pay=_time(refund.at))

    async def refund_query(self, biz: dict, _params: dict, _request: Request) -> Answer:
        out_request_no = _biz_number(biz, "out_request_no")
        refund = self.books.query_refund(out_request_no)
        if refund is None:  # Alipay answers success without refund fields
            return _success(out_request_no=out_request_no)
        order = self.books.query(refund.out_trade_no)
        return _success(trade_no=order.transaction_id, out_trade_no=refund.out_trade_no, out_request_no=out_request_no,
                        total_amount=_yuan(order.amount), refund_amount=_yuan(refund.amount),
                        refund_status="REFUND_SUCCESS", gmt_refund_pay=_time(refund.at))

    async def bill_url(self, biz: dict, _params: dict, request: Request) -> Answer:
        if biz.get("bill_type") != "trade":
            raise _business("isv.invalid-bill-type", "bill_type must be trade")
        try:
            day = date.fromisoformat(_biz_str(biz, "bill_date"))
        except ValueError:
            raise _business("isv.invalid-bill-date", "bill_date must be a day like 2024-05-01") from None
        if day > china_now().date():
            raise _business("isp.bill_not_exist", f"账单不存在: {day} has not begun")
        expires = int(time.time()) + DOWNLOAD_SECONDS
        url = (f"{str(request.base_url).rstrip('/')}/downloadBillFile.resource?bizType=trade&userId="
               f"{self.credentials.merchant_id}&fileType=csv.zip&bizDates={day:%Y%m%d}&expires={expires}"
               f"&fileId={self.download_token(day, expires)}")
        return _success(bill_download_url=url)

    def download_token(self, day: date, expires: int) -> str:
        return hmac.new(bytes.fromhex(self.credentials.secret), f"bill|{day:%Y%m%d}|{expires}".encode(),
                        hashlib.sha256).hexdigest()

    def bill_zip(self, day: date) -> bytes:
        rows = []
        for line in self.books.bill(day):
            order = self.books.query(line.out_trade_no)
            amount = ("" if line.kind == "pay" else "-") + _yuan(line.amount)  # refunds are negative
            shop = ["", "", "", ""]  # 门店编号, 门店名称, 操作员, 终端号
            discounts = ["0.00"] * 5 + [""] + ["0.00"] * 2  # 红包 … 卡消费金额, with 券名称 among them
            rows.append([line.transaction_id, line.out_trade_no, wire.BILL_PAY if line.kind == "pay" else wire.BILL_REFUND,
                         line.description, _time(order.created_at), _time(line.at), *shop, line.payer or "",
                         amount, amount, *discounts, _request_no(line), "0.00", "0.00", ""])
        pays = sum(1 for r in rows if r[2] == wire.BILL_PAY)
        return wire.write_bill(self.credentials.merchant_id, day, rows, (pays, len(rows) - pays))


def create_app(*, credentials: Credentials, redeem: Callable[[str], Awaitable[str | None]],
               faults: Faults | None = None, password_above: int = 100_000, password_seconds: float = 0.5) -> FastAPI:
    """Alipay's gateway on one set of books (``app.state.books``); every gateway call runs under ``faults``."""
    if credentials.channel != "alipay":
        raise ValueError(f"credentials are for {credentials.channel!r}, not alipay")
    holder: dict = {"faults": faults or Faults()}
    books = ChannelBooks("alipay", holder=holder, redeem=redeem, password_above=password_above,
                         password_seconds=password_seconds)
    notifier = LoopClient()

    async def notify(order: SandboxOrder) -> bool:
        """POST the signed trade_status_sync form; acknowledged only by the body ``success``."""
        if not order.notify_url:
            return True  # nobody asked to be told
        digest = hashlib.sha256(f"{order.transaction_id}|{order.state}".encode()).hexdigest()[:32]
        params = {"notify_time": _time(china_now()), "notify_type": "trade_status_sync", "notify_id": digest,
                  "app_id": credentials.merchant_id, "charset": "utf-8", "version": "1.0", "sign_type": "RSA2",
                  "trade_no": order.transaction_id, "out_trade_no": order.out_trade_no, "buyer_id": order.payer or "",
                  "trade_status": _trade_status(order), "total_amount": _yuan(order.amount),
                  "receipt_amount": _yuan(order.amount), "gmt_create": _time(order.created_at),
                  "gmt_payment": _time(order.paid_at), "subject": order.description}
        params["sign"] = wire.sign(credentials.channel_key, wire.canonical(params, leave_out=("sign", "sign_type")))
        response = await notifier().post(order.notify_url, data=params)
        return response.status_code == 200 and response.content.strip() == b"success"

    gateway = _Gateway(credentials, books, notify)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await books.aclose()
        await notifier.aclose()

    app = FastAPI(title="Sandbox Alipay (支付宝 openapi gateway)", lifespan=lifespan)
    app.state.books = books
    app.state.faults_holder = holder
    app.include_router(control_router(holder))
    app.include_router(books_router(books))

    def answer(node: str, payload: Answer) -> Response:
        text = wire.signed_answer(node, payload, credentials.channel_key)
        return Response(text, media_type="application/json; charset=utf-8")

    def refuse() -> Answer:
        return {"code": wire.UNKNOWN, "msg": "Service Currently Unavailable", "sub_code": "isp.unknow-error",
                "sub_msg": "系统繁忙 (sandbox fault: nothing was done)"}

    @app.post(wire.GATEWAY)
    async def gateway_do(request: Request) -> Response:
        params = wire.parse_form(await request.body()) or {}
        method = params.get("method", "")
        node = wire.response_node(method) if method in gateway.methods else "error_response"
        try:
            method, biz = gateway.check(params)
        except GatewayError as exc:
            return answer(node, exc.answer)

        async def work() -> Answer:
            try:
                return await gateway.methods[method](biz, params, request)
            except GatewayError as exc:
                return exc.answer

        return answer(node, await handle(holder["faults"], work, refuse))

    @app.get("/downloadBillFile.resource")
    def download(bizDates: str, expires: int, fileId: str) -> Response:
        try:
            day = datetime.strptime(bizDates, "%Y%m%d").date()
        except ValueError:
            return Response("bizDates must be YYYYMMDD", status_code=400, media_type="text/plain")
        if expires < time.time() or not hmac.compare_digest(fileId, gateway.download_token(day, expires)):
            return Response("the download link is invalid or has expired; ask for a new one", status_code=403,
                            media_type="text/plain")
        return Response(gateway.bill_zip(day), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{bizDates}.csv.zip"'})

    return app
