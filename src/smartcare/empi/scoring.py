"""Fellegi–Sunter scoring of one pair with a trained model: the real-time half of matching.

A ``Model`` holds what training learned (Splink's EM on the data, see ``linkage.train``): the prior
``probability_two_random_records_match`` and, for every comparison level, m (how often true matches
fall in it) and u (how often non-matches do). A pair's match weight is the sum of
log2(prior odds) and of log2(m/u) of the level each comparison falls in, with Splink's
term-frequency adjustment on levels marked ``tf`` (an exact match on 王伟 says less than one on
欧阳娜娜). ``score`` returns every term, so a reviewer sees why a score is what it is (the waterfall).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from smartcare.empi.fields import FieldConfig, Features

TermFrequency = Callable[[str, Any], float | None]


@dataclass(frozen=True)
class Term:
    """One bar of the waterfall: a comparison, the level the pair fell in and its weight."""

    comparison: str
    level: str
    weight: float
    tf_adjustment: float = 0.0


@dataclass(frozen=True)
class Score:
    weight: float
    terms: tuple[Term, ...]

    @property
    def probability(self) -> float:
        return weight_to_probability(self.weight)


def weight_to_probability(weight: float) -> float:
    return 1.0 / (1.0 + 2.0 ** (-weight))


@dataclass(frozen=True)
class Model:
    """Trained parameters: the prior and (m, u) per level of each comparison, in config order."""

    config_name: str
    prior: float
    levels: tuple[tuple[tuple[float | None, float | None], ...], ...]

    def as_json(self) -> dict[str, Any]:
        return {"config": self.config_name, "prior": self.prior, "levels": [list(map(list, c)) for c in self.levels]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Model:
        return cls(config_name=data["config"], prior=float(data["prior"]),
                   levels=tuple(tuple((m, u) for m, u in comp) for comp in data["levels"]))

    @classmethod
    def from_splink(cls, config: FieldConfig, settings: Mapping[str, Any]) -> Model:
        """Read m/u from a trained Splink model (``linker.misc.save_model_to_json()``)."""
        by_name = {c["output_column_name"]: c for c in settings["comparisons"]}
        levels = []
        for comp in config.comparisons:
            trained = by_name[comp.name]["comparison_levels"]
            levels.append(tuple((lv.get("m_probability"), lv.get("u_probability")) for lv in trained))
        return cls(config_name=config.name, prior=float(settings["probability_two_random_records_match"]),
                   levels=tuple(levels))

    def level_weight(self, comparison: int, level: int) -> float:
        """log2(m/u); 0 for the missing level and for a level training never saw (as Splink does)."""
        return self._weights[comparison][level]

    @cached_property
    def _weights(self) -> tuple[tuple[float, ...], ...]:
        """Every level's log2(m/u), computed once: real-time matching scores every candidate with them."""
        return tuple(tuple(math.log2(m / u) if m is not None and u is not None and m > 0 and u > 0 else 0.0
                           for m, u in comp) for comp in self.levels)

    @cached_property
    def _prior_weight(self) -> float:
        return math.log2(self.prior / (1.0 - self.prior))

    def _terms(self, config: FieldConfig, a: Features, b: Features, tf: TermFrequency | None):
        """(comparison, level label, weight, TF adjustment) of each comparison, in config order."""
        for ci, comp in enumerate(config.comparisons):
            li = comp.level_of(a, b)
            level = comp.levels[li]
            w = 0.0 if level.is_null else self._weights[ci][li]
            adj = 0.0
            if level.tf and tf is not None and not level.is_null:
                u = self.levels[ci][li][1]
                freqs = [f for f in (tf(level.tf, a.get(level.tf)), tf(level.tf, b.get(level.tf))) if f]
                if freqs and u:
                    adj = math.log2(u) - math.log2(max(freqs))
            yield comp.name, level.label, w + adj, adj

    def weight(self, config: FieldConfig, a: Features, b: Features, tf: TermFrequency | None = None) -> float:
        """The pair's match weight alone: what ranking every candidate needs (``score`` explains it)."""
        return sum((term[2] for term in self._terms(config, a, b, tf)), self._prior_weight)  # score's order of sums

    def score(self, config: FieldConfig, a: Features, b: Features, tf: TermFrequency | None = None) -> Score:
        terms = [Term("prior", "two random records match", self._prior_weight)]
        terms += [Term(*term) for term in self._terms(config, a, b, tf)]
        return Score(sum(t.weight for t in terms), tuple(terms))
