"""The field configuration: every predicate's SQL (Splink on DuckDB) and Python (real-time scoring)
renderings put a pair in the same level, config errors name the key at fault, the Chinese
features put the hard cases (traditional forms, surname readings, guardians' IDs, twins, 15-digit
IDs, newborns' placeholder names) in the intended levels, and a model scores as Fellegi–Sunter says."""

from __future__ import annotations

import copy
import itertools
import math
from datetime import date

import duckdb
import pyarrow as pa
import pytest
import yaml

from smartcare.empi.fields import (
    PREDICATES,
    Comparison,
    chinese_features,
    default_config,
    load_config,
    parse_config,
)
from smartcare.empi.scoring import Model
from smartcare.platform import idcard
from smartcare.platform.errors import InvalidInput

# --- SQL and Python renderings agree -------------------------------------------------------------

# A config made to exercise every predicate alone (each [predicate, else], so it is always
# evaluated) and in combination with all / any / not and level order. Thresholds sit exactly on
# similarities of the sample's pairs (dwayne/duane 0.84, zhangwei/zhangwen 0.95).
EXTRA = yaml.safe_load("""
name: all-predicates
features:
  s: {from: s}
  t: {from: t}
  n: {from: n}
  b: {from: b}
  d: {from: d}
  d_swap: {from: d_swap}
comparisons:
  - {name: missing, levels: [{missing: s}, {else: true}]}
  - {name: missing_any, levels: [{missing: [s, n]}, {else: true}]}
  - {name: exact, levels: [{exact: s}, {else: true}]}
  - {name: exact_number, levels: [{exact: n}, {else: true}]}
  - {name: both_true, levels: [{both_true: b}, {else: true}]}
  - {name: either_false, levels: [{either_false: b}, {else: true}]}
  - {name: cross_date, levels: [{cross: [d, d_swap]}, {else: true}]}
  - {name: cross_names, levels: [{cross: [s, t]}, {else: true}]}
  - {name: edit1, levels: [{edit: {col: s, max: 1}}, {else: true}]}
  - {name: edit2, levels: [{edit: {col: s, max: 2}}, {else: true}]}
  - {name: jw84, levels: [{jaro_winkler: {col: s, min: 0.84}}, {else: true}]}
  - {name: jw88, levels: [{jaro_winkler: {col: s, min: 0.88}}, {else: true}]}
  - {name: jw95, levels: [{jaro_winkler: {col: s, min: 0.95}}, {else: true}]}
  - {name: within1, levels: [{within: {col: n, max: 1}}, {else: true}]}
  - {name: within3, levels: [{within: {col: n, max: 3}}, {else: true}]}
  - {name: not_exact, levels: [{not: {exact: s}}, {else: true}]}
  - {name: not_either_false, levels: [{not: {either_false: b}}, {else: true}]}
  - {name: all_any, levels: [{all: [{exact: t}, {any: [{edit: {col: s, max: 1}}, {within: {col: n, max: 1}}]}]},
                             {else: true}]}
  - name: ordered
    levels:
      - {missing: [s, t]}
      - {exact: s, tf: s}
      - {cross: [s, t]}
      - {all: [{jaro_winkler: {col: s, min: 0.88}}, {not: {exact: t}}]}
      - {any: [{edit: {col: s, max: 2}}, {both_true: b}]}
      - {else: true}
blocking: [[s, t]]
training: {deterministic: [[s, n]], em_blocking: [[t]]}
""")

STRINGS = [None, "martha", "marhta", "marta", "dwayne", "duane", "smith", "smyth", "jones", "jonas",
           "jon", "john", "zhangwei", "zhangwen", "chenjing", "chenjun", "ca", "abc"]


def _extra_sample() -> list[dict]:
    """Feature dicts whose pairs hit both sides of every predicate: None, equal, one edit, a
    transposition, similarities on and around the thresholds, numbers 0-3 apart, swapped dates and
    names, and booleans true / false / unknown."""
    swaps = [("2001-03-04", "2001-04-03"), ("2001-04-03", "2001-03-04"), ("2001-03-14", None), (None, None)]
    out = []
    for i, s in enumerate(STRINGS):
        d, d_swap = swaps[i % len(swaps)]
        out.append({"s": s, "t": STRINGS[(i * 7 + 3) % len(STRINGS)], "n": [None, 10, 11, 12, 13, 14.5][i % 6],
                    "b": [True, False, None][i % 3], "d": d, "d_swap": d_swap})
    out.append({"s": "martha", "t": "marta", "n": 11, "b": True, "d": "2001-03-04", "d_swap": "2001-04-03"})
    out.append({"s": "marta", "t": "martha", "n": 10, "b": True, "d": "2001-04-03", "d_swap": "2001-03-04"})
    return out


