"""Booking HTTP API: anyone searches the pool; residents hold, book and cancel (for themselves or a
child whose card they hold) and wait; hospitals (HMAC-signed) publish and withdraw slots, read their
appointments and check patients in; administrators set the fairness rules and lift blacklistings."""

from __future__ import annotations

import asyncio
import weakref
from datetime import UTC, date, datetime

from fastapi import Depends, Path, Query
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from smartcare.booking import rules as fairness, service, stats, throttle
from smartcare.booking.models import Appointment, Slot, WaitlistEntry
from smartcare.booking.schemas import (
    AppointmentOut, BlacklistOut, CheckInIn, HoldIn, HospitalAppointmentOut, LiftIn, NotificationOut, RulesIn,
    SlotChangeOut, SlotOut, SlotsIn, WaitlistIn, WaitlistOut, WithdrawIn,
)
from smartcare.platform.auth import Principal, Role
from smartcare.platform.db import POOL_SIZE, session_scope
from smartcare.registry import service as registry
from smartcare.web.deps import db, require, signed_client
from smartcare.web.routing import Router

router = Router(prefix="/api/v1/booking", tags=["booking"])
RESIDENT = require(Role.RESIDENT, Role.ADMIN)
ADMIN = require(Role.ADMIN)


def _id():
    """A path id: a PostgreSQL bigint (a fresh FieldInfo per parameter: FastAPI binds it to the name)."""
    return Path(ge=1, le=2**63 - 1)


#: one per process: see ``booking.throttle``
gate = throttle.from_settings()
#: Booking transactions at once per process (per event loop): no more than the connection pool keeps, so a
#: release burst queues here, in order, instead of on the pool (unfair waits, connections opened and closed).
DB_CONCURRENCY = POOL_SIZE
_db_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


async def in_db(fn, *args):
    """Run ``fn`` in the thread pool when one of this process's booking transaction slots is free (the
    API and the H5 page both book through here)."""
    lane = _db_slots.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(DB_CONCURRENCY))
    async with lane:
        return await run_in_threadpool(fn, *args)


def slot_out(slot: Slot, names: dict[str, str] | None = None) -> SlotOut:
    return SlotOut(id=slot.id, facility_code=slot.facility_code, facility_name=(names or {}).get(slot.facility_code),
                   district_code=slot.district_code, department_code=slot.department_code,
                   department_name=slot.department_name, practitioner_code=slot.practitioner_code,
                   practitioner_name=slot.practitioner_name, title=slot.title, fee=slot.fee, starts_at=slot.starts_at,
                   ends_at=slot.ends_at, visit_date=slot.visit_date, capacity=slot.capacity, free=slot.free,
                   release_at=slot.release_at, released=slot.release_at <= datetime.now(UTC), state=slot.state)


def appointment_out(a: Appointment | service.Place, slot: Slot | service.Place) -> AppointmentOut:
    return AppointmentOut(appointment_no=a.appointment_no, state=a.state, slot_id=a.slot_id, card_no=a.card_no,
                          facility_code=a.facility_code, department_code=a.department_code,
                          department_name=slot.department_name, practitioner_name=slot.practitioner_name,
                          starts_at=slot.starts_at, ends_at=slot.ends_at, fee=slot.fee, held_until=a.held_until,
                          cancelled_by=a.cancelled_by, created_at=a.created_at)


def _waitlist_out(e: WaitlistEntry) -> WaitlistOut:
    return WaitlistOut(id=e.id, card_no=e.card_no, facility_code=e.facility_code, department_code=e.department_code,
                       practitioner_code=e.practitioner_code, visit_date=e.visit_date, state=e.state,
                       created_at=e.created_at)


# ---------------------------------------------------------------- the pool

