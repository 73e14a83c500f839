"""The SQL models, in dbt's layers: landing ``src_*`` → dimensions ``dim_*`` and facts ``fct_*`` →
the daily mart ``mart_facility_day`` the indicators read.

Each fact is one ``SELECT`` over its landing table with a ``{where}`` hole. An incremental run fills the
hole with "these source keys" and first deletes the facts of those keys; a rebuild fills it with ``true``
after emptying the table. Both run the same text, so a rebuild yields the incrementally kept rows.
Every (hospital, day) whose facts changed — before and after — is noted in ``_touched`` and only those
mart rows are computed again, from the facts, by one statement that a rebuild runs over all days.
"""

from __future__ import annotations

from dataclasses import dataclass

W = "warehouse"

_PERSON = "CASE WHEN s.empi_id IS NOT NULL THEN warehouse.person_key(s.empi_id) END"
#: A visit's start: as the hospital said it, else its discharge, else when its first event happened.
_START = "coalesce(s.start_at, s.end_at, s.recorded_at)"
#: NHSA drug codes: 西药 X and 中成药 Z followed by a letter (ATC-like), 中药饮片 T followed by digits.
DRUG_CODE = "^([XZ][A-Z]|T[0-9])"
_CHINA_DAY = "(({0}) AT TIME ZONE 'Asia/Shanghai')::date"


@dataclass(frozen=True)
class Fact:
    """A fact table made from one landing table.

    ``source_key`` is the landing table's key and ``key_cast`` the text arrays' elements ``k1, k2 …`` cast to
    its types (so its index is used); ``fact_key`` the same key as the fact table holds it, as expressions
    over ``k1, k2 …`` matched by a delete against the fact's first ``len(fact_key)`` columns; ``days`` the
    fact's date columns whose mart rows depend on a row."""

    table: str
    columns: tuple[str, ...]
    select: str
    source_key: tuple[str, ...]
    fact_key: tuple[str, ...]
    days: tuple[str, ...] = ("date_key",)
    key_cast: tuple[str, ...] = ("k1", "k2")


