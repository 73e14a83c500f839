"""Append-only, hash-chained audit log.

Each entry stores the SHA-256 of the previous entry, and its own hash covers its content and that
previous hash, so changing or removing any entry breaks every link after it. The database refuses
UPDATE/DELETE/TRUNCATE (triggers in the migration); ``verify`` catches what a superuser does anyway.

Appends are serialised with a transaction-scoped advisory lock so the chain never forks; call
``record`` late in a transaction to keep that lock short.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg.types.json import Jsonb
from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.platform.db import driver
from smartcare.platform.masking import mask_mapping
from smartcare.platform.models import AuditLog

GENESIS = "0" * 64
_LOCK_KEY = 0x5C_A0D1  # any constant: one chain, one lock


def _entry_hash(*, id: int, at: datetime, actor: str, action: str, target: str | None, detail: dict, prev_hash: str) -> str:
    body = json.dumps(
        {
            "id": id,
            "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": actor,
            "action": action,
            "target": target,
            "detail": detail,
            "prev": prev_hash,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def record(session: Session, *, actor: str, action: str, target: str | None = None, detail: dict | None = None) -> AuditLog:
    """Append one entry in the caller's transaction. Personal data in ``detail`` is masked first.

    Three plain statements on the driver (lock; previous hash and next id; insert): audited writes are
    on hot paths (every EMPI link), and the lock is held from here to the caller's commit.
    """
    conn = driver(session)
    with conn.pipeline():  # one round trip; the SELECT starts (and takes its snapshot) after the lock is held
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        latest = conn.execute(
            "SELECT (SELECT hash FROM platform.audit_log ORDER BY id DESC LIMIT 1), nextval('platform.audit_log_id_seq')")
    prev, entry_id = latest.fetchone()
    at = datetime.now(UTC)
    clean = mask_mapping(detail or {})
    prev_hash = prev or GENESIS
    entry = AuditLog(
        id=entry_id, at=at, actor=actor, action=action, target=target, detail=clean, prev_hash=prev_hash,
        hash=_entry_hash(id=entry_id, at=at, actor=actor, action=action, target=target, detail=clean, prev_hash=prev_hash),
    )
    conn.execute(
        "INSERT INTO platform.audit_log (id, at, actor, action, target, detail, prev_hash, hash) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (entry_id, at, actor, action, target, Jsonb(clean), prev_hash, entry.hash))
    return entry


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
