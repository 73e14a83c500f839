"""Mixed payment in headless Chromium, every party a sandbox in its own process: a resident sees a bill
on H5 with who pays what, authorises commercial direct pay and pays with WeChat; the administrator finds
the settlement in the console, opens it (chart, payers, timeline), runs the day's reconciliation and
resolves a difference; an auditor sees the same pages and can do neither. The resident JSON API answers
only for bills of cards the caller holds."""

from __future__ import annotations

import os
import uuid

import pytest

from smartcare.payment import parties
from smartcare.payment.commercial import CommercialPolicy
from smartcare.platform.clock import china_today
from smartcare.platform.money import format_yuan
from tests.e2e.conftest import login
from tests.healthcard.card_support import headers, resident, signed
from tests.payment.payment_support import new_patient, payment_code

#: A level-3 hospital, an employee: the fund pays above the deductible, the account what its balance
#: allows, the insurer (direct pay) most of the rest of 甲/乙, the patient the remainder and the 丙 item.
ITEMS = [{"code": "P004", "name": "CT", "category": "甲", "unit_price": 120_000, "quantity": 1},
         {"code": "B002", "name": "头孢克肟", "category": "乙", "unit_price": 4_800, "quantity": 3},
         {"code": "C003", "name": "进口敷料", "category": "丙", "unit_price": 6_000, "quantity": 1}]


def _bill(client, region, patient) -> str:
    bill_no = f"B{uuid.uuid4().hex[:12]}"
    r = signed(client, region.hospital, "POST", "/api/v1/payment/bills",
               {"bill_no": bill_no, "empi_id": patient.empi_id, "insurance_type": "employee", "items": ITEMS})
    assert r.status_code == 201, r.text
    return bill_no


def _shot(page, name: str) -> None:
    shots = os.environ.get("SMARTCARE_SCREENSHOTS")
    if shots:
        page.wait_for_timeout(600)
        page.screenshot(path=os.path.join(shots, name), full_page=True)


def _statuses(locator) -> dict[str, str]:
    rows = locator.locator("[data-payer]")
    return {rows.nth(i).get_attribute("data-payer"): rows.nth(i).get_attribute("data-status") for i in range(rows.count())}


