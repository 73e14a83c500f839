"""The synthetic region: exact institution totals, valid identities, families that hold together."""

import dataclasses
import inspect
import re
from collections import Counter
from datetime import date

import pytest

from smartcare.synth import region
from smartcare.synth.region import (
    AS_OF,
    DEPARTMENT_NAMES,
    SCALES,
    Department,
    Facility,
    Practitioner,
    Resident,
    as_row,
    departments,
    facilities,
    load_districts,
    practitioners,
    residents,
)

SEED = 7
N_RESIDENTS = SCALES["small"]
PRIMARY = {"community_health_centre", "township_health_centre"}
CENTRAL = {"500103", "500104", "500105", "500106", "500107", "500108", "500109", "500112", "500113"}
CJK_NAME = re.compile(r"[\u4e00-\u9fff]{2,4}")


def iso7064_check(first17: str) -> str:
    """GB 11643 check character, computed here independently of the code under test."""
    total = sum(int(ch) * (2 ** (17 - i) % 11) for i, ch in enumerate(first17))
    return "10X98765432"[total % 11]


def age_on(born: date, day: date) -> int:
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


@pytest.fixture(scope="module")
def districts() -> list[region.District]:
    return load_districts()


@pytest.fixture(scope="module")
def facs(districts: list[region.District]) -> list[Facility]:
    return facilities(SEED, districts)


@pytest.fixture(scope="module")
def deps(facs: list[Facility]) -> list[Department]:
    return departments(SEED, facs)


@pytest.fixture(scope="module")
def docs(facs: list[Facility], deps: list[Department]) -> list[Practitioner]:
    return list(practitioners(SEED, facs, deps))


@pytest.fixture(scope="module")
def people(districts: list[region.District]) -> list[Resident]:
    return list(residents(SEED, N_RESIDENTS, districts))


def test_iso7064_helper_matches_a_published_example() -> None:
    assert iso7064_check("11010519491231002") == "X"


def test_districts_come_from_the_packaged_gbt2260_extract(districts: list[region.District]) -> None:
    assert len(districts) == 38
    assert Counter(d.kind for d in districts) == {"district": 26, "county": 12}
    assert len({d.code for d in districts}) == 38
    assert all(re.fullmatch(r"500\d{3}", d.code) for d in districts)


def test_facility_totals(facs: list[Facility]) -> None:
    hospitals = [f for f in facs if f.kind not in PRIMARY]
    primary = [f for f in facs if f.kind in PRIMARY]
    assert len(facs) == 1141
    assert len(hospitals) == 244
    assert Counter(f.ownership for f in hospitals) == {"public": 227, "private": 17}
    assert len(primary) == 897
    assert {f.ownership for f in primary} == {"public"}


def test_facility_codes_and_names_are_unique(facs: list[Facility]) -> None:
    assert len({f.code for f in facs}) == len(facs)
    assert len({f.name for f in facs}) == len(facs)
    for f in facs:
        letter = "C" if f.kind == "community_health_centre" else "T" if f.kind in PRIMARY else "H"
        assert re.fullmatch(rf"{f.district_code}{letter}\d{{3}}", f.code), f.code


def test_every_district_has_a_hospital_and_primary_care(
    facs: list[Facility], districts: list[region.District]
) -> None:
    hospitals = Counter(f.district_code for f in facs if f.kind not in PRIMARY)
    primary = Counter(f.district_code for f in facs if f.kind in PRIMARY)
    for d in districts:
        assert hospitals[d.code] >= 1, d.name
        assert primary[d.code] >= 1, d.name
        assert f"重庆市{d.name}人民医院" in {f.name for f in facs}


def test_hospital_levels_are_realistic(facs: list[Facility]) -> None:
    hospitals = [f for f in facs if f.kind not in PRIMARY]
    levels = Counter(f.level for f in hospitals)
    assert 50 <= levels[3] <= 70
    assert 120 <= levels[2] <= 140
    assert levels[1] + levels[0] == 244 - levels[3] - levels[2]
    private = Counter(f.level for f in hospitals if f.ownership == "private")
    assert private[3] == 0
    assert private[2] + private[1] >= 13
    for f in facs:
        assert f.level in (3, 2, 1, 0)
        assert (f.grade == "") == (f.level == 0), f
        assert f.grade in ("甲", "乙", "丙", "")
        assert f.beds >= 0


