"""The audit log is append-only in the database and its hash chain exposes tampering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from smartcare.platform import audit
from smartcare.platform.db import session_scope


def _entries(*actions: str) -> list:
    """The committed entries of these actions, in chain order."""
    from smartcare.platform.models import AuditLog

    with session_scope() as s:
        rows = s.query(AuditLog).filter(AuditLog.action.in_(actions)).order_by(AuditLog.id).all()
        s.expunge_all()
    return rows


def _action(name: str) -> str:
    return f"test.{name}.{uuid.uuid4().hex[:8]}"


def _verify_cli() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smartcare.cli", "audit", "verify"], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)


def test_entries_chain_and_mask_personal_data(database_url):
    one, two = _action("one"), _action("two")
    with session_scope() as s:
        audit.record(s, actor="tester", action=one, target="x:1", detail={"id_number": "11010519491231002X"})
        audit.record(s, actor="tester", action=two, detail={"phone": "13812348000", "n": 2})
    first, second = _entries(one, two)
    assert second.prev_hash == first.hash
    assert first.detail["id_number"] != "11010519491231002X" and first.detail["id_number"].endswith("002X")
    assert second.detail["phone"] == "138****8000"
    with session_scope() as s:
        assert audit.verify(s).ok


@pytest.mark.parametrize("statement", [
    "UPDATE platform.audit_log SET actor = 'mallory'",
    "DELETE FROM platform.audit_log",
    "TRUNCATE platform.audit_log",
])
def test_database_refuses_changes(database_url, statement):
    with session_scope() as s:
        audit.record(s, actor="tester", action="test.refuse")
    with pytest.raises(DBAPIError, match="append-only"), session_scope() as s:
        s.execute(text(statement))


def test_verify_names_the_first_tampered_entry(database_url):
    actions = [_action(f"tamper.{i}") for i in range(3)]
    with session_scope() as s:
        for i, action in enumerate(actions):
            audit.record(s, actor="tester", action=action, detail={"i": i})
    victim = _entries(*actions)[1]
    assert _verify_cli().returncode == 0

    # A superuser disables the trigger and edits a row directly in PostgreSQL.
    with session_scope() as s:
        s.execute(text("ALTER TABLE platform.audit_log DISABLE TRIGGER audit_log_no_update_delete"))
        s.execute(text("UPDATE platform.audit_log SET detail = '{\"i\": 99}' WHERE id = :id"), {"id": victim.id})
    try:
        result = _verify_cli()
        assert result.returncode == 1
        assert f"entry {victim.id}" in result.stderr
        assert "modified" in result.stderr
    finally:
        with session_scope() as s:
            s.execute(text("UPDATE platform.audit_log SET detail = '{\"i\": 1}' WHERE id = :id"), {"id": victim.id})
            s.execute(text("ALTER TABLE platform.audit_log ENABLE TRIGGER audit_log_no_update_delete"))
    assert _verify_cli().returncode == 0


def test_verify_detects_a_removed_entry(database_url):
    actions = [_action(f"remove.{i}") for i in range(3)]
    with session_scope() as s:
        for action in actions:
            audit.record(s, actor="tester", action=action)
    entries = _entries(*actions)
    removed = entries[1]
    with session_scope() as s:
        row = s.execute(text("SELECT * FROM platform.audit_log WHERE id = :id"), {"id": removed.id}).mappings().one()
        s.execute(text("ALTER TABLE platform.audit_log DISABLE TRIGGER audit_log_no_update_delete"))
        s.execute(text("DELETE FROM platform.audit_log WHERE id = :id"), {"id": removed.id})
    try:
        with session_scope() as s:
            result = audit.verify(s)
        assert not result.ok and result.bad_id == entries[2].id and "removed" in result.problem
    finally:
        with session_scope() as s:
            s.execute(text("INSERT INTO platform.audit_log (id, at, actor, action, target, detail, prev_hash, hash) "
                           "VALUES (:id, :at, :actor, :action, :target, CAST(:detail AS jsonb), :prev_hash, :hash)"),
                      {**row, "detail": json.dumps(row["detail"])})
            s.execute(text("ALTER TABLE platform.audit_log ENABLE TRIGGER audit_log_no_update_delete"))
    with session_scope() as s:
        assert audit.verify(s).ok


AWKWARD = {"name": "阿不都·热合曼", "quote": 'say "hi"', "backslash": "C:\\dir\\x01I", "control": "a\x01Ib\x01Pc\x01T",
           "escaped": "\\u0001I \\u0001P", "nested": {"list": [1, 2.5, None, True], "empty": {}}, "big": 10**15}


def test_the_database_hashes_exactly_what_verify_recomputes(database_url):
    """The hash is computed in PostgreSQL from a body encoded here; verify recomputes it in Python. Values
    that look like the body's stand-ins, quotes, backslashes, control characters and Chinese must not matter."""
    action = _action("awkward")
    with session_scope() as s:
        audit.record(s, actor="测试员", action=action, target=None, detail=AWKWARD)
    [inside] = _entries(action)
    with session_scope() as s:
        apart = audit.record_apart(s, actor="tester", action="test.awkward.apart", target="x:\x01P", detail=AWKWARD)
    for e in (inside, apart):
        assert e.hash == audit._entry_hash(id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target,
                                           detail=e.detail, prev_hash=e.prev_hash)
    assert apart.prev_hash == inside.hash
    with session_scope() as s:
        assert audit.verify(s).ok


