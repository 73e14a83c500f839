"""The settlement saga: one bill paid by medical insurance, a commercial insurer and the patient's
channel, as a sequence of steps whose every one is idempotent and whose failure compensates the
steps before it in reverse order.

Steps (``Settlement.step``), each its own short transaction around at most one call to a party:
    presettle (2206) → authorise (insurer hold) → reserve (pending ledger transfers; shares fixed)
    → pay_cash (channel) → settle_medins (2207) → capture (insurer) → finish (post every transfer)
and on any definite failure: ``compensate`` — insurer void/refund, 2208/2601, channel reverse, void
the pending transfers — in that order (the reverse of the payments).

Crash safety: before calling a party the saga writes what it is about to do (the payer's status
becomes ``requested`` with the number it will use); after the answer it writes the result. A
crashed orchestrator leaves its lease to expire; ``recover`` takes the settlement over and, for a
step whose answer never came back, finds the truth by query (insurer, channel) or by reversal
(insurance centre: 2601 and a new message) — never by guessing. Only the lease holder may move a
settlement (every write checks ``lease_owner``), so two orchestrators never act on one at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from smartcare.payment import ledger, service
from smartcare.payment.commercial import ClaimItem
from smartcare.payment.insurance import Item
from smartcare.payment.channels.base import Order
from smartcare.payment.models import Bill, DirectPayConsent, Settlement, SettlementEvent, Transfer
from smartcare.payment.parties import INSURER, Parties
from smartcare.payment.remote import OutcomeUnknown, Refused
from smartcare.platform import bus
from smartcare.platform.clock import china_now
from smartcare.platform.db import session_scope
from smartcare.platform.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)

TERMINAL = ("completed", "compensated")
#: Ledger transfer ids are derived from the settlement number and the payer, so a retried step makes
#: the same transfer (the ledger's idempotency does the rest).
LEDGER_NS = uuid.UUID("6f1c3d2e-9a57-4e4b-8f0e-5d7a2c91b460")
PAYERS = ("hifp", "acct", "insurer", "cash")
RETRIES = 3


class Crash(BaseException):
    """A simulated orchestrator crash (fault simulation): everything stops where it is."""


class LeaseLost(Exception):
    """Another orchestrator took the settlement over: this one stops touching it."""


@dataclass(frozen=True)
class Options:
    lease_seconds: float = 30.0
    #: how long the patient may take to confirm a payment (password) before the cash part is reversed
    payer_wait_seconds: float = 30.0
    poll_seconds: float = 0.25
    #: after a compensation step that could not finish (a party did not answer), try again this much later
    retry_seconds: float = 2.0


def transfer_id(settlement_no: str, payer: str, what: str) -> uuid.UUID:
    return uuid.uuid5(LEDGER_NS, f"{settlement_no}:{payer}:{what}")


def accounts(s: Settlement, insurance_type: str) -> dict[str, str]:
    """Debit account of each payer's share; the credit is always the hospital's receivable."""
    return {"hifp": f"fund:{insurance_type}", "acct": service.personal_account_code(s.empi_id or "-"),
            "insurer": f"insurer:{s.insurer or INSURER}", "cash": f"clearing:{s.channel or 'none'}"}


def receivable(facility_code: str) -> str:
    return f"receivable:{facility_code}"


def open_accounts(session: Session, *, facility_code: str, insurance_type: str, channel: str | None) -> None:
    ledger.open_account(session, code=receivable(facility_code), kind="hospital_receivable", name=facility_code)
    if insurance_type != "none":
        ledger.open_account(session, code=f"fund:{insurance_type}", kind="insurance_fund")
    ledger.open_account(session, code=f"insurer:{INSURER}", kind="insurer")
    if channel:
        ledger.open_account(session, code=f"clearing:{channel}", kind="channel_clearing")


def event(session: Session, settlement_id: int, step: str, outcome: str, **detail) -> None:
    session.add(SettlementEvent(settlement_id=settlement_id, step=step, outcome=outcome, detail=detail))


#: Published when a settlement finishes (completed or compensated) or a refund of it succeeds.
CHANGED_TOPIC = "payment.settlement.changed"


def changed(session: Session, settlement_no: str) -> None:
    """Tell the warehouse (and anyone else) that a settlement's outcome changed, in the same transaction."""
    bus.publish(session, CHANGED_TOPIC, {"settlement_no": settlement_no})


