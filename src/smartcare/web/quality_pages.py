"""Pages of quality control (质控): the console's 质控看板 (scores by hospital and their trend, by document
type, the rules failed most, the latest failing documents), one document with its findings over the XML
as received, and the rule catalogue.

Scores, rules and findings are about documents, not people; a finding's detail may quote a value, so it
goes through the masking module. The one place personal data appear is the document page's XML: it is
read through ``records.service.retrieve``, so every view is in the audit log under the console user's
name (committed before the page is sent). Line numbers are those of the document as received — the
findings point there — so the XML is shown as its bytes decode, never re-formatted.
"""

from __future__ import annotations

import codecs
import re
from collections import defaultdict
from datetime import date, timedelta

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from smartcare.platform import auth
from smartcare.platform.auth import Role
from smartcare.platform.clock import CHINA_TZ, china_today
from smartcare.platform.errors import InvalidInput, NotFound
from smartcare.quality import service
from smartcare.quality.engine import ALL_TYPES, DIMENSION_NAMES
from smartcare.records import service as records
from smartcare.registry import service as registry
from smartcare.standards.cda import TITLES
from smartcare.web.deps import db, require
from smartcare.web.pages import CONSOLE_ROLES, form_day, templates

router = APIRouter(include_in_schema=False)
CONSOLE = require(*CONSOLE_ROLES)
#: the audit entry of a document view is committed before the XML leaves (``db`` commits after)
COMMITTED = Depends(db, scope="function")

#: the order the console shows the eight dimensions in
QC_DIMENSIONS = ("completeness", "validity", "consistency", "plausibility", "uniqueness", "timeliness",
                 "integration", "conformance")
QC_SEVERITIES = {"error": "错误", "warning": "警告"}
DEFAULT_DAYS = 30
CHART_HOSPITALS = 20  # the lowest-scoring ones
FAILING_SHOWN = 20
WORST_RULES = 10

templates.env.globals.update(QC_DIMENSIONS=QC_DIMENSIONS, QC_DIMENSION_NAMES=DIMENSION_NAMES,
                             QC_SEVERITIES=QC_SEVERITIES, QC_TYPE_NAMES=TITLES)
# also registered by payment_pages and booking_pages: whichever module is imported first provides it
templates.env.filters.setdefault(
    "china_time", lambda when, fmt="%m-%d %H:%M:%S": when.astimezone(CHINA_TZ).strftime(fmt) if when else "")


# ---- 质控看板 ----------------------------------------------------------------------------------------


def _overall(rows: list[dict]) -> dict:
    """The filter's totals: the mean score weighted by documents."""
    documents = sum(r["documents"] for r in rows)
    return {"documents": documents, "errors": sum(r["errors"] or 0 for r in rows),
            "warnings": sum(r["warnings"] or 0 for r in rows), "clean": sum(r["clean"] or 0 for r in rows),
            "score": round(sum(r["score"] * r["documents"] for r in rows) / documents, 2) if documents else None}


def score_chart(hospitals: list[dict]) -> dict:
    shown = hospitals[:CHART_HOSPITALS]
    return {"kind": "bar", "categories": [h["name"] or h["group"] or "—" for h in shown],
            "series": [{"name": "平均得分", "data": [h["score"] for h in shown]}]}


def trend_chart(days: list[dict]) -> dict:
    return {"kind": "line", "categories": [d["group"] for d in days],
            "series": [{"name": "平均得分", "data": [d["score"] for d in days]}]}


def console_context(session: Session, hospital: str | None, since: date, until: date) -> dict:
    where = {"facility_code": hospital, "since": since, "until": until}
    hospitals = sorted(service.scores(session, by="hospital", **where), key=lambda h: (h["score"], h["group"] or ""))
    days = service.scores(session, by="day", **where)
    types = service.scores(session, by="type", **where)
    failing = list(service.failing_documents(session, limit=FAILING_SHOWN, **where))
    return {"hospitals": hospitals, "days": days, "types": types, "total": _overall(hospitals),
            "worst": service.worst_rules(session, limit=WORST_RULES, **where), "failing": failing,
            "failing_names": registry.facility_names(session, {d.facility_code for d in failing}),
            "score_chart": score_chart(hospitals), "trend_chart": trend_chart(days),
            "choices": registry.hospitals(session, limit=300)}


