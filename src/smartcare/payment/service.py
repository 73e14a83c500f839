"""Mixed payment operations: bills from hospitals, and their pre-settlement by the insurance engine.

A bill is idempotent by the hospital's own number: the same bill sent again is the same bill; a
different one under that number is refused. Pre-settlement (2206) books nothing: it reads the
person's accumulators and personal-account balance and returns each payer's share, explained.
"""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from smartcare.healthcard import service as healthcard
from smartcare.payment import ledger
from smartcare.payment.insurance import Item, Policy, Settlement, load_policies, settle
from smartcare.payment.models import Bill, BillItem, InsuranceYear
from smartcare.payment.schemas import BillIn
from smartcare.platform import audit
from smartcare.platform.clock import china_now
from smartcare.platform.errors import Conflict, Forbidden, InvalidInput, NotFound
from smartcare.registry import service as registry


@lru_cache
def policies() -> dict[tuple[str, int], Policy]:
    return load_policies()


def _same_bill(bill: Bill, items: list[BillItem], data: BillIn) -> bool:
    mine = [(i.code, i.name, i.category, i.unit_price, i.quantity, i.price_cap) for i in items]
    theirs = [(i.code, i.name, i.category, i.unit_price, i.quantity, i.price_cap) for i in data.items]
    return ((bill.empi_id, bill.encounter_id, bill.insurance_type, mine)
            == (data.empi_id, data.encounter_id, data.insurance_type, theirs))


def create_bill(session: Session, *, facility_code: str, data: BillIn, actor: str) -> tuple[Bill, bool]:
    """The bill, and whether it is new (False: the same bill was sent before, or at the same moment)."""
    existing = session.scalar(select(Bill).where(Bill.facility_code == facility_code, Bill.bill_no == data.bill_no))
    if existing is not None:
        return _resent(session, existing, data), False
    if data.insurance_type != "none" and not data.empi_id:
        raise InvalidInput("an insured bill needs the patient's empi_id", field="empi_id")
    if data.empi_id and not healthcard.scanned_at(session, empi_id=data.empi_id, facility_code=facility_code):
        # the same answer whether or not the person exists: a hospital cannot probe or bill strangers
        raise Forbidden("the patient's health card was not scanned at this hospital in the last 24 hours",
                        field="empi_id", hint="scan the patient's code first (POST /api/v1/healthcard/verify)")
    level = registry.get_facility(session, facility_code).level
    try:
        with session.begin_nested():
            bill = Bill(facility_code=facility_code, bill_no=data.bill_no, empi_id=data.empi_id,
                        encounter_id=data.encounter_id,
                        insurance_type=data.insurance_type, hospital_level=level, state="open",
                        total=sum(i.unit_price * i.quantity for i in data.items))
            session.add(bill)
            session.flush()
            session.add_all(BillItem(bill_id=bill.id, line=n, code=i.code, name=i.name, category=i.category,
                                     unit_price=i.unit_price, quantity=i.quantity, price_cap=i.price_cap)
                            for n, i in enumerate(data.items, start=1))
            session.flush()
            # the total check is deferred to commit; run it now, so that a refusal reaches the hospital
            # (and defer it again: the next bill of this transaction has no items yet when its row is made)
            session.execute(text("SET CONSTRAINTS payment.bill_total, payment.bill_item_total IMMEDIATE"))
            session.execute(text("SET CONSTRAINTS payment.bill_total, payment.bill_item_total DEFERRED"))
    except IntegrityError:  # the same number sent at the same moment by a retrying hospital
        existing = session.scalar(select(Bill).where(Bill.facility_code == facility_code, Bill.bill_no == data.bill_no))
        if existing is None:
            raise
        return _resent(session, existing, data), False
    audit.record(session, actor=actor, action="payment.bill.create", target=f"bill:{facility_code}:{data.bill_no}",
                 detail={"total": bill.total, "items": len(data.items)})
    return bill, True


def _resent(session: Session, bill: Bill, data: BillIn) -> Bill:
    if not _same_bill(bill, bill_items(session, bill), data):
        raise Conflict(f"bill {data.bill_no} exists with other content", field="bill_no",
                       hint="a bill number names one bill: correct it with a new bill")
    return bill


def get_bill(session: Session, *, facility_code: str, bill_no: str) -> Bill:
    bill = session.scalar(select(Bill).where(Bill.facility_code == facility_code, Bill.bill_no == bill_no))
    if bill is None:
        raise NotFound(f"no bill {bill_no} at this hospital", field="bill_no")
    return bill


def bill_items(session: Session, bill: Bill) -> list[BillItem]:
    return list(session.scalars(select(BillItem).where(BillItem.bill_id == bill.id).order_by(BillItem.line)))


def personal_account_code(empi_id: str) -> str:
    return f"personal:{empi_id}"


def accumulators(session: Session, *, empi_id: str, insurance_type: str, year: int) -> tuple[int, int]:
    row = session.get(InsuranceYear, (empi_id, year, insurance_type))
    return (row.deductible_used, row.fund_paid) if row else (0, 0)


