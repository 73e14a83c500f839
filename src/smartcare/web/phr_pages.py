"""Pages of personal health records (个人健康档案): the resident's 我的健康档案 and 授权管理 on H5, the
doctor's 病历调阅 and the auditor's 调阅审计 in the console.

Who may read whose records is ``records.access`` and nothing here: every page that shows records asks
``decide`` first (a refusal is audited there, in its own transaction, and shown on the page as a
message), gathers the data, then writes the read to the audit chain with ``record_read`` just before
the page is rendered, committed in a transaction of its own. An audited write of the same request (a
break-glass) is committed before ``decide`` runs, so the audit entries apart never wait for this request's
own hold on the audit log (``record_apart`` refuses to).

Records are shown from the clinical items read at registration (``records.phr``), never from the XML.
People appear by the masked name on their health card; the doctor's console shows a patient's name
only once the scan of their card or the consent makes them the doctor's patient.

The PDF summary is made with reportlab and its built-in CID font STSong-Light (Adobe-GB1), so Chinese
renders in every PDF reader without shipping a font file.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import escape
from typing import TYPE_CHECKING, Final

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from smartcare.healthcard import service as healthcard
from smartcare.platform import audit, auth
from smartcare.platform.auth import Role
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.errors import Forbidden, InvalidInput, SmartCareError
from smartcare.records import access as consent, phr
from smartcare.records.clinical import SENSITIVE, SENSITIVE_NAMES
from smartcare.registry import service as registry
from smartcare.standards.cda import TITLES
from smartcare.web.deps import action, db, require
from smartcare.web.pages import form_day, templates

if TYPE_CHECKING:
    from smartcare.records.models import Item

router = APIRouter(include_in_schema=False)
RESIDENT = require(Role.RESIDENT)
DOCTOR = require(Role.DOCTOR)
AUDITOR = require(Role.AUDITOR, Role.ADMIN)
#: what a page changes (a consent, a request, a break-glass) is committed before the page is sent (``db``
#: commits after), so what the page shows next is already so
COMMITTED = Depends(db, scope="function")

PHR_BASIS: Final = {"self": "本人", "guardian": "监护人", "consent": "患者授权", "break_glass": "紧急调阅"}
PHR_PURPOSES: Final = {**consent.PURPOSES, "self": "本人查阅", "emergency": "急救"}
PHR_ROLES: Final = {"resident": "居民", "doctor": "医生", "admin": "管理员", "auditor": "审计员",
                    "hospital_staff": "医院工作人员", "unknown": "未知"}
PHR_WHAT: Final = {"timeline": "健康档案", "summary.pdf": "PDF 摘要", "export": "导出 FHIR", "Patient": "基本信息",
                   "Patient/$everything": "全部记录（FHIR）"}
CONSENT_STATES: Final = {"active": "有效", "expired": "已过期", "revoked": "已撤销"}
REQUEST_STATES: Final = {"pending": "待处理", "approved": "已同意", "denied": "已拒绝"}
#: a refusal's headline by the error's code; the service's message and hint follow it
PHR_REFUSALS: Final = {"forbidden": "无权查阅", "invalid_input": "输入有误", "not_found": "未找到", "conflict": "无法办理"}
#: the parts of a prescription (WS 445 data elements) and how the page names them
RX_PARTS: Final = {"DE08.50.022.00": "drug", "DE08.50.044.00": "dose", "DE06.00.133.00": "frequency",
                   "DE06.00.134.00": "route"}
RX_LABELS: Final = {"dose": "每次", "frequency": "频次", "route": "途径"}
DIAGNOSIS_NAME: Final = "DE05.01.025.00"  # repeats the coded diagnosis as text
AUDIT_DAYS: Final = 30

templates.env.globals.update(PHR_BASIS=PHR_BASIS, PHR_PURPOSES=PHR_PURPOSES, PHR_ROLES=PHR_ROLES, PHR_WHAT=PHR_WHAT,
                             CONSENT_STATES=CONSENT_STATES, REQUEST_STATES=REQUEST_STATES, PHR_REFUSALS=PHR_REFUSALS,
                             RX_LABELS=RX_LABELS, SENSITIVE=SENSITIVE, SENSITIVE_NAMES=SENSITIVE_NAMES,
                             CONSENT_PURPOSES=consent.PURPOSES, BREAK_GLASS_HOURS=consent.BREAK_GLASS_HOURS,
                             READ_ACTION=consent.READ)
# also registered by the other page modules: whichever is imported first provides it
templates.env.filters.setdefault(
    "china_time", lambda when, fmt="%m-%d %H:%M:%S": when.astimezone(CHINA_TZ).strftime(fmt) if when else "")


# ---- what a visit shows ------------------------------------------------------------------------------


def number(value: Decimal | float | int | None) -> str:
    """A measured value as people write it: no trailing zeros, no exponent."""
    if value is None:
        return ""
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    return format(d.normalize(), "f")


def item_value(i: Item) -> str:
    """One item's value as text: a number with its unit, a coded value's display, or the text."""
    if i.value_number is not None:
        return f"{number(i.value_number)} {i.unit}".strip() if i.unit else number(i.value_number)
    return i.value_display or i.value_text or i.value_code or "—"


templates.env.filters["phr_number"] = number
templates.env.filters["phr_value"] = item_value


@dataclass
class VisitView:
    """One encounter as the timeline shows it: what was found, prescribed and measured, once each."""

    id: str
    facility_code: str
    facility_name: str | None
    at: datetime
    inpatient: bool
    documents: list[tuple[str, str | None]] = field(default_factory=list)  # (type name, its sensitive categories)
    diagnoses: list[Item] = field(default_factory=list)
    vitals: list[Item] = field(default_factory=list)
    labs: list[Item] = field(default_factory=list)
    findings: list[Item] = field(default_factory=list)
    notes: list[Item] = field(default_factory=list)
    prescriptions: list[dict] = field(default_factory=list)  # {"drug": str, "details": [(label, value)]}
    sensitive: list[str] = field(default_factory=list)


def visit_view(v: phr.Visit) -> VisitView:
    out = VisitView(v.id, v.facility_code, v.facility_name, v.at, v.inpatient, sensitive=sorted(v.sensitive))
    diagnoses: dict[str, Item] = {}
    seen: set[tuple] = set()
    lists = {"vital": out.vitals, "lab": out.labs, "finding": out.findings, "note": out.notes}
    for d in v.documents:
        items = v.items.get(d.id, [])
        categories = sorted({c for i in items for c in (i.sensitive or ())})
        out.documents.append((d.type_name or TITLES.get(d.type_code, d.type_code), ",".join(categories) or None))
        rx: dict | None = None
        for i in items:
            if i.kind == "condition":
                diagnoses.setdefault(i.value_code or i.value_display or str(i.id), i)
            elif i.kind == "medication":
                part = RX_PARTS.get(i.code) or (i.name or i.code)
                if rx is None or part in rx:  # a drug's parts follow each other; a repeated part starts the next
                    rx = {}
                    out.prescriptions.append(rx)
                rx[part] = item_value(i)
            elif i.kind in lists and not (i.kind == "note" and i.code == DIAGNOSIS_NAME):
                key = (i.kind, i.code, item_value(i))
                if key not in seen:
                    seen.add(key)
                    lists[i.kind].append(i)
    out.diagnoses = list(diagnoses.values())
    out.prescriptions = [{"drug": rx.get("drug", "未知药品"),
                          "details": [(RX_LABELS.get(k, k), v) for k, v in rx.items() if k != "drug"]}
                         for rx in out.prescriptions]
    return out


@dataclass(frozen=True)
class Person:
    """Someone whose card the account holds: the records it may read."""

    empi_id: str
    name: str  # masked, as on the card
    relation: str  # self | guardian


def people(session: Session, username: str) -> list[Person]:
    """The cards' people this account may read (a guardian's card of a child come of age is not listed)."""
    readable = consent.held_persons(session, username)
    out: dict[str, Person] = {}
    for card, relation in healthcard.held_cards(session, username):
        if card.empi_id in readable:
            out.setdefault(card.empi_id, Person(card.empi_id, card.name_masked,
                                                "self" if relation == "self" else "guardian"))
    return list(out.values())


# ---- resident H5: 我的健康档案 ---------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    hospital: str = ""
    type: str = ""
    start: str = ""
    end: str = ""


def _records_page(request: Request, context: dict, status: int = 200) -> HTMLResponse:
    return templates.TemplateResponse(request, "phr/h5_records.html", context, status_code=status)


@router.get("/h5/records", response_class=HTMLResponse)
def h5_records(request: Request, empi_id: str = Query("", max_length=40), hospital: str = Query("", max_length=64),
               type: str = Query("", max_length=8), start: str = Query("", max_length=10),
               end: str = Query("", max_length=10), session: Session = COMMITTED,
               who: auth.Principal = Depends(RESIDENT)):
    """My records or my child's: the summary, then every encounter across hospitals, newest first."""
    mine = people(session, who.username)
    chosen = empi_id.strip() or (mine[0].empi_id if mine else "")
    filters = Filters(hospital.strip(), type.strip(), start.strip(), end.strip())
    context = {"who": who, "people": mine, "empi_id": chosen, "filters": filters, "error": None, "access": None,
               "person": next((p for p in mine if p.empi_id == chosen), None), "visits": [], "summary": None,
               "hospitals": {}, "types": {}}
    if not chosen:
        return _records_page(request, context)
    try:
        since, until = form_day(filters.start, "start"), form_day(filters.end, "end")
    except InvalidInput as exc:
        since = until = None
        context["error"] = exc
    try:
        access = consent.decide(session, who, chosen, what="timeline")
    except SmartCareError as exc:  # not a person whose card the account holds: said on the page
        context.update(error=exc, person=None)
        return _records_page(request, context, status=exc.status)
    everything = phr.visits(session, access)
    filtered = bool(filters.hospital or filters.type or since or until)
    shown = phr.visits(session, access, facility_code=filters.hospital or None, type_code=filters.type or None,
                       start=since, end=until) if filtered else everything
    context.update(
        access=access, summary=phr.summary(everything), visits=[visit_view(v) for v in shown], filtered=filtered,
        hospitals={v.facility_code: v.facility_name or v.facility_code for v in everything},
        types=dict(sorted({d.type_code: d.type_name or TITLES.get(d.type_code, d.type_code)
                           for v in everything for d in v.documents}.items())))
    consent.record_read(session, who, access, what="timeline")
    return _records_page(request, context)


