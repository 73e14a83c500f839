"""Alipay (支付宝) face-to-face payment by payment code, through the openapi gateway (RSA2).

The wire format, shared with the sandbox (``sandbox/alipay.py``) so that both sides agree by
construction:

- requests are form POSTs to ``/gateway.do`` with the common parameters (app_id, method, format JSON,
  charset utf-8, sign_type RSA2, timestamp ``yyyy-MM-dd HH:mm:ss`` China time, version 1.0) and the
  business parameters as JSON in ``biz_content``; ``sign`` is base64 SHA256withRSA over the parameters
  sorted by name as ``k=v`` joined by ``&``, leaving out ``sign`` and empty values;
- an answer is ``{"<method>_response": {...}, "sign": "..."}`` where the signature covers the exact
  text of the response node (not a re-serialisation of it, so the adapter cuts it out of the body);
  ``code`` 10000 is success, 10003 "waiting for the payer", 20000 "unknown" and 40004 a business
  refusal named by ``sub_code``;
- notifications are form POSTs signed over the sorted parameters without ``sign`` and ``sign_type``;
  the platform answers the plain text ``success``;
- amounts are yuan strings with two decimals ("12.30"): converted exactly, never through float.

The real gateway finds a refund for ``alipay.trade.fastpay.refund.query`` by the order's number and the
refund request number; ``Channel.query_refund`` knows only the refund number, which the platform keeps
unique for good, so this adapter sends that alone and the sandbox accepts it.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import zipfile
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx

from smartcare.payment import remote
from smartcare.payment.channels.base import (
    BillRow,
    Notification,
    Order,
    OrderState,
    Refund,
)
from smartcare.payment.channels.credentials import (
    Credentials,
    sign_rsa_sha256,
    verify_rsa_sha256,
)
from smartcare.platform.clock import CHINA_TZ, china_now
from smartcare.platform.money import parse_yuan, yuan

GATEWAY = "/gateway.do"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

#: Alipay's out_trade_no / out_request_no: up to 64 letters, digits and underscores.
NUMBER = re.compile(r"[A-Za-z0-9_]{1,64}")
_AMOUNT = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,2})?")

SUCCESS, WAITING, UNKNOWN, BUSINESS_FAILURE = "10000", "10003", "20000", "40004"
#: sub_codes whose outcome Alipay itself says to resolve by query (the request may have been done).
UNKNOWN_SUB_CODES = frozenset({"ACQ.SYSTEM_ERROR", "isp.unknow-error", "aop.ACQ.SYSTEM_ERROR"})

#: The columns of the bill's detail CSV (业务明细), as Alipay writes them.
BILL_COLUMNS = ("支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号",
                "门店名称", "操作员", "终端号", "对方账户", "订单金额（元）", "商家实收（元）", "支付宝红包（元）",
                "集分宝（元）", "支付宝优惠（元）", "商家优惠（元）", "券核销金额（元）", "券名称",
                "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号", "服务费（元）", "分润（元）", "备注")
BILL_ENCODING = "gbk"
BILL_PAY, BILL_REFUND = "交易", "退款"


# ---- wire format ----------------------------------------------------------------------------------

def to_yuan(fen: int) -> str:
    """Fen as Alipay's yuan string: 1 → "0.01", 1230 → "12.30" (exact, via Decimal)."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen <= 0:
        raise ValueError(f"amount must be a positive int number of fen, got {fen!r}")
    return str(yuan(fen))


def from_yuan(text: object, field: str) -> int:
    """Alipay's yuan string as fen; anything but a plain decimal with at most two places is refused."""
    if not isinstance(text, str) or not _AMOUNT.fullmatch(text):
        raise ValueError(f"{field} {text!r} is not an amount in yuan like 12.30")
    return parse_yuan(text)


