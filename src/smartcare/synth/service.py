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
from sqlalchemy.orm import Session

from smartcare.platform import audit
from smartcare.platform.db import copy_rows
from smartcare.platform.errors import Conflict, InvalidInput
from smartcare.registry import service as registry
from smartcare.synth import region
from smartcare.synth.models import Resident, SeedRun

#: ``progress(step, done, total)`` — the CLI draws a bar from it.
Progress = Callable[[str, int, int], None]

RESIDENT_COLUMNS = ("id", "name", "sex", "birth_date", "id_number", "phone", "district_code", "address",
                    "ethnicity", "family_id", "guardian_id")


@dataclass
class SeedReport:
    seed: int
    scale: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def _counted(rows: Iterable, step: str, total: int, progress: Progress | None, every: int = 10_000) -> Iterator:
    done = 0
    for row in rows:
        yield row
        done += 1
        if progress and done % every == 0:
            progress(step, done, total)
    if progress:
        progress(step, done, total)


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
        report.counts.update(result if isinstance(result, dict) else {name: result})

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

    def load_residents() -> int:
        rows = (region.as_row(r) for r in region.residents(seed, population, districts))
        return copy_rows(session, "synth.resident", RESIDENT_COLUMNS, _counted(rows, "residents", population, progress))

    step("registry", load_registry)
    step("residents", load_residents)
    session.add(SeedRun(seed=seed, scale=scale, residents=report.counts["residents"], seconds=report.total_seconds))
    audit.record(session, actor=actor, action="synth.seed", target=f"region:seed={seed}",
                 detail={"scale": scale, **report.counts})
    return report


def resident_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Resident)) or 0


def last_run(session: Session) -> SeedRun | None:
    return session.scalar(select(SeedRun).order_by(SeedRun.id.desc()).limit(1))


def sample_residents(session: Session, *, limit: int = 10, offset: int = 0) -> list[Resident]:
    return list(session.scalars(select(Resident).order_by(Resident.id).offset(offset).limit(limit)))


def random_residents(session: Session, *, limit: int, seed: int) -> list[dict]:
    """A reproducible sample of residents as plain dicts (for simulators and benchmarks)."""
    rows = session.execute(select(Resident).order_by(func.md5(func.concat(Resident.id, str(seed)))).limit(limit)).scalars()
    return [{"id": r.id, "name": r.name, "sex": r.sex, "birth_date": r.birth_date, "id_number": r.id_number,
             "phone": r.phone, "address": r.address} for r in rows]
