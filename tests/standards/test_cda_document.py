"""WS/T 500 documents built from one content model through each type's schema, and read back."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime

import pytest
from lxml import etree

from tests.conftest import shared
from tests.quality.quality_support import HOSPITALS, PEOPLE
from smartcare.standards import cda
from smartcare.standards.cda.header import CHINA_TZ
from smartcare.standards.cda.schema import XSI, SchemaError, schema_for
from smartcare.synth import documents as synth

AT = datetime(2026, 11, 3, 9, 15, tzinfo=CHINA_TZ)


@pytest.mark.parametrize("type_code", synth.TYPES)
def test_what_is_built_is_read_back(type_code: str) -> None:
    doc = synth.clean_document(type_code, hospital=HOSPITALS[0], person=PEOPLE[5], rng=random.Random(type_code), at=AT)
    parsed = cda.parse(cda.build(doc))
    h = parsed.header
    assert (h.type_code, h.document_id.extension, h.custodian.code) == (type_code, doc.document_id, doc.custodian_code)
    assert h.id_number == doc.patient.id_number and h.sex_code == doc.patient.sex
    assert h.template_id == cda.template_id_for(type_code)
    assert h.author is not None and h.author.name == doc.author.name
    built = [(e.code, e.value) for s in doc.sections for e in s.elements]
    read = [(e.code, e.value) for e in parsed.entries]
    assert [c for c, _ in read] == [c for c, _ in built]
    for (code, want), (_, got) in zip(built, read, strict=True):
        assert got.kind == want.kind, code
        assert (got.text, got.unit, got.code, got.display) == (want.text, want.unit, want.code, want.display), code
    assert all(e.line for e in parsed.entries), "every entry knows its line"


def test_values_are_typed_only_where_the_schema_has_the_type() -> None:
    """C0002's schema has no PQ: a temperature is written untyped there, typed in C0034, read the same in both."""
    for type_code, typed in (("C0002", False), ("C0034", True)):
        doc = synth.clean_document(type_code, hospital=HOSPITALS[0], person=PEOPLE[1], rng=random.Random(1), at=AT)
        root = etree.fromstring(cda.build(doc))
        [value] = root.xpath("//h:code[@code='DE04.10.186.00']/../h:value", namespaces={"h": cda.HL7_NS})
        assert (value.get(f"{{{XSI}}}type") == "PQ") is typed
        assert cda.parse(root).first("DE04.10.186.00").value.unit == "℃"


def test_the_encounter_time_is_text_where_the_schema_wants_text() -> None:
    doc = synth.clean_document("C0007", hospital=HOSPITALS[0], person=PEOPLE[1], rng=random.Random(2), at=AT)
    parsed = cda.parse(cda.build(doc))
    assert parsed.header.encounter.start == AT


def test_a_document_the_schema_refuses_is_not_built() -> None:
    doc = synth.clean_document("C0001", hospital=HOSPITALS[0], person=PEOPLE[1], rng=random.Random(2), at=AT)
    with pytest.raises(cda.CdaError, match="document_id must be 32-36"):
        cda.build(cda.Document(**{**{f: getattr(doc, f) for f in doc.__slots__}, "document_id": "short"}))
    bad_custodian = cda.Document(**{**{f: getattr(doc, f) for f in doc.__slots__}, "custodian_code": "123"})
    with pytest.raises(cda.CdaError, match="does not validate against its schema.*length"):
        cda.build(bad_custodian)


def test_more_repeats_than_the_schema_allows_are_refused() -> None:
    with pytest.raises(SchemaError, match="ClinicalDocument/id may occur at most 1"):
        schema_for("C0001").render({"id": [{"@root": "1"}, {"@root": "2"}]})
    with pytest.raises(SchemaError, match="not a WS/T 500 document type"):
        schema_for("C0099")


def test_entries_of_any_type_are_read_from_a_foreign_document() -> None:
    """A C0010 document written by hand (not by this builder) still yields its coded data elements."""
    xml = f"""<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
      <id root="2.16.156.10011.1.1" extension="0123456789abcdef0123456789abcdef"/>
      <code code="C0010" codeSystem="2.16.156.10011.2.4"/>
      <recordTarget><patientRole><id root="2.16.156.10011.1.12" extension="ZY1"/></patientRole></recordTarget>
      <custodian><assignedCustodian><representedCustodianOrganization><id root="2.16.156.10011.1.5" extension="{HOSPITALS[0].credit_code}"/>
      </representedCustodianOrganization></assignedCustodian></custodian>
      <component><structuredBody><component><section><code code="8716-3" codeSystem="2.16.840.1.113883.6.1"/>
        <entry><observation><code code="DE04.10.174.00" codeSystem="{cda.DE_SYSTEM}" displayName="收缩压"/>
          <value xsi:type="PQ" value="128" unit="mmHg"/></observation></entry>
      </section></component></structuredBody></component></ClinicalDocument>""".encode()
    [entry] = cda.parse(xml).entries
    assert (entry.code, entry.value.number, entry.value.unit, entry.section) == ("DE04.10.174.00", 128, "mmHg", "8716-3")


def test_a_february_prescription_validates_against_the_corrected_schema_only() -> None:
    """The published C0004.xsd leaves February out of 处方开立日期 (author/time); the copy shipped with the
    package adds it and differs in nothing else that this document touches (standards/wst500/README.md)."""
    february = datetime(2027, 2, 14, 10, 0, tzinfo=CHINA_TZ)
    doc = synth.clean_document("C0004", hospital=HOSPITALS[0], person=PEOPLE[2], rng=random.Random(4), at=february)
    xml = cda.build(doc)  # validated against the corrected copy
    published = etree.XMLSchema(etree.parse(str(shared("standards", "wst500-xsd", "C0004.xsd"))))
    root = etree.fromstring(xml)
    assert not published.validate(root)
    [error] = published.error_log
    [where] = root.xpath(error.path)
    assert (etree.QName(where).localname, etree.QName(where.getparent()).localname) == ("time", "author")
    march = cda.build(synth.clean_document("C0004", hospital=HOSPITALS[0], person=PEOPLE[2], rng=random.Random(4),
                                           at=february.replace(month=3)))
    assert published.validate(etree.fromstring(march)), published.error_log


def test_documents_of_all_53_types_are_built_and_read_by_the_same_code() -> None:
    """The schema-driven builder writes any type from the same content (each schema takes the header parts it
    has); whatever the type, the parser reads the header and the data elements back."""
    base = synth.clean_document("C0053", hospital=HOSPITALS[0], person=PEOPLE[1], rng=random.Random(1), at=AT)
    base = replace(base, document_id=base.document_id.replace("-", ""),  # C0045 allows at most 32 characters
                   sections=tuple(replace(s, elements=s.elements[:1]) for s in base.sections))  # C0013: one entry
    valid = 0
    for n in range(1, 54):
        type_code = f"C{n:04d}"
        xml = cda.build(replace(base, type_code=type_code), validate=False)
        parsed = cda.parse(xml)
        assert (parsed.header.type_code, parsed.header.id_number) == (type_code, base.patient.id_number)
        assert [e.code for e in parsed.entries] == [s.elements[0].code for s in base.sections], type_code
        valid += not schema_for(type_code).errors(etree.fromstring(xml))
    assert valid >= 29  # the rest want type-specific data (education level, signatures, times) this content lacks
