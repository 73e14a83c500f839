"""A commercial insurer's direct-pay API (商保直赔), with in-memory books, for the settlement saga to be
tested against. It speaks the insurer's own conventions, not the platform's:

- every ``/v1`` request is signed: ``Authorization: HMAC-SHA256 Credential=<partner>, Timestamp=<unix>,
  Nonce=<hex>, Signature=<hex>``, the signature being HMAC-SHA256 with the API key over
  ``METHOD\\npath\\ntimestamp\\nnonce\\nsha256hex(body)`` (``path`` percent-decoded, then ``?query``
  exactly as sent when there is one);
  a timestamp more than 5 minutes off or a nonce seen before is refused too (401);
- errors are ``{"code": ..., "message": ...}`` with a 4xx status;
- an authorisation holds its amount (and the deductible it used) against the policy's year; capture
  turns it into a claim, void releases it; a captured claim is only given back by refunds;
- every money movement is idempotent by the caller's number (request_no, refund_no).

Authorise, capture, void and refund run under the injected faults; queries, statements and the admin
seed do not (a query is how the platform resolves a fault, so it answers truthfully).

The books live in one process and are mutated without awaiting in between, so no request sees another
one half done. Years do not roll over: the usage is "this year" for as long as the process lives.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from smartcare.payment import commercial
from smartcare.payment.sandbox.faults import Faults, control_router, handle
from smartcare.platform.errors import InvalidInput

CHINA = timezone(timedelta(hours=8))
CLOCK_SKEW_SECONDS = 300

NUMBER = r"^[A-Za-z0-9_.:-]{1,64}$"
Number = Annotated[str, StringConstraints(pattern=NUMBER)]
Fen = Annotated[int, Field(ge=0, strict=True)]


class InsurerError(Exception):
    """An answer of the insurer's own kind: a 4xx status and a ``code`` the caller can act on."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


# -- requests -----------------------------------------------------------------------------------------

class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PolicyIn(_In):
    insured_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    insurer: str = "SmartCare Sandbox Insurance"
    deductible: Fen
    ratio_bp: Annotated[int, Field(ge=0, le=10_000, strict=True)]
    annual_limit: Fen
    excluded_codes: list[str] = []
    excluded_categories: list[str] = []
    deductible_used: Fen = 0
    paid_this_year: Fen = 0


class ItemIn(_In):
    code: Annotated[str, StringConstraints(min_length=1)]
    name: str
    category: str
    amount: Fen


class AuthoriseIn(_In):
    request_no: Number
    policy_no: Number | None = None
    insured_id: str | None = None
    bill_ref: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    items: Annotated[list[ItemIn], Field(min_length=1)]
    basic_paid: Fen


class RequestNoIn(_In):
    request_no: Number


class RefundIn(_In):
    refund_no: Number
    amount: Annotated[int, Field(gt=0, strict=True)]


def _parse(model: type[BaseModel], body: bytes):
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InsurerError(422, "INVALID_REQUEST", f"{where}: {first['msg']}") from None


# -- books --------------------------------------------------------------------------------------------

@dataclass
class PolicyBook:
    policy: commercial.CommercialPolicy
    insured_id: str
    deductible_used: int
    paid: int = 0   # captured, net of refunds
    held: int = 0   # authorised, neither captured nor voided yet


@dataclass
class RefundRecord:
    refund_no: str
    claim_no: str
    amount: int
    at: datetime


@dataclass
class AuthRecord:
    auth_no: str
    request_no: str
    policy_no: str | None
    insured_id: str | None
    bill_ref: str
    status: str            # authorised | captured | voided | declined
    amount: int
    deductible: int        # what this authorisation added to the deductible used
    lines: list[dict]
    fingerprint: str | None  # None: voided by request number before the authorisation arrived
    at: datetime
    claim_no: str | None = None
    captured_at: datetime | None = None
    refunded: int = 0
    refunds: list[str] = field(default_factory=list)

    def answer(self) -> dict:
        body = {"auth_no": self.auth_no, "request_no": self.request_no, "status": self.status,
                "amount": self.amount, "lines": self.lines}
        if self.claim_no:
            body |= {"claim_no": self.claim_no, "refunded": self.refunded}
        return body


