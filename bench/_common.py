"""Helpers shared by the benchmark scripts: a scratch database, timing, peak memory, a free port."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_peak_rss_mib(pid: int) -> float:
    """Peak resident set size of another process (a server, a client), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """A new, migrated database on the configured server (DATABASE_URL or the embedded one), dropped afterwards."""
    from smartcare.bootstrap import prepare_database
    from smartcare.platform import db
    from smartcare.platform.settings import get_settings

    server = make_url(db.database_url())
    name = f"smartcare_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    os.environ["DATABASE_URL"] = server.set(database=name).render_as_string(hide_password=False)
    get_settings.cache_clear()
    db.reset_caches()
    try:
        prepare_database()
        yield os.environ["DATABASE_URL"]
    finally:
        db.reset_caches()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
