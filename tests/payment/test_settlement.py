"""Settling bills end to end: the platform served over HTTP, each party a sandbox in its own process."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text

from smartcare.payment import ledger
from smartcare.platform.db import session_scope
from tests.healthcard.card_support import signed
from tests.payment.payment_support import new_patient, payment_code

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


def _admin(client) -> dict:
    token = client.post("/api/v1/auth/token", json={"username": "admin", "password": "smartcare-admin"}).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


def test_commercial_direct_pay_and_refunds_in_reverse_payer_order(client, payment_region):
    from smartcare.payment import parties
    from smartcare.payment.commercial import CommercialPolicy
    from tests.healthcard.card_support import headers

    region = payment_region
    region.calm()
    patient = new_patient(client, region)
    parties.current().insurer.put_policy(CommercialPolicy(f"HMB-{patient.empi_id}", "HMB", deductible=0, ratio_bp=5_000,
                                                          annual_limit=1_000_000), insured_id=patient.empi_id)
    without = settle(client, region, bill(client, region, patient), "wechat", payment_code(client, region, patient, "wechat"))
    assert {p["payer"]: p for p in without.json()["payers"]}["commercial_insurance"]["status"] == "none"
    consent = client.put(f"/api/v1/payment/consents/{patient.card_no}/HMB", headers=headers(patient.who))
    assert consent.status_code == 200 and consent.json()["direct_pay"] is True
    stranger = client.put(f"/api/v1/payment/consents/{patient.card_no}/HMB", headers={})
    assert stranger.status_code == 401
    r = settle(client, region, bill(client, region, patient), "wechat", payment_code(client, region, patient, "wechat"))
    s = r.json()
    payers = {p["payer"]: p for p in s["payers"]}
    assert s["state"] == "completed" and payers["commercial_insurance"]["status"] == "captured", s
    cash, claim, insured = payers["cash"]["amount"], payers["commercial_insurance"]["amount"], s["fund_pay"] + s["account_pay"]
    assert claim > 0 and cash > 0 and insured + claim + cash == s["total"]
    no = s["settlement_no"]

    def refund(refund_no, amount):
        return signed(client, region.hospital, "POST", f"/api/v1/payment/settlements/{no}/refunds",
                      {"refund_no": refund_no, "amount": amount, "reason": "test"})

    first = refund("R1", cash - 1)  # within the cash part: only the channel gives money back
    assert first.status_code == 201 and first.json()["state"] == "succeeded", first.text
    assert [p["amount"] for p in first.json()["parts"]] == [cash - 1, 0, 0]
    assert refund("R1", cash - 1).status_code == 200  # the same refund number again: the same refund
    assert refund("R1", 5).status_code == 409
    second = refund("R2", 1 + claim)  # the last fen of cash, then the insurer
    assert [p["amount"] for p in second.json()["parts"]] == [1, claim, 0]
    partial_insurance = refund("R3", insured - 1)
    assert partial_insurance.status_code == 409 and "whole" in partial_insurance.json()["message"]
    too_much = refund("R4", insured + 1)
    assert too_much.status_code == 422 and too_much.json()["field"] == "amount"
    last = refund("R5", insured)  # the whole remainder: medical insurance reverses its settlement (2208)
    assert last.json()["state"] == "succeeded" and [p["amount"] for p in last.json()["parts"]] == [0, 0, insured]
    centre = [x for x in region.books("medins")["settlements"] if x["mdtrt_id"] == no]
    assert [x["state"] for x in centre] == ["reversed"]
    insurer = [a for a in region.books("insurer")["authorisations"] if a["bill_ref"] == no]
    assert insurer[0]["refunded"] == claim
    after = signed(client, region.hospital, "GET", f"/api/v1/payment/settlements/{no}").json()
    assert after["refunded"] == after["total"]
    with session_scope() as session:
        received = session.execute(text("""
            SELECT sum(CASE WHEN c.code LIKE 'receivable:%' THEN t.amount ELSE -t.amount END)
              FROM payment.transfer t JOIN payment.account c ON c.id = t.credit_account_id
             WHERE t.reference = :no AND t.kind IN ('post', 'posted')"""), {"no": no}).scalar()
        bill_state = session.execute(text("SELECT b.state FROM payment.bill b JOIN payment.settlement s "
                                          "ON s.bill_id = b.id WHERE s.settlement_no = :no"), {"no": no}).scalar()
    assert received == 0 and bill_state == "refunded"


def test_a_payment_waiting_for_the_password_completes(client, payment_region):
    region = payment_region
    region.calm()
    patient = new_patient(client, region)
    big = [{"code": "S001", "name": "门诊手术", "category": "丙", "unit_price": 150_000, "quantity": 1}]
    bill_no = bill(client, region, patient, insurance_type="none", items=big)
    r = settle(client, region, bill_no, "alipay", payment_code(client, region, patient, "alipay"))
    assert r.json()["state"] == "completed", r.text  # the payer typed the password; query or notification told us
    cash = {p["payer"]: p for p in r.json()["payers"]}["cash"]
    assert cash["status"] == "paid" and cash["amount"] == 150_000


def test_an_orchestrator_that_crashed_is_taken_over(client, payment_region):
    import time

    import pytest

    from smartcare.payment import parties, saga

    region = payment_region
    region.calm()
    options = saga.Options(lease_seconds=0.5, payer_wait_seconds=3)
    for point in ("pay_cash:answered", "settle_medins:answered", "before:reserve", "before:finish"):
        patient = new_patient(client, region, balance=2_000)
        bill_no = bill(client, region, patient)
        with session_scope() as session:
            no = saga.start(session, facility_code=region.hospital[0], bill_no=bill_no, channel="unionpay",
                            auth_code=payment_code(client, region, patient, "unionpay"))[0].settlement_no
        crashing = saga.Orchestrator(parties.current(), options, crash=lambda where, p=point: where == p)
        with pytest.raises(saga.Crash):
            crashing.run(no)
        assert crashing.state(no) == "running"
        rescuer = saga.Orchestrator(parties.current(), options)
        assert rescuer.run(no) == "running"  # the lease is still the crashed one's: hands off
        time.sleep(0.6)
        rescuer.recover()
        assert rescuer.state(no) == "completed", point
        charged = [o for o in region.books("unionpay")["orders"] if o["out_trade_no"] == no]
        assert len(charged) == 1 and charged[0]["state"] == "paid", point
        centre = [x["state"] for x in region.books("medins")["settlements"] if x["mdtrt_id"] == no]
        assert centre.count("settled") == 1, (point, centre)


def test_reconciliation_lists_a_stray_payment_and_an_admin_resolves_it(client, payment_region):
    from smartcare.payment import parties
    from smartcare.platform.clock import china_today

    region = payment_region
    region.calm()
    patient = new_patient(client, region)
    wechat = parties.current().channel("wechat")
    stray = f"X{uuid.uuid4().hex[:20]}"  # paid at the channel, unknown to the platform
    assert wechat.pay(out_trade_no=stray, amount=321, auth_code=payment_code(client, region, patient, "wechat"),
                      description="stray").state == "paid"
    admin = _admin(client)
    day = china_today().isoformat()
    runs = client.post(f"/api/v1/payment/reconciliation/{day}", headers=admin)
    assert runs.status_code == 200, runs.text
    assert {r["party"]: r["differences"] for r in runs.json()}["wechat"] >= 1
    items = client.get("/api/v1/payment/reconciliation/items", params={"day": day}, headers=admin).json()
    item = next(i for i in items if i["reference"] == stray)
    assert item["kind"] == "missing_at_platform" and item["party_amount"] == 321 and "did not book" in item["reason"]
    assert client.post(f"/api/v1/payment/reconciliation/items/{item['id']}/resolve", json={"resolution": " "},
                       headers=admin).status_code == 422
    done = client.post(f"/api/v1/payment/reconciliation/items/{item['id']}/resolve",
                       json={"resolution": "returned to the payer by reversal"}, headers=admin)
    assert done.status_code == 200 and done.json()["state"] == "resolved" and done.json()["resolved_by"] == "admin"
    assert wechat.reverse(out_trade_no=stray).state == "reversed"  # what the resolution says was done
    again = client.post(f"/api/v1/payment/reconciliation/{day}", headers=admin).json()
    assert {r["party"]: r["differences"] for r in again}["wechat"] == 0


def test_a_refund_a_party_refuses_stops_and_gives_the_rest_back(client, payment_region):
    from smartcare.payment import parties
    from smartcare.payment.commercial import CommercialPolicy
    from tests.healthcard.card_support import headers

    region = payment_region
    region.calm()
    patient = new_patient(client, region)
    parties.current().insurer.put_policy(CommercialPolicy(f"HMB-{patient.empi_id}", "HMB", deductible=0, ratio_bp=5_000,
                                                          annual_limit=1_000_000), insured_id=patient.empi_id)
    client.put(f"/api/v1/payment/consents/{patient.card_no}/HMB", headers=headers(patient.who))
    s = settle(client, region, bill(client, region, patient), "alipay", payment_code(client, region, patient, "alipay")).json()
    payers = {p["payer"]: p for p in s["payers"]}
    cash, claim = payers["cash"]["amount"], payers["commercial_insurance"]["amount"]
    assert s["state"] == "completed" and claim > 0
    region.faults("insurer", error=1.0)  # the insurer refuses every refund
    try:
        r = signed(client, region.hospital, "POST", f"/api/v1/payment/settlements/{s['settlement_no']}/refunds",
                   {"refund_no": "RX", "amount": cash + 1})
    finally:
        region.calm()
    assert r.status_code == 201 and r.json()["state"] == "failed", r.text
    assert [(p["status"], p["amount"]) for p in r.json()["parts"]] == [("succeeded", cash), ("refused", 1), ("none", 0)]
    after = signed(client, region.hospital, "GET", f"/api/v1/payment/settlements/{s['settlement_no']}").json()
    assert after["refunded"] == cash  # the refused fen is the settlement's again: it can be refunded later
    again = signed(client, region.hospital, "POST", f"/api/v1/payment/settlements/{s['settlement_no']}/refunds",
                   {"refund_no": "RY", "amount": 1})
    assert again.json()["state"] == "succeeded" and [p["amount"] for p in again.json()["parts"]] == [0, 1, 0]
    rest = signed(client, region.hospital, "POST", f"/api/v1/payment/settlements/{s['settlement_no']}/refunds",
                  {"refund_no": "RZ", "amount": claim - 1})  # the refused part does not count as refunded
    assert rest.json()["state"] == "succeeded" and [p["amount"] for p in rest.json()["parts"]] == [0, claim - 1, 0]


def test_two_runs_at_once_settle_and_refund_once(client, payment_region):
    import threading

    from smartcare.payment import parties, refunds, saga

    region = payment_region
    region.calm()
    for _ in range(3):  # a terminal's retry beside its first request, in one process
        patient = new_patient(client, region, balance=1_000)
        bill_no = bill(client, region, patient)
        with session_scope() as session:
            no = saga.start(session, facility_code=region.hospital[0], bill_no=bill_no, channel="wechat",
                            auth_code=payment_code(client, region, patient, "wechat"))[0].settlement_no
        runs = [threading.Thread(target=saga.orchestrator().run, args=(no,)) for _ in range(2)]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        saga.orchestrator().run(no)
        assert saga.orchestrator().state(no) == "completed"
        centre = [x["state"] for x in region.books("medins")["settlements"] if x["mdtrt_id"] == no]
        assert centre == ["settled"], centre
    with session_scope() as session:
        refund, _ = refunds.request(session, facility_code=region.hospital[0], settlement_no=no, refund_no="FULL",
                                    amount=session.execute(text("SELECT total FROM payment.settlement "
                                                                "WHERE settlement_no = :n"), {"n": no}).scalar())
        refund_id = refund.id
        fund_before = session.execute(text("SELECT fund_paid FROM payment.insurance_year WHERE empi_id = :e"),
                                      {"e": patient.empi_id}).scalar()
    runs = [threading.Thread(target=refunds.run, args=(parties.current(), refund_id)) for _ in range(3)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    refunds.run(parties.current(), refund_id)
    with session_scope() as session:
        booked = session.execute(text("SELECT count(*) FROM payment.settlement_event e JOIN payment.settlement s "
                                      "ON s.id = e.settlement_id WHERE s.settlement_no = :n AND e.step LIKE 'refund:%' "
                                      "AND e.outcome = 'ok'"), {"n": no}).scalar()
        fund_after = session.execute(text("SELECT fund_paid FROM payment.insurance_year WHERE empi_id = :e"),
                                     {"e": patient.empi_id}).scalar()
        hifp = session.execute(text("SELECT hifp_pay FROM payment.settlement WHERE settlement_no = :n"), {"n": no}).scalar()
    assert booked == 2  # cash and medical insurance, once each
    assert fund_before - fund_after == hifp
