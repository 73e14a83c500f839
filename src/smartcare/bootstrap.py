"""What the whole platform needs before it runs, in one place outside the kernel: every capability's
tables and bus consumers, and a database brought up to date with the data the code defines."""

from __future__ import annotations

import importlib

MODEL_MODULES = (
    "smartcare.platform.models",
    "smartcare.registry.models",
    "smartcare.synth.models",
    "smartcare.exchange.models",
    "smartcare.empi.models",
    "smartcare.healthcard.models",
    "smartcare.payment.models",
    "smartcare.booking.models",
    "smartcare.records.models",
    "smartcare.quality.models",
)

#: Modules whose bus consumers must be registered before subscriptions are synced or workers start.
CONSUMER_MODULES = (
    "smartcare.empi.events",
    "smartcare.booking.events",
    "smartcare.records.events",
    "smartcare.quality.events",
    "smartcare.warehouse.events",
)


def import_models() -> None:
    """So that Alembic and tests see the whole schema."""
    for name in MODEL_MODULES:
        importlib.import_module(name)


def import_consumers() -> None:
    for name in CONSUMER_MODULES:
        importlib.import_module(name)


def prepare_database() -> None:
    """Newest schema, reference data, default channels, the coming days' partitions, a health-card
    issuer key, bus subscriptions. Idempotent: ``smartcare migrate`` and every start run it."""
    from smartcare.exchange import channels, service as exchange
    from smartcare.healthcard import keys as healthcard_keys
    from smartcare.platform import bus, migrate
    from smartcare.platform.db import session_scope
    from smartcare.registry import service as registry

    import_consumers()
    migrate.upgrade_schema()
    with session_scope() as session:
        registry.load_reference_data(session)
        channels.ensure_defaults(session)
        exchange.ensure_partitions(session)
        healthcard_keys.ensure(session)
    # PostgreSQL subscription rows, or the JetStream stream and durables when SMARTCARE_BUS_URL names NATS.
    bus.sync_subscriptions(bus.registry.consumers.values())
