"""One person's records as FHIR R4: the mapping from the registry and the clinical items, kept encoded.

FHIR mapping (ids are stable: the registry's row ids with a letter per resource type):

| platform | FHIR R4 |
|---|---|
| EMPI person (golden record) | Patient ``{empi_id}`` |
| a hospital visit: the documents of one hospital with the same service time | Encounter ``e{16 hex digits}-{empi_id}`` (a hash of the two, and whose visit) |
| diagnosis (DE05.01.024.00, ICD-10) | Condition ``c{item id}`` |
| vital sign (DE04.10.*) / lab result (LOINC) | Observation ``o{item id}`` (vital-signs / laboratory) |
| prescription (C0004: drug, dose, frequency, route) | MedicationRequest ``m{record id}`` |
| exam / lab report (C0006 / C0007) | DiagnosticReport ``r{record id}`` with its results |
| every document | DocumentReference ``d{record id}`` |

A document's resources (its Conditions, Observations, MedicationRequest, DiagnosticReport and
DocumentReference) depend only on the document and its items, which do not change once registered: they are
encoded once (``refresh``: at registration and ``reindex``, or on the first read of a document without them)
into ``records.document_fhir`` as finished Bundle entries, and a request joins their bytes — ``$everything``
of a long history would otherwise build and encode a thousand dicts. They name the patient by the EMPI id the
document had when encoded, and their Encounter by the hospital, the service time and that id (so replacing
another document of the visit never renames it); a read for a person merged since re-points them
(``_repoint``). Each document keeps its visit's Encounter too, as the document alone would make it.

Each resource is checked against the ``fhir.resources`` R4B models in the tests (and by ``validate``).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import driver
from smartcare.records.clinical import DIAGNOSIS
from smartcare.records.models import Document, Item
from smartcare.standards.cda import TITLES

if TYPE_CHECKING:
    from smartcare.records.access import Access

RESOURCE_TYPES: Final = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "DiagnosticReport",
                         "DocumentReference")
#: the types a document's own resources are of (kept encoded per document)
ENCODED_TYPES: Final = frozenset(RESOURCE_TYPES) - {"Patient", "Encounter"}
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
#: documents of an inpatient stay (住院病案首页, 入院记录, 出院小结): their visit is an inpatient encounter
INPATIENT_TYPES: Final = frozenset({"C0032", "C0034", "C0053"})
_PRESCRIPTION: Final = {"DE08.50.022.00": "drug", "DE08.50.044.00": "dose", "DE06.00.133.00": "frequency",
                        "DE06.00.134.00": "route"}

#: bump when the per-document resources change: rows of another version are encoded again on their next read
FHIR_MAPPING: Final = 1
#: a stand-in for an Encounter's hospital name (U+0001: XML 1.0 cannot carry it, and encoding escapes it; the
#: field's own quotes frame it, which no value can imitate)
_NAME: Final = "\x01name"
_NAME_FIELD: Final = b',"display":' + orjson.dumps(_NAME)  # as encoded
_SEARCH_MATCH: Final = b',"search":{"mode":"match"}}'  # how an encoded entry ends
#: between a document's encoded entries: a control character, which encoded JSON always escapes
_SEPARATOR: Final = b"\x02"


def _ref(kind: str, id: str) -> dict:
    return {"reference": f"{kind}/{id}"}


def encounter_id(facility_code: str, service_time: datetime, empi_id: str) -> str:
    """A visit's Encounter id: from what makes the visit (the hospital, the service time) and whose it is
    (two patients seen at one hospital at one time are two encounters)."""
    key = f"{facility_code}|{service_time.astimezone(UTC).isoformat()}"
    return f"e{hashlib.sha256(key.encode()).hexdigest()[:16]}-{empi_id}"


def service_day(at: datetime) -> date:
    """The day of a service time, in the region's calendar (what records periods and filters count in)."""
    return at.astimezone(CHINA_TZ).date()


