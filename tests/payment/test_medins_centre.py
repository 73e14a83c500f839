"""The medical-insurance centre's sandbox, driven over real HTTP through the platform's client: the
split, idempotency by msgid, reversal (2208) and 冲正 (2601), the faults a saga must survive, the
gateway's signature, and reconciliation (3201/3202)."""

from __future__ import annotations

import itertools
import time
from decimal import Decimal

import httpx
import pytest
from sandbox_support import serve_app

from smartcare.payment import insurance, remote
from smartcare.payment.insurance import Item
from smartcare.payment.medins import (
    PATH,
    DetailIn,
    MedicalInsuranceCentre,
    dumps,
    gateway_headers,
)
from smartcare.payment.sandbox.medins import create_app
from smartcare.platform.clock import china_today

FACILITY = "500103H001"
PERSON = "P500000000001"
ITEMS = [Item("A001", "血常规", "甲", 50_000, 1), Item("B001", "CT 平扫", "乙", 100_000, 1),
         Item("C001", "营养补充剂", "丙", 10_000, 2, price_cap=None), Item("A002", "换药", "甲", 3_000, 2, price_cap=2_500)]
AMOUNTS = ("medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
           "act_pay_dedc", "hifp_pay", "acct_pay", "psn_cash_pay", "balc")


@pytest.fixture
def url():
    with serve_app(create_app(default_balance=5_000)) as base:
        yield base


@pytest.fixture
def centre(url):
    with MedicalInsuranceCentre(url, fixmedins_code=FACILITY, fixmedins_name="测试医院", timeout=5) as c:
        yield c


_seq = itertools.count(1)


def msgid(centre: MedicalInsuranceCentre) -> str:
    return centre.new_msgid(next(_seq))


def put_person(url: str, **books) -> None:
    body = {"insutype": "310", "balance": 30_000, "deductible_used": 10_000, "fund_paid": 0} | books
    httpx.put(f"{url}/_sandbox/persons/{PERSON}", json=body).raise_for_status()


def books(url: str) -> dict:
    return httpx.get(f"{url}/_sandbox/books").json()


def set_faults(url: str, **faults) -> None:
    httpx.put(f"{url}/_sandbox/faults", json=faults).raise_for_status()


def bill(**overrides) -> dict:
    return {"psn_no": PERSON, "insutype": "employee", "mdtrt_id": "MD0001", "hospital_level": 3, "items": ITEMS} | overrides


def split(s) -> tuple:
    return tuple(getattr(s, name) for name in AMOUNTS)


def wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the sandbox did not get there in time"
        time.sleep(0.05)


def test_presettle_books_nothing_and_settle_books_the_same_split(url, centre):
    put_person(url)
    before = books(url)
    pre = centre.presettle(msgid=msgid(centre), **bill())
    assert books(url) == before
    assert pre.setl_id is None

    done = centre.settle(msgid=msgid(centre), **bill())
    assert split(done) == split(pre)
    assert done.setl_id
    expected = insurance.settle(ITEMS, insurance.load_policies()[("employee", 3)], deductible_used=10_000,
                                fund_paid=0, account_balance=30_000)
    assert (done.hifp_pay, done.acct_pay, done.psn_cash_pay, done.overlmt_selfpay) == \
        (expected.hifp_pay, expected.acct_pay, expected.psn_cash_pay, 1_000)
    assert done.hifp_pay + done.acct_pay + done.psn_cash_pay == done.medfee_sumamt == 176_000
    person = books(url)["persons"][PERSON]
    assert person["balance"] == 30_000 - done.acct_pay == done.balc
    assert person["deductible_used"] == expected.deductible_used_after
    assert person["fund_paid"] == done.hifp_pay


def test_without_the_account_and_for_a_new_person(url, centre):
    s = centre.settle(msgid=msgid(centre), **bill(psn_no="P-NEW", use_account=False))
    assert s.acct_pay == 0 and s.balc == 5_000  # default_balance, untouched
    s = centre.settle(msgid=msgid(centre), **bill(psn_no="P-NEW", mdtrt_id="MD0002"))
    assert 0 < s.acct_pay <= 5_000 and s.balc == 5_000 - s.acct_pay
    with pytest.raises(remote.Refused, match="insutype 390 is not person P-NEW's insurance"):
        centre.settle(msgid=msgid(centre), **bill(psn_no="P-NEW", insutype="resident"))


