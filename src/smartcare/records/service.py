"""The document registry and repository (IHE XDS.b-like) for WS/T 500 CDA documents.

Invariants (kept here, and by the database where it can: migration 0012):
- a registered document is never overwritten or deleted. A replacement is a new row; the row it
  replaces turns ``replaced`` and both are linked (``replaces_id`` / ``replaced_by_id``);
- registering is idempotent: the same bytes of the same document id from the same custodian are one
  row, however often they are sent (a redelivery, a hospital's resend);
- the same document id with other bytes is a second row, never an overwrite: reused ids are a quality
  problem to report (the quality engine does), not something the registry may silently resolve;
- identical bytes are stored once (``records.content``, keyed by SHA-256); the registry row holds
  identifiers only, so the raw document stays the one copy of the patient's personal data.

What is replaced: the document named by ``relatedDocument[@typeCode='RPLC']/parentDocument/id``, and
the current documents of the same custodian and ``setId`` with a lower ``versionNumber``. A version
that arrives after a higher one of its set is registered already ``replaced`` by that one, so a set
never has an older version current.

Concurrent registrations of one document, set or parent are serialised with transaction advisory
locks, taken in a fixed order (no deadlock between two of them).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from lxml import etree
from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from smartcare.empi import matching
from smartcare.empi import service as empi
from smartcare.empi.service import PersonRef
from smartcare.platform import audit, bus, idcard
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import driver
from smartcare.platform.errors import Conflict, Forbidden, InvalidInput, NotFound
from smartcare.records import clinical, fhir
from smartcare.records.models import Content, Document, Item
from smartcare.registry import service as registry
from smartcare.standards import cda
from smartcare.standards.xml import XmlError, parse_xml

log = logging.getLogger(__name__)

#: The hospital's own patient numbers a document can be resolved by, most specific first (never the ID number).
CARD_OIDS = (cda.OID_OUTPATIENT_NO, cda.OID_INPATIENT_NO, cda.OID_HEALTH_CARD_NO)
STATUSES = ("current", "replaced")
TYPE_CODES = frozenset(f"C{n:04d}" for n in range(1, 54))
REGISTERED_TOPIC = "records.document.registered"
MAX_LIMIT = 500

_EVENT_NAMESPACE = uuid.UUID("3f1c9a52-7d0e-4b8a-9e61-2c5d8f0a7b13")
_HL7 = f"{{{cda.HL7_NS}}}"


@dataclass(frozen=True)
class Registration:
    outcome: str  # registered | replaced | duplicate
    document: Document


@dataclass(frozen=True)
class Parsed:
    """What the registry reads from a document: the header, and the ids it is filed and linked by."""

    header: cda.CdaHeader
    document_id: str
    custodian_code: str
    set_id: str | None
    parent_id: str | None  # relatedDocument[@typeCode='RPLC']/parentDocument/id
    root: etree._Element  # the document, parsed once: the clinical items are read from it too


# --- reading a document --------------------------------------------------------------------------


def _ii(value: cda.InstanceId | None) -> str | None:
    return (value.extension or value.root) if value is not None else None


def _bounded(value: str | None, limit: int, location: str) -> str | None:
    if value is not None and len(value) > limit:
        raise InvalidInput(f"{location}: longer than {limit} characters", field="body")
    return value


def _parent_id(root: etree._Element) -> str | None:
    """The id of the document this one replaces (CDA RPLC), when the document fills it in."""
    for related in root.iterchildren(f"{_HL7}relatedDocument"):
        if (related.get("typeCode") or "").strip() != "RPLC":
            continue
        el = related.find(f"{_HL7}parentDocument/{_HL7}id")
        if el is not None:  # an II in CDA; the WS/T 500 schemas make it plain text
            value = ((el.get("extension") or "").strip() or (el.get("root") or "").strip()
                     or (el.text or "").strip())
            if value:
                return value
    return None


_MAX_VERSION = 2**31 - 1  # the column is an integer
_EARLIEST, _LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


def _plausible_times(header: cda.CdaHeader) -> None:
    """Times the registry can store and read back: a document is from 1900–2100 (a year 0001 or 9999 stamp
    is a sender's bug, and PostgreSQL would keep it where the driver cannot read it back)."""
    encounter = header.encounter
    for where, value in (("ClinicalDocument/effectiveTime", header.effective_time),
                         ("ClinicalDocument/componentOf/encompassingEncounter/effectiveTime",
                          encounter.start if encounter else None),
                         ("ClinicalDocument/componentOf/encompassingEncounter/effectiveTime/high",
                          encounter.end if encounter else None)):
        if value is not None and not _EARLIEST <= value < _LATEST:
            raise InvalidInput(f"{where}: not a time between 1900 and 2100", field="body")


def read(raw: bytes) -> Parsed:
    """Parse once; a document the registry cannot file raises ``InvalidInput`` naming where it falls short."""
    try:
        root = parse_xml(raw)
        header = cda.parse_header(root)
    except (XmlError, cda.CdaError) as exc:
        raise InvalidInput(str(exc), field="body") from None
    if header.type_code not in TYPE_CODES:
        raise InvalidInput(f"ClinicalDocument/code/@code: {header.type_code[:20]!r} is not a WS/T 500 document type "
                           "(C0001…C0053)", field="body")
    _plausible_times(header)
    if header.version_number is not None and header.version_number > _MAX_VERSION:
        raise InvalidInput(f"ClinicalDocument/versionNumber: larger than {_MAX_VERSION}", field="body")
    where = "ClinicalDocument/custodian/assignedCustodian/representedCustodianOrganization/id/@extension"
    parsed = Parsed(
        header=header,
        document_id=_bounded(_ii(header.document_id), 200, "ClinicalDocument/id"),
        custodian_code=_bounded(header.custodian.code, 64, where),
        set_id=_bounded(_ii(header.set_id), 200, "ClinicalDocument/setId"),
        parent_id=_bounded(_parent_id(root), 200, "ClinicalDocument/relatedDocument/parentDocument/id"),
        root=root,
    )
    _bounded(_author_code(header), 64, "ClinicalDocument/author/assignedAuthor/id")
    _bounded(_card(header), 64, "ClinicalDocument/recordTarget/patientRole/id")
    return parsed


def _author_code(header: cda.CdaHeader) -> str | None:
    return _ii(header.author.id) if header.author else None


def _card(header: cda.CdaHeader) -> str | None:
    return next((header.patient_ids[oid] for oid in CARD_OIDS if header.patient_ids.get(oid)), None)


def custodian_matches(custodian_code: str, facility_code: str) -> bool:
    """Whether a document's custodian is the hospital whose facility code sent it: WS/T 500 names it by
    its 统一社会信用代码 (``registry.credit_code``); its facility code itself is accepted too."""
    return custodian_code in (facility_code, registry.credit_code(facility_code))


# --- the patient ----------------------------------------------------------------------------------


def _record(header: cda.CdaHeader) -> dict:
    """The header's demographics in the shape of the hub's patient events (``exchange.canonical``)."""
    id_number = header.id_number
    return {"name": header.patient_name, "id_number": id_number if id_number and idcard.is_valid(id_number) else None,
            "sex": header.sex_code, "birth_date": header.birth_date.isoformat() if header.birth_date else None}


def _known_card(session: Session, facility: str, card_no: str) -> tuple[PersonRef, dict] | None:
    """The person of a hospital's card the index already has, and what the card recorded; or None."""
    try:
        person = empi.person_by_card(session, facility_code=facility, card_no=card_no)
    except NotFound:
        return None
    _, cards = empi.xref(session, person.empi_id)
    card = next((c for c in cards if c.facility_code == facility and c.card_no == card_no), None)
    return (PersonRef(person.id, person.empi_id), dict(card.recorded)) if card is not None else None


def resolve_patient(session: Session, *, header: cda.CdaHeader, facility_code: str,
                    actor: str) -> tuple[PersonRef | None, str | None]:
    """The EMPI person of a document and the hospital patient number it was found by.

    With a patient number, the hospital's card is registered (or updated) and matched, as the hub's
    patient events are (``empi.events.intake``). A card the index already has keeps what the header does
    not carry (phone, address): a document must not erase what the registration desk recorded, and a
    card whose header adds nothing is not written at all. Without a patient number, a person is found
    only by a certain ID number (valid, agreeing with the birth date) that exactly one person holds.
    """
    record = _record(header)
    card_no = _card(header)
    if card_no:
        known = _known_card(session, facility_code, card_no)
        if known is not None:
            person, recorded = known
            merged = {**recorded, **{k: v for k, v in record.items() if v is not None}}
            if merged == recorded:
                return person, card_no
            record = merged
        decision = matching.register(session, facility_code=facility_code, card_no=card_no, record=record, actor=actor)
        return decision.person, card_no
    if not record["id_number"]:
        return None, None
    prepared = empi.prepare_source(record)
    certain = prepared.features.get("id_certain")
    if certain is None:
        return None, None
    found = matching.candidates(session, prepared.features)
    persons = {c.person_id for c in found.candidates if c.features.get("id_certain") == certain}
    if len(persons) != 1:
        return None, None
    return empi.person_ref(session, persons.pop()), None


# --- registering ----------------------------------------------------------------------------------


def _lock(session: Session, *keys: str) -> None:
    """Transaction advisory locks on ``keys``, in a fixed order."""
    conn = driver(session)
    for key in sorted({int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big", signed=True)
                       for k in keys}):
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))


