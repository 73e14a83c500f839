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
    methods = session.execute(text(
        "SELECT coalesce(method, 'new'), count(*) FROM empi.migration_row WHERE run_id = :r GROUP BY 1 ORDER BY 2 DESC"),
        {"r": run.id}).all()
    return _ENV.get_template("migration_report.html").render(
        run=run, stats=run.stats, stages=STAGES, config=config, model_rows=model_rows, methods=methods,
        link_probability=weight_to_probability(config.link_weight),
        review_probability=weight_to_probability(config.review_weight))


def write(session: Session, run: MigrationRun, config: FieldConfig, path: Path) -> Path:
    path.write_text(render(session, run, config), encoding="utf-8")
    return path
