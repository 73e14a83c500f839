"""UnionPay (银联全渠道, gateway version 5.1.0): payment by the payer's UnionPay QR payment code.

The wire format, shared with the sandbox (``sandbox/unionpay.py``):

- requests are form POSTs with version 5.1.0, encoding UTF-8, signMethod 01, certId, txnType/txnSubType,
  bizType 000000, channelType 08, accessType 0, merId, orderId, txnTime ``yyyyMMddHHmmss`` (China time);
  amounts are ``txnAmt`` in fen, currencyCode 156;
- ``signature`` = base64(SHA256withRSA(sha256-hex of the fields sorted by name as ``k=v`` joined by
  ``&``, without ``signature``)); answers and notifications are signed the same way by UnionPay;
- ``respCode`` 00 is success, 03/04/05 mean "not known yet, query", anything else is a refusal named by
  its code with ``respMsg``; a query answers for the transaction in ``origRespCode``;
- a consume answered 00 is *accepted*: its outcome (paid, or the payer still confirming) is read back
  with ``queryTrans.do``, as UnionPay asks of back-end transactions;
- the daily file comes from ``fileTransRequest.do`` (txnType 76) as ``fileContent``: base64 of a
  deflated zip holding a fixed-width text file (layout in ``FILE_FIELDS``).

Simplifications (both sides agree on them): the real gateway identifies a transaction by merId + orderId
+ txnTime and wants the consume's ``origQryId`` and ``txnAmt`` for a consume undo (txnType 31); the
platform's order numbers are unique for good and ``Channel.reverse`` knows only the number, so here an
undo carries the consume's own orderId, and a query by orderId answers for the latest transaction on that
number (txnType 31 once undone, with ``origQryId`` only if money had been taken). Refunds (txnType 04)
are as real: their own orderId (the refund number) and the consume's ``origQryId``; the order's number
rides in ``reqReserved``, which UnionPay echoes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import zipfile
import zlib
from collections.abc import Mapping
from datetime import date, datetime
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

BACK_TRANS = "/gateway/api/backTransReq.do"
QUERY_TRANS = "/gateway/api/queryTrans.do"
FILE_TRANS = "/gateway/api/fileTransRequest.do"
TIME_FORMAT = "%Y%m%d%H%M%S"

CONSUME, UNDO, REFUND, QUERY, FILE = "01", "31", "04", "00", "76"
QR_CONSUME_SUBTYPE = "06"
SUCCESS = "00"
UNKNOWN_CODES = frozenset({"03", "04", "05"})
NOT_FOUND = "34"

#: UnionPay's orderId: 8-40 letters and digits ("-" and "_" are not allowed).
ORDER_ID = re.compile(r"[A-Za-z0-9]{8,40}")
_FEN = re.compile(r"[0-9]{1,12}")

#: The daily file's fixed-width layout: (field, width), fields separated by one space, lines by CRLF;
#: the last line is ``TOTAL`` with the count and the sums of consumes and of money returned, in fen.
FILE_FIELDS = (("txnType", 2), ("orderId", 40), ("queryId", 32), ("origOrderId", 40), ("origQryId", 32),
               ("txnTime", 14), ("txnAmt", 12))
FILE_ENCODING = "utf-8"


# ---- wire format ----------------------------------------------------------------------------------

def to_fen_text(fen: int) -> str:
    """``txnAmt``: fen as digits, 1 → "1" (0.01 yuan)."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen <= 0:
        raise ValueError(f"amount must be a positive int number of fen, got {fen!r}")
    return str(fen)


def from_fen_text(text: object, field: str) -> int:
    if not isinstance(text, str) or not _FEN.fullmatch(text):
        raise ValueError(f"{field} {text!r} is not an amount in fen (digits only)")
    return int(text)


def digest(fields: Mapping[str, str]) -> bytes:
    """What is signed: the sha256 hex of ``k=v`` sorted by name and joined by ``&``, without ``signature``."""
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "signature")
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")


def sign(fields: dict[str, str], key_pem: bytes) -> dict[str, str]:
    """``fields`` with their ``signature`` added."""
    signature = base64.b64encode(sign_rsa_sha256(key_pem, digest(fields))).decode("ascii")
    return {**fields, "signature": signature}


def verify(fields: Mapping[str, str], public_pem: bytes) -> bool:
    try:
        raw = base64.b64decode(fields.get("signature") or "", validate=True)
    except ValueError:
        return False
    return bool(raw) and verify_rsa_sha256(public_pem, digest(fields), raw)


