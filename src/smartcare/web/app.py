"""The FastAPI application: every capability's router, the pages, health and metrics."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import Session

import smartcare
from smartcare.platform import auth, metrics
from smartcare.platform.db import session_factory
from smartcare.platform.errors import SmartCareError, Unauthorized
from smartcare.empi.api import router as empi_router
from smartcare.exchange.api import router as exchange_router
from smartcare.exchange.ingest import Hub
from smartcare.exchange.mllp_server import MllpServer, tls_context
from smartcare.healthcard import api as healthcard_api
from smartcare.payment.api import router as payment_router
from smartcare.booking.api import router as booking_router
from smartcare.quality.api import router as quality_router
from smartcare.warehouse.api import router as warehouse_router
from smartcare.records import phr_api
from smartcare.records.api import router as records_router
from smartcare.platform.settings import get_settings
from smartcare.registry.api import router as registry_router
from smartcare.web import (
    booking_pages, empi_pages, exchange_pages, healthcard_pages, pages, payment_pages, phr_pages, quality_pages,
    warehouse_pages,
)
from smartcare.web.deps import db, principal

STATIC = Path(__file__).parent / "static"


class TokenIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=200)
    scope: str | None = Field(None, max_length=500, description="SMART scopes, e.g. 'patient/*.read'")


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if p not in ("body",)) or "body"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field; 400 for a body that is not JSON at all. Input values are never echoed."""
    errors = exc.errors()
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        where = bad_json.get("loc", ("body",))
        detail = bad_json.get("ctx", {}).get("error", "invalid JSON")
        return JSONResponse(status_code=400, content={
            "error": "malformed_json",
            "message": f"request body is not valid JSON ({detail}, at position {where[-1]})",
            "hint": "send a JSON object with Content-Type: application/json"})
    fields = [{"field": _field(e["loc"]), "message": e["msg"]} for e in errors]
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return JSONResponse(status_code=422, content={"error": "invalid_input", "message": summary, "errors": fields})


async def _data_error(request: Request, exc: DataError) -> JSONResponse:
    """A value PostgreSQL cannot store (a NUL character in text, a number out of range) is the caller's
    input, not a server fault; the value itself is never echoed."""
    problem = "text contains a NUL character" if "NUL" in str(exc.orig) else "a value is out of the range it can be stored in"
    return JSONResponse(status_code=422, content={"error": "invalid_input", "message": problem,
                                                  "hint": "check the request's text and numbers"})


async def _smartcare_error(request: Request, exc: SmartCareError) -> Response:
    if isinstance(exc, Unauthorized) and not request.url.path.startswith("/api/"):
        target = "/h5/login" if request.url.path.startswith("/h5") else "/login"
        return RedirectResponse(f"{target}?next={request.url.path}", status_code=303)
    retry = getattr(exc, "retry_after", None)
    return JSONResponse(status_code=exc.status, content=exc.to_dict(),
                        headers={"Retry-After": str(max(1, math.ceil(retry)))} if retry else None)


_NUL_BODY = json.dumps({"error": "invalid_input", "message": "the URL contains a NUL character (%00)",
                        "hint": "no identifier, code or date contains one; check how the URL is built"}).encode()


def _has_nul(scope) -> bool:
    """PostgreSQL text cannot hold NUL: a %00 in a path or query value would fail deep down as a 500."""
    return b"%00" in scope.get("query_string", b"") or b"%00" in scope.get("raw_path", b"") or "\x00" in scope["path"]


