"""Retention drops whole day partitions, so the store's size on disk really shrinks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from smartcare.exchange import service
from smartcare.platform.db import session_scope


def test_prune_drops_old_partitions_and_frees_disk(database_url):
    today = datetime.now(UTC).date()
    old_day = today - timedelta(days=400)
    with session_scope() as s:
        s.execute(text(
            f"CREATE TABLE IF NOT EXISTS exchange.message_{old_day:%Y%m%d} PARTITION OF exchange.message "
            f"FOR VALUES FROM ('{old_day} 00:00:00+00') TO ('{old_day + timedelta(days=1)} 00:00:00+00')"))
        # 2,000 old messages of 4 KiB (random bytes) each, as a hospital would have sent them a year ago
        s.execute(text(
            "INSERT INTO exchange.message (received_at, channel_id, sender, connector, kind, message_type, control_id, "
            "state, raw, size) SELECT :at + g * interval '1 second', 'hl7v2', 'retention-test', 'mllp', 'hl7v2', 'ADT^A04', "
            "'old-' || g, 'delivered', (SELECT decode(string_agg(md5(g || ':' || i), ''), 'hex') FROM generate_series(1, 256) i), "
            "4096 FROM generate_series(1, 2000) g"),
            {"at": datetime.combine(old_day, datetime.min.time(), UTC)})
        s.execute(text("INSERT INTO exchange.message_key SELECT sender, control_id, id, received_at FROM exchange.message "
                       "WHERE sender = 'retention-test'"))
    with session_scope() as s:
        before = service.store_size(s)
        names_before = {p["name"] for p in service.partitions(s)}
        assert f"message_{old_day:%Y%m%d}" in names_before
        result = service.prune(s, actor="test")
    with session_scope() as s:
        after = service.store_size(s)
        names_after = {p["name"] for p in service.partitions(s)}
        keys_left = s.execute(text("SELECT count(*) FROM exchange.message_key WHERE sender = 'retention-test'")).scalar()
    assert f"message_{old_day:%Y%m%d}" in result["dropped_partitions"]
    assert f"message_{old_day:%Y%m%d}" not in names_after
    assert f"message_{today:%Y%m%d}" in names_after  # today's partition is kept
    assert before - after >= 2000 * 4096, (before, after)  # random bytes: no compression to hide behind
    assert keys_left == 0


def test_messages_stranded_in_the_default_partition_are_moved_into_their_day(database_url):
    day = datetime.now(UTC).date() + timedelta(days=30)  # beyond the partitions created ahead
    at = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=3)
    with session_scope() as s:
        s.execute(text("INSERT INTO exchange.message (received_at, channel_id, sender, connector, kind, state, raw, size) "
                       "VALUES (:at, 'hl7v2', 'stranded', 'mllp', 'hl7v2', 'delivered', '\\x00', 1)"), {"at": at})
    with session_scope() as s:
        created = service.ensure_partitions(s, start=day, days_ahead=0)
    with session_scope() as s:
        assert f"message_{day:%Y%m%d}" in created
        where = s.execute(text("SELECT tableoid::regclass::text FROM exchange.message WHERE sender = 'stranded'")).scalar()
    assert where == f"exchange.message_{day:%Y%m%d}"
