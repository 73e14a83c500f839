"""Synthetic visit cards: errors at the documented rates, each doing what its code says, truth apart."""

import dataclasses
import re
import unicodedata
from collections import Counter, defaultdict
from datetime import date

import pytest

from smartcare.platform.idcard import is_valid, upgrade_15_to_18
from smartcare.synth import visitcards
from smartcare.synth.region import (
    AS_OF,
    Resident,
    facilities,
    load_districts,
    residents,
)
from smartcare.synth.visitcards import (
    ERROR_CODES,
    ERROR_RATES,
    Truth,
    VisitCard,
    as_row,
    twins,
    visit_cards,
)

SEED = 7
N_RESIDENTS = 20_000
CENTRAL = {"500103", "500104", "500105", "500106", "500107", "500108", "500109", "500112", "500113"}


def years(days: int) -> float:
    return days / 365.2425


@pytest.fixture(scope="module")
def facs():
    return facilities(SEED)


@pytest.fixture(scope="module")
def base() -> list[Resident]:
    return list(residents(SEED, N_RESIDENTS))


@pytest.fixture(scope="module")
def extra(base) -> list[Resident]:
    return list(twins(SEED, base))


@pytest.fixture(scope="module")
def people(base, extra) -> dict[int, Resident]:
    return {r.id: r for r in base + extra}


@pytest.fixture(scope="module")
def pairs(base, extra, facs) -> list[tuple[VisitCard, Truth]]:
    return list(visit_cards(SEED, base + extra, facs))


@pytest.fixture(scope="module")
def with_error(pairs, people):
    """Error code → [(card, resident)] of every card carrying it."""
    out = defaultdict(list)
    for card, truth in pairs:
        for code in truth.errors:
            out[code].append((card, people[truth.resident_id]))
    return out


@pytest.fixture(scope="module")
def district_names() -> dict[str, str]:
    return {d.code: f"重庆市{d.name}" for d in load_districts()}


def test_same_seed_same_cards_other_seed_other_cards(base, extra, facs, pairs):
    again = list(visit_cards(SEED, base + extra, facs))
    assert again == pairs
    assert list(twins(SEED, base)) == extra
    first = [card for card, _ in visit_cards(SEED, base[:2000], facs)]
    other = [card for card, _ in visit_cards(SEED + 1, base[:2000], facs)]
    assert first == [card for card, _ in pairs[: len(first)]]  # streaming: a prefix is a prefix
    assert other != first


def test_cards_are_at_existing_facilities_with_unique_numbers(pairs, facs):
    codes = {f.code for f in facs}
    assert all(card.facility_code in codes for card, _ in pairs)
    per_facility = Counter((card.facility_code, card.card_no) for card, _ in pairs)
    assert per_facility.most_common(1)[0][1] == 1
    assert len({card.card_id for card, _ in pairs}) == len(pairs)
    assert all(card.card_id == truth.card_id for card, truth in pairs)
    assert all(re.fullmatch(r"[A-Z]{0,3}\d{7,10}", card.card_no) for card, _ in pairs[:1000])


def test_every_resident_holds_a_card_at_different_hospitals(pairs, people):
    held = defaultdict(list)
    for card, truth in pairs:
        held[truth.resident_id].append(card.facility_code)
    assert held.keys() == people.keys()
    assert all(len(codes) == len(set(codes)) for codes in held.values())
    assert 2.4 < len(pairs) / len(people) < 2.6
    assert max(len(codes) for codes in held.values()) >= 6  # Poisson-ish tail


def test_hospitals_are_mostly_local_and_big_ones_central(pairs, people, facs):
    by_code = {f.code: f for f in facs}
    where = Counter()
    for card, truth in pairs:
        f, r = by_code[card.facility_code], people[truth.resident_id]
        if f.district_code == r.district_code:
            where["own district"] += 1
        elif f.level == 3 and f.district_code in CENTRAL:
            where["central 三级"] += 1
        if f.kind.endswith("health_centre"):
            assert f.district_code == r.district_code  # primary care is always the own district's
    assert where["own district"] / len(pairs) > 0.55
    assert where["central 三级"] / len(pairs) > 0.15


def test_error_rate_within_the_documented_band(pairs):
    share = sum(1 for _, truth in pairs if truth.errors) / len(pairs)
    assert 0.15 <= share <= 0.25
    assert "band 15–25 %" in visitcards.__doc__


def test_every_error_code_appears_and_is_known(pairs):
    seen = Counter(code for _, truth in pairs for code in truth.errors)
    assert set(seen) == set(ERROR_CODES)
    assert set(ERROR_RATES) == set(ERROR_CODES)
    assert all(len(zh_en) == 2 and all(zh_en) for zh_en in ERROR_CODES.values())