@router.get("/h5/records/{empi_id}/summary.pdf")
def h5_summary_pdf(empi_id: str = Path(pattern=r"^E[0-9]{11}$"), session: Session = COMMITTED,
                   who: auth.Principal = Depends(RESIDENT)):
    """The summary and the timeline as a PDF to print or hand to a doctor (a read like any other: audited)."""
    access = consent.decide(session, who, empi_id, what="summary.pdf")
    found = phr.visits(session, access)
    person = next((p for p in people(session, who.username) if p.empi_id in (access.empi_id, empi_id)), None)
    body = summary_pdf(name=person.name if person else "—", empi_id=access.empi_id, summary=phr.summary(found),
                       visits=[visit_view(v) for v in found])
    consent.record_read(session, who, access, what="summary.pdf")
    return Response(body, media_type="application/pdf", headers={
        "Content-Disposition": f'attachment; filename="health-summary-{access.empi_id}.pdf"'})


# ---- resident H5: 授权管理 ------------------------------------------------------------------------


def _consent_state(c) -> str:
    if c.state == "active" and c.valid_until <= datetime.now(UTC):
        return "expired"
    return c.state


def consent_context(session: Session, who: auth.Principal, *, error: SmartCareError | None = None,
                    notice: str | None = None) -> dict:
    mine = people(session, who.username)
    names = {p.empi_id: p.name for p in mine}
    granted = consent.consents(session, username=who.username)
    asked = consent.requests_for(session, username=who.username)
    held = list(consent.held_persons(session, who.username))  # the cards' ids and, after merges, the current ones
    trail = consent.accesses(session, empi_ids=held) if held else []
    codes = {c.facility_code for c in granted} | {r.facility_code for r in asked} | \
        {e.detail.get("facility_code") for e in trail}
    return {"who": who, "people": mine, "names": names, "error": error, "notice": notice,
            "consents": [(c, _consent_state(c)) for c in granted], "requests": asked, "accesses": trail,
            "hospital_names": registry.facility_names(session, {c for c in codes if c}),
            "hospitals": registry.hospitals(session, limit=300)}


