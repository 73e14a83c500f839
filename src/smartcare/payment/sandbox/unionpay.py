"""A stand-in for UnionPay's 全渠道 gateway (5.1.0): consume by QR payment code, undo, refund, query and
the daily file, on ``ChannelBooks``.

It speaks the wire format of ``channels/unionpay.py`` (signed forms both ways, respCode/origRespCode,
``fileContent`` as base64 of a deflated zip) and checks what the real gateway checks before doing
anything: version, signMethod, merId, certId and the request signature (with ``merchant_public``).
Everything it answers or notifies, it signs with ``channel_key``. Under the "error" fault a back-end
transaction is refused with respCode 01 (failed, nothing done) and a query or file request with 03
(ask again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime
from urllib.parse import urlencode

from fastapi import FastAPI, Request, Response

from smartcare.payment.channels import unionpay as wire
from smartcare.payment.channels.credentials import Credentials
from smartcare.payment.sandbox.channel import (
    BillLine,
    BooksError,
    ChannelBooks,
    LoopClient,
    SandboxOrder,
    SandboxRefund,
    books_router,
)
from smartcare.payment.sandbox.faults import Faults, control_router, handle
from smartcare.platform.clock import china_now

Fields = dict[str, str]

#: The books' refusals as UnionPay answer codes (30-59: the merchant's business checks, 60-89: the payer's).
RESP_CODES = {
    "AUTH_CODE_INVALID": ("61", "付款码无效、已过期或已使用"),
    "ORDER_CLOSED": ("12", "重复交易：订单已关闭"),
    "ORDER_PAID": ("12", "重复交易：订单已支付"),
    "AMOUNT_MISMATCH": ("36", "与原交易信息不符"),
    "NOT_FOUND": ("35", "原交易不存在或状态不正确"),
    "REFUND_TOO_MUCH": ("36", "与原交易信息不符：退货金额超过可退金额"),
    "NOT_PAID": ("35", "原交易不存在或状态不正确"),
    "SYSTEM_ERROR": ("03", "交易通讯超时，请发起查询交易"),
}
PAYING_CODE = ("05", "交易已受理，请稍后查询交易结果")
COMMON = ("version", "encoding", "signMethod", "certId", "signature", "txnType", "txnSubType", "bizType",
          "accessType", "merId", "txnTime")


class GatewayError(Exception):
    """A refusal with UnionPay's respCode and respMsg."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


def _books_error(exc: BooksError) -> GatewayError:
    code, chinese = RESP_CODES[exc.code]
    return GatewayError(code, f"{chinese}: {exc.message}")


def _time(moment: datetime | None) -> str:
    return moment.strftime(wire.TIME_FORMAT) if moment else ""


def _require(fields: Fields, *names: str) -> None:
    missing = [name for name in names if not fields.get(name)]
    if missing:
        raise GatewayError("13", f"报文交易要素缺失: {', '.join(missing)}")


def _order_view(order: SandboxOrder) -> Fields:
    """An order as a query answers for it: the consume, or its undo once reversed."""
    view = {"orderId": order.out_trade_no, "txnTime": _time(order.created_at), "txnAmt": str(order.amount),
            "currencyCode": "156", "queryId": order.transaction_id}
    if order.payer:
        view["accNo"] = order.payer
    if order.state == "reversed":
        view.update(txnType=wire.UNDO, txnSubType="00", origRespCode=wire.SUCCESS, origRespMsg="成功[0000000]")
        if order.paid_at is not None:  # money was taken, and given back by the undo
            view["origQryId"] = order.transaction_id
        return view
    view.update(txnType=wire.CONSUME, txnSubType=wire.QR_CONSUME_SUBTYPE)
    if order.state == "paid":
        view.update(origRespCode=wire.SUCCESS, origRespMsg="成功[0000000]", settleAmt=str(order.amount),
                    settleCurrencyCode="156", settleDate=f"{order.paid_at:%m%d}",
                    traceNo=order.transaction_id[-6:], traceTime=f"{order.paid_at:%m%d%H%M%S}")
    elif order.state == "paying":
        view.update(origRespCode=PAYING_CODE[0], origRespMsg=PAYING_CODE[1])
    else:
        view.update(origRespCode=RESP_CODES["AUTH_CODE_INVALID"][0], origRespMsg=RESP_CODES["AUTH_CODE_INVALID"][1])
    return view


