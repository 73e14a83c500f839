"""Pages of booking: the resident's 预约挂号 on H5 (search the pool, hold → confirm, cancel, waitlist,
notifications) and the console's 预约监测 (supply and booking rates, release-time load, the blacklist
with its lift form, the region's default rules).

Every resident action re-renders the whole booking area (``booking/_h5.html``), carrying the search
along (``hx-include``), so the free places, the appointments and the inbox never disagree on one
screen. A refusal (no place, not released, a limit, the blacklist …) is shown on the page with the
service's message, never as an error page. Holding and confirming go through the API's per-account
throttle (``booking.api.gate``): release-time bursts come from this page too.

Nothing personal is shown: people appear by the masked name on their health card."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from smartcare.booking import rules as fairness, service, stats
from smartcare.booking.api import gate, in_db
from smartcare.healthcard import service as healthcard
from smartcare.platform import audit, auth
from smartcare.platform.auth import Role
from smartcare.platform.clock import CHINA_TZ, china_today
from smartcare.platform.db import session_scope
from smartcare.platform.errors import InvalidInput, SmartCareError
from smartcare.registry import service as registry
from smartcare.web.deps import action, db, require
from smartcare.web.pages import CONSOLE_ROLES, form_day, templates

router = APIRouter(include_in_schema=False)
RESIDENT = require(Role.RESIDENT)
CONSOLE = require(*CONSOLE_ROLES)
ADMIN = require(Role.ADMIN)
#: actions commit before their page is sent (not after, as ``db`` does): the page says what the database holds
COMMITTED = Depends(db, scope="function")

APPOINTMENT_STATES = {"held": "待确认", "booked": "已预约", "checked_in": "已签到", "cancelled": "已取消",
                      "expired": "已过期", "noshow": "爽约"}
WAITLIST_STATES = {"waiting": "候补中", "offered": "有号待确认", "booked": "已预约", "cancelled": "已退出",
                   "expired": "已过期"}
BOOKING_NOTICES = {"booked": "预约成功", "offer": "候补成功", "withdrawn": "停诊", "reminder": "就诊提醒",
                   "noshow": "爽约"}
#: a refusal's headline by the error's code; the service's message and hint follow it
BOOKING_REFUSALS = {"no_slot": "号源已满", "not_released": "尚未放号", "limit_reached": "超出预约限制",
                    "blacklisted": "预约资格暂停", "rate_limited": "操作过于频繁", "conflict": "无法办理",
                    "not_found": "未找到", "forbidden": "不能办理", "invalid_input": "输入有误"}
BLACKLIST_REASONS = {"noshow": "多次爽约", "cancel": "频繁取消", "manual": "人工"}
ATTEMPT_OUTCOMES = {"held": "占号成功", "no_slot": "无号", "not_released": "未放号", "limit_reached": "超限",
                    "blacklisted": "黑名单", "conflict": "重复"}
RULE_LABELS = {
    "release_time": "放号时间", "release_days": "提前放号（天）", "hold_minutes": "锁号时长（分钟）",
    "per_day": "每人每日预约上限", "per_department": "每人每日同科室上限", "per_doctor": "每人每日同医生上限",
    "cancel_deadline_minutes": "取消截止（就诊前，分钟）", "noshow_limit": "爽约次数达此数即停约",
    "cancel_limit": "取消次数达此数即停约", "window_days": "统计窗口（天）", "blacklist_days": "停约时长（天）",
    "return_min_seconds": "释放号源最短延迟（秒）", "return_max_seconds": "释放号源最长延迟（秒）",
    "offer_minutes": "候补号保留（分钟）", "noshow_grace_minutes": "爽约判定宽限（分钟）",
    "reminder_hours": "就诊提醒提前（小时）"}
#: slots one search shows, hospitals on the supply chart
SHOWN_SLOTS = 50
CHART_HOSPITALS = 15

templates.env.globals.update(APPOINTMENT_STATES=APPOINTMENT_STATES, WAITLIST_STATES=WAITLIST_STATES,
                             BOOKING_NOTICES=BOOKING_NOTICES, BOOKING_REFUSALS=BOOKING_REFUSALS,
                             BLACKLIST_REASONS=BLACKLIST_REASONS)
# also registered by payment_pages: whichever module is imported first provides it
templates.env.filters.setdefault(
    "china_time", lambda when, fmt="%m-%d %H:%M:%S": when.astimezone(CHINA_TZ).strftime(fmt) if when else "")


# ---- resident H5 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """What the resident searches for and with which card; every action carries it to re-render the page."""

    card_no: str = ""
    facility: str = ""
    department: str = ""
    day: str = ""


async def search_terms(request: Request) -> Search:
    """The query of a GET, or the search form an action carried along (``hx-include``)."""
    data = request.query_params if request.method == "GET" else await request.form()
    return Search(**{k: str(data.get(k) or "").strip() for k in ("card_no", "facility", "department", "day")})


def _seconds_left(until: datetime | None) -> int:
    return max(0, int((until - datetime.now(UTC)).total_seconds())) if until else 0


def _department_names(session: Session, facility_codes: set[str]) -> dict[tuple[str, str], str]:
    return {(code, d.code): d.name for code in facility_codes for d in registry.list_departments(session, code)}


def h5_context(session: Session, who: auth.Principal, search: Search, *, error: SmartCareError | None = None,
               notice: str | None = None, held_no: str | None = None) -> dict:
    """Everything the booking area shows: the search and its slots, the account's appointments (the one
    just held on top, with its countdown), waitlist entries and notifications."""
    held_cards = healthcard.held_cards(session, who.username)
    names = {c.card_no: c.name_masked for c, _ in held_cards}
    cards = [(c, r) for c, r in held_cards if c.state == "active"]
    card_no = search.card_no if search.card_no in {c.card_no for c, _ in cards} else \
        (cards[0][0].card_no if cards else "")
    departments = {d.code: d.name for d in registry.list_departments(session, search.facility)} if search.facility else {}
    department = search.department if search.department in departments else ""
    try:
        day = form_day(search.day, "day")
    except InvalidInput as exc:
        day, error = None, error or exc
    slots = service.search(session, facility_code=search.facility or None, department_code=department or None,
                           date_from=day, date_to=day, limit=SHOWN_SLOTS)
    mine = [{"a": a, "slot": s, "patient": names.get(a.card_no, "—"), "left": _seconds_left(a.held_until)}
            for a, s in service.my_appointments(session, account=who.username, limit=30)]
    waiting = service.my_waitlist(session, account=who.username)
    hospital_names = registry.facility_names(
        session, {s.facility_code for s in slots} | {m["a"].facility_code for m in mine}
        | {w.facility_code for w in waiting})
    now = datetime.now(UTC)
    return {
        "who": who, "cards": cards, "card_no": card_no, "hospitals": registry.hospitals(session, limit=300),
        "facility": search.facility, "departments": departments, "department": department,
        "day": day.isoformat() if day else "", "today": china_today().isoformat(), "slots": slots, "now": now,
        "full_page": len(slots) == SHOWN_SLOTS, "hospital_names": hospital_names, "mine": mine,
        "held": next((m for m in mine if m["a"].appointment_no == held_no and m["a"].state == "held"), None),
        "waitlist": [(w, names.get(w.card_no, "—")) for w in waiting],
        "waitlist_departments": _department_names(session, {w.facility_code for w in waiting}),
        "notifications": service.notifications(session, account=who.username, limit=20),
        "error": error, "notice": notice}


def _render(request: Request, session: Session, who: auth.Principal, search: Search, **extra):
    template = "booking/_h5.html" if request.headers.get("HX-Request") else "booking/h5.html"
    return templates.TemplateResponse(request, template, h5_context(session, who, search, **extra))


def _act(request: Request, session: Session, who: auth.Principal, search: Search,
         act: Callable[[Session], dict]) -> HTMLResponse:
    """Run one resident action in a savepoint, then re-render the booking area with what it produced
    (a notice, the held appointment) or, when it was refused, why."""
    try:
        with session.begin_nested():
            extra = act(session)
    except SmartCareError as exc:
        extra = {"error": exc}
    session.expire_all()  # the triggers changed slot rows behind the ORM's back: read them again
    return _render(request, session, who, search, **extra)


async def _throttled(request: Request, who: auth.Principal, search: Search, act: Callable[[Session], dict]):
    """``_act`` behind the booking throttle, its database work off the event loop (as the API does it)."""
    refused = None
    try:
        await gate.admit(who.username)
    except SmartCareError as exc:  # too many attempts: said on the page like any refusal
        refused = exc

    def run() -> HTMLResponse:
        with session_scope() as session:
            if refused is not None:
                return _render(request, session, who, search, error=refused)
            return _act(request, session, who, search, act)

    return await in_db(run)


@router.get("/h5/booking", response_class=HTMLResponse)
def h5_booking(request: Request, search: Search = Depends(search_terms), session: Session = Depends(db),
               who: auth.Principal = Depends(RESIDENT)):
    """The pool by hospital, department and day; the account's appointments, waitlist and inbox below."""
    return _render(request, session, who, search)


