"""Mixed payment HTTP API: hospital systems (HMAC-signed) send bills, pre-settle, settle and refund;
payment channels send their signed notifications; residents authorise commercial direct pay."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import date

from fastapi import Depends, Request, Response
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from smartcare.payment import parties, reconcile, refunds, resident, saga, service
from smartcare.payment.models import Bill, ReconItem, Refund, Settlement, SettlementEvent
from smartcare.payment.remote import Refused
from smartcare.payment.schemas import (
    BillIn, BillOut, ItemOut, MyBillOut, MyBreakdownOut, MyPayIn, PayerOut, PreSettlementOut, ReconItemOut, ReconRunOut,
    RefundIn, RefundOut, ResolveIn, SettleIn, SettlementOut,
)
from smartcare.platform.auth import Principal, Role
from smartcare.platform.clock import china_now
from smartcare.platform.db import session_scope
from smartcare.platform.errors import NotFound
from smartcare.web.deps import db, require, signed_client
from smartcare.web.routing import Router

router = Router(prefix="/api/v1/payment", tags=["payment"])
RESIDENT = require(Role.RESIDENT, Role.ADMIN)


def _bill_out(session: Session, bill: Bill) -> BillOut:
    items = [ItemOut(line=i.line, code=i.code, name=i.name, category=i.category, unit_price=i.unit_price,
                     quantity=i.quantity, price_cap=i.price_cap, amount=i.amount) for i in service.bill_items(session, bill)]
    return BillOut(bill_no=bill.bill_no, facility_code=bill.facility_code, empi_id=bill.empi_id, encounter_id=bill.encounter_id,
                   insurance_type=bill.insurance_type, hospital_level=bill.hospital_level, total=bill.total,
                   state=bill.state, items=items)


def settlement_out(session: Session, s: Settlement) -> SettlementOut:
    bill_no = session.scalar(select(Bill.bill_no).where(Bill.id == s.bill_id))
    medins = None if s.hifp_pay is None else s.hifp_pay + s.acct_pay
    return SettlementOut(
        settlement_no=s.settlement_no, bill_no=bill_no, state=s.state, total=s.total, fund_pay=s.hifp_pay,
        account_pay=s.acct_pay, refunded=s.refunded, reason=s.reason, channel=s.channel,
        payers=[PayerOut(payer="medical_insurance", status=s.medins_status, amount=medins, reference=s.setl_id),
                PayerOut(payer="commercial_insurance", status=s.insurer_status, amount=s.insurer_pay,
                         reference=s.insurer_claim_no),
                PayerOut(payer="cash", status=s.cash_status, amount=s.cash_pay, reference=s.transaction_id)])


def _refund_out(session: Session, refund: Refund) -> RefundOut:
    s = session.get(Settlement, refund.settlement_id)
    return RefundOut(refund_no=refund.refund_no, settlement_no=s.settlement_no, amount=refund.amount, state=refund.state,
                     parts=[PayerOut(payer="cash", status=refund.cash_status, amount=refund.cash_part),
                            PayerOut(payer="commercial_insurance", status=refund.insurer_status,
                                     amount=refund.insurer_part),
                            PayerOut(payer="medical_insurance", status=refund.medins_status, amount=refund.medins_part)])


@router.post("/bills", response_model=BillOut, status_code=201,
             responses={200: {"description": "the same bill, sent again"}})
def create_bill(data: BillIn, response: Response, session: Session = Depends(db), who: Principal = Depends(signed_client)):
    """A hospital's itemised bill. Sent again with the same number and content: the same bill (200)."""
    bill, new = service.create_bill(session, facility_code=who.facility(), data=data, actor=who.username)
    if not new:
        response.status_code = 200
    return _bill_out(session, bill)


@router.get("/bills/{bill_no}", response_model=BillOut)
def get_bill(bill_no: str, session: Session = Depends(db), who: Principal = Depends(signed_client)):
    return _bill_out(session, service.get_bill(session, facility_code=who.facility(), bill_no=bill_no))


@router.post("/bills/{bill_no}/presettle", response_model=PreSettlementOut)
def presettle(bill_no: str, session: Session = Depends(db), who: Principal = Depends(signed_client)):
    """Each payer's share now (pre-settlement, 2206), every fen explained by a rule; nothing is booked."""
    bill = service.get_bill(session, facility_code=who.facility(), bill_no=bill_no)
    # the engine's settlement carries the API's fields by name (and its lines); extra fields are ignored
    return PreSettlementOut(bill_no=bill.bill_no, **asdict(service.presettle(session, bill)))


