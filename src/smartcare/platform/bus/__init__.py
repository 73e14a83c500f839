"""The event bus: publish/subscribe with at-least-once delivery and idempotent consumers.

Publishing happens inside the publisher's own transaction (an outbox), so an event exists exactly
when the change that caused it was committed. A consumer is a named handler ``(session, message)``
subscribed to topic patterns; its effect and the "done" mark commit together, so a crash means a
redelivery, never a loss and never a double effect.

This module is the one entry point; it dispatches on ``SMARTCARE_BUS_URL``: ``postgres`` (the
default, ``postgres.py``: a table queue) or ``nats://host:4222`` (``nats.py``: the same outbox,
relayed to JetStream). Both keep dead letters in ``platform.bus_delivery``, so ``dead_letters``
and ``replay`` read and act the same way whichever transport delivered.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.platform import metrics
from smartcare.platform.errors import ConfigurationError
from smartcare.platform.loops import OnDemand
from smartcare.platform.settings import get_settings

log = logging.getLogger(__name__)

#: Dot-separated words: it also names a JetStream durable ('.' → '-'), which allows no dots or spaces.
_CONSUMER_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
#: Dot-separated tokens without spaces or NATS wildcards: a topic is also a NATS subject.
_TOPIC = re.compile(r"[^\s.*>]+(\.[^\s.*>]+)*")


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
    #: It is also the lease (with NATS: the durable's ack_wait): a delivery whose worker died is
    #: retried once it has passed.
    backoff_seconds: float = 30.0
    max_backoff_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if len(self.name) > 100 or not _CONSUMER_NAME.fullmatch(self.name):
            raise ValueError(f"consumer name {self.name!r} must be up to 100 letters, digits and '_', "
                             "in words separated by single dots (e.g. 'empi.link_identity')")

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


def describe_error(exc: BaseException) -> str:
    """What a dead letter remembers of a failure: the type and first line, personal data masked
    (a driver's full text can quote SQL parameters and event payloads)."""
    from smartcare.platform.masking import mask_text

    first = str(exc).splitlines()[0] if str(exc) else ""
    return mask_text(f"{type(exc).__name__}: {first}")[:2000]


class BaseWorker:
    """What both transports' workers share: the consumers they run (replaceable while running), and stop()."""

    def __init__(self, consumers: dict[str, Consumer] | None = None, *, poll_seconds: float = 2.0, batch: int = 100):
        self.consumers = consumers if consumers is not None else registry.consumers
        self.poll_seconds = poll_seconds
        self.batch = batch
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        raise NotImplementedError


def consumer(name: str, *topics: str, **options: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` as consumer ``name`` of ``topics`` (``*`` wildcards)."""

    def decorate(handler: Handler) -> Handler:
        registry.add(Consumer(name=name, topics=tuple(topics), handler=handler, **options))
        return handler

    return decorate


def transport() -> str:
    """``postgres`` or ``nats``, from ``SMARTCARE_BUS_URL``."""
    url = get_settings().bus_url.strip()
    if url == "postgres":
        return "postgres"
    if url.startswith(("nats://", "tls://")):
        return "nats"
    raise ConfigurationError(f"SMARTCARE_BUS_URL must be 'postgres' or a nats:// URL, not {url.split(':', 1)[0]!r}…",
                             hint="unset it for the PostgreSQL bus, or set nats://host:4222 for JetStream")


def publish(session: Session, topic: str, payload: dict[str, Any], *, message_id: uuid.UUID | None = None) -> uuid.UUID:
    """Publish in the caller's transaction. Reusing a ``message_id`` makes the publish a no-op."""
    if len(topic) > 200 or not _TOPIC.fullmatch(topic):
        raise ValueError(f"topic {topic!r} must be up to 200 characters of dot-separated words without spaces, "
                         "'*' or '>' (e.g. 'registry.facility.created')")
    if transport() == "nats":
        from smartcare.platform.bus import nats

        return nats.publish(session, topic, payload, message_id=message_id or uuid.uuid4())
    from smartcare.platform.bus import postgres

    return postgres.publish(session, topic, payload, message_id=message_id or uuid.uuid4())


def sql_publish_target() -> tuple[str, bool]:
    """What SQL that publishes passes to ``platform.publish`` for the configured transport: the channel that wakes
    its readers, and whether to fan the message out to the subscribed consumers (PostgreSQL) or leave it for the
    relay (NATS). The caller counts what it published (``count_published``)."""
    if transport() == "nats":
        from smartcare.platform.bus import nats

        return nats.RELAY_CHANNEL, False
    from smartcare.platform.bus import postgres

    return postgres.CHANNEL, True


def count_published(topic: str) -> None:
    metrics.BUS_PUBLISHED.labels(topic=topic).inc()


#: A process wakes the bus's readers at most this often for messages published without a NOTIFY of their own.
WAKE_SECONDS = 0.05


class _Waker:
    """Wakes the transport's readers after commits that published without a NOTIFY (``platform.publish`` with no
    channel), at most once every ``WAKE_SECONDS`` a process, from a thread of its own. PostgreSQL commits the
    transactions that NOTIFY one at a time (a database-wide lock held through the commit's flush): a burst of
    bookings that each notified queued there. A lost wake-up costs only latency: the readers also poll."""

    def __init__(self) -> None:
        self._pending = threading.Event()
        self._thread = OnDemand(self._run, "bus-waker")

    def __call__(self) -> None:
        self._thread.start()
        self._pending.set()

    def _run(self) -> None:
        from smartcare.platform.db import run_one

        while True:
            self._pending.wait()
            time.sleep(WAKE_SECONDS)  # what else commits meanwhile rides on the same wake-up
            self._pending.clear()
            channel, _ = sql_publish_target()
            try:
                run_one("SELECT pg_notify(%s, 'wake')", (channel,))
            except Exception as exc:  # the readers poll: late, not lost
                log.warning("bus: could not wake the readers (%s); they find the messages when they poll",
                            type(exc).__name__)


#: one per process: call it after committing messages published with no channel
wake = _Waker()


def sync_subscriptions(consumers: Iterable[Consumer] | None = None, *, session: Session | None = None) -> None:
    """Make the transport's subscriptions say what the code says (idempotent).

    The subscription rows are written in ``session`` when given (the caller commits), otherwise in
    a transaction of their own; with NATS the JetStream stream and durables are also created at once.
    """
    consumers = list(consumers if consumers is not None else registry.consumers.values())
    if transport() == "nats":
        from smartcare.platform.bus import nats

        nats.sync_subscriptions(consumers, session=session)
        return
    from smartcare.platform.bus import postgres
    from smartcare.platform.db import session_scope

    if session is not None:
        postgres.sync_subscriptions(session, consumers)
        return
    with session_scope() as own:
        postgres.sync_subscriptions(own, consumers)


def make_worker(consumers: dict[str, Consumer] | None = None, **options: Any):
    """A worker for the configured transport; ``run()`` blocks until ``stop()``."""
    if transport() == "nats":
        from smartcare.platform.bus import nats

        return nats.Worker(consumers, **options)
    from smartcare.platform.bus import postgres

    return postgres.Worker(consumers, **options)


def drain(consumers: dict[str, Consumer] | None = None, *, timeout: float = 5.0) -> int:
    """Handle everything deliverable now (for jobs and tests); returns how many deliveries were handled.

    Retries whose backoff has not passed are not deliverable yet. ``timeout`` bounds the whole call.
    """
    if transport() == "nats":
        from smartcare.platform.bus import nats

        return nats.drain(consumers, timeout=timeout)
    from smartcare.platform.bus import postgres

    deadline = time.monotonic() + timeout
    total = 0
    while True:
        n = postgres.run_once(consumers)
        total += n
        if n == 0 or time.monotonic() >= deadline:
            return total


def dead_letters(session: Session, *, limit: int = 100) -> list[dict]:
    """Deliveries that exhausted their attempts, oldest first (the same rows for both transports)."""
    from smartcare.platform.bus import postgres

    return postgres.dead_letters(session, limit=limit)


def replay(session: Session, delivery_id: int) -> bool:
    """Send one dead delivery to its consumer again (that consumer only), with a fresh attempt count."""
    if transport() == "nats":
        from smartcare.platform.bus import nats

        return nats.replay(session, delivery_id)
    from smartcare.platform.bus import postgres

    return postgres.replay(session, delivery_id)


def deliveries(session: Session, message_ids: list[uuid.UUID]) -> list[dict]:
    """Per-consumer delivery state of the given events (the PostgreSQL bookkeeping both transports keep;
    under NATS only dead and replayed deliveries appear)."""
    from smartcare.platform.bus import postgres

    return postgres.deliveries(session, message_ids)


def backlog(session: Session, consumer_prefix: str) -> dict[str, dict[str, int]]:
    """Pending and dead deliveries per consumer under ``consumer_prefix`` (same caveat as ``deliveries``)."""
    from smartcare.platform.bus import postgres

    return postgres.backlog(session, consumer_prefix)


def unsubscribe_others(session: Session, consumer_prefix: str, keep: list[str]) -> None:
    """Consumers under ``consumer_prefix`` that are not in ``keep`` stop receiving new events."""
    from smartcare.platform.bus import postgres

    postgres.unsubscribe_others(session, consumer_prefix, keep)


def health() -> str | None:
    """None when the bus can take and deliver events, else a short reason (for ``/ready``)."""
    from smartcare.platform.db import session_factory

    try:
        with session_factory()() as session:
            session.execute(text("SELECT 1 FROM platform.bus_delivery LIMIT 1"))
    except Exception as exc:  # a check reports, it does not raise
        return f"bus tables unreachable ({type(exc).__name__})"
    try:
        if transport() == "nats":
            from smartcare.platform.bus import nats

            return nats.health()
    except Exception as exc:
        return f"bus misconfigured ({type(exc).__name__})"
    return None
