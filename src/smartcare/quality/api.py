"""Quality-control HTTP API: the rule catalogue, scores, and the feedback each hospital works through.

A hospital (HMAC-signed system, or its staff) sees its own documents and scores; administrators see
every hospital's. A document that another hospital keeps answers 404, as records does.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from fastapi import Depends, Path, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session

from smartcare.platform.auth import Principal, Role
from smartcare.platform.errors import NotFound
from smartcare.quality import service
from smartcare.records import service as records
from smartcare.web.deps import db, hospital_reader, require
from smartcare.web.routing import Router

router = Router(prefix="/api/v1/quality", tags=["quality"])
ADMIN = require(Role.ADMIN)
_MEDIA = {"json": "application/json", "csv": "text/csv; charset=utf-8", "html": "text/html; charset=utf-8"}


def _scope(who: Principal, hospital: str | None) -> str | None:
    """The hospital the answer is about: a hospital only ever its own; an administrator the one asked for, or all."""
    return hospital if who.has(Role.ADMIN) else who.facility()


@router.get("/rules")
def list_rules() -> list[dict]:
    """The rule catalogue (public: hospitals read it to know what is checked)."""
    return [{"id": r.id, "dimension": r.dimension, "kahn": r.kahn, "severity": r.severity,
             "types": list(r.types) if len(r.types) < 53 else "all", "message": r.message, "check": r.check}
            for r in service.rules()]


@router.get("/scores")
def get_scores(by: Literal["hospital", "type", "day", "month"] = "hospital", hospital: str | None = None,
               since: date | None = None, until: date | None = None, who: Principal = Depends(hospital_reader),
               session: Session = Depends(db)) -> list[dict]:
    return service.scores(session, by=by, facility_code=_scope(who, hospital), since=since, until=until)


@router.get("/worst-rules")
def get_worst_rules(hospital: str | None = None, since: date | None = None, until: date | None = None,
                    limit: int = Query(10, ge=1, le=100), who: Principal = Depends(hospital_reader),
                    session: Session = Depends(db)) -> list[dict]:
    return service.worst_rules(session, facility_code=_scope(who, hospital), since=since, until=until, limit=limit)


@router.get("/report")
def get_report(format: Literal["json", "csv", "html"] = "json", hospital: str | None = None,
               since: date | None = None, until: date | None = None, who: Principal = Depends(hospital_reader),
               session: Session = Depends(db)) -> Response:
    """Every current document with findings, each with its rules and elements (fix, resend: it is checked again)."""
    body = service.report(session, fmt=format, facility_code=_scope(who, hospital), since=since, until=until)
    return Response(body, media_type=_MEDIA[format])


@router.get("/documents/{record_id}")
def get_document(record_id: int = Path(ge=1, le=2**63 - 1), who: Principal = Depends(hospital_reader),
                 session: Session = Depends(db)) -> dict:
    scope = _scope(who, None)
    if scope is not None and records.get(session, record_id).facility_code != scope:  # another's: as if none
        raise NotFound(f"no document {record_id}", field="id")
    check, findings = service.document_check(session, record_id)
    return {"record_id": check.record_id, "document_id": check.document_id, "type_code": check.type_code,
            "facility_code": check.facility_code, "service_day": check.service_day.isoformat(),
            "score": float(check.score), "errors": check.errors, "warnings": check.warnings, "current": check.current,
            "applied": check.applied, "failed": check.failed,
            "findings": [{"rule_id": f.rule_id, "severity": f.severity, "dimension": f.dimension,
                          "element": f.element, "line": f.line, "detail": f.detail} for f in findings]}


@router.post("/documents/{record_id}/check", dependencies=[Depends(ADMIN)])
def recheck(record_id: int = Path(ge=1, le=2**63 - 1), session: Session = Depends(db)) -> dict:
    report = service.check_record(session, record_id=record_id)
    return {"record_id": record_id, "score": report.score, "errors": report.errors, "warnings": report.warnings}
