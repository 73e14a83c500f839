"""Quality-control operations: check registered documents, keep their results, score hospitals, report back.

Every document the registry takes is checked once when it arrives (``events``) and again on demand
(``smartcare qc run``). The result replaces the document's previous one; a document that another
version replaced keeps its result but stops counting (``current``), so a hospital that fixes and
resends a document sees its score move.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import delete, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from smartcare.platform import bus
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.errors import NotFound
from smartcare.quality.checks import Facts
from smartcare.quality.engine import DIMENSION_NAMES, DIMENSIONS, Engine, Report, Rule, catalogue
from smartcare.quality.models import DocumentCheck, Finding
from smartcare.records import service as records
from smartcare.registry import service as registry


_VALUE_SETS_TTL = 300.0  # seconds: a terminology change reaches the checks within five minutes
_cached = threading.local()  # per thread (consumers run in threads): (engine, its context, built at)


class DbContext:
    """What rules need from other capabilities: the registry's terminology (read once, kept a few minutes),
    its hospitals and the records' history (asked per document, through the session of the check)."""

    def __init__(self, session: Session):
        self.session = session
        self.value_sets: dict[str, dict[str, str]] = {}
        for vs in registry.list_value_sets(session):
            _, concepts = registry.get_value_set(session, vs.id)
            self.value_sets[vs.id] = {c.code: c.display for c in concepts}
        self._custodians: dict[str, bool] = {}
        self.record_id: int | None = None  # the document being checked

    def custodian_known(self, code: str) -> bool:
        if code not in self._custodians:
            self._custodians[code] = registry.facility_of_credit_code(self.session, code) is not None
        return self._custodians[code]

    def patient_resolved(self, facts: Facts) -> bool:
        return facts.registry.get("person_id") is not None

    def earlier_with_other_content(self, custodian: str, document_id: str, sha256: str) -> bool:
        return records.other_content_before(self.session, custodian_code=custodian, document_id=document_id,
                                            sha256=sha256, before_id=self.record_id)


#: Published when a document has been checked (its score), in the checking transaction.
CHECKED_TOPIC = "quality.document.checked"

def engine(session: Session) -> Engine:
    """This thread's engine, its rules compiled once and its terminology refreshed every few minutes,
    bound to ``session`` for what it asks per document."""
    built = getattr(_cached, "engine", None)
    if built is None or time.monotonic() - _cached.at > _VALUE_SETS_TTL:
        built = Engine(DbContext(session))
        _cached.engine, _cached.at = built, time.monotonic()
    ctx = built.ctx
    assert isinstance(ctx, DbContext)
    if ctx.session is not session:
        ctx.session, ctx._custodians = session, {}
    return built


def _service_day(doc) -> date:
    return doc.service_time.astimezone(CHINA_TZ).date()


def check_record(session: Session, *, record_id: int) -> Report:
    """Check one registered document and store the result (replacing an earlier one). The document's row is
    share-locked meanwhile, so a registration replacing it is ordered before or after this check, never
    inside it: "current" follows the registry."""
    eng = engine(session)
    doc = records.status_for_check(session, record_id)
    raw = records.content(session, doc.sha256)
    assert isinstance(eng.ctx, DbContext)
    eng.ctx.record_id = record_id
    report = eng.check(raw, sent_at=doc.received_at, registry={"person_id": doc.person_id})
    _store(session, doc, report)
    replaced = records.replaced_by(session, record_id)
    if replaced:
        session.execute(update(DocumentCheck).where(DocumentCheck.record_id.in_(replaced)).values(current=False))
    bus.publish(session, CHECKED_TOPIC, {"record_id": record_id, "facility_code": doc.facility_code,
                                         "score": float(report.score)})
    return report


def _store(session: Session, doc, report: Report) -> None:
    values = dict(facility_code=doc.facility_code, custodian_code=doc.custodian_code, type_code=doc.type_code,
                  document_id=doc.document_id, service_day=_service_day(doc), checked_at=func.now(),
                  score=report.score, errors=report.errors, warnings=report.warnings, applied=report.applied,
                  failed=report.failed, current=doc.status == "current")
    stmt = insert(DocumentCheck).values(record_id=doc.id, **values)
    session.execute(stmt.on_conflict_do_update(index_elements=["record_id"], set_=values))
    session.execute(delete(Finding).where(Finding.record_id == doc.id))
    if report.findings:
        session.execute(insert(Finding), [
            {"record_id": doc.id, "rule_id": f.rule.id, "dimension": f.rule.dimension, "severity": f.rule.severity,
             "element": f.element[:200], "line": f.line, "detail": f.detail} for f in report.findings])


