"""The personal health record's timeline: one person's documents from every hospital, grouped into visits.

Served from the registry (current versions only) and the clinical items read at registration, filtered
by what the caller's ``Access`` allows (records period, sensitive categories); never by parsing XML. The
same records as FHIR R4 are ``records.fhir``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.records.access import Access
from smartcare.records.fhir import INPATIENT_TYPES, encounter_id, service_day
from smartcare.records.models import Document, Item
from smartcare.records.service import person_ids
from smartcare.registry import service as registry


@dataclass
class Visit:
    """One encounter on the timeline: a hospital's documents that share a service time."""

    facility_code: str
    facility_name: str | None
    at: datetime
    empi_id: str  # whose visit (the patient's current EMPI id)
    documents: list[Document] = field(default_factory=list)
    items: dict[int, list[Item]] = field(default_factory=dict)  # record id -> its items

    @property
    def id(self) -> str:
        """The visit's FHIR Encounter id."""
        return encounter_id(self.facility_code, self.at, self.empi_id)

    @property
    def inpatient(self) -> bool:
        return any(d.type_code in INPATIENT_TYPES for d in self.documents)

    @cached_property
    def sensitive(self) -> frozenset[str]:
        """The sensitive categories of any of the visit's documents (the visit is as sensitive as its most)."""
        return frozenset(c for items in self.items.values() for i in items for c in (i.sensitive or ()))

    def of_kind(self, kind: str) -> list[Item]:
        return [i for d in self.documents for i in self.items.get(d.id, ()) if i.kind == kind]


def visits(session: Session, access: Access, *, facility_code: str | None = None, type_code: str | None = None,
           start: date | None = None, end: date | None = None, since: datetime | None = None) -> list[Visit]:
    """The person's encounters, newest first, with their documents and items, within what ``access`` shows.
    ``start``/``end`` bound the service day, ``since`` the registration time (FHIR ``_since``)."""
    # Core rows, not ORM objects: a long history is thousands of items, and identity-mapped objects cost
    # several times more to build than the tuples these read-only views need.
    doc = Document.__table__.c
    stmt = select(doc.id, doc.facility_code, doc.type_code, doc.type_name, doc.service_time, doc.registered_at).where(
        doc.person_id.in_(person_ids(session, person_id=access.person_id)), doc.status == "current")
    docs = session.execute(stmt.order_by(doc.service_time.desc(), doc.id)).all()
    items_by_doc: dict[int, list] = defaultdict(list)
    if docs:
        of_these = stmt.with_only_columns(doc.id).scalar_subquery()
        for item in session.execute(select(Item.__table__).where(Item.record_id.in_(of_these))
                                    .order_by(Item.record_id, Item.position)):
            items_by_doc[item.record_id].append(item)
    # Visits first, over every document: a visit's sensitive categories are those of all its documents, so a
    # filter (one type, one hospital) never shows the prescription of a visit whose diagnosis it hides.
    grouped: dict[tuple[str, datetime], Visit] = {}
    for d in docs:
        key = (d.facility_code, d.service_time)
        visit = grouped.get(key)
        if visit is None:
            visit = grouped[key] = Visit(d.facility_code, None, d.service_time, access.empi_id)
        visit.documents.append(d)
        visit.items[d.id] = items_by_doc[d.id]
    shown: list[Visit] = []
    for visit in grouped.values():
        day = service_day(visit.at)
        if (start and day < start) or (end and day > end) or not access.shows(visit.sensitive, day):
            continue
        if facility_code and visit.facility_code != facility_code:
            continue
        if type_code or since:
            visit.documents = [d for d in visit.documents if (not type_code or d.type_code == type_code)
                               and (not since or d.registered_at >= since)]
            if not visit.documents:
                continue
        shown.append(visit)
    names = registry.facility_names(session, {v.facility_code for v in shown})
    for visit in shown:
        visit.facility_name = names.get(visit.facility_code)
    return shown


def summary(found: list[Visit]) -> dict:
    """The health-record summary: hospitals, diagnoses (latest first, once each), latest vital signs."""
    diagnoses: dict[str, dict] = {}
    vitals: dict[str, dict] = {}
    for v in found:  # newest first
        for i in v.of_kind("condition"):
            if i.value_code and i.value_code not in diagnoses:
                diagnoses[i.value_code] = {"code": i.value_code, "name": i.value_display, "at": v.at}
        for i in v.of_kind("vital"):
            if i.code not in vitals and i.value_number is not None:
                vitals[i.code] = {"name": i.name, "value": i.value_number, "unit": i.unit, "at": v.at}
    return {"visits": len(found), "hospitals": sorted({v.facility_name or v.facility_code for v in found}),
            "diagnoses": list(diagnoses.values()), "vitals": list(vitals.values())}


