"""Pages of mixed payment: the console (today's settlements, one settlement with its payers, events and
refunds, daily reconciliation) and the resident's bills on H5 (who pays what, paying from the phone,
commercial direct-pay authorisation).

Administrators run reconciliation and resolve differences; auditors see the same pages read-only (no
buttons, and the actions refuse them). Nothing personal is shown unmasked: patients appear by their
masked card name, and free text from the parties (reasons, event details) goes through the masking
module. Actions are htmx POSTs, so the same-site guard (``web.deps.action``) applies."""

from __future__ import annotations

import secrets
from collections import defaultdict
from datetime import date, datetime, time, timedelta

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from smartcare.healthcard import service as healthcard
from smartcare.payment import parties, reconcile, resident, service
from smartcare.payment.models import Bill, ReconItem, ReconRun, Refund, Settlement, SettlementEvent
from smartcare.platform import auth
from smartcare.platform.auth import Role
from smartcare.platform.clock import CHINA_TZ, china_today
from smartcare.platform.errors import InvalidInput, NotFound, SmartCareError
from smartcare.platform.masking import mask_mapping, mask_text
from smartcare.platform.money import parse_yuan
from smartcare.registry import service as registry
from smartcare.web.deps import action, db, require
from smartcare.web.pages import CONSOLE_ROLES, form_day, templates

router = APIRouter(include_in_schema=False)
CONSOLE = require(*CONSOLE_ROLES)
ADMIN = require(Role.ADMIN)
RESIDENT = require(Role.RESIDENT)

SETTLEMENT_STATES = {"running": "进行中", "completed": "已完成", "compensating": "回滚中", "compensated": "已回滚"}
PAYER_STATUSES = {"pending": "待处理", "requested": "已发起", "paying": "待确认", "paid": "已支付", "failed": "失败",
                  "reversed": "已冲正", "settled": "已结算", "none": "不涉及", "authorised": "已授权",
                  "capturing": "请款中", "captured": "已赔付", "succeeded": "已退回", "processing": "处理中"}
PAYERS = {"fund": "统筹基金", "account": "个人账户", "insurer": "商保直赔", "cash": "个人自付"}
PAY_CHANNELS = {"wechat": "微信支付", "alipay": "支付宝", "unionpay": "云闪付"}
BILL_STATES = {"open": "待缴费", "paying": "支付中", "settled": "已缴费", "refunded": "已退款"}
INSURANCE_TYPES = {"employee": "职工医保", "resident": "居民医保", "none": "自费"}
RECON_PARTIES = {"medins": "医保中心", "insurer": "商业保险", **PAY_CHANNELS}
RECON_KINDS = {"missing_at_party": "对方无记录", "missing_at_platform": "平台无记录", "amount_differs": "金额不符",
               "state_differs": "状态不符"}
#: one colour per payer (and per channel for the cash part), the same on every chart
COLOURS = {"fund": "#1565c0", "account": "#26a69a", "insurer": "#8e24aa", "cash": "#f9a825", "wechat": "#2e7d32",
           "alipay": "#1e88e5", "unionpay": "#c62828"}
RECENT = 100

templates.env.globals.update(SETTLEMENT_STATES=SETTLEMENT_STATES, PAYER_STATUSES=PAYER_STATUSES, PAYERS=PAYERS,
                             PAY_CHANNELS=PAY_CHANNELS, BILL_STATES=BILL_STATES, INSURANCE_TYPES=INSURANCE_TYPES,
                             RECON_PARTIES=RECON_PARTIES, RECON_KINDS=RECON_KINDS, INSURER=parties.INSURER)
templates.env.filters["china_time"] = lambda when, fmt="%m-%d %H:%M:%S": when.astimezone(CHINA_TZ).strftime(fmt) if when else ""


def _slice(key: str, name: str, fen: int | None) -> dict:
    return {"key": key, "name": name, "value": fen or 0, "color": COLOURS[key]}


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), CHINA_TZ)
    return start, start + timedelta(days=1)


# ---- console: today ---------------------------------------------------------------------------------


