"""Electronic health card HTTP API: residents (issue, codes, lifecycle, payment bindings), hospital
terminals (HMAC-signed: verify a scanned code, look up an old visit card, report card use),
payment channels (redeem a payment token), administrators (keys, statistics) and the public trust list."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.orm import Session

from smartcare.healthcard import keys, render, service
from smartcare.healthcard.models import Card
from smartcare.healthcard.schemas import (
    CardOut, ChannelIn, CodeOut, IssueIn, LookupOut, OtpIn, PinIn, ReasonIn, RedeemIn, RotateIn, StatsOut, UseIn,
    VerifyIn, VerifyOut,
)
from smartcare.platform.auth import Principal, Role
from smartcare.platform.db import session_scope
from smartcare.platform.errors import Forbidden, SmartCareError
from smartcare.platform.settings import get_settings
from smartcare.web.deps import checked_signature, db, require, signed_client
from smartcare.web.routing import Router

router = Router(prefix="/api/v1/healthcard", tags=["healthcard"])
public = APIRouter(tags=["healthcard"])
RESIDENT = require(Role.RESIDENT, Role.ADMIN)
ADMIN = require(Role.ADMIN)


@public.get("/.well-known/jwks.json")
def trust_list(session: Session = Depends(db)) -> dict:
    """The issuer keys (active and retired) as a JSON key set: terminals verify codes offline with it."""
    return keys.trust_list_document(session, issuer=get_settings().healthcard_issuer)


def card_out(session: Session, card: Card, relation: str | None = None) -> CardOut:
    return CardOut(card_no=card.card_no, empi_id=card.empi_id, name_masked=card.name_masked, state=card.state,
                   relation=relation, issued_at=card.issued_at, channels=[b.channel for b in service.bindings(session, card)])


def _card_for(session: Session, who: Principal, card_no: str) -> Card:
    """Administrators act on any card, residents on the cards they hold."""
    if who.has(Role.ADMIN):
        return service.get_card(session, card_no)
    return service.holder_card(session, username=who.username, card_no=card_no)


# ---- residents ------------------------------------------------------------------------------------


@router.post("/otp", status_code=202)
def send_otp(data: OtpIn, session: Session = Depends(db), who: Principal = Depends(RESIDENT)) -> dict:
    """Send a one-time code to the phone that registration will name."""
    service.send_code(session, phone=data.phone)
    return {"sent": True, "valid_seconds": service.OTP_SECONDS}


@router.post("/cards", response_model=CardOut, status_code=201)
def issue(data: IssueIn, session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    """Real-name issuance for yourself (``self``) or your child (``guardian``)."""
    service.check_code(session, phone=data.phone, code=data.otp)
    service.real_name.check(session, name=data.name, id_number=data.id_number, phone=data.phone, relation=data.relation)
    card = service.issue(session, holder=who.username, relation=data.relation, name=data.name,
                         id_number=data.id_number, phone=data.phone, pin=data.pin, actor=who.username)
    return card_out(session, card, data.relation)


@router.get("/cards", response_model=list[CardOut])
def my_cards(session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    return [card_out(session, c, r) for c, r in service.held_cards(session, who.username)]


@router.post("/cards/{card_no}/code", response_model=CodeOut, responses={200: {"content": {"image/png": {}}}})
def show_code(card_no: str, kind: str = Query("dynamic", pattern="^(dynamic|static)$"),
              format: str = Query("json", pattern="^(json|png)$", description="png: the QR itself, to show or print"),
              session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    """A fresh dynamic code (valid 60 s, single use, with payment tokens) or the printable static one.
    Only for a card the caller holds: a code can pay, so not even an administrator makes one for another."""
    card = service.holder_card(session, username=who.username, card_no=card_no)
    shown = service.dynamic_code(session, card=card) if kind == "dynamic" else service.static_code(session, card=card)
    if format == "png":
        return Response(render.png(shown.text), media_type="image/png", headers={"Cache-Control": "no-store"})
    return CodeOut(text=shown.text, kind=shown.kind.name.lower(), expires_at=shown.expires_at, channels=list(shown.channels))


@router.put("/cards/{card_no}/pin", status_code=204)
def set_pin(card_no: str, data: PinIn, session: Session = Depends(db), who: Principal = Depends(RESIDENT)) -> None:
    service.set_pin(session, card=_card_for(session, who, card_no), pin=data.pin, actor=who.username)


@router.post("/cards/{card_no}/bindings", response_model=CardOut, status_code=201)
def bind(card_no: str, data: ChannelIn, session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    card = _card_for(session, who, card_no)
    service.bind_channel(session, card=card, channel=data.channel, actor=who.username)
    return card_out(session, card)


@router.delete("/cards/{card_no}/bindings/{channel}", response_model=CardOut)
def unbind(card_no: str, channel: str, session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    card = _card_for(session, who, card_no)
    service.unbind_channel(session, card=card, channel=channel, actor=who.username)
    return card_out(session, card)


# last of the card routes: ``{action}`` would shadow the fixed paths above
@router.post("/cards/{card_no}/{action}", response_model=CardOut)
def change_state(card_no: str, action: str, data: ReasonIn, session: Session = Depends(db),
                 who: Principal = Depends(RESIDENT)):
    """freeze, unfreeze, report_lost, reissue (a lost card; answers with the new card) or revoke (administrators)."""
    card = _card_for(session, who, card_no)
    if action == "reissue":
        return card_out(session, service.reissue(session, card_no=card.card_no, actor=who.username, reason=data.reason))
    if action == "revoke" and not who.has(Role.ADMIN):
        raise Forbidden("only an administrator revokes a card", hint="report it lost, or freeze it")
    return card_out(session, service.change_state(session, card_no=card.card_no, action=action, actor=who.username,
                                                  reason=data.reason))


# ---- hospital terminals and payment channels (HMAC-signed) ------------------------------------------



def _verify_in_one_transaction(client_id: str, request_nonce: str, facility: str, data: VerifyIn) -> service.Verification:
    with session_scope() as session:
        try:
            return service.verify(session, code_text=data.code, facility_code=facility, step=data.step,
                                  channel=data.channel, pin=data.pin, request=(client_id, request_nonce))
        except SmartCareError:
            session.commit()  # the request's nonce stays spent: a refused scan cannot be replayed
            raise


@router.post("/verify", response_model=VerifyOut)
async def verify(data: VerifyIn, signature=Depends(checked_signature)):
    """Verify a scanned code: the card, the EMPI id, the masked name, this hospital's visit cards of the
    patient and the payment tokens. Refusals are 422 with their own ``error`` code (docs/qr-format.md).
    The hot path of every hospital counter: a cached client key, one thread hop, one transaction."""
    key, signed = signature
    found = await asyncio.to_thread(_verify_in_one_transaction, key.client_id, signed.nonce,
                                    key.principal.facility(), data)
    return VerifyOut(**{**asdict(found), "payments": {k: str(v) for k, v in found.payments.items()}})


@router.get("/lookup", response_model=LookupOut)
def lookup(card_no: str = Query(..., min_length=1, max_length=64), session: Session = Depends(db),
           who: Principal = Depends(signed_client)):
    """This hospital's own (old) visit card number → the patient's health card and EMPI id."""
    card, empi_id = service.by_visit_card(session, facility_code=who.facility(), card_no=card_no)
    return LookupOut(card_no=card.card_no, empi_id=empi_id, name_masked=card.name_masked, state=card.state)


@router.post("/uses", status_code=202)
def report_use(data: UseIn, session: Session = Depends(db), who: Principal = Depends(signed_client)) -> dict:
    """用卡数据上报: a step of a visit done with the card (consultation, pharmacy …)."""
    service.report_use(session, card_no=data.card_no, facility_code=who.facility(), step=data.step, channel=data.channel)
    return {"recorded": True}


@router.post("/payment-tokens/redeem")
def redeem(data: RedeemIn, session: Session = Depends(db), who: Principal = Depends(signed_client)) -> dict:
    """A payment channel turns a one-time payment token into the payer's agreement (once, before expiry)."""
    found = service.redeem_payment_token(session, channel=data.channel, token=int(data.token))
    return {"channel": found.channel, "agreement_no": found.agreement_no, "card_no": found.card_no}


# ---- administrators -----------------------------------------------------------------------------------


@router.get("/stats", response_model=StatsOut)
def stats(session: Session = Depends(db), who: Principal = Depends(require(Role.ADMIN, Role.AUDITOR))):
    return StatsOut(**service.stats(session))


@router.get("/keys")
def list_keys(session: Session = Depends(db), who: Principal = Depends(ADMIN)) -> list[dict]:
    return [{"kid": k.kid.hex(), "alg": k.alg, "state": k.state, "created_at": k.created_at, "retired_at": k.retired_at}
            for k in keys.listing(session)]


@router.post("/keys/rotate", status_code=201)
def rotate(data: RotateIn, session: Session = Depends(db), who: Principal = Depends(ADMIN)) -> dict:
    key = keys.create(session, alg=data.alg, actor=who.username)
    return {"kid": key.kid.hex(), "alg": key.alg, "state": key.state}
