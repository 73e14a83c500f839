"""Pages of the electronic health card: the resident's card with its self-refreshing QR, family
cards and real-name application (H5); the console's statistics, hospital terminal (scan a pasted
code or an uploaded picture of one) and the demo SMS gateway's outbox.

Codes are fetched with htmx POSTs (a code is made, never cached), so the same-site guard applies."""

from __future__ import annotations

import asyncio
from html import escape
from datetime import datetime

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from smartcare.healthcard import keys, service
from smartcare.healthcard.render import read_picture, svg
from smartcare.platform import auth
from smartcare.platform.auth import Role
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import session_scope
from smartcare.platform.errors import InvalidInput, SmartCareError
from smartcare.platform.settings import get_settings
from smartcare.registry import service as registry
from smartcare.web.deps import action, db, require
from smartcare.web.pages import CONSOLE_ROLES, templates

router = APIRouter(include_in_schema=False)
RESIDENT = require(Role.RESIDENT)
CHANNEL_NAMES = {"wechat": "微信支付", "alipay": "支付宝", "unionpay": "云闪付", "ecny": "数字人民币"}
STATE_NAMES = {"active": "正常", "frozen": "已冻结", "lost": "已挂失", "reissued": "已补办", "revoked": "已注销"}
STEP_NAMES = {"appointment": "预约", "registration": "挂号", "consultation": "就诊", "examination": "检查检验",
              "payment": "缴费", "pharmacy": "取药", "inpatient": "住院", "other": "其他"}
USE_CHANNEL_NAMES = {"window": "窗口", "kiosk": "自助机", "workstation": "医生工作站", "app": "移动应用"}
templates.env.globals.update(CHANNEL_NAMES=CHANNEL_NAMES, CARD_STATES=STATE_NAMES, STEP_NAMES=STEP_NAMES,
                             USE_CHANNEL_NAMES=USE_CHANNEL_NAMES, CHINA=CHINA_TZ)