def _head(session: Session, row: Document) -> Document:
    """The current document of ``row``'s replacement chain."""
    seen = set()
    while row.status == "replaced" and row.replaced_by_id is not None and row.id not in seen:
        seen.add(row.id)
        row = session.get(Document, row.replaced_by_id, populate_existing=True)
    return row


def _by_document_id(session: Session, custodian: str, document_id: str) -> Document | None:
    """The document with this id (the current one first when the id was reused, then the newest)."""
    return session.scalar(select(Document).where(Document.custodian_code == custodian, Document.document_id == document_id)
                          .order_by((Document.status == "current").desc(), Document.id.desc()).limit(1)
                          .execution_options(populate_existing=True))


def _candidates(session: Session, parsed: Parsed) -> tuple[Document | None, list[Document]]:
    """The RPLC parent's current head, and the current documents of the same set with a version."""
    parent = None
    if parsed.parent_id:
        found = _by_document_id(session, parsed.custodian_code, parsed.parent_id)
        parent = _head(session, found) if found is not None else None
    siblings: list[Document] = []
    if parsed.set_id and parsed.header.version_number is not None:
        siblings = list(session.scalars(select(Document).where(
            Document.custodian_code == parsed.custodian_code, Document.set_id == parsed.set_id,
            Document.status == "current", Document.version_number.is_not(None))
            .execution_options(populate_existing=True)))
    return parent, siblings