def today(session: Session, day: date | None = None) -> dict:
    """Settlements started on ``day`` (China time): how many in each state, and what each payer paid
    of the completed ones — the cash part per channel."""
    day = day or china_today()
    start, end = _day_bounds(day)
    in_day = (Settlement.created_at >= start, Settlement.created_at < end)
    states = dict(session.execute(select(Settlement.state, func.count()).where(*in_day).group_by(Settlement.state)).all())
    paid = session.execute(
        select(Settlement.channel, func.coalesce(func.sum(Settlement.hifp_pay), 0),
               func.coalesce(func.sum(Settlement.acct_pay), 0), func.coalesce(func.sum(Settlement.insurer_pay), 0),
               func.coalesce(func.sum(Settlement.cash_pay), 0), func.coalesce(func.sum(Settlement.total), 0))
        .where(*in_day, Settlement.state == "completed").group_by(Settlement.channel)).all()
    fund = sum(int(r[1]) for r in paid)
    account = sum(int(r[2]) for r in paid)
    insurer = sum(int(r[3]) for r in paid)
    cash = defaultdict(int)
    for r in paid:
        if r[4]:
            cash[r[0] or "cash"] += int(r[4])
    slices = [_slice("fund", PAYERS["fund"], fund), _slice("account", PAYERS["account"], account),
              _slice("insurer", PAYERS["insurer"], insurer)]
    slices += [_slice(ch if ch in COLOURS else "cash", PAY_CHANNELS.get(ch, PAYERS["cash"]), amount)
               for ch, amount in sorted(cash.items())]
    return {"day": day, "states": {s: states.get(s, 0) for s in SETTLEMENT_STATES}, "count": sum(states.values()),
            "total": sum(int(r[5]) for r in paid), "fund": fund, "account": account, "insurer": insurer,
            "cash": dict(cash), "chart": {"kind": "pie", "title": "按支付方", "slices": slices}}


def recent(session: Session, state: str | None, limit: int = RECENT) -> list[Settlement]:
    query = select(Settlement).order_by(Settlement.id.desc()).limit(limit)
    if state:
        query = query.where(Settlement.state == state)
    return list(session.scalars(query))


def _bill_numbers(session: Session, rows: list[Settlement]) -> dict[int, str]:
    ids = {s.bill_id for s in rows}
    return dict(session.execute(select(Bill.id, Bill.bill_no).where(Bill.id.in_(ids))).all()) if ids else {}


@router.get("/admin/payment", response_class=HTMLResponse)
def console_home(request: Request, state: str | None = Query(None), session: Session = Depends(db),
                 who: auth.Principal = Depends(CONSOLE)):
    state = state if state in SETTLEMENT_STATES else None
    rows = recent(session, state)
    context = {"who": who, "rows": rows, "state": state or "", "bill_nos": _bill_numbers(session, rows),
               "hospital_names": registry.facility_names(session, (s.facility_code for s in rows))}
    if request.headers.get("HX-Request"):
        return templates.TemplateResponse(request, "payment/_settlement_rows.html", context)
    return templates.TemplateResponse(request, "payment/console.html", {**context, "today": today(session)})


# ---- console: one settlement ------------------------------------------------------------------------


def payer_rows(s: Settlement) -> list[dict]:
    """Each payer of a settlement: its share, status and the party's number."""
    channel = PAY_CHANNELS.get(s.channel or "", "")
    return [
        {"key": "medical_insurance", "name": "医保（统筹基金 + 个人账户）", "status": s.medins_status,
         "amount": None if s.hifp_pay is None else s.hifp_pay + (s.acct_pay or 0), "reference": s.setl_id},
        {"key": "commercial_insurance", "name": f"商保直赔（{s.insurer}）" if s.insurer else "商保直赔",
         "status": s.insurer_status, "amount": s.insurer_pay, "reference": s.insurer_claim_no or s.insurer_auth_no},
        {"key": "cash", "name": f"个人自付（{channel}）" if channel else "个人自付", "status": s.cash_status,
         "amount": s.cash_pay, "reference": s.transaction_id},
    ]


