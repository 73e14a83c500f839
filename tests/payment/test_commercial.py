"""Commercial insurance direct pay: the engine on worked examples (every fen explained), then the
insurer sandbox over real HTTP through the platform's client, faults included.

Policy of the worked examples: deductible 1,000.00 a year, the insurer pays 90 %, annual limit
100,000.00, code X9 and category 丙 excluded."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import httpx
import pytest

from smartcare.payment import remote
from smartcare.payment.commercial import ClaimItem, CommercialPolicy, claim
from smartcare.payment.insurance import Item
from smartcare.payment.insurer import Insurer
from smartcare.payment.sandbox.faults import Faults
from smartcare.payment.sandbox.insurer import CHINA, create_app
from smartcare.platform.errors import InvalidInput
from tests.payment.sandbox_support import serve_app

POLICY = CommercialPolicy(policy_no="P-TEST", insurer="测试保险", deductible=100_000, ratio_bp=9_000,
                          annual_limit=10_000_000, excluded_codes=frozenset({"X9"}),
                          excluded_categories=frozenset({"丙"}))


def _rules(c) -> dict[tuple[str, str | None], int]:
    return {(line.rule, line.item): line.amount for line in c.lines}


def _explained(c) -> None:
    """The waterfall adds up to the insurer's amount, and the bill total is where it starts."""
    assert c.explained() == c.amount
    assert c.lines[0].rule == "bill_total" and c.lines[0].amount == c.total
    assert all(line.amount < 0 for line in c.lines[1:])


# -- engine -------------------------------------------------------------------------------------------

def test_deductible_spanning_two_bills():
    first = claim([ClaimItem("A1", "血常规", "甲", 60_000)], basic_paid=40_000, policy=POLICY,
                  deductible_used=0, paid_this_year=0)
    # 200.00 left after basic insurance, all of it toward the 1,000.00 deductible
    assert (first.amount, first.deductible, first.deductible_used_after) == (0, 20_000, 20_000)
    second = claim([ClaimItem("A2", "CT", "甲", 300_000)], basic_paid=200_000, policy=POLICY,
                   deductible_used=first.deductible_used_after, paid_this_year=first.paid_this_year_after)
    # 1,000.00 left: 800.00 finishes the deductible, 90 % of the other 200.00 is 180.00
    assert second.amount == 18_000
    assert _rules(second) == {("bill_total", None): 300_000, ("basic_insurance_paid", None): -200_000,
                              ("deductible", None): -80_000, ("ratio_remainder", None): -2_000}
    assert (second.deductible_used_after, second.paid_this_year_after) == (100_000, 18_000)
    _explained(first)
    _explained(second)


def test_excluded_code_and_category_are_not_covered():
    items = [ClaimItem("A1", "手术", "甲", 100_000),
             ClaimItem("X9", "特需病房", "甲", 50_000),   # excluded by code
             ClaimItem("C1", "进口耗材", "丙", 30_000),   # excluded by category
             ClaimItem("X9", "特需病房", "丙", 5_000)]    # both: the code rule names it
    c = claim(items, basic_paid=60_000, policy=POLICY, deductible_used=100_000, paid_this_year=0)
    assert c.excluded == 85_000 and c.basic_attributed == 60_000
    assert c.amount == 36_000  # 90 % of (1,000.00 − 600.00)
    assert [(line.rule, line.item, line.amount) for line in c.lines] == [
        ("bill_total", None, 185_000), ("excluded_code", "X9", -50_000), ("excluded_category", "C1", -30_000),
        ("excluded_code", "X9", -5_000), ("basic_insurance_paid", None, -60_000), ("ratio_remainder", None, -4_000)]
    _explained(c)


def test_ratio_rounds_down_to_the_fen():
    c = claim([ClaimItem("B1", "乙类药", "乙", 12_345)], basic_paid=0, policy=POLICY, deductible_used=100_000,
              paid_this_year=0)
    assert c.amount == 11_110  # 90 % of 123.45 is 111.105: the patient keeps the half fen
    assert _rules(c)[("ratio_remainder", None)] == -1_235
    _explained(c)


def test_annual_limit_reached_in_the_middle_of_a_bill():
    c = claim([ClaimItem("S1", "手术", "甲", 100_000)], basic_paid=0, policy=POLICY, deductible_used=100_000,
              paid_this_year=POLICY.annual_limit - 5_000)
    assert c.amount == 5_000 and c.paid_this_year_after == POLICY.annual_limit
    assert _rules(c)[("annual_limit_reached", None)] == -85_000
    _explained(c)
    after = claim([ClaimItem("S2", "复查", "甲", 10_000)], basic_paid=0, policy=POLICY, deductible_used=100_000,
                  paid_this_year=c.paid_this_year_after)
    assert after.amount == 0 and _rules(after)[("annual_limit_reached", None)] == -9_000
    _explained(after)


