"""Server-rendered pages (Jinja2 + htmx): login, admin console, registry browser, resident H5."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from urllib.parse import urlparse

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from smartcare.platform import auth
from smartcare.platform.auth import Role
from smartcare.platform.errors import InvalidInput, Unauthorized
from smartcare.platform.masking import mask_name, mask_text
from smartcare.platform.money import format_yuan
from smartcare.platform.settings import get_settings
from smartcare.registry import service as registry
from smartcare.synth import service as synth
from smartcare.web.deps import SESSION_COOKIE, db, optional_principal, require

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def form_day(value: str | None, field: str, default: date | None = None) -> date | None:
    """A day a page's form or query gives (``2026-11-27``), or ``default`` when empty; a clear error naming
    the field for anything else, and for days outside 1900–2100 (they would fail deeper down)."""
    if not value or not value.strip():
        return default
    try:
        chosen = date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"{field} is a date like 2026-11-27", field=field) from None
    if not date(1900, 1, 1) <= chosen <= date(2100, 1, 1):
        raise InvalidInput(f"{field} must be between 1900 and 2100", field=field)
    return chosen
templates.env.filters["yuan"] = format_yuan
templates.env.filters["mask_name"] = mask_name
templates.env.filters["mask"] = mask_text
templates.env.globals["LEVEL_NAMES"] = registry.LEVEL_NAMES
templates.env.globals["FACILITY_KINDS"] = registry.FACILITY_KINDS

router = APIRouter(include_in_schema=False)
CONSOLE_ROLES = (Role.ADMIN, Role.AUDITOR)


def _home_for(who: auth.Principal) -> str:
    if who.has(*CONSOLE_ROLES):
        return "/admin"
    return "/admin/records" if who.has(Role.DOCTOR) else "/h5"  # a doctor's console is 病历调阅 only


def _safe_next(target: str | None) -> str | None:
    """Only same-site relative paths: a login form must not become an open redirect."""
    if target and target.startswith("/") and not target.startswith("//") and not urlparse(target).netloc:
        return target
    return None


@router.get("/")
def index(request: Request):
    who = optional_principal(request)
    return RedirectResponse(_home_for(who) if who else "/login", status_code=303)


def _login_page(request: Request, template: str, next: str | None, error: str | None = None, status: int = 200):
    return templates.TemplateResponse(request, template, {"next": _safe_next(next) or "", "error": error}, status_code=status)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None):
    return _login_page(request, "login.html", next)


@router.get("/h5/login", response_class=HTMLResponse)
def h5_login_form(request: Request, next: str | None = None):
    return _login_page(request, "h5/login.html", next)


@router.post("/login")
def login(request: Request, username: str = Form(...), password: str = Form(...), next: str = Form(""),
          mobile: bool = Form(False), session: Session = Depends(db)):
    try:
        who = auth.authenticate(session, username=username.strip(), password=password)
    except Unauthorized as exc:
        return _login_page(request, "h5/login.html" if mobile else "login.html", next, exc.message, status=401)
    response = RedirectResponse(_safe_next(next) or _home_for(who), status_code=303)
    response.set_cookie(SESSION_COOKIE, auth.issue_token(who), httponly=True, samesite="lax",
                        max_age=get_settings().session_minutes * 60)
    return response


@router.get("/logout")
def logout():
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/admin", response_class=HTMLResponse)
def admin_home(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    counts = registry.counts(session)
    return templates.TemplateResponse(request, "admin/home.html", {
        "who": who, "counts": counts, "residents": synth.resident_count(session),
        "visit_cards": synth.visit_card_count(session), "seed_run": synth.last_run(session)})


@router.get("/admin/registry", response_class=HTMLResponse)
def registry_browser(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    return templates.TemplateResponse(request, "admin/registry.html", {
        "who": who, "districts": registry.list_districts(session)})


@router.get("/admin/registry/facilities", response_class=HTMLResponse)
def facility_table(request: Request, q: str | None = Query(None, max_length=100), district_code: str | None = None,
                   kind: str | None = None, level: str | None = None, page: int = Query(1, ge=1),
                   session: Session = Depends(db), who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    """The htmx partial behind the registry browser's search form."""
    lvl = int(level) if level and level.isdigit() else None
    total, rows = registry.search_facilities(session, q=q, district_code=district_code or None, kind=kind or None,
                                             level=lvl, page=page, size=20)
    return templates.TemplateResponse(request, "admin/_facility_table.html", {
        "rows": rows, "total": total, "page": page, "pages": max(1, -(-total // 20))})


@router.get("/admin/registry/facilities/{code}", response_class=HTMLResponse)
def facility_page(request: Request, code: str, session: Session = Depends(db),
                  who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    facility = registry.get_facility(session, code)
    total, practitioners = registry.list_practitioners(session, code, size=200)
    return templates.TemplateResponse(request, "admin/facility.html", {
        "who": who, "f": facility, "district": registry.district_name(session, facility.district_code),
        "departments": registry.list_departments(session, code), "practitioners": practitioners, "practitioner_total": total})


@router.get("/admin/terminology", response_class=HTMLResponse)
def terminology(request: Request, session: Session = Depends(db), who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    return templates.TemplateResponse(request, "admin/terminology.html", {
        "who": who, "value_sets": registry.list_value_sets(session)})


@router.get("/admin/terminology/{value_set_id}", response_class=HTMLResponse)
def value_set_page(request: Request, value_set_id: str, session: Session = Depends(db),
                   who: auth.Principal = Depends(require(*CONSOLE_ROLES))):
    vs, concepts = registry.get_value_set(session, value_set_id)
    return templates.TemplateResponse(request, "admin/value_set.html", {"who": who, "vs": vs, "concepts": concepts})
