"""Routing: accepted messages become canonical events on the bus.

The message store is the router's queue: it claims accepted messages with ``FOR UPDATE SKIP LOCKED``
(so several routers can run), publishes their events and marks them routed in the same transaction.
Event ids are derived from the message id, so a router that dies mid-batch and runs again publishes
the same ids and the bus drops the repeats: nothing is lost, nothing is doubled.
"""

from __future__ import annotations

import logging
import threading
import uuid

from sqlalchemy import text

from smartcare.exchange import canonical, destinations
from smartcare.exchange.channels import ChannelConfig, list_all
from smartcare.exchange.store import CHANNEL
from smartcare.platform import bus, metrics
from smartcare.platform.db import session_scope
from smartcare.platform.loops import listen_and_drain
from smartcare.platform.masking import mask_text

log = logging.getLogger(__name__)

_EVENT_NAMESPACE = uuid.UUID("5c0a7d1e-2b1f-4c55-9a52-8f3e6b1d0e11")


def event_id(message_id: int, received_at, rerun: int, index: int) -> uuid.UUID:
    """Stable for one stored message (a router that dies and retries publishes the same ids), and
    different for another database whose sequence happens to hand out the same message id."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{message_id}:{received_at.isoformat()}:{rerun}:{index}")


def _clean(value):
    """PostgreSQL text and jsonb cannot hold NUL: a hospital's stray 0x00 must not stop routing."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _publish(session, config: ChannelConfig, row, source: dict) -> tuple[int, list[str]]:
    """Publish one message's events; returns how many deliveries to expect and the topics."""
    events = canonical.events(row.kind, bytes(row.raw))
    expected = 0
    for i, (topic, data) in enumerate(events):
        bus.publish(session, destinations.topic(row.channel_id, topic),
                    {"topic": topic, "data": _clean(config.transform.apply(data)), "source": source},
                    message_id=event_id(row.id, row.received_at, row.reruns, i))
        expected += sum(1 for d in config.destinations if d.wants(topic))
    return expected, [t for t, _ in events]


def route_once(limit: int = 200) -> int:
    """Route up to ``limit`` accepted messages of running channels; returns how many were claimed."""
    with session_scope() as session:
        configs = {c.id: ChannelConfig.model_validate(c.config) for c in list_all(session) if c.enabled}
        if not configs:
            return 0
        rows = session.execute(text(
            "SELECT received_at, id, channel_id, kind, raw, message_type, sender, facility_code, reruns FROM exchange.message "
            "WHERE state = 'accepted' AND channel_id = ANY(:channels) ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"),
            {"channels": list(configs), "n": limit}).all()
        for row in rows:
            config = configs[row.channel_id]
            source = {"message_id": row.id, "received_at": row.received_at.isoformat(), "run": row.reruns,
                      "channel": row.channel_id, "sender": row.sender, "facility_code": row.facility_code,
                      "message_type": row.message_type}
            try:  # one bad message must not hold up the batch: each is routed under its own savepoint
                with session.begin_nested():
                    expected, topics = _publish(session, config, row, source)
            except Exception as exc:
                session.execute(text("UPDATE exchange.message SET state = 'failed', error = :e, processed_at = now() "
                                     "WHERE received_at = :at AND id = :id"),
                                {"e": mask_text(f"cannot route to canonical events: {type(exc).__name__}: {exc}")[:2000],
                                 "at": row.received_at, "id": row.id})
                metrics.child(metrics.EXCHANGE_ROUTED, row.channel_id, "failed").inc()
                continue
            session.execute(text(
                "UPDATE exchange.message SET state = CASE WHEN :n > 0 THEN 'routed' ELSE 'delivered' END, "
                "events = :topics, expected_deliveries = :n, processed_at = now() WHERE received_at = :at AND id = :id"),
                {"n": expected, "topics": topics, "at": row.received_at, "id": row.id})
            metrics.child(metrics.EXCHANGE_ROUTED, row.channel_id, "routed").inc()
        return len(rows)


class Router:
    """Routes until stopped; wakes when the store commits new messages."""

    def __init__(self, *, poll_seconds: float = 2.0):
        self.poll_seconds = poll_seconds
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        listen_and_drain(CHANNEL, route_once, stopping=self.stopping, poll_seconds=self.poll_seconds)
