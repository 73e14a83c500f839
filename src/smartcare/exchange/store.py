"""The message store's write path: acknowledged only after commit, with group commit.

Every connector hands its parsed message to one ``GroupCommitter`` per process. The committer's
single writer takes everything that queued up while the previous commit was in flight and writes it
in one transaction (dedupe keys, messages, a NOTIFY for the router), then wakes each waiting sender.
A message's ACK is sent only after that commit, so an ACK means the message is durable; concurrent
arrivals share one WAL flush instead of paying one each, which is what makes ack-after-commit fast.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg

from smartcare.platform.db import database_url

log = logging.getLogger(__name__)

CHANNEL = "smartcare_exchange"


@dataclass(frozen=True, slots=True)
class NewMessage:
    channel_id: str
    sender: str
    facility_code: str | None
    connector: str
    kind: str
    message_type: str | None
    control_id: str | None
    state: str  # accepted | filtered | failed
    raw: bytes
    content_type: str | None
    error: str | None = None
    #: (client id, nonce) of a signed HTTP request: recorded in the same transaction as the message,
    #: so a replayed request is refused atomically (state ``replay``) without a separate commit.
    nonce: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    message_id: int
    received_at: datetime
    state: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class NewBadFrame:
    connector: str
    peer: str
    problem: str
    raw: bytes


_NONCE_INSERT = """
INSERT INTO platform.request_nonce (client_id, nonce)
SELECT * FROM unnest(%s::varchar[], %s::varchar[]) ON CONFLICT DO NOTHING RETURNING client_id, nonce
"""
_KEY_INSERT = """
INSERT INTO exchange.message_key (sender, control_id, message_id, received_at)
SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::bigint[], %s::timestamptz[])
ON CONFLICT DO NOTHING RETURNING message_id
"""
_KEY_LOOKUP = """
SELECT k.sender, k.control_id, k.message_id, k.received_at, coalesce(m.state, 'accepted')
FROM unnest(%s::varchar[], %s::varchar[]) AS q(sender, control_id)
JOIN exchange.message_key k USING (sender, control_id)
LEFT JOIN exchange.message m ON m.received_at = k.received_at AND m.id = k.message_id
"""
_MESSAGE_INSERT = """
INSERT INTO exchange.message (id, received_at, channel_id, sender, facility_code, connector, kind, message_type,
                              control_id, state, error, raw, size, content_type, processed_at)
SELECT u.id, u.received_at, u.channel_id, u.sender, u.facility_code, u.connector, u.kind, u.message_type, u.control_id,
       u.state, u.error, u.raw, length(u.raw), u.content_type,
       CASE WHEN u.state = 'accepted' THEN NULL ELSE u.received_at END
FROM unnest(%s::bigint[], %s::timestamptz[], %s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[],
            %s::varchar[], %s::varchar[], %s::varchar[], %s::text[], %s::bytea[], %s::varchar[])
     AS u(id, received_at, channel_id, sender, facility_code, connector, kind, message_type, control_id, state, error, raw,
          content_type)
