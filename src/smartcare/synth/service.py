"""Seeding the synthetic region into the database: a pipeline of named, timed steps.

The generator (``region.py``) is pure; this module loads what it yields with COPY through the
owning capability's service (registry rows through ``registry.service``), so later issues add
steps (visit cards, documents, messages, bills) without touching the ones before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from smartcare.platform import audit
from smartcare.platform.db import copy_rows, driver
from smartcare.platform.errors import Conflict, InvalidInput
from smartcare.registry import service as registry
from smartcare.synth import region, visitcards
from smartcare.synth.models import Resident, SeedRun, VisitCard

#: ``progress(step, done, total)`` — the CLI draws a bar from it.
Progress = Callable[[str, int, int], None]

CARDS_PER_RESIDENT = 2.5
RESIDENT_COLUMNS = ("id", "name", "sex", "birth_date", "id_number", "phone", "district_code", "address",
                    "ethnicity", "family_id", "guardian_id")


@dataclass
class SeedReport:
    seed: int
    scale: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: what each step loaded, e.g. {"residents": {"residents": 20000, "twins": 50}}
    step_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def _counted(rows: Iterable, step: str, total: int, progress: Progress | None, every: int = 10_000) -> Iterator:
    done = 0
    for row in rows:
        yield row
        done += 1
        if progress and done % every == 0:
            progress(step, done, max(total, done))  # ``total`` may be an estimate (visit cards)
    if progress:
        progress(step, done, done)


def seed(session: Session, *, scale: str = "small", seed: int = 2026, progress: Progress | None = None,
         actor: str = "system", population: int | None = None) -> SeedReport:
    """Generate and load the whole region into an empty database, in the caller's transaction.

    ``population`` overrides the scale's number of residents (benchmarks use it for a quick run).
    """
    if scale not in region.SCALES:
        raise InvalidInput(f"unknown scale {scale!r}", field="scale", hint=f"one of {', '.join(region.SCALES)}")
    if not registry.is_empty(session) or resident_count(session):
        raise Conflict("the database already holds a region", hint="seed into an empty database (drop it or use a new DATABASE_URL)")
    report = SeedReport(seed=seed, scale=scale)
    population = population or region.SCALES[scale]
    districts = region.load_districts()

    def step(name: str, work: Callable[[], dict[str, int] | int]) -> None:
        start = time.perf_counter()
        result = work()
        report.seconds[name] = time.perf_counter() - start
        report.step_counts[name] = result if isinstance(result, dict) else {name: result}
        report.counts.update(report.step_counts[name])

    def load_registry() -> dict[str, int]:
        facilities = region.facilities(seed, districts)
        departments = region.departments(seed, facilities)
        practitioners = region.practitioners(seed, facilities, departments)
        return registry.bulk_load(
            session,
            facilities=_counted((region.as_row(f) for f in facilities), "facilities", len(facilities), progress, 500),
            departments=(region.as_row(d) for d in departments),
            practitioners=(region.as_row(p) for p in practitioners),
        )

    people: list[region.Resident] = []

    def load_residents() -> dict[str, int]:
        def kept(rows):  # streamed into COPY, and kept for the visit cards (twins need everyone; ~200 B each)
            for r in rows:
                people.append(r)
                yield region.as_row(r)

        generated = _counted(region.residents(seed, population, districts), "residents", population, progress)
        n = copy_rows(session, "synth.resident", RESIDENT_COLUMNS, kept(generated))
        extra = list(visitcards.twins(seed, people))
        n += copy_rows(session, "synth.resident", RESIDENT_COLUMNS, kept(extra))
        return {"residents": n, "twins": len(extra)}

    def load_visit_cards() -> int:
        facilities = region.facilities(seed, districts)
        truths: list[tuple] = []
        expected = int(len(people) * CARDS_PER_RESIDENT)

        def cards():
            for card, truth in visitcards.visit_cards(seed, people, facilities, cards_per_resident=CARDS_PER_RESIDENT):
                truths.append((truth.card_id, truth.resident_id, list(truth.errors)))
                yield visitcards.as_row(card)

        n = copy_rows(session, "synth.visit_card", visitcards.VisitCard.COLUMNS, _counted(cards(), "visit cards", expected, progress))
        copy_rows(session, "synth.visit_card_truth", ("card_id", "resident_id", "errors"), truths)
        return n

    step("registry", load_registry)
    step("residents", load_residents)
    step("visit_cards", load_visit_cards)
    session.add(SeedRun(seed=seed, scale=scale, residents=report.counts["residents"], seconds=report.total_seconds))
    audit.record(session, actor=actor, action="synth.seed", target=f"region:seed={seed}",
                 detail={"scale": scale, **report.counts})
    return report


def resident_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Resident)) or 0


def visit_card_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(VisitCard)) or 0


def write_visit_cards_csv(session: Session, path) -> int:
    """The seeded visit cards as a hospital export (the CSV ``smartcare empi migrate`` reads)."""
    columns = ", ".join(visitcards.CSV_COLUMNS)
    raw = driver(session)
    rows = 0
    with open(path, "wb") as out, raw.cursor() as cur, \
            cur.copy(f"COPY (SELECT {columns} FROM synth.visit_card ORDER BY card_id) TO STDOUT WITH (FORMAT csv, HEADER)") as copy:
        for block in copy:
            out.write(block)
            rows += bytes(block).count(b"\n")
    return rows - 1


def last_run(session: Session) -> SeedRun | None:
    return session.scalar(select(SeedRun).order_by(SeedRun.id.desc()).limit(1))


def random_residents(session: Session, *, limit: int, seed: int) -> list[dict]:
    """A reproducible sample of residents as plain dicts (for simulators and benchmarks)."""
    rows = session.execute(select(Resident).order_by(func.md5(func.concat(Resident.id, str(seed)))).limit(limit)).scalars()
    return [{"id": r.id, "name": r.name, "sex": r.sex, "birth_date": r.birth_date, "id_number": r.id_number,
             "phone": r.phone, "address": r.address} for r in rows]


def demo_family(session: Session) -> tuple[dict, dict | None]:
    """A synthetic guardian and one of their children (the demo resident's identity and family)."""
    columns = (Resident.name, Resident.id_number, Resident.phone)
    child = session.execute(select(Resident.guardian_id, *columns).where(Resident.guardian_id.is_not(None))
                            .order_by(Resident.id).limit(1)).mappings().first()
    if child is None:
        adult = session.execute(select(*columns).order_by(Resident.id).limit(1)).mappings().one()
        return dict(adult), None
    adult = session.execute(select(*columns).where(Resident.id == child["guardian_id"])).mappings().one()
    return dict(adult), {k: v for k, v in child.items() if k != "guardian_id"}


def population_record(session: Session, id_number: str) -> dict | None:
    """The demo region's population registry entry for an ID number: name, phone, and the guardian's
    phone for a child (the synthetic population plays the authoritative registry, 人口库)."""
    guardian = aliased(Resident)
    row = session.execute(select(Resident.name, Resident.phone, guardian.phone.label("guardian_phone"))
                          .outerjoin(guardian, guardian.id == Resident.guardian_id)
                          .where(Resident.id_number == id_number)).mappings().first()
    return dict(row) if row else None


def document_hospitals(session: Session, *, limit: int = 3, codes: Iterable[str] = ()) -> list:
    """Hospitals as the document generator wants them (credit code, departments, doctors): the ones named
    by ``codes``, or else the ``limit`` largest."""
    from smartcare.synth.documents import Hospital

    out = []
    chosen = [registry.get_facility(session, c) for c in codes] or registry.hospitals(session, limit=limit)
    for f in chosen:
        departments = tuple((d.code, d.name) for d in registry.list_departments(session, f.code))[:10]
        _, doctors = registry.list_practitioners(session, f.code, size=50)
        if departments and len(doctors) >= 2:
            out.append(Hospital(f.code, registry.credit_code(f.code), f.name, departments,
                                tuple((p.code, p.name, p.title) for p in doctors)))
    return out


def document_people(session: Session, *, limit: int, seed: int) -> list:
    from smartcare.synth.documents import Person

    return [Person(r["id_number"], r["name"], r["sex"], r["birth_date"], r["phone"], "")
            for r in random_residents(session, limit=limit, seed=seed)]


def register_documents(session: Session, docs: Iterable, *, actor: str = "synth") -> list[int]:
    """Put generated documents (``synth.documents.SynthDocument``) into the registry as their hospitals
    would send them; returns the registry ids (the quality consumer checks each as it is registered)."""
    from smartcare.records import service as records

    ids = []
    for d in docs:
        done = records.register(session, raw=d.xml, sender=f"synth:{d.facility_code}", facility_code=d.facility_code,
                                exchange_message_id=None, received_at=d.sent_at, actor=actor)
        ids.append(done.document.id)
    return ids
