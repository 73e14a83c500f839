"""Real-time monitoring of public hospitals from the warehouse: the region by district, each hospital's
day and live minute, how fresh its data is, and alerts (silence, error spikes, quality drops).

Day figures come from the daily mart (one row per hospital and day); the live minute from the message
facts of the last hour (by their receive-time index). Nothing here reads another capability's tables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import date, datetime, timedelta

from psycopg.errors import LockNotAvailable
from sqlalchemy.exc import OperationalError

from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.errors import NotFound, Unavailable
from smartcare.warehouse import indicators
from smartcare.warehouse.indicators import day_key

SILENT_MINUTES = 60          # a hospital that sent data this week but nothing for an hour
ERROR_WINDOW_MINUTES = 15
ERROR_RATE = 0.05            # more than 5 % of at least ERROR_MIN_MESSAGES messages failed
ERROR_MIN_MESSAGES = 10
QC_DROP_POINTS = 10.0        # today's mean QC score this far under the previous week's
QC_MIN_DOCUMENTS = 5
HEADLINE = ("outpatient_visits", "discharges", "avg_outpatient_cost", "avg_inpatient_cost", "drug_cost_ratio",
            "bed_occupancy", "avg_length_of_stay", "appointment_visit_ratio", "fund_share", "card_use_rate",
            "upload_timeliness", "qc_score")


#: A console query waits at most this long for a table lock (a rebuild holds them all): then 503, not a
#: pile of blocked requests holding the connection pool.
LOCK_TIMEOUT = "2s"


@contextlib.contextmanager
def reading(session: Session) -> Iterator[None]:
    """Run console queries that give up quickly, with a clear answer, while a rebuild holds the tables."""
    session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    try:
        yield
    except OperationalError as exc:
        if isinstance(exc.orig, LockNotAvailable):
            raise Unavailable("the warehouse is being rebuilt", hint="try again in a minute") from None
        raise


def _today(now: datetime) -> date:
    return now.astimezone(CHINA_TZ).date()


def _now(session: Session) -> datetime:
    return session.scalar(text("SELECT now()"))


def _hospitals(session: Session, facility_code: str | None = None) -> list:
    where = "AND f.code = :code" if facility_code else ""
    return session.execute(text(
        f"SELECT f.facility_key, f.code, f.name, f.level, f.beds, f.district_code, f.district_name "
        f"FROM warehouse.dim_facility f WHERE f.is_public AND f.is_hospital {where} ORDER BY f.code"),
        {"code": facility_code}).all()


def _freshness(session: Session, now: datetime) -> dict[int, datetime]:
    week = day_key(_today(now) - timedelta(days=7))
    return dict(session.execute(text(
        "SELECT facility_key, max(last_data_at) FROM warehouse.mart_facility_day WHERE date_key >= :w "
        "AND last_data_at IS NOT NULL GROUP BY 1"), {"w": week}).all())


def _today_rows(session: Session, now: datetime) -> dict[int, dict]:
    rows = session.execute(text(
        "SELECT facility_key, outpatient_visits, discharges, messages, messages_failed, documents, qc_checked, "
        "qc_score_sum FROM warehouse.mart_facility_day WHERE date_key = :d"), {"d": day_key(_today(now))}).mappings()
    return {r["facility_key"]: dict(r) for r in rows}


def alerts(session: Session, *, now: datetime | None = None, facility_code: str | None = None) -> list[dict]:
    """Silent hospitals, error spikes in the last minutes, QC scores dropping today."""
    now = now or _now(session)
    hospitals = {h.facility_key: h for h in _hospitals(session, facility_code)}
    out = []
    for key, last in _freshness(session, now).items():
        h = hospitals.get(key)
        silent = (now - last).total_seconds() / 60
        if h and silent > SILENT_MINUTES:
            out.append({"kind": "silent", "facility_code": h.code, "facility_name": h.name,
                        "message": f"已 {int(silent)} 分钟没有数据"})
    errors = session.execute(text(
        "SELECT facility_key, count(*) AS n, count(*) FILTER (WHERE failed) AS failed FROM warehouse.fct_message "
        "WHERE received_at >= :since GROUP BY 1"), {"since": now - timedelta(minutes=ERROR_WINDOW_MINUTES)}).all()
    for key, n, failed in errors:
        h = hospitals.get(key)
        if h and n >= ERROR_MIN_MESSAGES and failed / n > ERROR_RATE:
            out.append({"kind": "errors", "facility_code": h.code, "facility_name": h.name,
                        "message": f"近 {ERROR_WINDOW_MINUTES} 分钟 {failed}/{n} 条消息出错（{failed / n:.0%}）"})
    today = _today(now)
    scores = session.execute(text(
        "SELECT facility_key, sum(qc_checked) FILTER (WHERE date_key = :t) AS today_n, "
        "sum(qc_score_sum) FILTER (WHERE date_key = :t) AS today_sum, "
        "sum(qc_checked) FILTER (WHERE date_key < :t) AS week_n, sum(qc_score_sum) FILTER (WHERE date_key < :t) AS week_sum "
        "FROM warehouse.mart_facility_day WHERE date_key >= :w GROUP BY 1"),
        {"t": day_key(today), "w": day_key(today - timedelta(days=7))}).all()
    for key, today_n, today_sum, week_n, week_sum in scores:
        h = hospitals.get(key)
        if not h or not today_n or today_n < QC_MIN_DOCUMENTS or not week_n:
            continue
        now_avg, before = float(today_sum) / today_n, float(week_sum) / week_n
        if now_avg < before - QC_DROP_POINTS:
            out.append({"kind": "quality", "facility_code": h.code, "facility_name": h.name,
                        "message": f"今日质控均分 {now_avg:.1f}，低于前 7 日的 {before:.1f}"})
    return sorted(out, key=lambda a: (a["kind"], a["facility_code"]))


def _minutes(session: Session, now: datetime, minutes: int, facility_key: int | None = None) -> dict:
    start = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    where = "AND facility_key = :f" if facility_key is not None else ""
    rows = session.execute(text(
        f"SELECT date_trunc('minute', received_at) AS m, count(*), count(*) FILTER (WHERE failed) "
        f"FROM warehouse.fct_message WHERE received_at >= :s {where} GROUP BY 1"), {"s": start, "f": facility_key}).all()
    counts, failed = [0] * minutes, [0] * minutes
    for m, n, bad in rows:
        i = int((m - start).total_seconds() // 60)
        if 0 <= i < minutes:
            counts[i], failed[i] = n, bad
    return {"minutes": [(start + timedelta(minutes=i)).isoformat() for i in range(minutes)], "messages": counts,
            "failed": failed}


def overview(session: Session, *, now: datetime | None = None) -> dict:
    """The region: districts with today's figures and this month's headline indicators, every public
    hospital's freshness and today, the live minute, the alerts."""
    now = now or _now(session)
    today = _today(now)
    fresh, day = _freshness(session, now), _today_rows(session, now)
    hospitals = []
    for h in _hospitals(session):
        d = day.get(h.facility_key, {})
        last = fresh.get(h.facility_key)
        hospitals.append({"code": h.code, "name": h.name, "level": h.level, "district": h.district_name,
                          "district_code": h.district_code,
                          "last_at": last.isoformat() if last else None,
                          "silent_minutes": int((now - last).total_seconds() // 60) if last else None,
                          "visits_today": d.get("outpatient_visits", 0), "messages_today": d.get("messages", 0),
                          "failed_today": d.get("messages_failed", 0)})
    month = indicators.compute(session, by="district", grain="month", start=today.replace(day=1), end=today,
                               as_of=today, only=HEADLINE)
    districts = []
    for row in month:
        members = [h for h in hospitals if h["district_code"] == row["code"]]
        districts.append({"code": row["code"], "name": row["name"], "hospitals": len(members),
                          "visits_today": sum(h["visits_today"] for h in members),
                          "messages_today": sum(h["messages_today"] for h in members),
                          "indicators": {k: row[k] for k in HEADLINE}})
    active = [h for h in hospitals if h["last_at"]]
    return {"at": now.isoformat(), "today": today.isoformat(), "districts": districts,
            "hospitals": sorted(active, key=lambda h: -h["messages_today"]) + [h for h in hospitals if not h["last_at"]],
            "live": _minutes(session, now, 30), "alerts": alerts(session, now=now),
            "names": {i.code: {"name": i.name, "unit": i.unit} for i in indicators.INDICATORS}}


def hospital(session: Session, code: str, *, now: datetime | None = None, days: int = 30) -> dict:
    """One hospital: its daily series for ``days`` days, its live hour, this month's indicators, freshness, alerts."""
    now = now or _now(session)
    found = _hospitals(session, code)
    if not found:
        raise NotFound(f"no public hospital {code} in the warehouse", field="code")
    h = found[0]
    today = _today(now)
    first = today - timedelta(days=days - 1)
    rows = {r["date_key"]: r for r in session.execute(text(
        "SELECT date_key, outpatient_visits, discharges, admissions, outpatient_cost, messages, messages_failed, "
        "documents, qc_checked, qc_score_sum FROM warehouse.mart_facility_day WHERE facility_key = :f "
        "AND date_key BETWEEN :a AND :b"), {"f": h.facility_key, "a": day_key(first), "b": day_key(today)}).mappings()}
    series: dict[str, list] = {k: [] for k in ("days", "visits", "discharges", "admissions", "avg_cost", "messages",
                                              "failed", "documents", "qc")}
    for i in range(days):
        day = first + timedelta(days=i)
        r = rows.get(day_key(day), {})
        series["days"].append(day.isoformat())
        for name, column in (("visits", "outpatient_visits"), ("discharges", "discharges"), ("admissions", "admissions"),
                             ("messages", "messages"), ("failed", "messages_failed"), ("documents", "documents")):
            series[name].append(int(r.get(column) or 0))
        visits = r.get("outpatient_visits") or 0
        series["avg_cost"].append(round(r["outpatient_cost"] / visits / 100, 2) if visits else None)
        checked = r.get("qc_checked") or 0
        series["qc"].append(round(float(r["qc_score_sum"]) / checked, 1) if checked else None)
    [month] = indicators.compute(session, by="facility", grain="month", start=today.replace(day=1), end=today,
                                 facility_code=code, as_of=today) or [None]
    last = _freshness(session, now).get(h.facility_key)
    return {"at": now.isoformat(), "code": h.code, "name": h.name, "level": h.level, "beds": h.beds,
            "district": h.district_name, "last_at": last.isoformat() if last else None,
            "silent_minutes": int((now - last).total_seconds() // 60) if last else None,
            "series": series, "live": _minutes(session, now, 60, h.facility_key),
            "month": {i.code: month[i.code] for i in indicators.INDICATORS} if month else {},
            "names": {i.code: {"name": i.name, "unit": i.unit} for i in indicators.INDICATORS},
            "alerts": alerts(session, now=now, facility_code=code)}