def settlement_chart(s: Settlement, kind: str = "stack") -> dict:
    cash_key = s.channel if s.channel in COLOURS else "cash"
    slices = [_slice("fund", PAYERS["fund"], s.hifp_pay), _slice("account", PAYERS["account"], s.acct_pay),
              _slice("insurer", PAYERS["insurer"], s.insurer_pay),
              _slice(cash_key, PAY_CHANNELS.get(s.channel or "", PAYERS["cash"]), s.cash_pay)]
    return {"kind": kind, "title": "按支付方", "total": s.total, "slices": slices}


def _patient(session: Session, empi_id: str | None) -> str:
    """A patient as the console shows them: the masked name their health card carries."""
    if not empi_id:
        return "（自费，未关联）"
    return healthcard.masked_name(session, empi_id) or "—"


def _event_detail(detail: dict) -> str:
    return "  ".join(f"{k}={v}" for k, v in mask_mapping(detail or {}).items())


@router.get("/admin/payment/settlements/{settlement_no}", response_class=HTMLResponse)
def settlement_page(request: Request, settlement_no: str, session: Session = Depends(db),
                    who: auth.Principal = Depends(CONSOLE)):
    s = session.scalar(select(Settlement).where(Settlement.settlement_no == settlement_no))
    if s is None:
        raise NotFound(f"no settlement {settlement_no}", field="settlement_no")
    bill = session.get(Bill, s.bill_id)
    events = list(session.scalars(select(SettlementEvent).where(SettlementEvent.settlement_id == s.id)
                                  .order_by(SettlementEvent.at, SettlementEvent.id)))
    refund_rows = list(session.scalars(select(Refund).where(Refund.settlement_id == s.id).order_by(Refund.id)))
    return templates.TemplateResponse(request, "payment/settlement.html", {
        "who": who, "s": s, "bill": bill, "items": service.bill_items(session, bill), "payers": payer_rows(s),
        "chart": settlement_chart(s), "patient": _patient(session, s.empi_id), "reason": mask_text(s.reason or ""),
        "events": [(e, _event_detail(e.detail)) for e in events], "refunds": refund_rows,
        "hospital": registry.facility_names(session, [s.facility_code]).get(s.facility_code, s.facility_code)})


# ---- console: reconciliation ------------------------------------------------------------------------


def reconciliation_context(session: Session, day: date) -> dict:
    runs = {r.party: r for r in session.scalars(select(ReconRun).where(ReconRun.day == day))}
    items = list(session.scalars(select(ReconItem).where(ReconItem.day == day)
                                 .order_by(ReconItem.state != "open", ReconItem.party, ReconItem.id)))
    elsewhere = session.execute(select(ReconItem.day, func.count()).where(ReconItem.state == "open", ReconItem.day != day)
                                .group_by(ReconItem.day).order_by(ReconItem.day.desc()).limit(30)).all()
    return {"day": day, "runs": [(p, runs.get(p)) for p in RECON_PARTIES], "ran": bool(runs),
            "items": [(i, mask_text(i.reason), mask_text(i.resolution or "")) for i in items],
            "open": sum(1 for i in items if i.state == "open"), "elsewhere": elsewhere}


def _recon_partial(request: Request, session: Session, who: auth.Principal, day: date, **extra):
    return templates.TemplateResponse(request, "payment/_recon.html", {
        "who": who, "can_act": who.has(Role.ADMIN), **reconciliation_context(session, day), **extra})


@router.get("/admin/payment/reconciliation", response_class=HTMLResponse)
def reconciliation_page(request: Request, day: str | None = Query(None), session: Session = Depends(db),
                        who: auth.Principal = Depends(CONSOLE)):
    chosen = form_day(day, "day", china_today())
    return templates.TemplateResponse(request, "payment/reconciliation.html", {
        "who": who, "can_act": who.has(Role.ADMIN), "today": china_today(), **reconciliation_context(session, chosen)})


