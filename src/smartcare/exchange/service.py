"""Exchange hub operations for operators: message views, re-runs, dead letters, retention, monitoring."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from smartcare.exchange import destinations
from smartcare.exchange.channels import ChannelConfig, list_all
from smartcare.exchange.models import BadFrame, StoredMessage
from smartcare.exchange.router import event_id
from smartcare.platform import audit, bus
from smartcare.platform.errors import InvalidInput, NotFound
from smartcare.platform.masking import mask_text

STATES = ("accepted", "filtered", "routed", "delivered", "failed")


@dataclass(frozen=True)
class MessageFilter:
    channel_id: str | None = None
    facility_code: str | None = None
    state: str | None = None
    message_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, stmt):
        if self.state and self.state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}", field="state")
        for column, value in ((StoredMessage.channel_id, self.channel_id), (StoredMessage.facility_code, self.facility_code),
                              (StoredMessage.state, self.state), (StoredMessage.message_type, self.message_type)):
            if value:
                stmt = stmt.where(column == value)
        if self.since:
            stmt = stmt.where(StoredMessage.received_at >= self.since)
        if self.until:
            stmt = stmt.where(StoredMessage.received_at < self.until)
        return stmt


def list_messages(session: Session, flt: MessageFilter, *, limit: int = 50, before_id: int | None = None) -> list[dict]:
    """Newest first, without payloads; errors pass through masking (they may quote a field)."""
    stmt = flt.apply(select(StoredMessage.id, StoredMessage.received_at, StoredMessage.channel_id, StoredMessage.sender,
                            StoredMessage.facility_code, StoredMessage.connector, StoredMessage.kind,
                            StoredMessage.message_type, StoredMessage.control_id, StoredMessage.state,
                            StoredMessage.error, StoredMessage.size, StoredMessage.processed_at))
    if before_id:
        stmt = stmt.where(StoredMessage.id < before_id)
    rows = session.execute(stmt.order_by(StoredMessage.id.desc()).limit(limit)).mappings().all()
    return [{**r, "error": mask_text(r["error"]) if r["error"] else None} for r in rows]


def get_message(session: Session, message_id: int) -> StoredMessage:
    msg = session.scalar(select(StoredMessage).where(StoredMessage.id == message_id))
    if msg is None:
        raise NotFound(f"no message {message_id} (it may have passed its retention)", field="message_id")
    return msg


def deliveries(session: Session, message_id: int) -> list[dict]:
    """Per-destination delivery state of the events of a message's current run (looked up by their ids)."""
    m = get_message(session, message_id)
    ids = [event_id(m.id, m.received_at, m.reruns, i) for i in range(len(m.events or []))]
    return bus.deliveries(session, ids) if ids else []


def view_raw(session: Session, message_id: int, *, actor: str, reason: str | None = None) -> StoredMessage:
    """The raw payload is personal data: every view is audited with who and why."""
    msg = get_message(session, message_id)
    audit.record(session, actor=actor, action="exchange.raw.view", target=f"message:{message_id}",
                 detail={"reason": reason or "", "facility_code": msg.facility_code})
    return msg


def view_bad_frame(session: Session, frame_id: int, *, actor: str) -> BadFrame:
    frame = session.get(BadFrame, frame_id)
    if frame is None:
        raise NotFound(f"no bad frame {frame_id}", field="frame_id")
    audit.record(session, actor=actor, action="exchange.bad_frame.view", target=f"bad_frame:{frame_id}")
    return frame


def list_bad_frames(session: Session, *, limit: int = 50) -> list[BadFrame]:
    return list(session.scalars(select(BadFrame).order_by(BadFrame.id.desc()).limit(limit)))


def rerun(session: Session, flt: MessageFilter | None = None, *, message_ids: list[int] | None = None, actor: str,
          limit: int = 10_000) -> int:
    """Route messages again under fresh event ids (so destinations receive them again), by id or by filter."""
    if not message_ids and (flt is None or flt == MessageFilter()):
        raise InvalidInput("say which messages to re-run: ids or at least one filter", field="filter")
    # Filtered messages were kept out of routing on purpose: re-run them only when asked for by state.
    excluded = ["accepted"] + ([] if flt and flt.state == "filtered" else ["filtered"])
    stmt = select(StoredMessage.received_at, StoredMessage.id).where(StoredMessage.state.not_in(excluded))
    stmt = flt.apply(stmt) if flt else stmt
    if message_ids:
        stmt = stmt.where(StoredMessage.id.in_(message_ids))
    targets = session.execute(stmt.order_by(StoredMessage.id).limit(limit)).all()
    for at, mid in targets:
        session.execute(text("UPDATE exchange.message SET state = 'accepted', reruns = reruns + 1, delivered = 0, "
                             "expected_deliveries = 0, error = NULL, processed_at = NULL WHERE received_at = :at AND id = :id"),
                        {"at": at, "id": mid})
    if targets:
        session.execute(text("SELECT pg_notify('smartcare_exchange', '')"))
    audit.record(session, actor=actor, action="exchange.rerun", target="messages",
                 detail={"count": len(targets), "ids": [m for _, m in targets][:50]})
    return len(targets)


def dead_letters(session: Session, *, channel_id: str | None = None) -> list[dict]:
    prefix = destinations.consumer_prefix(channel_id)
    return [d for d in bus.dead_letters(session, limit=10_000) if d["consumer"].startswith(prefix)]


