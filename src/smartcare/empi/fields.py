"""Field configuration: which columns a source has, how they become features, how features compare.

Matching is configured as data (a YAML file), not code, so that a source with other columns —
English names, no ID number at all — is linked by writing a config. A config holds:

- ``features``: named values computed from a source record. Either the built-in ``chinese``
  normaliser (``normalize.normalize`` plus the features it makes, see ``chinese_features``) or
  per-feature recipes ``{from: column, steps: [strip, lower, ...]}`` (``STEPS``);
- ``comparisons``: for each, its levels from the most to the least alike, each a predicate over
  the two records' features (``PREDICATES``), optionally ``tf: feature`` for a term-frequency
  adjustment, or ``neutral: true`` for a level that is no evidence either way (weight 0, not trained). A level with ``missing:`` is the "missing" level; the last level is ``else: true``;
- ``blocking``: lists of features that must be equal for two records to be compared at all (bulk
  linkage and the real-time candidate search both use them);
- ``training``: deterministic rules and their expected recall (for the prior), EM blocking rules;
- ``thresholds``: match weights at or above ``link`` link, at or above ``review`` go to review;
- ``distinct`` (optional): a feature whose two different values never belong to one person.

Each predicate has two renderings that must agree: SQL for Splink (training and bulk linkage on
DuckDB) and a Python function (real-time scoring). ``tests/empi/test_scoring.py`` checks that the
two give the same weight on every compared pair of a synthetic sample.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler

from smartcare.empi.normalize import Normalized, normalize
from smartcare.platform.errors import InvalidInput

Features = dict[str, Any]
Test = Callable[[Features, Features], bool]

# --- feature recipes ---------------------------------------------------------------------------


def _date(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d", "%d/%m/%Y", "%m/%d/%Y"):
        try:
            return datetime.strptime(text, fmt).date().isoformat()
        except ValueError:
            continue
    return None


def _swap_month_day(iso: str | None) -> str | None:
    if not iso:
        return None
    d = date.fromisoformat(iso)
    return d.replace(month=d.day, day=d.month).isoformat() if d.day <= 12 and d.day != d.month else None


def _ascii_fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


# A step takes the value so far (never None) and returns the next one, or None for "missing".
STEPS: dict[str, Callable[[Any], Any]] = {
    "strip": lambda v: str(v).strip() or None,
    "lower": lambda v: str(v).lower(),
    "upper": lambda v: str(v).upper(),
    "ascii": lambda v: _ascii_fold(str(v)),
    "letters": lambda v: re.sub(r"[^a-z]", "", str(v).lower()) or None,
    "digits": lambda v: re.sub(r"\D", "", str(v)) or None,
    "collapse_spaces": lambda v: " ".join(str(v).split()) or None,
    "date": _date,
    "year": lambda v: (_date(v) or "")[:4] or None,
    "ordinal": lambda v: date.fromisoformat(d).toordinal() if (d := _date(v)) else None,  # for within: {max: 1}
    "swap_month_day": lambda v: _swap_month_day(_date(v)),  # for cross: [dob, dob_swapped]
    "first_token": lambda v: (str(v).split() or [None])[0],
    "last_token": lambda v: (str(v).split() or [None])[-1],
    "last8": lambda v: str(v)[-8:] if len(str(v)) >= 8 else None,
    "first3": lambda v: str(v)[:3],
    "sorted_tokens": lambda v: " ".join(sorted(str(v).split())) or None,
}


def chinese_features(record: Mapping[str, Any], normalized: Normalized | None = None) -> Features:
    """The features of a Chinese visit card, from ``normalize`` (or its result, when the caller has it)."""
    n = normalized or normalize(record)
    birth = n.birth_date
    named = not n.placeholder_name  # "张三之子" is the parent's name, not evidence about the child's
    return {
        "name": (n.name_key or None) if named else None,
        "pinyin": (n.pinyin_key or None) if named else None,
        "pinyin_sorted": (" ".join(sorted(n.pinyin)) or None) if named else None,
        "surname": n.surname or None,
        "initials": (n.initials or None) if named else None,
        "id_number": n.id_number,
        "id_valid": n.id_valid,
        # The record's own birth date agrees with its ID number: false for a guardian's ID on a child.
        "id_consistent": n.id_valid and "birth_date" not in n.conflicts,
        "id_certain": n.id_number if n.id_valid and "birth_date" not in n.conflicts else None,
        "birth_date": birth.isoformat() if birth else None,
        "birth_swapped": birth.replace(month=birth.day, day=birth.month).isoformat()
        if birth and birth.day <= 12 and birth.day != birth.month else None,
        "birth_year": birth.year if birth else None,
        "birth_ord": birth.toordinal() if birth else None,
        "sex": n.sex if n.sex in ("1", "2") else None,
        "phone": n.phone,
        "phone8": n.phone_last8,
        "district": n.district_code,
    }


NORMALISERS: dict[str, Callable[[Mapping[str, Any], Normalized | None], Features]] = {"chinese": chinese_features}

# --- predicates --------------------------------------------------------------------------------
# Each maps its YAML argument to (SQL for Splink, Python test). SQL names a feature f as f_l / f_r.


def _both(fn: Callable[[Any, Any], bool], col: str) -> Test:
    def test(a: Features, b: Features) -> bool:
        x, y = a.get(col), b.get(col)
        return x is not None and y is not None and fn(x, y)
    return test


def _p_missing(arg: str | list[str]) -> tuple[str, Test]:
    cols = [arg] if isinstance(arg, str) else list(arg)
    sql = " OR ".join(f'"{c}_l" IS NULL OR "{c}_r" IS NULL' for c in cols)
    return f"({sql})", lambda a, b: any(a.get(c) is None or b.get(c) is None for c in cols)


def _p_exact(arg: str) -> tuple[str, Test]:
    return f'"{arg}_l" = "{arg}_r"', _both(lambda x, y: x == y, arg)


def _p_true(arg: str) -> tuple[str, Test]:
    """Both records have the boolean feature true."""
    return f'("{arg}_l" AND "{arg}_r")', lambda a, b: bool(a.get(arg)) and bool(b.get(arg))


def _p_either_false(arg: str) -> tuple[str, Test]:
    # A missing value counts as false in both renderings (SQL's NOT NULL would be unknown).
    return (f'(NOT COALESCE("{arg}_l", FALSE) OR NOT COALESCE("{arg}_r", FALSE))',
            lambda a, b: not a.get(arg) or not b.get(arg))


def _p_cross(arg: list[str]) -> tuple[str, Test]:
    """One record's first feature equals the other's second (a month/day swap, a swapped name)."""
    x, y = arg
    sql = f'("{x}_l" = "{y}_r" OR "{y}_l" = "{x}_r")'
    return sql, lambda a, b: ((a.get(x) is not None and a.get(x) == b.get(y))
                              or (a.get(y) is not None and a.get(y) == b.get(x)))


def _p_edit(arg: Mapping[str, Any]) -> tuple[str, Test]:
    """Damerau–Levenshtein distance (one substitution, insertion, deletion or transposition = 1)."""
    col, most = arg["col"], int(arg["max"])
    return (f'damerau_levenshtein("{col}_l", "{col}_r") <= {most}',
            _both(lambda x, y: DamerauLevenshtein.distance(str(x), str(y), score_cutoff=most + 1) <= most, col))


def _p_jaro_winkler(arg: Mapping[str, Any]) -> tuple[str, Test]:
    col, least = arg["col"], float(arg["min"])
    return (f'jaro_winkler_similarity("{col}_l", "{col}_r") >= {least}',
            _both(lambda x, y: JaroWinkler.similarity(str(x), str(y)) >= least, col))


def _p_within(arg: Mapping[str, Any]) -> tuple[str, Test]:
    """Numbers (days as ordinals, years) at most ``max`` apart."""
    col, most = arg["col"], arg["max"]
    return f'abs("{col}_l" - "{col}_r") <= {most}', _both(lambda x, y: abs(x - y) <= most, col)


def _p_else(arg: Any) -> tuple[str, Test]:
    return "ELSE", lambda a, b: True


def _combine(op: str, parts: list[tuple[str, Test]]) -> tuple[str, Test]:
    sqls, tests = zip(*parts, strict=True)
    sql = "(" + f" {op.upper()} ".join(sqls) + ")"
    if op == "and":
        return sql, lambda a, b: all(t(a, b) for t in tests)
    return sql, lambda a, b: any(t(a, b) for t in tests)


PREDICATES: dict[str, Callable[[Any], tuple[str, Test]]] = {
    "missing": _p_missing,
    "exact": _p_exact,
    "both_true": _p_true,
    "either_false": _p_either_false,
    "cross": _p_cross,
    "edit": _p_edit,
    "jaro_winkler": _p_jaro_winkler,
    "within": _p_within,
    "else": _p_else,
}


def compile_predicate(spec: Mapping[str, Any], where: str) -> tuple[str, Test]:
    """A level's ``when`` (or the level itself): one predicate, or ``all``/``any`` of several, or ``not``."""
    keys = [k for k in spec if k in PREDICATES or k in ("all", "any", "not")]
    unknown = sorted(str(k) for k in spec if k not in keys)
    if unknown:  # a misspelt key, or an unquoted comma in a YAML flow mapping, must not pass silently
        raise InvalidInput(f"{where}: unknown keys {unknown}; a level has label, tf, neutral and one of "
                           f"{sorted(PREDICATES) + ['all', 'any', 'not']}", field=where)
    if len(keys) != 1:
        raise InvalidInput(f"{where}: give exactly one of {sorted(PREDICATES) + ['all', 'any', 'not']}, "
                           f"not {sorted(spec)}", field=where)
    key = keys[0]
    arg = spec[key]
    if key in ("all", "any"):
        return _combine("and" if key == "all" else "or",
                        [compile_predicate(p, f"{where}.{key}[{i}]") for i, p in enumerate(arg)])
    if key == "not":
        sql, test = compile_predicate(arg, f"{where}.not")
        # A predicate on a missing value is false in Python but unknown (NULL) in SQL: only
        # NOT tells the two apart, so it treats unknown as false as Python does.
        return f"NOT COALESCE({sql}, FALSE)", lambda a, b: not test(a, b)
    try:
        return PREDICATES[key](arg)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{where}: bad argument for {key}: {exc}", field=where) from exc