"""


class GroupCommitter:
    """One writer, many waiters. ``submit`` returns once the message is committed (or raises)."""

    def __init__(self, dsn: str | None = None, *, max_batch: int = 500):
        self.dsn = dsn or database_url().replace("postgresql+psycopg://", "postgresql://", 1)
        self.max_batch = max_batch
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._conn: psycopg.AsyncConnection | None = None
        self.batches = 0
        self.messages = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="exchange-group-commit")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def submit(self, message: NewMessage) -> Stored:
        await self.start()
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((message, future))
        return await future

    async def submit_bad_frame(self, frame: NewBadFrame) -> int:
        await self.start()
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((frame, future))
        return await future

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.dsn)
        return self._conn

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as exc:  # the whole batch failed: nobody gets an ACK, everyone may retry
                log.error("message store write failed for %d message(s): %s", len(batch), exc)
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _write(self, items: list) -> list:
        conn = await self._connection()
        msg_at = [i for i, item in enumerate(items) if isinstance(item, NewMessage)]
        messages: list[NewMessage] = [items[i] for i in msg_at]
        results: list = [None] * len(items)
        async with conn.transaction():
            cur = conn.cursor()
            now = (await (await cur.execute("SELECT now()")).fetchone())[0]
            if messages:
                replayed = await self._replays(cur, messages)
                kept = [i for i in range(len(messages)) if i not in replayed]
                stored = iter(await self._write_messages(cur, [messages[i] for i in kept], now) if kept else ())
                for i, pos in enumerate(msg_at):
                    results[pos] = Stored(0, now, "replay", False) if i in replayed else next(stored)
            for pos, item in enumerate(items):
                if isinstance(item, NewBadFrame):
                    row = await (await cur.execute(
                        "INSERT INTO exchange.bad_frame (connector, peer, problem, raw, size) VALUES (%s, %s, %s, %s, %s) "
                        "RETURNING id", (item.connector, item.peer, item.problem, item.raw, len(item.raw)))).fetchone()
                    results[pos] = row[0]
        self.batches += 1
        self.messages += len(messages)
        return results

    @staticmethod
    async def _replays(cur, messages: list[NewMessage]) -> set[int]:
        """Record the nonces of signed requests; a nonce seen before, or twice in this batch, is a replay."""
        signed = [(i, m.nonce) for i, m in enumerate(messages) if m.nonce]
        if not signed:
            return set()
        rows = await (await cur.execute(_NONCE_INSERT, ([n[0] for _, n in signed], [n[1] for _, n in signed]))).fetchall()
        fresh = {tuple(r) for r in rows}
        replayed, claimed = set(), set()
        for i, nonce in signed:
            if nonce in fresh and nonce not in claimed:
                claimed.add(nonce)
            else:
                replayed.add(i)
        return replayed

    @staticmethod
    async def _write_messages(cur, messages: list[NewMessage], now: datetime) -> list[Stored]:
        ids = [r[0] for r in await (await cur.execute(
            "SELECT nextval('exchange.message_id_seq') FROM generate_series(1, %s)", (len(messages),))).fetchall()]
        keys = [(m.sender, m.control_id) if m.control_id and m.state != "failed" else None for m in messages]
        first_of: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            if key is not None:
                first_of.setdefault(key, i)
        firsts = sorted(first_of.values())
        inserted: set[int] = set()
        if firsts:
            rows = await (await cur.execute(_KEY_INSERT, (
                [messages[i].sender for i in firsts], [messages[i].control_id for i in firsts],
                [ids[i] for i in firsts], [now] * len(firsts)))).fetchall()
            inserted = {r[0] for r in rows}
        earlier: dict[tuple[str, str], Stored] = {}
        seen_before = [i for i in firsts if ids[i] not in inserted]
        if seen_before:
            for sender, control_id, mid, at, state in await (await cur.execute(_KEY_LOOKUP, (
                    [messages[i].sender for i in seen_before], [messages[i].control_id for i in seen_before]))).fetchall():
                earlier[(sender, control_id)] = Stored(mid, at, state, True)
        results: list[Stored] = []
        new: list[int] = []
        for i, (m, key) in enumerate(zip(messages, keys, strict=True)):
            if key is None or i == first_of[key] and ids[i] in inserted:
                new.append(i)
                results.append(Stored(ids[i], now, m.state, False))
            elif key in earlier:  # sent before, in an earlier batch
                results.append(earlier[key])
            else:  # a repeat inside this batch
                j = first_of[key]
                results.append(Stored(ids[j], now, messages[j].state, True))
        if new:
            columns = zip(*[(ids[i], now, m.channel_id, m.sender, m.facility_code, m.connector, m.kind, m.message_type,
                             m.control_id, m.state, m.error, m.raw, m.content_type)
                            for i, m in ((i, messages[i]) for i in new)], strict=True)
            await cur.execute(_MESSAGE_INSERT, [list(c) for c in columns])
            if any(messages[i].state == "accepted" for i in new):
                await cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return results