def test_basic_insurance_paid_most_of_the_bill():
    items = [Item("A1", "住院", "甲", 100_000, 1), Item("C1", "丙类", "丙", 20_000, 1)]  # insurance.Item fits too
    c = claim(items, basic_paid=99_000, policy=POLICY, deductible_used=100_000, paid_this_year=0)
    assert c.amount == 900 and c.basic_attributed == 99_000
    _explained(c)
    # basic insurance paid for an item this policy excludes by code: its share falls on the covered
    # item first and the covered part never goes below nothing
    odd = claim([ClaimItem("X9", "特需", "甲", 80_000), ClaimItem("A1", "检查", "甲", 20_000)], basic_paid=85_000,
                policy=POLICY, deductible_used=0, paid_this_year=0)
    assert (odd.amount, odd.basic_attributed, odd.deductible, odd.deductible_used_after) == (0, 20_000, 0, 0)
    _explained(odd)


@pytest.mark.parametrize(("make", "field"), [
    (lambda: CommercialPolicy("P", "I", 0, 10_001, 0), "policy.ratio_bp"),
    (lambda: CommercialPolicy("P", "I", -1, 5_000, 0), "policy.deductible"),
    (lambda: CommercialPolicy("P", "I", 0, 5_000, 10.5), "policy.annual_limit"),
    (lambda: CommercialPolicy("", "I", 0, 5_000, 0), "policy.policy_no"),
    (lambda: CommercialPolicy("P", "I", 0, 5_000, 0, excluded_categories=frozenset({"丁"})),
     "policy.excluded_categories"),
    (lambda: claim([], basic_paid=0, policy=POLICY, deductible_used=0, paid_this_year=0), "items"),
    (lambda: claim([ClaimItem("A", "a", "丁", 1)], basic_paid=0, policy=POLICY, deductible_used=0, paid_this_year=0),
     "items[0].category"),
    (lambda: claim([ClaimItem("A", "a", "甲", 1.5)], basic_paid=0, policy=POLICY, deductible_used=0,
                   paid_this_year=0), "items[0].amount"),
    (lambda: claim([ClaimItem("A", "a", "甲", 100)], basic_paid=101, policy=POLICY, deductible_used=0,
                   paid_this_year=0), "basic_paid"),
    (lambda: claim([ClaimItem("A", "a", "甲", 100)], basic_paid=0, policy=POLICY, deductible_used=-1,
                   paid_this_year=0), "deductible_used"),
])
def test_bad_policies_and_inputs_name_the_field(make, field):
    with pytest.raises(InvalidInput) as caught:
        make()
    assert caught.value.field == field


# -- the sandbox over HTTP ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sandbox():
    app = create_app(faults=Faults())
    with serve_app(app) as base_url:
        yield base_url, app


@pytest.fixture
def insurer(sandbox):
    base_url, app = sandbox
    app.state.faults_holder["faults"] = Faults()
    with Insurer(base_url, timeout=0.5) as client:
        yield client
    app.state.faults_holder["faults"] = Faults()


def _faults(base_url: str, **settings) -> None:
    httpx.put(f"{base_url}/_sandbox/faults", json=settings).raise_for_status()


def _policy(insurer: Insurer, **terms) -> tuple[str, dict]:
    """A fresh policy for a fresh insured person: (insured_id, the insurer's view of the policy)."""
    insured = f"empi-{uuid.uuid4().hex[:12]}"
    usage = {k: terms.pop(k) for k in ("deductible_used", "paid_this_year") if k in terms}
    terms = {"deductible": 0, "ratio_bp": 9_000, "annual_limit": 10_000_000,
             "excluded_categories": frozenset({"丙"})} | terms
    policy = CommercialPolicy(policy_no=f"P{uuid.uuid4().hex[:10]}", insurer="沙箱保险", **terms)
    return insured, insurer.put_policy(policy, insured_id=insured, **usage)


def _book(sandbox, policy_no: str) -> dict:
    books = httpx.get(f"{sandbox[0]}/_sandbox/books").json()
    return next(p for p in books["policies"] if p["policy_no"] == policy_no)


def _bill(amount: int = 100_000) -> list[ClaimItem]:
    return [ClaimItem("A1", "手术", "甲", amount - 20_000), ClaimItem("C1", "进口耗材", "丙", 20_000)]