def _newest(rows: list[Document]) -> Document:
    return max(rows, key=lambda d: (d.version_number or 0, d.id))


@dataclass
class _Plan:
    replaced: list[Document]  # current documents the new one replaces
    replaces: Document | None  # the one it names as its predecessor
    stale_by: Document | None  # a newer version already current: the new one is registered as replaced by it


def _plan(session: Session, parsed: Parsed, target: Document | None) -> _Plan:
    """What the new document replaces, with those rows locked and still current. A chain that another
    transaction changed while this one waited for its rows is looked at again."""
    version = parsed.header.version_number
    for _ in range(5):
        parent, siblings = _candidates(session, parsed)
        if target is not None:
            parent = target
        newer = [d for d in ([parent] if parent else []) + siblings
                 if version is not None and d.version_number is not None and d.version_number > version]
        if newer:
            if target is not None:
                raise Conflict(f"document {_newest(newer).id} is a newer version (versionNumber "
                               f"{_newest(newer).version_number}) than this one ({version})", field="body")
            return _Plan([], None, _newest(newer))
        replaced = {d.id: d for d in ([parent] if parent else []) + [s for s in siblings if s.version_number < version]}
        locked = list(session.scalars(select(Document).where(Document.id.in_(replaced)).order_by(Document.id)
                                      .with_for_update().execution_options(populate_existing=True)))
        if all(d.status == "current" for d in locked):
            return _Plan(locked, (parent if parent else _newest(locked)) if locked else None, None)
        if target is not None:
            raise Conflict(f"document {target.id} was already replaced by document {target.replaced_by_id}",
                           field="id", hint=f"replace document {_head(session, target).id}, the current version")
    raise RuntimeError("the replacement chain kept changing under concurrent registrations; register again")


