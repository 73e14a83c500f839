"""The bus on both transports: a consumer that crashes mid-handler gets the message again and its
effect happens once; duplicates, retries, dead letters, replay, routing and prompt wake-up.

Every test runs against PostgreSQL and against NATS JetStream (``transport`` fixture). NATS is
expected at 127.0.0.1:4222; without it the NATS half is skipped, except in CI where it fails.
Names and topics carry a random suffix: the database is shared by the session and the JetStream
stream outlives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text

from smartcare.platform import bus
from smartcare.platform.bus import Consumer, Message
from smartcare.platform.db import session_scope
from smartcare.platform.settings import get_settings
from tests.conftest import NATS_URL

@dataclass
class Transport:
    name: str
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    created: list[str] = field(default_factory=list)

    def consumer(self, base: str, topics: tuple[str, ...], handler, **options) -> Consumer:
        """A consumer unique to this test and transport, subscribed before anything is published."""
        c = Consumer(f"{base}.{self.name}_{self.suffix}", topics, handler, **options)
        bus.sync_subscriptions([c])
        self.created.append(c.name)
        return c

    def topic(self, rest: str) -> str:
        return f"t{self.suffix}.{rest}"


@pytest.fixture
def transport(bus_transport):
    """The transport under test, with names unique to the test; NATS consumers are removed afterwards."""
    t = Transport(bus_transport)
    try:
        yield t
    finally:
        if bus_transport == "nats" and t.created:
            from smartcare.platform.bus import nats

            nats.delete_consumers(t.created)


def _effect_table(name: str) -> None:
    with session_scope() as s:
        s.execute(text(f"CREATE TABLE IF NOT EXISTS public.{name} (message_id uuid PRIMARY KEY, n int NOT NULL)"))


def _count(name: str, message_id: uuid.UUID) -> int:
    with session_scope() as s:
        return s.execute(text(f"SELECT coalesce(sum(n), 0) FROM public.{name} WHERE message_id = :m"), {"m": message_id}).scalar()


def _increment(table: str):
    def handler(session, message):
        session.execute(text(f"INSERT INTO public.{table} VALUES (:m, 1) ON CONFLICT (message_id) DO UPDATE SET n = {table}.n + 1"),
                        {"m": message.id})
    return handler


def _delivery(message_id: uuid.UUID, consumer: str):
    """(state, attempts, last_error) of the delivery, or None when the transport has no row for it."""
    with session_scope() as s:
        return s.execute(text("SELECT d.state, d.attempts, d.last_error FROM platform.bus_delivery d "
                              "JOIN platform.bus_message m ON m.id = d.message_id WHERE m.message_id = :m AND d.consumer = :c"),
                         {"m": message_id, "c": consumer}).first()


CRASHING_WORKER = textwrap.dedent("""
    import os
    import sys

    from sqlalchemy import text

    from smartcare.platform import bus

    def handler(session, message):
        session.execute(text("INSERT INTO public.bus_effect_crash VALUES (:m, 1) "
                             "ON CONFLICT (message_id) DO UPDATE SET n = bus_effect_crash.n + 1"), {"m": message.id})
        session.flush()
        os._exit(17)  # the process dies after doing the work, before the commit

    name, pattern = sys.argv[1:3]
    bus.drain({name: bus.Consumer(name, (pattern,), handler, backoff_seconds=1.0)})