def _sql_levels(comparisons: tuple[Comparison, ...], pairs: list[tuple[dict, dict]]) -> list[list[int]]:
    """Each pair's level in each comparison as DuckDB computes it: a CASE over the levels' SQL."""
    names = sorted({k for a, b in pairs for k in (*a, *b)})
    columns = {"i": pa.array(range(len(pairs)))}
    for f in names:
        columns[f"{f}_l"] = pa.array([a.get(f) for a, _ in pairs])
        columns[f"{f}_r"] = pa.array([b.get(f) for _, b in pairs])
    con = duckdb.connect()
    con.register("pairs", pa.table(columns))
    cases = []
    for comp in comparisons:
        assert comp.levels[-1].sql == "ELSE"
        whens = " ".join(f"WHEN {lv.sql} THEN {i}" for i, lv in enumerate(comp.levels[:-1]))
        cases.append(f"CASE {whens} ELSE {len(comp.levels) - 1} END")
    rows = con.execute(f"SELECT {', '.join(cases)} FROM pairs ORDER BY i").fetchall()
    return [list(r) for r in rows]


def _assert_agree(comparisons: tuple[Comparison, ...], pairs: list[tuple[dict, dict]]) -> dict[str, set[int]]:
    """SQL and Python levels agree on every pair; returns the levels seen per comparison."""
    sql = _sql_levels(comparisons, pairs)
    seen: dict[str, set[int]] = {c.name: set() for c in comparisons}
    wrong = []
    for (a, b), row in zip(pairs, sql, strict=True):
        for comp, in_sql in zip(comparisons, row, strict=True):
            in_python = comp.level_of(a, b)
            seen[comp.name].add(in_python)
            if in_sql != in_python:
                wrong.append((comp.name, a, b, in_sql, in_python))
    assert not wrong, f"{len(wrong)} disagreements (comparison, a, b, sql, python), first: {wrong[:5]}"
    return seen


def test_extra_config_uses_every_predicate() -> None:
    def keys(node) -> set:
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        return {k for v in node for k in keys(v)} if isinstance(node, list) else set()

    unused = set(PREDICATES) - keys(EXTRA["comparisons"])
    assert not unused, f"predicates added without a case here: {unused}"


def test_every_predicate_renders_alike_in_sql_and_python() -> None:
    config = parse_config(EXTRA)
    sample = _extra_sample()
    pairs = list(itertools.product(sample, repeat=2))
    seen = _assert_agree(config.comparisons, pairs)
    # Each single-predicate comparison was both true and false somewhere, else it tested nothing.
    assert all(seen[c.name] == {0, 1} for c in config.comparisons if len(c.levels) == 2), seen
    assert seen["ordered"] == set(range(6))


def _chinese_records() -> list[dict]:
    born = date(1980, 1, 2)
    a = idcard.make("500112", born, 6, "1")
    parent = idcard.make("500103", date(1975, 6, 1), 20, "1")
    twin1, twin2 = (idcard.make("500112", date(2010, 5, 6), k, "2") for k in (10, 11))
    typo = a[:10] + ("1" if a[10] != "1" else "2") + a[11:]   # check digit no longer fits
    swapped = a[:12] + a[13] + a[12] + a[14:]
    return [
        {"name": "张伟", "id_number": a, "sex": "1", "birth_date": "1980-01-02", "phone": "13812345678",
         "address": "重庆市渝北区龙溪街道1号"},
        {"name": "張偉", "id_number": a[:6] + a[8:17], "birth_date": "1980/1/2", "phone": "023-67891234"},
        {"name": "章伟", "birth_date": "1980-01-03", "phone": "+86 138 1234 5678", "address": "渝北区"},
        {"name": "张玮", "id_number": typo, "sex": "男", "birth_date": "1980-02-01"},
        {"name": "张伟明", "id_number": swapped, "birth_date": "1980-12-30", "phone": "13912345678"},
        {"name": "张明伟", "id_number": a, "birth_date": "1980-11-02", "address": "重庆市沙坪坝区"},
        {"name": "单伟", "sex": "1", "birth_date": "1980-01-02", "phone": "13812345678"},
        {"name": "善伟", "birth_date": "1981-01-02"},
        {"name": "张三", "id_number": parent, "birth_date": "1975-06-01", "phone": "13700001111"},
        {"name": "张三之子", "id_number": parent, "birth_date": "2024-01-05", "phone": "13700001111"},
        {"name": "王五之女", "birth_date": "2024-01-05"},
        {"name": "李娜", "id_number": twin1, "birth_date": "2010-05-06", "sex": "2"},
        {"name": "李丽", "id_number": twin2, "birth_date": "2010-05-06", "sex": "2"},
        {"name": "zhangwie", "sex": "2"},
        {"name": "chenjun"},
        {"name": "陈晶"},
        {},
    ]


