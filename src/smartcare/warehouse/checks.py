"""The star schema's tests, dbt's four kinds: ``unique``, ``not_null``, ``accepted_values`` and
``relationships``. Each is a query counting the rows that break it; zero everywhere is a pass."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.warehouse.marts import FACTS

UNIQUE = {
    "dim_facility": "code", "dim_department": "facility_code, code", "dim_practitioner": "facility_code, code",
    "dim_person": "person_id, valid_from", "dim_diagnosis": "code", "dim_charge_item": "code", "dim_payer": "code",
    "dim_document_type": "code", "mart_facility_day": "facility_key, date_key",
}
NOT_NULL = {
    "fct_outpatient_visit": ("facility_key", "date_key", "encounter_id"),
    "fct_inpatient_stay": ("facility_key", "admit_date_key", "surgeries"),
    "fct_charge_item": ("facility_key", "date_key", "charge_item_key", "amount"),
    "fct_settlement_payer": ("facility_key", "date_key", "payer_key", "amount"),
    "fct_document": ("facility_key", "date_key", "document_type_key"),
    "fct_message": ("facility_key", "date_key"),
    "fct_booking": ("facility_key", "date_key", "person_id"),
}
ACCEPTED = {
    ("fct_outpatient_visit", "class"): ("AMB", "EMER"),
    ("fct_settlement_payer", "payer_kind"): ("fund", "account", "commercial", "self"),
    ("fct_booking", "state"): ("booked", "checked_in", "cancelled", "noshow"),
    ("dim_charge_item", "category"): ("甲", "乙", "丙"),
}
#: (fact column, dimension, dimension key)
RELATIONSHIPS = [
    *[(t, "facility_key", "dim_facility", "facility_key") for t in FACTS],
    *[(t, c, "dim_date", "date_key") for t, f in FACTS.items() for c in f.days],
    ("fct_outpatient_visit", "department_key", "dim_department", "department_key"),
    ("fct_outpatient_visit", "practitioner_key", "dim_practitioner", "practitioner_key"),
    ("fct_inpatient_stay", "department_key", "dim_department", "department_key"),
    ("fct_booking", "department_key", "dim_department", "department_key"),
    ("fct_charge_item", "charge_item_key", "dim_charge_item", "charge_item_key"),
    ("fct_settlement_payer", "payer_key", "dim_payer", "payer_key"),
    ("fct_diagnosis", "diagnosis_key", "dim_diagnosis", "diagnosis_key"),
    ("fct_document", "document_type_key", "dim_document_type", "document_type_key"),
    ("fct_outpatient_visit", "person_id", "dim_person", "person_id"),
    ("fct_inpatient_stay", "person_id", "dim_person", "person_id"),
    ("fct_booking", "person_id", "dim_person", "person_id"),
]


def queries() -> list[tuple[str, str]]:
    out = []
    for table, columns in UNIQUE.items():
        out.append((f"unique {table}({columns})",
                    f"SELECT count(*) FROM (SELECT {columns} FROM warehouse.{table} GROUP BY {columns} "
                    f"HAVING count(*) > 1) x"))
    for table, columns in NOT_NULL.items():
        for c in columns:
            out.append((f"not_null {table}.{c}", f"SELECT count(*) FROM warehouse.{table} WHERE {c} IS NULL"))
    for (table, column), values in ACCEPTED.items():
        listed = ", ".join(f"'{v}'" for v in values)
        out.append((f"accepted_values {table}.{column}",
                    f"SELECT count(*) FROM warehouse.{table} WHERE {column} NOT IN ({listed})"))
    for table, column, dim, key in RELATIONSHIPS:
        out.append((f"relationships {table}.{column} → {dim}",
                    f"SELECT count(*) FROM warehouse.{table} f WHERE f.{column} IS NOT NULL AND NOT EXISTS "
                    f"(SELECT 1 FROM warehouse.{dim} d WHERE d.{key} = f.{column})"))
    return out


def run(session: Session) -> list[tuple[str, int]]:
    """Every test with its count of failing rows."""
    return [(name, session.scalar(text(sql))) for name, sql in queries()]