FACTS: dict[str, Fact] = {f.table: f for f in (
    Fact("fct_outpatient_visit",
         ("facility_key", "encounter_id", "date_key", "department_key", "practitioner_key", "person_id", "class",
          "started_at"),
         f"""SELECT warehouse.skey(s.facility_code), s.encounter_id, warehouse.day_key({_START}),
                    CASE WHEN s.department_code IS NOT NULL THEN warehouse.skey(s.facility_code, s.department_code) END,
                    CASE WHEN s.practitioner_code IS NOT NULL THEN warehouse.skey(s.facility_code, s.practitioner_code) END,
                    {_PERSON}, coalesce(s.class, 'AMB'), {_START}
             FROM warehouse.src_encounter s
             WHERE coalesce(s.class, 'AMB') IN ('AMB', 'EMER') AND s.status <> 'cancelled' AND {{where}}""",
         ("s.facility_code", "s.encounter_id"), ("warehouse.skey(k1)", "k2")),
    Fact("fct_inpatient_stay",
         ("facility_key", "encounter_id", "admit_date_key", "discharge_date_key", "department_key", "person_id",
          "admitted_at", "discharged_at", "bed_days", "surgeries"),
         f"""SELECT warehouse.skey(s.facility_code), s.encounter_id, warehouse.day_key({_START}), d.discharge_key,
                    CASE WHEN s.department_code IS NOT NULL THEN warehouse.skey(s.facility_code, s.department_code) END,
                    {_PERSON}, {_START}, d.discharged_at,
                    CASE WHEN d.discharged_at IS NOT NULL
                         THEN greatest(1, {_CHINA_DAY.format('d.discharged_at')} - {_CHINA_DAY.format(_START)}) END,
                    s.surgeries
             FROM warehouse.src_encounter s
             CROSS JOIN LATERAL (SELECT CASE WHEN s.status = 'finished' THEN s.end_at END AS discharged_at) d0
             CROSS JOIN LATERAL (SELECT d0.discharged_at, warehouse.day_key(d0.discharged_at) AS discharge_key) d
             WHERE s.class = 'IMP' AND s.status <> 'cancelled' AND {{where}}""",
         ("s.facility_code", "s.encounter_id"), ("warehouse.skey(k1)", "k2"),
         days=("admit_date_key", "discharge_date_key")),
    Fact("fct_charge_item",
         ("facility_key", "bill_no", "line", "encounter_id", "date_key", "person_id", "charge_item_key", "is_drug",
          "amount"),
         f"""SELECT warehouse.skey(s.facility_code), s.bill_no, s.line, s.encounter_id, warehouse.day_key(s.charged_at),
                    {_PERSON}, warehouse.skey(s.code), s.code ~ '{DRUG_CODE}', s.amount
             FROM warehouse.src_charge s WHERE {{where}}""",
         ("s.facility_code", "s.bill_no"), ("warehouse.skey(k1)", "k2")),
    Fact("fct_settlement_payer",
         ("settlement_no", "payer_key", "payer_kind", "facility_key", "date_key", "person_id", "amount"),
         f"""SELECT s.settlement_no, warehouse.skey(p.code), p.kind, warehouse.skey(s.facility_code),
                    warehouse.day_key(s.settled_at), {_PERSON}, p.amount
             FROM warehouse.src_settlement s
             CROSS JOIN LATERAL (VALUES ('fund:' || s.insurance_type, 'fund', s.fund_pay),
                                        ('account:' || s.insurance_type, 'account', s.account_pay),
                                        ('commercial:' || coalesce(s.insurer, '?'), 'commercial', s.insurer_pay),
                                        ('self:' || coalesce(s.channel, '?'), 'self', s.cash_pay)) AS p(code, kind, amount)
             WHERE s.state = 'completed' AND p.amount <> 0 AND {{where}}""",
         ("s.settlement_no",), ("k1",), key_cast=("k1",)),
    Fact("fct_document",
         ("record_id", "facility_key", "date_key", "document_type_key", "person_id", "service_at", "received_at",
          "upload_hours", "on_time", "qc_score", "is_current"),
         f"""SELECT s.record_id, warehouse.skey(s.facility_code), warehouse.day_key(s.received_at), warehouse.skey(s.type_code),
                    {_PERSON}, s.service_at, s.received_at,
                    round(greatest(0, extract(epoch FROM s.received_at - s.service_at)) / 3600.0, 2),
                    s.received_at - s.service_at <= interval '24 hours', s.qc_score, s.current
             FROM warehouse.src_document s WHERE {{where}}""",
         ("s.record_id",), ("k1::bigint",), key_cast=("k1::bigint",)),
    Fact("fct_diagnosis",
         ("record_id", "position", "facility_key", "date_key", "person_id", "diagnosis_key", "document_type_key"),
         f"""SELECT i.record_id, i.position, warehouse.skey(s.facility_code), warehouse.day_key(i.at), {_PERSON},
                    warehouse.skey(i.code), warehouse.skey(s.type_code)
             FROM warehouse.src_document s JOIN warehouse.src_document_item i ON i.record_id = s.record_id
             WHERE i.kind = 'condition' AND s.current AND {{where}}""",
         ("s.record_id",), ("k1::bigint",), key_cast=("k1::bigint",)),
    Fact("fct_lab_result",
         ("record_id", "position", "facility_key", "date_key", "person_id", "code", "value_number", "unit"),
         f"""SELECT i.record_id, i.position, warehouse.skey(s.facility_code), warehouse.day_key(i.at), {_PERSON},
                    i.code, i.value_number, i.unit
             FROM warehouse.src_document s JOIN warehouse.src_document_item i ON i.record_id = s.record_id
             WHERE i.kind = 'lab' AND s.current AND {{where}}""",
         ("s.record_id",), ("k1::bigint",), key_cast=("k1::bigint",)),
    Fact("fct_message",
         ("message_id", "facility_key", "date_key", "received_at", "kind", "message_type", "failed", "latency_ms"),
         """SELECT s.message_id, warehouse.skey(coalesce(s.facility_code, s.sender)), warehouse.day_key(s.received_at),
                   s.received_at, s.kind, s.message_type, s.state = 'failed',
                   (extract(epoch FROM s.processed_at - s.received_at) * 1000)::integer
            FROM warehouse.src_message s WHERE {where}""",
         ("s.message_id",), ("k1::bigint",), key_cast=("k1::bigint",)),
    Fact("fct_card_use",
         ("use_id", "facility_key", "date_key", "card_id", "used_at", "step", "channel"),
         """SELECT s.use_id, warehouse.skey(s.facility_code), warehouse.day_key(s.used_at), s.card_id, s.used_at,
                   s.step, s.channel
            FROM warehouse.src_card_use s WHERE {where}""",
         ("s.use_id",), ("k1::bigint",), key_cast=("k1::bigint",)),
    Fact("fct_booking",
         ("appointment_no", "facility_key", "date_key", "booked_date_key", "department_key", "person_id", "state"),
         f"""SELECT s.appointment_no, warehouse.skey(s.facility_code), warehouse.day_key(s.visit_date),
                    warehouse.day_key(s.booked_at), warehouse.skey(s.facility_code, s.department_code), {_PERSON}, s.state
             FROM warehouse.src_booking s WHERE {{where}}""",
         ("s.appointment_no",), ("k1",), key_cast=("k1",)),
)}

