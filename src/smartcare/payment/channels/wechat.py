"""WeChat Pay API v3 (微信支付), payment-code flow (付款码支付), as the platform's adapter.

Conventions followed (from the public API v3 documentation):

- JSON bodies; every request carries ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",
  signature="…",timestamp="…",serial_no="…"``, the signature being SHA256withRSA with the merchant key over
  ``METHOD\\nURL-path?query\\ntimestamp\\nnonce\\nbody\\n``;
- every answer (errors too) is signed by WeChat Pay over ``timestamp\\nnonce\\nbody\\n`` in the
  ``Wechatpay-Timestamp/-Nonce/-Signature/-Serial`` headers; an answer whose signature does not verify is
  not trusted (``OutcomeUnknown``), and neither is one more than 5 minutes old or new;
- errors are ``{"code", "message"}`` with a 4xx status (``Refused``); 5xx such as ``SYSTEM_ERROR`` mean
  the outcome is unknown; ``202 USERPAYING`` means the payer is typing a password;
- notifications are signed like answers and carry the transaction encrypted with AEAD_AES_256_GCM under
  the APIv3 key (here ``bytes.fromhex(credentials.secret)``);
- the trade bill is a CSV whose fields each start with a backtick, amounts in yuan, with a summary at the
  end; its SHA1 comes with the download URL and is checked before the file is read.

The wire helpers here are shared with ``sandbox/wechat.py`` so both sides sign the same bytes.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import secrets
import time
from datetime import date, datetime
from urllib.parse import quote

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smartcare.payment import remote
from smartcare.payment.channels.base import BillRow, Notification, Order, OrderState, Refund, RefundState
from smartcare.payment.channels.credentials import Credentials, sign_rsa_sha256, verify_rsa_sha256
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.money import parse_yuan

NAME = "wechat"
AUTH_SCHEMA = "WECHATPAY2-SHA256-RSA2048"
CLOCK_SKEW_SECONDS = 300
DEFAULT_APPID = "wx5c2e0a1d7b3f4e69"

PAY_PATH = "/v3/pay/transactions/codepay"
REFUND_PATH = "/v3/refund/domestic/refunds"
BILL_PATH = "/v3/bill/tradebill"

#: WeChat's trade_state → our order state. CLOSED is an order closed before payment (here: reversed
#: before the payer paid); REVOKED one reversed after payment, its money returned.
TRADE_STATES: dict[str, OrderState] = {
    "SUCCESS": "paid", "REFUND": "paid", "USERPAYING": "paying", "NOTPAY": "paying", "ACCEPT": "paying",
    "PAYERROR": "failed", "CLOSED": "failed", "REVOKED": "reversed",
}
REFUND_STATES: dict[str, RefundState] = {
    "SUCCESS": "succeeded", "PROCESSING": "processing", "CLOSED": "failed", "ABNORMAL": "failed",
}

#: the trade bill's columns (bill_type ALL), then the summary's
BILL_COLUMNS = ("交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识",
                "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号",
                "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包",
                "手续费", "费率", "订单金额", "申请退款金额", "费率备注")
BILL_SUMMARY = ("总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额",
                "申请退款总金额")
BILL_TIME = "%Y-%m-%d %H:%M:%S"


# -- wire format shared with the sandbox ---------------------------------------------------------------

def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What a request signature covers; ``url`` is the path with its query, exactly as sent."""
    return f"{method.upper()}\n{url}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def answer_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """What an answer's or a notification's signature covers."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def new_nonce() -> str:
    return secrets.token_hex(16).upper()


def authorization(credentials: Credentials, method: str, url: str, body: bytes, *,
                  timestamp: str | None = None, nonce: str | None = None) -> str:
    ts = timestamp or str(int(time.time()))
    nonce = nonce or new_nonce()
    signature = base64.b64encode(sign_rsa_sha256(credentials.merchant_key,
                                                 request_message(method, url, ts, nonce, body))).decode()
    return (f'{AUTH_SCHEMA} mchid="{credentials.merchant_id}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{ts}",serial_no="{credentials.merchant_serial}"')


_AUTH_PART = re.compile(r'(\w+)="([^"]*)"')


def parse_authorization(header: str) -> dict[str, str]:
    """The fields of an ``Authorization`` header; ``ValueError`` naming what is missing."""
    schema, _, rest = header.strip().partition(" ")
    if schema != AUTH_SCHEMA:
        raise ValueError(f"Authorization schema must be {AUTH_SCHEMA}, got {schema or 'nothing'!r}")
    fields = dict(_AUTH_PART.findall(rest))
    missing = [k for k in ("mchid", "nonce_str", "signature", "timestamp", "serial_no") if not fields.get(k)]
    if missing:
        raise ValueError(f"Authorization lacks {', '.join(missing)}")
    return fields


