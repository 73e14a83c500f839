"""The routers every capability's API is built on."""

from __future__ import annotations

from fastapi import APIRouter
from starlette._utils import get_route_path
from starlette.routing import Match


class Router(APIRouter):
    """An ``APIRouter`` that a request outside its prefix passes at once. FastAPI (0.16x) matches a request
    against every route of every router included before the one that serves it, and the serving router's
    routes twice — about 50 regular expressions with their bookkeeping for a path of the fourth router,
    a tenth of a hot endpoint's CPU. Every route of a router starts with its prefix, so nothing else changes."""

    def matches(self, scope):
        if self.prefix and not get_route_path(scope).startswith(self.prefix):
            return Match.NONE, {}
        return super().matches(scope)
