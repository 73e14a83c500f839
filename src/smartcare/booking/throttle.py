"""Bot traffic at release time: each resident account's booking attempts go through a token bucket.
An attempt over it is refused (429, Retry-After). An account that keeps running into the bucket
(``booking_bot_strikes`` refusals within a minute) behaves like a bot: for ``booking_slow_lane_seconds``
its attempts go through the slow lane — one at a time per process, each after a delay — so scripts
that fire the instant slots open lose their head start to people, without being told to change tactics.

The buckets are per process: behind a load balancer that pins accounts (or with several processes)
an account gets the rate once per process, which the slow lane still catches.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from smartcare.exchange.ratelimit import RateLimiter
from smartcare.platform.errors import RateLimited
from smartcare.platform.settings import get_settings

STRIKE_WINDOW = 60.0


class Throttle:
    def __init__(self, *, rate: float, burst: int, strikes: int, slow_seconds: float, slow_delay: float):
        self.limiter = RateLimiter(rate, burst)
        self.strikes, self.slow_seconds, self.slow_delay = strikes, slow_seconds, slow_delay
        self._strikes: dict[str, deque[float]] = {}
        self._slow_until: dict[str, float] = {}
        self._lanes: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}  # one per event loop

    def is_slow(self, account: str) -> bool:
        return self._slow_until.get(account, 0.0) > time.monotonic()

    def _strike(self, account: str) -> None:
        now = time.monotonic()
        seen = self._strikes.setdefault(account, deque())
        seen.append(now)
        while seen and seen[0] < now - STRIKE_WINDOW:
            seen.popleft()
        if len(seen) >= self.strikes:
            self._slow_until[account] = now + self.slow_seconds
            seen.clear()
        if len(self._strikes) > 100_000:  # forget accounts that stopped
            self._strikes = {k: v for k, v in self._strikes.items() if v and v[-1] > now - STRIKE_WINDOW}

    async def admit(self, account: str) -> None:
        """Wait for the account's turn, or raise ``RateLimited``."""
        wait = self.limiter.check(account)
        if wait:
            self._strike(account)
            exc = RateLimited("too many booking attempts from this account", hint=f"retry in {wait:.1f} s")
            exc.retry_after = wait
            raise exc
        if self.is_slow(account):
            lane = self._lanes.setdefault(asyncio.get_running_loop(), asyncio.Semaphore(1))
            async with lane:
                await asyncio.sleep(self.slow_delay)

    def slow_accounts(self) -> list[str]:
        now = time.monotonic()
        return sorted(a for a, until in self._slow_until.items() if until > now)


def from_settings() -> Throttle:
    s = get_settings()
    return Throttle(rate=s.booking_rate_per_second, burst=s.booking_burst, strikes=s.booking_bot_strikes,
                    slow_seconds=s.booking_slow_lane_seconds, slow_delay=s.booking_slow_lane_delay_seconds)
