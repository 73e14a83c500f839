"""Alembic migrations: where they are and how to apply them."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from smartcare.platform.errors import ConfigurationError

MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"


def alembic_config() -> Config:
    if not (MIGRATIONS / "env.py").exists():
        raise ConfigurationError(f"migrations not found at {MIGRATIONS}",
                                 hint="install SmartCare from its source tree (pip install -e .)")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade_schema() -> None:
    """Bring the schema to the newest Alembic revision (data the code defines: ``smartcare.bootstrap``)."""
    command.upgrade(alembic_config(), "head")
