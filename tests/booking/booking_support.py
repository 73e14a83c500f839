"""Helpers of the booking tests: a hospital's slots published through its signed API, residents with
health cards (their own and their children's), and time moved on by editing the clock-bearing rows."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text

from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import session_scope
from tests.healthcard.card_support import headers, issue, person, resident, signed

_ids = itertools.count()


@dataclass
class Booker:
    who: dict          # bearer headers (+ _user)
    card_no: str

    @property
    def h(self) -> dict:
        return headers(self.who)


def new_booker(client) -> Booker:
    who = resident(client)
    p = person()
    r = issue(client, who, name=p["name"], id_number=p["id_number"], phone=p["phone"])
    assert r.status_code == 201, r.text
    return Booker(who, r.json()["card_no"])


def department(hospital) -> str:
    with session_scope() as s:
        return s.execute(text("SELECT code FROM registry.department WHERE facility_code = :f ORDER BY code LIMIT 1"),
                         {"f": hospital[0]}).scalar()


def slot_body(hospital, *, start: datetime | None = None, capacity: int = 1, practitioner: str | None = None,
              dept: str | None = None, fee: int = 500, minutes: int = 15) -> dict:
    """A slot tomorrow at 09:00 China time (or ``start``) with a fresh hospital id."""
    start = start or datetime.combine(datetime.now(CHINA_TZ).date() + timedelta(days=1),
                                      datetime.min.time(), CHINA_TZ).replace(hour=9)
    return {"source_id": f"S{next(_ids)}-{int(start.timestamp())}", "department_code": dept or department(hospital),
            "practitioner_code": practitioner, "practitioner_name": "王医生" if practitioner else None,
            "title": "主任医师" if practitioner else "普通", "fee": fee, "starts_at": start.isoformat(),
            "ends_at": (start + timedelta(minutes=minutes)).isoformat(), "capacity": capacity}


def publish(client, hospital, *bodies: dict, released: bool = True) -> list[int]:
    """Publish slots; with ``released`` they are open for booking at once (release time moved to the past)."""
    r = signed(client, hospital, "PUT", "/api/v1/booking/hospital/slots", {"slots": list(bodies)})
    assert r.status_code == 200, r.text
    out = r.json()
    assert all(c["outcome"] != "error" for c in out), out
    ids = [c["slot_id"] for c in out]
    if released:
        with session_scope() as s:
            s.execute(text("UPDATE booking.slot SET release_at = now() - interval '1 minute' WHERE id = ANY(:ids)"),
                      {"ids": ids})
    return ids


def hold(client, booker: Booker, slot_id: int, *, confirm: bool = False, card_no: str | None = None):
    return client.post("/api/v1/booking/appointments", headers=booker.h,
                       json={"slot_id": slot_id, "card_no": card_no or booker.card_no, "confirm": confirm})


def sql(statement: str, **params):
    with session_scope() as s:
        result = s.execute(text(statement), params)
        return result.all() if result.returns_rows else None


def at(days: int = 1, hour: int = 9, minute: int = 0) -> datetime:
    """A time ``days`` from today at ``hour:minute`` China time."""
    return datetime.combine(datetime.now(CHINA_TZ).date() + timedelta(days=days), datetime.min.time(),
                            CHINA_TZ).replace(hour=hour, minute=minute)


def rules(client, admin: dict, facility: str, **values):
    r = client.put(f"/api/v1/booking/rules/{facility}", json=values, headers=admin)
    assert r.status_code == 200, r.text
    return r.json()


def admin_headers(client) -> dict:
    token = client.post("/api/v1/auth/token", json={"username": "admin", "password": "smartcare-admin"}).json()
    return {"Authorization": f"Bearer {token['access_token']}"}
