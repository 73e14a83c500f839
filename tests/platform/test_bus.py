"""The PostgreSQL bus: a consumer that crashes mid-handler gets the message again, and its effect happens once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

from sqlalchemy import text

from smartcare.platform import bus
from smartcare.platform.bus import Consumer, postgres
from smartcare.platform.db import session_scope


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
    with session_scope() as s:
        return s.execute(text("SELECT d.state, d.attempts, d.last_error FROM platform.bus_delivery d "
                              "JOIN platform.bus_message m ON m.id = d.message_id WHERE m.message_id = :m AND d.consumer = :c"),
                         {"m": message_id, "c": consumer}).one()


CRASHING_WORKER = textwrap.dedent("""
    import os
    from sqlalchemy import text
    from smartcare.platform.bus import Consumer, postgres

    def handler(session, message):
        session.execute(text("INSERT INTO public.bus_effect_crash VALUES (:m, 1) "
                             "ON CONFLICT (message_id) DO UPDATE SET n = bus_effect_crash.n + 1"), {"m": message.id})
        session.flush()
        os._exit(17)  # the process dies after doing the work, before the commit

    postgres.run_once({"test.crashy": Consumer("test.crashy", ("test.crash.*",), handler, backoff_seconds=0.5)})
""")


def test_redelivery_after_consumer_crash_has_exactly_one_effect(database_url):
    _effect_table("bus_effect_crash")
    consumer = Consumer("test.crashy", ("test.crash.*",), _increment("bus_effect_crash"), backoff_seconds=0.5)
    with session_scope() as s:
        postgres.sync_subscriptions(s, [consumer])
    with session_scope() as s:
        message_id = bus.publish(s, "test.crash.one", {"n": 1})

    crashed = subprocess.run([sys.executable, "-c", CRASHING_WORKER], env=os.environ.copy(), capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 17, crashed.stderr
    state, attempts, _ = _delivery(message_id, "test.crashy")
    assert (state, attempts) == ("pending", 1)
    assert _count("bus_effect_crash", message_id) == 0  # the crashed transaction left nothing behind

    # Within the lease nobody else takes it; after it the delivery comes back by itself.
    assert postgres.run_once({"test.crashy": consumer}) == 0
    time.sleep(0.6)
    assert postgres.run_once({"test.crashy": consumer}) == 1
    assert _delivery(message_id, "test.crashy")[:2] == ("done", 2)
    assert _count("bus_effect_crash", message_id) == 1

    # Nothing more to do, and publishing the same message id again is a no-op.
    with session_scope() as s:
        bus.publish(s, "test.crash.one", {"n": 1}, message_id=message_id)
    time.sleep(0.6)
    assert postgres.run_once({"test.crashy": consumer}) == 0
    assert _count("bus_effect_crash", message_id) == 1


def test_failing_consumer_retries_with_backoff_then_dead_letters_and_replays(database_url):
    _effect_table("bus_effect_fail")
    calls = []

    def flaky(session, message):
        calls.append(message.attempt)
        if len(calls) <= 2:
            raise RuntimeError("downstream unavailable")
        _increment("bus_effect_fail")(session, message)

    consumer = Consumer("test.flaky", ("test.flaky",), flaky, max_attempts=2, backoff_seconds=0.2)
    with session_scope() as s:
        postgres.sync_subscriptions(s, [consumer])
        message_id = bus.publish(s, "test.flaky", {})
    consumers = {"test.flaky": consumer}
    assert postgres.run_once(consumers) == 1
    assert _delivery(message_id, "test.flaky")[:2] == ("pending", 1)
    time.sleep(0.25)
    postgres.run_once(consumers)
    state, attempts, error = _delivery(message_id, "test.flaky")
    assert (state, attempts) == ("dead", 2)
    assert "downstream unavailable" in error
    assert calls == [1, 2]

    with session_scope() as s:
        dead = [d for d in postgres.dead_letters(s) if d["message_id"] == message_id]
        assert len(dead) == 1
        assert postgres.replay(s, dead[0]["id"])
    assert postgres.run_once(consumers) == 1
    assert _delivery(message_id, "test.flaky")[0] == "done"
    assert _count("bus_effect_fail", message_id) == 1


def test_topic_patterns_route_only_matching_messages(database_url):
    _effect_table("bus_effect_route")
    consumer = Consumer("test.router", ("test.route.a.*",), _increment("bus_effect_route"))
    with session_scope() as s:
        postgres.sync_subscriptions(s, [consumer])
        hit = bus.publish(s, "test.route.a.created", {})
        miss = bus.publish(s, "test.route.b.created", {})
        literal = bus.publish(s, "test_route_a_x", {})  # '_' is not a wildcard
    postgres.run_once({"test.router": consumer})
    assert _count("bus_effect_route", hit) == 1
    assert _count("bus_effect_route", miss) == 0
    assert _count("bus_effect_route", literal) == 0


def test_worker_wakes_on_notify(database_url):
    import threading

    _effect_table("bus_effect_notify")
    consumer = Consumer("test.notify", ("test.notify",), _increment("bus_effect_notify"))
    worker = postgres.Worker({"test.notify": consumer}, poll_seconds=30)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # let it LISTEN
        with session_scope() as s:
            message_id = bus.publish(s, "test.notify", {})
        deadline = time.monotonic() + 10
        while _count("bus_effect_notify", message_id) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        # far sooner than the 30 s poll: NOTIFY woke it
        assert _count("bus_effect_notify", message_id) == 1
    finally:
        worker.stop()
        thread.join(timeout=35)
