"""The ledger of mixed payment: double-entry accounts and immutable transfers, in fen.

Invariants (TigerBeetle's model), enforced by the database (migration 0008), not only here:
- a transfer moves one amount from one account (debit) to another (credit): every transfer is
  balanced, so over all accounts the debits equal the credits (``trial_balance``);
- a transfer is immutable; a correction is a new transfer;
- a transfer is idempotent by its id, chosen by the caller: the same id with the same fields is the
  same transfer (returned again, nothing moves twice); with other fields it is refused;
- two-phase: a pending transfer reserves its amount; it is posted (all or part) or voided, once;
- an account opened with ``debits_within_credits`` (a personal medical-insurance account) is never
  overdrawn, pending debits included;
- balances change only through transfers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import psycopg
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from smartcare.payment.models import Account, Transfer
from smartcare.platform.db import driver
from smartcare.platform.errors import Conflict, InvalidInput, NotFound

ACCOUNT_KINDS = ("hospital_receivable", "insurance_fund", "personal_account", "insurer", "channel_clearing", "patient")


def open_account(session: Session, *, code: str, kind: str, name: str = "", debits_within_credits: bool = False) -> Account:
    """Open an account (or return it: opening is idempotent by code). Balances start at zero."""
    if kind not in ACCOUNT_KINDS:
        raise InvalidInput(f"unknown account kind {kind!r}", field="kind", hint=f"one of {', '.join(ACCOUNT_KINDS)}")
    existing = session.scalar(select(Account).where(Account.code == code))
    if existing is None:  # two openings at once (parallel settlements of a new hospital) make one account
        driver(session).execute("""
            INSERT INTO payment.account (code, kind, name, debits_within_credits) VALUES (%s, %s, %s, %s)
            ON CONFLICT (code) DO NOTHING""", (code, kind, name, debits_within_credits))
        existing = session.scalar(select(Account).where(Account.code == code))
    if (existing.kind, existing.debits_within_credits) != (kind, debits_within_credits):
        raise Conflict(f"account {code} exists with another kind or limit", field="code")
    return existing


def lock(session: Session, codes) -> None:
    """Lock these accounts, in id order, for the rest of the transaction. Each transfer locks its two
    accounts in id order itself; a transaction that makes several transfers must take all its locks
    first, or two such transactions (a settlement's posts beside a refund to the same personal account)
    could each hold one account the other waits for."""
    driver(session).execute("""SELECT id FROM payment.account WHERE code = ANY(%s) ORDER BY id FOR NO KEY UPDATE""",
                            (list(codes),)).fetchall()


def account(session: Session, code: str) -> Account:
    found = session.scalar(select(Account).where(Account.code == code).execution_options(populate_existing=True))
    if found is None:
        raise NotFound(f"no account {code}", field="account")
    return found


MAX_AMOUNT = 2**63 - 1


def _amount(amount: int) -> int:
    if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:
        raise InvalidInput("amount must be a whole, non-negative number of fen", field="amount")
    return amount


def _text(value: str | None, field: str, limit: int, *, required: bool = True) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not 0 < len(value) <= limit or "\x00" in value:
        raise InvalidInput(f"{field} must be 1 to {limit} characters", field=field)


def _insert(session: Session, sql: str, params: dict, *, what: str) -> Transfer | None:
    """Run one transfer INSERT in a savepoint: a refusal by the database leaves the caller's
    transaction usable and moves nothing. None: a transfer with this id (or resolving the same
    pending transfer) exists already — the caller compares."""
    try:
        with session.begin_nested():
            row = driver(session).execute(sql, params).fetchone()
    except psycopg.errors.CheckViolation as exc:
        reason = exc.diag.message_primary or "a ledger invariant"
        if exc.diag.constraint_name == "not_overdrawn":
            reason = "it would overdraw the debit account"
        raise Conflict(f"{what} refused: {reason}", field="amount") from None
    except psycopg.errors.UniqueViolation:
        return None  # the pending transfer is resolved already: by this id (a concurrent retry) or another
    return None if row is None else session.get(Transfer, row[0], populate_existing=True)


def _same_or_conflict(session: Session, id: uuid.UUID, expected: dict, *, what: str) -> Transfer:
    """The transfer ``id`` as it stands, if it is the one described; every field counts, None included."""
    found = session.get(Transfer, id, populate_existing=True)
    if found is None:
        raise Conflict(f"{what} refused: the pending transfer is already posted or voided", field="pending_id")
    different = [k for k, v in expected.items() if getattr(found, k) != v]
    if different:
        raise Conflict(f"transfer {id} exists with a different {', '.join(different)}", field="id",
                       hint="a transfer id names one transfer: use a new id for a new one")
    return found


def transfer(session: Session, *, id: uuid.UUID, debit: str, credit: str, amount: int, code: str,
             reference: str | None = None, pending: bool = False) -> Transfer:
    """Move ``amount`` fen from ``debit`` to ``credit`` (account codes), posted at once or pending."""
    if _amount(amount) == 0:
        raise InvalidInput("a transfer moves at least one fen", field="amount")
    _text(code, "code", 32)
    _text(reference, "reference", 64, required=False)
    accounts = dict(session.execute(select(Account.code, Account.id).where(Account.code.in_((debit, credit)))).all())
    for side, account_code in (("debit", debit), ("credit", credit)):
        if account_code not in accounts:
            raise NotFound(f"no account {account_code}", field=side)
    expected = {"kind": "pending" if pending else "posted", "debit_account_id": accounts[debit],
                "credit_account_id": accounts[credit], "amount": amount, "pending_id": None, "code": code,
                "reference": reference}
    made = _insert(session, """
        INSERT INTO payment.transfer (id, kind, debit_account_id, credit_account_id, amount, code, reference)
        VALUES (%(id)s, %(kind)s, %(debit_account_id)s, %(credit_account_id)s, %(amount)s, %(code)s, %(reference)s)
        ON CONFLICT (id) DO NOTHING RETURNING id""", {"id": id, **expected}, what=f"transfer {id}")
    return made or _same_or_conflict(session, id, expected, what=f"transfer {id}")


def _resolve(session: Session, *, id: uuid.UUID, pending_id: uuid.UUID, kind: str, amount: int | None, code: str) -> Transfer:
    _text(code, "code", 32)
    pending = session.get(Transfer, pending_id, populate_existing=True)
    if pending is None:
        raise NotFound(f"no transfer {pending_id}", field="pending_id")
    amount = 0 if kind == "void" else pending.amount if amount is None else _amount(amount)
    expected = {"kind": kind, "debit_account_id": pending.debit_account_id, "credit_account_id": pending.credit_account_id,
                "amount": amount, "pending_id": pending_id, "code": code, "reference": pending.reference}
    made = _insert(session, """
        INSERT INTO payment.transfer (id, kind, debit_account_id, credit_account_id, amount, pending_id, code, reference)
        VALUES (%(id)s, %(kind)s, %(debit_account_id)s, %(credit_account_id)s, %(amount)s, %(pending_id)s, %(code)s,
                %(reference)s)
        ON CONFLICT (id) DO NOTHING RETURNING id""", {"id": id, **expected}, what=f"{kind} {id}")
    return made or _same_or_conflict(session, id, expected, what=f"{kind} {id}")


def post(session: Session, *, id: uuid.UUID, pending_id: uuid.UUID, amount: int | None = None, code: str = "post") -> Transfer:
    """Post a pending transfer: all of it, or ``amount`` fen of it (the rest is released)."""
    return _resolve(session, id=id, pending_id=pending_id, kind="post", amount=amount, code=code)


def void(session: Session, *, id: uuid.UUID, pending_id: uuid.UUID, code: str = "void") -> Transfer:
    """Release a pending transfer: nothing moves."""
    return _resolve(session, id=id, pending_id=pending_id, kind="void", amount=0, code=code)


@dataclass(frozen=True)
class TrialBalance:
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int

    @property
    def balanced(self) -> bool:
        return self.debits_posted == self.credits_posted and self.debits_pending == self.credits_pending


def trial_balance(session: Session) -> TrialBalance:
    """Totals over every account: double entry means debits equal credits, to the fen."""
    row = session.execute(select(func.coalesce(func.sum(Account.debits_posted), 0),
                                 func.coalesce(func.sum(Account.credits_posted), 0),
                                 func.coalesce(func.sum(Account.debits_pending), 0),
                                 func.coalesce(func.sum(Account.credits_pending), 0))).one()
    return TrialBalance(*(int(v) for v in row))


def transfers(session: Session, *, reference: str) -> list[Transfer]:
    return list(session.scalars(select(Transfer).where(Transfer.reference == reference).order_by(Transfer.created_at)))