def _refund_view(refund: SandboxRefund, order: SandboxOrder) -> Fields:
    return {"orderId": refund.out_refund_no, "txnTime": _time(refund.at), "txnAmt": str(refund.amount),
            "currencyCode": "156", "queryId": refund.refund_id, "origQryId": order.transaction_id,
            "reqReserved": refund.out_trade_no, "txnType": wire.REFUND, "txnSubType": "00",
            "origRespCode": wire.SUCCESS, "origRespMsg": "成功[0000000]"}


def _file_line(line: BillLine) -> Fields:
    base = {"txnTime": _time(line.at), "txnAmt": str(line.amount)}
    if line.kind == "pay":
        return {**base, "txnType": wire.CONSUME, "orderId": line.out_trade_no, "queryId": line.transaction_id}
    if line.out_refund_no == f"REVERSE-{line.out_trade_no}":  # the books' name for the undo of a paid order
        return {**base, "txnType": wire.UNDO, "orderId": line.out_trade_no, "queryId": line.refund_id or "",
                "origQryId": line.transaction_id}
    return {**base, "txnType": wire.REFUND, "orderId": line.out_refund_no or "", "queryId": line.refund_id or "",
            "origOrderId": line.out_trade_no, "origQryId": line.transaction_id}


def _settle_day(mmdd: str) -> date:
    """The latest day with this MMDD that is not in the future (the gateway keeps no year)."""
    today = china_now().date()
    for year in (today.year, today.year - 1, today.year - 2, today.year - 3, today.year - 4):
        try:
            day = datetime.strptime(f"{year}{mmdd}", "%Y%m%d").date()
        except ValueError:
            continue  # 0229 in a common year
        if day <= today:
            return day
    raise GatewayError("10", f"报文格式错误: settleDate {mmdd!r} is not MMDD")


