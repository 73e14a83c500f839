"""Indicators of public hospitals (after 三级公立医院绩效考核), per hospital or district, per day or month.

Every indicator is a ratio of sums of the daily mart's additive measures, so a month or a district is
the sum of its days or hospitals before dividing — never an average of averages. Definitions (also in
docs/warehouse.md) are data here, so the console, the API and the docs say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.platform.clock import china_today
from smartcare.platform.errors import InvalidInput


@dataclass(frozen=True)
class Indicator:
    code: str
    name: str
    unit: str
    numerator: str          # a mart measure, or "occupied_bed_days" / "bed_days_open"
    denominator: str | None  # None: a count
    scale: float = 1.0       # 100 for percentages; 0.01 for fen → yuan
    definition: str = ""


INDICATORS: tuple[Indicator, ...] = (
    Indicator("outpatient_visits", "门急诊人次", "人次", "outpatient_visits", None,
              definition="outpatient and emergency visits (HL7 PV1-2 O/E, not cancelled) that started in the period"),
    Indicator("discharges", "出院人次", "人次", "discharges", None,
              definition="inpatient stays discharged (ADT A03) in the period"),
    Indicator("avg_outpatient_cost", "门诊次均费用", "元", "outpatient_cost", "outpatient_visits", 0.01,
              "charges of the period's outpatient visits (settled bills naming the visit) ÷ outpatient visits"),
    Indicator("avg_outpatient_cost_growth", "门诊次均费用增幅", "%", "avg_outpatient_cost", None, 100,
              "(average outpatient cost − the previous period's) ÷ the previous period's"),
    Indicator("avg_inpatient_cost", "住院次均费用", "元", "inpatient_cost", "discharges", 0.01,
              "charges of the stays discharged in the period ÷ discharges"),
    Indicator("drug_cost_ratio", "药占比", "%", "drug_cost", "charge_total", 100,
              "charges for drugs (NHSA drug codes: X 西药, Z 中成药, T 中药饮片) ÷ all charges, by charge day"),
    Indicator("bed_occupancy", "床位使用率", "%", "occupied_bed_days", "bed_days_open", 100,
              "bed days occupied in the period (the sum of each day's midnight census: patients admitted on or "
              "before the day and not discharged by its end; open stays up to the day of the query) ÷ (beds × "
              "days of the period up to that day)"),
    Indicator("avg_length_of_stay", "平均住院日", "日", "discharged_bed_days", "discharges",
              definition="bed days of the stays discharged in the period (discharge day − admission day, at "
                         "least 1) ÷ discharges"),
    Indicator("bed_turnover", "床位周转次数", "次", "discharges", "beds",
              definition="discharges in the period ÷ beds"),
    Indicator("surgeries_per_discharge", "出院患者人均手术例数", "例", "surgeries", "discharges",
              definition="procedures (PR1) of the stays discharged in the period ÷ discharges"),
    Indicator("appointment_visit_ratio", "预约诊疗率", "%", "booked_visits", "outpatient_visits", 100,
              "booked appointments checked in for a visit day in the period ÷ outpatient visits"),
    Indicator("fund_share", "医保基金支付占比", "%", "fund_paid", "settled_total", 100,
              "pooled fund + personal account paid ÷ all settled, net of refunds, by settlement day"),
    Indicator("self_pay_share", "个人自付占比", "%", "self_paid", "settled_total", 100,
              "paid by the patient through a payment channel ÷ all settled, net of refunds"),
    Indicator("card_use_rate", "电子健康卡用卡率", "%", "card_visits", "outpatient_visits", 100,
              "cards used at the hospital on a day (each card once a day) ÷ outpatient visits"),
    Indicator("upload_timeliness", "数据上传及时率", "%", "documents_on_time", "documents", 100,
              "documents received within 24 hours of the service they record ÷ documents received"),
    Indicator("qc_score", "数据质控平均分", "分", "qc_score_sum", "qc_checked",
              definition="mean data-quality score of the current documents received in the period"),
)
BY_CODE = {i.code: i for i in INDICATORS}
MEASURES = ("outpatient_visits", "outpatient_cost", "admissions", "discharges", "inpatient_cost", "discharged_bed_days",
            "surgeries", "charge_total", "drug_cost", "booked_visits", "settled_total", "fund_paid", "self_paid",
            "card_visits", "documents", "documents_on_time", "qc_checked", "qc_score_sum", "messages", "messages_failed")


def day_key(day: date) -> int:
    """The date dimension's key of a day (yyyymmdd), as ``warehouse.day_key`` makes it in SQL."""
    return day.year * 10000 + day.month * 100 + day.day


