"""The quality-control engine: every rule of the catalogue over one parse of each document.

Why it is fast: the catalogue (``rules.yaml``) is compiled once into plain functions grouped by
document type, so checking a document is one XML parse, one schema validation on the same tree,
one pass collecting its data elements into a dict, then one function call per applicable rule —
no rule re-reads the XML or queries the database (what they need from the registry, the master index
or earlier documents comes through a ``Context`` prepared for the whole batch). The per-rule SQL of
DQD-style checkers and one-Schematron-pass-per-rule designs are what this avoids.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Final

import yaml

from smartcare.quality.checks import HEADER_FIELDS, KINDS, Check, Context, Facts, Hit
from smartcare.standards import cda
from smartcare.standards.cda.schema import SchemaError
from smartcare.standards.xml import XmlError, parse_xml

log = logging.getLogger(__name__)

DIMENSIONS: Final = ("conformance", "completeness", "validity", "consistency", "plausibility", "uniqueness",
                     "timeliness", "integration")
DIMENSION_NAMES: Final = {"conformance": "符合性", "completeness": "完整性", "validity": "规范性", "consistency": "一致性",
                          "plausibility": "准确性", "uniqueness": "唯一性", "timeliness": "及时性", "integration": "整合性"}
SEVERITIES: Final = ("error", "warning")
ALL_TYPES: Final = tuple(f"C{n:04d}" for n in range(1, 54))


class CatalogueError(ValueError):
    """The rule catalogue is wrong; the message names the rule and the field."""


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    dimension: str
    kahn: str
    severity: str
    types: tuple[str, ...]
    message: str
    check: dict

    def applies_to(self, type_code: str) -> bool:
        return type_code in self.types


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    element: str
    line: int | None
    detail: str


@dataclass(slots=True)
class Report:
    """The outcome of checking one document."""

    type_code: str | None
    document_id: str | None
    custodian: str | None
    sha256: str
    findings: list[Finding] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)  # dimension -> rules applied
    failed: dict[str, int] = field(default_factory=dict)  # dimension -> rules failed

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.rule.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.rule.severity == "warning")

    @property
    def score(self) -> float:
        """Share of applicable rules passed, 0–100."""
        applied = sum(self.applied.values())
        return round(100.0 * (applied - sum(self.failed.values())) / applied, 2) if applied else 0.0


def _rule(raw: dict, n: int) -> Rule:
    if not isinstance(raw, dict):
        raise CatalogueError(f"rule #{n}: a rule is a mapping of id, dimension, kahn, severity, types, message, check")
    where = f"rule #{n} ({raw.get('id', 'no id')})"
    for key in ("id", "dimension", "kahn", "severity", "types", "message", "check"):
        if key not in raw:
            raise CatalogueError(f"{where}: missing '{key}'")
    if not isinstance(raw["check"], dict):
        raise CatalogueError(f"{where}: check is a mapping with a kind and its parameters")
    if raw["types"] != "all" and not (isinstance(raw["types"], list) and raw["types"]):
        raise CatalogueError(f"{where}: types is 'all' or a list of document types")
    if raw["dimension"] not in DIMENSIONS:
        raise CatalogueError(f"{where}: dimension must be one of {', '.join(DIMENSIONS)}")
    if raw["severity"] not in SEVERITIES:
        raise CatalogueError(f"{where}: severity must be error or warning")
    types = ALL_TYPES if raw["types"] == "all" else tuple(raw["types"])
    unknown = [t for t in types if t not in ALL_TYPES]
    if unknown:
        raise CatalogueError(f"{where}: types {unknown} are not WS/T 500 document types")
    check = dict(raw["check"])
    kind = check.get("kind")
    if kind not in KINDS:
        raise CatalogueError(f"{where}: check kind {kind!r} is not one of {', '.join(sorted(KINDS))}")
    wanted = set(inspect.signature(KINDS[kind]).parameters) - {"ctx"}
    given = set(check) - {"kind"}
    if wanted != given:
        raise CatalogueError(f"{where}: check {kind} takes {sorted(wanted) or 'no parameters'}, got {sorted(given)}")
    for name in ("min", "max", "max_hours"):
        if name in check and (isinstance(check[name], bool) or not isinstance(check[name], int | float)):
            raise CatalogueError(f"{where}: {name} must be a number")
    if "field" in check and check["field"] not in HEADER_FIELDS:
        raise CatalogueError(f"{where}: field must be one of {', '.join(HEADER_FIELDS)}")
    return Rule(raw["id"], raw["dimension"], raw["kahn"], raw["severity"], types, raw["message"], check)


def load_rules(text: str | None = None) -> list[Rule]:
    """The catalogue (``rules.yaml`` shipped with the package unless ``text`` is given), validated."""
    if text is None:
        text = resources.files("smartcare.quality").joinpath("rules.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text) or []
    if not isinstance(raw, list):
        raise CatalogueError("the catalogue is a list of rules (each starting with '- id: …')")
    rules = [_rule(r, n) for n, r in enumerate(raw, 1)]
    seen: set[str] = set()
    for r in rules:
        if r.id in seen:
            raise CatalogueError(f"rule id {r.id} appears twice")
        seen.add(r.id)
    return rules


@cache
def catalogue() -> tuple[Rule, ...]:
    return tuple(load_rules())


def _rule_by_id(rules: Iterable[Rule], rule_id: str) -> Rule:
    return next(r for r in rules if r.id == rule_id)


class Engine:
    """Rules compiled against one ``Context``; ``check`` runs them all on a document."""

    def __init__(self, ctx: Context, rules: Iterable[Rule] | None = None):
        self.ctx = ctx
        self.rules = tuple(rules if rules is not None else catalogue())
        for r in self.rules:
            if "value_set" in r.check and r.check["value_set"] not in ctx.value_sets:
                raise CatalogueError(f"rule {r.id}: value set {r.check['value_set']!r} is not in the registry")
        compiled = [(r, KINDS[r.check["kind"]](ctx, **{k: v for k, v in r.check.items() if k != "kind"}))
                    for r in self.rules]
        self._by_type: dict[str, list[tuple[Rule, Check]]] = {
            t: [(r, fn) for r, fn in compiled if r.applies_to(t)] for t in ALL_TYPES}
        self._schema_rule = _rule_by_id(self.rules, "CONF-SCHEMA")
        self._time_rule = _rule_by_id(self.rules, "CONF-TIME-FORMAT")

    def check(self, raw: bytes, *, sent_at: datetime | None = None, registry: dict | None = None) -> Report:
        """Check one document as received. A document that cannot be read at all (not XML, not a
        ClinicalDocument, a header time that is no time) gets one conformance finding and score 0."""
        sha = hashlib.sha256(raw).hexdigest()
        try:
            root = parse_xml(raw)
            parsed = cda.parse(root)
        except (XmlError, cda.CdaError) as exc:
            rule = self._time_rule if "timestamp" in str(exc) or "date/time" in str(exc) else self._schema_rule
            report = Report(None, None, None, sha, applied={rule.dimension: 1}, failed={rule.dimension: 1})
            report.findings.append(Finding(rule, getattr(exc, "location", None) or "ClinicalDocument",
                                           getattr(exc, "line", None), str(exc)[:300]))
            return report
        header = parsed.header
        type_code = header.type_code
        try:
            schema_errors = cda.schema_for(type_code).errors(root)
        except SchemaError as exc:
            schema_errors = [str(exc)]
        facts = Facts(type_code, header, parsed.entries, root, schema_errors, sha, sent_at, registry=registry or {})
        report = Report(type_code, header.document_id.extension or header.document_id.root, header.custodian.code, sha)
        applied, failed = report.applied, report.failed
        for rule, fn in self._by_type.get(type_code, ()):
            applied[rule.dimension] = applied.get(rule.dimension, 0) + 1
            try:
                hit: Hit | None = fn(facts)
            except Exception as exc:  # noqa: BLE001 — one odd value must not cost the document its other checks
                log.warning("rule %s could not check document %s: %s", rule.id, report.document_id, type(exc).__name__)
                hit = Hit("ClinicalDocument", None, f"could not be checked ({type(exc).__name__})")
            if hit is not None:
                failed[rule.dimension] = failed.get(rule.dimension, 0) + 1
                report.findings.append(Finding(rule, hit.element, hit.line, hit.detail))
        return report


@dataclass
class MemoryContext:
    """A ``Context`` held in memory: for tests, the benchmark and checking files offline."""

    value_sets: dict[str, dict[str, str]]
    custodians: set[str] = field(default_factory=set)
    resolvable: bool = True
    seen: dict[tuple[str, str], str] = field(default_factory=dict)

    def custodian_known(self, code: str) -> bool:
        return code in self.custodians

    def patient_resolved(self, facts: Facts) -> bool:
        return self.resolvable

    def earlier_with_other_content(self, custodian: str, document_id: str, sha256: str) -> bool:
        first = self.seen.setdefault((custodian, document_id), sha256)
        return first != sha256