def test_chinese_config_renders_alike_in_sql_and_python() -> None:
    config = default_config()
    sample = [chinese_features(r) for r in _chinese_records()]
    seen = _assert_agree(config.comparisons, list(itertools.product(sample, repeat=2)))
    missed = {c.name: sorted(set(range(len(c.levels))) - seen[c.name]) for c in config.comparisons}
    assert not any(missed.values()), f"levels no pair reached: {missed}"


# --- config errors --------------------------------------------------------------------------------

VALID = {
    "name": "tiny",
    "features": {"name": {"from": "name", "steps": ["strip", "lower"]}, "dob": {"from": "dob", "steps": ["date"]}},
    "comparisons": [
        {"name": "name", "levels": [{"missing": "name"}, {"label": "same", "exact": "name", "tf": "name"}, {"else": True}]},
        {"name": "dob", "levels": [{"missing": "dob"}, {"label": "same", "exact": "dob"}, {"else": True}]},
    ],
    "blocking": [["name"], ["dob"]],
    "training": {"deterministic": [["name", "dob"]], "em_blocking": [["dob"]]},
    "thresholds": {"link": 5, "review": 0},
}


def _broken(path: str, value) -> dict:
    data = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return data


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("comparisons.0.levels.1", {"sounds_like": "name"}, ["comparisons[0].levels[1]", "sounds_like"]),
    ("comparisons.0.levels.1", {"exact": "name", "labl": "same"}, ["comparisons[0].levels[1]", "labl"]),
    # An unquoted comma in a YAML flow mapping splits the label: the rest must not pass silently.
    ("comparisons.0.levels.1", yaml.safe_load("{label: same name (or typo, or homophone), exact: name}"),
     ["comparisons[0].levels[1]", "or homophone)"]),
    ("features.name.steps", ["strip", "soundex"], ["features.name", "soundex"]),
    ("comparisons.1.levels", [{"missing": "dob"}, {"exact": "dob"}], ["comparisons[1]", "last level", "else"]),
    ("blocking", [["name"], ["postcode"]], ["postcode", "not defined"]),
    ("training.em_blocking", [["dob", "email"]], ["email", "not defined"]),
    ("comparisons.0.levels.1", {"exact": "name", "tf": "surname"}, ["surname", "not defined"]),
    ("thresholds", {"link": 2, "review": 3}, ["thresholds.review", "thresholds.link"]),
    ("comparisons.1.levels.1", {"edit": {"col": "dob"}}, ["comparisons[1].levels[1]", "edit", "max"]),
])
def test_config_errors_name_the_key_at_fault(path: str, value, expected: list[str]) -> None:
    parse_config(VALID)  # the base is fine: the error below comes from the one change
    with pytest.raises(InvalidInput) as err:
        parse_config(_broken(path, value))
    assert all(part in err.value.message for part in expected), err.value.message


def test_a_config_file_that_does_not_exist_is_named(tmp_path) -> None:
    path = tmp_path / "english.yaml"
    with pytest.raises(InvalidInput) as err:
        load_config(path)
    assert str(path) in err.value.message and "does not exist" in err.value.message
    path.write_text("comparisons: [unclosed", encoding="utf-8")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        load_config(path)


# --- Chinese features ------------------------------------------------------------------------------


def _level(comparison: str, a: dict, b: dict):
    """The level (label, neutral) of cards a and b in one comparison of the built-in config."""
    comp = next(c for c in default_config().comparisons if c.name == comparison)
    level = comp.levels[comp.level_of(chinese_features(a), chinese_features(b))]
    return level.label, level.neutral


def test_traditional_form_is_the_same_name_and_a_homophone_the_same_pinyin() -> None:
    assert _level("name", {"name": "張偉"}, {"name": "张伟"})[0] == "exact"
    assert _level("name", {"name": "章伟"}, {"name": "张伟"})[0] == "same pinyin (homophone, traditional form)"


def test_surname_dan_reads_shan() -> None:
    assert chinese_features({"name": "单伟"})["pinyin"] == "shanwei"
    assert _level("name", {"name": "单伟"}, {"name": "善伟"})[0] == "same pinyin (homophone, traditional form)"
    assert _level("name", {"name": "单伟"}, {"name": "丹伟"})[0] != "same pinyin (homophone, traditional form)"


