"""The personal health record: one person's documents from every hospital, as a timeline and as FHIR R4.

Served from the registry (current versions only) and the clinical items read at registration, filtered
by what the caller's ``Access`` allows (records period, sensitive categories); never by parsing XML.

FHIR mapping (ids are stable: the registry's row ids with a letter per resource type):

| platform | FHIR R4 |
|---|---|
| EMPI person (golden record) | Patient ``{empi_id}`` |
| a hospital visit: the documents of one hospital with the same service time | Encounter ``e{first record id}`` |
| diagnosis (DE05.01.024.00, ICD-10) | Condition ``c{item id}`` |
| vital sign (DE04.10.*) / lab result (LOINC) | Observation ``o{item id}`` (vital-signs / laboratory) |
| prescription (C0004: drug, dose, frequency, route) | MedicationRequest ``m{record id}`` |
| exam / lab report (C0006 / C0007) | DiagnosticReport ``r{record id}`` with its results |
| every document | DocumentReference ``d{record id}`` |

Each resource is checked against the ``fhir.resources`` R4B models in the tests (and by ``validate``);
the request path builds plain dicts, so ``$everything`` for a long history stays fast.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from datetime import date, datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.empi import service as empi
from smartcare.platform.clock import CHINA_TZ
from smartcare.records.access import Access
from smartcare.records.clinical import DIAGNOSIS
from smartcare.records.models import Document, Item
from smartcare.records.service import person_ids
from smartcare.registry import service as registry
from smartcare.standards.cda import TITLES

RESOURCE_TYPES: Final = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "DiagnosticReport",
                         "DocumentReference")
ICD10: Final = "http://hl7.org/fhir/sid/icd-10"
LOINC: Final = "http://loinc.org"
DE_SYSTEM: Final = "urn:oid:2.16.156.10011.2.2.1"
DOC_TYPE_SYSTEM: Final = "urn:oid:2.16.156.10011.2.4"
EMPI_SYSTEM: Final = "urn:smartcare:empi"
#: WS 363 vital-sign data elements and their LOINC codes (so any FHIR client knows them)
VITAL_LOINC: Final = {"DE04.10.186.00": ("8310-5", "Body temperature"), "DE04.10.118.00": ("8867-4", "Heart rate"),
                      "DE04.10.081.00": ("9279-1", "Respiratory rate"), "DE04.10.174.00": ("8480-6", "Systolic blood pressure"),
                      "DE04.10.176.00": ("8462-4", "Diastolic blood pressure"), "DE04.10.167.00": ("8302-2", "Body height"),
                      "DE04.10.188.00": ("29463-7", "Body weight")}
_CLASS: Final = {"C0032": ("IMP", "inpatient encounter"), "C0034": ("IMP", "inpatient encounter"),
                 "C0053": ("IMP", "inpatient encounter")}
_PRESCRIPTION: Final = {"DE08.50.022.00": "drug", "DE08.50.044.00": "dose", "DE06.00.133.00": "frequency",
                        "DE06.00.134.00": "route"}


@dataclass
class Visit:
    """One encounter on the timeline: a hospital's documents that share a service time."""

    facility_code: str
    facility_name: str | None
    at: datetime
    documents: list[Document] = field(default_factory=list)
    items: dict[int, list[Item]] = field(default_factory=dict)  # record id -> its items

    @property
    def id(self) -> str:
        return f"e{self.documents[0].id}"

    @cached_property
    def when(self) -> str:
        """The service time as FHIR writes it, computed once for the visit's resources."""
        return _instant(self.at)

    @property
    def inpatient(self) -> bool:
        return any(d.type_code in _CLASS for d in self.documents)

    @cached_property
    def sensitive(self) -> frozenset[str]:
        """The sensitive categories of any of the visit's documents (the visit is as sensitive as its most)."""
        return frozenset(c for items in self.items.values() for i in items for c in (i.sensitive or ()))

    def of_kind(self, kind: str) -> list[Item]:
        return [i for d in self.documents for i in self.items.get(d.id, ()) if i.kind == kind]


