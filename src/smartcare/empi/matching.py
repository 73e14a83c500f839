"""Real-time matching: which person a newly registered visit card belongs to, decided at once.

The steps, each a function that can be called and inspected on its own:

1. ``index_source``: the card's features (``FieldConfig.features``) and its blocking keys, stored
   in ``empi.blocking_key`` — an inverted index, so that
2. ``candidates`` finds every indexed card sharing a key with one index probe per key (no scans;
   at most ``CANDIDATES_PER_KEY`` per key, so a very common key cannot make a request slow);
3. ``score``: each candidate scored with the trained model (``scoring.Model``), best per person;
4. ``decide``: link to the best person at or above the link weight; between review and link, a
   person of its own plus a review item for a human; below, a person of its own.

Without a trained model yet (a new region), only the config's deterministic rules link (same
valid ID, birth date and name sound for Chinese cards) — cautious, precision first. A person whose
cards carry another value of the config's ``distinct`` feature (for Chinese cards a certain ID:
valid and agreeing with its birth date) is never linked to: twins and a child registered with a
parent's ID stay apart, as in bulk clustering.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, Column, MetaData, Table, delete, func, select, text
from sqlalchemy.orm import Session

from smartcare.empi import service
from smartcare.empi.fields import FieldConfig, default_config
from smartcare.empi.models import Link, Model, Person, Review, SourceIdentity
from smartcare.empi.scoring import Model as ScoringModel
from smartcare.empi.scoring import Score
from smartcare.platform.db import copy_rows

CANDIDATES_PER_KEY = 50
# A plain table (no ORM class needed): (key hash, source id).
BlockingKeyTable = Table("blocking_key", MetaData(schema="empi"), Column("key", BigInteger), Column("source_id", BigInteger))
RULE = "rule"


def key_hash(key: str) -> int:
    """A blocking key as a signed 64-bit integer (the index stores these, not the values)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def index_source(session: Session, source: SourceIdentity, config: FieldConfig | None = None) -> None:
    """Compute and store the card's features and blocking keys (replacing earlier ones)."""
    config = config or default_config()
    source.features = _jsonable(config.features(source.recorded))
    session.flush()
    session.execute(delete(BlockingKeyTable).where(BlockingKeyTable.c.source_id == source.id))
    keys = sorted({key_hash(k) for k in config.blocking_keys(source.features)})
    if keys:
        session.execute(BlockingKeyTable.insert(), [{"key": k, "source_id": source.id} for k in keys])


def _jsonable(features: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in features.items() if v is not None}


@dataclass(frozen=True)
class Candidate:
    source_id: int
    person_id: int
    features: dict[str, Any]


def candidates(session: Session, features: dict[str, Any], config: FieldConfig | None = None, *,
               exclude: int = 0) -> list[Candidate]:
    """Linked cards sharing at least one blocking key with ``features`` (index probes only)."""
    config = config or default_config()
    keys = sorted({key_hash(k) for k in config.blocking_keys(features)})
    if not keys:
        return []
    rows = session.execute(text(
        """
        SELECT DISTINCT s.id, l.person_id, s.features
          FROM unnest(CAST(:keys AS bigint[])) AS q(key)
          CROSS JOIN LATERAL (SELECT b.source_id FROM empi.blocking_key b WHERE b.key = q.key
                               AND b.source_id <> :me LIMIT :per_key) b
          JOIN empi.source_identity s ON s.id = b.source_id
          JOIN empi.link l ON l.source_id = s.id
        """), {"keys": keys, "me": exclude, "per_key": CANDIDATES_PER_KEY})
    return [Candidate(sid, pid, feats) for sid, pid, feats in rows]


# --- the model in use ----------------------------------------------------------------------------

_MODELS: dict[int, ScoringModel] = {}


def current_model(session: Session, config: FieldConfig | None = None) -> tuple[int, ScoringModel] | None:
    """The newest trained model of the config, or None before the first training."""
    config = config or default_config()
    row = session.execute(select(Model.id, Model.params).where(Model.config_name == config.name)
                          .order_by(Model.id.desc()).limit(1)).first()
    if row is None:
        return None
    if row.id not in _MODELS:
        _MODELS[row.id] = ScoringModel.from_json(row.params)
    return row.id, _MODELS[row.id]


def save_model(session: Session, *, model: ScoringModel, records: int, term_frequencies: dict[str, dict[Any, float]],
               actor: str) -> int:
    """Store a newly trained model and the term frequencies it scores with; it is used from now on."""
    row = Model(config_name=model.config_name, params=model.as_json(), records=records, trained_by=actor)
    session.add(row)
    session.flush()
    for feature, freqs in term_frequencies.items():
        session.execute(text("DELETE FROM empi.term_frequency WHERE feature = :f"), {"f": feature})
        copy_rows(session, "empi.term_frequency", ("feature", "value", "frequency"),
                  ((feature, str(v), f) for v, f in freqs.items()))
    return row.id


