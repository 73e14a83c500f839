"""Money as integer fen (分).

Every amount in SmartCare is an ``int`` number of fen: sums, refunds and settlements must add
up to the fen, and a float cannot promise that (0.1 + 0.2 != 0.3). Yuan appear only at the
edges: ``parse_yuan`` reads them (through ``Decimal``, exactly) and ``format_yuan`` /
``yuan`` write them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Final, TypeAlias

__all__ = ["Fen", "format_yuan", "parse_yuan", "split_proportionally", "yuan"]

Fen: TypeAlias = int
"""An amount of money in fen (1 yuan = 100 fen)."""

_FEN_PER_YUAN: Final = 100

# Optional sign (before or after the currency sign), optional ¥/￥, digits with or without
# correct thousands separators, optional fraction. ASCII only: Decimal would happily read
# Arabic-Indic or full-width digits, which no payment file should contain.
_YUAN = re.compile(
    r"""
    (?P<sign1>[+-])?
    [¥￥]?
    (?P<sign2>[+-])?
    (?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)
    (?:\.(?P<frac>[0-9]+))?
    (?:元)?
    """,
    re.VERBOSE | re.ASCII,
)


def _require_int(fen: object, name: str = "fen") -> int:
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise TypeError(f"{name} must be an int number of fen, not {type(fen).__name__}")
    return fen


def yuan(fen: Fen) -> Decimal:
    """The amount in yuan as an exact ``Decimal`` with two places (1230 → Decimal('12.30'))."""
    return Decimal(_require_int(fen)).scaleb(-2)


def format_yuan(fen: Fen, *, symbol: bool = True) -> str:
    """Yuan for people: ``123456`` → ``"¥1,234.56"``, ``-1230`` → ``"-¥12.30"``."""
    whole, cents = divmod(abs(_require_int(fen)), _FEN_PER_YUAN)
    sign = "-" if fen < 0 else ""
    return f"{sign}{'¥' if symbol else ''}{whole:,}.{cents:02d}"


def parse_yuan(text: str | int | Decimal) -> Fen:
    """Read an amount in yuan and return it in fen, exactly.

    Accepts ``"12.3"``, ``"12.30"``, ``"1,234.56"``, ``"¥5"``, ``"-¥5"``, ``"5元"``, ints (whole
    yuan) and ``Decimal``. Trailing zeros beyond the fen are fine (``"12.300"``, as some hospital
    systems export); a non-zero digit beyond the fen is not, because it would have to be
    rounded and rounding is a business decision the caller must make explicitly.
    Floats are refused with ``TypeError``; anything that is not a finite amount with
    ``ValueError``.
    """
    if isinstance(text, bool):
        raise TypeError("parse_yuan() got a bool; pass the amount as str, int or Decimal")
    if isinstance(text, float):
        raise TypeError(
            f"parse_yuan() got the float {text!r}; floats cannot hold fen exactly, "
            "pass the amount as a str or Decimal"
        )
    if isinstance(text, int):
        return text * _FEN_PER_YUAN
    if isinstance(text, Decimal):
        amount = text
        shown = str(text)
    elif isinstance(text, str):
        shown = text.strip()
        m = _YUAN.fullmatch(shown)
        if m is None:
            raise ValueError(
                f"{shown!r} is not an amount in yuan; write it like 12.30, 1,234.56 or ¥5"
            )
        if m["sign1"] and m["sign2"]:
            raise ValueError(f"{shown!r} has two signs")
        negative = (m["sign1"] or m["sign2"]) == "-"
        digits = m["int"].replace(",", "") + (f".{m['frac']}" if m["frac"] else "")
        try:
            amount = Decimal(digits)
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
            raise ValueError(f"{shown!r} is not an amount in yuan") from exc
        if negative:
            amount = -amount
    else:
        raise TypeError(
            f"parse_yuan() takes a str, int or Decimal amount in yuan, not {type(text).__name__}"
        )

    if not amount.is_finite():
        raise ValueError(f"{shown!r} is not a finite amount")
    fen = amount * _FEN_PER_YUAN
    if fen != fen.to_integral_value():
        raise ValueError(
            f"{shown!r} has more than 2 decimal places; amounts are whole fen (0.01 yuan)"
        )
    return int(fen)


def split_proportionally(total_fen: Fen, weights: Sequence[int]) -> list[Fen]:
    """Split ``total_fen`` in proportion to ``weights`` so that the parts sum exactly to it.

    Largest-remainder method: every part first gets the floor of its exact share, then the
    fen left over go one each to the parts with the largest remainders (ties go to the earlier
    part, so the result is deterministic). A zero weight always gets 0. A negative total (a
    refund) is split as its magnitude and negated, so the parts mirror the original payment.
    """
    total = _require_int(total_fen, "total_fen")
    if not weights:
        raise ValueError("split_proportionally() needs at least one weight")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int):
            raise TypeError(f"weights must be ints, got {type(w).__name__}")
        if w < 0:
            raise ValueError(f"weights must not be negative, got {w}")
    weight_sum = sum(weights)
    if weight_sum == 0:
        if total == 0:
            return [0] * len(weights)
        raise ValueError("all weights are zero; there is nothing to split by")

    magnitude = abs(total)
    parts: list[int] = []
    remainders: list[int] = []
    for w in weights:
        q, r = divmod(magnitude * w, weight_sum)
        parts.append(q)
        remainders.append(r)
    left_over = magnitude - sum(parts)
    by_remainder = sorted(range(len(parts)), key=lambda i: (-remainders[i], i))
    for i in by_remainder[:left_over]:
        parts[i] += 1
    return [-p for p in parts] if total < 0 else parts
