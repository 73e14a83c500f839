"""The warehouse's operations: apply landed changes to the star schema, rebuild it from the landing
tables, backfill the landing tables from the capabilities, pull the polled sources, export.

Writers of the star schema take one transaction-scoped advisory lock, so the mart's per-day rows are
never computed by two transactions at once (each event's work is small; a rebuild holds it throughout).
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.platform.errors import InvalidInput
from smartcare.registry import service as registry
from smartcare.standards.cda.document import TITLES
from smartcare.warehouse import landing
from smartcare.warehouse.landing import Changes
from smartcare.warehouse.marts import (DIMENSION_SQL, FACTS, FEEDS, MART_DELETE_SQL, MART_SQL, PERSON_SQL, Fact,
                                       all_days_sql, delete_sql, insert_sql)

LOCK_KEY = 0x5743_4152_4548  # "WCAREH"
#: Codes each landing table names, that dimensions must hold (as "unregistered" members until the registry has them).
_MEMBERS = {
    "encounter": [("facility", "s.facility_code"), ("department", "s.facility_code", "s.department_code"),
                  ("practitioner", "s.facility_code", "s.practitioner_code")],
    "charge": [("facility", "s.facility_code")],
    "settlement": [("facility", "s.facility_code")],
    "document": [("facility", "s.facility_code"), ("document_type", "s.type_code")],
    "message": [("facility", "coalesce(s.facility_code, s.sender)")],
    "card_use": [("facility", "s.facility_code")],
    "booking": [("facility", "s.facility_code"), ("department", "s.facility_code", "s.department_code")],
}
_MEMBER_SQL = {
    "facility": "INSERT INTO warehouse.dim_facility (facility_key, code, name, kind, is_public, is_hospital, beds) "
                "SELECT warehouse.skey(a), a, a, 'unregistered', false, false, 0 FROM (SELECT DISTINCT a FROM ({rows}) x) y "
                "WHERE a IS NOT NULL "
                "ON CONFLICT DO NOTHING",
    "department": "INSERT INTO warehouse.dim_department (department_key, facility_code, code, name) "
                  "SELECT warehouse.skey(a, b), a, b, b FROM (SELECT DISTINCT a, b FROM ({rows}) x) y WHERE b IS NOT NULL "
                  "ON CONFLICT DO NOTHING",
    "practitioner": "INSERT INTO warehouse.dim_practitioner (practitioner_key, facility_code, code) "
                    "SELECT warehouse.skey(a, b), a, b FROM (SELECT DISTINCT a, b FROM ({rows}) x) y WHERE b IS NOT NULL "
                    "ON CONFLICT DO NOTHING",
    "document_type": "INSERT INTO warehouse.dim_document_type (document_type_key, code, name) "
                     "SELECT warehouse.skey(a), a, a FROM (SELECT DISTINCT a FROM ({rows}) x) y WHERE a IS NOT NULL "
                     "ON CONFLICT DO NOTHING",
}
DIMENSIONS = ("dim_facility", "dim_department", "dim_practitioner", "dim_person", "dim_diagnosis", "dim_charge_item",
              "dim_payer", "dim_document_type")
TABLES = (*DIMENSIONS, *FACTS, "mart_facility_day")
#: What a rebuild empties: the facts, the mart and the person versions (made from ``src_person``). The other
#: dimensions are catalogues that keep every member ever seen (a charge item whose only bill was refunded
#: stays a charge item), so a rebuild upserts them again as the live path does, and never loses a member.
REBUILT = (*FACTS, "mart_facility_day", "dim_person")


@functools.cache
def person_seed() -> int:
    """The key of persons' pseudonyms in the warehouse (from the platform's secret key: the same for every
    writer and every rebuild, never stored in the database)."""
    from smartcare.platform.crypto import derive_key

    return int.from_bytes(derive_key("warehouse.person")[:8], "big", signed=True)


def lock(session: Session) -> None:
    """Take the warehouse's write lock for this transaction. Callers take it before they read a source, so
    two writers landing the same record land them in the order they read them (the later state last)."""
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
    session.execute(text("SELECT set_config('smartcare.person_seed', :seed, true)"), {"seed": str(person_seed())})
    session.execute(text("CREATE TEMP TABLE IF NOT EXISTS _touched (facility_key bigint, date_key integer) "
                         "ON COMMIT DELETE ROWS"))
    session.execute(text("TRUNCATE _touched"))


def _where(fact: Fact) -> str:
    width = len(fact.source_key)
    arrays = ", ".join(f"CAST(:k{i} AS text[])" for i in range(1, width + 1))
    names = ", ".join(f"k{i}" for i in range(1, width + 1))
    return f"({', '.join(fact.source_key)}) IN (SELECT {', '.join(fact.key_cast)} FROM unnest({arrays}) AS keys({names}))"


def _members(session: Session, source: str, where: str, params: dict) -> None:
    for dim, *columns in _MEMBERS[source]:
        names = ("a", "b")[:len(columns)]
        rows = (f"SELECT {', '.join(f'{c} AS {n}' for c, n in zip(columns, names))} "
                f"FROM warehouse.src_{source} s WHERE {where}")
        session.execute(text(_MEMBER_SQL[dim].format(rows=rows)), params)


def apply(session: Session, changes: Changes) -> int:
    """Bring dimensions, facts and the daily mart up to date with ``changes`` (in the caller's transaction);
    returns how many (hospital, day) rows of the mart were computed again."""
    if not changes:
        return 0
    lock(session)
    for source, keys in sorted(changes.keys.items()):
        if not keys:
            continue
        keyed = FACTS[FEEDS[source][0]]  # its landing key: the one every fact it feeds is made by
        width = len(keyed.source_key)
        ordered = sorted(keys)
        params = {f"k{i + 1}": [k[i] for k in ordered] for i in range(width)}
        where = _where(keyed)
        _members(session, source, where, params)
        if source in DIMENSION_SQL:
            session.execute(text(DIMENSION_SQL[source].format(where=where)), params)
        for table in FEEDS[source]:
            fact = FACTS[table]
            session.execute(text(delete_sql(fact)), params)
            session.execute(text(insert_sql(fact, incremental=True)), params)
    if changes.persons:
        persons = {"p": sorted(changes.persons)}
        session.execute(text("DELETE FROM warehouse.dim_person WHERE person_id IN "
                             "(SELECT warehouse.person_key(e) FROM unnest(CAST(:p AS text[])) AS e)"), persons)
        session.execute(text(PERSON_SQL.format(where="s.empi_id = ANY(:p)")), persons)
    session.execute(text(MART_DELETE_SQL))
    return session.execute(text(MART_SQL)).rowcount


def refresh_reference(session: Session) -> None:
    """Facilities, departments and practitioners from the registry, document types from WS/T 500 (upserts:
    an "unregistered" member becomes the real one once the registry has it); rows that did not change are
    not written."""
    ref = registry.reference_for_warehouse(session)
    lock(session)
    for f in ref["facilities"]:
        f["is_public"] = f["ownership"] == "public"
        f["is_hospital"] = f["kind"] in registry.HOSPITAL_KINDS
    if ref["facilities"]:
        session.execute(text(
            "INSERT INTO warehouse.dim_facility AS d (facility_key, code, name, kind, level, grade, ownership, "
            "is_public, is_hospital, district_code, district_name, beds) VALUES (warehouse.skey(:code), :code, :name, "
            ":kind, :level, :grade, :ownership, :is_public, :is_hospital, :district_code, :district_name, :beds) "
            "ON CONFLICT (facility_key) DO UPDATE SET name = excluded.name, kind = excluded.kind, level = excluded.level, "
            "grade = excluded.grade, ownership = excluded.ownership, is_public = excluded.is_public, "
            "is_hospital = excluded.is_hospital, district_code = excluded.district_code, "
            "district_name = excluded.district_name, beds = excluded.beds "
            "WHERE (d.name, d.kind, d.level, d.grade, d.ownership, d.is_public, d.is_hospital, d.district_code, "
            "d.district_name, d.beds) IS DISTINCT FROM (excluded.name, excluded.kind, excluded.level, excluded.grade, "
            "excluded.ownership, excluded.is_public, excluded.is_hospital, excluded.district_code, "
            "excluded.district_name, excluded.beds)"), ref["facilities"])
    if ref["departments"]:
        session.execute(text(
            "INSERT INTO warehouse.dim_department AS d (department_key, facility_code, code, name) "
            "VALUES (warehouse.skey(:facility_code, :code), :facility_code, :code, :name) "
            "ON CONFLICT (department_key) DO UPDATE SET name = excluded.name WHERE d.name IS DISTINCT FROM excluded.name"),
            ref["departments"])
    if ref["practitioners"]:
        session.execute(text(
            "INSERT INTO warehouse.dim_practitioner AS d (practitioner_key, facility_code, code, department_code, title) "
            "VALUES (warehouse.skey(:facility_code, :code), :facility_code, :code, :department_code, :title) "
            "ON CONFLICT (practitioner_key) DO UPDATE SET department_code = excluded.department_code, "
            "title = excluded.title WHERE (d.department_code, d.title) IS DISTINCT FROM "
            "(excluded.department_code, excluded.title)"), ref["practitioners"])
    session.execute(text(
        "INSERT INTO warehouse.dim_document_type AS d (document_type_key, code, name) "
        "VALUES (warehouse.skey(:code), :code, :name) ON CONFLICT (document_type_key) DO UPDATE SET name = excluded.name "
        "WHERE d.name IS DISTINCT FROM excluded.name"),
        [{"code": c, "name": n} for c, n in TITLES.items()])


def rebuild(session: Session) -> dict[str, int]:
    """Empty the facts, the mart and the person versions and make them again from the landing tables (and
    upsert the catalogue dimensions), by the statements the incremental runs use; returns the rows of every table."""
    lock(session)
    session.execute(text("TRUNCATE " + ", ".join(f"warehouse.{t}" for t in REBUILT)))
    session.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
    refresh_reference(session)
    for source in FEEDS:
        _members(session, source, "true", {})
        if source in DIMENSION_SQL:
            session.execute(text(DIMENSION_SQL[source].format(where="true")))
    remake = _drop_indexes(session, list(FACTS))
    for fact in FACTS.values():
        session.execute(text(insert_sql(fact, incremental=False)))
    for statement in remake:
        session.execute(text(statement))
    session.execute(text(PERSON_SQL.format(where="true")))
    session.execute(text(all_days_sql()))
    session.execute(text(MART_SQL))
    session.execute(text("ANALYZE " + ", ".join(f"warehouse.{t}" for t in TABLES)))
    return counts(session)


def _drop_indexes(session: Session, tables: list[str]) -> list[str]:
    """Drop the tables' indexes, primary keys included, and return the statements that make them again:
    filling a table and then building its indexes once is about twice as fast as keeping them up to date."""
    remake = []
    for table, name, definition in session.execute(text(
            "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k "
            "JOIN pg_class c ON c.oid = k.conrelid WHERE k.contype IN ('p', 'u', 'x') "
            "AND k.connamespace = 'warehouse'::regnamespace AND c.relname = ANY(:t)"), {"t": tables}).all():
        session.execute(text(f'ALTER TABLE warehouse."{table}" DROP CONSTRAINT "{name}"'))
        remake.append(f'ALTER TABLE warehouse."{table}" ADD CONSTRAINT "{name}" {definition}')
    for name, definition in session.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'warehouse' AND tablename = ANY(:t)"),
            {"t": tables}).all():
        session.execute(text(f'DROP INDEX warehouse."{name}"'))
        remake.append(definition)
    return remake


def counts(session: Session) -> dict[str, int]:
    return {t: session.scalar(text(f"SELECT count(*) FROM warehouse.{t}")) for t in TABLES}


# ---------------------------------------------------------------- reading the sources

def documents(session: Session, ids: list[int]) -> Changes:
    """Land the documents (and every one they replaced: no longer current) as the registry and QC hold them now."""
    from smartcare.quality import service as quality
    from smartcare.records import service as records

    lock(session)
    ids = sorted({*ids, *(r for i in ids for r in records.replaced_by(session, i))})
    docs, items = records.documents_for_warehouse(session, ids=ids)
    return landing.land_documents(session, docs, items, quality.scores_of(session, [d["record_id"] for d in docs]))


def settlements(session: Session, numbers: list[str]) -> Changes:
    from smartcare.payment import service as payment

    lock(session)
    rows, lines = payment.settlements_for_warehouse(session, numbers=numbers)
    return landing.land_settlements(session, rows, lines)


def bookings(session: Session, numbers: list[str]) -> Changes:
    from smartcare.booking import service as booking

    lock(session)
    return landing.land_bookings(session, booking.appointments_for_warehouse(session, numbers=numbers))


def pull(session: Session, *, now: datetime | None = None) -> Changes:
    """Read the polled sources (hub messages, card uses) since their watermark — at most ``PULL_STEP`` of
    them a round, so a worker back from an outage catches up in small transactions — and land what changed."""
    from smartcare.exchange import service as exchange
    from smartcare.healthcard import service as healthcard

    lock(session)
    now = now or session.scalar(text("SELECT now()"))
    changes = Changes()
    for source, read, land in (("message", exchange.messages_between, landing.land_messages),
                               ("card_use", healthcard.uses_between, landing.land_card_uses)):
        start = landing.watermark(session, source, now=now)
        end = min(now, start + landing.PULL_OVERLAP + PULL_STEP)
        changes.merge(land(session, read(session, start, end)))
        landing.advance(session, source, end)
    return changes


#: The most of a polled source one round reads (besides the overlap it reads again).
PULL_STEP = timedelta(minutes=5)


def tick(session_factory: Callable) -> int:
    """One round of the worker: pull the polled sources and apply; returns how many source rows changed."""
    with session_factory() as session:
        changes = pull(session)
        apply(session, changes)
    return changes.count()


def backfill(session_factory: Callable, *, since: date | None = None, batch: int = 1000,
             progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Land every record the capabilities hold now (documents, settlements, bookings; hub messages and card
    uses since ``since``, default 30 days) and apply it, one batch per transaction. Visits come only as the
    hub's events: re-run the hub's messages (``smartcare exchange rerun``) to land them again."""
    from smartcare.booking import service as booking
    from smartcare.exchange import service as exchange
    from smartcare.healthcard import service as healthcard
    from smartcare.payment import service as payment
    from smartcare.quality import service as quality
    from smartcare.records import service as records

    def by_id(name: str, read: Callable[[Session, int], tuple[list[dict], Changes]], id_key: str) -> int:
        after, total = 0, 0
        while True:
            with session_factory() as session:
                rows, changes = read(session, after)
                if not rows:
                    return total
                apply(session, changes)
            after = max(r[id_key] for r in rows)
            total += len(rows)
            if progress:
                progress(name, len(rows))

    def read_documents(session: Session, after: int):
        lock(session)
        docs, items = records.documents_for_warehouse(session, after_id=after, limit=batch)
        scores = quality.scores_of(session, [d["record_id"] for d in docs])
        return docs, landing.land_documents(session, docs, items, scores)

    def read_settlements(session: Session, after: int):
        lock(session)
        rows, lines = payment.settlements_for_warehouse(session, after_id=after, limit=batch)
        return rows, landing.land_settlements(session, rows, lines)

    def read_bookings(session: Session, after: int):
        lock(session)
        rows = booking.appointments_for_warehouse(session, after_id=after, limit=batch)
        return rows, landing.land_bookings(session, rows)

    done = {"document": by_id("document", read_documents, "record_id"),
            "settlement": by_id("settlement", read_settlements, "id"),
            "booking": by_id("booking", read_bookings, "id")}
    start = datetime.combine(since or (date.today() - timedelta(days=30)), datetime.min.time(), UTC)
    with session_factory() as session:
        end = session.scalar(text("SELECT now()"))
    for name, read, land in (("message", exchange.messages_between, landing.land_messages),
                             ("card_use", healthcard.uses_between, landing.land_card_uses)):
        done[name] = 0
        step = start
        while step < end:  # an hour a transaction: a day of a city's messages is millions
            with session_factory() as session:
                lock(session)
                rows = read(session, step, min(step + timedelta(hours=1), end))
                apply(session, land(session, rows))
            done[name] += len(rows)
            if progress:
                progress(name, len(rows))
            step += timedelta(hours=1)
        with session_factory() as session:  # the worker's pulls go on from here, leaving no gap
            lock(session)
            landing.advance(session, name, end)
    return done


# ---------------------------------------------------------------- export

def export_rows(session: Session, table: str, *, batch: int = 50_000) -> Iterator[tuple[list[str], list[tuple]]]:
    """The rows of a dimension, fact or mart, in batches (with the column names), for CSV or Parquet."""
    _exportable(table)
    result = session.execute(text(f"SELECT * FROM warehouse.{table}")).yield_per(batch)
    names = list(result.keys())
    for part in result.partitions():
        yield names, [tuple(r) for r in part]


def to_csv(columns: list[str], rows: list[tuple], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    if header:
        writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


# ---------------------------------------------------------------- synthetic activity

def synthetic_hospitals(session: Session, *, limit: int | None = None, level: int | None = None) -> list:
    """The registry's public hospitals with beds (not primary-care centres; of one level if given; largest
    first), as the activity generator wants them."""
    from smartcare.synth.activity import Hospital

    ref = registry.reference_for_warehouse(session)
    departments: dict[str, list[str]] = {}
    for d in ref["departments"]:
        departments.setdefault(d["facility_code"], []).append(d["code"])
    hospitals = sorted((f for f in ref["facilities"] if f["ownership"] == "public" and (f["beds"] or 0) > 0
                        and f["kind"] in registry.HOSPITAL_KINDS and (level is None or f["level"] == level)),
                       key=lambda f: (-f["beds"], f["code"]))
    return [Hospital(f["code"], f["level"] or 0, f["beds"], f["district_code"] or "000000",
                     tuple(sorted(departments.get(f["code"], ()))))
            for f in hospitals[:limit]]


def land_synthetic(session: Session, rows, *, chunk: int = 50_000, progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """COPY generated landing rows ((table, row) pairs) into the landing tables; returns rows per table."""
    from smartcare.platform.db import copy_rows
    from smartcare.synth.activity import TABLES

    buffers: dict[str, list[tuple]] = {t: [] for t in TABLES}
    done = dict.fromkeys(TABLES, 0)

    def flush(table: str) -> None:
        copy_rows(session, f"warehouse.{table}", TABLES[table], buffers[table])
        done[table] += len(buffers[table])
        if progress:
            progress(len(buffers[table]))
        buffers[table].clear()

    for table, row in rows:
        buffers[table].append(row)
        if len(buffers[table]) >= chunk:
            flush(table)
    for table in TABLES:
        if buffers[table]:
            flush(table)
    return done


def write_export(session: Session, table: str, fmt: str, path) -> int:
    """Stream a table to a CSV or Parquet file (the table checked before the file is opened); returns how many
    rows were written. Parquet columns take their types from PostgreSQL's (numeric as double)."""
    _exportable(table)
    rows_written = 0
    if fmt == "csv":
        with open(path, "w", encoding="utf-8", newline="") as out:
            out.write(to_csv([c for c, _ in _columns(session, table)], [], header=True))
            for _, rows in export_rows(session, table):
                out.write(to_csv([], rows, header=False))
                rows_written += len(rows)
        return rows_written
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"bigint": pa.int64(), "integer": pa.int32(), "smallint": pa.int16(), "numeric": pa.float64(),
             "boolean": pa.bool_(), "date": pa.date32(), "timestamp with time zone": pa.timestamp("us", tz="UTC")}
    columns = _columns(session, table)
    schema = pa.schema([(name, types.get(kind, pa.string())) for name, kind in columns])
    numeric = [kind == "numeric" for _, kind in columns]
    with pq.ParquetWriter(path, schema) as writer:
        for _, rows in export_rows(session, table):
            arrays = [pa.array([None if r[i] is None else float(r[i]) for r in rows] if numeric[i]
                               else [r[i] for r in rows], type=schema.field(i).type) for i in range(len(columns))]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            rows_written += len(rows)
    return rows_written


def _exportable(table: str) -> None:
    if table not in TABLES:
        raise InvalidInput(f"unknown table {table!r}", field="table", hint="one of " + ", ".join(TABLES))


def _columns(session: Session, table: str) -> list[tuple[str, str]]:
    return [tuple(r) for r in session.execute(text(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'warehouse' "
        "AND table_name = :t ORDER BY ordinal_position"), {"t": table})]


def grant_analyst(session: Session, login: str) -> None:
    """Grant the read-only analyst role to an existing login (the role may read the warehouse schema only)."""
    import re

    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", login):
        raise InvalidInput("a login is lower-case letters, digits and '_'", field="login")
    if not session.scalar(text("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :r AND rolcanlogin)"),
                          {"r": login}):
        raise InvalidInput(f"no PostgreSQL login {login!r}", field="login", hint="CREATE ROLE … LOGIN first")
    session.execute(text(f'GRANT smartcare_analyst TO "{login}"'))
