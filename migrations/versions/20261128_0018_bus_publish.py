"""The bus's publish as one SQL function, ``platform.publish``, so that SQL that publishes (a booking made in one
statement, ``booking.attempt``) writes the message in its own transaction exactly as the Python transports do:
they call the same function. PostgreSQL transport: the message, a delivery for each subscribed consumer and the
workers' wake-up; NATS transport: the outbox row for the relay and the relay's wake-up.

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        -- true if published, false if the message id was published before (then nothing is written)
        CREATE FUNCTION platform.publish(p_message_id uuid, p_topic varchar, p_payload jsonb, p_channel text,
                                         p_fan_out boolean) RETURNS boolean LANGUAGE plpgsql AS $$
        DECLARE
            m bigint;
        BEGIN
            INSERT INTO platform.bus_message (message_id, topic, payload, relayed_at)
            VALUES (p_message_id, p_topic, p_payload, CASE WHEN p_fan_out THEN now() END)
            ON CONFLICT (message_id) DO NOTHING RETURNING id INTO m;
            IF m IS NULL THEN
                RETURN false;
            END IF;
            IF p_fan_out THEN
                INSERT INTO platform.bus_delivery (message_id, consumer)
                SELECT DISTINCT m, s.consumer FROM platform.bus_subscription s WHERE p_topic LIKE s.topic_pattern;
            END IF;
            -- no channel: the caller wakes the readers after its commit (bus.wake)
            IF p_channel IS NOT NULL THEN
                PERFORM pg_notify(p_channel, CASE WHEN p_fan_out THEN p_topic ELSE 'relay' END);
            END IF;
            RETURN true;
        END $$;
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION platform.publish(uuid, varchar, jsonb, text, boolean)")
