"""Electronic health card operations: real-name issuance, the card's lifecycle, codes, online
verification at hospital terminals, visit-card lookup, payment-channel bindings, use reporting.

Invariants:
- one live card (active, frozen or lost) per EMPI person, enforced by a unique index;
- every state change is one appended ``card_event`` and one audit entry;
- a code carries a card token and one-time payment tokens, never a name, ID or account number;
- a dynamic code is accepted once: its nonce is inserted in the same statement that accepts it.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from smartcare.empi import matching as empi_matching, service as empi
from smartcare.healthcard import code as qr
from smartcare.healthcard.keys import ring
from smartcare.healthcard.models import Card, CardEvent, Holder, Otp, PaymentBinding, SmsMessage
from smartcare.platform import audit, auth, idcard
from smartcare.platform.clock import CHINA_TZ, china_today
from smartcare.platform.crypto import derive_key, hmac_sha256_hex
from smartcare.platform.db import driver
from smartcare.platform.errors import Conflict, Forbidden, InvalidInput, NotFound, SmartCareError
from smartcare.platform.masking import mask_name, mask_phone
from smartcare.platform.settings import get_settings
from smartcare.synth import service as synth

log = logging.getLogger(__name__)

#: The card issuer's own source in the master patient index: real-name data, so trusted above a hospital's.
ISSUER_FACILITY = "EHC"
ISSUER_TRUST = 3
LIVE = ("active", "frozen", "lost")
STEPS = ("appointment", "registration", "consultation", "examination", "payment", "pharmacy", "inpatient", "other")
USE_CHANNELS = ("window", "kiosk", "workstation", "app")
#: action → (states it applies to, state it leads to)
TRANSITIONS = {
    "freeze": (("active",), "frozen"),
    "unfreeze": (("frozen",), "active"),
    "report_lost": (("active", "frozen"), "lost"),
    "revoke": (("active", "frozen", "lost"), "revoked"),
}
#: Payment tokens look like each channel's own payment code (prefix, digits); ecny is a sandbox shape.
PAYMENT_TOKEN_SHAPES = {"wechat": ("13", 18), "alipay": ("28", 18), "unionpay": ("62", 19), "ecny": ("88", 19)}  # < 2^63: stored as bigint
STATIC_CODE_DAYS = 5 * 365
USE_REPORT_HOURS = 24
PIN_TRIES = 5
OTP_SECONDS = 300
OTP_TRIES = 5
OTP_RESEND_SECONDS = 60
OTP_PER_DAY = 10

_pins = PasswordHasher()


class CodeRejected(SmartCareError):
    """A scanned code the terminal must refuse; ``code`` tells it why (see docs/qr-format.md)."""

    status = 422

    def __init__(self, code: str, message: str, *, hint: str | None = None):
        super().__init__(message, field="code", hint=hint)
        self.code = code


# ---- one-time SMS codes -----------------------------------------------------------------------


def _phone(phone: str) -> str:
    digits = "".join(ch for ch in phone if ch.isdigit())
    if digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    if len(digits) != 11 or not digits.startswith("1"):
        raise InvalidInput("phone must be a mainland mobile number (11 digits starting with 1)", field="phone")
    return digits


def _keyed(value: str, purpose: str) -> str:
    return hmac_sha256_hex(derive_key(purpose), value.encode())


class DemoSmsGateway:
    """Writes each message to the console log and the admin page instead of sending it. A real
    gateway implements the same ``send`` (the one place the clear phone number is used)."""

    def send(self, session: Session, *, phone: str, text: str) -> None:
        session.add(SmsMessage(phone_masked=mask_phone(phone), text=text))
        log.warning("demo SMS to %s: %s", mask_phone(phone), text)


sms_gateway = DemoSmsGateway()


def send_code(session: Session, *, phone: str) -> None:
    """Send a 6-digit one-time code (valid 5 minutes; one a minute per phone)."""
    phone = _phone(phone)
    key = _keyed(phone, "healthcard-otp-phone")
    last, today = session.execute(select(func.max(Otp.created_at), func.count()).where(
        Otp.phone_hash == key, Otp.created_at > datetime.now(UTC) - timedelta(days=1))).one()
    if last is not None and (datetime.now(UTC) - last).total_seconds() < OTP_RESEND_SECONDS:
        raise Conflict("a code was sent to this phone less than a minute ago", field="phone", hint="wait a minute")
    if today >= OTP_PER_DAY:
        raise Conflict(f"this phone has had {OTP_PER_DAY} codes in the last day", field="phone", hint="try again tomorrow")
    code = f"{secrets.randbelow(10**6):06d}"
    session.add(Otp(phone_hash=key, code_hash=_keyed(f"{key}:{code}", "healthcard-otp-code"),
                    expires_at=datetime.now(UTC) + timedelta(seconds=OTP_SECONDS)))
    sms_gateway.send(session, phone=phone, text=f"【SmartCare】您的电子健康卡验证码是 {code}，{OTP_SECONDS // 60} 分钟内有效。")


def _count_try(session: Session, column, row_id: int, limit: int) -> int | None:
    """Count one try *before* comparing, in its own committed statement: a refusal rolls the caller's
    transaction back, and parallel tries must not all pass the limit. The count after this try, or
    None when the limit was already reached."""
    model = column.class_
    with session.bind.connect() as conn, conn.begin():
        return conn.execute(update(model).where(model.id == row_id, column < limit)
                            .values({column.key: column + 1}).returning(column)).scalar()


def check_code(session: Session, *, phone: str, code: str) -> None:
    """Accept the newest unused code sent to ``phone``; five tries spend it."""
    key = _keyed(_phone(phone), "healthcard-otp-phone")
    otp = session.scalar(select(Otp).where(Otp.phone_hash == key, Otp.used_at.is_(None),
                                           Otp.expires_at > datetime.now(UTC)).order_by(Otp.id.desc()).limit(1))
    tries = None if otp is None else _count_try(session, Otp.attempts, otp.id, OTP_TRIES)
    if tries is None:
        raise InvalidInput("no valid verification code for this phone", field="otp", hint="ask for a new code")
    if not hmac.compare_digest(otp.code_hash, _keyed(f"{key}:{code.strip()}", "healthcard-otp-code")):
        raise InvalidInput("wrong verification code", field="otp", hint=f"{OTP_TRIES - tries} tries left")
    otp.used_at = datetime.now(UTC)


# ---- real-name verification ------------------------------------------------------------------------


class PopulationRegistryCheck:
    """Real-name verification before issuance (实名核验): the name and ID number must be a real
    person's, and the phone that received the one-time code must be registered to that person — or,
    for a child's card, to the child's guardian. In production this is the public-security identity
    service and the carriers' real-name records (three-element check); the demo region's synthetic
    population plays both. A mismatch never says which element was wrong."""

    def check(self, session: Session, *, name: str, id_number: str, phone: str, relation: str) -> None:
        record = synth.population_record(session, id_number)
        owner = None if record is None else record["guardian_phone"] if relation == "guardian" else record["phone"]
        if record is None or record["name"] != name.strip() or owner != _phone(phone):
            raise InvalidInput("the name, ID number and phone do not match the real-name records",
                               field="id_number", hint="a child's card is applied for with the guardian's phone")


real_name = PopulationRegistryCheck()


# ---- issuance and lifecycle -----------------------------------------------------------------------


def _event(session: Session, card: Card, *, action: str, before: str | None, actor: str, reason: str = "") -> None:
    session.add(CardEvent(card_id=card.id, action=action, from_state=before, to_state=card.state, actor=actor, reason=reason))
    audit.record(session, actor=actor, action=f"healthcard.{action}", target=f"card:{card.card_no}",
                 detail={"from": before, "to": card.state, "reason": reason})


def _new_card_no(session: Session) -> str:
    number = session.execute(text("SELECT nextval('healthcard.card_number')")).scalar()
    return f"HC{number:016d}"


def _pin_hash(pin: str | None) -> str | None:
    if pin is None:
        return None
    if len(pin) != 6 or not pin.isdigit():
        raise InvalidInput("the card PIN must be 6 digits", field="pin")
    return _pins.hash(pin)


def issue(session: Session, *, holder: str, relation: str, name: str, id_number: str, phone: str,
          actor: str, pin: str | None = None) -> Card:
    """Issue a card in the holder's own name (``self``) or for their child (``guardian``). The
    identity goes through the master patient index (link or create the person) as a trusted source,
    so callers first check the one-time SMS code (``check_code``) and the real-name records
    (``real_name.check``): only then is the identity verified."""
    if relation not in ("self", "guardian"):
        raise InvalidInput("relation must be self or guardian", field="relation")
    try:
        number = idcard.parse(id_number)
    except idcard.InvalidIdNumber as exc:
        raise InvalidInput(str(exc), field="id_number") from None
    name = name.strip()
    if not 0 < len(name) <= 60:
        raise InvalidInput("name must have 1 to 60 characters", field="name")
    phone = _phone(phone)
    if relation == "guardian" and number.age_on(china_today()) >= 18:
        raise InvalidInput("a guardian holds cards for children under 18 only", field="id_number",
                           hint="an adult registers their own card")
    if relation == "self" and session.scalar(
            select(Holder.card_id).join(Card, Card.id == Holder.card_id)
            .where(Holder.username == holder, Holder.relation == "self", Card.state.in_(LIVE))):
        raise Conflict("this account already holds its own card", field="holder")
    card_no = _new_card_no(session)
    decision = empi_matching.register(
        session, facility_code=ISSUER_FACILITY, card_no=card_no, actor=actor, trust=ISSUER_TRUST,
        record={"name": name, "id_number": number.number, "sex": number.sex, "birth_date": number.birth_date,
                "phone": phone})
    person = decision.person
    taken = session.scalar(select(Card.card_no).where(Card.person_id.in_(empi.absorbed_ids(session, person.id)),
                                                      Card.state.in_(LIVE)))
    if taken:
        raise Conflict("this person already has an electronic health card", field="id_number",
                       hint="if it was lost, report it lost and have it reissued")
    card = Card(card_no=card_no, token=secrets.token_bytes(qr.TOKEN_BYTES), person_id=person.id, empi_id=person.empi_id,
                name_masked=mask_name(name), phone_masked=mask_phone(phone), birth_date=number.birth_date,
                pin_hash=_pin_hash(pin), state="active")
    try:
        with session.begin_nested():
            session.add(card)
            session.flush()
    except IntegrityError:  # the same person issued at the same moment elsewhere: the unique index decides
        raise Conflict("this person already has an electronic health card", field="id_number") from None
    session.add(Holder(username=holder, card_id=card.id, relation=relation))
    _event(session, card, action="issue", before=None, actor=actor, reason=f"{relation}; EMPI {decision.outcome}")
    return card


def get_card(session: Session, card_no: str) -> Card:
    card = session.scalar(select(Card).where(Card.card_no == card_no))
    if card is None:
        raise NotFound(f"no card {card_no}", field="card_no")
    return card


def held_cards(session: Session, username: str) -> list[tuple[Card, str]]:
    """The cards an account holds (its own first, then its children's), with the relation."""
    rows = session.execute(select(Card, Holder.relation).join(Holder, Holder.card_id == Card.id)
                           .where(Holder.username == username, Card.state.in_(LIVE))
                           .order_by(Holder.relation.desc(), Card.id))
    return [(c, r) for c, r in rows]


def held_persons_now(session: Session, username: str) -> list[tuple[str, str | None, str, date]]:
    """For each card the account holds (its own first): the EMPI id the card was issued under, the EMPI id its
    person has now (after merges), the relation and the birth date. One statement: every read of a person's
    records asks who the reader holds."""
    return driver(session).execute(
        f"""SELECT c.empi_id, now.empi_id, h.relation, c.birth_date
            FROM healthcard.holder h JOIN healthcard.card c ON c.id = h.card_id
            LEFT JOIN LATERAL ({empi.now_of('c.person_id')}) now ON true
            WHERE h.username = %(u)s AND c.state = ANY(%(live)s)
            ORDER BY h.relation DESC, c.id""", {"u": username, "live": list(LIVE)}).fetchall()


def holder_card(session: Session, *, username: str, card_no: str) -> Card:
    """A card the account holds; anything else is refused without saying whether it exists. (The same rule in
    SQL, for other capabilities' statements: ``healthcard.held_card``, migration 0019.)"""
    card = session.scalar(select(Card).join(Holder, Holder.card_id == Card.id)
                          .where(Holder.username == username, Card.card_no == card_no))
    if card is None:
        raise Forbidden("you do not hold this card", field="card_no")
    return card


def change_state(session: Session, *, card_no: str, action: str, actor: str, reason: str = "") -> Card:
    if action not in TRANSITIONS:
        raise InvalidInput(f"unknown action {action!r}", field="action", hint=f"one of {', '.join(TRANSITIONS)}")
    card = session.scalar(select(Card).where(Card.card_no == card_no).with_for_update())
    if card is None:
        raise NotFound(f"no card {card_no}", field="card_no")
    allowed, target = TRANSITIONS[action]
    if card.state not in allowed:
        raise Conflict(f"a {card.state} card cannot be {action.replace('_', ' ')}", field="state")
    before, card.state, card.updated_at = card.state, target, datetime.now(UTC)
    _event(session, card, action=action, before=before, actor=actor, reason=reason)
    return card


def reissue(session: Session, *, card_no: str, actor: str, reason: str = "") -> Card:
    """A lost card becomes ``reissued`` (its codes stop working) and a new card with a new token
    takes its place for the same person, holders and PIN."""
    old = session.scalar(select(Card).where(Card.card_no == card_no).with_for_update())
    if old is None:
        raise NotFound(f"no card {card_no}", field="card_no")
    if old.state != "lost":
        raise Conflict(f"only a lost card is reissued (this one is {old.state})", field="state",
                       hint="report the card lost first")
    old.state, old.updated_at = "reissued", datetime.now(UTC)
    session.flush()
    new = Card(card_no=_new_card_no(session), token=secrets.token_bytes(qr.TOKEN_BYTES), person_id=old.person_id,
               empi_id=old.empi_id, name_masked=old.name_masked, phone_masked=old.phone_masked,
               birth_date=old.birth_date, pin_hash=old.pin_hash, pin_failures=old.pin_failures, state="active",
               reissued_from=old.id)
    session.add(new)
    session.flush()
    for h in session.scalars(select(Holder).where(Holder.card_id == old.id)):
        session.add(Holder(username=h.username, card_id=new.id, relation=h.relation))
    moved = session.execute(update(PaymentBinding).where(PaymentBinding.card_id == old.id, PaymentBinding.state == "active")
                            .values(card_id=new.id).returning(PaymentBinding.id)).scalars().all()
    if moved:  # the lost phone's last code must not pay through the bindings now on the new card
        session.execute(text("UPDATE healthcard.payment_token SET expires_at = now() "
                             "WHERE binding_id = ANY(:ids) AND redeemed_at IS NULL AND expires_at > now()"), {"ids": moved})
    _event(session, old, action="reissue", before="lost", actor=actor, reason=f"replaced by {new.card_no}. {reason}")
    _event(session, new, action="issue", before=None, actor=actor, reason=f"reissue of {old.card_no}")
    return new


def set_pin(session: Session, *, card: Card, pin: str, actor: str) -> None:
    card.pin_hash, card.pin_failures = _pin_hash(pin), 0
    audit.record(session, actor=actor, action="healthcard.pin", target=f"card:{card.card_no}")


# ---- payment channels -------------------------------------------------------------------------------


def bind_channel(session: Session, *, card: Card, channel: str, actor: str) -> PaymentBinding:
    """Bind a payment channel. The sandbox channels agree at once and answer with an agreement
    number; a production channel's signing flow (跳转签约) returns the same."""
    if channel not in qr.PAYMENT_APPS:
        raise InvalidInput(f"unknown payment channel {channel!r}", field="channel",
                           hint=f"one of {', '.join(qr.PAYMENT_APPS)}")
    if card.state != "active":
        raise Conflict(f"a {card.state} card cannot bind a payment channel", field="state")
    if session.scalar(select(PaymentBinding.id).where(PaymentBinding.card_id == card.id,
                                                      PaymentBinding.channel == channel, PaymentBinding.state == "active")):
        raise Conflict(f"{channel} is already bound to this card", field="channel")
    binding = PaymentBinding(card_id=card.id, channel=channel, state="active",
                             agreement_no=f"SBX-{channel.upper()}-{secrets.token_hex(8)}")
    session.add(binding)
    session.flush()
    audit.record(session, actor=actor, action="healthcard.bind", target=f"card:{card.card_no}", detail={"channel": channel})
    return binding


def unbind_channel(session: Session, *, card: Card, channel: str, actor: str) -> None:
    done = session.execute(update(PaymentBinding).where(
        PaymentBinding.card_id == card.id, PaymentBinding.channel == channel, PaymentBinding.state == "active")
        .values(state="unbound", unbound_at=datetime.now(UTC))).rowcount
    if not done:
        raise NotFound(f"{channel} is not bound to this card", field="channel")
    audit.record(session, actor=actor, action="healthcard.unbind", target=f"card:{card.card_no}", detail={"channel": channel})


def bindings(session: Session, card: Card) -> list[PaymentBinding]:
    return list(session.scalars(select(PaymentBinding).where(PaymentBinding.card_id == card.id,
                                                             PaymentBinding.state == "active").order_by(PaymentBinding.channel)))


@dataclass(frozen=True)
class Redeemed:
    channel: str
    agreement_no: str
    card_no: str


def redeem_payment_token(session: Session, *, channel: str, token: int) -> Redeemed:
    """A payment channel turns a scanned payment token into the payer's agreement, once, before the
    code expires (the payment-code rule: validity period and use limit)."""
    row = driver(session).execute(
        """UPDATE healthcard.payment_token t SET redeemed_at = now()
           FROM healthcard.payment_binding b JOIN healthcard.card c ON c.id = b.card_id
           WHERE t.channel = %s AND t.token = %s AND t.redeemed_at IS NULL AND t.expires_at > now()
             AND b.id = t.binding_id AND b.state = 'active' AND c.state = 'active'
           RETURNING b.agreement_no, c.card_no""", (channel, token)).fetchone()
    if row is None:
        raise CodeRejected("payment_token_invalid", "payment token unknown, expired, already used or unbound",
                           hint="ask the patient to show a fresh code")
    return Redeemed(channel, *row)


# ---- codes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A code as the resident's phone shows it."""

    text: str
    kind: qr.Kind
    expires_at: int
    channels: tuple[str, ...]


def _payment_token(channel: str) -> int:
    prefix, digits = PAYMENT_TOKEN_SHAPES[channel]
    return int(prefix + "".join(str(secrets.randbelow(10)) for _ in range(digits - len(prefix))))


def dynamic_code(session: Session, *, card: Card, now: float | None = None) -> Shown:
    """A code valid for ``healthcard_code_seconds`` (60 by default), usable once, with one fresh
    payment token per bound channel."""
    if card.state != "active":
        raise Conflict(f"a {card.state} card shows no code", field="state")
    kid, key = ring.signing(session)
    issued = int(time.time() if now is None else now)
    expires = issued + get_settings().healthcard_code_seconds
    nonce = secrets.token_bytes(qr.NONCE_BYTES)
    templates = [qr.Template(qr.App.HEALTH_CARD, get_settings().healthcard_region)]
    tokens = []
    for b in bindings(session, card):
        token = _payment_token(b.channel)
        tokens.append((b.channel, token, b.id))
        templates.append(qr.Template(qr.PAYMENT_APPS[b.channel], token))
    if tokens:
        with driver(session).cursor() as cur:
            cur.executemany("INSERT INTO healthcard.payment_token (channel, token, binding_id, nonce, expires_at) "
                            "VALUES (%s, %s, %s, %s, to_timestamp(%s))",
                            [(ch, tok, bid, nonce, expires) for ch, tok, bid in tokens])
    text_ = qr.encode(qr.Code(kid, card.token, issued, expires, nonce, qr.Kind.DYNAMIC, tuple(templates)), key)
    return Shown(text_, qr.Kind.DYNAMIC, expires, tuple(t[0] for t in tokens))


def static_code(session: Session, *, card: Card) -> Shown:
    """The printable code: identity only, valid for years, accepted at a counter with the card PIN."""
    if card.state != "active":
        raise Conflict(f"a {card.state} card shows no code", field="state")
    if card.pin_hash is None:
        raise Conflict("set a card PIN before printing a static code", field="pin")
    kid, key = ring.signing(session)
    issued = int(time.time())
    expires = issued + STATIC_CODE_DAYS * 86400
    code = qr.Code(kid, card.token, issued, expires, secrets.token_bytes(qr.NONCE_BYTES), qr.Kind.STATIC,
                   (qr.Template(qr.App.HEALTH_CARD, get_settings().healthcard_region),))
    return Shown(qr.encode(code, key), qr.Kind.STATIC, expires, ())


# ---- terminals ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """What a hospital terminal learns from a scan."""

    card_no: str
    empi_id: str
    name_masked: str
    kind: str
    expires_at: int
    visit_cards: list[str]
    payments: dict[str, int]


# One round trip for a scan: the terminal's request nonce spent (when given), the card read, the code's nonce
# spent, the use recorded, the person the card is now (merges followed) with their visit cards at the hospital.
# Always one row: a replayed request is told apart from an unknown card.
_ACCEPT = f"""
WITH RECURSIVE
     r AS ({auth.nonce_claim_sql('%(client)s::varchar', '%(request_nonce)s::varchar')}),
     c AS (SELECT id, card_no, person_id, name_masked, state FROM healthcard.card WHERE token = %(token)s),
     ok AS (SELECT id FROM c WHERE state = 'active' AND (%(client)s::varchar IS NULL OR EXISTS (SELECT 1 FROM r))),
     n AS (INSERT INTO healthcard.used_nonce (nonce, card_id, expires_at)
           SELECT %(nonce)s, ok.id, to_timestamp(%(exp)s) FROM ok WHERE %(dynamic)s
           ON CONFLICT DO NOTHING RETURNING 1),
     u AS (INSERT INTO healthcard.card_use (card_id, facility_code, step, channel)
           SELECT ok.id, %(facility)s, %(step)s, %(channel)s FROM ok WHERE NOT %(dynamic)s OR EXISTS (SELECT 1 FROM n)),
     {empi.cards_at_ctes('(SELECT person_id FROM c)', '%(facility)s')}
SELECT %(client)s::varchar IS NULL OR EXISTS (SELECT 1 FROM r), c.card_no, c.name_masked, c.state,
       EXISTS (SELECT 1 FROM n), now_is.empi_id, (SELECT array_agg(card_no ORDER BY card_no) FROM cards_here)
FROM (SELECT) one LEFT JOIN c ON true LEFT JOIN now_is ON true"""


def _check_use(step: str, channel: str) -> None:
    if step not in STEPS:
        raise InvalidInput(f"unknown step {step!r}", field="step", hint=f"one of {', '.join(STEPS)}")
    if channel not in USE_CHANNELS:
        raise InvalidInput(f"unknown channel {channel!r}", field="channel", hint=f"one of {', '.join(USE_CHANNELS)}")


def verify(session: Session, *, code_text: str, facility_code: str, step: str = "registration",
           channel: str = "window", pin: str | None = None, now: float | None = None,
           request: tuple[str, str] | None = None) -> Verification:
    """Verify a scanned code for a hospital: offline checks (format, key, signature, validity), then
    online ones in one statement (card state, nonce spent, use recorded). Raises ``CodeRejected``.

    ``request``: a signed terminal request's (client id, nonce), spent here — in the scan's statement, or before
    a refusal that comes first — so a refused scan cannot be replayed either (``auth.claim_nonce_in``)."""
    spent = request is None
    try:
        _check_use(step, channel)
        try:
            code = qr.verify(code_text, ring.trust(session), now=now)
        except qr.CodeError as exc:
            raise CodeRejected(exc.code, exc.message) from None
        dynamic = code.kind == qr.Kind.DYNAMIC
        if not dynamic:  # a printed code: its PIN is checked first, in statements of their own
            if request:
                spent = True  # claimed here, or refused as a replay: not claimed again below
                auth.claim_nonce_in(session, *request)
            _check_pin(session, code.card_token, pin)  # refuses unknown and inactive cards first
    except SmartCareError:
        if not spent:
            auth.claim_nonce_in(session, *request)  # a replay is told so, whatever its code
        raise
    fresh_request, card_no, name_masked, state, fresh, empi_id, visit_cards = driver(session).execute(_ACCEPT, {
        "client": None if spent else request[0], "request_nonce": None if spent else request[1],
        "token": code.card_token, "nonce": code.nonce, "exp": code.expires_at, "dynamic": dynamic,
        "facility": facility_code, "step": step, "channel": channel}).fetchone()
    if not fresh_request:
        raise auth.replay_error()
    if card_no is None:
        raise CodeRejected("card_unknown", "no card has this token")
    if empi_id is None:  # a card whose person is gone from the index: the index must be repaired, not guessed
        raise NotFound("the card's person is not in the master patient index", field="code")
    if state != "active":
        raise _inactive(state)
    if dynamic and not fresh:
        raise CodeRejected("code_replayed", "this code was already used; ask for a fresh one")
    return Verification(card_no=card_no, empi_id=empi_id, name_masked=name_masked, kind=code.kind.name.lower(),
                        expires_at=code.expires_at, visit_cards=visit_cards or [], payments=code.payments)


def _inactive(state: str) -> CodeRejected:
    return CodeRejected(f"card_{state}", f"the card is {state}",
                        hint="a reissued card has a new code" if state in ("lost", "reissued") else None)


def _check_pin(session: Session, token: bytes, pin: str | None) -> None:
    card = session.scalar(select(Card).where(Card.token == token))  # no row lock: a failure is counted apart
    if card is None:
        raise CodeRejected("card_unknown", "no card has this token")
    if card.state != "active":
        raise _inactive(card.state)
    if card.pin_hash is None:
        raise CodeRejected("pin_wrong", "wrong PIN", hint="this card has no PIN: the resident sets one in the app")
    if not pin:
        raise CodeRejected("pin_required", "a printed code needs the card PIN", hint="ask the patient to enter the PIN")
    tries = _count_try(session, Card.pin_failures, card.id, PIN_TRIES)
    if tries is None:
        raise CodeRejected("pin_locked", "too many wrong PINs: the PIN is locked", hint="the resident resets it in the app")
    try:
        _pins.verify(card.pin_hash, pin)
    except VerificationError:
        raise CodeRejected("pin_wrong", "wrong PIN", hint=f"{PIN_TRIES - tries} tries left") from None
    card.pin_failures = 0


def by_visit_card(session: Session, *, facility_code: str, card_no: str) -> tuple[Card, str]:
    """A hospital's own old visit card number → the patient's health card and current EMPI id."""
    person = empi.person_by_card(session, facility_code=facility_code, card_no=card_no)
    resolved, _ = empi.cards_at(session, person_id=person.id, facility_code=facility_code)
    card = session.scalar(select(Card).where(Card.person_id.in_(empi.absorbed_ids(session, resolved.id)),
                                             Card.state.in_(LIVE)))
    if card is None:
        raise NotFound("the patient of this visit card has no electronic health card yet", field="card_no")
    return card, resolved.empi_id


def report_use(session: Session, *, card_no: str, facility_code: str, step: str, channel: str) -> None:
    """用卡数据上报: a later step of a visit (consultation, pharmacy …) reported by the hospital. Only for
    a card scanned at that hospital in the last ``USE_REPORT_HOURS``: a hospital can neither inflate
    the statistics with other cards nor probe which card numbers exist (the refusal is the same)."""
    _check_use(step, channel)
    done = driver(session).execute(
        """INSERT INTO healthcard.card_use (card_id, facility_code, step, channel)
           SELECT c.id, CAST(%(f)s AS varchar), %(step)s, %(ch)s FROM healthcard.card c
           WHERE c.card_no = %(no)s AND c.state = 'active'
             AND EXISTS (SELECT 1 FROM healthcard.card_use u WHERE u.card_id = c.id AND u.facility_code = %(f)s
                           AND u.at > now() - make_interval(hours => %(hours)s))""",
        {"f": facility_code, "step": step, "ch": channel, "no": card_no, "hours": USE_REPORT_HOURS}).rowcount
    if not done:
        raise NotFound(f"card {card_no} was not scanned at this hospital in the last {USE_REPORT_HOURS} hours",
                       field="card_no", hint="scan the card's code first (POST /verify)")


def masked_name(session: Session, empi_id: str) -> str | None:
    """How consoles show a person: the masked name on their latest card (None: no card)."""
    return session.scalar(select(Card.name_masked).where(Card.empi_id == empi_id).order_by(Card.id.desc()).limit(1))


def scanned_at(session: Session, *, empi_id: str, facility_code: str) -> bool:
    """Whether a card of this person was scanned at this hospital in the last ``USE_REPORT_HOURS``: how a
    hospital shows the patient is in front of it before it bills (and so settles against) that person.
    Uses from the resident's own app (paying a bill from the phone) do not count."""
    return driver(session).execute(
        """SELECT EXISTS (SELECT 1 FROM healthcard.card_use u JOIN healthcard.card c ON c.id = u.card_id
                           WHERE c.empi_id = %s AND u.facility_code = %s AND u.channel <> 'app'
                             AND u.at > now() - make_interval(hours => %s))""",
        (empi_id, facility_code, USE_REPORT_HOURS)).fetchone()[0]


def purge(session: Session) -> int:
    """Spent nonces, payment tokens and one-time SMS codes are kept a day past expiry (a replay within
    it is refused with ``code_replayed``; after it, ``code_expired`` refuses the code offline); the demo
    SMS outbox a week."""
    cutoff = datetime.now(UTC) - timedelta(days=1)
    gone = 0
    for table in ("used_nonce", "payment_token", "otp"):
        gone += session.execute(text(f"DELETE FROM healthcard.{table} WHERE expires_at < :c"), {"c": cutoff}).rowcount
    week = datetime.now(UTC) - timedelta(days=7)
    return gone + session.execute(text("DELETE FROM healthcard.sms_outbox WHERE at < :c"), {"c": week}).rowcount


# ---- statistics ---------------------------------------------------------------------------------


def stats(session: Session, *, day: date | None = None) -> dict:
    """Cards issued (by state), daily active cards (used that day, Asia/Shanghai), uses by step,
    channel and hospital."""
    day = day or china_today()
    start = datetime(day.year, day.month, day.day, tzinfo=CHINA_TZ)
    window = {"a": start, "b": start + timedelta(days=1)}
    by_state = dict(session.execute(select(Card.state, func.count()).group_by(Card.state)).all())

    def grouped(column: str, limit: int = 50) -> list[tuple[str, int]]:
        return [tuple(r) for r in session.execute(text(
            f"SELECT {column}, count(*) FROM healthcard.card_use WHERE at >= :a AND at < :b "
            f"GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {limit}"), window)]

    return {
        "day": day,
        "issued": sum(by_state.values()),
        "by_state": by_state,
        "issued_today": session.scalar(select(func.count()).select_from(Card).where(
            Card.issued_at >= window["a"], Card.issued_at < window["b"])) or 0,
        "active_today": session.scalar(text("SELECT count(DISTINCT card_id) FROM healthcard.card_use "
                                            "WHERE at >= :a AND at < :b"), window) or 0,
        "uses_today": session.scalar(text("SELECT count(*) FROM healthcard.card_use WHERE at >= :a AND at < :b"), window) or 0,
        "by_step": grouped("step"),
        "by_channel": grouped("channel"),
        "by_hospital": grouped("facility_code", 20),
    }


def sms_outbox(session: Session, limit: int = 50) -> list[SmsMessage]:
    return list(session.scalars(select(SmsMessage).order_by(SmsMessage.id.desc()).limit(limit)))


def uses_between(session: Session, start: datetime, end: datetime) -> list[dict]:
    """Card uses recorded in [start, end) (for the warehouse; only the card's internal id, no token)."""
    return [dict(r._mapping) for r in session.execute(text(
        "SELECT id AS use_id, card_id, facility_code, step, channel, at AS used_at FROM healthcard.card_use "
        "WHERE at >= :a AND at < :b"), {"a": start, "b": end})]