class Books:
    """The insurer's ledger: policies with this year's usage, authorisations, claims and refunds."""

    def __init__(self) -> None:
        self.policies: dict[str, PolicyBook] = {}
        self.by_insured: dict[str, str] = {}
        self.auths: dict[str, AuthRecord] = {}      # by request_no
        self.auth_nos: dict[str, str] = {}          # auth_no → request_no
        self.claims: dict[str, str] = {}            # claim_no → request_no
        self.refunds: dict[str, RefundRecord] = {}  # by refund_no
        self._numbers = itertools.count(1)

    def number(self, prefix: str) -> str:
        return f"{prefix}{datetime.now(CHINA):%Y%m%d}{next(self._numbers):08d}"

    def seed(self, policy_no: str, data: PolicyIn) -> dict:
        """Create or replace a policy and its usage this year; open holds stay where they are."""
        try:
            policy = commercial.CommercialPolicy(
                policy_no=policy_no, insurer=data.insurer, deductible=data.deductible, ratio_bp=data.ratio_bp,
                annual_limit=data.annual_limit, excluded_codes=frozenset(data.excluded_codes),
                excluded_categories=frozenset(data.excluded_categories))
        except InvalidInput as exc:
            raise InsurerError(422, "INVALID_REQUEST", exc.message) from None
        old = self.policies.get(policy_no)
        if old and self.by_insured.get(old.insured_id) == policy_no:
            del self.by_insured[old.insured_id]
        self.policies[policy_no] = PolicyBook(policy, data.insured_id, data.deductible_used,
                                              paid=data.paid_this_year, held=old.held if old else 0)
        self.by_insured[data.insured_id] = policy_no
        return self.policy_view(policy_no)

    def policy_view(self, policy_no: str) -> dict:
        book = self.policies[policy_no]
        p = book.policy
        return {"policy_no": p.policy_no, "insurer": p.insurer, "insured_id": book.insured_id,
                "deductible": p.deductible, "ratio_bp": p.ratio_bp, "annual_limit": p.annual_limit,
                "excluded_codes": sorted(p.excluded_codes), "excluded_categories": sorted(p.excluded_categories),
                "deductible_used": book.deductible_used, "paid_this_year": book.paid, "held": book.held,
                "limit_left": max(0, p.annual_limit - book.paid - book.held)}

    def _policy_for(self, data: AuthoriseIn) -> PolicyBook:
        if data.policy_no is None and data.insured_id is None:
            raise InsurerError(422, "INVALID_REQUEST", "policy_no or insured_id is required")
        policy_no = data.policy_no or self.by_insured.get(data.insured_id or "")
        book = self.policies.get(policy_no or "")
        if book is None:
            who = f"policy {data.policy_no}" if data.policy_no else f"insured person {data.insured_id}"
            raise InsurerError(404, "NO_POLICY", f"no policy in force for {who}")
        if data.insured_id is not None and book.insured_id != data.insured_id:
            raise InsurerError(404, "NO_POLICY", f"policy {book.policy.policy_no} does not insure {data.insured_id}")
        return book

    def authorise(self, data: AuthoriseIn) -> dict:
        fingerprint = hashlib.sha256(json.dumps(data.model_dump(), sort_keys=True).encode()).hexdigest()
        existing = self.auths.get(data.request_no)
        if existing is not None:
            if existing.fingerprint not in (None, fingerprint):
                raise InsurerError(409, "REQUEST_NO_REUSED",
                                   f"request_no {data.request_no} was used before for a different authorisation")
            return existing.answer()
        book = self._policy_for(data)
        items = [commercial.ClaimItem(i.code, i.name, i.category, i.amount) for i in data.items]
        try:
            result = commercial.claim(items, basic_paid=data.basic_paid, policy=book.policy,
                                      deductible_used=book.deductible_used, paid_this_year=book.paid + book.held)
        except InvalidInput as exc:
            raise InsurerError(422, "INVALID_REQUEST", exc.message) from None
        # a declined bill's deductible counts at once: there is nothing to capture that would settle it
        book.deductible_used = result.deductible_used_after
        book.held += result.amount
        record = AuthRecord(
            auth_no=self.number("AU"), request_no=data.request_no, policy_no=book.policy.policy_no,
            insured_id=book.insured_id, bill_ref=data.bill_ref,
            status="authorised" if result.amount else "declined", amount=result.amount,
            deductible=result.deductible, lines=[asdict(line) for line in result.lines], fingerprint=fingerprint,
            at=datetime.now(CHINA))
        self.auths[data.request_no] = record
        self.auth_nos[record.auth_no] = data.request_no
        return record.answer()

    def _by_auth_no(self, auth_no: str, request_no: str) -> AuthRecord:
        record = self.auths.get(self.auth_nos.get(auth_no, ""))
        if record is None:
            raise InsurerError(404, "NOT_FOUND", f"no authorisation {auth_no}")
        if record.request_no != request_no:
            raise InsurerError(409, "REQUEST_MISMATCH",
                               f"authorisation {auth_no} belongs to request_no {record.request_no}, not {request_no}")
        return record

    def capture(self, auth_no: str, request_no: str) -> dict:
        record = self._by_auth_no(auth_no, request_no)
        if record.status in ("voided", "declined"):
            raise InsurerError(409, f"AUTH_{record.status.upper()}",
                               f"authorisation {auth_no} is {record.status}; it cannot be captured")
        if record.status == "authorised":
            book = self.policies[record.policy_no or ""]
            book.held -= record.amount
            book.paid += record.amount
            record.status, record.claim_no, record.captured_at = "captured", self.number("CL"), datetime.now(CHINA)
            self.claims[record.claim_no] = record.request_no
        return {"claim_no": record.claim_no, "auth_no": record.auth_no, "request_no": record.request_no,
                "status": "captured", "amount": record.amount}

    def _release(self, record: AuthRecord) -> None:
        book = self.policies.get(record.policy_no or "")
        if book is not None:
            book.held -= record.amount if record.status == "authorised" else 0
            book.deductible_used = max(0, book.deductible_used - record.deductible)

    def void(self, auth_no: str, request_no: str) -> dict:
        record = self._by_auth_no(auth_no, request_no)
        return self._void(record)

    def _void(self, record: AuthRecord) -> dict:
        if record.status == "captured":
            raise InsurerError(409, "AUTH_CAPTURED",
                               f"authorisation {record.auth_no} is captured as claim {record.claim_no}; refund it instead")
        if record.status in ("authorised", "declined"):
            self._release(record)
            record.status = "voided"
        return {"auth_no": record.auth_no, "request_no": record.request_no, "status": "voided"}

    def void_by_request(self, request_no: str) -> dict:
        """Cancel by the caller's number: also when the authorisation has not arrived (yet) — it then
        never holds anything, and its late arrival is answered "voided"."""
        record = self.auths.get(request_no)
        if record is None:
            record = AuthRecord(auth_no=self.number("AU"), request_no=request_no, policy_no=None, insured_id=None,
                                bill_ref="", status="voided", amount=0, deductible=0, lines=[], fingerprint=None,
                                at=datetime.now(CHINA))
            self.auths[request_no] = record
            self.auth_nos[record.auth_no] = request_no
        return self._void(record)

    def refund(self, claim_no: str, data: RefundIn) -> dict:
        record = self.auths.get(self.claims.get(claim_no, ""))
        if record is None:
            raise InsurerError(404, "NOT_FOUND", f"no claim {claim_no}")
        done = self.refunds.get(data.refund_no)
        if done is not None:
            if (done.claim_no, done.amount) != (claim_no, data.amount):
                raise InsurerError(409, "REFUND_NO_REUSED", f"refund_no {data.refund_no} was used for "
                                   f"{done.amount} fen of claim {done.claim_no}")
        else:
            if record.refunded + data.amount > record.amount:
                raise InsurerError(409, "REFUND_EXCEEDS_CLAIM",
                                   f"claim {claim_no} paid {record.amount} fen, {record.refunded} already refunded; "
                                   f"{data.amount} more is too much")
            done = RefundRecord(data.refund_no, claim_no, data.amount, datetime.now(CHINA))
            self.refunds[data.refund_no] = done
            record.refunded += data.amount
            record.refunds.append(data.refund_no)
            book = self.policies[record.policy_no or ""]
            book.paid -= data.amount
            if record.refunded == record.amount:  # refunded in full: as if the bill had not been claimed
                book.deductible_used = max(0, book.deductible_used - record.deductible)
        return {"refund_no": done.refund_no, "claim_no": claim_no, "status": "refunded", "amount": done.amount,
                "refunded": record.refunded}

    def statement(self, day: date) -> list[dict]:
        rows = []
        for r in self.auths.values():
            if r.captured_at is not None and r.captured_at.date() == day:
                rows.append({"kind": "claim", "claim_no": r.claim_no, "auth_no": r.auth_no, "request_no": r.request_no,
                             "bill_ref": r.bill_ref, "amount": r.amount, "at": r.captured_at.isoformat(),
                             "refund_no": None})
        for f in self.refunds.values():
            if f.at.date() == day:
                r = self.auths[self.claims[f.claim_no]]
                rows.append({"kind": "refund", "claim_no": f.claim_no, "auth_no": r.auth_no, "request_no": r.request_no,
                             "bill_ref": r.bill_ref, "amount": f.amount, "at": f.at.isoformat(),
                             "refund_no": f.refund_no})
        return sorted(rows, key=lambda row: row["at"])

    def dump(self) -> dict:
        def plain(record) -> dict:
            return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(record).items()}

        return {"policies": [self.policy_view(n) for n in self.policies],
                "authorisations": [plain(r) for r in self.auths.values()],
                "refunds": [plain(f) for f in self.refunds.values()]}


