"""Refunds of a completed settlement, full or partial, in reverse payer order: the cash part first,
then the commercial insurer, then medical insurance.

Medical insurance cannot be refunded in part: the national flow reverses a whole settlement (2208)
and the hospital settles again what remains. So a refund that reaches the insurance share must be
the whole remainder of the bill; a smaller one is refused with that reason.

Each payer's refund is tied to the original (the channel's ``out_refund_no`` and the insurer's
``refund_no`` are derived from the settlement and the refund; 2208 names the ``setl_id``) and is
idempotent, so a refund interrupted by a crash or a lost answer is simply run again (``run``), until
every part has succeeded. Each succeeded part is one posted ledger transfer from the hospital's
receivable back to that payer's account.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import case, func, select, text, update
from sqlalchemy.orm import Session

from smartcare.payment import ledger
from smartcare.payment.models import Bill, Refund, Settlement, SettlementEvent
from smartcare.payment.parties import Parties
from smartcare.payment.remote import OutcomeUnknown, Refused
from smartcare.payment.saga import LEDGER_NS, accounts, changed, event, receivable
from smartcare.platform.clock import CHINA_TZ, china_now
from smartcare.platform.db import get_engine, session_scope
from smartcare.platform.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)
#: first key of the advisory lock a refund run holds (the second is the refund's id)
LOCK_KEY = 6_2010


def _refunded_parts(session: Session, settlement_id: int) -> tuple[int, int, int]:
    """What earlier refunds took (or are taking) from each payer; parts a party refused do not count."""
    def part(amount, status):
        return func.coalesce(func.sum(case((status.in_(("pending", "succeeded")), amount), else_=0)), 0)

    row = session.execute(select(part(Refund.cash_part, Refund.cash_status),
                                 part(Refund.insurer_part, Refund.insurer_status),
                                 part(Refund.medins_part, Refund.medins_status))
                          .where(Refund.settlement_id == settlement_id)).one()
    return int(row[0]), int(row[1]), int(row[2])


def request(session: Session, *, facility_code: str, settlement_no: str, refund_no: str, amount: int,
            reason: str = "") -> tuple[Refund, bool]:
    """Record a refund and split it over the payers; (refund, new). The same refund number again is the
    same refund; with another amount it is refused."""
    s = session.scalar(select(Settlement).where(Settlement.settlement_no == settlement_no,
                                                Settlement.facility_code == facility_code).with_for_update())
    if s is None:
        raise NotFound(f"no settlement {settlement_no} at this hospital", field="settlement_no")
    existing = session.scalar(select(Refund).where(Refund.settlement_id == s.id, Refund.refund_no == refund_no))
    if existing is not None:
        if existing.amount != amount:
            raise Conflict(f"refund {refund_no} exists with amount {existing.amount}", field="refund_no",
                           hint="a refund number names one refund: use a new number for another refund")
        return existing, False
    if s.state != "completed":
        raise Conflict(f"settlement {settlement_no} is {s.state}: only a completed settlement is refunded",
                       field="settlement_no")
    remaining = s.total - s.refunded
    if not 0 < amount <= remaining:
        raise InvalidInput(f"the refund must be 1 to {remaining} fen (what is left of the bill)", field="amount")
    cash_done, insurer_done, medins_done = _refunded_parts(session, s.id)
    cash = min(amount, s.cash_pay - cash_done)
    insurer = min(amount - cash, s.insurer_pay - insurer_done)
    medins = amount - cash - insurer
    if medins and medins != s.hifp_pay + s.acct_pay - medins_done:
        raise Conflict("a refund that reaches the medical-insurance share must be the whole remainder "
                       f"({remaining} fen): insurance reverses whole settlements (2208)", field="amount")
    refund = Refund(settlement_id=s.id, refund_no=refund_no, amount=amount, cash_part=cash, insurer_part=insurer,
                    medins_part=medins, cash_status="pending" if cash else "none",
                    insurer_status="pending" if insurer else "none", medins_status="pending" if medins else "none",
                    reason=reason)
    session.add(refund)
    s.refunded += amount
    session.flush()
    event(session, s.id, "refund", "requested", refund_no=refund_no, amount=amount, cash=cash, insurer=insurer,
          medins=medins)
    return refund, True


def _book(session: Session, s: Settlement, refund: Refund, payer: str, amount: int, insurance_type: str) -> None:
    ledger.transfer(session, id=uuid.uuid5(LEDGER_NS, f"{s.settlement_no}:refund{refund.id}:{payer}"),
                    debit=receivable(s.facility_code), credit=accounts(s, insurance_type)[payer], amount=amount,
                    code=f"refund:{payer}", reference=s.settlement_no)


def run(parties: Parties, refund_id: int) -> str:
    """Carry the refund as far as the parties allow now; returns its state. Safe to run again, and at
    the same time: one run at a time holds the refund (the others return at once)."""
    with get_engine().connect() as lock:
        lock.execution_options(isolation_level="AUTOCOMMIT")
        if not lock.execute(text("SELECT pg_try_advisory_lock(:k, :id)"), {"k": LOCK_KEY, "id": refund_id}).scalar():
            return "processing"
        try:
            return _run(parties, refund_id)
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:k, :id)"), {"k": LOCK_KEY, "id": refund_id})


def _run(parties: Parties, refund_id: int) -> str:
    with session_scope() as session:
        refund = session.get(Refund, refund_id)
        s = session.get(Settlement, refund.settlement_id)
        bill = session.get(Bill, s.bill_id)
        unsure = set(session.scalars(select(SettlementEvent.step).where(
            SettlementEvent.settlement_id == s.id, SettlementEvent.outcome == "unknown",
            SettlementEvent.detail["refund_no"].astext == refund.refund_no)))
        session.expunge_all()
    if refund.state != "processing":
        return refund.state
    tag = f"{s.settlement_no}R{refund.id}"
    steps = (("cash", refund.cash_part, refund.cash_status,
              lambda: _refund_cash(parties, s, refund, tag, asked_before="refund:cash" in unsure)),
             ("insurer", refund.insurer_part, refund.insurer_status,
              lambda: parties.insurer.refund(claim_no=s.insurer_claim_no, refund_no=tag, amount=refund.insurer_part)),
             ("medins", refund.medins_part, refund.medins_status, lambda: _refund_medins(parties, s, bill)))
    for payer, amount, status, call in steps:
        if status != "pending":
            continue
        try:
            call()
        except (OutcomeUnknown, Refused) as exc:
            if isinstance(exc, Refused) and f"refund:{payer}" not in unsure:
                return _failed(s, refund, payer, exc)  # the party said no: a person must look at the rest
            # no answer — or a refusal after an unknown outcome, which proves nothing (the first request may
            # have been carried out): each call is idempotent, so the next run asks again
            log.warning("refund %s: %s part not done yet: %s", tag, payer, exc)
            with session_scope() as session:
                event(session, s.id, f"refund:{payer}", "unknown", refund_no=refund.refund_no, error=str(exc))
            return "processing"
        with session_scope() as session:
            done = session.execute(update(Refund).where(Refund.id == refund.id, getattr(Refund, f"{payer}_status") == "pending")
                                   .values({f"{payer}_status": "succeeded"})).rowcount
            if not done:
                continue  # booked already (cannot happen under the lock; the guard keeps it so)
            if payer == "medins":  # two transfers: lock their accounts first (see ledger.lock)
                debit = accounts(s, bill.insurance_type)
                ledger.lock(session, [debit["hifp"], debit["acct"], receivable(s.facility_code)])
                _book(session, s, refund, "hifp", s.hifp_pay, bill.insurance_type) if s.hifp_pay else None
                _book(session, s, refund, "acct", s.acct_pay, bill.insurance_type) if s.acct_pay else None
                _take_back_accumulators(session, s, bill.insurance_type)
            else:
                _book(session, s, refund, payer, amount, bill.insurance_type)
            event(session, s.id, f"refund:{payer}", "ok", refund_no=refund.refund_no, amount=amount)
    with session_scope() as session:
        session.execute(update(Refund).where(Refund.id == refund.id).values(state="succeeded", finished_at=china_now()))
        settlement = session.get(Settlement, s.id)
        if settlement.refunded == settlement.total:
            session.execute(update(Bill).where(Bill.id == s.bill_id).values(state="refunded"))
        changed(session, s.settlement_no)
    return "succeeded"


def _failed(s: Settlement, refund: Refund, payer: str, exc: Refused) -> str:
    """Stop the refund at the refused part: what is not refunded goes back to the settlement's balance."""
    log.error("refund %s of %s: %s refused: %s", refund.refund_no, s.settlement_no, payer, exc)
    with session_scope() as session:
        r = session.get(Refund, refund.id, with_for_update=True)
        undone = sum(amount for status, amount in ((r.cash_status, r.cash_part), (r.insurer_status, r.insurer_part),
                                                   (r.medins_status, r.medins_part)) if status == "pending")
        for part in ("cash", "insurer", "medins"):
            if getattr(r, f"{part}_status") == "pending":
                setattr(r, f"{part}_status", "refused" if part == payer else "skipped")
        r.state, r.finished_at, r.reason = "failed", china_now(), f"{r.reason} | {payer}: {exc.message}".strip(" |")
        session.execute(update(Settlement).where(Settlement.id == s.id)
                        .values(refunded=Settlement.refunded - undone))
        event(session, s.id, f"refund:{payer}", "refused", refund_no=refund.refund_no, code=exc.code,
              error=exc.message, not_refunded=undone)
        changed(session, s.settlement_no)  # the parts refunded before the refusal did move money
    return "failed"


