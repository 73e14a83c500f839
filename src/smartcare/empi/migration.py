"""``smartcare empi migrate``: every hospital's visit cards into the master patient index, as a plan.

A migration is a run of named stages, each completed stage recorded in ``empi.migration_run``
so that a run killed at any point resumes where it stopped (the same file, by its SHA-256, and
the same config resume the same run):

==========  ==========================================================================================
stage       what it does
==========  ==========================================================================================
stage       read the CSV, normalise every row (repairs recorded), profile it (counts, fill rates,
            invalid IDs per hospital), keep it in ``empi.migration_row``; cards already indexed are
            marked (a second run of the same file changes nothing)
train       train the Fellegi–Sunter model on the data itself (Splink EM), unless one exists
link        deterministic rules, then probabilistic linkage of new cards with each other and with
            the cards already indexed; clusters that never join two certain IDs
commit      clusters written in chunks, each chunk one transaction (sources, persons, links,
            history, blocking keys, golden records, one audit entry) — a crash loses at most the
            chunk in flight, which the next run redoes
review      possible matches (between the review and link weights) queued for reviewers
==========  ==========================================================================================

A dry run stops before ``commit``: everything is computed and reported, nothing enters the index.
The HTML report (``report.render``) says what was done and why.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from smartcare.empi import linkage, matching, service
from smartcare.empi.fields import FieldConfig
from smartcare.empi.models import MigrationRun
from smartcare.empi.normalize import normalize
from smartcare.platform import audit
from smartcare.platform.db import copy_rows
from smartcare.platform.errors import InvalidInput

STAGES = ("stage", "train", "link", "commit", "review")
KEY_COLUMNS = ("facility_code", "card_no")
STAGE_BATCH = 50_000
ACTOR_PREFIX = "migration:"

Progress = Callable[[str, int, int | None], None]  # (task, advance, total) — the CLI draws bars


def _no_progress(task: str, advance: int, total: int | None) -> None:
    return None


def checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class Options:
    path: Path
    config: FieldConfig
    dry_run: bool = False
    actor: str = "cli"
    chunk: int = 20_000
    retrain: bool = False


def start_or_resume(session: Session, options: Options) -> MigrationRun:
    """The unfinished run of this file and config (resumed), or a new one."""
    if not options.path.is_file():
        raise InvalidInput(f"{options.path} does not exist", field="source")
    digest = checksum(options.path)
    run = session.scalar(select(MigrationRun).where(
        MigrationRun.checksum == digest, MigrationRun.config_name == options.config.name,
        MigrationRun.dry_run == options.dry_run, MigrationRun.state != "done").order_by(MigrationRun.id.desc()))
    if run is None:
        run = MigrationRun(source_name=options.path.name, checksum=digest, config_name=options.config.name,
                           dry_run=options.dry_run, stage="", state="running", stats={}, started_by=options.actor)
        session.add(run)
    run.state = "running"
    session.flush()
    return run


def _done(run: MigrationRun, stage: str) -> bool:
    return bool(run.stage) and STAGES.index(run.stage) >= STAGES.index(stage)


def _finish_stage(session: Session, run: MigrationRun, stage: str, seconds: float, **stats: Any) -> None:
    """Record a completed stage and what it found, in its own commit: a crash after this never redoes it."""
    timings = {**(run.stats.get("seconds") or {}), stage: round(seconds, 2)}
    run.stats, run.stage = {**run.stats, **stats, "seconds": timings}, stage
    session.commit()


# --- stage: read, normalise, profile ----------------------------------------------------------------


def _rows(path: Path, config: FieldConfig) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in KEY_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidInput(f"{path.name}: the header lacks {missing} (columns: {reader.fieldnames})", field="source")
        absent = [c for c in config.columns if c not in reader.fieldnames]
        if len(absent) == len(config.columns):
            raise InvalidInput(f"{path.name}: none of the config's columns {list(config.columns)} is in the file",
                               field="source")
        for row_no, row in enumerate(reader, start=1):
            yield row_no, row


def stage(session: Session, run: MigrationRun, options: Options, progress: Progress = _no_progress) -> None:
    started = time.perf_counter()
    done_rows = session.scalar(text("SELECT coalesce(max(row_no), 0) FROM empi.migration_row WHERE run_id = :r"),
                               {"r": run.id})
    profile = dict(run.stats.get("profile_partial") or {})
    by_facility: Counter = Counter(profile.get("by_facility") or {})
    invalid_ids: Counter = Counter(profile.get("invalid_ids") or {})
    filled: Counter = Counter(profile.get("filled") or {})
    repairs: Counter = Counter(profile.get("repairs") or {})
    conflicts: Counter = Counter(profile.get("conflicts") or {})
    rejected: list[dict] = list(profile.get("rejected") or [])
    seen: set[tuple[str, str]] = set()
    total = int(profile.get("rows", 0))
    batch: list[tuple] = []
    now = datetime.now(UTC)

    def flush() -> None:
        copy_rows(session, "empi.migration_row",
                  ("run_id", "row_no", "facility_code", "card_no", "recorded", "recorded_at", "norm", "features"), batch)
        run.stats = {**run.stats, "profile_partial": {
            "rows": total, "by_facility": dict(by_facility), "invalid_ids": dict(invalid_ids), "filled": dict(filled),
            "repairs": dict(repairs), "conflicts": dict(conflicts), "rejected": rejected[:50]}}
        session.commit()
        progress("stage", len(batch), None)
        batch.clear()

    for row_no, row in _rows(options.path, options.config):
        key = (row.get("facility_code") or "").strip(), (row.get("card_no") or "").strip()
        if row_no <= done_rows:
            seen.add(key)
            continue
        total += 1
        if not key[0] or not key[1] or len(key[0]) > 32 or len(key[1]) > 64:
            rejected.append({"row": row_no, "why": "facility_code and card_no are required (≤ 32 / 64 characters)"})
            continue
        if key in seen:
            rejected.append({"row": row_no, "why": "the same card appears earlier in the file; the first is kept"})
            continue
        seen.add(key)
        recorded = {c: (row.get(c) or None) for c in options.config.columns}
        normalized = normalize(recorded) if options.config.normaliser == "chinese" else None
        norm = service.norm_dict(recorded, normalized) if normalized else {}
        features = {k: v for k, v in options.config.features(recorded, normalized).items() if v is not None}
        by_facility[key[0]] += 1
        for c in options.config.columns:
            if recorded.get(c):
                filled[c] += 1
        if norm:
            if recorded.get("id_number") and not norm.get("id_valid"):
                invalid_ids[key[0]] += 1
            for r in norm.get("repairs", ()):
                repairs[f"{r['field']}: {r['message']}"] += 1
            for c in norm.get("conflicts", ()):
                conflicts[c] += 1
        when = row.get("registered_at") or None
        batch.append((run.id, row_no, key[0], key[1], _json(recorded), when or now, _json(norm), _json(features)))
        if len(batch) >= STAGE_BATCH:
            flush()
    if batch:
        flush()
    session.execute(text(
        """UPDATE empi.migration_row m SET existing_id = s.id FROM empi.source_identity s
            WHERE m.run_id = :r AND s.facility_code = m.facility_code AND s.card_no = m.card_no"""), {"r": run.id})
    counts = session.execute(text(
        "SELECT count(*), count(existing_id) FROM empi.migration_row WHERE run_id = :r"), {"r": run.id}).one()
    partial = run.stats.get("profile_partial") or {}
    stats = {k: v for k, v in run.stats.items() if k != "profile_partial"}
    run.stats = stats
    _finish_stage(session, run, "stage", time.perf_counter() - started, profile={**partial, "staged": counts[0], "already_indexed": counts[1]})


# --- stage: train ------------------------------------------------------------------------------------


def _frame(session: Session, run: MigrationRun, config: FieldConfig, *, with_index: bool):
    """New cards of the run (uid = row_no) and, for linking, every indexed card (uid = -source id)."""
    def records() -> Iterator[tuple[int, dict]]:
        with session.connection().connection.driver_connection.cursor(name="frame") as cur:
            cur.itersize = 50_000
            cur.execute("SELECT row_no, features FROM empi.migration_row WHERE run_id = %s AND existing_id IS NULL",
                        (run.id,))
            yield from cur
        if with_index:
            with session.connection().connection.driver_connection.cursor(name="index") as cur:
                cur.itersize = 50_000
                cur.execute("SELECT -id, features FROM empi.source_identity")
                yield from cur
    return linkage.frame(config, records())


def train(session: Session, run: MigrationRun, options: Options, progress: Progress = _no_progress) -> None:
    started = time.perf_counter()
    existing = matching.current_model(session, options.config)
    if existing is not None and not options.retrain:
        _finish_stage(session, run, "train", time.perf_counter() - started, model={"id": existing[0], "trained": False})
        return
    table = _frame(session, run, options.config, with_index=True)
    if table.num_rows < 1000:
        raise InvalidInput(f"only {table.num_rows} cards: too few to train a model on (≥ 1,000 needed); "
                           "migrate a bigger file first", field="source")
    progress("train", 0, 1)
    model = linkage.train(options.config, table)
    model_id = matching.save_model(session, model=model, records=table.num_rows,
                                   term_frequencies=linkage.term_frequencies(options.config, table),
                                   actor=options.actor)
    progress("train", 1, 1)
    _finish_stage(session, run, "train", time.perf_counter() - started, model={"id": model_id, "trained": True, "records": table.num_rows})


# --- stage: link -------------------------------------------------------------------------------------


def link(session: Session, run: MigrationRun, options: Options, progress: Progress = _no_progress) -> None:
    started = time.perf_counter()
    config = options.config
    model_id, model = matching.current_model(session, config)
    table = _frame(session, run, config, with_index=True)
    progress("link", 0, 3)
    pairs = list(linkage.predict(config, model, table).rows())
    progress("link", 1, 3)
    # Deterministic rules first: a pair that satisfies one links whatever its score.
    rule_pairs = linkage.rule_pairs(config, table)
    forced = [(a, b, float("inf")) for a, b in rule_pairs]
    distinct = dict(zip(table.column("unique_id").to_pylist(), table.column(config.distinct).to_pylist(),
                        strict=True)) if config.distinct else {}
    clusters = linkage.cluster([*forced, *pairs], link_weight=config.link_weight, distinct=distinct)
    progress("link", 1, 3)
    best_link: dict[int, tuple[float, str]] = {}
    rules = set(rule_pairs)
    for a, b, w in pairs:
        if w >= config.link_weight and clusters.get(a) == clusters.get(b):
            method = "rule" if (a, b) in rules else f"model:{model_id}"
            for uid in (a, b):
                if uid > 0 and (uid not in best_link or w > best_link[uid][0]):
                    best_link[uid] = (w, method)
    review: dict[int, tuple[int, float]] = {}
    for a, b, w in pairs:
        if config.review_weight <= w < config.link_weight and clusters.get(a, a) != clusters.get(b, b):
            for uid, other in ((a, b), (b, a)):
                if uid > 0 and (uid not in review or w > review[uid][1]) and (other < 0 or other > uid):
                    review[uid] = (other, w)
    new_ids = [u for u in table.column("unique_id").to_pylist() if u > 0]
    position = {uid: i for i, uid in enumerate(table.column("unique_id").to_pylist())}

    def features(uid: int) -> dict:
        return table.slice(position[uid], 1).to_pylist()[0]

    staged = []
    for uid in new_ids:
        w, method = best_link.get(uid, (None, "new"))
        other = review.get(uid)
        terms = None
        if other is not None:
            terms = _json([t.__dict__ for t in model.score(config, features(uid), features(other[0])).terms])
        staged.append((uid, clusters.get(uid, uid), w, method, other[0] if other else None,
                       other[1] if other else None, terms))
    session.execute(text("CREATE TEMP TABLE link_result (row_no int, cluster bigint, weight float8, method text, "
                         "review_with bigint, review_weight float8, review_terms jsonb) ON COMMIT DROP"))
    copy_rows(session, "link_result", ("row_no", "cluster", "weight", "method", "review_with", "review_weight",
                                       "review_terms"), staged)
    session.execute(text(
        """UPDATE empi.migration_row m SET cluster = r.cluster, weight = r.weight, method = r.method,
                  review_with = r.review_with, review_weight = r.review_weight, review_terms = r.review_terms
             FROM link_result r WHERE m.run_id = :r AND m.row_no = r.row_no"""), {"r": run.id})
    progress("link", 1, 3)
    sizes = Counter(clusters.get(u, u) for u in new_ids)
    _finish_stage(session, run, "link", time.perf_counter() - started, link={
        "pairs_scored": len(pairs), "rule_pairs": len(rule_pairs),
        "linked_pairs": sum(1 for *_, w in pairs if w >= config.link_weight),
        "review_pairs": len(review), "new_cards": len(new_ids),
        "persons_new": sum(1 for c in sizes if c > 0), "joining_existing": sum(n for c, n in sizes.items() if c < 0),
        "cluster_sizes": dict(sorted(Counter(sizes.values()).items())),
        "thresholds": {"link": config.link_weight, "review": config.review_weight}})


# --- stage: commit -----------------------------------------------------------------------------------


def _next_ids(session: Session, sequence: str, n: int) -> list[int]:
    if n == 0:
        return []
    return list(session.scalars(text(f"SELECT nextval('{sequence}') FROM generate_series(1, :n)"), {"n": n}))


def commit(session: Session, run: MigrationRun, options: Options, progress: Progress = _no_progress,
           *, crash_after_chunks: int | None = None) -> None:
    """Write the clusters chunk by chunk; each chunk is one transaction, so a crash loses none and doubles none."""
    started = time.perf_counter()
    config = options.config
    model_id = (run.stats.get("model") or {}).get("id")
    remaining = session.scalar(text("SELECT count(*) FROM empi.migration_row WHERE run_id = :r AND NOT committed "
                                    "AND existing_id IS NULL"), {"r": run.id})
    progress("commit", 0, remaining)
    chunks = 0
    while True:
        clusters = list(session.scalars(text(
            """SELECT DISTINCT cluster FROM empi.migration_row WHERE run_id = :r AND NOT committed
                AND existing_id IS NULL ORDER BY cluster LIMIT :n"""), {"r": run.id, "n": options.chunk}))
        if not clusters:
            break
        rows = session.execute(text(
            """SELECT row_no, facility_code, card_no, recorded, recorded_at, norm, features, cluster, weight, method
                 FROM empi.migration_row WHERE run_id = :r AND cluster = ANY(:c) AND NOT committed
                  AND existing_id IS NULL ORDER BY row_no"""), {"r": run.id, "c": clusters}).all()
        _commit_chunk(session, run, config, rows, model_id)
        audit.record(session, actor=options.actor, action="empi.migrate.commit", target=f"migration:{run.id}",
                     detail={"cards": len(rows), "clusters": len(clusters)})
        session.commit()
        chunks += 1
        progress("commit", len(rows), None)
        if crash_after_chunks is not None and chunks >= crash_after_chunks:
            raise RuntimeError(f"crash requested after {chunks} chunk(s) (test hook)")
    committed = session.scalar(text("SELECT count(*) FROM empi.migration_row WHERE run_id = :r AND committed"),
                               {"r": run.id})
    _finish_stage(session, run, "commit", time.perf_counter() - started, committed={"cards": committed})


def _commit_chunk(session: Session, run: MigrationRun, config: FieldConfig, rows, model_id) -> None:
    source_ids = _next_ids(session, "empi.source_identity_id_seq", len(rows))
    by_cluster: dict[int, list] = defaultdict(list)
    for row, sid in zip(rows, source_ids, strict=True):
        by_cluster[row.cluster].append((row, sid))
    # Clusters joining an indexed card go to that card's person; the others get a new person.
    existing_person = dict(session.execute(text(
        "SELECT -l.source_id, l.person_id FROM empi.link l WHERE l.source_id = ANY(:ids)"),
        {"ids": [-c for c in by_cluster if c < 0]}).all())
    fresh = [c for c in by_cluster if c not in existing_person]
    person_ids = _next_ids(session, "empi.person_id_seq", len(fresh))
    numbers = _next_ids(session, "empi.person_number", len(fresh))
    person_of = dict(existing_person)
    person_of.update(zip(fresh, person_ids, strict=True))
    session.execute(text(  # golden records where the rows are (survivorship is SQL: empi.golden)
        """INSERT INTO empi.person (id, empi_id, golden, state)
           SELECT f.id, 'E' || lpad(f.number::text, 11, '0'), g.golden, 'active'
             FROM unnest(CAST(:clusters AS bigint[]), CAST(:ids AS bigint[]), CAST(:numbers AS bigint[]))
                  AS f (cluster, id, number)
             JOIN (SELECT cluster, empi.golden(array_agg(norm ORDER BY row_no), array_agg(1 ORDER BY row_no),
                                               array_agg(recorded_at ORDER BY row_no)) AS golden
                     FROM empi.migration_row WHERE run_id = :r AND cluster = ANY(:clusters) AND NOT committed
                      AND existing_id IS NULL
                    GROUP BY cluster) g ON g.cluster = f.cluster"""),
        {"r": run.id, "clusters": fresh, "ids": person_ids, "numbers": numbers})
    sources, links, history, keys = [], [], [], []
    actor = f"{ACTOR_PREFIX}{run.id}"
    for cluster, members in by_cluster.items():
        pid = person_of[cluster]
        for r, sid in members:
            sources.append((sid, r.facility_code, r.card_no, _json(r.recorded), _json(r.norm), _json(r.features), 1,
                            r.recorded_at))
            method = r.method if r.method != "new" else "migration:new"
            links.append((sid, pid, r.weight, method))
            history.append(("link", sid, pid, r.weight, method, actor, _json({"run": run.id, "row": r.row_no})))
            keys.extend((k, sid) for k in config.blocking_hashes(r.features))
    copy_rows(session, "empi.source_identity",
              ("id", "facility_code", "card_no", "recorded", "norm", "features", "trust", "recorded_at"), sources)
    copy_rows(session, "empi.link", ("source_id", "person_id", "weight", "method"), links)
    copy_rows(session, "empi.history", ("action", "source_id", "person_id", "weight", "method", "actor", "detail"), history)
    copy_rows(session, "empi.blocking_key", ("key", "source_id"), keys)
    for cluster in existing_person:
        service.recompute_golden(session, person_of[cluster])
    session.execute(text("UPDATE empi.migration_row SET committed = true WHERE run_id = :r AND row_no = ANY(:n)"),
                    {"r": run.id, "n": [r.row_no for r in rows]})


# --- stage: review -----------------------------------------------------------------------------------


def review(session: Session, run: MigrationRun, options: Options, progress: Progress = _no_progress) -> None:
    started = time.perf_counter()
    result = session.execute(text(
        """INSERT INTO empi.review (source_id, other_source_id, weight, terms, origin)
           SELECT s.id, CASE WHEN m.review_with < 0 THEN -m.review_with ELSE o.id END, m.review_weight,
                  m.review_terms, :origin
             FROM empi.migration_row m
             JOIN empi.source_identity s ON s.facility_code = m.facility_code AND s.card_no = m.card_no
             LEFT JOIN empi.migration_row om ON om.run_id = m.run_id AND om.row_no = m.review_with
             LEFT JOIN empi.source_identity o ON o.facility_code = om.facility_code AND o.card_no = om.card_no
            WHERE m.run_id = :r AND m.review_with IS NOT NULL
              AND (m.review_with < 0 OR o.id IS NOT NULL)
           ON CONFLICT (source_id, other_source_id) DO NOTHING"""), {"r": run.id, "origin": f"{ACTOR_PREFIX}{run.id}"})
    _finish_stage(session, run, "review", time.perf_counter() - started, review={"queued": result.rowcount})


def run_migration(session: Session, options: Options, progress: Progress = _no_progress,
                  *, crash_after_chunks: int | None = None) -> MigrationRun:
    """Run (or resume) every stage; a dry run stops before commit. Returns the finished run."""
    run = start_or_resume(session, options)
    session.commit()
    try:
        for name, step in (("stage", stage), ("train", train), ("link", link)):
            if not _done(run, name):
                step(session, run, options, progress)
        if not options.dry_run:
            if not _done(run, "commit"):
                commit(session, run, options, progress, crash_after_chunks=crash_after_chunks)
            if not _done(run, "review"):
                review(session, run, options, progress)
    except BaseException:
        session.rollback()
        raise
    run.state, run.finished_at = "done", datetime.now(UTC)
    session.commit()
    return run