# ---- starting --------------------------------------------------------------------------------------


def start(session: Session, *, facility_code: str, bill_no: str, channel: str | None,
          auth_code: str | None) -> tuple[Settlement, bool]:
    """A new settlement of an open bill, and True (the caller commits, then runs it). A bill being
    paid or paid already answers with that settlement and False, so a terminal's retry does not pay twice."""
    bill = service.get_bill(session, facility_code=facility_code, bill_no=bill_no)
    current = session.scalar(select(Settlement).where(Settlement.bill_id == bill.id,
                                                      Settlement.state.in_(("running", "compensating", "completed"))))
    if current is not None:
        return current, False
    if bill.state != "open":
        raise Conflict(f"bill {bill_no} is {bill.state}", field="bill_no")
    if channel is not None and not auth_code:
        raise InvalidInput("a payment channel needs the payment code the terminal scanned", field="auth_code")
    locked = session.execute(update(Bill).where(Bill.id == bill.id, Bill.state == "open").values(state="paying")).rowcount
    if not locked:
        raise Conflict(f"bill {bill_no} is being paid", field="bill_no", hint="ask for its settlement instead")
    seq = session.execute(text("SELECT nextval('payment.settlement_id_seq')")).scalar_one()
    no = f"S{china_now():%Y%m%d}{seq:010d}"
    insurer = INSURER if bill.empi_id and session.scalar(
        select(DirectPayConsent.empi_id).where(DirectPayConsent.empi_id == bill.empi_id,
                                               DirectPayConsent.insurer == INSURER,
                                               DirectPayConsent.revoked_at.is_(None))) else None
    settlement = Settlement(id=seq, settlement_no=no, bill_id=bill.id, facility_code=facility_code, empi_id=bill.empi_id,
                            total=bill.total, channel=channel, auth_code=auth_code, insurer=insurer)
    session.add(settlement)
    open_accounts(session, facility_code=facility_code, insurance_type=bill.insurance_type, channel=channel)
    session.flush()
    event(session, settlement.id, "start", "ok", channel=channel, insurer=insurer)
    return settlement, True


# ---- the orchestrator ------------------------------------------------------------------------------