#: Which facts each landing table feeds (a change of its keys refreshes these).
FEEDS: dict[str, tuple[str, ...]] = {
    "encounter": ("fct_outpatient_visit", "fct_inpatient_stay"),
    "charge": ("fct_charge_item",),
    "settlement": ("fct_settlement_payer",),
    "document": ("fct_document", "fct_diagnosis", "fct_lab_result"),
    "message": ("fct_message",),
    "card_use": ("fct_card_use",),
    "booking": ("fct_booking",),
}

def _keys_table(width: int) -> str:
    arrays = ", ".join(f"CAST(:k{i} AS text[])" for i in range(1, width + 1))
    names = ", ".join(f"k{i}" for i in range(1, width + 1))
    return f"unnest({arrays}) AS keys({names})"


def _days_of(fact: Fact, alias: str) -> str:
    """(facility_key, date_key) of the fact's rows, plus for charges the days their visit's costs count on."""
    parts = [f"SELECT {alias}.facility_key, {alias}.{d} AS date_key FROM {alias} WHERE {alias}.{d} IS NOT NULL"
             for d in fact.days]
    if fact.table == "fct_charge_item":
        parts += [f"SELECT v.facility_key, v.date_key FROM {alias} JOIN warehouse.fct_outpatient_visit v "
                  f"ON v.facility_key = {alias}.facility_key AND v.encounter_id = {alias}.encounter_id",
                  f"SELECT v.facility_key, v.discharge_date_key FROM {alias} JOIN warehouse.fct_inpatient_stay v "
                  f"ON v.facility_key = {alias}.facility_key AND v.encounter_id = {alias}.encounter_id "
                  f"WHERE v.discharge_date_key IS NOT NULL"]
    return " UNION ".join(parts)


def delete_sql(fact: Fact) -> str:
    """Delete the facts of the given source keys, noting the days they counted on."""
    width = len(fact.source_key)
    match = ", ".join(f"f.{c}" for c in fact.columns[:len(fact.fact_key)])
    keys = ", ".join(fact.fact_key)
    returning = ", ".join(f"f.{c}" for c in fact.columns)
    return (f"WITH gone AS (DELETE FROM warehouse.{fact.table} f WHERE ({match}) IN "
            f"(SELECT {keys} FROM {_keys_table(width)}) RETURNING {returning}) "
            f"INSERT INTO _touched {_days_of(fact, 'gone')}")


def insert_sql(fact: Fact, *, incremental: bool) -> str:
    """Insert the facts of the given source keys (or of everything), noting their days when incremental."""
    width = len(fact.source_key)
    where = (f"({', '.join(fact.source_key)}) IN (SELECT {', '.join(fact.key_cast)} "
             f"FROM {_keys_table(width)})") if incremental else "true"
    columns = ", ".join(fact.columns)
    body = fact.select.format(where=where)
    if not incremental:
        return f"INSERT INTO warehouse.{fact.table} ({columns}) {body}"
    returning = ", ".join(columns.split(", "))
    return (f"WITH made AS (INSERT INTO warehouse.{fact.table} ({columns}) {body} RETURNING {returning}) "
            f"INSERT INTO _touched {_days_of(fact, 'made')}")


def all_days_sql() -> str:
    """Every (hospital, day) any fact counts on: what a rebuild computes the mart for."""
    return "INSERT INTO _touched " + " UNION ".join(
        f"SELECT facility_key, {d} FROM warehouse.{fact.table} WHERE {d} IS NOT NULL"
        for fact in FACTS.values() for d in fact.days)


#: Recompute the mart rows of the days in ``_touched`` from the facts (after MART_DELETE_SQL). A day left
#: with no fact at all has no row (as a rebuild would make it).
MART_DELETE_SQL = """DELETE FROM warehouse.mart_facility_day m USING (SELECT DISTINCT facility_key, date_key FROM _touched) t
WHERE m.facility_key = t.facility_key AND m.date_key = t.date_key"""