@router.get("/slots", response_model=list[SlotOut])
def search_slots(district: str | None = None, facility: str | None = None, department: str | None = None,
                 practitioner: str | None = None, date_from: date | None = None, date_to: date | None = None,
                 title: str | None = None, fee_max: int | None = Query(None, ge=0, le=2**63 - 1),
                 available: bool = False, limit: int = Query(100, ge=1, le=500), offset: int = Query(0, ge=0, le=100_000),
                 session: Session = Depends(db)):
    """Open slots by district, hospital, department, doctor, date, fee level and fee (``available``:
    released and with a free place)."""
    slots = service.search(session, district_code=district, facility_code=facility, department_code=department,
                           practitioner_code=practitioner, date_from=date_from, date_to=date_to, title=title,
                           fee_max=fee_max, available=available, limit=limit, offset=offset)
    names = registry.facility_names(session, {s.facility_code for s in slots})
    return [slot_out(s, names) for s in slots]


@router.get("/slots/{slot_id}", response_model=SlotOut)
def get_slot(slot_id: int = _id(), session: Session = Depends(db)):
    slot = service.get_slot(session, slot_id)
    return slot_out(slot, registry.facility_names(session, [slot.facility_code]))


# ---------------------------------------------------------------- residents

def _attempt(account: str, data: HoldIn) -> AppointmentOut:
    place = service.attempt(account=account, card_no=data.card_no, slot_id=data.slot_id, book=data.confirm)
    return appointment_out(place, place)


@router.post("/appointments", response_model=AppointmentOut, status_code=201,
             responses={409: {"description": "no_slot, not_released, limit_reached or already holding"},
                        403: {"description": "blacklisted, or not your card"}, 429: {"description": "too many attempts"}})
async def hold(data: HoldIn, who: Principal = Depends(RESIDENT)):
    """Hold a place of a slot for a few minutes (``confirm``: book it at once)."""
    await gate.admit(who.username)
    service.refuse_if_known_full(data.slot_id)  # on the event loop: no thread, no database
    return await in_db(_attempt, who.username, data)


@router.post("/appointments/{appointment_no}/confirm", response_model=AppointmentOut)
async def confirm(appointment_no: str, who: Principal = Depends(RESIDENT)):
    """Book a held place (a hold of yours, or a waitlist offer)."""
    await gate.admit(who.username)

    def run() -> AppointmentOut:
        with session_scope() as session:
            a = service.confirm(session, account=who.username, appointment_no=appointment_no)
            return appointment_out(a, session.get(Slot, a.slot_id))

    return await in_db(run)


