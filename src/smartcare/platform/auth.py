"""Who is calling: people (users with roles, JWT sessions, Argon2 passwords) and hospital systems
(API clients that sign every request with HMAC-SHA256, with replay protection)."""

from __future__ import annotations

import enum
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from smartcare.platform import audit
from smartcare.platform.crypto import hmac_sha256_hex, seal, sha256_hex, unseal
from smartcare.platform.db import driver, session_factory
from smartcare.platform.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from smartcare.platform.models import ApiClient, RequestNonce, UserAccount
from smartcare.platform.settings import get_settings


class Role(enum.StrEnum):
    RESIDENT = "resident"
    DOCTOR = "doctor"
    HOSPITAL_STAFF = "hospital_staff"
    INSURER = "insurer"
    ADMIN = "admin"
    AUDITOR = "auditor"


_hasher = PasswordHasher()
_JWT_ALG = "HS256"
_SECRET_PURPOSE = "api-client-secret"


# ---- people ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    username: str
    roles: frozenset[str]
    facility_code: str | None = None
    #: SMART on FHIR scopes the token was issued with (``patient/*.read``, ``user/Observation.read`` …);
    #: None: a token asked without scopes, limited only by the roles
    scopes: frozenset[str] | None = None

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))

    def may_read(self, resource_type: str) -> bool:
        """Whether the token's SMART scopes let it read this FHIR resource type (patient/ for residents,
        user/ for staff)."""
        if self.scopes is None:
            return True
        context = "patient" if self.has(Role.RESIDENT) else "user"
        return bool({f"{context}/*.read", f"{context}/{resource_type}.read", f"{context}/*.*",
                     f"{context}/{resource_type}.*"} & self.scopes)

    def facility(self) -> str:
        """The facility a hospital system acts for; a client that belongs to none may not act for one."""
        if not self.facility_code:
            raise Forbidden("this API client belongs to no facility", field="client")
        return self.facility_code


def create_user(session: Session, *, username: str, password: str, display_name: str, roles: list[str],
                facility_code: str | None = None, actor: str = "system") -> UserAccount:
    unknown = set(roles) - {r.value for r in Role}
    if unknown:
        raise InvalidInput(f"unknown role(s): {', '.join(sorted(unknown))}", field="roles",
                           hint=f"roles are {', '.join(r.value for r in Role)}")
    if len(password) < 8:
        raise InvalidInput("password must have at least 8 characters", field="password")
    if session.scalar(select(UserAccount.id).where(UserAccount.username == username)):
        raise Conflict(f"user {username!r} already exists", field="username")
    user = UserAccount(username=username, display_name=display_name, password_hash=_hasher.hash(password),
                       roles=list(roles), facility_code=facility_code)
    session.add(user)
    session.flush()
    audit.record(session, actor=actor, action="user.create", target=f"user:{username}", detail={"roles": roles})
    return user


def authenticate(session: Session, *, username: str, password: str) -> Principal:
    """Check a password. The error never says whether the user exists."""
    user = session.scalar(select(UserAccount).where(UserAccount.username == username, UserAccount.active))
    try:
        if user is None:
            raise VerificationError("no such user")
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise Unauthorized("wrong username or password") from None
    return Principal(user.username, frozenset(user.roles), user.facility_code)


SCOPE_PATTERN = re.compile(r"^(patient|user)/(\*|[A-Z][A-Za-z]+)\.(read|\*)$")


def issue_token(principal: Principal, *, minutes: int | None = None, scope: str | None = None) -> str:
    """A bearer token; with ``scope`` (space-separated SMART scopes) it reads only what they name: a
    resident may ask ``patient/…`` scopes (their own records), staff ``user/…`` ones."""
    settings = get_settings()
    now = datetime.now(UTC)
    claims = {
        "sub": principal.username,
        "roles": sorted(principal.roles),
        "fac": principal.facility_code,
        "iat": now,
        "exp": now + timedelta(minutes=minutes or settings.session_minutes),
    }
    if scope is not None:
        asked = scope.split()
        context = "patient" if principal.has(Role.RESIDENT) else "user"
        bad = [s for s in asked if not SCOPE_PATTERN.match(s) or not s.startswith(f"{context}/")]
        if bad:
            raise InvalidInput(f"scope {bad[0][:60]!r} is not a SMART scope this account may have ({context}/<Type|*>.read)",
                               field="scope")
        claims["scope"] = " ".join(asked)
    return jwt.encode(claims, settings.resolved_secret_key(), algorithm=_JWT_ALG)


#: tokens already read, with their expiry: an app sends one token for a whole session, and checking its
#: signature again (PyJWT, ~70 µs) was a tenth of a booking attempt's CPU. Keyed by the secret too.
_read_tokens: dict[tuple[str, str], tuple[Principal, float]] = {}
_READ_TOKENS_MAX = 20_000