@router.get("/admin/quality", response_class=HTMLResponse)
def console_home(request: Request, hospital: str = Query("", max_length=32), since: str | None = Query(None),
                 until: str | None = Query(None), session: Session = Depends(db),
                 who: auth.Principal = Depends(CONSOLE)):
    """质控看板 over the documents serviced between ``since`` and ``until`` (default the last 30 days)."""
    today = china_today()
    chosen_until = form_day(until, "until", today)
    chosen_since = form_day(since, "since", chosen_until - timedelta(days=DEFAULT_DAYS - 1))
    if chosen_since > chosen_until:
        raise InvalidInput("since must not be after until", field="since")
    code = hospital.strip() or None
    return templates.TemplateResponse(request, "quality/console.html", {
        "who": who, "hospital": code or "", "since": chosen_since, "until": chosen_until,
        "hospital_name": registry.facility_names(session, [code]).get(code) if code else None,
        "can_download": who.has(Role.ADMIN), **console_context(session, code, chosen_since, chosen_until)})


# ---- one document ------------------------------------------------------------------------------------


_DECLARED = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def xml_text(raw: bytes) -> str:
    """The document's bytes as text, in the encoding its byte-order mark or declaration names (hospitals
    still send GB18030); UTF-8 otherwise. Undecodable bytes show as U+FFFD rather than failing the page."""
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), None)
    if encoding is None:
        declared = _DECLARED.match(raw)
        encoding = declared.group(1).decode("ascii") if declared else "utf-8"
        try:
            codecs.lookup(encoding)
        except LookupError:
            encoding = "utf-8"
    return raw.decode(encoding, errors="replace").removeprefix("\ufeff")


def xml_lines(raw: bytes) -> list[str]:
    """The lines as the parser counted them (CR LF and a lone CR end a line, as XML normalises them)."""
    lines = xml_text(raw).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if len(lines) > 1 and lines[-1] == "" else lines


@router.get("/admin/quality/documents/{record_id}", response_class=HTMLResponse)
def document_page(request: Request, record_id: int = Path(ge=1, le=2**63 - 1), session: Session = COMMITTED,
                  who: auth.Principal = Depends(CONSOLE)):
    """One document: what it is, its findings, and the XML as received with each finding's line marked."""
    doc = records.get(session, record_id)
    try:
        check, findings = service.document_check(session, record_id)
    except NotFound:
        check, findings = None, []  # registered, not checked yet
    raw = records.retrieve(session, id=record_id, actor=who.username, reason="质控查看")
    lines = xml_lines(raw)
    hits: dict[int, list] = defaultdict(list)
    for f in findings:
        if f.line and 1 <= f.line <= len(lines):
            hits[f.line].append(f)
    rules = {r.id: r for r in service.rules()}
    dimensions = [(d, (check.applied or {}).get(d, 0), (check.failed or {}).get(d, 0)) for d in QC_DIMENSIONS] \
        if check else []
    return templates.TemplateResponse(request, "quality/document.html", {
        "who": who, "doc": doc, "check": check, "findings": findings, "rules": rules, "lines": lines,
        "hits": {n: {"rules": [f.rule_id for f in fs],
                     "severity": "error" if any(f.severity == "error" for f in fs) else "warning"}
                 for n, fs in hits.items()},
        "dimensions": dimensions, "size": len(raw),
        "hospital": registry.facility_names(session, [doc.facility_code]).get(doc.facility_code)})


# ---- the rule catalogue ------------------------------------------------------------------------------


def check_text(check: dict) -> tuple[str, str]:
    """A rule's check kind and its parameters as ``name=value`` (lists joined by commas)."""
    params = []
    for name, value in check.items():
        if name == "kind":
            continue
        shown = ", ".join(str(v) for v in value) if isinstance(value, list | tuple) else value
        params.append(f"{name}={shown}")
    return check.get("kind", ""), "  ".join(params)


@router.get("/admin/quality/rules", response_class=HTMLResponse)
def rules_page(request: Request, who: auth.Principal = Depends(CONSOLE)):
    """The rule catalogue (``quality/rules.yaml``), filtered by dimension in the browser."""
    rules = service.rules()
    counts = defaultdict(int)
    for r in rules:
        counts[r.dimension] += 1
    return templates.TemplateResponse(request, "quality/rules.html", {
        "who": who, "counts": counts, "all_types": len(ALL_TYPES),
        "rules": [(r, *check_text(r.check)) for r in rules]})
