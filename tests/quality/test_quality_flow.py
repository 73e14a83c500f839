"""Quality control end to end against PostgreSQL: documents sent through the exchange hub are registered
under the right EMPI person, checked, scored and fed back; a fixed version resent replaces the old one and
is checked again; uniqueness and integration rules read the registry; the CLI runs and reports."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from datetime import date, datetime, time, timedelta

import pytest

from smartcare.platform.clock import CHINA_TZ, china_today
from smartcare.platform.db import session_scope
from smartcare.platform.idcard import make
from smartcare.quality import service as quality
from smartcare.records import service as records
from smartcare.registry import service as registry
from smartcare.standards import cda
from smartcare.synth.documents import Hospital, Person, clean_document, inject
from smartcare.synth.messages import adt
from tests.exchange.conftest import msa, settle, signed_post
from tests.records.records_support import resident, signed, sql


def _hospital(facility: str) -> Hospital:
    from smartcare.synth import service as synth

    with session_scope() as s:
        [h] = synth.document_hospitals(s, codes=[facility])
        return h


def _person(r: dict) -> Person:
    return Person(r["id_number"], r["name"], r["sex"], r["birth_date"], r["phone"] or "", "")


def _admit(client, hospital, who: dict) -> str:
    """The registration desk registers the patient through the hub (ADT^A04): the EMPI knows the card."""
    r = signed_post(client, hospital, "/api/v1/exchange/hl7v2", adt(hospital[0], f"Q{uuid.uuid4().hex[:10]}", who).encode(),
                    "text/plain")
    assert r.status_code == 200 and msa(r.text)[1] == "AA", r.text
    settle()
    return f"MZ{who['id']:08d}"


def _send(client, hospital, raw: bytes) -> dict:
    r = signed_post(client, hospital, "/api/v1/exchange/cda", raw, "application/xml")
    assert r.status_code == 202, r.text
    settle()
    [doc] = sql("SELECT * FROM records.document WHERE exchange_message_id = :m", m=r.json()["message_id"])
    return doc._asdict()


def _findings(record_id: int) -> set[str]:
    return {rule for (rule,) in sql("SELECT rule_id FROM quality.finding WHERE record_id = :r", r=record_id)}


@pytest.fixture
def visit(hospital):
    return datetime.combine(china_today() - timedelta(days=1), time(9, 0), CHINA_TZ)


def test_documents_through_the_hub_are_registered_checked_and_fed_back(client, hospital, other_hospital, residents,
                                                                        visit):
    facility = hospital[0]
    who = resident(residents, 70)
    card_no = _admit(client, hospital, who)
    [(empi_id,)] = sql("SELECT p.empi_id FROM empi.source_identity si JOIN empi.link l ON l.source_id = si.id "
                       "JOIN empi.person p ON p.id = l.person_id WHERE si.facility_code = :f AND si.card_no = :c",
                       f=facility, c=card_no)
    h, rng = _hospital(facility), random.Random("quality-flow")
    clean = clean_document("C0002", hospital=h, person=_person(who), rng=rng, at=visit)
    clean = cda.Document(**{**{f: getattr(clean, f) for f in clean.__slots__},
                            "visit": cda.Visit(**{**{f: getattr(clean.visit, f) for f in clean.visit.__slots__},
                                                  "number": card_no})})
    broken, defect = inject(clean_document("C0002", hospital=h, person=_person(who), rng=rng, at=visit),
                            "implausible_vital", rng)
    broken = cda.Document(**{**{f: getattr(broken, f) for f in broken.__slots__}, "visit": clean.visit,
                             "set_id": "SET-" + broken.document_id[:8], "version": 1})

    good_doc = _send(client, hospital, cda.build(clean))
    bad_doc = _send(client, hospital, cda.build(broken))
    # registered under the person the registration desk's card belongs to, and checked by the bus consumer
    assert good_doc["empi_id"] == bad_doc["empi_id"] == empi_id
    assert _findings(good_doc["id"]) == set() and _findings(bad_doc["id"]) == {defect.rule}
    [(score, current)] = sql("SELECT score, current FROM quality.document_check WHERE record_id = :r", r=bad_doc["id"])
    assert 0 < score < 100 and current

    # the hospital's feedback names the document, the rule, the element and its line
    r = signed(client, hospital, "GET", "/api/v1/quality/report", params={"format": "json"})
    assert r.status_code == 200, r.text
    listed = {d["record_id"]: d for d in r.json()["documents"]}
    assert good_doc["id"] not in listed
    [finding] = listed[bad_doc["id"]]["findings"]
    assert (finding["rule_id"], finding["element"]) == (defect.rule, defect.element) and finding["line"] > 0
    assert all(d["facility_code"] == facility for d in r.json()["documents"])
    csv_report = signed(client, hospital, "GET", "/api/v1/quality/report", params={"format": "csv"})
    assert defect.rule in csv_report.text and who["id_number"] not in csv_report.text and who["name"] not in csv_report.text
    # another hospital sees neither the document nor its check
    assert signed(client, other_hospital, "GET", f"/api/v1/quality/documents/{bad_doc['id']}").status_code == 404
    mine = signed(client, hospital, "GET", f"/api/v1/quality/documents/{bad_doc['id']}")
    assert mine.status_code == 200 and [f["rule_id"] for f in mine.json()["findings"]] == [defect.rule]

    # scores per hospital and dimension (the dashboard's figures) count both documents
    day = {"since": visit.date().isoformat(), "until": visit.date().isoformat()}
    scores = {s["group"]: s for s in signed(client, hospital, "GET", "/api/v1/quality/scores", params=day).json()}
    assert list(scores) == [facility] and scores[facility]["documents"] >= 2
    assert scores[facility]["dimensions"]["plausibility"] < 100 and scores[facility]["dimensions"]["completeness"] == 100

    # and on the console's dashboard, with a link to the failing document
    client.post("/login", data={"username": "admin", "password": "smartcare-admin"}, follow_redirects=False)
    board = client.get("/admin/quality", params={"hospital": facility})
    assert board.status_code == 200 and facility in board.text
    assert f"/admin/quality/documents/{bad_doc['id']}" in board.text and defect.rule in board.text

    # the hospital fixes the value and resends the next version: it replaces the old one and is checked again
    fixed = cda.Document(**{**{f: getattr(broken, f) for f in broken.__slots__}, "document_id": str(uuid.uuid4()),
                            "version": 2, "sections": clean.sections})
    fixed_doc = _send(client, hospital, cda.build(fixed))
    assert fixed_doc["replaces_id"] == bad_doc["id"] and _findings(fixed_doc["id"]) == set()
    assert sql("SELECT current FROM quality.document_check WHERE record_id = :r", r=bad_doc["id"]) == [(False,)]
    again = signed(client, hospital, "GET", "/api/v1/quality/report", params={"format": "json"}).json()
    assert bad_doc["id"] not in {d["record_id"] for d in again["documents"]}


def _register(raw: bytes, facility: str | None, received_at: datetime) -> int:
    with session_scope() as s:
        return records.register(s, raw=raw, sender="test", facility_code=facility, received_at=received_at,
                                actor="test").document.id


def _check(record_id: int) -> set[str]:
    with session_scope() as s:
        return {f.rule.id for f in quality.check_record(s, record_id=record_id).findings}


def test_uniqueness_and_integration_read_the_registry(hospital, residents, visit):
    facility = hospital[0]
    h, rng = _hospital(facility), random.Random("quality-registry")
    who = resident(residents, 72)
    first = clean_document("C0001", hospital=h, person=_person(who), rng=rng, at=visit)
    reused = clean_document("C0004", hospital=h, person=_person(who), rng=rng, at=visit)
    reused = cda.Document(**{**{f: getattr(reused, f) for f in reused.__slots__}, "document_id": first.document_id})
    first_id = _register(cda.build(first), facility, visit + timedelta(hours=6))
    reused_id = _register(cda.build(reused), facility, visit + timedelta(hours=7))
    assert "UNQ-DOCUMENT-ID" not in _check(first_id), "the first use of an id is not the duplicate"
    assert "UNQ-DOCUMENT-ID" in _check(reused_id)

    # a patient nobody knows: a C0001 identified only by an ID number no resident holds (no card to register)
    number = make("500103", date(1961, 7, 15), 497, "1")
    assert sql("SELECT count(*) FROM synth.resident WHERE id_number = :n", n=number) == [(0,)]
    stranger = Person(number, "路人甲", "1", date(1961, 7, 15))
    unknown_id = _register(cda.build(clean_document("C0001", hospital=h, person=stranger, rng=rng, at=visit)),
                           facility, visit + timedelta(hours=6))
    assert sql("SELECT person_id FROM records.document WHERE id = :i", i=unknown_id) == [(None,)]
    assert _check(unknown_id) == {"INT-PATIENT"}

    # a custodian that names no registered hospital (filed under itself: the sender belongs to none)
    ghost = Hospital("999999Q001", registry.credit_code("999999Q001"), "不存在的医院", h.departments, h.doctors)
    orphan = clean_document("C0002", hospital=ghost, person=_person(who), rng=rng, at=visit)
    assert "INT-CUSTODIAN" in _check(_register(cda.build(orphan), None, visit + timedelta(hours=6)))


def test_cli_checks_again_and_writes_the_report(hospital, tmp_path, database_url):
    env = {**os.environ, "DATABASE_URL": database_url}
    run = subprocess.run([sys.executable, "-m", "smartcare.cli", "qc", "run", "--hospital", hospital[0]],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    checked = int(run.stdout.split("document(s) checked")[0].split()[-1].replace(",", ""))
    assert checked == sql("SELECT count(*) FROM records.document WHERE facility_code = :f AND status = 'current'",
                          f=hospital[0])[0][0] > 0
    out = tmp_path / "qc.json"
    report = subprocess.run([sys.executable, "-m", "smartcare.cli", "qc", "report", "--format", "json", "--hospital",
                             hospital[0], "--output", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    body = json.loads(out.read_text(encoding="utf-8"))
    assert [h["group"] for h in body["hospitals"]] == [hospital[0]]
    assert all(d["facility_code"] == hospital[0] and d["findings"] for d in body["documents"])
    html = subprocess.run([sys.executable, "-m", "smartcare.cli", "qc", "report", "--hospital", hospital[0], "--output",
                           str(tmp_path / "qc.html")], env=env, capture_output=True, text=True, timeout=120)
    assert html.returncode == 0, html.stderr
    page = (tmp_path / "qc.html").read_text(encoding="utf-8")
    assert "<html" in page and hospital[0] in page and body["documents"][0]["findings"][0]["rule_id"] in page
    bad = subprocess.run([sys.executable, "-m", "smartcare.cli", "qc", "report", "--format", "pdf"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "format must be html, csv or json" in bad.stderr
