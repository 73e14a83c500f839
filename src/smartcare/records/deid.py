"""De-identified extracts of clinical items for research and statistics (GB/T 39725 去标识化).

What leaves: one row per diagnosis, vital sign or lab result of the current documents of identified
persons, with no direct identifier — the person is a pseudonym (HMAC of the person id under a key drawn
for this extract alone, so two extracts cannot be joined), the birth date is generalised to the year, the
address to the district, the service time to the month; free text is not exported.

k-anonymity: on the chosen quasi-identifiers (default birth year, sex, district; the hospital and the month
may be added) every combination must cover at least ``k`` persons; persons in smaller groups are suppressed
(all their rows), and the report says how many. Counting is per person, not per row: a person with many
results is still one person, and items filed under a person since merged into another count as that one's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.empi import service as empi
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.errors import InvalidInput
from smartcare.records.models import Document, Item

QUASI_IDENTIFIERS: Final = ("birth_year", "sex", "district_code")  # checked by default
#: what may be chosen: the released hospital and month single a person out too, for whoever knows them
CHOOSABLE: Final = (*QUASI_IDENTIFIERS, "facility_code", "service_month")
KINDS: Final = ("condition", "vital", "lab")
COLUMNS: Final = ("pseudonym", "birth_year", "sex", "district_code", "service_month", "facility_code", "type_code",
                  "kind", "code", "name", "value_code", "value_display", "value_number", "unit")


@dataclass
class Report:
    k: int
    quasi_identifiers: tuple[str, ...]
    persons: int = 0
    persons_kept: int = 0
    persons_suppressed: int = 0
    groups: int = 0
    smallest_group: int | None = None
    rows: int = 0
    rows_suppressed: int = 0
    group_sizes: Counter = field(default_factory=Counter)


def _profiles(session: Session, person_ids: set[int]) -> dict[int, dict]:
    """Generalised quasi-identifiers of each person (from the EMPI golden record)."""
    out = {}
    for pid, golden in empi.goldens(session, person_ids).items():
        g = golden or {}
        born = str(g.get("birth_date") or "")
        out[pid] = {"birth_year": born[:4] if len(born) >= 4 else None, "sex": g.get("sex"),
                    "district_code": g.get("district_code")}
    return out


def extract(session: Session, *, since: date | None = None, until: date | None = None, k: int = 5,
            quasi_identifiers: tuple[str, ...] = QUASI_IDENTIFIERS) -> tuple[list[dict], Report]:
    """The de-identified rows and the report (what was kept and suppressed)."""
    if k < 2:
        raise InvalidInput("k must be at least 2", field="k")
    unknown = set(quasi_identifiers) - set(CHOOSABLE)
    if unknown or not quasi_identifiers:
        raise InvalidInput(f"quasi-identifiers are chosen from {', '.join(CHOOSABLE)}", field="quasi")
    stmt = (select(Item, Document.service_time).join(Document, Document.id == Item.record_id)
            .where(Document.status == "current", Item.person_id.is_not(None), Item.kind.in_(KINDS)))
    if since:
        stmt = stmt.where(Document.service_time >= datetime.combine(since, time(), CHINA_TZ))
    if until:
        stmt = stmt.where(Document.service_time < datetime.combine(until, time(), CHINA_TZ))
    found = session.execute(stmt.order_by(Item.person_id, Item.id)).all()
    # one human, one person: items filed under a person merged into another since count as the survivor's
    now_of = {pid: empi.current_id(session, pid) for pid in {item.person_id for item, _ in found}}
    profiles = _profiles(session, set(now_of.values()))
    key = secrets.token_bytes(32)  # this extract's alone: pseudonyms of two extracts do not match
    report = Report(k=k, quasi_identifiers=tuple(quasi_identifiers), persons=len(profiles))
    # A person's combinations: their profile with each hospital and month they appear in, when those are chosen.
    combos: dict[int, set[tuple]] = {}
    for item, served in found:
        values = {**profiles[now_of[item.person_id]], "facility_code": item.facility_code,
                  "service_month": served.astimezone(CHINA_TZ).strftime("%Y-%m")}
        combos.setdefault(now_of[item.person_id], set()).add(tuple(values[q] for q in quasi_identifiers))
    groups = Counter(combo for person_combos in combos.values() for combo in person_combos)
    kept = {pid for pid, person_combos in combos.items() if all(groups[c] >= k for c in person_combos)}
    report.persons_kept, report.persons_suppressed = len(kept), len(profiles) - len(kept)
    kept_groups = {g: n for g, n in groups.items() if n >= k}
    report.groups, report.smallest_group = len(kept_groups), min(kept_groups.values(), default=None)
    report.group_sizes = Counter(kept_groups.values())
    rows = []
    for item, served in found:
        person = now_of[item.person_id]
        if person not in kept:
            report.rows_suppressed += 1
            continue
        p = profiles[person]
        rows.append({
            "pseudonym": hmac.new(key, str(person).encode(), hashlib.sha256).hexdigest()[:16],
            **p, "service_month": served.astimezone(CHINA_TZ).strftime("%Y-%m"), "facility_code": item.facility_code,
            "type_code": item.type_code, "kind": item.kind, "code": item.code, "name": item.name,
            "value_code": item.value_code, "value_display": item.value_display,
            "value_number": item.value_number, "unit": item.unit})
    report.rows = len(rows)
    return rows, report


def report_dict(report: Report) -> dict:
    return {"k": report.k, "quasi_identifiers": list(report.quasi_identifiers), "persons": report.persons,
            "persons_kept": report.persons_kept, "persons_suppressed": report.persons_suppressed,
            "groups": report.groups, "smallest_group": report.smallest_group, "rows": report.rows,
            "rows_suppressed": report.rows_suppressed,
            "group_sizes": {str(size): n for size, n in sorted(report.group_sizes.items())}}
