"""A value read from the database off the event loop and kept for a few seconds.

When it goes stale, one load runs and every caller waits for that one: a burst of messages arriving
together must not start a load each (64 MLLP senders did, every two seconds, with the channel list).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Refreshed(Generic[T]):
    """``load`` (a blocking function, run in a thread) kept ``ttl`` seconds."""

    def __init__(self, load: Callable[[], T], ttl: float):
        self.load, self.ttl = load, ttl
        self._value: T | None = None
        self._fresh_until = float("-inf")
        self._loading: asyncio.Task | None = None

    def peek(self) -> T | None:
        """The value while it is fresh, else None (then ``await get()``): no coroutine for a path taken
        thousands of times a second."""
        return self._value if time.monotonic() < self._fresh_until else None

    async def get(self) -> T:
        if time.monotonic() < self._fresh_until:
            return self._value
        loop = asyncio.get_running_loop()
        task = self._loading
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._loading = loop.create_task(self._reload())
        return await asyncio.shield(task)  # a caller given up on does not cancel the others' load

    async def _reload(self) -> T:
        value = await asyncio.to_thread(self.load)
        self._value, self._fresh_until = value, time.monotonic() + self.ttl
        return value