MART_SQL = """
WITH t AS (SELECT DISTINCT facility_key, date_key FROM _touched),
visits AS (SELECT v.facility_key, v.date_key, count(*) AS n,
                  coalesce(sum((SELECT sum(c.amount) FROM warehouse.fct_charge_item c
                                WHERE c.facility_key = v.facility_key AND c.encounter_id = v.encounter_id)), 0) AS cost
           FROM warehouse.fct_outpatient_visit v JOIN t USING (facility_key, date_key) GROUP BY 1, 2),
admissions AS (SELECT s.facility_key, s.admit_date_key AS date_key, count(*) AS n
               FROM warehouse.fct_inpatient_stay s JOIN t ON t.facility_key = s.facility_key AND t.date_key = s.admit_date_key
               GROUP BY 1, 2),
discharges AS (SELECT s.facility_key, s.discharge_date_key AS date_key, count(*) AS n, sum(s.bed_days) AS bed_days,
                      sum(s.surgeries) AS surgeries,
                      coalesce(sum((SELECT sum(c.amount) FROM warehouse.fct_charge_item c
                                    WHERE c.facility_key = s.facility_key AND c.encounter_id = s.encounter_id)), 0) AS cost
               FROM warehouse.fct_inpatient_stay s
               JOIN t ON t.facility_key = s.facility_key AND t.date_key = s.discharge_date_key GROUP BY 1, 2),
charges AS (SELECT c.facility_key, c.date_key, count(*) AS n, sum(c.amount) AS total,
                   coalesce(sum(c.amount) FILTER (WHERE c.is_drug), 0) AS drug
            FROM warehouse.fct_charge_item c JOIN t USING (facility_key, date_key) GROUP BY 1, 2),
bookings AS (SELECT b.facility_key, b.date_key, count(*) AS n, count(*) FILTER (WHERE b.state = 'checked_in') AS visits
             FROM warehouse.fct_booking b JOIN t USING (facility_key, date_key) GROUP BY 1, 2),
payers AS (SELECT p.facility_key, p.date_key, count(*) AS n, sum(p.amount) AS total,
                  coalesce(sum(p.amount) FILTER (WHERE p.payer_kind IN ('fund', 'account')), 0) AS fund,
                  coalesce(sum(p.amount) FILTER (WHERE p.payer_kind = 'self'), 0) AS self
           FROM warehouse.fct_settlement_payer p JOIN t USING (facility_key, date_key) GROUP BY 1, 2),
cards AS (SELECT u.facility_key, u.date_key, count(*) AS n, count(DISTINCT u.card_id) AS visits
          FROM warehouse.fct_card_use u JOIN t USING (facility_key, date_key) GROUP BY 1, 2),
documents AS (SELECT d.facility_key, d.date_key, count(*) AS n, count(*) FILTER (WHERE d.on_time) AS on_time,
                     max(d.received_at) AS last_at,
                     count(d.qc_score) FILTER (WHERE d.is_current) AS checked,
                     coalesce(sum(d.qc_score) FILTER (WHERE d.is_current), 0) AS score
              FROM warehouse.fct_document d JOIN t USING (facility_key, date_key) GROUP BY 1, 2),
other AS (SELECT x.facility_key, x.date_key, count(*) AS n FROM (
              SELECT facility_key, date_key FROM warehouse.fct_diagnosis JOIN t USING (facility_key, date_key)
              UNION ALL SELECT facility_key, date_key FROM warehouse.fct_lab_result JOIN t USING (facility_key, date_key)) x
          GROUP BY 1, 2),
messages AS (SELECT m.facility_key, m.date_key, count(*) AS n, count(*) FILTER (WHERE m.failed) AS failed,
                    max(m.received_at) AS last_at
             FROM warehouse.fct_message m JOIN t USING (facility_key, date_key) GROUP BY 1, 2)
INSERT INTO warehouse.mart_facility_day
SELECT t.facility_key, t.date_key, coalesce(visits.n, 0), coalesce(visits.cost, 0), coalesce(admissions.n, 0),
       coalesce(discharges.n, 0), coalesce(discharges.cost, 0), coalesce(discharges.bed_days, 0),
       coalesce(discharges.surgeries, 0), coalesce(charges.total, 0), coalesce(charges.drug, 0),
       coalesce(bookings.visits, 0), coalesce(payers.total, 0), coalesce(payers.fund, 0), coalesce(payers.self, 0),
       coalesce(cards.visits, 0), coalesce(documents.n, 0), coalesce(documents.on_time, 0), coalesce(documents.checked, 0),
       coalesce(documents.score, 0), coalesce(messages.n, 0), coalesce(messages.failed, 0),
       greatest(documents.last_at, messages.last_at)
FROM t
LEFT JOIN visits USING (facility_key, date_key) LEFT JOIN admissions USING (facility_key, date_key)
LEFT JOIN discharges USING (facility_key, date_key) LEFT JOIN charges USING (facility_key, date_key)
LEFT JOIN bookings USING (facility_key, date_key) LEFT JOIN payers USING (facility_key, date_key)
LEFT JOIN cards USING (facility_key, date_key) LEFT JOIN documents USING (facility_key, date_key)
LEFT JOIN other USING (facility_key, date_key) LEFT JOIN messages USING (facility_key, date_key)
WHERE coalesce(visits.n, 0) + coalesce(admissions.n, 0) + coalesce(discharges.n, 0) + coalesce(charges.n, 0)
      + coalesce(bookings.n, 0) + coalesce(payers.n, 0) + coalesce(cards.n, 0) + coalesce(documents.n, 0)
      + coalesce(other.n, 0) + coalesce(messages.n, 0) > 0
"""