def _periods(start: date, end: date, grain: str) -> list[tuple[str, date, date]]:
    """(label, first day, last day) of each period touching [start, end], clipped to it."""
    out = []
    day = start
    while day <= end:
        if grain == "day":
            last = day
            label = day.isoformat()
        else:
            nxt = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
            last = min(nxt - timedelta(days=1), end)
            label = day.strftime("%Y-%m")
        out.append((label, day, last))
        day = last + timedelta(days=1)
    return out


def _previous(start: date, grain: str) -> tuple[date, date]:
    if grain == "day":
        return start - timedelta(days=1), start - timedelta(days=1)
    last = start.replace(day=1) - timedelta(days=1)
    return last.replace(day=1), last


def compute(session: Session, *, by: str = "facility", grain: str = "month", start: date, end: date,
            facility_code: str | None = None, district_code: str | None = None, as_of: date | None = None,
            only: tuple[str, ...] | None = None) -> list[dict]:
    """Indicators of public hospitals (not primary-care centres) per (hospital or district, period) over
    [start, end]; ``as_of`` is the day open stays count up to (default: today in China). Rows: group code and
    name, period, and one value per indicator (None when its denominator is zero)."""
    if by not in ("facility", "district"):
        raise InvalidInput(f"unknown grouping {by!r}", field="by", hint="facility or district")
    if grain not in ("day", "month"):
        raise InvalidInput(f"unknown grain {grain!r}", field="grain", hint="day or month")
    if end < start or (end - start).days > 1100:
        raise InvalidInput("the period must run forwards and span at most three years", field="end")
    if grain == "day" and (end - start).days > 400:
        raise InvalidInput("days over at most 400 days; ask for months beyond that", field="end")
    as_of = as_of or china_today()
    periods = _periods(start, end, grain)
    prev_start, prev_end = _previous(start, grain)
    periods = [("previous", prev_start, prev_end), *periods]
    group = "f.code" if by == "facility" else "f.district_code"
    group_name = "min(f.name)" if by == "facility" else "min(f.district_name)"
    filters, params = ["f.is_public", "f.is_hospital"], {}
    if facility_code:
        filters.append("f.code = :facility")
        params["facility"] = facility_code
    if district_code:
        filters.append("f.district_code = :district")
        params["district"] = district_code
    cases = " ".join(f"WHEN m.date_key BETWEEN {day_key(a)} AND {day_key(b)} THEN {i}" for i, (_, a, b) in enumerate(periods))
    sums = ", ".join(f"sum(m.{c}) AS {c}" for c in MEASURES)
    rows = session.execute(text(f"""
        SELECT {group} AS code, {group_name} AS name, CASE {cases} END AS period, {sums}
        FROM warehouse.mart_facility_day m JOIN warehouse.dim_facility f ON f.facility_key = m.facility_key
        WHERE m.date_key BETWEEN :lo AND :hi AND {' AND '.join(filters)}
        GROUP BY 1, 3"""), {**params, "lo": day_key(periods[0][1]), "hi": day_key(end)}).all()
    beds = dict(session.execute(text(
        f"SELECT {group}, sum(f.beds) FROM warehouse.dim_facility f WHERE {' AND '.join(filters)} GROUP BY 1"),
        params).all())
    occupied = _occupied(session, group=group, filters=filters, params=params, periods=periods, as_of=as_of)
    sums_by = {(r.code, r.period): {c: (float if c == "qc_score_sum" else int)(getattr(r, c) or 0) for c in MEASURES}
               | {"name": r.name} for r in rows}
    names = {code: v["name"] for (code, _), v in sums_by.items()}
    out = []
    # districts are all shown; hospitals only those with data in the period (or the one asked for)
    groups = {*beds, *names} if by == "district" or facility_code else set(names)
    for code in sorted(groups):
        previous = None
        for i, (label, a, b) in enumerate(periods):
            base = sums_by.get((code, i), {c: 0 for c in MEASURES})
            # beds were open on the period's days up to today: a month asked for mid-month is that far
            measures = {**base, "beds": beds.get(code) or 0, "occupied_bed_days": occupied.get((code, i), 0),
                        "bed_days_open": (beds.get(code) or 0) * max(0, (min(b, as_of) - a).days + 1)}
            values = {ind.code: _value(ind, measures) for ind in INDICATORS if ind.code != "avg_outpatient_cost_growth"}
            cost = measures["outpatient_cost"] / measures["outpatient_visits"] if measures["outpatient_visits"] else None
            values["avg_outpatient_cost_growth"] = (round((cost - previous) / previous * 100, 2)
                                                    if cost is not None and previous else None)
            previous = cost
            if i == 0:
                continue
            if only:
                values = {k: v for k, v in values.items() if k in only}
            out.append({"code": code, "name": names.get(code, code), "period": label, **values,
                        "measures": {k: v for k, v in measures.items() if k != "name"}})
    return out


