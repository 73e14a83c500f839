"""The platform's client of the commercial insurer's direct-pay API (商保直赔).

Speaks the insurer's conventions — HMAC-signed requests, ``{"code", "message"}`` errors, idempotency
by the platform's own numbers — and reports in the platform's terms (``remote``): a 4xx answer is
``Refused`` (nothing was done), a timeout, a 5xx or a reply that cannot be read is ``OutcomeUnknown``.
An unknown authorisation is resolved with ``query`` (or ``void`` by request number, which also stops
one that has not arrived yet); an unknown capture, void or refund by sending the same call again,
since the insurer answers a repeated number with the first outcome.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, Self
from urllib.parse import quote, urlencode

import httpx

from smartcare.payment import remote
from smartcare.payment.commercial import CommercialPolicy, Line

PARTY = "insurer"

AuthStatus = Literal["authorised", "captured", "voided", "declined"]


@dataclass(frozen=True)
class Authorisation:
    request_no: str
    auth_no: str
    status: AuthStatus
    amount: int                 # fen the insurer holds (authorised) or paid (captured)
    lines: tuple[Line, ...]     # the insurer's explanation; they add up to ``amount`` when it decided one
    claim_no: str | None = None  # once captured
    refunded: int = 0


@dataclass(frozen=True)
class Capture:
    claim_no: str
    amount: int


@dataclass(frozen=True)
class StatementRow:
    """One line of the insurer's daily statement (China time), for reconciliation."""

    kind: Literal["claim", "refund"]
    claim_no: str
    auth_no: str
    request_no: str
    bill_ref: str
    amount: int
    at: datetime
    refund_no: str | None = None


class _Unreadable(Exception):
    """A 2xx reply the client cannot make sense of."""


def _field(body: Mapping, name: str, kind: type) -> Any:
    value = body.get(name)
    if type(value) is not kind or (kind is int and value < 0):
        raise _Unreadable(f"{name} is {value!r}")
    return value


def _whole(value: Any) -> int:
    if type(value) is not int:
        raise _Unreadable(f"line amount is {value!r}")
    return value


def _item(item: Any) -> dict:
    if isinstance(item, Mapping):
        return {k: item[k] for k in ("code", "name", "category", "amount")}
    return {"code": item.code, "name": item.name, "category": item.category, "amount": item.amount}


