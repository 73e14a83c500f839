"""Normalisation of visit-card records: names, pinyin, ID numbers, sex, birth dates, phones,
addresses and districts, with the repairs and conflicts it reports."""

from datetime import date, datetime

import pytest

from smartcare.empi.normalize import (
    Normalized,
    Repair,
    normalize,
    pinyin_of,
    same_sound,
)
from smartcare.platform.idcard import check_digit, make, upgrade_15_to_18

TODAY = date(2024, 6, 1)
BIRTH = date(1980, 1, 2)
MALE_ID = make("500112", BIRTH, 6, "1")  # 渝北区, born 1980-01-02, male
FEMALE_ID = make("500106", date(1992, 11, 30), 40, "2")  # 沙坪坝区
OLD_ID = "500112800102013"  # a pre-1999 15-digit number: 渝北区, 1980-01-02, order 013 (male)
FULLWIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")


def norm(**record: object) -> Normalized:
    return normalize(record, today=TODAY)


def codes(n: Normalized, field: str | None = None) -> set[str]:
    return {r.code for r in n.repairs if field is None or r.field == field}


def with_wrong_check_digit(number: str) -> str:
    wrong = "1" if number[17] != "1" else "2"
    assert check_digit(number[:17]) != wrong
    return number[:17] + wrong


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "simplified"),
    [("張偉", "张伟"), ("陳小明", "陈小明"), ("劉德華", "刘德华"), ("歐陽鋒", "欧阳锋")],
)
def test_traditional_names_become_simplified(written: str, simplified: str) -> None:
    n = norm(name=written)
    assert n.name == simplified
    assert n.name_key == simplified
    assert "traditional_to_simplified" in codes(n, "name")


def test_simplified_name_is_not_reported_as_repaired() -> None:
    n = norm(name="张伟")
    assert n.name == "张伟"
    assert n.repairs == ()


def test_characters_that_are_standard_in_names_are_not_simplified_away() -> None:
    # OpenCC alone turns 乾 into 干 and 於 into 于; in names they are characters of their own.
    assert norm(name="李乾").name == "李乾"
    assert norm(name="於丹").name == "於丹"
    assert norm(name="張乾").name == "张乾"


@pytest.mark.parametrize("written", ["张 伟", " 张伟 ", "张　伟", "张\u200b伟", "张\t伟"])
def test_spaces_inside_chinese_names_are_dropped(written: str) -> None:
    n = norm(name=written)
    assert n.name == "张伟"
    assert n.pinyin == ("zhang", "wei")


def test_padding_space_is_a_repair_but_surrounding_space_is_not() -> None:
    assert "inner_space_removed" in codes(norm(name="王　芳"), "name")
    assert codes(norm(name="  王芳 ")) == set()


def test_fullwidth_name_letters_become_ascii() -> None:
    n = norm(name="ＪＯＨＮ　ＳＭＩＴＨ")
    assert n.name == "John Smith"
    assert n.name_key == "JohnSmith"
    assert "fullwidth" in codes(n, "name")


def test_latin_names_keep_one_space_and_capitalised_words() -> None:
    n = norm(name="  john   SMITH ")
    assert n.name == "John Smith"
    assert (n.surname, n.given) == ("John", "Smith")
    assert n.pinyin == ("john", "smith")
    assert n.initials == "js"


def test_pinyin_written_name_reads_like_the_characters() -> None:
    assert norm(name="ZHANG WEI").pinyin_key == norm(name="张伟").pinyin_key == "zhangwei"


@pytest.mark.parametrize(
    "written",
    [
        "阿不都·热合曼",
        "阿不都•热合曼",
        "阿不都.热合曼",
        "阿不都．热合曼",
        "阿不都・热合曼",
        "阿不都‧热合曼",
        "阿不都-热合曼",
        "阿不都　热合曼",
        "阿不都 · 热合曼",
    ],
)
def test_minority_name_separators_become_the_middle_dot(written: str) -> None:
    n = norm(name=written)
    assert n.name == "阿不都·热合曼"
    assert n.name_key == "阿不都热合曼"
    assert n.pinyin == ("a", "bu", "dou", "re", "he", "man")
    assert (n.surname, n.given) == ("阿不都", "热合曼")