class _Gateway:
    """The three endpoints' work over one set of books."""

    def __init__(self, credentials: Credentials, books: ChannelBooks, notify: Callable[[SandboxOrder], Awaitable[bool]]):
        self.credentials = credentials
        self.books = books
        self.notify = notify
        self._numbers: dict[str, str] = {}

    def _by_query_id(self, query_id: str) -> SandboxOrder | None:
        """The order whose consume has this queryId (an index rebuilt when it misses: orders only grow)."""
        if query_id not in self._numbers:
            self._numbers = {o.transaction_id: o.out_trade_no for o in self.books.orders.values()}
        number = self._numbers.get(query_id)
        return self.books.query(number) if number else None

    def check(self, fields: Fields, txn_types: tuple[str, ...]) -> None:
        """The checks before any work: format, merchant, certificate and signature."""
        _require(fields, *COMMON)
        if fields["version"] != "5.1.0" or fields["encoding"].upper() != "UTF-8" or fields["signMethod"] != "01":
            raise GatewayError("10", "报文格式错误: version must be 5.1.0, encoding UTF-8, signMethod 01")
        if fields["txnType"] not in txn_types:
            raise GatewayError("10", f"报文格式错误: txnType {fields['txnType']} is not served here")
        if fields["merId"] != self.credentials.merchant_id:
            raise GatewayError("32", f"无此交易权限: unknown merId {fields['merId']}")
        if fields["certId"] != self.credentials.merchant_serial:
            raise GatewayError("11", f"验证签名失败: certId {fields['certId']} is not the merchant's certificate")
        if not wire.verify(fields, self.credentials.merchant_public):
            raise GatewayError("11", "验证签名失败: the signature does not verify over the sorted fields' sha256")
        try:
            wire.parse_time(fields["txnTime"], "txnTime")
        except ValueError as exc:
            raise GatewayError("10", f"报文格式错误: {exc}") from None

    def _order_id(self, fields: Fields, name: str = "orderId") -> str:
        _require(fields, name)
        if not wire.ORDER_ID.fullmatch(fields[name]):
            raise GatewayError("10", f"报文格式错误: {name} must be 8-40 letters or digits")
        return fields[name]

    def _amount(self, fields: Fields) -> int:
        _require(fields, "txnAmt", "currencyCode")
        try:
            fen = wire.from_fen_text(fields["txnAmt"], "txnAmt")
        except ValueError as exc:
            raise GatewayError("10", f"报文格式错误: {exc}") from None
        if fen <= 0 or fields["currencyCode"] != "156":
            raise GatewayError("10", "报文格式错误: txnAmt must be positive fen in currencyCode 156")
        return fen

    async def back_trans(self, fields: Fields) -> Fields:
        if fields["txnType"] == wire.CONSUME:
            return await self.consume(fields)
        if fields["txnType"] == wire.UNDO:
            return self.undo(fields)
        return self.refund(fields)

    async def consume(self, fields: Fields) -> Fields:
        order_id = self._order_id(fields)
        amount = self._amount(fields)
        _require(fields, "qrNo", "backUrl")
        if fields["txnSubType"] != wire.QR_CONSUME_SUBTYPE:
            raise GatewayError("10", f"报文格式错误: a consume by payment code is txnSubType {wire.QR_CONSUME_SUBTYPE}")
        try:
            order = await self.books.pay(out_trade_no=order_id, amount=amount, auth_code=fields["qrNo"],
                                         description=fields.get("orderDesc", ""), notify_url=fields["backUrl"],
                                         send_notification=self.notify)
        except BooksError as exc:
            raise _books_error(exc) from None
        return {"orderId": order_id, "txnAmt": str(amount), "currencyCode": "156", "queryId": order.transaction_id}

    def undo(self, fields: Fields) -> Fields:
        order = self.books.reverse(self._order_id(fields))
        answer = {"orderId": order.out_trade_no, "txnAmt": str(order.amount), "queryId": order.transaction_id}
        if order.state == "reversed" and order.paid_at is not None:
            answer["origQryId"] = order.transaction_id
        return answer

    def refund(self, fields: Fields) -> Fields:
        refund_no = self._order_id(fields)
        amount = self._amount(fields)
        _require(fields, "origQryId")
        order = self._by_query_id(fields["origQryId"])
        if order is None:
            raise GatewayError("35", f"原交易不存在或状态不正确: no transaction {fields['origQryId']}")
        try:
            refund = self.books.refund(out_trade_no=order.out_trade_no, out_refund_no=refund_no, amount=amount)
        except BooksError as exc:
            raise _books_error(exc) from None
        answer = {"orderId": refund_no, "txnAmt": str(refund.amount), "currencyCode": "156",
                  "queryId": refund.refund_id, "origQryId": order.transaction_id}
        if fields.get("reqReserved"):
            answer["reqReserved"] = fields["reqReserved"]
        return answer

    async def query(self, fields: Fields) -> Fields:
        order_id = self._order_id(fields)
        order = self.books.query(order_id)
        if order is not None:
            return _order_view(order)
        refund = self.books.query_refund(order_id)
        if refund is not None:
            return _refund_view(refund, self.books.query(refund.out_trade_no))
        raise GatewayError(wire.NOT_FOUND, f"查无此交易: no transaction with orderId {order_id}")

    async def file(self, fields: Fields) -> Fields:
        _require(fields, "settleDate", "fileType")
        if fields["fileType"] != "00" or len(fields["settleDate"]) != 4 or not fields["settleDate"].isdigit():
            raise GatewayError("10", "报文格式错误: fileType must be 00 and settleDate MMDD")
        day = _settle_day(fields["settleDate"])
        name = f"INN{day:%y%m%d}88ZM_{self.credentials.merchant_id}"
        text = wire.pack_file([_file_line(line) for line in self.books.bill(day)])
        return {"settleDate": fields["settleDate"], "fileName": f"{name}.zip", "fileContent": wire.file_content(name, text)}


