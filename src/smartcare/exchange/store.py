"""The message store's write path: acknowledged only after commit, with group commit.

Every connector hands its parsed message to one ``GroupCommitter`` per process. The committer's
single writer takes everything that queued up while the previous commit was in flight and writes it
in one transaction (dedupe keys, messages, a NOTIFY for the router), then wakes each waiting sender.
A message's ACK is sent only after that commit, so an ACK means the message is durable; concurrent
arrivals share one WAL flush instead of paying one each, which is what makes ack-after-commit fast.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import struct
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter

import psycopg
from psycopg import adapt, pq

from smartcare.platform.db import database_url

log = logging.getLogger(__name__)

CHANNEL = "smartcare_exchange"


@dataclass(slots=True)  # not frozen: a frozen dataclass of this size costs 2 µs more to make, per message
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


_LIMITS = {"channel_id": 64, "sender": 100, "facility_code": 32, "connector": 16, "kind": 16, "message_type": 64,
           "content_type": 100}


def _text(value: str | None, limit: int | None = None) -> str | None:
    if value is None:
        return None
    value = value.replace("\x00", "")
    return value[:limit] if limit else value


def fit(m: NewMessage) -> NewMessage:
    """Make a message's metadata storable whatever the sender put in it (NUL bytes, over-long fields),
    so one odd message can never fail the batch it shares with other hospitals'. An over-long
    control id is replaced by its SHA-256, which still dedupes exact repeats."""
    if _all_fit([m]):
        return m
    control = _text(m.control_id)
    if control is not None and len(control) > 200:
        control = "sha256:" + hashlib.sha256(control.encode()).hexdigest()
    changes = {name: _text(getattr(m, name), limit) for name, limit in _LIMITS.items()}
    changes["control_id"] = control
    changes["error"] = _text(m.error, 4000)
    return dataclasses.replace(m, **changes)


_CHECKED = (*_LIMITS.items(), ("control_id", 200), ("error", 4000))


def _all_fit(messages: list[NewMessage]) -> bool:
    """Whether ``fit`` would leave every message as it is, checked a field at a time over all of them with
    C-level calls instead of a Python loop over every message's every field."""
    for name, limit in _CHECKED:
        values = list(filter(None, map(attrgetter(name), messages)))
        if values and (max(map(len, values)) > limit or "\x00" in "".join(values)):
            return False
    return True


def dedupe_key(m: NewMessage) -> str | None:
    """Failed messages are never deduplicated: the corrected resend must get through."""
    return f"{m.kind}:{m.control_id}" if m.control_id and m.state != "failed" else None


@dataclass(slots=True)  # not frozen: one for every message stored
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


class _TextArray(bytes):
    """A ``text[]`` already in PostgreSQL's binary array format (see ``_array``)."""


class _ByteaArray(bytes):
    """A ``bytea[]`` already in PostgreSQL's binary array format."""


class _TextArrayDumper(adapt.Dumper):
    format = pq.Format.BINARY
    oid = 1009  # text[]

    def dump(self, obj: bytes) -> bytes:
        return obj


class _ByteaArrayDumper(_TextArrayDumper):
    oid = 1001  # bytea[]


_NULL = (-1).to_bytes(4, "big", signed=True)


def _array(values: list, element_oid: int) -> bytes:
    """One-dimensional array in PostgreSQL's binary format (``array_recv``): ndim, has-nulls, element type,
    length, lower bound, then each element as its byte length (-1 for NULL) and its bytes. psycopg's list
    dumper finds a dumper per element; a batch of messages is 14 arrays of the same few types, so writing
    them directly takes a fraction of the CPU on the hub's busiest path."""
    parts = []
    has_null = 0
    for value in values:
        if value is None:
            parts.append(_NULL)
            has_null = 1
            continue
        data = value.encode() if isinstance(value, str) else value
        parts.append(len(data).to_bytes(4, "big"))
        parts.append(data)
    return struct.pack("!iiiii", 1, has_null, element_oid, len(values), 1) + b"".join(parts)


