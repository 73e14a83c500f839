"""Real-time matching: which person a newly registered visit card belongs to, decided at once.

The steps, each a function that can be called and inspected on its own:

1. ``service.register_source``: the card, its features (``FieldConfig.features``) and its blocking
   keys, stored in ``empi.blocking_key`` — an inverted index, so that
2. ``candidates`` finds every indexed card sharing a key with one index probe per key (no scans;
   at most ``CANDIDATES_PER_KEY`` per key, so a very common key cannot make a request slow);
3. ``rank``: each candidate scored with the trained model (``scoring.Model``), best per person;
4. ``match``: link to the best person at or above the link weight; between review and link, a
   person of its own plus a review item for a human; below, a person of its own.

``register`` runs them all for one card; it is the entry point of the API and the hub's intake.

Without a trained model yet (a new region), only the config's deterministic rules link (same
valid ID, birth date and name sound for Chinese cards) — cautious, precision first. A person whose
cards carry another value of the config's ``distinct`` feature (for Chinese cards a certain ID:
valid and agreeing with its birth date) is never linked to: twins and a child registered with a
parent's ID stay apart, as in bulk clustering.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from smartcare.empi import service
from smartcare.empi.fields import FieldConfig, default_config
from smartcare.empi.models import Model, Review
from smartcare.empi.scoring import Model as ScoringModel
from smartcare.empi.scoring import Score
from smartcare.platform.db import copy_rows, driver

CANDIDATES_PER_KEY = 50
RULE = "rule"


@dataclass(frozen=True)
class Candidate:
    source_id: int
    person_id: int
    features: dict[str, Any]


@dataclass(frozen=True)
class Found:
    """What one candidate search returns: the candidate cards, and the term frequencies of the
    searched card's values (for the TF adjustment of exact matches)."""

    candidates: list[Candidate]
    tf: dict[str, float]

    def frequency(self, feature: str, value: Any) -> float | None:
        return self.tf.get(f"{feature}={value}") if value is not None else None


def candidates(session: Session, features: dict[str, Any], config: FieldConfig | None = None, *,
               exclude: int = 0) -> Found:
    """Linked cards sharing at least one blocking key with ``features`` (index probes only), with the
    term frequencies of the searched values — one statement."""
    config = config or default_config()
    return _found(_search(session, features, config.blocking_hashes(features), config, exclude))


def _search(session: Session, features: dict[str, Any], keys: list[int], config: FieldConfig, exclude: int):
    """Send the candidate search for the card's blocking ``keys``; its rows are read by ``_found`` (so it can
    share a round trip)."""
    wanted = [(f, str(features[f])) for f in config.tf_features if features.get(f) is not None]
    return driver(session).execute(
        """
        WITH hit AS (
            SELECT DISTINCT b.source_id FROM unnest(CAST(%(keys)s AS bigint[])) AS q(key)
             CROSS JOIN LATERAL (SELECT source_id FROM empi.blocking_key WHERE key = q.key AND source_id <> %(me)s
                                  LIMIT %(per_key)s) b)
        SELECT s.id, l.person_id, s.features,
               (SELECT jsonb_object_agg(feature || '=' || value, frequency) FROM empi.term_frequency
                 WHERE (feature, value) IN (SELECT * FROM unnest(CAST(%(tf_f)s AS text[]), CAST(%(tf_v)s AS text[]))))
          FROM hit JOIN empi.source_identity s ON s.id = hit.source_id JOIN empi.link l ON l.source_id = s.id
        """, {"keys": keys, "me": exclude, "per_key": CANDIDATES_PER_KEY,
              "tf_f": [w[0] for w in wanted], "tf_v": [w[1] for w in wanted]})


def _found(cursor) -> Found:
    rows = cursor.fetchall()
    tf = (rows[0][3] or {}) if rows else {}
    return Found([Candidate(sid, pid, feats) for sid, pid, feats, _ in rows], tf)


# --- the model in use ----------------------------------------------------------------------------

MODEL_CHECK_SECONDS = 5.0
_CURRENT: dict[tuple[str, str], tuple[float, tuple[int, ScoringModel] | None]] = {}  # (database, config)


def current_model(session: Session, config: FieldConfig | None = None) -> tuple[int, ScoringModel] | None:
    """The newest trained model of the config, or None before the first training. Looked up at most
    every ``MODEL_CHECK_SECONDS`` per process (a model trained elsewhere is used within that time)."""
    config = config or default_config()
    where = (str(session.get_bind().url), config.name)
    cached = _CURRENT.get(where)
    if cached is not None and time.monotonic() - cached[0] < MODEL_CHECK_SECONDS:
        return cached[1]
    row = driver(session).execute("SELECT id, params FROM empi.model WHERE config_name = %s ORDER BY id DESC LIMIT 1",
                                  (config.name,)).fetchone()
    current = (row[0], ScoringModel.from_json(row[1])) if row else None
    _CURRENT[where] = (time.monotonic(), current)
    return current


