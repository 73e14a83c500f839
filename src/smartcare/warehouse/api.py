"""Warehouse HTTP API: monitoring (console roles), indicators and exports (CSV / Parquet) for
administrators and auditors. Analysts who want SQL get the read-only database role instead."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path
from typing import Literal

from fastapi import Depends, Query
from fastapi.responses import FileResponse, Response
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from smartcare.platform import audit
from smartcare.platform.auth import Principal, Role
from smartcare.warehouse import indicators, monitor, service
from smartcare.web.deps import db, require
from smartcare.web.routing import Router

router = Router(prefix="/api/v1/warehouse", tags=["warehouse"])
CONSOLE = require(Role.ADMIN, Role.AUDITOR)
_MEDIA = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


@router.get("/overview")
def overview(session: Session = Depends(db), who: Principal = Depends(CONSOLE)) -> dict:
    """The region now: districts, every public hospital's freshness and today, the live minute, alerts."""
    with monitor.reading(session):
        return monitor.overview(session)


@router.get("/hospitals/{code}")
def hospital(code: str, days: int = Query(30, ge=1, le=366), session: Session = Depends(db),
             who: Principal = Depends(CONSOLE)) -> dict:
    with monitor.reading(session):
        return monitor.hospital(session, code, days=days)


@router.get("/alerts")
def alerts(session: Session = Depends(db), who: Principal = Depends(CONSOLE)) -> list[dict]:
    with monitor.reading(session):
        return monitor.alerts(session)


@router.get("/indicators/definitions")
def definitions() -> list[dict]:
    """What each indicator means (public: hospitals read how they are measured)."""
    return [{"code": i.code, "name": i.name, "unit": i.unit, "definition": i.definition} for i in indicators.INDICATORS]


@router.get("/indicators")
def indicator_values(start: date, end: date, by: Literal["facility", "district"] = "district",
                     grain: Literal["day", "month"] = "month", hospital: str | None = Query(None, max_length=32),
                     district: str | None = Query(None, max_length=6),
                     format: Literal["json", "csv", "parquet"] = "json", session: Session = Depends(db),
                     who: Principal = Depends(CONSOLE)):
    """Indicators per hospital or district and day or month, as JSON, CSV or Parquet."""
    with monitor.reading(session):
        rows = indicators.compute(session, by=by, grain=grain, start=start, end=end, facility_code=hospital,
                                  district_code=district)
    if format == "json":
        return rows
    return Response(indicators.as_file(rows, format), media_type=_MEDIA[format],
                    headers={"Content-Disposition": f'attachment; filename="indicators-{by}-{grain}.{format}"'})


@router.get("/export/{table}")
def export(table: str, format: Literal["csv", "parquet"] = "csv", session: Session = Depends(db),
           who: Principal = Depends(CONSOLE)):
    """A whole dimension, fact or mart table (no direct identifiers are in any of them), audited."""
    handle = tempfile.NamedTemporaryFile(suffix=f".{format}", delete=False)
    handle.close()
    path = Path(handle.name)
    try:
        with monitor.reading(session):
            rows = service.write_export(session, table, format, path)
    except Exception:
        path.unlink(missing_ok=True)
        raise
    audit.record(session, actor=who.username, action="warehouse.export", target=f"warehouse.{table}",
                 detail={"format": format, "rows": rows})
    session.commit()
    return FileResponse(path, media_type=_MEDIA[format], filename=f"{table}.{format}",
                        background=BackgroundTask(path.unlink, missing_ok=True))
