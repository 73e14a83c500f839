"""The resident's side of mixed payment: the bills of the people whose health cards an account holds,
what each payer would pay of them, and paying one from the phone.

A bill belongs to a person (its ``empi_id``); an account sees it when it holds a card of that person
(its own, or a child's). Anything else is answered as if it did not exist, so a guessed bill number
tells nothing. Paying from the phone is what a hospital terminal does at the window, with the platform
as the terminal: it mints a one-time code of the card, reads the chosen channel's payment code from it
(the card's own binding: nobody else's account can be charged) and runs the settlement saga with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.healthcard import service as healthcard
from smartcare.payment import saga, service
from smartcare.payment.models import Bill, BillItem, DirectPayConsent, Settlement
from smartcare.payment.parties import CHANNELS, INSURER
from smartcare.platform import audit
from smartcare.platform.clock import china_now
from smartcare.platform.errors import Conflict, InvalidInput, NotFound, SmartCareError

if TYPE_CHECKING:  # the type only: cards are read through the health card's service
    from smartcare.healthcard.models import Card

#: How the card is used when the platform verifies its own code for a payment from the app.
USE_STEP, USE_CHANNEL = "payment", "app"
#: Bills shown at most (newest first).
LIMIT = 100


@dataclass
class Breakdown:
    """What each payer would pay now (pre-settlement: nothing is booked). With direct pay authorised
    the insurer pays part of the patient's share; how much, it decides when the bill is paid."""

    total: int = 0
    fund: int = 0
    account: int = 0
    cash: int = 0
    direct_pay: bool = False
    error: str | None = None


@dataclass
class MyBill:
    bill: Bill
    card: Card
    relation: str
    items: list[BillItem] = field(default_factory=list)
    breakdown: Breakdown | None = None
    settlement: Settlement | None = None
    channels: list[str] = field(default_factory=list)
    direct_pay: bool = False

    @property
    def payable(self) -> bool:
        return self.bill.state == "open" and self.card.state == "active"


def _cards(session: Session, username: str) -> dict[str, tuple[Card, str]]:
    """The account's card of each person it holds a card of, an active one first."""
    chosen: dict[str, tuple[Card, str]] = {}
    for card, relation in healthcard.held_cards(session, username):
        if card.empi_id and (card.empi_id not in chosen or (card.state == "active"
                                                            and chosen[card.empi_id][0].state != "active")):
            chosen[card.empi_id] = (card, relation)
    return chosen


def direct_pay_people(session: Session, empi_ids) -> set[str]:
    """The people among ``empi_ids`` who authorised the region's insurer to pay hospitals directly."""
    wanted = list(empi_ids)
    if not wanted:
        return set()
    return set(session.scalars(select(DirectPayConsent.empi_id).where(
        DirectPayConsent.empi_id.in_(wanted), DirectPayConsent.insurer == INSURER,
        DirectPayConsent.revoked_at.is_(None))))


def payment_channels(session: Session, card: Card) -> list[str]:
    """The card's bound channels that can pay a bill (in the region's order)."""
    bound = {b.channel for b in healthcard.bindings(session, card)}
    return [c for c in CHANNELS if c in bound]


def breakdown(session: Session, bill: Bill, *, direct_pay: bool) -> Breakdown:
    try:
        pre = service.presettle(session, bill)
    except SmartCareError as exc:
        return Breakdown(total=bill.total, cash=bill.total, direct_pay=direct_pay, error=exc.message)
    return Breakdown(total=bill.total, fund=pre.hifp_pay, account=pre.acct_pay, cash=pre.psn_cash_pay,
                     direct_pay=direct_pay)


def _latest_settlements(session: Session, bill_ids: list[int]) -> dict[int, Settlement]:
    latest: dict[int, Settlement] = {}
    if bill_ids:
        for s in session.scalars(select(Settlement).where(Settlement.bill_id.in_(bill_ids)).order_by(Settlement.id)):
            latest[s.bill_id] = s
    return latest


def _assemble(session: Session, rows: list[Bill], cards: dict[str, tuple[Card, str]]) -> list[MyBill]:
    consents = direct_pay_people(session, {b.empi_id for b in rows})
    settlements = _latest_settlements(session, [b.id for b in rows])
    channels: dict[int, list[str]] = {}
    out = []
    for bill in rows:
        card, relation = cards[bill.empi_id]
        if card.id not in channels:
            channels[card.id] = payment_channels(session, card)
        mine = MyBill(bill=bill, card=card, relation=relation, items=service.bill_items(session, bill),
                      settlement=settlements.get(bill.id), channels=channels[card.id],
                      direct_pay=bill.empi_id in consents)
        if bill.state == "open":
            mine.breakdown = breakdown(session, bill, direct_pay=mine.direct_pay)
        out.append(mine)
    return out