def test_minority_name_written_correctly_has_no_repair() -> None:
    assert norm(name="阿不都·热合曼").repairs == ()
    assert "separator_unified" in codes(norm(name="阿不都.热合曼"), "name")


def test_transliterated_name_is_not_read_as_a_han_surname() -> None:
    # 查 as a surname is zha, but 查尔斯 (Charles) is cha.
    assert norm(name="查尔斯·狄更斯").pinyin[0] == "cha"


# --- surnames and pinyin ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "syllables"),
    [
        ("单雄信", ("shan", "xiong", "xin")),
        ("曾国藩", ("zeng", "guo", "fan")),
        ("区志强", ("ou", "zhi", "qiang")),
        ("解缙", ("xie", "jin")),
        ("仇英", ("qiu", "ying")),
        ("朴槿惠", ("piao", "jin", "hui")),
        ("查良镛", ("zha", "liang", "yong")),
        ("盖聂", ("ge", "nie")),
        ("覃明", ("qin", "ming")),
        ("员明", ("yun", "ming")),
        ("翟志刚", ("zhai", "zhi", "gang")),
        ("尉迟恭", ("yu", "chi", "gong")),
        ("万俟卨", ("mo", "qi", "xie")),
        ("长孙无忌", ("zhang", "sun", "wu", "ji")),
        ("欧阳修", ("ou", "yang", "xiu")),
        ("吕布", ("lv", "bu")),
    ],
)
def test_surnames_are_read_as_surnames(name: str, syllables: tuple[str, ...]) -> None:
    assert pinyin_of(name) == syllables
    n = norm(name=name)
    assert n.pinyin == syllables
    assert n.pinyin_key == "".join(syllables)
    assert n.initials == "".join(s[0] for s in syllables)


def test_the_surname_reading_applies_to_the_first_character_only() -> None:
    # 单 in a given name keeps its everyday reading.
    assert pinyin_of("张单") == ("zhang", "dan")
    assert pinyin_of("解放") == ("xie", "fang")


@pytest.mark.parametrize(
    ("name", "surname", "given"),
    [
        ("欧阳修", "欧阳", "修"),
        ("司马光", "司马", "光"),
        ("诸葛亮", "诸葛", "亮"),
        ("上官婉儿", "上官", "婉儿"),
        ("东方朔", "东方", "朔"),
        ("皇甫嵩", "皇甫", "嵩"),
        ("歐陽娜娜", "欧阳", "娜娜"),
        ("张伟", "张", "伟"),
        ("单雄信", "单", "雄信"),
        ("欧阳", "欧", "阳"),  # two characters: a single surname and a given name
    ],
)
def test_compound_surnames_are_split_off(name: str, surname: str, given: str) -> None:
    n = norm(name=name)
    assert (n.surname, n.given) == (surname, given)


def test_pinyin_of_cleans_the_name_first() -> None:
    assert pinyin_of("單 雄信") == ("shan", "xiong", "xin")
    assert pinyin_of("") == ()


def test_homophones_share_a_pinyin_key() -> None:
    assert norm(name="张伟").pinyin_key == norm(name="章伟").pinyin_key == "zhangwei"
    assert same_sound("张伟", "张玮")
    assert same_sound("张伟", "章玮")
    assert same_sound("張偉", "张伟")
    assert not same_sound("张伟", "王伟")
    assert not same_sound("", "")


# --- ID numbers ------------------------------------------------------------------------------


def test_valid_id_number_is_kept_and_described() -> None:
    n = norm(id_number=MALE_ID, sex="1", birth_date=BIRTH)
    assert n.id_number == MALE_ID
    assert n.id_valid
    assert n.id_problem is None
    assert (n.id_birth_date, n.id_sex, n.id_region) == (BIRTH, "1", "500112")
    assert n.repairs == ()
    assert n.conflicts == ()