def _day(at: datetime) -> date:
    return at.astimezone(CHINA_TZ).date()


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
            visit = grouped[key] = Visit(d.facility_code, None, d.service_time)
        visit.documents.append(d)
        visit.items[d.id] = items_by_doc[d.id]
    shown: list[Visit] = []
    for visit in grouped.values():
        day = _day(visit.at)
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


# --- FHIR ----------------------------------------------------------------------------------------------

def _ref(kind: str, id: str) -> dict:
    return {"reference": f"{kind}/{id}"}


def _instant(at: datetime) -> str:
    return at.astimezone(CHINA_TZ).isoformat(timespec="seconds")


def patient(session: Session, access: Access) -> dict:
    golden = empi.current_person(session, access.empi_id).golden or {}
    out: dict[str, Any] = {"resourceType": "Patient", "id": access.empi_id,
                           "identifier": [{"system": EMPI_SYSTEM, "value": access.empi_id}], "active": True}
    if golden.get("name"):
        out["name"] = [{"text": golden["name"]}]
    if golden.get("sex") in ("1", "2"):
        out["gender"] = "male" if golden["sex"] == "1" else "female"
    if golden.get("birth_date"):
        out["birthDate"] = str(golden["birth_date"])[:10]
    return out


def _encounter(v: Visit, subject: dict) -> dict:
    cls = ("IMP", "inpatient encounter") if v.inpatient else ("AMB", "ambulatory")
    return {"resourceType": "Encounter", "id": v.id, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls[0], "display": cls[1]},
            "subject": subject, "period": {"start": v.when},
            "serviceProvider": {"identifier": {"system": "urn:smartcare:facility", "value": v.facility_code},
                                **({"display": v.facility_name} if v.facility_name else {})}}


def _condition(i: Item, v: Visit, subject: dict) -> dict:
    coding = {"system": ICD10, "code": i.value_code or "unknown"}
    if i.value_display:
        coding["display"] = i.value_display
    return {"resourceType": "Condition", "id": f"c{i.id}", "subject": subject, "encounter": _ref("Encounter", v.id),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "encounter-diagnosis"}]}],
            "code": {"coding": [coding], "text": i.value_display or i.value_code}, "recordedDate": v.when}


def _observation(i: Item, v: Visit, subject: dict) -> dict:
    if i.kind == "vital":
        loinc = VITAL_LOINC.get(i.code)
        codings = [{"system": DE_SYSTEM, "code": i.code, **({"display": i.name} if i.name else {})}]
        if loinc:
            codings.insert(0, {"system": LOINC, "code": loinc[0], "display": loinc[1]})
        category = "vital-signs"
    else:
        codings = [{"system": LOINC, "code": i.code, **({"display": i.name} if i.name else {})}]
        category = "laboratory"
    out = {"resourceType": "Observation", "id": f"o{i.id}", "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                     "code": category}]}],
           "code": {"coding": codings, "text": i.name or i.code}, "subject": subject,
           "encounter": _ref("Encounter", v.id), "effectiveDateTime": v.when}
    if i.value_number is not None:
        out["valueQuantity"] = {"value": float(i.value_number), **({"unit": i.unit} if i.unit else {})}
    elif i.value_text:
        out["valueString"] = i.value_text
    return out


def _medication(d: Document, items: list[Item], v: Visit, subject: dict) -> dict | None:
    parts: dict[str, Item] = {}
    for i in items:
        if i.code in _PRESCRIPTION:
            parts.setdefault(_PRESCRIPTION[i.code], i)
    if "drug" not in parts:
        return None
    dosage: dict[str, Any] = {"text": " ".join(filter(None, (
        parts["frequency"].value_text if "frequency" in parts else None,
        parts["route"].value_display if "route" in parts else None)))}
    if "route" in parts and parts["route"].value_display:
        dosage["route"] = {"text": parts["route"].value_display}
    if "dose" in parts and parts["dose"].value_number is not None:
        dosage["doseAndRate"] = [{"doseQuantity": {"value": float(parts["dose"].value_number),
                                                   **({"unit": parts["dose"].unit} if parts["dose"].unit else {})}}]
    return {"resourceType": "MedicationRequest", "id": f"m{d.id}", "status": "completed", "intent": "order",
            "medicationCodeableConcept": {"text": parts["drug"].value_text or "未知药物"}, "subject": subject,
            "encounter": _ref("Encounter", v.id), "authoredOn": v.when, "dosageInstruction": [dosage]}


