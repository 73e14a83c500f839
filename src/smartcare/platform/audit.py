"""Append-only, hash-chained audit log.

Each entry stores the SHA-256 of the previous entry, and its own hash covers its content and that
previous hash, so changing or removing any entry breaks every link after it. The database refuses
UPDATE/DELETE/TRUNCATE (triggers in the migration); ``verify`` catches what a superuser does anyway.

Appends are serialised with a transaction-scoped advisory lock so the chain never forks. What needs the
previous entry (the id, the time, the previous hash, the hash) is filled in by the database in the same
statement, from a body this process encodes before it asks for the lock: no Python of the append runs
under it. ``record`` appends in the caller's transaction (call it late: the lock is held to the caller's
commit); ``record_apart`` in a transaction of its own, lock, append and commit in one round trip, so its
lock lasts one statement and the commit, never while Python waits for its turn (the GIL) in the middle
(reads of personal data).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from psycopg.types.json import Jsonb
from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.platform.db import driver, side_engine
from smartcare.platform.masking import mask_mapping
from smartcare.platform.models import AuditLog

GENESIS = "0" * 64
_LOCK_KEY = 0x5C_A0D1  # any constant: one chain, one lock
#: stand-ins in an encoded body for what only the database knows under the lock (see ``_body``)
_ID, _AT, _PREV = "\x01I", "\x01T", "\x01P"
_HELD: Final = "smartcare.audit_lock_held"  # in Session.info: the transaction that holds the chain's lock

_APPEND = f"""
    INSERT INTO platform.audit_log (id, at, actor, action, target, detail, prev_hash, hash)
    SELECT n.id, n.at, %(actor)s, %(action)s, %(target)s, %(detail)s, n.prev,
           encode(sha256(convert_to(replace(replace(replace(%(body)s, E'\\x01I', n.id::text), E'\\x01P', n.prev),
                                            E'\\x01T', to_char(n.at AT TIME ZONE 'UTC',
                                                                 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')),
                                    'UTF8')), 'hex')
    FROM (SELECT nextval('platform.audit_log_id_seq') AS id, clock_timestamp() AS at,
                 coalesce((SELECT hash FROM platform.audit_log ORDER BY id DESC LIMIT 1), '{GENESIS}') AS prev) n
    RETURNING id, at, prev_hash, hash"""


def _canonical(fields: dict) -> str:
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _entry_hash(*, id: int, at: datetime, actor: str, action: str, target: str | None, detail: dict, prev_hash: str) -> str:
    body = _canonical({"id": id, "at": at.astimezone(UTC).isoformat(timespec="microseconds"), "actor": actor,
                       "action": action, "target": target, "detail": detail, "prev": prev_hash})
    return hashlib.sha256(body.encode()).hexdigest()


def _body(*, actor: str, action: str, target: str | None, detail: dict) -> str:
    """The text ``_entry_hash`` hashes (keys in sorted order), with raw stand-ins for the time, the id (a
    number) and the previous hash: every value is encoded apart, and encoding escapes control characters,
    so a stand-in is found only where it is put here, whatever the values hold."""
    return (f'{{"action":{_canonical(action)},"actor":{_canonical(actor)},"at":"{_AT}",'
            f'"detail":{_canonical(detail)},"id":{_ID},"prev":"{_PREV}","target":{_canonical(target)}}}')


def _append(conn, *, actor: str, action: str, target: str | None, detail: dict | None) -> tuple[tuple, dict]:
    """Queue the lock and the append on a psycopg connection in pipeline mode; the cursor of the append."""
    clean = mask_mapping(detail or {})
    params = {"actor": actor, "action": action, "target": target, "detail": Jsonb(clean),
              "body": _body(actor=actor, action=action, target=target, detail=clean)}
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    # a statement of its own after the lock: its snapshot sees the entry the previous holder committed
    return conn.execute(_APPEND, params), clean


def _entry(row: tuple, *, actor: str, action: str, target: str | None, detail: dict) -> AuditLog:
    id, at, prev_hash, hash = row
    return AuditLog(id=id, at=at, actor=actor, action=action, target=target, detail=detail, prev_hash=prev_hash,
                    hash=hash)


def record(session: Session, *, actor: str, action: str, target: str | None = None, detail: dict | None = None) -> AuditLog:
    """Append one entry in the caller's transaction. Personal data in ``detail`` is masked first.

    One round trip on the driver (audited writes are on hot paths: every EMPI link); the lock is held from
    here to the caller's commit.
    """
    conn = driver(session)
    with conn.pipeline():
        cur, clean = _append(conn, actor=actor, action=action, target=target, detail=detail)
    session.info[_HELD] = session.get_transaction()
    return _entry(cur.fetchone(), actor=actor, action=action, target=target, detail=clean)


def record_apart(session: Session, *, actor: str, action: str, target: str | None = None,
                 detail: dict | None = None) -> AuditLog:
    """Append one entry in a transaction of its own, committed before this returns: lock, append and commit
    in one round trip. For what must be on record whatever becomes of the caller's transaction (a read of
    personal data, before it is sent). ``session`` is the caller's: if its transaction already holds the
    chain's lock, waiting for it here would never end, so that is refused."""
    if session.info.get(_HELD) is not None and session.info[_HELD] is session.get_transaction():
        raise RuntimeError("this transaction holds the audit chain's lock: record in it, not apart")
    raw = side_engine().raw_connection()
    try:
        conn = raw.driver_connection
        with conn.pipeline():
            # a wait PostgreSQL cannot see as a deadlock (the caller's transaction, holding what the lock's
            # holder may wait for, waits for this one in Python) becomes an error instead of a hang
            conn.execute("SET LOCAL lock_timeout = '10s'")
            cur, clean = _append(conn, actor=actor, action=action, target=target, detail=detail)
            conn.execute("COMMIT")
        return _entry(cur.fetchone(), actor=actor, action=action, target=target, detail=clean)
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()  # back to the pool


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    bad_id: int | None = None
    problem: str | None = None


def _entries(session: Session, batch: int = 5000) -> Iterator[AuditLog]:
    last = 0
    while True:
        rows = session.scalars(select(AuditLog).where(AuditLog.id > last).order_by(AuditLog.id).limit(batch)).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id
        session.expunge_all()


def verify(session: Session) -> VerifyResult:
    """Walk the chain from the start; report the first entry whose content or link does not hold."""
    prev_hash = GENESIS
    checked = 0
    for e in _entries(session):
        if e.prev_hash != prev_hash:
            return VerifyResult(False, checked, e.id, "its prev_hash does not match the entry before it (an entry was removed or changed)")
        expected = _entry_hash(id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target, detail=e.detail, prev_hash=e.prev_hash)
        if e.hash != expected:
            return VerifyResult(False, checked, e.id, "its content does not match its hash (the entry was modified)")
        prev_hash = e.hash
        checked += 1
    return VerifyResult(True, checked)


def entries(session: Session, *, targets: list[str], actions: tuple[str, ...], limit: int = 100) -> list[AuditLog]:
    """The entries about some targets, of some actions, newest first (indexed on target)."""
    return list(session.scalars(select(AuditLog).where(AuditLog.target.in_(targets), AuditLog.action.in_(actions))
                                .order_by(AuditLog.id.desc()).limit(limit)))