@router.post("/h5/booking/slots/{slot_id}/hold", response_class=HTMLResponse, dependencies=[action])
async def h5_hold(request: Request, slot_id: int, search: Search = Depends(search_terms),
                  who: auth.Principal = Depends(RESIDENT)):
    """Hold a place for the chosen card: the page comes back with the confirmation view and its countdown."""
    def hold(session: Session) -> dict:
        return {"held_no": service.attempt(account=who.username, card_no=search.card_no, slot_id=slot_id).appointment_no}

    return await _throttled(request, who, search, hold)


@router.post("/h5/booking/appointments/{appointment_no}/confirm", response_class=HTMLResponse, dependencies=[action])
async def h5_confirm(request: Request, appointment_no: str, search: Search = Depends(search_terms),
                     who: auth.Principal = Depends(RESIDENT)):
    """Book a held place (a hold, or a waitlist offer)."""
    def confirm(session: Session) -> dict:
        a = service.confirm(session, account=who.username, appointment_no=appointment_no)
        return {"notice": f"预约成功：预约号 {a.appointment_no}。就诊当天在医院扫电子健康卡签到。"}

    return await _throttled(request, who, search, confirm)


@router.post("/h5/booking/appointments/{appointment_no}/cancel", response_class=HTMLResponse, dependencies=[action])
def h5_cancel(request: Request, appointment_no: str, search: Search = Depends(search_terms),
              session: Session = COMMITTED, who: auth.Principal = Depends(RESIDENT)):
    """Give up a hold (放弃) or cancel a booking up to the hospital's deadline (取消预约)."""
    def cancel(session: Session) -> dict:
        was_held = service.get_mine(session, account=who.username, appointment_no=appointment_no)[0].state == "held"
        a = service.cancel(session, account=who.username, appointment_no=appointment_no)
        return {"notice": f"已放弃，号源已释放（{a.appointment_no}）" if was_held else f"已取消预约 {a.appointment_no}"}

    return _act(request, session, who, search, cancel)


