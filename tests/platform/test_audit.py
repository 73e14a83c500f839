"""The audit log is append-only in the database and its hash chain exposes tampering."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from smartcare.platform import audit
from smartcare.platform.db import session_scope


def _verify_cli() -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smartcare.cli", "audit", "verify"], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=120)


def test_entries_chain_and_mask_personal_data(database_url):
    with session_scope() as s:
        first = audit.record(s, actor="tester", action="test.one", target="x:1", detail={"id_number": "11010519491231002X"})
        second = audit.record(s, actor="tester", action="test.two", detail={"phone": "13812348000", "n": 2})
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
    with session_scope() as s:
        entries = [audit.record(s, actor="tester", action=f"test.tamper.{i}", detail={"i": i}) for i in range(3)]
    victim = entries[1]
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
    with session_scope() as s:
        entries = [audit.record(s, actor="tester", action=f"test.remove.{i}") for i in range(3)]
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
    with session_scope() as s:
        inside = audit.record(s, actor="测试员", action="test.awkward", target=None, detail=AWKWARD)
    with session_scope() as s:
        apart = audit.record_apart(s, actor="tester", action="test.awkward.apart", target="x:\x01P", detail=AWKWARD)
    for e in (inside, apart):
        assert e.hash == audit._entry_hash(id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target,
                                           detail=e.detail, prev_hash=e.prev_hash)
    assert apart.prev_hash == inside.hash
    with session_scope() as s:
        assert audit.verify(s).ok


def test_an_entry_apart_is_committed_whatever_the_callers_transaction_does(database_url):
    with pytest.raises(RuntimeError, match="rolled back"), session_scope() as s:
        kept = audit.record_apart(s, actor="tester", action="test.apart.kept")
        raise RuntimeError("the request failed and rolled back")
    with session_scope() as s:
        assert s.execute(text("SELECT action FROM platform.audit_log WHERE id = :id"), {"id": kept.id}).scalar() \
            == "test.apart.kept"
        audit.record(s, actor="tester", action="test.apart.holder")  # this transaction now holds the chain's lock
        with pytest.raises(RuntimeError, match="holds the audit chain's lock"):
            audit.record_apart(s, actor="tester", action="test.apart.waits-forever")
    with session_scope() as s:  # a later transaction of the same kind of session may append apart again
        audit.record_apart(s, actor="tester", action="test.apart.after")
        assert audit.verify(s).ok


def test_concurrent_appends_never_fork_the_chain(database_url):
    from concurrent.futures import ThreadPoolExecutor

    def append(i: int) -> int:
        with session_scope() as s:
            if i % 2:
                return audit.record_apart(s, actor="tester", action="test.race", detail={"i": i}).id
            return audit.record(s, actor="tester", action="test.race", detail={"i": i}).id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(append, range(80)))
    with session_scope() as s:
        links = s.execute(text("SELECT count(*), count(DISTINCT prev_hash) FROM platform.audit_log")).one()
        assert links[0] == links[1], "two entries name the same previous entry: the chain forked"
        assert audit.verify(s).ok and len(set(ids)) == 80