def test_authorise_capture_refund_and_statement(sandbox, insurer):
    insured, policy = _policy(insurer)
    auth = insurer.authorise(request_no=f"R{uuid.uuid4().hex}", insured_id=insured, bill_ref="BILL-1",
                             items=_bill(), basic_paid=50_000)
    # 1,000.00 − 丙 200.00 − basic 500.00 = 300.00 × 90 %
    assert (auth.status, auth.amount) == ("authorised", 27_000)
    assert sum(line.amount for line in auth.lines) == 27_000
    assert _book(sandbox, policy["policy_no"])["held"] == 27_000

    captured = insurer.capture(auth_no=auth.auth_no, request_no=auth.request_no)
    assert captured.amount == 27_000
    assert insurer.capture(auth_no=auth.auth_no, request_no=auth.request_no) == captured  # idempotent
    book = _book(sandbox, policy["policy_no"])
    assert (book["held"], book["paid_this_year"]) == (0, 27_000)
    with pytest.raises(remote.Refused) as caught:
        insurer.void(auth_no=auth.auth_no, request_no=auth.request_no)
    assert caught.value.code == "AUTH_CAPTURED"

    insurer.refund(claim_no=captured.claim_no, refund_no="F-" + auth.request_no, amount=7_000)
    insurer.refund(claim_no=captured.claim_no, refund_no="F-" + auth.request_no, amount=7_000)  # same refund
    assert _book(sandbox, policy["policy_no"])["paid_this_year"] == 20_000
    with pytest.raises(remote.Refused) as caught:
        insurer.refund(claim_no=captured.claim_no, refund_no="G-" + auth.request_no, amount=20_001)
    assert caught.value.code == "REFUND_EXCEEDS_CLAIM"
    with pytest.raises(remote.Refused) as caught:
        insurer.refund(claim_no=captured.claim_no, refund_no="F-" + auth.request_no, amount=6_000)
    assert caught.value.code == "REFUND_NO_REUSED"

    queried = insurer.query(request_no=auth.request_no)
    assert (queried.status, queried.claim_no, queried.refunded) == ("captured", captured.claim_no, 7_000)
    rows = [r for r in insurer.statement(day=datetime.now(CHINA).date()) if r.request_no == auth.request_no]
    assert [(r.kind, r.amount, r.refund_no) for r in rows] == [("claim", 27_000, None),
                                                               ("refund", 7_000, "F-" + auth.request_no)]
    assert rows[0].bill_ref == "BILL-1" and rows[0].claim_no == captured.claim_no


def test_authorise_is_idempotent_by_request_number(sandbox, insurer):
    insured, policy = _policy(insurer)
    request_no = f"R{uuid.uuid4().hex}"
    first = insurer.authorise(request_no=request_no, insured_id=insured, bill_ref="B", items=_bill(), basic_paid=0)
    again = insurer.authorise(request_no=request_no, insured_id=insured, bill_ref="B", items=_bill(), basic_paid=0)
    assert again == first
    assert _book(sandbox, policy["policy_no"])["held"] == first.amount == 72_000
    with pytest.raises(remote.Refused) as caught:
        insurer.authorise(request_no=request_no, insured_id=insured, bill_ref="B", items=_bill(), basic_paid=1)
    assert caught.value.code == "REQUEST_NO_REUSED"


def test_void_releases_the_limit_and_capture_after_void_is_refused(sandbox, insurer):
    insured, policy = _policy(insurer, annual_limit=80_000)
    first = insurer.authorise(request_no=f"R{uuid.uuid4().hex}", insured_id=insured, bill_ref="B1",
                              items=_bill(), basic_paid=0)
    assert first.amount == 72_000
    squeezed = insurer.authorise(request_no=f"R{uuid.uuid4().hex}", insured_id=insured, bill_ref="B2",
                                 items=_bill(), basic_paid=0)
    assert squeezed.amount == 8_000  # only what the limit leaves beside the first hold
    assert [line.rule for line in squeezed.lines][-1] == "annual_limit_reached"
    insurer.void(auth_no=squeezed.auth_no, request_no=squeezed.request_no)
    insurer.void(auth_no=first.auth_no, request_no=first.request_no)
    insurer.void(auth_no=first.auth_no, request_no=first.request_no)  # idempotent
    assert _book(sandbox, policy["policy_no"])["held"] == 0
    with pytest.raises(remote.Refused) as caught:
        insurer.capture(auth_no=first.auth_no, request_no=first.request_no)
    assert caught.value.code == "AUTH_VOIDED"
    assert insurer.query(request_no=first.request_no).status == "voided"
    third = insurer.authorise(request_no=f"R{uuid.uuid4().hex}", insured_id=insured, bill_ref="B3",
                              items=_bill(), basic_paid=0)
    assert third.amount == 72_000