def _consent_area(request: Request, session: Session, who: auth.Principal, **extra) -> HTMLResponse:
    template = "phr/_consent.html" if request.headers.get("HX-Request") else "phr/h5_consent.html"
    return templates.TemplateResponse(request, template, consent_context(session, who, **extra))


def _consent_act(request: Request, session: Session, who: auth.Principal, act) -> HTMLResponse:
    """One resident action in a savepoint; the area comes back with what it did or why it was refused."""
    try:
        with session.begin_nested():
            notice = act(session)
    except SmartCareError as exc:
        return _consent_area(request, session, who, error=exc)
    return _consent_area(request, session, who, notice=notice)


@router.get("/h5/records/consent", response_class=HTMLResponse)
def h5_consent(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(RESIDENT)):
    """Consents given, doctors' requests waiting for an answer, and who looked at the records."""
    return _consent_area(request, session, who)


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise InvalidInput("days is a whole number of days", field="days") from None
    if not 1 <= days <= consent.MAX_CONSENT_DAYS:
        raise InvalidInput(f"a consent lasts 1 to {consent.MAX_CONSENT_DAYS} days", field="days")
    return days


@router.post("/h5/records/consent/grant", response_class=HTMLResponse, dependencies=[action])
def h5_grant(request: Request, empi_id: str = Form(""), facility_code: str = Form(""), doctor: str = Form(""),
             purpose: str = Form("treatment"), days: str = Form("30"), records_since: str = Form(""),
             records_until: str = Form(""), sensitive: list[str] = Form(default=[]), session: Session = COMMITTED,
             who: auth.Principal = Depends(RESIDENT)):
    def grant(session: Session) -> str:
        if not facility_code.strip():
            raise InvalidInput("choose the hospital whose doctors may read the records", field="facility_code")
        hospital = registry.get_facility(session, facility_code.strip())
        c = consent.grant(session, username=who.username, empi_id=empi_id.strip(), facility_code=hospital.code,
                          doctor=doctor.strip()[:64] or None, purpose=purpose, days=_days(days),
                          records_since=form_day(records_since, "records_since"),
                          records_until=form_day(records_until, "records_until"), sensitive=tuple(sensitive))
        whom = f"{hospital.name}的医生 {c.doctor}" if c.doctor else f"{hospital.name}的医生"
        return f"已授权{whom}调阅健康档案（{consent.PURPOSES[c.purpose]}），有效至 " \
               f"{c.valid_until.astimezone(CHINA_TZ):%Y-%m-%d %H:%M}"

    return _consent_act(request, session, who, grant)


