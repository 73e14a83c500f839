"""A stand-in for the city's medical-insurance centre (医保信息平台), for tests and the fault simulation.

It speaks the national platform's conventions — one endpoint, the message envelope, the gateway's
``x-tif-*`` signature — and keeps its own books in memory: each insured person's annual accumulators
and personal-account balance, the settlements, the message numbers reversed by 2601. It is a single
async process and never awaits while changing its books, so no lock is needed.

Transactions: 2206 pre-settlement, 2207 settlement, 2208 settlement reversal, 2601 message reversal
(冲正), 3201 totals and 3202 details reconciliation. Simplifications, each said where it applies:
the bill's items come inline with 2206/2207 (the real centre takes them earlier by 2204); 3202 takes
the hospital's details inline (the real centre takes a file); there is no 9001 sign-in (``sign_no`` is
accepted as sent) and no CA signature (``cainfo`` is ignored); the only fund is the basic pooled fund,
so ``fund_pay_sumamt`` equals ``hifp_pay``. Money is fen in the books, yuan with two decimals on the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from smartcare.payment import insurance
from smartcare.payment.medins import (
    CATEGORIES,
    INSUTYPES,
    MSGID_MAX,
    PATH,
    dumps,
    loads,
    signature,
)
from smartcare.payment.sandbox.faults import Faults, control_router, handle
from smartcare.platform.clock import china_now
from smartcare.platform.errors import InvalidInput
from smartcare.platform.money import yuan

#: how far the gateway lets ``x-tif-timestamp`` be from its own clock
TIMESTAMP_SKEW_SECONDS = 300

#: 3202 row results (this sandbox's codes): the centre has it and the hospital does not, the other way
#: round, both have it with different amounts, both have it in different states
MISSING_AT_HOSPITAL, MISSING_AT_CENTRE, AMOUNTS_DIFFER, STATE_DIFFERS = "1", "2", "3", "4"

_AMOUNTS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
            "act_pay_dedc", "hifp_pay", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")
_RECONCILED = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")
_ENVELOPE_REQUIRED = ("infno", "msgid", "infver", "opter_type", "opter", "inf_time", "fixmedins_code")
_ENVELOPE_OPTIONAL = ("mdtrtarea_admvs", "insuplc_admdvs", "recer_sys_code", "dev_no", "dev_safe_info", "cainfo",
                      "signtype", "opter_name", "fixmedins_name", "sign_no")


class _Bad(Exception):
    """A message the centre refuses (infcode -1); the text names the field."""


# -- reading the message ------------------------------------------------------------------------------


def _get(obj: dict, name: str, where: str, *, required: bool = True) -> object:
    value = obj.get(name)
    if required and (value is None or value == ""):
        raise _Bad(f"{where}.{name} is missing")
    return value


def _text(obj: dict, name: str, where: str, *, required: bool = True, max_len: int | None = None,
          choices: tuple[str, ...] | None = None) -> str:
    value = _get(obj, name, where, required=required)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Bad(f"{where}.{name} must be a string, not {type(value).__name__}")
    if max_len is not None and len(value) > max_len:
        raise _Bad(f"{where}.{name} is {len(value)} characters; at most {max_len} are allowed")
    if choices is not None and value not in choices and (required or value):
        raise _Bad(f"{where}.{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _fen(obj: dict, name: str, where: str, *, negative_ok: bool = False, required: bool = True) -> int | None:
    """An amount in yuan (a JSON number with at most two decimals) as fen."""
    value = _get(obj, name, where, required=required)
    if value is None or value == "":  # an optional amount left out or left empty
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _Bad(f"{where}.{name} must be a JSON number in yuan, not {type(value).__name__}")
    fen = Decimal(value) * 100
    if fen != fen.to_integral_value():
        raise _Bad(f"{where}.{name} {value} has more than 2 decimal places; amounts are yuan to the fen (0.01)")
    if fen < 0 and not negative_ok:
        raise _Bad(f"{where}.{name} {value} must not be negative")
    return int(fen)


def _whole(obj: dict, name: str, where: str, lo: int, hi: int | None = None) -> int:
    """A whole number, written as a JSON number or as digits in a string (both are seen in the field)."""
    value = _get(obj, name, where)
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bounds = f"from {lo} to {hi}" if hi is not None else f"≥ {lo}"
        raise _Bad(f"{where}.{name} must be a whole number {bounds}, not {value!r}")
    return value


def _day(obj: dict, name: str, where: str) -> date:
    value = _text(obj, name, where)
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise _Bad(f"{where}.{name} {value!r} is not a date written yyyy-MM-dd") from None


def _period(data: dict) -> tuple[date, date]:
    begin, end = _day(data, "stmt_begndate", "input.data"), _day(data, "stmt_enddate", "input.data")
    if end < begin:
        raise _Bad(f"input.data.stmt_enddate {end} is before input.data.stmt_begndate {begin}")
    return begin, end


def _envelope(body: bytes) -> dict:
    try:
        envelope = loads(body)
    except (ValueError, RecursionError) as exc:
        raise _Bad(f"the request body is not JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise _Bad("the request body must be a JSON object (the message envelope)")
    for name in _ENVELOPE_REQUIRED:
        _text(envelope, name, "envelope")
    for name in _ENVELOPE_OPTIONAL:
        _text(envelope, name, "envelope", required=False)
    _text(envelope, "msgid", "envelope", max_len=MSGID_MAX)
    _text(envelope, "infver", "envelope", choices=("V1.0",))
    try:
        datetime.strptime(envelope["inf_time"], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise _Bad(f"envelope.inf_time {envelope['inf_time']!r} is not a time written yyyy-MM-dd HH:mm:ss") from None
    if not isinstance(envelope.get("input"), dict):
        raise _Bad("envelope.input must be a JSON object")
    return envelope


def _data(envelope: dict) -> dict:
    data = envelope["input"].get("data")
    if not isinstance(data, dict):
        raise _Bad("input.data must be a JSON object")
    return data


def _gateway_problem(headers, pass_token: str) -> str | None:
    """Why the gateway turns the request away (HTTP 401), or None when its signature is good."""
    for name in ("x-tif-paasid", "x-tif-timestamp", "x-tif-nonce", "x-tif-signature"):
        if not headers.get(name):
            return f"the {name} header is missing; every call carries the gateway's signature headers"
    timestamp = headers["x-tif-timestamp"]
    if not (timestamp.isascii() and timestamp.isdigit()):
        return f"x-tif-timestamp {timestamp!r} must be Unix time in whole seconds"
    if abs(time.time() - int(timestamp)) > TIMESTAMP_SKEW_SECONDS:
        return f"x-tif-timestamp {timestamp} is more than {TIMESTAMP_SKEW_SECONDS} s away from the gateway's clock"
    expected = signature(timestamp, pass_token, headers["x-tif-nonce"])
    if not hmac.compare_digest(expected, headers["x-tif-signature"].lower()):
        return ("x-tif-signature does not match: it must be the hex SHA-256 of "
                "timestamp + pass token + nonce + timestamp")
    return None


# -- the books --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bill:
    psn_no: str
    insutype: str  # "310" | "390"
    mdtrt_id: str
    hosp_lv: int
    use_account: bool
    items: list[insurance.Item]


def _bill(envelope: dict) -> _Bill:
    """2206/2207 input, checked: every amount adds up and every item is one the engine can price."""
    data = _data(envelope)
    where = "input.data"
    psn_no = _text(data, "psn_no", where, max_len=30)
    insutype = _text(data, "insutype", where, choices=tuple(INSUTYPES))
    mdtrt_id = _text(data, "mdtrt_id", where, max_len=30)
    total = _fen(data, "medfee_sumamt", where)
    hosp_lv = _whole(data, "hosp_lv", where, 0, 3)
    flag = _text(data, "acct_used_flag", where, choices=("1", "0"))
    rows = envelope["input"].get("feedetail")
    if not isinstance(rows, list) or not rows:
        raise _Bad("input.feedetail must be a non-empty list of the bill's items")
    items, seen, fee_sum = [], set(), 0
    for n, row in enumerate(rows):
        at = f"input.feedetail[{n}]"
        if not isinstance(row, dict):
            raise _Bad(f"{at} must be a JSON object")
        sn = _text(row, "feedetl_sn", at, max_len=30)
        if sn in seen:
            raise _Bad(f"{at}.feedetl_sn {sn!r} appears twice in the bill")
        seen.add(sn)
        code = _text(row, "med_list_codg", at, max_len=50)
        name = _text(row, "medins_list_name", at, max_len=200)
        level = _text(row, "chrgitm_lv", at, choices=tuple(CATEGORIES))
        price = _fen(row, "pric", at)
        count = _whole(row, "cnt", at, 1)
        amount = _fen(row, "det_item_fee_sumamt", at)
        cap = _fen(row, "pric_uplmt_amt", at, required=False)
        if amount != price * count:
            raise _Bad(f"{at}.det_item_fee_sumamt {yuan(amount)} is not pric × cnt = {yuan(price * count)}")
        fee_sum += amount
        items.append(insurance.Item(code, name, CATEGORIES[level], price, count, cap))
    if total != fee_sum:
        raise _Bad(f"{where}.medfee_sumamt {yuan(total)} is not the sum of input.feedetail's "
                   f"det_item_fee_sumamt, {yuan(fee_sum)}")
    return _Bill(psn_no, insutype, mdtrt_id, hosp_lv, flag == "1", items)


def _wire(record: dict, names: tuple[str, ...], sign: int = 1) -> dict:
    return {name: yuan(sign * record[name]) for name in names}


class Centre:
    """The centre's books and its answer to each transaction (``dispatch``)."""

    def __init__(self, *, default_balance: int = 0):
        self.policies = insurance.load_policies()
        self.default_balance = default_balance
        self.persons: dict[str, dict] = {}
        self.settlements: dict[str, dict] = {}      # setl_id → the settlement and its state
        self.by_msgid: dict[str, tuple[str, str, dict]] = {}  # 2207 msgid → (fingerprint, setl_id, output)
        self.reversed_msgids: set[str] = set()      # 2601 omsgids: refused if they arrive (again)
        self._seq = 0

    def next_id(self, now: datetime) -> str:
        self._seq += 1
        return f"{now:%Y%m%d%H%M%S}{self._seq:010d}"

    def set_person(self, psn_no: str, *, insutype: str, balance: int, deductible_used: int, fund_paid: int) -> dict:
        self.persons[psn_no] = {"insutype": insutype, "balance": balance, "deductible_used": deductible_used,
                                "fund_paid": fund_paid, "year": china_now().year}
        return self.persons[psn_no]

    def _person(self, psn_no: str, insutype: str) -> dict:
        """The person's books as they stand this year (a copy: the caller stores it if it books)."""
        year = china_now().year
        person = dict(self.persons.get(psn_no) or {"insutype": insutype, "balance": self.default_balance,
                                                    "deductible_used": 0, "fund_paid": 0, "year": year})
        if person["insutype"] != insutype:
            raise _Bad(f"input.data.insutype {insutype} is not person {psn_no}'s insurance, {person['insutype']}")
        if person["year"] != year:  # the accumulators start again each year
            person.update(deductible_used=0, fund_paid=0, year=year)
        return person

    def _policy(self, insutype: str, hosp_lv: int) -> insurance.Policy:
        kind = INSUTYPES[insutype]
        # 0 (未定级, ungraded) is settled like 一级 unless the policy names it
        policy = self.policies.get((kind, hosp_lv)) or (self.policies.get((kind, 1)) if hosp_lv == 0 else None)
        if policy is None:
            raise _Bad(f"input.data.hosp_lv {hosp_lv}: no {kind} policy for this hospital level")
        return policy

    def reply(self, envelope: dict | None, received: datetime, *, output: dict | None = None,
              error: str | None = None) -> Response:
        """The reply envelope: infcode 0 with ``output``, or -1 with ``err_msg``; always HTTP 200."""
        now = china_now()
        self._seq += 1
        area = str((envelope or {}).get("mdtrtarea_admvs") or "")[:6].rjust(6, "0")
        body = {"infcode": -1 if error else 0, "inf_refmsgid": f"{area}{now:%Y%m%d%H%M%S}{self._seq:010d}",
                "refmsg_time": f"{received:%Y%m%d%H%M%S}{received.microsecond // 1000:03d}",
                "respond_time": f"{now:%Y%m%d%H%M%S}{now.microsecond // 1000:03d}",
                "err_msg": error, "output": output if output is not None else {}}
        return Response(dumps(body), media_type="application/json")

    # -- transactions

    def dispatch(self, envelope: dict) -> dict:
        """The ``output`` for one checked envelope; raises ``_Bad`` for a refusal."""
        handler = {"2206": self.presettle, "2207": self.settle, "2208": self.reverse_settlement,
                   "2601": self.reverse_message, "3201": self.reconcile_totals,
                   "3202": self.reconcile_details}.get(envelope["infno"])
        if handler is None:
            raise _Bad(f"unsupported infno {envelope['infno']!r}; this centre answers 2206, 2207, 2208, 2601, "
                       "3201 and 3202")
        try:
            return handler(envelope)
        except InvalidInput as exc:  # the engine's own checks, should the ones above miss something
            raise _Bad(f"the bill cannot be settled: {exc.message}") from None

    def _split(self, bill: _Bill) -> tuple[dict, insurance.Settlement]:
        person = self._person(bill.psn_no, bill.insutype)
        result = insurance.settle(bill.items, self._policy(bill.insutype, bill.hosp_lv),
                                  deductible_used=person["deductible_used"], fund_paid=person["fund_paid"],
                                  account_balance=person["balance"] if bill.use_account else 0)
        return person, result

    def presettle(self, envelope: dict) -> dict:
        """2206: the split as 2207 would make it now; nothing is booked."""
        bill = _bill(envelope)
        person, result = self._split(bill)
        return {"setlinfo": self._setlinfo(None, bill, result, person["balance"] - result.acct_pay, None)}

    def settle(self, envelope: dict) -> dict:
        """2207: split and book; the same msgid again answers the same, a msgid reversed by 2601 is refused."""
        bill = _bill(envelope)
        msgid = envelope["msgid"]
        if msgid in self.reversed_msgids:
            raise _Bad(f"msgid {msgid} was reversed (2601) and cannot be settled; settle under a new msgid")
        fingerprint = hashlib.sha256(dumps([envelope["fixmedins_code"], envelope["input"]]).encode()).hexdigest()
        if msgid in self.by_msgid:
            earlier, _, output = self.by_msgid[msgid]
            if earlier != fingerprint:
                raise _Bad(f"msgid {msgid} was already used for a different settlement")
            return output
        person, result = self._split(bill)
        now = china_now()
        setl_id = self.next_id(now)
        person.update(balance=person["balance"] - result.acct_pay, deductible_used=result.deductible_used_after,
                      fund_paid=result.fund_paid_after)
        self.persons[bill.psn_no] = person
        amounts = {name: getattr(result, name) for name in _AMOUNTS if name != "fund_pay_sumamt"}
        self.settlements[setl_id] = {
            "setl_id": setl_id, "msgid": msgid, "fixmedins_code": envelope["fixmedins_code"],
            "psn_no": bill.psn_no, "insutype": bill.insutype, "mdtrt_id": bill.mdtrt_id, "day": now.date().isoformat(),
            "year": now.year, "setl_time": f"{now:%Y-%m-%d %H:%M:%S}", **amounts, "fund_pay_sumamt": result.hifp_pay,
            "state": "settled", "reversal_setl_id": None, "reversed_day": None}
        output = {"setlinfo": self._setlinfo(setl_id, bill, result, person["balance"], now)}
        self.by_msgid[msgid] = (fingerprint, setl_id, output)
        return output

    @staticmethod
    def _setlinfo(setl_id: str | None, bill: _Bill, result: insurance.Settlement, balc: int,
                  now: datetime | None) -> dict:
        info: dict = {"setl_id": setl_id, "mdtrt_id": bill.mdtrt_id, "psn_no": bill.psn_no, "insutype": bill.insutype}
        if now is not None:
            info["setl_time"] = f"{now:%Y-%m-%d %H:%M:%S}"
        amounts = {name: getattr(result, name) for name in _AMOUNTS if name != "fund_pay_sumamt"}
        amounts |= {"fund_pay_sumamt": result.hifp_pay, "balc": balc}
        return info | {name: yuan(value) for name, value in amounts.items()}

    def _reverse(self, record: dict) -> dict:
        """Undo one settlement (once): the person's accumulators and balance come back."""
        if record["state"] == "settled":
            now = china_now()
            person = self.persons[record["psn_no"]]
            if person["year"] == record["year"]:
                person["deductible_used"] = max(0, person["deductible_used"] - record["act_pay_dedc"])
                person["fund_paid"] = max(0, person["fund_paid"] - record["hifp_pay"])
            person["balance"] += record["acct_pay"]
            record.update(state="reversed", reversal_setl_id=self.next_id(now), reversed_day=now.date().isoformat())
        balance = self.persons[record["psn_no"]]["balance"]
        return {"setlinfo": {"setl_id": record["reversal_setl_id"], "init_setl_id": record["setl_id"],
                             "mdtrt_id": record["mdtrt_id"], "psn_no": record["psn_no"],
                             **_wire(record, _AMOUNTS, -1), "balc": yuan(balance)}}

    def reverse_settlement(self, envelope: dict) -> dict:
        """2208: reverse a settlement by its setl_id; reversing it again answers the same."""
        data = _data(envelope)
        setl_id = _text(data, "setl_id", "input.data", max_len=30)
        record = self.settlements.get(setl_id)
        if record is None or record["fixmedins_code"] != envelope["fixmedins_code"]:
            raise _Bad(f"input.data.setl_id {setl_id}: no such settlement of {envelope['fixmedins_code']}")
        for name in ("mdtrt_id", "psn_no"):
            if _text(data, name, "input.data", max_len=30) != record[name]:
                raise _Bad(f"input.data.{name} {data[name]} is not settlement {setl_id}'s, {record[name]}")
        return self._reverse(record)

    def reverse_message(self, envelope: dict) -> dict:
        """2601 冲正: undo 2207 ``omsgid`` if it took effect, and refuse it for good if it arrives later."""
        data = _data(envelope)
        psn_no = _text(data, "psn_no", "input.data", max_len=30)
        omsgid = _text(data, "omsgid", "input.data", max_len=MSGID_MAX)
        oinfno = _text(data, "oinfno", "input.data", choices=("2207", "2206"))
        answer = {"omsgid": omsgid, "oinfno": oinfno, "took_effect": "0"}
        if oinfno == "2206":  # a pre-settlement books nothing: there is nothing to undo
            return answer
        known = self.by_msgid.get(omsgid)
        if known is not None:
            record = self.settlements[known[1]]
            if record["psn_no"] != psn_no:
                raise _Bad(f"input.data.psn_no {psn_no} is not message {omsgid}'s person, {record['psn_no']}")
            self.reversed_msgids.add(omsgid)
            return answer | {"took_effect": "1"} | self._reverse(record)
        self.reversed_msgids.add(omsgid)
        return answer

    def _of_period(self, envelope: dict) -> tuple[date, date, str, list[dict]]:
        data = _data(envelope)
        begin, end = _period(data)
        insutype = _text(data, "insutype", "input.data", required=False, choices=tuple(INSUTYPES))
        for name in ("clr_type", "setl_optins"):  # accepted as sent: the sandbox settles one kind of visit
            _text(data, name, "input.data", required=False)
        mine = [r for r in self.settlements.values()
                if r["fixmedins_code"] == envelope["fixmedins_code"] and (not insutype or r["insutype"] == insutype)]
        return begin, end, insutype, mine

    def reconcile_totals(self, envelope: dict) -> dict:
        """3201 对总账: the facility's totals of the period against the centre's.

        A settlement counts on the day it was made and its reversal, negatively, on the day it was
        reversed, so one reversed the same day counts out. ``centre_*`` are extension fields: the
        centre's own figures.
        """
        begin, end, _, mine = self._of_period(envelope)
        data = _data(envelope)
        sent = {name: _fen(data, name, "input.data", negative_ok=True) for name in _RECONCILED}
        sent["setl_cnt"] = _whole(data, "fixmedins_setl_cnt", "input.data", -10**9)
        centre = dict.fromkeys((*_RECONCILED, "setl_cnt"), 0)
        for record in mine:
            for sign, day in ((1, record["day"]), (-1, record["reversed_day"])):
                if day and begin.isoformat() <= day <= end.isoformat():
                    for name in _RECONCILED:
                        centre[name] += sign * record[name]
                    centre["setl_cnt"] += sign
        differences = [f"{name}: hospital {sent[name] if name == 'setl_cnt' else yuan(sent[name])}, "
                       f"centre {centre[name] if name == 'setl_cnt' else yuan(centre[name])}"
                       for name in centre if sent[name] != centre[name]]
        info = {"setl_optins": data.get("setl_optins") or "", "stmt_begndate": begin.isoformat(),
                "stmt_enddate": end.isoformat(), "stmt_rslt": "1" if differences else "0",
                "stmt_rslt_dscr": ("不平: " + "; ".join(differences)) if differences else "平: the totals agree",
                **{f"centre_{name}": yuan(centre[name]) for name in _RECONCILED},
                "centre_setl_cnt": centre["setl_cnt"]}
        return {"stmtinfo": info}

    def reconcile_details(self, envelope: dict) -> dict:
        """3202 对明细账: the settlements of the period the facility and the centre see differently.

        The real centre takes the facility's details as a file; here they come inline in
        ``input.details``. A row is matched by ``setl_id``, or by ``msgid`` when the facility never
        learnt the setl_id (a lost reply). States are compared as they stand now. Row results:
        1 missing at the hospital, 2 missing at the centre, 3 amounts differ, 4 state differs.
        """
        begin, end, _, mine = self._of_period(envelope)
        centre = {r["setl_id"]: r for r in mine if begin.isoformat() <= r["day"] <= end.isoformat()}
        by_msgid = {r["msgid"]: r for r in centre.values()}
        rows = envelope["input"].get("details")
        if not isinstance(rows, list):
            raise _Bad("input.details must be a list of the facility's settlements (may be empty)")
        matched: set[str] = set()
        out = []
        for n, row in enumerate(rows):
            at = f"input.details[{n}]"
            if not isinstance(row, dict):
                raise _Bad(f"{at} must be a JSON object")
            setl_id = _text(row, "setl_id", at, required=False, max_len=30)
            msgid = _text(row, "msgid", at, required=not setl_id, max_len=MSGID_MAX)
            sent = {name: _fen(row, name, at) for name in _RECONCILED}
            state = _text(row, "refd_setl_flag", at, choices=("0", "1"))
            record = centre.get(setl_id) if setl_id else by_msgid.get(msgid)
            named = setl_id or f"msgid {msgid}"
            if record is None:
                out.append({"setl_id": setl_id, "msgid": msgid, "stmt_rslt": MISSING_AT_CENTRE,
                            "stmt_rslt_dscr": f"missing at centre: {named} is not a settlement of "
                                              f"{envelope['fixmedins_code']} from {begin} to {end}"})
                continue
            if record["setl_id"] in matched:
                raise _Bad(f"{at}: settlement {record['setl_id']} is listed twice")
            matched.add(record["setl_id"])
            centre_state = "1" if record["state"] == "reversed" else "0"
            differ = [f"{name} hospital {yuan(sent[name])}, centre {yuan(record[name])}"
                      for name in _RECONCILED if sent[name] != record[name]]
            base = {"setl_id": record["setl_id"], "msgid": record["msgid"], "refd_setl_flag": centre_state,
                    **{f"centre_{name}": yuan(record[name]) for name in _RECONCILED}}
            if state != centre_state:
                words = {"0": "settled", "1": "reversed"}
                out.append(base | {"stmt_rslt": STATE_DIFFERS, "stmt_rslt_dscr":
                                   f"state differs: hospital {words[state]}, centre {words[centre_state]}"
                                   + (f"; amounts differ: {'; '.join(differ)}" if differ else "")})
            elif differ:
                out.append(base | {"stmt_rslt": AMOUNTS_DIFFER, "stmt_rslt_dscr": "amounts differ: " + "; ".join(differ)})
        for setl_id, record in centre.items():
            if setl_id not in matched:
                state = "reversed" if record["state"] == "reversed" else "settled"
                out.append({"setl_id": setl_id, "msgid": record["msgid"], "stmt_rslt": MISSING_AT_HOSPITAL,
                            "refd_setl_flag": "1" if state == "reversed" else "0",
                            **{f"centre_{name}": yuan(record[name]) for name in _RECONCILED},
                            "stmt_rslt_dscr": f"missing at hospital: the centre has settlement {setl_id} "
                                              f"(msgid {record['msgid']}, {state}) that the hospital did not list"})
        summary = {"stmt_rslt": "1" if out else "0", "stmt_rslt_dscr":
                   f"{len(out)} settlement(s) differ" if out else "平: every settlement agrees"}
        return {"stmtinfo": summary, "details": out}


