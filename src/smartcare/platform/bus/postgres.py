"""PostgreSQL transport: a durable table queue.

``bus_message`` holds each event once; ``bus_delivery`` holds one row per (message, consumer).
A worker leases ready deliveries with ``FOR UPDATE SKIP LOCKED`` (the lease is the retry backoff,
so a delivery whose worker died comes back by itself), then handles each in its own transaction
that re-locks the row and marks it done together with the handler's effect. ``LISTEN/NOTIFY``
wakes idle workers at once; polling is only the fallback.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.platform import metrics
from smartcare.platform.bus import BaseWorker, Consumer, Message, describe_error, registry
from smartcare.platform.db import session_factory, session_scope
from smartcare.platform.loops import listen_and_drain

log = logging.getLogger(__name__)

CHANNEL = "smartcare_bus"


def _like(pattern: str) -> str:
    return pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")


def publish(session: Session, topic: str, payload: dict, *, message_id: uuid.UUID) -> uuid.UUID:
    """The message, a delivery for each consumer subscribed to its topic, and the workers' wake-up: one statement,
    ``platform.publish`` (migration 0019), which SQL that publishes calls too."""
    if session.execute(text("SELECT platform.publish(:mid, :topic, :payload, :ch, true)"),
                       {"mid": message_id, "topic": topic, "payload": Jsonb(payload), "ch": CHANNEL}).scalar():
        metrics.BUS_PUBLISHED.labels(topic=topic).inc()
    return message_id


def sync_subscriptions(session: Session, consumers: Iterable[Consumer]) -> None:
    """Make the subscription table say what the code says (run by ``migrate`` and at worker start)."""
    for c in consumers:
        patterns = [_like(t) for t in c.topics]
        session.execute(text("DELETE FROM platform.bus_subscription WHERE consumer = :c AND NOT (topic_pattern = ANY(:p))"),
                        {"c": c.name, "p": patterns})
        for p in patterns:
            session.execute(text("INSERT INTO platform.bus_subscription (consumer, topic_pattern) VALUES (:c, :p) "
                                 "ON CONFLICT DO NOTHING"), {"c": c.name, "p": p})


def _lease(consumers: dict[str, Consumer], batch: int) -> list[tuple[int, str, int]]:
    """Claim up to ``batch`` ready deliveries; each is hidden from other workers for its backoff."""
    with session_scope() as s:
        rows = s.execute(
            text("SELECT id, consumer, attempts FROM platform.bus_delivery "
                 "WHERE consumer = ANY(:names) AND state = 'pending' AND available_at <= now() "
                 "ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"),
            {"names": list(consumers), "n": batch},
        ).all()
        now = datetime.now(UTC)
        for delivery_id, name, attempts in rows:
            s.execute(text("UPDATE platform.bus_delivery SET attempts = attempts + 1, available_at = :at WHERE id = :id"),
                      {"id": delivery_id, "at": now + timedelta(seconds=consumers[name].backoff(attempts + 1))})
    return [(d, c, a + 1) for d, c, a in rows]


def _handle(consumer: Consumer, delivery_id: int, attempt: int) -> bool:
    """Run the handler; returns True when the delivery is done (or was already done elsewhere)."""
    session = session_factory()()
    try:
        row = session.execute(
            text("SELECT m.message_id, m.topic, m.payload, m.published_at FROM platform.bus_delivery d "
                 "JOIN platform.bus_message m ON m.id = d.message_id "
                 "WHERE d.id = :id AND d.state = 'pending' FOR UPDATE OF d"),
            {"id": delivery_id},
        ).first()
        if row is None:  # another worker finished it while our lease ran out
            session.rollback()
            return True
        consumer.handler(session, Message(row.message_id, row.topic, row.payload, row.published_at, attempt))
        session.execute(text("UPDATE platform.bus_delivery SET state = 'done', done_at = now(), last_error = NULL "
                             "WHERE id = :id"), {"id": delivery_id})
        session.commit()
        metrics.BUS_HANDLED.labels(consumer=consumer.name, outcome="done").inc()
        return True
    except Exception as exc:
        session.rollback()
        dead = attempt >= consumer.max_attempts
        error = describe_error(exc)
        with session_scope() as s:
            s.execute(text("UPDATE platform.bus_delivery SET last_error = :e, state = CASE WHEN :dead THEN 'dead' ELSE state END "
                           "WHERE id = :id AND state = 'pending'"), {"e": error, "dead": dead, "id": delivery_id})
        metrics.BUS_HANDLED.labels(consumer=consumer.name, outcome="dead" if dead else "retry").inc()
        log.warning("bus consumer %s failed on delivery %s (attempt %s%s): %s", consumer.name, delivery_id, attempt,
                    ", dead-lettered" if dead else "", error)
        return False
    finally:
        session.close()


def run_once(consumers: dict[str, Consumer] | None = None, *, batch: int = 100) -> int:
    """Handle what is ready now; returns how many deliveries were leased."""
    consumers = consumers if consumers is not None else registry.consumers
    if not consumers:
        return 0
    leased = _lease(consumers, batch)
    for delivery_id, name, attempt in leased:
        _handle(consumers[name], delivery_id, attempt)
    return len(leased)


class Worker(BaseWorker):
    """Runs each consumer in a thread of its own, so a slow one (a webhook that times out) never holds
    up the others; each wakes on NOTIFY and polls every ``poll_seconds`` as a fallback. ``consumers``
    may be replaced while running: new consumers get a thread, removed ones stop."""

    def run(self) -> None:
        with session_scope() as s:
            sync_subscriptions(s, self.consumers.values())
        running: dict[str, tuple[threading.Thread, threading.Event]] = {}
        while not self.stopping.is_set():
            current = self.consumers
            for name in list(running):
                thread, stop = running[name]
                if name not in current or not thread.is_alive():
                    stop.set()
                    del running[name]
            for name in current:
                if name not in running:
                    stop = threading.Event()
                    thread = threading.Thread(target=self._serve, args=(name, stop), name=f"bus:{name}", daemon=True)
                    thread.start()
                    running[name] = (thread, stop)
            self.stopping.wait(1.0)
        for thread, stop in running.values():
            stop.set()
        for thread, _ in running.values():
            thread.join(timeout=10)

    def _serve(self, name: str, stop: threading.Event) -> None:
        def drain() -> int:
            consumer = self.consumers.get(name)
            return run_once({name: consumer}, batch=self.batch) if consumer is not None else 0

        both = _Either(stop, self.stopping)
        listen_and_drain(CHANNEL, drain, stopping=both, poll_seconds=self.poll_seconds)


class _Either:
    """Set when either event is: a consumer's thread stops with the worker or on its own."""

    def __init__(self, a: threading.Event, b: threading.Event):
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set() and time.monotonic() < deadline:
            self.a.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.is_set()


