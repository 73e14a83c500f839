"""Bus over NATS JetStream: the outbox remembers what its relay has handed to JetStream.

Existing rows and rows the PostgreSQL transport writes take ``now()``: they were fanned out to
``bus_delivery`` when published and must never be relayed. The NATS transport writes NULL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 23:40:00.000000
"""

from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('bus_message', sa.Column('relayed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                                           nullable=True), schema='platform')
    op.create_index('ix_bus_message_unrelayed', 'bus_message', ['id'], unique=False, schema='platform',
                    postgresql_where=sa.text('relayed_at IS NULL'))


def downgrade() -> None:
    op.drop_index('ix_bus_message_unrelayed', table_name='bus_message', schema='platform',
                  postgresql_where=sa.text('relayed_at IS NULL'))
    op.drop_column('bus_message', 'relayed_at', schema='platform')
