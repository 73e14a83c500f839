"""Console pages of the warehouse: 运行监测 (the region by district, every public hospital's freshness and
today, alerts) and one hospital's live page. Both draw the first snapshot embedded in the page and then
refresh it from the JSON API every few seconds, without reloading."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from smartcare.platform import auth
from smartcare.warehouse import indicators, monitor
from smartcare.web.deps import db, require
from smartcare.web.pages import CONSOLE_ROLES, templates
from smartcare.web.routing import Router

router = Router(prefix="/admin/warehouse", include_in_schema=False)
CONSOLE = require(*CONSOLE_ROLES)


@router.get("", response_class=HTMLResponse)
def region(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(CONSOLE)):
    with monitor.reading(session):
        snapshot = monitor.overview(session)
    return templates.TemplateResponse(request, "warehouse/region.html", {
        "who": who, "snapshot": jsonable_encoder(snapshot), "indicators": indicators.INDICATORS})


@router.get("/hospitals/{code}", response_class=HTMLResponse)
def hospital(request: Request, code: str, session: Session = Depends(db), who: auth.Principal = Depends(CONSOLE)):
    with monitor.reading(session):
        snapshot = monitor.hospital(session, code)
    return templates.TemplateResponse(request, "warehouse/hospital.html", {
        "who": who, "snapshot": jsonable_encoder(snapshot), "code": code})
