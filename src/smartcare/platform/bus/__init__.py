"""The event bus: publish/subscribe with at-least-once delivery and idempotent consumers.

Publishing happens inside the publisher's own transaction (an outbox), so an event exists exactly
when the change that caused it was committed. A consumer is a named handler ``(session, message)``
subscribed to topic patterns; its effect and the "done" mark commit together, so a crash means a
redelivery, never a loss and never a double effect.

Transports sit behind ``publish`` and ``Worker``: PostgreSQL (``postgres.py``, the default) now;
NATS JetStream joins with the exchange hub and keeps the same two calls.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session


@dataclass(frozen=True)
class Message:
    id: uuid.UUID
    topic: str
    payload: dict[str, Any]
    published_at: datetime | None = None
    attempt: int = 1


Handler = Callable[[Session, Message], None]


@dataclass(frozen=True)
class Consumer:
    name: str
    topics: tuple[str, ...]
    handler: Handler
    #: After this many failed attempts the delivery goes to the dead letters.
    max_attempts: int = 8
    #: First retry after this many seconds, doubling each attempt, capped at ``max_backoff_seconds``.
    #: It is also the lease: a delivery whose worker died is retried once it has passed.
    backoff_seconds: float = 30.0
    max_backoff_seconds: float = 3600.0

    def matches(self, topic: str) -> bool:
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.topics)

    def backoff(self, attempts: int) -> float:
        return min(self.backoff_seconds * 2 ** max(attempts - 1, 0), self.max_backoff_seconds)


@dataclass
class ConsumerRegistry:
    consumers: dict[str, Consumer] = field(default_factory=dict)

    def add(self, consumer: Consumer) -> Consumer:
        existing = self.consumers.get(consumer.name)
        if existing is not None and existing.handler is not consumer.handler:
            raise ValueError(f"two consumers are named {consumer.name!r}")
        self.consumers[consumer.name] = consumer
        return consumer


#: The platform's consumers; capabilities register theirs at import time with ``@consumer``.
registry = ConsumerRegistry()


def consumer(name: str, *topics: str, **options: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` as consumer ``name`` of ``topics`` (``*`` wildcards)."""

    def decorate(handler: Handler) -> Handler:
        registry.add(Consumer(name=name, topics=tuple(topics), handler=handler, **options))
        return handler

    return decorate


def publish(session: Session, topic: str, payload: dict[str, Any], *, message_id: uuid.UUID | None = None) -> uuid.UUID:
    """Publish in the caller's transaction. Reusing a ``message_id`` makes the publish a no-op."""
    from smartcare.platform.bus import postgres

    return postgres.publish(session, topic, payload, message_id=message_id or uuid.uuid4())


def make_worker(consumers: dict[str, Consumer] | None = None, **options: Any):
    """A worker for the configured transport; ``run()`` blocks until ``stop()``."""
    from smartcare.platform.bus import postgres

    return postgres.Worker(consumers, **options)


def dead_letters(session: Session, *, limit: int = 100) -> list[dict]:
    """Deliveries that exhausted their attempts, newest last."""
    from smartcare.platform.bus import postgres

    return postgres.dead_letters(session, limit=limit)


def replay(session: Session, delivery_id: int) -> bool:
    """Send one dead delivery to its consumer again, with a fresh attempt count."""
    from smartcare.platform.bus import postgres

    return postgres.replay(session, delivery_id)
