"""The slots this process knows are full: in a release burst most attempts are for slots already gone, and
answering them "no slot" from memory keeps them off the database. Fullness is public, so nothing leaks.

A full slot is remembered until a place of it is free again, which the database says at once: the trigger
``booking.slot_freed`` (migration 0019) notifies ``booking_slot_freed`` with the slot's id when a place returns
or the capacity is raised, and a listener thread of each process forgets the slot. While the listener is not
listening (starting, or its connection lost) a slot is remembered only ``UNHEARD_SECONDS``, and when it listens
again everything remembered before is forgotten. A slot freed while an attempt was finding it full is not
remembered (``mark`` takes the time the attempt asked the database).
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from smartcare.platform.db import database_url
from smartcare.platform.loops import OnDemand

log = logging.getLogger(__name__)

CHANNEL = "booking_slot_freed"
#: How long a full slot is remembered while every freed place is heard of (a bound, not the mechanism).
HEARD_SECONDS = 60.0
#: … and while the listener is not listening.
UNHEARD_SECONDS = 1.0
#: A long-running process forgets slots it no longer needs beyond this many.
MAX_SLOTS = 50_000


class FullSlots:
    def __init__(self) -> None:
        self._until: dict[int, tuple[float, str]] = {}  # slot id → (monotonic time it is remembered until, hospital)
        self._freed: dict[int, float] = {}  # slot id → when this process last heard it was freed
        self._listening = threading.Event()
        self._listener = OnDemand(self._run, "booking-full-slots")

    def hospital_if_full(self, slot_id: int) -> str | None:
        """The slot's hospital if this process knows the slot is full now, else None."""
        hit = self._until.get(slot_id)
        return hit[1] if hit and hit[0] > time.monotonic() else None

    def mark(self, slot_id: int, hospital: str, *, asked: float) -> None:
        """The database found the slot full in an attempt that asked at monotonic time ``asked``."""
        self._listen()
        if self._freed.get(slot_id, 0.0) >= asked:
            return
        now = time.monotonic()
        if len(self._until) > MAX_SLOTS:
            for key in [k for k, (until, _) in list(self._until.items()) if until <= now]:  # a copy: threads write
                self._until.pop(key, None)
        self._until[slot_id] = (now + (HEARD_SECONDS if self._listening.is_set() else UNHEARD_SECONDS), hospital)

    def forget(self, slot_id: int) -> None:
        now = time.monotonic()
        if len(self._freed) > MAX_SLOTS:  # only an attempt under way needs to know; none takes a minute
            self._freed = {k: t for k, t in list(self._freed.items()) if t > now - HEARD_SECONDS}
        self._freed[slot_id] = now
        self._until.pop(slot_id, None)

    def clear(self) -> None:
        self._until.clear()

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    def _listen(self) -> None:
        self._listener.start()

    def _run(self) -> None:
        while True:
            try:
                dsn = database_url().replace("postgresql+psycopg://", "postgresql://", 1)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.clear()  # what was freed while nobody listened
                    self._listening.set()
                    for note in conn.notifies():
                        self.forget(int(note.payload))
            except Exception as exc:  # a lost connection: remember briefly until listening again
                log.warning("booking: not hearing of freed slots (%s); full slots are remembered %.0f s until then",
                            type(exc).__name__, UNHEARD_SECONDS)
            finally:
                self._listening.clear()
            time.sleep(2)


#: one per process
full_slots = FullSlots()