@router.post("/h5/booking/slots/{slot_id}/waitlist", response_class=HTMLResponse, dependencies=[action])
def h5_join_waitlist(request: Request, slot_id: int, search: Search = Depends(search_terms),
                     session: Session = COMMITTED, who: auth.Principal = Depends(RESIDENT)):
    """候补 for a full slot: wait for the same department (and doctor) on the same day."""
    def join(session: Session) -> dict:
        slot = service.get_slot(session, slot_id)
        patient = service.patient(session, account=who.username, card_no=search.card_no)
        service.join_waitlist(session, who=patient, facility_code=slot.facility_code,
                              department_code=slot.department_code, practitioner_code=slot.practitioner_code,
                              visit_date=slot.visit_date)
        minutes = fairness.effective(session, slot.facility_code).offer_minutes
        return {"notice": f"已加入候补：有号时为您保留 {minutes} 分钟并通知您确认。"}

    return _act(request, session, who, search, join)


@router.post("/h5/booking/waitlist/{entry_id}/leave", response_class=HTMLResponse, dependencies=[action])
def h5_leave_waitlist(request: Request, entry_id: int, search: Search = Depends(search_terms),
                      session: Session = COMMITTED, who: auth.Principal = Depends(RESIDENT)):
    def leave(session: Session) -> dict:
        service.leave_waitlist(session, account=who.username, entry_id=entry_id)
        return {"notice": "已退出候补"}

    return _act(request, session, who, search, leave)


# ---- console ----------------------------------------------------------------------------------------


def supply_chart(hospitals: list[dict]) -> dict:
    top = hospitals[:CHART_HOSPITALS]
    return {"kind": "bar", "categories": [h["name"] for h in top],
            "series": [{"name": "号源（位）", "data": [int(h["places"] or 0) for h in top]},
                       {"name": "已约", "data": [int(h["taken"] or 0) for h in top]}]}


def load_chart(load: list[dict]) -> dict:
    """Attempts per minute, one line per outcome (a minute without an outcome counts 0)."""
    minutes = sorted({r["minute"] for r in load})
    counts = {(r["minute"], r["outcome"]): int(r["n"]) for r in load}  # sum(bigint) is numeric: a Decimal
    outcomes = sorted({r["outcome"] for r in load}, key=lambda o: (o not in ATTEMPT_OUTCOMES, o))
    return {"kind": "line", "categories": minutes,
            "series": [{"name": ATTEMPT_OUTCOMES.get(o, o), "data": [counts.get((m, o), 0) for m in minutes]}
                       for o in outcomes]}


