"""Imports every capability's ``models`` so that Alembic and tests see the whole schema."""

import importlib

MODEL_MODULES = (
    "smartcare.platform.models",
    "smartcare.registry.models",
    "smartcare.synth.models",
    "smartcare.exchange.models",
    "smartcare.empi.models",
)


def import_all() -> None:
    for name in MODEL_MODULES:
        importlib.import_module(name)
