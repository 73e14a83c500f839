"""What the console shows about booking: slot supply and booking rates per hospital and department,
the load of each release (attempts per minute by outcome), the blacklist."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.platform.clock import china_today
from smartcare.registry import service as registry


def summary(session: Session, *, days: int = 7, slow_accounts: int = 0) -> dict:
    """Visit days from today on, ``days`` of them."""
    days = max(1, min(days, 60))
    first = china_today()
    window = {"first": first, "last": first + timedelta(days=days - 1)}
    hospitals = [dict(r) for r in session.execute(text(
        """SELECT facility_code, count(*) AS slots, sum(capacity) AS places, sum(taken) AS taken,
                  sum(withheld) AS withheld, sum(capacity - taken - withheld) FILTER (WHERE release_at <= now()) AS free
             FROM booking.slot WHERE state = 'open' AND visit_date BETWEEN :first AND :last
            GROUP BY facility_code ORDER BY sum(taken) DESC LIMIT 50"""), window).mappings()]
    names = registry.facility_names(session, [h["facility_code"] for h in hospitals])
    for h in hospitals:
        h["name"] = names.get(h["facility_code"], h["facility_code"])
        h["rate"] = round(h["taken"] / h["places"], 3) if h["places"] else 0.0
    departments = [dict(r) for r in session.execute(text(
        """SELECT facility_code, department_name, sum(capacity) AS places, sum(taken) AS taken
             FROM booking.slot WHERE state = 'open' AND visit_date BETWEEN :first AND :last
            GROUP BY facility_code, department_name ORDER BY sum(taken) DESC LIMIT 20"""), window).mappings()]
    for d in departments:
        d["rate"] = round(d["taken"] / d["places"], 3) if d["places"] else 0.0
    outcomes = [dict(r) for r in session.execute(text(
        """SELECT state, count(*) AS n FROM booking.appointment WHERE visit_date BETWEEN :first AND :last
            GROUP BY state ORDER BY state"""), window).mappings()]
    load = [dict(r) for r in session.execute(text(
        """SELECT to_char(minute AT TIME ZONE 'UTC' + interval '8 hours', 'MM-DD HH24:MI') AS minute, outcome, sum(count) AS n
             FROM booking.attempt_stat WHERE minute > now() - interval '24 hours'
            GROUP BY minute, outcome ORDER BY minute, outcome""")).mappings()]
    blacklisted = session.execute(text(
        "SELECT count(DISTINCT empi_id) FROM booking.blacklist WHERE until > now() AND lifted_at IS NULL")).scalar()
    return {"first_day": first.isoformat(), "days": days, "hospitals": hospitals, "departments": departments,
            "appointments": outcomes, "release_load": load, "blacklisted": blacklisted, "slow_accounts": slow_accounts}
