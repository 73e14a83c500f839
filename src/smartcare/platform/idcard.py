"""Chinese resident ID numbers (GB 11643-1999).

An 18-character number is: 6-digit region code (GB/T 2260), 8-digit birth date (YYYYMMDD),
3-digit order code (odd for men, even for women) and an ISO 7064 MOD 11-2 check character
(0-9 or X). Numbers issued before 1999 have 15 digits (2-digit year, no check character); they
are still printed on old records and visit cards, so ``parse`` upgrades them to 18.

Errors never show the number itself, only its masked form (``platform.masking``): a rejected ID
number ends up in logs and API responses like any other error.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Final

from smartcare.platform.clock import china_today
from smartcare.platform.masking import mask_id_number

__all__ = [
    "IdNumber",
    "InvalidIdNumber",
    "check_digit",
    "is_valid",
    "make",
    "parse",
    "upgrade_15_to_18",
]

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"

# Province-level codes of GB/T 2260 (the first two digits of every region code).
PROVINCE_CODES: Final[frozenset[str]] = frozenset(
    f"{code:02d}"
    for code in (
        *range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47),
        *range(50, 55), *range(61, 66), 71, 81, 82,
    )
)

MALE: Final = "1"
FEMALE: Final = "2"
"""Sex codes of GB/T 2261.1 as carried by an ID number (0 unknown and 9 unspecified never are)."""

_EARLIEST_BIRTH: Final = date(1900, 1, 1)

_DIGITS_15 = re.compile(r"[0-9]{15}")
_DIGITS_18 = re.compile(r"[0-9]{17}[0-9X]")


class InvalidIdNumber(ValueError):
    """An ID number that cannot be right; ``reason`` says which rule it breaks.

    Reasons: ``length``, ``characters``, ``region``, ``birth_date``, ``future_birth_date``,
    ``check_digit``. The message names the rule and the position, never the whole number.
    """

    def __init__(self, reason: str, detail: str, *, masked_number: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.masked_number = masked_number
        shown = f" {masked_number}" if masked_number else ""
        super().__init__(f"invalid ID number{shown}: {detail}")


@dataclass(frozen=True, repr=False)
class IdNumber:
    """A validated 18-character ID number and what it says about its holder."""

    number: str
    region_code: str
    birth_date: date
    sex: str
    upgraded_from_15: bool = False

    @property
    def province_code(self) -> str:
        """The first two digits: the province, autonomous region or municipality of issue."""
        return self.region_code[:2]

    @property
    def masked(self) -> str:
        return mask_id_number(self.number)

    def age_on(self, day: date) -> int:
        """Age in completed years on ``day`` (someone born 29 February turns a year older on
        1 March in common years)."""
        if day < self.birth_date:
            raise ValueError("the day is before the birth date in the ID number")
        b = self.birth_date
        return day.year - b.year - ((day.month, day.day) < (b.month, b.day))

    def __repr__(self) -> str:
        # Keep the number out of tracebacks, debug logs and test failure output.
        return f"IdNumber({self.masked!r})"

    __str__ = __repr__


def check_digit(first17: str) -> str:
    """The 18th character of an ID number: ISO 7064 MOD 11-2 over the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK_CHARS[total % 11]


def upgrade_15_to_18(number15: str) -> str:
    """Turn a pre-1999 15-digit number into its 18-character form.

    The 2-digit year gets "19" in front (15-digit numbers were only issued to people born in
    the 1900s) and the check character is appended.
    """
    if len(number15) != 15:
        raise InvalidIdNumber(
            "length",
            f"a 15-digit ID number has 15 digits; got {len(number15)} characters",
            masked_number=_masked_if_long(number15),
        )
    if not _DIGITS_15.fullmatch(number15):
        raise _bad_character(number15, 15)
    body = f"{number15[:6]}19{number15[6:]}"
    return body + check_digit(body)


def parse(text: str, *, today: date | None = None) -> IdNumber:
    """Validate an ID number as typed by a person or sent by a hospital system.

    Surrounding and inner whitespace are dropped, full-width characters (from Chinese input
    methods) are read as their ASCII forms, a lower-case x is accepted, and 15-digit numbers
    are upgraded to 18. ``today`` (default: today in China) bounds the birth date.

    Raises ``InvalidIdNumber`` naming the first rule broken, checked in this order: length,
    characters, province, birth date, check character.
    """
    if not isinstance(text, str):
        raise TypeError(f"an ID number must be given as str, not {type(text).__name__}")
    s = "".join(unicodedata.normalize("NFKC", text).split()).upper()

    if len(s) not in (15, 18):
        raise InvalidIdNumber(
            "length",
            f"an ID number has 18 characters (15 for numbers issued before 1999); "
            f"got {len(s)}",
            masked_number=_masked_if_long(s),
        )
    upgraded = len(s) == 15
    if upgraded:
        s = upgrade_15_to_18(s)
    elif not _DIGITS_18.fullmatch(s):
        raise _bad_character(s, 18)

    masked = mask_id_number(s)
    if s[:2] not in PROVINCE_CODES:
        raise InvalidIdNumber(
            "region",
            f"the first two digits, {s[:2]}, are not a province code of GB/T 2260",
            masked_number=masked,
        )

    birth = _birth_date(s, masked, offset=6 if upgraded else 0)
    if today is None:
        today = china_today()
    if birth > today:
        raise InvalidIdNumber(
            "future_birth_date",
            f"the birth date ({_birth_position(upgraded)}) is after today",
            masked_number=masked,
        )

    # A 15-digit number has no check character of its own: the one appended is right by
    # construction.
    if not upgraded and check_digit(s[:17]) != s[17]:
        raise InvalidIdNumber(
            "check_digit",
            "the check character (the 18th) does not match the first 17 digits; "
            "one of the characters is mistyped",
            masked_number=masked,
        )
    return IdNumber(
        number=s,
        region_code=s[:6],
        birth_date=birth,
        sex=MALE if int(s[16]) % 2 else FEMALE,
        upgraded_from_15=upgraded,
    )