def parse_form(body: bytes) -> dict[str, str] | None:
    """A form body as a dict; ``None`` if it is not UTF-8 ``k=v&…``."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)))
    except (UnicodeDecodeError, ValueError):
        return None


def parse_time(text: object, field: str) -> datetime:
    if not isinstance(text, str):
        raise ValueError(f"{field} is missing")
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=CHINA_TZ)
    except ValueError:
        raise ValueError(f"{field} {text!r} is not a time like 20240501093000") from None


def order_state(fields: Mapping[str, str]) -> OrderState:
    """A transaction's state from a query answer or notification (txnType, origRespCode/respCode)."""
    code = fields.get("origRespCode") or fields.get("respCode")
    txn_type = fields.get("txnType")
    if txn_type == UNDO:
        if code != SUCCESS:
            raise ValueError(f"an undo answered {code!r}")
        return "reversed" if fields.get("origQryId") else "failed"
    if txn_type != CONSUME:
        raise ValueError(f"txnType {txn_type!r} is not a consume or its undo")
    if code == SUCCESS:
        return "paid"
    if code in UNKNOWN_CODES:
        return "paying"
    return "failed"


def pack_file(lines: list[dict[str, str]]) -> bytes:
    """The fixed-width daily file (without compression)."""
    out = []
    for line in lines:
        cells = []
        for name, width in FILE_FIELDS:
            value = line.get(name, "")
            if len(value) > width:
                raise ValueError(f"{name} {value!r} is wider than {width}")
            cells.append(value.zfill(width) if name == "txnAmt" else value.ljust(width))
        out.append(" ".join(cells))
    consumed = sum(int(x["txnAmt"]) for x in lines if x["txnType"] == CONSUME)
    returned = sum(int(x["txnAmt"]) for x in lines if x["txnType"] != CONSUME)
    out.append(f"TOTAL {len(lines):08d} {consumed:016d} {returned:016d}")
    return ("\r\n".join(out) + "\r\n").encode(FILE_ENCODING)


def file_content(name: str, text: bytes) -> str:
    """``fileContent``: the file zipped, deflated and base64-encoded."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, text)
    return base64.b64encode(zlib.compress(buffer.getvalue())).decode("ascii")


def read_file(content: str, day: date) -> list[BillRow]:
    """The rows of ``day`` in a ``fileContent``, checked against its TOTAL line; ``ValueError`` otherwise."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(zlib.decompress(base64.b64decode(content, validate=True))))
        if len(archive.namelist()) != 1:
            raise ValueError(f"the file holds {len(archive.namelist())} entries, expected 1")
        text = archive.read(archive.namelist()[0]).decode(FILE_ENCODING)
    except (zlib.error, zipfile.BadZipFile, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"fileContent is not base64 of a deflated zip: {exc}") from None
    lines = [line for line in text.split("\r\n") if line]
    if not lines or not lines[-1].startswith("TOTAL "):
        raise ValueError("the file has no TOTAL line")
    width = sum(w for _, w in FILE_FIELDS) + len(FILE_FIELDS) - 1
    records = []
    for n, line in enumerate(lines[:-1], start=1):
        if len(line) != width:
            raise ValueError(f"file line {n} is {len(line)} characters wide, expected {width}")
        record, at = {}, 0
        for name, w in FILE_FIELDS:
            record[name] = line[at:at + w].strip()
            at += w + 1
        records.append(record)
    count, consumed, returned = (int(x) for x in lines[-1].split()[1:])
    amounts = [(r["txnType"], from_fen_text(r["txnAmt"].lstrip("0") or "0", f"txnAmt of {r['orderId']}"))
               for r in records]
    if (count, consumed, returned) != (len(records), sum(a for t, a in amounts if t == CONSUME),
                                       sum(a for t, a in amounts if t != CONSUME)):
        raise ValueError("the file's lines do not add up to its TOTAL line")
    rows = []
    for record, (txn_type, amount) in zip(records, amounts, strict=True):
        at = parse_time(record["txnTime"], f"txnTime of {record['orderId']}")
        if at.date() != day:
            continue
        if txn_type == CONSUME:
            rows.append(BillRow(kind="pay", out_trade_no=record["orderId"], transaction_id=record["queryId"],
                                amount=amount, at=at))
        elif txn_type == UNDO:
            rows.append(BillRow(kind="refund", out_trade_no=record["orderId"], transaction_id=record["origQryId"],
                                amount=amount, at=at))
        elif txn_type == REFUND:
            rows.append(BillRow(kind="refund", out_trade_no=record["origOrderId"], transaction_id=record["origQryId"],
                                amount=amount, at=at, out_refund_no=record["orderId"]))
        else:
            raise ValueError(f"unknown txnType {txn_type!r} in the file")
    return rows