def signed_headers(key_pem: bytes, serial: str, body: bytes) -> dict[str, str]:
    """The ``Wechatpay-*`` headers with which WeChat Pay signs an answer or a notification."""
    ts, nonce = str(int(time.time())), new_nonce()
    signature = base64.b64encode(sign_rsa_sha256(key_pem, answer_message(ts, nonce, body))).decode()
    return {"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Signature": signature,
            "Wechatpay-Serial": serial, "Wechatpay-Signature-Type": AUTH_SCHEMA}


def check_signed(public_pem: bytes, serial: str, headers: dict[str, str] | httpx.Headers, body: bytes,
                 *, now: float | None = None) -> str | None:
    """Why the signed ``body`` is not genuine, or ``None`` if it is."""
    lower = {k.lower(): v for k, v in headers.items()}
    ts, nonce = lower.get("wechatpay-timestamp"), lower.get("wechatpay-nonce")
    signature, got_serial = lower.get("wechatpay-signature"), lower.get("wechatpay-serial")
    if not (ts and nonce and signature and got_serial):
        return "Wechatpay-Timestamp/-Nonce/-Signature/-Serial headers missing"
    if got_serial != serial:
        return f"signed with an unknown platform certificate {got_serial}"
    try:
        skew = abs((time.time() if now is None else now) - int(ts))
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        return "malformed Wechatpay-Timestamp or Wechatpay-Signature"
    if skew > CLOCK_SKEW_SECONDS:
        return f"Wechatpay-Timestamp is {int(skew)} s off"
    if not verify_rsa_sha256(public_pem, answer_message(ts, nonce, body), raw):
        return "Wechatpay-Signature does not verify"
    return None


def encrypt_resource(secret_hex: str, plaintext: bytes, *, associated_data: str = "transaction") -> dict:
    """A notification's ``resource``: AEAD_AES_256_GCM, ciphertext with its tag, base64."""
    nonce = secrets.token_hex(6)  # 12 characters, used as the 12-byte GCM nonce like WeChat's
    ciphertext = AESGCM(bytes.fromhex(secret_hex)).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {"algorithm": "AEAD_AES_256_GCM", "ciphertext": base64.b64encode(ciphertext).decode(),
            "associated_data": associated_data, "nonce": nonce, "original_type": associated_data}


def decrypt_resource(secret_hex: str, resource: dict) -> bytes:
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise ValueError(f"unknown resource algorithm {resource.get('algorithm')!r}")
    try:
        return AESGCM(bytes.fromhex(secret_hex)).decrypt(
            str(resource["nonce"]).encode(), base64.b64decode(resource["ciphertext"]),
            str(resource.get("associated_data") or "").encode())
    except (KeyError, ValueError, InvalidTag) as exc:
        raise ValueError(f"resource does not decrypt: {type(exc).__name__}") from None


def order_from_transaction(data: dict) -> Order:
    """Our ``Order`` from a transaction JSON (pay answer, query answer or decrypted notification)."""
    try:
        state = TRADE_STATES[data["trade_state"]]
        amount = data.get("amount") or {}
        total = amount.get("total", 0)
        if isinstance(total, bool) or not isinstance(total, int):
            raise ValueError(f"amount.total must be integer fen, got {total!r}")
        paid_at = datetime.fromisoformat(data["success_time"]) if data.get("success_time") else None
        return Order(out_trade_no=data["out_trade_no"], state=state, amount=total,
                     transaction_id=data.get("transaction_id") or None,
                     payer=(data.get("payer") or {}).get("openid"), paid_at=paid_at)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"transaction is malformed: {exc}") from None


