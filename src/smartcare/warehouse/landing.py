"""Landing: each source's records, as the warehouse keeps them (``warehouse.src_*``), read through the
owning capability's service or taken from its event. Every function is an idempotent upsert and returns
the :class:`Changes` it made, which :func:`smartcare.warehouse.service.apply` turns into facts.

Persons are observed as facts land: their district (EMPI golden record) and insurance type (from their
settlements) make a new SCD-2 row in ``src_person`` only when one of them changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.platform.db import driver

#: The first version of a person holds from here: facts older than their first observation still find one.
BEGINNING = datetime(1900, 1, 1, tzinfo=UTC)
#: Pulled sources (messages, card uses) are read again this far back each time, so rows that committed
#: late, or changed state (a message processed), are caught up.
PULL_OVERLAP = timedelta(minutes=2)


@dataclass
class Changes:
    """Source keys whose landing rows changed, per landing table (keys as text tuples)."""

    keys: dict[str, set[tuple[str, ...]]] = field(default_factory=dict)
    persons: set[str] = field(default_factory=set)

    def add(self, source: str, *key) -> None:
        self.keys.setdefault(source, set()).add(tuple(str(k) for k in key))

    def merge(self, other: Changes) -> Changes:
        for source, keys in other.keys.items():
            self.keys.setdefault(source, set()).update(keys)
        self.persons |= other.persons
        return self

    def __bool__(self) -> bool:
        return any(self.keys.values()) or bool(self.persons)

    def count(self) -> int:
        return sum(len(k) for k in self.keys.values())


def _upsert(session: Session, table: str, columns: tuple[str, ...], key: tuple[str, ...], rows: list[dict]) -> None:
    if not rows:
        return
    names = ", ".join(columns)
    values = ", ".join(f"%({c})s" for c in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    driver(session).cursor().executemany(
        f"INSERT INTO warehouse.{table} ({names}) VALUES ({values}) "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}", rows)


# ---------------------------------------------------------------- encounters (hub events)

_ENCOUNTER = """
INSERT INTO warehouse.src_encounter AS e (facility_code, encounter_id, empi_id, class, department_code,
    practitioner_code, start_at, end_at, recorded_at, status, surgeries)
VALUES (%(facility_code)s, %(encounter_id)s, %(empi_id)s, %(class)s, %(department_code)s, %(practitioner_code)s,
        CAST(%(start_at)s AS timestamptz), CAST(%(end_at)s AS timestamptz), CAST(%(recorded_at)s AS timestamptz),
        %(status)s, %(surgeries)s)
ON CONFLICT (facility_code, encounter_id) DO UPDATE SET
    -- a visit only moves forward (in progress → finished → cancelled): an event of the same or a later stage
    -- carries the hospital's correction and wins where it says something; an earlier one (late, redelivered)
    -- only fills what is still unknown
    empi_id = coalesce(excluded.empi_id, e.empi_id),
    class = CASE WHEN {later} THEN coalesce(excluded.class, e.class) ELSE coalesce(e.class, excluded.class) END,
    department_code = CASE WHEN {later} THEN coalesce(excluded.department_code, e.department_code)
                           ELSE coalesce(e.department_code, excluded.department_code) END,
    practitioner_code = CASE WHEN {later} THEN coalesce(excluded.practitioner_code, e.practitioner_code)
                             ELSE coalesce(e.practitioner_code, excluded.practitioner_code) END,
    start_at = CASE WHEN {later} THEN coalesce(excluded.start_at, e.start_at) ELSE coalesce(e.start_at, excluded.start_at) END,
    end_at = CASE WHEN {later} THEN coalesce(excluded.end_at, e.end_at) ELSE coalesce(e.end_at, excluded.end_at) END,
    recorded_at = least(e.recorded_at, excluded.recorded_at),
    surgeries = CASE WHEN {later} THEN excluded.surgeries ELSE e.surgeries END,
    status = CASE WHEN {later} THEN excluded.status ELSE e.status END,
    landed_at = now()
