"""The registry's HTTP API: hospitals register, replace and read their own documents (HMAC-signed),
administrators read all, another hospital's document is not found, content reads are audited."""

from __future__ import annotations

import uuid

from tests.exchange.conftest import admin_token
from tests.records.records_support import custodian_of, document, resident, signed, sql

DOCS = "/api/v1/records/documents"


def post(client, hospital, raw: bytes, path: str = DOCS):
    return signed(client, hospital, "POST", path, raw)


def test_a_hospital_registers_and_reads_its_document(client, hospital, residents):
    who = resident(residents, 30)
    card_no = f"MZ{uuid.uuid4().hex[:8]}"
    raw = document(hospital[0], who, outpatient_no=card_no)
    r = post(client, hospital, raw)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["outcome"] == "registered" and body["status"] == "current" and body["empi_id"].startswith("E")
    again = post(client, hospital, raw)  # an idempotent resend
    assert again.status_code == 200 and again.json() == {**body, "outcome": "duplicate"}

    doc = signed(client, hospital, "GET", f"{DOCS}/{body['id']}").json()
    assert (doc["document_id"], doc["facility_code"], doc["custodian_code"], doc["patient_ref"], doc["sender"]) == \
        (body["document_id"], hospital[0], custodian_of(hospital[0]), card_no, f"client:{hospital[1]}")
    listed = signed(client, hospital, "GET", DOCS, params={"empi_id": body["empi_id"]})
    assert listed.status_code == 200 and [d["id"] for d in listed.json()] == [body["id"]]

    content = signed(client, hospital, "GET", f"{DOCS}/{body['id']}/content", params={"reason": "复诊"})
    assert content.status_code == 200 and content.content == raw
    assert content.headers["content-type"].startswith("application/xml")
    assert sql("SELECT actor, detail->>'reason' FROM platform.audit_log WHERE action = 'records.document.retrieve' "
               "AND target = :t", t=f"document:{body['id']}") == [(f"client:{hospital[1]}", "复诊")]


def test_replacement_through_the_api(client, hospital, other_hospital, residents):
    who = resident(residents, 31)
    set_id = f"SET-{uuid.uuid4().hex[:8]}"
    first = post(client, hospital, document(hospital[0], who, set_id=set_id, version=1)).json()
    path = f"{DOCS}/{first['id']}/replace"
    # another hospital cannot replace it, even with a document of its own
    r = post(client, other_hospital, document(other_hospital[0], who, set_id=set_id, version=2), path)
    assert r.status_code == 404, r.text
    r = post(client, hospital, document(hospital[0], who, set_id=set_id, version=2), path)
    assert r.status_code == 201 and r.json()["outcome"] == "replaced" and r.json()["replaces_id"] == first["id"]
    r = post(client, hospital, document(hospital[0], who, set_id=set_id, version=3), path)
    assert r.status_code == 409 and "already replaced" in r.json()["message"]
    chain = signed(client, hospital, "GET", f"{DOCS}/{first['id']}/versions").json()
    assert [(d["version_number"], d["status"]) for d in chain] == [(1, "replaced"), (2, "current")]
    current = signed(client, hospital, "GET", DOCS, params={"hospital": hospital[0], "type": "C0001", "limit": 500,
                                                             "status": "all"}).json()
    assert {first["id"], chain[1]["id"]} <= {d["id"] for d in current}


def test_hospitals_see_only_their_own_documents_and_administrators_see_all(client, hospital, other_hospital,
                                                                           residents):
    who = resident(residents, 32)
    mine = post(client, hospital, document(hospital[0], who)).json()["id"]
    for path in (f"{DOCS}/{mine}", f"{DOCS}/{mine}/content", f"{DOCS}/{mine}/versions"):
        r = signed(client, other_hospital, "GET", path)
        assert r.status_code == 404 and r.json()["message"] == f"no document {mine}", r.text
    r = signed(client, other_hospital, "GET", DOCS, params={"hospital": hospital[0]})
    assert r.status_code == 403
    theirs = signed(client, other_hospital, "GET", DOCS, params={"limit": 500}).json()
    assert all(d["facility_code"] == other_hospital[0] for d in theirs)
    assert sql("SELECT count(*) FROM platform.audit_log WHERE action = 'records.document.retrieve' AND target = :t",
               t=f"document:{mine}") == [(0,)]

    admin = admin_token(client)
    assert client.get(f"{DOCS}/{mine}", headers=admin).json()["facility_code"] == hospital[0]
    assert client.get(f"{DOCS}/{mine}/content", headers=admin).status_code == 200
    listed = client.get(DOCS, params={"hospital": hospital[0], "limit": 500}, headers=admin).json()
    assert mine in [d["id"] for d in listed]
    # nobody else: no login, or a login without a hospital
    assert client.get(f"{DOCS}/{mine}").status_code == 401
    resident_login = client.post("/api/v1/auth/token", json={"username": "resident", "password": "smartcare-demo"})
    headers = {"Authorization": f"Bearer {resident_login.json()['access_token']}"}
    assert client.get(f"{DOCS}/{mine}", headers=headers).status_code == 403


def test_bad_documents_are_refused_saying_what_and_where(client, hospital, other_hospital, residents):
    who = resident(residents, 33)
    r = post(client, hospital, document(other_hospital[0], who))
    assert r.status_code == 403 and "is not the sending hospital" in r.json()["message"], r.text
    r = post(client, hospital, b"<ClinicalDocument xmlns='urn:hl7-org:v3'><id/></ClinicalDocument>")
    assert r.status_code == 422 and r.json()["message"].startswith("ClinicalDocument/id:"), r.text
    r = post(client, hospital, b"<?xml version='1.0'?>\n<ClinicalDocument>\n<id>")
    assert r.status_code == 422 and "malformed XML at line" in r.json()["message"]
    r = post(client, hospital, b"   ")
    assert r.status_code == 422 and "empty" in r.json()["message"]
    raw = document(hospital[0], who)
    unsigned = client.post(DOCS, content=raw, headers={"Content-Type": "application/xml"})
    assert unsigned.status_code == 401
    assert who["id_number"] not in r.text