@router.post("/bills/{bill_no}/settle", response_model=SettlementOut, status_code=201,
             responses={200: {"description": "the bill's settlement as it stands (sent again)"},
                        202: {"description": "still running (the patient is confirming): ask again with GET"}})
def settle(bill_no: str, data: SettleIn, response: Response, session: Session = Depends(db),
           who: Principal = Depends(signed_client)):
    """Settle the bill with every payer in one go: medical insurance, commercial insurance (if the
    patient authorised direct pay) and the patient's channel. Sent again: the same settlement."""
    s, new = saga.start(session, facility_code=who.facility(), bill_no=bill_no, channel=data.channel,
                        auth_code=data.auth_code)
    no = s.settlement_no
    session.commit()  # the saga's own transactions must see it
    saga.orchestrator().run(no)
    session.expire_all()
    s = session.scalar(select(Settlement).where(Settlement.settlement_no == no))
    response.status_code = 202 if s.state in ("running", "compensating") else 201 if new else 200
    return settlement_out(session, s)


@router.get("/settlements/{settlement_no}", response_model=SettlementOut)
def get_settlement(settlement_no: str, session: Session = Depends(db), who: Principal = Depends(signed_client)):
    s = session.scalar(select(Settlement).where(Settlement.settlement_no == settlement_no,
                                                Settlement.facility_code == who.facility()))
    if s is None:
        raise NotFound(f"no settlement {settlement_no} at this hospital", field="settlement_no")
    return settlement_out(session, s)


@router.post("/settlements/{settlement_no}/refunds", response_model=RefundOut, status_code=201,
             responses={200: {"description": "the same refund, sent again"},
                        202: {"description": "a party has not answered yet: the refund goes on in the background"}})
def refund(settlement_no: str, data: RefundIn, response: Response, session: Session = Depends(db),
           who: Principal = Depends(signed_client)):
    """Refund all or part of a completed settlement: cash first, then the insurer, then medical
    insurance (whole only). Sent again with the same refund number: the same refund."""
    made, new = refunds.request(session, facility_code=who.facility(), settlement_no=settlement_no,
                                refund_no=data.refund_no, amount=data.amount, reason=data.reason)
    refund_id = made.id
    session.commit()
    state = refunds.run(parties.current(), refund_id)
    session.expire_all()
    response.status_code = 202 if state == "processing" else 201 if new else 200
    return _refund_out(session, session.get(Refund, refund_id))


@router.post("/notify/{channel}", include_in_schema=True)
async def notify(channel: str, request: Request) -> Response:
    """A channel's asynchronous payment notification: its signature is checked by the channel's adapter;
    a genuine 'paid' moves the cash part of a settlement that is waiting for it (idempotent)."""
    adapter = parties.current().channels.get(channel)
    if adapter is None:
        raise NotFound(f"no payment channel {channel}", field="channel")
    body = await request.body()
    # the signature check (RSA) and the database work run off the event loop
    status, reply, media_type = await asyncio.to_thread(_notified, channel, adapter, dict(request.headers), body)
    return Response(reply, status_code=status, media_type=media_type)


def _notified(channel: str, adapter, headers: dict, body: bytes) -> tuple[int, bytes, str]:
    try:
        note = adapter.read_notification(headers, body)
    except Refused:
        return adapter.notification_reply(False)
    with session_scope() as session:
        order = note.order
        if order.state == "paid":  # only the amount asked for counts as paid; anything else the saga resolves
            session.execute(update(Settlement).where(Settlement.settlement_no == order.out_trade_no,
                                                     Settlement.channel == channel, Settlement.cash_pay == order.amount,
                                                     Settlement.cash_status.in_(("requested", "paying")))
                            .values(cash_status="paid", transaction_id=order.transaction_id, updated_at=china_now()))
        settlement_id = session.scalar(select(Settlement.id).where(Settlement.settlement_no == order.out_trade_no))
        if settlement_id is not None:
            session.add(SettlementEvent(settlement_id=settlement_id, step="notify", outcome=order.state,
                                        detail={"notification_id": note.notification_id, "channel": channel}))
    return adapter.notification_reply(True)


