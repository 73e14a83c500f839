"""Hospital visit cards (就诊卡) of the synthetic residents, with the registration errors real ones have.

Why: the master patient index (``empi``) must link every hospital's cards of one resident into
one identity, and tell apart the cards that only look alike (twins, a child registered with a
parent's ID number). It can only be measured on cards that carry the errors registration desks
really make, with the answer kept apart: ``visit_cards`` yields each ``VisitCard`` (what the
hospital sends) together with its ``Truth`` (who it is and which errors were applied), so that
the two go to separate tables and the matcher never sees the truth.

How many cards, and where: a resident holds ``1 + Poisson(cards_per_resident - 1)`` cards (mean
``cards_per_resident``), each at a different facility, drawn as

==========================================================  ======
where                                                       share
==========================================================  ======
a community or township health centre of the own district    30 %
a hospital of the own district (weighted by beds)            35 %
a hospital nearby: another central district for central      10 %
residents, a regional centre (万州, 涪陵 …) for the others
a 三级 hospital of the central districts, for everyone        25 %
==========================================================  ======

(a missing kind falls back to the next, ending at any facility). A card is registered on a day
between 2008-01-01 (or the birth) and ``AS_OF``; a child born since then has 25 % of its cards
registered in its first year of life.

Errors, per card. "Eligible" says when an error can happen at all; the rate is the chance on an
eligible card, and within one group (name, id, sex, birth, phone, address) a card gets at most
one of the group's errors. "Share" is the measured share of all cards of a 100,000-resident
region (seed 7, with its twins) that carry the error.

=====================  =====================================================  ========  ======
code                   eligible / what happens                                rate      share
=====================  =====================================================  ========  ======
name_homophone         a character with a same-pinyin twin (伟→玮, 张→章)        1.5 %     1.4 %
name_traditional       a character with a traditional form (張 陳 劉 偉 …)      0.5 %     0.3 %
name_space             any name; a space inside ("张 伟")                       0.8 %     0.8 %
name_fullwidth         any name; an ideographic space U+3000 inside            0.2 %     0.2 %
name_drop              names of 3+ characters; one given-name character lost   0.3 %     0.2 %
name_swap              given names of 2 different characters; swapped          0.3 %     0.2 %
id_missing             no ID number; 2 % (3 % under 16, 6 % from 65),          2–9 %     2.8 %
                       × 1.5 at primary-care and 一级/未定级 facilities
id_transposed          two adjacent digits of the first 17 swapped             0.5 %     0.5 %
id_typo                one character mistyped                                  0.7 %     0.6 %
id_15                  born 1900–1999: the old 15-digit form                   2 %       1.5 %
id_fullwidth           digits typed full-width (５００１…)                       0.3 %     0.3 %
id_lower_x             check character X, typed as x                           15 %      1.3 %
id_guardian            under 16 at registration: a guardian's ID number        15 %      2.5 %
newborn_name           under 1 at registration: "<guardian>之子/之女", no ID    25 %      1.8 %
sex_missing            sex "" (not recorded), "0" or "9"                       1.2 %     1.2 %
sex_wrong              male and female swapped                                 0.2 %     0.2 %
birth_day_off          one day early or late                                   0.4 %     0.4 %
birth_month_day_swap   day ≤ 12 and ≠ month: month and day swapped             0.3 %     0.1 %
birth_year_only        only the year known: stored as 1 January                0.3 %     0.3 %
birth_missing          no birth date                                           0.3 %     0.3 %
phone_changed          a different number (changed since)                      2 %       1.9 %
phone_relative         a family member's number                                1 %       1.7 %
phone_missing          no phone                                                1.2 %     1.1 %
address_district_only  only "重庆市<district>"                                   1.2 %     1.2 %
address_old            an older address in another district                    1.2 %     1.1 %
address_missing        no address                                              0.8 %     0.8 %
=====================  =====================================================  ========  ======

About 22 % of cards carry at least one error (band 15–25 %; measured 21.7 %). A guardian-ID or
newborn card takes the guardian's phone (``phone_relative`` when it is not the child's own) and
no name or ID error of its own; a newborn card keeps the true birth date.

Twins: ``region.residents`` spaces siblings 1.5 years or more apart, so it makes no twins; the
``twins`` step adds them (a twin for 1.2 % of minors: ≈ 2.4 % of children are twins) as extra
``Resident`` rows to add to the population before cards are made. Twins share family, surname,
birth date, address and guardian, and often the guardian's phone: the hardest non-match.

The homophone and traditional-character tables are written out rather than computed with
pypinyin or OpenCC at run time: a fixed table keeps the output identical across library versions
and lets a homophone be restricted to characters people really use in names. The tests check the
tables against both libraries.

Determinism: the cards come from ``random.Random(f"{seed}:visit_cards")`` and the hospitals'
card-number formats from ``random.Random(f"{seed}:visit_card_numbers")``; the same seed and the
same residents in the same order give the same cards. Cards come grouped by resident: shuffle or
sort them (e.g. by ``registered_at``) before using the order for anything.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import date
from itertools import accumulate
from math import exp
from operator import attrgetter
from typing import Any, ClassVar

from faker.providers.person.zh_CN import Provider as _ZhPerson

from smartcare.platform.idcard import check_digit
from smartcare.synth.region import (
    _CENTRAL,
    _REGIONAL,
    AS_OF,
    Facility,
    Resident,
    load_districts,
)

__all__ = [
    "ERROR_CODES",
    "ERROR_RATES",
    "Truth",
    "VisitCard",
    "as_row",
    "twins",
    "visit_cards",
]


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class VisitCard:
    """A card as the hospital registered it: what the EMPI receives, errors included.

    ``card_id`` is ``"<facility_code>-<card_no>"``, unique in the region. ``sex`` is GB/T 2261.1
    ("1", "2", "0" unknown, "9" unspecified) or "" when not recorded; ``birth_date``,
    ``id_number``, ``phone`` and ``address`` are None when not recorded.
    """

    card_id: str
    facility_code: str
    card_no: str
    name: str
    id_number: str | None
    sex: str
    birth_date: date | None
    phone: str | None
    address: str | None
    registered_at: date
    COLUMNS: ClassVar[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Truth:
    """Who holds card ``card_id``, and the codes of ``ERROR_CODES`` applied to it (may be empty)."""

    card_id: str
    resident_id: int
    errors: tuple[str, ...]
    COLUMNS: ClassVar[tuple[str, ...]]


for _cls in (VisitCard, Truth):
    _cls.COLUMNS = tuple(f.name for f in fields(_cls))

_ROW_GETTERS: dict[type, Any] = {cls: attrgetter(*cls.COLUMNS) for cls in (VisitCard, Truth)}


def as_row(obj: VisitCard | Truth) -> tuple[Any, ...]:
    """The values of ``obj`` in ``type(obj).COLUMNS`` order, ready for ``COPY ... FROM STDIN``."""
    return _ROW_GETTERS[type(obj)](obj)


# --------------------------------------------------------------------------- error catalogue

ERROR_CODES: dict[str, tuple[str, str]] = {
    "name_homophone": ("姓名同音字", "a character of the name replaced by a same-pinyin one"),
    "name_traditional": ("姓名繁体字", "the name written in traditional characters"),
    "name_space": ("姓名含空格", "a space inside the name"),
    "name_fullwidth": ("姓名含全角空格", "an ideographic (full-width) space inside the name"),
    "name_drop": ("姓名漏字", "a character of the given name left out"),
    "name_swap": ("姓名字序颠倒", "two characters of the given name swapped"),
    "id_missing": ("未登记身份证号", "no ID number recorded"),
    "id_transposed": ("身份证号相邻数字颠倒", "two adjacent digits of the ID number swapped"),
    "id_typo": ("身份证号错一位", "one character of the ID number mistyped"),
    "id_15": ("15位旧身份证号", "the old 15-digit form of the ID number"),
    "id_fullwidth": ("身份证号全角", "the ID number typed in full-width characters"),
    "id_lower_x": ("身份证号小写x", "the check character X typed as a lower-case x"),
    "id_guardian": ("使用监护人身份证号", "a child registered with a guardian's ID number"),
    "newborn_name": ("新生儿以“某某之子/之女”登记", "a newborn registered as a parent's son or daughter, without ID"),
    "sex_missing": ("性别未登记或未知", "sex not recorded, or recorded as unknown (0) or unspecified (9)"),
    "sex_wrong": ("性别错误", "male and female swapped"),
    "birth_day_off": ("出生日期差一天", "birth date one day off"),
    "birth_month_day_swap": ("出生日期月日颠倒", "month and day of the birth date swapped"),
    "birth_year_only": ("出生日期仅有年份", "only the birth year known, stored as 1 January"),
    "birth_missing": ("未登记出生日期", "no birth date recorded"),
    "phone_changed": ("电话已更换", "a different phone number (the holder changed numbers)"),
    "phone_relative": ("登记亲属电话", "the phone number of a family member"),
    "phone_missing": ("未登记电话", "no phone number recorded"),
    "address_district_only": ("地址仅到区县", "the address reduced to city and district"),
    "address_old": ("旧地址（其他区县）", "an older address in another district"),
    "address_missing": ("未登记地址", "no address recorded"),
}  # fmt: skip
"""Error code → (Chinese, English) description; ``Truth.errors`` holds these codes."""

ERROR_RATES: dict[str, float] = {
    "name_homophone": 0.015, "name_traditional": 0.005, "name_space": 0.008,
    "name_fullwidth": 0.002, "name_drop": 0.003, "name_swap": 0.003,
    "id_missing": 0.02, "id_transposed": 0.005, "id_typo": 0.007, "id_15": 0.02,
    "id_fullwidth": 0.003, "id_lower_x": 0.15, "id_guardian": 0.15, "newborn_name": 0.25,
    "sex_missing": 0.012, "sex_wrong": 0.002,
    "birth_day_off": 0.004, "birth_month_day_swap": 0.003, "birth_year_only": 0.003,
    "birth_missing": 0.003,
    "phone_changed": 0.020, "phone_relative": 0.010, "phone_missing": 0.012,
    "address_district_only": 0.012, "address_old": 0.012, "address_missing": 0.008,
}  # fmt: skip
"""Chance of each error on an eligible card (the module docstring's table says when eligible).

``id_missing`` is the base rate: 3 % under 16 and 6 % from 65 at registration, × 1.5 at
primary-care and 一级/未定级 facilities."""

_ID_MISSING_CHILD = 0.03
_ID_MISSING_OLD = 0.06
_ID_MISSING_SMALL_FACILITY = 1.5
_FIRST_YEAR_SHARE = 0.25  # of a young child's cards, registered in its first year
_REGISTRATION_START = date(2008, 1, 1).toordinal()
_TWIN_RATE = 0.012
_TWIN_SAME_SEX = 2 / 3  # identical twins (≈ 1/3) plus half of the fraternal ones

# --------------------------------------------------------------------------- character tables

# Each group: characters with one toneless pinyin reading in common (伟 玮 炜 are all "wei").
# Given names and surnames have separate tables: a registrar who mishears 张 writes 章, not 彰.
_GIVEN_GROUPS = (
    "伟玮炜威维薇", "强蔷", "磊蕾雷", "洋阳扬杨", "勇永咏泳", "军君均钧俊骏峻", "杰洁婕捷",
    "涛韬滔", "超潮朝", "明铭鸣名", "刚钢罡", "平萍苹屏", "辉晖慧惠蕙徽", "鹏朋", "华桦骅花",
    "飞菲斐非霏", "鑫欣新馨心", "波博柏勃渤", "斌彬滨宾", "宇雨玉钰予羽瑜昱毓语", "浩昊皓灏",
    "凯恺锴楷", "健建剑坚", "帆凡繁", "旭煦序栩", "宁凝柠", "龙隆珑", "林琳霖麟", "欢焕桓环",
    "佳嘉家加", "亮良靓", "成诚程承城", "峰锋枫丰风凤", "国帼", "晨辰臣琛", "瑞睿锐",
    "志智治致芝之枝", "兵冰炳", "东冬栋", "坤昆琨", "岩炎研颜艳燕妍彦雁", "文雯闻", "楠南男",
    "红虹宏鸿", "霞夏", "芳方舫", "娜纳", "敏民珉闽", "静婧晶菁京", "秀修绣", "英莹鹰瑛颖影",
    "丽莉俐力利立", "娟鹃涓", "玲铃灵龄", "桂贵瑰", "兰岚蓝", "丹旦", "梅玫美媚", "珍真贞桢",
    "婷亭廷庭", "雪学", "倩茜芊谦", "琴芹勤", "畅昌常", "云芸韵", "柳琉", "淑书舒殊", "春纯淳",
    "荣蓉容融", "香湘祥翔", "小晓筱孝", "金锦晋瑾", "璐露路鹭",
)  # fmt: skip
_SURNAME_GROUPS = (
    "张章", "王汪", "李黎", "刘柳", "杨阳", "徐许", "吴伍武", "何贺", "高郜", "罗骆", "谢解",
    "唐汤", "萧肖", "袁苑元", "于余俞", "江姜蒋", "程成", "魏卫韦", "严阎颜", "卢鲁", "陆路鹿",
    "邱丘", "秦覃", "傅付符", "方房", "石史施", "钟仲", "林蔺", "赖来", "洪宏", "龚宫", "温文",
    "易伊", "庞逄", "朱诸祝", "胡扈", "郭国", "向项", "常昌",
)  # fmt: skip


def _homophones(groups: tuple[str, ...]) -> dict[str, str]:
    """Character → the other characters of its group."""
    table: dict[str, str] = {}
    for group in groups:
        for ch in group:
            if ch in table:
                raise ValueError(f"{ch} is in two homophone groups")
            table[ch] = group.replace(ch, "")
    return table


_GIVEN_HOMOPHONES = _homophones(_GIVEN_GROUPS)
_SURNAME_HOMOPHONES = _homophones(_SURNAME_GROUPS)

# Simplified → traditional, for characters common in names (OpenCC's s2t choice for each).
_TRADITIONAL: dict[str, str] = dict((
    "张張", "陈陳", "刘劉", "黄黃", "杨楊", "赵趙", "吴吳", "孙孫", "马馬", "郑鄭", "罗羅", "谢謝", "邓鄧", "冯馮",
    "韩韓", "许許", "萧蕭", "叶葉", "蒋蔣", "苏蘇", "吕呂", "卢盧", "钟鍾", "陆陸", "贾賈", "韦韋", "邹鄒", "阎閻",
    "龙龍", "顾顧", "贺賀", "龚龔", "万萬", "钱錢", "严嚴", "赖賴", "汤湯", "庞龐", "庄莊", "乔喬", "齐齊", "伟偉",
    "强強", "军軍", "杰傑", "涛濤", "刚剛", "辉輝", "鹏鵬", "华華", "飞飛", "凯凱", "帅帥", "宁寧", "欢歡", "国國",
    "东東", "红紅", "丽麗", "艳豔", "兰蘭", "凤鳳", "颖穎", "云雲", "洁潔", "荣榮", "静靜", "庆慶", "贵貴", "宝寶",
    "兴興", "伦倫", "锋鋒", "钢鋼", "铭銘", "鸣鳴", "莹瑩", "晓曉", "玮瑋", "炜煒", "鸿鴻", "韬韜", "滨濱", "钰鈺",
    "岚嵐", "莲蓮", "阳陽", "畅暢", "娇嬌", "义義", "乐樂", "桦樺", "骏駿", "龄齡", "鹃鵑", "婵嬋", "娴嫺", "蔷薔",
    "锐銳", "坚堅", "剑劍", "灵靈", "铃鈴", "贞貞", "丰豐",
))  # fmt: skip
_FULLWIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")
_COMPOUND_SURNAMES = frozenset(s for s in _ZhPerson.last_names if len(s) == 2)


def _surname_length(name: str) -> int:
    return 2 if name[:2] in _COMPOUND_SURNAMES else 1


# --------------------------------------------------------------------------- step: twins


def twins(seed: int, residents: Iterable[Resident]) -> Iterator[Resident]:
    """Extra residents: a twin for about 1.2 % of minors, to add to the population before cards.

    ``region.residents`` makes no twins (siblings are born 1.5 years or more apart). A twin shares
    the sibling's family, surname, birth date, district, address, ethnicity and guardian; has the
    same sex two times in three; a given name of its own (often sharing the first character:
    浩宇/浩然); and the next free ID order code of its sex (same region and birth date). Its id is
    above every id in ``residents``; its phone is the sibling's when that is the guardian's,
    otherwise a 166 number, a prefix ``region.residents`` does not use, so it is unique.

    ``residents`` is read to the end before the first twin comes out: pass the list that will
    also go to ``visit_cards``, not a generator. Memory grows with the number of minors only.
    """
    rng = random.Random(f"{seed}:twins")
    rnd = rng.random
    cutoff = date(AS_OF.year - 18, AS_OF.month, AS_OF.day)
    used: set[int] = set()  # ID numbers (first 17 digits) of everyone born after the cutoff
    family: dict[int, Resident] = {}
    family_id: int | None = None
    picked: list[tuple[Resident, str | None]] = []  # (sibling, guardian's phone)
    max_id = 0
    for r in residents:
        max_id = max(max_id, r.id)
        if r.family_id != family_id:
            family_id = r.family_id
            family = {}
        family[r.id] = r
        if r.birth_date <= cutoff:
            continue
        used.add(int(r.id_number[:17]))
        if r.guardian_id is not None and rnd() < _TWIN_RATE:
            guardian = family.get(r.guardian_id)
            picked.append((r, guardian.phone if guardian else None))

    male = tuple(_ZhPerson.first_names_male)
    female = tuple(_ZhPerson.first_names_female)
    male1 = tuple(n for n in male if len(n) == 1)
    female1 = tuple(n for n in female if len(n) == 1)
    phone_a = rng.randrange(10_000_001, 99_999_999, 2)
    if phone_a % 5 == 0:
        phone_a += 2  # coprime to 10**8: n → suffix is a permutation
    phone_b = rng.randrange(100_000_000)
    for n, (sib, guardian_phone) in enumerate(picked, start=1):
        is_male = (sib.sex == "1") == (rnd() < _TWIN_SAME_SEX)
        cut = _surname_length(sib.name)
        surname, sib_given = sib.name[:cut], sib.name[cut:]
        singles = male1 if is_male else female1
        given = sib_given
        if len(sib_given) == 2 and rnd() < 0.4:
            while given == sib_given:
                given = sib_given[0] + singles[int(rnd() * len(singles))]
        else:
            pool = male if is_male else female
            while given == sib_given:
                given = pool[int(rnd() * len(pool))]
        order = int(sib.id_number[14:17])
        step = 2 if (sib.sex == "1") == is_male else 1
        prefix = sib.id_number[:14]
        for k in range(1, 1000):
            candidate = order + step * ((k + 1) // 2) * (1 if k % 2 else -1)
            if 0 < candidate < 1000 and int(f"{prefix}{candidate:03d}") not in used:
                break
        else:  # pragma: no cover - 499 people of one sex born on one day in one district
            continue
        first17 = f"{prefix}{candidate:03d}"
        used.add(int(first17))
        if guardian_phone is not None and sib.phone == guardian_phone:
            phone = guardian_phone
        else:
            phone = f"166{(n * phone_a + phone_b) % 100_000_000:08d}"
        yield Resident(max_id + n, surname + given, "1" if is_male else "2", sib.birth_date,
                       first17 + check_digit(first17), phone, sib.district_code, sib.address,
                       sib.ethnicity, sib.family_id, sib.guardian_id)  # fmt: skip


# --------------------------------------------------------------------------- facilities


@dataclass(frozen=True, slots=True)
class _Pool:
    """Facilities to draw from, with cumulative weights."""

    codes: tuple[str, ...]
    cw: tuple[float, ...]

    @classmethod
    def of(cls, facilities: Iterable[Facility], weight: Any = None) -> _Pool | None:
        chosen = list(facilities)
        if not chosen:
            return None
        ws = [weight(f) if weight else 1.0 for f in chosen]
        return cls(tuple(f.code for f in chosen), tuple(accumulate(ws)))

    def draw(self, u: float) -> str:
        return self.codes[bisect(self.cw, u * self.cw[-1], 0, len(self.codes) - 1)]


def _is_primary(f: Facility) -> bool:
    return f.kind.endswith("health_centre")


def _beds(f: Facility) -> float:
    return max(f.beds, 10)


def _pools(facilities: Sequence[Facility]) -> tuple[dict[str, tuple[_Pool | None, ...]], _Pool]:
    """Per district: (primary care, own hospitals, nearby hospitals, central 三级 hospitals).

    "Central" and "regional centre" are region's own ``_CENTRAL`` and ``_REGIONAL``, the ones
    that placed the big hospitals, so patients travel to where those are. The last pool and the
    returned fallback hold every facility when the kinds wanted are missing (a test passing a
    handful of facilities, a district without hospitals).
    """
    everything = _Pool.of(facilities)
    if everything is None:
        raise ValueError("no facilities given; use region.facilities(seed)")
    hospitals = [f for f in facilities if not _is_primary(f)]
    central_top = _Pool.of(
        (f for f in hospitals if f.level == 3 and f.district_code in _CENTRAL), _beds
    ) or _Pool.of(hospitals, _beds) or everything
    out: dict[str, tuple[_Pool | None, ...]] = {}
    for code in sorted({f.district_code for f in facilities}):
        primary = _Pool.of(f for f in facilities if _is_primary(f) and f.district_code == code)
        own = _Pool.of((f for f in hospitals if f.district_code == code), _beds)
        ring = _CENTRAL if code in _CENTRAL else _REGIONAL
        near = _Pool.of(
            (f for f in hospitals if f.level >= 2 and f.district_code in ring
             and f.district_code != code),
            _beds,
        )  # fmt: skip
        out[code] = (primary, own, near, central_top)
    return out, everything


_WHERE_CW = (0.30, 0.65, 0.75, 1.0)  # primary, own hospitals, nearby, central 三级


def _number_formats(seed: int, facilities: Sequence[Facility]) -> dict[str, list[Any]]:
    """Per facility: [format, next number]; hospitals number their cards in their own way."""
    rng = random.Random(f"{seed}:visit_card_numbers")
    formats = ("MZ{:08d}", "MZ{:08d}", "{:010d}", "JZK{:07d}", "P{:09d}")
    out: dict[str, list[Any]] = {}
    for f in sorted(facilities, key=attrgetter("code")):
        out[f.code] = [rng.choice(formats), rng.randrange(1, 200_000)]
    return out


# --------------------------------------------------------------------------- step: visit cards


def _poisson_cdf(mean: float) -> tuple[float, ...]:
    """Cumulative P(X ≤ k) of Poisson(``mean``) for k = 0, 1, … until it is 1 within 1e-12."""
    term = exp(-mean)
    cdf = [term]
    k = 0
    while cdf[-1] < 1 - 1e-12 and k < 200:
        k += 1
        term *= mean / k
        cdf.append(cdf[-1] + term)
    return tuple(cdf)


def _cum(*codes: str) -> tuple[tuple[float, str], ...]:
    """(cumulative rate, code) pairs of one group, in the order given."""
    return tuple(zip(accumulate(ERROR_RATES[c] for c in codes), codes, strict=True))


_NAME_GROUP = _cum("name_homophone", "name_traditional", "name_space", "name_fullwidth",
                   "name_drop", "name_swap")  # fmt: skip
_ID_GROUP = _cum("id_transposed", "id_typo", "id_15", "id_fullwidth")
_SEX_GROUP = _cum("sex_missing", "sex_wrong")
_BIRTH_GROUP = _cum("birth_day_off", "birth_month_day_swap", "birth_year_only", "birth_missing")
_PHONE_GROUP = _cum("phone_changed", "phone_relative", "phone_missing")
_ADDRESS_GROUP = _cum("address_district_only", "address_old", "address_missing")


def _pick(group: tuple[tuple[float, str], ...], u: float) -> str | None:
    for threshold, code in group:
        if u < threshold:
            return code
    return None


def _misspell(name: str, code: str, rnd: Any) -> str | None:
    """``name`` with the name error ``code`` applied, or None when it cannot apply."""
    cut = _surname_length(name)
    if code == "name_homophone":
        spots = [i for i, ch in enumerate(name) if ch in (
            _SURNAME_HOMOPHONES if i < cut else _GIVEN_HOMOPHONES)]  # fmt: skip
        if not spots:
            return None
        i = spots[int(rnd() * len(spots))]
        others = (_SURNAME_HOMOPHONES if i < cut else _GIVEN_HOMOPHONES)[name[i]]
        return name[:i] + others[int(rnd() * len(others))] + name[i + 1 :]
    if code == "name_traditional":
        out = "".join(_TRADITIONAL.get(ch, ch) for ch in name)
        return out if out != name else None
    if code in ("name_space", "name_fullwidth"):
        space = " " if code == "name_space" else "\u3000"
        # Mostly between surname and given name ("张 伟", to line up with three-character names).
        i = cut if rnd() < 0.8 or len(name) < 3 else cut + 1
        return name[:i] + space + name[i:]
    if code == "name_drop":
        if len(name) - cut < 2:
            return None
        i = cut + int(rnd() * (len(name) - cut))
        return name[:i] + name[i + 1 :]
    if code == "name_swap":
        given = name[cut:]
        if len(given) != 2 or given[0] == given[1]:
            return None
        return name[:cut] + given[1] + given[0]
    raise AssertionError(code)  # pragma: no cover


def _mistype_id(number: str, code: str, rnd: Any) -> str | None:
    """``number`` with the ID error ``code`` applied, or None when it cannot apply."""
    if code == "id_transposed":
        # Adjacent weights of MOD 11-2 always differ, so swapping two different digits among
        # the first 17 always breaks the check character.
        spots = [i for i in range(16) if number[i] != number[i + 1]]
        i = spots[int(rnd() * len(spots))]
        return number[:i] + number[i + 1] + number[i] + number[i + 2 :]
    if code == "id_typo":
        # Any single substitution changes the MOD 11-2 sum (11 is prime): never valid.
        i = int(rnd() * 18)
        digit = str(int(rnd() * 9))
        if digit >= number[i]:  # skip the digit that is there ("0"-"8" < "X": an X keeps it)
            digit = str(int(digit) + 1)
        return number[:i] + digit + number[i + 1 :]
    if code == "id_15":
        if number[6:8] != "19":
            return None
        return number[:6] + number[8:17]
    if code == "id_fullwidth":
        return number.translate(_FULLWIDTH)
    raise AssertionError(code)  # pragma: no cover


def visit_cards(
    seed: int,
    residents: Iterable[Resident],
    facilities: Sequence[Facility],
    *,
    cards_per_resident: float = 2.5,
) -> Iterator[tuple[VisitCard, Truth]]:
    """Every resident's visit cards, each with its truth, streamed resident by resident.

    Residents are expected in ``region.residents`` order (a family together, guardians before
    their children); twins from ``twins`` may come at the end. Memory holds the current family
    and the name, ID number and phone of every guardian of a minor seen so far.
    """
    if cards_per_resident < 1:
        raise ValueError(f"cards_per_resident must be ≥ 1 (every resident has a card), not"
                         f" {cards_per_resident}")  # fmt: skip
    rng = random.Random(f"{seed}:visit_cards")
    rnd = rng.random
    cdf = _poisson_cdf(cards_per_resident - 1)
    max_extra = len(cdf) - 1
    pools, everything = _pools(facilities)
    small = {f.code for f in facilities if _is_primary(f) or f.level <= 1}
    numbers = _number_formats(seed, facilities)
    district_names = {d.code: f"重庆市{d.name}" for d in load_districts()}
    as_of = AS_OF.toordinal()
    rates = ERROR_RATES
    p_guardian, p_newborn = rates["id_guardian"], rates["newborn_name"]
    p_lower_x, p_id_missing = rates["id_lower_x"], rates["id_missing"]
    days_16 = int(16 * 365.2425)
    days_65 = int(65 * 365.2425)
    recent: list[tuple[str, str]] = []  # (district, address) of the last residents, for address_old
    family: dict[int, tuple[str, str, str]] = {}  # current family: id → (name, id number, phone)
    family_id: int | None = None
    guardians: dict[int, tuple[str, str, str]] = {}  # every guardian of a minor, for late twins

    for r in residents:
        if r.family_id != family_id:
            family_id = r.family_id
            family = {}
        guardian = None
        if r.guardian_id is not None:
            guardian = family.get(r.guardian_id) or guardians.get(r.guardian_id)
            if guardian is not None:
                guardians[r.guardian_id] = guardian
        relatives = [p for p in family.values() if p[2] != r.phone]
        family[r.id] = (r.name, r.id_number, r.phone)
        if len(recent) < 64:
            recent.append((r.district_code, r.address))
        else:
            recent[r.id % 64] = (r.district_code, r.address)

        birth = r.birth_date.toordinal()
        first = max(birth, _REGISTRATION_START)
        young = birth >= _REGISTRATION_START
        district_pools = pools.get(r.district_code)
        n_cards = 1 + bisect(cdf, rnd(), 0, max_extra)
        held: set[str] = set()
        for _ in range(n_cards):
            # ---- where
            for _attempt in range(8):
                pool = None
                if district_pools is not None:
                    for k in (bisect(_WHERE_CW, rnd()), 1, 3):  # wanted kind, then fallbacks
                        pool = district_pools[k]
                        if pool is not None:
                            break
                code = (pool or everything).draw(rnd())
                if code not in held:
                    break
            else:
                continue  # the resident already holds a card at every facility drawn
            held.add(code)
            state = numbers[code]
            card_no = state[0].format(state[1])
            state[1] += 1 + int(rnd() * 40)
            card_id = f"{code}-{card_no}"

            # ---- when
            if young and rnd() < _FIRST_YEAR_SHARE:
                reg = min(birth + int(rnd() * 365), as_of)
            else:
                reg = first + int(rnd() * (as_of - first + 1))
            age = reg - birth

            errors: list[str] = []
            name, id_number, sex = r.name, r.id_number, r.sex
            birth_date: date | None = r.birth_date
            phone: str | None = r.phone
            address: str | None = r.address
            special = newborn = False
            # ---- who: a newborn or a child registered under a guardian, or the resident
            if guardian is not None and age < 365 and rnd() < p_newborn:
                name = guardian[0] + ("之子" if sex == "1" else "之女")
                id_number, phone = None, guardian[2]
                errors.append("newborn_name")
                special = newborn = True
            elif guardian is not None and age < days_16 and rnd() < p_guardian:
                id_number, phone = guardian[1], guardian[2]
                errors.append("id_guardian")
                special = True
            if special:
                if phone != r.phone:
                    errors.append("phone_relative")
            else:
                err = _pick(_NAME_GROUP, rnd())
                if err is not None:
                    changed = _misspell(name, err, rnd)
                    if changed is not None:
                        name = changed
                        errors.append(err)
                p = p_id_missing
                if age < days_16:
                    p = _ID_MISSING_CHILD
                elif age >= days_65:
                    p = _ID_MISSING_OLD
                if code in small:
                    p *= _ID_MISSING_SMALL_FACILITY
                if rnd() < p:
                    id_number = None
                    errors.append("id_missing")
                else:
                    err = _pick(_ID_GROUP, rnd())
                    if err is not None:
                        changed = _mistype_id(id_number, err, rnd)
                        if changed is not None:
                            id_number = changed
                            errors.append(err)
            if id_number is not None and id_number[-1] == "X" and rnd() < p_lower_x:
                id_number = id_number[:-1] + "x"
                errors.append("id_lower_x")

            # ---- the other fields
            err = _pick(_SEX_GROUP, rnd())
            if err == "sex_missing":
                v = rnd()
                sex = "" if v < 0.6 else "0" if v < 0.85 else "9"
                errors.append(err)
            elif err == "sex_wrong":
                sex = "2" if sex == "1" else "1"
                errors.append(err)
            if not newborn:
                err = _pick(_BIRTH_GROUP, rnd())
                if err is not None:
                    changed_date = _misdate(r.birth_date, err, rnd, as_of)
                    if changed_date is not r.birth_date:
                        birth_date = changed_date
                        errors.append(err)
            if not special:
                err = _pick(_PHONE_GROUP, rnd())
                if err == "phone_changed":
                    phone = f"1{'3578'[int(rnd() * 4)]}{int(rnd() * 1_000_000_000):09d}"
                    if phone != r.phone:
                        errors.append(err)
                elif err == "phone_relative" and relatives:
                    phone = relatives[int(rnd() * len(relatives))][2]
                    errors.append(err)
                elif err == "phone_missing":
                    phone = None
                    errors.append(err)
            err = _pick(_ADDRESS_GROUP, rnd())
            if err == "address_district_only":
                district = district_names.get(r.district_code)
                if district is not None:
                    address = district
                    errors.append(err)
            elif err == "address_old":
                other_district, other = recent[int(rnd() * len(recent))]
                if other_district != r.district_code:
                    address = other
                    errors.append(err)
            elif err == "address_missing":
                address = None
                errors.append(err)

            yield (
                VisitCard(card_id, code, card_no, name, id_number, sex, birth_date, phone,
                          address, date.fromordinal(reg)),
                Truth(card_id, r.id, tuple(errors)),
            )  # fmt: skip


def _misdate(born: date, code: str, rnd: Any, as_of: int) -> date | None:
    """``born`` with the birth-date error ``code`` applied; ``born`` itself when it cannot apply."""
    if code == "birth_day_off":
        o = born.toordinal() + (1 if rnd() < 0.5 else -1)
        return date.fromordinal(o if o <= as_of else o - 2)
    if code == "birth_month_day_swap":
        if born.day > 12 or born.day == born.month:
            return born
        swapped = date(born.year, born.day, born.month)
        return swapped if swapped.toordinal() <= as_of else born
    if code == "birth_year_only":
        return born if (born.month, born.day) == (1, 1) else date(born.year, 1, 1)
    if code == "birth_missing":
        return None
    raise AssertionError(code)  # pragma: no cover


CSV_COLUMNS = ("facility_code", "card_no", "name", "id_number", "sex", "birth_date", "phone", "address", "registered_at")


def write_csv(path: Any, cards: Iterable[VisitCard]) -> int:
    """Cards as the CSV ``smartcare empi migrate`` reads (what a hospital's export would look like)."""
    import csv

    n = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for c in cards:
            out.writerow([c.facility_code, c.card_no, c.name, c.id_number or "", c.sex, c.birth_date or "",
                          c.phone or "", c.address or "", c.registered_at])
            n += 1
    return n