class Orchestrator:
    def __init__(self, parties: Parties, options: Options | None = None,
                 crash: Callable[[str], bool] | None = None):
        self.parties = parties
        self.options = options or Options()
        self.crash = crash or (lambda point: False)
        self._local = threading.local()

    @property
    def owner(self) -> str:
        """The lease token of the current ``run`` call: one per call, so that two threads of one process
        (a terminal's retry beside the first request, the worker beside the API) never both hold a lease."""
        return self._local.owner

    # -- leases and state --

    def _take(self, settlement_no: str) -> bool:
        """Take the lease; False if another run holds a live one or the settlement has ended."""
        with session_scope() as session:
            taken = session.execute(text("""
                UPDATE payment.settlement SET lease_owner = :me, lease_until = now() + make_interval(secs => :secs),
                       updated_at = now()
                 WHERE settlement_no = :no AND state IN ('running', 'compensating')
                   AND (lease_owner IS NULL OR lease_owner = :me OR lease_until < now())"""),
                {"me": self.owner, "secs": self.options.lease_seconds, "no": settlement_no}).rowcount
        return bool(taken)

    def _read(self, session: Session, settlement_no: str) -> Settlement:
        s = session.scalar(select(Settlement).where(Settlement.settlement_no == settlement_no).with_for_update())
        if s is None:
            raise NotFound(f"no settlement {settlement_no}", field="settlement_no")
        if s.state not in TERMINAL and s.lease_owner != self.owner:
            raise LeaseLost(settlement_no)
        return s

    def _write(self, settlement_no: str, what: str, outcome: str, detail: dict | None = None, **values) -> None:
        """Record ``what`` happened (an event) and the settlement's new ``values``, if we still hold the lease."""
        with session_scope() as session:
            s = self._read(session, settlement_no)
            for k, v in values.items():
                setattr(s, k, v)
            s.updated_at = china_now()
            if s.lease_owner == self.owner:  # every write renews the lease: no separate round trip per step
                s.lease_until = s.updated_at + timedelta(seconds=self.options.lease_seconds)
            event(session, s.id, what, outcome, **(detail or {}))

    def _snapshot(self, settlement_no: str, bill: tuple[Bill, list[Item]] | None = None
                  ) -> tuple[Settlement, Bill, list[Item]]:
        """The settlement as it stands (and its bill, which never changes: read once per run)."""
        with session_scope() as session:
            s = self._read(session, settlement_no)
            if bill is None:
                found = session.get(Bill, s.bill_id)
                bill = (found, [Item(i.code, i.name, i.category, i.unit_price, i.quantity, i.price_cap)
                                for i in service.bill_items(session, found)])
            session.expunge_all()
        return s, *bill

    def _fail(self, s: Settlement, step: str, reason: str, **detail) -> None:
        """A definite failure: from now on the saga undoes what was done."""
        log.info("settlement %s: compensating after %s: %s", s.settlement_no, step, reason)
        self._write(s.settlement_no, step, "failed", {"reason": reason, **detail}, state="compensating",
                    step="compensate", reason=reason)

    # -- running --

    def run(self, settlement_no: str) -> str:
        """Move the settlement as far as it goes now; returns its state. Safe to call again at any time."""
        self._local.owner = f"{os.getpid()}-{secrets.token_hex(8)}"
        if not self._take(settlement_no):
            return self.state(settlement_no)
        try:
            known = None
            while True:
                s, bill, items = self._snapshot(settlement_no, known)
                known = (bill, items)
                if s.state in TERMINAL:
                    return s.state
                if self.crash(f"before:{s.step}"):
                    raise Crash(s.step)
                getattr(self, f"_step_{s.step}")(s, bill, items)
        except LeaseLost:  # taken over, or a compensation a party did not answer: recovery tries again later
            return self.state(settlement_no)

    def state(self, settlement_no: str) -> str:
        with session_scope() as session:
            return session.scalar(select(Settlement.state).where(Settlement.settlement_no == settlement_no))

    def recover(self, *, limit: int = 100) -> int:
        """Resume settlements whose orchestrator stopped (lease expired); returns how many were taken."""
        with session_scope() as session:
            numbers = list(session.scalars(text("""
                SELECT settlement_no FROM payment.settlement
                 WHERE state IN ('running', 'compensating') AND (lease_until IS NULL OR lease_until < now())
                 ORDER BY lease_until NULLS FIRST LIMIT :limit FOR UPDATE SKIP LOCKED"""), {"limit": limit}))
        for no in numbers:  # run() takes the lease, or leaves the settlement to whoever took it first
            try:
                self.run(no)
            except Exception:
                log.exception("settlement %s: recovery failed; it will be tried again", no)
        return len(numbers)

    # -- steps --

    def _point(self, where: str) -> None:
        if self.crash(where):
            raise Crash(where)

    def _step_presettle(self, s: Settlement, bill: Bill, items: list[Item]) -> None:
        if bill.insurance_type == "none":
            self._write(s.settlement_no, "presettle", "skipped", hifp_pay=0, acct_pay=0, medins_status="none",
                        step="authorise")
            return
        centre = self.parties.medins(s.facility_code)
        for attempt in range(RETRIES):  # 2206 books nothing: asking again is safe
            try:
                r = centre.presettle(msgid=self.parties.new_msgid(s.facility_code), psn_no=s.empi_id,
                                     insutype=bill.insurance_type, mdtrt_id=s.settlement_no,
                                     hospital_level=bill.hospital_level, items=items)
            except Refused as exc:
                return self._fail(s, "presettle", f"insurance centre: {exc.message}", code=exc.code)
            except OutcomeUnknown as exc:
                if attempt == RETRIES - 1:
                    return self._fail(s, "presettle", str(exc))
                continue
            self._write(s.settlement_no, "presettle", "ok", {"hifp_pay": r.hifp_pay, "acct_pay": r.acct_pay},
                        hifp_pay=r.hifp_pay, acct_pay=r.acct_pay, act_pay_dedc=r.act_pay_dedc, step="authorise")
            return

    def _step_authorise(self, s: Settlement, bill: Bill, items: list[Item]) -> None:
        basic = (s.hifp_pay or 0) + (s.acct_pay or 0)
        if s.insurer is None or basic >= s.total:
            self._write(s.settlement_no, "authorise", "skipped", insurer_pay=0, insurer_status="none", step="reserve")
            return
        request_no = f"{s.settlement_no}A"
        self._write(s.settlement_no, "authorise", "requested", insurer_status="requested")
        self._point("authorise:sent")
        claim_items = [ClaimItem(i.code, i.name, i.category, i.unit_price * i.quantity) for i in items]
        found = None
        for _ in range(RETRIES):
            try:
                # idempotent by request_no: a retry after a lost answer finds the same authorisation
                found = self.parties.insurer.authorise(request_no=request_no, insured_id=s.empi_id,
                                                       bill_ref=s.settlement_no, items=claim_items, basic_paid=basic)
                break
            except Refused as exc:
                if exc.code == "NO_POLICY":
                    break
                return self._fail(s, "authorise", f"insurer: {exc.message}", code=exc.code)
            except OutcomeUnknown:
                continue
        else:
            return self._fail(s, "authorise", "insurer: no answer")
        if found is None or found.status != "authorised" or found.amount == 0:
            self._write(s.settlement_no, "authorise", "declined", insurer_pay=0, insurer_status="none", step="reserve")
            return
        amount = min(found.amount, s.total - basic)
        self._write(s.settlement_no, "authorise", "ok", {"amount": amount, "auth_no": found.auth_no},
                    insurer_pay=amount, insurer_auth_no=found.auth_no, insurer_status="authorised", step="reserve")

    def _step_reserve(self, s: Settlement, bill: Bill, items: list[Item]) -> None:
        cash = s.total - s.hifp_pay - s.acct_pay - s.insurer_pay
        if cash > 0 and not s.channel:
            return self._fail(s, "reserve", "the patient's share needs a payment channel and code")
        shares = {"hifp": s.hifp_pay, "acct": s.acct_pay, "insurer": s.insurer_pay, "cash": cash}
        debit = accounts(s, bill.insurance_type)
        try:
            with session_scope() as session:
                settlement = self._read(session, s.settlement_no)
                ledger.lock(session, [debit[p] for p, amount in shares.items() if amount] + [receivable(s.facility_code)])
                for payer, amount in shares.items():
                    if amount:
                        if payer == "acct":
                            ledger.open_account(session, code=debit[payer], kind="personal_account",
                                                debits_within_credits=True)
                        ledger.transfer(session, id=transfer_id(s.settlement_no, payer, "pending"), debit=debit[payer],
                                        credit=receivable(s.facility_code), amount=amount, code=f"settle:{payer}",
                                        reference=s.settlement_no, pending=True)
                settlement.cash_pay = cash
                settlement.cash_status = "pending" if cash else "none"
                settlement.step = "pay_cash"
                event(session, settlement.id, "reserve", "ok", **shares)
        except Conflict as exc:  # e.g. the personal account's mirror cannot cover acct_pay
            return self._fail(s, "reserve", f"ledger: {exc.message}")

    def _step_pay_cash(self, s: Settlement, bill: Bill, items: list[Item]) -> None:
        if not s.cash_pay:
            self._write(s.settlement_no, "pay_cash", "skipped", step="settle_medins")
            return
        channel = self.parties.channel(s.channel)
        attempt = s.cash_attempt
        order = None  # requested or paying before a crash or a lost answer: ask the channel what happened
        if s.cash_status == "pending":
            order, attempt = self._send_pay(s, channel, attempt)
        while True:
            order = self._await_payment(s, channel, order)
            if order is None or order.state != "not_found" or attempt >= RETRIES:
                break
            order, attempt = self._send_pay(s, channel, attempt)  # it never arrived: the same number again
        if order is not None and order.state == "paid" and order.amount != s.cash_pay:
            self._write(s.settlement_no, "pay_cash", "amount_differs", {"paid": order.amount})
            return self._fail(s, "pay_cash", f"{s.channel} took {order.amount} fen, not {s.cash_pay}: reversed")
        if order is not None and order.state == "paid":
            self._write(s.settlement_no, "pay_cash", "ok", {"transaction_id": order.transaction_id},
                        cash_status="paid", transaction_id=order.transaction_id, step="settle_medins")
            return
        state = "unknown" if order is None else order.state
        self._fail(s, "pay_cash", f"{s.channel}: payment {state}")

    def _send_pay(self, s: Settlement, channel, attempt: int):
        """One payment request under the settlement's number; None: no trustworthy answer."""
        self._write(s.settlement_no, "pay_cash", "requested", cash_status="requested", cash_attempt=attempt + 1)
        self._point("pay_cash:before-send")
        try:
            order = channel.pay(out_trade_no=s.settlement_no, amount=s.cash_pay, auth_code=s.auth_code,
                                description=f"{s.facility_code} bill")
        except Refused as exc:
            self._write(s.settlement_no, "pay_cash", "refused", {"code": exc.code}, cash_status="failed")
            order = Order(s.settlement_no, "failed")
        except OutcomeUnknown:
            order = None
        self._point("pay_cash:answered")
        return order, attempt + 1

    def _await_payment(self, s: Settlement, channel, order: Order | None) -> Order | None:
        """The order once it is paid, failed, reversed or not found; None if the channel cannot tell
        within the payer's time (the compensation's reversal then settles it for good)."""
        deadline = time.monotonic() + self.options.payer_wait_seconds
        told_paying = False
        while order is None or order.state == "paying":
            with session_scope() as session:  # a notification may have told us already; keep the lease
                row = session.execute(
                    update(Settlement).where(Settlement.settlement_no == s.settlement_no,
                                             Settlement.lease_owner == self.owner)
                    .values(lease_until=china_now() + timedelta(seconds=self.options.lease_seconds))
                    .returning(Settlement.cash_status, Settlement.transaction_id)).one_or_none()
            if row is None:
                raise LeaseLost(s.settlement_no)
            if row.cash_status == "paid":
                return Order(s.settlement_no, "paid", s.cash_pay, row.transaction_id)
            if order is not None and not told_paying:
                self._write(s.settlement_no, "pay_cash", "paying", cash_status="paying")
                told_paying = True
            if time.monotonic() > deadline:
                return None
            if order is not None:
                time.sleep(self.options.poll_seconds)
            try:
                order = channel.query(out_trade_no=s.settlement_no)
            except (OutcomeUnknown, Refused):
                order = None
                time.sleep(self.options.poll_seconds)
        return order

    def _step_settle_medins(self, s: Settlement, bill: Bill, items: list[Item]) -> None:
        if bill.insurance_type == "none":
            self._write(s.settlement_no, "settle_medins", "skipped", step="capture")
            return
        centre = self.parties.medins(s.facility_code)
        if s.medins_status == "requested":  # the answer to medins_msgid never came: reverse it (2601) first
            if not self._reverse_message(s, centre):
                return self._fail(s, "settle_medins", "insurance centre: unknown outcome not reversed")
        if s.medins_attempt >= RETRIES:
            return self._fail(s, "settle_medins", "insurance centre: no answer after retries")
        msgid = self.parties.new_msgid(s.facility_code)
        self._write(s.settlement_no, "settle_medins", "requested", {"msgid": msgid}, medins_status="requested",
                    medins_msgid=msgid, medins_attempt=s.medins_attempt + 1)
        self._point("settle_medins:before-send")
        try:
            r = centre.settle(msgid=msgid, psn_no=s.empi_id, insutype=bill.insurance_type, mdtrt_id=s.settlement_no,
                              hospital_level=bill.hospital_level, items=items)
        except Refused as exc:
            self._write(s.settlement_no, "settle_medins", "refused", {"code": exc.code}, medins_status="failed")
            return self._fail(s, "settle_medins", f"insurance centre: {exc.message}", code=exc.code)
        except OutcomeUnknown:
            return  # medins_status stays "requested": the next round reverses the message and tries again
        self._point("settle_medins:answered")
        if (r.hifp_pay, r.acct_pay) != (s.hifp_pay, s.acct_pay):
            self._write(s.settlement_no, "settle_medins", "differs", {"hifp_pay": r.hifp_pay, "acct_pay": r.acct_pay},
                        medins_status="settled", setl_id=r.setl_id)
            return self._fail(s, "settle_medins", "the insurance split changed since pre-settlement")
        self._write(s.settlement_no, "settle_medins", "ok", {"setl_id": r.setl_id}, medins_status="settled",
                    setl_id=r.setl_id, act_pay_dedc=r.act_pay_dedc, step="capture")

    def _reverse_message(self, s: Settlement, centre) -> bool:
        try:
            centre.reverse_message(msgid=self.parties.new_msgid(s.facility_code), omsgid=s.medins_msgid, oinfno="2207",
                                   psn_no=s.empi_id)
        except (OutcomeUnknown, Refused) as exc:
            self._write(s.settlement_no, "reverse_2601", "unknown", {"error": str(exc)})
            return False
        self._write(s.settlement_no, "reverse_2601", "ok", {"omsgid": s.medins_msgid}, medins_status="reversed")
        return True

    def _step_capture(self, s: Settlement, bill: Bill, items: list[Item]) -> None:
        if not s.insurer_pay:
            self._write(s.settlement_no, "capture", "skipped", step="finish")
            return
        request_no = f"{s.settlement_no}A"
        self._write(s.settlement_no, "capture", "requested", insurer_status="capturing")
        self._point("capture:before-send")
        for _ in range(RETRIES):
            try:  # idempotent by the authorisation: a retry after a lost answer gets the same claim
                captured = self.parties.insurer.capture(auth_no=s.insurer_auth_no, request_no=request_no)
            except Refused as exc:
                return self._fail(s, "capture", f"insurer: {exc.message}", code=exc.code)
            except OutcomeUnknown:
                continue
            if captured.amount != s.insurer_pay:
                self._write(s.settlement_no, "capture", "amount_differs", {"captured": captured.amount},
                            insurer_status="captured", insurer_claim_no=captured.claim_no)
                return self._fail(s, "capture", f"insurer paid {captured.amount} fen, not {s.insurer_pay}")
            self._write(s.settlement_no, "capture", "ok", {"claim_no": captured.claim_no}, insurer_status="captured",
                        insurer_claim_no=captured.claim_no, step="finish")
            return
        self._fail(s, "capture", "insurer: no answer")

    def _step_finish(self, s: Settlement, bill: Bill, items: list[Item]) -> None:
        """Post every reserved share, move the accumulators, close the bill — one transaction."""
        with session_scope() as session:
            settlement = self._read(session, s.settlement_no)
            shares = {"hifp": s.hifp_pay, "acct": s.acct_pay, "insurer": s.insurer_pay, "cash": s.cash_pay}
            debit = accounts(s, bill.insurance_type)
            ledger.lock(session, [debit[p] for p, amount in shares.items() if amount] + [receivable(s.facility_code)])
            for payer, amount in shares.items():
                if amount:
                    ledger.post(session, id=transfer_id(s.settlement_no, payer, "post"),
                                pending_id=transfer_id(s.settlement_no, payer, "pending"), code=f"settle:{payer}")
            if bill.insurance_type != "none" and s.empi_id:
                _add_accumulators(session, empi_id=s.empi_id, insurance_type=bill.insurance_type,
                                  deductible=s.act_pay_dedc, fund=s.hifp_pay)
            session.execute(update(Bill).where(Bill.id == s.bill_id).values(state="settled"))
            settlement.state, settlement.step, settlement.finished_at = "completed", "done", china_now()
            settlement.lease_owner = settlement.lease_until = None
            event(session, settlement.id, "finish", "ok", **shares)
            changed(session, s.settlement_no)

    # -- compensation, in reverse payer order --

    def _undo_insurer(self, s: Settlement) -> bool:
        insurer = self.parties.insurer
        request_no = f"{s.settlement_no}A"
        try:
            if s.insurer_status in ("requested", "authorised", "capturing", "captured"):
                found = insurer.query(request_no=request_no)
                if found is None:  # never arrived, or still on its way: voiding the number stops it for good
                    insurer.void(auth_no=None, request_no=request_no)
                elif found.status == "captured" and found.amount > found.refunded:  # else refunded already
                    insurer.refund(claim_no=s.insurer_claim_no or found.claim_no, refund_no=f"{s.settlement_no}C",
                                   amount=found.amount - found.refunded)
                elif found.status == "authorised":
                    insurer.void(auth_no=found.auth_no, request_no=request_no)
                self._write(s.settlement_no, "undo_insurer", "ok", insurer_status="reversed")
        except (OutcomeUnknown, Refused) as exc:
            self._write(s.settlement_no, "undo_insurer", "unknown", {"error": str(exc)})
            return False
        return True

    def _undo_medins(self, s: Settlement, bill: Bill) -> bool:
        centre = self.parties.medins(s.facility_code) if bill.insurance_type != "none" else None
        try:
            if s.medins_status == "settled":
                centre.reverse_settlement(msgid=self.parties.new_msgid(s.facility_code), setl_id=s.setl_id,
                                          mdtrt_id=s.settlement_no, psn_no=s.empi_id)
                self._write(s.settlement_no, "undo_medins", "ok", {"setl_id": s.setl_id}, medins_status="reversed")
            elif s.medins_status == "requested":
                return self._reverse_message(s, centre)
        except (OutcomeUnknown, Refused) as exc:
            self._write(s.settlement_no, "undo_medins", "unknown", {"error": str(exc)})
            return False
        return True

    def _undo_cash(self, s: Settlement) -> bool:
        if s.cash_attempt == 0 or s.cash_status == "reversed":
            return True  # nothing was ever asked of the channel, or it is undone already
        # even after a refusal: an earlier request of this number may still be on its way (a refusal after an
        # unknown outcome proves nothing), and reversing closes the number for good
        try:  # reverse cancels whatever happened: unpaid → closed for good, paid → money back
            order = self.parties.channel(s.channel).reverse(out_trade_no=s.settlement_no)
        except (OutcomeUnknown, Refused) as exc:
            self._write(s.settlement_no, "undo_cash", "unknown", {"error": str(exc)})
            return False
        self._write(s.settlement_no, "undo_cash", "ok", {"state": order.state}, cash_status="reversed")
        return True

    def _step_compensate(self, s: Settlement, bill: Bill, items: list[Item]) -> None:
        """Undo in reverse payer order; if a party does not answer, stop and let recovery try again."""
        if not (self._undo_insurer(s) and self._undo_medins(s, bill) and self._undo_cash(s)):
            with session_scope() as session:
                session.execute(update(Settlement).where(Settlement.settlement_no == s.settlement_no,
                                                         Settlement.lease_owner == self.owner)
                                .values(lease_owner=None, lease_until=china_now()
                                        + timedelta(seconds=self.options.retry_seconds)))
            return
        with session_scope() as session:
            settlement = self._read(session, s.settlement_no)
            ledger.lock(session, [*accounts(s, bill.insurance_type).values(), receivable(s.facility_code)])
            for payer in PAYERS:
                pending_id = transfer_id(s.settlement_no, payer, "pending")
                if session.get(Transfer, pending_id) is not None:
                    ledger.void(session, id=transfer_id(s.settlement_no, payer, "void"), pending_id=pending_id,
                                code=f"undo:{payer}")
            session.execute(update(Bill).where(Bill.id == s.bill_id).values(state="open"))
            settlement.state, settlement.step, settlement.finished_at = "compensated", "done", china_now()
            settlement.lease_owner = settlement.lease_until = None
            event(session, settlement.id, "compensate", "ok", reason=s.reason)
            changed(session, s.settlement_no)


def _add_accumulators(session: Session, *, empi_id: str, insurance_type: str, deductible: int, fund: int) -> None:
    session.execute(text("""
        INSERT INTO payment.insurance_year (empi_id, year, insurance_type, deductible_used, fund_paid)
        VALUES (:e, :y, :t, :d, :f)
        ON CONFLICT (empi_id, year, insurance_type) DO UPDATE
           SET deductible_used = insurance_year.deductible_used + EXCLUDED.deductible_used,
               fund_paid = insurance_year.fund_paid + EXCLUDED.fund_paid"""),
        {"e": empi_id, "y": china_now().year, "t": insurance_type, "d": deductible, "f": fund})


_orchestrators: dict[int, Orchestrator] = {}


def orchestrator() -> Orchestrator:
    """The process's orchestrator for the current parties (one lease owner per process)."""
    from smartcare.payment import parties
    from smartcare.platform.settings import get_settings

    current = parties.current()
    found = _orchestrators.get(id(current))
    if found is None:
        found = _orchestrators[id(current)] = Orchestrator(
            current, Options(payer_wait_seconds=get_settings().payment_payer_wait_seconds))
    return found