@router.post("/admin/payment/reconciliation", response_class=HTMLResponse, dependencies=[action])
def reconciliation_run(request: Request, day: str = Form(""), session: Session = Depends(db),
                       who: auth.Principal = Depends(ADMIN)):
    """Reconcile the day with every party now (a party that does not answer shows as an error)."""
    chosen = form_day(day, "day", china_today())
    if chosen > china_today():
        return _recon_partial(request, session, who, chosen, error="不能对账未来的日期")
    results = reconcile.run(session, parties.current(), day=chosen, actor=who.username)
    session.flush()
    summary = {r.party: r for r in results}
    return _recon_partial(request, session, who, chosen, notice=f"{chosen} 对账完成：" + "，".join(
        f"{RECON_PARTIES.get(p, p)} {'失败' if r.error else f'{len(r.differences)} 笔差异'}" for p, r in summary.items()))


@router.post("/admin/payment/reconciliation/items/{item_id}/resolve", response_class=HTMLResponse,
             dependencies=[action])
def reconciliation_resolve(request: Request, item_id: int, resolution: str = Form(""), session: Session = Depends(db),
                           who: auth.Principal = Depends(ADMIN)):
    item = session.get(ReconItem, item_id)
    if item is None:
        raise NotFound(f"no reconciliation item {item_id}", field="item_id")
    day = item.day
    try:
        with session.begin_nested():
            reconcile.resolve(session, item_id=item_id, resolution=resolution, actor=who.username)
    except SmartCareError as exc:
        return _recon_partial(request, session, who, day, error=exc.message, failed_item=item_id)
    return _recon_partial(request, session, who, day, notice=f"差异 #{item_id} 已处理")


# ---- resident H5 ------------------------------------------------------------------------------------


def bill_chart(mine: resident.MyBill) -> dict | None:
    s = mine.settlement
    if s is not None and s.state in ("completed", "running") and s.hifp_pay is not None:
        return settlement_chart(s, "pie")
    b = mine.breakdown
    if b is None:
        return None
    cash_name = "自付（含商保）" if b.direct_pay else PAYERS["cash"]
    return {"kind": "pie", "title": "预结算", "slices": [
        _slice("fund", PAYERS["fund"], b.fund), _slice("account", PAYERS["account"], b.account),
        _slice("cash", cash_name, b.cash)]}


def _bill_context(session: Session, mine: resident.MyBill, names: dict[str, str] | None = None, **extra) -> dict:
    code = mine.bill.facility_code
    hospital = (names if names is not None else registry.facility_names(session, [code])).get(code, code)
    return {"m": mine, "chart": bill_chart(mine), "payers": payer_rows(mine.settlement) if mine.settlement else [],
            "hospital": hospital, **extra}


def _h5_cards(session: Session, username: str) -> list[dict]:
    held = healthcard.held_cards(session, username)
    consents = resident.direct_pay_people(session, {c.empi_id for c, _ in held})
    return [{"card": c, "relation": r, "direct_pay": c.empi_id in consents} for c, r in held if c.state == "active"]


@router.get("/h5/bills", response_class=HTMLResponse)
def h5_bills(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(RESIDENT)):
    """The bills of the account's people, open first, each with who pays what; direct-pay switches."""
    mine = resident.bills(session, username=who.username)
    mine.sort(key=lambda m: m.bill.state != "open")  # stable: newest first within each group
    names = registry.facility_names(session, (m.bill.facility_code for m in mine))
    return templates.TemplateResponse(request, "payment/h5_bills.html", {
        "who": who, "bills": [_bill_context(session, m, names) for m in mine], "cards": _h5_cards(session, who.username)})


@router.get("/h5/bills/{facility_code}/{bill_no}", response_class=HTMLResponse)
def h5_bill(request: Request, facility_code: str, bill_no: str, session: Session = Depends(db),
            who: auth.Principal = Depends(RESIDENT)):
    """One bill (the partial a paying bill polls until its settlement ends)."""
    mine = resident.find(session, username=who.username, facility_code=facility_code, bill_no=bill_no)
    return templates.TemplateResponse(request, "payment/_h5_bill.html", _bill_context(session, mine))


