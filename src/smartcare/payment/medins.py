"""The platform's client for the city's medical-insurance centre (医保信息平台), synchronous.

It speaks the national platform's conventions: one endpoint, a message envelope (``infno`` names the
transaction, ``msgid`` numbers the message) and the gateway's ``x-tif-*`` signature headers. Amounts
are integer fen on this side and yuan with two decimals, as JSON numbers, on the wire; JSON is read
with ``Decimal`` so no float ever holds money.

How a call ends (see ``remote``): an answer; ``Refused`` when the centre says ``infcode`` -1 (or the
gateway rejects the call with a 4xx — nothing was done); ``OutcomeUnknown`` on timeout, transport
failure, 5xx or a 200 whose body is not a valid envelope. A 2207 whose outcome is unknown is resolved
with 2601 (冲正) of its ``msgid``, never by settling again under a new ``msgid``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Literal, Self

from smartcare.payment import remote
from smartcare.payment.insurance import Item
from smartcare.platform.clock import china_now
from smartcare.platform.money import yuan

PATH = "/fsi/api/rsfComIfsService/callService"
PARTY = "medins"

#: our insurance types ↔ the national 险种 codes
INSUTYPE_CODES = {"employee": "310", "resident": "390"}
INSUTYPES = {code: name for name, code in INSUTYPE_CODES.items()}
#: item categories 甲/乙/丙 ↔ 收费项目等级 chrgitm_lv
CHRGITM_LV = {"甲": "01", "乙": "02", "丙": "03"}
CATEGORIES = {code: name for name, code in CHRGITM_LV.items()}

MSGID_MAX = 30
_FACILITY_PART_MAX = MSGID_MAX - 14 - 4  # yyyyMMddHHmmss + 4-digit sequence


# -- wire format shared with the sandbox ---------------------------------------------------------


def dumps(value: object) -> str:
    """JSON text in which ``Decimal`` amounts are written as numbers exactly as they are (``12.30``).

    ``json.dumps`` cannot write a Decimal as a number, and going through float would lose the fen.
    """
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite amount")
        return format(value, "f")
    if value is None or isinstance(value, (bool, int, str)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        raise TypeError("floats are not written on the medical-insurance wire; use int fen or Decimal")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


def loads(text: str | bytes) -> object:
    """JSON with every non-integer number read as an exact ``Decimal``; NaN and Infinity refused."""
    return json.loads(text, parse_float=Decimal, parse_constant=_no_constant)


def signature(timestamp: str, pass_token: str, nonce: str) -> str:
    """The gateway's ``x-tif-signature``: hex SHA-256 of timestamp + pass token + nonce + timestamp."""
    return hashlib.sha256(f"{timestamp}{pass_token}{nonce}{timestamp}".encode()).hexdigest()


def gateway_headers(*, paasid: str, pass_token: str, now: float | None = None) -> dict[str, str]:
    """Signed ``x-tif-*`` headers for one request (a fresh nonce each time)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    return {"x-tif-paasid": paasid, "x-tif-timestamp": timestamp, "x-tif-nonce": nonce,
            "x-tif-signature": signature(timestamp, pass_token, nonce), "content-type": "application/json"}


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CentreSettlement:
    """The centre's split of one bill (2206 or 2207); amounts in fen, ``balc`` the account balance after."""

    msgid: str
    setl_id: str | None
    medfee_sumamt: int
    fulamt_ownpay_amt: int
    overlmt_selfpay: int
    preselfpay_amt: int
    inscp_scp_amt: int
    act_pay_dedc: int
    hifp_pay: int
    acct_pay: int
    psn_cash_pay: int
    balc: int


@dataclass(frozen=True)
class TotalsResult:
    """3201: whether the day's totals agree, and the centre's own figures (fen) to show when they do not."""

    balanced: bool
    description: str
    centre_medfee_sumamt: int
    centre_fund_pay_sumamt: int
    centre_acct_pay: int
    centre_setl_cnt: int


@dataclass(frozen=True)
class DetailIn:
    """One of the hospital's settlements for 3202; ``setl_id`` may be None when the reply was lost."""

    msgid: str
    setl_id: str | None
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    reversed: bool = False


