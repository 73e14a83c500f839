"""The warehouse fed by the platform itself: visits through the hub (HL7 ADT over signed HTTP), documents
through the registry with their QC scores (and a replacement), a settlement through the payment engine
(and refunds); each in the facts once its event is consumed. Then a backfill from the capabilities and a
rebuild yield the very tables the events built."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta

from sqlalchemy import text

from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import session_scope
from smartcare.synth.messages import adt
from smartcare.warehouse import service
from tests.exchange.conftest import msa, settle, signed_post
from tests.healthcard.card_support import signed as signed_json
from tests.payment.payment_support import new_patient, payment_code
from tests.records.records_support import document, resident, signed, sql

from warehouse_support import empty_landing, empty_star, snapshot


def _until(query: str, expected, timeout: float = 30.0, **params):
    """Consume events (as the worker does) until ``query`` answers ``expected``."""
    deadline = time.monotonic() + timeout
    while True:
        settle()
        got = sql(query, **params)
        if got == expected or time.monotonic() > deadline:
            assert got == expected
            return
        time.sleep(0.5)


def _hl7(client, hospital, message: str) -> None:
    r = signed_post(client, hospital, "/api/v1/exchange/hl7v2", message.encode(), "text/plain")
    assert r.status_code == 200 and msa(r.text)[1] == "AA", r.text


def test_the_platforms_events_fill_the_facts_and_a_backfill_rebuilds_them(client, hospital, residents, payment_region):
    facility = hospital[0]
    with session_scope() as s:  # the warehouse holds what the platform held before this test
        empty_landing(s)
        empty_star(s)
        service.refresh_reference(s)  # as the worker does when it starts
    service.backfill(session_scope)

    # -- a day visit and a stay through the hub -------------------------------------------------------------
    who = resident(residents, 60)
    visit = f"W{uuid.uuid4().hex[:10]}"
    _hl7(client, hospital, adt(facility, visit, who))
    stay = f"ZY{uuid.uuid4().hex[:8]}"
    admitted = (datetime.now(CHINA_TZ) - timedelta(days=4)).replace(hour=10, minute=0, second=0, microsecond=0)
    # PV1-2 I(npatient), PV1-19 the stay's number, PV1-44 admitted, PV1-45 discharged
    pv1 = f"PV1|1|I|03^内科^^{facility}||||D0001^王^医生||||||||||||{stay}" + "|" * 25 + f"{admitted:%Y%m%d%H%M%S}"
    head = adt(facility, f"A{uuid.uuid4().hex[:10]}", who, trigger="A01").split("\r")[:3]
    _hl7(client, hospital, "\r".join([*head, pv1]) + "\r")
    discharged = admitted + timedelta(days=3, hours=2)
    head = adt(facility, f"D{uuid.uuid4().hex[:10]}", who, trigger="A03").split("\r")[:3]
    pv1_out = pv1 + f"|{discharged:%Y%m%d%H%M%S}"
    _hl7(client, hospital, "\r".join([*head, pv1_out, "PR1|1||47.0901^阑尾切除术^ICD9CM|||" + f"{admitted:%Y%m%d}"]) + "\r")
    _until("SELECT class, person_id IS NOT NULL FROM warehouse.fct_outpatient_visit WHERE encounter_id = :e",
           [("AMB", True)], e=f"V{visit}")
    _until("SELECT bed_days, surgeries, discharge_date_key IS NOT NULL FROM warehouse.fct_inpatient_stay "
           "WHERE encounter_id = :e", [(3, 1, True)], e=stay)

    # -- documents: registered, checked, then one replaced --------------------------------------------------
    set_id = f"SET-{uuid.uuid4().hex[:8]}"
    first = signed(client, hospital, "POST", "/api/v1/records/documents",
                   document(facility, who, set_id=set_id, version=1)).json()
    _until("SELECT is_current, qc_score IS NOT NULL FROM warehouse.fct_document WHERE record_id = :r",
           [(True, True)], r=first["id"])
    second = signed(client, hospital, "POST", f"/api/v1/records/documents/{first['id']}/replace",
                    document(facility, who, set_id=set_id, version=2)).json()
    assert second["outcome"] == "replaced"
    _until("SELECT record_id, is_current FROM warehouse.fct_document WHERE record_id IN (:a, :b) ORDER BY record_id",
           [(first["id"], False), (second["id"], True)], a=first["id"], b=second["id"])

    # -- a settlement naming the stay, then refunds: the payers' facts net of them, changed once each ------
    region = payment_region
    region.calm()
    patient = new_patient(client, region)
    bill_no = f"B{uuid.uuid4().hex[:12]}"
    items = [{"code": "XJ01DDK019", "name": "头孢克肟", "category": "乙", "unit_price": 4_800, "quantity": 3},
             {"code": "001107000010000", "name": "床位费", "category": "甲", "unit_price": 6_000, "quantity": 40}]
    r = signed_json(client, region.hospital, "POST", "/api/v1/payment/bills",
                    {"bill_no": bill_no, "empi_id": patient.empi_id, "insurance_type": "employee", "items": items,
                     "encounter_id": stay})
    assert r.status_code == 201 and r.json()["encounter_id"] == stay, r.text
    s = signed_json(client, region.hospital, "POST", f"/api/v1/payment/bills/{bill_no}/settle",
                    {"channel": "wechat", "auth_code": payment_code(client, region, patient, "wechat")}).json()
    assert s["state"] == "completed" and s["fund_pay"] > 0, s
    no, cash = s["settlement_no"], [p for p in s["payers"] if p["payer"] == "cash"][0]["amount"]
    _until("SELECT sum(amount), count(*) FILTER (WHERE payer_kind = 'self') FROM warehouse.fct_settlement_payer "
           "WHERE settlement_no = :n", [(s["total"], 1)], n=no)
    _until("SELECT sum(amount) FILTER (WHERE is_drug), sum(amount) FROM warehouse.fct_charge_item WHERE bill_no = :b",
           [(14_400, 254_400)], b=bill_no)
    refund = signed_json(client, region.hospital, "POST", f"/api/v1/payment/settlements/{no}/refunds",
                         {"refund_no": "R1", "amount": cash, "reason": "退药"})
    assert refund.json()["state"] == "succeeded", refund.text
    _until("SELECT sum(amount), count(*) FILTER (WHERE payer_kind = 'self') FROM warehouse.fct_settlement_payer "
           "WHERE settlement_no = :n", [(s["total"] - cash, 0)], n=no)
    assert sql("SELECT sum(amount) FROM warehouse.fct_charge_item WHERE bill_no = :b", b=bill_no) == [(254_400,)]

    # -- messages and the daily mart ------------------------------------------------------------------------
    service.tick(session_scope)
    assert sql("SELECT count(*) >= 3 FROM warehouse.fct_message f JOIN warehouse.dim_facility d "
               "ON d.facility_key = f.facility_key WHERE d.code = :f", f=facility) == [(True,)]
    settle()
    service.tick(session_scope)
    with session_scope() as s:
        kept = snapshot(s)
        # a rebuild from the capabilities: every landing table emptied but visits (events only) and persons
        # (their history is the warehouse's own), backfilled, rebuilt
        s.execute(text("TRUNCATE warehouse.src_settlement, warehouse.src_charge, warehouse.src_document, "
                       "warehouse.src_document_item, warehouse.src_message, warehouse.src_card_use, "
                       "warehouse.src_booking"))
        empty_star(s)
    service.backfill(session_scope)
    with session_scope() as s:
        service.rebuild(s)
        rebuilt = snapshot(s)
    for table in service.TABLES:
        assert rebuilt[table] == kept[table], f"{table} differs after backfill and rebuild"