# ---- the adapter ----------------------------------------------------------------------------------

class UnionPay:
    """``base.Channel`` over UnionPay's 全渠道 back-end gateway (what the settlement saga calls)."""

    name = "unionpay"

    def __init__(self, base_url: str, credentials: Credentials, *, notify_url: str, timeout: float | None = None):
        if credentials.channel != self.name:
            raise ValueError(f"credentials are for {credentials.channel!r}, not unionpay")
        self.credentials = credentials
        self.notify_url = notify_url
        self.http: httpx.Client = remote.client(base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> UnionPay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls

    def _common(self, txn_type: str, txn_sub_type: str, order_id: str) -> dict[str, str]:
        return {"version": "5.1.0", "encoding": "UTF-8", "signMethod": "01", "certId": self.credentials.merchant_serial,
                "txnType": txn_type, "txnSubType": txn_sub_type, "bizType": "000000", "channelType": "08",
                "accessType": "0", "merId": self.credentials.merchant_id, "orderId": order_id,
                "txnTime": china_now().strftime(TIME_FORMAT)}

    def _call(self, path: str, fields: dict[str, str]) -> dict[str, str]:
        """One signed request; the verified answer, or ``OutcomeUnknown``/``Refused``."""
        response = remote.send(self.name, self.http, "POST", path, data=sign(fields, self.credentials.merchant_key))
        what = f"txnType {fields['txnType']} of {fields.get('orderId') or fields.get('settleDate')}"
        if response.status_code != 200:
            raise remote.OutcomeUnknown(self.name, f"{what} answered HTTP {response.status_code}")
        answer = parse_form(response.content)
        if not answer:
            raise remote.OutcomeUnknown(self.name, f"{what}: the answer is not a form")
        if not verify(answer, self.credentials.channel_public):
            raise remote.OutcomeUnknown(self.name, f"{what}: the answer's signature does not verify")
        code = answer.get("respCode", "")
        if code in UNKNOWN_CODES:
            raise remote.OutcomeUnknown(self.name, f"{what}: respCode {code} {answer.get('respMsg', '')}".strip())
        if code != SUCCESS:
            raise remote.Refused(self.name, code or "??", answer.get("respMsg", ""))
        return answer

    def _query(self, order_id: str) -> dict[str, str] | None:
        """The verified query answer for ``order_id``, ``None`` if UnionPay has no such transaction."""
        try:
            return self._call(QUERY_TRANS, self._common(QUERY, "00", order_id))
        except remote.Refused as exc:
            if exc.code == NOT_FOUND:
                return None
            raise

    def _order(self, order_id: str, answer: Mapping[str, str]) -> Order:
        try:
            state = order_state(answer)
            amount = from_fen_text(answer.get("txnAmt", "0"), "txnAmt")
            # UnionPay states no completion time with a year; the consume's txnTime stands in for it
            paid_at = parse_time(answer["txnTime"], "txnTime") if state == "paid" else None
        except (ValueError, KeyError) as exc:
            raise remote.OutcomeUnknown(self.name, f"order {order_id}: malformed answer ({exc})") from None
        return Order(out_trade_no=order_id, state=state, amount=amount, transaction_id=answer.get("queryId") or None,
                     payer=answer.get("accNo") or None, paid_at=paid_at)

    def pay(self, *, out_trade_no: str, amount: int, auth_code: str, description: str) -> Order:
        """Consume by payment code; an accepted consume is read back to tell paid from still confirming."""
        _check_order_id(out_trade_no, "out_trade_no")
        fields = {**self._common(CONSUME, QR_CONSUME_SUBTYPE, out_trade_no), "txnAmt": to_fen_text(amount),
                  "currencyCode": "156", "qrNo": auth_code, "backUrl": self.notify_url}
        if description:
            fields["orderDesc"] = description[:32]
        self._call(BACK_TRANS, fields)
        answer = self._query(out_trade_no)
        if answer is None:
            raise remote.OutcomeUnknown(self.name, f"consume {out_trade_no} was accepted but the query finds none")
        return self._order(out_trade_no, answer)

    def query(self, *, out_trade_no: str) -> Order:
        _check_order_id(out_trade_no, "out_trade_no")
        answer = self._query(out_trade_no)
        if answer is None:
            return Order(out_trade_no=out_trade_no, state="not_found")
        return self._order(out_trade_no, answer)

    def reverse(self, *, out_trade_no: str) -> Order:
        """Consume undo (txnType 31): closes the number whatever happened, returns the money if it was taken."""
        _check_order_id(out_trade_no, "out_trade_no")
        answer = self._call(BACK_TRANS, self._common(UNDO, "00", out_trade_no))
        return self._order(out_trade_no, {**answer, "txnType": UNDO})

    def refund(self, *, out_trade_no: str, out_refund_no: str, amount: int, total: int) -> Refund:
        _check_order_id(out_trade_no, "out_trade_no")
        _check_order_id(out_refund_no, "out_refund_no")
        if isinstance(total, bool) or not isinstance(total, int) or not 0 < amount <= total:
            raise ValueError(f"refund amount {amount!r} must be between 1 fen and the order total {total!r}")
        original = self._query(out_trade_no)
        if original is None:
            raise remote.Refused(self.name, NOT_FOUND, f"查无此交易: no order {out_trade_no} to refund")
        fields = {**self._common(REFUND, "00", out_refund_no), "txnAmt": to_fen_text(amount), "currencyCode": "156",
                  "origQryId": original.get("queryId", ""),
                  "reqReserved": out_trade_no, "backUrl": self.notify_url}
        answer = self._call(BACK_TRANS, fields)
        return Refund(out_refund_no=out_refund_no, out_trade_no=out_trade_no, state="succeeded", amount=amount,
                      refund_id=answer.get("queryId") or None)

    def query_refund(self, *, out_refund_no: str) -> Refund:
        _check_order_id(out_refund_no, "out_refund_no")
        answer = self._query(out_refund_no)
        if answer is None:
            return Refund(out_refund_no=out_refund_no, out_trade_no="", state="not_found")
        code = answer.get("origRespCode", "")
        try:
            if answer.get("txnType") != REFUND:
                raise ValueError(f"{out_refund_no} is a txnType {answer.get('txnType')!r}, not a refund")
            amount = from_fen_text(answer.get("txnAmt"), "txnAmt")
        except ValueError as exc:
            raise remote.OutcomeUnknown(self.name, f"refund {out_refund_no}: {exc}") from None
        state = "succeeded" if code == SUCCESS else "processing" if code in UNKNOWN_CODES else "failed"
        return Refund(out_refund_no=out_refund_no, out_trade_no=answer.get("reqReserved", ""), state=state,
                      amount=amount, refund_id=answer.get("queryId") or None)

    def bill(self, *, day: date) -> list[BillRow]:
        """The day's file (settleDate MMDD), read and checked against its totals."""
        fields = {"version": "5.1.0", "encoding": "UTF-8", "signMethod": "01", "certId": self.credentials.merchant_serial,
                  "txnType": FILE, "txnSubType": "01", "bizType": "000000", "accessType": "0",
                  "merId": self.credentials.merchant_id, "settleDate": f"{day:%m%d}",
                  "txnTime": china_now().strftime(TIME_FORMAT), "fileType": "00"}
        answer = self._call(FILE_TRANS, fields)
        try:
            return read_file(answer.get("fileContent", ""), day)
        except ValueError as exc:
            raise remote.OutcomeUnknown(self.name, f"file of {day}: {exc}") from None

    # -- notifications

    def read_notification(self, headers: dict[str, str], body: bytes) -> Notification:
        fields = parse_form(body)
        if not fields:
            raise remote.Refused(self.name, "INVALID_NOTIFICATION", "the body is not a UTF-8 form")
        if not verify(fields, self.credentials.channel_public):
            raise remote.Refused(self.name, "SIGN_ERROR", "the notification's signature does not verify")
        if fields.get("merId") != self.credentials.merchant_id:
            raise remote.Refused(self.name, "MER_ID_MISMATCH", f"notification for merId {fields.get('merId')!r}")
        try:
            order_id = fields["orderId"]
            order = self._order(order_id, fields)
            notification_id = f"{fields['queryId']}:{fields['txnType']}"
        except (KeyError, remote.OutcomeUnknown) as exc:
            raise remote.Refused(self.name, "INVALID_NOTIFICATION", str(exc)) from None
        return Notification(order=order, notification_id=notification_id)

    def notification_reply(self, ok: bool) -> tuple[int, bytes, str]:
        """UnionPay stops resending once it gets HTTP 200."""
        return (200, b"ok", "text/plain") if ok else (500, b"fail", "text/plain")


def _check_order_id(value: str, field: str) -> None:
    if not isinstance(value, str) or not ORDER_ID.fullmatch(value):
        raise ValueError(f"{field} {value!r} must be 8-40 letters or digits (UnionPay's orderId rule)")