""")


def test_redelivery_after_consumer_crash_has_exactly_one_effect(transport):
    _effect_table("bus_effect_crash")
    consumer = transport.consumer("test.crashy", (transport.topic("crash.*"),), _increment("bus_effect_crash"),
                                  backoff_seconds=1.0)
    consumers = {consumer.name: consumer}
    with session_scope() as s:
        message_id = bus.publish(s, transport.topic("crash.one"), {"n": 1})

    crashed = subprocess.run([sys.executable, "-c", CRASHING_WORKER, consumer.name, consumer.topics[0]],
                             env=os.environ.copy(), capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 17, crashed.stderr
    assert _count("bus_effect_crash", message_id) == 0  # the crashed transaction left nothing behind
    if transport.name == "postgres":
        assert _delivery(message_id, consumer.name)[:2] == ("pending", 1)
    else:  # the mark rolled back with the effect; JetStream holds the message, unacknowledged
        assert _delivery(message_id, consumer.name) is None

    # Within the lease nobody else takes it; after it the delivery comes back by itself.
    assert bus.drain(consumers) == 0
    time.sleep(1.1)
    assert bus.drain(consumers) == 1
    assert _delivery(message_id, consumer.name)[:2] == ("done", 2)
    assert _count("bus_effect_crash", message_id) == 1

    # Nothing more to do, and publishing the same message id again is a no-op.
    with session_scope() as s:
        bus.publish(s, transport.topic("crash.one"), {"n": 1}, message_id=message_id)
    time.sleep(1.1)
    assert bus.drain(consumers) == 0
    assert _count("bus_effect_crash", message_id) == 1


def test_the_same_message_id_twice_is_one_effect(transport):
    _effect_table("bus_effect_dup")
    consumer = transport.consumer("test.dup", (transport.topic("dup"),), _increment("bus_effect_dup"))
    consumers = {consumer.name: consumer}
    message_id = uuid.uuid4()
    for _ in range(2):
        with session_scope() as s:
            assert bus.publish(s, transport.topic("dup"), {"k": 1}, message_id=message_id) == message_id
    assert bus.drain(consumers) == 1
    assert bus.drain(consumers) == 0
    assert _count("bus_effect_dup", message_id) == 1
    assert _delivery(message_id, consumer.name)[0] == "done"

    if transport.name == "nats":
        from smartcare.platform.bus import nats

        # The relay died after JetStream stored the message but before it marked the row: it
        # publishes again, and JetStream drops the copy (Nats-Msg-Id).
        with session_scope() as s:
            s.execute(text("UPDATE platform.bus_message SET relayed_at = NULL WHERE message_id = :m"), {"m": message_id})
        assert bus.drain(consumers) == 0
        # Past JetStream's duplicate window the consumer's mark is what keeps it to one effect.
        again = Message(message_id, transport.topic("dup"), {"k": 1}, attempt=1)
        assert nats._handle(consumer, again) == "duplicate"
        assert _count("bus_effect_dup", message_id) == 1


@pytest.mark.parametrize("bus_transport", ["nats"], indirect=True)  # on PostgreSQL the outbox is the only way in
def test_nats_consumer_adopts_a_message_the_outbox_does_not_have(transport):
    """Published to the stream by other means (or pruned from the outbox): handled once all the same."""
    import asyncio

    import nats as nats_client

    from smartcare.platform.bus import nats

    _effect_table("bus_effect_foreign")
    consumer = transport.consumer("test.foreign", (transport.topic("foreign"),), _increment("bus_effect_foreign"))
    message_id = uuid.uuid4()

    async def publish_directly():
        nc = await nats_client.connect(NATS_URL)
        try:
            await nc.jetstream().publish(nats.subject(transport.topic("foreign")), b'{"k": 1}', stream=nats.STREAM,
                                         headers={"Nats-Msg-Id": str(message_id)})
        finally:
            await nc.close()

    asyncio.run(publish_directly())
    assert bus.drain({consumer.name: consumer}) == 1
    assert _count("bus_effect_foreign", message_id) == 1
    assert _delivery(message_id, consumer.name)[0] == "done"
    with session_scope() as s:
        adopted = s.execute(text("SELECT topic, payload, relayed_at IS NOT NULL FROM platform.bus_message "
                                 "WHERE message_id = :m"), {"m": message_id}).one()
    assert tuple(adopted) == (transport.topic("foreign"), {"k": 1}, True)  # never relayed back


@pytest.mark.parametrize("bus_transport", ["nats"], indirect=True)  # on PostgreSQL the rows are the whole story
def test_nats_relay_gives_a_subscription_its_durable_before_publishing(transport):
    """A consumer subscribed only by its rows (as an exchange destination is, inside the channel's
    transaction) gets what is published after, even when the relay runs before any worker knows it."""
    from smartcare.platform.bus import nats, postgres

    _effect_table("bus_effect_rows")
    narrow = Consumer(f"test.rows.nats_{transport.suffix}", (transport.topic("rows.a.*"),), _increment("bus_effect_rows"))
    transport.created.append(narrow.name)
    with session_scope() as s:
        postgres.sync_subscriptions(s, [narrow])
        first = bus.publish(s, transport.topic("rows.a.one"), {})
    assert nats.drain({}) == 0  # relays, handles nothing: no worker runs the consumer yet
    assert bus.drain({narrow.name: narrow}) == 1
    assert _count("bus_effect_rows", first) == 1

    # The subscription widens; the relay widens the durable's filter before it publishes.
    wide = Consumer(narrow.name, (*narrow.topics, transport.topic("rows.b.*")), narrow.handler)
    with session_scope() as s:
        postgres.sync_subscriptions(s, [wide])
        second = bus.publish(s, transport.topic("rows.b.two"), {})
    assert nats.drain({}) == 0
    assert bus.drain({wide.name: wide}) == 1
    assert _count("bus_effect_rows", second) == 1


def test_failing_consumer_retries_with_backoff_then_dead_letters_and_replays(transport):
    _effect_table("bus_effect_fail")
    _effect_table("bus_effect_bystander")
    calls = []

    def flaky(session, message):
        calls.append(message.attempt)
        if len(calls) <= 2:
            raise RuntimeError("downstream unavailable")
        _increment("bus_effect_fail")(session, message)

    consumer = transport.consumer("test.flaky", (transport.topic("flaky"),), flaky, max_attempts=2, backoff_seconds=1.0)
    bystander = transport.consumer("test.bystander", (transport.topic("flaky"),), _increment("bus_effect_bystander"))
    consumers = {consumer.name: consumer, bystander.name: bystander}
    with session_scope() as s:
        message_id = bus.publish(s, transport.topic("flaky"), {})

    assert bus.drain(consumers) == 2  # one failure, one success
    assert calls == [1]
    if transport.name == "postgres":
        assert _delivery(message_id, consumer.name)[:2] == ("pending", 1)
    assert bus.drain(consumers) == 0  # the backoff has not passed
    time.sleep(1.1)
    assert bus.drain(consumers) == 1
    state, attempts, error = _delivery(message_id, consumer.name)
    assert (state, attempts) == ("dead", 2)
    assert "downstream unavailable" in error
    assert calls == [1, 2]
    time.sleep(1.1)
    assert bus.drain(consumers) == 0  # dead stays dead

    with session_scope() as s:
        dead = [d for d in bus.dead_letters(s) if d["message_id"] == message_id]
        assert [(d["consumer"], d["attempts"]) for d in dead] == [(consumer.name, 2)]
        assert bus.replay(s, dead[0]["id"])
        assert not bus.replay(s, dead[0]["id"])  # only a dead delivery can be replayed
    assert bus.drain(consumers) == 1
    assert calls == [1, 2, 1]  # a fresh attempt count
    assert _delivery(message_id, consumer.name)[0] == "done"
    assert _count("bus_effect_fail", message_id) == 1
    assert _count("bus_effect_bystander", message_id) == 1  # the replay went to the failed consumer only


def test_topic_patterns_route_only_matching_messages(transport):
    _effect_table("bus_effect_route")
    consumer = transport.consumer("test.router", (transport.topic("route.a.*"), transport.topic("other.x")),
                                  _increment("bus_effect_route"))
    with session_scope() as s:
        hit = bus.publish(s, transport.topic("route.a.created"), {})
        deep = bus.publish(s, transport.topic("route.a.b.c"), {})  # '*' crosses dots, as in fnmatch
        other = bus.publish(s, transport.topic("other.x"), {})
        miss = bus.publish(s, transport.topic("route.b.created"), {})
        literal = bus.publish(s, f"t{transport.suffix}_route_a_x", {})  # '_' is not a wildcard
    assert bus.drain({consumer.name: consumer}) == 3
    assert [_count("bus_effect_route", m) for m in (hit, deep, other)] == [1, 1, 1]
    assert [_count("bus_effect_route", m) for m in (miss, literal)] == [0, 0]
    if transport.name == "nats":
        from smartcare.platform.bus import nats

        # JetStream 2.9 filters on one subject, a superset; the worker does the exact match.
        assert nats.filter_subject(consumer.topics) == f"smartcare.t{transport.suffix}.>"


def test_running_worker_handles_a_new_message_promptly(transport):
    _effect_table("bus_effect_notify")
    consumer = transport.consumer("test.notify", (transport.topic("notify"),), _increment("bus_effect_notify"))
    worker = bus.make_worker({consumer.name: consumer}, poll_seconds=30)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # let it LISTEN (and, for NATS, connect)
        started = time.monotonic()
        with session_scope() as s:
            message_id = bus.publish(s, transport.topic("notify"), {})
        while _count("bus_effect_notify", message_id) == 0 and time.monotonic() - started < 10:
            time.sleep(0.05)
        # far sooner than the 30 s poll: NOTIFY (and for NATS the waiting pull) woke it
        assert _count("bus_effect_notify", message_id) == 1
        assert time.monotonic() - started < 5
    finally:
        worker.stop()
        thread.join(timeout=35)
    assert not thread.is_alive()


def test_health_reports_the_transport(transport):
    assert bus.health() is None
    if transport.name == "nats":
        os.environ["SMARTCARE_BUS_URL"] = "nats://127.0.0.1:1"  # nothing listens there
        get_settings.cache_clear()
        assert "NATS unreachable" in bus.health()


def test_names_that_cannot_travel_on_both_transports_are_refused(database_url):
    with pytest.raises(ValueError, match="consumer name"):
        Consumer("exchange.lab-results", ("x",), lambda s, m: None)
    with session_scope() as s, pytest.raises(ValueError, match="topic"):
        bus.publish(s, "lab results.created", {})
    with session_scope() as s, pytest.raises(ValueError, match="topic"):
        bus.publish(s, "lab.*", {})


def test_purge_forgets_finished_events_but_keeps_dead_letters(database_url):
    from datetime import timedelta

    from smartcare.platform.bus import postgres

    _effect_table("bus_effect_purge")
    suffix = uuid.uuid4().hex[:8]

    def fail(session, message):
        raise RuntimeError("always")

    ok = Consumer(f"test.purge_ok_{suffix}", (f"p{suffix}.ok",), _increment("bus_effect_purge"))
    bad = Consumer(f"test.purge_bad_{suffix}", (f"p{suffix}.bad",), fail, max_attempts=1)
    bus.sync_subscriptions([ok, bad])
    with session_scope() as s:
        done_id = bus.publish(s, f"p{suffix}.ok", {})
        dead_id = bus.publish(s, f"p{suffix}.bad", {})
    postgres.run_once({ok.name: ok, bad.name: bad})
    with session_scope() as s:
        assert postgres.purge(s, older_than=timedelta(0)) >= 1
        left = {r for (r,) in s.execute(text("SELECT message_id FROM platform.bus_message WHERE message_id IN (:a, :b)"),
                                        {"a": done_id, "b": dead_id})}
    assert left == {dead_id}
    assert _count("bus_effect_purge", done_id) == 1


def test_a_slow_consumer_does_not_hold_up_another(database_url):
    """Each consumer has its own thread in the PostgreSQL worker: a handler stuck for seconds (a webhook
    timing out) does not delay the others."""
    from smartcare.platform.bus import postgres

    _effect_table("bus_effect_slow")
    suffix = uuid.uuid4().hex[:8]
    release = threading.Event()

    def stuck(session, message):
        release.wait(10)

    slow = Consumer(f"test.slow_{suffix}", (f"s{suffix}.slow",), stuck)
    fast = Consumer(f"test.fast_{suffix}", (f"s{suffix}.fast",), _increment("bus_effect_slow"))
    bus.sync_subscriptions([slow, fast])
    worker = postgres.Worker({slow.name: slow, fast.name: fast}, poll_seconds=30)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        with session_scope() as s:
            bus.publish(s, f"s{suffix}.slow", {})
        time.sleep(0.5)  # the slow one is now stuck in its handler
        with session_scope() as s:
            fast_id = bus.publish(s, f"s{suffix}.fast", {})
        deadline = time.monotonic() + 5
        while _count("bus_effect_slow", fast_id) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _count("bus_effect_slow", fast_id) == 1 and not release.is_set()
    finally:
        release.set()
        worker.stop()
        thread.join(timeout=15)