def refresh_seconds() -> int:
    """The page asks for a new code this long after the last one: before it expires, with margin."""
    seconds = get_settings().healthcard_code_seconds
    return max(1, seconds - min(10, seconds // 3))


def _code_context(session: Session, card) -> dict:
    shown = service.dynamic_code(session, card=card)
    return {"card": card, "svg": svg(shown.text), "text": shown.text, "channels": shown.channels,
            "expires": datetime.fromtimestamp(shown.expires_at, CHINA_TZ).strftime("%H:%M:%S"),
            "refresh": refresh_seconds()}


# ---- resident H5 ------------------------------------------------------------------------------------


@router.get("/h5", response_class=HTMLResponse)
def h5_home(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(RESIDENT)):
    """My card: the QR of the account's own card (else its first), and the family's cards below."""
    held = [(c, r) for c, r in service.held_cards(session, who.username)]
    shown = next((c for c, r in held if c.state == "active"), None)
    return templates.TemplateResponse(request, "h5/home.html", {
        "who": who, "held": held, "code": _code_context(session, shown) if shown else None,
        "bound": {c.card_no: [b.channel for b in service.bindings(session, c)] for c, _ in held}})


@router.post("/h5/card/{card_no}/qr", response_class=HTMLResponse, dependencies=[action])
def h5_qr(request: Request, card_no: str, session: Session = Depends(db), who: auth.Principal = Depends(RESIDENT)):
    """A fresh code for one of the account's cards (the htmx partial that replaces itself before expiry)."""
    card = service.holder_card(session, username=who.username, card_no=card_no)
    return templates.TemplateResponse(request, "healthcard/_qr.html", _code_context(session, card))


@router.post("/h5/card/{card_no}/bind", response_class=HTMLResponse, dependencies=[action])
def h5_bind(request: Request, card_no: str, channel: str = Form(...), session: Session = Depends(db),
            who: auth.Principal = Depends(RESIDENT)):
    card = service.holder_card(session, username=who.username, card_no=card_no)
    service.bind_channel(session, card=card, channel=channel, actor=who.username)
    return templates.TemplateResponse(request, "healthcard/_qr.html", _code_context(session, card))


@router.post("/h5/card/{card_no}/lost", response_class=HTMLResponse, dependencies=[action])
def h5_report_lost(request: Request, card_no: str, session: Session = Depends(db),
                   who: auth.Principal = Depends(RESIDENT)):
    """Report lost and reissue at once: the phone still works, so the old codes stop and a new card shows."""
    card = service.holder_card(session, username=who.username, card_no=card_no)
    service.change_state(session, card_no=card.card_no, action="report_lost", actor=who.username, reason="H5")
    new = service.reissue(session, card_no=card.card_no, actor=who.username, reason="H5")
    return templates.TemplateResponse(request, "healthcard/_qr.html", _code_context(session, new))


@router.get("/h5/card/apply", response_class=HTMLResponse)
def h5_apply_form(request: Request, who: auth.Principal = Depends(RESIDENT)):
    return templates.TemplateResponse(request, "healthcard/apply.html", {"who": who, "error": None, "form": {}})


@router.post("/h5/card/otp", response_class=HTMLResponse, dependencies=[action])
def h5_send_otp(request: Request, phone: str = Form(""), session: Session = Depends(db),
                who: auth.Principal = Depends(RESIDENT)):
    try:
        service.send_code(session, phone=phone)
    except SmartCareError as exc:
        return HTMLResponse(f'<span class="error" id="otp-status">{escape(exc.message)}</span>')
    return HTMLResponse('<span class="ok" id="otp-status">验证码已发送，5 分钟内有效</span>')


@router.post("/h5/card/apply", response_class=HTMLResponse, dependencies=[action])
def h5_apply(request: Request, name: str = Form(""), id_number: str = Form(""), phone: str = Form(""),
             otp: str = Form(""), relation: str = Form("self"), pin: str = Form(""),
             session: Session = Depends(db), who: auth.Principal = Depends(RESIDENT)):
    """Real-name application from the form (htmx, so the same-site guard applies); errors come back on
    the form, nothing half-done is kept."""
    form = {"name": name, "phone": phone, "relation": relation}  # the ID number is not echoed back
    try:
        with session.begin_nested():
            service.check_code(session, phone=phone, code=otp)
            service.real_name.check(session, name=name, id_number=id_number, phone=phone, relation=relation)
            service.issue(session, holder=who.username, relation=relation, name=name, id_number=id_number,
                          phone=phone, pin=pin or None, actor=who.username)
    except SmartCareError as exc:
        return templates.TemplateResponse(request, "healthcard/apply.html", {"who": who, "error": exc, "form": form})
    return HTMLResponse("", headers={"HX-Redirect": "/h5"})


# ---- console ----------------------------------------------------------------------------------------


@router.get("/admin/healthcard", response_class=HTMLResponse)
def console_home(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    stats = service.stats(session)
    return templates.TemplateResponse(request, "healthcard/console.html", {
        "who": who, "stats": stats, "keys": keys.listing(session),
        "hospital_names": registry.facility_names(session, (code for code, _ in stats["by_hospital"]))})


@router.get("/admin/healthcard/terminal", response_class=HTMLResponse)
def terminal(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(require(Role.ADMIN))):
    return templates.TemplateResponse(request, "healthcard/terminal.html", {
        "who": who, "hospitals": registry.hospitals(session, limit=300)})


@router.post("/admin/healthcard/terminal", response_class=HTMLResponse, dependencies=[action])
async def terminal_scan(request: Request, facility: str = Form(...), step: str = Form("registration"),
                        channel: str = Form("window"), code: str = Form(""), image: UploadFile | None = File(None),
                        who: auth.Principal = Depends(require(Role.ADMIN))):
    """Scan as a hospital terminal would: the code pasted, or read from an uploaded picture."""
    picture = await image.read() if image is not None and image.filename else b""

    def scan() -> dict:
        try:
            text_ = read_picture(picture) if picture else code.strip()
            if not text_:
                raise InvalidInput("paste a code or upload a picture of one", field="code")
            with session_scope() as session:
                found = service.verify(session, code_text=text_, facility_code=facility, step=step, channel=channel)
            return {"found": found, "error": None}
        except SmartCareError as exc:
            return {"found": None, "error": exc}

    result = await asyncio.to_thread(scan)
    return templates.TemplateResponse(request, "healthcard/_scan_result.html", {**result, "facility": facility})


@router.get("/admin/healthcard/sms", response_class=HTMLResponse)
def sms_outbox(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(require(Role.ADMIN))):
    """What the demo SMS gateway would have sent (phones masked)."""
    return templates.TemplateResponse(request, "healthcard/sms.html", {"who": who, "messages": service.sms_outbox(session)})
