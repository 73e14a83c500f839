"""The ledger's invariants, checked against the database that enforces them: balanced double entry,
idempotent transfers, two-phase pending → post | void, no overdraft, immutability, and concurrency."""

from __future__ import annotations

import concurrent.futures
import random
import uuid

import pytest
from sqlalchemy import text

from smartcare.payment import ledger
from smartcare.platform.db import session_scope
from smartcare.platform.errors import Conflict, InvalidInput, NotFound


def _accounts(tag: str) -> dict[str, str]:
    codes = {"patient": f"patient:{tag}", "hospital": f"hospital:{tag}:receivable", "fund": f"insurance:{tag}:fund",
             "personal": f"personal:{tag}", "channel": f"channel:{tag}:wechat"}
    with session_scope() as s:
        ledger.open_account(s, code=codes["patient"], kind="patient")
        ledger.open_account(s, code=codes["hospital"], kind="hospital_receivable")
        ledger.open_account(s, code=codes["fund"], kind="insurance_fund")
        ledger.open_account(s, code=codes["personal"], kind="personal_account", debits_within_credits=True)
        ledger.open_account(s, code=codes["channel"], kind="channel_clearing")
    return codes


def _balances(codes: dict[str, str]) -> dict[str, tuple[int, int, int, int]]:
    with session_scope() as s:
        return {k: (a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
                for k, a in ((k, ledger.account(s, c)) for k, c in codes.items())}


def test_posted_transfers_are_balanced_and_idempotent(database_url):
    acc = _accounts(uuid.uuid4().hex[:8])
    first = uuid.uuid4()
    with session_scope() as s:
        ledger.transfer(s, id=first, debit=acc["fund"], credit=acc["hospital"], amount=12_345, code="insurance_pay",
                        reference="B1")
        again = ledger.transfer(s, id=first, debit=acc["fund"], credit=acc["hospital"], amount=12_345,
                                code="insurance_pay", reference="B1")
        assert again.id == first  # the same transfer, nothing moved twice
        with pytest.raises(Conflict, match="different amount"):
            ledger.transfer(s, id=first, debit=acc["fund"], credit=acc["hospital"], amount=12_346, code="insurance_pay",
                            reference="B1")
        with pytest.raises(NotFound):
            ledger.transfer(s, id=uuid.uuid4(), debit="nobody", credit=acc["hospital"], amount=1, code="x")
        for bad in (0, -5, 1.5, True):
            with pytest.raises(InvalidInput):
                ledger.transfer(s, id=uuid.uuid4(), debit=acc["fund"], credit=acc["hospital"], amount=bad, code="x")
    assert _balances(acc)["fund"] == (12_345, 0, 0, 0) and _balances(acc)["hospital"] == (0, 12_345, 0, 0)
    with session_scope() as s:
        assert ledger.trial_balance(s).balanced


def test_two_phase_pending_then_post_part_or_void(database_url):
    acc = _accounts(uuid.uuid4().hex[:8])
    pending, other = uuid.uuid4(), uuid.uuid4()
    with session_scope() as s:
        ledger.transfer(s, id=pending, debit=acc["channel"], credit=acc["hospital"], amount=5_000, code="cash_pay",
                        reference="B2", pending=True)
        ledger.transfer(s, id=other, debit=acc["channel"], credit=acc["hospital"], amount=700, code="cash_pay",
                        reference="B2", pending=True)
    assert _balances(acc)["channel"] == (0, 0, 5_700, 0)
    posted = uuid.uuid4()
    with session_scope() as s:
        ledger.post(s, id=posted, pending_id=pending, amount=4_200)  # part of it; the rest is released
        assert ledger.post(s, id=posted, pending_id=pending, amount=4_200).id == posted  # a retry is the same post
        with pytest.raises(Conflict, match="already posted or voided"):
            ledger.void(s, id=uuid.uuid4(), pending_id=pending)
        with pytest.raises(Conflict, match="exceeds pending"):
            ledger.post(s, id=uuid.uuid4(), pending_id=other, amount=701)
        ledger.void(s, id=uuid.uuid4(), pending_id=other)
        with pytest.raises(Conflict, match="not pending"):
            ledger.post(s, id=uuid.uuid4(), pending_id=posted)
    assert _balances(acc)["channel"] == (4_200, 0, 0, 0) and _balances(acc)["hospital"] == (0, 4_200, 0, 0)
    with session_scope() as s:
        assert [t.kind for t in ledger.transfers(s, reference="B2")] == ["pending", "pending", "post", "void"]
        assert ledger.trial_balance(s).balanced


def test_a_personal_account_is_never_overdrawn_pending_debits_included(database_url):
    acc = _accounts(uuid.uuid4().hex[:8])
    with session_scope() as s:
        ledger.transfer(s, id=uuid.uuid4(), debit=acc["fund"], credit=acc["personal"], amount=1_000, code="top_up")
        ledger.transfer(s, id=uuid.uuid4(), debit=acc["personal"], credit=acc["hospital"], amount=600, code="acct_pay",
                        pending=True)
        with pytest.raises(Conflict, match="overdraw"):
            ledger.transfer(s, id=uuid.uuid4(), debit=acc["personal"], credit=acc["hospital"], amount=401, code="acct_pay")
        ledger.transfer(s, id=uuid.uuid4(), debit=acc["personal"], credit=acc["hospital"], amount=400, code="acct_pay")
    assert _balances(acc)["personal"] == (400, 1_000, 600, 0)  # the refused transfer left nothing behind


def test_transfers_are_immutable_and_balances_move_only_through_them(database_url):
    acc = _accounts(uuid.uuid4().hex[:8])
    with session_scope() as s:
        t = ledger.transfer(s, id=uuid.uuid4(), debit=acc["fund"], credit=acc["hospital"], amount=99, code="x")
        tid = t.id
    for sql in ("UPDATE payment.transfer SET amount = 1 WHERE id = :id", "DELETE FROM payment.transfer WHERE id = :id"):
        with pytest.raises(Exception, match="immutable"), session_scope() as s:
            s.execute(text(sql), {"id": tid})
    with pytest.raises(Exception, match="only through transfers"), session_scope() as s:
        s.execute(text("UPDATE payment.account SET credits_posted = credits_posted + 1 WHERE code = :c"),
                  {"c": acc["hospital"]})
    with pytest.raises(Exception, match="zero balances"), session_scope() as s:
        s.execute(text("INSERT INTO payment.account (code, kind, credits_posted) VALUES ('forged', 'patient', 100)"))
    with session_scope() as s:
        s.execute(text("UPDATE payment.account SET name = 'renamed' WHERE code = :c"), {"c": acc["hospital"]})  # allowed
    assert _balances(acc)["hospital"] == (0, 99, 0, 0)


def test_concurrent_transfers_with_retries_keep_every_fen(database_url):
    acc = _accounts(uuid.uuid4().hex[:8])
    names = ["patient", "hospital", "fund", "channel"]
    rng = random.Random(7)
    plan = [(uuid.uuid4(), *rng.sample(names, 2), rng.randint(1, 10_000)) for _ in range(400)]

    def run(chunk):
        for tid, debit, credit, amount in chunk:
            for _ in range(2):  # every transfer sent twice, as a client retrying after a timeout would
                with session_scope() as s:
                    ledger.transfer(s, id=tid, debit=acc[debit], credit=acc[credit], amount=amount, code="load")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(run, [plan[i::8] for i in range(8)]))
    expected = {n: [0, 0] for n in names}
    for _, debit, credit, amount in plan:
        expected[debit][0] += amount
        expected[credit][1] += amount
    got = _balances(acc)
    assert {n: list(got[n][:2]) for n in names} == expected
    with session_scope() as s:
        assert ledger.trial_balance(s).balanced
        count = s.execute(text("SELECT count(*) FROM payment.transfer t JOIN payment.account a ON a.id = t.debit_account_id "
                               "WHERE a.code = ANY(:c)"), {"c": [acc[n] for n in names]}).scalar()
    assert count == len(plan)


