"""Personal health records over HTTP: a FHIR R4 read API (``/fhir``) and the JSON the resident's H5 pages and
the doctors' console use (``/api/v1/phr``).

Bearer tokens (``POST /api/v1/auth/token``, optionally with SMART scopes such as ``patient/*.read`` for a
resident or ``user/Observation.read`` for a doctor). Who may read whose records is ``records.access``:
a resident the people whose cards they hold, a doctor under the patient's consent or break-glass. Every
read is audited after the data is gathered, in a transaction of its own committed before the data is sent;
every refusal is audited too. The FHIR reads run in one thread-pool hop (``_in_db``): the busiest reads here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from fastapi import Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from smartcare.platform import audit
from smartcare.platform.auth import Principal, Role
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import session_scope
from smartcare.platform.errors import Forbidden, InvalidInput, NotFound
from smartcare.records import access as consent, deid, fhir as resources, phr, service
from smartcare.records.clinical import SENSITIVE
from smartcare.web.deps import db, principal, require
from smartcare.web.routing import Router

fhir = Router(prefix="/fhir", tags=["fhir"])
router = Router(prefix="/api/v1/phr", tags=["phr"])
FHIR_JSON = "application/fhir+json"
#: an EMPI id and nothing else: a typed ID number must never reach a query, an error or the audit log
EMPI_ID = r"^E[0-9]{11}$"
MAX_PAGE = 5000  # $everything of a long history (200 visits ≈ 1,300 resources) in one request
SEARCHABLE = ("Encounter", "Condition", "Observation", "MedicationRequest", "DiagnosticReport", "DocumentReference")
AUDITOR = require(Role.AUDITOR, Role.ADMIN)


def _empi():
    return Path(pattern=EMPI_ID, description="the patient's EMPI id")


def _fhir(body: bytes, headers: dict | None = None) -> Response:
    return Response(body, media_type=FHIR_JSON, headers=headers)


async def _in_db(fn, *args) -> Response:
    """``fn(session, *args)`` in one transaction on one pool thread, its FHIR JSON as the response: a sync
    endpoint with the ``db`` dependency would take three hops between the event loop and the pool."""
    def run() -> bytes:
        with session_scope() as session:
            return fn(session, *args)

    return _fhir(await run_in_threadpool(run))


def _types(who: Principal, asked: str | None) -> set[str]:
    """The resource types a request may return: those asked (``_type``), within the token's scopes."""
    wanted = set(resources.RESOURCE_TYPES) if not asked else {t.strip() for t in asked.split(",") if t.strip()}
    unknown = wanted - set(resources.RESOURCE_TYPES)
    if unknown:
        raise InvalidInput(f"_type: {sorted(unknown)[0][:40]} is not served here ({', '.join(resources.RESOURCE_TYPES)})",
                           field="_type")
    allowed = {t for t in wanted if who.may_read(t)}
    if not allowed:
        raise Forbidden("the token's scopes allow none of the requested resource types", field="scope")
    return allowed


def _page(entries: list[bytes], request: Request, count: int, page: int) -> bytes:
    """One page of a searchset Bundle of encoded entries, with its links."""
    start = (page - 1) * count
    links = {"self": str(request.url)}
    if start + count < len(entries):
        params = dict(request.query_params) | {"_page": str(page + 1), "_count": str(count)}
        links["next"] = str(request.url.include_query_params(**params))
    return resources.bundle(entries[start:start + count], total=len(entries), links=links)


def _entries(session: Session, access: consent.Access, types: set[str] | None, **bounds) -> list[bytes]:
    """The encoded entries a read returns, the Patient first when asked for."""
    found = resources.entries(session, access, service.person_ids(session, person_id=access.person_id),
                              types, **bounds)
    if types is None or "Patient" in types:
        found.insert(0, resources.encode(resources.patient(access)))
    return found


@fhir.get("/Patient/{empi_id}")
async def read_patient(empi_id: str = _empi(), who: Principal = Depends(principal)):
    if not who.may_read("Patient"):
        raise Forbidden("the token's scopes do not include Patient", field="scope")

    def read(session: Session) -> bytes:
        access = consent.decide(session, who, empi_id, what="Patient")
        body = orjson.dumps(resources.patient(access))
        consent.record_read(session, who, access, what="Patient")
        return body

    return await _in_db(read)


