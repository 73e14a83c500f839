"""Booking: one pool of appointment slots from every hospital, booked fairly.

find → hold → book. A hold takes a place of the slot for a few minutes (``hold_minutes``); booking
confirms it. The database keeps the count of a slot's places (a trigger from the appointments and a
check constraint, migration 0011), so no slot is ever booked twice, whatever the concurrency; this
module adds the rules a person is held to (release time, limits per day / department / doctor, the
blacklist), checked under a per-person advisory lock so that two attempts of one person at once
cannot both pass a limit — an attempt is one SQL statement (``booking.attempt``, migration 0019).

A place given up (cancelled, hold expired) is withheld and returns at a random time within the
hospital's range (``seat_return``): first as an offer to the waitlist, else to the pool. The periodic
``tick`` expires holds, returns places, marks no-shows (and blacklists) and sends reminders.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from smartcare.booking import rules as fairness
from smartcare.booking.full import full_slots
from smartcare.booking.models import Appointment, Blacklisting, Notification, Slot, WaitlistEntry
from smartcare.healthcard import service as healthcard
from smartcare.platform import audit, bus
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import driver, run_one, session_scope
from smartcare.platform.errors import Conflict, Forbidden, InvalidInput, NotFound
from smartcare.registry import service as registry

log = logging.getLogger(__name__)

#: A check-in is accepted from this long before the slot starts.
CHECKIN_EARLY = timedelta(hours=2)
#: Rows the periodic work handles per transaction.
TICK_BATCH = 50


class NoSlot(Conflict):
    code = "no_slot"


class NotReleased(Conflict):
    code = "not_released"


class LimitReached(Conflict):
    code = "limit_reached"


class Blacklisted(Forbidden):
    code = "blacklisted"


class Busy(Conflict):
    """Another transaction holds what this one needs; send it again (the bus retries it by itself)."""

    code = "busy"


@dataclass(frozen=True)
class Patient:
    """Who a booking is for (the person of a health card) and who makes it (the account holding the card)."""

    empi_id: str
    card_no: str
    account: str


def patient(session: Session, *, account: str, card_no: str) -> Patient:
    """The person of a card the account holds (its own or a child's); the card must be active."""
    card = healthcard.holder_card(session, username=account, card_no=card_no)
    if card.state != "active":
        raise Forbidden(f"card {card_no} is {card.state}", field="card_no", hint="book with an active card")
    return Patient(empi_id=card.empi_id, card_no=card.card_no, account=account)


# ---------------------------------------------------------------- slots (hospitals publish them)

@dataclass
class SlotChange:
    source_id: str
    outcome: str            # created / updated / unchanged / error
    slot_id: int | None = None
    error: str | None = None


def release_time(rules: fairness.Rules, visit_date: date) -> datetime:
    return datetime.combine(visit_date - timedelta(days=rules.release_days), rules.release_time, CHINA_TZ)


def publish_slots(session: Session, *, facility_code: str, slots: list, actor: str) -> list[SlotChange]:
    """Create or update a hospital's slots by its own ids. Each slot is applied on its own: a bad one is
    reported with what was wrong, the others are kept. A slot's capacity cannot go below the places
    already taken, and a slot with bookings cannot move in time (withdraw it instead)."""
    facility = registry.get_facility(session, facility_code)
    departments = {d.code: d.name for d in registry.list_departments(session, facility_code)}
    rules = fairness.effective(session, facility_code)
    results = []
    for data in slots:
        try:
            with session.begin_nested():
                results.append(_publish_one(session, facility, departments, rules, data))
        except (InvalidInput, Conflict) as exc:
            results.append(SlotChange(data.source_id, "error", error=exc.message))
        except IntegrityError:  # the same new id published twice at once: the other one made it
            results.append(SlotChange(data.source_id, "error", error="published concurrently; send it again"))
    return results


def _publish_one(session: Session, facility, departments: dict, rules: fairness.Rules, data) -> SlotChange:
    department_name = data.department_name or departments.get(data.department_code)
    if not department_name:
        raise InvalidInput(f"department {data.department_code} is not registered at this hospital; send its name",
                           field="department_name")
    starts_at, ends_at = data.starts_at.astimezone(UTC), data.ends_at.astimezone(UTC)
    visit_date = data.starts_at.astimezone(CHINA_TZ).date()
    values = dict(district_code=facility.district_code, department_code=data.department_code,
                  department_name=department_name, practitioner_code=data.practitioner_code,
                  practitioner_name=data.practitioner_name, title=data.title, fee=data.fee, starts_at=starts_at,
                  ends_at=ends_at, visit_date=visit_date, capacity=data.capacity,
                  release_at=min(release_time(rules, visit_date), starts_at))
    slot = session.scalar(select(Slot).where(Slot.facility_code == facility.code, Slot.source_id == data.source_id)
                          .with_for_update())
    if slot is None:
        slot = Slot(facility_code=facility.code, source_id=data.source_id, **values)
        session.add(slot)
        session.flush()
        return SlotChange(data.source_id, "created", slot.id)
    if slot.release_at <= datetime.now(UTC):  # released is released: a later rule change does not take it back
        values["release_at"] = slot.release_at
    if slot.state == "withdrawn":  # its bookings were cancelled and the residents told: that stays so
        raise Conflict(f"slot {data.source_id} was withdrawn", field="source_id", hint="publish it under a new id")
    if all(getattr(slot, k) == v for k, v in values.items()):
        return SlotChange(data.source_id, "unchanged", slot.id)
    if data.capacity < slot.taken + slot.withheld:
        raise Conflict(f"capacity {data.capacity} is below the {slot.taken + slot.withheld} places already taken",
                       field="capacity", hint="cancel bookings first, or withdraw the slot")
    if (slot.starts_at, slot.ends_at) != (starts_at, ends_at) and slot.taken:
        raise Conflict("the slot has bookings and cannot move in time", field="starts_at",
                       hint="withdraw it (its bookings are cancelled and the residents told) and publish a new one")
    added = data.capacity - slot.capacity
    for key, value in values.items():
        setattr(slot, key, value)
    slot.updated_at = func.now()
    session.flush()
    if added > 0 and _anyone_waiting(session, slot):  # 加号: the people waiting are offered the new places first
        slot.withheld += added
        session.flush()
        session.execute(text("INSERT INTO booking.seat_return (slot_id, return_at) "
                             "SELECT :id, now() FROM generate_series(1, :n)"), {"id": slot.id, "n": added})
    full_slots.forget(slot.id)
    return SlotChange(data.source_id, "updated", slot.id)


def _waiting_for(slot: Slot):
    return select(WaitlistEntry).where(
        WaitlistEntry.state == "waiting", WaitlistEntry.facility_code == slot.facility_code,
        WaitlistEntry.department_code == slot.department_code, WaitlistEntry.visit_date == slot.visit_date,
        or_(WaitlistEntry.practitioner_code.is_(None), WaitlistEntry.practitioner_code == slot.practitioner_code))


def _anyone_waiting(session: Session, slot: Slot) -> bool:
    return session.scalar(select(_waiting_for(slot).exists())) and slot.release_at <= datetime.now(UTC)


def withdraw_slot(session: Session, *, facility_code: str, source_id: str, actor: str, reason: str = "") -> Slot:
    """The hospital takes a slot back (the doctor is away): its bookings are cancelled by the hospital
    (not counted against the residents) and each resident is told."""
    slot = session.scalar(select(Slot).where(Slot.facility_code == facility_code, Slot.source_id == source_id))
    if slot is None:
        raise NotFound(f"no slot {source_id} at this hospital", field="source_id")
    # Lock order everywhere: appointments, then the slot (a cancel or an expiry takes the same order).
    live = session.scalars(select(Appointment).where(Appointment.slot_id == slot.id,
                                                     Appointment.state.in_(("held", "booked")))
                           .order_by(Appointment.id).with_for_update()).all()
    session.refresh(slot, with_for_update=True)
    if slot.state == "withdrawn":
        return slot
    slot.state = "withdrawn"
    slot.updated_at = func.now()
    session.flush()
    try:  # held after the first look, before the slot was locked: waiting for them here could deadlock
        with session.begin_nested():
            live += session.scalars(select(Appointment).where(
                Appointment.slot_id == slot.id, Appointment.state.in_(("held", "booked")),
                Appointment.id.not_in([a.id for a in live] or [0])).with_for_update(nowait=True)).all()
    except OperationalError:  # lock not available
        raise Busy(f"slot {source_id} is being booked right now", field="source_id", hint="send the withdrawal again") from None
    for a in live:
        was_booked = a.state == "booked"
        _end(session, a, "cancelled", by="hospital")
        if a.waitlist_id:  # not their doing: back in the queue
            session.execute(text("UPDATE booking.waitlist SET state = 'waiting', updated_at = now() WHERE id = :id "
                                 "AND state = 'offered'"), {"id": a.waitlist_id})
        if was_booked:
            _event(session, "cancelled", a)
        notify(session, a, "withdrawn", f"【SmartCare】您预约的 {slot.department_name} {_when(slot)} 号源已被医院停诊，"
                                        f"预约 {a.appointment_no} 已取消，可重新预约。")
    audit.record(session, actor=actor, action="booking.slot.withdraw", target=f"{facility_code}/{source_id}",
                 detail={"reason": reason})
    full_slots.forget(slot.id)
    return slot


def get_slot(session: Session, slot_id: int) -> Slot:
    slot = session.get(Slot, slot_id)
    if slot is None:
        raise NotFound(f"no slot {slot_id}", field="slot_id")
    return slot


def search(session: Session, *, district_code: str | None = None, facility_code: str | None = None,
           department_code: str | None = None, practitioner_code: str | None = None, date_from: date | None = None,
           date_to: date | None = None, title: str | None = None, fee_max: int | None = None,
           available: bool = False, limit: int = 100, offset: int = 0) -> list[Slot]:
    """Open slots that have not started, by district, hospital, department, doctor, date, fee level and fee."""
    q = select(Slot).where(Slot.state == "open", Slot.starts_at > func.now())
    for column, value in ((Slot.district_code, district_code), (Slot.facility_code, facility_code),
                          (Slot.department_code, department_code), (Slot.practitioner_code, practitioner_code),
                          (Slot.title, title)):
        if value:
            q = q.where(column == value)
    if date_from:
        q = q.where(Slot.visit_date >= date_from)
    if date_to:
        q = q.where(Slot.visit_date <= date_to)
    if fee_max is not None:
        q = q.where(Slot.fee <= fee_max)
    if available:
        q = q.where(Slot.taken + Slot.withheld < Slot.capacity, Slot.release_at <= func.now())
    return list(session.scalars(q.order_by(Slot.starts_at, Slot.id).limit(min(limit, 500)).offset(offset)))


# ---------------------------------------------------------------- holding and booking

#: migration 0019
_ATTEMPT = "SELECT * FROM booking.attempt(%s, %s, %s, %s, %s, %s, %s)"
_TAKE_PLACE = "SELECT * FROM booking.take_place(%s, %s, %s, %s, %s, 'held', %s, false)"


@dataclass(frozen=True)
class Place:
    """A place just taken (held, or booked at once) with its slot's details: what the API's answer reads of an
    appointment and of its slot (``api.appointment_out``)."""

    id: int
    appointment_no: str
    state: str
    slot_id: int
    empi_id: str
    card_no: str
    account: str
    facility_code: str
    department_code: str
    department_name: str
    practitioner_code: str | None
    practitioner_name: str | None
    source_id: str
    starts_at: datetime
    ends_at: datetime
    fee: int
    held_until: datetime | None
    created_at: datetime
    cancelled_by: None = None


def refuse_if_known_full(slot_id: int) -> None:
    """Answer "no slot" from this process's memory of full slots (``booking.full``), with no database."""
    hospital = full_slots.hospital_if_full(slot_id)
    if hospital is not None:
        attempts.count(hospital, "no_slot")
        raise NoSlot("no place left in this slot", field="slot_id", hint="try another slot or join the waitlist")


def _lock_person(conn, empi_id: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('booking:' || %s, 0))", (empi_id,))


def attempt(*, account: str, card_no: str, slot_id: int, book: bool = False) -> Place:
    """A resident takes a place of the slot with a card their account holds (their own or a child's): held
    for ``hold_minutes``, or booked at once (``book``). One statement in a transaction of its own,
    ``booking.attempt`` (migration 0019): the card, the slot, the release time, the blacklist, a free place,
    then under the person's lock their limits and the new appointment, and for a booking the hospital's event
    and the resident's notice — so the slot's row, locked from the insert, is free again at the statement's
    commit, not after round trips from here; the bus's readers are woken after it (``bus.wake``). Refusals:
    ``no_slot`` (full or withdrawn), ``not_released``, ``blacklisted``, ``limit_reached``, a place already held
    in the slot, a card not held or not active."""
    refuse_if_known_full(slot_id)
    asked = time.monotonic()
    _, fan_out = bus.sql_publish_target()  # no channel: a NOTIFY would make bookings commit one at a time
    (outcome, detail, at, limit, appointment_id, appointment_no, empi_id, held_until, created_at, places_left,
     facility, department, department_name, practitioner, practitioner_name, source_id, starts_at, ends_at,
     fee) = run_one(_ATTEMPT, (account, card_no, slot_id, book, secrets.token_hex(5).upper(), None, fan_out))
    if outcome in ("held", "booked"):
        attempts.count(facility, "held")
        if outcome == "booked":
            bus.count_published("booking.appointment.booked")
            bus.wake()
        if places_left <= 0:  # this attempt took the last place this process knew of
            full_slots.mark(slot_id, facility, asked=asked)
        return Place(appointment_id, appointment_no, outcome, slot_id, empi_id, card_no, account, facility, department,
                     department_name, practitioner, practitioner_name, source_id, starts_at, ends_at, fee, held_until,
                     created_at)
    refusal = _refusal(outcome, detail=detail, at=at, limit=limit, card_no=card_no, slot_id=slot_id)
    if outcome == "no_slot":
        full_slots.mark(slot_id, facility, asked=asked)
    if facility and isinstance(refusal, Conflict | Blacklisted):
        attempts.count(facility, refusal.code)
    raise refusal


def _refusal(outcome: str, *, detail: str | None, at: datetime | None, limit: int | None, card_no: str,
             slot_id: int) -> Exception:
    """What ``booking.attempt`` or ``booking.take_place`` said, as the error the resident is answered with."""
    if outcome == "not_your_card":
        return Forbidden("you do not hold this card", field="card_no")
    if outcome == "card_state":
        return Forbidden(f"card {card_no} is {detail}", field="card_no", hint="book with an active card")
    if outcome == "no_such_slot":
        return NotFound(f"no slot {slot_id}", field="slot_id")
    if outcome == "not_offered":
        return NoSlot("this slot is no longer offered", field="slot_id")
    if outcome == "not_released":
        return NotReleased(f"this slot opens for booking at {at.astimezone(CHINA_TZ):%Y-%m-%d %H:%M}", field="slot_id")
    if outcome == "blacklisted":
        return Blacklisted(f"booking is suspended until {at.astimezone(CHINA_TZ):%Y-%m-%d} after repeated no-shows "
                           "or cancellations", hint="the suspension ends by itself")
    if outcome == "no_slot":
        return NoSlot("no place left in this slot", field="slot_id", hint="try another slot or join the waitlist")
    if outcome == "in_slot":
        return Conflict("this person already has a place in this slot", field="slot_id")
    if outcome == "per_day":
        return LimitReached(f"at most {limit} bookings per person per visit day", field="slot_id")
    if outcome == "per_department":
        return LimitReached(f"at most {limit} booking(s) per person per day in one department", field="slot_id")
    if outcome == "per_doctor":
        return LimitReached(f"at most {limit} booking(s) per person per day with one doctor", field="slot_id")
    return Busy("another booking of this person is under way", field="slot_id", hint="send it again")


def _mine(session: Session, *, account: str, appointment_no: str, lock: bool = True) -> Appointment:
    q = select(Appointment).where(Appointment.appointment_no == appointment_no, Appointment.account == account)
    a = session.scalar(q.with_for_update() if lock else q)
    if a is None:
        raise NotFound(f"no appointment {appointment_no} of yours", field="appointment_no")
    return a


def confirm(session: Session, *, account: str, appointment_no: str) -> Appointment:
    """Book a held place (a hold, or a waitlist offer). Confirming a booked appointment again is a no-op."""
    a = _mine(session, account=account, appointment_no=appointment_no)
    if a.state == "booked":
        return a
    if a.state != "held" or a.held_until <= datetime.now(UTC):
        raise Conflict(f"appointment {appointment_no} is {'expired' if a.state == 'held' else a.state}",
                       field="appointment_no", hint="hold a place again")
    slot = session.get(Slot, a.slot_id)
    if slot.starts_at <= datetime.now(UTC) or slot.state != "open":
        raise NoSlot("this slot is no longer offered", field="appointment_no")
    a.state, a.booked_at, a.held_until = "booked", func.now(), None
    if a.waitlist_id:
        session.execute(text("UPDATE booking.waitlist SET state = 'booked', updated_at = now() WHERE id = :id"),
                        {"id": a.waitlist_id})
    session.flush()
    session.refresh(a)
    _booked(session, a)
    return a


def _booked(session: Session, a: Appointment) -> None:
    """A booking made: the hospital's event and the resident's notice, ``booking.tell_booked`` (migration 0019),
    as a booking made at once does it in ``booking.attempt``."""
    channel, fan_out = bus.sql_publish_target()
    session.execute(text("SELECT booking.tell_booked(:id, :channel, :fan_out)"),
                    {"id": a.id, "channel": channel, "fan_out": fan_out})
    bus.count_published("booking.appointment.booked")


def cancel(session: Session, *, account: str, appointment_no: str) -> Appointment:
    """A resident gives up a hold or a booking (a booking up to the cancellation deadline). Cancelled
    bookings count towards the blacklist; the place returns to the pool at a random time."""
    a = _mine(session, account=account, appointment_no=appointment_no)
    if a.state == "cancelled":
        return a
    if a.state not in ("held", "booked"):
        raise Conflict(f"appointment {appointment_no} is {a.state} and cannot be cancelled", field="appointment_no")
    slot = session.get(Slot, a.slot_id)
    rules = fairness.effective(session, a.facility_code)
    if a.state == "booked" and datetime.now(UTC) > slot.starts_at - timedelta(minutes=rules.cancel_deadline_minutes):
        raise Conflict(f"bookings can be cancelled up to {rules.cancel_deadline_minutes} minutes before the visit",
                       field="appointment_no", hint="if you cannot come, the visit counts as a no-show")
    was_booked = a.state == "booked"
    _lock_person(driver(session), a.empi_id)
    _end(session, a, "cancelled", by="resident")
    if a.waitlist_id:
        session.execute(text("UPDATE booking.waitlist SET state = 'cancelled', updated_at = now() WHERE id = :id"),
                        {"id": a.waitlist_id})
    if was_booked:
        _event(session, "cancelled", a)
        _count_towards_blacklist(session, a.empi_id, "cancel", rules)
    return a


def _end(session: Session, a: Appointment, state: str, *, by: str | None = None) -> None:
    a.state, a.ended_at, a.held_until = state, func.now(), None
    if by:
        a.cancelled_by = by
    session.flush()
    session.refresh(a)


def my_appointments(session: Session, *, account: str, limit: int = 100) -> list[tuple[Appointment, Slot]]:
    return [tuple(r) for r in session.execute(select(Appointment, Slot).join(Slot, Slot.id == Appointment.slot_id)
                                              .where(Appointment.account == account)
                                              .order_by(Appointment.created_at.desc()).limit(limit))]


def get_mine(session: Session, *, account: str, appointment_no: str) -> tuple[Appointment, Slot]:
    a = _mine(session, account=account, appointment_no=appointment_no, lock=False)
    return a, session.get(Slot, a.slot_id)


# ---------------------------------------------------------------- blacklist

def banned_until(session: Session, empi_id: str) -> datetime | None:
    return session.scalar(select(func.max(Blacklisting.until)).where(
        Blacklisting.empi_id == empi_id, Blacklisting.until > func.now(), Blacklisting.lifted_at.is_(None)))


def _count_towards_blacklist(session: Session, empi_id: str, reason: str, rules: fairness.Rules) -> Blacklisting | None:
    """Blacklist the person when their no-shows (or cancellations) within the window reach the limit;
    only events after their last blacklisting count, so an expired one does not come straight back."""
    limit = rules.noshow_limit if reason == "noshow" else rules.cancel_limit
    last = session.scalar(select(func.max(Blacklisting.since)).where(Blacklisting.empi_id == empi_id,
                                                                     Blacklisting.reason == reason))
    since = datetime.now(UTC) - timedelta(days=rules.window_days)
    if last is not None:
        since = max(since, last)
    q = select(func.count()).select_from(Appointment).where(Appointment.empi_id == empi_id, Appointment.ended_at > since)
    q = q.where(Appointment.state == "noshow") if reason == "noshow" else \
        q.where(Appointment.state == "cancelled", Appointment.cancelled_by == "resident", Appointment.booked_at.is_not(None))
    events = session.scalar(q)
    if events < limit or banned_until(session, empi_id):
        return None
    entry = Blacklisting(empi_id=empi_id, reason=reason, events=events,
                         until=datetime.now(UTC) + timedelta(days=rules.blacklist_days))
    session.add(entry)
    session.flush()
    audit.record(session, actor="booking.rules", action="booking.blacklist.add", target=empi_id,
                 detail={"reason": reason, "events": events, "until": entry.until.isoformat()})
    return entry


def blacklist(session: Session, *, limit: int = 200) -> list[Blacklisting]:
    """The blacklistings in force now, newest first."""
    return list(session.scalars(select(Blacklisting).where(Blacklisting.until > func.now(),
                                                           Blacklisting.lifted_at.is_(None))
                                .order_by(Blacklisting.since.desc()).limit(limit)))


def lift(session: Session, *, entry_id: int, actor: str, reason: str) -> Blacklisting:
    """An administrator ends a blacklisting early (appeal accepted); audited with the reason."""
    entry = session.get(Blacklisting, entry_id)
    if entry is None:
        raise NotFound(f"no blacklist entry {entry_id}", field="entry_id")
    if entry.lifted_at is None:
        entry.lifted_at, entry.lifted_by = func.now(), actor
        audit.record(session, actor=actor, action="booking.blacklist.lift", target=entry.empi_id, detail={"reason": reason})
        session.flush()
    return entry


# ---------------------------------------------------------------- waitlist

def join_waitlist(session: Session, *, who: Patient, facility_code: str, department_code: str,
                  practitioner_code: str | None, visit_date: date) -> WaitlistEntry:
    """Wait for a place of a department (or one doctor) on a day: the next freed place that fits is
    offered (held for ``offer_minutes``) to the first eligible person waiting."""
    if visit_date < datetime.now(CHINA_TZ).date():
        raise InvalidInput("the visit day is in the past", field="visit_date")
    if not session.scalar(select(func.count()).select_from(Slot).where(
            Slot.facility_code == facility_code, Slot.department_code == department_code,
            Slot.visit_date == visit_date, Slot.state == "open",
            or_(Slot.practitioner_code == practitioner_code, practitioner_code is None))):
        raise NotFound("no slots of this department (or doctor) on that day to wait for", field="department_code")
    if until := banned_until(session, who.empi_id):
        raise Blacklisted(f"booking is suspended until {until.astimezone(CHINA_TZ):%Y-%m-%d}")
    entry = WaitlistEntry(empi_id=who.empi_id, card_no=who.card_no, account=who.account, facility_code=facility_code,
                          department_code=department_code, practitioner_code=practitioner_code, visit_date=visit_date)
    try:
        with session.begin_nested():
            session.add(entry)
            session.flush()
    except Exception as exc:
        if "waitlist_once" in str(getattr(exc, "orig", exc)):
            raise Conflict("this person is already waiting for this", field="department_code") from None
        raise
    return entry


def my_waitlist(session: Session, *, account: str) -> list[WaitlistEntry]:
    return list(session.scalars(select(WaitlistEntry).where(WaitlistEntry.account == account)
                                .order_by(WaitlistEntry.created_at.desc()).limit(100)))


def leave_waitlist(session: Session, *, account: str, entry_id: int) -> WaitlistEntry:
    entry = session.scalar(select(WaitlistEntry).where(WaitlistEntry.id == entry_id, WaitlistEntry.account == account))
    if entry is None:
        raise NotFound(f"no waitlist entry {entry_id} of yours", field="entry_id")
    if entry.state == "waiting":
        entry.state, entry.updated_at = "cancelled", func.now()
        session.flush()
    return entry


def _offer(session: Session, slot: Slot) -> Appointment | None:
    """Offer a returned place of ``slot`` to the first eligible person waiting for it (the place is
    already counted back into the pool by the caller's statement order: withheld − 1, then the hold)."""
    conn = driver(session)
    rules = fairness.effective(session, slot.facility_code)
    waiting = session.scalars(_waiting_for(slot).order_by(WaitlistEntry.id).limit(20)
                              .with_for_update(skip_locked=True)).all()
    for entry in waiting:
        if banned_until(session, entry.empi_id):
            continue
        # The caller holds the slot's row; everyone else takes a person's lock before a slot's: only try it here.
        outcome, _, appointment_id, *_ = conn.execute(_TAKE_PLACE, (
            slot.id, entry.empi_id, entry.card_no, entry.account, secrets.token_hex(5).upper(), entry.id)).fetchone()
        if outcome != "held":
            continue  # busy, or not eligible now (a limit, a place already in the slot): stays waiting
        entry.state, entry.updated_at = "offered", func.now()
        session.flush()
        a = session.get(Appointment, appointment_id)
        notify(session, a, "offer", f"【SmartCare】候补成功：{slot.department_name} {_when(slot)} 有号了，已为您保留 "
                                    f"{rules.offer_minutes} 分钟，请在 H5 确认预约（{a.appointment_no}）。")
        return a
    return None


# ---------------------------------------------------------------- the hospital's side

_FEED = """SELECT a.id, a.change_xid::text || '.' || a.change_seq FROM booking.appointment a
            WHERE a.facility_code = :facility AND a.booked_at IS NOT NULL
              AND (CAST(:day AS date) IS NULL OR a.visit_date = CAST(:day AS date))
              AND a.change_xid < pg_snapshot_xmin(pg_current_snapshot())
              AND (a.change_xid, a.change_seq) > (CAST(:xid AS xid8), CAST(:seq AS bigint))
            ORDER BY a.change_xid, a.change_seq LIMIT :n"""


def hospital_appointments(session: Session, *, facility_code: str, visit_date: date | None = None,
                          since: str = "0.0", limit: int = 500) -> list[tuple[Appointment, Slot, str]]:
    """A hospital's appointments (booked, and what became of them; not holds) changed after the cursor
    ``since``, oldest change first, each with its own cursor: a hospital pages with the last one it saw.
    Changes are ordered by their transaction and served only once every older transaction has ended, so
    one that commits late is never skipped (a long transaction elsewhere delays the feed, it loses nothing)."""
    xid, _, seq = since.partition(".")
    if not (xid.isdigit() and seq.isdigit()):
        raise InvalidInput(f"cursor {since[:40]!r} is not one this feed gave (like 123456.789)", field="since")
    rows = session.execute(text(_FEED), {"facility": facility_code, "day": visit_date, "xid": xid, "seq": int(seq),
                                         "n": limit}).all()
    found = {a.id: a for a in session.scalars(select(Appointment).where(Appointment.id.in_([r[0] for r in rows])))}
    slots = {s.id: s for s in session.scalars(select(Slot).where(Slot.id.in_({a.slot_id for a in found.values()})))}
    return [(found[i], slots[found[i].slot_id], cursor) for i, cursor in rows]


def _checkable(session: Session, facility_code: str):
    """Bookings at this hospital whose check-in window is open now (from CHECKIN_EARLY before the slot to
    the no-show grace after it), soonest first."""
    now = datetime.now(UTC)
    grace = timedelta(minutes=fairness.effective(session, facility_code).noshow_grace_minutes)
    return (select(Appointment).join(Slot, Slot.id == Appointment.slot_id)
            .where(Appointment.facility_code == facility_code, Appointment.state == "booked",
                   Slot.starts_at <= now + CHECKIN_EARLY, Slot.ends_at >= now - grace)
            .order_by(Slot.starts_at))


def checkable(session: Session, *, facility_code: str, empi_id: str) -> list[tuple[Appointment, Slot]]:
    """What a terminal offers to check in for a patient it has just scanned."""
    q = _checkable(session, facility_code).where(Appointment.empi_id == empi_id).add_columns(Slot)
    return [tuple(r) for r in session.execute(q)]


def check_in(session: Session, *, facility_code: str, code: str | None = None, appointment_no: str | None = None,
             empi_id: str | None = None) -> tuple[Appointment, Slot]:
    """The terminal scans the patient's health-card QR (or types the appointment number; with ``empi_id``,
    the person a scan just showed, only that person's booking): today's booking at this hospital is checked in."""
    q = _checkable(session, facility_code)
    if empi_id:
        q = q.where(Appointment.empi_id == empi_id)
    if code:
        scanned = healthcard.verify(session, code_text=code, facility_code=facility_code, step="registration",
                                    channel="window")
        q = q.where(Appointment.empi_id == scanned.empi_id)
    elif appointment_no:
        q = q.where(Appointment.appointment_no == appointment_no)
    else:
        raise InvalidInput("send the scanned code or the appointment number", field="code")
    a = session.scalar(q.limit(1).with_for_update(of=Appointment))
    if a is None:
        raise NotFound("no booking of this patient to check in at this hospital now", field="code",
                       hint=f"check-in opens {int(CHECKIN_EARLY.total_seconds() // 3600)} hours before the slot")
    _end(session, a, "checked_in")
    slot = session.get(Slot, a.slot_id)
    _event(session, "checked_in", a)
    return a, slot


# ---------------------------------------------------------------- notifications and events

class DemoNotificationGateway:
    """Writes each message to ``booking.notification`` (the resident's inbox on H5, the console) and the
    log. A real gateway (SMS, app push) implements the same ``send``; texts carry no personal data. (A
    booking's notice is written in the booking's own statement, ``booking.tell_booked``: a gateway that
    delivers by SMS reads it from the table.)"""

    def send(self, session: Session, *, account: str, appointment_id: int | None, kind: str, text_: str) -> bool:
        done = session.execute(text(
            "INSERT INTO booking.notification (account, appointment_id, kind, text) VALUES (:a, :id, :k, :t) "
            "ON CONFLICT DO NOTHING"), {"a": account, "id": appointment_id, "k": kind, "t": text_}).rowcount
        if done:
            log.info("booking notification (%s) to account %s", kind, account)
        return bool(done)


gateway = DemoNotificationGateway()


def notify(session: Session, a: Appointment, kind: str, message: str) -> bool:
    return gateway.send(session, account=a.account, appointment_id=a.id, kind=kind, text_=message)


def notifications(session: Session, *, account: str | None = None, limit: int = 50) -> list[Notification]:
    q = select(Notification)
    if account:
        q = q.where(Notification.account == account)
    return list(session.scalars(q.order_by(Notification.id.desc()).limit(limit)))


def _when(slot: Slot) -> str:
    return f"{slot.starts_at.astimezone(CHINA_TZ):%m月%d日 %H:%M}"


def _event(session: Session, what: str, a: Appointment) -> None:
    """``booking.appointment.<what>`` for the hospital's systems (and the warehouse): ``booking.event``
    (migration 0019), in the caller's transaction."""
    channel, fan_out = bus.sql_publish_target()
    if session.execute(text("SELECT booking.event(:id, :what, :channel, :fan_out)"),
                       {"id": a.id, "what": what, "channel": channel, "fan_out": fan_out}).scalar():
        bus.count_published(f"booking.appointment.{what}")


# ---------------------------------------------------------------- the periodic work

def expire_holds(session: Session) -> int:
    """Holds past their time give their place up (it returns at a random time); lapsed waitlist offers expire."""
    rows = session.execute(text(
        "UPDATE booking.appointment SET state = 'expired', ended_at = now(), held_until = NULL "
        "WHERE id IN (SELECT id FROM booking.appointment WHERE state = 'held' AND held_until <= now() "
        "             ORDER BY slot_id LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING waitlist_id"),
        {"n": TICK_BATCH}).scalars().all()
    lapsed = [w for w in rows if w]
    if lapsed:
        session.execute(text("UPDATE booking.waitlist SET state = 'expired', updated_at = now() WHERE id = ANY(:ids)"),
                        {"ids": lapsed})
    return len(rows)


def return_places(session: Session, *, limit: int = 50) -> int:
    """Places whose random return time has come: offered to the waitlist, else back in the pool."""
    due = session.execute(text(
        "SELECT id, slot_id FROM booking.seat_return WHERE done_at IS NULL AND return_at <= now() "
        "ORDER BY return_at LIMIT :n FOR UPDATE SKIP LOCKED"), {"n": limit}).all()
    for return_id, slot_id in due:
        session.execute(text("UPDATE booking.seat_return SET done_at = now() WHERE id = :id"), {"id": return_id})
        session.execute(text("UPDATE booking.slot SET withheld = withheld - 1 WHERE id = :id"), {"id": slot_id})
        full_slots.forget(slot_id)
        slot = session.get(Slot, slot_id)
        session.refresh(slot)
        if slot.state == "open" and slot.starts_at > datetime.now(UTC):
            _offer(session, slot)
    return len(due)


def mark_noshows(session: Session) -> int:
    """Bookings not checked in by the end of their slot plus the grace time become no-shows; each
    counts towards the person's blacklisting."""
    rows = session.execute(text(
        """UPDATE booking.appointment SET state = 'noshow', ended_at = now()
            WHERE id IN (
                SELECT a.id FROM booking.appointment a JOIN booking.slot s ON s.id = a.slot_id
                 WHERE a.state = 'booked'
                   AND s.ends_at + make_interval(mins => coalesce(
                         (SELECT r.noshow_grace_minutes FROM booking.rule_set r WHERE r.facility_code = a.facility_code),
                         (SELECT d.noshow_grace_minutes FROM booking.rule_set d WHERE d.facility_code = '*'))) < now()
                 ORDER BY a.id LIMIT :n FOR UPDATE OF a SKIP LOCKED)
        RETURNING id"""), {"n": TICK_BATCH}).scalars().all()
    for appointment_id in rows:
        a = session.get(Appointment, appointment_id)
        slot = session.get(Slot, a.slot_id)
        _event(session, "noshow", a)
        notify(session, a, "noshow", f"【SmartCare】您 {_when(slot)} 在 {slot.department_name} 的预约未签到，已记为爽约。"
                                     "多次爽约将暂停预约资格。")
        _count_towards_blacklist(session, a.empi_id, "noshow", fairness.effective(session, a.facility_code))
    return len(rows)


def send_reminders(session: Session) -> int:
    """One reminder per booking, ``reminder_hours`` before its slot."""
    due = session.execute(text(
        """SELECT a.id FROM booking.appointment a JOIN booking.slot s ON s.id = a.slot_id
             JOIN booking.rule_set d ON d.facility_code = '*'
             LEFT JOIN booking.rule_set f ON f.facility_code = a.facility_code
            WHERE a.state = 'booked' AND a.reminded_at IS NULL AND s.starts_at > now()
              AND s.starts_at <= now() + make_interval(hours => coalesce(f.reminder_hours, d.reminder_hours))
            LIMIT :n FOR UPDATE OF a SKIP LOCKED"""), {"n": TICK_BATCH}).scalars().all()
    for appointment_id in due:
        a = session.get(Appointment, appointment_id)
        slot = session.get(Slot, a.slot_id)
        notify(session, a, "reminder", f"【SmartCare】就诊提醒：{_when(slot)} {slot.department_name}"
                                       f"{'（' + slot.practitioner_name + '）' if slot.practitioner_name else ''}，"
                                       f"预约号 {a.appointment_no}。请提前到院扫电子健康卡签到。")
        a.reminded_at = func.now()
    session.flush()
    return len(due)


def tick() -> dict[str, int]:
    """One round of the periodic work, each task in its own transaction; one process at a time does it."""
    done = {}
    for task in (expire_holds, return_places, mark_noshows, send_reminders):
        done[task.__name__] = 0
        while True:  # small transactions: the slots' rows they lock are the ones people are booking
            with session_scope() as session:
                if not session.execute(text("SELECT pg_try_advisory_xact_lock(hashtext('booking.tick'))")).scalar():
                    return done
                n = task(session)
            done[task.__name__] += n
            if n < TICK_BATCH:
                break
    attempts.flush()
    return done


# ---------------------------------------------------------------- attempt counts (release-time load)

class AttemptCounter:
    """Booking attempts per hospital, minute and outcome, counted in memory and added to
    ``booking.attempt_stat`` every few seconds (one statement), so a burst does not queue on a counter row."""

    FLUSH_SECONDS = 5.0

    def __init__(self) -> None:
        self._counts: Counter = Counter()
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def count(self, facility: str, outcome: str) -> None:
        minute = int(time.time() // 60 * 60)
        with self._lock:
            self._counts[(facility, minute, outcome)] += 1
            due = time.monotonic() - self._last > self.FLUSH_SECONDS
            if due:
                self._last = time.monotonic()
        if due:  # on a thread of its own: the caller may be holding a slot's row
            threading.Thread(target=self.flush, name="booking-attempts", daemon=True).start()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts, self._last = self._counts, Counter(), time.monotonic()
        if not counts:
            return
        try:
            with session_scope() as session:
                driver(session).cursor().executemany(
                    "INSERT INTO booking.attempt_stat (facility_code, minute, outcome, count) "
                    "VALUES (%s, to_timestamp(%s), %s, %s) ON CONFLICT (facility_code, minute, outcome) "
                    "DO UPDATE SET count = booking.attempt_stat.count + EXCLUDED.count",
                    [(f, m, o, n) for (f, m, o), n in sorted(counts.items())])
        except Exception:
            log.exception("could not store booking attempt counts; they are lost")


attempts = AttemptCounter()


def appointments_for_warehouse(session: Session, *, numbers: list[str] | None = None, after_id: int = 0,
                               limit: int = 1000) -> list[dict]:
    """Booked appointments (by number, or the next ``limit`` after id ``after_id``) as the warehouse lands
    them; holds that were never booked are not appointments."""
    where = "appointment_no = ANY(:numbers)" if numbers is not None else "id > :after"
    return [dict(r._mapping) for r in session.execute(text(
        f"SELECT id, appointment_no, empi_id, facility_code, department_code, practitioner_code, visit_date, state, "
        f"booked_at FROM booking.appointment WHERE {where} AND booked_at IS NOT NULL ORDER BY id LIMIT :limit"),
        {"numbers": numbers, "after": after_id, "limit": limit})]
