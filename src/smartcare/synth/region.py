"""A deterministic synthetic Chongqing: facilities, departments, practitioners and residents.

Why: EMPI, booking, payment and the warehouse need a region that looks real (1,141 medical
institutions, a population with families, valid ID numbers) and that comes back identical for the
same seed, so that a failing test or a benchmark figure can be reproduced.

The generator is a pipeline of small named steps::

    plan → places → hospitals → levels → primary_care → details      (facilities)
    departments → practitioners → residents

Each step draws from its own ``random.Random(f"{seed}:{step}")``: changing what one step draws
never shifts the output of another. Everything is pure Python (no database, no network), and the
large outputs are generators, so the 1,000,000-resident city streams in flat memory.
``as_row`` turns any generated object into the tuple that ``COPY`` wants.
"""

from __future__ import annotations

import csv
import io
import random
from array import array
from bisect import bisect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import date
from functools import cache
from importlib import resources
from itertools import accumulate
from operator import attrgetter
from typing import Any, ClassVar

from faker.providers.person.zh_CN import Provider as _ZhPerson

from smartcare.platform.idcard import check_digit

__all__ = [
    "AS_OF",
    "SCALES",
    "Department",
    "District",
    "Facility",
    "Practitioner",
    "Resident",
    "as_row",
    "departments",
    "facilities",
    "load_districts",
    "practitioners",
    "residents",
]

SCALES: dict[str, int] = {"small": 20_000, "city": 1_000_000}
"""Number of residents per scale; facilities are always the full 1,141."""

AS_OF = date(2026, 11, 26)
"""The region's "today": ages, guardianship and the latest birth date are measured on it."""

HOSPITALS_PUBLIC = 227
HOSPITALS_PRIVATE = 17
COMMUNITY_CENTRES = 240
TOWNSHIP_CENTRES = 657  # 240 + 657 = 897 primary-care institutions, all public