def create_app(*, credentials: Credentials, redeem: Callable[[str], Awaitable[str | None]],
               faults: Faults | None = None, password_above: int = 100_000, password_seconds: float = 0.5) -> FastAPI:
    """UnionPay's gateway on one set of books (``app.state.books``); every gateway call runs under ``faults``."""
    if credentials.channel != "unionpay":
        raise ValueError(f"credentials are for {credentials.channel!r}, not unionpay")
    holder: dict = {"faults": faults or Faults()}
    books = ChannelBooks("unionpay", holder=holder, redeem=redeem, password_above=password_above,
                         password_seconds=password_seconds)
    notifier = LoopClient()

    def envelope(fields: Fields) -> Fields:
        return {"version": "5.1.0", "encoding": "UTF-8", "signMethod": "01", "certId": credentials.channel_serial,
                "bizType": "000000", "accessType": "0", "merId": credentials.merchant_id, **fields}

    async def notify(order: SandboxOrder) -> bool:
        """POST the signed result to backUrl; UnionPay counts only HTTP 200 as received."""
        view = _order_view(order)
        view["respCode"], view["respMsg"] = view.pop("origRespCode"), view.pop("origRespMsg")
        response = await notifier().post(order.notify_url, data=wire.sign(envelope(view), credentials.channel_key))
        return response.status_code == 200

    gateway = _Gateway(credentials, books, notify)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await books.aclose()
        await notifier.aclose()

    app = FastAPI(title="Sandbox UnionPay (银联全渠道 gateway 5.1.0)", lifespan=lifespan)
    app.state.books = books
    app.state.faults_holder = holder
    app.include_router(control_router(holder))
    app.include_router(books_router(books))

    async def serve(request: Request, txn_types: tuple[str, ...], work: Callable[[Fields], Awaitable[Fields]],
                    refused: tuple[str, str]) -> Response:
        fields = wire.parse_form(await request.body()) or {}
        echo = {name: fields[name] for name in ("txnType", "txnSubType", "orderId", "txnTime") if fields.get(name)}

        def answer(result: Fields, code: str, message: str) -> Response:
            signed = wire.sign(envelope({**echo, **result, "respCode": code, "respMsg": message}), credentials.channel_key)
            return Response(urlencode(signed), media_type="application/x-www-form-urlencoded")

        try:
            gateway.check(fields, txn_types)
        except GatewayError as exc:
            return answer({}, exc.code, exc.message)

        async def run() -> Response:
            try:
                return answer(await work(fields), wire.SUCCESS, "成功[0000000]")
            except GatewayError as exc:
                return answer({}, exc.code, exc.message)

        def refuse() -> Response:
            return answer({}, *refused)

        return await handle(holder["faults"], run, refuse)

    @app.post(wire.BACK_TRANS)
    async def back_trans(request: Request) -> Response:
        return await serve(request, (wire.CONSUME, wire.UNDO, wire.REFUND), gateway.back_trans,
                           ("01", "交易失败，详情请咨询95516 (sandbox fault: nothing was done)"))

    @app.post(wire.QUERY_TRANS)
    async def query_trans(request: Request) -> Response:
        return await serve(request, (wire.QUERY,), gateway.query, ("03", "交易通讯超时，请发起查询交易 (sandbox fault)"))

    @app.post(wire.FILE_TRANS)
    async def file_trans(request: Request) -> Response:
        return await serve(request, (wire.FILE,), gateway.file, ("03", "交易通讯超时，请稍后重试 (sandbox fault)"))

    return app
