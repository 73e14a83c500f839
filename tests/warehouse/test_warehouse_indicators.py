"""Every indicator against a hand-computed example: one hospital, February and March 2026."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import text

from smartcare.platform.db import session_scope
from smartcare.platform.errors import InvalidInput
from smartcare.warehouse import indicators, service

from warehouse_support import empty_landing, empty_star, landed_keys, small_hospitals

E1, E2 = "E90000000001", "E90000000002"


def _land(s, f: str) -> None:
    enc = ("INSERT INTO warehouse.src_encounter (facility_code, encounter_id, empi_id, class, department_code, start_at, "
           "end_at, recorded_at, status, surgeries) VALUES (:f, :e, :p, :c, NULL, :s, :end, :s, :st, :n)")
    for e, c, start, end, status, n in (
            ("V0", "AMB", "2026-02-10 09:00+08", None, "in-progress", 0),
            ("V1", "AMB", "2026-03-02 09:00+08", None, "in-progress", 0),
            ("V2", "EMER", "2026-03-02 23:30+08", None, "in-progress", 0),
            ("V3", "AMB", "2026-03-05 10:00+08", None, "in-progress", 0),
            ("V4", "AMB", "2026-03-05 11:00+08", None, "cancelled", 0),
            ("S1", "IMP", "2026-02-26 10:00+08", "2026-03-03 09:00+08", "finished", 1),
            ("S2", "IMP", "2026-03-10 08:00+08", "2026-03-12 16:00+08", "finished", 0),
            ("S3", "IMP", "2026-03-30 08:00+08", None, "in-progress", 0)):
        s.execute(text(enc), {"f": f, "e": e, "p": E1, "c": c, "s": start, "end": end, "st": status, "n": n})
    charge = ("INSERT INTO warehouse.src_charge (facility_code, bill_no, line, settlement_no, encounter_id, empi_id, "
              "code, name, category, amount, charged_at) VALUES (:f, :b, :l, :x, :e, :p, :code, :code, '甲', :a, :at)")
    for b, line, e, code, amount, at in (
            ("B0", 1, "V0", "001102000010000", 20_000, "2026-02-10 10:00+08"),
            ("B1", 1, "V1", "T000100011", 5_000, "2026-03-02 10:00+08"),  # 中药饮片: a drug too
            ("B1", 2, "V1", "001102000010000", 10_000, "2026-03-02 10:00+08"),
            ("B2", 1, "V2", "002502000010000", 25_000, "2026-03-02 23:50+08"),
            ("BS1", 1, "S1", "ZA04AAA001", 100_000, "2026-03-03 09:00+08"),
            ("BS1", 2, "S1", "001107000010000", 200_000, "2026-03-03 09:00+08"),
            ("BS2", 1, "S2", "001107000010000", 50_000, "2026-03-12 16:00+08")):
        s.execute(text(charge), {"f": f, "b": b, "l": line, "x": "X" + b, "e": e, "p": E1, "code": code, "a": amount,
                                 "at": at})
    settle = ("INSERT INTO warehouse.src_settlement (settlement_no, facility_code, bill_no, encounter_id, empi_id, "
              "insurance_type, state, settled_at, total, fund_pay, account_pay, insurer_pay, cash_pay, insurer, channel) "
              "VALUES (:x, :f, :b, NULL, :p, 'employee', :state, :at, :t, :fund, :acct, :ins, :cash, 'PICC', 'wechat')")
    for x, state, at, total, fund, acct, ins, cash in (
            ("X1", "completed", "2026-03-02 10:00+08", 15_000, 9_000, 1_000, 0, 5_000),
            ("X2", "completed", "2026-03-03 09:00+08", 300_000, 200_000, 0, 50_000, 50_000),
            ("X3", "compensated", "2026-03-04 09:00+08", 70_000, 70_000, 0, 0, 0)):
        s.execute(text(settle), {"x": x, "f": f, "b": x, "p": E1, "state": state, "at": at, "t": total, "fund": fund,
                                 "acct": acct, "ins": ins, "cash": cash})
    book = ("INSERT INTO warehouse.src_booking VALUES (:a, :p, :f, 'D1', NULL, :d, :st, '2026-03-01 08:00+08')")
    for a, d, st in (("A1", "2026-03-02", "checked_in"), ("A2", "2026-03-05", "noshow")):
        s.execute(text(book), {"a": a, "p": E2, "f": f, "d": d, "st": st})
    use = "INSERT INTO warehouse.src_card_use VALUES (:u, :c, :f, :step, 'window', :at)"
    for u, card, step, at in ((1, 7, "registration", "2026-03-02 09:00+08"), (2, 7, "payment", "2026-03-02 10:00+08"),
                              (3, 8, "registration", "2026-03-05 10:00+08")):
        s.execute(text(use), {"u": u, "c": card, "f": f, "step": step, "at": at})
    doc = ("INSERT INTO warehouse.src_document VALUES (:r, :f, 'C0002', :p, :service, :received, :current, :score)")
    for r, service_at, received, current, score in (
            (1, "2026-03-02 09:00+08", "2026-03-02 11:00+08", True, 80),
            (2, "2026-03-04 09:00+08", "2026-03-05 15:00+08", True, 90),
            (3, "2026-03-05 09:00+08", "2026-03-05 10:00+08", False, 10)):
        s.execute(text(doc), {"r": r, "f": f, "p": E1, "service": service_at, "received": received, "current": current,
                              "score": score})
    s.execute(text("INSERT INTO warehouse.src_person VALUES (:p, '1900-01-01+00', 1980, '1', NULL, 'employee'), "
                   "(:q, '1900-01-01+00', 1990, '2', NULL, 'resident')"), {"p": E1, "q": E2})


@pytest.fixture
def march(seeded):
    with session_scope() as s:
        empty_landing(s)
        empty_star(s)
        service.refresh_reference(s)
        f = small_hospitals(s, 1)[0].code
        _land(s, f)
        service.apply(s, landed_keys(s))
        s.execute(text("UPDATE warehouse.dim_facility SET beds = 10 WHERE code = :f"), {"f": f})  # a ward-sized example
    return f, 10


def _one(rows, period):
    [row] = [r for r in rows if r["period"] == period]
    return row


def test_every_indicator_matches_the_hand_computed_value(march):
    f, beds = march
    with session_scope() as s:
        rows = indicators.compute(s, by="facility", grain="month", start=date(2026, 2, 1), end=date(2026, 3, 31),
                                  facility_code=f, as_of=date(2026, 3, 31))
    feb, mar = _one(rows, "2026-02"), _one(rows, "2026-03")
    assert feb["outpatient_visits"] == 1 and feb["avg_outpatient_cost"] == 200.00
    expected = {
        "outpatient_visits": 3,                                   # V1, V2, V3 (V4 cancelled)
        "discharges": 2,                                          # S1 (03-03), S2 (03-12); S3 still in
        "avg_outpatient_cost": round(40_000 / 3 / 100, 2),        # ¥150 + ¥250 over three visits
        "avg_outpatient_cost_growth": round((40_000 / 3 - 20_000) / 20_000 * 100, 2),
        "avg_inpatient_cost": 1_750.00,                           # (¥3,000 + ¥500) / 2
        "drug_cost_ratio": round(105_000 / 390_000 * 100, 2),     # (50 + 1,000) / 3,900 yuan charged in March
        "bed_occupancy": round(6 / (beds * 31) * 100, 2),         # S1: 1st–2nd, S2: 10th–11th, S3: 30th–31st
        "avg_length_of_stay": 3.5,                                # (5 + 2) / 2
        "bed_turnover": round(2 / beds, 2),
        "surgeries_per_discharge": 0.5,
        "appointment_visit_ratio": round(1 / 3 * 100, 2),         # A1 checked in; A2 no-show
        "fund_share": round(210_000 / 315_000 * 100, 2),          # X3 compensated: not settled
        "self_pay_share": round(55_000 / 315_000 * 100, 2),
        "card_use_rate": round(2 / 3 * 100, 2),                   # card 7 twice on the 2nd counts once
        "upload_timeliness": round(2 / 3 * 100, 2),               # document 2 took 30 hours
        "qc_score": 85.0,                                         # 80 and 90; the replaced one's 10 not counted
    }
    assert {k: mar[k] for k in expected} == expected
    assert {i.code for i in indicators.INDICATORS} == set(expected)


def test_a_month_asked_mid_month_counts_its_beds_up_to_that_day(march):
    f, beds = march
    with session_scope() as s:
        [row] = indicators.compute(s, by="facility", grain="month", start=date(2026, 3, 1), end=date(2026, 3, 31),
                                   facility_code=f, as_of=date(2026, 3, 15))
    # nights by the 15th: S1 on the 1st and 2nd, S2 on the 10th and 11th; beds open 15 days so far
    assert row["bed_occupancy"] == round(4 / (beds * 15) * 100, 2)


def test_days_districts_and_bad_requests(march):
    f, beds = march
    with session_scope() as s:
        days = indicators.compute(s, by="facility", grain="day", start=date(2026, 3, 2), end=date(2026, 3, 3),
                                  facility_code=f, as_of=date(2026, 3, 31))
        assert [(r["period"], r["outpatient_visits"], r["discharges"]) for r in days] == [
            ("2026-03-02", 2, 0), ("2026-03-03", 0, 1)]
        assert _one(days, "2026-03-02")["avg_outpatient_cost"] == 200.00
        district = s.scalar(text("SELECT district_code FROM warehouse.dim_facility WHERE code = :f"), {"f": f})
        region = indicators.compute(s, by="district", grain="month", start=date(2026, 3, 1), end=date(2026, 3, 31),
                                    as_of=date(2026, 3, 31))
        mine = [r for r in region if r["code"] == district]
        assert mine and mine[0]["outpatient_visits"] == 3
        district_beds = s.scalar(text("SELECT sum(beds) FROM warehouse.dim_facility WHERE district_code = :d "
                                      "AND is_public AND is_hospital"), {"d": district})
        assert mine[0]["bed_turnover"] == round(2 / district_beds, 2)
        for bad in ({"by": "ward"}, {"grain": "week"}):
            with pytest.raises(InvalidInput):
                indicators.compute(s, start=date(2026, 3, 1), end=date(2026, 3, 31), **bad)
        with pytest.raises(InvalidInput):
            indicators.compute(s, start=date(2026, 3, 31), end=date(2026, 3, 1))