def test_id_number_spaces_lowercase_x_and_fullwidth_digits_are_cleaned() -> None:
    known = "11010519491231002X"
    spaced = f" {known[:6]} {known[6:14]} {known[14:].lower()} "
    assert norm(id_number=spaced).id_number == known
    n = norm(id_number=known.translate(FULLWIDTH))
    assert n.id_number == known
    assert n.id_valid
    assert "fullwidth" in codes(n, "id_number")


def test_15_digit_id_number_is_upgraded_with_a_repair() -> None:
    n = norm(id_number=OLD_ID)
    assert n.id_number == upgrade_15_to_18(OLD_ID)
    assert len(n.id_number) == 18
    assert n.id_valid
    assert n.id_birth_date == BIRTH
    assert n.id_sex == "1"  # order code 013 is odd
    assert Repair("id_number", "id_upgraded_15", "15-digit ID upgraded to 18") in n.repairs


def test_wrong_check_digit_is_reported_and_nothing_is_derived_from_it() -> None:
    wrong = with_wrong_check_digit(MALE_ID)
    n = norm(id_number=wrong, sex="", birth_date=None)
    assert not n.id_valid
    assert n.id_problem == "check_digit"
    assert n.id_number == wrong  # still evidence: a typo copied by two hospitals
    assert (n.id_birth_date, n.id_sex, n.id_region) == (None, None, None)
    assert n.sex == "0"
    assert n.birth_date is None
    assert n.repairs == ()
    assert n.conflicts == ()


@pytest.mark.parametrize(
    ("written", "problem", "kept"),
    [
        ("12345", "length", False),
        ("99011219800102001X", "region", True),
        ("500112198013020011", "birth_date", True),
    ],
)
def test_other_invalid_id_numbers(written: str, problem: str, kept: bool) -> None:
    n = norm(id_number=written)
    assert not n.id_valid
    assert n.id_problem == problem
    assert (n.id_number == written) is kept
    if not kept:
        assert n.id_number is None


def test_missing_id_number_is_not_a_problem() -> None:
    for missing in (None, "", "   ", float("nan")):
        n = norm(id_number=missing)
        assert (n.id_number, n.id_valid, n.id_problem) == (None, False, None)


# --- sex and birth date ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "code"),
    [
        ("1", "1"), (1, "1"), ("男", "1"), ("男性", "1"), ("M", "1"), ("m", "1"), ("male", "1"),
        ("Male", "1"), ("2", "2"), (2, "2"), ("女", "2"), ("F", "2"), ("female", "2"),
        ("Ｆ", "2"), ("0", "0"), ("未知", "0"), ("9", "9"), ("未说明", "9"), (None, "0"),
        ("", "0"), ("?", "0"),
    ],
)  # fmt: skip
def test_sex_is_read_as_a_gb_t_2261_1_code(written: object, code: str) -> None:
    assert norm(sex=written).sex == code


@pytest.mark.parametrize(
    "written",
    [
        "1980-01-02", "1980/1/2", "1980/01/02", "19800102", "1980年1月2日", "1980.1.2",
        "1980-01-02 08:30:00", "1980-01-02T08:30:00", "１９８０－０１－０２", " 1980年01月02日 ",
        BIRTH, datetime(1980, 1, 2, 8, 30), 19800102,
    ],
)  # fmt: skip
def test_birth_date_formats(written: object) -> None:
    assert norm(birth_date=written).birth_date == BIRTH


@pytest.mark.parametrize("written", ["", None, "unknown", "1980-13-01", "1980-02-30", "1880-01-01",
                                     "2030-01-01", "80-1-2"])
def test_unreadable_or_impossible_birth_dates_are_none(written: object) -> None:
    assert norm(birth_date=written).birth_date is None