@pytest.mark.browser
def test_resident_pays_on_h5_and_the_console_shows_and_reconciles_it(browser, client, payment_region):
    region = payment_region
    region.calm()
    url = region.url
    patient = new_patient(client, region, balance=3_000)
    parties.current().insurer.put_policy(
        CommercialPolicy(policy_no=f"P{uuid.uuid4().hex[:10]}", insurer="惠民保", deductible=0, ratio_bp=8_000,
                         annual_limit=10_000_000, excluded_categories=frozenset({"丙"})), insured_id=patient.empi_id)
    bill_no = _bill(client, region, patient)
    pre = signed(client, region.hospital, "POST", f"/api/v1/payment/bills/{bill_no}/presettle").json()
    assert pre["hifp_pay"] > 0 and pre["acct_pay"] == 3_000, pre

    # -- the resident: the bill with its breakdown, direct pay authorised, paid with WeChat
    page = browser.new_page(viewport={"width": 420, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, url, patient.who["_user"], "resident-pass")
    assert page.url.endswith("/h5")
    page.click("#tile-bills")
    bill = page.locator(f"section.bill[data-bill='{bill_no}']")
    bill.wait_for()
    assert bill.get_attribute("data-state") == "open"
    assert format_yuan(pre["hifp_pay"]) in bill.locator("[data-share=fund]").text_content()
    assert format_yuan(pre["acct_pay"]) in bill.locator("[data-share=account]").text_content()
    assert format_yuan(pre["psn_cash_pay"]) in bill.locator("[data-share=cash]").text_content()
    assert bill.locator("[data-share=insurer]").count() == 0  # not authorised yet
    bill.locator("[data-chart] canvas").wait_for()

    page.click(f"#direct-pay li[data-card='{patient.card_no}'] button.direct-pay-toggle")
    page.wait_for_selector(f"#direct-pay li[data-card='{patient.card_no}'][data-direct-pay='on']")
    bill = page.locator(f"section.bill[data-bill='{bill_no}']")
    assert bill.locator("[data-share=insurer]").count() == 1
    bill.locator("[data-chart] canvas").wait_for()  # drawn again in the swapped-in content
    assert sorted(bill.locator("select.pay-channel option").evaluate_all("os => os.map(o => o.value)")) == \
        ["alipay", "unionpay", "wechat"]
    _shot(page, "payment-h5-open.png")
    bill.locator("select.pay-channel").select_option("wechat")
    bill.locator("button.pay-button").click()
    ended = f"section.bill[data-bill='{bill_no}']"
    page.wait_for_selector(f"{ended} .settlement-state[data-state=completed], "
                           f"{ended} .settlement-state[data-state=compensated], {ended} .bill-error", timeout=30_000)
    bill = page.locator(ended)
    assert bill.locator(".settlement-state").get_attribute("data-state") == "completed", bill.inner_text()
    assert bill.get_attribute("data-state") == "settled"
    assert _statuses(bill) == {"medical_insurance": "settled", "commercial_insurance": "captured", "cash": "paid"}
    settlement_no = bill.locator(".settlement").get_attribute("data-settlement")
    assert bill.locator("form.pay-form").count() == 0
    assert sum(region.books("wechat")["charged"].values()) > 0
    _shot(page, "payment-h5.png")
    assert not errors, errors

    # -- the administrator: today's settlements, the settlement itself, the day's reconciliation
    stray = f"X{uuid.uuid4().hex[:20]}"  # paid at a channel, unknown to the platform: a difference to resolve
    alipay = parties.current().channel("alipay")
    assert alipay.pay(out_trade_no=stray, amount=456, auth_code=payment_code(client, region, patient, "alipay"),
                      description="stray").state == "paid"
    admin = browser.new_page(viewport={"width": 1280, "height": 900})
    admin.on("pageerror", lambda e: errors.append(str(e)))
    login(admin, url)
    admin.click("text=混合支付")
    admin.wait_for_selector("#chart-payers canvas")
    assert int(admin.text_content("#stat-count")) >= 1
    row = admin.locator(f"#settlement-rows tr[data-settlement='{settlement_no}']")
    assert row.locator("[data-state]").get_attribute("data-state") == "completed"
    assert bill_no in row.text_content()
    admin.select_option("#state-filter", "compensated")
    row.wait_for(state="detached")
    admin.select_option("#state-filter", "completed")
    row.wait_for()
    _shot(admin, "payment-console.png")
    row.locator("a").click()
    admin.wait_for_selector("#chart-settlement canvas")
    assert admin.get_attribute("#settlement-state", "data-state") == "completed"
    assert {tr.get_attribute("data-payer"): tr.get_attribute("data-status")
            for tr in admin.locator("#payers tr[data-payer]").all()} == \
        {"medical_insurance": "settled", "commercial_insurance": "captured", "cash": "paid"}
    assert admin.locator("#items tbody tr").count() == len(ITEMS)
    steps = admin.locator("#events li").evaluate_all("ls => ls.map(l => l.dataset.step + ':' + l.dataset.outcome)")
    assert steps[0] == "start:ok" and steps[-1] == "finish:ok" and "capture:ok" in steps, steps
    assert admin.locator("#refunds tbody tr").text_content().strip() == "没有退款"
    _shot(admin, "payment-settlement.png")

    admin.goto(f"{url}/admin/payment/reconciliation")
    admin.wait_for_selector("#recon-run")
    assert admin.input_value("#recon-day") == china_today().isoformat()
    admin.click("#recon-run")
    admin.wait_for_selector("#recon-notice", timeout=60_000)
    results = {tr.get_attribute("data-party"): tr.get_attribute("data-result")
               for tr in admin.locator("#recon-runs tr[data-party]").all()}
    assert set(results) == {"medins", "insurer", "wechat", "alipay", "unionpay"}
    assert all(r in ("matched", "differences") for r in results.values()), results
    assert results["alipay"] == "differences"
    item = admin.locator("#recon-items tr[data-state=open]", has_text=stray)
    assert "平台无记录" in item.text_content()
    item.locator("input[name=resolution]").fill("已在支付宝原路退回，工单 42")
    item.locator("button[type=submit]").click()
    admin.wait_for_selector("#recon-notice:has-text('已处理')")
    done = admin.locator("#recon-items tr", has_text=stray)
    assert done.get_attribute("data-state") == "resolved" and "工单 42" in done.text_content()
    assert admin.request.post(f"{url}/admin/payment/reconciliation", form={"day": china_today().isoformat()}).status == 403
    _shot(admin, "payment-reconciliation.png")
    assert alipay.reverse(out_trade_no=stray).state == "reversed"  # what the resolution says was done

    # -- the auditor: reads the same pages, cannot reconcile or resolve
    auditor = browser.new_page()
    login(auditor, url, "auditor", "smartcare-audit")
    auditor.goto(f"{url}/admin/payment/reconciliation")
    auditor.wait_for_selector("#recon-readonly")
    assert auditor.locator("#recon-run").count() == 0 and auditor.locator("form.resolve").count() == 0
    assert auditor.locator("#recon-runs tr[data-party=alipay]").get_attribute("data-result") == "differences"
    refused = auditor.request.post(f"{url}/admin/payment/reconciliation", form={"day": china_today().isoformat()},
                                   headers={"HX-Request": "true"})
    assert refused.status == 403
    auditor.goto(f"{url}/admin/payment/settlements/{settlement_no}")
    auditor.wait_for_selector("#chart-settlement canvas")
    assert not errors, errors
    for p in (page, admin, auditor):
        p.close()


def test_resident_api_answers_only_for_the_callers_bills(client, payment_region):
    region = payment_region
    region.calm()
    patient = new_patient(client, region, channels=("unionpay", "wechat"))
    bill_no = _bill(client, region, patient)
    facility = region.hospital[0]
    me = headers(patient.who)
    mine = client.get("/api/v1/payment/me/bills", headers=me)
    assert mine.status_code == 200, mine.text
    [found] = [b for b in mine.json() if b["bill_no"] == bill_no]
    assert found["state"] == "open" and found["card_no"] == patient.card_no and found["settlement"] is None
    assert found["channels"] == ["wechat", "unionpay"] and "*" in found["patient"]
    shares = found["breakdown"]
    assert shares["fund_pay"] + shares["account_pay"] + shares["cash_pay"] == found["total"] and not shares["direct_pay"]

    stranger = resident(client)  # holds no card of this patient
    assert client.get("/api/v1/payment/me/bills", headers=headers(stranger)).json() == []
    page = client.get("/h5/bills", headers=headers(stranger))
    assert page.status_code == 200 and "暂无账单" in page.text and bill_no not in page.text
    assert bill_no in client.get("/h5/bills", headers=me).text
    form = {"card_no": patient.card_no, "channel": "wechat"}
    assert client.post(f"/h5/bills/{facility}/{bill_no}/pay", data=form, headers=me).status_code == 403  # not htmx
    assert client.post(f"/h5/bills/{facility}/{bill_no}/pay", data=form,
                       headers={**headers(stranger), "HX-Request": "true"}).status_code == 404
    pay = f"/api/v1/payment/me/bills/{facility}/{bill_no}/pay"
    theirs = client.post(pay, json={"card_no": patient.card_no, "channel": "wechat"}, headers=headers(stranger))
    missing = client.post(f"/api/v1/payment/me/bills/{facility}/Bnone/pay", json={"card_no": patient.card_no,
                                                                                   "channel": "wechat"}, headers=me)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"] == missing.json()["error"]
    assert client.post(pay, json={"card_no": "000", "channel": "wechat"}, headers=me).status_code == 404
    unbound = client.post(pay, json={"card_no": patient.card_no, "channel": "alipay"}, headers=me)
    assert unbound.status_code == 422 and unbound.json()["field"] == "channel"

    paid = client.post(pay, json={"card_no": patient.card_no, "channel": "unionpay"}, headers=me)
    assert paid.status_code == 200, paid.text
    s = paid.json()
    assert s["state"] == "completed" and {p["payer"]: p["status"] for p in s["payers"]}["cash"] == "paid"
    again = client.post(pay, json={"card_no": patient.card_no, "channel": "wechat"}, headers=me)
    assert again.status_code == 200 and again.json()["settlement_no"] == s["settlement_no"]
    [after] = [b for b in client.get("/api/v1/payment/me/bills", headers=me).json() if b["bill_no"] == bill_no]
    assert after["state"] == "settled" and after["breakdown"] is None
    assert after["settlement"]["settlement_no"] == s["settlement_no"]


@pytest.mark.browser
def test_the_terminal_bills_a_scanned_patient_and_settles_at_once(browser, client, payment_region):
    from tests.healthcard.card_support import code

    region = payment_region
    region.calm()
    patient = new_patient(client, region, balance=1_000)
    facility = region.hospital[0]
    page = browser.new_page()
    login(page, region.url)
    page.goto(f"{region.url}/admin/healthcard/terminal")
    page.select_option("#facility", facility)
    page.fill("#code", code(client, patient.who, patient.card_no))
    page.click("#scan-form button[type=submit]")
    page.wait_for_selector("#terminal-bill")
    page.select_option("#terminal-channel", "alipay")
    page.fill("#terminal-items", "A001,血常规,甲,25.00,2\nX9,bad line")
    page.click("#terminal-settle")
    page.wait_for_selector("#terminal-error")
    assert "line 2" in page.text_content("#terminal-error")  # nothing billed: the cashier corrects the line
    page.fill("#terminal-items", "A001,血常规,甲,25.00,2\nC001,进口敷料,丙,60.00,1")
    page.click("#terminal-settle")
    page.wait_for_selector("#terminal-settlement")
    assert page.get_attribute("#terminal-settlement", "data-state") == "completed"
    assert "¥110.00" in page.text_content("#terminal-settlement")
    no = page.text_content("#terminal-settlement a")
    done = signed(client, region.hospital, "GET", f"/api/v1/payment/settlements/{no}").json()
    assert done["state"] == "completed" and done["channel"] == "alipay" and done["total"] == 11_000