@router.put("/consents/{card_no}/{insurer}")
def grant_direct_pay(card_no: str, insurer: str, session: Session = Depends(db), who: Principal = Depends(RESIDENT)) -> dict:
    """The card holder authorises ``insurer`` to pay hospitals directly for them (商保直赔授权)."""
    resident.set_direct_pay(session, username=who.username, card_no=card_no, insurer=insurer, grant=True)
    return {"card_no": card_no, "insurer": insurer, "direct_pay": True}


@router.delete("/consents/{card_no}/{insurer}")
def revoke_direct_pay(card_no: str, insurer: str, session: Session = Depends(db), who: Principal = Depends(RESIDENT)) -> dict:
    resident.set_direct_pay(session, username=who.username, card_no=card_no, insurer=insurer, grant=False)
    return {"card_no": card_no, "insurer": insurer, "direct_pay": False}


# ---- reconciliation (administrators; auditors read) -------------------------------------------------


@router.post("/reconciliation/{day}", response_model=list[ReconRunOut])
def reconcile_day(day: date, session: Session = Depends(db), who: Principal = Depends(require(Role.ADMIN))):
    """Reconcile ``day`` (China time) with the insurance centre (3201/3202), the insurer and each channel."""
    results = reconcile.run(session, parties.current(), day=day, actor=who.username)
    return [ReconRunOut(party=r.party, matched=r.matched, differences=len(r.differences), error=r.error)
            for r in results]


@router.get("/reconciliation/items", response_model=list[ReconItemOut])
def reconciliation_items(day: date | None = None, state: str = "open", session: Session = Depends(db),
                         who: Principal = Depends(require(Role.ADMIN, Role.AUDITOR))):
    query = select(ReconItem).order_by(ReconItem.id.desc()).limit(500)
    if day is not None:
        query = query.where(ReconItem.day == day)
    if state != "all":
        query = query.where(ReconItem.state == state)
    return [ReconItemOut.model_validate(i, from_attributes=True) for i in session.scalars(query)]


@router.post("/reconciliation/items/{item_id}/resolve", response_model=ReconItemOut)
def resolve_item(item_id: int, data: ResolveIn, session: Session = Depends(db),
                 who: Principal = Depends(require(Role.ADMIN))):
    """Close a difference with what was done about it (audited)."""
    item = reconcile.resolve(session, item_id=item_id, resolution=data.resolution, actor=who.username)
    return ReconItemOut.model_validate(item, from_attributes=True)


# ---- the resident's own bills (H5 and apps): only bills of people whose card the caller holds --------

def _my_bill_out(session: Session, mine: resident.MyBill) -> MyBillOut:
    b = mine.breakdown
    return MyBillOut(
        facility_code=mine.bill.facility_code, bill_no=mine.bill.bill_no, card_no=mine.card.card_no,
        patient=mine.card.name_masked, insurance_type=mine.bill.insurance_type, total=mine.bill.total,
        state=mine.bill.state, items=_bill_out(session, mine.bill).items, channels=mine.channels,
        breakdown=None if b is None else MyBreakdownOut(fund_pay=b.fund, account_pay=b.account, cash_pay=b.cash,
                                                        direct_pay=b.direct_pay, error=b.error),
        settlement=None if mine.settlement is None else settlement_out(session, mine.settlement))


@router.get("/me/bills", response_model=list[MyBillOut])
def my_bills(session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    """The open and paid bills of the people whose health cards the caller holds, newest first."""
    return [_my_bill_out(session, mine) for mine in resident.bills(session, username=who.username)]


@router.post("/me/bills/{facility_code}/{bill_no}/pay", response_model=SettlementOut,
             responses={202: {"description": "still running (confirming with the channel): read the bills again"},
                        404: {"description": "no such bill of the caller's (whether or not it exists)"}})
def pay_my_bill(facility_code: str, bill_no: str, data: MyPayIn, response: Response, session: Session = Depends(db),
                who: Principal = Depends(RESIDENT)):
    """Pay a bill from the phone: the platform reads the one-time payment code of ``channel`` from the
    card's own code and settles with every payer. Sent again: the same settlement."""
    no = resident.pay(session, username=who.username, facility_code=facility_code, bill_no=bill_no,
                      card_no=data.card_no, channel=data.channel)
    s = resident.settlement(session, no)
    response.status_code = 202 if s.state in ("running", "compensating") else 200
    return settlement_out(session, s)
