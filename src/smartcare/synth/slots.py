"""Synthetic appointment slots: what a hospital's scheduling system would publish to the region's pool.
Each department opens a general clinic (普通号) every half hour of the morning and afternoon session, and
its senior doctors (主任 / 副主任医师) open expert slots of 15 minutes with a few places each. Deterministic
for a given hospital and day, so publishing them again changes nothing."""

from __future__ import annotations

import random
from datetime import date, datetime, time, timedelta

from smartcare.booking.schemas import SlotIn
from smartcare.platform.clock import CHINA_TZ

#: registration fee (挂号费/诊查费) in fen by fee level
FEES = {"普通": 1_000, "副主任医师": 2_500, "主任医师": 4_000}
SESSIONS = ((time(8, 0), time(11, 30)), (time(14, 0), time(17, 0)))


def slots_for(facility_code: str, departments: list[tuple[str, str]], doctors: list[tuple[str, str, str, str]],
              day: date) -> list[SlotIn]:
    """``departments``: (code, name); ``doctors``: (code, department code, name, title). Weekends: mornings only."""
    rng = random.Random(f"{facility_code}:{day.isoformat()}")
    sessions = SESSIONS[:1] if day.weekday() >= 5 else SESSIONS
    out = []
    for code, name in departments:
        for start, end in sessions:
            at = datetime.combine(day, start, CHINA_TZ)
            while at.time() < end:
                out.append(SlotIn(source_id=f"G-{code}-{at:%Y%m%d%H%M}", department_code=code, department_name=name,
                                  title="普通", fee=FEES["普通"], starts_at=at, ends_at=at + timedelta(minutes=30),
                                  capacity=rng.randint(4, 10)))
                at += timedelta(minutes=30)
    for doctor, department, name, title in doctors:
        if title not in FEES or rng.random() < 0.5:  # an expert sits in clinic about every other day
            continue
        start, _ = rng.choice(sessions)
        at = datetime.combine(day, start, CHINA_TZ)
        for _ in range(6):
            out.append(SlotIn(source_id=f"E-{doctor}-{at:%Y%m%d%H%M}", department_code=department,
                              practitioner_code=doctor, practitioner_name=name, title=title, fee=FEES[title],
                              starts_at=at, ends_at=at + timedelta(minutes=15), capacity=rng.randint(1, 3)))
            at += timedelta(minutes=15)
    return out
