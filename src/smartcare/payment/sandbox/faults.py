"""Faults a sandbox injects, seeded so that a simulation can be repeated.

Per request (each a probability from 0 to 1):
- ``error``: answer with the party's business error; nothing is done;
- ``timeout``: hold the request ``hang_seconds`` *before* doing it (the caller gives up; the work
  still happens afterwards, unless a reversal arrived first);
- ``lost_reply``: do the work, then hold the reply ``hang_seconds`` (the caller gives up; the work stands);
- ``duplicate``: the request is handled twice, as if the network delivered it twice; the party's
  idempotency must make the second answer the same as the first.
Per asynchronous notification (channels): ``notify_never``, ``notify_late`` (after up to
``late_seconds``), ``notify_twice``.

``PUT /_sandbox/faults`` replaces them at run time; ``GET`` reads them.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

REQUEST_FAULTS = ("error", "timeout", "lost_reply", "duplicate")
NOTIFY_FAULTS = ("notify_never", "notify_late", "notify_twice")


@dataclass
class Faults:
    error: float = 0.0
    timeout: float = 0.0
    lost_reply: float = 0.0
    duplicate: float = 0.0
    notify_never: float = 0.0
    notify_late: float = 0.0
    notify_twice: float = 0.0
    hang_seconds: float = 3.0
    late_seconds: float = 2.0
    seed: int | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    def roll(self, fault: str) -> bool:
        """Whether ``fault`` happens this time (and count it if it does)."""
        chance = getattr(self, fault)
        if chance <= 0:
            return False
        with self._lock:
            hit = self._random.random() < chance
            if hit:
                self.counts[fault] = self.counts.get(fault, 0) + 1
        return hit

    def late_delay(self) -> float:
        with self._lock:
            return self._random.uniform(0, self.late_seconds)

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "counts"} | {"counts": dict(self.counts)}


async def handle(faults: Faults, work: Callable[[], Awaitable], refuse: Callable[[], object]):
    """Run one request's ``work`` under the faults; ``refuse`` builds the party's business error."""
    if faults.roll("error"):
        return refuse()
    if faults.roll("timeout"):
        await asyncio.sleep(faults.hang_seconds)
    answer = await work()
    if faults.roll("duplicate"):
        answer = await work()
    if faults.roll("lost_reply"):
        await asyncio.sleep(faults.hang_seconds)
    return answer


class FaultsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error: float = Field(0.0, ge=0, le=1)
    timeout: float = Field(0.0, ge=0, le=1)
    lost_reply: float = Field(0.0, ge=0, le=1)
    duplicate: float = Field(0.0, ge=0, le=1)
    notify_never: float = Field(0.0, ge=0, le=1)
    notify_late: float = Field(0.0, ge=0, le=1)
    notify_twice: float = Field(0.0, ge=0, le=1)
    hang_seconds: float = Field(3.0, ge=0, le=600)
    late_seconds: float = Field(2.0, ge=0, le=3600)
    seed: int | None = None


def control_router(holder: dict) -> APIRouter:
    """``/_sandbox/faults`` for a sandbox whose current ``Faults`` is ``holder["faults"]``."""
    router = APIRouter(prefix="/_sandbox", tags=["sandbox"])

    @router.get("/faults")
    def read() -> dict:
        return holder["faults"].settings()

    @router.put("/faults")
    def replace(data: FaultsIn) -> dict:
        holder["faults"] = Faults(**data.model_dump())
        return holder["faults"].settings()

    return router


def faults_from_options(**options) -> Faults:
    """A ``Faults`` from CLI options of the same names (unknown names are refused by dataclass init)."""
    known = {f.name for f in fields(Faults)} - {"counts"}
    return Faults(**{k: v for k, v in options.items() if k in known and v is not None})
