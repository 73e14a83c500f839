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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from smartcare.empi.fields import FieldConfig, default_config
from smartcare.empi.models import History, Link, Person, SourceIdentity
from smartcare.empi.normalize import Normalized, normalize
from smartcare.platform import audit
from smartcare.platform.db import driver
from smartcare.platform.errors import Conflict, InvalidInput, NotFound


def _json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date | datetime) else value


def norm_dict(record: Mapping[str, Any], normalized: Normalized | None = None) -> dict:
    """The normalised form as stored beside the recorded one (JSON), with its repairs and conflicts."""
    n = normalized or normalize(record)
    data = {f.name: _json(getattr(n, f.name)) for f in fields(n)}  # not asdict: it deep-copies, on a hot path
    data["pinyin"] = list(n.pinyin)
    data["repairs"] = [{"field": r.field, "code": r.code, "message": r.message} for r in n.repairs]
    data["conflicts"] = list(n.conflicts)
    return data


@dataclass(frozen=True)
class Registered:
    """A source identity as registered: its id, its features (what matching compares) and its person
    if it was already linked (a hospital re-sending a card it had sent before)."""

    id: int
    features: dict
    person_id: int | None


@dataclass(frozen=True)
class PersonRef:
    id: int
    empi_id: str


@dataclass(frozen=True)
class Prepared:
    """A card in the form it is stored and matched in, computed before any SQL (so matching can
    search candidates in the same round trip as the registration)."""

    recorded: dict
    norm: dict
    features: dict
    keys: list[int]


def prepare_source(record: Mapping[str, Any], config: FieldConfig | None = None) -> Prepared:
    config = config or default_config()
    recorded = {k: _json(v) for k, v in record.items() if k in config.columns}
    normalized = normalize(record) if config.normaliser == "chinese" else None
    norm = norm_dict(record, normalized) if normalized else {}
    features = {k: v for k, v in config.features(record, normalized).items() if v is not None}
    return Prepared(recorded, norm, features, config.blocking_hashes(features))


def register_source(session: Session, *, facility_code: str, card_no: str, record: Mapping[str, Any] | None = None,
                    prepared: Prepared | None = None, trust: int = 1, recorded_at: datetime | None = None,
                    actor: str = "system", config: FieldConfig | None = None) -> Registered:
    """Record (or update) a hospital's visit card in one statement: what was recorded, its normalised
    form, its features and its blocking keys (the inverted index of candidate search). A card already
    linked gets its person's golden record refreshed. Give ``record``, or ``prepared`` from it."""
    if not facility_code or not card_no:
        raise InvalidInput("a source identity needs facility_code and card_no", field="card_no")
    p = prepared or prepare_source(record or {}, config)
    row = driver(session).execute(
        """WITH s AS (
               INSERT INTO empi.source_identity AS s (facility_code, card_no, recorded, norm, features, trust, recorded_at)
               VALUES (%(f)s, %(c)s, %(recorded)s, %(norm)s, %(features)s, %(trust)s, %(at)s)
               ON CONFLICT (facility_code, card_no) DO UPDATE
                  SET recorded = EXCLUDED.recorded, norm = EXCLUDED.norm, features = EXCLUDED.features,
                      trust = EXCLUDED.trust, recorded_at = EXCLUDED.recorded_at
               RETURNING s.id),
           stale AS (DELETE FROM empi.blocking_key b USING s WHERE b.source_id = s.id
                        AND b.key <> ALL(CAST(%(keys)s AS bigint[]))),
           added AS (INSERT INTO empi.blocking_key (key, source_id)
                     SELECT k, s.id FROM s, unnest(CAST(%(keys)s AS bigint[])) AS k ON CONFLICT DO NOTHING)
           SELECT s.id, (SELECT l.person_id FROM empi.link l WHERE l.source_id = s.id) FROM s""",
        {"f": facility_code, "c": card_no, "recorded": Jsonb(p.recorded), "norm": Jsonb(p.norm),
         "features": Jsonb(p.features), "trust": trust, "at": recorded_at or datetime.now(UTC),
         "keys": p.keys}).fetchone()
    _expire(session, SourceIdentity, row[0])
    if row[1] is not None:
        recompute_golden(session, row[1])
    return Registered(row[0], p.features, row[1])