def read_token(token: str) -> Principal:
    """The principal of a bearer token; a token read before is not decoded again, its expiry still checked."""
    secret = get_settings().resolved_secret_key()
    hit = _read_tokens.get((secret, token))
    if hit is not None:
        if time.time() < hit[1]:
            return hit[0]
        _read_tokens.pop((secret, token), None)
        raise Unauthorized("session expired", hint="log in again")
    try:
        claims = jwt.decode(token, secret, algorithms=[_JWT_ALG], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("session expired", hint="log in again") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("invalid session token", hint="log in again") from None
    scope = claims.get("scope")
    principal = Principal(claims["sub"], frozenset(claims.get("roles", [])), claims.get("fac"),
                          frozenset(scope.split()) if scope is not None else None)
    if len(_read_tokens) >= _READ_TOKENS_MAX:  # a bound, not a policy: the next reads decode again
        _read_tokens.clear()
    _read_tokens[(secret, token)] = (principal, float(claims["exp"]))
    return principal


# ---- hospital systems: HMAC request signing ------------------------------------------------

HEADER_CLIENT = "X-SmartCare-Client"
HEADER_TIMESTAMP = "X-SmartCare-Timestamp"
HEADER_NONCE = "X-SmartCare-Nonce"
HEADER_SIGNATURE = "X-SmartCare-Signature"


def canonical_request(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What is signed: method, path (with query), timestamp, nonce and the SHA-256 of the body."""
    return "\n".join([method.upper(), path, timestamp, nonce, sha256_hex(body)]).encode()


def sign_request(*, client_id: str, secret: str, method: str, path: str, body: bytes = b"",
                 timestamp: int | None = None, nonce: str | None = None) -> dict[str, str]:
    """Headers a hospital system sends (see docs/operations.md for the same steps in any language)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    signature = hmac_sha256_hex(secret.encode(), canonical_request(method, path, ts, nonce, body))
    return {HEADER_CLIENT: client_id, HEADER_TIMESTAMP: ts, HEADER_NONCE: nonce, HEADER_SIGNATURE: signature}


def create_api_client(session: Session, *, client_id: str, name: str, facility_code: str | None,
                      actor: str = "system") -> str:
    """Register a hospital system; returns its secret, shown once."""
    if session.scalar(select(ApiClient.id).where(ApiClient.client_id == client_id)):
        raise Conflict(f"API client {client_id!r} already exists", field="client_id")
    secret = secrets.token_urlsafe(32)
    session.add(ApiClient(client_id=client_id, name=name, facility_code=facility_code,
                          secret_sealed=seal(secret.encode(), purpose=_SECRET_PURPOSE, aad=client_id.encode())))
    session.flush()
    audit.record(session, actor=actor, action="api_client.create", target=f"client:{client_id}",
                 detail={"facility_code": facility_code})
    return secret


@dataclass(frozen=True)
class SignedRequest:
    """The signature headers of one request, checked for presence, form and freshness."""

    client_id: str
    timestamp: str
    nonce: str
    signature: str


def read_signature_headers(headers, *, now: float | None = None) -> SignedRequest:
    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in (HEADER_CLIENT, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE) if h.lower() not in lowered]
    if missing:
        raise Unauthorized(f"missing signature header(s): {', '.join(missing)}", hint="sign the request with the client secret")
    signed = SignedRequest(*(lowered[h.lower()] for h in (HEADER_CLIENT, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)))
    if not signed.timestamp.isdigit():
        raise Unauthorized(f"{HEADER_TIMESTAMP} must be Unix seconds", field=HEADER_TIMESTAMP)
    window = get_settings().hmac_window_seconds
    skew = (time.time() if now is None else now) - int(signed.timestamp)
    if abs(skew) > window:
        raise Unauthorized(f"request timestamp is {int(skew)} s off the server clock (allowed ±{window} s)",
                           field=HEADER_TIMESTAMP, hint="sync the client clock (NTP) and sign a fresh request")
    if not 8 <= len(signed.nonce) <= 128:
        raise Unauthorized(f"{HEADER_NONCE} must be 8 to 128 characters", field=HEADER_NONCE)
    return signed


@dataclass(frozen=True)
class ClientKey:
    client_id: str
    secret: bytes
    facility_code: str | None

    @property
    def principal(self) -> Principal:
        return Principal(f"client:{self.client_id}", frozenset({Role.HOSPITAL_STAFF.value}), self.facility_code)


def load_client_key(session: Session, client_id: str) -> ClientKey:
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id, ApiClient.active))
    if client is None:
        raise Unauthorized("unknown or disabled API client", field=HEADER_CLIENT)
    secret = unseal(client.secret_sealed, purpose=_SECRET_PURPOSE, aad=client_id.encode())
    return ClientKey(client_id, secret, client.facility_code)