@fhir.get("/Patient/{empi_id}/$everything")
async def everything(request: Request, empi_id: str = _empi(), start: date | None = None, end: date | None = None,
                     since: datetime | None = Query(None, alias="_since"),
                     type_: str | None = Query(None, alias="_type"),
                     count: int = Query(1000, alias="_count", ge=1, le=MAX_PAGE),
                     page: int = Query(1, alias="_page", ge=1, le=10_000), who: Principal = Depends(principal)):
    """Everything the caller may see of one patient, across hospitals (``start``/``end``: service days,
    ``_since``: registered since, ``_type``: resource types), one page of ``_count`` resources at a time."""
    types = _types(who, type_)
    if since is not None:
        since = since if since.tzinfo else since.replace(tzinfo=CHINA_TZ)  # the region's clock, as everywhere
        if not datetime(1900, 1, 1, tzinfo=UTC) <= since <= datetime(2100, 1, 1, tzinfo=UTC):
            raise InvalidInput("_since must be between 1900 and 2100", field="_since")

    def read(session: Session) -> bytes:
        access = consent.decide(session, who, empi_id, what="Patient/$everything")
        body = _page(_entries(session, access, types, start=start, end=end, since=since), request, count, page)
        consent.record_read(session, who, access, what="Patient/$everything")
        return body

    return await _in_db(read)


@fhir.get("/{resource_type}")
async def search(request: Request, resource_type: str = Path(pattern=r"^[A-Z][A-Za-z]{2,30}$"),
                 patient: str = Query(..., pattern=r"^(Patient/)?E[0-9]{11}$"),
                 start: date | None = None, end: date | None = None,
                 count: int = Query(200, alias="_count", ge=1, le=1000),
                 page: int = Query(1, alias="_page", ge=1, le=10_000), who: Principal = Depends(principal)):
    """``GET /fhir/Observation?patient=E…`` and the like: one type of one patient's resources."""
    if resource_type not in SEARCHABLE:
        raise NotFound(f"{resource_type} is not served here ({', '.join(SEARCHABLE)})", field="resource_type")
    _types(who, resource_type)
    empi_id = patient.removeprefix("Patient/")

    def read(session: Session) -> bytes:
        access = consent.decide(session, who, empi_id, what=resource_type)
        body = _page(_entries(session, access, {resource_type}, start=start, end=end), request, count, page)
        consent.record_read(session, who, access, what=resource_type)
        return body

    return await _in_db(read)


# --- JSON for the pages --------------------------------------------------------------------------------


def _item(i) -> dict:
    return {"kind": i.kind, "code": i.code, "name": i.name, "text": i.value_text,
            "number": float(i.value_number) if i.value_number is not None else None, "unit": i.unit,
            "value_code": i.value_code, "value_display": i.value_display, "sensitive": i.sensitive}


def visit_out(v: phr.Visit) -> dict:
    return {"id": v.id, "facility_code": v.facility_code, "facility_name": v.facility_name, "at": v.at.isoformat(),
            "inpatient": v.inpatient,
            "documents": [{"id": d.id, "type_code": d.type_code, "type_name": d.type_name,
                           "items": [_item(i) for i in v.items.get(d.id, [])]} for d in v.documents]}


@router.get("/me")
def my_people(who: Principal = Depends(require(Role.RESIDENT)), session: Session = Depends(db)) -> list[dict]:
    """The people whose records this account may read (itself, children it is guardian of)."""
    return [{"empi_id": e, "relation": r} for e, r in consent.people(session, who.username).items()]


@router.get("/{empi_id}/timeline")
def timeline(empi_id: str = _empi(), hospital: str | None = Query(None, max_length=64),
             type: str | None = Query(None, pattern=r"^C[0-9]{4}$"), start: date | None = None, end: date | None = None,
             who: Principal = Depends(principal), session: Session = Depends(db)) -> dict:
    access = consent.decide(session, who, empi_id, what="timeline")
    found = phr.visits(session, access, facility_code=hospital, type_code=type, start=start, end=end)
    body = {"empi_id": access.empi_id, "basis": access.basis, "summary": phr.summary(found),
            "visits": [visit_out(v) for v in found]}
    consent.record_read(session, who, access, what="timeline")
    return body