def test_declined_when_nothing_is_payable_and_refused_without_a_policy(insurer):
    insured, _ = _policy(insurer, deductible=1_000_000)
    declined = insurer.authorise(request_no=f"R{uuid.uuid4().hex}", insured_id=insured, bill_ref="B",
                                 items=_bill(), basic_paid=0)
    assert (declined.status, declined.amount) == ("declined", 0)
    assert [line.rule for line in declined.lines] == ["bill_total", "excluded_category", "deductible"]
    with pytest.raises(remote.Refused) as caught:
        insurer.authorise(request_no=f"R{uuid.uuid4().hex}", insured_id="empi-nobody", bill_ref="B",
                          items=_bill(), basic_paid=0)
    assert caught.value.code == "NO_POLICY"
    assert insurer.query(request_no=f"R{uuid.uuid4().hex}") is None


def _eventually(check, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while (result := check()) is None:
        assert time.monotonic() < deadline, "the sandbox did not finish the held request in time"
        time.sleep(0.1)
    return result


def test_timeout_makes_the_outcome_unknown_and_query_finds_the_authorisation(sandbox, insurer):
    insured, policy = _policy(insurer)
    request_no = f"R{uuid.uuid4().hex}"
    _faults(sandbox[0], timeout=1.0, hang_seconds=1.0)
    with pytest.raises(remote.OutcomeUnknown):
        insurer.authorise(request_no=request_no, insured_id=insured, bill_ref="B", items=_bill(), basic_paid=0)
    _faults(sandbox[0])
    found = _eventually(lambda: insurer.query(request_no=request_no))
    assert (found.status, found.amount) == ("authorised", 72_000)
    assert _book(sandbox, policy["policy_no"])["held"] == 72_000


def test_void_by_request_number_stops_an_authorisation_still_on_its_way(sandbox, insurer):
    insured, policy = _policy(insurer)
    request_no = f"R{uuid.uuid4().hex}"
    _faults(sandbox[0], timeout=1.0, hang_seconds=1.0)
    with pytest.raises(remote.OutcomeUnknown):
        insurer.authorise(request_no=request_no, insured_id=insured, bill_ref="B", items=_bill(), basic_paid=0)
    _faults(sandbox[0])
    insurer.void(auth_no=None, request_no=request_no)
    time.sleep(1.2)  # the held authorisation arrives now, and finds itself voided
    assert insurer.query(request_no=request_no).status == "voided"
    assert _book(sandbox, policy["policy_no"])["held"] == 0


def test_lost_reply_and_duplicate_delivery_hold_once(sandbox, insurer):
    insured, policy = _policy(insurer)
    request_no = f"R{uuid.uuid4().hex}"
    _faults(sandbox[0], lost_reply=1.0, duplicate=1.0, hang_seconds=1.0)
    with pytest.raises(remote.OutcomeUnknown):
        insurer.authorise(request_no=request_no, insured_id=insured, bill_ref="B", items=_bill(), basic_paid=0)
    assert insurer.query(request_no=request_no).status == "authorised"  # the work stood
    assert _book(sandbox, policy["policy_no"])["held"] == 72_000


def test_error_fault_is_refused_and_holds_nothing(sandbox, insurer):
    insured, policy = _policy(insurer)
    request_no = f"R{uuid.uuid4().hex}"
    _faults(sandbox[0], error=1.0)
    with pytest.raises(remote.Refused) as caught:
        insurer.authorise(request_no=request_no, insured_id=insured, bill_ref="B", items=_bill(), basic_paid=0)
    assert caught.value.code == "REJECTED"
    _faults(sandbox[0])
    assert insurer.query(request_no=request_no) is None
    assert _book(sandbox, policy["policy_no"])["held"] == 0


def test_bad_signature_is_unauthorised(sandbox):
    with Insurer(sandbox[0], api_key="not-the-key", timeout=2) as impostor, pytest.raises(remote.Refused) as caught:
        impostor.query(request_no="R1")
    assert caught.value.code == "BAD_SIGNATURE"
    unsigned = httpx.post(f"{sandbox[0]}/v1/authorisations", json={"request_no": "R1"})
    assert unsigned.status_code == 401 and unsigned.json()["code"] == "UNAUTHORIZED"


def test_invalid_request_names_the_field(insurer):
    insured, _ = _policy(insurer)
    with pytest.raises(remote.Refused) as caught:
        insurer.authorise(request_no="R-bad", insured_id=insured, bill_ref="B",
                          items=[{"code": "A1", "name": "a", "category": "甲", "amount": 10.5}], basic_paid=0)
    assert caught.value.code == "INVALID_REQUEST" and "items.0.amount" in caught.value.message