def test_central_districts_have_more_and_bigger_hospitals(facs: list[Facility]) -> None:
    hospitals = [f for f in facs if f.kind not in PRIMARY]
    central = [f for f in hospitals if f.district_code in CENTRAL]
    rest = [f for f in hospitals if f.district_code not in CENTRAL]
    assert len(central) / 9 > 2 * len(rest) / 29
    assert sum(f.level == 3 for f in central) > sum(f.level == 3 for f in rest)
    assert sum(f.beds for f in central) / len(central) > sum(f.beds for f in rest) / len(rest)
    community = [f for f in facs if f.kind == "community_health_centre"]
    township = [f for f in facs if f.kind == "township_health_centre"]
    assert sum(f.district_code in CENTRAL for f in community) > len(community) / 2
    assert sum(f.district_code in CENTRAL for f in township) < len(township) / 5


def test_facility_names_and_addresses_are_chinese_and_local(
    facs: list[Facility], districts: list[region.District]
) -> None:
    names = {d.code: d.name for d in districts}
    for f in facs:
        assert f.address.startswith(f"重庆市{names[f.district_code]}"), f
        assert re.search(r"\d+号$", f.address), f
        if f.kind == "community_health_centre":
            assert f.name.startswith(names[f.district_code]) and f.name.endswith("街道社区卫生服务中心")
        elif f.kind == "township_health_centre":
            assert f.name.startswith(names[f.district_code]) and f.name.endswith("卫生院")
        elif f.ownership == "private":
            assert f.name.startswith("重庆") and not f.name.startswith("重庆市")
        else:
            assert f.name.startswith("重庆市")


def test_departments_follow_kind_and_level(facs: list[Facility], deps: list[Department]) -> None:
    by_facility: dict[str, list[Department]] = {}
    for dep in deps:
        by_facility.setdefault(dep.facility_code, []).append(dep)
        assert DEPARTMENT_NAMES[dep.code] == dep.name
    assert len({(d.facility_code, d.code) for d in deps}) == len(deps)
    for f in facs:
        codes = {d.code for d in by_facility[f.code]}
        if f.kind == "general_hospital" and f.level == 3:
            assert 15 <= len(codes) <= 20
        if f.kind in PRIMARY:
            assert 3 <= len(codes) <= 5 and "02" in codes
        if f.kind == "tcm_hospital":
            assert "50" in codes
        if f.kind == "maternal_child_hospital":
            assert {"05", "07"} <= codes
        if f.name.endswith("眼科医院"):
            assert "10" in codes


def test_practitioners_have_unique_codes_and_a_title_pyramid(
    deps: list[Department], docs: list[Practitioner]
) -> None:
    assert len({p.code for p in docs}) == len(docs)
    assert all(re.fullmatch(r"D\d{7}", p.code) for p in docs)
    known = {(d.facility_code, d.code) for d in deps}
    assert all((p.facility_code, p.department_code) in known for p in docs)
    assert known == {(p.facility_code, p.department_code) for p in docs}  # every department staffed
    titles = Counter(p.title for p in docs)
    assert titles["主任医师"] < titles["副主任医师"] < titles["主治医师"]
    assert titles["主任医师"] < titles["住院医师"]
    assert {p.sex for p in docs} == {"1", "2"}
    assert all(CJK_NAME.fullmatch(p.name) for p in docs)


def test_facilities_are_deterministic_per_seed(districts: list[region.District]) -> None:
    first = facilities(7, districts)
    assert first == facilities(7, districts)
    assert departments(7, first) == departments(7, facilities(7, districts))
    assert first != facilities(8, districts)


def test_residents_are_deterministic_per_seed(
    districts: list[region.District], people: list[Resident]
) -> None:
    assert list(residents(SEED, N_RESIDENTS, districts)) == people
    assert list(residents(8, 500, districts)) != people[:500]


