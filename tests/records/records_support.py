"""Helpers of the records tests: CDA documents of a hospital about a resident (built with
``cda.build`` and given the ids a test needs), signed requests, and SQL."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from urllib.parse import urlencode

from lxml import etree
from sqlalchemy import text

from smartcare.platform import auth
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import session_scope
from smartcare.registry import service as registry
from smartcare.standards import cda

H = f"{{{cda.HL7_NS}}}"


def custodian_of(facility_code: str) -> str:
    """A hospital's custodian id in its documents: its 统一社会信用代码."""
    return registry.credit_code(facility_code)


def document(facility_code: str, resident: dict, *, type_code: str = "C0001", document_id: str | None = None,
             custodian: str | None = None, outpatient_no: str | None = None, inpatient_no: str | None = None,
             set_id: str | None = None, version: int | None = None, replaces: str | None = None,
             effective_time: datetime | None = None, admitted_at: datetime | None = None,
             past_history: str = "未提供") -> bytes:
    """A WS/T 500 document of ``facility_code`` about ``resident`` (a ``synth.resident`` row); C0001 is
    identified by the resident's ID number, C0034 by an inpatient number, C0002 by an outpatient number."""
    written = effective_time or datetime(2026, 3, 1, 9, 30, tzinfo=CHINA_TZ)
    inpatient = type_code == "C0034"
    visit = cda.Visit(kind="3" if inpatient else "1",
                      number=(inpatient_no or f"ZY{uuid.uuid4().hex[:8]}") if inpatient else (outpatient_no or ""),
                      start=admitted_at or datetime(2026, 3, 1, 8, 0, tzinfo=CHINA_TZ), department_code="0301",
                      department_name="心血管内科", ward_code="B03", ward_name="心内科一病区", room="305", bed="12")
    history = cda.Section("11348-0", "HISTORY OF PAST ILLNESS", (
        cda.DataElement("DE02.10.026.00", "疾病史（含外伤）", cda.st(past_history)),))
    raw = cda.build(cda.Document(
        type_code=type_code, document_id=document_id or str(uuid.uuid4()), effective_time=written,
        patient=cda.Patient(id_number=resident["id_number"], name=resident["name"], sex=resident["sex"],
                            birth_date=resident["birth_date"]),
        custodian_code=custodian_of(facility_code), custodian_name="测试医院",
        author=cda.Practitioner("YS0123", "李建国", "住院医师"), reviewer=cda.Practitioner("YS0001", "陈志强", "科主任"),
        visit=visit, sections=(history,), set_id=set_id or "", version=version, replaces=replaces or ""))
    root = etree.fromstring(raw)
    if custodian is not None:
        root.find(f"{H}custodian/{H}assignedCustodian/{H}representedCustodianOrganization/{H}id").set("extension", custodian)
    if outpatient_no is not None and type_code == "C0001":
        role = root.find(f"{H}recordTarget/{H}patientRole")
        role.insert(0, etree.Element(f"{H}id", root=cda.OID_OUTPATIENT_NO, extension=outpatient_no))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def resident(residents: list[dict], n: int) -> dict:
    """The ``n``-th resident from the end of the fixture's list (other test packages take theirs from the start)."""
    r = dict(residents[-1 - n])
    if isinstance(r["birth_date"], str):
        r["birth_date"] = date.fromisoformat(r["birth_date"])
    return r


def signed(client, hospital, method: str, path: str, body: bytes = b"", params: dict | None = None,
           content_type: str = "application/xml"):
    _, client_id, secret = hospital
    full = path + (f"?{urlencode(params)}" if params else "")
    headers = auth.sign_request(client_id=client_id, secret=secret, method=method, path=full, body=body)
    if method == "GET":
        return client.get(full, headers=headers)
    return client.request(method, full, content=body, headers={**headers, "Content-Type": content_type})


def sql(statement: str, **params):
    with session_scope() as s:
        result = s.execute(text(statement), params)
        return result.all() if result.returns_rows else None


def register_document(doc: cda.Document, facility: str) -> int:
    """File a built document as ``facility`` sent it an hour after it was written; its registry id."""
    from datetime import timedelta

    from smartcare.records import service as records

    with session_scope() as s:
        return records.register(s, raw=cda.build(doc), sender="test", facility_code=facility,
                                received_at=doc.effective_time + timedelta(hours=1), actor="test").document.id


def history_at_two_hospitals(p: dict, empi_id: str, a: str, b: str, *, days_ago: int, stay_before: int,
                             sensitive_before: int, old_before: int | None = None) -> tuple[int, int | None]:
    """A resident's (``p``, from card_support.person, with a card of ``empi_id``) synthetic records: an outpatient
    visit at hospital ``a`` ``days_ago`` (record, lab report, prescription), a discharge summary at ``b``
    ``stay_before`` days earlier, a mental-health visit at ``b`` ``sensitive_before`` days earlier, and, if
    asked, an outpatient record at ``b`` ``old_before`` days earlier. Returns (sensitive id, old id)."""
    import random
    from dataclasses import replace
    from datetime import timedelta

    from smartcare.platform.clock import china_today
    from smartcare.synth import service as synth
    from smartcare.synth.documents import Person, clean_document

    register = register_document
    with session_scope() as s:
        hospitals = {h.facility_code: h for h in synth.document_hospitals(s, codes=[a, b])}
        born = s.execute(text("SELECT sex, birth_date FROM synth.resident WHERE id_number = :n"),
                         {"n": p["id_number"]}).one()
    me = Person(p["id_number"], p["name"], born.sex, born.birth_date, p["phone"])
    rng = random.Random(empi_id)
    recent = datetime.combine(china_today() - timedelta(days=days_ago), datetime.min.time(), CHINA_TZ).replace(hour=9)
    for type_code in ("C0002", "C0007", "C0004"):
        register(clean_document(type_code, hospital=hospitals[a], person=me, rng=rng, at=recent), a)
    register(clean_document("C0053", hospital=hospitals[b], person=me, rng=rng, at=recent - timedelta(days=stay_before)), b)
    old = None
    if old_before is not None:
        old = register(clean_document("C0002", hospital=hospitals[b], person=me, rng=rng,
                                      at=recent - timedelta(days=old_before)), b)
    mental = clean_document("C0002", hospital=hospitals[b], person=me, rng=rng,
                            at=recent - timedelta(days=sensitive_before))
    sections = tuple(replace(sec, elements=tuple(
        replace(e, value=cda.cd("F32.9", "抑郁发作", "2.16.156.10011.2.3.3.11", "ICD-10")) if e.code == "DE05.01.024.00"
        else replace(e, value=cda.st("抑郁发作")) if e.code == "DE05.01.025.00" else e for e in sec.elements))
        for sec in mental.sections)
    return register(replace(mental, sections=sections), b), old
