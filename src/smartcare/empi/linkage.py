"""Bulk linkage with Splink on DuckDB: training (EM) and the scoring of every blocked pair.

The pipeline's steps, each one inspectable on its own (as in Splink itself):

1. ``frame``: records → their features (``FieldConfig.features``) as an Arrow table;
2. ``train``: the prior from deterministic rules, u by random sampling, m by EM on each of the
   config's EM blocking rules → a ``scoring.Model``;
3. ``predict``: every pair sharing a blocking key, scored; pairs at or above the review weight kept;
4. ``cluster``: connected components of the pairs at or above the link weight.

Splink is used for training and bulk scoring because its EM and SQL pipeline are well tested and
it has a Spark backend for regions too big for one machine (``docs/empi.md``); the same trained
model then scores single pairs in Python (``scoring.Model.score``) for the real-time API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from smartcare.empi.fields import FieldConfig, Features
from smartcare.empi.scoring import Model

# Splink warns at length about levels the data never reaches (e.g. "last 8 digits" of a phone); the
# model gives such a level weight 0 (scoring.Model.level_weight), and the report shows it untrained.
logging.getLogger("splink").setLevel(logging.ERROR)

def frame(config: FieldConfig, records: Iterable[tuple[int, Features]]) -> pa.Table:
    """(unique id, features) rows as an Arrow table Splink can register; Arrow types each column from its values."""
    ids: list[int] = []
    columns: dict[str, list[Any]] = {name: [] for name in config.feature_names}
    for uid, features in records:
        ids.append(uid)
        for name, values in columns.items():
            values.append(features.get(name))
    arrays = {"unique_id": pa.array(ids, pa.int64())}
    for name, values in columns.items():
        arrays[name] = pa.array(values)
    return pa.table(arrays)


def _settings(config: FieldConfig, model: Model | None = None) -> dict[str, Any]:
    comparisons = config.splink_comparisons()
    if model is not None:
        for comp, trained in zip(comparisons, model.levels, strict=True):
            for level, (m, u) in zip(comp["comparison_levels"], trained, strict=True):
                if m is not None:
                    level["m_probability"] = m
                if u is not None:
                    level["u_probability"] = u
    settings: dict[str, Any] = {
        "link_type": "dedupe_only",
        "unique_id_column_name": "unique_id",
        "comparisons": comparisons,
        "blocking_rules_to_generate_predictions": [{"blocking_rule": r.sql} for r in config.blocking],
        "retain_matching_columns": False,
        "retain_intermediate_calculation_columns": False,
    }
    if model is not None:
        settings["probability_two_random_records_match"] = model.prior
    return settings


def _linker(config: FieldConfig, table: pa.Table, model: Model | None = None, *, threads: int | None = None):
    import duckdb
    from splink import DuckDBAPI, Linker

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    db_api = DuckDBAPI(connection=con)
    df = db_api.register(table, table_name="records")
    return Linker(df, _settings(config, model), log_level=None)  # keep the level set above


def _splink_rule(rule) -> dict[str, str]:
    return {"blocking_rule": rule.sql}


def train(config: FieldConfig, table: pa.Table, *, max_pairs: float = 2e6, seed: int = 1) -> Model:
    """EM-trained m and u for ``config`` on the data itself (no labels needed)."""
    linker = _linker(config, table)
    trainer = linker.training
    trainer.estimate_probability_two_random_records_match(
        [_splink_rule(r) for r in config.deterministic], recall=config.deterministic_recall)
    trainer.estimate_u_using_random_sampling(max_pairs=max_pairs, seed=seed)
    for rule in config.em_blocking:
        trainer.estimate_parameters_using_expectation_maximisation(_splink_rule(rule), estimate_without_term_frequencies=True)
    return Model.from_splink(config, linker.misc.save_model_to_json())


def rule_pairs(config: FieldConfig, table: pa.Table) -> list[tuple[int, int]]:
    """Pairs (smaller uid first) that satisfy one of the config's deterministic rules."""
    import duckdb

    if not config.deterministic:
        return []
    con = duckdb.connect()
    con.register("records", table)
    sql = " UNION ".join(f"SELECT l.unique_id AS a, r.unique_id AS b FROM records l JOIN records r ON {rule.sql} "
                         f"AND l.unique_id < r.unique_id" for rule in config.deterministic)
    return [(a, b) for a, b in con.execute(sql).fetchall()]


@dataclass(frozen=True)
class Pairs:
    """Scored pairs (``unique_id_l`` < ``unique_id_r``) at or above the review weight."""

    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    def rows(self) -> Iterable[tuple[int, int, float]]:
        left = self.table.column("unique_id_l").to_pylist()
        right = self.table.column("unique_id_r").to_pylist()
        weights = self.table.column("match_weight").to_pylist()
        return zip(left, right, weights, strict=True)


def predict(config: FieldConfig, model: Model, table: pa.Table, *, threads: int | None = None) -> Pairs:
    """Every pair sharing a blocking key, scored by ``model``; those at or above ``review_weight`` kept."""
    linker = _linker(config, table, model, threads=threads)
    result = linker.inference.predict(threshold_match_weight=config.review_weight)
    out = linker._db_api._con.sql(
        f"SELECT unique_id_l, unique_id_r, match_weight FROM {result.physical_name}").to_arrow_table()
    return Pairs(out)


def cluster(pairs: Iterable[tuple[int, int, float]], *, link_weight: float,
            distinct: Mapping[int, Any] | None = None) -> dict[int, int]:
    """Clusters of the pairs at or above ``link_weight``: uid → smallest uid of its cluster.

    Pairs are joined strongest first, and two clusters are never joined when they hold different
    ``distinct`` values (for Chinese cards: two different valid ID numbers, each agreeing with its
    card's birth date — twins, or a child and the parent whose ID was written on another card),
    however strong the pair between them: transitive chains cannot merge two real people.
    Only records in some linked pair appear; every other record is a cluster of its own.
    """
    distinct = distinct or {}
    parent: dict[int, int] = {}
    ident: dict[int, Any] = {}  # root → the distinct value of its cluster, if any

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:
            parent[x], x = root, parent[x]
        return root

    for left, right, weight in sorted((p for p in pairs if p[2] >= link_weight), key=lambda p: -p[2]):
        for uid in (left, right):
            if uid not in parent:
                parent[uid] = uid
                if distinct.get(uid) is not None:
                    ident[uid] = distinct[uid]
        a, b = find(left), find(right)
        if a == b:
            continue
        ia, ib = ident.get(a), ident.get(b)
        if ia is not None and ib is not None and ia != ib:
            continue
        root, child = (a, b) if a < b else (b, a)
        parent[child] = root
        if ident.get(root) is None and ident.get(child) is not None:
            ident[root] = ident[child]
    return {uid: find(uid) for uid in list(parent)}


def term_frequencies(config: FieldConfig, table: pa.Table) -> Mapping[str, dict[Any, float]]:
    """Share of records with each value of every tf feature (for real-time TF adjustment)."""
    out: dict[str, dict[Any, float]] = {}
    for feature in config.tf_features:
        counts = table.column(feature).drop_null().value_counts()
        total = sum(c.as_py() for c in counts.field("counts"))
        out[feature] = {v.as_py(): c.as_py() / total for v, c in zip(counts.field("values"), counts.field("counts"), strict=True)}
    return out
