"""The ``smartcare`` command as an operator runs it: clear one-line errors and non-zero exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import smartcare


def _run(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smartcare.cli", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=120)


def test_version():
    r = _run("version")
    assert r.returncode == 0 and smartcare.__version__ in r.stdout


def test_unreachable_database_is_one_clear_line():
    r = _run("migrate", env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"})
    assert r.returncode == 3
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot reach PostgreSQL" in lines[0] and "DATABASE_URL" in lines[0]


def test_wrong_database_kind_is_explained():
    r = _run("migrate", env={"DATABASE_URL": "mysql://root@127.0.0.1/test"})
    assert r.returncode == 2 and "must point at PostgreSQL" in r.stderr


def test_seed_into_a_filled_database_says_what_to_do(seeded):
    r = _run("seed", "--scale", "small")
    assert r.returncode == 2
    assert "already holds a region" in r.stderr and "empty database" in r.stderr


def test_unknown_scale(database_url):
    r = _run("seed", "--scale", "galaxy")
    assert r.returncode == 2 and "unknown scale" in r.stderr


def test_audit_verify_ok(seeded):
    r = _run("audit", "verify")
    assert r.returncode == 0 and "intact" in r.stdout


def test_busy_port_is_one_clear_line(database_url):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _run("serve", "--no-mllp", env={"SMARTCARE_PORT": str(port)})
    assert r.returncode == 2 and f"HTTP port 127.0.0.1:{port} is already in use" in r.stderr and "SMARTCARE_PORT" in r.stderr