#: Dimensions that the landing tables define (codes seen in the data). Names are deterministic whatever
#: the order data arrived in (the smallest name seen wins), so incremental and rebuilt tables agree.
DIMENSION_SQL = {
    "charge": """
        INSERT INTO warehouse.dim_charge_item (charge_item_key, code, name, category, is_drug)
        SELECT warehouse.skey(code), code, min(name), min(category), code ~ '""" + DRUG_CODE + """'
        FROM warehouse.src_charge s WHERE {where} GROUP BY code
        ON CONFLICT (charge_item_key) DO UPDATE SET name = least(dim_charge_item.name, excluded.name),
                                                     category = least(dim_charge_item.category, excluded.category)""",
    "settlement": """
        INSERT INTO warehouse.dim_payer (payer_key, code, kind, name)
        SELECT warehouse.skey(code), code, kind, name FROM (SELECT DISTINCT p.code, p.kind, p.name FROM warehouse.src_settlement s
        CROSS JOIN LATERAL (VALUES ('fund:' || s.insurance_type, 'fund', '统筹基金 ' || s.insurance_type),
                                   ('account:' || s.insurance_type, 'account', '个人账户 ' || s.insurance_type),
                                   ('commercial:' || coalesce(s.insurer, '?'), 'commercial', '商业保险 ' || coalesce(s.insurer, '?')),
                                   ('self:' || coalesce(s.channel, '?'), 'self', '自付 ' || coalesce(s.channel, '?'))) p(code, kind, name)
        WHERE {where}) x
        ON CONFLICT (payer_key) DO NOTHING""",
    "document": """
        INSERT INTO warehouse.dim_diagnosis (diagnosis_key, code, name, chapter)
        SELECT warehouse.skey(i.code), i.code, min(i.name), warehouse.icd10_chapter(i.code)
        FROM warehouse.src_document s JOIN warehouse.src_document_item i ON i.record_id = s.record_id
        WHERE i.kind = 'condition' AND {where} GROUP BY i.code
        ON CONFLICT (diagnosis_key) DO UPDATE SET name = least(dim_diagnosis.name, excluded.name)""",
}

#: Persons as SCD type 2: the versions of the given persons, made again from their observations
#: (after deleting them: ``DELETE FROM warehouse.dim_person WHERE person_id = ANY(…)``).
PERSON_SQL = """
INSERT INTO warehouse.dim_person (person_key, person_id, birth_year, sex, district_code, insurance_type,
                                  valid_from, valid_to, is_current)
SELECT warehouse.person_key(s.empi_id || '|' || extract(epoch FROM s.valid_from)::text), warehouse.person_key(s.empi_id), s.birth_year, s.sex,
       s.district_code, s.insurance_type, s.valid_from,
       lead(s.valid_from) OVER w, lead(s.valid_from) OVER w IS NULL
FROM warehouse.src_person s WHERE {where}
WINDOW w AS (PARTITION BY s.empi_id ORDER BY s.valid_from)
"""