def test_residents_stream(districts: list[region.District]) -> None:
    stream = residents(SEED, SCALES["city"], districts)
    assert inspect.isgenerator(stream)
    first = next(stream)  # the city scale starts at once: nothing is built up front
    assert first.id == 1
    assert list(residents(SEED, 0, districts)) == []


def test_resident_ids_and_id_numbers(people: list[Resident]) -> None:
    assert [p.id for p in people] == list(range(1, N_RESIDENTS + 1))
    for p in people:
        n = p.id_number
        assert len(n) == 18 and n[:17].isdigit(), n
        assert n[17] == iso7064_check(n[:17]), n
        assert n[:6] == p.district_code
        assert n[6:14] == p.birth_date.strftime("%Y%m%d")
        assert int(n[16]) % 2 == (1 if p.sex == "1" else 0)
        assert date(1930, 1, 1) <= p.birth_date <= AS_OF
    assert len({p.id_number for p in people}) == len(people)


def test_families_and_guardians(people: list[Resident]) -> None:
    by_id = {p.id: p for p in people}
    for p in people:
        minor = age_on(p.birth_date, AS_OF) < 18
        assert (p.guardian_id is not None) == minor, p
        if p.guardian_id is not None:
            g = by_id[p.guardian_id]
            assert g.family_id == p.family_id
            assert age_on(g.birth_date, p.birth_date) >= 16
            assert age_on(g.birth_date, AS_OF) >= 18
            assert g.address == p.address
    sizes = Counter(Counter(p.family_id for p in people).values())
    assert set(sizes) <= {1, 2, 3, 4, 5}
    assert sizes[1] and sizes[2] and sizes[3] and sizes[4]


def test_children_usually_carry_the_fathers_surname(people: list[Resident]) -> None:
    by_id = {p.id: p for p in people}
    with_father = [p for p in people if p.guardian_id and by_id[p.guardian_id].sex == "1"]
    same = sum(p.name[0] == by_id[p.guardian_id].name[0] for p in with_father)
    assert same > 0.85 * len(with_father)


def test_resident_contact_details(people: list[Resident], districts: list[region.District]) -> None:
    names = {d.code: d.name for d in districts}
    by_id = {p.id: p for p in people}
    own_phones = []
    for p in people:
        assert re.fullmatch(r"1[3-9]\d{9}", p.phone), p.phone
        assert names[p.district_code] in p.address
        assert p.address.startswith("重庆市")
        if p.guardian_id is None or p.phone != by_id[p.guardian_id].phone:
            own_phones.append(p.phone)
    assert len(set(own_phones)) == len(own_phones)
    names_ok = sum(bool(CJK_NAME.fullmatch(p.name)) for p in people)
    assert names_ok == len(people)
    assert len({p.name for p in people}) > len(people) / 4


def test_population_looks_like_chongqing(people: list[Resident]) -> None:
    n = len(people)
    by_district = Counter(p.district_code for p in people)
    assert by_district["500112"] > 5 * by_district["500229"]  # 渝北 vs 城口
    assert len(by_district) == 38
    ethnicity = Counter(p.ethnicity for p in people)
    assert 0.90 < ethnicity["01"] / n < 0.97
    tujia_counties = [p for p in people if p.district_code in {"500240", "500241", "500242"}]
    assert sum(p.ethnicity == "15" for p in tujia_counties) > 0.4 * len(tujia_counties)
    ages = [age_on(p.birth_date, AS_OF) for p in people]
    assert 0.10 < sum(a < 15 for a in ages) / n < 0.20
    assert 0.10 < sum(a >= 65 for a in ages) / n < 0.25
    assert 0.45 < sum(p.sex == "1" for p in people) / n < 0.55


def test_as_row_follows_columns(
    facs: list[Facility], deps: list[Department], docs: list[Practitioner], people: list[Resident]
) -> None:
    for obj in (facs[0], deps[0], docs[0], people[0]):
        row = as_row(obj)
        assert row == tuple(getattr(obj, c) for c in type(obj).COLUMNS)
    for cls in (Facility, Department, Practitioner, Resident):
        assert cls.COLUMNS == tuple(f.name for f in dataclasses.fields(cls))  # COLUMNS is no field
