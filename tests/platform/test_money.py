"""Money as integer fen: formatting, exact parsing, proportional splits."""

import random
from decimal import Decimal

import pytest

from smartcare.platform.money import format_yuan, parse_yuan, split_proportionally, yuan


@pytest.mark.parametrize(
    ("fen", "text"),
    [
        (0, "¥0.00"),
        (1, "¥0.01"),
        (5, "¥0.05"),
        (1230, "¥12.30"),
        (123456, "¥1,234.56"),
        (100000000, "¥1,000,000.00"),
        (-1230, "-¥12.30"),
        (-1, "-¥0.01"),
    ],
)
def test_format_yuan(fen: int, text: str) -> None:
    assert format_yuan(fen) == text
    assert format_yuan(fen, symbol=False) == text.replace("¥", "")


def test_format_yuan_refuses_floats_and_bools() -> None:
    with pytest.raises(TypeError):
        format_yuan(12.3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_yuan(True)


def test_yuan() -> None:
    assert yuan(1230) == Decimal("12.30")
    assert str(yuan(1230)) == "12.30"
    assert str(yuan(0)) == "0.00"
    assert str(yuan(-5)) == "-0.05"
    with pytest.raises(TypeError):
        yuan(Decimal("1.5"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("12.3", 1230),
        ("12.30", 1230),
        ("12", 1200),
        ("0.01", 1),
        ("1,234.56", 123456),
        ("1,234,567", 123456700),
        ("¥5", 500),
        ("￥5.5", 550),
        ("5元", 500),
        ("-¥12.30", -1230),
        ("¥-12.30", -1230),
        ("+3", 300),
        ("  7.07 ", 707),
        ("12.300", 1230),  # trailing zeros beyond the fen change nothing
        (5, 500),
        (-2, -200),
        (Decimal("12.34"), 1234),
        (Decimal("1E+2"), 10000),
        (Decimal("0.10"), 10),
    ],
)
def test_parse_yuan(text: str | int | Decimal, fen: int) -> None:
    assert parse_yuan(text) == fen
    assert isinstance(parse_yuan(text), int)


def test_parse_yuan_is_exact_where_floats_are_not() -> None:
    assert parse_yuan("0.1") + parse_yuan("0.2") == parse_yuan("0.3")
    assert parse_yuan("19.99") == 1999  # int(19.99 * 100) would be 1998
    assert parse_yuan("99999999999999.99") == 9999999999999999


def test_parse_yuan_round_trips_format_yuan() -> None:
    rng = random.Random(0)
    for _ in range(1000):
        fen = rng.randrange(-10**10, 10**10)
        assert parse_yuan(format_yuan(fen)) == fen
        assert parse_yuan(yuan(fen)) == fen


@pytest.mark.parametrize("value", [12.3, 0.0, float("nan"), True])
def test_parse_yuan_refuses_floats(value: object) -> None:
    with pytest.raises(TypeError, match="float|bool"):
        parse_yuan(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["12.345", "0.001", "1,234.567", Decimal("1.005")])
def test_parse_yuan_refuses_fractions_of_a_fen(text: str | Decimal) -> None:
    with pytest.raises(ValueError, match="more than 2 decimal places"):
        parse_yuan(text)


@pytest.mark.parametrize(
    "text", ["", "abc", "12.", ".5", "1,23.45", "12,34", "1.2.3", "1e3", "- 5", "+-5", "¥¥5", "１２"]
)
def test_parse_yuan_refuses_non_numbers(text: str) -> None:
    with pytest.raises(ValueError, match="not an amount|two signs"):
        parse_yuan(text)


@pytest.mark.parametrize(
    "value", ["NaN", "inf", "-Infinity", Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity")]
)
def test_parse_yuan_refuses_nan_and_infinity(value: str | Decimal) -> None:
    with pytest.raises(ValueError):
        parse_yuan(value)


def test_parse_yuan_refuses_other_types() -> None:
    with pytest.raises(TypeError):
        parse_yuan(None)  # type: ignore[arg-type]


def test_split_proportionally_examples() -> None:
    assert split_proportionally(100, [1, 1, 1]) == [34, 33, 33]
    assert split_proportionally(100, [1, 2]) == [33, 67]
    assert split_proportionally(10000, [70, 30]) == [7000, 3000]
    assert split_proportionally(1, [1, 1, 1]) == [1, 0, 0]
    assert split_proportionally(0, [3, 4]) == [0, 0]
    assert split_proportionally(0, [0, 0]) == [0, 0]
    assert split_proportionally(5, [0, 1, 0]) == [0, 5, 0]
    assert split_proportionally(-100, [1, 1, 1]) == [-34, -33, -33]


def test_split_proportionally_random_cases_sum_exactly() -> None:
    rng = random.Random(0)
    for _ in range(5000):
        n = rng.randrange(1, 8)
        weights = [rng.choice([0, rng.randrange(1, 10), rng.randrange(1, 10**6)]) for _ in range(n)]
        if sum(weights) == 0:
            weights[rng.randrange(n)] = 1
        total = rng.randrange(-10**7, 10**7)
        parts = split_proportionally(total, weights)
        assert sum(parts) == total
        assert len(parts) == n
        weight_sum = sum(weights)
        for part, w in zip(parts, weights, strict=True):
            exact = total * w / weight_sum
            assert abs(part - exact) < 1  # never more than one fen from the exact share
            if w == 0:
                assert part == 0


def test_split_proportionally_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="at least one"):
        split_proportionally(100, [])
    with pytest.raises(ValueError, match="negative"):
        split_proportionally(100, [1, -1])
    with pytest.raises(ValueError, match="zero"):
        split_proportionally(100, [0, 0])
    with pytest.raises(TypeError):
        split_proportionally(100, [0.5, 0.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        split_proportionally(1.0, [1])  # type: ignore[arg-type]
