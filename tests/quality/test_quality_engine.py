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