class RequestMetrics:
    """Counts and times every HTTP request by route template (a plain ASGI middleware: no per-request task);
    refuses a URL with a NUL character at the door."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if _has_nul(scope):
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_NUL_BODY)).encode())]})
            await send({"type": "http.response.body", "body": _NUL_BODY})
            return
        start = time.perf_counter()
        status = 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.HTTP_REQUESTS.labels(scope["method"], route, status).inc()
            metrics.HTTP_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - start)


def serving_app() -> FastAPI:
    """What ``smartcare serve`` runs in each worker process (uvicorn starts workers by import path, so
    they read their settings): the app, listening for MLLP too unless SMARTCARE_MLLP_PORT is 0."""
    port = get_settings().mllp_port
    return create_app(mllp_port=port if port > 0 else None)


def create_app(*, mllp_port: int | None = None) -> FastAPI:
    """The whole HTTP application. With ``mllp_port`` (0: any free port) it also listens for MLLP."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.hub = Hub()
        app.state.mllp = None
        if mllp_port is not None:
            settings = get_settings()
            app.state.mllp = MllpServer(app.state.hub, host=settings.mllp_host, port=mllp_port, tls=tls_context())
            await app.state.mllp.start()
        # What start-up made (modules, routes, models: some 400,000 objects) lives as long as the process: out of
        # the collector's sight, a full collection no longer walks it (it took 190 ms here, stopping every
        # request of the worker: the slowest 1 % of $everything under load were those). Garbage first, so
        # none is kept for good.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if app.state.mllp is not None:
                await app.state.mllp.close()
            await app.state.hub.close()

    app = FastAPI(
        title="SmartCare",
        version=smartcare.__version__,
        description="区域智慧就医平台 — regional smart-healthcare platform API.",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(SmartCareError, _smartcare_error)
    app.add_exception_handler(DataError, _data_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(RequestMetrics)

    @app.get("/health", tags=["operations"])
    def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok", "version": smartcare.__version__}

    @app.get("/ready", tags=["operations"])
    def ready() -> JSONResponse:
        """Readiness: the database and the bus (its tables, and NATS when it is the transport) answer."""
        from smartcare.platform import bus

        checks = {}
        try:
            with session_factory()() as s:
                s.execute(text("SELECT 1"))
                checks["database"] = "ok"
        except Exception as exc:  # readiness reports, it does not raise
            checks["database"] = "down"
            checks["error"] = type(exc).__name__
        problem = bus.health() if checks["database"] == "ok" else "database down"
        checks["bus"] = "ok" if problem is None else "down"
        if problem is not None:
            checks.setdefault("error", problem)
        ok = all(v == "ok" for k, v in checks.items() if k != "error")
        return JSONResponse(status_code=200 if ok else 503, content={"status": "ready" if ok else "not ready", **checks})

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/api/v1/auth/token", tags=["auth"])
    def token(data: TokenIn, session: Session = Depends(db)) -> dict:
        """Exchange a username and password for a bearer token (JWT)."""
        who = auth.authenticate(session, username=data.username, password=data.password)
        body = {"access_token": auth.issue_token(who, scope=data.scope), "token_type": "bearer",
                "roles": sorted(who.roles)}
        return {**body, "scope": data.scope} if data.scope is not None else body

    @app.get("/api/v1/auth/me", tags=["auth"])
    def me(who: auth.Principal = Depends(principal)) -> dict:
        return {"username": who.username, "roles": sorted(who.roles), "facility_code": who.facility_code}

    app.include_router(registry_router)
    app.include_router(exchange_router)
    app.include_router(empi_router)
    app.include_router(healthcard_api.router)
    app.include_router(healthcard_api.public)
    app.include_router(payment_router)
    app.include_router(booking_router)
    app.include_router(records_router)
    app.include_router(phr_api.fhir)
    app.include_router(phr_api.router)
    app.include_router(quality_router)
    app.include_router(warehouse_router)
    app.include_router(pages.router)
    app.include_router(exchange_pages.router)
    app.include_router(empi_pages.router)
    app.include_router(healthcard_pages.router)
    app.include_router(payment_pages.router)
    app.include_router(booking_pages.router)
    app.include_router(quality_pages.router)
    app.include_router(phr_pages.router)
    app.include_router(warehouse_pages.router)
    return app