def canonical(params: Mapping[str, str], *, leave_out: tuple[str, ...] = ("sign",)) -> bytes:
    """The signed text: parameters sorted by name as ``k=v`` joined by ``&``, empty values left out."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params)
                    if k not in leave_out and params[k] not in ("", None)).encode("utf-8")


def sign(key_pem: bytes, data: bytes) -> str:
    return base64.b64encode(sign_rsa_sha256(key_pem, data)).decode("ascii")


def verify(public_pem: bytes, data: bytes, signature: str | None) -> bool:
    if not signature:
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        return False
    return verify_rsa_sha256(public_pem, data, raw)


def response_node(method: str) -> str:
    """``alipay.trade.pay`` answers in ``alipay_trade_pay_response``."""
    return method.replace(".", "_") + "_response"


def signed_answer(node: str, payload: Mapping[str, Any], key_pem: bytes) -> str:
    """An answer body whose ``sign`` covers the exact text of the node (what the sandbox sends)."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f'{{"{node}":{text},"sign":"{sign(key_pem, text.encode("utf-8"))}"}}'


def split_answer(body: str, node: str) -> tuple[dict, str, str | None]:
    """The response node, its exact text (what the signature covers) and the signature.

    Raises ``ValueError`` if the body is not an answer with that node (or Alipay's ``error_response``).
    """
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    name = node if node in data else "error_response" if "error_response" in data else None
    if name is None:
        raise ValueError(f"the answer has no {node}")
    match = re.search(rf'"{re.escape(name)}"\s*:\s*', body)
    if match is None:
        raise ValueError(f"the answer has no {name} key")
    value, end = json.JSONDecoder().raw_decode(body, match.end())
    if value != data[name] or not isinstance(value, dict):
        raise ValueError(f"{name} is not an object at the top level")
    signature = data.get("sign")
    return value, body[match.end():end], signature if isinstance(signature, str) else None


def parse_time(text: object, field: str) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"{field} is missing")
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=CHINA_TZ)
    except ValueError:
        raise ValueError(f"{field} {text!r} is not a time like 2024-05-01 09:30:00") from None


def order_state(trade_status: str, *, was_paid: bool) -> OrderState:
    """Alipay's trade_status in ``base`` terms; TRADE_CLOSED after payment means all the money went back."""
    if trade_status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
        return "paid"
    if trade_status == "WAIT_BUYER_PAY":
        return "paying"
    if trade_status == "TRADE_CLOSED":
        return "reversed" if was_paid else "failed"
    raise ValueError(f"unknown trade_status {trade_status!r}")


def write_bill(merchant_id: str, day: date, rows: list[list[str]], summary: tuple[int, int]) -> bytes:
    """The bill zip: a detail CSV (GBK, ``#`` comment lines around the table) and a summary CSV."""
    stamp = f"{day:%Y%m%d}"

    def csv_text(lines: list[str], table: list[list[str]], tail: list[str]) -> bytes:
        out = io.StringIO()
        for line in lines:
            out.write(line + "\r\n")
        csv.writer(out, lineterminator="\r\n").writerows(table)
        for line in tail:
            out.write(line + "\r\n")
        return out.getvalue().encode(BILL_ENCODING, errors="replace")  # a name outside GBK becomes "?"

    rule = "-" * 41
    head = ["#支付宝业务明细查询", f"#账号：[{merchant_id}]",
            f"#起始日期：[{day:%Y年%m月%d日} 00:00:00]   终止日期：[{day:%Y年%m月%d日} 23:59:59]",
            f"#{rule}业务明细列表{rule}"]
    tail = [f"#{rule}业务明细列表结束{rule}",
            f"#交易合计：{summary[0]}笔，退款合计：{summary[1]}笔", f"#导出时间：[{china_now():%Y年%m月%d日 %H:%M:%S}]"]
    detail = csv_text(head, [list(BILL_COLUMNS), *rows], tail)
    totals = csv_text(["#支付宝业务汇总查询", f"#账号：[{merchant_id}]"],
                      [["交易笔数", "退款笔数"], [str(summary[0]), str(summary[1])]], [])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{merchant_id}{stamp}_业务明细.csv", detail)
        archive.writestr(f"{merchant_id}{stamp}_业务明细(汇总).csv", totals)
    return buffer.getvalue()