def test_sex_and_birth_date_are_filled_from_a_valid_id_number() -> None:
    n = norm(id_number=MALE_ID, sex="", birth_date="")
    assert n.sex == "1"
    assert n.birth_date == BIRTH
    assert Repair("sex", "sex_from_id", "sex inferred from ID number") in n.repairs
    assert "birth_from_id" in codes(n, "birth_date")
    assert n.conflicts == ()


def test_unknown_and_unspecified_sex_are_filled_from_the_id_number() -> None:
    for recorded in ("0", "9", "未知"):
        n = norm(id_number=FEMALE_ID, sex=recorded)
        assert n.sex == "2"
        assert "sex_from_id" in codes(n)


def test_recorded_sex_that_contradicts_the_id_number_is_kept_as_a_conflict() -> None:
    n = norm(id_number=MALE_ID, sex="女", birth_date=BIRTH)
    assert n.sex == "2"  # the record says so; matching decides whom to believe
    assert n.id_sex == "1"
    assert n.conflicts == ("sex",)
    assert "sex_from_id" not in codes(n)


def test_recorded_birth_date_that_contradicts_the_id_number_is_a_conflict() -> None:
    n = norm(id_number=MALE_ID, sex="男", birth_date="1980-02-01")
    assert n.birth_date == date(1980, 2, 1)
    assert n.id_birth_date == BIRTH
    assert n.conflicts == ("birth_date",)
    both = norm(id_number=MALE_ID, sex="F", birth_date="1981年1月2日")
    assert both.conflicts == ("sex", "birth_date")


# --- phones ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "phone", "repair"),
    [
        ("13812348000", "13812348000", None),
        ("+86 138 1234 8000", "13812348000", "country_code_removed"),
        ("+86-138-1234-8000", "13812348000", "country_code_removed"),
        ("0086 13812348000", "13812348000", "country_code_removed"),
        ("8613812348000", "13812348000", "country_code_removed"),
        ("１３８１２３４８０００", "13812348000", "fullwidth"),
        ("013812348000", "13812348000", "trunk_prefix_removed"),
        (13812348000, "13812348000", None),
        (13812348000.0, "13812348000", None),
        ("023-6789 1234", "02367891234", None),
        ("(023)67891234", "02367891234", None),
        ("+86 23 6789 1234", "02367891234", "country_code_removed"),
        ("023-67891234转801", "02367891234", None),
        ("67891234", "67891234", None),
        ("13812348000/13912345678", "13812348000", "first_of_several"),
        ("023-67891234，13912345678", "13912345678", "first_of_several"),
    ],
)
def test_phones(written: object, phone: str, repair: str | None) -> None:
    n = norm(phone=written)
    assert n.phone == phone
    assert n.phone_last8 == phone[-8:]
    if repair is not None:
        assert repair in codes(n, "phone")
    else:
        assert codes(n, "phone") == set()


def test_phone_last8() -> None:
    assert norm(phone="+86 138 1234 8000").phone_last8 == "12348000"


@pytest.mark.parametrize("written", [None, "", "无", "12345", "+1 415 555 0100", "23812348000"])
def test_things_that_are_not_phones(written: object) -> None:
    n = norm(phone=written)
    assert n.phone is None
    assert n.phone_last8 is None


# --- addresses and districts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("重庆市渝北区龙溪街道金山路18号", "500112"),
        ("渝北龙溪街道金山路18号", "500112"),
        ("渝北区龙溪街道", "500112"),
        ("中国重庆市沙坪坝区小龙坎", "500106"),
        ("重慶市沙坪壩區小龍坎", "500106"),
        ("重庆市九龙坡区杨家坪", "500107"),
        ("重庆市石柱土家族自治县南宾街道", "500240"),
        ("重庆石柱南宾街道", "500240"),
        ("重庆市忠县忠州街道", "500233"),
        ("重庆市开县汉丰街道", "500154"),
        ("重庆市 江北区  观音桥", "500105"),
        ("北京市朝阳区建国路88号", None),
        ("宁波市江北区中马街道", None),
        ("上海市长寿路100号", None),
        ("四川省成都市武侯区", None),
        ("重庆市", None),
        ("", None),
    ],
)
def test_district_is_found_in_the_address(address: str, code: str | None) -> None:
    assert norm(address=address).district_code == code