def test_swapped_given_name_characters() -> None:
    assert _level("name", {"name": "张伟明"}, {"name": "张明伟"})[0] == "characters swapped"


def test_newborn_placeholder_keeps_only_the_surname() -> None:
    f = chinese_features({"name": "张三之子"})
    assert (f["name"], f["pinyin"], f["initials"], f["surname"]) == (None, None, None, "张")
    assert _level("name", {"name": "张三之子"}, {"name": "张小明"})[0] == "a newborn's placeholder, same surname"


def test_guardian_id_on_a_child_is_no_evidence_either_way() -> None:
    parent_id = idcard.make("500103", date(1975, 6, 1), 20, "1")
    parent = {"name": "张三", "id_number": parent_id, "birth_date": "1975-06-01"}
    child = {"name": "张三之子", "id_number": parent_id, "birth_date": "2024-01-05"}
    assert _level("id_number", parent, child) == ("same ID, a birth date contradicts it", True)


def test_twins_have_two_different_valid_ids() -> None:
    born = date(2010, 5, 6)
    a, b = ({"name": name, "id_number": idcard.make("500112", born, k, "2"), "birth_date": born.isoformat()}
            for name, k in (("李娜", 10), ("李丽", 11)))
    assert _level("id_number", a, b)[0] == "two different valid IDs, each agreeing with its birth date"
    assert _level("birth_date", a, b)[0] == "exact"


def test_a_15_digit_id_is_the_same_as_its_18_digit_form() -> None:
    born = date(1980, 1, 2)
    new = idcard.make("500112", born, 6, "1")
    old = new[:6] + new[8:17]  # the pre-1999 form: 2-digit year, no check character
    a = {"name": "张伟", "id_number": old, "birth_date": "1980-01-02"}
    b = {"name": "张伟", "id_number": new, "birth_date": "1980-01-02"}
    assert chinese_features(a)["id_number"] == new
    assert _level("id_number", a, b)[0] == "same valid ID, both birth dates agree with it"


# --- scoring ---------------------------------------------------------------------------------------


def test_model_score_sums_prior_and_level_weights() -> None:
    config = parse_config(VALID)
    # The missing levels get m/u on purpose: a missing value must still weigh nothing.
    model = Model("tiny", 0.001, (((0.3, 0.2), (0.9, 0.01), (0.1, 0.99)), ((0.5, 0.1), (0.95, 0.002), (0.05, 0.998))))
    prior = math.log2(0.001 / 0.999)
    wei = config.features({"name": " Wei ", "dob": "1980-01-02"})

    same = model.score(config, wei, dict(wei))
    assert same.weight == pytest.approx(prior + math.log2(0.9 / 0.01) + math.log2(0.95 / 0.002))
    assert [t.level for t in same.terms][1:] == ["same", "same"]
    assert sum(t.weight for t in same.terms) == pytest.approx(same.weight)
    assert same.probability == pytest.approx(1 / (1 + 2 ** -same.weight))

    no_dob = model.score(config, wei, {**wei, "dob": None})
    assert no_dob.terms[2].weight == 0.0
    assert no_dob.weight == pytest.approx(prior + math.log2(0.9 / 0.01))

    other = model.score(config, wei, {"name": "li", "dob": "1990-01-01"})
    assert other.weight == pytest.approx(prior + math.log2(0.1 / 0.99) + math.log2(0.05 / 0.998))

    # Term frequency: an exact match on a name 5% of records have says less than u (1%) assumes,
    # one on a name 0.01% have says more: the adjustment is log2(u / frequency).
    share = {"wei": 0.05, "ouyangnana": 0.0001}.get
    common = model.score(config, wei, dict(wei), tf=lambda feature, value: share(value))
    assert common.terms[1].tf_adjustment == pytest.approx(math.log2(0.01 / 0.05))
    assert common.weight == pytest.approx(same.weight + math.log2(0.01 / 0.05))
    rare = {"name": "ouyangnana", "dob": "1980-01-02"}
    assert model.score(config, rare, dict(rare), tf=lambda f, v: share(v)).weight > same.weight
    # the weight alone (ranking every candidate) is the explained score's, to the last bit
    for a, b, tf in ((wei, dict(wei), None), (wei, {**wei, "dob": None}, None), (wei, dict(wei), lambda f, v: share(v))):
        assert model.weight(config, a, b, tf) == model.score(config, a, b, tf).weight
