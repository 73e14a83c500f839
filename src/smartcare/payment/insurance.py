"""Basic medical insurance settlement (医保结算): policy as data, a bill in, the breakdown out — with
every fen explained by the rule that produced it.

Pure functions (no database): the caller passes the person's annual accumulators (deductible used,
fund paid this year) and personal-account balance, and stores the new accumulators with the
settlement. Field names follow the national medical-insurance platform's settlement output
(2207): ``medfee_sumamt`` total, ``fulamt_ownpay_amt`` fully self-paid (丙类), ``overlmt_selfpay``
above the price cap, ``preselfpay_amt`` self-pay-first part of 乙类, ``inscp_scp_amt`` within policy
scope, ``act_pay_dedc`` deductible paid (起付线), ``hifp_pay`` pooled fund, ``acct_pay`` personal
account, ``psn_cash_pay`` cash.

Order of the rules, per item then per bill:
1. above the item's price cap → self-paid (overlmt_selfpay);
2. 丙类 → fully self-paid (fulamt_ownpay_amt);
3. 乙类 → ``selfpay_first`` of it self-paid first (preselfpay_amt), the rest in scope;
4. 甲类 → in scope;
5. the deductible's unused part of this year is paid from the in-scope amount (act_pay_dedc);
6. the fund pays ``fund_ratio`` of the rest, rounded down to the fen, up to what the annual cap
   leaves (hifp_pay);
7. the personal account pays the patient's share it may cover, up to its balance (acct_pay);
8. cash pays the rest (psn_cash_pay).
Ratios are in basis points (1/10,000) so that all arithmetic is on integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import yaml

from smartcare.platform.errors import InvalidInput

CATEGORIES = ("甲", "乙", "丙")
INSURANCE_TYPES = ("employee", "resident")


@dataclass(frozen=True)
class Policy:
    """One insurance type at one hospital level, for one year."""

    insurance_type: str
    hospital_level: int
    deductible: int          # 起付线, fen per year
    fund_ratio_bp: int       # 统筹支付比例, basis points
    annual_cap: int          # 封顶线, fen of fund payments per year
    selfpay_first_bp: int    # 乙类先行自付比例, basis points
    account_pays_selfpay_first: bool = True  # whether the personal account may pay 乙类's self-pay-first part


def load_policies(text: str | None = None) -> dict[tuple[str, int], Policy]:
    """Policies from YAML (default: the package's ``policy.yaml``), keyed by (insurance type, level)."""
    raw = yaml.safe_load(text if text is not None else
                         resources.files("smartcare.payment").joinpath("policy.yaml").read_text(encoding="utf-8"))
    policies = {}
    for insurance_type, levels in raw["policies"].items():
        if insurance_type not in INSURANCE_TYPES:
            raise InvalidInput(f"unknown insurance type {insurance_type!r}", field=f"policies.{insurance_type}")
        for level, p in levels.items():
            where = f"policies.{insurance_type}.{level}"
            try:
                policy = Policy(insurance_type, int(level), **p)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"{where}: {exc}", field=where) from None
            if type(policy.account_pays_selfpay_first) is not bool:
                raise InvalidInput(f"{where}.account_pays_selfpay_first must be true or false",
                                   field=f"{where}.account_pays_selfpay_first")
            for name in ("deductible", "fund_ratio_bp", "annual_cap", "selfpay_first_bp"):
                value = getattr(policy, name)
                if type(value) is not int or value < 0 or (name.endswith("_bp") and value > 10_000):
                    raise InvalidInput(f"{where}.{name} must be a whole number of fen (basis points ≤ 10000)",
                                       field=f"{where}.{name}")
            policies[(insurance_type, int(level))] = policy
    return policies


@dataclass(frozen=True)
class Item:
    """One charge of a bill. Prices in fen; ``price_cap`` is the insurance's highest price for it."""

    code: str
    name: str
    category: str
    unit_price: int
    quantity: int
    price_cap: int | None = None

    @property
    def amount(self) -> int:
        return self.unit_price * self.quantity


@dataclass(frozen=True)
class Line:
    """One explained part of the settlement: who pays ``amount`` fen, by which rule, for which item."""

    payer: str   # "fund", "account" or "patient" (the patient's own share, before account and cash split it)
    rule: str
    amount: int
    item: str | None = None


