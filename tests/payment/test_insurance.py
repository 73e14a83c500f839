"""The medical-insurance engine on worked examples, each fen accounted for by a rule. Policy used:
employee at a 三级 hospital — deductible 800.00, fund 85 %, 乙类 self-pay-first 10 %, cap 500,000.00."""

from __future__ import annotations

import pytest

from smartcare.payment.insurance import Item, Policy, load_policies, settle
from smartcare.platform.errors import InvalidInput

POLICY = load_policies()[("employee", 3)]


def _balanced(s) -> None:
    """Every fen of the bill is paid by exactly one payer, and the explanation adds up to each payer's total."""
    assert s.hifp_pay + s.acct_pay + s.psn_cash_pay == s.medfee_sumamt
    assert s.explained("fund") == s.hifp_pay
    assert s.explained("account") == s.acct_pay
    assert s.explained("patient") == s.psn_cash_pay
    assert s.fulamt_ownpay_amt + s.overlmt_selfpay + s.preselfpay_amt + s.inscp_scp_amt == s.medfee_sumamt


def test_deductible_spanning_two_visits():
    first = settle([Item("A1", "血常规", "甲", 50_000, 1)], POLICY, deductible_used=0, fund_paid=0, account_balance=0)
    assert (first.act_pay_dedc, first.hifp_pay, first.psn_cash_pay) == (50_000, 0, 50_000)
    assert first.deductible_used_after == 50_000
    second = settle([Item("A2", "CT", "甲", 100_000, 1)], POLICY, deductible_used=first.deductible_used_after,
                    fund_paid=first.fund_paid_after, account_balance=0)
    # 300.00 of the deductible is left; 85 % of the other 700.00 is 595.00
    assert (second.act_pay_dedc, second.hifp_pay, second.psn_cash_pay) == (30_000, 59_500, 40_500)
    assert second.deductible_used_after == 80_000
    rules = {(line.payer, line.rule): line.amount for line in second.lines}
    assert rules[("patient", "deductible")] == 30_000 and rules[("patient", "coinsurance")] == 10_500
    _balanced(first)
    _balanced(second)


def test_annual_cap_reached_in_the_middle_of_a_bill():
    s = settle([Item("S1", "手术", "甲", 1_000_000, 1)], POLICY, deductible_used=80_000,
               fund_paid=POLICY.annual_cap - 100_000, account_balance=0)
    assert s.hifp_pay == 100_000  # 85 % would be 8,500.00; only 1,000.00 of the cap was left
    assert s.fund_paid_after == POLICY.annual_cap
    rules = {(line.payer, line.rule): line.amount for line in s.lines}
    assert rules[("patient", "above_annual_cap")] == 750_000 and rules[("fund", "annual_cap_reached")] == -750_000
    _balanced(s)
    after = settle([Item("S2", "复查", "甲", 10_000, 1)], POLICY, deductible_used=80_000, fund_paid=s.fund_paid_after,
                   account_balance=0)
    assert after.hifp_pay == 0 and after.psn_cash_pay == 10_000


def test_category_b_self_pay_first_c_fully_self_paid_and_price_cap():
    items = [Item("B1", "乙类药", "乙", 12_345, 3),          # 370.35: 10 % first = 37.03 (rounded down)
             Item("C1", "丙类耗材", "丙", 20_000, 1),         # fully self-paid
             Item("P1", "限价检查", "甲", 12_000, 2, price_cap=10_000)]  # 40.00 above the cap
    s = settle(items, POLICY, deductible_used=80_000, fund_paid=0, account_balance=0)
    assert s.medfee_sumamt == 37_035 + 20_000 + 24_000
    assert s.preselfpay_amt == 3_703 and s.fulamt_ownpay_amt == 20_000 and s.overlmt_selfpay == 4_000
    assert s.inscp_scp_amt == (37_035 - 3_703) + 20_000
    assert s.hifp_pay == s.inscp_scp_amt * 8500 // 10_000
    per_item = {(line.item, line.rule): line.amount for line in s.lines if line.item}
    assert per_item == {("B1", "category_b_self_pay_first"): 3_703, ("C1", "category_c_self_paid"): 20_000,
                        ("P1", "over_price_cap"): 4_000}
    _balanced(s)


def test_personal_account_pays_what_it_may_until_it_is_exhausted():
    items = [Item("A1", "门诊", "甲", 200_000, 1), Item("C1", "丙类", "丙", 10_000, 1)]
    rich = settle(items, POLICY, deductible_used=0, fund_paid=0, account_balance=10_000_000)
    # deductible 800.00 + 15 % of 1,200.00 = 980.00; never the 丙类 100.00
    assert rich.acct_pay == 98_000 and rich.psn_cash_pay == 10_000
    poor = settle(items, POLICY, deductible_used=0, fund_paid=0, account_balance=3_000)
    assert poor.acct_pay == 3_000 and poor.psn_cash_pay == 200_000 + 10_000 - poor.hifp_pay - 3_000
    empty = settle(items, POLICY, deductible_used=0, fund_paid=0, account_balance=0)
    assert empty.acct_pay == 0
    for s in (rich, poor, empty):
        _balanced(s)


def test_resident_policy_keeps_the_self_pay_first_part_out_of_the_account():
    resident = load_policies()[("resident", 2)]
    s = settle([Item("B1", "乙类药", "乙", 100_000, 1)], resident, deductible_used=60_000, fund_paid=0,
               account_balance=1_000_000)
    assert s.preselfpay_amt == 15_000 and s.hifp_pay == 85_000 * 7000 // 10_000
    assert s.acct_pay == 85_000 - s.hifp_pay  # the coinsurance only
    _balanced(s)


def test_bad_bills_and_policies_are_refused_with_the_field():
    for bad, field in (([], "items"), ([Item("X", "x", "丁", 1, 1)], "items[0].category"),
                       ([Item("X", "x", "甲", 1.5, 1)], "items[0].unit_price"),
                       ([Item("X", "x", "甲", 100, 0)], "items[0].quantity")):
        with pytest.raises(InvalidInput) as err:
            settle(bad, POLICY, deductible_used=0, fund_paid=0, account_balance=0)
        assert err.value.field == field
    with pytest.raises(InvalidInput) as err:
        load_policies("policies:\n  employee:\n    3: {deductible: 800.5, fund_ratio_bp: 8500, annual_cap: 1, selfpay_first_bp: 0}\n")
    assert err.value.field == "policies.employee.3.deductible"
    with pytest.raises(InvalidInput):
        load_policies("policies:\n  employee:\n    3: {deductible: 1, fund_ratio_bp: 18500, annual_cap: 1, selfpay_first_bp: 0}\n")
    assert isinstance(POLICY, Policy)


def test_negative_year_to_date_figures_are_refused():
    for name in ("deductible_used", "fund_paid", "account_balance"):
        args = {"deductible_used": 0, "fund_paid": 0, "account_balance": 0, name: -1}
        with pytest.raises(InvalidInput) as err:
            settle([Item("A", "a", "甲", 100, 1)], POLICY, **args)
        assert err.value.field == name
    with pytest.raises(InvalidInput):
        load_policies("policies:\n  employee:\n    3: {deductible: 1, fund_ratio_bp: 1, annual_cap: 1, selfpay_first_bp: 0,"
                      " account_pays_selfpay_first: 'false'}\n")