@router.post("/appointments/{appointment_no}/cancel", response_model=AppointmentOut)
def cancel(appointment_no: str, session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    a = service.cancel(session, account=who.username, appointment_no=appointment_no)
    return appointment_out(a, session.get(Slot, a.slot_id))


@router.get("/me/appointments", response_model=list[AppointmentOut])
def my_appointments(session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    return [appointment_out(a, s) for a, s in service.my_appointments(session, account=who.username)]


@router.get("/me/appointments/{appointment_no}", response_model=AppointmentOut)
def my_appointment(appointment_no: str, session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    return appointment_out(*service.get_mine(session, account=who.username, appointment_no=appointment_no))


@router.post("/waitlist", response_model=WaitlistOut, status_code=201)
def join_waitlist(data: WaitlistIn, session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    """Wait for a place of a department (or one doctor) on a day; a freed place is offered to the first
    eligible person waiting and held for them (see your notifications), to confirm like a hold."""
    patient = service.patient(session, account=who.username, card_no=data.card_no)
    return _waitlist_out(service.join_waitlist(session, who=patient, facility_code=data.facility_code,
                                               department_code=data.department_code,
                                               practitioner_code=data.practitioner_code, visit_date=data.visit_date))


@router.delete("/waitlist/{entry_id}", response_model=WaitlistOut)
def leave_waitlist(entry_id: int = _id(), session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    return _waitlist_out(service.leave_waitlist(session, account=who.username, entry_id=entry_id))


@router.get("/me/waitlist", response_model=list[WaitlistOut])
def my_waitlist(session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    return [_waitlist_out(e) for e in service.my_waitlist(session, account=who.username)]


@router.get("/me/notifications", response_model=list[NotificationOut])
def my_notifications(session: Session = Depends(db), who: Principal = Depends(RESIDENT)):
    return [NotificationOut(kind=n.kind, text=n.text, created_at=n.created_at)
            for n in service.notifications(session, account=who.username)]


# ---------------------------------------------------------------- hospitals

@router.put("/hospital/slots", response_model=list[SlotChangeOut])
def publish_slots(data: SlotsIn, session: Session = Depends(db), who: Principal = Depends(signed_client)):
    """Publish or update slots by the hospital's own ids; each slot's outcome is reported on its own."""
    changes = service.publish_slots(session, facility_code=who.facility(), slots=data.slots, actor=who.username)
    return [SlotChangeOut(**vars(c)) for c in changes]


@router.post("/hospital/slots/{source_id}/withdraw", response_model=SlotOut)
def withdraw_slot(source_id: str, data: WithdrawIn, session: Session = Depends(db),
                  who: Principal = Depends(signed_client)):
    """停诊: the slot leaves the pool; its bookings are cancelled and the residents told."""
    return slot_out(service.withdraw_slot(session, facility_code=who.facility(), source_id=source_id,
                                          actor=who.username, reason=data.reason))


@router.get("/hospital/appointments", response_model=list[HospitalAppointmentOut])
def hospital_appointments(visit_date: date | None = None, since: str = Query("0.0", max_length=42),
                          limit: int = Query(500, ge=1, le=2000), session: Session = Depends(db),
                          who: Principal = Depends(signed_client)):
    """The hospital's booked appointments changed after the cursor ``since``, oldest change first: poll
    with the last ``cursor`` seen. Every state change (booked, cancelled, checked in, no-show) moves an
    appointment to the end of the feed; none is skipped, however late its transaction commits."""
    rows = service.hospital_appointments(session, facility_code=who.facility(), visit_date=visit_date,
                                         since=since, limit=limit)
    return [_hospital_out(a, s, cursor) for a, s, cursor in rows]


def _hospital_out(a: Appointment, s: Slot, cursor: str | None = None) -> HospitalAppointmentOut:
    return HospitalAppointmentOut(**appointment_out(a, s).model_dump(), cursor=cursor, empi_id=a.empi_id,
                                  slot_source_id=s.source_id)


@router.post("/hospital/checkin", response_model=HospitalAppointmentOut)
def check_in(data: CheckInIn, session: Session = Depends(db), who: Principal = Depends(signed_client)):
    """Check a patient in by their scanned health-card QR (or the appointment number)."""
    a, s = service.check_in(session, facility_code=who.facility(), code=data.code, appointment_no=data.appointment_no)
    return _hospital_out(a, s)


# ---------------------------------------------------------------- administrators

@router.get("/rules/{facility_code}")
def get_rules(facility_code: str, session: Session = Depends(db), who: Principal = Depends(ADMIN)) -> dict:
    """The hospital's effective rules (``*``: the region's default)."""
    if facility_code != fairness.DEFAULT:
        registry.get_facility(session, facility_code)
    return {k: str(v) if k == "release_time" else v for k, v in vars(fairness.effective(session, facility_code)).items()}


@router.put("/rules/{facility_code}")
def set_rules(facility_code: str, data: RulesIn, session: Session = Depends(db), who: Principal = Depends(ADMIN)) -> dict:
    values = data.model_dump(exclude_unset=True)
    rules = fairness.set_rules(session, facility_code=facility_code, values=values, actor=who.username)
    return {k: str(v) if k == "release_time" else v for k, v in vars(rules).items()}


@router.get("/blacklist", response_model=list[BlacklistOut])
def get_blacklist(session: Session = Depends(db), who: Principal = Depends(ADMIN)):
    return [BlacklistOut.model_validate(e, from_attributes=True) for e in service.blacklist(session)]


@router.post("/blacklist/{entry_id}/lift", response_model=BlacklistOut)
def lift(data: LiftIn, entry_id: int = _id(), session: Session = Depends(db), who: Principal = Depends(ADMIN)):
    return BlacklistOut.model_validate(service.lift(session, entry_id=entry_id, actor=who.username, reason=data.reason),
                                       from_attributes=True)


@router.get("/stats")
def get_stats(days: int = Query(7, ge=1, le=60), session: Session = Depends(db), who: Principal = Depends(ADMIN)) -> dict:
    """Slot supply and booking rates per hospital and department, release-time load, blacklist size."""
    return stats.summary(session, days=days, slow_accounts=len(gate.slow_accounts()))