""".format(later="warehouse.visit_stage(excluded.status) >= warehouse.visit_stage(e.status)")


def land_encounters(session: Session, rows: list[dict]) -> Changes:
    """Visits as the hub's ``encounter.recorded`` events carry them (with the EMPI id already resolved and
    ``recorded_at``, when the event happened). Unknown values stay NULL until an event says them."""
    changes = Changes()
    rows = [r for r in rows if r.get("encounter_id")]
    if rows:
        driver(session).cursor().executemany(_ENCOUNTER, [{"surgeries": 0, **r} for r in rows])
    for r in rows:
        changes.add("encounter", r["facility_code"], r["encounter_id"])
    observe_persons(session, {r["empi_id"]: (None, None) for r in rows if r.get("empi_id")}, changes)
    return changes


# ---------------------------------------------------------------- documents (records + quality)

_DOCUMENT_COLUMNS = ("record_id", "facility_code", "type_code", "empi_id", "service_at", "received_at", "current",
                     "qc_score")


def land_documents(session: Session, docs: list[dict], items: list[dict], scores: dict[int, float]) -> Changes:
    changes = Changes()
    if not docs:
        return changes
    ids = [d["record_id"] for d in docs]
    _upsert(session, "src_document", _DOCUMENT_COLUMNS, ("record_id",),
            [{**d, "qc_score": scores.get(d["record_id"])} for d in docs])
    session.execute(text("DELETE FROM warehouse.src_document_item WHERE record_id = ANY(:ids)"), {"ids": ids})
    if items:
        driver(session).cursor().executemany(
            "INSERT INTO warehouse.src_document_item (record_id, position, kind, code, name, value_number, unit, at) "
            "VALUES (%(record_id)s, %(position)s, %(kind)s, %(code)s, %(name)s, %(value_number)s, %(unit)s, %(at)s)",
            items)
    for record_id in ids:
        changes.add("document", record_id)
    observe_persons(session, {d["empi_id"]: (None, None) for d in docs if d.get("empi_id")}, changes)
    return changes


# ---------------------------------------------------------------- settlements and their charges (payment)

_SETTLEMENT_COLUMNS = ("settlement_no", "facility_code", "bill_no", "encounter_id", "empi_id", "insurance_type",
                       "state", "settled_at", "total", "fund_pay", "account_pay", "insurer_pay", "cash_pay", "insurer",
                       "channel")


def land_settlements(session: Session, settlements: list[dict], lines: list[dict]) -> Changes:
    """A completed settlement lands with its bill's lines as charges; a compensated one, or one refunded
    in full, takes its charges away (they were never paid for)."""
    changes = Changes()
    if not settlements:
        return changes
    _upsert(session, "src_settlement", _SETTLEMENT_COLUMNS, ("settlement_no",), settlements)
    numbers = [s["settlement_no"] for s in settlements]
    old = session.execute(text("DELETE FROM warehouse.src_charge WHERE settlement_no = ANY(:n) "
                               "RETURNING facility_code, bill_no"), {"n": numbers}).all()
    by_bill: dict[int, list[dict]] = {}
    for line in lines:
        by_bill.setdefault(line["bill_id"], []).append(line)
    charges = [{"facility_code": s["facility_code"], "bill_no": s["bill_no"], "line": line["line"],
                "settlement_no": s["settlement_no"], "encounter_id": s["encounter_id"], "empi_id": s["empi_id"],
                "code": line["code"], "name": line["name"], "category": line["category"], "amount": line["amount"],
                "charged_at": s["settled_at"]}
               for s in settlements if s["state"] == "completed" and s["total"] > 0
               for line in by_bill.get(s["bill_id"], [])]
    _upsert(session, "src_charge", ("facility_code", "bill_no", "line", "settlement_no", "encounter_id", "empi_id",
                                    "code", "name", "category", "amount", "charged_at"),
            ("facility_code", "bill_no", "line"), charges)
    for s in settlements:
        changes.add("settlement", s["settlement_no"])
        changes.add("charge", s["facility_code"], s["bill_no"])
    for facility_code, bill_no in old:
        changes.add("charge", facility_code, bill_no)
    observe_persons(session, {s["empi_id"]: (s["insurance_type"], s["settled_at"])  # the latest one per person
                              for s in sorted(settlements, key=lambda s: s["settled_at"])
                              if s.get("empi_id") and s["insurance_type"] != "none"}, changes)
    return changes


# ---------------------------------------------------------------- bookings

_BOOKING_COLUMNS = ("appointment_no", "empi_id", "facility_code", "department_code", "practitioner_code", "visit_date",
                    "state", "booked_at")


def land_bookings(session: Session, appointments: list[dict]) -> Changes:
    changes = Changes()
    _upsert(session, "src_booking", _BOOKING_COLUMNS, ("appointment_no",), appointments)
    for a in appointments:
        changes.add("booking", a["appointment_no"])
    observe_persons(session, {a["empi_id"]: (None, None) for a in appointments}, changes)
    return changes


# ---------------------------------------------------------------- pulled: messages and card uses

_MESSAGE_COLUMNS = ("message_id", "facility_code", "sender", "kind", "message_type", "state", "received_at",
                    "processed_at")
_CARD_USE_COLUMNS = ("use_id", "card_id", "facility_code", "step", "channel", "used_at")


def _land_changed(session: Session, table: str, columns: tuple[str, ...], key: str, rows: list[dict]) -> list:
    """Upsert rows, returning the keys of those that were new or differed (an unchanged re-read is no change)."""
    if not rows:
        return []
    names = ", ".join(columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
    differs = " OR ".join(f"t.{c} IS DISTINCT FROM excluded.{c}" for c in columns if c != key)
    cur = driver(session).cursor()
    changed = []
    for start in range(0, len(rows), 1000):
        part = rows[start:start + 1000]
        cur.execute(f"INSERT INTO warehouse.{table} AS t ({names}) SELECT {names} FROM jsonb_populate_recordset("
                    f"NULL::warehouse.{table}, %(rows)s::jsonb) ON CONFLICT ({key}) DO UPDATE SET {updates} "
                    f"WHERE {differs} RETURNING {key}", {"rows": _json(part)})
        changed += [r[0] for r in cur.fetchall()]
    return changed


def _json(rows: list[dict]) -> str:
    return orjson.dumps(rows, default=str).decode()


def land_messages(session: Session, rows: list[dict]) -> Changes:
    changes = Changes()
    for message_id in _land_changed(session, "src_message", _MESSAGE_COLUMNS, "message_id", rows):
        changes.add("message", message_id)
    return changes


def land_card_uses(session: Session, rows: list[dict]) -> Changes:
    changes = Changes()
    for use_id in _land_changed(session, "src_card_use", _CARD_USE_COLUMNS, "use_id", rows):
        changes.add("card_use", use_id)
    return changes


def watermark(session: Session, source: str, *, now: datetime) -> datetime:
    """Where the next pull of ``source`` starts (its overlap included); a new warehouse starts now (its
    history comes by ``backfill``)."""
    read_to = session.scalar(text("SELECT read_to FROM warehouse.watermark WHERE source = :s FOR UPDATE"),
                             {"s": source})
    return (read_to or now) - PULL_OVERLAP


def advance(session: Session, source: str, to: datetime) -> None:
    session.execute(text("INSERT INTO warehouse.watermark (source, read_to) VALUES (:s, :t) "
                         "ON CONFLICT (source) DO UPDATE SET read_to = greatest(watermark.read_to, excluded.read_to)"),
                    {"s": source, "t": to})


# ---------------------------------------------------------------- persons (SCD type 2 observations)

def observe_persons(session: Session, seen: dict[str, tuple[str | None, datetime | None]], changes: Changes) -> None:
    """Record what persons look like: ``seen`` maps an EMPI id to (insurance type if this source knows it,
    when that was so). District, birth year and sex come from the EMPI now. An insurance change starts a
    version at the source's time, a district change one at the present (the EMPI tells only the present);
    an observation older than the person's latest version (a late or repeated event) changes nothing, so
    versions never flip back and redeliveries add none. Birth year and sex are mended in every version."""
    if not seen:
        return
    from smartcare.empi import service as empi

    profiles = empi.profiles(session, seen)
    latest = {r.empi_id: r for r in session.execute(text(
        "SELECT DISTINCT ON (empi_id) empi_id, valid_from, birth_year, sex, district_code, insurance_type "
        "FROM warehouse.src_person WHERE empi_id = ANY(:ids) ORDER BY empi_id, valid_from DESC"),
        {"ids": list(seen)})}
    rows, mended = [], []
    now = datetime.now(UTC)
    for empi_id, (insurance_type, at) in seen.items():
        profile, last = profiles.get(empi_id, {}), latest.get(empi_id)
        at = at or now
        if last is not None and at < last.valid_from:
            continue
        birth_year, sex = (profile.get("birth_year"), profile.get("sex")) if profile else \
            ((last.birth_year, last.sex) if last else (None, None))
        insurance = insurance_type or (last.insurance_type if last else None)
        district = profile.get("district_code") or (last.district_code if last else None)
        versions: dict[datetime, tuple] = {}
        if last is None:
            versions[BEGINNING] = (district, insurance)
        else:
            if insurance != last.insurance_type:
                versions[at] = (last.district_code, insurance)
            if district != last.district_code:
                versions[max(at, now)] = (district, insurance)
            if (last.birth_year, last.sex) != (birth_year, sex):
                mended.append({"e": empi_id, "b": birth_year, "s": sex})
        for valid_from, (district_code, insurance_code) in versions.items():
            rows.append({"empi_id": empi_id, "valid_from": valid_from, "birth_year": birth_year, "sex": sex,
                         "district_code": district_code, "insurance_type": insurance_code})
        if versions or (last is not None and mended and mended[-1]["e"] == empi_id):
            changes.persons.add(empi_id)
    _upsert(session, "src_person", ("empi_id", "valid_from", "birth_year", "sex", "district_code", "insurance_type"),
            ("empi_id", "valid_from"), rows)
    if mended:
        session.execute(text("UPDATE warehouse.src_person SET birth_year = :b, sex = :s WHERE empi_id = :e"), mended)
