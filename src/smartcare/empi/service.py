"""Master patient index operations: source identities, persons, links and their reversible history.

Invariants (kept by every function here, checked by the tests):
- once linked, a source identity is linked to exactly one active person (a registered source waits,
  unlinked, only until the matching engine decides);
- every change of a link is one appended ``empi.history`` row and one audit entry, and can be undone
  (unlink by linking again, merge by unmerge) — history is never rewritten;
- a person's golden record is recomputed from its linked sources whenever its links change.

Matching (which person a new source belongs to) is the matching engine's job; these functions
carry out its decisions and the reviewers'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from smartcare.empi.models import History, Link, Person, SourceIdentity
from smartcare.empi.normalize import Normalized, normalize
from smartcare.platform import audit
from smartcare.platform.errors import Conflict, InvalidInput, NotFound

GOLDEN_FIELDS = ("name", "id_number", "sex", "birth_date", "phone", "address", "district_code")


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date | datetime) else value


def norm_dict(record: Mapping[str, Any], normalized: Normalized | None = None) -> dict:
    """The normalised form as stored beside the recorded one (JSON), with its repairs and conflicts."""
    n = normalized or normalize(record)
    data = {k: _json(v) for k, v in asdict(n).items() if k not in ("repairs", "pinyin")}
    data["pinyin"] = list(n.pinyin)
    data["repairs"] = [asdict(r) for r in n.repairs]
    data["conflicts"] = list(n.conflicts)
    return data


def register_source(session: Session, *, facility_code: str, card_no: str, record: Mapping[str, Any], trust: int = 1,
                    recorded_at: datetime | None = None, actor: str = "system") -> SourceIdentity:
    """Record (or update) a hospital's visit card; its normalised form is kept beside what was recorded."""
    if not facility_code or not card_no:
        raise InvalidInput("a source identity needs facility_code and card_no", field="card_no")
    recorded = {k: _json(v) for k, v in record.items() if k in ("name", "id_number", "sex", "birth_date", "phone", "address")}
    source = session.scalar(select(SourceIdentity).where(SourceIdentity.facility_code == facility_code,
                                                         SourceIdentity.card_no == card_no))
    norm = norm_dict(record)
    when = recorded_at or datetime.now(UTC)
    if source is None:
        source = SourceIdentity(facility_code=facility_code, card_no=card_no, recorded=recorded, norm=norm, trust=trust,
                                recorded_at=when)
        session.add(source)
    else:
        source.recorded, source.norm, source.trust, source.recorded_at = recorded, norm, trust, when
    session.flush()
    linked = session.get(Link, source.id)
    if linked is not None:
        recompute_golden(session, linked.person_id)
    return source


def _new_person(session: Session) -> Person:
    number = session.execute(text("SELECT nextval('empi.person_number')")).scalar_one()
    person = Person(empi_id=f"E{number:011d}", golden={}, state="active")
    session.add(person)
    session.flush()
    return person


def _record(session: Session, *, action: str, person_id: int, actor: str, source_id: int | None = None,
            other_person_id: int | None = None, weight: float | None = None, method: str | None = None,
            detail: dict | None = None) -> History:
    entry = History(action=action, source_id=source_id, person_id=person_id, other_person_id=other_person_id,
                    weight=weight, method=method, actor=actor, detail=detail or {})
    session.add(entry)
    session.flush()
    audit.record(session, actor=actor, action=f"empi.{action}", target=f"person:{person_id}",
                 detail={"source_id": source_id, "other_person_id": other_person_id, "method": method, "history": entry.id})
    return entry


def active_person(session: Session, person_id: int) -> Person:
    person = session.get(Person, person_id)
    if person is None:
        raise NotFound(f"no person {person_id}", field="person_id")
    if person.state != "active":
        raise Conflict(f"person {person.empi_id} was merged into another", field="person_id",
                       hint="use the person it was merged into, or unmerge first")
    return person


def link(session: Session, *, source_id: int, person_id: int | None = None, weight: float | None = None,
         method: str, actor: str, confirmed: bool = False) -> Person:
    """Link a source to a person (a new person when ``person_id`` is None); moving it is a ``relink``."""
    if session.get(SourceIdentity, source_id) is None:
        raise NotFound(f"no source identity {source_id}", field="source_id")
    person = _new_person(session) if person_id is None else active_person(session, person_id)
    current = session.get(Link, source_id, with_for_update=True)
    if current is not None and current.person_id == person.id:
        return person
    previous = current.person_id if current is not None else None
    if current is None:
        session.add(Link(source_id=source_id, person_id=person.id, weight=weight, method=method,
                         confirmed_by=actor if confirmed else None))
    else:
        current.person_id, current.weight, current.method = person.id, weight, method
        current.confirmed_by, current.linked_at = (actor if confirmed else None), datetime.now(UTC)
    session.flush()
    _record(session, action="relink" if previous else "link", source_id=source_id, person_id=person.id,
            other_person_id=previous, weight=weight, method=method, actor=actor)
    recompute_golden(session, person.id)
    if previous is not None:
        recompute_golden(session, previous)
    return person


def unlink(session: Session, *, source_id: int, actor: str, reason: str) -> Person:
    """Take a source away from its person; it gets a person of its own (every source stays linked)."""
    current = session.get(Link, source_id)
    if current is None:
        raise NotFound(f"source identity {source_id} is not linked", field="source_id")
    old = current.person_id
    person = _new_person(session)
    current.person_id, current.weight, current.method, current.confirmed_by = person.id, None, "unlink", actor
    current.linked_at = datetime.now(UTC)
    session.flush()
    _record(session, action="unlink", source_id=source_id, person_id=person.id, other_person_id=old, method="unlink",
            actor=actor, detail={"reason": reason})
    recompute_golden(session, person.id)
    recompute_golden(session, old)
    return person