def _texts(values: list[str | None]) -> _TextArray:
    return _TextArray(_array(values, 25))


# One statement stores a whole batch: nonces (replays), dedupe keys, messages and the router's NOTIFY.
# In autocommit mode it is its own transaction, so a batch costs one round trip and one WAL flush.
# The arrays go in binary, written by ``_array`` (``text[]`` cast to the columns' types, ``bytea[]``): payloads
# are not hex-encoded and decoded again.
# The dedupe key (``message_key.control_id``) is "<kind>:<control id>", so an HL7 control id and a batch
# record id that happen to be equal never collide. Rows come back tagged: 'n' = (position, new id, whether its
# dedupe key was new) of every non-replayed input, 'e' = the earlier message of a key seen before, 't' = the
# transaction's time (once: formatting it for every row showed) and whether the router was woken (the NOTIFY's CTE
# runs only when read; the INSERTs' run anyway).
_STORE_BATCH = """
WITH input AS (
    SELECT * FROM unnest(%(sender)b::varchar[], %(dkey)b::varchar[], %(control)b::varchar[], %(state)b::varchar[],
                         %(nclient)b::varchar[],
                         %(nonce)b::varchar[], %(channel)b::varchar[], %(facility)b::varchar[], %(connector)b::varchar[],
                         %(kind)b::varchar[], %(mtype)b::varchar[], %(error)b::text[], %(raw)b::bytea[], %(ctype)b::varchar[])
        WITH ORDINALITY AS u(sender, dkey, control_id, state, nclient, nonce, channel_id, facility_code, connector, kind,
                              message_type, error, raw, content_type, pos)
),
nonce_first AS (
    SELECT DISTINCT ON (nclient, nonce) pos, nclient, nonce FROM input WHERE nonce IS NOT NULL ORDER BY nclient, nonce, pos
),
fresh_nonce AS (
    INSERT INTO platform.request_nonce (client_id, nonce) SELECT nclient, nonce FROM nonce_first
    ON CONFLICT DO NOTHING RETURNING client_id, nonce
),
numbered AS MATERIALIZED (
    SELECT i.*, nextval('exchange.message_id_seq') AS id FROM input i
    WHERE i.nonce IS NULL OR i.pos IN (SELECT nf.pos FROM nonce_first nf JOIN fresh_nonce f
                                       ON f.client_id = nf.nclient AND f.nonce = nf.nonce)
),
key_first AS MATERIALIZED (
    SELECT DISTINCT ON (sender, dkey) id, sender, dkey FROM numbered
    WHERE dkey IS NOT NULL ORDER BY sender, dkey, pos
),
new_key AS (
    INSERT INTO exchange.message_key (sender, control_id, message_id, received_at)
    SELECT sender, dkey, id, now() FROM key_first ON CONFLICT DO NOTHING RETURNING message_id
),
to_store AS MATERIALIZED (
    SELECT n.* FROM numbered n
    WHERE n.dkey IS NULL OR n.id IN (SELECT message_id FROM new_key)
),
stored AS (
    INSERT INTO exchange.message (id, received_at, channel_id, sender, facility_code, connector, kind, message_type,
                                  control_id, state, error, raw, size, content_type, processed_at)
    SELECT id, now(), channel_id, sender, facility_code, connector, kind, message_type, control_id, state, error, raw,
           length(raw), content_type, CASE WHEN state = 'accepted' THEN NULL ELSE now() END
    FROM to_store RETURNING id
),
woken AS (
    SELECT pg_notify('smartcare_exchange', '') FROM (SELECT 1 FROM to_store WHERE state = 'accepted' LIMIT 1) any_new
)
SELECT 'n' AS tag, pos, id, NULL::varchar AS sender, NULL::varchar AS control_id, NULL::timestamptz AS at,
       NULL::varchar AS state, id IN (SELECT message_id FROM new_key) AS new_key FROM numbered
UNION ALL SELECT 'e', NULL, k.message_id, k.sender, k.control_id, k.received_at, coalesce(m.state, 'accepted'), NULL
    FROM key_first kf JOIN exchange.message_key k ON k.sender = kf.sender AND k.control_id = kf.dkey
    LEFT JOIN exchange.message m ON m.received_at = k.received_at AND m.id = k.message_id
    WHERE kf.id NOT IN (SELECT message_id FROM new_key)
UNION ALL SELECT 't', (SELECT count(*) FROM woken), NULL, NULL, NULL, now(), NULL, NULL
"""
_KEY_LOOKUP = """
SELECT k.sender, k.control_id, k.message_id, k.received_at, coalesce(m.state, 'accepted')
FROM unnest(%s::varchar[], %s::varchar[]) AS q(sender, control_id)
JOIN exchange.message_key k USING (sender, control_id)
LEFT JOIN exchange.message m ON m.received_at = k.received_at AND m.id = k.message_id
"""