def test_documented_rates_are_the_rates_used():
    table = {}
    for line in visitcards.__doc__.splitlines():
        m = re.match(r"([a-z0-9_]+)\s{2,}.*?\s{2,}([\d.]+)(?:–[\d.]+)? %\s+[\d.]+ %$", line)
        if m and m.group(1) in ERROR_CODES:
            table[m.group(1)] = float(m.group(2)) / 100
    assert table.keys() == ERROR_CODES.keys()
    assert table == pytest.approx(ERROR_RATES)


def test_a_card_without_errors_is_the_resident_exactly(pairs, people):
    for card, truth in pairs:
        if truth.errors:
            continue
        r = people[truth.resident_id]
        assert (card.name, card.id_number, card.sex, card.birth_date, card.phone, card.address) == (
            r.name, r.id_number, r.sex, r.birth_date, r.phone, r.address)  # fmt: skip
        assert max(r.birth_date, date(2008, 1, 1)) <= card.registered_at <= AS_OF


def test_swapped_and_mistyped_ids_fail_the_check_character(with_error):
    for code in ("id_transposed", "id_typo"):
        for card, r in with_error[code]:
            assert card.id_number != r.id_number
            assert len(card.id_number) == 18
            assert not is_valid(card.id_number), code
    for card, r in with_error["id_transposed"]:
        diff = [i for i in range(18) if card.id_number[i] != r.id_number[i]]
        assert len(diff) == 2 and diff[1] == diff[0] + 1
        assert sorted(card.id_number) == sorted(r.id_number)


def test_15_digit_ids_upgrade_to_the_true_id(with_error):
    assert with_error["id_15"]
    for card, r in with_error["id_15"]:
        assert len(card.id_number) == 15
        assert r.birth_date.year < 2000
        assert upgrade_15_to_18(card.id_number) == r.id_number


def test_id_formatting_errors_normalise_back(pairs, with_error, people):
    for card, truth in pairs:
        if "id_lower_x" not in truth.errors:
            continue
        assert card.id_number[-1] == "x"
        if {"id_typo", "id_transposed"} & set(truth.errors):
            continue  # a mistyped number may also end in x
        r = people[truth.resident_id]
        # the x may be on the number a child was registered under: its guardian's
        guardian = people[r.guardian_id].id_number if r.guardian_id else None
        assert card.id_number.upper() in (r.id_number, guardian)
    for card, r in with_error["id_fullwidth"]:
        assert unicodedata.normalize("NFKC", card.id_number) == r.id_number
        assert not card.id_number.isascii()
    for card, _ in with_error["id_missing"]:
        assert card.id_number is None


def test_missing_ids_are_more_common_for_old_people(pairs, people):
    totals, missing = Counter(), Counter()
    for card, truth in pairs:
        if {"id_guardian", "newborn_name"} & set(truth.errors):
            continue
        age = years((card.registered_at - people[truth.resident_id].birth_date).days)
        band = "old" if age >= 65 else "adult" if age >= 18 else "child"
        totals[band] += 1
        missing[band] += "id_missing" in truth.errors
    assert missing["old"] / totals["old"] > 2 * missing["adult"] / totals["adult"]


def test_guardian_id_cards_carry_the_guardians_id_and_the_childs_own_data(pairs, people):
    n = 0
    for card, truth in pairs:
        if "id_guardian" not in truth.errors:
            continue
        n += 1
        child = people[truth.resident_id]
        guardian = people[child.guardian_id]
        assert card.id_number.upper() == guardian.id_number != child.id_number
        assert years((card.registered_at - child.birth_date).days) < 16
        assert card.name == child.name  # the child's own name: no name error on these cards
        birth_error = any(code.startswith("birth_") for code in truth.errors)
        assert card.birth_date == child.birth_date or birth_error
        assert card.birth_date != guardian.birth_date
        assert card.sex == child.sex or {"sex_missing", "sex_wrong"} & set(truth.errors)
    assert n > 100


def test_newborn_cards_are_named_after_the_guardian(with_error, people):
    cards = with_error["newborn_name"]
    assert len(cards) > 50
    for card, child in cards:
        guardian = people[child.guardian_id]
        assert card.name == guardian.name + ("之子" if child.sex == "1" else "之女")
        assert card.id_number is None
        assert card.birth_date == child.birth_date
        assert 0 <= (card.registered_at - child.birth_date).days < 366


def test_name_errors_change_the_name_as_their_code_says(with_error):
    for card, r in with_error["name_homophone"]:
        assert len(card.name) == len(r.name)
        assert sum(a != b for a, b in zip(card.name, r.name, strict=True)) == 1
    for card, r in with_error["name_traditional"]:
        assert card.name != r.name and len(card.name) == len(r.name)
    for card, r in with_error["name_space"]:
        assert " " in card.name and card.name.replace(" ", "") == r.name
    for card, r in with_error["name_fullwidth"]:
        assert "\u3000" in card.name and card.name.replace("\u3000", "") == r.name
    for card, r in with_error["name_drop"]:
        assert len(card.name) == len(r.name) - 1 and card.name[0] == r.name[0]
    for card, r in with_error["name_swap"]:
        assert sorted(card.name) == sorted(r.name) and card.name != r.name