def _value(ind: Indicator, m: dict) -> float | None:
    num = m[ind.numerator]
    if ind.denominator is None:
        return int(num)
    den = m[ind.denominator]
    if not den:
        return None
    return round(float(num) / float(den) * ind.scale, 2)


def _occupied(session: Session, *, group: str, filters: list[str], params: dict, periods: list, as_of: date) -> dict:
    """Bed days occupied per (group, period): the midnight census of each day (patients admitted on or
    before it and not discharged by its end; open stays up to ``as_of``), summed over the period's days.

    The census moves by admissions and discharges, so it is the census before the first day (one count)
    plus running sums of each day's admissions and discharges (two grouped counts over the window only)."""
    lo, hi = periods[0][1], min(periods[-1][2], as_of)
    out: dict[tuple[str, int], int] = {}
    if hi < lo:
        return out
    where = " AND ".join(filters)
    keys = {**params, "lo": day_key(lo), "hi": day_key(hi)}
    census = dict(session.execute(text(f"""
        SELECT {group}, count(*) FROM warehouse.fct_inpatient_stay s
        JOIN warehouse.dim_facility f ON f.facility_key = s.facility_key
        WHERE s.admit_date_key < :lo AND (s.discharge_date_key >= :lo OR s.discharge_date_key IS NULL) AND {where}
        GROUP BY 1"""), keys).all())
    moves: dict[str, dict[int, int]] = {}
    for column, sign in (("admit_date_key", 1), ("discharge_date_key", -1)):
        for code, day, n in session.execute(text(f"""
                SELECT {group}, s.{column}, count(*) FROM warehouse.fct_inpatient_stay s
                JOIN warehouse.dim_facility f ON f.facility_key = s.facility_key
                WHERE s.{column} BETWEEN :lo AND :hi AND {where} GROUP BY 1, 2"""), keys).all():
            by_day = moves.setdefault(code, {})
            by_day[day] = by_day.get(day, 0) + sign * n
    period_of = {}
    for i, (_, a, b) in enumerate(periods):
        day = max(a, lo)
        while day <= min(b, hi):
            period_of[day_key(day)] = i
            day += timedelta(days=1)
    for code in {*census, *moves}:
        running, by_day = census.get(code, 0), moves.get(code, {})
        day = lo
        while day <= hi:
            key = day_key(day)
            running += by_day.get(key, 0)
            if key in period_of:  # (a month asked from its 2nd day leaves the 1st between two periods)
                out[(code, period_of[key])] = out.get((code, period_of[key]), 0) + running
            day += timedelta(days=1)
    return out


def as_file(rows: list[dict], fmt: str) -> bytes:
    """Indicator rows as a CSV or Parquet file: group code and name, period, one column per indicator
    (counts as integers, the rest as doubles; empty where a denominator was zero)."""
    names = [i.code for i in INDICATORS]
    if fmt == "csv":
        from smartcare.warehouse.service import to_csv

        return to_csv(["code", "name", "period", *names],
                      [(r["code"], r["name"], r["period"], *(r[c] for c in names)) for r in rows], header=True).encode()
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("code", pa.string()), ("name", pa.string()), ("period", pa.string())]
                       + [(i.code, pa.int64() if i.denominator is None and i.scale == 1.0 else pa.float64())
                          for i in INDICATORS])
    table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()