def run(session_factory: Callable, *, facility_code: str | None = None, since: date | None = None,
        batch: int = 200, progress: Callable[[int], None] | None = None) -> int:
    """Check again every current document (of one hospital, serviced since a day), in batches of
    ``batch`` per transaction, then retire the checks of documents replaced meanwhile; returns how many
    were checked."""
    done, after = 0, 0
    while True:
        with session_factory() as session:
            ids = records.current_ids(session, facility_code=facility_code, since=since, after_id=after, limit=batch)
            if not ids:
                break
            for record_id in ids:
                check_record(session, record_id=record_id)
            after = ids[-1]
        done += len(ids)
        if progress:
            progress(len(ids))
    with session_factory() as session:
        _retire_replaced(session, facility_code=facility_code)
    return done


def _retire_replaced(session: Session, *, facility_code: str | None, batch: int = 1000) -> None:
    """Checks still counted although the registry has replaced their document (a check that failed, an
    interrupted run): no longer counted."""
    after = 0
    while True:
        stmt = select(DocumentCheck.record_id).where(DocumentCheck.current, DocumentCheck.record_id > after)
        if facility_code:
            stmt = stmt.where(DocumentCheck.facility_code == facility_code)
        ids = list(session.scalars(stmt.order_by(DocumentCheck.record_id).limit(batch)))
        if not ids:
            return
        stale = records.replaced_among(session, ids)
        if stale:
            session.execute(update(DocumentCheck).where(DocumentCheck.record_id.in_(stale)).values(current=False))
        after = ids[-1]


# --- reading the results --------------------------------------------------------------------------


def document_check(session: Session, record_id: int) -> tuple[DocumentCheck, list[Finding]]:
    check = session.get(DocumentCheck, record_id)
    if check is None:
        raise NotFound(f"document {record_id} has not been checked")
    findings = list(session.scalars(select(Finding).where(Finding.record_id == record_id).order_by(Finding.line, Finding.id)))
    return check, findings


_GROUPS = {"hospital": "facility_code", "type": "type_code", "day": "service_day",
           "month": "date_trunc('month', service_day)::date"}


def scores(session: Session, *, by: str = "hospital", facility_code: str | None = None, since: date | None = None,
           until: date | None = None) -> list[dict]:
    """Mean score, documents, errors and the score of each dimension (rules passed / applied), per group."""
    if by not in _GROUPS:
        raise ValueError(f"by must be one of {', '.join(_GROUPS)}")
    rows = session.execute(text(f"""
        WITH c AS (
            SELECT {_GROUPS[by]} AS grp, score, errors, warnings, applied, failed FROM quality.document_check
            WHERE current AND (CAST(:f AS text) IS NULL OR facility_code = :f)
              AND (CAST(:since AS date) IS NULL OR service_day >= :since)
              AND (CAST(:until AS date) IS NULL OR service_day <= :until)
        ), totals AS (
            SELECT grp, count(*) AS documents, round(avg(score), 2) AS score, sum(errors) AS errors,
                   sum(warnings) AS warnings, count(*) FILTER (WHERE errors = 0) AS clean
            FROM c GROUP BY grp
        ), per_dimension AS (
            SELECT grp, a.key AS dimension, sum(a.value::int) AS applied,
                   sum(coalesce((c.failed ->> a.key)::int, 0)) AS failed
            FROM c, jsonb_each_text(c.applied) a GROUP BY grp, a.key
        ), dimensions AS (
            SELECT grp, jsonb_object_agg(dimension, round(100.0 * (applied - failed) / nullif(applied, 0), 2)) AS d
            FROM per_dimension GROUP BY grp
        )
        SELECT t.*, d.d AS dimensions FROM totals t LEFT JOIN dimensions d ON d.grp IS NOT DISTINCT FROM t.grp
        ORDER BY t.grp
    """), {"f": facility_code, "since": since, "until": until}).mappings().all()
    names = registry.facility_names(session, [r["grp"] for r in rows]) if by == "hospital" else {}
    return [{"group": str(r["grp"]) if r["grp"] is not None else None, "name": names.get(r["grp"]),
             "documents": r["documents"], "score": float(r["score"] or 0), "errors": r["errors"],
             "warnings": r["warnings"], "clean": r["clean"],
             "dimensions": {d: float(v) for d, v in (r["dimensions"] or {}).items() if v is not None}} for r in rows]