@router.post("/h5/records/consent/{consent_id}/revoke", response_class=HTMLResponse, dependencies=[action])
def h5_revoke(request: Request, consent_id: int = Path(ge=1, le=2**63 - 1), session: Session = COMMITTED,
              who: auth.Principal = Depends(RESIDENT)):
    def revoke(session: Session) -> str:
        consent.revoke(session, username=who.username, consent_id=consent_id)
        return f"已撤销授权 #{consent_id}：此后的调阅一律拒绝"

    return _consent_act(request, session, who, revoke)


@router.post("/h5/records/requests/{request_id}/answer", response_class=HTMLResponse, dependencies=[action])
def h5_answer(request: Request, request_id: int = Path(ge=1, le=2**63 - 1), approve: str = Form(""),
              days: str = Form("30"), sensitive: list[str] = Form(default=[]), session: Session = COMMITTED,
              who: auth.Principal = Depends(RESIDENT)):
    def answer(session: Session) -> str:
        yes = approve == "1"
        req = consent.answer(session, username=who.username, request_id=request_id, approve=yes,
                             days=_days(days) if yes else 30, sensitive=tuple(sensitive) if yes else ())
        return f"已同意医生 {req.doctor} 的调阅申请" if yes else f"已拒绝医生 {req.doctor} 的调阅申请"

    return _consent_act(request, session, who, answer)


