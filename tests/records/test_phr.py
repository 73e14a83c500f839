"""Personal health records: a resident reads their records from two hospitals (H5 JSON and FHIR), a doctor
only with the resident's consent (its period and sensitive categories), a revoked consent stops access at
once, break-glass works and is flagged, requests are approved by the resident, SMART scopes limit tokens,
and every read and refusal is in the audit chain, which verifies."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from smartcare.platform import audit, auth
from smartcare.platform.clock import CHINA_TZ, china_today
from smartcare.platform.db import session_scope
from smartcare.records import fhir
from smartcare.standards import cda
from smartcare.synth import service as synth
from smartcare.synth.documents import Person, clean_document
from tests.healthcard.card_support import headers, issue, person, resident
from tests.records.records_support import history_at_two_hospitals, register_document, sql


@dataclass(frozen=True)
class Patient:
    who: dict  # the resident's bearer headers (+ _user)
    empi_id: str
    hospitals: tuple[str, str]
    sensitive_record: int
    old_record: int  # serviced 200 days ago


def _doctor(client, facility: str) -> dict:
    username = f"d{uuid.uuid4().hex[:10]}"
    with session_scope() as s:
        auth.create_user(s, username=username, password="doctor-pass", display_name="医生", roles=["doctor"],
                         facility_code=facility)
    token = client.post("/api/v1/auth/token", json={"username": username, "password": "doctor-pass"}).json()
    return {"Authorization": f"Bearer {token['access_token']}", "_user": username}


@pytest.fixture(scope="module")
def patient(client_module, hospital, other_hospital) -> Patient:
    client = client_module
    p = person()
    who = resident(client)
    r = issue(client, who, name=p["name"], id_number=p["id_number"], phone=p["phone"])
    assert r.status_code == 201, r.text
    empi_id = r.json()["empi_id"]
    sensitive, old = history_at_two_hospitals(p, empi_id, hospital[0], other_hospital[0], days_ago=10, stay_before=20,
                                              sensitive_before=5, old_before=200)
    return Patient(who, empi_id, (hospital[0], other_hospital[0]), sensitive, old)


@pytest.fixture(scope="module")
def client_module(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


def _everything(client, h: dict, empi_id: str, **params):
    return client.get(f"/fhir/Patient/{empi_id}/$everything", params=params, headers=headers(h))


def _record_ids(bundle: dict) -> set[int]:
    return {int(e["resource"]["id"][1:]) for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"}


def test_a_resident_reads_every_hospital_and_the_bundle_validates(client_module, patient):
    client = client_module
    r = _everything(client, patient.who, patient.empi_id)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json"), r.text
    body = r.json()
    kinds = {e["resource"]["resourceType"] for e in body["entry"]}
    assert kinds == set(fhir.RESOURCE_TYPES)
    for e in body["entry"]:
        fhir.validate(e["resource"])
    providers = {e["resource"]["serviceProvider"]["identifier"]["value"] for e in body["entry"]
                 if e["resource"]["resourceType"] == "Encounter"}
    assert providers == set(patient.hospitals)
    assert patient.sensitive_record in _record_ids(body), "the patient sees their own sensitive records"
    labs = [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Observation"
            and e["resource"]["category"][0]["coding"][0]["code"] == "laboratory"]
    [report] = [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
                and e["resource"]["category"][0]["coding"][0]["code"] == "LAB"]
    assert {f"Observation/{o['id']}" for o in labs} == {ref["reference"] for ref in report["result"]}

    timeline = client.get(f"/api/v1/phr/{patient.empi_id}/timeline", headers=headers(patient.who)).json()
    [(encounters,)] = sql("SELECT count(DISTINCT (facility_code, service_time)) FROM records.document d "
                          "WHERE d.empi_id = :e AND status = 'current'", e=patient.empi_id)
    assert timeline["basis"] == "self" and len(timeline["visits"]) == encounters >= 4
    assert {v["facility_code"] for v in timeline["visits"]} == set(patient.hospitals)
    assert "抑郁发作" in {d["name"] for d in timeline["summary"]["diagnoses"]}

    page = _everything(client, patient.who, patient.empi_id, _count=5).json()
    assert len(page["entry"]) == 5 and page["total"] == len(body["entry"])
    assert any(link["relation"] == "next" and "_page=2" in link["url"] for link in page["link"])
    since = _everything(client, patient.who, patient.empi_id, start=(china_today() - timedelta(days=30)).isoformat(),
                        _type="DocumentReference").json()
    assert patient.old_record not in _record_ids(since) and patient.sensitive_record in _record_ids(since)


def test_a_resident_never_sees_another_persons_records(client_module, patient):
    client = client_module
    stranger = resident(client)
    for url in (f"/fhir/Patient/{patient.empi_id}/$everything", f"/fhir/Patient/{patient.empi_id}",
                f"/fhir/Observation?patient=Patient/{patient.empi_id}", f"/api/v1/phr/{patient.empi_id}/timeline",
                f"/api/v1/phr/documents/{patient.old_record}", "/fhir/Patient/E99999999999/$everything"):
        r = client.get(url, headers=headers(stranger))
        assert r.status_code == 403, (url, r.text)
    with session_scope() as s:
        refused = audit.entries(s, targets=[f"person:{patient.empi_id}"], actions=("records.phr.refused",), limit=50)
    assert {e.actor for e in refused} >= {stranger["_user"]}


def test_a_doctor_reads_exactly_what_the_consent_shares_until_it_is_revoked(client_module, patient):
    client = client_module
    doctor = _doctor(client, patient.hospitals[0])
    denied = _everything(client, doctor, patient.empi_id)
    assert denied.status_code == 403 and "no consent" in denied.json()["message"]

    grant = client.post("/api/v1/phr/consents", headers=headers(patient.who), json={
        "empi_id": patient.empi_id, "facility_code": patient.hospitals[0], "purpose": "treatment", "days": 7,
        "records_since": (china_today() - timedelta(days=60)).isoformat()})
    assert grant.status_code == 201, grant.text
    seen = _everything(client, doctor, patient.empi_id)
    assert seen.status_code == 200, seen.text
    ids = _record_ids(seen.json())
    assert patient.old_record not in ids, "outside the consented period"
    assert patient.sensitive_record not in ids, "sensitive, not opted in"
    assert len(ids) == 4
    assert client.get(f"/api/v1/phr/documents/{patient.sensitive_record}", headers=headers(doctor)).status_code == 404
    with session_scope() as s:
        [hidden] = audit.entries(s, targets=[f"person:{patient.empi_id}"], actions=("records.phr.refused",), limit=1)
    assert hidden.actor == doctor["_user"] and hidden.detail["what"] == f"DocumentReference/d{patient.sensitive_record}"

    other = _doctor(client, patient.hospitals[1])
    assert _everything(client, other, patient.empi_id).status_code == 403, "the consent is for one hospital"

    revoked = client.post(f"/api/v1/phr/consents/{grant.json()['id']}/revoke", headers=headers(patient.who))
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert _everything(client, doctor, patient.empi_id).status_code == 403, "revoked: refused at once"

    looked = client.get(f"/api/v1/phr/{patient.empi_id}/accesses", headers=headers(patient.who)).json()
    mine = [a for a in looked if a["who"] == doctor["_user"]]
    assert {a["action"] for a in mine} == {"read", "refused"}
    assert any(a["basis"] == "consent" and a["purpose"] == "treatment" for a in mine if a["action"] == "read")


def test_sensitive_categories_only_when_opted_in_and_requests_approved_by_the_resident(client_module, patient):
    client = client_module
    doctor = _doctor(client, patient.hospitals[1])
    asked = client.post("/api/v1/phr/requests", headers=headers(doctor),
                        json={"empi_id": patient.empi_id, "purpose": "referral", "reason": "转诊前需了解既往诊疗"})
    assert asked.status_code == 201, asked.text
    [pending] = [r for r in client.get("/api/v1/phr/requests", headers=headers(patient.who)).json()
                 if r["id"] == asked.json()["id"]]
    assert pending["doctor"] == doctor["_user"] and pending["state"] == "pending"
    answered = client.post(f"/api/v1/phr/requests/{pending['id']}/answer", headers=headers(patient.who),
                           json={"approve": True, "days": 3, "sensitive": ["mental"]})
    assert answered.status_code == 200 and answered.json()["state"] == "approved"
    ids = _record_ids(_everything(client, doctor, patient.empi_id).json())
    assert patient.sensitive_record in ids and patient.old_record in ids
    colleague = _doctor(client, patient.hospitals[1])
    assert _everything(client, colleague, patient.empi_id).status_code == 403, "the consent names one doctor"


def test_break_glass_is_flagged_for_review(client_module, patient):
    client = client_module
    doctor = _doctor(client, patient.hospitals[0])
    short = client.post("/api/v1/phr/break-glass", headers=headers(doctor), json={"empi_id": patient.empi_id, "reason": "急"})
    assert short.status_code == 422
    opened = client.post("/api/v1/phr/break-glass", headers=headers(doctor),
                         json={"empi_id": patient.empi_id, "reason": "患者昏迷送急诊，需了解既往病史与用药"})
    assert opened.status_code == 201, opened.text
    ids = _record_ids(_everything(client, doctor, patient.empi_id).json())
    assert patient.old_record in ids and patient.sensitive_record not in ids
    auditor = client.post("/api/v1/auth/token", json={"username": "auditor", "password": "smartcare-audit"}).json()
    bearer = {"Authorization": f"Bearer {auditor['access_token']}"}
    report = client.get("/api/v1/phr/audit-report", headers=bearer).json()
    [glass] = [g for g in report["break_glass"] if g["id"] == opened.json()["id"]]
    assert glass["doctor"] == doctor["_user"] and not glass["reviewed"]
    assert client.post(f"/api/v1/phr/break-glass/{glass['id']}/review", headers=bearer, json={"note": "急诊属实"}).status_code == 200
    assert client.get("/api/v1/phr/audit-report", headers=headers(patient.who)).status_code == 403
    looked = client.get(f"/api/v1/phr/{patient.empi_id}/accesses", headers=headers(patient.who)).json()
    assert any(a["who"] == doctor["_user"] and a["basis"] == "break_glass" for a in looked)
    with session_scope() as s:
        assert audit.verify(s).ok


def test_smart_scopes_limit_what_a_token_reads(client_module, patient):
    client = client_module
    username = patient.who["_user"]
    r = client.post("/api/v1/auth/token", json={"username": username, "password": "resident-pass",
                                                 "scope": "patient/Observation.read"})
    assert r.status_code == 200 and r.json()["scope"] == "patient/Observation.read"
    only = {"Authorization": f"Bearer {r.json()['access_token']}"}
    body = client.get(f"/fhir/Patient/{patient.empi_id}/$everything", headers=only).json()
    assert {e["resource"]["resourceType"] for e in body["entry"]} == {"Observation"}
    assert client.get(f"/fhir/Patient/{patient.empi_id}", headers=only).status_code == 403
    assert client.get(f"/fhir/Condition?patient={patient.empi_id}", headers=only).status_code == 403
    wrong = client.post("/api/v1/auth/token", json={"username": username, "password": "resident-pass",
                                                     "scope": "user/*.read"})
    assert wrong.status_code == 422 and "patient/" in wrong.json()["message"]
    admin = client.post("/api/v1/auth/token", json={"username": "admin", "password": "smartcare-admin"}).json()
    assert client.get(f"/fhir/Patient/{patient.empi_id}/$everything",
                      headers={"Authorization": f"Bearer {admin['access_token']}"}).status_code == 403


def test_review_findings_stay_fixed(client_module, patient, hospital):
    """From the security review: every sensitive category must be shared, a visit is as sensitive as its most
    sensitive document, break-glass sees past a narrow consent, scoped tokens stay in /fhir, bad input is
    refused at the door and an ID number never reaches the audit log."""
    client = client_module
    with session_scope() as s:
        [h] = synth.document_hospitals(s, codes=[patient.hospitals[0]])
    # one visit: an outpatient record with a psychiatric and an HIV diagnosis, and the prescription of that visit
    with session_scope() as s:
        row = s.execute(text("SELECT id_number, name, sex, birth_date, phone FROM synth.resident WHERE id_number = "
                             "(SELECT golden->>'id_number' FROM empi.person WHERE empi_id = :e)"),
                        {"e": patient.empi_id}).one()
    me = Person(row.id_number, row.name, row.sex, row.birth_date, row.phone or "")
    at = datetime.combine(china_today() - timedelta(days=3), datetime.min.time(), CHINA_TZ).replace(hour=10)
    rng = random.Random("review")
    record = clean_document("C0002", hospital=h, person=me, rng=rng, at=at)
    dx = (cda.DataElement("DE05.01.024.00", "诊断代码", cda.cd("F20.0", "偏执型精神分裂症", "2.16.156.10011.2.3.3.11", "ICD-10")),
          cda.DataElement("DE05.01.024.00", "诊断代码", cda.cd("B20", "人类免疫缺陷病毒[HIV]病", "2.16.156.10011.2.3.3.11", "ICD-10")))
    record = replace(record, effective_time=at, sections=(*record.sections[:-1], replace(record.sections[-1], elements=dx)))
    prescription = replace(clean_document("C0004", hospital=h, person=me, rng=rng, at=at), effective_time=at)
    record_id, rx_id = register_document(record, patient.hospitals[0]), register_document(prescription, patient.hospitals[0])

    doctor = _doctor(client, patient.hospitals[0])
    grant = client.post("/api/v1/phr/consents", headers=headers(patient.who), json={
        "empi_id": patient.empi_id, "facility_code": patient.hospitals[0], "days": 1, "sensitive": ["mental"],
        "records_since": (china_today() - timedelta(days=30)).isoformat()})
    assert grant.status_code == 201, grant.text
    ids = _record_ids(_everything(client, doctor, patient.empi_id).json())
    assert record_id not in ids, "opting into mental does not share HIV"
    assert rx_id not in ids, "the prescription of that visit says as much as its diagnoses"
    assert patient.old_record not in ids  # outside the consented period …
    glass = client.post("/api/v1/phr/break-glass", headers=headers(doctor),
                        json={"empi_id": patient.empi_id, "reason": "急诊抢救，需查看全部既往病史"})
    assert glass.status_code == 201
    ids = _record_ids(_everything(client, doctor, patient.empi_id).json())
    assert patient.old_record in ids, "… which an emergency sees past"
    assert record_id not in ids and rx_id not in ids, "sensitive stays as the consent shares it"

    scoped = client.post("/api/v1/auth/token", json={"username": patient.who["_user"], "password": "resident-pass",
                                                      "scope": "patient/*.read"}).json()["access_token"]
    bearer = {"Authorization": f"Bearer {scoped}"}
    assert client.get(f"/fhir/Patient/{patient.empi_id}", headers=bearer).status_code == 200
    assert client.get(f"/api/v1/phr/{patient.empi_id}/timeline", headers=bearer).status_code == 401
    assert client.post("/api/v1/phr/consents", headers=bearer, json={
        "empi_id": patient.empi_id, "facility_code": patient.hospitals[1]}).status_code == 401

    assert _everything(client, patient.who, patient.empi_id, _since="0001-01-01T00:00:00+08:00").status_code == 422
    nul = client.post("/api/v1/phr/requests", headers=headers(doctor),
                      json={"empi_id": patient.empi_id, "purpose": "treatment", "reason": "need\u0000it"})
    assert nul.status_code == 422 and "NUL" in nul.json()["message"]
    id_number = me.id_number
    assert client.get(f"/fhir/Patient/{id_number}", headers=headers(doctor)).status_code == 422
    assert client.post("/api/v1/phr/consents", headers=headers(patient.who), json={
        "empi_id": patient.empi_id, "facility_code": "NOPE"}).status_code == 422
    with session_scope() as s:
        assert not s.execute(text("SELECT count(*) FROM platform.audit_log WHERE target LIKE :t"),
                             {"t": f"%{id_number}%"}).scalar()
    auditor = client.post("/api/v1/auth/token", json={"username": "auditor", "password": "smartcare-audit"}).json()
    assert client.post(f"/api/v1/phr/break-glass/{glass.json()['id']}/review",
                       headers={"Authorization": f"Bearer {auditor['access_token']}"}, json={"note": "属实"}).status_code == 200
