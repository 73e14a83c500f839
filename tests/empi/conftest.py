"""Fixtures of the EMPI tests: synthetic visit cards as a hospital export, with the truth apart."""

from __future__ import annotations

from pathlib import Path

import pytest

CARD_RESIDENTS = 1500


@pytest.fixture(scope="session")
def cards_csv(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """~3,700 visit cards of 1,500 synthetic residents (errors, twins, guardians' IDs) and card → resident."""
    from smartcare.synth import region, visitcards

    people = list(region.residents(11, CARD_RESIDENTS))
    people += list(visitcards.twins(11, people))
    generated = list(visitcards.visit_cards(11, people, region.facilities(11)))
    path = tmp_path_factory.mktemp("empi") / "cards.csv"
    visitcards.write_csv(path, (c for c, _ in generated))
    return path, {t.card_id: t.resident_id for _, t in generated}
