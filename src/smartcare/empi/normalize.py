"""Normalisation of visit-card records (就诊卡) before matching: the first step of the EMPI pipeline.

Each hospital typed its own patients, with its own mistakes: traditional characters, full-width
digits from Chinese input methods, names padded with spaces to line up in a table ("王　芳"),
several spellings of the minority-name dot, 15-digit ID numbers, phone numbers with +86, sex and
birth date left blank. ``normalize`` turns one such record into a ``Normalized`` value whose fields
can be compared directly, and says what it changed (``repairs``) and where the record contradicts
its own ID number (``conflicts``), so that matching can weigh the evidence and reviewers can see it.
The recorded value is kept when it contradicts the ID: deciding which one is wrong is matching's
job, not this module's.

Libraries, and why these:

- Traditional → simplified uses OpenCC (the ``opencc`` package: the OpenCC project's own binding of
  its C++ library, with its phrase-aware dictionaries, built once as ``_T2S``). Measured on this
  machine: 1.0-1.6 µs per name or address, against 3.7-40 µs for the pure-Python
  ``opencc-python-reimplemented`` (last released 2023, and installing a module also named
  ``opencc``). OpenCC's character table maps a few characters that are standard simplified
  characters in personal names to something else (乾 → 干, 於 → 于, 昇 → 升, 氾 → 泛); those are
  kept as written (``_KEEP_IN_NAMES``).
- Pinyin uses pypinyin, one character at a time (``Style.NORMAL``, ``heteronym=False``), cached:
  names are not words, so a character gets the same reading in every name, which is what matching
  needs (two spellings of one person must read alike), and the cache makes it cheap. The first
  character(s) get their reading as a surname (单 shan, not dan) from ``SURNAME_READINGS``.
- ID numbers go through ``platform.idcard`` and everything shown in ``repr`` through
  ``platform.masking``; ``Repair`` messages are fixed texts and never hold a personal value.

Speed: about 24 µs per record (10,000 synthetic visit cards with typical errors, warm caches),
a quarter of it in ``idcard.parse``; names are cached whole, since they repeat a great deal.
"""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from importlib import resources
from typing import Any, Final

import opencc
from pypinyin import Style, pinyin

from smartcare.platform import idcard
from smartcare.platform.clock import china_today
from smartcare.platform.masking import mask_id_number, mask_name, mask_phone

__all__ = [
    "COMPOUND_SURNAMES",
    "SURNAME_READINGS",
    "Normalized",
    "Repair",
    "normalize",
    "pinyin_of",
    "same_sound",
]


@dataclass(frozen=True)
class Repair:
    """One change ``normalize`` made to a field, named by a stable ``code`` (for counting and
    filtering) with a fixed human-readable ``message`` that never contains the value itself."""

    field: str
    code: str
    message: str


@dataclass(frozen=True, slots=True, repr=False)
class Normalized:
    """A visit-card record in the form matching compares. ``repr`` masks every personal value."""

    name: str
    name_key: str
    pinyin: tuple[str, ...]
    pinyin_key: str
    initials: str
    surname: str
    given: str
    id_number: str | None
    id_valid: bool
    id_problem: str | None
    id_birth_date: date | None
    id_sex: str | None
    id_region: str | None
    sex: str
    birth_date: date | None
    phone: str | None
    phone_last8: str | None
    address: str
    district_code: str | None
    repairs: tuple[Repair, ...]
    conflicts: tuple[str, ...]
    # "张三之子", "李四之女", "王芳婴": a newborn registered under a parent's name; not the child's name.
    placeholder_name: bool = False

    def __repr__(self) -> str:
        # Keep names, numbers, birth dates and addresses out of tracebacks, logs and test output.
        repairs = ", ".join(f"{r.field}:{r.code}" for r in self.repairs)
        return (
            f"Normalized(name={mask_name(self.name)!r}, "
            f"id_number={mask_id_number(self.id_number) if self.id_number else None!r}, "
            f"id_valid={self.id_valid}, id_problem={self.id_problem!r}, sex={self.sex!r}, "
            f"phone={mask_phone(self.phone) if self.phone else None!r}, "
            f"district_code={self.district_code!r}, repairs=[{repairs}], "
            f"conflicts={list(self.conflicts)!r})"
        )

    __str__ = __repr__