def test_address_is_cleaned() -> None:
    n = norm(address=" 重慶市 渝北區  龍溪街道 金山路１８號 ")
    assert n.address == "重庆市渝北区龙溪街道金山路18号"
    assert "traditional_to_simplified" in codes(n, "address")


def test_address_in_another_district_than_the_id_region_is_a_conflict() -> None:
    assert norm(id_number=MALE_ID, address="重庆市渝北区龙溪街道").conflicts == ()
    n = norm(id_number=MALE_ID, address="重庆市沙坪坝区小龙坎")
    assert n.conflicts == ("district",)


def test_former_county_codes_in_id_numbers_match_todays_districts() -> None:
    kaixian = make("500234", BIRTH, 3, "1")  # 开县, a district (开州区, 500154) since 2016
    assert norm(id_number=kaixian, address="重庆市开州区汉丰街道").conflicts == ()


def test_id_issued_outside_chongqing_is_no_district_conflict() -> None:
    beijing = make("110105", BIRTH, 3, "1")
    assert norm(id_number=beijing, address="重庆市渝北区").conflicts == ()


# --- the whole record ------------------------------------------------------------------------


def test_empty_record() -> None:
    n = normalize({})
    assert (n.name, n.name_key, n.pinyin, n.pinyin_key, n.initials) == ("", "", (), "", "")
    assert (n.id_number, n.id_valid, n.sex, n.birth_date, n.phone) == (None, False, "0", None, None)
    assert (n.address, n.district_code, n.repairs, n.conflicts) == ("", None, (), ())


def test_a_messy_visit_card() -> None:
    n = norm(
        name="張　偉",
        id_number=" " + OLD_ID.translate(FULLWIDTH),
        sex=None,
        birth_date=None,
        phone="+86 138 1234 8000",
        address="重慶市渝北區龍溪街道",
    )
    assert (n.name, n.pinyin_key, n.initials, n.surname, n.given) == (
        "张伟", "zhangwei", "zw", "张", "伟",
    )
    assert n.id_number == upgrade_15_to_18(OLD_ID)
    assert (n.sex, n.birth_date) == ("1", BIRTH)
    assert (n.phone, n.district_code) == ("13812348000", "500112")
    assert codes(n) >= {
        "fullwidth", "traditional_to_simplified", "inner_space_removed", "id_upgraded_15",
        "sex_from_id", "birth_from_id", "country_code_removed",
    }
    assert n.conflicts == ()


def test_normalized_is_immutable() -> None:
    n = norm(name="张伟")
    with pytest.raises(AttributeError):
        n.name = "李四"  # type: ignore[misc]


# --- personal data stays out of repr and messages --------------------------------------------


@pytest.mark.parametrize("id_number", [MALE_ID, OLD_ID, with_wrong_check_digit(MALE_ID)])
def test_repr_and_repairs_show_no_personal_values(id_number: str) -> None:
    n = norm(
        name="张　伟明",
        id_number=id_number,
        sex="",
        birth_date=None,
        phone="+86 138 1234 8000",
        address="重庆市渝北区龙溪街道金山路18号",
    )
    shown = [repr(n), str(n), *(repr(r) for r in n.repairs), *(r.message for r in n.repairs)]
    secrets = [id_number, upgrade_15_to_18(OLD_ID), "19800102", "800102", "13812348000",
               "12348000", "张伟明", "伟明", "金山路", "zhang"]  # fmt: skip
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert "1980" not in repr(n)
    assert "张*" in repr(n)  # masked, but still recognisable to support staff
