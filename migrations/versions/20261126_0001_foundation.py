"""Foundation: kernel (users, API clients, audit log, bus), registry and synthetic-region tables.

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 22:12:54.683726
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_client',
    sa.Column('id', sa.Integer(), sa.Identity(always=False), nullable=False),
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('facility_code', sa.String(length=32), nullable=True),
    sa.Column('secret_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_client')),
    sa.UniqueConstraint('client_id', name=op.f('uq_api_client_client_id')),
    schema='platform'
    )
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('action', sa.String(length=100), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=True),
    sa.Column('detail', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
    schema='platform'
    )
    op.create_table('bus_message',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('message_id', sa.UUID(), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('published_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bus_message')),
    sa.UniqueConstraint('message_id', name=op.f('uq_bus_message_message_id')),
    schema='platform'
    )
    op.create_table('bus_subscription',
    sa.Column('consumer', sa.String(length=100), nullable=False),
    sa.Column('topic_pattern', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('consumer', 'topic_pattern', name=op.f('pk_bus_subscription')),
    schema='platform'
    )
    op.create_table('request_nonce',
    sa.Column('client_id', sa.String(length=64), nullable=False),
    sa.Column('nonce', sa.String(length=128), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'nonce', name=op.f('pk_request_nonce')),
    schema='platform'
    )
    op.create_index('ix_request_nonce_seen_at', 'request_nonce', ['seen_at'], unique=False, schema='platform')
    op.create_table('user_account',
    sa.Column('id', sa.Integer(), sa.Identity(always=False), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('display_name', sa.String(length=100), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=False),
    sa.Column('roles', postgresql.ARRAY(sa.String(length=32)), nullable=False),
    sa.Column('facility_code', sa.String(length=32), nullable=True),
    sa.Column('active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_account')),
    sa.UniqueConstraint('username', name=op.f('uq_user_account_username')),
    schema='platform'
    )
    op.create_table('district',
    sa.Column('code', sa.String(length=6), nullable=False),
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_district')),
    schema='registry'
    )
    op.create_table('value_set',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('standard', sa.String(length=100), nullable=False),
    sa.Column('oid', sa.String(length=100), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_value_set')),
    schema='registry'
    )
    op.create_table('resident',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('sex', sa.String(length=1), nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=False),
    sa.Column('id_number', sa.String(length=18), nullable=False),
    sa.Column('phone', sa.String(length=11), nullable=False),
    sa.Column('district_code', sa.String(length=6), nullable=False),
    sa.Column('address', sa.String(length=300), nullable=False),
    sa.Column('ethnicity', sa.String(length=2), nullable=False),
    sa.Column('family_id', sa.BigInteger(), nullable=False),
    sa.Column('guardian_id', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_resident')),
    sa.UniqueConstraint('id_number', name=op.f('uq_resident_id_number')),
    schema='synth'
    )
    op.create_index('ix_resident_district', 'resident', ['district_code'], unique=False, schema='synth')
    op.create_table('seed_run',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('scale', sa.String(length=16), nullable=False),
    sa.Column('residents', sa.Integer(), nullable=False),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_seed_run')),
    schema='synth'
    )
    op.create_table('bus_delivery',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('message_id', sa.BigInteger(), nullable=False),
    sa.Column('consumer', sa.String(length=100), nullable=False),
    sa.Column('state', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('available_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('pending', 'done', 'dead')", name=op.f('ck_bus_delivery_state')),
    sa.ForeignKeyConstraint(['message_id'], ['platform.bus_message.id'], name=op.f('fk_bus_delivery_message_id_bus_message'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bus_delivery')),
    sa.UniqueConstraint('message_id', 'consumer', name=op.f('uq_bus_delivery_message_id_consumer')),
    schema='platform'
    )
    op.create_index('ix_bus_delivery_ready', 'bus_delivery', ['consumer', 'available_at'], unique=False, schema='platform', postgresql_where=sa.text("state = 'pending'"))
    op.create_table('concept',
    sa.Column('value_set_id', sa.String(length=64), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('display', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['value_set_id'], ['registry.value_set.id'], name=op.f('fk_concept_value_set_id_value_set'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('value_set_id', 'code', name=op.f('pk_concept')),
    schema='registry'
    )
    op.create_table('facility',
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('level', sa.SmallInteger(), nullable=False),
    sa.Column('grade', sa.String(length=2), nullable=False),
    sa.Column('ownership', sa.String(length=8), nullable=False),
    sa.Column('district_code', sa.String(length=6), nullable=False),
    sa.Column('address', sa.String(length=300), nullable=False),
    sa.Column('beds', sa.Integer(), nullable=False),
    sa.CheckConstraint("ownership IN ('public', 'private')", name=op.f('ck_facility_ownership')),
    sa.CheckConstraint('level BETWEEN 0 AND 3', name=op.f('ck_facility_level')),
    sa.ForeignKeyConstraint(['district_code'], ['registry.district.code'], name=op.f('fk_facility_district_code_district')),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_facility')),
    sa.UniqueConstraint('name', name=op.f('uq_facility_name')),
    schema='registry'
    )
    op.create_index('ix_facility_district_kind', 'facility', ['district_code', 'kind'], unique=False, schema='registry')
    op.create_table('department',
    sa.Column('facility_code', sa.String(length=32), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.ForeignKeyConstraint(['facility_code'], ['registry.facility.code'], name=op.f('fk_department_facility_code_facility'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('facility_code', 'code', name=op.f('pk_department')),
    schema='registry'
    )
    op.create_table('practitioner',
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('facility_code', sa.String(length=32), nullable=False),
    sa.Column('department_code', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('sex', sa.String(length=1), nullable=False),
    sa.Column('title', sa.String(length=20), nullable=False),
    sa.Column('id_number', sa.String(length=18), nullable=True),
    sa.ForeignKeyConstraint(['facility_code', 'department_code'], ['registry.department.facility_code', 'registry.department.code'], name=op.f('fk_practitioner_facility_code_department'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('code', name=op.f('pk_practitioner')),
    schema='registry'
    )
    op.create_index('ix_practitioner_facility', 'practitioner', ['facility_code', 'department_code'], unique=False, schema='registry')

    op.execute("CREATE SEQUENCE platform.audit_log_id_seq OWNED BY platform.audit_log.id")
    # The audit log is append-only: the database itself refuses to change or remove an entry.
    op.execute(
        """
        CREATE FUNCTION platform.refuse_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'platform.audit_log is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$;
        CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON platform.audit_log
            FOR EACH ROW EXECUTE FUNCTION platform.refuse_audit_change();
        CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON platform.audit_log
            FOR EACH STATEMENT EXECUTE FUNCTION platform.refuse_audit_change();
        """
    )

def downgrade() -> None:
    op.execute("DROP FUNCTION platform.refuse_audit_change() CASCADE")
    op.drop_index('ix_practitioner_facility', table_name='practitioner', schema='registry')
    op.drop_table('practitioner', schema='registry')
    op.drop_table('department', schema='registry')
    op.drop_index('ix_facility_district_kind', table_name='facility', schema='registry')
    op.drop_table('facility', schema='registry')
    op.drop_table('concept', schema='registry')
    op.drop_index('ix_bus_delivery_ready', table_name='bus_delivery', schema='platform', postgresql_where=sa.text("state = 'pending'"))
    op.drop_table('bus_delivery', schema='platform')
    op.drop_table('seed_run', schema='synth')
    op.drop_index('ix_resident_district', table_name='resident', schema='synth')
    op.drop_table('resident', schema='synth')
    op.drop_table('value_set', schema='registry')
    op.drop_table('district', schema='registry')
    op.drop_table('user_account', schema='platform')
    op.drop_index('ix_request_nonce_seen_at', table_name='request_nonce', schema='platform')
    op.drop_table('request_nonce', schema='platform')
    op.drop_table('bus_subscription', schema='platform')
    op.drop_table('bus_message', schema='platform')
    op.drop_table('audit_log', schema='platform')
    op.drop_table('api_client', schema='platform')
