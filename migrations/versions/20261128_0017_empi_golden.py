"""The master patient index's survivorship as one SQL function, ``empi.golden``: a link writes the golden records
in the statement that links (no round trip to compute them in Python and another to store them), and a bulk load
computes them where the rows are.

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

FIELDS = ("name", "id_number", "sex", "birth_date", "phone", "address", "district_code")


def _pick(name: str) -> str:
    """Among the sources with a value (sex: a known one, not 0 or 9), a valid ID number first, then the most
    trusted source, then the most recent, then the most complete, then the first given."""
    wanted = f"n ->> '{name}' <> ''" + (" AND n ->> 'sex' NOT IN ('0', '9')" if name == "sex" else "")
    valid = "(n ->> 'id_valid')::boolean IS TRUE DESC, " if name == "id_number" else ""
    return f"'{name}', (array_agg(n -> '{name}' ORDER BY {valid}t DESC, r DESC, c DESC, i) FILTER (WHERE {wanted}))[1]"


def upgrade() -> None:
    listed = ", ".join(f"'{f}'" for f in FIELDS)
    op.execute(f"""
        -- A person's golden record from their sources given as three arrays of one length, in the order ties go by:
        -- each source's normalised form (empi.source_identity.norm), trust and time recorded.
        CREATE FUNCTION empi.golden(norms jsonb[], trusts integer[], recorded timestamptz[]) RETURNS jsonb
        LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
        BEGIN
            RETURN (
                SELECT jsonb_strip_nulls(jsonb_build_object({', '.join(_pick(f) for f in FIELDS)}))
                       || jsonb_build_object('sources', count(*))
                  FROM (SELECT n, t, r, i, (SELECT count(*) FROM unnest(ARRAY[{listed}]) AS f WHERE n ->> f <> '') AS c
                          FROM unnest(norms, trusts, recorded) WITH ORDINALITY AS u (n, t, r, i)
                        OFFSET 0) AS g);  -- OFFSET 0: c counted once a source, not once for each field's ordering
        END $$;
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION empi.golden(jsonb[], integer[], timestamptz[])")