def _instant(at: datetime) -> str:
    return at.astimezone(CHINA_TZ).isoformat(timespec="seconds")


def patient(access: Access) -> dict:
    """The Patient: the golden record the access decision read."""
    golden = access.golden
    out: dict[str, Any] = {"resourceType": "Patient", "id": access.empi_id,
                           "identifier": [{"system": EMPI_SYSTEM, "value": access.empi_id}], "active": True}
    if golden.get("name"):
        out["name"] = [{"text": golden["name"]}]
    if golden.get("sex") in ("1", "2"):
        out["gender"] = "male" if golden["sex"] == "1" else "female"
    if golden.get("birth_date"):
        out["birthDate"] = str(golden["birth_date"])[:10]
    return out


def _encounter(d, empi_id: str) -> dict:
    """The Encounter of a document's visit as this document alone would make it: an inpatient document's visit
    is an inpatient encounter (``entries`` takes such a one's when the visit has one); the hospital's name is
    a stand-in, filled in when it is served (a name can change)."""
    cls = ("IMP", "inpatient encounter") if d.type_code in INPATIENT_TYPES else ("AMB", "ambulatory")
    return {"resourceType": "Encounter", "id": encounter_id(d.facility_code, d.service_time, empi_id),
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls[0], "display": cls[1]},
            "subject": _ref("Patient", empi_id), "period": {"start": _instant(d.service_time)},
            "serviceProvider": {"identifier": {"system": "urn:smartcare:facility", "value": d.facility_code},
                                "display": _NAME}}


def _condition(i, when: str, subject: dict, encounter: dict) -> dict:
    coding = {"system": ICD10, "code": i.value_code or "unknown"}
    if i.value_display:
        coding["display"] = i.value_display
    return {"resourceType": "Condition", "id": f"c{i.id}", "subject": subject, "encounter": encounter,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "encounter-diagnosis"}]}],
            "code": {"coding": [coding], "text": i.value_display or i.value_code}, "recordedDate": when}


def _observation(i, when: str, subject: dict, encounter: dict) -> dict:
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
           "encounter": encounter, "effectiveDateTime": when}
    if i.value_number is not None:
        out["valueQuantity"] = {"value": float(i.value_number), **({"unit": i.unit} if i.unit else {})}
    elif i.value_text:
        out["valueString"] = i.value_text
    return out


def _medication(d, items: list, when: str, subject: dict, encounter: dict) -> dict | None:
    parts: dict[str, Any] = {}
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
            "encounter": encounter, "authoredOn": when, "dosageInstruction": [dosage]}


def _report(d, items: list, when: str, subject: dict, encounter: dict) -> dict:
    lab = d.type_code == "C0007"
    conclusion = next((i.value_text for i in items if i.code == "DE04.50.132.00" and i.value_text), None)
    out = {"resourceType": "DiagnosticReport", "id": f"r{d.id}", "status": "final",
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                     "code": "LAB" if lab else "RAD"}]}],
           "code": {"coding": [{"system": DOC_TYPE_SYSTEM, "code": d.type_code, "display": TITLES.get(d.type_code, "")}],
                    "text": TITLES.get(d.type_code, d.type_code)},
           "subject": subject, "encounter": encounter, "effectiveDateTime": when,
           "result": [_ref("Observation", f"o{i.id}") for i in items if i.kind == "lab"]}
    if not out["result"]:
        del out["result"]
    if conclusion:
        out["conclusion"] = conclusion
    return out


def _document_reference(d, subject: dict, encounter: dict) -> dict:
    return {"resourceType": "DocumentReference", "id": f"d{d.id}", "status": "current",
            "type": {"coding": [{"system": DOC_TYPE_SYSTEM, "code": d.type_code,
                                 **({"display": TITLES[d.type_code]} if d.type_code in TITLES else {})}]},
            "subject": subject, "date": _instant(d.registered_at),
            "custodian": {"identifier": {"system": "urn:smartcare:facility", "value": d.facility_code}},
            "content": [{"attachment": {"contentType": "application/xml", "url": f"/api/v1/phr/documents/{d.id}"}}],
            "context": {"encounter": [encounter]}}


