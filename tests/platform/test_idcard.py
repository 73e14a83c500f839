"""Chinese resident ID numbers: parsing, validation, upgrade, generation."""

import random
from datetime import date, timedelta

import pytest

from smartcare.platform.idcard import (
    IdNumber,
    InvalidIdNumber,
    check_digit,
    is_valid,
    make,
    parse,
    upgrade_15_to_18,
)

TODAY = date(2024, 6, 1)
KNOWN = "11010519491231002X"  # check character worked out by hand: weighted sum 167, 167 % 11 = 2


def reason_of(text: str, **kwargs: date) -> str:
    with pytest.raises(InvalidIdNumber) as info:
        parse(text, **kwargs)
    return info.value.reason


def with_check(first17: str) -> str:
    return first17 + check_digit(first17)


def test_known_valid_number() -> None:
    idn = parse(KNOWN, today=TODAY)
    assert idn.number == KNOWN
    assert idn.region_code == "110105"
    assert idn.province_code == "11"
    assert idn.birth_date == date(1949, 12, 31)
    assert idn.sex == "2"  # order code 002: even
    assert idn.upgraded_from_15 is False
    assert check_digit(KNOWN[:17]) == "X"


def test_made_numbers_parse_back() -> None:
    rng = random.Random(0)
    regions = ["110105", "500101", "650102", "540102", "710000", "810000", "820000"]
    for _ in range(2000):
        region = rng.choice(regions)
        born = date(1900, 1, 1) + timedelta(days=rng.randrange((TODAY - date(1900, 1, 1)).days))
        sequence = rng.randrange(500)
        sex = rng.choice("12")
        number = make(region, born, sequence, sex)
        assert len(number) == 18
        idn = parse(number, today=TODAY)
        assert (idn.region_code, idn.birth_date, idn.sex) == (region, born, sex)
        assert int(number[16]) % 2 == (1 if sex == "1" else 0)


def test_make_order_codes() -> None:
    born = date(1990, 1, 1)
    assert make("500101", born, 0, "1")[14:17] == "001"
    assert make("500101", born, 0, "2")[14:17] == "000"
    assert make("500101", born, 499, "1")[14:17] == "999"
    assert make("500101", born, 499, "2")[14:17] == "998"
    numbers = {make("500101", born, s, sex) for s in range(500) for sex in "12"}
    assert len(numbers) == 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("50010", date(1990, 1, 1), 1, "1"), "6 digits"),
        (("990101", date(1990, 1, 1), 1, "1"), "province"),
        (("500101", date(1899, 12, 31), 1, "1"), "1900"),
        (("500101", date(1990, 1, 1), 500, "1"), "sequence"),
        (("500101", date(1990, 1, 1), -1, "1"), "sequence"),
        (("500101", date(1990, 1, 1), 1, "M"), "sex"),
    ],
)
def test_make_rejects_bad_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(*args)


def test_wrong_check_digit() -> None:
    for wrong in "0123456789X":
        if wrong != "X":
            assert reason_of(KNOWN[:17] + wrong, today=TODAY) == "check_digit"
    with pytest.raises(InvalidIdNumber, match="check character"):
        parse("110105194912310021", today=TODAY)


def test_a_single_mistyped_digit_is_caught() -> None:
    # The point of MOD 11-2: any one wrong digit changes the check character.
    for i in range(17):
        digit = KNOWN[i]
        for other in "0123456789":
            if other == digit:
                continue
            typo = KNOWN[:i] + other + KNOWN[i + 1 :]
            assert not is_valid(typo)


@pytest.mark.parametrize(
    ("birth", "fragment"),
    [
        ("19900230", "day 30 in month 02"),
        ("19900229", "day 29 in month 02"),  # 1990 is not a leap year
        ("19901301", "month 13"),
        ("19900001", "month 00"),
        ("19900100", "day 00"),
        ("19900431", "day 31 in month 04"),
        ("18991231", "1899, before 1900"),
    ],
)
def test_impossible_birth_dates(birth: str, fragment: str) -> None:
    number = with_check(f"500101{birth}123")
    with pytest.raises(InvalidIdNumber) as info:
        parse(number, today=TODAY)
    assert info.value.reason == "birth_date"
    assert fragment in str(info.value)


def test_leap_day_and_earliest_date_are_accepted() -> None:
    assert parse(with_check("50010120000229123"), today=TODAY).birth_date == date(2000, 2, 29)
    assert parse(with_check("50010119000101123"), today=TODAY).birth_date == date(1900, 1, 1)


def test_birth_date_in_the_future() -> None:
    tomorrow = with_check("50010120240602123")
    assert reason_of(tomorrow, today=TODAY) == "future_birth_date"
    assert parse(tomorrow, today=date(2024, 6, 2)).birth_date == date(2024, 6, 2)
    # Without an explicit today, the real clock is used.
    assert reason_of(with_check("50010120990101123")) == "future_birth_date"


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("A1010519491231002X", "character 1 is 'A'"),
        ("1101051949123100X2", "character 17 is 'X'"),
        ("11010519491231002Y", "character 18 is 'Y'"),
        ("110105-9491231002X", "character 7 is '-'"),
        ("11010549123100X", "character 15 is 'X'"),  # no X in a 15-digit number
    ],
)
def test_bad_characters(text: str, position: str) -> None:
    with pytest.raises(InvalidIdNumber) as info:
        parse(text, today=TODAY)
    assert info.value.reason == "characters"
    assert position in str(info.value)