def refund_from_answer(data: dict) -> Refund:
    try:
        return Refund(out_refund_no=data["out_refund_no"], out_trade_no=data["out_trade_no"],
                      state=REFUND_STATES[data["status"]], amount=int(data["amount"]["refund"]),
                      refund_id=data.get("refund_id"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"refund answer is malformed: {exc}") from None


def parse_bill(content: bytes) -> list[BillRow]:
    """Rows of a trade bill file, checked against its own summary (count and totals)."""
    reader = csv.reader(io.StringIO(content.decode("utf-8-sig")))
    rows = [[cell.removeprefix("`") for cell in row] for row in reader if row]
    if not rows or tuple(rows[0]) != BILL_COLUMNS:
        raise ValueError("bill header is not the trade bill's")
    try:
        end = next(i for i, row in enumerate(rows) if row and row[0] == BILL_SUMMARY[0])
    except StopIteration:
        raise ValueError("bill has no summary") from None
    summary = dict(zip(rows[end], rows[end + 1], strict=True)) if end + 1 < len(rows) else {}
    out: list[BillRow] = []
    paid = refunded = 0
    for row in rows[1:end]:
        line = dict(zip(BILL_COLUMNS, row, strict=True))
        at = datetime.strptime(line["交易时间"], BILL_TIME).replace(tzinfo=CHINA_TZ)
        if line["交易状态"] in ("REFUND", "REVOKED"):  # REVOKED: a paid order reversed, its money returned
            amount = parse_yuan(line["退款金额"])
            refunded += amount
            out.append(BillRow(kind="refund", out_trade_no=line["商户订单号"], transaction_id=line["微信订单号"],
                               amount=amount, at=at, out_refund_no=line["商户退款单号"] or None))
        else:
            amount = parse_yuan(line["应结订单金额"])
            paid += amount
            out.append(BillRow(kind="pay", out_trade_no=line["商户订单号"], transaction_id=line["微信订单号"],
                               amount=amount, at=at))
    try:
        counts_ok = int(summary["总交易单数"]) == len(out)
        totals_ok = parse_yuan(summary["应结订单总金额"]) == paid and parse_yuan(summary["退款总金额"]) == refunded
    except (KeyError, ValueError):
        raise ValueError("bill summary is malformed") from None
    if not (counts_ok and totals_ok):
        raise ValueError("bill lines do not add up to its summary")
    return out


# -- the adapter ----------------------------------------------------------------------------------------

class WeChatPay:
    """The platform's WeChat Pay merchant account (``base.Channel``)."""

    name = NAME

    def __init__(self, base_url: str, credentials: Credentials, *, notify_url: str, timeout: float | None = None,
                 appid: str = DEFAULT_APPID):
        if credentials.channel != NAME:
            raise ValueError(f"WeChatPay needs wechat credentials, got {credentials.channel!r}")
        self.credentials = credentials
        self.notify_url = notify_url
        self.appid = appid
        self.http = remote.client(base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> WeChatPay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport

    def _call(self, method: str, url: str, payload: dict | None = None, *, signed_answer: bool = True
              ) -> httpx.Response:
        """One signed request; the answer's signature checked unless it is a bill file."""
        body = b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        sent_url = self.http.build_request(method, url).url
        target = sent_url.raw_path.decode("ascii")
        headers = {"Authorization": authorization(self.credentials, method, target, body),
                   "Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        response = remote.send(self.name, self.http, method, str(sent_url), content=body, headers=headers)
        if signed_answer:
            why = check_signed(self.credentials.channel_public, self.credentials.channel_serial,
                               response.headers, response.content)
            if why:
                raise remote.OutcomeUnknown(self.name, f"answer to {method} {target} not trusted: {why}")
        return response

    def _json(self, response: httpx.Response) -> dict:
        try:
            data = response.json() if response.content else {}
        except ValueError:
            raise remote.OutcomeUnknown(self.name, f"HTTP {response.status_code} answer is not JSON") from None
        if not isinstance(data, dict):
            raise remote.OutcomeUnknown(self.name, f"HTTP {response.status_code} answer is not a JSON object")
        return data

    def _refused(self, response: httpx.Response) -> remote.Refused:
        data = self._json(response)
        return remote.Refused(self.name, str(data.get("code") or f"HTTP_{response.status_code}"),
                              str(data.get("message") or ""))

    def _order(self, data: dict) -> Order:
        try:
            return order_from_transaction(data)
        except ValueError as exc:
            raise remote.OutcomeUnknown(self.name, str(exc)) from None

    # -- Channel

    def pay(self, *, out_trade_no: str, amount: int, auth_code: str, description: str) -> Order:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError(f"amount must be a positive int number of fen, got {amount!r}")
        payload = {"appid": self.appid, "mchid": self.credentials.merchant_id, "description": description,
                   "out_trade_no": out_trade_no, "notify_url": self.notify_url,
                   "amount": {"total": amount, "currency": "CNY"}, "payer": {"auth_code": auth_code},
                   "scene_info": {"store_info": {"out_id": "smartcare"}, "device_ip": "127.0.0.1"}}
        response = self._call("POST", PAY_PATH, payload)
        if response.status_code == 202:  # USERPAYING: the payer is confirming with a password
            return Order(out_trade_no=out_trade_no, state="paying", amount=amount)
        if response.status_code != 200:
            raise self._refused(response)
        return self._order(self._json(response))

    def query(self, *, out_trade_no: str) -> Order:
        url = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}?mchid={self.credentials.merchant_id}"
        response = self._call("GET", url)
        if response.status_code == 404:
            return Order(out_trade_no=out_trade_no, state="not_found")
        if response.status_code != 200:
            raise self._refused(response)
        return self._order(self._json(response))

    def reverse(self, *, out_trade_no: str) -> Order:
        """撤销: the answer names no state, so the final state is read back with a query."""
        url = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/reverse"
        response = self._call("POST", url, {"appid": self.appid, "mchid": self.credentials.merchant_id})
        if response.status_code not in (200, 204):
            raise self._refused(response)
        order = self.query(out_trade_no=out_trade_no)
        if order.state not in ("failed", "reversed"):
            raise remote.OutcomeUnknown(self.name, f"order {out_trade_no} is still {order.state} after reversal")
        return order

    def refund(self, *, out_trade_no: str, out_refund_no: str, amount: int, total: int) -> Refund:
        for name, value in (("amount", amount), ("total", total)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int number of fen, got {value!r}")
        payload = {"out_trade_no": out_trade_no, "out_refund_no": out_refund_no,
                   "amount": {"refund": amount, "total": total, "currency": "CNY"}}
        response = self._call("POST", REFUND_PATH, payload)
        if response.status_code != 200:
            raise self._refused(response)
        try:
            return refund_from_answer(self._json(response))
        except ValueError as exc:
            raise remote.OutcomeUnknown(self.name, str(exc)) from None

    def query_refund(self, *, out_refund_no: str) -> Refund:
        response = self._call("GET", f"{REFUND_PATH}/{quote(out_refund_no, safe='')}")
        if response.status_code == 404:
            return Refund(out_refund_no=out_refund_no, out_trade_no="", state="not_found")
        if response.status_code != 200:
            raise self._refused(response)
        try:
            return refund_from_answer(self._json(response))
        except ValueError as exc:
            raise remote.OutcomeUnknown(self.name, str(exc)) from None

    def bill(self, *, day: date) -> list[BillRow]:
        """The trade bill of ``day``; a day without trades has none (``NO_STATEMENT_EXIST`` → [])."""
        response = self._call("GET", f"{BILL_PATH}?bill_date={day.isoformat()}&bill_type=ALL")
        if response.status_code != 200:
            refused = self._refused(response)
            if refused.code == "NO_STATEMENT_EXIST":
                return []
            raise refused
        data = self._json(response)
        if data.get("hash_type") != "SHA1" or not data.get("hash_value") or not data.get("download_url"):
            raise remote.OutcomeUnknown(self.name, "bill answer lacks download_url, hash_type SHA1 or hash_value")
        download = httpx.URL(data["download_url"])
        file = self._call("GET", download.raw_path.decode("ascii"), signed_answer=False)  # checked by hash
        if file.status_code != 200:
            raise self._refused(file)
        if hashlib.sha1(file.content).hexdigest().lower() != str(data["hash_value"]).lower():
            raise remote.OutcomeUnknown(self.name, f"bill of {day} does not match its SHA1: altered in transit")
        try:
            return parse_bill(file.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise remote.OutcomeUnknown(self.name, f"bill of {day} is unreadable: {exc}") from None

    def read_notification(self, headers: dict[str, str], body: bytes) -> Notification:
        why = check_signed(self.credentials.channel_public, self.credentials.channel_serial, headers, body)
        if why:
            raise remote.Refused(self.name, "SIGN_ERROR", why)
        try:
            envelope = json.loads(body)
            plaintext = decrypt_resource(self.credentials.secret, envelope["resource"])
            order = order_from_transaction(json.loads(plaintext))
            notification_id = str(envelope["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise remote.Refused(self.name, "INVALID_NOTIFICATION", str(exc)) from None
        return Notification(order=order, notification_id=notification_id)

    def notification_reply(self, ok: bool) -> tuple[int, bytes, str]:
        """204 acknowledges; anything else (here 500 with code FAIL) makes WeChat Pay retry."""
        if ok:
            return 204, b"", "application/json"
        return 500, json.dumps({"code": "FAIL", "message": "not processed"}).encode(), "application/json"
