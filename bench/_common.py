"""Helpers shared by the benchmark scripts: a scratch database, timing, peak memory, a free port, the app
under uvicorn in a child process, PostgreSQL's processes of a run."""

from __future__ import annotations

import contextlib
import math
import os
import threading
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def pct(ordered: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of sorted seconds, in milliseconds; NaN when there are none."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1] * 1000


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


def postgres_processes(database: str):
    """PostgreSQL's processes that work for this run: the backends connected to ``database`` and the
    server's own (WAL writer, checkpointer …), not other databases' backends (another job on the machine)."""

    def find() -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter(["name", "cmdline"]):
            if not (p.info["name"] or "").startswith("postgres"):
                continue
            title = " ".join(p.info["cmdline"] or [])
            backend = "(" in title or "[local]" in title  # "postgres: 15/main: user db 127.0.0.1(5432) idle"
            if not backend or f" {database} " in title:
                out.append(p)
        return out

    return find


class Server:
    """``uvicorn --factory smartcare.web.app:create_app`` (the app ``smartcare serve`` runs) with ``workers``
    processes, its log in a file."""

    def __init__(self, url: str, workers: int, log: Path):
        self.port, self.workers, self.log = free_port(), workers, log
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATABASE_URL": url.replace("postgresql+psycopg://", "postgresql://", 1),
               "SMARTCARE_LOG_LEVEL": "WARNING", "SMARTCARE_MLLP_PORT": "0"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "smartcare.web.app:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
            env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200 and \
                        len(self.processes()) >= workers:
                    return
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def processes(self) -> list[psutil.Process]:
        try:
            main = psutil.Process(self.process.pid)
            return [main] if self.workers == 1 else main.children()
        except psutil.NoSuchProcess:
            return []

    def peak_rss(self) -> float:
        return max((process_peak_rss_mib(p.pid) for p in self.processes()), default=0.0)

    def stop(self) -> None:
        try:
            leftovers = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            leftovers = []
        self.process.send_signal(signal.SIGINT)  # uvicorn's supervisor stops its workers
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for child in leftovers:  # a worker that outlived its supervisor: only the ones it started
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


class CpuMeter:
    """CPU seconds per group of processes between ``start`` and ``stop`` (processes that appear in between —
    new database connections — count from zero; those that end in between are counted through their parent,
    PostgreSQL's postmaster, which may also reap other databases' backends), how busy the machine was and how
    much of that was other processes."""

    def __init__(self, groups):
        self.groups = groups  # name → callable returning processes

    def snapshot(self) -> dict:
        out = {}
        for name, find in self.groups.items():
            for p in find():
                try:
                    t = p.cpu_times()
                    # PostgreSQL's postmaster also counts its exited children: backends that came and went
                    out[(name, p.pid, p.create_time())] = t.user + t.system + (
                        t.children_user + t.children_system if name == "PostgreSQL" else 0.0)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        return out

    def start(self) -> None:
        self.before, self.machine = self.snapshot(), psutil.cpu_times()

    def stop(self) -> dict:
        after, machine = self.snapshot(), psutil.cpu_times()
        used = defaultdict(float)
        for key, seconds in after.items():
            used[key[0]] += seconds - self.before.get(key, 0.0)
        total = sum(machine) - sum(self.machine)
        idle = (machine.idle + machine.iowait) - (self.machine.idle + self.machine.iowait)
        used["busy %"] = 100 * (1 - idle / total) if total else 0.0
        # time the virtual machine's host ran something else on our cores: counted busy, done by nobody here
        used["steal %"] = 100 * (getattr(machine, "steal", 0.0) - getattr(self.machine, "steal", 0.0)) / total if total else 0.0
        # CPU of everything else on the machine (another job would make the figures noisy)
        ours = sum(v for k, v in used.items() if not k.endswith("%"))
        used["others %"] = 100 * max(0.0, (total - idle) - ours) / total if total else 0.0
        return dict(used)


class WaitSampler:
    """What this database's client backends are doing, sampled every 20 ms from ``pg_stat_activity``:
    ``label(state, wait_event_type, wait_event)`` names each busy backend's activity (a benchmark knows which
    lock is its interesting one), and ``stop`` answers how often each label was seen."""

    def __init__(self, dsn: str, label: Callable[[str, str | None, str | None], str]):
        self.dsn, self.label, self.counts, self.samples = dsn, label, Counter(), 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.wait(0.02):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' AND state <> 'idle'").fetchall()
                self.samples += 1
                for state, kind, event in rows:
                    self.counts[self.label(state, kind, event)] += 1

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> dict:
        self.stopping.set()
        self.thread.join(timeout=10)
        return {"samples": self.samples, "counts": self.counts}


class LeanHttp:
    """A keep-alive HTTP/1.1 client on one socket that does only what a load generator must (as ``wrk`` does):
    send a request's bytes, read the status line, the headers and a ``Content-Length`` body. It costs the machine a
    fraction of ``httpx``'s CPU per request — on two cores the load generator shares with the server and PostgreSQL,
    the client's own CPU is taken from what is measured. Like any keep-alive client it opens a new connection when
    the server has closed an idle one (uvicorn does after 5 s) or the last request failed."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.address, self.host = (host, port), host
        self.sock: socket.socket | None = None
        self.buffer = b""
        self._connect()

    def _connect(self) -> None:
        self.close()
        self.sock = socket.create_connection(self.address, timeout=300)  # a server that hangs fails the run
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def _dropped(self) -> bool:
        """Readable before a request was sent: the server closed the connection (or sent what nobody asked)."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        """One request, answered: (status, body)."""
        if self.sock is None or self._dropped():
            self._connect()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        try:
            self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                self.buffer += self._recv()
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4:]
            status_line, *header_lines = head.split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            length, closing = 0, False
            for line in header_lines:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding":
                    raise ValueError(f"{method} {path}: a chunked answer (LeanHttp reads Content-Length bodies only)")
                elif name == "connection" and value.strip().lower() == "close":
                    closing = True
            if method == "HEAD" or status in (204, 304) or status < 200:
                length = 0  # no body, whatever Content-Length says
            chunks, have = [self.buffer], len(self.buffer)
            while have < length:  # a large body: its pieces joined once
                chunks.append(self._recv())
                have += len(chunks[-1])
        except (OSError, ValueError):
            self.close()  # the next request opens a new connection
            raise
        whole = b"".join(chunks)
        answer, self.buffer = whole[:length], whole[length:]
        if closing:  # the server said so: the next request opens a new connection
            self.close()
        return status, answer

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
