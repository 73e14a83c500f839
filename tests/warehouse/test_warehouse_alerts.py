"""The monitoring alerts on hand-made facts: a hospital gone silent, an error spike, a quality drop — and
none for a hospital that is fine."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from smartcare.platform.db import session_scope
from smartcare.warehouse import monitor

from warehouse_support import empty_landing, empty_star, small_hospitals
from smartcare.warehouse import service

MEASURES = ("outpatient_visits", "outpatient_cost", "admissions", "discharges", "inpatient_cost", "discharged_bed_days",
            "surgeries", "charge_total", "drug_cost", "booked_visits", "settled_total", "fund_paid", "self_paid",
            "card_visits", "documents", "documents_on_time", "qc_checked", "qc_score_sum", "messages", "messages_failed")


def _day(s, facility: str, day, *, last_at=None, **values) -> None:
    row = {m: values.get(m, 0) for m in MEASURES}
    s.execute(text(
        f"INSERT INTO warehouse.mart_facility_day (facility_key, date_key, {', '.join(MEASURES)}, last_data_at) "
        f"VALUES (warehouse.skey(:f), warehouse.day_key(CAST(:d AS date)), {', '.join(':' + m for m in MEASURES)}, :last)"),
        {"f": facility, "d": day, "last": last_at, **row})


def _messages(s, facility: str, at, n: int, failed: int, first_id: int) -> None:
    for i in range(n):
        s.execute(text("INSERT INTO warehouse.fct_message VALUES (:id, warehouse.skey(:f), warehouse.day_key(CAST(:at AS timestamptz)), "
                       ":at, 'hl7v2', 'ADT^A04', :failed, 10)"),
                  {"id": first_id + i, "f": facility, "at": at, "failed": i < failed})


def test_silence_errors_and_quality_drops(seeded):
    with session_scope() as s:
        empty_landing(s)
        empty_star(s)
        service.refresh_reference(s)
        silent, noisy, sloppy, fine = [h.code for h in small_hospitals(s, 4)]
        now = s.scalar(text("SELECT now()"))
        today = monitor._today(now)
        _day(s, silent, today - timedelta(days=1), last_at=now - timedelta(hours=3), messages=40)
        _day(s, noisy, today, last_at=now, messages=20, messages_failed=5)
        _messages(s, noisy, now - timedelta(minutes=1), 20, 5, 1)
        _day(s, fine, today, last_at=now, messages=20)
        _messages(s, fine, now - timedelta(minutes=1), 20, 0, 100)
        for back in range(1, 8):
            _day(s, sloppy, today - timedelta(days=back), last_at=now - timedelta(days=back), documents=10,
                 qc_checked=10, qc_score_sum=900)
        _day(s, sloppy, today, last_at=now, documents=6, qc_checked=6, qc_score_sum=420)
        found = {(a["kind"], a["facility_code"]): a["message"] for a in monitor.alerts(s, now=now)}
        assert set(found) == {("silent", silent), ("errors", noisy), ("quality", sloppy)}, found
        assert found[("silent", silent)] == "已 180 分钟没有数据"
        assert "5/20" in found[("errors", noisy)]
        assert "70.0" in found[("quality", sloppy)] and "90.0" in found[("quality", sloppy)]
        # one hospital's page has its own alerts only
        page = monitor.hospital(s, noisy, now=now)
        assert [a["kind"] for a in page["alerts"]] == ["errors"] and sum(page["live"]["failed"]) == 5
        s.rollback()