def test_every_field_counts_for_idempotency_and_an_accounts_identity_is_fixed(database_url):
    acc = _accounts(uuid.uuid4().hex[:8])
    tid, pending = uuid.uuid4(), uuid.uuid4()
    with session_scope() as s:
        ledger.transfer(s, id=tid, debit=acc["fund"], credit=acc["hospital"], amount=10, code="x", reference="B1")
        with pytest.raises(Conflict, match="reference"):
            ledger.transfer(s, id=tid, debit=acc["fund"], credit=acc["hospital"], amount=10, code="x")
        with pytest.raises(NotFound):
            ledger.transfer(s, id=tid, debit="nobody", credit=acc["hospital"], amount=10, code="x", reference="B1")
        ledger.transfer(s, id=pending, debit=acc["fund"], credit=acc["hospital"], amount=500, code="x", pending=True)
        part = uuid.uuid4()
        ledger.post(s, id=part, pending_id=pending, amount=100)
        with pytest.raises(Conflict, match="amount"):
            ledger.post(s, id=part, pending_id=pending)  # "all of it" is not the 100 posted under that id
        for bad in ({"code": "c" * 33}, {"amount": 2**63}, {"reference": "r" * 65}):
            with pytest.raises(InvalidInput):
                ledger.transfer(s, **{"id": uuid.uuid4(), "debit": acc["fund"], "credit": acc["hospital"], "amount": 1,
                                      "code": "x", **bad})
    with pytest.raises(Exception, match="never change"), session_scope() as s:
        s.execute(text("UPDATE payment.account SET debits_within_credits = false WHERE code = :c"), {"c": acc["personal"]})


def test_the_same_post_sent_twice_at_once_is_one_post(database_url):
    acc = _accounts(uuid.uuid4().hex[:8])
    for _ in range(20):
        pending, post_id = uuid.uuid4(), uuid.uuid4()
        with session_scope() as s:
            ledger.transfer(s, id=pending, debit=acc["fund"], credit=acc["hospital"], amount=50, code="x", pending=True)

        def send(_):
            with session_scope() as s:
                return ledger.post(s, id=post_id, pending_id=pending).id

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert set(pool.map(send, range(2))) == {post_id}
    with session_scope() as s:
        assert ledger.trial_balance(s).balanced
