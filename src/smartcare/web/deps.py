"""FastAPI dependencies shared by every router: the database session and who is calling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from smartcare.platform import auth
from smartcare.platform.db import session_scope
from smartcare.platform.errors import Forbidden, Unauthorized

SESSION_COOKIE = "smartcare_session"


def db() -> Iterator[Session]:
    """One transaction per request: committed when the handler returns, rolled back on error."""
    with session_scope() as session:
        yield session


def optional_principal(request: Request) -> auth.Principal | None:
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        return auth.read_token(token)
    except Unauthorized:
        return None


def principal(request: Request) -> auth.Principal:
    p = optional_principal(request)
    if p is None:
        raise Unauthorized("login required", hint="POST /api/v1/auth/token or log in at /login")
    return p


def require(*roles: str) -> Callable[..., auth.Principal]:
    """Dependency: the caller must hold one of ``roles``."""

    def check(p: auth.Principal = Depends(principal)) -> auth.Principal:
        if not p.has(*roles):
            raise Forbidden(f"this needs one of the roles: {', '.join(roles)}")
        return p

    return check


async def signed_client(request: Request, session: Session = Depends(db)) -> auth.Principal:
    """A hospital system's request, verified by its HMAC signature (see ``platform.auth``)."""
    body = await request.body()
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    # the key lookup and the nonce commit are database work: off the event loop that MLLP shares
    return await asyncio.to_thread(auth.verify_signed_request, session, method=request.method, path=path,
                                   headers=dict(request.headers), body=body)


_client_keys = auth.ClientKeyCache()


async def checked_signature(request: Request) -> tuple[auth.ClientKey, auth.SignedRequest]:
    """For hot paths: the HMAC signature checked against a cached client key, with no database round
    trip. The nonce is not claimed yet: the endpoint claims it in its own transaction
    (``auth.claim_nonce_in``)."""
    body = await request.body()
    signed = auth.read_signature_headers(request.headers)
    key = _client_keys.cached(signed.client_id) or await asyncio.to_thread(_client_keys.load, signed.client_id)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    auth.check_signature(key, signed, method=request.method, path=path, body=body)
    return key, signed


def same_site_action(request: Request) -> None:
    """Console actions are sent by htmx with ``HX-Request``; a form posted from another site cannot set
    that header, so this stops cross-site request forgery on top of the SameSite cookie."""
    if request.headers.get("HX-Request") != "true":
        raise Forbidden("console actions must come from the console page", hint="reload the page and try again")


action = Depends(same_site_action)
