"""Per-client token buckets: a hospital that floods the hub is slowed down, the others are not."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self) -> float:
        """Take one token; returns 0 when allowed, else the seconds to wait for one."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000):
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, client: str) -> float:
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:  # a full bucket is the same as a forgotten one
                now = time.monotonic()
                self._buckets = {k: b for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * b.rate < b.burst}
            bucket = self._buckets[client] = TokenBucket(self.rate, self.burst)
        return bucket.take()
