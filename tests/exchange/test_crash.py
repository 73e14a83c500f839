"""A worker killed between receive and route loses nothing and doubles nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from smartcare.exchange import channels
from smartcare.platform.db import session_scope
from tests.exchange.conftest import adt, mllp_exchange, msa


def _states(prefix: str) -> dict[str, int]:
    with session_scope() as s:
        return dict(s.execute(text("SELECT state, count(*) FROM exchange.message WHERE control_id LIKE :p GROUP BY state"),
                              {"p": f"{prefix}%"}).all())


def _diagnose(channel_id: str) -> dict:
    from smartcare.exchange import destinations
    from smartcare.platform import bus

    with session_scope() as s:
        outbox = dict(s.execute(text("SELECT relayed_at IS NULL, count(*) FROM platform.bus_message WHERE topic LIKE :t GROUP BY 1"),
                                {"t": destinations.topic(channel_id, "%")}).all())
        subs = s.execute(text("SELECT * FROM platform.bus_subscription WHERE consumer LIKE :c"),
                         {"c": destinations.consumer_prefix(channel_id) + "%"}).all()
        deliveries = dict(s.execute(text("SELECT state, count(*) FROM platform.bus_delivery WHERE consumer LIKE :c GROUP BY 1"),
                                    {"c": destinations.consumer_prefix(channel_id) + "%"}).all())
    info = None
    if bus.transport() == "nats":
        import asyncio

        import nats as nats_client

        from smartcare.platform.bus import nats

        async def consumer_info():
            nc = await nats_client.connect("nats://127.0.0.1:4222")
            try:
                ci = await nc.jetstream().consumer_info(nats.STREAM, nats.durable_name(destinations.consumer_name(channel_id, "event-log")))
                return {"pending": ci.num_pending, "ack_pending": ci.num_ack_pending, "redelivered": ci.num_redelivered,
                        "filter": ci.config.filter_subject, "ack_wait": ci.config.ack_wait, "deliver": str(ci.config.deliver_policy),
                        "delivered": ci.delivered.stream_seq}
            finally:
                await nc.close()

        info = asyncio.run(consumer_info())
    return {"outbox_unrelayed": outbox, "subs": subs, "deliveries": deliveries, "nats": info}


def _worker() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smartcare.cli", "worker", "--poll-seconds", "0.5"],
                            env={**os.environ, "SMARTCARE_LOG_LEVEL": "WARNING"},
                            stdout=subprocess.DEVNULL, stderr=tempfile.TemporaryFile())


def test_kill_the_worker_mid_routing_then_restart(bus_transport, live_server, hospital, residents):
    prefix = f"K{uuid.uuid4().hex[:8]}-"
    total = 600
    # A channel of its own, with a 1 s lease: what the killed worker held comes back within a second.
    config = channels.ChannelConfig(
        id=f"crash-{prefix[1:9]}", name="crash test", source="hl7v2", connectors=["mllp"], priority=5,
        senders=[hospital[0]], accept=["ADT^A04"], destinations=[channels.Destination(name="event-log", kind="log")],
        retry=channels.RetryPolicy(max_attempts=10, backoff_seconds=1, max_backoff_seconds=2))
    with session_scope() as s:
        channels.save(s, config, actor="test")
    time.sleep(2.1)  # the hub's channel cache
    batches = [[adt(hospital[0], f"{prefix}{i:04d}", residents[i % len(residents)]).encode()
                for i in range(start, total, 4)] for start in range(4)]
    with ThreadPoolExecutor(4) as pool:
        acks = [a for batch in pool.map(lambda b: mllp_exchange(live_server.mllp_port, b), batches) for a in batch]
    assert all(msa(a)[1] == "AA" for a in acks)
    assert _states(prefix) == {"accepted": total}  # stored and acknowledged, nothing routed yet

    worker = _worker()
    deadline = time.monotonic() + 60
    while True:  # kill it as soon as it has started routing, before it is done
        states = _states(prefix)
        if states.get("accepted", total) < total or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    at_kill = _states(prefix)

    worker = _worker()
    try:
        deadline = time.monotonic() + 90
        while _states(prefix).get("delivered", 0) < total:
            assert time.monotonic() < deadline, (_states(prefix), _diagnose(config.id))
            assert worker.poll() is None, "the restarted worker died"
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=20)
    with session_scope() as s:
        per_message = s.execute(text(
            "SELECT m.control_id, count(e.id) AS n FROM exchange.message m LEFT JOIN exchange.event_log e "
            "ON e.source_message_id = m.id WHERE m.control_id LIKE :p GROUP BY m.control_id"), {"p": f"{prefix}%"}).all()
    assert len(per_message) == total
    # every message: exactly its two events (patient.registered + encounter.recorded), once each
    assert {n for _, n in per_message} == {2}, sorted({n for _, n in per_message})
    assert at_kill.get("accepted", 0) < total, "the worker was killed before it routed anything; the test proved less"
    with session_scope() as s:
        channels.delete(s, config.id, actor="test")
