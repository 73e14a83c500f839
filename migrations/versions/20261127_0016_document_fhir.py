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
            empi_id    varchar(20) NOT NULL,           -- the patient the entries name (a merge can change it)
            -- the encoded Bundle entries (UTF-8 JSON), U+0002 between them: bytes read as stored (no text
            -- decoding), one value per document (a text[] of JSON costs three times as much to decode)
            entries    bytea NOT NULL,
            -- the Encounter of the document's visit as this document alone would make it, encoded, with the
            -- hospital's name as a stand-in (a name can change)
            encounter  bytea NOT NULL
        );
        -- lz4 decompresses several times faster than pglz; servers built without it keep pglz
        DO $$ BEGIN
            ALTER TABLE records.document_fhir ALTER COLUMN entries SET COMPRESSION lz4;
        EXCEPTION WHEN feature_not_supported THEN NULL;
        END $$;
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE records.document_fhir")