# ---- doctor's console: 病历调阅 -----------------------------------------------------------------------


def _patient(request: Request, session: Session, who: auth.Principal, empi_id: str, *, found=None,
             notice: str | None = None, error: SmartCareError | None = None, decide: bool = True) -> HTMLResponse:
    """The patient area: what the doctor may read and the timeline, or the refusal and how to ask.
    ``decide=False`` after an action whose outcome is the page (a request sent, a refused emergency):
    the refusal is not asked, and audited, a second time."""
    context = {"who": who, "empi_id": empi_id, "found": found, "notice": notice, "error": error, "access": None,
               "refused": None, "name": found.name_masked if found else None}
    if decide and empi_id:
        try:
            access = consent.decide(session, who, empi_id, what="timeline")
        except Forbidden as exc:
            context["refused"] = exc
        else:
            visits = phr.visits(session, access)
            context.update(access=access, empi_id=access.empi_id, visits=[visit_view(v) for v in visits],
                           summary=phr.summary(visits),
                           name=context["name"] or healthcard.masked_name(session, access.empi_id))
            consent.record_read(session, who, access, what="timeline")
    return templates.TemplateResponse(request, "phr/_patient.html", context)


@router.get("/admin/records", response_class=HTMLResponse)
def console_records(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(DOCTOR)):
    """病历调阅: find the patient by a scan of their health card or by EMPI id."""
    hospital = registry.facility_names(session, [who.facility_code]).get(who.facility_code) if who.facility_code else None
    return templates.TemplateResponse(request, "phr/console.html", {"who": who, "hospital": hospital})


@router.post("/admin/records/find", response_class=HTMLResponse, dependencies=[action])
def console_find(request: Request, code: str = Form(""), pin: str = Form(""), empi_id: str = Form(""),
                 session: Session = COMMITTED, who: auth.Principal = Depends(DOCTOR)):
    """A scan is verified at the doctor's hospital (the card shows the patient is in the room); an EMPI
    id is taken as typed. Either way the consent decides what is shown."""
    found = None
    try:
        if not who.facility_code:
            raise Forbidden("this doctor's account belongs to no hospital", field="facility_code",
                            hint="ask the administrator to bind the account to its hospital")
        if code.strip():
            with session.begin_nested():  # a refused code leaves nothing half-done
                found = healthcard.verify(session, code_text=code.strip(), facility_code=who.facility_code,
                                          step="consultation", channel="workstation", pin=pin.strip() or None)
            empi_id = found.empi_id
        elif not empi_id.strip():
            raise InvalidInput("paste the scanned health-card code or type the patient's EMPI id", field="code")
    except SmartCareError as exc:
        return _patient(request, session, who, "", error=exc, decide=False)
    return _patient(request, session, who, empi_id.strip()[:40], found=found)


@router.post("/admin/records/request", response_class=HTMLResponse, dependencies=[action])
def console_request(request: Request, empi_id: str = Form(...), purpose: str = Form("treatment"),
                    reason: str = Form(""), session: Session = COMMITTED, who: auth.Principal = Depends(DOCTOR)):
    """Ask the patient for access: they answer on their phone (授权管理)."""
    try:
        with session.begin_nested():
            req = consent.request_access(session, who=who, empi_id=empi_id, purpose=purpose, reason=reason)
    except SmartCareError as exc:
        return _patient(request, session, who, empi_id, error=exc, decide=False)
    return _patient(request, session, who, req.empi_id, decide=False, notice=(
        f"已向患者发送调阅申请（{consent.PURPOSES.get(req.purpose, req.purpose)}）：患者在手机上同意后即可调阅"))


@router.post("/admin/records/break-glass", response_class=HTMLResponse, dependencies=[action])
def console_break_glass(request: Request, empi_id: str = Form(...), reason: str = Form(""),
                        session: Session = COMMITTED, who: auth.Principal = Depends(DOCTOR)):
    """Emergency access: the reason and the access are recorded and flagged for an auditor's review."""
    try:
        with session.begin_nested():
            glass = consent.break_glass(session, who=who, empi_id=empi_id, reason=reason)
    except SmartCareError as exc:
        return _patient(request, session, who, empi_id, error=exc, decide=False)
    session.commit()  # the access (and its audit entry) stands on its own, before the records are read
    return _patient(request, session, who, glass.empi_id, notice=(
        f"紧急调阅已开启 {consent.BREAK_GLASS_HOURS} 小时，已记录并提交审计复核"))