def rerun_dead_letters(session: Session, *, actor: str, channel_id: str | None = None,
                       delivery_ids: list[int] | None = None) -> int:
    chosen = [d["id"] for d in dead_letters(session, channel_id=channel_id) if not delivery_ids or d["id"] in delivery_ids]
    replayed = sum(1 for d in chosen if bus.replay(session, d))
    audit.record(session, actor=actor, action="exchange.dead_letters.rerun", target=f"channel:{channel_id or '*'}",
                 detail={"count": replayed})
    return replayed


# ---- retention: whole day partitions ---------------------------------------------------------------


def _partition_name(day: date) -> str:
    return f"message_{day:%Y%m%d}"


def ensure_partitions(session: Session, *, days_ahead: int = 7, start: date | None = None) -> list[str]:
    """Create the day partitions from ``start`` (default today) up to ``days_ahead`` ahead; idempotent.

    If messages of a missing day already sit in the DEFAULT partition (housekeeping was down), they are
    moved into the new partition, which PostgreSQL would otherwise refuse to create.
    """
    today = datetime.now(UTC).date()
    first = start or today
    last = max(first, today) + timedelta(days=days_ahead)
    created = []
    for offset in range((last - first).days + 1):
        day = first + timedelta(days=offset)
        name = _partition_name(day)
        if session.scalar(text("SELECT to_regclass(:n)"), {"n": f"exchange.{name}"}):
            continue
        low, high = f"{day.isoformat()} 00:00:00+00", f"{(day + timedelta(days=1)).isoformat()} 00:00:00+00"
        with session.begin_nested():
            stranded = session.scalar(text("SELECT count(*) FROM exchange.message_default WHERE received_at >= :a "
                                           "AND received_at < :b"), {"a": low, "b": high})
            if stranded:
                session.execute(text(f"CREATE TABLE exchange.{name} (LIKE exchange.message INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
                session.execute(text(f"WITH moved AS (DELETE FROM exchange.message_default WHERE received_at >= :a "
                                     f"AND received_at < :b RETURNING *) INSERT INTO exchange.{name} SELECT * FROM moved"),
                                {"a": low, "b": high})
                session.execute(text(f"ALTER TABLE exchange.message ATTACH PARTITION exchange.{name} "
                                     f"FOR VALUES FROM ('{low}') TO ('{high}')"))
            else:
                session.execute(text(f"CREATE TABLE exchange.{name} PARTITION OF exchange.message "
                                     f"FOR VALUES FROM ('{low}') TO ('{high}')"))
        created.append(name)
    return created


def partitions(session: Session) -> list[dict]:
    rows = session.execute(text(
        "SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes, "
        "pg_get_expr(c.relpartbound, c.oid) AS bounds FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'exchange.message'::regclass ORDER BY c.relname")).mappings()
    return [dict(r) for r in rows]


def store_size(session: Session) -> int:
    return sum(p["bytes"] for p in partitions(session))


def prune(session: Session, *, today: date | None = None, actor: str = "system") -> dict:
    """Drop day partitions older than the longest channel retention (the disk space comes back at
    once); inside the kept window, delete messages of channels whose own retention is shorter.

    A partition that still holds messages never routed (``accepted``) is kept and reported: retention
    must not silently discard what nobody has processed. Each drop waits at most 2 s for its lock, so
    ingest is never stalled behind retention; what could not be dropped is tried again next round.
    """
    today = today or datetime.now(UTC).date()
    configs = [ChannelConfig.model_validate(c.config) for c in list_all(session)]
    keep_days = max((c.retention_days for c in configs), default=30)
    cutoff = today - timedelta(days=keep_days)
    dropped, kept_unrouted, busy = [], [], []
    for p in partitions(session):
        name = p["name"]
        if not name.startswith("message_2") or date(int(name[8:12]), int(name[12:14]), int(name[14:16])) >= cutoff:
            continue
        if session.scalar(text(f"SELECT EXISTS (SELECT 1 FROM exchange.{name} WHERE state = 'accepted')")):
            kept_unrouted.append(name)
            continue
        try:
            with session.begin_nested():
                session.execute(text("SET LOCAL lock_timeout = '2s'"))
                session.execute(text(f"DROP TABLE exchange.{name}"))
            dropped.append(name)
        except OperationalError:
            busy.append(name)
    deleted = 0
    for c in configs:
        if c.retention_days < keep_days:
            deleted += session.execute(text("DELETE FROM exchange.message WHERE channel_id = :c AND received_at < :t "
                                            "AND state <> 'accepted'"),
                                       {"c": c.id, "t": today - timedelta(days=c.retention_days)}).rowcount
    horizon = datetime.combine(cutoff, datetime.min.time(), UTC)
    keys = session.execute(text("DELETE FROM exchange.message_key WHERE received_at < :t"), {"t": horizon}).rowcount
    frames = session.execute(text("DELETE FROM exchange.bad_frame WHERE received_at < :t"), {"t": horizon}).rowcount
    result = {"dropped_partitions": dropped, "kept_unrouted": kept_unrouted, "busy": busy, "deleted_messages": deleted,
              "deleted_keys": keys, "deleted_bad_frames": frames, "kept_days": keep_days}
    audit.record(session, actor=actor, action="exchange.prune", target="exchange.message",
                 detail={k: (len(v) if isinstance(v, list) else v) for k, v in result.items()})
    return result


def messages_between(session: Session, start: datetime, end: datetime) -> list[dict]:
    """Messages received in [start, end), without their payloads (for the warehouse)."""
    return [dict(r._mapping) for r in session.execute(text(
        "SELECT id AS message_id, facility_code, sender, kind, message_type, state, received_at, processed_at "
        "FROM exchange.message WHERE received_at >= :a AND received_at < :b"), {"a": start, "b": end})]