MismatchReason = Literal["missing_at_centre", "missing_at_hospital", "amounts_differ", "state_differs"]
_REASONS: dict[str, MismatchReason] = {"1": "missing_at_hospital", "2": "missing_at_centre",
                                       "3": "amounts_differ", "4": "state_differs"}


@dataclass(frozen=True)
class DetailMismatch:
    """One settlement the two sides see differently (3202)."""

    setl_id: str | None
    msgid: str | None
    reason: MismatchReason
    description: str


_SETTLEMENT_AMOUNTS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
                       "act_pay_dedc", "hifp_pay", "acct_pay", "psn_cash_pay", "balc")


class _BadReply(Exception):
    pass


def _fen(value: object, where: str) -> int:
    """Yuan from a reply, to fen; anything else means the reply cannot be trusted."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _BadReply(f"{where} is not a number")
    fen = Decimal(value) * 100
    if not fen.is_finite() or fen != fen.to_integral_value():
        raise _BadReply(f"{where} is not whole fen")
    return int(fen)


def _obj(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise _BadReply(f"{where} is not an object")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _BadReply(f"{where} is missing")
    return value


# -- the client --------------------------------------------------------------------------------------


class MedicalInsuranceCentre:
    """One facility's connection to the centre. ``paasid`` defaults to the facility code."""

    party = PARTY

    def __init__(self, base_url: str, *, fixmedins_code: str, fixmedins_name: str = "",
                 pass_token: str = "sandbox-passtoken", timeout: float | None = None,
                 admdvs: str = "500000", paasid: str | None = None, opter: str = "smartcare",
                 opter_name: str = "SmartCare", sign_no: str = ""):
        if not fixmedins_code:
            raise ValueError("fixmedins_code is required: it names the facility to the centre")
        self.fixmedins_code = fixmedins_code
        self.fixmedins_name = fixmedins_name
        self.pass_token = pass_token
        self.paasid = paasid or fixmedins_code
        self.admdvs = admdvs
        self.opter = opter
        self.opter_name = opter_name
        self.sign_no = sign_no
        self.http = remote.client(base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_msgid(self, seq: int) -> str:
        """fixmedins_code + China time yyyyMMddHHmmss + ``seq`` mod 10000 as 4 digits (≤ 30 characters).

        A facility code longer than 12 characters keeps its last 12 (the distinguishing end), so the
        message number fits the national 30. Unique as long as ``seq`` does not repeat within a second.
        """
        facility = self.fixmedins_code[-_FACILITY_PART_MAX:]
        return f"{facility}{china_now():%Y%m%d%H%M%S}{seq % 10_000:04d}"

    # -- transactions

    def presettle(self, *, msgid: str, psn_no: str, insutype: str, mdtrt_id: str, hospital_level: int,
                  items: list[Item], use_account: bool = True) -> CentreSettlement:
        """2206 预结算: the split the centre would make now; it books nothing."""
        return self._settlement("2206", msgid, psn_no, insutype, mdtrt_id, hospital_level, items, use_account)

    def settle(self, *, msgid: str, psn_no: str, insutype: str, mdtrt_id: str, hospital_level: int,
               items: list[Item], use_account: bool = True) -> CentreSettlement:
        """2207 结算: the centre pays its part; idempotent by ``msgid`` (the same msgid is the same settlement)."""
        return self._settlement("2207", msgid, psn_no, insutype, mdtrt_id, hospital_level, items, use_account)

    def reverse_settlement(self, *, msgid: str, setl_id: str, mdtrt_id: str, psn_no: str) -> None:
        """2208 结算撤销: undo a settlement whose ``setl_id`` we know; idempotent."""
        self.call("2208", msgid, {"data": {"setl_id": setl_id, "mdtrt_id": mdtrt_id, "psn_no": psn_no}})

    def reverse_message(self, *, msgid: str, omsgid: str, oinfno: str, psn_no: str) -> None:
        """2601 冲正: undo message ``omsgid`` whatever became of it; if the centre never saw it, it will
        refuse it should it arrive later. Idempotent."""
        self.call("2601", msgid, {"data": {"psn_no": psn_no, "omsgid": omsgid, "oinfno": oinfno}})

    def reconcile_totals(self, *, msgid: str, day: date, medfee_sumamt: int, fund_pay_sumamt: int, acct_pay: int,
                         setl_cnt: int, insutype: str | None = None, clr_type: str = "11",
                         setl_optins: str | None = None) -> TotalsResult:
        """3201 对总账 of one day of this facility (``insutype`` None: both insurance types).

        Count settlements on the day they were made and reversals on the day they were reversed (a
        same-day reversal cancels out), as the centre does.
        """
        data: dict = {"insutype": INSUTYPE_CODES[insutype] if insutype else "", "clr_type": clr_type,
                      "setl_optins": setl_optins or self.admdvs, "stmt_begndate": day.isoformat(),
                      "stmt_enddate": day.isoformat(), "medfee_sumamt": yuan(medfee_sumamt),
                      "fund_pay_sumamt": yuan(fund_pay_sumamt), "acct_pay": yuan(acct_pay),
                      "fixmedins_setl_cnt": setl_cnt}
        output = self.call("3201", msgid, {"data": data})
        try:
            info = _obj(output.get("stmtinfo"), "output.stmtinfo")
            rslt = info.get("stmt_rslt")
            if rslt not in ("0", "1"):
                raise _BadReply("output.stmtinfo.stmt_rslt is not 0 or 1")
            count = info.get("centre_setl_cnt")
            if isinstance(count, bool) or not isinstance(count, int):
                raise _BadReply("output.stmtinfo.centre_setl_cnt is not a whole number")
            return TotalsResult(
                balanced=rslt == "0", description=str(info.get("stmt_rslt_dscr") or ""),
                centre_medfee_sumamt=_fen(info.get("centre_medfee_sumamt"), "output.stmtinfo.centre_medfee_sumamt"),
                centre_fund_pay_sumamt=_fen(info.get("centre_fund_pay_sumamt"), "output.stmtinfo.centre_fund_pay_sumamt"),
                centre_acct_pay=_fen(info.get("centre_acct_pay"), "output.stmtinfo.centre_acct_pay"),
                centre_setl_cnt=count)
        except _BadReply as exc:
            raise remote.OutcomeUnknown(PARTY, f"3201 reply unreadable: {exc}") from None

    def reconcile_details(self, *, msgid: str, day: date, details: list[DetailIn],
                          insutype: str | None = None, clr_type: str = "11",
                          setl_optins: str | None = None) -> list[DetailMismatch]:
        """3202 对明细账 of one day: the settlements the centre and we see differently (empty: all agree)."""
        data = {"insutype": INSUTYPE_CODES[insutype] if insutype else "", "clr_type": clr_type,
                "setl_optins": setl_optins or self.admdvs, "stmt_begndate": day.isoformat(),
                "stmt_enddate": day.isoformat()}
        rows = [{"setl_id": d.setl_id or "", "msgid": d.msgid, "medfee_sumamt": yuan(d.medfee_sumamt),
                 "fund_pay_sumamt": yuan(d.fund_pay_sumamt), "acct_pay": yuan(d.acct_pay),
                 "refd_setl_flag": "1" if d.reversed else "0"} for d in details]
        output = self.call("3202", msgid, {"data": data, "details": rows})
        mismatches = []
        try:
            found = output.get("details")
            if not isinstance(found, list):
                raise _BadReply("output.details is not a list")
            for n, row in enumerate(found):
                row = _obj(row, f"output.details[{n}]")
                reason = _REASONS.get(row.get("stmt_rslt"))  # type: ignore[arg-type]
                if reason is None:
                    raise _BadReply(f"output.details[{n}].stmt_rslt {row.get('stmt_rslt')!r} is not 1–4")
                mismatches.append(DetailMismatch(setl_id=row.get("setl_id") or None, msgid=row.get("msgid") or None,
                                                 reason=reason, description=str(row.get("stmt_rslt_dscr") or "")))
        except _BadReply as exc:
            raise remote.OutcomeUnknown(PARTY, f"3202 reply unreadable: {exc}") from None
        return mismatches

    # -- the envelope

    def envelope(self, infno: str, msgid: str, input: dict) -> dict:
        """The national message envelope around ``input`` (no CA signature: ``cainfo`` empty)."""
        if not msgid or len(msgid) > MSGID_MAX:
            raise ValueError(f"msgid {msgid!r} must be 1–{MSGID_MAX} characters")
        return {"infno": infno, "msgid": msgid, "mdtrtarea_admvs": self.admdvs, "insuplc_admdvs": self.admdvs,
                "recer_sys_code": "SMARTCARE", "dev_no": "", "dev_safe_info": "", "cainfo": "", "signtype": "",
                "infver": "V1.0", "opter_type": "1", "opter": self.opter, "opter_name": self.opter_name,
                "inf_time": f"{china_now():%Y-%m-%d %H:%M:%S}", "fixmedins_code": self.fixmedins_code,
                "fixmedins_name": self.fixmedins_name, "sign_no": self.sign_no, "input": input}

    def call(self, infno: str, msgid: str, input: dict) -> dict:
        """Send one message and return its ``output``; the raw door for transactions not wrapped above.

        ``input`` may hold ``Decimal`` yuan amounts (written as JSON numbers) but no floats.
        """
        body = dumps(self.envelope(infno, msgid, input))
        headers = gateway_headers(paasid=self.paasid, pass_token=self.pass_token)
        response = remote.send(PARTY, self.http, "POST", PATH, content=body.encode(), headers=headers)
        if response.status_code != 200:
            # the gateway turned the message away before the centre saw it: nothing was done
            try:
                message = str(_obj(loads(response.content), "body").get("message") or response.text)
            except (ValueError, _BadReply):
                message = response.text[:200]
            raise remote.Refused(PARTY, str(response.status_code), message)
        try:
            reply = _obj(loads(response.content), "reply")
        except ValueError as exc:
            raise remote.OutcomeUnknown(PARTY, f"{infno} reply is not JSON: {exc}") from None
        except _BadReply:
            raise remote.OutcomeUnknown(PARTY, f"{infno} reply is not a JSON object") from None
        code = reply.get("infcode")
        if code in (-1, "-1"):
            raise remote.Refused(PARTY, "-1", str(reply.get("err_msg") or "refused without a message"))
        if code not in (0, "0"):
            raise remote.OutcomeUnknown(PARTY, f"{infno} reply has infcode {code!r}, neither 0 nor -1")
        output = reply.get("output")
        if not isinstance(output, dict):
            raise remote.OutcomeUnknown(PARTY, f"{infno} reply says success but has no output object")
        return output

    def _settlement(self, infno: str, msgid: str, psn_no: str, insutype: str, mdtrt_id: str, hospital_level: int,
                    items: list[Item], use_account: bool) -> CentreSettlement:
        if insutype not in INSUTYPE_CODES:
            raise ValueError(f"insutype must be one of {sorted(INSUTYPE_CODES)}, not {insutype!r}")
        if not items:
            raise ValueError("a settlement needs at least one item")
        feedetail = []
        for n, item in enumerate(items, start=1):
            if item.category not in CHRGITM_LV:
                raise ValueError(f"items[{n - 1}].category must be 甲, 乙 or 丙, not {item.category!r}")
            row = {"feedetl_sn": f"{n:04d}", "med_list_codg": item.code, "medins_list_name": item.name,
                   "chrgitm_lv": CHRGITM_LV[item.category], "pric": yuan(item.unit_price), "cnt": item.quantity,
                   "det_item_fee_sumamt": yuan(item.amount)}
            if item.price_cap is not None:
                row["pric_uplmt_amt"] = yuan(item.price_cap)
            feedetail.append(row)
        data = {"psn_no": psn_no, "insutype": INSUTYPE_CODES[insutype], "mdtrt_id": mdtrt_id,
                "medfee_sumamt": yuan(sum(item.amount for item in items)), "hosp_lv": hospital_level,
                "acct_used_flag": "1" if use_account else "0"}
        output = self.call(infno, msgid, {"data": data, "feedetail": feedetail})
        try:
            info = _obj(output.get("setlinfo"), "output.setlinfo")
            amounts = {name: _fen(info.get(name), f"output.setlinfo.{name}") for name in _SETTLEMENT_AMOUNTS}
            setl_id = _text(info.get("setl_id"), "output.setlinfo.setl_id") if infno == "2207" else None
        except _BadReply as exc:
            raise remote.OutcomeUnknown(PARTY, f"{infno} reply unreadable: {exc}") from None
        return CentreSettlement(msgid=msgid, setl_id=setl_id, **amounts)