def test_settle_twice_with_the_same_msgid_books_once(url, centre):
    put_person(url)
    m = msgid(centre)
    first = centre.settle(msgid=m, **bill())
    again = centre.settle(msgid=m, **bill())
    assert again == first
    assert len(books(url)["settlements"]) == 1
    assert books(url)["persons"][PERSON]["balance"] == 30_000 - first.acct_pay
    with pytest.raises(remote.Refused, match="already used for a different settlement"):
        centre.settle(msgid=m, **bill(mdtrt_id="MD9999"))


def test_reversal_restores_accumulators_and_balance(url, centre):
    put_person(url)
    before = books(url)["persons"][PERSON]
    first = centre.settle(msgid=msgid(centre), **bill())
    centre.reverse_settlement(msgid=msgid(centre), setl_id=first.setl_id, mdtrt_id="MD0001", psn_no=PERSON)
    assert books(url)["persons"][PERSON] == before
    assert books(url)["settlements"][0]["state"] == "reversed"
    centre.reverse_settlement(msgid=msgid(centre), setl_id=first.setl_id, mdtrt_id="MD0001", psn_no=PERSON)
    assert books(url)["persons"][PERSON] == before  # idempotent: not restored twice

    second = centre.settle(msgid=msgid(centre), **bill())
    assert split(second) == split(first) and second.setl_id != first.setl_id
    with pytest.raises(remote.Refused, match="no such settlement"):
        centre.reverse_settlement(msgid=msgid(centre), setl_id="NOPE", mdtrt_id="MD0001", psn_no=PERSON)
    with pytest.raises(remote.Refused, match="input.data.psn_no"):
        centre.reverse_settlement(msgid=msgid(centre), setl_id=second.setl_id, mdtrt_id="MD0001", psn_no="OTHER")


def test_2601_of_a_settled_message_reverses_it(url, centre):
    put_person(url)
    before = books(url)["persons"][PERSON]
    m = msgid(centre)
    centre.settle(msgid=m, **bill())
    centre.reverse_message(msgid=msgid(centre), omsgid=m, oinfno="2207", psn_no=PERSON)
    centre.reverse_message(msgid=msgid(centre), omsgid=m, oinfno="2207", psn_no=PERSON)  # idempotent
    assert books(url)["persons"][PERSON] == before
    assert books(url)["settlements"][0]["state"] == "reversed"
    with pytest.raises(remote.Refused, match=f"msgid {m} was reversed"):
        centre.settle(msgid=m, **bill())


def test_2601_of_an_unseen_message_refuses_it_later(url, centre):
    put_person(url)
    m = msgid(centre)
    centre.reverse_message(msgid=msgid(centre), omsgid=m, oinfno="2207", psn_no=PERSON)
    with pytest.raises(remote.Refused, match="was reversed"):
        centre.settle(msgid=m, **bill())
    assert books(url)["settlements"] == []


def test_timeout_fault_gives_outcome_unknown_and_the_work_still_happens(url):
    put_person(url)
    set_faults(url, timeout=1, hang_seconds=0.6)
    with MedicalInsuranceCentre(url, fixmedins_code=FACILITY, timeout=0.2) as impatient:
        m = msgid(impatient)
        with pytest.raises(remote.OutcomeUnknown):
            impatient.settle(msgid=m, **bill())
    wait_for(lambda: len(books(url)["settlements"]) == 1)
    set_faults(url)
    with MedicalInsuranceCentre(url, fixmedins_code=FACILITY, timeout=5) as centre:
        assert centre.settle(msgid=m, **bill()).setl_id == books(url)["settlements"][0]["setl_id"]


def test_2601_while_a_timed_out_2207_is_still_held_wins(url):
    put_person(url)
    before = books(url)["persons"][PERSON]
    set_faults(url, timeout=1, hang_seconds=1.0)
    with MedicalInsuranceCentre(url, fixmedins_code=FACILITY, timeout=0.2) as impatient:
        m = msgid(impatient)
        with pytest.raises(remote.OutcomeUnknown):
            impatient.settle(msgid=m, **bill())
    set_faults(url)
    with MedicalInsuranceCentre(url, fixmedins_code=FACILITY, timeout=5) as centre:
        centre.reverse_message(msgid=msgid(centre), omsgid=m, oinfno="2207", psn_no=PERSON)
        time.sleep(1.2)  # the held 2207 runs now, and finds its msgid reversed
        assert books(url)["settlements"] == []
        assert books(url)["persons"][PERSON] == before
        with pytest.raises(remote.Refused, match="was reversed"):
            centre.settle(msgid=m, **bill())


