"""Helpers of the warehouse tests: small synthetic activity at real registry hospitals, the keys of
everything landed (as the live load names them), and a snapshot of the star schema to compare."""

from __future__ import annotations

from datetime import date

from sqlalchemy import text

from smartcare.synth.activity import Hospital
from smartcare.warehouse import service
from smartcare.warehouse.landing import Changes

KEYS = {
    "encounter": "SELECT facility_code, encounter_id FROM warehouse.src_encounter",
    "charge": "SELECT DISTINCT facility_code, bill_no FROM warehouse.src_charge",
    "settlement": "SELECT settlement_no FROM warehouse.src_settlement",
    "document": "SELECT record_id FROM warehouse.src_document",
    "message": "SELECT message_id FROM warehouse.src_message",
    "card_use": "SELECT use_id FROM warehouse.src_card_use",
    "booking": "SELECT appointment_no FROM warehouse.src_booking",
}


def small_hospitals(session, n: int = 2) -> list[Hospital]:
    """Registry hospitals with a handful of beds each (so a day is tens of visits, not thousands)."""
    chosen = service.synthetic_hospitals(session, limit=n)
    return [Hospital(h.code, h.level, 6 + 4 * i, h.district_code, h.departments[:3]) for i, h in enumerate(chosen)]


def landed_keys(session, where: dict[str, str] | None = None) -> Changes:
    changes = Changes()
    for source, sql in KEYS.items():
        extra = (where or {}).get(source)
        for row in session.execute(text(sql + (f" WHERE {extra}" if extra else ""))):
            changes.add(source, *row)
    changes.persons = set(session.scalars(text("SELECT DISTINCT empi_id FROM warehouse.src_person")))
    return changes


def snapshot(session) -> dict[str, list[tuple]]:
    """Every row of every dimension, fact and mart table, sorted (row for row comparable)."""
    out = {}
    for table in service.TABLES:
        rows = session.execute(text(f"SELECT * FROM warehouse.{table}")).all()
        out[table] = sorted((tuple(r) for r in rows), key=repr)
    return out


def empty_star(session) -> None:
    session.execute(text("TRUNCATE " + ", ".join(f"warehouse.{t}" for t in service.TABLES)))


def empty_landing(session) -> None:
    session.execute(text("TRUNCATE warehouse.src_encounter, warehouse.src_settlement, warehouse.src_charge, "
                         "warehouse.src_document, warehouse.src_document_item, warehouse.src_message, "
                         "warehouse.src_card_use, warehouse.src_booking, warehouse.src_person, warehouse.watermark"))


DAY = date(2026, 3, 2)