def save_model(session: Session, *, model: ScoringModel, records: int, term_frequencies: dict[str, dict[Any, float]],
               actor: str) -> int:
    """Store a newly trained model and the term frequencies it scores with; it is used from now on."""
    row = Model(config_name=model.config_name, params=model.as_json(), records=records, trained_by=actor)
    session.add(row)
    session.flush()
    _CURRENT.pop((str(session.get_bind().url), model.config_name), None)
    for feature, freqs in term_frequencies.items():
        session.execute(text("DELETE FROM empi.term_frequency WHERE feature = :f"), {"f": feature})
        copy_rows(session, "empi.term_frequency", ("feature", "value", "frequency"),
                  ((feature, str(v), f) for v, f in freqs.items()))
    return row.id


# --- scoring and deciding --------------------------------------------------------------------------


@dataclass
class Ranked:
    """A candidate person: the best-scoring of its cards."""

    person_id: int
    source_id: int
    weight: float
    rule: bool = False
    explain: Callable[[], Score] | None = field(default=None, repr=False)

    @cached_property
    def score(self) -> Score | None:
        """The weight with its terms (the waterfall), worked out when asked for: most candidates never are.
        None when there is no model (rules alone)."""
        return self.explain() if self.explain is not None else None


@dataclass
class Decision:
    outcome: str  # "link", "review" (own person + review item) or "new"
    person: service.PersonRef
    weight: float | None
    method: str
    ranked: list[Ranked] = field(default_factory=list)


def rank(features: dict[str, Any], found: Found, config: FieldConfig, model: ScoringModel | None) -> list[Ranked]:
    """Candidates scored (or rule-checked without a model), best card per person, best person first."""
    best: dict[int, Ranked] = {}
    mine = [(r, k) for r in config.deterministic if (k := r.key(features)) is not None]
    for cand in found.candidates:
        rule = any(k == r.key(cand.features) for r, k in mine)
        if model is not None:
            ranked = Ranked(cand.person_id, cand.source_id, model.weight(config, features, cand.features, found.frequency),
                            rule, partial(model.score, config, features, cand.features, found.frequency))
        else:
            ranked = Ranked(cand.person_id, cand.source_id, float("inf") if rule else float("-inf"), rule)
        if cand.person_id not in best or ranked.weight > best[cand.person_id].weight:
            best[cand.person_id] = ranked
    return sorted(best.values(), key=lambda r: -r.weight)


def match(session: Session, source: service.Registered, *, actor: str = "empi",
          config: FieldConfig | None = None, found: Found | None = None) -> Decision:
    """Score the candidates of a registered card (``found``, or searched now) and carry out the
    decision. Idempotent: a source that is already linked keeps its link."""
    config = config or default_config()
    if source.person_id is not None:
        return Decision("link", service.person_ref(session, source.person_id), None, "already linked")
    loaded = current_model(session, config)
    model_id, model = loaded if loaded else (None, None)
    if found is None:
        found = candidates(session, source.features, config, exclude=source.id)
    ranked = rank(source.features, found, config, model)
    mine = source.features.get(config.distinct) if config.distinct else None
    for top in ranked:
        linkable = top.rule or (model is not None and top.weight >= config.link_weight)
        if not linkable:
            break
        method = RULE if top.rule else f"model:{model_id}"
        weight = top.weight if model is not None else None
        person = service.link(session, source_id=source.id, person_id=top.person_id, weight=weight, method=method,
                              actor=actor, unless_holding=(config.distinct, str(mine)) if mine is not None else None)
        if person is not None:  # None: that person holds another certain ID (a twin, a guardian)
            return Decision("link", person, weight, method, ranked)
    review = [r for r in ranked if model is not None and config.review_weight <= r.weight]
    if review:
        top = review[0]
        session.execute(insert(Review).values(source_id=source.id, other_source_id=top.source_id, weight=top.weight,
                                              terms=[t.__dict__ for t in top.score.terms], origin="realtime"))
    person = service.link(session, source_id=source.id, person_id=None, method="new", actor=actor)
    if review:
        return Decision("review", person, review[0].weight, "new", ranked)
    return Decision("new", person, None, "new", ranked)


def register(session: Session, *, facility_code: str, card_no: str, record: dict[str, Any], actor: str,
             trust: int = 1, config: FieldConfig | None = None) -> Decision:
    """A hospital's card registered and matched at once: the real-time entry point (API, hub intake).
    The candidate search and the registration share one round trip (pipelined; the search runs first,
    so it does not see the card itself)."""
    config = config or default_config()
    prepared = service.prepare_source(record, config)
    with driver(session).pipeline():
        searching = _search(session, prepared.features, prepared.keys, config, exclude=0)
        source = service.register_source(session, facility_code=facility_code, card_no=card_no, prepared=prepared,
                                         trust=trust, actor=actor, config=config)
    return match(session, source, actor=actor, config=config, found=_found(searching))


def query(session: Session, record: dict[str, Any], *, limit: int = 10,
          config: FieldConfig | None = None) -> list[Ranked]:
    """PDQ-style search by demographics: the persons whose cards best match ``record``, best first."""
    config = config or default_config()
    features = config.features(record)
    loaded = current_model(session, config)
    model = loaded[1] if loaded else None
    return rank(features, candidates(session, features, config), config, model)[:limit]