def read_bill(data: bytes) -> list[BillRow]:
    """The rows of a bill zip, checked against the counts it states; ``ValueError`` if anything is off."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = [n for n in archive.namelist() if n.endswith("_业务明细.csv")]
        if len(names) != 1:
            raise ValueError(f"the bill zip holds {len(names)} detail files, expected 1")
        text = archive.read(names[0]).decode(BILL_ENCODING)
    except (zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ValueError(f"the bill is not a readable zip of GBK CSV: {exc}") from None
    table = [line for line in text.splitlines() if line and not line.startswith("#")]
    totals = re.search(r"#交易合计：(\d+)笔，退款合计：(\d+)笔", text)
    if not table or totals is None:
        raise ValueError("the bill has no table or no totals line")
    records = list(csv.reader(table))
    if tuple(records[0]) != BILL_COLUMNS:
        raise ValueError(f"unexpected bill columns: {records[0][:4]}…")
    col = {name: i for i, name in enumerate(BILL_COLUMNS)}
    rows = []
    for n, record in enumerate(records[1:], start=2):
        if len(record) != len(BILL_COLUMNS):
            raise ValueError(f"bill line {n} has {len(record)} fields, expected {len(BILL_COLUMNS)}")
        kind = {BILL_PAY: "pay", BILL_REFUND: "refund"}.get(record[col["业务类型"]])
        if kind is None:
            raise ValueError(f"bill line {n}: unknown 业务类型 {record[col['业务类型']]!r}")
        amount = abs(from_yuan(record[col["订单金额（元）"]], f"bill line {n} 订单金额"))
        rows.append(BillRow(kind=kind, out_trade_no=record[col["商户订单号"]], transaction_id=record[col["支付宝交易号"]],
                            amount=amount, at=parse_time(record[col["完成时间"]], f"bill line {n} 完成时间"),
                            out_refund_no=(record[col["退款批次号/请求号"]] or None) if kind == "refund" else None))
    counted = (sum(r.kind == "pay" for r in rows), sum(r.kind == "refund" for r in rows))
    if counted != (int(totals[1]), int(totals[2])):
        raise ValueError(f"the bill states {totals[1]} payments and {totals[2]} refunds but lists {counted}")
    return rows


# ---- the adapter ----------------------------------------------------------------------------------

class AliPay:
    """``base.Channel`` over Alipay's openapi gateway (what the settlement saga calls)."""

    name = "alipay"

    def __init__(self, base_url: str, credentials: Credentials, *, notify_url: str, timeout: float | None = None):
        if credentials.channel != self.name:
            raise ValueError(f"credentials are for {credentials.channel!r}, not alipay")
        self.credentials = credentials
        self.notify_url = notify_url
        self.http: httpx.Client = remote.client(base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AliPay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls

    def _call(self, method: str, biz: Mapping[str, Any], *, notify: bool = False) -> dict:
        """One signed gateway call; the verified response node, or ``OutcomeUnknown``/``Refused``."""
        params = {"app_id": self.credentials.merchant_id, "method": method, "format": "JSON", "charset": "utf-8",
                  "sign_type": "RSA2", "timestamp": china_now().strftime(TIME_FORMAT), "version": "1.0",
                  "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":"))}
        if notify:
            params["notify_url"] = self.notify_url
        params["sign"] = sign(self.credentials.merchant_key, canonical(params))
        response = remote.send(self.name, self.http, "POST", GATEWAY, data=params)
        if response.status_code != 200:
            raise remote.OutcomeUnknown(self.name, f"{method} answered HTTP {response.status_code}")
        try:
            node, text, signature = split_answer(response.text, response_node(method))
        except ValueError as exc:
            raise remote.OutcomeUnknown(self.name, f"{method}: unreadable answer ({exc})") from None
        if not verify(self.credentials.channel_public, text.encode("utf-8"), signature):
            raise remote.OutcomeUnknown(self.name, f"{method}: the answer's signature does not verify")
        code = node.get("code")
        sub_code = str(node.get("sub_code") or "")
        if code == UNKNOWN or sub_code in UNKNOWN_SUB_CODES:
            raise remote.OutcomeUnknown(self.name, f"{method}: {code} {sub_code} {node.get('sub_msg', '')}".strip())
        if code not in (SUCCESS, WAITING):
            raise remote.Refused(self.name, sub_code or str(code), str(node.get("sub_msg") or node.get("msg") or ""))
        return node

    def _read(self, method: str, what):
        """Decode a verified success answer; a malformed one is as good as none."""
        try:
            return what()
        except (ValueError, KeyError, TypeError) as exc:
            raise remote.OutcomeUnknown(self.name, f"{method}: malformed answer ({exc})") from None

    def pay(self, *, out_trade_no: str, amount: int, auth_code: str, description: str) -> Order:
        _check_number(out_trade_no, "out_trade_no")
        biz = {"out_trade_no": out_trade_no, "scene": "bar_code", "auth_code": auth_code,
               "subject": description[:256], "total_amount": to_yuan(amount)}
        node = self._call("alipay.trade.pay", biz, notify=True)
        if node["code"] == WAITING:
            return Order(out_trade_no=out_trade_no, state="paying", amount=amount,
                         transaction_id=node.get("trade_no"), payer=node.get("buyer_user_id"))
        return self._read("alipay.trade.pay", lambda: Order(
            out_trade_no=node["out_trade_no"], state="paid", amount=from_yuan(node["total_amount"], "total_amount"),
            transaction_id=node["trade_no"], payer=node.get("buyer_user_id"),
            paid_at=parse_time(node["gmt_payment"], "gmt_payment")))

    def query(self, *, out_trade_no: str) -> Order:
        _check_number(out_trade_no, "out_trade_no")
        try:
            node = self._call("alipay.trade.query", {"out_trade_no": out_trade_no})
        except remote.Refused as exc:
            if exc.code == "ACQ.TRADE_NOT_EXIST":
                return Order(out_trade_no=out_trade_no, state="not_found")
            raise
        return self._read("alipay.trade.query", lambda: _order_from(node))

    def reverse(self, *, out_trade_no: str) -> Order:
        _check_number(out_trade_no, "out_trade_no")
        node = self._call("alipay.trade.cancel", {"out_trade_no": out_trade_no})
        action = node.get("action")
        if action not in ("close", "refund"):
            raise remote.OutcomeUnknown(self.name, f"alipay.trade.cancel: unknown action {action!r}")
        return Order(out_trade_no=out_trade_no, state="reversed" if action == "refund" else "failed",
                     transaction_id=node.get("trade_no") or None)

    def refund(self, *, out_trade_no: str, out_refund_no: str, amount: int, total: int) -> Refund:
        _check_number(out_trade_no, "out_trade_no")
        _check_number(out_refund_no, "out_refund_no")
        if isinstance(total, bool) or not isinstance(total, int) or not 0 < amount <= total:
            raise ValueError(f"refund amount {amount!r} must be between 1 fen and the order total {total!r}")
        biz = {"out_trade_no": out_trade_no, "out_request_no": out_refund_no, "refund_amount": to_yuan(amount)}
        self._call("alipay.trade.refund", biz)
        return Refund(out_refund_no=out_refund_no, out_trade_no=out_trade_no, state="succeeded", amount=amount)

    def query_refund(self, *, out_refund_no: str) -> Refund:
        _check_number(out_refund_no, "out_refund_no")
        node = self._call("alipay.trade.fastpay.refund.query",
                          {"out_request_no": out_refund_no, "query_options": ["gmt_refund_pay"]})
        if not node.get("refund_amount"):  # Alipay answers 10000 with no refund fields for an unknown refund
            return Refund(out_refund_no=out_refund_no, out_trade_no=str(node.get("out_trade_no") or ""),
                          state="not_found")
        status = node.get("refund_status", "REFUND_SUCCESS")
        return self._read("alipay.trade.fastpay.refund.query", lambda: Refund(
            out_refund_no=out_refund_no, out_trade_no=node["out_trade_no"],
            state="succeeded" if status == "REFUND_SUCCESS" else "processing",
            amount=from_yuan(node["refund_amount"], "refund_amount")))

    def bill(self, *, day: date) -> list[BillRow]:
        method = "alipay.data.dataservice.bill.downloadurl.query"
        node = self._call(method, {"bill_type": "trade", "bill_date": f"{day:%Y-%m-%d}"})
        url = node.get("bill_download_url")
        if not isinstance(url, str) or not url:
            raise remote.OutcomeUnknown(self.name, f"{method}: no bill_download_url")
        response = remote.send(self.name, self.http, "GET", url)
        if response.status_code != 200:
            raise remote.OutcomeUnknown(self.name, f"bill download answered HTTP {response.status_code}")
        try:
            return read_bill(response.content)
        except ValueError as exc:
            raise remote.OutcomeUnknown(self.name, f"bill of {day}: {exc}") from None

    # -- notifications

    def read_notification(self, headers: dict[str, str], body: bytes) -> Notification:
        params = parse_form(body)
        if params is None:
            raise remote.Refused(self.name, "INVALID_NOTIFICATION", "the body is not a UTF-8 form")
        if params.get("sign_type") != "RSA2" or not verify(
                self.credentials.channel_public, canonical(params, leave_out=("sign", "sign_type")), params.get("sign")):
            raise remote.Refused(self.name, "SIGN_ERROR", "the notification's signature does not verify")
        if params.get("app_id") != self.credentials.merchant_id:
            raise remote.Refused(self.name, "APP_ID_MISMATCH", f"notification for app_id {params.get('app_id')!r}")
        try:
            order = _order_from(params)
            notify_id = params["notify_id"]
        except (ValueError, KeyError) as exc:
            raise remote.Refused(self.name, "INVALID_NOTIFICATION", str(exc)) from None
        return Notification(order=order, notification_id=notify_id)

    def notification_reply(self, ok: bool) -> tuple[int, bytes, str]:
        """Alipay stops retrying once the body is exactly ``success``."""
        return 200, b"success" if ok else b"fail", "text/plain"


def parse_form(body: bytes) -> dict[str, str] | None:
    """A form body as a dict (the last value of a repeated name wins); ``None`` if unreadable."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                              errors="strict"))
    except (UnicodeDecodeError, ValueError):
        return None


def _order_from(fields: Mapping[str, Any]) -> Order:
    """An order from a query answer or a notification (both use trade_status, total_amount, trade_no…)."""
    paid_at = fields.get("gmt_payment") or fields.get("send_pay_date")
    state = order_state(str(fields.get("trade_status")), was_paid=bool(paid_at))
    return Order(out_trade_no=fields["out_trade_no"], state=state,
                 amount=from_yuan(fields["total_amount"], "total_amount"), transaction_id=fields.get("trade_no"),
                 payer=fields.get("buyer_user_id") or fields.get("buyer_id") or None,
                 paid_at=parse_time(paid_at, "gmt_payment") if paid_at else None)


def _check_number(value: str, field: str) -> None:
    if not isinstance(value, str) or not NUMBER.fullmatch(value):
        raise ValueError(f"{field} {value!r} must be 1-64 letters, digits or underscores (Alipay's rule)")