def bills(session: Session, *, username: str, limit: int = LIMIT) -> list[MyBill]:
    """The bills of everyone whose card the account holds, newest first."""
    cards = _cards(session, username)
    if not cards:
        return []
    rows = list(session.scalars(select(Bill).where(Bill.empi_id.in_(list(cards)))
                                .order_by(Bill.created_at.desc(), Bill.id.desc()).limit(limit)))
    return _assemble(session, rows, cards)


def find(session: Session, *, username: str, facility_code: str, bill_no: str) -> MyBill:
    """One of the account's bills; any other (someone else's, or none) is the same 404."""
    cards = _cards(session, username)
    bill = session.scalar(select(Bill).where(Bill.facility_code == facility_code, Bill.bill_no == bill_no))
    if bill is None or bill.empi_id not in cards:
        raise NotFound(f"no bill {bill_no} of yours at {facility_code}", field="bill_no")
    return _assemble(session, [bill], cards)[0]


def pay(session: Session, *, username: str, facility_code: str, bill_no: str, card_no: str, channel: str) -> str:
    """Pay one of the account's bills through ``channel`` bound to its card; returns the settlement number.

    Commits: the saga's own transactions (and the channel redeeming the payment code at the platform)
    must see the settlement and the code. A bill being paid or paid already answers with its
    settlement, and no new code is made for it."""
    mine = find(session, username=username, facility_code=facility_code, bill_no=bill_no)
    bill = mine.bill
    card = next((c for c, _ in healthcard.held_cards(session, username)
                 if c.card_no == card_no and c.empi_id == bill.empi_id), None)
    if card is None:
        raise NotFound(f"no bill {bill_no} of yours at {facility_code}", field="bill_no")
    current = session.scalar(select(Settlement).where(Settlement.bill_id == bill.id,
                                                      Settlement.state.in_(("running", "compensating", "completed"))))
    if current is not None:
        no = current.settlement_no
    else:
        if bill.state != "open":
            raise Conflict(f"bill {bill_no} is {bill.state}", field="bill_no")
        if card.state != "active":
            raise Conflict(f"the card is {card.state}: pay with an active card", field="card_no")
        if channel not in payment_channels(session, card):
            raise InvalidInput(f"{channel} is not a payment channel bound to this card", field="channel",
                               hint="bind it on the card first; bills are paid with " + ", ".join(CHANNELS))
        shown = healthcard.dynamic_code(session, card=card)
        scanned = healthcard.verify(session, code_text=shown.text, facility_code=bill.facility_code,
                                    step=USE_STEP, channel=USE_CHANNEL)
        token = scanned.payments.get(channel)
        if token is None:  # bound a moment ago and unbound since
            raise Conflict(f"the card's code carries no {channel} payment code", field="channel")
        started, _ = saga.start(session, facility_code=bill.facility_code, bill_no=bill.bill_no, channel=channel,
                                auth_code=str(token))
        no = started.settlement_no
        audit.record(session, actor=username, action="payment.resident.pay", target=f"bill:{facility_code}:{bill_no}",
                     detail={"settlement_no": no, "card_no": card.card_no, "channel": channel})
    session.commit()
    saga.orchestrator().run(no)
    session.expire_all()
    return no


def settlement(session: Session, settlement_no: str) -> Settlement:
    return session.scalar(select(Settlement).where(Settlement.settlement_no == settlement_no))


def set_direct_pay(session: Session, *, username: str, card_no: str, insurer: str, grant: bool) -> None:
    """The card holder authorises (or withdraws) ``insurer`` paying hospitals directly for the card's
    person (商保直赔授权); audited. Only an active card's holder may."""
    card = healthcard.holder_card(session, username=username, card_no=card_no)
    if card.state != "active":
        raise Conflict(f"a {card.state} card cannot authorise direct pay", field="card_no")
    if insurer != INSURER:
        raise NotFound(f"no commercial insurer {insurer}", field="insurer", hint=f"the region works with {INSURER}")
    consent = session.get(DirectPayConsent, (card.empi_id, insurer))
    if grant and consent is None:
        session.add(DirectPayConsent(empi_id=card.empi_id, insurer=insurer, granted_by=username))
    elif grant:
        consent.revoked_at, consent.granted_by = None, username
    elif consent is not None and consent.revoked_at is None:
        consent.revoked_at = china_now()
    audit.record(session, actor=username, action="payment.direct_pay." + ("grant" if grant else "revoke"),
                 target=f"card:{card_no}", detail={"insurer": insurer})