def merge(session: Session, *, survivor_id: int, merged_id: int, actor: str, reason: str = "") -> History:
    """Fold one person into another: all its sources move, it is marked merged. Reversible by ``unmerge``."""
    if survivor_id == merged_id:
        raise InvalidInput("a person cannot be merged into itself", field="merged_id")
    survivor, merged = active_person(session, survivor_id), active_person(session, merged_id)
    moved = [lk.source_id for lk in session.scalars(select(Link).where(Link.person_id == merged.id).with_for_update())]
    session.execute(text("UPDATE empi.link SET person_id = :s, linked_at = now() WHERE person_id = :m"),
                    {"s": survivor.id, "m": merged.id})
    session.expire_all()  # links loaded before the bulk UPDATE must not be read stale later in this transaction
    merged.state, merged.merged_into, merged.updated_at = "merged", survivor.id, datetime.now(UTC)
    session.flush()
    entry = _record(session, action="merge", person_id=survivor.id, other_person_id=merged.id, actor=actor,
                    detail={"moved_sources": moved, "reason": reason})
    recompute_golden(session, survivor.id)
    return entry


def unmerge(session: Session, *, merge_history_id: int, actor: str, reason: str = "") -> Person:
    """Undo a merge: the merged person comes back with the sources it had (those still on the survivor)."""
    entry = session.get(History, merge_history_id)
    if entry is None or entry.action != "merge":
        raise NotFound(f"no merge with history id {merge_history_id}", field="merge_history_id")
    merged = session.get(Person, entry.other_person_id)
    if merged is None or merged.state != "merged" or merged.merged_into != entry.person_id:
        raise Conflict("this merge was already undone or superseded", field="merge_history_id")
    back = [s for s in entry.detail.get("moved_sources", [])
            if session.scalar(select(Link.person_id).where(Link.source_id == s)) == entry.person_id]
    if back:
        session.execute(text("UPDATE empi.link SET person_id = :m, linked_at = now() WHERE source_id = ANY(:ids)"),
                        {"m": merged.id, "ids": back})
        session.expire_all()
    merged.state, merged.merged_into, merged.updated_at = "active", None, datetime.now(UTC)
    session.flush()
    _record(session, action="unmerge", person_id=merged.id, other_person_id=entry.person_id, actor=actor,
            detail={"merge": merge_history_id, "moved_back": back, "reason": reason})
    recompute_golden(session, merged.id)
    recompute_golden(session, entry.person_id)
    return merged


def golden_of(sources: list[tuple[dict, int, datetime]]) -> dict:
    """Survivorship per field over (norm, trust, recorded_at) of a person's sources: among those with
    a value, a valid ID number first, then the most trusted source, then the most recent, then the
    most complete record."""
    golden: dict[str, Any] = {}
    for name in GOLDEN_FIELDS:
        best = None
        for norm, trust, recorded_at in sources:
            value = norm.get(name)
            if value in (None, "") or (name == "sex" and value in ("0", "9")):
                continue
            completeness = sum(1 for f in GOLDEN_FIELDS if norm.get(f) not in (None, ""))
            rank = (bool(norm.get("id_valid")) if name == "id_number" else True, trust, recorded_at, completeness)
            if best is None or rank > best[0]:
                best = (rank, value)
        if best is not None:
            golden[name] = best[1]
    golden["sources"] = len(sources)
    return golden


def recompute_golden(session: Session, person_id: int) -> dict:
    """The person's golden record from its linked sources (``golden_of``), stored."""
    person = session.get(Person, person_id)
    sources = list(session.scalars(select(SourceIdentity).join(Link, Link.source_id == SourceIdentity.id)
                                   .where(Link.person_id == person_id)))
    golden = golden_of([(s.norm, s.trust, s.recorded_at) for s in sources])
    person.golden, person.updated_at = golden, datetime.now(UTC)
    session.flush()
    return golden


def xref(session: Session, empi_id: str) -> tuple[Person, list[SourceIdentity]]:
    """A person and every visit card linked to them (PIX-style cross reference)."""
    person = session.scalar(select(Person).where(Person.empi_id == empi_id))
    if person is None:
        raise NotFound(f"no person {empi_id}", field="empi_id")
    while person.state == "merged" and person.merged_into:
        person = session.get(Person, person.merged_into)
    sources = list(session.scalars(select(SourceIdentity).join(Link, Link.source_id == SourceIdentity.id)
                                   .where(Link.person_id == person.id).order_by(SourceIdentity.facility_code)))
    return person, sources


def person_by_card(session: Session, *, facility_code: str, card_no: str) -> Person:
    """The person behind a hospital's own (old) visit card number."""
    person_id = session.scalar(select(Link.person_id).join(SourceIdentity, SourceIdentity.id == Link.source_id)
                               .where(SourceIdentity.facility_code == facility_code, SourceIdentity.card_no == card_no))
    if person_id is None:
        raise NotFound(f"no visit card {card_no!r} at {facility_code}", field="card_no")
    return session.get(Person, person_id)


def person_id_of(session: Session, empi_id: str) -> int:
    found = session.scalar(select(Person.id).where(Person.empi_id == empi_id))
    if found is None:
        raise NotFound(f"no person {empi_id}", field="empi_id")
    return found


def history(session: Session, person_id: int) -> list[History]:
    return list(session.scalars(select(History).where((History.person_id == person_id) | (History.other_person_id == person_id))
                                .order_by(History.id)))


def counts(session: Session) -> dict[str, int]:
    return {
        "sources": session.scalar(select(func.count()).select_from(SourceIdentity)) or 0,
        "persons": session.scalar(select(func.count()).select_from(Person).where(Person.state == "active")) or 0,
    }