def presettle(session: Session, bill: Bill) -> Settlement:
    """Each payer's share of ``bill`` now (2206): nothing is booked, so it may be asked again."""
    items = [Item(i.code, i.name, i.category, i.unit_price, i.quantity, i.price_cap) for i in bill_items(session, bill)]
    if bill.insurance_type == "none":
        policy = Policy("none", bill.hospital_level, deductible=0, fund_ratio_bp=0, annual_cap=0, selfpay_first_bp=0,
                        account_pays_selfpay_first=False)
        return settle(items, policy, deductible_used=0, fund_paid=0, account_balance=0)
    policy = policies().get((bill.insurance_type, bill.hospital_level))
    if policy is None:
        raise Conflict(f"no {bill.insurance_type} policy for hospital level {bill.hospital_level}", field="insurance_type")
    year = china_now().year
    used, paid = accumulators(session, empi_id=bill.empi_id, insurance_type=bill.insurance_type, year=year)
    try:
        account = ledger.account(session, personal_account_code(bill.empi_id))
        balance = account.credits_posted - account.debits_posted - account.debits_pending
    except NotFound:
        balance = 0
    return settle(items, policy, deductible_used=used, fund_paid=paid, account_balance=balance)


def credit_personal_account(session: Session, *, empi_id: str, amount: int, transfer_id) -> None:
    """The insurance centre's allocation into a person's account (个人账户划入), mirrored in the ledger
    so that the platform never books more from the account than it holds."""
    ledger.open_account(session, code="fund:allocation", kind="insurance_fund", name="personal-account allocations")
    ledger.open_account(session, code=personal_account_code(empi_id), kind="personal_account", debits_within_credits=True)
    ledger.transfer(session, id=transfer_id, debit="fund:allocation", credit=personal_account_code(empi_id),
                    amount=amount, code="allocation", reference=f"alloc:{empi_id}")


# ---------------------------------------------------------------- for the warehouse

def settlements_for_warehouse(session: Session, *, numbers: list[str] | None = None, after_id: int = 0,
                              limit: int = 1000) -> tuple[list[dict], list[dict]]:
    """Finished settlements (by number, or the next ``limit`` after id ``after_id``) with each payer's part
    net of the refund parts that succeeded (also of a refund that stopped at a later part; a medical-insurance
    refund takes back the pooled fund first), and their bills' lines: what the warehouse lands. Returns
    (settlements with their ``id``, charge lines)."""
    where = "s.settlement_no = ANY(:numbers)" if numbers is not None else "s.id > :after"
    rows = [dict(r._mapping) for r in session.execute(text(f"""
        SELECT s.id, s.settlement_no, s.facility_code, b.bill_no, b.encounter_id, s.empi_id, b.insurance_type,
               s.state, coalesce(s.finished_at, s.updated_at) AS settled_at, s.total,
               coalesce(s.hifp_pay, 0) AS hifp, coalesce(s.acct_pay, 0) AS acct,
               coalesce(s.insurer_pay, 0) AS insurer_pay, coalesce(s.cash_pay, 0) AS cash,
               s.insurer, s.channel, b.id AS bill_id,
               coalesce(r.cash, 0) AS r_cash, coalesce(r.insurer, 0) AS r_insurer, coalesce(r.medins, 0) AS r_medins
        FROM payment.settlement s JOIN payment.bill b ON b.id = s.bill_id
        LEFT JOIN LATERAL (SELECT sum(cash_part) FILTER (WHERE cash_status = 'succeeded') AS cash,
                                  sum(insurer_part) FILTER (WHERE insurer_status = 'succeeded') AS insurer,
                                  sum(medins_part) FILTER (WHERE medins_status = 'succeeded') AS medins
                           FROM payment.refund WHERE settlement_id = s.id) r ON true
        WHERE {where} AND s.state IN ('completed', 'compensated', 'failed')
        ORDER BY s.id LIMIT :limit"""), {"numbers": numbers, "after": after_id, "limit": limit})]
    settlements = []
    for r in rows:
        fund_back = min(r["r_medins"], r["hifp"])
        settlements.append({
            "id": r["id"], "settlement_no": r["settlement_no"], "facility_code": r["facility_code"],
            "bill_no": r["bill_no"], "encounter_id": r["encounter_id"], "empi_id": r["empi_id"],
            "insurance_type": r["insurance_type"], "state": r["state"], "settled_at": r["settled_at"],
            "fund_pay": r["hifp"] - fund_back, "account_pay": r["acct"] - (r["r_medins"] - fund_back),
            "insurer_pay": r["insurer_pay"] - r["r_insurer"], "cash_pay": r["cash"] - r["r_cash"],
            "total": r["total"] - r["r_cash"] - r["r_insurer"] - r["r_medins"],
            "insurer": r["insurer"], "channel": r["channel"], "bill_id": r["bill_id"]})
    lines = [dict(r._mapping) for r in session.execute(text(
        "SELECT bill_id, line, code, name, category, amount FROM payment.bill_item WHERE bill_id = ANY(:ids)"),
        {"ids": [s["bill_id"] for s in settlements]})]
    return settlements, lines
