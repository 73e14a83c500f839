"""Helpers of the EMPI tests: empty migrated databases for runs that must not see each other's cards,
and the index read back as a partition of card ids to compare with the truth."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


@contextlib.contextmanager
def fresh_database(database_url: str) -> Iterator[str]:
    """An empty database migrated to head on the test server, dropped afterwards."""
    from alembic import command

    from smartcare.platform.migrate import alembic_config

    server = make_url(database_url)
    name = f"smartcare_empi_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sessions(url: str) -> sessionmaker[Session]:
    return sessionmaker(create_engine(url), expire_on_commit=False)


def partition(session: Session) -> set[frozenset[str]]:
    """The index as groups of card ids ("<facility>-<card no>"), one group per person."""
    groups: dict[int, set[str]] = {}
    for card, person in session.execute(text(
            "SELECT s.facility_code || '-' || s.card_no, l.person_id FROM empi.source_identity s "
            "JOIN empi.link l ON l.source_id = s.id")):
        groups.setdefault(person, set()).add(card)
    return {frozenset(g) for g in groups.values()}


def pairwise(groups: set[frozenset[str]], truth: dict[str, int]) -> tuple[float, float]:
    """Pairwise precision and recall of a partition against the true residents."""
    from itertools import combinations

    def pairs(gs):
        return {p for g in gs for p in combinations(sorted(g), 2)}

    by_resident: dict[int, set[str]] = {}
    for card, resident in truth.items():
        by_resident.setdefault(resident, set()).add(card)
    predicted, true = pairs(groups), pairs(by_resident.values())
    hits = len(predicted & true)
    return hits / max(len(predicted), 1), hits / max(len(true), 1)
