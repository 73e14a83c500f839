"""The warehouse through its users' doors: the console's JSON API (roles), indicators as CSV, exports as
CSV and Parquet (audited), the dbt-style schema tests, the CLI, and the read-only analyst database role."""

from __future__ import annotations

import io
import uuid

import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from smartcare import cli
from smartcare.platform.db import session_scope
from smartcare.synth.activity import activity
from smartcare.warehouse import checks, service
from tests.exchange.conftest import admin_token

from warehouse_support import DAY, empty_landing, empty_star, small_hospitals


@pytest.fixture(scope="module")
def filled(seeded):
    with session_scope() as s:
        empty_landing(s)
        empty_star(s)
        hospitals = small_hospitals(s, 3)
        service.land_synthetic(s, activity(hospitals, start=DAY, days=10, seed=11, persons=80))
    with session_scope() as s:
        service.rebuild(s)
    return hospitals


def test_schema_tests_pass_and_catch_a_broken_row(filled):
    with session_scope() as s:
        results = checks.run(s)
        assert len(results) > 40 and all(n == 0 for _, n in results), [r for r in results if r[1]]
        s.execute(text("UPDATE warehouse.fct_charge_item SET charge_item_key = 42 WHERE ctid = "
                       "(SELECT ctid FROM warehouse.fct_charge_item LIMIT 1)"))
        failing = dict(checks.run(s))
        assert failing["relationships fct_charge_item.charge_item_key → dim_charge_item"] == 1
        s.rollback()