# --- repairs (fixed texts, shared instances) ---------------------------------------------------

_FULLWIDTH_MESSAGE: Final = "full-width characters converted to half-width"
_NAME_FULLWIDTH: Final = Repair("name", "fullwidth", _FULLWIDTH_MESSAGE)
_NAME_T2S: Final = Repair(
    "name", "traditional_to_simplified", "traditional characters converted to simplified"
)
_NAME_SPACES: Final = Repair("name", "inner_space_removed", "spaces inside the name removed")
_NAME_SEPARATOR: Final = Repair(
    "name", "separator_unified", "name-part separators unified to the middle dot ·"
)
_ID_FULLWIDTH: Final = Repair("id_number", "fullwidth", _FULLWIDTH_MESSAGE)
_ID_UPGRADED: Final = Repair("id_number", "id_upgraded_15", "15-digit ID upgraded to 18")
_SEX_FROM_ID: Final = Repair("sex", "sex_from_id", "sex inferred from ID number")
_BIRTH_FROM_ID: Final = Repair("birth_date", "birth_from_id", "birth date taken from ID number")
_PHONE_FULLWIDTH: Final = Repair("phone", "fullwidth", _FULLWIDTH_MESSAGE)
_PHONE_COUNTRY: Final = Repair("phone", "country_code_removed", "country code +86 removed")
_PHONE_TRUNK: Final = Repair("phone", "trunk_prefix_removed", "leading 0 before a mobile removed")
_PHONE_FIRST: Final = Repair(
    "phone", "first_of_several", "several numbers recorded; the first mobile (else first) kept"
)
_ADDRESS_T2S: Final = Repair(
    "address", "traditional_to_simplified", "traditional characters converted to simplified"
)

# --- text helpers ------------------------------------------------------------------------------

_T2S: Final = opencc.OpenCC("t2s")

# Standard simplified characters in personal names that OpenCC's character table maps away:
# 乾 qián (干 simplifies only 乾 gān "dry"), 於 the surname Yū, 昇 and 氾 (surname Fán), all kept
# by the 2013 通用规范汉字表 for names.
_KEEP_IN_NAMES: Final = re.compile("([乾於昇氾])")

