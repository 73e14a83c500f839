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