def test_lost_reply_gives_outcome_unknown_and_2601_undoes_the_work(url, centre):
    put_person(url)
    before = books(url)["persons"][PERSON]
    set_faults(url, lost_reply=1, hang_seconds=0.6)
    with MedicalInsuranceCentre(url, fixmedins_code=FACILITY, timeout=0.2) as impatient:
        m = msgid(impatient)
        with pytest.raises(remote.OutcomeUnknown):
            impatient.settle(msgid=m, **bill())
    assert [s["state"] for s in books(url)["settlements"]] == ["settled"]  # done before the reply was held
    set_faults(url)
    centre.reverse_message(msgid=msgid(centre), omsgid=m, oinfno="2207", psn_no=PERSON)
    assert [s["state"] for s in books(url)["settlements"]] == ["reversed"]
    assert books(url)["persons"][PERSON] == before


def test_error_fault_is_refused_and_books_nothing(url, centre):
    put_person(url)
    before = books(url)
    set_faults(url, error=1)
    with pytest.raises(remote.Refused) as refused:
        centre.settle(msgid=msgid(centre), **bill())
    assert refused.value.code == "-1" and "nothing was done" in refused.value.message
    assert books(url)["settlements"] == before["settlements"]
    assert books(url)["persons"] == before["persons"]


def test_duplicate_fault_books_once(url, centre):
    put_person(url)
    set_faults(url, duplicate=1)
    s = centre.settle(msgid=msgid(centre), **bill())
    assert len(books(url)["settlements"]) == 1
    assert books(url)["persons"][PERSON]["balance"] == 30_000 - s.acct_pay


def _post(url: str, body: str, *, pass_token: str = "sandbox-passtoken", now: float | None = None) -> httpx.Response:
    headers = gateway_headers(paasid=FACILITY, pass_token=pass_token, now=now)
    return httpx.post(url + PATH, content=body.encode(), headers=headers)


def test_the_gateway_turns_away_bad_signatures(url):
    with MedicalInsuranceCentre(url, fixmedins_code=FACILITY, pass_token="wrong", timeout=5) as wrong:
        body = dumps(wrong.envelope("2206", "m1", {}))
        with pytest.raises(remote.Refused) as refused:
            wrong.settle(msgid=msgid(wrong), **bill())
    assert refused.value.code == "401" and "x-tif-signature does not match" in refused.value.message
    stale = _post(url, body, now=time.time() - 301)
    assert stale.status_code == 401 and "more than 300 s" in stale.json()["message"]
    missing = httpx.post(url + PATH, content=body.encode())
    assert missing.status_code == 401 and "x-tif-paasid header is missing" in missing.json()["message"]
    assert books(url)["settlements"] == []


def test_malformed_messages_are_refused_naming_the_field(url, centre):
    three_decimals = {"data": {"psn_no": PERSON, "insutype": "310", "mdtrt_id": "MD1", "hosp_lv": 3,
                               "acct_used_flag": "1", "medfee_sumamt": Decimal("12.345")},
                      "feedetail": [{"feedetl_sn": "1", "med_list_codg": "A", "medins_list_name": "a",
                                     "chrgitm_lv": "01", "pric": Decimal("12.345"), "cnt": 1,
                                     "det_item_fee_sumamt": Decimal("12.345")}]}
    with pytest.raises(remote.Refused, match=r"input.data.medfee_sumamt 12.345 has more than 2 decimal places"):
        centre.call("2207", msgid(centre), three_decimals)

    wrong_sum = {"data": three_decimals["data"] | {"medfee_sumamt": Decimal("20.00")},
                 "feedetail": [three_decimals["feedetail"][0] | {"pric": Decimal("10.00"), "cnt": 2,
                                                                 "det_item_fee_sumamt": Decimal("21.00")}]}
    with pytest.raises(remote.Refused, match=r"feedetail\[0\].det_item_fee_sumamt 21.00 is not pric × cnt = 20.00"):
        centre.call("2207", msgid(centre), wrong_sum)
    with pytest.raises(remote.Refused, match="unsupported infno '9999'"):
        centre.call("9999", msgid(centre), {})

    not_json = _post(url, "{not json").json()
    assert not_json["infcode"] == -1 and "not JSON" in not_json["err_msg"]
    envelope = centre.envelope("2206", "m1", {})
    del envelope["msgid"]
    no_msgid = _post(url, dumps(envelope)).json()
    assert no_msgid["infcode"] == -1 and no_msgid["err_msg"] == "envelope.msgid is missing"
    too_long = _post(url, dumps(centre.envelope("2206", "m1", {}) | {"msgid": "x" * 31})).json()
    assert "envelope.msgid is 31 characters" in too_long["err_msg"]
    assert books(url)["settlements"] == []


