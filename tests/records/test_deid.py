"""De-identified extracts: no direct identifier leaves, the quasi-identifiers are generalised, every group
of the chosen quasi-identifiers covers at least k persons (the rest suppressed, counted in the report)."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import date, datetime, timedelta

import pytest

from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import session_scope
from smartcare.platform.errors import InvalidInput
from smartcare.records import deid, service as records
from smartcare.standards import cda
from smartcare.synth import service as synth
from smartcare.synth.documents import Person, clean_document
from tests.exchange.conftest import admin_token
from tests.records.records_support import resident

AT = datetime(2025, 6, 3, 9, tzinfo=CHINA_TZ)


@pytest.fixture(scope="module")
def people(hospital, residents) -> list[dict]:
    """Thirty residents with a diagnosis and a lab report each, serviced in June 2025."""
    adults = (resident(residents, n) for n in range(100, 400))
    chosen = [r for r in adults if r["birth_date"].year < 2000][:30]
    with session_scope() as s:
        [h] = synth.document_hospitals(s, codes=[hospital[0]])
        rng = random.Random("deid")
        for r in chosen:
            p = Person(r["id_number"], r["name"], r["sex"], r["birth_date"], r["phone"] or "")
            for type_code in ("C0002", "C0007"):
                doc = clean_document(type_code, hospital=h, person=p, rng=rng, at=AT)
                records.register(s, raw=cda.build(doc), sender="test", facility_code=hospital[0],
                                 received_at=AT + timedelta(hours=3), actor="test")
    return chosen


def _june() -> dict:
    return {"since": date(2025, 6, 1), "until": date(2025, 7, 1)}


def test_no_direct_identifier_leaves_and_values_are_generalised(people):
    with session_scope() as s:
        rows, report = deid.extract(s, k=2, quasi_identifiers=("sex",), **_june())
    assert report.persons == 30 and report.rows == len(rows) > 0
    text = repr(rows)
    for p in people:
        assert p["id_number"] not in text and p["name"] not in text and (not p["phone"] or p["phone"] not in text)
        assert p["birth_date"].isoformat() not in text
    assert set(rows[0]) == set(deid.COLUMNS)
    assert {r["service_month"] for r in rows} == {"2025-06"}
    assert all(r["birth_year"] is None or len(r["birth_year"]) == 4 for r in rows)
    assert {r["kind"] for r in rows} <= set(deid.KINDS) and "lab" in {r["kind"] for r in rows}
    with session_scope() as s:
        again, _ = deid.extract(s, k=2, quasi_identifiers=("sex",), **_june())
    assert {r["pseudonym"] for r in rows}.isdisjoint({r["pseudonym"] for r in again}), "extracts cannot be joined"


def test_every_group_covers_k_persons_and_the_rest_is_suppressed(people):
    with session_scope() as s:
        rows, report = deid.extract(s, k=3, **_june())  # birth year, sex, district: most of 30 people are unique
    persons_by_group: dict[tuple, set] = defaultdict(set)
    for r in rows:
        persons_by_group[(r["birth_year"], r["sex"], r["district_code"])].add(r["pseudonym"])
    assert all(len(persons) >= 3 for persons in persons_by_group.values())
    assert report.persons_kept == sum(len(p) for p in persons_by_group.values())
    assert report.persons_kept + report.persons_suppressed == report.persons == 30
    assert report.persons_suppressed > 0 and report.rows_suppressed > 0
    assert report.groups == len(persons_by_group) and (report.smallest_group or 3) >= 3
    with session_scope() as s, pytest.raises(InvalidInput, match="quasi-identifiers"):
        deid.extract(s, quasi_identifiers=("name",))


def test_administrators_take_extracts_through_the_api_and_it_is_audited(client, people):
    r = client.get("/api/v1/phr/extract", params={"since": "2025-06-01", "until": "2025-07-01", "k": 2},
                   headers=admin_token(client))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["report"]["rows"] == len(body["rows"]) and body["report"]["k"] == 2
    from tests.healthcard.card_support import headers, resident as new_resident

    assert client.get("/api/v1/phr/extract", headers=headers(new_resident(client))).status_code == 403
    with session_scope() as s:
        from smartcare.platform import audit

        [entry] = audit.entries(s, targets=["records:deidentified"], actions=("records.extract",), limit=1)
        assert entry.actor == "admin" and entry.detail["rows"] == body["report"]["rows"]


def test_reindex_reads_the_items_again(people, database_url):
    """After the classification changes, `smartcare records reindex` rewrites every document's items."""
    import os
    import subprocess
    import sys

    from sqlalchemy import text

    with session_scope() as s:
        before = s.execute(text("SELECT count(*), count(DISTINCT record_id) FROM records.item")).one()
        s.execute(text("DELETE FROM records.item WHERE record_id IN (SELECT min(id) FROM records.document)"))
    run = subprocess.run([sys.executable, "-m", "smartcare.cli", "records", "reindex", "--batch", "50"],
                         env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with session_scope() as s:
        assert s.execute(text("SELECT count(*), count(DISTINCT record_id) FROM records.item")).one() == before
