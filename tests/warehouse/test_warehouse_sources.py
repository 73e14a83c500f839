"""How source records land: person versions that never flip back on late events, visits from any
encounter the hub may send (FHIR statuses and classes, discharges without an admission time or PID)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import text

from smartcare.exchange import canonical
from smartcare.platform.bus import Message
from smartcare.platform.db import session_scope
from smartcare.standards import hl7v2
from smartcare.warehouse import events, landing

from warehouse_support import small_hospitals


def _versions(s, empi_id: str) -> list[tuple]:
    return [tuple(r) for r in s.execute(text(
        "SELECT insurance_type, valid_from FROM warehouse.src_person WHERE empi_id = :e ORDER BY valid_from"),
        {"e": empi_id})]


def test_person_versions_follow_time_not_arrival(seeded):
    empi_id = f"E9{uuid.uuid4().int % 10**10:010d}"
    t1, t2 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    with session_scope() as s:
        changes = landing.Changes()
        landing.observe_persons(s, {empi_id: ("resident", t1)}, changes)
        landing.observe_persons(s, {empi_id: ("employee", t2)}, changes)
        assert [v[0] for v in _versions(s, empi_id)] == ["resident", "employee"]
        kept = _versions(s, empi_id)
        landing.observe_persons(s, {empi_id: ("resident", t1)}, changes)  # a refund of the old settlement
        landing.observe_persons(s, {empi_id: ("employee", t2)}, changes)  # a redelivery
        landing.observe_persons(s, {empi_id: (None, None)}, changes)      # a document: insurance unknown
        assert _versions(s, empi_id) == kept


def _encounter(facility: str, **data) -> Message:
    return Message(id=uuid.uuid4(), topic="exchange.default.encounter.recorded", payload={
        "topic": "encounter.recorded", "source": {"message_id": 0, "facility_code": facility},
        "data": {"patient_ref": None, "start": "2026-03-02T09:00:00", **data}})


def test_fhir_statuses_and_classes_land_as_visits(seeded):
    with session_scope() as s:
        facility = small_hospitals(s, 1)[0].code
    cases = {"arrived": ("AMB", "in-progress"), "entered-in-error": ("AMB", "cancelled"),
             "finished": ("ACUTE", "finished"), "triaged": ("EMER", "in-progress")}
    ids = {}
    for status, (visit_class, _) in cases.items():
        ids[status] = f"F{uuid.uuid4().hex[:10]}"
        with session_scope() as s:
            events.encounters(s, _encounter(facility, source_id=ids[status], status=status, **{"class": visit_class},
                                            department="D" * 40))
    pre = f"P{uuid.uuid4().hex[:10]}"
    with session_scope() as s:
        events.encounters(s, _encounter(facility, source_id=pre, status="planned", **{"class": "PRENC"}))
        got = {r.encounter_id: (r.class_, r.status, r.department_code) for r in s.execute(text(
            "SELECT encounter_id, class AS class_, status, department_code FROM warehouse.src_encounter "
            "WHERE encounter_id = ANY(:e)"), {"e": [*ids.values(), pre]})}
    assert got[ids["arrived"]][:2] == ("AMB", "in-progress") and got[ids["arrived"]][2] == "D" * 32
    assert got[ids["entered-in-error"]][1] == "cancelled"
    assert got[ids["finished"]][:2] == ("IMP", "finished")
    assert got[ids["triaged"]][:2] == ("EMER", "in-progress")
    assert pre not in got  # a pre-admission is not a visit


def test_a_discharge_without_pid_or_times_keeps_the_admission(seeded):
    with session_scope() as s:
        facility = small_hospitals(s, 1)[0].code
    stay = f"ZY{uuid.uuid4().hex[:8]}"
    admit = (f"MSH|^~\\&|HIS|{facility}|SC|R|20260302080000||ADT^A01|{stay}a|P|2.5\rEVN|A01|20260302080000\r"
             f"PID|1||MZ1^^^{facility}^MR\rPV1|1|I|03||||||||||||||||{stay}" + "|" * 25 + "20260302080000\r")
    discharge = (f"MSH|^~\\&|HIS|{facility}|SC|R|20260306100000||ADT^A03|{stay}d|P|2.5\rEVN|A03|20260306100000\r"
                 f"PV1|1|I|03||||||||||||||||{stay}\r")
    [(_, admitted)] = [e for e in canonical.hl7_events(hl7v2.parse(admit)) if e[0] == "encounter.recorded"]
    [(topic, discharged)] = canonical.hl7_events(hl7v2.parse(discharge))
    assert topic == "encounter.recorded" and discharged["start"] is None
    assert discharged["end"] == "2026-03-06T10:00:00" and discharged["status"] == "finished"
    for data in (admitted, discharged, admitted):  # the admission redelivered after the discharge changes nothing
        with session_scope() as s:
            events.encounters(s, Message(id=uuid.uuid4(), topic="t", payload={
                "topic": "encounter.recorded", "source": {"message_id": 0, "facility_code": facility},
                "data": {**data, "patient_ref": None}}))
    with session_scope() as s:
        row = s.execute(text("SELECT status, start_at, end_at, bed_days FROM warehouse.src_encounter e "
                             "JOIN warehouse.fct_inpatient_stay f ON f.encounter_id = e.encounter_id "
                             "WHERE e.encounter_id = :e"), {"e": stay}).one()
    assert row.status == "finished" and row.bed_days == 4
    assert row.start_at == datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # 08:00 in China, from the admission


def _land_hl7(facility: str, message: str) -> None:
    for topic, data in canonical.hl7_events(hl7v2.parse(message)):
        if topic == "encounter.recorded":
            with session_scope() as s:
                events.encounters(s, Message(id=uuid.uuid4(), topic="t", payload={
                    "topic": topic, "source": {"message_id": 0, "facility_code": facility},
                    "data": {**data, "patient_ref": None}}))


def _adt(facility: str, trigger: str, visit: str, when: str, pv1_tail: str = "") -> str:
    """An ADT message; PV1 from field 2 on is ``pv1_tail`` (field 19 the visit number). Admissions and
    registrations carry a PID, discharges and cancellations do not."""
    pid = f"PID|1||MZ1^^^{facility}^MR\r" if trigger in ("A01", "A04") else ""
    return (f"MSH|^~\\&|HIS|{facility}|SC|R|{when}||ADT^{trigger}|{visit}{trigger}|P|2.5\rEVN|{trigger}|{when}\r"
            f"{pid}PV1|1|{pv1_tail}")


def test_a_discharge_before_its_admission_and_a_bare_cancellation(seeded):
    with session_scope() as s:
        facility = small_hospitals(s, 1)[0].code
    stay = f"ZY{uuid.uuid4().hex[:8]}"
    # the discharge (no class, no admission time) lands first; the admission, arriving late, fills in
    _land_hl7(facility, _adt(facility, "A03", stay, "20260306100000", "|" * 17 + f"{stay}\r"))
    _land_hl7(facility, _adt(facility, "A01", stay, "20260302080000",
                             f"I|03||||||||||||||||{stay}" + "|" * 25 + "20260302080000\r"))
    with session_scope() as s:
        row = s.execute(text("SELECT admit_date_key, discharge_date_key, bed_days, department_key IS NOT NULL AS dept "
                             "FROM warehouse.fct_inpatient_stay WHERE encounter_id = :e"), {"e": stay}).one()
    assert tuple(row) == (20260302, 20260306, 4, True)
    # an A11 with a bare PV1 cancels the visit it names
    visit = f"V{uuid.uuid4().hex[:8]}"
    _land_hl7(facility, _adt(facility, "A04", visit, "20260302090000", f"O|03||||||||||||||||{visit}\r"))
    with session_scope() as s:
        assert s.scalar(text("SELECT count(*) FROM warehouse.fct_outpatient_visit WHERE encounter_id = :e"),
                        {"e": visit}) == 1
    _land_hl7(facility, _adt(facility, "A11", visit, "20260302093000", "|" * 17 + f"{visit}\r"))
    with session_scope() as s:
        assert s.scalar(text("SELECT count(*) FROM warehouse.fct_outpatient_visit WHERE encounter_id = :e"),
                        {"e": visit}) == 0
        assert s.scalar(text("SELECT status FROM warehouse.src_encounter WHERE encounter_id = :e"),
                        {"e": visit}) == "cancelled"


def test_an_insurance_change_dates_from_its_settlement_a_district_change_from_now(seeded):
    march, june = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    with session_scope() as s:
        empi_id, district = s.execute(text(
            "SELECT empi_id, golden->>'district_code' FROM empi.person WHERE golden->>'district_code' IS NOT NULL "
            "AND empi_id NOT IN (SELECT empi_id FROM warehouse.src_person) LIMIT 1")).one()
        changes = landing.Changes()
        landing.observe_persons(s, {empi_id: ("resident", march)}, changes)
        # the warehouse had them elsewhere; the EMPI says where they live now — a move seen today, not in June
        s.execute(text("UPDATE warehouse.src_person SET district_code = '000000' WHERE empi_id = :e"), {"e": empi_id})
        landing.observe_persons(s, {empi_id: ("employee", june)}, changes)
        versions = [tuple(r) for r in s.execute(text(
            "SELECT valid_from = :june, valid_from >= now() - interval '1 minute', insurance_type, district_code "
            "FROM warehouse.src_person WHERE empi_id = :e ORDER BY valid_from"), {"e": empi_id, "june": june})]
        s.rollback()
    assert versions == [(False, False, "resident", "000000"), (True, False, "employee", "000000"),
                        (False, True, "employee", district)]
