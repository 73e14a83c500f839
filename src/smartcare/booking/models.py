"""Tables of booking (schema ``booking``); DDL and the triggers that keep a slot's places in migration 0011."""

from __future__ import annotations

from datetime import date, datetime, time

from sqlalchemy import BigInteger, Date, DateTime, ForeignKey, Integer, String, Text, Time, func, text
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "booking"


class RuleSet(Base):
    """Fairness rules of one hospital (``*``: the region's default); a NULL column takes the default's value."""

    __tablename__ = "rule_set"
    __table_args__ = {"schema": SCHEMA}

    facility_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    release_time: Mapped[time | None] = mapped_column(Time)
    release_days: Mapped[int | None] = mapped_column(Integer)
    hold_minutes: Mapped[int | None] = mapped_column(Integer)
    per_day: Mapped[int | None] = mapped_column(Integer)
    per_department: Mapped[int | None] = mapped_column(Integer)
    per_doctor: Mapped[int | None] = mapped_column(Integer)
    cancel_deadline_minutes: Mapped[int | None] = mapped_column(Integer)
    noshow_limit: Mapped[int | None] = mapped_column(Integer)
    cancel_limit: Mapped[int | None] = mapped_column(Integer)
    window_days: Mapped[int | None] = mapped_column(Integer)
    blacklist_days: Mapped[int | None] = mapped_column(Integer)
    return_min_seconds: Mapped[int | None] = mapped_column(Integer)
    return_max_seconds: Mapped[int | None] = mapped_column(Integer)
    offer_minutes: Mapped[int | None] = mapped_column(Integer)
    noshow_grace_minutes: Mapped[int | None] = mapped_column(Integer)
    reminder_hours: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_by: Mapped[str] = mapped_column(String(64), default="system")


class Slot(Base):
    """A time slice (≤ 30 minutes) of one doctor or clinic with ``capacity`` places; ``taken`` is kept
    by the database from the appointments, ``withheld`` places are on their way back to the pool."""

    __tablename__ = "slot"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    facility_code: Mapped[str] = mapped_column(String(32))
    source_id: Mapped[str] = mapped_column(String(64))
    district_code: Mapped[str] = mapped_column(String(6))
    department_code: Mapped[str] = mapped_column(String(32))
    department_name: Mapped[str] = mapped_column(String(100))
    practitioner_code: Mapped[str | None] = mapped_column(String(32))
    practitioner_name: Mapped[str | None] = mapped_column(String(50))
    title: Mapped[str] = mapped_column(String(20))
    fee: Mapped[int] = mapped_column(BigInteger)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    visit_date: Mapped[date] = mapped_column(Date)
    capacity: Mapped[int] = mapped_column(Integer)
    taken: Mapped[int] = mapped_column(Integer, default=0)
    withheld: Mapped[int] = mapped_column(Integer, default=0)
    release_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(10), default="open")
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.taken - self.withheld) if self.state == "open" else 0


class Appointment(Base):
    __tablename__ = "appointment"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    appointment_no: Mapped[str] = mapped_column(String(24), unique=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.slot.id"))
    empi_id: Mapped[str] = mapped_column(String(20))
    card_no: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(64))
    facility_code: Mapped[str] = mapped_column(String(32))
    department_code: Mapped[str] = mapped_column(String(32))
    practitioner_code: Mapped[str | None] = mapped_column(String(32))
    visit_date: Mapped[date] = mapped_column(Date)
    state: Mapped[str] = mapped_column(String(12))
    held_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    waitlist_id: Mapped[int | None] = mapped_column(BigInteger)
    cancelled_by: Mapped[str | None] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    booked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reminded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    change_seq: Mapped[int] = mapped_column(BigInteger, server_default=text("nextval('booking.appointment_change')"))


class SeatReturn(Base):
    __tablename__ = "seat_return"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.slot.id"))
    return_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WaitlistEntry(Base):
    __tablename__ = "waitlist"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    empi_id: Mapped[str] = mapped_column(String(20))
    card_no: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(64))
    facility_code: Mapped[str] = mapped_column(String(32))
    department_code: Mapped[str] = mapped_column(String(32))
    practitioner_code: Mapped[str | None] = mapped_column(String(32))
    visit_date: Mapped[date] = mapped_column(Date)
    state: Mapped[str] = mapped_column(String(10), default="waiting")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Blacklisting(Base):
    __tablename__ = "blacklist"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    empi_id: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(10))
    events: Mapped[int] = mapped_column(Integer, default=0)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lifted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lifted_by: Mapped[str | None] = mapped_column(String(64))


class Notification(Base):
    """What the notification gateway sent (the demo gateway only records it here and in the log)."""

    __tablename__ = "notification"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    appointment_id: Mapped[int | None] = mapped_column(ForeignKey(f"{SCHEMA}.appointment.id"))
    kind: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