def test_console_api_roles_and_content(client, filled):
    admin = admin_token(client)
    r = client.get("/api/v1/warehouse/overview", headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["districts"] and {"code", "name", "last_at", "silent_minutes"} <= set(body["hospitals"][0])
    assert len(body["live"]["messages"]) == 30
    code = filled[0].code
    one = client.get(f"/api/v1/warehouse/hospitals/{code}", params={"days": 366}, headers=admin).json()
    assert one["code"] == code and len(one["series"]["days"]) == 366
    assert sum(one["series"]["visits"]) > 0 and one["month"].keys() >= {"outpatient_visits", "qc_score"}
    assert client.get("/api/v1/warehouse/hospitals/NOPE", headers=admin).status_code == 404
    assert client.get("/api/v1/warehouse/overview").status_code == 401
    resident = client.post("/api/v1/auth/token", json={"username": "resident", "password": "smartcare-demo"}).json()
    assert client.get("/api/v1/warehouse/overview",
                      headers={"Authorization": f"Bearer {resident['access_token']}"}).status_code == 403
    definitions = client.get("/api/v1/warehouse/indicators/definitions").json()
    assert len(definitions) == 16 and all(d["definition"] for d in definitions)


def test_indicators_csv_and_clear_errors(client, filled):
    admin = admin_token(client)
    r = client.get("/api/v1/warehouse/indicators", headers=admin, params={
        "start": DAY.isoformat(), "end": "2026-03-11", "by": "facility", "grain": "day", "format": "csv",
        "hospital": filled[0].code})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.strip().splitlines()
    assert lines[0].startswith("code,name,period,outpatient_visits") and len(lines) == 1 + 10
    parquet = client.get("/api/v1/warehouse/indicators", headers=admin, params={
        "start": DAY.isoformat(), "end": "2026-03-31", "by": "district", "format": "parquet"})
    table = pq.read_table(io.BytesIO(parquet.content))
    assert parquet.status_code == 200 and table.num_rows > 0
    assert str(table.schema.field("outpatient_visits").type) == "int64"
    assert str(table.schema.field("bed_occupancy").type) == "double"
    bad = client.get("/api/v1/warehouse/indicators", headers=admin, params={"start": "2026-03-11", "end": "2026-03-01"})
    assert bad.status_code == 422 and "forwards" in bad.text
    wrong = client.get("/api/v1/warehouse/indicators", headers=admin, params={"start": "2026-03-01", "end": "2026-03-02",
                                                                              "grain": "week"})
    assert wrong.status_code == 422


def test_exports_csv_and_parquet_are_audited(client, filled):
    admin = admin_token(client)
    with session_scope() as s:
        visits = s.scalar(text("SELECT count(*) FROM warehouse.fct_outpatient_visit"))
    r = client.get("/api/v1/warehouse/export/fct_outpatient_visit", headers=admin, params={"format": "csv"})
    assert r.status_code == 200 and len(r.text.strip().splitlines()) == visits + 1
    p = client.get("/api/v1/warehouse/export/mart_facility_day", headers=admin, params={"format": "parquet"})
    table = pq.read_table(io.BytesIO(p.content))
    assert table.num_rows > 0 and "outpatient_visits" in table.column_names
    assert client.get("/api/v1/warehouse/export/pg_authid", headers=admin).status_code == 422
    with session_scope() as s:
        assert s.scalar(text("SELECT count(*) FROM platform.audit_log WHERE action = 'warehouse.export' "
                             "AND target = 'warehouse.mart_facility_day'")) >= 1


def test_cli_rebuild_check_indicators_export(filled, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli.app, ["warehouse", "rebuild"])
    assert result.exit_code == 0 and "fct_charge_item" in result.output
    result = runner.invoke(cli.app, ["warehouse", "check"])
    assert result.exit_code == 0 and " 0 failed" in result.output
    out = tmp_path / "ind.csv"
    result = runner.invoke(cli.app, ["warehouse", "indicators", "--start", "2026-03-01", "--end", "2026-03-31",
                                     "--output", str(out)])
    assert result.exit_code == 0 and out.read_text(encoding="utf-8").startswith("code,name,period")
    as_parquet = tmp_path / "ind.parquet"
    result = runner.invoke(cli.app, ["warehouse", "indicators", "--start", "2026-03-01", "--end", "2026-03-31",
                                     "--by", "facility", "--output", str(as_parquet)])
    assert result.exit_code == 0 and pq.read_table(as_parquet).num_rows == 3  # the three hospitals with data
    parquet = tmp_path / "visits.parquet"
    result = runner.invoke(cli.app, ["warehouse", "export", "fct_outpatient_visit", "--format", "parquet",
                                     "--output", str(parquet)])
    assert result.exit_code == 0 and pq.read_table(parquet).num_rows > 0
    result = runner.invoke(cli.app, ["warehouse", "export", "no_such_table"])
    assert result.exit_code == 2 and "unknown table" in result.output


def test_analyst_role_reads_the_warehouse_only(database_url, filled):
    login = f"analyst_{uuid.uuid4().hex[:8]}"
    with session_scope() as s:
        s.execute(text(f"CREATE ROLE {login} LOGIN PASSWORD 'analyst-pw'"))
    try:
        result = CliRunner().invoke(cli.app, ["warehouse", "grant-analyst", login])
        assert result.exit_code == 0, result.output
        assert CliRunner().invoke(cli.app, ["warehouse", "grant-analyst", "nobody_here"]).exit_code == 2
        url = make_url(database_url).set(username=login, password="analyst-pw")
        engine = create_engine(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM warehouse.fct_outpatient_visit")).scalar() > 0
            for forbidden in ("INSERT INTO warehouse.dim_payer VALUES (1, 'x', 'self', 'x')",
                              "SELECT count(*) FROM warehouse.src_person", "SELECT count(*) FROM warehouse.src_card_use",
                              "SELECT count(*) FROM empi.person", "SELECT count(*) FROM payment.bill"):
                with pytest.raises(Exception, match="permission denied"):
                    conn.execute(text(forbidden))
                conn.rollback()
        engine.dispose()
    finally:
        with session_scope() as s:
            s.execute(text(f"REVOKE smartcare_analyst FROM {login}"))
            s.execute(text(f"DROP ROLE {login}"))
