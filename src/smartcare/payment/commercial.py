"""Commercial insurance direct pay (商业保险直赔): what the insurer pays of a bill after basic insurance,
with every fen of the bill explained by the rule that produced it.

A pure function, like ``insurance.settle``: the caller (the insurer's books) passes the policy's annual
accumulators and stores the new ones. Rules, in order:
1. the bill total;
2. items the policy excludes — by code, or by category (typically 丙) — are not covered;
3. what basic insurance paid (fund + personal account) is not owed by anyone any more. It is
   attributed to the covered items only: basic insurance pays nothing of 丙 items, and a policy that
   excludes a 甲/乙 item by code would rather over-cover than under-cover, so the insurer assumes the
   basic share fell on what it covers. If basic insurance paid more than the covered items cost, the
   excess is attributed to the excluded items and never makes the covered part negative;
4. the unused part of this year's deductible is paid by the patient;
5. the insurer pays ``ratio_bp`` of the rest, rounded down to the fen (the patient keeps the remainder);
6. up to what the annual limit leaves.

``Claim.lines`` is a waterfall: the bill total, then one negative line per deduction, so that the lines
add up to exactly the insurer's ``amount``. Ratios are basis points; every amount is integer fen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from smartcare.payment.insurance import CATEGORIES
from smartcare.platform.errors import InvalidInput


def _fen(value: object) -> bool:
    return type(value) is int and value >= 0


@dataclass(frozen=True)
class CommercialPolicy:
    """One commercial medical policy of one insured person (the terms; usage is kept by the caller)."""

    policy_no: str
    insurer: str
    deductible: int          # annual, fen
    ratio_bp: int            # share of the eligible amount the insurer pays, basis points
    annual_limit: int        # fen the insurer pays per year at most
    excluded_codes: frozenset[str] = frozenset()
    excluded_categories: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in ("policy_no", "insurer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"policy.{name} must be a non-empty string", field=f"policy.{name}")
        for name in ("deductible", "annual_limit", "ratio_bp"):
            if not _fen(getattr(self, name)):
                raise InvalidInput(f"policy {self.policy_no}: {name} must be a whole, non-negative number"
                                   f" (got {getattr(self, name)!r})", field=f"policy.{name}")
        if self.ratio_bp > 10_000:
            raise InvalidInput(f"policy {self.policy_no}: ratio_bp is basis points, at most 10000 "
                               f"(got {self.ratio_bp})", field="policy.ratio_bp")
        for name in ("excluded_codes", "excluded_categories"):
            value = getattr(self, name)
            if not isinstance(value, frozenset) or not all(isinstance(v, str) and v for v in value):
                raise InvalidInput(f"policy {self.policy_no}: {name} must be a frozenset of non-empty strings",
                                   field=f"policy.{name}")
        unknown = sorted(self.excluded_categories - set(CATEGORIES))
        if unknown:
            raise InvalidInput(f"policy {self.policy_no}: excluded_categories {unknown} are not among "
                               f"{'/'.join(CATEGORIES)}", field="policy.excluded_categories")


class BillItem(Protocol):
    """What the engine reads of a charge (``insurance.Item`` and ``ClaimItem`` both fit)."""

    @property
    def code(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def amount(self) -> int: ...


@dataclass(frozen=True)
class ClaimItem:
    """One charge as the insurer sees it: the amount billed for it, in fen."""

    code: str
    name: str
    category: str
    amount: int


@dataclass(frozen=True)
class Line:
    """One step of the waterfall: ``amount`` fen (negative for a deduction) by ``rule``, for ``item``."""

    rule: str
    amount: int
    item: str | None = None


#: the waterfall's rules, in the order they apply
RULES = ("bill_total", "excluded_code", "excluded_category", "basic_insurance_paid", "deductible",
         "ratio_remainder", "annual_limit_reached")


@dataclass(frozen=True)
class Claim:
    amount: int                  # what the insurer pays
    total: int                   # the bill total
    excluded: int                # items the policy does not cover
    basic_attributed: int        # the part of basic insurance's payment that fell on covered items
    deductible: int              # deductible paid by the patient on this bill
    deductible_used_after: int
    paid_this_year_after: int
    lines: list[Line] = field(default_factory=list)

    def explained(self) -> int:
        """The lines' sum: always equal to ``amount``."""
        return sum(line.amount for line in self.lines)


def _check_items(items: Sequence[BillItem]) -> None:
    if not items:
        raise InvalidInput("a claim needs at least one item", field="items")
    for n, item in enumerate(items):
        where = f"items[{n}]"
        if not isinstance(item.code, str) or not item.code:
            raise InvalidInput(f"{where}.code must be a non-empty string", field=f"{where}.code")
        if item.category not in CATEGORIES:
            raise InvalidInput(f"{where}.category must be 甲, 乙 or 丙 (got {item.category!r})",
                               field=f"{where}.category")
        if not _fen(item.amount):
            raise InvalidInput(f"{where}.amount must be a whole, non-negative number of fen (got {item.amount!r})",
                               field=f"{where}.amount")


def claim(items: Sequence[BillItem], *, basic_paid: int, policy: CommercialPolicy, deductible_used: int,
          paid_this_year: int) -> Claim:
    """What ``policy`` pays of a bill of which basic insurance paid ``basic_paid`` (see the module docstring)."""
    _check_items(items)
    for name, value in (("basic_paid", basic_paid), ("deductible_used", deductible_used),
                        ("paid_this_year", paid_this_year)):
        if not _fen(value):
            raise InvalidInput(f"{name} must be a whole, non-negative number of fen (got {value!r})", field=name)
    total = sum(item.amount for item in items)
    if basic_paid > total:
        raise InvalidInput(f"basic_paid {basic_paid} is more than the bill total {total}", field="basic_paid")

    lines = [Line("bill_total", total)]
    excluded = 0
    for item in items:
        if item.code in policy.excluded_codes:
            rule = "excluded_code"
        elif item.category in policy.excluded_categories:
            rule = "excluded_category"
        else:
            continue
        excluded += item.amount
        if item.amount:
            lines.append(Line(rule, -item.amount, item.code))
    covered = total - excluded
    basic = min(basic_paid, covered)
    if basic:
        lines.append(Line("basic_insurance_paid", -basic))
    rest = covered - basic
    deductible = min(max(0, policy.deductible - deductible_used), rest)
    if deductible:
        lines.append(Line("deductible", -deductible))
    base = rest - deductible
    by_ratio = base * policy.ratio_bp // 10_000
    if base - by_ratio:
        lines.append(Line("ratio_remainder", by_ratio - base))
    amount = min(by_ratio, max(0, policy.annual_limit - paid_this_year))
    if amount < by_ratio:
        lines.append(Line("annual_limit_reached", amount - by_ratio))
    return Claim(amount=amount, total=total, excluded=excluded, basic_attributed=basic, deductible=deductible,
                 deductible_used_after=deductible_used + deductible, paid_this_year_after=paid_this_year + amount,
                 lines=lines)