# ---- auditor's console: 调阅审计 ------------------------------------------------------------------------


def _break_glass_rows(session: Session, rows: list) -> list[tuple]:
    names = registry.facility_names(session, {g.facility_code for g in rows})
    return [(g, healthcard.masked_name(session, g.empi_id) or "—", names.get(g.facility_code, g.facility_code))
            for g in rows]


@router.get("/admin/records/audit", response_class=HTMLResponse)
def console_audit(request: Request, days: int = Query(AUDIT_DAYS, ge=1, le=366),
                  reads_per_day: int = Query(30, ge=1, le=10_000), session: Session = Depends(db),
                  who: auth.Principal = Depends(AUDITOR)):
    """Break-glass accesses to review, refused attempts per caller, doctors who read unusually many patients."""
    report = consent.audit_report(session, since=datetime.now(UTC) - timedelta(days=days), reads_per_day=reads_per_day)
    return templates.TemplateResponse(request, "phr/audit.html", {
        "who": who, "days": days, "reads_per_day": reads_per_day, "glass": _break_glass_rows(session, report["break_glass"]),
        "refused": report["refused"], "unusual": report["unusual"], "now": datetime.now(UTC)})


@router.post("/admin/records/audit/break-glass/{glass_id}/review", response_class=HTMLResponse, dependencies=[action])
def console_review(request: Request, glass_id: int = Path(ge=1, le=2**63 - 1), note: str = Form(""),
                   days: int = Form(AUDIT_DAYS), session: Session = COMMITTED, who: auth.Principal = Depends(AUDITOR)):
    notice = error = None
    try:
        if len(note.strip()) < 2:
            raise InvalidInput("请填写复核意见（至少 2 个字）", field="note")
        with session.begin_nested():
            consent.review_break_glass(session, id=glass_id, reviewer=who.username, note=note)
        notice = f"已复核紧急调阅 #{glass_id}"
    except SmartCareError as exc:
        error = exc.message
    report = consent.audit_report(session, since=datetime.now(UTC) - timedelta(days=max(1, min(days, 366))))
    return templates.TemplateResponse(request, "phr/_break_glass.html", {
        "glass": _break_glass_rows(session, report["break_glass"]), "notice": notice, "error": error,
        "failed": glass_id if error else None, "days": days, "now": datetime.now(UTC)})


@router.get("/admin/records/audit/chain", response_class=HTMLResponse)
def console_chain(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(AUDITOR)):
    """The audit chain walked from its first entry (loaded after the page: it reads the whole log)."""
    return templates.TemplateResponse(request, "phr/_chain.html", {"result": audit.verify(session)})


# ---- the PDF summary ------------------------------------------------------------------------------------

PDF_FONT: Final = "STSong-Light"


@functools.cache
def _font() -> str:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    pdfmetrics.registerFont(UnicodeCIDFont(PDF_FONT))
    return PDF_FONT