def test_msgid_follows_the_national_shape(centre):
    m = centre.new_msgid(123_456)
    assert m.startswith(FACILITY) and m.endswith("3456") and len(m) == len(FACILITY) + 18
    long = MedicalInsuranceCentre("http://127.0.0.1:1", fixmedins_code="H" + "9" * 20, timeout=1)
    assert len(long.new_msgid(1)) == 30
    long.close()


def test_totals_reconciliation(url, centre):
    put_person(url)
    a = centre.settle(msgid=msgid(centre), **bill())
    b = centre.settle(msgid=msgid(centre), **bill(mdtrt_id="MD0002"))
    c = centre.settle(msgid=msgid(centre), **bill(mdtrt_id="MD0003"))
    centre.reverse_settlement(msgid=msgid(centre), setl_id=c.setl_id, mdtrt_id="MD0003", psn_no=PERSON)
    medfee, fund, acct = a.medfee_sumamt + b.medfee_sumamt, a.hifp_pay + b.hifp_pay, a.acct_pay + b.acct_pay

    ok = centre.reconcile_totals(msgid=msgid(centre), day=china_today(), medfee_sumamt=medfee,
                                 fund_pay_sumamt=fund, acct_pay=acct, setl_cnt=2)
    assert ok.balanced, ok.description
    assert (ok.centre_medfee_sumamt, ok.centre_fund_pay_sumamt, ok.centre_acct_pay, ok.centre_setl_cnt) == \
        (medfee, fund, acct, 2)

    off = centre.reconcile_totals(msgid=msgid(centre), day=china_today(), medfee_sumamt=medfee + 100,
                                  fund_pay_sumamt=fund, acct_pay=acct, setl_cnt=3)
    assert not off.balanced
    assert "medfee_sumamt" in off.description and "setl_cnt: hospital 3, centre 2" in off.description
    assert off.centre_medfee_sumamt == medfee

    other = MedicalInsuranceCentre(url, fixmedins_code="500103H002", timeout=5)
    assert other.reconcile_totals(msgid=other.new_msgid(1), day=china_today(), medfee_sumamt=0, fund_pay_sumamt=0,
                                  acct_pay=0, setl_cnt=0).balanced  # only the facility's own settlements count
    other.close()


def test_details_reconciliation(url, centre):
    put_person(url)
    ma, mb, mc, md = (msgid(centre) for _ in range(4))
    a = centre.settle(msgid=ma, **bill())
    b = centre.settle(msgid=mb, **bill(mdtrt_id="MD0002"))
    c = centre.settle(msgid=mc, **bill(mdtrt_id="MD0003"))  # the hospital lost this one
    d = centre.settle(msgid=md, **bill(mdtrt_id="MD0004"))
    centre.reverse_settlement(msgid=msgid(centre), setl_id=d.setl_id, mdtrt_id="MD0004", psn_no=PERSON)

    def row(s, m, **changes):
        return DetailIn(msgid=m, setl_id=s.setl_id, medfee_sumamt=s.medfee_sumamt, fund_pay_sumamt=s.hifp_pay,
                        acct_pay=s.acct_pay) if not changes else \
            DetailIn(**{"msgid": m, "setl_id": s.setl_id, "medfee_sumamt": s.medfee_sumamt,
                        "fund_pay_sumamt": s.hifp_pay, "acct_pay": s.acct_pay} | changes)

    agree = [row(a, ma), row(b, mb), row(c, mc, setl_id=None), row(d, md, reversed=True)]
    assert centre.reconcile_details(msgid=msgid(centre), day=china_today(), details=agree) == []

    listed = [row(a, ma), row(b, mb, acct_pay=b.acct_pay + 1), row(d, md),
              DetailIn(msgid="GHOST", setl_id="NOPE", medfee_sumamt=100, fund_pay_sumamt=0, acct_pay=0)]
    found = {m.reason: m for m in centre.reconcile_details(msgid=msgid(centre), day=china_today(), details=listed)}
    assert set(found) == {"amounts_differ", "missing_at_hospital", "missing_at_centre", "state_differs"}
    assert found["amounts_differ"].setl_id == b.setl_id and "acct_pay" in found["amounts_differ"].description
    assert found["missing_at_hospital"].setl_id == c.setl_id and found["missing_at_hospital"].msgid == mc
    assert found["missing_at_centre"].setl_id == "NOPE"
    assert found["state_differs"].setl_id == d.setl_id
    assert "hospital settled, centre reversed" in found["state_differs"].description
