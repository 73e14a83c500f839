"""Settling bills end to end: the platform served over HTTP, each party a sandbox in its own process."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text

from smartcare.payment import ledger
from smartcare.platform.db import session_scope
from tests.healthcard.card_support import signed
from tests.payment.conftest import new_patient, payment_code

ITEMS = [{"code": "A001", "name": "血常规", "category": "甲", "unit_price": 2_500, "quantity": 2},
         {"code": "B002", "name": "头孢克肟", "category": "乙", "unit_price": 4_800, "quantity": 3},
         {"code": "C003", "name": "进口敷料", "category": "丙", "unit_price": 6_000, "quantity": 1},
         {"code": "P004", "name": "CT", "category": "甲", "unit_price": 320_000, "quantity": 1, "price_cap": 300_000}]


def bill(client, region, patient, *, insurance_type="employee", items=ITEMS) -> str:
    bill_no = f"B{uuid.uuid4().hex[:12]}"
    r = signed(client, region.hospital, "POST", "/api/v1/payment/bills",
               {"bill_no": bill_no, "empi_id": patient.empi_id, "insurance_type": insurance_type, "items": items})
    assert r.status_code == 201, r.text
    return bill_no


def settle(client, region, bill_no, channel, auth_code):
    return signed(client, region.hospital, "POST", f"/api/v1/payment/bills/{bill_no}/settle",
                  {"channel": channel, "auth_code": auth_code})


def test_insurance_and_cash_settle_a_bill_in_one_go(client, payment_region):
    region = payment_region
    region.calm()
    patient = new_patient(client, region, balance=10_000)
    bill_no = bill(client, region, patient)
    pre = signed(client, region.hospital, "POST", f"/api/v1/payment/bills/{bill_no}/presettle").json()
    r = settle(client, region, bill_no, "wechat", payment_code(client, region, patient, "wechat"))
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["state"] == "completed", s
    payers = {p["payer"]: p for p in s["payers"]}
    assert payers["medical_insurance"]["status"] == "settled" and payers["cash"]["status"] == "paid"
    assert s["fund_pay"] + s["account_pay"] + payers["cash"]["amount"] == s["total"] == pre["medfee_sumamt"]
    assert (s["fund_pay"], s["account_pay"]) == (pre["hifp_pay"], pre["acct_pay"]) and s["account_pay"] == 10_000
    # the channel took the cash part from the patient's bound account, once; the centre booked the rest
    charged = region.books("wechat")["charged"]
    assert sum(charged.values()) >= payers["cash"]["amount"]
    centre = [x for x in region.books("medins")["settlements"] if x["setl_id"] == payers["medical_insurance"]["reference"]]
    assert len(centre) == 1
    again = settle(client, region, bill_no, "wechat", payment_code(client, region, patient, "wechat"))
    assert again.status_code == 200 and again.json()["settlement_no"] == s["settlement_no"]
    with session_scope() as session:
        moved = ledger.transfers(session, reference=s["settlement_no"])
        assert ledger.trial_balance(session).balanced
        assert session.execute(text("SELECT state FROM payment.bill WHERE bill_no = :b"), {"b": bill_no}).scalar() == "settled"
    assert sum(t.amount for t in moved if t.kind == "post") == s["total"]


def test_a_refused_payment_code_compensates_the_insurance(client, payment_region):
    region = payment_region
    region.calm()
    patient = new_patient(client, region)
    bill_no = bill(client, region, patient)
    token = payment_code(client, region, patient, "alipay")
    used = settle(client, region, bill_no, "alipay", token)  # pays; the code is spent
    assert used.json()["state"] == "completed", used.text
    other = bill(client, region, patient)
    r = settle(client, region, other, "alipay", token)  # the same one-time code again
    assert r.status_code == 201 and r.json()["state"] == "compensated", r.text
    payers = {p["payer"]: p for p in r.json()["payers"]}
    assert payers["cash"]["status"] in ("failed", "reversed") and payers["medical_insurance"]["status"] in ("pending", "none")
    with session_scope() as session:
        assert session.execute(text("SELECT state FROM payment.bill WHERE bill_no = :b"), {"b": other}).scalar() == "open"
    retry = settle(client, region, other, "unionpay", payment_code(client, region, patient, "unionpay"))
    assert retry.json()["state"] == "completed", retry.text
    assert httpx.get(region.url + "/health").status_code == 200