@router.post("/h5/bills/{facility_code}/{bill_no}/pay", response_class=HTMLResponse, dependencies=[action])
def h5_pay(request: Request, facility_code: str, bill_no: str, card_no: str = Form(""), channel: str = Form(""),
           session: Session = Depends(db), who: auth.Principal = Depends(RESIDENT)):
    """Pay with one of the card's bound channels; the bill comes back with each payer's status."""
    error = None
    try:
        resident.pay(session, username=who.username, facility_code=facility_code, bill_no=bill_no, card_no=card_no,
                     channel=channel)
    except NotFound:
        raise
    except SmartCareError as exc:
        session.rollback()
        error = exc.message
    mine = resident.find(session, username=who.username, facility_code=facility_code, bill_no=bill_no)
    return templates.TemplateResponse(request, "payment/_h5_bill.html", _bill_context(session, mine, error=error))


@router.post("/h5/bills/direct-pay/{card_no}", response_class=HTMLResponse, dependencies=[action])
def h5_direct_pay(request: Request, card_no: str, grant: str = Form(""), session: Session = Depends(db),
                  who: auth.Principal = Depends(RESIDENT)):
    """Authorise (grant=1) or revoke (grant=0) commercial direct pay for the card's person — the same
    logic as PUT/DELETE /api/v1/payment/consents/{card_no}/{insurer}; the page comes back re-rendered."""
    resident.set_direct_pay(session, username=who.username, card_no=card_no, insurer=parties.INSURER,
                            grant=grant == "1")
    session.flush()
    return h5_bills(request, session, who)


# ---- hospital terminal: bill the scanned patient and settle at once ----------------------------------


def _items(text_: str) -> list[dict]:
    """Bill lines as a cashier types them: ``code,name,category,unit price in yuan,quantity[,price cap in yuan]``."""
    items = []
    for n, line in enumerate((x for x in text_.splitlines() if x.strip()), start=1):
        parts = [p.strip() for p in line.replace("，", ",").split(",")]
        if len(parts) not in (5, 6):
            raise InvalidInput(f"line {n}: write code,name,category,unit price,quantity[,price cap]", field="items")
        try:
            item = {"code": parts[0], "name": parts[1], "category": parts[2], "unit_price": parse_yuan(parts[3]),
                    "quantity": int(parts[4])}
            if len(parts) == 6 and parts[5]:
                item["price_cap"] = parse_yuan(parts[5])
        except (ValueError, ArithmeticError):
            raise InvalidInput(f"line {n}: the price is yuan with at most two decimals and the quantity a whole number",
                               field="items") from None
        items.append(item)
    return items


@router.post("/admin/payment/terminal/settle", response_class=HTMLResponse, dependencies=[action])
def terminal_settle(request: Request, facility: str = Form(...), empi_id: str = Form(...), channel: str = Form(...),
                    auth_code: str = Form(...), insurance_type: str = Form("employee"), items: str = Form(...),
                    who: auth.Principal = Depends(ADMIN)):
    """The terminal after a scan: the cashier's bill for the scanned patient, settled at once with the
    payment code the patient's QR carried — the same service calls as the signed hospital API."""
    from pydantic import ValidationError

    from smartcare.payment import saga
    from smartcare.payment.schemas import BillIn, SettleIn
    from smartcare.platform.db import session_scope

    no = error = None
    try:
        try:
            data = BillIn(bill_no=f"T{china_today():%Y%m%d}{secrets.token_hex(6)}", empi_id=empi_id,
                          insurance_type=insurance_type, items=_items(items))
            pay = SettleIn(channel=channel, auth_code=auth_code)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InvalidInput(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}", field="items") from None
        with session_scope() as session:
            service.create_bill(session, facility_code=facility, data=data, actor=who.username)
            settlement, _ = saga.start(session, facility_code=facility, bill_no=data.bill_no, channel=pay.channel,
                                       auth_code=pay.auth_code)
            no = settlement.settlement_no
        saga.orchestrator().run(no)
    except SmartCareError as exc:
        error = exc  # a settlement that started is still shown: its state says where it is
    with session_scope() as session:
        s = session.scalar(select(Settlement).where(Settlement.settlement_no == no)) if no else None
        return templates.TemplateResponse(request, "payment/_terminal_result.html", {
            "s": s, "error": error, "payers": payer_rows(s) if s else [],
            "reason": mask_text(s.reason or "") if s else ""})