class GroupCommitter:
    """One writer, many waiters: the future ``submit`` returns is set once the message is committed (or fails)."""

    #: turns of the event loop a batch waits for more messages while more keep arriving (each turn reads the
    #: sockets that are ready): without it a batch often left with one message and the rest paid a commit
    #: of their own a moment later
    GATHER_TURNS = 3

    def __init__(self, dsn: str | None = None, *, max_batch: int = 500, max_batch_bytes: int = 64 * 1024 * 1024):
        self.dsn = dsn or database_url().replace("postgresql+psycopg://", "postgresql://", 1)
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        #: (message or bad frame, its future) waiting for the next batch; a plain deque and one wake-up
        #: future for the writer: asyncio.Queue's per-item bookkeeping showed on the hub's busiest path
        self._queue: deque[tuple[NewMessage | NewBadFrame, asyncio.Future]] = deque()
        self._arrived: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._conn: psycopg.AsyncConnection | None = None

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

    def submit(self, message: NewMessage) -> asyncio.Future[Stored]:
        """The message's future, set once its batch is committed (a plain future, not a coroutine: one
        less frame on every message's way)."""
        return self._enqueue(message)

    def submit_bad_frame(self, frame: NewBadFrame) -> asyncio.Future[int]:
        return self._enqueue(frame)

    def _enqueue(self, item: NewMessage | NewBadFrame) -> asyncio.Future:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="exchange-group-commit")
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        return future

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            # A statement timeout and TCP keepalives: a dead database connection fails the batch
            # (senders get AE and resend) instead of hanging every connector.
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, options="-c statement_timeout=30000", keepalives=1, keepalives_idle=30)
            self._conn.adapters.register_dumper(_TextArray, _TextArrayDumper)
            self._conn.adapters.register_dumper(_ByteaArray, _ByteaArrayDumper)
        return self._conn

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                self._arrived = asyncio.get_running_loop().create_future()
                await self._arrived
                continue
            for _ in range(self.GATHER_TURNS):  # what the sockets already hold rides along: senders answered
                before = len(queue)             # by the last commit send their next messages together
                await asyncio.sleep(0)
                if len(queue) == before or len(queue) >= self.max_batch:
                    break
            batch = [queue.popleft()]
            size = len(getattr(batch[0][0], "raw", b""))
            while queue and len(batch) < self.max_batch and size < self.max_batch_bytes:
                batch.append(queue.popleft())
                size += len(getattr(batch[-1][0], "raw", b""))
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as exc:
                # Something in the batch was refused: store the messages one by one, so that only the
                # bad one fails and the other hospitals' messages still get their ACK.
                log.warning("message store batch of %d failed (%s); storing one by one", len(batch), type(exc).__name__)
                await self._reset()
                for item, future in batch:
                    try:
                        result = (await self._write([item]))[0]
                    except Exception as one_exc:
                        await self._reset()
                        if not future.done():
                            future.set_exception(one_exc)
                    else:
                        if not future.done():
                            future.set_result(result)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _reset(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _write(self, items: list) -> list:
        conn = await self._connection()
        results: list = [None] * len(items)
        msg_at = [i for i, item in enumerate(items) if isinstance(item, NewMessage)]
        if msg_at:
            for pos, result in zip(msg_at, await self._store_messages(conn, [items[i] for i in msg_at]), strict=True):
                results[pos] = result
        for pos, item in enumerate(items):  # after the messages are committed: a failure here is the frame's alone
            if isinstance(item, NewBadFrame):
                try:
                    row = await (await conn.execute(
                        "INSERT INTO exchange.bad_frame (connector, peer, problem, raw, size) VALUES (%s, %s, %s, %s, %s) "
                        "RETURNING id", (item.connector, _text(item.peer, 100), _text(item.problem), item.raw,
                                         len(item.raw)))).fetchone()
                    results[pos] = row[0]
                except Exception as exc:
                    results[pos] = exc
        return results

    @staticmethod
    async def _store_messages(conn: psycopg.AsyncConnection, messages: list[NewMessage]) -> list[Stored]:
        if not _all_fit(messages):  # seldom: an odd message among them
            messages = [fit(m) for m in messages]
        dkeys = [dedupe_key(m) for m in messages]
        params = {
            "sender": _texts([m.sender for m in messages]), "dkey": _texts(dkeys),
            "control": _texts([m.control_id for m in messages]), "state": _texts([m.state for m in messages]),
            "nclient": _texts([m.nonce[0] if m.nonce else None for m in messages]),
            "nonce": _texts([m.nonce[1] if m.nonce else None for m in messages]),
            "channel": _texts([m.channel_id for m in messages]), "facility": _texts([m.facility_code for m in messages]),
            "connector": _texts([m.connector for m in messages]), "kind": _texts([m.kind for m in messages]),
            "mtype": _texts([m.message_type for m in messages]), "error": _texts([m.error for m in messages]),
            "raw": _ByteaArray(_array([m.raw for m in messages], 17)),
            "ctype": _texts([m.content_type for m in messages]),
        }
        rows = await (await conn.execute(_STORE_BATCH, params)).fetchall()
        ids: dict[int, int] = {}
        new_keys: set[int] = set()
        earlier: dict[tuple[str, str], Stored] = {}
        now = None
        for tag, pos, mid, sender, control_id, at, state, key_is_new in rows:
            if tag == "n":
                ids[pos - 1] = mid
                if key_is_new:
                    new_keys.add(mid)
            elif tag == "e":
                earlier[(sender, control_id)] = Stored(mid, at, state, True)
            else:
                now = at
        results: list[Stored] = []
        first_of: dict[tuple[str, str], int] = {}
        unresolved = []
        for i, (m, dkey) in enumerate(zip(messages, dkeys, strict=True)):
            mid = ids.get(i)
            if mid is None:
                results.append(Stored(0, now, "replay", False))
                continue
            if dkey is None:
                results.append(Stored(mid, now, m.state, False))
                continue
            key = (m.sender, dkey)
            first = first_of.setdefault(key, i)
            if first == i and mid in new_keys:  # nearly every message: the first with its key
                results.append(Stored(mid, now, m.state, False))
            elif ids[first] in new_keys:
                results.append(Stored(ids[first], now, messages[first].state, True))
            elif key in earlier:
                results.append(earlier[key])
            else:  # taken by another process after this statement's snapshot: look it up now
                results.append(None)
                unresolved.append((i, key))
        if unresolved:
            keys = list({k for _, k in unresolved})
            found = {(s_, c): Stored(mid, at, st, True) for s_, c, mid, at, st in await (await conn.execute(
                _KEY_LOOKUP, ([k[0] for k in keys], [k[1] for k in keys]))).fetchall()}
            for i, key in unresolved:
                results[i] = found[key]
        return results
