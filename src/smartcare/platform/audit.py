"""Append-only, hash-chained audit log.

Each entry stores the SHA-256 of the previous entry, and its own hash covers its content and that
previous hash, so changing or removing any entry breaks every link after it. The database refuses
UPDATE/DELETE/TRUNCATE (triggers in the migration); ``verify`` catches what a superuser does anyway.

Appends are serialised with a transaction-scoped advisory lock so the chain never forks. What needs the
previous entry (the id, the time, the previous hash, the hash) is filled in by the database in the same
statement, from a body this process encodes before it asks for the lock. The lock is taken, the entries
appended and the transaction committed in one round trip, so the lock lasts a statement and the commit and
never a moment of Python (a writer that held it while it waited for a core made every other writer wait):
``record`` queues its entry with the caller's transaction and the commit appends it (a savepoint rolled back
takes its entries along); ``record_apart`` appends in a transaction of its own, committed before it returns
(reads of personal data).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import event, select
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from smartcare.platform.db import side_engine
from smartcare.platform.masking import mask_mapping
from smartcare.platform.models import AuditLog

GENESIS = "0" * 64
_LOCK_KEY = 0x5C_A0D1  # any constant: one chain, one lock
#: stand-ins in an encoded body for what only the database knows under the lock (see ``_body``)
_ID, _AT, _PREV = "\x01I", "\x01T", "\x01P"
_PENDING: Final = "smartcare.audit_pending"  # in Session.info: (transaction, entry) to append at the commit
_QUEUED_BY: Final = "smartcare.audit_queued_by"  # in a connection's info: the session whose entries its commit appends

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


def _params(*, actor: str, action: str, target: str | None, detail: dict | None) -> dict:
    """An entry's statement parameters, personal data in ``detail`` masked, its body encoded (see ``_body``)."""
    clean = mask_mapping(detail or {})
    return {"actor": actor, "action": action, "target": target, "detail": Jsonb(clean),
            "body": _body(actor=actor, action=action, target=target, detail=clean)}


def _append(conn, params: dict):
    """Queue the lock and the append on a psycopg connection in pipeline mode; the cursor of the append."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    # a statement of its own after the lock: its snapshot sees the entry the previous holder committed
    return conn.execute(_APPEND, params)


def _entry(row: tuple, *, actor: str, action: str, target: str | None, detail: dict) -> AuditLog:
    id, at, prev_hash, hash = row
    return AuditLog(id=id, at=at, actor=actor, action=action, target=target, detail=detail, prev_hash=prev_hash,
                    hash=hash)


def record(session: Session, *, actor: str, action: str, target: str | None = None, detail: dict | None = None) -> None:
    """An entry appended with the caller's transaction, when it commits (see the module's docstring); personal
    data in ``detail`` is masked first. Rolled back with the transaction, or with the savepoint it was
    recorded in."""
    connection = session.connection()  # the transaction the entry belongs to has begun
    connection.info[_QUEUED_BY] = weakref.ref(session)
    recorded_in = session.get_nested_transaction() or session.get_transaction()
    params = _params(actor=actor, action=action, target=target, detail=detail)
    session.info.setdefault(_PENDING, []).append((recorded_in, params))


@event.listens_for(Engine, "commit")
def _append_pending(connection) -> None:
    """The real commit of a connection whose session queued entries (not a savepoint's release: that is no
    commit): lock, append and COMMIT in one round trip, after the session's last flush; the connection's own
    commit then finds nothing left to commit. A failed COMMIT is raised as SQLAlchemy raises one."""
    queued_by = connection.info.pop(_QUEUED_BY, None)
    session = queued_by() if queued_by is not None else None
    pending = session.info.pop(_PENDING, None) if session is not None else None
    if not pending:
        return
    conn = connection.connection.driver_connection
    try:
        with conn.pipeline():
            for _, params in pending:
                _append(conn, params)
            conn.execute("COMMIT")
    except psycopg.Error as exc:
        raise sqlalchemy_exc.DBAPIError.instance("COMMIT", None, exc, psycopg.Error) from exc


@event.listens_for(Engine, "rollback")
def _forget_queue(connection) -> None:
    connection.info.pop(_QUEUED_BY, None)


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction) -> None:
    """A rollback takes the entries recorded in the transaction (or savepoint) it ended, and in any inside it."""
    def within(t) -> bool:
        while t is not None:
            if t is previous_transaction:
                return True
            t = t.parent
        return False

    if session.info.get(_PENDING):
        session.info[_PENDING] = [(t, e) for t, e in session.info[_PENDING] if not within(t)]


@event.listens_for(Session, "after_transaction_end")
def _forget_pending(session: Session, transaction) -> None:
    if transaction.parent is None:  # the session's transaction ended: nothing it queued outlives it
        session.info.pop(_PENDING, None)


def record_apart(session: Session, *, actor: str, action: str, target: str | None = None,
                 detail: dict | None = None) -> AuditLog:
    """Append one entry in a transaction of its own, committed before this returns: lock, append and commit
    in one round trip. For what must be on record whatever becomes of the caller's transaction (a read of
    personal data, before it is sent)."""
    raw = side_engine().raw_connection()
    try:
        conn = raw.driver_connection
        with conn.pipeline():
            conn.execute("SET LOCAL lock_timeout = '10s'")  # a wait for the chain is never a hang
            params = _params(actor=actor, action=action, target=target, detail=detail)
            cur = _append(conn, params)
            conn.execute("COMMIT")
        return _entry(cur.fetchone(), actor=actor, action=action, target=target, detail=params["detail"].obj)
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
