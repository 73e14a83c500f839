"""Personal health records: each document's FHIR resources kept encoded (``records.fhir``), so that
``Patient/$everything`` of a long history joins text instead of mapping and encoding every item per request.

Rows are derived data: written at registration, and on the first read of a document without them (or with
another mapping version), so existing documents need nothing here.

Revision ID: 0016
Revises: 0015
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE records.document_fhir (
            record_id  bigint PRIMARY KEY REFERENCES records.document (id),
            mapping    smallint NOT NULL,              -- records.fhir.FHIR_MAPPING when encoded
            sensitive  varchar(16)[] NOT NULL,         -- the document's sensitive categories (of its items)
            types      text[] NOT NULL,                -- each entry's resource type, in order
            entries    text NOT NULL                   -- the encoded Bundle entries, U+0002 between them, with
                                                       -- the patient and encounter stand-ins (one text: decoding
                                                       -- a text[] of JSON costs three times as much)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE records.document_fhir")