# Public hospital levels (三级 / 二级 / 一级 / 未定级); private ones below. Totals: 60 / 130 / 37 / 17.
_PUBLIC_LEVELS = ((3, 60), (2, 122), (1, 30), (0, 15))
_PRIVATE_LEVELS = ((2, 8), (1, 7), (0, 2))


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class District:
    """A county-level division (GB/T 2260): ``kind`` is "district" (区) or "county" (县)."""

    code: str
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class Facility:
    """A medical institution. ``level`` 3/2/1/0 is 三级/二级/一级/未定级; ``grade`` 甲/乙/丙 or ""."""

    code: str
    name: str
    kind: str
    level: int
    grade: str
    ownership: str
    district_code: str
    address: str
    beds: int
    COLUMNS: ClassVar[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Department:
    """A clinical department; ``code`` is its 2-digit 诊疗科目 code, unique within the facility."""

    facility_code: str
    code: str
    name: str
    COLUMNS: ClassVar[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Practitioner:
    """A physician working in one department of one facility."""

    code: str
    facility_code: str
    department_code: str
    name: str
    sex: str
    title: str
    COLUMNS: ClassVar[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Resident:
    """A person. ``sex`` is GB/T 2261.1 ("1" male, "2" female); ``ethnicity`` a GB 3304 code."""

    id: int
    name: str
    sex: str
    birth_date: date
    id_number: str
    phone: str
    district_code: str
    address: str
    ethnicity: str
    family_id: int
    guardian_id: int | None
    COLUMNS: ClassVar[tuple[str, ...]]


for _cls in (Facility, Department, Practitioner, Resident):
    _cls.COLUMNS = tuple(f.name for f in fields(_cls))

# attrgetter with several names builds the tuple in C: several times faster than
# dataclasses.astuple, which deep-copies every field.
_ROW_GETTERS: dict[type, Any] = {
    cls: attrgetter(*cls.COLUMNS) for cls in (Facility, Department, Practitioner, Resident)
}


def as_row(obj: Facility | Department | Practitioner | Resident) -> tuple[Any, ...]:
    """The values of ``obj`` in ``type(obj).COLUMNS`` order, ready for ``COPY ... FROM STDIN``."""
    return _ROW_GETTERS[type(obj)](obj)


def load_districts() -> list[District]:
    """The 38 districts and counties of Chongqing, from the package's own GB/T 2260 extract."""
    data = resources.files("smartcare.registry").joinpath("data").joinpath("districts.csv")
    reader = csv.DictReader(io.StringIO(data.read_text(encoding="utf-8")))
    return [District(row["code"], row["name"], row["kind"]) for row in reader]


# --------------------------------------------------------------------------- reference data

# Resident population in 10,000s (approximately the 2020 census); unknown codes get _DEFAULT_POP.
_POPULATION_10K: dict[str, float] = {
    "500101": 156, "500102": 112, "500103": 59, "500104": 42, "500105": 93, "500106": 148,
    "500107": 152, "500108": 120, "500109": 84, "500110": 101, "500111": 84, "500112": 219,
    "500113": 118, "500114": 49, "500115": 69, "500116": 136, "500117": 125, "500118": 115,
    "500119": 57, "500120": 76, "500151": 69, "500152": 69, "500153": 67, "500154": 120,
    "500155": 65, "500156": 36, "500229": 20, "500230": 56, "500231": 65, "500233": 72,
    "500235": 93, "500236": 75, "500237": 46, "500238": 39, "500240": 39, "500241": 50,
    "500242": 61, "500243": 49,
}  # fmt: skip
_DEFAULT_POP = 50.0

# The nine central urban districts (主城九区) and the regional centres outside them.
_CENTRAL = frozenset(
    {"500103", "500104", "500105", "500106", "500107", "500108", "500109", "500112", "500113"}
)
_REGIONAL = frozenset({"500101", "500102", "500114", "500116", "500117", "500118"})

# How strongly a district draws hospitals beyond its own three (渝中 is the medical hub).
_HOSPITAL_PULL: dict[str, float] = {
    "500103": 14, "500106": 10, "500112": 10, "500107": 9, "500105": 8, "500108": 8,
    "500113": 6, "500109": 5, "500104": 3,
    "500101": 6, "500102": 4, "500116": 4, "500117": 4, "500118": 4, "500114": 3,
}  # fmt: skip

# Towns (镇) left inside the central districts; elsewhere the number follows sqrt(population).
_CENTRAL_TOWNS: dict[str, float] = {
    "500103": 0, "500104": 2, "500105": 3, "500106": 4, "500107": 7, "500108": 3,
    "500109": 9, "500112": 11, "500113": 14,
}  # fmt: skip

# GB 3304 ethnicity: share of 汉族 ("01") and the weights of the others, per district.
_ETHNICITY_DEFAULT = (
    0.99,
    (("15", 40), ("06", 20), ("03", 12), ("07", 6), ("08", 6), ("12", 6), ("37", 5), ("11", 5)),
)
_ETHNICITY: dict[str, tuple[float, tuple[tuple[str, float], ...]]] = {
    "500114": (0.27, (("15", 70), ("06", 2), ("03", 1))),  # 黔江
    "500156": (0.90, (("15", 4), ("06", 3), ("37", 3))),  # 武隆
    "500240": (0.28, (("15", 70), ("06", 1), ("03", 1))),  # 石柱
    "500241": (0.35, (("15", 50), ("06", 14), ("03", 1))),  # 秀山
    "500242": (0.20, (("15", 62), ("06", 17), ("03", 1))),  # 酉阳
    "500243": (0.36, (("06", 50), ("15", 13), ("03", 1))),  # 彭水
}

# 诊疗科目 (National catalogue of clinical subjects): code → name.
DEPARTMENT_NAMES: dict[str, str] = {
    "01": "预防保健科", "02": "全科医疗科", "03": "内科", "04": "外科", "05": "妇产科",
    "06": "妇女保健科", "07": "儿科", "08": "小儿外科", "09": "儿童保健科", "10": "眼科",
    "11": "耳鼻咽喉科", "12": "口腔科", "13": "皮肤科", "14": "医疗美容科", "15": "精神科",
    "16": "传染科", "17": "结核病科", "19": "肿瘤科", "20": "急诊医学科", "21": "康复医学科",
    "26": "麻醉科", "27": "疼痛科", "28": "重症医学科", "30": "医学检验科", "31": "病理科",
    "32": "医学影像科", "50": "中医科", "52": "中西医结合科",
}  # fmt: skip

# Specialty hospitals are recognised by the end of their name; value = their core departments.
_SPECIALTIES: dict[str, tuple[str, ...]] = {
    "精神卫生中心": ("15", "03", "21", "30", "32"),
    "肿瘤医院": ("19", "03", "04", "26", "28", "30", "31", "32"),
    "口腔医院": ("12", "26", "30", "32"),
    "眼科医院": ("10", "26", "30", "32"),
    "骨科医院": ("04", "21", "26", "30", "32"),
    "康复医院": ("21", "03", "50", "30", "32"),
    "传染病医院": ("16", "17", "03", "20", "30", "32"),
    "儿童医院": ("07", "08", "09", "20", "26", "28", "30", "32"),
    "皮肤病医院": ("13", "14", "30", "31"),
    "胸科医院": ("17", "03", "04", "28", "30", "32"),
    "妇产医院": ("05", "06", "26", "30", "32"),
    "耳鼻喉医院": ("11", "26", "30", "32"),
    "医疗美容医院": ("14", "13", "26", "30"),
    "肛肠医院": ("04", "50", "26", "30"),
}
_PUBLIC_SPECIALTIES = (
    "精神卫生中心", "肿瘤医院", "口腔医院", "眼科医院", "骨科医院",
    "康复医院", "传染病医院", "儿童医院", "皮肤病医院", "胸科医院",
)  # fmt: skip
_PRIVATE_SPECIALTIES = (
    "眼科医院", "口腔医院", "妇产医院", "骨科医院", "医疗美容医院",
    "肛肠医院", "耳鼻喉医院", "肿瘤医院", "康复医院",
)  # fmt: skip
_PRIVATE_BRANDS = (
    "华康", "仁济", "博爱", "瑞康", "佑康", "嘉陵", "长江", "山城", "渝康", "和美", "慈航",
    "德济", "永安", "康宁", "惠民", "景和", "泰和", "益寿", "安泰", "明德", "同善",
)  # fmt: skip

# Invented place names: every head+tail pair, e.g. 龙溪, 石坪, 高观.
_PLACE_HEADS = "龙凤石新白黄青双天金玉安太平高观马花桃柳清大古东西南长永兴福德仁和文明华同三"
_PLACE_TAILS = "溪桥坪坝山河湾口场塘岭林池峰关门井田沟庙寺滩岩坡垭沱堡台园"
_ROAD_HEADS = "金银星光明春秋锦云霞滨松柏嘉渝兴朝红翠紫"
_ROAD_TAILS = "华丰安康宁泰和盛源湖园港城苑山林"
_ROADS_PER_DISTRICT = 30

# Mobile prefixes with rough market weights.
_PHONE_PREFIXES: tuple[tuple[str, float], ...] = (
    *((str(p), 3.0) for p in range(130, 140)),
    *((str(p), 2.0) for p in (150, 151, 152, 153, 155, 156, 157, 158, 159)),
    *((str(p), 0.5) for p in range(170, 179)),
    *((str(p), 2.0) for p in range(180, 190)),
    *((str(p), 1.0) for p in (190, 191, 192, 193, 195, 196, 197, 198, 199)),
)

_TITLES = ("主任医师", "副主任医师", "主治医师", "住院医师")


def _rng(seed: int, step: str) -> random.Random:
    """The step's own random stream: steps never share (and so never shift) each other's draws."""
    return random.Random(f"{seed}:{step}")


def _cn(n: int) -> str:
    """Chinese numeral for 0..99 (第二人民医院, 第十一人民医院)."""
    digits = "零一二三四五六七八九"
    if n < 10:
        return digits[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else digits[tens]) + "十" + (digits[ones] if ones else "")


def _apportion(total: int, weights: Sequence[float], minimums: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder), each ≥ its minimum."""
    rest = total - sum(minimums)
    weight_sum = sum(weights)
    if rest < 0 or (rest and weight_sum <= 0):
        raise ValueError(
            f"cannot split {total} institutions over {len(weights)} districts; pass the 38 of"
            " load_districts() or a subset of them"
        )
    quotas = [rest * w / weight_sum if weight_sum else 0.0 for w in weights]
    counts = [m + int(q) for m, q in zip(minimums, quotas, strict=True)]
    order = sorted(range(len(weights)), key=lambda i: (int(quotas[i]) - quotas[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _pop(code: str) -> float:
    return _POPULATION_10K.get(code, _DEFAULT_POP)


def _pull(d: District) -> float:
    return _HOSPITAL_PULL.get(d.code, 1.5 if d.kind == "district" else 1.0)


# --------------------------------------------------------------------------- step: plan


@dataclass(frozen=True, slots=True)
class _Plan:
    """How many institutions of each sort one district gets (its 3 own hospitals not counted)."""

    district: District
    central: bool
    extra_hospitals: int
    private_hospitals: int
    community_centres: int
    township_centres: int


def _plan(seed: int, districts: Sequence[District]) -> list[_Plan]:
    """Counts per district: totals exact, the split by population and pull (jittered)."""
    if not districts:
        raise ValueError("no districts given; use load_districts()")
    rng = _rng(seed, "plan")
    codes = [d.code for d in districts]
    n = len(codes)

    def jitter(ws: list[float]) -> list[float]:
        return [w * rng.uniform(0.85, 1.15) for w in ws]

    pull = [_pull(d) for d in districts]
    extras = _apportion(HOSPITALS_PUBLIC - 3 * n, jitter(pull), [0] * n)
    private = _apportion(HOSPITALS_PRIVATE, jitter([p * p for p in pull]), [0] * n)
    community_w = [
        _pop(c) * (1.0 if c in _CENTRAL else 0.3 if d.kind == "district" else 0.12)
        for c, d in zip(codes, districts)
    ]
    community = _apportion(COMMUNITY_CENTRES, jitter(community_w), [1] * n)
    town_w = [_CENTRAL_TOWNS[c] if c in _CENTRAL else 2.5 * _pop(c) ** 0.5 for c in codes]
    towns = _apportion(TOWNSHIP_CENTRES, jitter(town_w), [1 if w > 0 else 0 for w in town_w])
    return [
        _Plan(d, d.code in _CENTRAL, extras[i], private[i], community[i], towns[i])
        for i, d in enumerate(districts)
    ]


# --------------------------------------------------------------------------- step: places


@dataclass(frozen=True, slots=True)
class _Places:
    """Invented place names of one district: streets (街道), towns (镇/乡), roads, villages."""

    streets: tuple[str, ...]  # "龙溪街道"
    towns: tuple[str, ...]  # "高观镇"
    roads: tuple[str, ...]  # "金华路"
    villages: tuple[tuple[str, ...], ...]  # per town: "石门村", …


@cache
def _place_stems() -> tuple[str, ...]:
    return tuple(h + t for h in _PLACE_HEADS for t in _PLACE_TAILS if h != t)


@cache
def _road_names() -> tuple[str, ...]:
    return tuple(h + t for h in _ROAD_HEADS for t in _ROAD_TAILS if h != t)


def _places(seed: int, plans: Sequence[_Plan]) -> dict[str, _Places]:
    """Unique street and town names per district, enough for one centre each (and ≥ 3 streets)."""
    rng = _rng(seed, "places")
    stems = _place_stems()
    out: dict[str, _Places] = {}
    for plan in plans:
        n_streets = max(plan.community_centres, 3)
        n_towns = plan.township_centres
        if n_streets + n_towns > len(stems):
            raise ValueError(f"{plan.district.name} needs more place names than the generator has")
        picked = rng.sample(stems, n_streets + n_towns)
        xiang_share = 0.0 if plan.central else 0.2 if plan.district.kind == "county" else 0.1
        towns = tuple(s + ("乡" if rng.random() < xiang_share else "镇") for s in picked[n_streets:])
        roads = [r + ("大道" if rng.random() < 0.08 else "街" if rng.random() < 0.2 else "路")
                 for r in rng.sample(_road_names(), _ROADS_PER_DISTRICT)]  # fmt: skip
        villages = tuple(tuple(s + "村" for s in rng.sample(stems, 3)) for _ in towns)
        out[plan.district.code] = _Places(
            streets=tuple(s + "街道" for s in picked[:n_streets]),
            towns=towns,
            roads=tuple(roads),
            villages=villages,
        )
    return out


# --------------------------------------------------------------------------- step: hospitals


@dataclass(slots=True)
class _Draft:
    """A facility under construction; later steps fill level, grade, address and beds."""

    district: District
    letter: str  # H hospital, C community health centre, T township health centre
    kind: str
    ownership: str
    name: str
    tier: str  # "base" (the district's own three), "city" (市级), "extra", "private", "primary"
    place: str = ""  # the street or town a primary-care institution serves
    level: int = 0
    grade: str = ""


def _hospitals(seed: int, plans: Sequence[_Plan], places: dict[str, _Places]) -> list[_Draft]:
    """Every district's 人民医院, 中医院 and 妇幼保健院, then extra public and private hospitals."""
    rng = _rng(seed, "hospitals")
    used: set[str] = set()
    drafts: list[_Draft] = []

    def take(candidates: list[str]) -> str | None:
        for name in candidates:
            if name not in used:
                used.add(name)
                return name
        return None

    city_general = [f"重庆市第{_cn(i)}人民医院" for i in range(1, 13)]
    city_tcm = ["重庆市中医院", "重庆市中西医结合医院", "重庆市中医骨伤医院"]
    city_maternal = ["重庆市妇幼保健院", "重庆市妇女儿童医院"]
    brands = rng.sample(_PRIVATE_BRANDS, len(_PRIVATE_BRANDS))
    for plan in plans:
        d = plan.district
        town_stems = [t[:-1] for t in places[d.code].towns] or [
            s[:-2] for s in places[d.code].streets
        ]
        base = [
            ("general_hospital", f"重庆市{d.name}人民医院"),
            ("tcm_hospital", f"重庆市{d.name}中医院"),
            ("maternal_child_hospital", f"重庆市{d.name}妇幼保健院"),
        ]
        for kind, name in base:
            used.add(name)
            drafts.append(_Draft(d, "H", kind, "public", name, "base"))
        for _ in range(plan.extra_hospitals):
            kind = rng.choices(
                ("general_hospital", "specialty_hospital", "tcm_hospital",
                 "maternal_child_hospital"),
                (45, 35, 15, 5),
            )[0]  # fmt: skip
            city_first = plan.central and rng.random() < 0.5
            if kind == "general_hospital":
                local = [f"重庆市{d.name}第{_cn(i)}人民医院" for i in range(2, 10)]
                local += [f"重庆市{d.name}{s}医院" for s in rng.sample(town_stems, len(town_stems))]
                city = city_general
            elif kind == "tcm_hospital":
                local = [f"重庆市{d.name}中西医结合医院", f"重庆市{d.name}第二中医院"]
                city = city_tcm
            elif kind == "maternal_child_hospital":
                local = [f"重庆市{d.name}妇女儿童医院"]
                city = city_maternal
            else:
                specs = rng.sample(_PUBLIC_SPECIALTIES, len(_PUBLIC_SPECIALTIES))
                local = [f"重庆市{d.name}{s}" for s in specs]
                city = [f"重庆市{s}" for s in specs]
            candidates = (city + local) if city_first else local
            name = take(candidates)
            if name is None:  # this district has used up its names of that kind
                kind = "general_hospital"
                name = take([f"重庆市{d.name}第{_cn(i)}医院" for i in range(1, 100)]) or ""
            tier = "city" if d.name not in name else "extra"
            drafts.append(_Draft(d, "H", kind, "public", name, tier))
        for _ in range(plan.private_hospitals):
            brand = brands.pop() if brands else rng.choice(town_stems)
            if rng.random() < 0.5:
                kind, name = "general_hospital", f"重庆{brand}医院"
            else:
                kind, name = "specialty_hospital", f"重庆{brand}{rng.choice(_PRIVATE_SPECIALTIES)}"
            if name in used:
                name = f"重庆{d.name[:2]}{brand}医院"
            used.add(name)
            drafts.append(_Draft(d, "H", kind, "private", name, "private"))
    return drafts


# --------------------------------------------------------------------------- step: levels


def _levels(seed: int, hospitals: list[_Draft]) -> None:
    """Give hospitals 三级/二级/一级/未定级 in fixed totals; every district's own three are ≥ 二级.

    三级 goes to the strongest hospitals (city-level, then the 人民医院 and 中医院 of districts with
    pull); 二级 first to the remaining district hospitals, then by the same score.
    """
    rng = _rng(seed, "levels")
    kind_weight = {
        "general_hospital": 1.2,
        "tcm_hospital": 1.0,
        "maternal_child_hospital": 0.8,
        "specialty_hospital": 1.0,
    }
    base_weight = {"general_hospital": 3.0, "tcm_hospital": 2.0, "maternal_child_hospital": 1.3}

    def score(h: _Draft) -> float:
        pull = _pull(h.district)
        if h.tier == "city":
            factor = 4.0
        elif h.tier == "base":
            factor = base_weight[h.kind]
        else:
            factor = kind_weight[h.kind]
        return pull * factor * rng.uniform(0.6, 1.4)

    public = [h for h in hospitals if h.ownership == "public"]
    scores = [score(h) for h in public]
    by_score = [public[i] for i in sorted(range(len(public)), key=lambda i: -scores[i])]
    n_top = _PUBLIC_LEVELS[0][1]
    # sorted() is stable: below the top, district hospitals first, each part still by score
    ranked = by_score[:n_top] + sorted(by_score[n_top:], key=lambda h: h.tier != "base")
    _assign_levels(rng, ranked, _PUBLIC_LEVELS)

    private = [h for h in hospitals if h.ownership == "private"]
    _assign_levels(rng, rng.sample(private, len(private)), _PRIVATE_LEVELS)


def _assign_levels(
    rng: random.Random, ranked: list[_Draft], quotas: tuple[tuple[int, int], ...]
) -> None:
    """Hand out ``quotas`` ((level, how many), …) down ``ranked``, drawing a grade for each."""
    if len(ranked) != sum(n for _, n in quotas):
        raise RuntimeError(f"{len(ranked)} hospitals do not match the level quotas {quotas}")
    grade_weights = {3: (80, 20, 0), 2: (55, 40, 5), 1: (30, 45, 25)}
    i = 0
    for level, n in quotas:
        for h in ranked[i : i + n]:
            h.level = level
            if level == 0:
                h.grade = ""
            else:
                private2 = h.ownership == "private" and level == 2
                h.grade = rng.choices("甲乙丙", (30, 70, 0) if private2 else grade_weights[level])[0]
        i += n


# --------------------------------------------------------------------------- step: primary care


def _primary_care(seed: int, plans: Sequence[_Plan], places: dict[str, _Places]) -> list[_Draft]:
    """One community health service centre per street, one township health centre per town."""
    rng = _rng(seed, "primary_care")
    drafts: list[_Draft] = []
    for plan in plans:
        d, p = plan.district, places[plan.district.code]
        for street in p.streets[: plan.community_centres]:
            name = f"{d.name}{street}社区卫生服务中心"
            draft = _Draft(d, "C", "community_health_centre", "public", name, "primary", street)
            if rng.random() < 0.4:
                draft.level, draft.grade = 1, rng.choice("甲乙")
            drafts.append(draft)
        for town in p.towns[: plan.township_centres]:
            suffix = "中心卫生院" if rng.random() < 0.15 else "卫生院"
            draft = _Draft(d, "T", "township_health_centre", "public", f"{d.name}{town}{suffix}",
                           "primary", town)  # fmt: skip
            if rng.random() < 0.5:
                draft.level, draft.grade = 1, rng.choices("甲乙丙", (40, 45, 15))[0]
            drafts.append(draft)
    return drafts


# --------------------------------------------------------------------------- step: details

_BEDS: dict[str, dict[int, tuple[int, int]]] = {
    "general_hospital": {3: (800, 2400), 2: (300, 900), 1: (30, 99), 0: (20, 60)},
    "tcm_hospital": {3: (500, 1500), 2: (200, 600), 1: (30, 99), 0: (20, 50)},
    "maternal_child_hospital": {3: (300, 900), 2: (100, 400), 1: (20, 80), 0: (10, 40)},
    "specialty_hospital": {3: (300, 1200), 2: (100, 500), 1: (20, 99), 0: (10, 50)},
    "community_health_centre": {1: (10, 60), 0: (0, 40)},
    "township_health_centre": {1: (30, 120), 0: (10, 60)},
}


def _details(seed: int, drafts: list[_Draft], places: dict[str, _Places]) -> list[Facility]:
    """Codes, addresses inside the district and bed counts; the result is sorted by code."""
    rng = _rng(seed, "details")
    seq: dict[tuple[str, str], int] = {}
    out: list[Facility] = []
    for h in drafts:
        d, p = h.district, places[h.district.code]
        key = (d.code, h.letter)
        seq[key] = seq.get(key, 0) + 1
        number = rng.randint(1, 399)
        if h.letter == "T":
            address = f"重庆市{d.name}{h.place}{rng.choice('正新老河上下中')}街{number}号"
        elif h.letter == "C":
            address = f"重庆市{d.name}{h.place}{rng.choice(p.roads)}{number}号"
        else:
            address = f"重庆市{d.name}{rng.choice(p.roads)}{number}号"
        lo, hi = _BEDS[h.kind][h.level]
        beds = rng.randint(lo, hi)
        if h.letter == "H" and h.level >= 2:
            if h.tier == "city":
                beds = int(beds * 1.4)
            elif d.code in _CENTRAL:
                beds = int(beds * 1.2)
        if beds >= 100:
            beds = round(beds, -1)
        out.append(Facility(f"{d.code}{h.letter}{seq[key]:03d}", h.name, h.kind, h.level, h.grade,
                            h.ownership, d.code, address, beds))  # fmt: skip
    out.sort(key=lambda f: f.code)
    return out


def facilities(seed: int, districts: Sequence[District] | None = None) -> list[Facility]:
    """All 1,141 institutions: 244 hospitals (227 public, 17 private) and 897 primary-care ones."""
    districts = load_districts() if districts is None else list(districts)
    plans = _plan(seed, districts)
    places = _places(seed, plans)
    hospitals = _hospitals(seed, plans, places)
    _levels(seed, hospitals)
    return _details(seed, hospitals + _primary_care(seed, plans, places), places)


# --------------------------------------------------------------------------- step: departments

# kind → (departments every such facility has, optional ones to draw from)
_DEPARTMENT_POOLS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "general_hospital": (
        ("03", "04", "05", "07", "20", "30", "32"),
        ("10", "11", "12", "13", "19", "21", "26", "28", "31", "50", "15", "16", "27", "52", "01",
         "17", "09", "08", "14", "06"),
    ),
    "tcm_hospital": (
        ("50", "03", "04", "30", "32"),
        ("21", "27", "52", "05", "07", "13", "10", "11", "12", "20", "26", "28", "31", "01", "19"),
    ),
    "maternal_child_hospital": (
        ("05", "07", "06", "09", "30", "32"),
        ("08", "26", "28", "01", "20", "12", "10", "31", "21", "50"),
    ),
    "community_health_centre": (("02", "01"), ("50", "30", "21", "12", "07", "09", "06", "32")),
    "township_health_centre": (("02", "01"), ("03", "04", "50", "05", "30", "32", "07", "21")),
}  # fmt: skip
_SPECIALTY_EXTRAS = ("01", "03", "20", "21", "26", "27", "28", "31", "50", "52")
# (kind group, level) → (fewest, most) departments
_DEPARTMENT_COUNTS: dict[str, dict[int, tuple[int, int]]] = {
    "general_hospital": {3: (15, 20), 2: (10, 14), 1: (6, 9), 0: (4, 6)},
    "tcm_hospital": {3: (14, 18), 2: (9, 13), 1: (5, 7), 0: (4, 5)},
    "maternal_child_hospital": {3: (12, 15), 2: (8, 11), 1: (6, 7), 0: (4, 6)},
    "primary": {1: (3, 5), 0: (3, 5)},
}


def _specialty_core(name: str) -> tuple[str, ...]:
    for suffix, core in _SPECIALTIES.items():
        if name.endswith(suffix):
            return core
    return ("03", "04", "30", "32")


def departments(seed: int, facilities: Sequence[Facility]) -> list[Department]:
    """Clinical departments per facility, more at higher levels; sorted by facility, then code."""
    rng = _rng(seed, "departments")
    out: list[Department] = []
    for f in facilities:
        if f.kind == "specialty_hospital":
            core = _specialty_core(f.name)
            extras = [c for c in _SPECIALTY_EXTRAS if c not in core]
            n_extra = rng.randint(*{3: (3, 5), 2: (1, 3)}.get(f.level, (0, 1)))
            codes = list(core) + rng.sample(extras, min(n_extra, len(extras)))
        else:
            core, pool = _DEPARTMENT_POOLS[f.kind]
            group = "primary" if f.kind.endswith("health_centre") else f.kind
            n = rng.randint(*_DEPARTMENT_COUNTS[group][f.level])
            codes = list(core[:n]) + rng.sample(pool, max(0, n - len(core)))
        out.extend(Department(f.code, c, DEPARTMENT_NAMES[c]) for c in sorted(codes))
    return out


# --------------------------------------------------------------------------- names


@dataclass(frozen=True, slots=True)
class _Names:
    """Faker zh_CN's name lists, prepared once for fast weighted sampling."""

    surnames: tuple[str, ...]
    surname_cw: tuple[float, ...]
    male: tuple[str, ...]
    female: tuple[str, ...]
    male_single: tuple[str, ...]
    female_single: tuple[str, ...]


@cache
def _names() -> _Names:
    """Surnames are a weighted dict in Faker (percent of population); given names plain lists."""
    surnames = _ZhPerson.last_names
    male = tuple(_ZhPerson.first_names_male)
    female = tuple(_ZhPerson.first_names_female)
    return _Names(
        surnames=tuple(surnames),
        surname_cw=tuple(accumulate(surnames.values())),
        male=male,
        female=female,
        male_single=tuple(n for n in male if len(n) == 1),
        female_single=tuple(n for n in female if len(n) == 1),
    )


def _name_sampler(rng: random.Random) -> tuple[Callable[[], str], Callable[[bool], str]]:
    """``surname()`` and ``given(is_male)`` drawing from ``rng``.

    ``surnames[bisect(cw, rnd() * total, 0, hi)]`` is exactly what
    ``rng.choices(surnames, cum_weights=cw)[0]`` computes, without building a list per call.
    A one-character given name gets a second character sometimes, for more variety than Faker's
    131 names.
    """
    names = _names()
    rnd = rng.random
    surnames, cw = names.surnames, names.surname_cw
    total, hi = cw[-1], len(cw) - 1
    male, female = names.male, names.female
    male1, female1 = names.male_single, names.female_single
    n_male, n_female, n_male1, n_female1 = len(male), len(female), len(male1), len(female1)

    def surname() -> str:
        return surnames[bisect(cw, rnd() * total, 0, hi)]

    def given(is_male: bool) -> str:
        if is_male:
            g = male[int(rnd() * n_male)]
            if len(g) == 1 and rnd() < 0.45:
                g += male1[int(rnd() * n_male1)]
        else:
            g = female[int(rnd() * n_female)]
            if len(g) == 1 and rnd() < 0.45:
                g += female1[int(rnd() * n_female1)]
        return g

    return surname, given


# --------------------------------------------------------------------------- step: practitioners

# Cumulative weights of _TITLES (主任, 副主任, 主治, 住院) by hospital level, and in primary care.
_TITLE_CW: dict[int, tuple[int, ...]] = {
    3: tuple(accumulate((10, 22, 36, 32))),
    2: tuple(accumulate((5, 17, 40, 38))),
    1: tuple(accumulate((2, 10, 40, 48))),
    0: tuple(accumulate((2, 10, 40, 48))),
}
_TITLE_CW_PRIMARY = tuple(accumulate((1, 6, 38, 55)))
# Physicians per department: (fewest, most) by hospital level, and in primary care.
_PER_DEPARTMENT = {3: (4, 10), 2: (3, 6), 1: (2, 4), 0: (1, 3)}
_PER_DEPARTMENT_PRIMARY = (1, 3)


def practitioners(
    seed: int, facilities: Sequence[Facility], departments: Sequence[Department]
) -> Iterator[Practitioner]:
    """A few physicians per department (more at higher levels) with a title pyramid."""
    rng = _rng(seed, "practitioners")
    surname, given = _name_sampler(rng)
    by_facility: dict[str, list[Department]] = {}
    for dep in departments:
        by_facility.setdefault(dep.facility_code, []).append(dep)
    n = 0
    for f in facilities:
        primary = f.kind.endswith("health_centre")
        cw = _TITLE_CW_PRIMARY if primary else _TITLE_CW[f.level]
        lo, hi = _PER_DEPARTMENT_PRIMARY if primary else _PER_DEPARTMENT[f.level]
        for dep in by_facility.get(f.code, ()):
            for _ in range(rng.randint(lo, hi)):
                n += 1
                is_male = rng.random() < 0.5
                title = rng.choices(_TITLES, cum_weights=cw)[0]
                yield Practitioner(f"D{n:07d}", f.code, dep.code, surname() + given(is_male),
                                   "1" if is_male else "2", title)  # fmt: skip


# --------------------------------------------------------------------------- step: residents

_MIN_BIRTH = date(1930, 1, 1)
_YEAR = 365.2425


@cache
def _calendar() -> tuple[tuple[date, ...], tuple[str, ...]]:
    """Every day from 1930-01-01 to AS_OF as a date and as YYYYMMDD (≈35,000 each, built once)."""
    start = _MIN_BIRTH.toordinal()
    days = tuple(date.fromordinal(o) for o in range(start, AS_OF.toordinal() + 1))
    return days, tuple(d.strftime("%Y%m%d") for d in days)


def _years_before(years: float) -> int:
    """The ordinal of the day ``years`` before AS_OF."""
    return AS_OF.toordinal() - int(years * _YEAR)


# Household types: (weight, adults, fewest children, most children).
# adults: 1 single woman, 2 single man, 3 couple.
_HOUSEHOLDS = (
    (11, 1, 0, 0),
    (8, 2, 0, 0),
    (31, 3, 0, 0),
    (24, 3, 1, 1),
    (18, 3, 2, 2),
    (3, 3, 3, 3),
    (4, 1, 1, 2),
    (1, 2, 1, 1),
)
# Age bands of the woman of the house (or of the single adult): (weight, from age, to age);
# households planned with children draw from the parent bands, the others from the adult bands.
# Tuned so that 2026 has about 15 % under 15 and 16 % over 65 (census 2020 trend for Chongqing).
_ADULT_AGES = (
    (8, 20, 30), (5, 30, 40), (6, 40, 50), (22, 50, 60),
    (30, 60, 70), (20, 70, 80), (7, 80, 88), (2, 88, 96),
)  # fmt: skip
_PARENT_AGES = ((10, 20, 30), (36, 30, 40), (36, 40, 50), (18, 50, 60))


def residents(
    seed: int, count: int, districts: Sequence[District] | None = None
) -> Iterator[Resident]:
    """``count`` residents, generated household by household and streamed.

    ID numbers are unique by construction: a counter per (district, birth day, sex) picks the
    order code, so nothing grows with ``count`` beyond one fixed array. Phones are unique too
    (prefix + an affine permutation of the resident id), except children sharing a parent's.
    """
    if count < 0:
        raise ValueError(f"count must be ≥ 0, not {count}")
    districts = load_districts() if districts is None else list(districts)
    plans = _plan(seed, districts)
    places = _places(seed, plans)
    rng = _rng(seed, "residents")
    rnd = rng.random
    surname, given = _name_sampler(rng)
    days, ymds = _calendar()
    n_days = len(days)
    min_ord = _MIN_BIRTH.toordinal()
    as_of = AS_OF.toordinal()
    adult18 = _years_before(18)
    as_of_minus_18 = date(AS_OF.year - 18, AS_OF.month, AS_OF.day).toordinal()
    as_of_minus_16 = date(AS_OF.year - 16, AS_OF.month, AS_OF.day).toordinal()
    as_of_minus_10 = date(AS_OF.year - 10, AS_OF.month, AS_OF.day).toordinal()
    as_of_minus_22 = _years_before(22)
    year = _YEAR

    # Per-district tables: everything a household needs, indexed once per household.
    table: list[tuple[Any, ...]] = []
    for di, plan in enumerate(plans):
        d, p = plan.district, places[plan.district.code]
        urban = [f"重庆市{d.name}{s}{r}" for s in p.streets for r in rng.sample(p.roads, 4)]
        rural = [f"重庆市{d.name}{t}{v}" for t, vs in zip(p.towns, p.villages) for v in vs]
        if not rural:
            urban_share = 1.0
        else:
            urban_share = 0.92 if plan.central else 0.55 if d.kind == "district" else 0.4
        han, others = _ETHNICITY.get(d.code, _ETHNICITY_DEFAULT)
        eth_codes = tuple(c for c, _ in others)
        eth_cw = tuple(accumulate(w for _, w in others))
        table.append((d.code, di * n_days, urban_share, urban, rural, han, eth_codes, eth_cw,
                      rng.randrange(500)))  # fmt: skip
    district_cw = tuple(accumulate(_pop(p.district.code) for p in plans))
    hh_cw = tuple(accumulate(h[0] for h in _HOUSEHOLDS))
    adult_cw = tuple(accumulate(a[0] for a in _ADULT_AGES))
    parent_cw = tuple(accumulate(a[0] for a in _PARENT_AGES))
    prefixes = tuple(p for p, _ in _PHONE_PREFIXES)
    prefix_cw = tuple(accumulate(w for _, w in _PHONE_PREFIXES))
    n_prefixes = len(prefixes)
    phone_a = rng.randrange(10_000_001, 99_999_999, 2)
    if phone_a % 5 == 0:
        phone_a += 2  # coprime to 10**8, so id → suffix is a permutation
    phone_b = rng.randrange(100_000_000)
    counters = array("H", bytes(2 * 2 * n_days * len(table)))

    def ethnicity(han: float, codes: tuple[str, ...], cw: tuple[float, ...]) -> str:
        if rnd() < han:
            return "01"
        return codes[bisect(cw, rnd() * cw[-1], 0, len(cw) - 1)]

    def adult_birth(bands: tuple[tuple[int, int, int], ...], cw: tuple[int, ...]) -> int:
        _, lo, hi = bands[bisect(cw, rnd() * cw[-1])]
        return max(min_ord, as_of - int((lo + rnd() * (hi - lo)) * year))

    rid = 0
    family = 0
    while rid < count:
        family += 1
        (code, day_base, urban_share, urban, rural, han, eth_codes, eth_cw, offset) = table[
            bisect(district_cw, rnd() * district_cw[-1], 0, len(table) - 1)
        ]
        if rnd() < urban_share:
            address = (f"{urban[int(rnd() * len(urban))]}{1 + int(rnd() * 300)}号"
                       f"{1 + int(rnd() * 20)}栋{1 + int(rnd() * 4)}单元"
                       f"{1 + int(rnd() * 32)}-{1 + int(rnd() * 6)}")  # fmt: skip
        else:
            village = rural[int(rnd() * len(rural))]
            address = f"{village}{1 + int(rnd() * 12)}组{1 + int(rnd() * 150)}号"
        _, adults, fewest, most = _HOUSEHOLDS[bisect(hh_cw, rnd() * hh_cw[-1])]

        # members: (is_male, birth ordinal, surname, ethnicity, index of guardian in members or -1).
        # "mother" is the woman of the house; a single man's age is drawn relative to her too.
        members: list[tuple[bool, int, str, str, int]] = []
        if most:
            mother_ord = adult_birth(_PARENT_AGES, parent_cw)
        else:
            mother_ord = adult_birth(_ADULT_AGES, adult_cw)
        father_sur = mother_sur = ""
        father_eth = mother_eth = "01"
        if adults & 1:  # a woman
            mother_sur = surname()
            mother_eth = ethnicity(han, eth_codes, eth_cw)
            members.append((False, mother_ord, mother_sur, mother_eth, -1))
        if adults & 2:  # a man, 2 years younger to 6 older than the woman
            father_ord = mother_ord - int((rnd() * 8 - 2) * year)
            father_ord = min(max(father_ord, min_ord), adult18 - 365)
            father_sur = surname()
            if adults == 3 and rnd() < 0.8:
                father_eth = mother_eth
            else:
                father_eth = ethnicity(han, eth_codes, eth_cw)
            members.insert(0, (True, father_ord, father_sur, father_eth, -1))
        if most:
            n_children = fewest if fewest == most else fewest + int(rnd() * (most - fewest + 1))
            if adults == 1:
                sur, eth = mother_sur, mother_eth
            else:
                sur = father_sur if (adults == 2 or rnd() < 0.92) else mother_sur
                eth = father_eth if father_eth != "01" or adults == 2 else mother_eth
            guardian = 0 if adults != 3 or rnd() < 0.7 else 1
            born = mother_ord + int((21 + rnd() * 12) * year)
            for _ in range(n_children):
                if born > as_of:
                    break
                if born > as_of_minus_22 or rnd() < 0.4:  # most grown-up children have moved out
                    members.append((rnd() < 0.515, born, sur, eth, guardian))
                born += int((1.5 + rnd() * 4.5) * year)

        ids: list[int] = []
        phones: list[str] = []
        for is_male, birth, sur, eth, guardian in members:
            rid += 1
            if rid > count:
                return
            day = birth - min_ord
            slot = (day_base + day) * 2 + (0 if is_male else 1)
            k = counters[slot]
            spread = day * 193 + offset  # fixed per slot, so k → order stays one-to-one
            if k >= 499:  # odd codes 001..999 (men) or even 002..998 (women) left over
                raise ValueError(f"{count} residents need more than 499 of one sex born on one day"
                                 " in one district, which one ID order code cannot hold; lower count")
            if is_male:
                order = (k * 37 + spread) % 500 * 2 + 1
            else:
                order = (k * 37 + spread) % 499 * 2 + 2
            counters[slot] = k + 1
            first17 = f"{code}{ymds[day]}{order:03d}"
            minor = birth > as_of_minus_18
            if minor and birth > as_of_minus_16 and (birth > as_of_minus_10 or rnd() < 0.5):
                phone = phones[guardian]  # a child under 16 often has only a parent's number
            else:
                prefix = prefixes[bisect(prefix_cw, rnd() * prefix_cw[-1], 0, n_prefixes - 1)]
                phone = f"{prefix}{(rid * phone_a + phone_b) % 100_000_000:08d}"
            ids.append(rid)
            phones.append(phone)
            yield Resident(rid, sur + given(is_male), "1" if is_male else "2", days[day],
                           first17 + check_digit(first17), phone, code, address, eth, family,
                           ids[guardian] if minor and guardian >= 0 else None)  # fmt: skip