# -- the service -------------------------------------------------------------------------------------------


class PersonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    insutype: Literal["310", "390"]
    balance: int = Field(0, ge=0, strict=True, description="personal-account balance, fen")
    deductible_used: int = Field(0, ge=0, strict=True, description="deductible paid this year, fen")
    fund_paid: int = Field(0, ge=0, strict=True, description="pooled fund paid this year, fen")


def create_app(*, faults: Faults | None = None, pass_token: str = "sandbox-passtoken",
               default_balance: int = 0) -> FastAPI:
    """The centre's sandbox: the national endpoint, the books' admin and the fault controls.

    ``pass_token`` is the gateway's shared secret for the signature; ``default_balance`` (fen) is the
    personal-account balance a person the centre has not seen before starts with.
    """
    if isinstance(default_balance, bool) or not isinstance(default_balance, int) or default_balance < 0:
        raise ValueError("default_balance must be a whole, non-negative number of fen")
    centre = Centre(default_balance=default_balance)
    holder = {"faults": faults if faults is not None else Faults()}
    app = FastAPI(title="SmartCare sandbox: medical-insurance centre", docs_url="/_sandbox/docs", redoc_url=None)
    app.state.centre = centre
    app.state.holder = holder
    app.include_router(control_router(holder))

    @app.post(PATH)
    async def call_service(request: Request) -> Response:
        received = china_now()
        problem = _gateway_problem(request.headers, pass_token)
        if problem:
            return JSONResponse({"error": "unauthorized", "message": problem}, status_code=401)
        try:
            envelope = _envelope(await request.body())
        except _Bad as exc:
            return centre.reply(None, received, error=str(exc))

        async def work() -> Response:
            try:
                return centre.reply(envelope, received, output=centre.dispatch(envelope))
            except _Bad as exc:
                return centre.reply(envelope, received, error=str(exc))

        def refuse() -> Response:
            return centre.reply(envelope, received, error="the centre did not process this message "
                                                    "(sandbox fault: error); nothing was done")

        return await handle(holder["faults"], work, refuse)

    @app.put("/_sandbox/persons/{psn_no}")
    def put_person(psn_no: str, data: PersonIn) -> dict:
        return centre.set_person(psn_no, **data.model_dump())

    @app.get("/_sandbox/books")
    def books() -> dict:
        return {"settlements": [dict(r) for r in centre.settlements.values()],
                "persons": {k: dict(v) for k, v in centre.persons.items()},
                "reversed_msgids": sorted(centre.reversed_msgids)}

    return app