def _take_back_accumulators(session: Session, s: Settlement, insurance_type: str) -> None:
    """A reversed insurance settlement gives the person's deductible and fund use of the year back."""
    session.execute(text("""
        UPDATE payment.insurance_year SET deductible_used = GREATEST(deductible_used - :d, 0),
                                          fund_paid = GREATEST(fund_paid - :f, 0)
         WHERE empi_id = :e AND insurance_type = :t AND year = :y"""),
        {"d": s.act_pay_dedc, "f": s.hifp_pay, "e": s.empi_id, "t": insurance_type,
         "y": (s.finished_at or china_now()).astimezone(CHINA_TZ).year})


def _refund_cash(parties: Parties, s: Settlement, refund: Refund, tag: str, *, asked_before: bool) -> None:
    channel = parties.channel(s.channel)
    if asked_before:  # the last request went unanswered: did it happen?
        if channel.query_refund(out_refund_no=tag).state == "succeeded":
            return
    result = channel.refund(out_trade_no=s.settlement_no, out_refund_no=tag, amount=refund.cash_part, total=s.cash_pay)
    if result.state == "failed":
        raise Refused(s.channel, "REFUND_FAILED", f"the channel could not return {refund.cash_part} fen")
    if result.state != "succeeded":  # processing: the channel finishes it later; ask again next run
        raise OutcomeUnknown(s.channel, f"refund {result.state}")


def _refund_medins(parties: Parties, s: Settlement, bill: Bill) -> None:
    parties.medins(s.facility_code).reverse_settlement(msgid=parties.new_msgid(s.facility_code), setl_id=s.setl_id,
                                                       mdtrt_id=s.settlement_no, psn_no=s.empi_id)


def pending(session: Session, *, limit: int = 100) -> list[int]:
    """Refunds not finished yet (a party did not answer, or the process stopped)."""
    return list(session.scalars(select(Refund.id).where(Refund.state == "processing").order_by(Refund.id).limit(limit)))
