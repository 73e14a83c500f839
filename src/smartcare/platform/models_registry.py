"""Imports every capability's ``models`` so that Alembic and tests see the whole schema."""

import importlib

MODEL_MODULES = (
    "smartcare.platform.models",
    "smartcare.registry.models",
    "smartcare.synth.models",
    "smartcare.exchange.models",
    "smartcare.empi.models",
)


#: Modules whose bus consumers must be registered before subscriptions are synced or workers start.
CONSUMER_MODULES = (
    "smartcare.empi.events",
)


def import_consumers() -> None:
    for name in CONSUMER_MODULES:
        importlib.import_module(name)


def import_all() -> None:
    for name in MODEL_MODULES:
        importlib.import_module(name)
