"""Deterministic pre-linking: the first, cautious step of matching.

A new source is linked to an existing person only when another source of that person agrees on
everything a wrong link would get wrong: the same *valid* ID number, the same birth date, the same
name sound (pinyin, so 張偉 / 张伟 / 章伟 agree) and no contradicting sex. A guardian's ID written on a
child's card shares the ID but not the birth date or name, so it is not linked; twins have different
ID numbers. Everything else gets a person of its own until the probabilistic engine (Fellegi–Sunter,
to come) or a reviewer decides otherwise — precision first, recall later.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.empi import service
from smartcare.empi.models import Link, Person, SourceIdentity

RULE = "rule:id+birth+sound"


def _agrees(a: dict, b: dict) -> bool:
    sexes = {a.get("sex"), b.get("sex")} - {None, "", "0", "9"}
    return (a.get("birth_date") is not None and a.get("birth_date") == b.get("birth_date")
            and bool(a.get("pinyin_key")) and a.get("pinyin_key") == b.get("pinyin_key") and len(sexes) <= 1)


def candidates(session: Session, source: SourceIdentity) -> list[tuple[SourceIdentity, int]]:
    """Linked sources sharing the normalised valid ID number (index lookup, never a scan)."""
    number = source.norm.get("id_number") if source.norm.get("id_valid") else None
    if not number:
        return []
    rows = session.execute(
        select(SourceIdentity, Link.person_id).join(Link, Link.source_id == SourceIdentity.id)
        .join(Person, Person.id == Link.person_id)
        .where(SourceIdentity.norm["id_number"].astext == number, SourceIdentity.id != source.id, Person.state == "active"))
    return [(s, pid) for s, pid in rows]


def prelink(session: Session, source: SourceIdentity, *, actor: str = "empi") -> Person:
    """Link ``source`` by the deterministic rule, or give it a person of its own. Idempotent."""
    current = session.get(Link, source.id)
    if current is not None:
        return session.get(Person, current.person_id)
    for other, person_id in candidates(session, source):
        if _agrees(source.norm, other.norm):
            return service.link(session, source_id=source.id, person_id=person_id, method=RULE, actor=actor)
    return service.link(session, source_id=source.id, person_id=None, method="rule:new", actor=actor)
