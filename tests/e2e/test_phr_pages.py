"""Personal health record pages. In headless Chromium: a resident logs in on H5 and sees their records from
two hospitals (the sensitive one marked), grants consent to hospital A; a doctor of hospital A finds the
patient by EMPI id in the console and reads the records under that consent; the resident then sees the
doctor's read in 「谁看过我的档案」. Without a browser: the PDF summary and the FHIR export download, a
resident cannot open another person's records, a doctor without consent is refused on the page, requests
are answered on H5, break-glass is reviewed on the auditor's page, and each page keeps to its roles."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import text

from smartcare.platform import auth
from smartcare.platform.db import session_scope
from smartcare.records import fhir
from tests.e2e.conftest import login
from tests.healthcard.card_support import code, headers, issue, person, resident
from tests.records.records_support import history_at_two_hospitals

HTMX = {"HX-Request": "true"}
DOCTOR_PASSWORD = "doctor-pass-123"


@dataclass(frozen=True)
class Patient:
    who: dict  # the resident's bearer headers (+ _user)
    empi_id: str
    hospitals: tuple[str, str]
    names: tuple[str, str]
    sensitive_record: int
    visits: dict[str, int]  # hospital -> encounters (a document without an encounter time is one of its own)
    card_no: str


def _doctor(facility: str) -> str:
    username = f"doc{uuid.uuid4().hex[:8]}"
    with session_scope() as s:
        auth.create_user(s, username=username, password=DOCTOR_PASSWORD, display_name="医生", roles=["doctor"],
                         facility_code=facility)
    return username


def _bearer(client, username: str, password: str) -> dict:
    token = client.post("/api/v1/auth/token", json={"username": username, "password": password}).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


@pytest.fixture(scope="module")
def patient(app, hospital, other_hospital) -> Patient:
    """A resident with a card and five documents: an outpatient visit (record, lab report, prescription) at
    hospital A, a stay and a sensitive (mental-health) visit at hospital B."""
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        p = person()
        who = resident(client)
        r = issue(client, who, name=p["name"], id_number=p["id_number"], phone=p["phone"])
        assert r.status_code == 201, r.text
        empi_id, card_no = r.json()["empi_id"], r.json()["card_no"]
    with session_scope() as s:
        names = tuple(s.scalar(text("SELECT name FROM registry.facility WHERE code = :c"), {"c": c})
                      for c in (hospital[0], other_hospital[0]))
    sensitive, _ = history_at_two_hospitals(p, empi_id, hospital[0], other_hospital[0], days_ago=6, stay_before=30,
                                            sensitive_before=3)
    with session_scope() as s:
        visits = dict(s.execute(text("SELECT facility_code, count(DISTINCT service_time) FROM records.document "
                                     "WHERE empi_id = :e AND status = 'current' GROUP BY 1"), {"e": empi_id}).all())
    assert visits[other_hospital[0]] == 2 and 1 <= visits[hospital[0]] <= 3
    return Patient(who, empi_id, (hospital[0], other_hospital[0]), names, sensitive, visits, card_no)


def _swapped(page, selector: str) -> None:
    """Wait for what an htmx swap shows, then for it to settle (htmx binds the new content a moment later)."""
    page.wait_for_selector(selector)
    page.wait_for_function("() => !document.querySelector('.htmx-request, .htmx-settling')")


@pytest.mark.browser
def test_resident_grants_a_hospital_whose_doctor_reads_and_the_resident_sees_it(browser, live_server, patient):
    base = live_server.url
    a, b = patient.hospitals
    errors: list[str] = []

    me = browser.new_page(viewport={"width": 420, "height": 900})
    me.on("pageerror", lambda e: errors.append(str(e)))
    me.goto(f"{base}/h5/login")
    me.fill("input[name=username]", patient.who["_user"])
    me.fill("input[name=password]", "resident-pass")
    me.click("button[type=submit]")
    me.wait_for_load_state()
    assert me.url.endswith("/h5")
    me.click("#tile-records")
    me.wait_for_selector("#timeline")
    visits = me.locator("#timeline li.visit")
    # at A: one visit (record, lab report, prescription: one encounter, or more when a document is timed on
    # its own); at B: a stay and a sensitive visit
    assert visits.count() == patient.visits[a] + 2
    assert me.locator(f"#timeline li.visit[data-facility='{a}']").count() == patient.visits[a]
    assert me.locator(f"#timeline li.visit[data-facility='{b}']").count() == 2
    summary = me.text_content("#summary-hospitals")
    assert patient.names[0] in summary and patient.names[1] in summary
    assert "抑郁发作" in me.text_content("#summary-diagnoses")
    at_a = me.locator(f"#timeline li.visit[data-facility='{a}']")
    assert at_a.locator("table.labs tbody tr").count() == 6 and at_a.locator("table.labs td", has_text="g/L").count() >= 1
    assert at_a.locator("ul.prescriptions li").count() == 1 and "mg" in at_a.locator("ul.prescriptions").text_content()
    assert at_a.locator("ul.diagnoses li").count() >= 1
    marked = me.locator("#timeline li.visit[data-sensitive='mental']")
    assert marked.count() == 1 and "敏感" in marked.locator(".tag.sensitive").text_content()
    assert "<ClinicalDocument" not in me.content() and "urn:hl7-org:v3" not in me.content()  # never raw XML
    # filter by hospital: only A's visit
    me.select_option("#filter-hospital", a)
    me.click("#records-filters button[type=submit]")
    me.wait_for_load_state()
    assert me.locator("#timeline li.visit").count() == patient.visits[a] == me.locator(f"li.visit[data-facility='{a}']").count()

    me.click("#to-consent")
    me.wait_for_selector("#grant-form")
    me.select_option("#grant-facility", a)
    me.select_option("#grant-purpose", "treatment")
    me.fill("#grant-days", "7")
    me.click("#grant-form button[type=submit]")
    _swapped(me, "#consent-notice")
    assert patient.names[0] in me.text_content("#consent-notice")
    granted = me.locator(f"#consents li[data-facility='{a}'][data-state='active']")
    assert granted.count() == 1 and "全院医生" in granted.text_content() and "不共享" in granted.text_content()

    doctor = _doctor(a)
    doc = browser.new_page(viewport={"width": 1280, "height": 900})  # a context of its own: its own cookies
    doc.on("pageerror", lambda e: errors.append(str(e)))
    login(doc, base, doctor, DOCTOR_PASSWORD)
    assert doc.url.endswith("/admin/records")
    nav = doc.text_content(".topbar nav")
    assert "病历调阅" in nav and "质控" not in nav and "机构注册" not in nav
    doc.fill("#empi-id", patient.empi_id)
    doc.click("#empi-find button[type=submit]")
    _swapped(doc, "#basis")
    assert doc.get_attribute("#basis", "data-basis") == "consent"
    assert "患者授权" in doc.text_content("#basis-name")
    assert doc.locator(f"#timeline li.visit[data-facility='{a}']").count() == patient.visits[a]
    assert doc.locator(f"#timeline li.visit[data-facility='{b}']").count() == 1, "the stay, not the sensitive visit"
    assert doc.locator("#timeline li.visit[data-sensitive]").count() == 0
    assert "抑郁发作" not in doc.content()

    me.reload()
    me.wait_for_selector("#accesses")
    seen = me.locator(f"#accesses tr[data-actor='{doctor}'][data-action='read']")
    assert seen.count() >= 1
    assert seen.first.get_attribute("data-basis") == "consent"
    assert patient.names[0] in seen.first.text_content() and "患者授权" in seen.first.text_content()
    assert not errors, errors
    me.close()
    doc.close()


def test_downloads_refusals_requests_and_break_glass_over_http(client, patient):
    a, b = patient.hospitals
    mine = headers(patient.who)

    pdf = client.get(f"/h5/records/{patient.empi_id}/summary.pdf", headers=mine)
    assert pdf.status_code == 200, pdf.text
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    assert len(pdf.content) > 2000
    export = client.get(f"/api/v1/phr/{patient.empi_id}/export.json", headers=mine)
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/fhir+json")
    bundle = export.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"Patient", "Encounter", "Condition"}
    assert not any("search" in e for e in bundle["entry"]), "a collection's entries carry no search mode"
    fhir.validate(bundle)  # the whole download, every resource in it, as a FHIR R4 Bundle
    page = client.get("/h5/records/consent", headers=mine)
    assert page.status_code == 200 and "PDF 摘要" in page.text  # the PDF read is in the trail too

    stranger = resident(client)
    refused = client.get("/h5/records", params={"empi_id": patient.empi_id}, headers=headers(stranger))
    assert refused.status_code == 403 and 'data-error="forbidden"' in refused.text and "无权查阅" in refused.text
    assert 'id="timeline"' not in refused.text and patient.names[0] not in refused.text
    assert client.get(f"/h5/records/{patient.empi_id}/summary.pdf", headers=headers(stranger)).status_code == 403

    outsider = _bearer(client, _doctor(b), DOCTOR_PASSWORD)
    assert client.post("/admin/records/find", data={"empi_id": patient.empi_id}, headers=outsider).status_code == 403
    found = client.post("/admin/records/find", data={"empi_id": patient.empi_id}, headers={**outsider, **HTMX})
    assert found.status_code == 200 and 'id="refusal"' in found.text and "no consent" in found.text
    assert 'id="basis"' not in found.text and 'id="timeline"' not in found.text

    # the doctor asks, the resident approves on H5 (sensitive opted in), the doctor reads it all
    asked = client.post("/admin/records/request", headers={**outsider, **HTMX},
                        data={"empi_id": patient.empi_id, "purpose": "referral", "reason": "转诊前需了解既往诊疗"})
    assert asked.status_code == 200 and 'id="patient-notice"' in asked.text
    area = client.get("/h5/records/consent", headers=mine).text
    [request_id] = [int(chunk.split('"')[0]) for chunk in area.split('data-request="')[1:]]
    answered = client.post(f"/h5/records/requests/{request_id}/answer", headers={**mine, **HTMX},
                           data={"approve": "1", "days": "3", "sensitive": ["mental"]})
    assert answered.status_code == 200 and 'id="consent-notice"' in answered.text and 'id="no-requests"' in answered.text
    read = client.post("/admin/records/find", data={"empi_id": patient.empi_id}, headers={**outsider, **HTMX})
    assert 'data-basis="consent"' in read.text and 'data-sensitive="mental"' in read.text
    # the same patient found by a scan of their card at the doctor's hospital; a code scanned twice is refused
    shown = code(client, patient.who, patient.card_no)
    scanned = client.post("/admin/records/find", data={"code": shown}, headers={**outsider, **HTMX})
    assert 'id="scan-facts"' in scanned.text and f'data-empi="{patient.empi_id}"' in scanned.text
    assert 'data-basis="consent"' in scanned.text
    again = client.post("/admin/records/find", data={"code": shown}, headers={**outsider, **HTMX})
    assert again.status_code == 200 and 'data-error="code_replayed"' in again.text and 'id="timeline"' not in again.text

    # break-glass: a short reason is refused on the page; a real one opens the record, the auditor reviews it
    with session_scope() as s:  # a hospital no consent names
        third = s.scalar(text("SELECT code FROM registry.facility WHERE kind = 'general_hospital' AND code <> ALL(:c) "
                              "ORDER BY code LIMIT 1"), {"c": [a, b]})
    medic = _bearer(client, _doctor(third), DOCTOR_PASSWORD)
    short = client.post("/admin/records/break-glass", data={"empi_id": patient.empi_id, "reason": "急"},
                        headers={**medic, **HTMX})
    assert short.status_code == 200 and 'data-error="invalid_input"' in short.text
    opened = client.post("/admin/records/break-glass", headers={**medic, **HTMX},
                         data={"empi_id": patient.empi_id, "reason": "患者昏迷送急诊，需了解既往病史与用药"})
    assert opened.status_code == 200 and 'data-basis="break_glass"' in opened.text and 'id="timeline"' in opened.text
    assert 'data-sensitive=' not in opened.text
    auditor = _bearer(client, "auditor", "smartcare-audit")
    report = client.get("/admin/records/audit", headers=auditor)
    assert report.status_code == 200 and 'data-reviewed="no"' in report.text
    [glass_id] = [int(c.split('"')[0]) for c in report.text.split('data-glass="')[1:]
                  if 'data-reviewed="no"' in c.split(">")[0]][:1]
    reviewed = client.post(f"/admin/records/audit/break-glass/{glass_id}/review", data={"note": "急诊属实"},
                           headers={**auditor, **HTMX})
    assert reviewed.status_code == 200 and "已复核紧急调阅" in reviewed.text
    chain = client.get("/admin/records/audit/chain", headers=auditor)
    assert chain.status_code == 200 and 'data-ok="true"' in chain.text

    # each page keeps to its roles: the doctor's console only for doctors, the rest of the console not for them
    admin = _bearer(client, "admin", "smartcare-admin")
    assert client.get("/admin/records", headers=admin).status_code == 403
    assert client.get("/admin/records", headers=medic).status_code == 200
    assert client.get("/admin", headers=medic).status_code == 403
    assert client.get("/admin/quality", headers=medic).status_code == 403
    assert client.get("/admin/records/audit", headers=medic).status_code == 403
    assert client.get("/h5/records", headers=medic).status_code == 403


def test_the_demo_doctor_belongs_to_the_largest_hospital(client, seeded):
    from smartcare.registry import service as registry

    me = client.get("/api/v1/auth/me", headers=_bearer(client, "doctor", "smartcare-doctor")).json()
    with session_scope() as s:
        assert me["facility_code"] == registry.hospitals(s, limit=1)[0].code
    assert me["roles"] == ["doctor"]