def summary_pdf(*, name: str, empi_id: str, summary: dict, visits: list[VisitView]) -> bytes:
    """个人健康档案摘要: who, the summary (hospitals, diagnoses, latest vital signs), then each encounter."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    font = _font()
    base = ParagraphStyle("body", fontName=font, fontSize=10, leading=15, wordWrap="CJK")
    small = ParagraphStyle("small", parent=base, fontSize=8.5, leading=12, textColor=colors.HexColor("#555555"))
    title = ParagraphStyle("title", parent=base, fontSize=18, leading=26, spaceAfter=4)
    h2 = ParagraphStyle("h2", parent=base, fontSize=13, leading=20, spaceBefore=10, spaceAfter=4,
                        textColor=colors.HexColor("#0d47a1"))
    h3 = ParagraphStyle("h3", parent=base, fontSize=11, leading=16, spaceBefore=8, spaceAfter=2)
    grid = TableStyle([("FONTNAME", (0, 0), (-1, -1), font), ("FONTSIZE", (0, 0), (-1, -1), 9),
                       ("GRID", (0, 0), (-1, -1), 0.4, colors.HexColor("#c5ced8")),
                       ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f0f3f7")),
                       ("VALIGN", (0, 0), (-1, -1), "TOP")])

    def p(text: str, style=base) -> Paragraph:
        return Paragraph(escape(text), style)

    def table(rows: list[list[str]], widths: list[float]) -> Table:
        t = Table([[p(c, small) for c in row] for row in rows], colWidths=widths, repeatRows=1)
        t.setStyle(grid)
        return t

    made = datetime.now(CHINA_TZ)
    story = [p("个人健康档案摘要", title),
             p(f"姓名：{name}　　主索引号：{empi_id}　　生成时间：{made:%Y-%m-%d %H:%M}", small),
             p("本摘要由区域健康信息平台根据各医院上传的电子病历共享文档生成，仅供本人及其授权的医生参考。", small),
             p("概要", h2),
             p(f"就诊 {summary['visits']} 次；就诊医院：{'、'.join(summary['hospitals']) or '无'}")]
    if summary["diagnoses"]:
        story += [p("诊断", h3), table([["诊断", "ICD-10", "最近诊断日期"]] + [
            [d["name"] or "—", d["code"], d["at"].astimezone(CHINA_TZ).strftime("%Y-%m-%d")]
            for d in summary["diagnoses"]], [95 * mm, 35 * mm, 40 * mm])]
    if summary["vitals"]:
        story += [p("最近生命体征", h3), table([["项目", "数值", "测量日期"]] + [
            [v["name"] or "—", f"{number(v['value'])} {v['unit'] or ''}".strip(),
             v["at"].astimezone(CHINA_TZ).strftime("%Y-%m-%d")] for v in summary["vitals"]], [70 * mm, 50 * mm, 50 * mm])]
    story.append(p("就诊时间线", h2))
    if not visits:
        story.append(p("暂无就诊记录"))
    for v in visits:
        head = f"{v.at.astimezone(CHINA_TZ):%Y-%m-%d %H:%M}　{v.facility_name or v.facility_code}　" \
               f"{'住院' if v.inpatient else '门诊'}"
        if v.sensitive:
            head += "　【敏感：" + "、".join(SENSITIVE_NAMES.get(s, s) for s in v.sensitive) + "】"
        block = [p(head, h3), p("文档：" + "、".join(name for name, _ in v.documents), small)]
        if v.diagnoses:
            block.append(p("诊断：" + "；".join(f"{i.value_display or i.value_text or '—'}（{i.value_code}）"
                                             if i.value_code else (i.value_display or i.value_text or "—")
                                             for i in v.diagnoses)))
        if v.vitals:
            block.append(p("生命体征：" + "；".join(f"{i.name or i.code} {item_value(i)}" for i in v.vitals)))
        for rx in v.prescriptions:
            block.append(p("处方：" + rx["drug"] + "".join(f"，{label} {value}" for label, value in rx["details"])))
        if v.labs:
            block.append(table([["检验项目", "结果", "单位"]] + [
                [i.name or i.code, number(i.value_number) if i.value_number is not None else item_value(i), i.unit or ""]
                for i in v.labs], [90 * mm, 40 * mm, 40 * mm]))
        for i in v.findings:
            block.append(p(f"{i.name or '检查所见'}：{item_value(i)}"))
        for i in v.notes:
            block.append(p(f"{i.name or i.code}：{item_value(i)}", small))
        story.append(KeepTogether(block[:2]))
        story += block[2:] + [Spacer(1, 3 * mm)]

    def footer(canvas, doc) -> None:
        canvas.saveState()
        canvas.setFont(font, 8)
        canvas.drawString(18 * mm, 10 * mm, f"个人健康档案摘要 · {empi_id}")
        canvas.drawRightString(A4[0] - 18 * mm, 10 * mm, f"第 {doc.page} 页")
        canvas.restoreState()

    out = io.BytesIO()
    SimpleDocTemplate(out, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm,
                      bottomMargin=18 * mm, title="个人健康档案摘要", author="SmartCare").build(
        story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()