def test_an_entry_apart_is_committed_whatever_the_callers_transaction_does(database_url):
    queued = _action("queued")
    with pytest.raises(RuntimeError, match="rolled back"), session_scope() as s:
        audit.record(s, actor="tester", action=queued)  # queued in the transaction: no lock held, apart may append
        kept = audit.record_apart(s, actor="tester", action="test.apart.kept")
        raise RuntimeError("the request failed and rolled back")
    with session_scope() as s:
        assert s.execute(text("SELECT action FROM platform.audit_log WHERE id = :id"), {"id": kept.id}).scalar() \
            == "test.apart.kept"
        assert audit.verify(s).ok
    assert _entries(queued) == []


def test_entries_are_appended_at_the_commit_with_the_writes_and_go_with_a_rollback(database_url):
    kept, dropped, released, lost = (_action(n) for n in ("kept", "savepoint.rolled-back", "savepoint.released", "rb"))
    with session_scope() as s:
        audit.record(s, actor="tester", action=kept)
        with pytest.raises(ValueError), s.begin_nested():
            audit.record(s, actor="tester", action=dropped)
            raise ValueError("a refusal inside a savepoint")
        with s.begin_nested():
            audit.record(s, actor="tester", action=released)
        # nothing is locked while the transaction (and its Python) goes on: another writer appends meanwhile
        other = audit.record_apart(s, actor="tester", action=_action("meanwhile"))
        assert _entries(kept) == []  # not before the commit
    [k], [r] = _entries(kept), _entries(released)
    assert _entries(dropped) == [] and other.id < k.id < r.id
    with pytest.raises(RuntimeError), session_scope() as s:
        audit.record(s, actor="tester", action=lost)
        raise RuntimeError("rolled back")
    assert _entries(lost) == []
    with session_scope() as s:  # a session used again after a rollback queues afresh
        audit.record(s, actor="tester", action=lost)
    assert len(_entries(lost)) == 1
    with session_scope() as s:
        assert audit.verify(s).ok


def test_a_commit_with_a_savepoint_still_open_appends_and_a_failed_commit_appends_nothing(database_url):
    from sqlalchemy.exc import IntegrityError

    from smartcare.platform.db import session_factory

    kept, refused = _action("outer-commit"), _action("failed-commit")
    with session_factory()() as s:
        with s.begin():  # the outer transaction commits while its savepoint is still open
            s.begin_nested()
            audit.record(s, actor="tester", action=kept)
    assert len(_entries(kept)) == 1
    with pytest.raises(IntegrityError), session_scope() as s:  # raised as SQLAlchemy raises a failed commit
        s.execute(text("CREATE TEMP TABLE once (n int UNIQUE DEFERRABLE INITIALLY DEFERRED) ON COMMIT DROP"))
        s.execute(text("INSERT INTO once VALUES (1), (1)"))  # refused only by the COMMIT
        audit.record(s, actor="tester", action=refused)
    assert _entries(refused) == []
    with session_scope() as s:
        assert audit.verify(s).ok


def test_concurrent_appends_never_fork_the_chain(database_url):
    from concurrent.futures import ThreadPoolExecutor

    action = _action("race")

    def append(i: int) -> None:
        with session_scope() as s:
            s.execute(text("SELECT 1"))
            if i % 2:
                audit.record_apart(s, actor="tester", action=action, detail={"i": i})
            else:
                audit.record(s, actor="tester", action=action, detail={"i": i})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(append, range(80)))
    with session_scope() as s:
        links = s.execute(text("SELECT count(*), count(DISTINCT prev_hash) FROM platform.audit_log")).one()
        assert links[0] == links[1], "two entries name the same previous entry: the chain forked"
        assert audit.verify(s).ok
    assert sorted(e.detail["i"] for e in _entries(action)) == list(range(80))