@dataclass(frozen=True)
class Settlement:
    medfee_sumamt: int
    fulamt_ownpay_amt: int
    overlmt_selfpay: int
    preselfpay_amt: int
    inscp_scp_amt: int
    act_pay_dedc: int
    hifp_pay: int
    acct_pay: int
    psn_cash_pay: int
    deductible_used_after: int
    fund_paid_after: int
    lines: list[Line] = field(default_factory=list)

    def explained(self, payer: str) -> int:
        return sum(line.amount for line in self.lines if line.payer == payer)


def _bp(amount: int, bp: int) -> int:
    """``amount × bp / 10000`` rounded down to the fen (the patient's share gets the remainder)."""
    return amount * bp // 10_000


def _check(items: list[Item]) -> None:
    if not items:
        raise InvalidInput("a bill needs at least one item", field="items")
    for n, item in enumerate(items):
        where = f"items[{n}]"
        if item.category not in CATEGORIES:
            raise InvalidInput(f"{where}.category must be 甲, 乙 or 丙", field=f"{where}.category")
        for name in ("unit_price", "quantity"):
            value = getattr(item, name)
            if type(value) is not int or value < 0 or (name == "quantity" and value == 0):
                raise InvalidInput(f"{where}.{name} must be a whole number of fen (quantity ≥ 1)", field=f"{where}.{name}")
        if item.price_cap is not None and (type(item.price_cap) is not int or item.price_cap < 0):
            raise InvalidInput(f"{where}.price_cap must be a whole number of fen", field=f"{where}.price_cap")


def settle(items: list[Item], policy: Policy, *, deductible_used: int, fund_paid: int, account_balance: int) -> Settlement:
    """The breakdown of one bill for one insured person (see the module docstring for the rules)."""
    _check(items)
    for name, value in (("deductible_used", deductible_used), ("fund_paid", fund_paid), ("account_balance", account_balance)):
        if type(value) is not int or value < 0:
            raise InvalidInput(f"{name} must be a whole, non-negative number of fen", field=name)
    lines: list[Line] = []
    over_cap = full_own = self_first = in_scope = 0
    self_first_account = 0  # the part of 乙类's self-pay-first the personal account may pay
    for item in items:
        allowed_price = item.unit_price if item.price_cap is None else min(item.unit_price, item.price_cap)
        over = (item.unit_price - allowed_price) * item.quantity
        allowed = allowed_price * item.quantity
        if over:
            over_cap += over
            lines.append(Line("patient", "over_price_cap", over, item.code))
        if item.category == "丙":
            full_own += allowed
            lines.append(Line("patient", "category_c_self_paid", allowed, item.code))
            continue
        first = _bp(allowed, policy.selfpay_first_bp) if item.category == "乙" else 0
        if first:
            self_first += first
            lines.append(Line("patient", "category_b_self_pay_first", first, item.code))
        in_scope += allowed - first
    total = sum(item.amount for item in items)

    deductible = min(max(0, policy.deductible - deductible_used), in_scope)
    if deductible:
        lines.append(Line("patient", "deductible", deductible))
    base = in_scope - deductible
    by_ratio = _bp(base, policy.fund_ratio_bp)
    fund = min(by_ratio, max(0, policy.annual_cap - fund_paid))
    lines.append(Line("fund", "fund_ratio", by_ratio))
    if fund < by_ratio:
        lines.append(Line("fund", "annual_cap_reached", fund - by_ratio))
        lines.append(Line("patient", "above_annual_cap", by_ratio - fund))
    if base - by_ratio:
        lines.append(Line("patient", "coinsurance", base - by_ratio))

    # the personal account pays the in-scope self-pay (deductible, coinsurance, above cap) and, if the
    # policy says so, 乙类's self-pay-first part; never 丙类 or amounts above a price cap
    if policy.account_pays_selfpay_first:
        self_first_account = self_first
    payable_by_account = deductible + (base - fund) + self_first_account
    account = min(max(0, account_balance), payable_by_account)
    if account:
        lines.append(Line("account", "personal_account", account))
        lines.append(Line("patient", "paid_by_personal_account", -account))
    cash = total - fund - account
    return Settlement(
        medfee_sumamt=total, fulamt_ownpay_amt=full_own, overlmt_selfpay=over_cap, preselfpay_amt=self_first,
        inscp_scp_amt=in_scope, act_pay_dedc=deductible, hifp_pay=fund, acct_pay=account, psn_cash_pay=cash,
        deductible_used_after=deductible_used + deductible, fund_paid_after=fund_paid + fund, lines=lines)