def _expire(session: Session, model: type, key: int) -> None:
    """Plain SQL changed this row: an ORM copy of it in the session must be read again."""
    loaded = session.identity_map.get(identity_key(model, key))
    if loaded is not None:
        session.expire(loaded)


def _new_person(session: Session) -> PersonRef:
    row = driver(session).execute(
        """INSERT INTO empi.person (empi_id, golden, state)
           VALUES ('E' || lpad(nextval('empi.person_number')::text, 11, '0'), '{}', 'active') RETURNING id, empi_id"""
    ).fetchone()
    return PersonRef(row[0], row[1])


def _record(session: Session, *, action: str, person_id: int, actor: str, source_id: int | None = None,
            other_person_id: int | None = None, weight: float | None = None, method: str | None = None,
            detail: dict | None = None) -> int:
    """One history row and its audit entry; call it last in a transaction (the audit lock is held to commit)."""
    entry_id = driver(session).execute(
        """INSERT INTO empi.history (action, source_id, person_id, other_person_id, weight, method, actor, detail)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (action, source_id, person_id, other_person_id, weight, method, actor, Jsonb(detail or {}))).fetchone()[0]
    _audit(session, action=action, person_id=person_id, actor=actor, source_id=source_id,
           other_person_id=other_person_id, method=method, history_id=entry_id)
    return entry_id


def _audit(session: Session, *, action: str, person_id: int, actor: str, source_id: int | None,
           other_person_id: int | None, method: str | None, history_id: int) -> None:
    audit.record(session, actor=actor, action=f"empi.{action}", target=f"person:{person_id}",
                 detail={"source_id": source_id, "other_person_id": other_person_id, "method": method,
                         "history": history_id})


def active_person(session: Session, person_id: int) -> PersonRef:
    row = driver(session).execute("SELECT empi_id, state FROM empi.person WHERE id = %s", (person_id,)).fetchone()
    if row is None:
        raise NotFound(f"no person {person_id}", field="person_id")
    if row[1] != "active":
        raise Conflict(f"person {row[0]} was merged into another", field="person_id",
                       hint="use the person it was merged into, or unmerge first")
    return PersonRef(person_id, row[0])


def person_ref(session: Session, person_id: int) -> PersonRef:
    return PersonRef(person_id, driver(session).execute("SELECT empi_id FROM empi.person WHERE id = %s",
                                                        (person_id,)).fetchone()[0])


_UP = """up (id, empi_id, merged_into, depth) AS (
    SELECT id, empi_id, merged_into, 0 FROM empi.person WHERE id = {person}
    UNION ALL
    SELECT p.id, p.empi_id, p.merged_into, up.depth + 1 FROM empi.person p JOIN up ON p.id = up.merged_into
    WHERE up.depth < 32)"""
_NOW = "SELECT id, empi_id FROM up ORDER BY depth DESC LIMIT 1"  # the last of the chain ``_UP`` walks


def now_of(person: str) -> str:
    """SQL of a subquery for another capability's statement (``LEFT JOIN LATERAL (…) now ON true``): the person
    the id expression ``person`` stands for now (following merges), columns id and empi_id."""
    return f"WITH RECURSIVE {_UP.format(person=person)} {_NOW}"


_RESOLVE = now_of("%(p)s")


def cards_at_ctes(person: str, facility: str) -> str:
    """``cards_at`` as common table expressions for a statement of another capability that needs it in its own
    round trip (``WITH RECURSIVE`` list items): ``now_is`` (id, empi_id), the person the SQL expression ``person``
    stands for now, and ``cards_here`` (card_no), their visit cards at the facility ``facility`` (SQL)."""
    return f"""{_UP.format(person=person)},
        now_is AS ({_NOW}),
        cards_here AS (SELECT s.card_no FROM now_is n JOIN empi.link l ON l.person_id = n.id
                       JOIN empi.source_identity s ON s.id = l.source_id AND s.facility_code = {facility})"""


def cards_at(session: Session, *, person_id: int, facility_code: str) -> tuple[PersonRef, list[str]]:
    """The person a (possibly merged) person id stands for now, and the visit card numbers linked to
    them at one facility. One statement: a hospital terminal asks this on every scan."""
    row = driver(session).execute(
        f"""WITH RECURSIVE {cards_at_ctes('%(p)s', '%(f)s')}
            SELECT n.id, n.empi_id, (SELECT array_agg(card_no ORDER BY card_no) FROM cards_here) FROM now_is n""",
        {"p": person_id, "f": facility_code}).fetchone()
    if row is None:
        raise NotFound(f"no person {person_id}", field="person_id")
    return PersonRef(row[0], row[1]), row[2] or []


def absorbed_ids(session: Session, person_id: int) -> list[int]:
    """The person ``person_id`` stands for now (following merges) and every person merged into them (directly
    or through another merge), that one first: ids other capabilities may still hold for the same human being.
    One statement (every read of a person's records asks it)."""
    rows = driver(session).execute(
        f"""WITH RECURSIVE {_UP.format(person='%(p)s')},
           now_is AS ({_NOW}),
           down (id, depth) AS (
               SELECT id, 0 FROM now_is
               UNION ALL
               SELECT p.id, down.depth + 1 FROM empi.person p JOIN down ON p.merged_into = down.id WHERE down.depth < 32)
           SELECT id FROM down ORDER BY depth""", {"p": person_id}).fetchall()
    return [r[0] for r in rows]


def link(session: Session, *, source_id: int, person_id: int | None = None, weight: float | None = None,
         method: str, actor: str, confirmed: bool = False,
         unless_holding: tuple[str, str] | None = None) -> PersonRef | None:
    """Link a source to a person (a new person when ``person_id`` is None); moving it is a ``relink``.

    Every registration of a card comes through here, so it is one statement: it checks and locks, and writes
    the person (new or found), the link, the history and the golden records of the person and of the one the
    card left; the audit entry is appended at commit.

    ``unless_holding=(feature, value)``: write nothing and return None if the person holds a card whose
    ``feature`` has another value (a different certain ID: twins, a guardian's ID) — checked in the same
    statement, so matching needs no extra round trip."""
    feature, value = unless_holding or (None, None)
    if person_id is None:  # a person made in this statement: its golden record comes with it (an UPDATE could not see it)
        target = """INSERT INTO empi.person (empi_id, golden, state)
                    SELECT 'E' || lpad(nextval('empi.person_number')::text, 11, '0'),
                           empi.golden(ARRAY[src.norm], ARRAY[src.trust::integer], ARRAY[src.recorded_at]), 'active'
                      FROM src
                    RETURNING id, empi_id, state"""
        joined = ""
    else:
        target = "SELECT id, empi_id, state FROM empi.person WHERE id = %(p)s"
        joined = f""",
                 joined AS (UPDATE empi.person p SET updated_at = now(),
                                   golden = empi.golden(o.norms || src.norm, o.trusts || src.trust::integer,
                                                        o.recorded || src.recorded_at)
                              FROM ok, src, ({_SOURCES.format(where="l.person_id = %(p)s AND l.source_id <> %(s)s")}) o
                             WHERE p.id = ok.person_id)"""
    row = driver(session).execute(
        f"""WITH src AS (SELECT s.id, s.norm, s.trust, s.recorded_at,
                                (SELECT person_id FROM empi.link WHERE source_id = s.id) AS previous
                           FROM empi.source_identity s WHERE s.id = %(s)s FOR UPDATE),
                 tgt AS ({target}),
                 clash AS (SELECT EXISTS (SELECT 1 FROM empi.link cl JOIN empi.source_identity cs ON cs.id = cl.source_id
                                           WHERE cl.person_id = (SELECT id FROM tgt)
                                             AND cs.features ->> CAST(%(feature)s AS text) <> %(value)s) AS found),
                 ok AS (SELECT src.id, tgt.id AS person_id, src.previous FROM src, tgt
                         WHERE tgt.state = 'active' AND tgt.id IS DISTINCT FROM src.previous
                           AND NOT (SELECT found FROM clash)),
                 l AS (INSERT INTO empi.link (source_id, person_id, weight, method, confirmed_by)
                       SELECT ok.id, ok.person_id, %(w)s, %(m)s, %(c)s FROM ok
                       ON CONFLICT (source_id) DO UPDATE SET person_id = EXCLUDED.person_id, weight = EXCLUDED.weight,
                          method = EXCLUDED.method, confirmed_by = EXCLUDED.confirmed_by, linked_at = now()),
                 h AS (INSERT INTO empi.history (action, source_id, person_id, other_person_id, weight, method, actor)
                       SELECT CASE WHEN ok.previous IS NULL THEN 'link' ELSE 'relink' END, ok.id, ok.person_id,
                              ok.previous, %(w)s, %(m)s, %(actor)s FROM ok RETURNING id),
                 left_behind AS (UPDATE empi.person p SET updated_at = now(),
                                        golden = empi.golden(o.norms, o.trusts, o.recorded)
                                   FROM ok, LATERAL ({_SOURCES.format(where="l.person_id = ok.previous AND l.source_id <> ok.id")}) o
                                  WHERE p.id = ok.previous){joined}
            SELECT src.previous, tgt.id, tgt.empi_id, tgt.state, (SELECT id FROM h), (SELECT found FROM clash)
              FROM src LEFT JOIN tgt ON true""",
        {"s": source_id, "p": person_id, "w": weight, "m": method, "c": actor if confirmed else None,
         "actor": actor, "feature": feature, "value": value}).fetchone()
    if row is None:
        raise NotFound(f"no source identity {source_id}", field="source_id")
    previous, new_id, empi_id, state, history_id, clash = row
    if new_id is None:
        raise NotFound(f"no person {person_id}", field="person_id")
    if state != "active":
        raise Conflict(f"person {empi_id} was merged into another", field="person_id",
                       hint="use the person it was merged into, or unmerge first")
    if clash:
        return None
    if history_id is None:  # already linked to this person: nothing was written
        return PersonRef(new_id, empi_id)
    for key in (new_id, previous) if previous is not None else (new_id,):
        _expire(session, Person, key)
    _expire(session, Link, source_id)
    _audit(session, action="relink" if previous else "link", person_id=new_id, actor=actor, source_id=source_id,
           other_person_id=previous, method=method, history_id=history_id)
    return PersonRef(new_id, empi_id)


def unlink(session: Session, *, source_id: int, actor: str, reason: str) -> PersonRef:
    """Take a source away from its person; it gets a person of its own (every source stays linked)."""
    current = session.get(Link, source_id)
    if current is None:
        raise NotFound(f"source identity {source_id} is not linked", field="source_id")
    old = current.person_id
    person = _new_person(session)
    current.person_id, current.weight, current.method, current.confirmed_by = person.id, None, "unlink", actor
    current.linked_at = datetime.now(UTC)
    session.flush()
    recompute_golden(session, person.id)
    recompute_golden(session, old)
    _record(session, action="unlink", source_id=source_id, person_id=person.id, other_person_id=old, method="unlink",
            actor=actor, detail={"reason": reason})
    return person


def merge(session: Session, *, survivor_id: int, merged_id: int, actor: str, reason: str = "") -> History:
    """Fold one person into another: all its sources move, it is marked merged. Reversible by ``unmerge``."""
    if survivor_id == merged_id:
        raise InvalidInput("a person cannot be merged into itself", field="merged_id")
    survivor, merged = active_person(session, survivor_id), active_person(session, merged_id)
    moved = [lk.source_id for lk in session.scalars(select(Link).where(Link.person_id == merged.id).with_for_update())]
    session.execute(text("UPDATE empi.link SET person_id = :s, linked_at = now() WHERE person_id = :m"),
                    {"s": survivor.id, "m": merged.id})
    session.execute(text("UPDATE empi.person SET state = 'merged', merged_into = :s, updated_at = now() WHERE id = :m"),
                    {"s": survivor.id, "m": merged.id})
    session.expire_all()  # links and persons loaded before these UPDATEs must not be read stale later on
    recompute_golden(session, survivor.id)
    entry_id = _record(session, action="merge", person_id=survivor.id, other_person_id=merged.id, actor=actor,
                       detail={"moved_sources": moved, "reason": reason})
    return session.get(History, entry_id)


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
    recompute_golden(session, merged.id)
    recompute_golden(session, entry.person_id)
    _record(session, action="unmerge", person_id=merged.id, other_person_id=entry.person_id, actor=actor,
            detail={"merge": merge_history_id, "moved_back": back, "reason": reason})
    return merged


# Survivorship is the SQL function empi.golden (migration 0017): a link writes the golden records in the statement
# that links, and a bulk load computes them where the rows are. ``_SOURCES`` gives it a person's linked sources.
_SOURCES = """SELECT coalesce(array_agg(s.norm ORDER BY s.id), '{{}}') AS norms,
                     coalesce(array_agg(s.trust::integer ORDER BY s.id), '{{}}') AS trusts,
                     coalesce(array_agg(s.recorded_at ORDER BY s.id), '{{}}') AS recorded
                FROM empi.link l JOIN empi.source_identity s ON s.id = l.source_id WHERE {where}"""


def recompute_golden(session: Session, person_id: int) -> None:
    """The person's golden record from its linked sources (``empi.golden``), stored."""
    driver(session).execute(
        f"""UPDATE empi.person p SET golden = empi.golden(o.norms, o.trusts, o.recorded), updated_at = now()
              FROM ({_SOURCES.format(where="l.person_id = %(p)s")}) o WHERE p.id = %(p)s""", {"p": person_id})
    _expire(session, Person, person_id)


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


def goldens(session: Session, person_ids: Iterable[int]) -> dict[int, dict]:
    """The golden records of many persons at once (for statistics: callers generalise what they take)."""
    ids = list(set(person_ids))
    if not ids:
        return {}
    return dict(session.execute(select(Person.id, Person.golden).where(Person.id.in_(ids))).all())


@dataclass(frozen=True)
class CurrentPerson:
    """An active person as a reader of their records needs them: ids and the golden record (personal data:
    never in a repr)."""

    id: int
    empi_id: str
    golden: dict = field(repr=False)


def current_person(session: Session, empi_id: str) -> CurrentPerson:
    """The active person an EMPI id stands for now (following merges), without their visit cards. One statement
    on the driver: every read of a person's records asks it."""
    row = driver(session).execute(
        f"""WITH RECURSIVE {_UP.format(person='(SELECT id FROM empi.person WHERE empi_id = %(e)s)')}
            SELECT p.id, p.empi_id, p.golden FROM ({_NOW}) now
            JOIN empi.person p ON p.id = now.id""", {"e": empi_id}).fetchone()
    if row is None:
        raise NotFound(f"no person {empi_id}", field="empi_id")
    return CurrentPerson(row[0], row[1], row[2] or {})


def current_id(session: Session, person_id: int) -> int:
    """The id of the active person ``person_id`` is now (itself, or the one it was merged into)."""
    row = driver(session).execute(_RESOLVE, {"p": person_id}).fetchone()
    if row is None:
        raise NotFound(f"no person {person_id}", field="person_id")
    return row[0]


def profiles(session: Session, empi_ids: Iterable[str]) -> dict[str, dict]:
    """Generalised attributes of persons by EMPI id (birth year, sex, district), for statistics: no name,
    no number, no address below the district."""
    rows = session.execute(select(Person.empi_id, Person.golden).where(Person.empi_id.in_(list(set(empi_ids))))).all()
    return {empi_id: {"birth_year": int(g["birth_date"][:4]) if g.get("birth_date") else None,
                      "sex": g.get("sex"), "district_code": g.get("district_code")} for empi_id, g in rows}
