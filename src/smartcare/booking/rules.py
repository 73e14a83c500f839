"""Fairness rules as data: the region's default rule set and each hospital's overrides, in
``booking.rule_set``. Changed through the API or ``smartcare booking rules set``; every change audited.

A hospital's effective rules are the SQL function ``booking.rules_of`` (migration 0019): a booking attempt
reads them in its own statement, so a change applies to attempts at once; elsewhere a process keeps them a few
seconds (``effective``), and a change applies there within that time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from datetime import time as time_of_day

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from smartcare.booking.models import RuleSet, Slot
from smartcare.platform import audit
from smartcare.platform.errors import InvalidInput
from smartcare.registry import service as registry

DEFAULT = "*"
CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Rules:
    release_time: time_of_day          # slots of day D open at this time on day D − release_days
    release_days: int
    hold_minutes: int                  # a hold lasts this long before it expires
    per_day: int                       # active bookings per person per visit day, in the whole region
    per_department: int                # … per visit day in one department of one hospital
    per_doctor: int                    # … per visit day with one doctor
    cancel_deadline_minutes: int       # a resident cancels up to this long before the slot starts
    noshow_limit: int                  # this many no-shows within window_days → blacklisted
    cancel_limit: int                  # this many cancellations within window_days → blacklisted
    window_days: int
    blacklist_days: int                # how long a blacklisting lasts
    return_min_seconds: int            # a freed place comes back after a random delay in this range
    return_max_seconds: int
    offer_minutes: int                 # a waitlist offer is held this long for the resident to accept
    noshow_grace_minutes: int          # a booking not checked in this long after its slot ends is a no-show
    reminder_hours: int                # reminders go out this long before the slot


NAMES = tuple(f.name for f in fields(Rules))
#: allowed values (the table's CHECK constraints say the same, so hand-written SQL is held to them too)
RANGES = {"release_days": (0, 90), "hold_minutes": (1, 60), "per_day": (1, 20), "per_department": (1, 20),
          "per_doctor": (1, 20), "cancel_deadline_minutes": (0, 10080), "noshow_limit": (1, 100),
          "cancel_limit": (1, 100), "window_days": (1, 730), "blacklist_days": (1, 730),
          "return_min_seconds": (0, 86400), "return_max_seconds": (0, 86400), "offer_minutes": (1, 1440),
          "noshow_grace_minutes": (0, 1440), "reminder_hours": (1, 168)}
_cache: dict[str, tuple[float, Rules]] = {}


def effective(session: Session, facility_code: str) -> Rules:
    """The hospital's rules: its overrides over the region's default (a hospital without any: the default),
    as ``booking.rules_of`` says."""
    hit = _cache.get(facility_code)
    if hit and hit[0] > time.monotonic():
        return hit[1]
    row = session.execute(text("SELECT * FROM booking.rules_of(:f)"), {"f": facility_code}).mappings().one()
    rules = Rules(**{n: row[n] for n in NAMES})
    _cache[facility_code] = (time.monotonic() + CACHE_SECONDS, rules)
    return rules


def _parse(name: str, value) -> object:
    if name not in NAMES:
        raise InvalidInput(f"unknown rule {name!r}", field=name, hint=f"one of {', '.join(NAMES)}")
    if value is None:
        return None
    if name == "release_time":
        try:
            return value if isinstance(value, time_of_day) else time_of_day.fromisoformat(str(value))
        except ValueError:
            raise InvalidInput(f"release_time {value!r} is not a time of day like 08:00", field=name) from None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"rule {name} must be a whole number, not {value!r}", field=name) from None
    low, high = RANGES[name]
    if not low <= number <= high:
        raise InvalidInput(f"rule {name} must be between {low} and {high}, not {number}", field=name)
    return number


def set_rules(session: Session, *, facility_code: str, values: dict, actor: str) -> Rules:
    """Set (or with ``None`` clear back to the default) some rules of a hospital or of the region (``*``).
    The database's checks refuse values out of range; the error names the rule."""
    parsed = {name: _parse(name, value) for name, value in values.items()}
    if facility_code != DEFAULT:
        registry.get_facility(session, facility_code)  # NotFound names the code
    if facility_code == DEFAULT and any(v is None for v in parsed.values()):
        raise InvalidInput("the region's default rules cannot be cleared", field="facility_code")
    row = session.get(RuleSet, facility_code) or RuleSet(facility_code=facility_code)
    before = {n: getattr(row, n) for n in parsed}
    for name, value in parsed.items():
        setattr(row, name, value)
    row.updated_by = actor
    session.add(row)
    try:
        with session.begin_nested():
            session.flush()
    except Exception as exc:  # the table's CHECKs name the offending column
        raise InvalidInput(f"rules out of range: {str(getattr(exc, 'orig', exc)).splitlines()[0]}",
                           field=",".join(parsed)) from None
    _cache.clear()
    rules = effective(session, facility_code)
    if rules.return_min_seconds > rules.return_max_seconds:
        _cache.clear()  # the caller rolls back: nothing of this may stay cached
        raise InvalidInput(f"return_min_seconds ({rules.return_min_seconds}) is above return_max_seconds "
                           f"({rules.return_max_seconds}) for {facility_code}", field="return_min_seconds")
    audit.record(session, actor=actor, action="booking.rules.set", target=facility_code,
                 detail={n: [str(before[n]), str(v)] for n, v in parsed.items()})
    if {"release_time", "release_days"} & parsed.keys():
        _move_releases(session, facility_code)
    return rules


def _move_releases(session: Session, facility_code: str) -> None:
    """Slots not released yet follow a changed release rule (the region's default: every hospital's)."""
    from smartcare.booking.service import release_time  # the service builds on the rules

    q = select(Slot).where(Slot.release_at > func.now(), Slot.state == "open")
    if facility_code != DEFAULT:
        q = q.where(Slot.facility_code == facility_code)
    for slot in session.scalars(q):
        slot.release_at = min(release_time(effective(session, slot.facility_code), slot.visit_date), slot.starts_at)
    session.flush()