def document_resources(d, items: list, empi_id: str) -> list[dict]:
    """One document's resources in timeline order, for the patient of ``empi_id``."""
    when = _instant(d.service_time)
    subject = _ref("Patient", empi_id)
    encounter = _ref("Encounter", encounter_id(d.facility_code, d.service_time, empi_id))
    out = [_condition(i, when, subject, encounter) for i in items if i.kind == "condition" and i.code == DIAGNOSIS]
    out += [_observation(i, when, subject, encounter) for i in items if i.kind in ("vital", "lab")]
    if d.type_code == "C0004":
        med = _medication(d, items, when, subject, encounter)
        if med:
            out.append(med)
    if d.type_code in ("C0006", "C0007"):
        out.append(_report(d, items, when, subject, encounter))
    out.append(_document_reference(d, subject, encounter))
    return out


def _repoint(encoded: bytes, old: str, new: str) -> bytes:
    """Entries encoded for ``old`` made ``new``'s (the person was merged): the Patient references and the
    Encounter ids, matched whole between the encoding's quotes (a value that matched would be such a
    reference itself)."""
    encoded = encoded.replace(b'"Patient/%s"' % old.encode(), b'"Patient/%s"' % new.encode())
    return re.sub(rb'(e[0-9a-f]{16})-' + re.escape(old.encode()) + rb'"', rb"\1-" + new.encode() + rb'"', encoded)


def encode(resource: dict) -> bytes:
    """A resource as an encoded searchset Bundle entry: its ``fullUrl``, the resource, its search mode."""
    return orjson.dumps({"fullUrl": f"/fhir/{resource['resourceType']}/{resource['id']}", "resource": resource,
                         "search": {"mode": "match"}})


def refresh(session: Session, record_ids: Iterable[int], *, only_missing: bool = False) -> None:
    """Encode the resources of these documents into ``records.document_fhir``: after their items were written
    (again, if there already), or ``only_missing`` (a read's: rows missing or of another mapping — a read that
    raced a ``reindex`` must not put back what the reindex replaced)."""
    ids = list(record_ids)
    if not ids:
        return
    doc = Document.__table__.c
    docs = session.execute(select(doc.id, doc.facility_code, doc.type_code, doc.service_time, doc.registered_at,
                                  doc.empi_id)
                           .where(doc.id.in_(ids)).order_by(doc.id)).all()  # one order: concurrent refreshes never deadlock
    items: dict[int, list] = defaultdict(list)
    for i in session.execute(select(Item.__table__).where(Item.record_id.in_(ids)).order_by(Item.record_id, Item.position)):
        items[i.record_id].append(i)
    rows = []
    for d in docs:
        empi_id = d.empi_id or ""  # a document of no known person is read by nobody's record
        resources = document_resources(d, items[d.id], empi_id)
        rows.append((d.id, FHIR_MAPPING, empi_id, sorted({c for i in items[d.id] for c in (i.sensitive or ())}),
                     [r["resourceType"] for r in resources], _SEPARATOR.join(encode(r) for r in resources),
                     encode(_encounter(d, empi_id))))
    driver(session).cursor().executemany(
        "INSERT INTO records.document_fhir (record_id, mapping, empi_id, sensitive, types, entries, encounter) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (record_id) DO UPDATE SET mapping = excluded.mapping, "
        "empi_id = excluded.empi_id, sensitive = excluded.sensitive, types = excluded.types, "
        "entries = excluded.entries, encounter = excluded.encounter"
        + (" WHERE records.document_fhir.mapping <> excluded.mapping" if only_missing else ""), rows)