# Unified CJK ideographs (with extension A, the compatibility block and the supplementary planes).
_HAN: Final = re.compile("[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# Zero-width and control characters that survive NFKC (copy-paste from Word and web forms).
_INVISIBLE: Final = re.compile("[\u0000-\u001f\u007f\u200b-\u200f\u2060\ufeff]")
# After NFKC: · (U+00B7, also U+0387), • ・ (also U+FF65) . (also ． ﹒) ‧ - (also － ﹣) ‐ – — ∙ ⋅.
_EXPLICIT_SEPARATORS: Final = "·•・.‧\\-\u2010\u2013\u2014\u2219\u22c5"
_NAME_SPLIT: Final = re.compile(f"[\\s{_EXPLICIT_SEPARATORS}]+")
_HAS_EXPLICIT_SEPARATOR: Final = re.compile(f"[{_EXPLICIT_SEPARATORS}]")
_HAS_SPACE: Final = re.compile(r"\s")
# Han names run to four characters (欧阳娜娜); a space in a name that short is padding, one in a
# longer name (阿不都 热合曼) separates its parts.
_LONGEST_HAN_NAME: Final = 4
MIDDLE_DOT: Final = "·"
# A newborn registered before it has a name: "<parent>之子/之女/之婴", "<parent>婴", "新生儿", "男婴".
_PLACEHOLDER_NAME: Final = re.compile("之[子女婴儿]$|^..{1,3}[男女]?婴儿?$|^(新生儿|[男女]婴)$")


def _nfkc(value: str) -> str:
    if value.isascii():
        return value
    return unicodedata.normalize("NFKC", value)


def _to_simplified(text: str, *, keep: re.Pattern[str] | None = None) -> str:
    if text.isascii():
        return text
    if keep is None or not keep.search(text):
        return _T2S.convert(text)
    # Split keeps the protected characters as their own items (the pattern has one group).
    return "".join(
        part if i % 2 else _T2S.convert(part) for i, part in enumerate(keep.split(text)) if part
    )


def _text(value: Any) -> str:
    """A record value as text: missing values (None, NaN from spreadsheets) become ""; a
    float that holds a whole number (a phone read from Excel) loses its ".0"."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value)


# --- surnames and pinyin -----------------------------------------------------------------------

SURNAME_READINGS: Final[Mapping[str, tuple[str, ...]]] = {
    # Single-character surnames whose reading as a surname differs (without tones) from the
    # character's everyday reading.
    "单": ("shan",), "曾": ("zeng",), "区": ("ou",), "解": ("xie",), "仇": ("qiu",),
    "朴": ("piao",), "查": ("zha",), "盖": ("ge",), "覃": ("qin",), "员": ("yun",),
    "翟": ("zhai",), "缪": ("miao",), "种": ("chong",), "召": ("shao",), "秘": ("bi",),
    "繁": ("po",), "折": ("she",), "句": ("gou",), "颉": ("xie",), "乜": ("nie",),
    "薄": ("bo",), "贲": ("ben",), "都": ("du",), "长": ("chang",),
    # Compound surnames (复姓), with their readings where a character reads differently.
    "欧阳": ("ou", "yang"), "司马": ("si", "ma"), "诸葛": ("zhu", "ge"), "上官": ("shang", "guan"),
    "东方": ("dong", "fang"), "皇甫": ("huang", "fu"), "尉迟": ("yu", "chi"),
    "万俟": ("mo", "qi"), "长孙": ("zhang", "sun"), "慕容": ("mu", "rong"),
    "令狐": ("ling", "hu"), "公孙": ("gong", "sun"), "宇文": ("yu", "wen"), "司徒": ("si", "tu"),
    "司空": ("si", "kong"), "夏侯": ("xia", "hou"), "轩辕": ("xuan", "yuan"),
    "端木": ("duan", "mu"), "独孤": ("du", "gu"), "南宫": ("nan", "gong"), "西门": ("xi", "men"),
    "澹台": ("tan", "tai"), "濮阳": ("pu", "yang"), "淳于": ("chun", "yu"),
    "申屠": ("shen", "tu"), "赫连": ("he", "lian"), "呼延": ("hu", "yan"), "拓跋": ("tuo", "ba"),
    "百里": ("bai", "li"), "鲜于": ("xian", "yu"), "闾丘": ("lv", "qiu"), "公羊": ("gong", "yang"),
    "东郭": ("dong", "guo"), "左丘": ("zuo", "qiu"), "第五": ("di", "wu"),
    "爱新觉罗": ("ai", "xin", "jue", "luo"),
}  # fmt: skip
"""Readings of surnames, single and compound, keyed by the simplified characters.

Left out on purpose: 单于 and 钟离, because 单/钟 followed by a given name starting 于/离 is far
more common than the compound surname; 乐 (both Yuè and Lè are surnames) and 曲/车, which
pypinyin already reads as surnames."""

COMPOUND_SURNAMES: Final[frozenset[str]] = frozenset(k for k in SURNAME_READINGS if len(k) > 1)
_COMPOUND_LENGTHS: Final = tuple(sorted({len(k) for k in COMPOUND_SURNAMES}, reverse=True))


@lru_cache(maxsize=65_536)
def _char_pinyin(ch: str) -> str:
    """The toneless reading of one Han character (the character itself if pypinyin has none)."""
    return pinyin(ch, style=Style.NORMAL, heteronym=False, errors="default")[0][0].lower()


def _surname_of(han_name: str) -> str:
    """The surname of a Han name without separators: a compound surname when the name starts
    with one and has a given name after it, else the first character."""
    for n in _COMPOUND_LENGTHS:
        if len(han_name) > n and han_name[:n] in COMPOUND_SURNAMES:
            return han_name[:n]
    return han_name[:1]


def _syllables(text: str) -> list[str]:
    out: list[str] = []
    for ch in text:
        if _HAN.match(ch):
            out.append(_char_pinyin(ch))
        elif ch.isalnum():
            out.append(ch.lower())
    return out


def _latin_syllables(name: str) -> tuple[str, ...]:
    if not name.isascii():
        # José → jose: strip accents so a name typed with and without them reads the same.
        decomposed = unicodedata.normalize("NFKD", name)
        name = "".join(c for c in decomposed if not unicodedata.combining(c))
    return tuple(re.findall(r"[a-z]+", name.lower()))


@dataclass(frozen=True, slots=True)
class _Name:
    name: str
    key: str
    pinyin: tuple[str, ...]
    surname: str
    given: str
    repairs: tuple[Repair, ...]


@lru_cache(maxsize=131_072)
def _clean_name(raw: str) -> _Name:
    """Everything ``normalize`` derives from a name; cached because names repeat a great deal
    (张伟 alone is hundreds of thousands of people)."""
    repairs: list[Repair] = []
    s = _nfkc(raw)
    if s != raw:
        repairs.append(_NAME_FULLWIDTH)
    s = _INVISIBLE.sub("", s).strip()
    if not s:
        return _Name("", "", (), "", "", tuple(repairs))

    if _HAN.search(s):
        simplified = _to_simplified(s, keep=_KEEP_IN_NAMES)
        if simplified != s:
            repairs.append(_NAME_T2S)
        parts = [p for p in _NAME_SPLIT.split(simplified) if p]
        key = "".join(parts)
        explicit = _HAS_EXPLICIT_SEPARATOR.search(simplified) is not None
        if len(parts) > 1 and (explicit or len(key) > _LONGEST_HAN_NAME):
            # A minority or transliterated name: it has no Han surname, and its first character
            # keeps its ordinary reading (查尔斯 is cha, not zha). Its first part stands in as
            # the surname, as written.
            name = MIDDLE_DOT.join(parts)
            if name != simplified:
                repairs.append(_NAME_SEPARATOR)
            return _Name(
                name, key, tuple(_syllables(key)), parts[0], MIDDLE_DOT.join(parts[1:]),
                tuple(repairs),
            )
        if _HAS_SPACE.search(simplified):
            repairs.append(_NAME_SPACES)
        if _HAS_EXPLICIT_SEPARATOR.search(simplified):
            repairs.append(_NAME_SEPARATOR)
        surname = _surname_of(key)
        reading = SURNAME_READINGS.get(surname)
        if reading is None:
            syllables = tuple(_syllables(key))
        else:
            syllables = (*reading, *_syllables(key[len(surname):]))
        return _Name(key, key, syllables, surname, key[len(surname):], tuple(repairs))

    if any(c.isalpha() for c in s):
        # Latin-alphabet (or other non-Han) name: words title-cased, one space between them.
        parts = [p.title() for p in s.split()]
        name = " ".join(parts)
        return _Name(
            name, "".join(parts), _latin_syllables(name), parts[0], " ".join(parts[1:]),
            tuple(repairs),
        )

    key = "".join(s.split())
    return _Name(key, key, (), "", "", tuple(repairs))


def pinyin_of(name: str) -> tuple[str, ...]:
    """The toneless, lower-case pinyin syllables of a name, the surname read as a surname.

    The name is cleaned as ``normalize`` cleans it first, so ``pinyin_of("單 雄信")`` is
    ``("shan", "xiong", "xin")``. Latin-alphabet names give their lower-case words.
    """
    return _clean_name(_text(name)).pinyin


def same_sound(a: str, b: str) -> bool:
    """Whether two names read the same in pinyin without tones (张伟 and 章玮 do).

    A name with no reading (empty) sounds like nothing, not even another empty name.
    """
    key_a = "".join(pinyin_of(a))
    return bool(key_a) and key_a == "".join(pinyin_of(b))


# --- sex and birth date --------------------------------------------------------------------------

UNKNOWN_SEX: Final = "0"
UNSPECIFIED_SEX: Final = "9"
_SEX_CODES: Final[Mapping[str, str]] = {
    **dict.fromkeys(("1", "男", "男性", "m", "male", "man"), idcard.MALE),
    **dict.fromkeys(("2", "女", "女性", "f", "female", "woman"), idcard.FEMALE),
    **dict.fromkeys(("0", "未知", "未知的性别", "u", "unknown"), UNKNOWN_SEX),
    **dict.fromkeys(("9", "未说明", "未说明的性别", "other"), UNSPECIFIED_SEX),
}
"""Recorded spellings of sex → GB/T 2261.1 codes; anything else counts as "0" (unknown)."""


def _sex(value: Any) -> str:
    s = _text(value).strip()
    return _SEX_CODES.get(_nfkc(s).lower(), UNKNOWN_SEX) if s else UNKNOWN_SEX


# 1980-01-02, 1980/1/2, 1980.1.2, 1980年1月2日, 1980-01-02 08:00:00, 1980-01-02T08:00, 19800102.
_BIRTH_DATE: Final = re.compile(
    r"(\d{4})(?:\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})(?!\d)|(\d{2})(\d{2})(?!\d))"
)
_EARLIEST_BIRTH: Final = date(1900, 1, 1)


def _birth_date(value: Any, today: date) -> date | None:
    """A recorded birth date as a date, or None when it is missing, unreadable or implausible
    (before 1900 or after today)."""
    if isinstance(value, datetime):
        day = value.date()
    elif isinstance(value, date):
        day = value
    else:
        m = _BIRTH_DATE.match(_nfkc(_text(value)).strip())
        if m is None:
            return None
        year, month, dom = m[1], m[2] or m[4], m[3] or m[5]
        try:
            day = date(int(year), int(month), int(dom))
        except ValueError:
            return None
    return day if _EARLIEST_BIRTH <= day <= today else None


# --- ID number -----------------------------------------------------------------------------------

_ID_SHAPE: Final = re.compile(r"[0-9]{17}[0-9X]")


def _id_number(
    value: Any, today: date, repairs: list[Repair]
) -> tuple[str | None, idcard.IdNumber | None, str | None]:
    """(normalised number or None, parsed ID or None, InvalidIdNumber.reason or None).

    An invalid number is still returned when it has the 18-character shape: a one-digit typo
    copied by two hospitals is evidence too. Nothing is derived from it.
    """
    raw = _text(value)
    s = _nfkc(raw)
    compact = "".join(s.split()).upper()
    if not compact:
        return None, None, None
    try:
        parsed = idcard.parse(compact, today=today)
    except idcard.InvalidIdNumber as exc:
        return (compact if _ID_SHAPE.fullmatch(compact) else None), None, exc.reason
    if s != raw:
        repairs.append(_ID_FULLWIDTH)
    if parsed.upgraded_from_15:
        repairs.append(_ID_UPGRADED)
    return parsed.number, parsed, None


# --- phone ---------------------------------------------------------------------------------------

_PHONE_LIST: Final = re.compile(r"[,;/，；、|]|\s{2,}")
_PHONE_EXTENSION: Final = re.compile(r"(?:转|分机|ext\.?|x).*$", re.IGNORECASE)
_PHONE_NOISE: Final = re.compile(r"[\s\-()（）.]")
_MOBILE: Final = re.compile(r"1[3-9][0-9]{9}")
# Area code (010, 023, 0755 …) and a 7- or 8-digit local number; or a local number alone.
_LANDLINE: Final = re.compile(r"0[1-9][0-9]{8,10}|[2-9][0-9]{6,7}")


def _one_phone(text: str) -> tuple[str, list[Repair]] | None:
    s = _PHONE_NOISE.sub("", _PHONE_EXTENSION.sub("", text))
    repairs: list[Repair] = []
    international = False
    if s.startswith("+86"):
        s, international = s[3:], True
    elif s.startswith("0086"):
        s, international = s[4:], True
    elif s.startswith("+"):
        return None  # a number abroad is not one we can compare or text
    if not (s.isascii() and s.isdigit()):
        return None
    if international:
        repairs.append(_PHONE_COUNTRY)
        if not s.startswith(("0", "1")):
            s = "0" + s  # +86 23 … dials 023 … at home
    elif len(s) == 13 and s.startswith("86") and _MOBILE.fullmatch(s, 2):
        s = s[2:]
        repairs.append(_PHONE_COUNTRY)
    if len(s) == 12 and s.startswith("01") and _MOBILE.fullmatch(s, 1):
        s = s[1:]
        repairs.append(_PHONE_TRUNK)
    if _MOBILE.fullmatch(s) or _LANDLINE.fullmatch(s):
        return s, repairs
    return None


def _phone(value: Any, repairs: list[Repair]) -> str | None:
    raw = _text(value)
    if not raw:
        return None
    if _MOBILE.fullmatch(raw):
        return raw  # the common case, 10x cheaper than the general path
    s = _nfkc(raw)
    candidates = [c for c in _PHONE_LIST.split(s) if c.strip()]
    found = [p for p in map(_one_phone, candidates) if p is not None]
    if not found:
        return None
    chosen = next((p for p in found if p[0].startswith("1")), found[0])
    if s != raw:
        repairs.append(_PHONE_FULLWIDTH)
    repairs.extend(chosen[1])
    if len(candidates) > 1:
        repairs.append(_PHONE_FIRST)
    return chosen[0]


# --- address and district ----------------------------------------------------------------------

_SPACE_NEXT_TO_CJK: Final = re.compile(r"(?<=[^\x00-\x7f])\s+|\s+(?=[^\x00-\x7f])")
_SPACES: Final = re.compile(r"\s+")


def _address(value: Any, repairs: list[Repair]) -> str:
    s = _INVISIBLE.sub("", _nfkc(_text(value)))
    simplified = _to_simplified(s)
    if simplified != s:
        repairs.append(_ADDRESS_T2S)
    return _SPACE_NEXT_TO_CJK.sub("", _SPACES.sub(" ", simplified)).strip()


def _load_districts() -> dict[str, str]:
    data = resources.files("smartcare.registry").joinpath("data", "districts.csv")
    reader = csv.DictReader(io.StringIO(data.read_text(encoding="utf-8")))
    return {row["code"]: row["name"] for row in reader}


_DISTRICTS: Final = _load_districts()

# Region codes that ID numbers issued in Chongqing since 1997 may carry for places that have since
# become districts under another code (GB/T 2260 revisions 2000-2016). 500110 (万盛区) and 500111
# (双桥区) were merged into 綦江区 and 大足区, which took over their codes.
_FORMER_CODES: Final[Mapping[str, str]] = {
    "500221": "500115",  # 长寿县 → 长寿区 (2001)
    "500222": "500110",  # 綦江县 → 綦江区 (2011)
    "500223": "500152",  # 潼南县 → 潼南区 (2015)
    "500224": "500151",  # 铜梁县 → 铜梁区 (2014)
    "500225": "500111",  # 大足县 → 大足区 (2011)
    "500226": "500153",  # 荣昌县 → 荣昌区 (2015)
    "500227": "500120",  # 璧山县 → 璧山区 (2014)
    "500228": "500155",  # 梁平县 → 梁平区 (2016)
    "500232": "500156",  # 武隆县 → 武隆区 (2016)
    "500234": "500154",  # 开县 → 开州区 (2016)
    "500239": "500114",  # 黔江土家族苗族自治县 → 黔江区 (2000)
    "500381": "500116",  # 江津市 → 江津区 (2006)
    "500382": "500117",  # 合川市 → 合川区 (2006)
    "500383": "500118",  # 永川市 → 永川区 (2006)
    "500384": "500119",  # 南川市 → 南川区 (2006)
}

# Names still written on addresses that do not contain the district's short name.
_DISTRICT_ALIASES: Final[Mapping[str, str]] = {
    "开县": "500154", "万县": "500101", "双桥区": "500111", "万盛区": "500110",
}  # fmt: skip
_SHORT_NAME: Final = re.compile(r"^(.+?)(?:(?:土家族|苗族)+自治县|区|县)$")


def _district_patterns() -> tuple[re.Pattern[str], re.Pattern[str], dict[str, str]]:
    full = {name: code for code, name in _DISTRICTS.items()} | dict(_DISTRICT_ALIASES)
    short: dict[str, str] = {}
    for code, name in _DISTRICTS.items():
        m = _SHORT_NAME.match(name)
        # One-character short names (忠 of 忠县) occur in too many street names to mean anything.
        if m and len(m[1]) >= 2:
            short[m[1]] = code
    by_name = full | short

    def alternation(names: Mapping[str, str]) -> re.Pattern[str]:
        return re.compile("|".join(sorted(map(re.escape, names), key=len, reverse=True)))

    return alternation(full), alternation(short), by_name


_FULL_DISTRICT, _SHORT_DISTRICT, _DISTRICT_BY_NAME = _district_patterns()

# An address that starts with another province-level unit, or with a city that never belonged to
# Chongqing, is not in Chongqing even if it contains a Chongqing district name (宁波市江北区,
# 上海市长寿路).
_OTHER_PROVINCE: Final = re.compile(
    "(?:中国|中华人民共和国)?(?:北京|天津|上海|河北|山西|内蒙古|辽宁|吉林|黑龙江|江苏|浙江|安徽|"
    "福建|江西|山东|河南|湖北|湖南|广东|广西|海南|四川|贵州|云南|西藏|陕西|甘肃|青海|宁夏|新疆|"
    "台湾|香港|澳门|[^\\s\\d省市区县]{2,7}(?:省|自治区))"
)
# (?<!城): 城市 is "city" in compound names (金科城市花园), not a prefecture.
_LEADING_CITY: Final = re.compile(r"(?:中国|中华人民共和国)?([^\s\d省市区县]{2,4}?)(?<!城)市")
_CHONGQING_CITIES: Final = frozenset({"重庆", "万州", "万县", "涪陵", "黔江", "合川", "江津", "永川", "南川"})


def _district_code(address: str) -> str | None:
    """The 6-digit code of the Chongqing district or county named in an address, or None.

    Full names (渝北区) are looked for first, then short ones (渝北), leftmost first, so the
    administrative part at the head of an address wins over a road named after a district.
    """
    if not address or _OTHER_PROVINCE.match(address):
        return None
    city = _LEADING_CITY.match(address)
    if city and city[1] not in _CHONGQING_CITIES:
        return None
    m = _FULL_DISTRICT.search(address) or _SHORT_DISTRICT.search(address)
    return _DISTRICT_BY_NAME[m[0]] if m else None


# --- the record ----------------------------------------------------------------------------------


def normalize(record: Mapping[str, Any], *, today: date | None = None) -> Normalized:
    """Normalise one visit-card record (keys ``name``, ``id_number``, ``sex``, ``birth_date``,
    ``phone``, ``address``; any may be missing or None).

    A valid ID number fills a missing sex ("0"/"9" count as missing) or birth date, with a
    repair; a recorded value that disagrees with the ID is kept and its field named in
    ``conflicts`` (``district`` too, when the address and the ID's region are both Chongqing
    districts and differ: weak evidence, since people move but keep their number). ``today``
    (default: today in China) bounds birth dates.
    """
    if today is None:
        today = china_today()
    repairs: list[Repair] = []
    conflicts: list[str] = []

    name = _clean_name(_text(record.get("name")))
    repairs.extend(name.repairs)

    id_number, parsed, id_problem = _id_number(record.get("id_number"), today, repairs)
    sex = _sex(record.get("sex"))
    birth_date = _birth_date(record.get("birth_date"), today)
    phone = _phone(record.get("phone"), repairs)
    address = _address(record.get("address"), repairs)
    district_code = _district_code(address)

    id_birth_date = id_sex = id_region = None
    if parsed is not None:
        id_birth_date, id_sex, id_region = parsed.birth_date, parsed.sex, parsed.region_code
        if sex in (UNKNOWN_SEX, UNSPECIFIED_SEX):
            sex = id_sex
            repairs.append(_SEX_FROM_ID)
        elif sex != id_sex:
            conflicts.append("sex")
        if birth_date is None:
            birth_date = id_birth_date
            repairs.append(_BIRTH_FROM_ID)
        elif birth_date != id_birth_date:
            conflicts.append("birth_date")
        id_district = _FORMER_CODES.get(id_region, id_region)
        if district_code and id_district in _DISTRICTS and id_district != district_code:
            conflicts.append("district")

    pinyin_key = "".join(name.pinyin)
    return Normalized(
        name=name.name,
        name_key=name.key,
        pinyin=name.pinyin,
        pinyin_key=pinyin_key,
        initials="".join(s[0] for s in name.pinyin),
        surname=name.surname,
        given=name.given,
        id_number=id_number,
        id_valid=parsed is not None,
        id_problem=id_problem,
        id_birth_date=id_birth_date,
        id_sex=id_sex,
        id_region=id_region,
        sex=sex,
        birth_date=birth_date,
        phone=phone,
        phone_last8=phone[-8:] if phone and len(phone) >= 8 else None,
        address=address,
        district_code=district_code,
        repairs=tuple(repairs),
        conflicts=tuple(conflicts),
        placeholder_name=bool(_PLACEHOLDER_NAME.search(name.name)),
    )