def is_valid(text: str) -> bool:
    """Whether ``parse`` would accept ``text`` (anything that is not a str is not valid)."""
    try:
        parse(text)
    except (InvalidIdNumber, TypeError):
        return False
    return True


# make() runs millions of times in the synthetic generator, so it adds up precomputed partial
# sums of the check-digit formula instead of calling check_digit() on a fresh string: one cached
# sum per region code (a region has few), and tables for the year, month, day and order code.
_REGION_SUMS: dict[str, int] = {}


def _weighted(digits: str, weights: tuple[int, ...]) -> int:
    return sum(int(d) * w for d, w in zip(digits, weights, strict=True))


_YEAR_SUMS: Final = {y: _weighted(f"{y:04d}", _WEIGHTS[6:10]) for y in range(1900, 2200)}
_MONTH_SUMS: Final = tuple(_weighted(f"{m:02d}", _WEIGHTS[10:12]) for m in range(13))
_DAY_SUMS: Final = tuple(_weighted(f"{d:02d}", _WEIGHTS[12:14]) for d in range(32))
_ORDER_CODES: Final = tuple(
    (f"{o:03d}", _weighted(f"{o:03d}", _WEIGHTS[14:17])) for o in range(1000)
)


def make(region_code: str, birth_date: date, sequence: int, sex: str) -> str:
    """Build a valid 18-character ID number; for the synthetic data generator.

    ``sequence`` (0..499) picks the 3-digit order code ``2 * sequence + 1`` for men (sex "1")
    and ``2 * sequence`` for women (sex "2"), so each region and birth date has 500 numbers per
    sex. The birth date must be 1900-01-01 or later; it is not checked against today.
    """
    region_sum = _REGION_SUMS.get(region_code)
    if region_sum is None:
        if len(region_code) != 6 or not region_code.isascii() or not region_code.isdigit():
            raise ValueError("region_code must be 6 digits (GB/T 2260)")
        if region_code[:2] not in PROVINCE_CODES:
            raise ValueError(f"{region_code[:2]} is not a province code of GB/T 2260")
        region_sum = _REGION_SUMS[region_code] = _weighted(region_code, _WEIGHTS[:6])
    if not 0 <= sequence <= 499:
        raise ValueError(f"sequence must be between 0 and 499, got {sequence}")
    if sex == MALE:
        order, order_sum = _ORDER_CODES[2 * sequence + 1]
    elif sex == FEMALE:
        order, order_sum = _ORDER_CODES[2 * sequence]
    else:
        raise ValueError(f'sex must be "1" (male) or "2" (female), got {sex!r}')
    year, month, day = birth_date.year, birth_date.month, birth_date.day
    if year < _EARLIEST_BIRTH.year:
        raise ValueError("birth_date must be 1900-01-01 or later")
    year_sum = _YEAR_SUMS.get(year)
    if year_sum is None:
        year_sum = _weighted(f"{year:04d}", _WEIGHTS[6:10])
    total = region_sum + year_sum + _MONTH_SUMS[month] + _DAY_SUMS[day] + order_sum
    return f"{region_code}{year:04d}{month:02d}{day:02d}{order}{_CHECK_CHARS[total % 11]}"


# --- helpers -----------------------------------------------------------------------------------


def _masked_if_long(s: str) -> str | None:
    # Short fragments are not worth showing even masked.
    return mask_id_number(s) if len(s) >= 8 else None


def _bad_character(s: str, length: int) -> InvalidIdNumber:
    allowed = "0-9" if length == 15 else "0-9 (X also allowed as the 18th)"
    for i, ch in enumerate(s, start=1):
        ok = (ch.isascii() and ch.isdigit()) or (ch == "X" and i == 18)
        if not ok:
            # A non-digit is not part of anyone's number, so it is safe to name it.
            shown = ch if ch.isprintable() else f"U+{ord(ch):04X}"
            return InvalidIdNumber(
                "characters",
                f"character {i} is {shown!r}; only {allowed} may appear",
                masked_number=mask_id_number(s),
            )
    raise AssertionError("no bad character found")  # pragma: no cover - caller checked


def _birth_position(upgraded: bool) -> str:
    return "digits 7-12 of the 15" if upgraded else "digits 7-14"


def _birth_date(s: str, masked: str, *, offset: int) -> date:
    """The birth date in s (18 characters), as a date, or InvalidIdNumber.

    The invalid parts are named (month 13, day 30 of month 02): they are not a real birth date,
    so they reveal nothing, and they point at the typo.
    """
    where = _birth_position(upgraded=offset != 0)
    year, month, day = int(s[6:10]), int(s[10:12]), int(s[12:14])
    if year < _EARLIEST_BIRTH.year:
        raise InvalidIdNumber(
            "birth_date", f"the birth year ({where}) is {year}, before 1900",
            masked_number=masked,
        )
    if not 1 <= month <= 12:
        raise InvalidIdNumber(
            "birth_date", f"the birth date ({where}) has month {month:02d}, which does not exist",
            masked_number=masked,
        )
    last_day = calendar.monthrange(year, month)[1]
    if not 1 <= day <= last_day:
        raise InvalidIdNumber(
            "birth_date",
            f"the birth date ({where}) has day {day:02d} in month {month:02d}, "
            f"which has {last_day} days that year",
            masked_number=masked,
        )
    return date(year, month, day)
