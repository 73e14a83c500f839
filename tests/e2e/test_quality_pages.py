"""Quality pages: documents with known defects are registered and checked; in headless Chromium an
administrator reads the 质控看板 (the hospital's row, the charts, the failing documents), a console user
opens a failing document (its findings, the finding's line highlighted in the XML as received, a click on
the finding jumps there; the view audited) and the rule catalogue (filtered by dimension). Without a
browser: the feedback report is a standalone page, and a resident is refused the document page."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta

import pytest
from lxml import etree

from smartcare.platform.clock import CHINA_TZ, china_today
from smartcare.platform.db import session_scope
from smartcare.quality import service as quality
from smartcare.records import service as records
from smartcare.standards import cda
from smartcare.synth import service as synth
from smartcare.synth.documents import Defect, Hospital, Person, clean_document, inject
from tests.e2e.conftest import login
from tests.records.records_support import resident, sql


@dataclass(frozen=True)
class Checked:
    """One registered and checked document: its registry id, the bytes as sent, the defect put in it."""

    record_id: int
    raw: bytes
    defect: Defect | None
    findings: list


@dataclass(frozen=True)
class Region:
    facility: str
    name: str
    person: Person
    vital: Checked      # an implausible vital sign, the document pretty-printed (one element a line)
    coded: Checked      # a diagnosis code outside ICD-10, the document as built (on two long lines)
    clean: Checked


def _hospital(facility: str) -> Hospital:
    with session_scope() as s:
        [h] = synth.document_hospitals(s, codes=[facility])
        return h


def _register(raw: bytes, facility: str, sent_at: datetime) -> int:
    with session_scope() as s:
        done = records.register(s, raw=raw, sender="test", facility_code=facility, exchange_message_id=None,
                                received_at=sent_at, actor="test")
        assert done.outcome == "registered", done.outcome
        return done.document.id


@pytest.fixture(scope="module")
def region(seeded, hospital, residents) -> Region:
    facility = hospital[0]
    h = _hospital(facility)
    r = resident(residents, 60)  # records' tests take the last 42
    person = Person(r["id_number"], r["name"], r["sex"], r["birth_date"], r["phone"] or "", "")
    rng = random.Random("e2e-quality-pages")
    at = datetime.combine(china_today() - timedelta(days=3), time(9, 0), CHINA_TZ)

    def make(type_code: str, kind: str | None, *, pretty: bool, hours: int) -> tuple[bytes, Defect | None, datetime]:
        doc = clean_document(type_code, hospital=h, person=person, rng=rng, at=at + timedelta(hours=hours))
        defect = None
        if kind:
            doc, defect = inject(doc, kind, rng)
        raw = cda.build(doc, validate=False)
        if pretty:  # as many hospitals send them: the findings then point at distinct lines
            raw = etree.tostring(etree.fromstring(raw), pretty_print=True, xml_declaration=True, encoding="UTF-8")
        return raw, defect, doc.effective_time + timedelta(minutes=30)

    made = [make("C0002", "implausible_vital", pretty=True, hours=0),
            make("C0001", "code_outside_value_set", pretty=False, hours=1),
            make("C0004", None, pretty=True, hours=2)]
    ids = [_register(raw, facility, sent_at) for raw, _, sent_at in made]
    checked = []
    with session_scope() as s:
        for record_id, (raw, defect, _) in zip(ids, made, strict=True):
            quality.check_record(s, record_id=record_id)
            _, findings = quality.document_check(s, record_id)
            checked.append(Checked(record_id, raw, defect,
                                   [(f.rule_id, f.severity, f.element, f.line) for f in findings]))
    vital, coded, clean = checked
    # the engine found exactly what was put in, and nothing in the clean one
    assert {f[0] for f in vital.findings} == {vital.defect.rule}, vital.findings
    assert {f[0] for f in coded.findings} == {coded.defect.rule}, coded.findings
    assert clean.findings == []
    return Region(facility, h.name, person, vital, coded, clean)


def _page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


@pytest.mark.browser
def test_dashboard_shows_the_hospital_its_charts_and_failing_documents(browser, live_server, region):
    page, errors = _page(browser)
    login(page, live_server.url)
    page.click("header nav >> text=质控")
    page.wait_for_selector("#chart-scores canvas")
    page.wait_for_selector("#chart-trend canvas")
    assert page.input_value("#since") == (china_today() - timedelta(days=29)).isoformat()
    assert page.input_value("#until") == china_today().isoformat()
    row = page.locator(f"#hospitals tr[data-facility='{region.facility}']")
    assert region.name in row.text_content()
    assert int(row.locator(".documents").text_content()) >= 3
    assert int(row.locator(".errors").text_content()) >= 2
    assert row.locator("td[data-dimension=plausibility]").count() == 1
    for d in ("完整性", "规范性", "一致性", "准确性", "唯一性", "及时性", "整合性", "符合性"):
        assert d in page.text_content("#hospitals thead")
    worst = page.text_content("#worst-rules")
    assert region.vital.defect.rule in worst and region.coded.defect.rule in worst
    assert page.locator("#types tr[data-type=C0002]").count() == 1
    html = page.content()
    assert region.person.id_number not in html and region.person.name not in html

    page.fill("#hospital", region.facility)  # the filter: one hospital
    page.click("#qc-filters button[type=submit]")
    page.wait_for_url(f"**/admin/quality?hospital={region.facility}*")
    page.wait_for_selector("#chart-scores canvas")
    assert page.locator("#hospitals tbody tr").count() == 1
    failing = page.locator("#failing")  # the latest documents with findings, each a link
    assert failing.locator(f"tr[data-record='{region.vital.record_id}']").count() == 1
    assert failing.locator(f"tr[data-record='{region.coded.record_id}']").count() == 1
    assert failing.locator(f"tr[data-record='{region.clean.record_id}']").count() == 0

    page.click(f"#failing tr[data-record='{region.vital.record_id}'] a")
    page.wait_for_url(f"**/admin/quality/documents/{region.vital.record_id}")
    assert page.locator(f"#findings tr[data-rule='{region.vital.defect.rule}']").count() == 1
    assert not errors, errors
    page.close()


@pytest.mark.browser
def test_document_page_highlights_the_findings_lines_and_the_view_is_audited(browser, live_server, region):
    vital = region.vital
    [(rule, severity, element, line)] = vital.findings
    before = sql("SELECT count(*) FROM platform.audit_log WHERE action = 'records.document.retrieve' "
                 "AND target = :t AND actor = 'auditor'", t=f"document:{vital.record_id}")[0][0]
    page, errors = _page(browser)
    login(page, live_server.url, "auditor", "smartcare-audit")  # a console role: may read, is audited
    page.goto(f"{live_server.url}/admin/quality/documents/{vital.record_id}")
    finding = page.locator(f"#findings tr[data-rule='{rule}']")
    assert finding.get_attribute("data-line") == str(line)
    assert element in finding.text_content() and ("错误" if severity == "error" else "警告") in finding.text_content()
    assert int(page.text_content("#doc-errors")) == 1
    # the XML as received, line for line: the finding's line is the one with its element, highlighted
    lines = vital.raw.decode().rstrip("\n").split("\n")
    assert page.locator("#xml .ln").count() == len(lines) > 50
    hit = page.locator(f"#xml #L{line}")
    assert "qc-hit" in hit.get_attribute("class").split()
    assert element in hit.locator("code").text_content() == lines[line - 1]
    assert page.locator("#xml .qc-hit").count() == 1
    assert page.locator("#xml #L1 code").text_content().startswith("<?xml")  # escaped, shown as text
    finding.locator("td").nth(5).click()  # anywhere on the finding: jumps to its line
    page.wait_for_function("n => location.hash === '#L' + n", arg=line)
    assert page.evaluate(f"() => document.querySelector('#L{line}').matches(':target')")
    assert hit.is_visible() and page.evaluate(
        f"() => {{ const r = document.querySelector('#L{line}').getBoundingClientRect(); "
        "return r.top >= 0 && r.bottom <= innerHeight; }")
    after = sql("SELECT count(*) FROM platform.audit_log WHERE action = 'records.document.retrieve' "
                "AND target = :t AND actor = 'auditor'", t=f"document:{vital.record_id}")[0][0]
    assert after == before + 1

    # a document on two long lines: shown as it came, wrapped, its one line highlighted
    coded = region.coded
    [(rule, _, element, line)] = coded.findings
    page.goto(f"{live_server.url}/admin/quality/documents/{coded.record_id}")
    assert page.locator("#xml .ln").count() == 2 and line == 2
    assert "qc-hit" in page.get_attribute("#xml #L2", "class").split()
    assert page.evaluate("() => { const x = document.querySelector('#xml'); return x.scrollWidth <= x.clientWidth; }")
    assert page.locator(f"#findings tr[data-rule='{rule}'] a.goto").get_attribute("href") == "#L2"
    # the findings and facts outside the XML carry no personal data
    outside = page.evaluate("() => { const b = document.body.cloneNode(true); b.querySelector('#xml').remove(); "
                            "return b.textContent; }")
    assert region.person.id_number not in outside and region.person.name not in outside
    assert not errors, errors
    page.close()


@pytest.mark.browser
def test_rules_page_lists_the_catalogue_and_filters_by_dimension(browser, live_server, region):
    rules = quality.rules()
    page, errors = _page(browser)
    login(page, live_server.url)
    page.goto(f"{live_server.url}/admin/quality/rules")
    assert page.locator("#rules tbody tr").count() == len(rules)
    schema = page.locator("#rules tr[data-rule=CONF-SCHEMA]")
    assert "全部" in schema.locator("td.types").text_content() and "符合性" in schema.text_content()
    birth = next(r for r in rules if r.id == "CMP-HDR-BIRTH-DATE")
    assert page.text_content("#rules tr[data-rule=CMP-HDR-BIRTH-DATE] td.types").strip() == ", ".join(birth.types)
    timeliness = [r.id for r in rules if r.dimension == "timeliness"]
    page.select_option("#dimension-filter", "timeliness")
    assert page.locator("#rules tbody tr:visible").count() == len(timeliness)
    assert page.text_content("#rules-shown") == str(len(timeliness))
    assert sorted(page.locator("#rules tbody tr:visible").evaluate_all("rs => rs.map(r => r.dataset.rule)")) == \
        sorted(timeliness)
    page.select_option("#dimension-filter", "")
    assert page.locator("#rules tbody tr:visible").count() == len(rules)
    assert not errors, errors
    page.close()


def test_the_feedback_report_is_a_standalone_page_per_hospital(region):
    with session_scope() as s:
        body = quality.report(s, fmt="html", facility_code=region.facility)
    assert body.startswith("<!doctype html>") and "<script" not in body and "/static/" not in body
    assert region.name in body and region.facility in body
    for checked in (region.vital, region.coded):
        assert f'id="document-{checked.record_id}"' in body
        assert checked.defect.rule in body and checked.defect.element in body
    assert f'id="document-{region.clean.record_id}"' not in body
    assert region.person.id_number not in body and region.person.name not in body


def test_a_resident_is_refused_the_document_page(client, region):
    r = client.post("/login", data={"username": "resident", "password": "smartcare-demo"}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get(f"/admin/quality/documents/{region.vital.record_id}").status_code == 403
    assert client.get("/admin/quality").status_code == 403