def _term_frequency(session: Session, config: FieldConfig, features: dict[str, Any]):
    wanted = [(f, str(features[f])) for f in config.tf_features if features.get(f) is not None]
    found: dict[tuple[str, str], float] = {}
    if wanted:
        rows = session.execute(text(
            "SELECT feature, value, frequency FROM empi.term_frequency "
            "WHERE (feature, value) IN (SELECT * FROM unnest(CAST(:f AS text[]), CAST(:v AS text[])))"),
            {"f": [w[0] for w in wanted], "v": [w[1] for w in wanted]})
        found = {(f, v): freq for f, v, freq in rows}
    return lambda feature, value: found.get((feature, str(value))) if value is not None else None


# --- scoring and deciding --------------------------------------------------------------------------


@dataclass
class Ranked:
    """A candidate person: the best-scoring of its cards."""

    person_id: int
    source_id: int
    weight: float
    score: Score | None
    rule: bool = False


@dataclass
class Decision:
    outcome: str  # "link", "review" (own person + review item) or "new"
    person: Person
    weight: float | None
    method: str
    ranked: list[Ranked] = field(default_factory=list)


def rank(session: Session, features: dict[str, Any], found: list[Candidate], config: FieldConfig,
         model: ScoringModel | None) -> list[Ranked]:
    """Candidates scored (or rule-checked without a model), best card per person, best person first."""
    tf = _term_frequency(session, config, features) if model is not None else None
    best: dict[int, Ranked] = {}
    for cand in found:
        rule = any(r.key(features) is not None and r.key(features) == r.key(cand.features) for r in config.deterministic)
        if model is not None:
            s = model.score(config, features, cand.features, tf)
            ranked = Ranked(cand.person_id, cand.source_id, s.weight, s, rule)
        else:
            ranked = Ranked(cand.person_id, cand.source_id, float("inf") if rule else float("-inf"), None, rule)
        if cand.person_id not in best or ranked.weight > best[cand.person_id].weight:
            best[cand.person_id] = ranked
    return sorted(best.values(), key=lambda r: -r.weight)


def _conflicts(session: Session, person_id: int, features: dict[str, Any], config: FieldConfig) -> bool:
    """The person holds a card with another value of the config's ``distinct`` feature (a certain ID)."""
    mine = features.get(config.distinct) if config.distinct else None
    if mine is None:
        return False
    return bool(session.scalar(
        select(func.count()).select_from(SourceIdentity).join(Link, Link.source_id == SourceIdentity.id)
        .where(Link.person_id == person_id, SourceIdentity.features[config.distinct].astext.is_not(None),
               SourceIdentity.features[config.distinct].astext != mine)))


def match(session: Session, source: SourceIdentity, *, actor: str = "empi",
          config: FieldConfig | None = None) -> Decision:
    """Index ``source``, find and score its candidates, and carry out the decision. Idempotent:
    a source that is already linked keeps its link."""
    config = config or default_config()
    index_source(session, source, config)
    current = session.get(Link, source.id)
    if current is not None:
        return Decision("link", session.get(Person, current.person_id), current.weight, current.method)
    loaded = current_model(session, config)
    model_id, model = loaded if loaded else (None, None)
    ranked = rank(session, source.features, candidates(session, source.features, config, exclude=source.id), config, model)
    for top in ranked:
        linkable = top.rule or (model is not None and top.weight >= config.link_weight)
        if not linkable:
            break
        if _conflicts(session, top.person_id, source.features, config):
            continue
        method = RULE if top.rule else f"model:{model_id}"
        weight = top.weight if top.score is not None else None
        person = service.link(session, source_id=source.id, person_id=top.person_id, weight=weight, method=method,
                              actor=actor)
        return Decision("link", person, weight, method, ranked)
    person = service.link(session, source_id=source.id, person_id=None, method="new", actor=actor)
    review = [r for r in ranked if r.score is not None and config.review_weight <= r.weight]
    if review:
        top = review[0]
        session.add(Review(source_id=source.id, other_source_id=top.source_id, weight=top.weight,
                           terms=[t.__dict__ for t in top.score.terms], origin="realtime"))
        session.flush()
        return Decision("review", person, top.weight, "new", ranked)
    return Decision("new", person, None, "new", ranked)



def query(session: Session, record: dict[str, Any], *, limit: int = 10,
          config: FieldConfig | None = None) -> list[Ranked]:
    """PDQ-style search by demographics: the persons whose cards best match ``record``, best first."""
    config = config or default_config()
    features = config.features(record)
    loaded = current_model(session, config)
    model = loaded[1] if loaded else None
    return rank(session, features, candidates(session, features, config), config, model)[:limit]
