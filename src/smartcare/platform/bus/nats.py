"""NATS JetStream transport: the PostgreSQL outbox, relayed to a stream, read by durable pull consumers.

Same guarantees as the PostgreSQL transport, built from the same two facts: an event exists exactly
when its publisher's transaction committed, and a consumer's effect commits together with its mark.

Publishing
    ``publish`` writes ``platform.bus_message`` in the caller's transaction (``relayed_at`` NULL)
    and NOTIFYs ``smartcare_bus_relay`` on commit. The relay (in every worker, and in ``drain``)
    takes unrelayed rows with ``FOR UPDATE SKIP LOCKED``, publishes them with ``Nats-Msg-Id`` = the
    message id, waits for JetStream's acks and only then sets ``relayed_at``. A crash in between
    publishes again: JetStream drops the copy within its duplicate window, and past it the
    consumers' marks do.

Subjects
    One stream, ``SMARTCARE``, over ``smartcare.>``; topic ``a.b.c`` is subject ``smartcare.a.b.c``.
    Our patterns are fnmatch (``*`` also crosses dots), NATS wildcards are per token, and
    nats-server 2.9 takes a single filter subject per consumer. So each durable filters on the
    narrowest subject that covers all of its patterns (their common literal prefix + ``>``), and
    the worker checks ``Consumer.matches`` and acks what does not match. The server does the coarse
    cut, the client the exact one: no pattern can be mistranslated, and a consumer whose patterns
    share no prefix still works (it reads ``smartcare.>``).

Subscribing
    ``platform.bus_subscription`` stays the record of who listens to what, written as on
    PostgreSQL (by ``migrate``, worker start, or in a transaction like an exchange destination's).
    Durables are created with ``DeliverPolicy.NEW`` — like a PostgreSQL subscription they get what
    is published after they subscribed, not the stream's history — so the relay, before it
    publishes a batch, reads the subscription rows (after the batch, so it sees every subscription
    committed before those events) and creates or widens the durables they need.

Consuming
    One durable pull consumer per ``Consumer.name`` ('.' becomes '-': NATS names have no dots),
    shared by every worker process. Its ``ack_wait`` is ``Consumer.backoff_seconds``, the same
    lease as on PostgreSQL: a worker that dies holding a message loses it to another after that
    long; a live one sends in-progress acks while its handler runs. For each message one
    transaction inserts the ``platform.bus_delivery`` row (message, consumer) as 'done' — that
    unique row is the idempotency mark, so a duplicate finds it and is only acked — runs the
    handler, commits, and only then acks. A failure rolls back and NAKs with
    ``Consumer.backoff(attempt)`` (attempt = JetStream's delivery count).

Dead letters and replay
    After ``max_attempts`` failures the worker inserts the row as 'dead' (attempts, last_error)
    and TERMs the message, so ``bus.dead_letters`` reads the same rows for both transports. Once a
    row exists it owns the delivery: JetStream redeliveries of that message are acked and ignored.
    ``replay`` sets the row back to 'pending' (exactly what the PostgreSQL transport does) and
    NOTIFYs; every NATS worker also runs ``postgres.run_once`` for its own consumers, which locks
    the pending row, runs the handler and marks it 'done' in one transaction. The replay reaches
    that one consumer only and needs nothing from the stream, not even the message still being
    in it (the payload comes from the outbox).

The outbox must therefore keep a message for as long as the stream can still deliver it; a
consumer meeting a message whose outbox row is gone (or published to the stream by other means)
adopts it into the outbox first, so that its mark has a row to point at.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import time
import uuid
from collections.abc import Coroutine, Iterable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import psycopg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.platform import metrics
from smartcare.platform.bus import BaseWorker, Consumer, Message, describe_error, postgres, registry
from smartcare.platform.db import database_url, session_factory, session_scope
from smartcare.platform.errors import ConfigurationError
from smartcare.platform.settings import get_settings

log = logging.getLogger(__name__)

STREAM = "SMARTCARE"
#: The stream forgets messages after a week (the outbox keeps them a day longer, see ``postgres.purge``),
#: so neither grows without bound; a consumer down for longer than that is an outage to replay from the outbox.
STREAM_MAX_AGE_SECONDS = 7 * 24 * 3600.0
PREFIX = "smartcare."
#: NOTIFY channel that wakes the relay (new outbox rows) and the replay poll (replayed deliveries).
RELAY_CHANNEL = "smartcare_bus_relay"
PUBLISHED_AT = "Smartcare-Published-At"
#: How long one idle long-poll lasts in a worker: ``stop()`` is honoured within about this.
_FETCH_SECONDS = 1.0
#: How long ``drain`` waits on an empty consumer before it calls it drained.
_DRAIN_IDLE_SECONDS = 0.1
#: ack_wait of a durable the relay creates from a subscription row, until a worker sets the consumer's own.
_DEFAULT_ACK_WAIT = Consumer.backoff_seconds

T = TypeVar("T")


# -- names ---------------------------------------------------------------------------------------

def subject(topic: str) -> str:
    return PREFIX + topic


def durable_name(consumer_name: str) -> str:
    """The JetStream durable for a consumer: names are letters, digits, '_' and '.', so '-' is free."""
    return consumer_name.replace(".", "-")


def filter_subject(patterns: Iterable[str]) -> str:
    """The narrowest single subject that every message matching one of ``patterns`` is published on."""
    covers = [_cover(p) for p in patterns] or [[">"]]
    if all(c == covers[0] for c in covers):
        return PREFIX + ".".join(covers[0])
    prefix: list[str] = []
    for tokens in zip(*covers):
        if len(set(tokens)) != 1 or tokens[0] == ">":
            break
        prefix.append(tokens[0])
    # ``prefix.>`` needs one more token, so it cannot cover a literal subject equal to the prefix.
    while prefix and any(len(c) == len(prefix) for c in covers):
        prefix.pop()
    return PREFIX + ".".join([*prefix, ">"])


def _cover(pattern: str) -> list[str]:
    """Tokens of a subject covering an fnmatch pattern: its literal tokens up to the first wildcard."""
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if any(ch in token for ch in "*?["):
            return [*tokens[:i], ">"]
    return tokens


def servers() -> list[str]:
    """``SMARTCARE_BUS_URL`` may list several servers of a cluster, comma-separated."""
    urls = [u.strip() for u in get_settings().bus_url.split(",") if u.strip()]
    if not urls or not all(u.startswith(("nats://", "tls://")) for u in urls):
        raise ConfigurationError("SMARTCARE_BUS_URL does not name a NATS server",
                                 hint="use nats://host:4222 (several: comma-separated), or 'postgres'")
    return urls


# -- connection ----------------------------------------------------------------------------------

async def _on_error(exc: Exception) -> None:
    log.warning("NATS: %s", exc)


async def _on_error_quietly(exc: Exception) -> None:
    log.debug("NATS: %s", exc)


async def connect(*, timeout: float = 2.0, reconnect_attempts: int = 1, quiet: bool = False) -> Client:
    """Connect, failing after ``reconnect_attempts`` more tries (nats-py's 0 would mean forever)."""
    urls = servers()
    try:
        return await nats.connect(servers=urls, name="smartcare-bus", connect_timeout=timeout,
                                  max_reconnect_attempts=max(reconnect_attempts, 1), reconnect_time_wait=0.5,
                                  error_cb=_on_error_quietly if quiet else _on_error)
    except (NoServersError, OSError, asyncio.TimeoutError) as exc:
        where = ", ".join(f"{urlsplit(u).hostname}:{urlsplit(u).port or 4222}" for u in urls)  # no credentials
        raise ConnectionError(f"cannot reach NATS at {where} ({type(exc).__name__}); start nats-server with "
                              "JetStream (-js), or set SMARTCARE_BUS_URL=postgres") from exc


async def ensure(nc: Client, consumers: Iterable[Consumer]) -> None:
    """Create the stream and one durable per consumer, or bring them in line with the code (idempotent)."""
    jsm = nc.jsm()
    try:
        info = await jsm.stream_info(STREAM)
        if not info.config.max_age or abs(info.config.max_age - STREAM_MAX_AGE_SECONDS) > 1:
            info.config.max_age = STREAM_MAX_AGE_SECONDS
            await jsm.update_stream(info.config)
    except NotFoundError:
        await jsm.add_stream(StreamConfig(name=STREAM, subjects=[PREFIX + ">"], storage=StorageType.FILE,
                                          max_age=STREAM_MAX_AGE_SECONDS))
    for c in consumers:
        await _durable(nc, c.name, c.topics, ack_wait=c.backoff_seconds)


async def _durable(nc: Client, name: str, patterns: Iterable[str], *, ack_wait: float | None = None) -> None:
    """Create or update one durable. Without ``ack_wait`` an existing durable keeps its own and is
    only touched when its filter no longer covers ``patterns``."""
    jsm = nc.jsm()
    wanted = filter_subject(patterns)
    if ack_wait is None:
        try:
            current = (await jsm.consumer_info(STREAM, durable_name(name))).config
        except NotFoundError:
            ack_wait = _DEFAULT_ACK_WAIT
        else:
            if current.filter_subject == wanted:
                return
            ack_wait = current.ack_wait or _DEFAULT_ACK_WAIT
    # Creating an existing durable with the same config is a no-op; a changed ack_wait or filter
    # is an update (nats-server >= 2.9).
    await jsm.add_consumer(STREAM, ConsumerConfig(
        durable_name=durable_name(name), description=f"SmartCare bus consumer {name}",
        deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait,
        max_deliver=-1, filter_subject=wanted,
    ))


def _subscriptions(session: Session) -> dict[str, tuple[str, ...]]:
    """The subscription rows (the transport-neutral record of who listens to what), as fnmatch patterns."""
    found: dict[str, list[str]] = {}
    for name, like in session.execute(text("SELECT consumer, topic_pattern FROM platform.bus_subscription")):
        found.setdefault(name, []).append(_unlike(like))
    return {name: tuple(sorted(patterns)) for name, patterns in found.items()}


def _unlike(like: str) -> str:
    """Undo ``postgres._like``: ``%`` was ``*``, backslash escapes a literal character."""
    out, chars = [], iter(like)
    for ch in chars:
        out.append(next(chars, "") if ch == "\\" else "*" if ch == "%" else ch)
    return "".join(out)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even when this thread already has a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def sync_subscriptions(consumers: Iterable[Consumer], *, session: Session | None = None) -> None:
    """Make the subscription rows and JetStream's durables say what the code says (idempotent).

    The rows are what the relay follows (so a consumer subscribed in a transaction, like an exchange
    destination, gets its durable before anything published after it is relayed); the durables are
    also created at once, with the consumer's own ack_wait.
    """
    consumers = list(consumers)
    if session is not None:
        postgres.sync_subscriptions(session, consumers)
    else:
        _sync_rows(consumers)

    async def main() -> None:
        nc = await connect()
        try:
            await ensure(nc, consumers)
        finally:
            await nc.close()

    _run(main())


def _sync_rows(consumers: Iterable[Consumer]) -> None:
    with session_scope() as session:
        postgres.sync_subscriptions(session, consumers)


def delete_consumers(names: Iterable[str]) -> None:
    """Remove the durables of consumers the code no longer has (their dead letters stay in PostgreSQL)."""
    names = list(names)

    async def main() -> None:
        nc = await connect()
        try:
            for name in names:
                try:
                    await nc.jsm().delete_consumer(STREAM, durable_name(name))
                except NotFoundError:
                    pass
        finally:
            await nc.close()

    _run(main())


# -- publishing and relaying ---------------------------------------------------------------------

def publish(session: Session, topic: str, payload: dict, *, message_id: uuid.UUID) -> uuid.UUID:
    """The outbox row for the relay and the relay's wake-up: ``platform.publish`` (migration 0019)."""
    if session.execute(text("SELECT platform.publish(:mid, :topic, :payload, :ch, false)"),
                       {"mid": message_id, "topic": topic, "payload": Jsonb(payload), "ch": RELAY_CHANNEL}).scalar():
        metrics.BUS_PUBLISHED.labels(topic=topic).inc()
    return message_id


async def relay(nc: Client, *, known: dict[str, tuple[str, ...]] | None = None, batch: int = 500) -> int:
    """Hand every committed, unrelayed outbox row to JetStream; returns how many were relayed.

    ``known`` remembers which subscriptions already have a durable that covers them; a caller that
    relays repeatedly passes the same dict so that only new or changed subscriptions cost a request.
    """
    loop = asyncio.get_running_loop()
    known = {} if known is None else known
    total = 0
    while True:
        n = await asyncio.to_thread(_relay_batch, nc, loop, batch, known)
        total += n
        if n < batch:
            return total


def _relay_batch(nc: Client, loop: asyncio.AbstractEventLoop, batch: int, known: dict[str, tuple[str, ...]]) -> int:
    with session_scope() as s:
        rows = s.execute(
            text("SELECT id, message_id, topic, payload, published_at FROM platform.bus_message "
                 "WHERE relayed_at IS NULL ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"), {"n": batch},
        ).all()
        if not rows:
            return 0
        # Read after the rows, so every subscription committed before them is seen: JetStream only
        # gives a durable what arrives after it exists, so each one is made ready before publishing.
        subscriptions = _subscriptions(s)
        asyncio.run_coroutine_threadsafe(_follow_and_publish(nc, subscriptions, known, rows), loop).result()
        # Marked relayed only once JetStream has stored every one of them.
        s.execute(text("UPDATE platform.bus_message SET relayed_at = now() WHERE id = ANY(:ids)"),
                  {"ids": [r.id for r in rows]})
    return len(rows)


async def _follow_and_publish(nc: Client, subscriptions: dict[str, tuple[str, ...]],
                              known: dict[str, tuple[str, ...]], rows) -> None:
    for name, patterns in subscriptions.items():
        if known.get(name) != patterns:
            try:
                await _durable(nc, name, patterns)
            except ValueError as exc:  # a row no consumer could have written today; it must not stop the relay
                log.error("bus subscription %r cannot become a JetStream durable (%s); it receives nothing", name, exc)
            known[name] = patterns
    await _publish_rows(nc.jetstream(), rows)


async def _publish_rows(js: JetStreamContext, rows) -> None:
    await asyncio.gather(*(
        js.publish(subject(r.topic), json.dumps(r.payload, ensure_ascii=False, separators=(",", ":")).encode(),
                   stream=STREAM,
                   headers={"Nats-Msg-Id": str(r.message_id), PUBLISHED_AT: r.published_at.isoformat()})
        for r in rows
    ))


# -- consuming -----------------------------------------------------------------------------------

def _decode(msg: Msg) -> Message:
    headers = msg.headers or {}
    published = headers.get(PUBLISHED_AT)
    return Message(
        id=uuid.UUID(headers["Nats-Msg-Id"]),
        topic=msg.subject.removeprefix(PREFIX),
        payload=json.loads(msg.data),
        published_at=datetime.fromisoformat(published) if published else None,
        attempt=msg.metadata.num_delivered,
    )


def _outbox_id(session: Session, message: Message) -> int:
    """The outbox row of ``message``, adopting it when the outbox no longer (or never) had it."""
    found = session.execute(text("SELECT id FROM platform.bus_message WHERE message_id = :mid"),
                            {"mid": message.id}).scalar()
    if found is None:
        session.execute(
            text("INSERT INTO platform.bus_message (message_id, topic, payload, published_at, relayed_at) "
                 "VALUES (:mid, :topic, :payload, coalesce(:at, now()), now()) ON CONFLICT (message_id) DO NOTHING"),
            {"mid": message.id, "topic": message.topic, "payload": Jsonb(message.payload), "at": message.published_at},
        )
        found = session.execute(text("SELECT id FROM platform.bus_message WHERE message_id = :mid"),
                                {"mid": message.id}).scalar_one()
    return found


def _handle(consumer: Consumer, message: Message) -> str:
    """Run the handler under its (message, consumer) mark: 'done', 'duplicate', 'retry' or 'dead'."""
    session = session_factory()()
    try:
        claimed = session.execute(
            text("INSERT INTO platform.bus_delivery (message_id, consumer, state, attempts, done_at) "
                 "VALUES (:id, :c, 'done', :n, now()) ON CONFLICT (message_id, consumer) DO NOTHING RETURNING id"),
            {"id": _outbox_id(session, message), "c": consumer.name, "n": message.attempt},
        ).scalar()
        if claimed is None:  # handled, dead-lettered or replaying: the row owns this delivery
            session.rollback()
            metrics.BUS_HANDLED.labels(consumer=consumer.name, outcome="duplicate").inc()
            return "duplicate"
        consumer.handler(session, message)
        session.commit()
        metrics.BUS_HANDLED.labels(consumer=consumer.name, outcome="done").inc()
        return "done"
    except Exception as exc:
        session.rollback()
        error = describe_error(exc)
        dead = message.attempt >= consumer.max_attempts
        if dead:
            try:
                with session_scope() as s:
                    s.execute(
                        text("INSERT INTO platform.bus_delivery (message_id, consumer, state, attempts, last_error) "
                             "VALUES (:id, :c, 'dead', :n, :e) ON CONFLICT (message_id, consumer) DO NOTHING"),
                        {"id": _outbox_id(s, message), "c": consumer.name, "n": message.attempt, "e": error},
                    )
            except Exception as bury:  # cannot record it: keep it in JetStream rather than lose it
                log.error("bus consumer %s could not dead-letter message %s (%s); it will be retried",
                          consumer.name, message.id, bury)
                dead = False
        metrics.BUS_HANDLED.labels(consumer=consumer.name, outcome="dead" if dead else "retry").inc()
        log.warning("bus consumer %s failed on message %s (attempt %s%s): %s", consumer.name, message.id,
                    message.attempt, ", dead-lettered" if dead else "", error)
        return "dead" if dead else "retry"
    finally:
        session.close()


async def _process(consumer: Consumer, msg: Msg) -> bool:
    """Handle one JetStream message for ``consumer``; False when it was not for this consumer."""
    if not consumer.matches(msg.subject.removeprefix(PREFIX)):
        await msg.ack()
        return False
    try:
        message = _decode(msg)
    except (KeyError, ValueError) as exc:  # not written by our relay: it can never be handled
        log.error("bus consumer %s dropped a malformed message on %s: %s", consumer.name, msg.subject, exc)
        await msg.term()
        return True
    work = asyncio.ensure_future(asyncio.to_thread(_handle, consumer, message))
    while not work.done():
        await asyncio.wait({work}, timeout=max(consumer.backoff_seconds / 2, 0.05))
        if not work.done():
            try:
                await msg.in_progress()  # keep the lease while the handler runs
            except Exception as exc:
                log.warning("bus consumer %s could not extend its lease: %s", consumer.name, exc)
    outcome = work.result()
    if outcome == "retry":
        await msg.nak(delay=consumer.backoff(message.attempt))
    elif outcome == "dead":
        await msg.term()
    else:
        await msg.ack()
    return True


async def _fetch_and_process(consumer: Consumer, sub: JetStreamContext.PullSubscription, *, batch: int,
                             wait: float) -> int:
    try:
        msgs = await sub.fetch(batch, timeout=wait)
    except asyncio.TimeoutError:  # nothing came (nats' TimeoutError is an asyncio.TimeoutError)
        return 0
    return sum([await _process(consumer, m) for m in msgs])


def _replays(consumers: dict[str, Consumer], batch: int) -> int:
    """Deliveries set back to 'pending' by ``replay``, handled the PostgreSQL way."""
    total = 0
    while n := postgres.run_once(consumers, batch=batch):
        total += n
    return total


def drain(consumers: dict[str, Consumer] | None = None, *, timeout: float = 5.0, batch: int = 100) -> int:
    """Relay the outbox and handle what is deliverable now; returns how many deliveries were handled."""
    consumers = consumers if consumers is not None else registry.consumers
    return _run(_drain(consumers, timeout, batch))


async def _drain(consumers: dict[str, Consumer], timeout: float, batch: int) -> int:
    deadline = time.monotonic() + timeout
    nc = await connect()
    try:
        js = nc.jetstream()
        await ensure(nc, consumers.values())
        subs = {name: await js.pull_subscribe_bind(durable_name(name), STREAM) for name in consumers}
        known: dict[str, tuple[str, ...]] = {}
        total = 0
        while True:
            relayed = await relay(nc, known=known)
            handled = await asyncio.to_thread(_replays, consumers, batch)
            handled += sum(await asyncio.gather(*(
                _fetch_and_process(consumers[name], sub, batch=batch, wait=_DRAIN_IDLE_SECONDS)
                for name, sub in subs.items())))
            total += handled
            if (relayed == 0 and handled == 0) or time.monotonic() >= deadline:
                break
        await nc.flush()  # the acks have reached the server before we say we are done
        return total
    finally:
        await nc.close()


class Worker(BaseWorker):
    """Relays the outbox and runs consumers until stopped.

    The relay wakes on NOTIFY (polling every ``poll_seconds`` as a fallback, which is also when
    replayed deliveries are picked up without a NOTIFY); each consumer long-polls its durable, so a
    message is handled as soon as JetStream has it. ``consumers`` may be replaced while running (the
    exchange's destinations come and go): new consumers get their durable and a loop within a second.
    """

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        while not self.stopping.is_set():
            try:
                # A minute of reconnecting inside nats-py; after that the client closes and we start over.
                nc = await connect(reconnect_attempts=120)
            except Exception as exc:
                log.warning("bus worker cannot reach NATS (%s); retrying in 5 s", exc)
                await self._pause(5)
                continue
            try:
                await ensure(nc, ())  # the stream, even before the first consumer: the relay needs it
                js = nc.jetstream()
                async with asyncio.TaskGroup() as tasks:  # one failing loop stops the others: we start over
                    tasks.create_task(self._outbox(nc))
                    await self._supervise(nc, js, tasks)
            except Exception as exc:
                log.warning("bus worker stopped its NATS session (%s); starting over in 5 s", exc)
                await self._pause(5)
            finally:
                await nc.close()

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    def _running(self, nc: Client) -> bool:
        return not self.stopping.is_set() and not nc.is_closed

    async def _supervise(self, nc: Client, js: JetStreamContext, tasks: asyncio.TaskGroup) -> None:
        """Keep one durable and one loop per consumer in ``self.consumers``, following its changes."""
        shapes: dict[str, tuple] = {}
        loops: dict[str, asyncio.Task] = {}
        while self._running(nc):
            current = dict(self.consumers)
            changed = [c for c in current.values()
                       if shapes.get(c.name) != (c.topics, c.backoff_seconds) or c.name not in loops]
            if changed:
                await asyncio.to_thread(_sync_rows, changed)  # as the PostgreSQL worker does at start
                await ensure(nc, changed)
                for c in changed:
                    shapes[c.name] = (c.topics, c.backoff_seconds)
                    if c.name not in loops:
                        loops[c.name] = tasks.create_task(self._consume(nc, js, c.name))
            for name in [n for n, t in loops.items() if t.done()]:  # removed consumers end their loop
                del loops[name]
                shapes.pop(name, None)
            await self._pause(1)

    async def _consume(self, nc: Client, js: JetStreamContext, name: str) -> None:
        sub = await js.pull_subscribe_bind(durable_name(name), STREAM)
        try:
            # The consumer is looked up each round, so a replaced one (new handler, backoff) takes over.
            while self._running(nc) and (consumer := self.consumers.get(name)) is not None:
                try:
                    await _fetch_and_process(consumer, sub, batch=self.batch, wait=_FETCH_SECONDS)
                except Exception as exc:  # disconnected, or an ack that could not be sent: JetStream redelivers
                    log.warning("bus consumer %s: %s", name, exc)
                    await self._pause(1)
        finally:
            if not nc.is_closed:
                await sub.unsubscribe()

    async def _outbox(self, nc: Client) -> None:
        dsn = database_url().replace("postgresql+psycopg://", "postgresql://", 1)
        known: dict[str, tuple[str, ...]] = {}
        while self._running(nc):
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listen:
                    await listen.execute(f"LISTEN {RELAY_CHANNEL}")
                    woken, last_run = True, 0.0
                    while self._running(nc):
                        if woken or time.monotonic() - last_run >= self.poll_seconds:
                            try:
                                await relay(nc, known=known)
                                await asyncio.to_thread(_replays, dict(self.consumers), self.batch)
                            except Exception as exc:  # NATS or a handler's database hiccup: next round retries
                                log.warning("bus relay failed (%s); retrying", exc)
                                await self._pause(1)
                            last_run = time.monotonic()
                        woken = False
                        async for _ in listen.notifies(timeout=0.5, stop_after=1):
                            woken = True
            except psycopg.OperationalError as exc:
                log.warning("bus relay lost its database connection (%s); retrying in 5 s", exc)
                await self._pause(5)


# -- dead letters and health ---------------------------------------------------------------------

def replay(session: Session, delivery_id: int) -> bool:
    """Set a dead delivery back to 'pending'; the NATS workers handle it for that consumer only."""
    replayed = postgres.replay(session, delivery_id)
    if replayed:
        session.execute(text("SELECT pg_notify(:ch, 'replay')"), {"ch": RELAY_CHANNEL})
    return replayed


def health() -> str | None:
    """None when NATS answers and the stream exists, else a short reason."""

    async def check() -> str | None:
        try:
            nc = await connect(timeout=1.0, quiet=True)
        except Exception as exc:
            return f"NATS unreachable ({type(exc.__cause__ or exc).__name__})"
        try:
            await nc.jsm().stream_info(STREAM)
            return None
        except NotFoundError:
            return f"JetStream stream {STREAM} missing (run smartcare migrate)"
        except Exception as exc:
            return f"JetStream not answering ({type(exc).__name__})"
        finally:
            await nc.close()

    return _run(check())

