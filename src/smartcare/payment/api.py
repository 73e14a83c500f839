"""Mixed payment HTTP API for hospital systems (HMAC-signed): bills and their pre-settlement."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Response
from sqlalchemy.orm import Session

from smartcare.payment import service
from smartcare.payment.models import Bill
from smartcare.payment.schemas import BillIn, BillOut, ItemOut, PreSettlementOut
from smartcare.platform.auth import Principal
from smartcare.web.deps import db, signed_client

router = APIRouter(prefix="/api/v1/payment", tags=["payment"])



def _bill_out(session: Session, bill: Bill) -> BillOut:
    items = [ItemOut(line=i.line, code=i.code, name=i.name, category=i.category, unit_price=i.unit_price,
                     quantity=i.quantity, price_cap=i.price_cap, amount=i.amount) for i in service.bill_items(session, bill)]
    return BillOut(bill_no=bill.bill_no, facility_code=bill.facility_code, empi_id=bill.empi_id,
                   insurance_type=bill.insurance_type, hospital_level=bill.hospital_level, total=bill.total,
                   state=bill.state, items=items)


@router.post("/bills", response_model=BillOut, status_code=201)
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
