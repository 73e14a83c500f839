"""The HTTP connectors as a hospital system uses them: signed requests, ACK after commit, clear 4xx."""

from __future__ import annotations

import uuid
from smartcare.platform import auth
from smartcare.synth.messages import cda_document
from tests.exchange.conftest import adt, admin_token, dumps, events_for, message_row, msa, settle, signed_post


def test_hl7v2_over_http(client, hospital, residents):
    control = f"H{uuid.uuid4().hex[:12]}"
    r = signed_post(client, hospital, "/api/v1/exchange/hl7v2", adt(hospital[0], control, residents[2]).encode(), "text/plain")
    assert r.status_code == 200, r.text
    assert msa(r.text)[1:3] == ["AA", control]
    mid = int(r.headers["X-SmartCare-Message-Id"])
    settle()
    assert message_row(mid)["state"] == "delivered"
    assert {e["topic"] for e in events_for(mid)} == {"patient.registered", "encounter.recorded"}

    bad = signed_post(client, hospital, "/api/v1/exchange/hl7v2", b"MSH|^~\\&|HIS|X|||20260101||ADT^A01||P|2.5\r", "text/plain")
    assert bad.status_code == 422 and msa(bad.text)[1] == "AE" and "MSH-10" in bad.text


def test_cda_document(client, hospital, residents):
    resident = residents[3]
    r = signed_post(client, hospital, "/api/v1/exchange/cda", cda_document(resident, hospital[0], "测试医院"), "application/xml")
    assert r.status_code == 202, r.text
    assert r.json()["message_type"] == "C0001"
    settle()
    [event] = events_for(r.json()["message_id"])
    assert event["topic"] == "document.received"
    assert event["data"]["type_code"] == "C0001" and event["data"]["id_number"] == resident["id_number"]

    broken = signed_post(client, hospital, "/api/v1/exchange/cda", b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id/>", "application/xml")
    assert broken.status_code == 422 and broken.json()["status"] == "failed" and broken.json()["error"]


def test_xxe_is_refused(client, hospital):
    xxe = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>')
    r = signed_post(client, hospital, "/api/v1/exchange/cda", xxe, "application/xml")
    assert r.status_code == 422
    assert "root:" not in r.text and "DOCTYPE" in r.json()["error"]


def test_fhir_bundle(client, hospital, residents):
    resident = residents[4]
    pid = f"p{uuid.uuid4().hex[:8]}"
    bundle = {"resourceType": "Bundle", "id": f"b{uuid.uuid4().hex[:8]}", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": pid,
                      "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": resident["id_number"]}],
                      "name": [{"text": resident["name"]}], "gender": "male" if resident["sex"] == "1" else "female",
                      "birthDate": resident["birth_date"].isoformat()}},
        {"resource": {"resourceType": "Observation", "id": f"o{pid}", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "葡萄糖"}]},
                      "subject": {"reference": f"Patient/{pid}"},
                      "valueQuantity": {"value": 5.6, "unit": "mmol/L"}}}]}
    r = signed_post(client, hospital, "/api/v1/exchange/fhir", dumps(bundle), "application/fhir+json")
    assert r.status_code == 202, r.text
    settle()
    topics = [e["topic"] for e in events_for(r.json()["message_id"])]
    assert topics == ["patient.registered", "lab.result"]
    again = signed_post(client, hospital, "/api/v1/exchange/fhir", dumps(bundle), "application/fhir+json")
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert again.json()["message_id"] == r.json()["message_id"]

    invalid = {"resourceType": "Patient", "id": "x1", "gender": "robot"}
    bad = signed_post(client, hospital, "/api/v1/exchange/fhir", dumps(invalid), "application/fhir+json")
    assert bad.status_code == 422 and "gender" in bad.json()["error"]


def test_batch_csv_gives_per_row_results(client, hospital, residents):
    rows = ["source_id,name,id_number,sex,birth_date,phone,address"]
    batch = f"B{uuid.uuid4().hex[:6]}"
    for i, r in enumerate(residents[10:13]):
        rows.append(f"{batch}-{i},{r['name']},{r['id_number']},{r['sex']},{r['birth_date']},{r['phone']},{r['address']}")
    rows.append(f"{batch}-bad,李四,110105194912310021,1,1949-12-31,,")        # wrong check digit
    rows.append(f"{batch}-0,{residents[10]['name']},,1,1980-01-01,,")          # same record id again
    rows.append(f"{batch}-sex,王五,,7,1980-01-01,,")                           # unknown sex code
    r = signed_post(client, hospital, "/api/v1/exchange/batch", "\n".join(rows).encode(), "text/csv")
    assert r.status_code == 200, r.text
    body = r.json()
    statuses = [x["status"] for x in body["results"]]
    assert statuses == ["accepted", "accepted", "accepted", "rejected", "duplicate", "rejected"]
    assert body["results"][3]["field"] == "id_number" and "110105194912310021" not in r.text
    assert body["results"][5]["field"] == "sex"
    settle()
    [event] = events_for(body["results"][0]["message_id"])
    assert event["topic"] == "patient.registered" and event["data"]["id_number"] == residents[10]["id_number"]