def test_other_field_errors_do_what_their_code_says(with_error, district_names):
    for card, r in with_error["sex_missing"]:
        assert card.sex in ("", "0", "9")
    for card, r in with_error["sex_wrong"]:
        assert {card.sex, r.sex} == {"1", "2"}
    for card, r in with_error["birth_day_off"]:
        assert abs((card.birth_date - r.birth_date).days) == 1
    for card, r in with_error["birth_month_day_swap"]:
        assert (card.birth_date.month, card.birth_date.day) == (r.birth_date.day, r.birth_date.month)
    for card, r in with_error["birth_year_only"]:
        assert card.birth_date == date(r.birth_date.year, 1, 1) != r.birth_date
    for card, _ in with_error["birth_missing"]:
        assert card.birth_date is None
    for card, r in with_error["phone_changed"] + with_error["phone_relative"]:
        assert card.phone and card.phone != r.phone and re.fullmatch(r"1\d{10}", card.phone)
    for card, _ in with_error["phone_missing"]:
        assert card.phone is None
    for card, r in with_error["address_district_only"]:
        assert card.address == district_names[r.district_code]
        assert r.address.startswith(card.address)
    for card, r in with_error["address_old"]:
        assert not card.address.startswith(district_names[r.district_code])
        assert card.address.startswith("重庆市")
    for card, _ in with_error["address_missing"]:
        assert card.address is None


def test_twins_share_family_and_birth_but_not_identity(base, extra, pairs, people):
    assert len(extra) > 10
    assert min(t.id for t in extra) > max(r.id for r in base)
    by_day = defaultdict(list)
    for r in base:
        if r.guardian_id is not None:
            by_day[(r.family_id, r.birth_date)].append(r)
    assert all(len(group) == 1 for group in by_day.values())  # region alone makes no twins
    for t in extra:
        (sibling,) = by_day[(t.family_id, t.birth_date)]
        assert t.name[0] == sibling.name[0] and t.name != sibling.name
        assert t.address == sibling.address and t.guardian_id == sibling.guardian_id
        assert t.id_number != sibling.id_number and is_valid(t.id_number)
        assert t.id_number[:14] == sibling.id_number[:14]
        assert int(t.id_number[16]) % 2 == (1 if t.sex == "1" else 0)
    all_ids = [r.id_number for r in people.values()]
    assert len(set(all_ids)) == len(all_ids)
    phones = Counter(r.phone for r in base)
    assert all(t.phone == people[t.guardian_id].phone or phones[t.phone] == 0 for t in extra)
    holders = {truth.resident_id for _, truth in pairs}
    assert all(t.id in holders for t in extra)


def test_the_truth_is_not_on_the_card(pairs):
    card_fields = {f.name for f in dataclasses.fields(VisitCard)}
    assert card_fields & {f.name for f in dataclasses.fields(Truth)} == {"card_id"}
    assert not card_fields & {"resident_id", "errors", "family_id", "guardian_id", "id"}
    card, truth = pairs[0]
    assert not hasattr(card, "resident_id")
    assert str(truth.resident_id) not in card.card_id.split("-")


def test_as_row_follows_columns(pairs):
    card, truth = pairs[0]
    assert as_row(card) == tuple(getattr(card, c) for c in VisitCard.COLUMNS)
    assert as_row(truth) == (truth.card_id, truth.resident_id, truth.errors)
    assert VisitCard.COLUMNS[:3] == ("card_id", "facility_code", "card_no")


def test_fewer_than_one_card_per_resident_is_refused(base, facs):
    with pytest.raises(ValueError, match="cards_per_resident"):
        next(visit_cards(SEED, base, facs, cards_per_resident=0.5))


def test_homophones_share_their_pinyin():
    import pypinyin
    readings = {}

    def toneless(ch: str) -> set[str]:
        if ch not in readings:
            got = pypinyin.pinyin(ch, style=pypinyin.Style.NORMAL, heteronym=True)[0]
            readings[ch] = set(got)
        return readings[ch]

    given = visitcards._GIVEN_HOMOPHONES
    assert len(given) >= 50
    for table in (given, visitcards._SURNAME_HOMOPHONES):
        for ch, others in table.items():
            for other in others:
                assert toneless(ch) & toneless(other), (ch, other)


def test_traditional_forms_are_opencc_s2t():
    import opencc
    s2t = opencc.OpenCC("s2t")
    for simplified, traditional in visitcards._TRADITIONAL.items():
        assert s2t.convert(simplified) == traditional != simplified