def worst_rules(session: Session, *, facility_code: str | None = None, since: date | None = None,
                until: date | None = None, limit: int = 10) -> list[dict]:
    rules = {r.id: r for r in catalogue()}
    rows = session.execute(text("""
        SELECT f.rule_id, count(*) AS findings, count(DISTINCT f.record_id) AS documents
        FROM quality.finding f JOIN quality.document_check c USING (record_id)
        WHERE c.current AND (CAST(:f AS text) IS NULL OR c.facility_code = :f)
          AND (CAST(:since AS date) IS NULL OR c.service_day >= :since)
          AND (CAST(:until AS date) IS NULL OR c.service_day <= :until)
        GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :limit
    """), {"f": facility_code, "since": since, "until": until, "limit": limit}).mappings().all()
    return [{"rule_id": r["rule_id"], "findings": r["findings"], "documents": r["documents"],
             "message": rules[r["rule_id"]].message if r["rule_id"] in rules else "",
             "dimension": rules[r["rule_id"]].dimension if r["rule_id"] in rules else ""} for r in rows]


@dataclass(frozen=True)
class FailingDocument:
    record_id: int
    document_id: str | None
    type_code: str | None
    facility_code: str | None
    service_day: date
    score: float
    findings: list[dict]


def failing_documents(session: Session, *, facility_code: str | None = None, since: date | None = None,
                      until: date | None = None, limit: int | None = None, page: int = 500) -> Iterator[FailingDocument]:
    """Current documents with at least one finding, newest first, each with its findings: the feedback a
    hospital works through (fix and resend; the new version replaces the old and is checked again).
    Read ``page`` documents at a time, so a report of a whole year streams."""
    rules = {r.id: r for r in catalogue()}
    base = select(DocumentCheck).where(DocumentCheck.current, (DocumentCheck.errors + DocumentCheck.warnings) > 0)
    if facility_code:
        base = base.where(DocumentCheck.facility_code == facility_code)
    if since:
        base = base.where(DocumentCheck.service_day >= since)
    if until:
        base = base.where(DocumentCheck.service_day <= until)
    order = (DocumentCheck.service_day.desc(), DocumentCheck.record_id.desc())
    left, last = limit, None
    while left is None or left > 0:
        stmt = base if last is None else base.where(
            tuple_(DocumentCheck.service_day, DocumentCheck.record_id) < tuple_(*last))
        checks = list(session.scalars(stmt.order_by(*order).limit(page if left is None else min(page, left))))
        if not checks:
            return
        by_record: dict[int, list[dict]] = {c.record_id: [] for c in checks}
        for f in session.scalars(select(Finding).where(Finding.record_id.in_(by_record)).order_by(Finding.id)):
            rule = rules.get(f.rule_id)
            by_record[f.record_id].append({"rule_id": f.rule_id, "severity": f.severity, "dimension": f.dimension,
                                           "element": f.element, "line": f.line, "detail": f.detail,
                                           "message": rule.message if rule else ""})
        for c in checks:
            yield FailingDocument(c.record_id, c.document_id, c.type_code, c.facility_code, c.service_day,
                                  float(c.score), by_record[c.record_id])
        last = (checks[-1].service_day, checks[-1].record_id)
        if left is not None:
            left -= len(checks)


def report(session: Session, *, fmt: str, facility_code: str | None = None, since: date | None = None,
           until: date | None = None) -> str:
    """The feedback report as JSON, CSV (one row per finding) or HTML."""
    docs = list(failing_documents(session, facility_code=facility_code, since=since, until=until))
    summary = scores(session, by="hospital", facility_code=facility_code, since=since, until=until)
    if fmt == "json":
        return json.dumps({"generated_at": datetime.now(CHINA_TZ).isoformat(), "hospitals": summary,
                           "documents": [{**d.__dict__, "service_day": d.service_day.isoformat()} for d in docs]},
                          ensure_ascii=False, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["record_id", "document_id", "type_code", "facility_code", "service_day", "score", "rule_id",
                    "severity", "dimension", "element", "line", "message", "detail"])
        for d in docs:
            for f in d.findings:
                w.writerow([d.record_id, d.document_id, d.type_code, d.facility_code, d.service_day, d.score,
                            f["rule_id"], f["severity"], f["dimension"], f["element"], f["line"], f["message"], f["detail"]])
        return out.getvalue()
    if fmt == "html":
        from smartcare.web.pages import templates  # only the HTML report needs the web layer's templates

        return templates.env.get_template("quality/report.html").render(
            documents=docs, hospitals=summary, dimensions=DIMENSIONS, dimension_names=DIMENSION_NAMES,
            generated_at=datetime.now(CHINA_TZ))
    raise ValueError("format must be json, csv or html")


def rules() -> list[Rule]:
    return list(catalogue())


def scores_of(session: Session, record_ids: list[int]) -> dict[int, float]:
    """The score of each checked document (for the warehouse)."""
    return dict(session.execute(select(DocumentCheck.record_id, DocumentCheck.score)
                                .where(DocumentCheck.record_id.in_(record_ids))).all())
