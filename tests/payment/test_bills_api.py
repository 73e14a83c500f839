"""Bills as a hospital system sends them (HMAC-signed), and their pre-settlement explained to the fen."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from smartcare.payment import ledger
from smartcare.payment.models import InsuranceYear
from smartcare.platform.db import session_scope
from tests.healthcard.card_support import code, issue, person, resident, scan, signed


def _bill(tag: str, **extra) -> dict:
    return {"bill_no": f"B{tag}", "items": [
        {"code": "A001", "name": "血常规", "category": "甲", "unit_price": 2_500, "quantity": 2},
        {"code": "B002", "name": "头孢克肟", "category": "乙", "unit_price": 4_800, "quantity": 3},
        {"code": "C003", "name": "进口敷料", "category": "丙", "unit_price": 6_000, "quantity": 1},
        {"code": "P004", "name": "CT", "category": "甲", "unit_price": 32_000, "quantity": 1, "price_cap": 30_000},
    ], **extra}


def test_a_bill_is_idempotent_by_its_number_and_its_total_is_its_items(client, hospital):
    tag = uuid.uuid4().hex[:8]
    first = signed(client, hospital, "POST", "/api/v1/payment/bills", _bill(tag))
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["total"] == 5_000 + 14_400 + 6_000 + 32_000 and [i["amount"] for i in body["items"]] == [5_000, 14_400, 6_000, 32_000]
    assert body["hospital_level"] == 3 and body["state"] == "open"
    again = signed(client, hospital, "POST", "/api/v1/payment/bills", _bill(tag))
    assert again.status_code == 200 and again.json() == body
    other = _bill(tag)
    other["items"][0]["quantity"] = 3
    clash = signed(client, hospital, "POST", "/api/v1/payment/bills", other)
    assert clash.status_code == 409 and clash.json()["field"] == "bill_no"
    bad = _bill(uuid.uuid4().hex[:8])
    bad["items"][1]["unit_price"] = 12.5
    refused = signed(client, hospital, "POST", "/api/v1/payment/bills", bad)
    assert refused.status_code == 422 and "items.1.unit_price" in refused.json()["message"]
    insured_without_patient = signed(client, hospital, "POST", "/api/v1/payment/bills",
                                     _bill(uuid.uuid4().hex[:8], insurance_type="employee"))
    assert insured_without_patient.status_code == 422 and insured_without_patient.json()["field"] == "empi_id"
    with session_scope() as s:  # the database itself keeps a bill's total the sum of its items
        bill_id = s.execute(text("SELECT id FROM payment.bill WHERE bill_no = :n"), {"n": f"B{tag}"}).scalar()
    for sql, refusal in (("UPDATE payment.bill SET total = total + 1 WHERE id = :i", "not changed or removed"),
                         ("DELETE FROM payment.bill_item WHERE bill_id = :i AND line = 1", "not changed or removed"),
                         ("UPDATE payment.bill_item SET quantity = 9 WHERE bill_id = :i", "not changed or removed"),
                         ("INSERT INTO payment.bill_item (bill_id, line, code, name, category, unit_price, quantity) "
                          "VALUES (:i, 99, 'X', 'x', '甲', 1, 1)", "not the sum of its items"),
                         ("INSERT INTO payment.bill (facility_code, bill_no, insurance_type, hospital_level, total) "
                          "VALUES ('X', :n, 'none', 1, 0)", "not the sum of its items")):
        with pytest.raises(DBAPIError, match=refusal), session_scope() as s:
            s.execute(text(sql), {"i": bill_id, "n": f"empty-{tag}"})
    with session_scope() as s:  # the state may change
        s.execute(text("UPDATE payment.bill SET state = 'cancelled' WHERE id = :i"), {"i": bill_id})


def _scanned_patient(client, hospital) -> str:
    """A patient whose health card this hospital has just scanned: their empi_id."""
    who, p = resident(client), person()
    card = issue(client, who, name=p["name"], id_number=p["id_number"], phone=p["phone"]).json()["card_no"]
    return scan(client, hospital, code(client, who, card)).json()["empi_id"]


def test_a_hospital_bills_only_a_patient_whose_card_it_scanned(client, hospital):
    from smartcare.platform import auth

    empi_id = _scanned_patient(client, hospital)
    stranger = signed(client, hospital, "POST", "/api/v1/payment/bills",
                      _bill(uuid.uuid4().hex[:8], empi_id=f"E{uuid.uuid4().int % 10**11:011d}", insurance_type="employee"))
    assert stranger.status_code == 403 and stranger.json()["field"] == "empi_id"
    with session_scope() as s:  # another hospital, which never saw this patient
        other = s.execute(text("SELECT code FROM registry.facility WHERE kind = 'general_hospital' AND code <> :c "
                               "ORDER BY code LIMIT 1"), {"c": hospital[0]}).scalar()
        secret = auth.create_api_client(s, client_id=f"his-{uuid.uuid4().hex[:8]}", name="HIS", facility_code=other)
        client_id = s.execute(text("SELECT client_id FROM platform.api_client WHERE facility_code = :c "
                                   "ORDER BY id DESC LIMIT 1"), {"c": other}).scalar()
    elsewhere = signed(client, (other, client_id, secret), "POST", "/api/v1/payment/bills",
                       _bill(uuid.uuid4().hex[:8], empi_id=empi_id, insurance_type="employee"))
    assert elsewhere.status_code == 403 and elsewhere.json() == stranger.json()
    here = signed(client, hospital, "POST", "/api/v1/payment/bills",
                  _bill(uuid.uuid4().hex[:8], empi_id=empi_id, insurance_type="employee"))
    assert here.status_code == 201, here.text


def test_presettlement_uses_the_persons_accumulators_and_personal_account(client, hospital):
    empi_id, tag = _scanned_patient(client, hospital), uuid.uuid4().hex[:8]
    made = signed(client, hospital, "POST", "/api/v1/payment/bills",
                  _bill(tag, empi_id=empi_id, insurance_type="employee"))
    assert made.status_code == 201, made.text
    with session_scope() as s:
        from smartcare.payment.service import personal_account_code
        from smartcare.platform.clock import china_now

        s.add(InsuranceYear(empi_id=empi_id, year=china_now().year, insurance_type="employee",
                            deductible_used=60_000, fund_paid=0))
        ledger.open_account(s, code="insurance:fund:test", kind="insurance_fund")
        ledger.open_account(s, code=personal_account_code(empi_id), kind="personal_account", debits_within_credits=True)
        ledger.transfer(s, id=uuid.uuid4(), debit="insurance:fund:test", credit=personal_account_code(empi_id),
                        amount=10_000, code="account_credit")
    r = signed(client, hospital, "POST", f"/api/v1/payment/bills/B{tag}/presettle")
    assert r.status_code == 200, r.text
    s = r.json()
    # in scope: 50.00 + (144.00 − 14.40 self-pay-first) + 300.00 (CT at its cap) = 479.60
    assert (s["medfee_sumamt"], s["inscp_scp_amt"], s["preselfpay_amt"], s["fulamt_ownpay_amt"], s["overlmt_selfpay"]) == \
        (57_400, 47_960, 1_440, 6_000, 2_000)
    assert s["act_pay_dedc"] == 20_000  # 200.00 of the 800.00 deductible was left this year
    assert s["hifp_pay"] == (47_960 - 20_000) * 8500 // 10_000
    assert s["acct_pay"] == 10_000  # the whole personal account, less than what it may pay
    assert s["hifp_pay"] + s["acct_pay"] + s["psn_cash_pay"] == s["medfee_sumamt"]
    for payer, total in (("fund", s["hifp_pay"]), ("account", s["acct_pay"]), ("patient", s["psn_cash_pay"])):
        assert sum(line["amount"] for line in s["lines"] if line["payer"] == payer) == total
    again = signed(client, hospital, "POST", f"/api/v1/payment/bills/B{tag}/presettle")
    assert again.json() == s  # nothing was booked
    missing = signed(client, hospital, "POST", "/api/v1/payment/bills/nope/presettle")
    assert missing.status_code == 404 and missing.json()["field"] == "bill_no"


def test_resends_at_the_same_moment_and_out_of_range_input(client, hospital):
    import concurrent.futures

    body = _bill(uuid.uuid4().hex[:8])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = sorted(r.status_code for r in pool.map(lambda _: signed(client, hospital, "POST", "/api/v1/payment/bills",
                                                                        body), range(4)))
    assert codes == [200, 200, 200, 201]
    for field, value in (("unit_price", 10**15), ("name", "药\x00品")):
        bad = _bill(uuid.uuid4().hex[:8])
        bad["items"][0][field] = value
        r = signed(client, hospital, "POST", "/api/v1/payment/bills", bad)
        assert r.status_code == 422 and f"items.0.{field}" in r.json()["message"]


def test_several_bills_in_one_transaction(hospital):
    from smartcare.payment import service
    from smartcare.payment.schemas import BillIn

    tag = uuid.uuid4().hex[:8]
    with session_scope() as s:  # a batch import: the first bill's immediate check must not catch the second
        for n in range(3):
            service.create_bill(s, facility_code=hospital[0], actor="test",
                                data=BillIn(bill_no=f"B{tag}-{n}", items=_bill(tag)["items"]))
    with session_scope() as s:
        assert s.execute(text("SELECT count(*) FROM payment.bill WHERE bill_no LIKE :t"), {"t": f"B{tag}-%"}).scalar() == 3