def check_signature(key: ClientKey, signed: SignedRequest, *, method: str, path: str, body: bytes) -> None:
    expected = hmac_sha256_hex(key.secret, canonical_request(method, path, signed.timestamp, signed.nonce, body))
    if not secrets.compare_digest(expected.encode(), signed.signature.lower().encode("utf-8", "replace")):
        raise Unauthorized("signature does not match the request (method, path, timestamp, nonce and body are signed)",
                           field=HEADER_SIGNATURE)


def replay_error() -> Unauthorized:
    return Unauthorized("nonce already used: the request is a replay", field=HEADER_NONCE,
                        hint="use a new random nonce for every request")


def check_request(keys: ClientKeyCache, *, method: str, path: str, headers, body: bytes,
                  now: float | None = None) -> tuple[ClientKey, SignedRequest]:
    """Signature and timestamp window, against the client's key as ``keys`` has it. The nonce is the
    caller's to claim: in its own transaction (``claim_nonce``) or in the request's (``claim_nonce_in``)."""
    signed = read_signature_headers(headers, now=now)
    key = keys.get(signed.client_id)
    check_signature(key, signed, method=method, path=path, body=body)
    return key, signed


def verify_signed_request(keys: ClientKeyCache, *, method: str, path: str, headers, body: bytes,
                          now: float | None = None) -> Principal:
    """Check signature, timestamp window and nonce. The nonce is recorded in its own committed
    transaction, so a replay is refused even if the first request later fails."""
    key, signed = check_request(keys, method=method, path=path, headers=headers, body=body, now=now)
    claim_nonce(signed.client_id, signed.nonce)
    return key.principal


def claim_nonce(client_id: str, nonce: str) -> None:
    """Record a nonce in its own committed transaction; a nonce seen before means a replay."""
    with session_factory()() as nonce_session, nonce_session.begin():
        claim_nonce_in(nonce_session, client_id, nonce)


def nonce_claim_sql(client: str, nonce: str) -> str:
    """``claim_nonce_in`` as SQL (``client`` and ``nonce`` SQL expressions; a NULL client claims nothing), for a
    hot statement of another module that spends the nonce in its own round trip, as a data-modifying common
    table expression: it returns a row when the nonce was fresh."""
    return (f"INSERT INTO platform.request_nonce (client_id, nonce) SELECT {client}, {nonce} "
            f"WHERE {client} IS NOT NULL ON CONFLICT DO NOTHING RETURNING 1")


_CLAIM = nonce_claim_sql("%(client)s::varchar", "%(nonce)s::varchar")


def claim_nonce_in(session: Session, client_id: str, nonce: str) -> None:
    """Record a nonce in the caller's transaction (one round trip on a hot path); the caller commits it
    even when it refuses the request, or a refused request could be replayed."""
    if not driver(session).execute(_CLAIM, {"client": client_id, "nonce": nonce}).fetchone():
        raise replay_error()


def purge_nonces(session: Session) -> int:
    """Nonces older than twice the window can no longer be replayed (the timestamp check refuses them)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=2 * get_settings().hmac_window_seconds)
    return session.execute(delete(RequestNonce).where(RequestNonce.seen_at < cutoff)).rowcount


class ClientKeyCache:
    """Hospital client keys kept in memory for ``ttl`` seconds, so that checking a signature on the
    message hot path costs no database round trip. A disabled client is refused within ``ttl``."""

    def __init__(self, ttl: float = 60.0):
        self.ttl = ttl
        self._keys: dict[str, tuple[float, ClientKey]] = {}

    def cached(self, client_id: str) -> ClientKey | None:
        hit = self._keys.get(client_id)
        return hit[1] if hit and time.monotonic() - hit[0] < self.ttl else None

    def load(self, client_id: str) -> ClientKey:
        with session_factory()() as session:
            key = load_client_key(session, client_id)
        self._keys[client_id] = (time.monotonic(), key)
        return key

    def get(self, client_id: str) -> ClientKey:
        return self.cached(client_id) or self.load(client_id)


def rotate_api_client_secret(session: Session, *, client_id: str, actor: str = "system") -> str:
    """Issue a new secret for an existing client. The old one is refused as soon as each node's key
    cache expires (``ClientKeyCache.ttl``, a minute)."""
    client = session.scalar(select(ApiClient).where(ApiClient.client_id == client_id))
    if client is None:
        raise Unauthorized("unknown API client", field="client_id")
    secret = secrets.token_urlsafe(32)
    client.secret_sealed = seal(secret.encode(), purpose=_SECRET_PURPOSE, aad=client_id.encode())
    audit.record(session, actor=actor, action="api_client.rotate", target=f"client:{client_id}")
    return secret
