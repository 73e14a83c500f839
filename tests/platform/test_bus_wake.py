"""``bus.wake``: readers of the bus are woken after a commit that published with no NOTIFY of its own — once for
a run of calls close together, not once a call."""

from __future__ import annotations

import time

import psycopg

from smartcare.platform import bus


def test_wake_ups_close_together_are_one_notify_on_the_transports_channel(database_url):
    channel, _ = bus.sql_publish_target()
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as listen:
        listen.execute(f"LISTEN {channel}")
        for _ in range(20):
            bus.wake()
        heard = list(listen.notifies(timeout=2.0))
        assert len(heard) == 1 and heard[0].payload == "wake"
        time.sleep(bus.WAKE_SECONDS * 2)
        bus.wake()  # a later commit is woken for again
        assert len(list(listen.notifies(timeout=2.0))) == 1
