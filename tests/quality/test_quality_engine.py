"""The quality engine on synthetic documents: every injected defect found by its rule, nothing else."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime

import pytest
from lxml import etree

from tests.conftest import shared
from tests.quality.quality_support import HOSPITALS, PEOPLE, value_sets
from smartcare.quality.engine import CatalogueError, Engine, MemoryContext, catalogue, load_rules
from smartcare.synth import documents as synth


def _engine() -> Engine:
    return Engine(MemoryContext(value_sets(), custodians={h.credit_code for h in HOSPITALS}))


def test_catalogue_has_sixty_rules_over_every_dimension_and_the_eight_types() -> None:
    rules = catalogue()
    assert len(rules) >= 60
    assert {r.dimension for r in rules} == {"conformance", "completeness", "validity", "consistency", "plausibility",
                                             "uniqueness", "timeliness", "integration"}
    for t in synth.TYPES:
        assert sum(r.applies_to(t) for r in rules) >= 30, t


def test_every_injected_defect_is_reported_by_its_rule_and_clean_documents_have_no_error() -> None:
    engine = _engine()
    docs = list(synth.documents(11, hospitals=HOSPITALS, people=PEOPLE, count=1200, defect_rate=0.4))
    injected = Counter(d.defects[0].kind for d in docs if d.defects)
    assert set(injected) == set(synth.KINDS), "every kind of defect is in the test set"
    missed, extra = [], []
    for d in docs:
        report = engine.check(d.xml, sent_at=d.sent_at)
        found = {f.rule.id for f in report.findings}
        expected = {x.rule for x in d.defects}
        missed += [(d.document.type_code, r) for r in expected - found]
        extra += [(d.document.type_code, r) for r in found - expected]
        if not d.defects:
            assert report.errors == 0 and report.score == 100.0
    assert not missed, f"recall below 1: {Counter(missed)}"
    assert not extra, f"precision below 1: {Counter(extra)}"


def test_findings_name_the_element_and_line_of_the_defect() -> None:
    engine = _engine()
    doc = synth.clean_document("C0034", hospital=HOSPITALS[0], person=PEOPLE[3], rng=random.Random(3),
                               at=datetime(2026, 11, 2, 9, tzinfo=synth.CHINA_TZ))
    broken, defect = synth.inject(doc, "implausible_vital", random.Random(1))
    xml = synth.cda.build(broken)
    [finding] = engine.check(xml).findings
    assert finding.rule.id == defect.rule and finding.element == defect.element
    line = xml.decode().splitlines()[finding.line - 1]
    assert defect.element in line


def test_a_document_that_is_not_one_gets_one_conformance_finding() -> None:
    report = _engine().check(b"<ClinicalDocument/>")
    assert [f.rule.id for f in report.findings] == ["CONF-SCHEMA"] and report.score == 0.0
    report = _engine().check(b"not xml")
    assert [f.rule.id for f in report.findings] == ["CONF-SCHEMA"]


@pytest.mark.parametrize(("text", "problem"), [
    ("- {id: X}", "missing 'dimension'"),
    ("- {id: X, dimension: beauty, kahn: k, severity: error, types: all, message: m, check: {kind: schema}}", "dimension must be"),
    ("- {id: X, dimension: validity, kahn: k, severity: error, types: [C0099], message: m, check: {kind: schema}}", "not WS/T 500"),
    ("- {id: X, dimension: validity, kahn: k, severity: error, types: all, message: m, check: {kind: magic}}", "check kind 'magic'"),
    ("- {id: X, dimension: validity, kahn: k, severity: error, types: all, message: m, check: {kind: range, element: a}}", "takes ['element', 'max', 'min']"),
])
def test_a_wrong_catalogue_is_refused_with_the_rule_and_field(text: str, problem: str) -> None:
    with pytest.raises(CatalogueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        load_rules(text)


def test_every_built_document_validates_against_the_national_schema() -> None:
    """All eight types, many patients, against the XSDs in shared/ (not the copy shipped with the package)."""
    schemas = {t: etree.XMLSchema(etree.parse(str(shared("standards", "wst500-xsd", f"{t}.xsd")))) for t in synth.TYPES}
    seen = Counter()
    for d in synth.documents(5, hospitals=HOSPITALS, people=PEOPLE, count=800, defect_rate=0.0):
        xsd = schemas[d.document.type_code]
        assert xsd.validate(etree.fromstring(d.xml)), (d.document.type_code, xsd.error_log)
        seen[d.document.type_code] += 1
    assert set(seen) == set(synth.TYPES) and min(seen.values()) >= 100


def _doc(type_code: str, seed: int = 1):
    return synth.clean_document(type_code, hospital=HOSPITALS[0], person=PEOPLE[4], rng=random.Random(seed),
                                at=datetime(2026, 11, 2, 9, tzinfo=synth.CHINA_TZ))


def _with_elements(doc, *extra):
    """``doc`` with data elements added to its last section (a second diagnosis, a second reading …)."""
    from dataclasses import replace

    last = doc.sections[-1]
    return replace(doc, sections=(*doc.sections[:-1], replace(last, elements=(*last.elements, *extra))))


def test_every_occurrence_of_a_repeated_element_is_checked() -> None:
    engine = _engine()
    second = synth.cda.DataElement("DE05.01.024.00", "诊断代码", synth.cda.cd("Q99.999", "乱码", synth.ICD10_SYSTEM, "ICD-10"))
    report = engine.check(synth.cda.build(_with_elements(_doc("C0053"), second)))
    assert {f.rule.id for f in report.findings} == {"VAL-ICD10-CODE"}
    high = synth.cda.DataElement("718-7", "血红蛋白", synth.cda.pq(900, "g/L"))
    assert {f.rule.id for f in _engine().check(synth.cda.build(_with_elements(_doc("C0007"), high))).findings} == \
        {"PLA-LAB-718-7"}


@pytest.mark.parametrize("value", ["NaN", "sNaN", "Infinity", "abc"])
def test_a_value_that_is_no_number_is_a_finding_not_a_crash(value: str) -> None:
    doc = synth.inject(_doc("C0034"), "implausible_vital", random.Random(1))[0]
    xml = synth.cda.build(doc).replace(b'value="45.8"', f'value="{value}"'.encode())
    xml = xml.replace(b'value="320"', f'value="{value}"'.encode()).replace(b'value="420"', f'value="{value}"'.encode())
    xml = xml.replace(b'value="95"', f'value="{value}"'.encode())
    report = _engine().check(xml)
    [finding] = [f for f in report.findings if f.rule.id.startswith("PLA-")]
    assert finding.detail == "not a number"


def test_schema_findings_do_not_quote_values() -> None:
    """libxml2 quotes the offending value; a birth date must not reach the stored finding."""
    born = PEOPLE[4].birth_date.strftime("%Y%m%d")
    xml = synth.cda.build(_doc("C0001")).replace(f'<birthTime value="{born}'.encode(), f'<birthTime value="{born}0930'.encode())
    [finding] = [f for f in _engine().check(xml).findings if f.rule.id == "CONF-SCHEMA"]
    assert "birthTime" in finding.detail and born not in finding.detail


def test_header_findings_point_at_their_own_line() -> None:
    doc = _doc("C0002")
    bad = synth.inject(doc, "id_check_digit", random.Random(1))[0]
    xml = etree.tostring(etree.fromstring(synth.cda.build(bad)), pretty_print=True)
    [finding] = _engine().check(xml).findings
    line = xml.decode().splitlines()[finding.line - 1]
    assert finding.rule.id == "VAL-ID-CHECK" and 'root="2.16.156.10011.1.3"' in line


@pytest.mark.parametrize(("text", "problem"), [
    ("{id: X}", "a list of rules"),
    ("- just text", "a rule is a mapping"),
    ("- {id: X, dimension: validity, kahn: k, severity: error, types: all, message: m, check: null}", "check is a mapping"),
    ("- {id: X, dimension: validity, kahn: k, severity: error, types: C0001, message: m, check: {kind: schema}}", "types is 'all' or a list"),
    ("- {id: X, dimension: validity, kahn: k, severity: error, types: all, message: m, check: {kind: range, element: a, min: abc, max: 1}}", "min must be a number"),
    ("- {id: X, dimension: validity, kahn: k, severity: error, types: all, message: m, check: {kind: header, field: shoe_size}}", "field must be one of"),
])
def test_catalogue_values_are_checked_too(text: str, problem: str) -> None:
    with pytest.raises(CatalogueError, match=problem):
        load_rules(text)


def test_a_value_set_the_registry_lacks_stops_the_engine() -> None:
    rules = load_rules("- {id: X, dimension: validity, kahn: k, severity: error, types: all, message: m, "
                       "check: {kind: value_set, element: DE05.01.024.00, value_set: icd11}}")
    with pytest.raises(CatalogueError, match="rule X: value set 'icd11' is not in the registry"):
        Engine(MemoryContext(value_sets()), rules)
