"""Alembic environment: every capability's tables, each in its own PostgreSQL schema."""

from alembic import context
from sqlalchemy import create_engine, text

from smartcare import bootstrap
from smartcare.platform.db import SCHEMAS, Base, database_url

bootstrap.import_models()
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = context.config.attributes.get("connection")
    if connectable is None:
        engine = create_engine(database_url())
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connectable)


def _run(connection) -> None:
    for schema in SCHEMAS:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_schemas=True,
        version_table_schema="platform",
        include_name=lambda name, type_, parent: type_ != "schema" or name in SCHEMAS,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