def _report(d: Document, items: list[Item], v: Visit, subject: dict) -> dict:
    lab = d.type_code == "C0007"
    conclusion = next((i.value_text for i in items if i.code == "DE04.50.132.00" and i.value_text), None)
    out = {"resourceType": "DiagnosticReport", "id": f"r{d.id}", "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                     "code": "LAB" if lab else "RAD"}]}],
           "code": {"coding": [{"system": DOC_TYPE_SYSTEM, "code": d.type_code, "display": TITLES.get(d.type_code, "")}],
                    "text": TITLES.get(d.type_code, d.type_code)},
           "subject": subject, "encounter": _ref("Encounter", v.id), "effectiveDateTime": v.when,
           "result": [_ref("Observation", f"o{i.id}") for i in items if i.kind == "lab"]}
    if not out["result"]:
        del out["result"]
    if conclusion:
        out["conclusion"] = conclusion
    return out


def _document_reference(d: Document, v: Visit, subject: dict) -> dict:
    return {"resourceType": "DocumentReference", "id": f"d{d.id}", "status": "current",
            "type": {"coding": [{"system": DOC_TYPE_SYSTEM, "code": d.type_code,
                                 **({"display": TITLES[d.type_code]} if d.type_code in TITLES else {})}]},
            "subject": subject, "date": _instant(d.registered_at),
            "custodian": {"identifier": {"system": "urn:smartcare:facility", "value": d.facility_code}},
            "content": [{"attachment": {"contentType": "application/xml", "url": f"/api/v1/phr/documents/{d.id}"}}],
            "context": {"encounter": [_ref("Encounter", v.id)]}}


def resources(found: Iterable[Visit], empi_id: str, types: set[str] | None = None) -> list[dict]:
    """The FHIR resources of the visits (Patient excluded), in timeline order, of ``types`` (all if None)."""
    subject = _ref("Patient", empi_id)
    want = (lambda t: types is None or t in types)
    out: list[dict] = []
    for v in found:
        if want("Encounter"):
            out.append(_encounter(v, subject))
        for d in v.documents:
            items = v.items.get(d.id, [])
            if want("Condition"):
                out += [_condition(i, v, subject) for i in items if i.kind == "condition" and i.code == DIAGNOSIS]
            if want("Observation"):
                out += [_observation(i, v, subject) for i in items if i.kind in ("vital", "lab")]
            if want("MedicationRequest") and d.type_code == "C0004":
                med = _medication(d, items, v, subject)
                if med:
                    out.append(med)
            if want("DiagnosticReport") and d.type_code in ("C0006", "C0007"):
                out.append(_report(d, items, v, subject))
            if want("DocumentReference"):
                out.append(_document_reference(d, v, subject))
    return out


def bundle(entries: list[dict], *, total: int, self_url: str, next_url: str | None, base: str = "") -> dict:
    """A searchset Bundle of resources (each with its fullUrl), with paging links."""
    links = [{"relation": "self", "url": self_url}] + ([{"relation": "next", "url": next_url}] if next_url else [])
    return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
            "entry": [{"fullUrl": f"{base}/fhir/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in entries]}


def validate(resource: dict) -> None:
    """Check a resource against the fhir.resources R4B model of its type (raises pydantic's ValidationError)."""
    import importlib

    name = resource["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{name.lower()}")
    getattr(module, name).model_validate(resource)
