"""Synthetic visit cards (就诊卡) as hospitals recorded them, and their ground truth kept apart.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE synth.visit_card (
            card_id       varchar(64) PRIMARY KEY,
            facility_code varchar(32) NOT NULL,
            card_no       varchar(32) NOT NULL,
            name          varchar(60) NOT NULL,
            id_number     varchar(24),
            sex           varchar(1) NOT NULL,
            birth_date    date,
            phone         varchar(20),
            address       varchar(300),
            registered_at date NOT NULL,
            UNIQUE (facility_code, card_no)
        );
        -- The truth: which resident a card belongs to and which errors it carries. Matching never reads it;
        -- benchmarks and tests score against it.
        CREATE TABLE synth.visit_card_truth (
            card_id     varchar(64) PRIMARY KEY REFERENCES synth.visit_card (card_id) ON DELETE CASCADE,
            resident_id bigint NOT NULL,
            errors      varchar(32)[] NOT NULL
        );
        CREATE INDEX ix_visit_card_truth_resident ON synth.visit_card_truth (resident_id);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE synth.visit_card_truth; DROP TABLE synth.visit_card")