_ENCODED = """
    SELECT d.id, d.facility_code, d.type_code, d.service_time, d.registered_at, f.sensitive, f.types, f.entries,
           f.encounter, r.name, f.empi_id
    FROM records.document d LEFT JOIN records.document_fhir f ON f.record_id = d.id AND f.mapping = %s
    LEFT JOIN registry.facility r ON r.code = d.facility_code
    WHERE d.person_id = ANY(%s) AND d.status = 'current'
    ORDER BY d.service_time DESC, d.id"""


def entries(session: Session, access: Access, person_ids: list[int], types: set[str] | None = None, *,
            start: date | None = None, end: date | None = None, since: datetime | None = None) -> list[bytes]:
    """The person's resources as encoded Bundle entries (Patient excluded), in timeline order, of ``types``
    (all if None), within what ``access`` shows; ``start``/``end`` bound the service day, ``since`` the
    registration time (FHIR ``_since``). Documents not encoded yet (or by another mapping) are encoded now."""
    conn = driver(session)
    args = (FHIR_MAPPING, person_ids)
    rows = conn.execute(_ENCODED, args, binary=True).fetchall()  # binary: the entries arrive as they are stored
    stale = [r[0] for r in rows if r[6] is None]
    if stale:
        refresh(session, stale, only_missing=True)
        # a document filed meanwhile by a writer that does not encode waits for the next read
        rows = [r for r in conn.execute(_ENCODED, args, binary=True).fetchall() if r[6] is not None]
    # documents filed under a person merged since are re-pointed to the person they are now (rare)
    rows = [r if r[10] == access.empi_id else (*r[:7], _repoint(r[7], r[10], access.empi_id),
                                               _repoint(r[8], r[10], access.empi_id), *r[9:]) for r in rows]
    every = types is None or types >= ENCODED_TYPES
    visits: dict[tuple[str, datetime], list] = {}
    for r in rows:  # a visit: a hospital's documents with the same service time, as the timeline groups them
        visits.setdefault((r[1], r[3]), []).append(r)
    with_encounters = types is None or "Encounter" in types
    by_day = bool(start or end or access.records_since or access.records_until)  # else no day is compared
    out: list[bytes] = []
    for (facility_code, at), docs in visits.items():
        day = service_day(at) if by_day else None
        if (start and day < start) or (end and day > end):
            continue
        # the visit is as sensitive as its most sensitive document, whatever part of it is asked for
        if not access.shows([c for d in docs if d[5] for c in d[5]], day):
            continue
        chosen = [d for d in docs if not since or d[4] >= since]
        if not chosen:
            continue
        if with_encounters:
            first = next((d for d in docs if d[2] in INPATIENT_TYPES), docs[0])
            name = docs[0][9]
            out.append(first[8].replace(_NAME_FIELD, b',"display":' + orjson.dumps(name) if name else b""))
        for d in chosen:
            encoded = d[7].split(_SEPARATOR)
            out += encoded if every else [e for t, e in zip(d[6], encoded, strict=True) if t in types]
    return out


def bundle(entries: list[bytes], *, kind: str = "searchset", total: int | None = None,
           links: dict[str, str] | None = None, timestamp: str | None = None) -> bytes:
    """A Bundle's JSON joined from encoded entries of one patient: a ``searchset`` (with its total and paging
    links) or a ``collection`` (a download, with its timestamp; entries without a search mode)."""
    head: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    if total is not None:
        head["total"] = total
    if links:
        head["link"] = [{"relation": rel, "url": url} for rel, url in links.items()]
    if timestamp:
        head["timestamp"] = timestamp
    body = b",".join(entries)
    if kind != "searchset":  # the sequence is structure: inside a JSON string its quotes would be escaped
        body = body.replace(_SEARCH_MATCH, b"}")
    return orjson.dumps(head)[:-1] + b',"entry":[' + body + b"]}"


def validate(resource: dict) -> None:
    """Check a resource against the fhir.resources R4B model of its type (raises pydantic's ValidationError)."""
    import importlib

    name = resource["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{name.lower()}")
    getattr(module, name).model_validate(resource)
