"""Background loops: one that wakes on PostgreSQL NOTIFY and falls back to polling (the bus worker and the
exchange router both drain a table queue whenever something new is committed, and survive a lost connection by
reconnecting); and a daemon thread a process starts the first time it needs it (``OnDemand``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg

from smartcare.platform.db import database_url

log = logging.getLogger(__name__)


def listen_and_drain(channel: str, drain: Callable[[], int], *, stopping: threading.Event, poll_seconds: float) -> None:
    """Call ``drain`` until it returns 0, then wait for a NOTIFY on ``channel`` or ``poll_seconds``; repeat until stopped."""
    dsn = database_url().replace("postgresql+psycopg://", "postgresql://", 1)
    while not stopping.is_set():
        try:
            with psycopg.connect(dsn, autocommit=True) as listen:
                listen.execute(f"LISTEN {channel}")
                woken, last_run = True, 0.0
                while not stopping.is_set():
                    if woken or time.monotonic() - last_run >= poll_seconds:
                        while drain() and not stopping.is_set():
                            pass
                        last_run = time.monotonic()
                    # short waits so that a stop is honoured within half a second
                    woken = any(True for _ in listen.notifies(timeout=0.5, stop_after=1))
        except psycopg.OperationalError as exc:
            log.warning("%s loop lost its database connection (%s); retrying in 5 s", channel, exc)
            stopping.wait(5)
        except Exception:  # a background loop must outlive any one bad batch or database hiccup
            log.exception("%s loop failed; retrying in 5 s", channel)
            stopping.wait(5)


class OnDemand:
    """A daemon thread running ``target``, started by the first ``start`` (concurrent first callers start one)."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._target, self._name = target, name
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def start(self) -> None:
        if self._thread is None:
            with self._starting:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._target, name=self._name, daemon=True)
                    self._thread.start()