@pytest.mark.parametrize("text", ["", "1101", "11010519491231002", "11010519491231002X0", "1" * 16])
def test_wrong_length(text: str) -> None:
    with pytest.raises(InvalidIdNumber) as info:
        parse(text, today=TODAY)
    assert info.value.reason == "length"
    assert f"got {len(text)}" in str(info.value)


NOT_PROVINCES = ["00", "10", "16", "20", "24", "30", "38", "47", "55", "60", "66", "70", "72"]
PROVINCE_EDGES = ["11", "15", "21", "23", "31", "37", "41", "46", "50", "54", "61", "65", "71", "82"]


@pytest.mark.parametrize("province", [*NOT_PROVINCES, "80", "83", "99"])
def test_bad_province_code(province: str) -> None:
    number = with_check(f"{province}010519491231002")
    with pytest.raises(InvalidIdNumber) as info:
        parse(number, today=TODAY)
    assert info.value.reason == "region"
    assert f"{province}, are not a province code" in str(info.value)


@pytest.mark.parametrize("province", [*PROVINCE_EDGES, "81"])
def test_every_kind_of_province_code_is_accepted(province: str) -> None:
    assert parse(with_check(f"{province}010519491231002"), today=TODAY).province_code == province


def test_upgrade_15_to_18() -> None:
    assert upgrade_15_to_18("110105491231002") == "11010519491231002X"
    idn = parse("110105491231002", today=TODAY)
    assert idn.number == "11010519491231002X"
    assert idn.upgraded_from_15 is True
    assert idn.birth_date == date(1949, 12, 31)
    assert idn.sex == "2"
    assert parse("500101900101123", today=TODAY).sex == "1"


def test_upgrade_rejects_bad_input() -> None:
    with pytest.raises(InvalidIdNumber) as info:
        upgrade_15_to_18("11010549123100")
    assert info.value.reason == "length"
    with pytest.raises(InvalidIdNumber) as info:
        upgrade_15_to_18("11010549123100A")
    assert info.value.reason == "characters"


def test_15_digit_number_with_impossible_date() -> None:
    with pytest.raises(InvalidIdNumber) as info:
        parse("110105490231002", today=TODAY)
    assert info.value.reason == "birth_date"
    assert "digits 7-12 of the 15" in str(info.value)


def test_input_is_normalised() -> None:
    assert parse("11010519491231002x", today=TODAY).number == KNOWN
    assert parse("  110105 19491231 002x\n", today=TODAY).number == KNOWN
    assert parse("１１０１０５１９４９１２３１００２Ｘ", today=TODAY).number == KNOWN  # full-width


def test_is_valid() -> None:
    assert is_valid(KNOWN)
    assert is_valid("110105491231002")
    assert not is_valid("110105194912310021")
    assert not is_valid("")
    assert not is_valid(None)  # type: ignore[arg-type]


def test_parse_refuses_non_strings() -> None:
    with pytest.raises(TypeError, match="str"):
        parse(110105491231002)  # type: ignore[arg-type]


def test_age_on() -> None:
    idn = parse(KNOWN, today=TODAY)
    assert idn.age_on(date(1949, 12, 31)) == 0
    assert idn.age_on(date(1950, 12, 30)) == 0
    assert idn.age_on(date(1950, 12, 31)) == 1
    assert idn.age_on(date(2024, 6, 1)) == 74
    leapling = parse(with_check("50010120000229123"), today=TODAY)
    assert leapling.age_on(date(2001, 2, 28)) == 0
    assert leapling.age_on(date(2001, 3, 1)) == 1
    assert leapling.age_on(date(2004, 2, 29)) == 4
    with pytest.raises(ValueError):
        idn.age_on(date(1949, 12, 30))


def test_id_number_is_a_frozen_value_that_hides_itself() -> None:
    idn = parse(KNOWN, today=TODAY)
    assert idn == IdNumber(KNOWN, "110105", date(1949, 12, 31), "2", False)
    with pytest.raises(AttributeError):
        idn.number = "x"  # type: ignore[misc]
    assert KNOWN not in repr(idn)
    assert KNOWN not in str(idn)
    assert "1101**********002X" in repr(idn)


@pytest.mark.parametrize(
    "text",
    [
        "110105194912310021",  # check digit
        "110105199002300011",  # Feb 30
        "110105199013010011",  # month 13
        "110105189912310011",  # 1899
        "500101209901011234",  # future
        "990105194912310020",  # province
        "11010519491231002A",  # character
        "110105194912310020123",  # length
        "1101051949123100",  # length
        "110105490231002",  # 15 digits, Feb 31
    ],
)
def test_errors_never_contain_the_number(text: str) -> None:
    with pytest.raises(InvalidIdNumber) as info:
        parse(text, today=TODAY)
    error = info.value
    for shown in (str(error), repr(error), *map(str, error.args), error.detail):
        assert text not in shown
        assert text[4:-4] not in shown  # not even the birth date and order code
    assert isinstance(error, ValueError)