class Insurer:
    """One insurer's direct-pay API. Synchronous and thread-safe (one pooled HTTP client)."""

    def __init__(self, base_url: str, *, partner: str = "smartcare", api_key: str = "sandbox-insurer-key",
                 timeout: float | None = None):
        self.partner = partner
        self._key = api_key.encode()
        self.http: httpx.Client = remote.client(base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # -- the wire -------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, body: dict | None = None, query: dict | None = None,
              not_found_is_none: bool = False) -> dict | None:
        """Sign and send one request; the reply's JSON, or ``Refused`` / ``OutcomeUnknown``."""
        content = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        query_string = f"?{urlencode(query)}" if query else ""
        target = path + query_string  # signed as the insurer reads it: path decoded, query as sent
        timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
        signed = f"{method}\n{target}\n{timestamp}\n{nonce}\n{hashlib.sha256(content).hexdigest()}".encode()
        signature = hmac.new(self._key, signed, hashlib.sha256).hexdigest()
        headers = {"Authorization": f"HMAC-SHA256 Credential={self.partner}, Timestamp={timestamp}, "
                                    f"Nonce={nonce}, Signature={signature}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        response = remote.send(PARTY, self.http, method, quote(path, safe="/") + query_string, content=content,
                               headers=headers)
        if 400 <= response.status_code < 500:
            try:
                error = response.json()
                code, message = str(error["code"]), str(error.get("message", ""))
            except (ValueError, KeyError, TypeError):
                code, message = f"HTTP_{response.status_code}", response.text[:200]
            if not_found_is_none and response.status_code == 404 and code == "NOT_FOUND":
                return None
            raise remote.Refused(PARTY, code, message)
        try:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            answer = response.json()
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise remote.OutcomeUnknown(PARTY, f"{method} {path}: reply not understood ({exc})") from None
        return answer

    def _authorisation(self, answer: dict, request_no: str, what: str) -> Authorisation:
        try:
            if answer.get("request_no") != request_no:
                raise _Unreadable(f"it is about request_no {answer.get('request_no')!r}")
            status = _field(answer, "status", str)
            if status not in ("authorised", "captured", "voided", "declined"):
                raise _Unreadable(f"status is {status!r}")
            lines = tuple(Line(str(line["rule"]), _whole(line["amount"]), line.get("item"))
                          for line in answer.get("lines", []))
            claim_no = answer.get("claim_no")
            return Authorisation(request_no=request_no, auth_no=_field(answer, "auth_no", str), status=status,
                                 amount=_field(answer, "amount", int), lines=lines,
                                 claim_no=claim_no if isinstance(claim_no, str) else None,
                                 refunded=answer.get("refunded", 0) if type(answer.get("refunded")) is int else 0)
        except (_Unreadable, KeyError, TypeError) as exc:
            raise remote.OutcomeUnknown(PARTY, f"{what} {request_no}: reply not understood ({exc})") from None

    # -- the API --------------------------------------------------------------------------------------

    def authorise(self, *, request_no: str, insured_id: str, bill_ref: str, items: Iterable[Any],
                  basic_paid: int) -> Authorisation:
        """Ask the insurer to hold what it pays of a bill; idempotent by ``request_no``. ``items`` carry
        code, name, category and amount (fen) — ``commercial.ClaimItem``, ``insurance.Item`` or mappings.
        A status of "declined" (amount 0) holds nothing and needs no void."""
        body = {"request_no": request_no, "insured_id": insured_id, "bill_ref": bill_ref,
                "items": [_item(i) for i in items], "basic_paid": basic_paid}
        answer = self._call("POST", "/v1/authorisations", body=body)
        return self._authorisation(answer or {}, request_no, "authorisation")

    def query(self, *, request_no: str) -> Authorisation | None:
        """The authorisation sent under ``request_no`` as the insurer has it, or None if it never saw it."""
        answer = self._call("GET", f"/v1/authorisations/{request_no}", not_found_is_none=True)
        return None if answer is None else self._authorisation(answer, request_no, "query")

    def capture(self, *, auth_no: str, request_no: str) -> Capture:
        """Turn an authorisation into a claim the insurer pays; repeating it answers the same claim."""
        answer = self._call("POST", f"/v1/authorisations/{auth_no}/capture", body={"request_no": request_no}) or {}
        try:
            if answer.get("status") != "captured":
                raise _Unreadable(f"status is {answer.get('status')!r}")
            return Capture(claim_no=_field(answer, "claim_no", str), amount=_field(answer, "amount", int))
        except _Unreadable as exc:
            raise remote.OutcomeUnknown(PARTY, f"capture {auth_no}: reply not understood ({exc})") from None

    def void(self, *, auth_no: str | None, request_no: str) -> None:
        """Release an authorisation's hold. Without ``auth_no`` (its answer was lost) it goes by
        ``request_no``, and then also stops an authorisation the insurer has not received yet.
        A captured one is refused with AUTH_CAPTURED: refund it instead."""
        if auth_no is None:
            answer = self._call("POST", "/v1/authorisations/void", body={"request_no": request_no})
        else:
            answer = self._call("POST", f"/v1/authorisations/{auth_no}/void", body={"request_no": request_no})
        if (answer or {}).get("status") != "voided":
            raise remote.OutcomeUnknown(PARTY, f"void {auth_no or request_no}: reply not understood")

    def refund(self, *, claim_no: str, refund_no: str, amount: int) -> None:
        """Give back ``amount`` fen of a captured claim; idempotent by ``refund_no``."""
        answer = self._call("POST", f"/v1/claims/{claim_no}/refunds", body={"refund_no": refund_no, "amount": amount})
        if (answer or {}).get("status") != "refunded" or (answer or {}).get("amount") != amount:
            raise remote.OutcomeUnknown(PARTY, f"refund {refund_no}: reply not understood")

    def statement(self, *, day: date) -> list[StatementRow]:
        """The insurer's captured claims and refunds of ``day`` (China time)."""
        answer = self._call("GET", "/v1/statements", query={"date": day.isoformat()}) or {}
        try:
            return [StatementRow(kind=row["kind"], claim_no=row["claim_no"], auth_no=row["auth_no"],
                                 request_no=row["request_no"], bill_ref=row["bill_ref"],
                                 amount=_field(row, "amount", int), at=datetime.fromisoformat(row["at"]),
                                 refund_no=row.get("refund_no")) for row in answer["rows"]]
        except (_Unreadable, KeyError, TypeError, ValueError) as exc:
            raise remote.OutcomeUnknown(PARTY, f"statement {day}: reply not understood ({exc})") from None

    def put_policy(self, policy: CommercialPolicy, *, insured_id: str, deductible_used: int = 0,
                   paid_this_year: int = 0) -> dict:
        """Seed (create or replace) a policy and its usage this year at the insurer — an admin call
        for tests, the demo and benches, not part of a settlement."""
        body = {"insured_id": insured_id, "insurer": policy.insurer, "deductible": policy.deductible,
                "ratio_bp": policy.ratio_bp, "annual_limit": policy.annual_limit,
                "excluded_codes": sorted(policy.excluded_codes),
                "excluded_categories": sorted(policy.excluded_categories),
                "deductible_used": deductible_used, "paid_this_year": paid_this_year}
        return self._call("PUT", f"/v1/policies/{policy.policy_no}", body=body) or {}
