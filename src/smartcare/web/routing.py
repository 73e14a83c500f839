"""The routers every capability's API is built on."""

from __future__ import annotations

from fastapi import APIRouter
from starlette._utils import get_route_path
from starlette.routing import Match

try:  # FastAPI ≥ 0.16x matches included routers in place (older ones copy their routes and never ask below)
    from fastapi.routing import _get_scope_included_router
except ImportError:  # pragma: no cover
    _get_scope_included_router = None


class Router(APIRouter):
    """An ``APIRouter`` that a request outside its prefix passes at once. FastAPI (0.16x) matches a request
    against every route of every router included before the one that serves it, and the serving router's
    routes twice — about 50 regular expressions with their bookkeeping for a path of the fourth router,
    a tenth of a hot endpoint's CPU. Every route of a router starts with its prefix (after the prefix it was
    included with, if any), so nothing else changes."""

    def matches(self, scope):
        included = _get_scope_included_router(scope) if _get_scope_included_router else None
        outer = included.include_context.prefix if included is not None and included.original_router is self else ""
        prefix = outer + self.prefix
        if prefix and "{" not in prefix and not get_route_path(scope).startswith(prefix):
            return Match.NONE, {}
        return super().matches(scope)