def dead_letters(session: Session, *, limit: int = 100) -> list[dict]:
    rows = session.execute(
        text("SELECT d.id, d.consumer, d.attempts, d.last_error, m.topic, m.message_id FROM platform.bus_delivery d "
             "JOIN platform.bus_message m ON m.id = d.message_id WHERE d.state = 'dead' ORDER BY d.id LIMIT :n"),
        {"n": limit},
    ).mappings().all()
    return [dict(r) for r in rows]


def replay(session: Session, delivery_id: int) -> bool:
    """Put a dead delivery back in the queue with a fresh attempt count."""
    return bool(session.execute(
        text("UPDATE platform.bus_delivery SET state = 'pending', attempts = 0, available_at = now(), last_error = NULL "
             "WHERE id = :id AND state = 'dead'"), {"id": delivery_id}).rowcount)


def purge(session: Session, *, older_than: timedelta = timedelta(days=8)) -> int:
    """Forget events every consumer has finished with (dead letters stay until replayed) and that the
    relay has handed on; the outbox must not grow until the disk is full."""
    return session.execute(text(
        "DELETE FROM platform.bus_message m WHERE m.published_at < now() - CAST(:age AS interval) "
        "AND m.relayed_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM platform.bus_delivery d "
        "WHERE d.message_id = m.id AND d.state <> 'done')"), {"age": f"{older_than.total_seconds()} seconds"}).rowcount


def deliveries(session: Session, message_ids: list[uuid.UUID]) -> list[dict]:
    """Per-consumer delivery state of the given events (both transports record it here)."""
    rows = session.execute(text(
        "SELECT d.id, d.consumer, d.state, d.attempts, d.last_error, m.topic, d.done_at FROM platform.bus_delivery d "
        "JOIN platform.bus_message m ON m.id = d.message_id WHERE m.message_id = ANY(:ids) ORDER BY d.id"),
        {"ids": message_ids}).mappings().all()
    return [dict(r) for r in rows]


def backlog(session: Session, consumer_prefix: str) -> dict[str, dict[str, int]]:
    """Pending and dead deliveries per consumer whose name starts with ``consumer_prefix``."""
    rows = session.execute(text(
        "SELECT consumer, count(*) FILTER (WHERE state = 'pending') AS pending, count(*) FILTER (WHERE state = 'dead') AS dead "
        "FROM platform.bus_delivery WHERE starts_with(consumer, :p) AND state <> 'done' GROUP BY consumer"),
        {"p": consumer_prefix}).mappings().all()
    return {r["consumer"]: {"pending": r["pending"], "dead": r["dead"]} for r in rows}


def unsubscribe_others(session: Session, consumer_prefix: str, keep: list[str]) -> None:
    """Drop the subscriptions of consumers under ``consumer_prefix`` that are not in ``keep``."""
    session.execute(text("DELETE FROM platform.bus_subscription WHERE starts_with(consumer, :p) AND NOT (consumer = ANY(:keep))"),
                    {"p": consumer_prefix, "keep": keep})