def test_signatures_replays_and_limits(client, hospital, residents):
    body = adt(hospital[0], f"R{uuid.uuid4().hex[:10]}", residents[5]).encode()
    _, client_id, secret = hospital
    headers = {**auth.sign_request(client_id=client_id, secret=secret, method="POST", path="/api/v1/exchange/hl7v2", body=body),
               "Content-Type": "text/plain"}
    assert client.post("/api/v1/exchange/hl7v2", content=body, headers=headers).status_code == 200
    replay = client.post("/api/v1/exchange/hl7v2", content=body, headers=headers)
    assert replay.status_code == 401 and "replay" in replay.json()["message"]
    tampered = client.post("/api/v1/exchange/hl7v2", content=body + b"X", headers=headers)
    assert tampered.status_code == 401 and "signature" in tampered.json()["message"]
    unsigned = client.post("/api/v1/exchange/hl7v2", content=body, headers={"Content-Type": "text/plain"})
    assert unsigned.status_code == 401
    huge = b"MSH|" + b"x" * (11 * 1024 * 1024)
    assert signed_post(client, hospital, "/api/v1/exchange/hl7v2", huge, "text/plain").status_code == 413


def test_operator_views_mask_and_audit(client, hospital, residents):
    resident = residents[6]
    control = f"V{uuid.uuid4().hex[:10]}"
    r = signed_post(client, hospital, "/api/v1/exchange/hl7v2", adt(hospital[0], control, resident).encode(), "text/plain")
    mid = int(r.headers["X-SmartCare-Message-Id"])
    headers = admin_token(client)
    listing = client.get("/api/v1/exchange/messages", params={"facility": hospital[0]}, headers=headers)
    assert listing.status_code == 200 and any(m["id"] == mid for m in listing.json())
    assert resident["id_number"] not in listing.text and resident["name"] not in listing.text
    detail = client.get(f"/api/v1/exchange/messages/{mid}", headers=headers).json()
    assert detail["control_id"] == control
    raw = client.get(f"/api/v1/exchange/messages/{mid}/raw", params={"reason": "排查"}, headers=headers)
    assert raw.status_code == 200 and resident["id_number"] in raw.text
    resident_login = client.post("/api/v1/auth/token", json={"username": "resident", "password": "smartcare-demo"}).json()
    denied = client.get(f"/api/v1/exchange/messages/{mid}/raw", headers={"Authorization": f"Bearer {resident_login['access_token']}"})
    assert denied.status_code == 403
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    with session_scope() as s:
        assert s.execute(text("SELECT count(*) FROM platform.audit_log WHERE action = 'exchange.raw.view' AND target = :t"),
                         {"t": f"message:{mid}"}).scalar() == 1


def test_batch_ndjson_reports_bad_lines(client, hospital, residents):
    batch = f"J{uuid.uuid4().hex[:6]}"
    r = residents[14]
    lines = [dumps({"source_id": f"{batch}-1", "name": r["name"], "id_number": r["id_number"], "sex": r["sex"],
                    "birth_date": r["birth_date"].isoformat()}).decode(),
             '{"source_id": "broken", "name": ',
             dumps({"source_id": f"{batch}-3", "name": "赵六", "sex": "2"}).decode()]
    resp = signed_post(client, hospital, "/api/v1/exchange/batch", "\n".join(lines).encode(), "application/x-ndjson")
    results = resp.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "rejected", "rejected"]
    assert "line 2: not valid JSON" in results[1]["error"]
    assert results[2]["field"] == "birth_date"


def test_a_corrected_resource_is_not_a_duplicate(client, hospital):
    pid = f"c{uuid.uuid4().hex[:8]}"
    patient = {"resourceType": "Patient", "id": pid, "name": [{"text": "王芳"}], "gender": "female", "birthDate": "1990-05-01"}
    first = signed_post(client, hospital, "/api/v1/exchange/fhir", dumps(patient), "application/fhir+json")
    again = signed_post(client, hospital, "/api/v1/exchange/fhir", dumps(patient), "application/fhir+json")
    fixed = signed_post(client, hospital, "/api/v1/exchange/fhir", dumps({**patient, "birthDate": "1990-05-02"}),
                        "application/fhir+json")
    assert (first.status_code, again.status_code, fixed.status_code) == (202, 200, 202)
    assert again.json()["message_id"] == first.json()["message_id"] != fixed.json()["message_id"]
