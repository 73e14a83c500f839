"""The capability routers: a request outside a router's prefix passes it without its routes being tried,
and every request still reaches the route (or the 404/405) it reached with FastAPI's own router."""

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from smartcare.web.routing import Router


def _app() -> tuple[FastAPI, Router, Router]:
    a, b, c = Router(prefix="/api/a"), Router(prefix="/api/ab"), Router(prefix="/api/c")

    @a.get("/items")
    def items():
        return {"router": "a"}

    @a.post("/items/{no}")
    def item(no: int):
        return {"router": "a", "no": no}

    @b.get("/items")
    def b_items():
        return {"router": "ab"}

    @c.get("/items")
    def c_items():
        return {"router": "c"}

    app = FastAPI()
    for router in (a, b, c):
        app.include_router(router)
    return app, a, b


def test_requests_reach_the_same_routes():
    app, _, _ = _app()
    client = TestClient(app)
    assert client.get("/api/a/items").json() == {"router": "a"}
    assert client.get("/api/ab/items").json() == {"router": "ab"}  # shares a's prefix as text, not as a path
    assert client.post("/api/a/items/7").json() == {"router": "a", "no": 7}
    assert client.post("/api/a/items/x").status_code == 422
    assert client.put("/api/a/items").status_code == 405  # a method not served is still told apart from a 404
    assert client.get("/api/d/items").status_code == 404
    assert client.get("/api/a").status_code == 404


def test_a_router_included_under_a_prefix_of_its_own():
    inner, nested = Router(prefix="/items"), APIRouter(prefix="/org/{org}")

    @inner.get("/{no}")
    def one(no: int, org: str | None = None):
        return {"no": no, "org": org}

    nested.include_router(inner)
    app = FastAPI()
    app.include_router(inner, prefix="/v2")
    app.include_router(nested)
    client = TestClient(app)
    assert client.get("/v2/items/3").json() == {"no": 3, "org": None}
    assert client.get("/org/x/items/4").json() == {"no": 4, "org": "x"}
    assert client.get("/items/5").status_code == 404


def test_a_path_outside_the_prefix_tries_no_route(monkeypatch):
    app, a, _ = _app()
    tried = []
    for route in a.routes:
        original = route.matches
        monkeypatch.setattr(route, "matches", lambda scope, original=original: tried.append(1) or original(scope))
    client = TestClient(app)
    assert client.get("/api/c/items").json() == {"router": "c"}
    assert tried == []
    assert client.get("/api/a/items").status_code == 200
    assert tried  # the router's own paths are matched as before
