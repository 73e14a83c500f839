"""Apply Alembic migrations, then the reference data and bus subscriptions that the code defines."""

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


def upgrade() -> None:
    """Bring the schema to the newest revision and load what every fresh database needs."""
    from smartcare.platform import bus
    from smartcare.platform.db import session_scope
    from smartcare.registry import service as registry_service

    from smartcare.exchange import channels, service as exchange
    from smartcare.platform.models_registry import import_consumers

    import_consumers()

    command.upgrade(alembic_config(), "head")
    with session_scope() as session:
        registry_service.load_reference_data(session)
        channels.ensure_defaults(session)
        exchange.ensure_partitions(session)
    # PostgreSQL subscription rows, or the JetStream stream and durables when SMARTCARE_BUS_URL names NATS.
    bus.sync_subscriptions(bus.registry.consumers.values())