def blacklist_rows(session: Session) -> list[tuple]:
    return [(e, healthcard.masked_name(session, e.empi_id) or "—") for e in service.blacklist(session)]


def console_context(session: Session, days: int) -> dict:
    summary = stats.summary(session, days=days, slow_accounts=len(gate.slow_accounts()))
    hospitals = summary["hospitals"]
    places, taken = sum(h["places"] or 0 for h in hospitals), sum(h["taken"] or 0 for h in hospitals)
    rules = vars(fairness.effective(session, fairness.DEFAULT))
    return {"s": summary, "places": places, "taken": taken, "rate": taken / places if places else 0.0,
            "slots": sum(h["slots"] for h in hospitals), "free": sum(h["free"] or 0 for h in hospitals),
            "department_hospitals": registry.facility_names(session, {d["facility_code"] for d in summary["departments"]}),
            "supply_chart": supply_chart(hospitals), "load_chart": load_chart(summary["release_load"]),
            "blacklist": blacklist_rows(session), "sent": service.notifications(session, limit=20),
            "rules": [(name, label, rules[name].strftime("%H:%M") if name == "release_time" else rules[name])
                      for name, label in RULE_LABELS.items()]}


@router.get("/admin/booking", response_class=HTMLResponse)
def console_home(request: Request, days: int = Query(7, ge=1, le=60), session: Session = Depends(db),
                 who: auth.Principal = Depends(CONSOLE)):
    """预约监测: administrators lift blacklistings here; auditors see the same page without the form."""
    return templates.TemplateResponse(request, "booking/console.html", {
        "who": who, "can_act": who.has(Role.ADMIN), "days": days, **console_context(session, days)})


@router.post("/admin/booking/blacklist/{entry_id}/lift", response_class=HTMLResponse, dependencies=[action])
def console_lift(request: Request, entry_id: int, reason: str = Form(""), session: Session = COMMITTED,
                 who: auth.Principal = Depends(ADMIN)):
    """End a blacklisting early (an appeal accepted); the reason goes to the audit log with the lift."""
    notice = error = None
    try:
        if len(reason.strip()) < 2:
            raise InvalidInput("请填写解除原因（至少 2 个字）", field="reason")
        with session.begin_nested():
            service.lift(session, entry_id=entry_id, actor=who.username, reason=reason.strip())
        notice = f"已解除停约 #{entry_id}"
    except SmartCareError as exc:
        error = exc.message
    return templates.TemplateResponse(request, "booking/_blacklist.html", {
        "blacklist": blacklist_rows(session), "can_act": True, "notice": notice, "error": error,
        "failed_entry": entry_id if error else None})


# ---- hospital terminal: check in the patient just scanned -------------------------------------------


def _terminal_bookings(request: Request, session: Session, facility: str, empi_id: str, *,
                       notice: str | None = None, error: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(request, "booking/_terminal_checkin.html", {
        "facility": facility, "empi_id": empi_id, "notice": notice, "error": error,
        "bookings": service.checkable(session, facility_code=facility, empi_id=empi_id)})


@router.post("/admin/booking/terminal/bookings", response_class=HTMLResponse, dependencies=[action])
def terminal_bookings(request: Request, facility: str = Form(...), empi_id: str = Form(...),
                      session: Session = Depends(db), who: auth.Principal = Depends(ADMIN)):
    """After a scan at the terminal: the patient's bookings at this hospital that can be checked in now
    (the scan proved the patient is at the window; the EMPI id travels in the form, never in a URL)."""
    return _terminal_bookings(request, session, facility, empi_id)


@router.post("/admin/booking/terminal/checkin", response_class=HTMLResponse, dependencies=[action])
def terminal_checkin(request: Request, facility: str = Form(...), empi_id: str = Form(...),
                     appointment_no: str = Form(...), session: Session = COMMITTED,
                     who: auth.Principal = Depends(ADMIN)):
    notice = error = None
    try:
        with session.begin_nested():
            a, _ = service.check_in(session, facility_code=facility, appointment_no=appointment_no, empi_id=empi_id)
            audit.record(session, actor=who.username, action="booking.checkin", target=a.appointment_no,
                         detail={"facility": facility, "at": "terminal page"})
        notice = f"已签到 {a.appointment_no}"
    except SmartCareError as exc:
        error = exc.message
    return _terminal_bookings(request, session, facility, empi_id, notice=notice, error=error)