def _register(session: Session, *, raw: bytes, parsed: Parsed, sender: str, facility_code: str | None,
              exchange_message_id: int | None, received_at: datetime | None, actor: str,
              target: Document | None = None) -> Registration:
    header = parsed.header
    custodian = parsed.custodian_code
    facility = facility_code or registry.facility_of_credit_code(session, custodian) or custodian
    sha256 = hashlib.sha256(raw).hexdigest()
    _lock(session, *(f"records:doc:{custodian}:{d}" for d in (parsed.document_id, parsed.parent_id,
                                                            target.document_id if target else None) if d),
          *([f"records:set:{custodian}:{parsed.set_id}"] if parsed.set_id else []))

    existing = session.scalar(select(Document).where(Document.custodian_code == custodian,
                                                     Document.document_id == parsed.document_id,
                                                     Document.sha256 == sha256))
    if existing is not None:
        return Registration("duplicate", existing)
    plan = _plan(session, parsed, target)

    person, patient_ref = resolve_patient(session, header=header, facility_code=facility, actor=actor)
    driver(session).execute("INSERT INTO records.content (sha256, raw) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (sha256, raw))
    now = datetime.now(UTC)
    row = Document(
        document_id=parsed.document_id, custodian_code=custodian, facility_code=facility, type_code=header.type_code,
        type_name=(header.type_name or "")[:200] or None, set_id=parsed.set_id, version_number=header.version_number,
        person_id=person.id if person else None, empi_id=person.empi_id if person else None, patient_ref=patient_ref,
        author_code=_author_code(header),
        service_time=(header.encounter.start if header.encounter else None) or header.effective_time or received_at or now,
        effective_time=header.effective_time, received_at=received_at or now, registered_at=now, sha256=sha256,
        size_bytes=len(raw), status="replaced" if plan.stale_by else "current",
        replaced_by_id=plan.stale_by.id if plan.stale_by else None,
        replaces_id=plan.replaces.id if plan.replaces else None,
        exchange_message_id=exchange_message_id, sender=sender)
    session.add(row)
    session.flush()
    rows = clinical.items(cda.read_entries(parsed.root), record_id=row.id, person_id=row.person_id,
                          facility_code=facility, type_code=row.type_code, at=row.service_time)
    if rows:
        session.execute(insert(Item), rows)
    fhir.refresh(session, [row.id])
    for old in plan.replaced:
        old.status, old.replaced_by_id = "replaced", row.id
    session.flush()
    bus.publish(session, REGISTERED_TOPIC, {
        "id": row.id, "document_id": row.document_id, "custodian_code": row.custodian_code,
        "facility_code": row.facility_code, "type_code": row.type_code, "replaces_id": row.replaces_id,
        "status": row.status}, message_id=uuid.uuid5(_EVENT_NAMESPACE, f"records.registered.{row.id}:{now.isoformat()}"))
    if plan.stale_by is not None:
        log.info("document %s of %s (version %s) arrived after version %s: registered as replaced", row.id, custodian,
                 row.version_number, plan.stale_by.version_number)
    return Registration("replaced" if plan.replaced else "registered", row)


def _parse_for(raw: bytes, facility_code: str | None) -> Parsed:
    parsed = read(raw)
    if facility_code and not custodian_matches(parsed.custodian_code, facility_code):
        raise Forbidden(f"ClinicalDocument/custodian: custodian {parsed.custodian_code} is not the sending hospital "
                        f"{facility_code}", field="body",
                        hint="a hospital registers only the documents it keeps; the other hospital sends its own")
    return parsed


def register(session: Session, *, raw: bytes, sender: str, facility_code: str | None,
             exchange_message_id: int | None = None, received_at: datetime | None = None,
             actor: str) -> Registration:
    """File a CDA document: registered, replacing earlier ones, or a duplicate of one already filed.

    ``facility_code`` is the authenticated sending hospital (None when the sender belongs to none: the
    document is then filed under the hospital its custodian's credit code names, else the custodian). Raises ``InvalidInput`` for a document that cannot be
    filed and ``Forbidden`` when its custodian is another hospital; nothing is written then."""
    parsed = _parse_for(raw, facility_code)
    return _register(session, raw=raw, parsed=parsed, sender=sender, facility_code=facility_code,
                     exchange_message_id=exchange_message_id, received_at=received_at, actor=actor)


def replace(session: Session, *, id: int, raw: bytes, sender: str, facility_code: str | None, actor: str,
            exchange_message_id: int | None = None, received_at: datetime | None = None) -> Registration:
    """Register ``raw`` as the replacement of document ``id`` (which must be current and the same
    hospital's). The document must agree: an RPLC parent, set id or version that contradicts it is refused."""
    parsed = _parse_for(raw, facility_code)
    target = get(session, id)
    if facility_code and target.facility_code != facility_code:
        raise NotFound(f"no document {id}", field="id")
    if parsed.custodian_code != target.custodian_code:
        raise InvalidInput(f"ClinicalDocument/custodian: {parsed.custodian_code} is not the custodian of document {id} "
                           f"({target.custodian_code})", field="body")
    if parsed.parent_id and parsed.parent_id != target.document_id:
        raise InvalidInput(f"ClinicalDocument/relatedDocument/parentDocument/id: names {parsed.parent_id}, "
                           f"not document {id} ({target.document_id})", field="body")
    if parsed.set_id and target.set_id and parsed.set_id != target.set_id:
        raise InvalidInput(f"ClinicalDocument/setId: {parsed.set_id} is not the set of document {id} ({target.set_id})",
                           field="body")
    version = parsed.header.version_number
    if version is not None and target.version_number is not None and version <= target.version_number:
        raise InvalidInput(f"ClinicalDocument/versionNumber: {version} must be higher than document {id}'s "
                           f"({target.version_number})", field="body")
    return _register(session, raw=raw, parsed=parsed, sender=sender, facility_code=facility_code,
                     exchange_message_id=exchange_message_id, received_at=received_at, actor=actor, target=target)


# --- reading the registry -------------------------------------------------------------------------


def get(session: Session, id: int) -> Document:
    row = session.get(Document, id)
    if row is None:
        raise NotFound(f"no document {id}", field="id")
    return row


def retrieve(session: Session, *, id: int, actor: str, reason: str | None = None) -> bytes:
    """The document as received. It is personal data: every retrieval is audited."""
    row = get(session, id)
    raw = content(session, row.sha256)
    audit.record(session, actor=actor, action="records.document.retrieve", target=f"document:{id}",
                 detail={"facility_code": row.facility_code, "type_code": row.type_code, "empi_id": row.empi_id,
                         "reason": reason or ""})
    return raw


def person_ids(session: Session, *, person_id: int | None = None, empi_id: str | None = None) -> list[int]:
    """Every person id the documents of a patient may carry: after EMPI merges, the person a document
    was registered under may have been folded into another."""
    if empi_id is not None:
        person_id = empi.person_id_of(session, empi_id)
    ids = empi.absorbed_ids(session, person_id)
    if not ids:
        raise NotFound(f"no person {person_id}", field="person_id")
    return ids


def query(session: Session, *, person_id: int | None = None, empi_id: str | None = None, type_code: str | None = None,
          custodian_code: str | None = None, facility_code: str | None = None, since: datetime | None = None,
          until: datetime | None = None, status: str | None = "current", limit: int = 50,
          before_id: int | None = None) -> list[Document]:
    """Documents by patient, type, hospital and service time (``since`` ≤ t < ``until``), newest first.
    Keyset paging: pass the last id of a page as ``before_id`` for the next. ``status`` None: any."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}", field="status")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be 1 to {MAX_LIMIT}", field="limit")
    stmt = select(Document)
    if person_id is not None or empi_id is not None:
        stmt = stmt.where(Document.person_id.in_(person_ids(session, person_id=person_id, empi_id=empi_id)))
    for column, value in ((Document.type_code, type_code), (Document.custodian_code, custodian_code),
                          (Document.facility_code, facility_code), (Document.status, status)):
        if value is not None:
            stmt = stmt.where(column == value)
    if since is not None:
        stmt = stmt.where(Document.service_time >= since)
    if until is not None:
        stmt = stmt.where(Document.service_time < until)
    if before_id is not None:
        page_from = select(Document.service_time).where(Document.id == before_id)
        if facility_code is not None:  # another hospital's id is no place to page from (nor a hint of its time)
            page_from = page_from.where(Document.facility_code == facility_code)
        at = session.scalar(page_from)
        if at is None:
            raise NotFound(f"no document {before_id} to page from", field="before")
        stmt = stmt.where(tuple_(Document.service_time, Document.id) < tuple_(at, before_id))
    return list(session.scalars(stmt.order_by(Document.service_time.desc(), Document.id.desc()).limit(limit)))


def versions(session: Session, id: int) -> list[Document]:
    """Every document linked to ``id`` by replacement, in the order they were registered."""
    get(session, id)
    ids = session.scalars(text(
        """WITH RECURSIVE chain (id) AS (
               SELECT CAST(:id AS bigint)
               UNION
               SELECT n.id FROM chain c JOIN records.document d ON d.id = c.id
                 JOIN records.document n ON n.id = d.replaces_id OR n.id = d.replaced_by_id OR n.replaced_by_id = d.id)
           SELECT id FROM chain"""), {"id": id}).all()
    return list(session.scalars(select(Document).where(Document.id.in_(ids)).order_by(Document.id)))


# --- for quality control --------------------------------------------------------------------------


def content(session: Session, sha256: str) -> bytes:
    """A document's bytes for a machine check (quality control); people read through ``retrieve``, audited."""
    row = session.get(Content, sha256)
    if row is None:
        raise NotFound(f"no content {sha256[:12]}…")
    return bytes(row.raw)


def current_ids(session: Session, *, facility_code: str | None = None, since: date | None = None,
                after_id: int = 0, limit: int = 200) -> list[int]:
    """Ids of current documents (of a hospital, serviced since a day), in id order after ``after_id``."""
    stmt = select(Document.id).where(Document.status == "current", Document.id > after_id)
    if facility_code:
        stmt = stmt.where(Document.facility_code == facility_code)
    if since:
        stmt = stmt.where(Document.service_time >= datetime.combine(since, time(), CHINA_TZ))
    return list(session.scalars(stmt.order_by(Document.id).limit(limit)))


def status_for_check(session: Session, id: int) -> Document:
    """A document for its quality check, its row share-locked so that a registration replacing it waits for
    the check to commit (or the check sees it replaced): the check's "current" never goes stale."""
    row = session.scalar(select(Document).where(Document.id == id).with_for_update(read=True))
    if row is None:
        raise NotFound(f"no document {id}", field="id")
    return row


def replaced_by(session: Session, id: int) -> list[int]:
    """The documents that ``id`` replaced (a registration can replace several versions at once)."""
    return list(session.scalars(select(Document.id).where(Document.replaced_by_id == id)))


def replaced_among(session: Session, ids: list[int]) -> list[int]:
    """Which of ``ids`` have been replaced."""
    if not ids:
        return []
    return list(session.scalars(select(Document.id).where(Document.id.in_(ids), Document.status == "replaced")))


def other_content_before(session: Session, *, custodian_code: str, document_id: str, sha256: str,
                         before_id: int | None) -> bool:
    """Whether the custodian registered a document with this id and other content before ``before_id``."""
    stmt = select(Document.id).where(Document.custodian_code == custodian_code, Document.document_id == document_id,
                                     Document.sha256 != sha256)
    if before_id is not None:
        stmt = stmt.where(Document.id < before_id)
    return session.scalar(stmt.limit(1)) is not None


def visit_sensitivity(session: Session, id: int) -> set[str]:
    """The sensitive categories of a document's visit: of every current document of the same person, hospital
    and service time (as the personal health record groups them)."""
    return set(session.scalars(text(
        """SELECT DISTINCT c FROM records.document x
           JOIN records.document d ON d.person_id = x.person_id AND d.facility_code = x.facility_code
                AND d.service_time = x.service_time AND d.status = 'current'
           JOIN records.item i ON i.record_id = d.id, unnest(i.sensitive) AS c
           WHERE x.id = :id"""), {"id": id}))


def reindex(session: Session, *, after_id: int = 0, limit: int = 200) -> list[int]:
    """Read the clinical items of up to ``limit`` documents (id order, after ``after_id``) again from their
    content, and encode their FHIR resources again: after the classification changes (a new sensitive code), or
    for documents filed before items were kept. Returns the ids done; the caller commits each batch."""
    rows = session.execute(select(Document.id, Document.sha256, Document.person_id, Document.facility_code,
                                  Document.type_code, Document.service_time)
                           .where(Document.id > after_id).order_by(Document.id).limit(limit)).all()
    for row in rows:
        root = parse_xml(content(session, row.sha256))
        items = clinical.items(cda.read_entries(root), record_id=row.id, person_id=row.person_id,
                               facility_code=row.facility_code, type_code=row.type_code, at=row.service_time)
        session.execute(delete(Item).where(Item.record_id == row.id))
        if items:
            session.execute(insert(Item), items)
    fhir.refresh(session, [r.id for r in rows])  # the items have new ids
    return [r.id for r in rows]


# ---------------------------------------------------------------- for the warehouse

def documents_for_warehouse(session: Session, *, ids: list[int] | None = None, after_id: int = 0,
                            limit: int = 1000) -> tuple[list[dict], list[dict]]:
    """Documents (by ``ids``, or the next ``limit`` after ``after_id``) as the warehouse lands them, with
    their diagnoses and lab results: what a document says, never its text."""
    where = "d.id = ANY(:ids)" if ids is not None else "d.id > :after"
    docs = [dict(r._mapping) for r in session.execute(text(
        f"SELECT d.id AS record_id, d.facility_code, d.type_code, d.empi_id, d.service_time AS service_at, "
        f"d.received_at, d.status = 'current' AS current FROM records.document d WHERE {where} "
        f"ORDER BY d.id LIMIT :limit"), {"ids": ids, "after": after_id, "limit": limit})]
    items = [dict(r._mapping) for r in session.execute(text(
        "SELECT record_id, position, kind, code, name, value_number, unit, at FROM records.item "
        "WHERE record_id = ANY(:ids) AND kind IN ('condition', 'lab')"), {"ids": [d["record_id"] for d in docs]})]
    return docs, items
