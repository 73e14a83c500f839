"""The HTML report of a migration run: what each stage found and did, and why (thresholds, model)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.empi.fields import FieldConfig
from smartcare.empi.matching import current_model
from smartcare.empi.migration import STAGES
from smartcare.empi.models import MigrationRun
from smartcare.empi.scoring import weight_to_probability
from smartcare.registry import service as registry_service

HOSPITALS_SHOWN = 30
_ENV = Environment(loader=PackageLoader("smartcare.empi", "templates"), autoescape=select_autoescape())


def render(session: Session, run: MigrationRun, config: FieldConfig) -> str:
    loaded = current_model(session, config)
    model_rows = []
    if loaded:
        _, model = loaded
        for ci, comp in enumerate(config.comparisons):
            for li, level in enumerate(comp.levels):
                m, u = model.levels[ci][li]
                model_rows.append({"comparison": comp.name, "level": level.label, "m": m, "u": u,
                                   "weight": None if level.is_null else model.level_weight(ci, li)})
    profile = run.stats.get("profile") or {}
    by_facility, invalid = profile.get("by_facility") or {}, profile.get("invalid_ids") or {}
    # The hospitals whose registration desks need attention first: most invalid ID numbers (a share
    # alone would put a clinic with one bad card of three on top).
    worst = sorted(by_facility, key=lambda f: (-invalid.get(f, 0), -by_facility[f]))[:HOSPITALS_SHOWN]
    names = registry_service.facility_names(session, worst)
    hospitals = [{"code": f, "name": names.get(f, ""), "cards": by_facility[f], "invalid": invalid.get(f, 0)}
                 for f in worst]
    methods = session.execute(text(
        "SELECT coalesce(method, 'new'), count(*) FROM empi.migration_row WHERE run_id = :r GROUP BY 1 ORDER BY 2 DESC"),
        {"r": run.id}).all()
    return _ENV.get_template("migration_report.html").render(
        run=run, stats=run.stats, stages=STAGES, config=config, model_rows=model_rows, methods=methods,
        hospitals=hospitals, hospital_count=len(by_facility),
        link_probability=weight_to_probability(config.link_weight),
        review_probability=weight_to_probability(config.review_weight))


def write(session: Session, run: MigrationRun, config: FieldConfig, path: Path) -> Path:
    path.write_text(render(session, run, config), encoding="utf-8")
    return path