@router.get("/documents/{record_id}", response_class=Response)
def document_content(record_id: int = Path(ge=1, le=2**63 - 1), who: Principal = Depends(principal),
                     session: Session = Depends(db)):
    """One document as received, when the caller may read its patient's records and the document itself."""
    doc = service.get(session, record_id)
    if doc.empi_id is None or doc.status != "current":
        raise NotFound(f"no document {record_id}", field="record_id")
    access = consent.decide(session, who, doc.empi_id, what=f"DocumentReference/d{record_id}")
    if not access.shows(service.visit_sensitivity(session, record_id), doc.service_time.astimezone(CHINA_TZ).date()):
        consent.audit_refusal(session, who, access.empi_id, f"DocumentReference/d{record_id}", "outside what the consent shares")
        raise NotFound(f"no document {record_id}", field="record_id")  # as if there were none: hidden is hidden
    raw = service.content(session, doc.sha256)
    consent.record_read(session, who, access, what=f"DocumentReference/d{record_id}")
    return Response(raw, media_type="application/xml")


@router.get("/{empi_id}/export.json")
def export(empi_id: str = _empi(), who: Principal = Depends(require(Role.RESIDENT)), session: Session = Depends(db)):
    """Blue Button: everything of a person the account holds a card of, as one FHIR Bundle (collection)."""
    access = consent.decide(session, who, empi_id, what="export")
    body = resources.bundle(_entries(session, access, None), kind="collection",
                            timestamp=datetime.now(UTC).isoformat())
    response = _fhir(body, {"Content-Disposition": f'attachment; filename="health-record-{access.empi_id}.json"'})
    consent.record_read(session, who, access, what="export")
    return response


@router.get("/{empi_id}/accesses")
def who_looked(empi_id: str = _empi(), who: Principal = Depends(require(Role.RESIDENT)),
               session: Session = Depends(db)) -> list[dict]:
    """Who read (or tried to read) this person's records: for the resident holding their card."""
    if empi_id not in consent.held_persons(session, who.username):
        raise Forbidden("you hold no card of this person", field="empi_id")
    return [{"at": e.at.isoformat(), "who": e.actor, "action": "read" if e.action == consent.READ else "refused",
             **{k: e.detail.get(k) for k in ("role", "facility_code", "what", "purpose", "basis")}}
            for e in consent.accesses(session, empi_ids=consent.same_person(session, who.username, empi_id))]


class ConsentIn(BaseModel):
    empi_id: str = Field(pattern=EMPI_ID)
    facility_code: str = Field(min_length=1, max_length=64)
    doctor: str | None = Field(None, max_length=64, description="one doctor's username; empty: every doctor there")
    purpose: str = Field("treatment", pattern="^(treatment|referral|second_opinion)$")
    days: int = Field(30, ge=1, le=consent.MAX_CONSENT_DAYS)
    records_since: date | None = None
    records_until: date | None = None
    sensitive: list[str] = Field(default_factory=list, max_length=len(SENSITIVE))


def consent_out(c) -> dict[str, Any]:
    return {"id": c.id, "empi_id": c.empi_id, "facility_code": c.facility_code, "doctor": c.doctor,
            "purpose": c.purpose, "valid_from": c.valid_from.isoformat(), "valid_until": c.valid_until.isoformat(),
            "records_since": c.records_since.isoformat() if c.records_since else None,
            "records_until": c.records_until.isoformat() if c.records_until else None,
            "sensitive": list(c.sensitive), "state": c.state}


@router.get("/consents")
def list_consents(who: Principal = Depends(require(Role.RESIDENT)), session: Session = Depends(db)) -> list[dict]:
    return [consent_out(c) for c in consent.consents(session, username=who.username)]


@router.post("/consents", status_code=201)
def grant(data: ConsentIn, who: Principal = Depends(require(Role.RESIDENT)), session: Session = Depends(db)) -> dict:
    return consent_out(consent.grant(session, username=who.username, empi_id=data.empi_id,
                                     facility_code=data.facility_code, doctor=data.doctor, purpose=data.purpose,
                                     days=data.days, records_since=data.records_since,
                                     records_until=data.records_until, sensitive=tuple(data.sensitive)))


@router.post("/consents/{consent_id}/revoke")
def revoke(consent_id: int = Path(ge=1, le=2**63 - 1), who: Principal = Depends(require(Role.RESIDENT)),
           session: Session = Depends(db)) -> dict:
    return consent_out(consent.revoke(session, username=who.username, consent_id=consent_id))


class RequestIn(BaseModel):
    empi_id: str = Field(pattern=EMPI_ID)
    purpose: str = Field("treatment", pattern="^(treatment|referral|second_opinion)$")
    reason: str = Field(min_length=4, max_length=500)


