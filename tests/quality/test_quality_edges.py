"""Edges of quality control and the registry found in review: scores by month, a registration that
replaces several versions at once, checks left current by an interrupted run, long identifiers, and
input that used to end in a 500 (huge version numbers, year-1 timestamps, NUL characters, paging from
another hospital's document)."""

from __future__ import annotations

import uuid
from datetime import datetime

from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import session_scope
from smartcare.quality import service as quality
from smartcare.records import service as records
from tests.exchange.conftest import admin_token
from tests.records.records_support import document, resident, signed, sql

DOCS = "/api/v1/records/documents"


def _register(raw: bytes, facility: str) -> int:
    with session_scope() as s:
        return records.register(s, raw=raw, sender="test", facility_code=facility,
                                received_at=datetime(2026, 3, 2, 9, tzinfo=CHINA_TZ), actor="test").document.id


def _check(record_id: int) -> None:
    with session_scope() as s:
        quality.check_record(s, record_id=record_id)


def _current(*ids: int) -> list[tuple[int, bool]]:
    return sql("SELECT record_id, current FROM quality.document_check WHERE record_id = ANY(:ids) ORDER BY 1",
               ids=list(ids))


def test_a_version_that_replaces_two_retires_both_checks(hospital, residents):
    facility, who, set_id = hospital[0], resident(residents, 80), f"SET-{uuid.uuid4().hex[:8]}"
    first = _register(document(facility, who, set_id=set_id, version=1, past_history="一"), facility)
    twin = _register(document(facility, who, set_id=set_id, version=1, past_history="二"), facility)
    _check(first), _check(twin)
    newest = _register(document(facility, who, set_id=set_id, version=2, past_history="三"), facility)
    _check(newest)
    assert _current(first, twin, newest) == [(first, False), (twin, False), (newest, True)]


def test_qc_run_retires_checks_whose_document_was_replaced_without_a_check(hospital, residents):
    facility, who, set_id = hospital[0], resident(residents, 81), f"SET-{uuid.uuid4().hex[:8]}"
    old = _register(document(facility, who, set_id=set_id, version=1), facility)
    _check(old)
    _register(document(facility, who, set_id=set_id, version=2, past_history="更正"), facility)  # its check never ran
    assert _current(old) == [(old, True)]
    quality.run(session_scope, facility_code=facility)
    assert _current(old) == [(old, False)]


def test_long_identifiers_are_checked(residents):
    """A sender of no hospital files under the custodian as written; the check keeps the registry's widths."""
    who = resident(residents, 82)
    raw = document("500103C001", who, document_id="D" * 36, custodian="X" * 60)
    record_id = _register(raw, None)
    _check(record_id)
    [(custodian, findings)] = sql("SELECT c.custodian_code, array_agg(f.rule_id) FROM quality.document_check c "
                                  "JOIN quality.finding f USING (record_id) WHERE record_id = :r GROUP BY 1", r=record_id)
    assert custodian == "X" * 60 and "INT-CUSTODIAN" in findings


def test_scores_by_every_grouping(client, hospital, residents):
    _check(_register(document(hospital[0], resident(residents, 83)), hospital[0]))
    for by in ("hospital", "type", "day", "month"):
        r = signed(client, hospital, "GET", "/api/v1/quality/scores", params={"by": by})
        assert r.status_code == 200, (by, r.text)
        assert r.json() and all(0 <= row["score"] <= 100 for row in r.json())
    [month] = [row for row in signed(client, hospital, "GET", "/api/v1/quality/scores", params={"by": "month"}).json()
               if row["group"] == "2026-03-01"]
    assert month["documents"] >= 1 and set(month["dimensions"]) >= {"completeness", "validity"}


def test_input_that_used_to_fail_deep_down_is_refused_at_the_door(client, hospital, other_hospital, residents):
    who = resident(residents, 84)
    huge = document(hospital[0], who).replace(b"<versionNumber/>", b"<versionNumber>99999999999</versionNumber>")
    r = signed(client, hospital, "POST", DOCS, huge)
    assert r.status_code == 422 and "versionNumber" in r.json()["message"]
    year_one = document(hospital[0], who).replace(b'<effectiveTime value="20260301093000"/>',
                                                  b'<effectiveTime value="00010102000000+1400"/>')
    assert b"00010102000000" in year_one
    r = signed(client, hospital, "POST", DOCS, year_one)
    assert r.status_code == 422 and "between 1900 and 2100" in r.json()["message"]

    theirs = signed(client, other_hospital, "POST", DOCS, document(other_hospital[0], who)).json()["id"]
    assert signed(client, hospital, "GET", DOCS, params={"before": theirs}).status_code == 404
    assert signed(client, hospital, "GET", f"/api/v1/quality/documents/{theirs}").status_code == 404

    admin = {"Authorization": f"Bearer {admin_token(client)}"}
    for url in (f"{DOCS}?hospital=a%00b", "/api/v1/quality/scores?hospital=%00", "/api/v1/quality/report?hospital=x%00"):
        r = client.get(url, headers=admin)
        assert r.status_code == 400 and "NUL" in r.json()["message"], url
    client.post("/login", data={"username": "admin", "password": "smartcare-admin"}, follow_redirects=False)
    r = client.get("/admin/quality", params={"until": "0001-01-01"})
    assert r.status_code == 422 and "between 1900 and 2100" in r.text
