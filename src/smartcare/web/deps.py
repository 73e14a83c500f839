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
        who = auth.read_token(token)
    except Unauthorized:
        return None
    # A token with SMART scopes was given to an app for the FHIR read API, and for nothing else: it may not
    # grant consents, show a card's code, pay … on the account's behalf.
    if who.scopes is not None and not request.url.path.startswith("/fhir/"):
        return None
    return who


async def principal(request: Request) -> auth.Principal:
    """Async on purpose: reading a token is a few microseconds of CPU, cheaper than a thread-pool hop."""
    p = optional_principal(request)
    if p is None:
        raise Unauthorized("login required", hint="POST /api/v1/auth/token or log in at /login")
    return p


def require(*roles: str) -> Callable[..., auth.Principal]:
    """Dependency: the caller must hold one of ``roles``."""

    async def check(p: auth.Principal = Depends(principal)) -> auth.Principal:
        if not p.has(*roles):
            raise Forbidden(f"this needs one of the roles: {', '.join(roles)}")
        return p

    return check


#: Hospital client keys, kept a minute per process (``auth.ClientKeyCache``): a disabled client is refused within it.
client_keys = auth.ClientKeyCache()


def _signed_path(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


async def signed_client(request: Request) -> auth.Principal:
    """A hospital system's request, verified by its HMAC signature; its nonce committed at once (see
    ``platform.auth``). Key loads and the nonce commit are database work: off the event loop MLLP shares."""
    body = await request.body()
    return await asyncio.to_thread(auth.verify_signed_request, client_keys, method=request.method,
                                   path=_signed_path(request), headers=dict(request.headers), body=body)


async def verify_signature(request: Request, body: bytes,
                           keys: auth.ClientKeyCache = client_keys) -> tuple[auth.ClientKey, auth.SignedRequest]:
    """For hot paths: the signature checked with no database round trip once the client's key is
    cached (a miss loads it off the event loop). The nonce is not claimed: the endpoint claims it in
    its own transaction (``auth.claim_nonce_in``)."""
    client_id = request.headers.get(auth.HEADER_CLIENT)
    if client_id and keys.cached(client_id) is None:
        await asyncio.to_thread(keys.load, client_id)
    return auth.check_request(keys, method=request.method, path=_signed_path(request), headers=request.headers,
                              body=body)


async def checked_signature(request: Request) -> tuple[auth.ClientKey, auth.SignedRequest]:
    """Dependency form of ``verify_signature`` for endpoints whose body FastAPI parses."""
    return await verify_signature(request, await request.body())


def same_site_action(request: Request) -> None:
    """Console actions are sent by htmx with ``HX-Request``; a form posted from another site cannot set
    that header, so this stops cross-site request forgery on top of the SameSite cookie."""
    if request.headers.get("HX-Request") != "true":
        raise Forbidden("console actions must come from the console page", hint="reload the page and try again")


action = Depends(same_site_action)


async def hospital_reader(request: Request) -> auth.Principal:
    """A signed hospital system, a hospital's staff (bearer token bound to a facility) or an administrator:
    who reads a hospital's own data (its documents, their quality); callers scope a hospital to its own."""
    if request.headers.get(auth.HEADER_CLIENT):
        return await signed_client(request)
    who = await principal(request)
    if who.has(auth.Role.ADMIN) or (who.has(auth.Role.HOSPITAL_STAFF) and who.facility_code):
        return who
    raise Forbidden("read by the hospital the data belongs to, or by an administrator")