class AnswerIn(BaseModel):
    approve: bool
    days: int = Field(30, ge=1, le=consent.MAX_CONSENT_DAYS)
    sensitive: list[str] = Field(default_factory=list, max_length=len(SENSITIVE))


def request_out(r) -> dict:
    return {"id": r.id, "empi_id": r.empi_id, "doctor": r.doctor, "facility_code": r.facility_code,
            "purpose": r.purpose, "reason": r.reason, "state": r.state, "created_at": r.created_at.isoformat(),
            "consent_id": r.consent_id}


@router.post("/requests", status_code=201)
def ask(data: RequestIn, who: Principal = Depends(require(Role.DOCTOR)), session: Session = Depends(db)) -> dict:
    return request_out(consent.request_access(session, who=who, empi_id=data.empi_id, purpose=data.purpose,
                                              reason=data.reason))


@router.get("/requests")
def pending(who: Principal = Depends(require(Role.RESIDENT)), session: Session = Depends(db)) -> list[dict]:
    return [request_out(r) for r in consent.requests_for(session, username=who.username)]


@router.post("/requests/{request_id}/answer")
def answer(data: AnswerIn, request_id: int = Path(ge=1, le=2**63 - 1), who: Principal = Depends(require(Role.RESIDENT)),
           session: Session = Depends(db)) -> dict:
    return request_out(consent.answer(session, username=who.username, request_id=request_id, approve=data.approve,
                                      days=data.days, sensitive=tuple(data.sensitive)))


class BreakGlassIn(BaseModel):
    empi_id: str = Field(pattern=EMPI_ID)
    reason: str = Field(min_length=10, max_length=500)


@router.post("/break-glass", status_code=201)
def open_glass(data: BreakGlassIn, who: Principal = Depends(require(Role.DOCTOR)), session: Session = Depends(db)) -> dict:
    glass = consent.break_glass(session, who=who, empi_id=data.empi_id, reason=data.reason)
    return {"id": glass.id, "empi_id": glass.empi_id, "expires_at": glass.expires_at.isoformat()}


class ReviewIn(BaseModel):
    note: str = Field(min_length=1, max_length=500)


@router.post("/break-glass/{glass_id}/review", dependencies=[Depends(AUDITOR)])
def review(data: ReviewIn, glass_id: int = Path(ge=1, le=2**63 - 1), who: Principal = Depends(principal),
           session: Session = Depends(db)) -> dict:
    glass = consent.review_break_glass(session, id=glass_id, reviewer=who.username, note=data.note)
    return {"id": glass.id, "reviewed_at": glass.reviewed_at.isoformat(), "reviewed_by": glass.reviewed_by}


@router.get("/audit-report", dependencies=[Depends(AUDITOR)])
def audit_report(days: int = Query(30, ge=1, le=366), reads_per_day: int = Query(30, ge=1, le=10_000),
                 session: Session = Depends(db)) -> dict:
    """Break-glass accesses (reviewed or not), refused attempts per caller, unusually many patients a day."""
    report = consent.audit_report(session, since=datetime.now(UTC) - timedelta(days=days), reads_per_day=reads_per_day)
    return {"break_glass": [{"id": g.id, "empi_id": g.empi_id, "doctor": g.doctor, "facility_code": g.facility_code,
                             "reason": g.reason, "opened_at": g.opened_at.isoformat(),
                             "reviewed": g.reviewed_at is not None} for g in report["break_glass"]],
            "refused": report["refused"],
            "unusual": [{**r, "day": r["day"].isoformat()} for r in report["unusual"]]}


@router.get("/extract", dependencies=[Depends(require(Role.ADMIN))])
def deidentified_extract(since: date | None = None, until: date | None = None, k: int = Query(5, ge=2, le=1000),
                         who: Principal = Depends(principal), session: Session = Depends(db)) -> dict:
    """A de-identified extract for research (pseudonyms, birth year, district, service month; k-anonymous on
    birth year, sex and district) with its report. Audited: who took which extract."""
    rows, report = deid.extract(session, since=since, until=until, k=k)
    audit.record(session, actor=who.username, action="records.extract", target="records:deidentified",
                 detail={"since": str(since), "until": str(until), "k": k, "rows": report.rows,
                         "persons_kept": report.persons_kept, "persons_suppressed": report.persons_suppressed})
    return {"report": deid.report_dict(report),
            "rows": [{**r, "value_number": float(r["value_number"]) if r["value_number"] is not None else None}
                     for r in rows]}
