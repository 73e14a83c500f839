"""The HTTP API as a hospital system or an admin uses it: health, auth, registry, and bad input."""

from __future__ import annotations

import json
from datetime import date
import uuid

import pytest
from sqlalchemy import text

from smartcare.platform import auth, idcard
from smartcare.platform.db import session_scope


def _admin_headers(client) -> dict:
    r = client.post("/api/v1/auth/token", json={"username": "admin", "password": "smartcare-admin"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_health_ready_metrics_docs(client, database_url):
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "database": "ok", "bus": "ok"}
    client.get("/api/v1/registry/districts")
    assert "smartcare_http_requests_total" in client.get("/metrics").text
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/v1/registry/facilities" in paths and "/api/v1/auth/token" in paths
    assert client.get("/docs").status_code == 200


def test_counts_of_the_demo_region(client, seeded):
    counts = client.get("/api/v1/registry/counts").json()
    assert counts["districts"] == 38
    assert counts["hospitals"] == 244 and counts["hospitals_public"] == 227 and counts["hospitals_private"] == 17
    assert counts["institutions"] == 1141


def test_value_set_lookup_and_validation(client, database_url):
    sets = {vs["id"] for vs in client.get("/api/v1/registry/value-sets").json()}
    assert {"sex", "id-document-type", "marital-status", "ethnicity", "abo", "rh", "icd10", "wst500-document-type"} <= sets
    sex = client.get("/api/v1/registry/value-sets/sex").json()
    assert {c["code"]: c["display"] for c in sex["concepts"]} == {"0": "未知的性别", "1": "男性", "2": "女性", "9": "未说明的性别"}
    ok = client.get("/api/v1/registry/value-sets/icd10/validate", params={"code": "I10"}).json()
    assert ok["valid"] and ok["display"] == "特发性（原发性）高血压"
    bad = client.get("/api/v1/registry/value-sets/sex/validate", params={"code": "3"}).json()
    assert not bad["valid"] and "not in value set" in bad["message"]
    missing = client.get("/api/v1/registry/value-sets/nope")
    assert missing.status_code == 404 and missing.json()["field"] == "value_set"


def test_wst500_document_types_match_the_shared_schemas(client, database_url):
    from tests.conftest import shared

    xsd_dir = shared("standards", "wst500-xsd")
    codes = {c["code"] for c in client.get("/api/v1/registry/value-sets/wst500-document-type").json()["concepts"]}
    assert len(codes) == 53
    assert codes == {p.stem for p in xsd_dir.glob("C*.xsd")}


def test_malformed_json_gets_400_and_changes_nothing(client, seeded):
    headers = {**_admin_headers(client), "Content-Type": "application/json"}
    before = client.get("/api/v1/registry/counts").json()["institutions"]
    r = client.post("/api/v1/registry/facilities", content=b'{"code": "X1", "name": ', headers=headers)
    assert r.status_code == 400
    assert r.json()["error"] == "malformed_json" and "not valid JSON" in r.json()["message"]
    assert client.get("/api/v1/registry/counts").json()["institutions"] == before


def _facility(**over) -> dict:
    base = {"code": f"T{uuid.uuid4().hex[:8]}", "name": f"测试医院{uuid.uuid4().hex[:6]}", "kind": "general_hospital",
            "level": 2, "grade": "甲", "ownership": "public", "district_code": "500112", "address": "重庆市渝北区测试路1号"}
    return {**base, **over}


@pytest.mark.parametrize(("override", "field"), [
    ({"district_code": "999999"}, "district_code"),
    ({"kind": "spaceport"}, "kind"),
    ({"level": 7}, "level"),
    ({"ownership": "mixed"}, "ownership"),
])
def test_unknown_codes_are_refused_naming_the_field(client, seeded, override, field):
    headers = _admin_headers(client)
    before = client.get("/api/v1/registry/counts").json()["institutions"]
    r = client.post("/api/v1/registry/facilities", json=_facility(**override), headers=headers)
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in body["message"]
    assert body.get("field") == field or any(e["field"] == field for e in body.get("errors", []))
    assert client.get("/api/v1/registry/counts").json()["institutions"] == before


@pytest.fixture
def new_facility(seeded):
    """A facility the test creates; removed afterwards so the region's counts stay those of the demo."""
    data = _facility()
    yield data
    with session_scope() as s:
        s.execute(text("DELETE FROM registry.facility WHERE code = :c"), {"c": data["code"]})


def test_admin_creates_a_facility_and_it_is_audited(client, new_facility):
    data = new_facility
    r = client.post("/api/v1/registry/facilities", json=data, headers=_admin_headers(client))
    assert r.status_code == 201 and r.json()["district_name"] == "渝北区"
    again = client.post("/api/v1/registry/facilities", json=data, headers=_admin_headers(client))
    assert again.status_code == 409 and again.json()["field"] == "code"
    assert client.post("/api/v1/registry/facilities", json=_facility()).status_code == 401
    resident = client.post("/api/v1/auth/token", json={"username": "resident", "password": "smartcare-demo"}).json()
    forbidden = client.post("/api/v1/registry/facilities", json=_facility(),
                            headers={"Authorization": f"Bearer {resident['access_token']}"})
    assert forbidden.status_code == 403
    with session_scope() as s:
        from smartcare.platform.models import AuditLog

        entry = s.query(AuditLog).filter_by(action="facility.create", target=f"facility:{data['code']}").one()
        assert entry.actor == "admin"


@pytest.fixture(scope="module")
def hospital(seeded):
    """A seeded hospital and a signed API client of its own."""
    with session_scope() as s:
        code = s.execute(text(
            "SELECT code FROM registry.facility WHERE kind = 'general_hospital' ORDER BY code LIMIT 1")).scalar()
        client_id = f"his-{uuid.uuid4().hex[:8]}"
        secret = auth.create_api_client(s, client_id=client_id, name="HIS", facility_code=code)
    return code, client_id, secret


def _signed(client, hospital, method, path, payload):
    code, client_id, secret = hospital
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = auth.sign_request(client_id=client_id, secret=secret, method=method, path=path, body=body)
    return client.request(method, path, content=body, headers={**headers, "Content-Type": "application/json"})


def test_hospital_publishes_departments_and_practitioners_with_signed_requests(client, hospital):
    code = hospital[0]
    r = _signed(client, hospital, "PUT", f"/api/v1/registry/facilities/{code}/departments/99", {"code": "99", "name": "互联网医院科"})
    assert r.status_code == 200, r.text
    assert any(d["code"] == "99" for d in client.get(f"/api/v1/registry/facilities/{code}/departments").json())
    number = idcard.make("500112", date(1980, 5, 17), 7, "1")
    r = _signed(client, hospital, "POST", f"/api/v1/registry/facilities/{code}/practitioners",
                {"code": f"P{uuid.uuid4().hex[:8]}", "department_code": "99", "name": "王医生", "sex": "1",
                 "title": "主治医师", "id_number": number})
    assert r.status_code == 201, r.text
    assert r.json()["id_number_masked"] == number[:4] + "*" * 10 + number[-4:]
    assert number not in r.text
    # someone else's facility
    other_code = next(f["code"] for f in client.get("/api/v1/registry/facilities", params={"hospitals_only": True}).json()["items"]
                      if f["code"] != code)
    other = _signed(client, hospital, "PUT", f"/api/v1/registry/facilities/{other_code}/departments/99", {"code": "99", "name": "x"})
    assert other.status_code == 403
    # unsigned
    assert client.put(f"/api/v1/registry/facilities/{code}/departments/98", json={"code": "98", "name": "x"}).status_code == 401


@pytest.mark.parametrize(("override", "field"), [
    ({"id_number": "110105194912310021"}, "id_number"),   # wrong check digit
    ({"id_number": "110105194902300027"}, "id_number"),   # 30 February
    ({"sex": "5"}, "sex"),
    ({"title": "院士"}, "title"),
    ({"department_code": "nope"}, "department_code"),
])
def test_bad_practitioner_input_names_the_field_and_stores_nothing(client, hospital, override, field):
    code = hospital[0]
    before = client.get(f"/api/v1/registry/facilities/{code}/practitioners").json()["total"]
    payload = {"code": f"P{uuid.uuid4().hex[:8]}", "department_code": "03", "name": "李医生", "sex": "2",
               "title": "住院医师", **override}
    r = _signed(client, hospital, "POST", f"/api/v1/registry/facilities/{code}/practitioners", payload)
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in body["message"]
    if "id_number" in override:
        assert override["id_number"] not in r.text  # personal data never echoed
    assert client.get(f"/api/v1/registry/facilities/{code}/practitioners").json()["total"] == before
