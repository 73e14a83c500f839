"""API models of booking. Fees are integer fen; times are timezone-aware (a time without an offset is
read as China time); bad input names the field."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartcare.platform.clock import CHINA_TZ

#: hospitals' own ids appear in URL paths
SOURCE_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
#: slots are time-sliced (分时段): at most this long
MAX_SLOT = timedelta(minutes=30)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=CHINA_TZ)


class SlotIn(BaseModel):
    """One slot of a hospital, by its own id: sending it again updates it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    source_id: str = Field(min_length=1, max_length=64, pattern=SOURCE_ID)
    department_code: str = Field(min_length=1, max_length=32)
    department_name: str | None = Field(None, max_length=100, description="default: the registry's name of the department")
    practitioner_code: str | None = Field(None, max_length=32)
    practitioner_name: str | None = Field(None, max_length=50)
    title: str = Field("普通", min_length=1, max_length=20, description="fee level: 普通, 副主任医师, 主任医师, 知名专家 …")
    fee: int = Field(0, ge=0, le=1_000_000, description="registration fee, fen")
    starts_at: datetime
    ends_at: datetime
    capacity: int = Field(ge=0, le=1000)

    _aware = field_validator("starts_at", "ends_at")(_aware)

    @model_validator(mode="after")
    def _time_sliced(self) -> SlotIn:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        if self.ends_at - self.starts_at > MAX_SLOT:
            raise ValueError("a slot lasts at most 30 minutes (time-sliced booking); split it")
        return self


class SlotsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slots: list[SlotIn] = Field(min_length=1, max_length=5000)


class SlotChangeOut(BaseModel):
    source_id: str
    outcome: str
    slot_id: int | None = None
    error: str | None = None


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=200)


class SlotOut(BaseModel):
    id: int
    facility_code: str
    facility_name: str | None = None
    district_code: str
    department_code: str
    department_name: str
    practitioner_code: str | None
    practitioner_name: str | None
    title: str
    fee: int
    starts_at: datetime
    ends_at: datetime
    visit_date: date
    capacity: int
    free: int
    release_at: datetime
    released: bool
    state: str


class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot_id: int
    card_no: str = Field(min_length=1, max_length=32, description="the health card of the patient (yours or your child's)")
    confirm: bool = Field(False, description="book at once instead of holding the place first")


class AppointmentOut(BaseModel):
    appointment_no: str
    state: str
    slot_id: int
    card_no: str
    facility_code: str
    department_code: str
    department_name: str
    practitioner_name: str | None
    starts_at: datetime
    ends_at: datetime
    fee: int
    held_until: datetime | None
    cancelled_by: str | None = None
    created_at: datetime


class HospitalAppointmentOut(AppointmentOut):
    cursor: str | None = Field(None, description="where the feed stands after this row: pass it as ``since``")
    empi_id: str
    slot_source_id: str


class WaitlistIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    card_no: str = Field(min_length=1, max_length=32)
    facility_code: str = Field(min_length=1, max_length=32)
    department_code: str = Field(min_length=1, max_length=32)
    practitioner_code: str | None = Field(None, max_length=32, description="a doctor, or any doctor of the department")
    visit_date: date


class WaitlistOut(BaseModel):
    id: int
    card_no: str
    facility_code: str
    department_code: str
    practitioner_code: str | None
    visit_date: date
    state: str
    created_at: datetime


class CheckInIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str | None = Field(None, max_length=2000, description="the scanned health-card QR text")
    appointment_no: str | None = Field(None, max_length=24)


class NotificationOut(BaseModel):
    kind: str
    text: str
    created_at: datetime


class RulesIn(BaseModel):
    """Rules to set (``null`` clears a hospital's override back to the region's default)."""

    model_config = ConfigDict(extra="forbid")
    release_time: time | None = None
    release_days: int | None = None
    hold_minutes: int | None = None
    per_day: int | None = None
    per_department: int | None = None
    per_doctor: int | None = None
    cancel_deadline_minutes: int | None = None
    noshow_limit: int | None = None
    cancel_limit: int | None = None
    window_days: int | None = None
    blacklist_days: int | None = None
    return_min_seconds: int | None = None
    return_max_seconds: int | None = None
    offer_minutes: int | None = None
    noshow_grace_minutes: int | None = None
    reminder_hours: int | None = None


class BlacklistOut(BaseModel):
    id: int
    empi_id: str
    reason: str
    events: int
    since: datetime
    until: datetime
    lifted_at: datetime | None


class LiftIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=2, max_length=200)