# -- signatures ---------------------------------------------------------------------------------------

_AUTH = re.compile(r"^HMAC-SHA256 Credential=([^,\s]+),\s*Timestamp=(\d{1,12}),\s*Nonce=([0-9a-fA-F]{8,64}),"
                   r"\s*Signature=([0-9a-fA-F]{64})$")


def string_to_sign(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What both sides sign; ``path`` includes ``?query`` when there is one."""
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()


def sign(api_key: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    return hmac.new(api_key.encode(), string_to_sign(method, path, timestamp, nonce, body), hashlib.sha256).hexdigest()


class _Verifier:
    def __init__(self, api_key: str):
        self.api_key = api_key
        self.nonces: dict[str, float] = {}

    async def __call__(self, request: Request) -> bytes:
        """The request's body, once its signature is checked (``InsurerError`` 401 otherwise)."""
        header = request.headers.get("authorization", "")
        match = _AUTH.match(header.strip())
        if not match:
            raise InsurerError(401, "UNAUTHORIZED", "Authorization must be 'HMAC-SHA256 Credential=<partner>, "
                               "Timestamp=<unix>, Nonce=<hex>, Signature=<hex>'")
        _partner, timestamp, nonce, signature = match.groups()
        now = time.time()
        if abs(now - int(timestamp)) > CLOCK_SKEW_SECONDS:
            raise InsurerError(401, "TIMESTAMP_EXPIRED",
                               f"Timestamp {timestamp} is more than {CLOCK_SKEW_SECONDS}s away from the insurer's clock")
        body = await request.body()
        query = request.scope.get("query_string", b"").decode("latin-1")
        path = request.scope["path"] + (f"?{query}" if query else "")
        expected = sign(self.api_key, request.method, path, timestamp, nonce, body)
        if not hmac.compare_digest(expected, signature.lower()):
            raise InsurerError(401, "BAD_SIGNATURE", "the signature does not match the request (wrong key, or the "
                               "method, path, timestamp, nonce or body differ from what was signed)")
        if len(self.nonces) > 10_000:
            self.nonces = {n: t for n, t in self.nonces.items() if now - t <= 2 * CLOCK_SKEW_SECONDS}
        if nonce in self.nonces:
            raise InsurerError(401, "NONCE_REUSED", f"Nonce {nonce} was used before: sign each request afresh")
        self.nonces[nonce] = now
        return body


# -- the app ------------------------------------------------------------------------------------------

def create_app(*, faults: Faults | None = None, api_key: str = "sandbox-insurer-key") -> FastAPI:
    """The insurer's API on one set of books; ``faults`` are injected into the money movements."""
    app = FastAPI(title="Sandbox commercial insurer (商保直赔)")
    holder = {"faults": faults or Faults()}
    books = Books()
    signed = _Verifier(api_key)
    app.state.books = books
    app.state.faults_holder = holder

    @app.exception_handler(InsurerError)
    async def insurer_error(_request: Request, exc: InsurerError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    def refuse() -> JSONResponse:
        return _error(400, "REJECTED", "the insurer rejected the request (sandbox fault); nothing was done")

    async def faulted(work):
        async def run():
            return work()

        answer = await handle(holder["faults"], run, refuse)
        return answer if isinstance(answer, JSONResponse) else JSONResponse(answer)

    @app.put("/v1/policies/{policy_no}")
    async def put_policy(policy_no: str, request: Request):
        data = _parse(PolicyIn, await signed(request))
        if not re.match(NUMBER, policy_no):
            raise InsurerError(422, "INVALID_REQUEST", f"policy_no {policy_no!r} must be 1-64 of A-Z a-z 0-9 _ . : -")
        return books.seed(policy_no, data)

    @app.post("/v1/authorisations")
    async def authorise(request: Request):
        data = _parse(AuthoriseIn, await signed(request))
        return await faulted(lambda: books.authorise(data))

    @app.get("/v1/authorisations/{request_no}")
    async def query(request_no: str, request: Request):
        await signed(request)
        record = books.auths.get(request_no)
        if record is None:
            raise InsurerError(404, "NOT_FOUND", f"no authorisation with request_no {request_no}")
        return record.answer()

    @app.post("/v1/authorisations/{auth_no}/capture")
    async def capture(auth_no: str, request: Request):
        data = _parse(RequestNoIn, await signed(request))
        return await faulted(lambda: books.capture(auth_no, data.request_no))

    @app.post("/v1/authorisations/{auth_no}/void")
    async def void(auth_no: str, request: Request):
        data = _parse(RequestNoIn, await signed(request))
        return await faulted(lambda: books.void(auth_no, data.request_no))

    @app.post("/v1/authorisations/void")
    async def void_by_request(request: Request):
        data = _parse(RequestNoIn, await signed(request))
        return await faulted(lambda: books.void_by_request(data.request_no))

    @app.post("/v1/claims/{claim_no}/refunds")
    async def refund(claim_no: str, request: Request):
        data = _parse(RefundIn, await signed(request))
        return await faulted(lambda: books.refund(claim_no, data))

    @app.get("/v1/statements")
    async def statement(request: Request, date: str = ""):
        await signed(request)
        try:
            day = datetime.strptime(date, "%Y-%m-%d").date()
        except ValueError:
            raise InsurerError(422, "INVALID_REQUEST", f"date must be YYYY-MM-DD (got {date!r})") from None
        return {"date": day.isoformat(), "rows": books.statement(day)}

    @app.get("/_sandbox/books")
    async def read_books():
        return books.dump()

    app.include_router(control_router(holder))
    return app