def key_hash(key: str) -> int:
    """A blocking key as a signed 64-bit integer (``empi.blocking_key`` stores these, not the values)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


# --- the config --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    label: str
    sql: str
    test: Test
    is_null: bool = False
    tf: str | None = None
    neutral: bool = False  # no evidence either way: m = u, never trained


@dataclass(frozen=True)
class Comparison:
    name: str
    levels: tuple[Level, ...]

    def level_of(self, a: Features, b: Features) -> int:
        """Index of the first level whose predicate holds (the comparison vector value, Splink's gamma)."""
        for i, level in enumerate(self.levels):
            if level.test(a, b):
                return i
        return len(self.levels) - 1


@dataclass(frozen=True)
class Rule:
    """Features that must all be equal and present (a blocking or deterministic rule)."""

    features: tuple[str, ...]

    def key(self, features: Features) -> str | None:
        values = [features.get(f) for f in self.features]
        if any(v is None or v == "" for v in values):
            return None
        return "|".join(self.features) + "=" + "|".join(str(v) for v in values)

    @property
    def sql(self) -> str:
        return " AND ".join(f'l."{f}" = r."{f}"' for f in self.features)


@dataclass(frozen=True)
class FieldConfig:
    name: str
    columns: tuple[str, ...]
    normaliser: str | None
    recipes: Mapping[str, tuple[str, tuple[str, ...]]]
    comparisons: tuple[Comparison, ...]
    blocking: tuple[Rule, ...]
    deterministic: tuple[Rule, ...]
    deterministic_recall: float
    em_blocking: tuple[Rule, ...]
    link_weight: float
    review_weight: float
    # A feature two different values of which never belong to one person (a certain ID number):
    # clustering and real-time linking refuse to join them, however strong the other evidence.
    distinct: str | None = None
    source: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def features(self, record: Mapping[str, Any], normalized: Normalized | None = None) -> Features:
        """A source record (column → value) as the features this config compares; ``normalized`` is the
        record's ``normalize`` result when the caller already has it (it is the costly part)."""
        out: Features = dict(NORMALISERS[self.normaliser](record, normalized)) if self.normaliser else {}
        for name, (column, steps) in self.recipes.items():
            value = record.get(column)
            for step in steps:
                if value is None or value == "":
                    value = None
                    break
                value = STEPS[step](value)
            out[name] = None if value == "" else value
        return out

    @cached_property
    def feature_names(self) -> tuple[str, ...]:
        sample = self.features({c: None for c in self.columns})
        return tuple(sample)

    @cached_property
    def tf_features(self) -> tuple[str, ...]:
        return tuple(sorted({lv.tf for c in self.comparisons for lv in c.levels if lv.tf}))

    def blocking_keys(self, features: Features) -> list[str]:
        return [k for rule in self.blocking if (k := rule.key(features)) is not None]

    def blocking_hashes(self, features: Features) -> list[int]:
        """The blocking keys as the index stores them: sorted signed 64-bit hashes."""
        return sorted({key_hash(k) for k in self.blocking_keys(features)})

    def splink_comparisons(self) -> list[dict[str, Any]]:
        """The comparisons as Splink settings (SQL levels; m/u filled in by training)."""
        out = []
        for comp in self.comparisons:
            levels = []
            for lv in comp.levels:
                level: dict[str, Any] = {"sql_condition": lv.sql, "label_for_charts": lv.label}
                if lv.is_null:
                    level["is_null_level"] = True
                if lv.neutral:
                    level.update(m_probability=0.01, u_probability=0.01, fix_m_probability=True, fix_u_probability=True)
                if lv.tf:
                    level["tf_adjustment_column"] = lv.tf
                    level["tf_adjustment_weight"] = 1.0
                levels.append(level)
            out.append({"output_column_name": comp.name, "comparison_levels": levels})
        return out


def _rules(value: Any, where: str) -> tuple[Rule, ...]:
    if not isinstance(value, list) or not all(isinstance(r, list) and r for r in value):
        raise InvalidInput(f"{where} must be a list of feature lists, e.g. [[id_number], [surname, birth_date]]",
                           field=where)
    return tuple(Rule(tuple(str(f) for f in r)) for r in value)


def parse_config(data: Mapping[str, Any], *, origin: str = "config") -> FieldConfig:
    """Check and compile a config mapping; errors name the key that is wrong."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{origin}: a field config is a mapping", field=origin)
    normaliser = data.get("normaliser")
    if normaliser is not None and normaliser not in NORMALISERS:
        raise InvalidInput(f"{origin}: normaliser must be one of {sorted(NORMALISERS)}, not {normaliser!r}",
                           field="normaliser")
    recipes: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, spec in (data.get("features") or {}).items():
        if not isinstance(spec, Mapping) or "from" not in spec:
            raise InvalidInput(f"{origin}: features.{name} needs 'from: <column>'", field=f"features.{name}")
        steps = tuple(spec.get("steps") or ())
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise InvalidInput(f"{origin}: features.{name}: unknown steps {unknown}; known: {sorted(STEPS)}",
                               field=f"features.{name}")
        recipes[str(name)] = (str(spec["from"]), steps)
    columns = tuple(data.get("columns") or sorted({c for c, _ in recipes.values()}))

    comparisons = []
    for i, comp in enumerate(data.get("comparisons") or ()):
        where = f"comparisons[{i}]"
        if not isinstance(comp, Mapping) or "name" not in comp or not comp.get("levels"):
            raise InvalidInput(f"{origin}: {where} needs a name and levels", field=where)
        levels = []
        for j, spec in enumerate(comp["levels"]):
            lwhere = f"{where}.levels[{j}]"
            sql, test = compile_predicate({k: v for k, v in spec.items() if k not in ("label", "tf", "neutral")}, lwhere)
            levels.append(Level(label=str(spec.get("label") or sql), sql=sql, test=test, is_null="missing" in spec,
                                tf=spec.get("tf"), neutral=bool(spec.get("neutral"))))
        if levels[-1].sql != "ELSE":
            raise InvalidInput(f"{origin}: {where}: the last level must be 'else: true'", field=where)
        comparisons.append(Comparison(str(comp["name"]), tuple(levels)))
    if not comparisons:
        raise InvalidInput(f"{origin}: at least one comparison is needed", field="comparisons")

    training = data.get("training") or {}
    thresholds = data.get("thresholds") or {}
    config = FieldConfig(
        name=str(data.get("name") or origin),
        columns=columns,
        normaliser=normaliser,
        recipes=recipes,
        comparisons=tuple(comparisons),
        blocking=_rules(data.get("blocking"), "blocking"),
        deterministic=_rules(training.get("deterministic"), "training.deterministic"),
        deterministic_recall=float(training.get("recall", 0.8)),
        em_blocking=_rules(training.get("em_blocking"), "training.em_blocking"),
        link_weight=float(thresholds.get("link", 8.0)),
        review_weight=float(thresholds.get("review", 0.0)),
        distinct=data.get("distinct"),
        source=data,
    )
    known = set(config.feature_names)
    used = {f for rule in (*config.blocking, *config.deterministic, *config.em_blocking) for f in rule.features}
    used |= {lv.tf for c in config.comparisons for lv in c.levels if lv.tf}
    used |= {config.distinct} if config.distinct else set()
    missing = sorted(used - known)
    if missing:
        raise InvalidInput(f"{origin}: rules name features that are not defined: {missing}", field="features")
    if config.review_weight > config.link_weight:
        raise InvalidInput(f"{origin}: thresholds.review must not exceed thresholds.link", field="thresholds")
    return config


def load_config(path: str | Path | None = None) -> FieldConfig:
    """A config from a YAML file; without a path, the built-in one for Chinese visit cards."""
    if path is None:
        text = resources.files("smartcare.empi").joinpath("fields.yaml").read_text(encoding="utf-8")
        origin = "fields.yaml (built in)"
    else:
        p = Path(path)
        if not p.is_file():
            raise InvalidInput(f"field config {p} does not exist", field="config")
        text, origin = p.read_text(encoding="utf-8"), str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{origin} is not valid YAML: {exc}", field="config") from exc
    return parse_config(data, origin=origin)


@cache
def default_config() -> FieldConfig:
    """The built-in config for Chinese visit cards (``empi/fields.yaml``)."""
    return load_config()
