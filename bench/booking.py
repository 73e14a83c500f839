"""Benchmark: booking at release time — a burst of booking attempts on one region's slot pool.

The moment slots open (放号), thousands of residents try to book the same few hundred popular slots at once.
Set up (not timed): a fresh database with the demo region; ``--persons`` residents of the synthetic population,
each with an account and an active health card issued by ``healthcard.service.issue`` with their real
identity (the SMS one-time code and the real-name check are the API's concern, not what is measured); the
accounts are inserted in bulk with one Argon2 hash made by ``auth.create_user`` for the first of them (a
hash per account would take minutes), and each gets the bearer token ``POST /api/v1/auth/token`` gives (one
login through the API checks that the bulk accounts really log in). ``--slots`` slots published through
``booking.service.publish_slots`` across four level-3 hospitals (doctors from the registry, ten 15-minute time
slices each, capacity 1–3), one set per visit day; the first 15 % of the doctors are the famous experts whose
slots (``popular``) take 80 % of the attempts. Their release time is in the future until the burst starts,
when it is set to now (``release_at = now()``), and the clients fire.

Each person makes ``--attempts`` attempts one after another (an attempt answered "no slot" is followed by the
next), each at a random slot (80 % popular): one request = one attempt = ``POST /api/v1/booking/appointments``
with ``confirm=true`` (hold and book in one transaction). The per-person rules apply (2 bookings per visit
day, 1 per department, 1 per doctor). Each ``--concurrency`` level (attempts in flight at once; default 64 and
16) is a burst of its own, on a visit day of its own. Printed, measured in the same run:

1. The burst over HTTP: the app under uvicorn (``--workers`` processes), ``--clients`` client processes, each
   with threads on their own keep-alive connections (``_common.LeanHttp``, a minimal HTTP/1.1 client as ``wrk`` is) (concurrency ÷ clients): attempts answered
   per second, successful bookings per second, p50/p99/max latency of every answer (and per kind of answer),
   the answers by kind (201 booked, 409 no_slot, 409 limit_reached, 429, errors). Beside it, the same clients
   on ``GET /health`` (the HTTP stack alone, no database). Then the burst paced: ``--rate`` attempts a second
   offered in all (default 2,000, the goal's rate) on as many connections as the highest concurrency, each at
   its share, the latency counted from each attempt's due time — a server that falls behind the rate shows as
   a growing lag, which a closed loop (the next attempt sent when the last is answered) does not show.
2. The same burst in process at the service layer: ``--service-processes`` processes with threads
   (concurrency ÷ processes), each attempt what the endpoint runs (``service.refuse_if_known_full``, then
   ``service.attempt`` with ``book``, one statement in a transaction of its own), no HTTP:
   what the database path sustains.
3. Baseline: the naive limit of concurrent single-row updates, pgbench-style — as many raw psycopg connections
   as attempts in flight, one thread each, doing ``BEGIN; UPDATE t SET n = n + 1 WHERE id = <random popular id>
   AND n < cap; COMMIT`` as fast as they can on a table with the same ids, capacities and skew (the naive
   booking: no person, no rules, no appointment row); again with no cap (every transaction writes a hot row);
   and ``pgbench`` itself on the capped script when the binary is installed.
4. After each burst, from the database: for every slot, active appointments (held, booked, checked_in,
   noshow) ≤ capacity and = ``slot.taken`` ("oversold: 0"), the per-person rules kept, the bookings the
   clients were told of equal to the rows.
5. Where the time goes: CPU per attempt of the server, PostgreSQL, the clients (from /proc), the share of the
   machine other processes used; what the database's backends were doing (``pg_stat_activity`` sampled);
   database connections opened during the burst. Peak RSS of the server, the clients, the service-layer
   processes and this process.

The per-account throttle (``booking.throttle``: 1 attempt/s, burst 5 by default) is raised for the run
through SMARTCARE_BOOKING_RATE_PER_SECOND / SMARTCARE_BOOKING_BURST, since a bench account fires its attempts
back to back, faster than a person; the output says so.

    python bench/booking.py            # 2,000 slots, 10,000 persons × 5 = 50,000 attempts per burst (about 4 minutes)
    python bench/booking.py --quick    # 200 slots, 1,000 persons × 5 = 5,000 attempts per burst (under a minute)

Uses ``DATABASE_URL`` (or the embedded PostgreSQL), like every benchmark here: a new database per run,
migrated, the demo region seeded, dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from datetime import datetime, timedelta
from pathlib import Path

# Before any settings are read, so this process, the server and the workers agree.
RATE, BURST = "1000", "1000"
os.environ["SMARTCARE_BOOKING_RATE_PER_SECOND"] = RATE
os.environ["SMARTCARE_BOOKING_BURST"] = BURST
os.environ.setdefault("SMARTCARE_SECRET_KEY", secrets.token_urlsafe(48))  # the tokens made here must verify there
os.environ.setdefault("SMARTCARE_LOG_LEVEL", "WARNING")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import psutil
from _common import CpuMeter, LeanHttp, Server, WaitSampler, pct, peak_rss_mib, postgres_processes, scratch_database

BOOK = "/api/v1/booking/appointments"
PASSWORD = "bench-resident-pass"
POPULAR_DOCTORS = 0.15   # share of the doctors whose slots are the popular ones
POPULAR_SHARE = 0.80     # share of the attempts at popular slots
SLICES = 10              # 15-minute slots per doctor per day
HOSPITALS = 4
ACTIVE = ("held", "booked", "checked_in", "noshow")


# ---- set-up: the region, the residents, the slots ------------------------------------------------------------


def seed_region(population: int) -> None:
    from smartcare.platform.db import session_scope
    from smartcare.synth import service as synth

    with session_scope() as s:
        synth.seed(s, scale="small", seed=2026, population=population)


def residents(n: int) -> list[tuple[str, str, str]]:
    """``n`` adults of the synthetic population who hold no guardian's card: name, ID number, phone."""
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    with session_scope() as s:
        rows = s.execute(text("SELECT name, id_number, phone FROM synth.resident WHERE guardian_id IS NULL "
                              "AND birth_date < current_date - interval '18 years' ORDER BY id LIMIT :n"),
                         {"n": n}).all()
    if len(rows) < n:
        raise SystemExit(f"the synthetic region has {len(rows):,} adults, {n:,} persons asked for: seed more")
    return [tuple(r) for r in rows]


def make_accounts(n: int) -> list[str]:
    """``n`` resident accounts: the first through ``auth.create_user`` (Argon2 hash, audit entry), the others
    inserted in one statement with that same hash (the same password), which Argon2 would take minutes over."""
    from sqlalchemy import text

    from smartcare.platform import auth
    from smartcare.platform.db import session_scope

    names = [f"bench-r{i:06d}" for i in range(n)]
    with session_scope() as s:
        first = auth.create_user(s, username=names[0], password=PASSWORD, display_name="居民", roles=["resident"],
                                 actor="bench")
        s.execute(text("INSERT INTO platform.user_account (username, display_name, password_hash, roles) "
                       "SELECT u, '居民', :h, ARRAY['resident'] FROM unnest(CAST(:names AS text[])) AS u"),
                  {"h": first.password_hash, "names": names[1:]})
    return names


def issue_cards(accounts: list[str], people: list[tuple[str, str, str]]) -> list[str]:
    """One card per account, in the person's real name, through ``healthcard.service.issue`` (EMPI link or
    create included), 500 per transaction."""
    from smartcare.healthcard import service
    from smartcare.platform.db import session_scope

    cards = []
    for first in range(0, len(accounts), 500):
        with session_scope() as s:
            for account, (name, id_number, phone) in zip(accounts[first:first + 500], people[first:first + 500],
                                                         strict=True):
                cards.append(service.issue(s, holder=account, relation="self", name=name, id_number=id_number,
                                           phone=phone, actor="bench").card_no)
    return cards


def doctors(n: int) -> list[tuple[str, str, str, str]]:
    """``n`` doctors (facility, department, practitioner code, name) of the region's largest level-3 general
    hospitals, spread over hospitals and departments (round robin)."""
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    with session_scope() as s:
        hospitals = s.execute(text(
            "SELECT f.code FROM registry.facility f JOIN registry.practitioner p ON p.facility_code = f.code "
            "WHERE f.kind = 'general_hospital' AND f.level = 3 GROUP BY f.code ORDER BY count(*) DESC, f.code "
            "LIMIT :n"), {"n": HOSPITALS}).scalars().all()
        rows = s.execute(text(
            "SELECT facility_code, department_code, code, name FROM registry.practitioner "
            "WHERE facility_code = ANY(:h) ORDER BY facility_code, department_code, code"), {"h": hospitals}).all()
    by_department = defaultdict(deque)
    for row in rows:
        by_department[(row[0], row[1])].append(tuple(row))
    out, queues = [], deque(by_department.values())
    while queues and len(out) < n:  # one doctor of each department in turn
        q = queues.popleft()
        out.append(q.popleft())
        if q:
            queues.append(q)
    if len(out) < n:
        raise SystemExit(f"{len(out)} doctors in {HOSPITALS} hospitals, {n} needed: ask for fewer slots")
    return out


def publish(day, docs: list, capacities: list[int], popular_doctors: int) -> list[int]:
    """The day's slots through ``booking.service.publish_slots`` (each hospital's in one call), in the order
    doctor × time slice; the release time in the future until the burst sets it to now. Their ids."""
    from sqlalchemy import text

    from smartcare.booking import service
    from smartcare.booking.schemas import SlotIn
    from smartcare.platform.clock import CHINA_TZ
    from smartcare.platform.db import session_scope

    per_facility = defaultdict(list)
    for d, (facility, department, code, name) in enumerate(docs):
        famous = d < popular_doctors
        for k in range(SLICES):
            start = datetime.combine(day, datetime.min.time(), CHINA_TZ).replace(hour=8) + timedelta(minutes=15 * k)
            per_facility[facility].append((d * SLICES + k, SlotIn(
                source_id=f"B{day:%m%d}-{code}-{k}", department_code=department, practitioner_code=code,
                practitioner_name=name, title="知名专家" if famous else "主任医师", fee=5000 if famous else 1000,
                starts_at=start, ends_at=start + timedelta(minutes=15), capacity=capacities[d * SLICES + k])))
    ids = [0] * len(docs) * SLICES
    with session_scope() as s:
        for facility, slots in per_facility.items():
            changes = service.publish_slots(s, facility_code=facility, slots=[slot for _, slot in slots], actor="bench")
            for (index, _), change in zip(slots, changes, strict=True):
                if change.outcome != "created":
                    raise SystemExit(f"slot {change.source_id}: {change.outcome} {change.error}")
                ids[index] = change.slot_id
        s.execute(text("UPDATE booking.slot SET release_at = now() + interval '1 day' WHERE visit_date = :d"),
                  {"d": day})
    return ids


def release(day) -> None:
    """The release moment: the day's slots open now."""
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    with session_scope() as s:
        s.execute(text("UPDATE booking.slot SET release_at = now() WHERE visit_date = :d"), {"d": day})


def plan(rng: random.Random, persons: int, attempts: int, slots: int, popular: int) -> list[list[int]]:
    """Each person's attempts: slot indexes, 80 % among the popular ones."""
    return [[rng.randrange(popular) if rng.random() < POPULAR_SHARE else rng.randrange(slots)
             for _ in range(attempts)] for _ in range(persons)]


# ---- the checks after a burst ------------------------------------------------------------------------------------


def check_day(day) -> dict:
    """Places and rules as the database has them after a burst on ``day``'s slots."""
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    with session_scope() as s:
        places = s.execute(text(
            """SELECT count(*) FILTER (WHERE a.active > s.capacity),
                      coalesce(sum(greatest(a.active - s.capacity, 0)), 0),
                      count(*) FILTER (WHERE a.active <> s.taken),
                      coalesce(sum(a.active), 0), coalesce(sum(s.capacity), 0), coalesce(sum(a.held), 0),
                      coalesce(sum(a.booked), 0), count(*) FILTER (WHERE a.active = s.capacity)
                 FROM booking.slot s
                 CROSS JOIN LATERAL (SELECT count(*) FILTER (WHERE state = ANY(:active)) AS active,
                                            count(*) FILTER (WHERE state = 'held') AS held,
                                            count(*) FILTER (WHERE state = 'booked') AS booked
                                       FROM booking.appointment a WHERE a.slot_id = s.id) a
                WHERE s.visit_date = :d"""), {"d": day, "active": list(ACTIVE)}).one()
        rules = s.execute(text(
            """WITH live AS (SELECT * FROM booking.appointment
                              WHERE visit_date = :d AND state IN ('held', 'booked', 'checked_in'))
               SELECT (SELECT count(*) FROM (SELECT 1 FROM live GROUP BY empi_id HAVING count(*) > 2) x),
                      (SELECT count(*) FROM (SELECT 1 FROM live GROUP BY empi_id, facility_code, department_code
                                             HAVING count(*) > 1) x),
                      (SELECT count(*) FROM (SELECT 1 FROM live WHERE practitioner_code IS NOT NULL
                                             GROUP BY empi_id, facility_code, practitioner_code
                                             HAVING count(*) > 1) x),
                      (SELECT count(DISTINCT empi_id) FROM live)"""), {"d": day}).one()
    return {"oversold_slots": places[0], "oversold_places": places[1], "taken_mismatch": places[2],
            "active": places[3], "capacity": places[4], "held": places[5], "booked": places[6], "full_slots": places[7],
            "over_per_day": rules[0], "over_per_department": rules[1], "over_per_doctor": rules[2],
            "persons_booked": rules[3]}


# ---- worker processes: HTTP clients, the service layer, the naive baseline -----------------------------------------


def classify(status: int, text_: str) -> str:
    if status == 201:
        return "201 booked"
    try:
        code = json.loads(text_).get("error", "?")
    except ValueError:
        code = text_[:40]
    return f"{status} {code}"


def _http_job(connections: list[LeanHttp], kind: str, users: list, count: int, spans: list,
              pace: tuple[float, int, int] | None = None) -> None:
    """One thread per keep-alive connection: for "book", each takes the next person and sends their attempts
    one after another; for "health", ``count`` GET /health each. (``LeanHttp``, a minimal HTTP/1.1 client as
    ``wrk`` is: the load generator shares the two cores with the server and PostgreSQL, and httpx.Client cost
    ~0.55 ms of CPU an attempt, httpx.AsyncClient ~1.4 ms.)

    ``pace`` = (total rate, this process's first thread number, threads in all): each thread sends its next
    attempt when it is due (thread g's i-th at (g + i × threads) ÷ rate seconds after the start, or at once
    when it is late), and the latency is counted from that due time, so a server that falls behind shows."""
    import threading

    todo = deque(users)
    begin = time.perf_counter()

    def book(http: LeanHttp, g: int) -> None:
        i = 0
        while True:
            try:
                token, card_no, slots = todo.popleft()
            except IndexError:
                return
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            for slot in slots:
                body = json.dumps({"slot_id": slot, "card_no": card_no, "confirm": True}).encode()
                sent = time.perf_counter()
                if pace is not None:
                    rate, first, threads = pace
                    sent = begin + (first + g + i * threads) / rate
                    i += 1
                    if (wait := sent - time.perf_counter()) > 0:
                        time.sleep(wait)
                try:
                    status, answer = http.request("POST", BOOK, body, headers)
                    outcome = classify(status, answer.decode())
                except (OSError, ValueError) as exc:
                    outcome = f"0 {type(exc).__name__}"
                spans.append((sent, time.perf_counter(), outcome))

    def health(http: LeanHttp, g: int) -> None:
        for _ in range(count):
            sent = time.perf_counter()
            try:
                status, _ = http.request("GET", "/health")
                outcome = "200 ok" if status == 200 else f"{status} ?"
            except (OSError, ValueError) as exc:
                outcome = f"0 {type(exc).__name__}"
            spans.append((sent, time.perf_counter(), outcome))

    pool = [threading.Thread(target=book if kind == "book" else health, args=(c, g)) for g, c in enumerate(connections)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def _service_job(users: list, threads: int, spans: list) -> None:
    """``threads`` threads, each taking the next person and making their attempts one after another, each
    attempt what the endpoint runs (``refuse_if_known_full``, then in its own session and transaction
    ``patient``, ``hold``, ``confirm``), without HTTP."""
    import threading

    from smartcare.booking import service
    from smartcare.platform.errors import SmartCareError

    todo = deque(users)

    def run() -> None:
        while True:
            try:
                account, card_no, slots = todo.popleft()
            except IndexError:
                return
            for slot in slots:
                sent = time.perf_counter()
                try:
                    service.refuse_if_known_full(slot)  # as the endpoint does first, before a session
                    service.attempt(account=account, card_no=card_no, slot_id=slot, book=True)
                    outcome = "201 booked"
                except SmartCareError as exc:
                    outcome = f"{exc.status} {exc.code}"
                except Exception as exc:  # noqa: BLE001 — counted and shown, never hidden
                    outcome = f"0 {type(exc).__name__}"
                spans.append((sent, time.perf_counter(), outcome))

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def _naive_job(dsn: str, connections: int, seconds: float, ids: tuple[int, int], capped: bool, seed: int,
               barrier, spans: list) -> None:
    """``connections`` psycopg connections, one thread each: BEGIN; UPDATE one row (a random one, 80 % popular);
    COMMIT, for ``seconds``. Outcome: the row updated (a place taken) or not (full)."""
    import threading

    import psycopg

    slots, popular = ids
    where = "AND n < cap" if capped else ""
    sql = f"UPDATE bench_naive_slot SET n = n + 1 WHERE id = %s {where}"
    conns = [psycopg.connect(dsn) for _ in range(connections)]
    clock = {}

    def one(conn, k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        mine = []
        while time.perf_counter() < clock["deadline"]:
            row = 1 + (rng.randrange(popular) if rng.random() < POPULAR_SHARE else rng.randrange(slots))
            sent = time.perf_counter()
            updated = conn.execute(sql, (row,)).rowcount  # psycopg sends BEGIN first: not in autocommit
            conn.commit()
            mine.append((sent, time.perf_counter(), "updated" if updated else "full"))
        spans.extend(mine)

    pool = [threading.Thread(target=one, args=(c, k)) for k, c in enumerate(conns)]
    barrier.wait()
    clock["deadline"] = time.perf_counter() + seconds
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    for c in conns:
        c.close()


def _worker(k: int, base_url: str | None, jobs, results, barrier) -> None:
    """One worker process: runs each job it is given (after the barrier, with the others), sends back its spans
    and CPU; at the end its peak RSS."""
    import resource

    if base_url is not None:
        connections: list[LeanHttp] = []
        while (job := jobs.get()) is not None:
            kind, users, n, count, pace = job
            while len(connections) < n:
                connections.append(LeanHttp(int(base_url.rsplit(":", 1)[1])))
            spans: list = []
            barrier.wait()
            cpu = time.process_time()
            _http_job(connections[:n], kind, users, count, spans, pace)
            results.put((k, spans, time.process_time() - cpu))
        for c in connections:
            c.close()
    else:
        while (job := jobs.get()) is not None:
            kind, *rest = job
            spans = []
            if kind == "service":
                users, threads = rest
                barrier.wait()
                cpu = time.process_time()
                _service_job(users, threads, spans)
            else:  # naive
                dsn, connections, seconds, ids, capped, seed = rest
                cpu = time.process_time()
                _naive_job(dsn, connections, seconds, ids, capped, seed + k, barrier, spans)
            results.put((k, spans, time.process_time() - cpu))
    results.put((k, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


class Workers:
    """``n`` worker processes (spawned once; each job runs on all of them at the same time). With
    ``base_url`` they are HTTP clients; without, they run the service layer or the naive baseline."""

    def __init__(self, n: int, base_url: str | None = None):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.n = n
        self.barrier, self.results = ctx.Barrier(n + 1), ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker, args=(k, base_url, self.jobs[k], self.results, self.barrier),
                                  daemon=True) for k in range(n)]
        for p in self.procs:
            p.start()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def run(self, jobs: list, *, before=None, meter: CpuMeter | None = None, waits: WaitSampler | None = None,
            timeout: float = 1800) -> dict:
        """Give each worker its job; ``before`` runs just before the barrier lets them go (the release)."""
        for q, job in zip(self.jobs, jobs, strict=True):
            q.put(job)
        if before is not None:
            before()
        self.barrier.wait()
        if meter is not None:
            meter.start()
        if waits is not None:
            waits.start()
        spans, cpu = [], 0.0
        for _ in range(self.n):
            _, mine, used = self.results.get(timeout=timeout)  # a worker that died: fail, not hang
            spans += mine
            cpu += used
        used = meter.stop() if meter is not None else {}
        out = summarise(spans, cpu, used)
        if waits is not None:
            out["waits"] = waits.stop()
        return out

    def close(self) -> float:
        """Stop the workers; their largest peak RSS (MiB)."""
        for q in self.jobs:
            q.put(None)
        peaks = []
        try:
            peaks = [self.results.get(timeout=60)[1] for _ in self.procs]
        except queue.Empty:  # a worker that died: its peak is lost, the others are not
            pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        return max(peaks, default=0.0)


def summarise(spans: list, cpu: float, used: dict) -> dict:
    if not spans:
        return {"n": 0, "rate": 0.0, "p50": float("nan"), "p99": float("nan"), "max": float("nan"),
                "outcomes": Counter(), "wall": 0.0, "client_cpu": cpu, "cpu": used}
    latencies = sorted(end - sent for sent, end, _ in spans)
    start = min(sent for sent, _, _ in spans)
    wall = max(end for _, end, _ in spans) - start
    outcomes = Counter(o for _, _, o in spans)
    good = sorted(end - start for _, end, o in spans if o in ("201 booked", "updated"))
    sold_out = good[-1] if good else 0.0
    booked_by = {q: good[min(len(good) - 1, int(q * len(good)))] if good else 0.0 for q in (0.5, 0.9)}
    by_kind = defaultdict(list)
    for sent, end, o in spans:
        by_kind[o].append(end - sent)
    kinds = {o: (len(v), pct(sorted(v), 0.5), pct(sorted(v), 0.99)) for o, v in by_kind.items()}
    return {"kinds": kinds, "booked_by": booked_by, "n": len(spans), "rate": len(spans) / wall, "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
            "max": latencies[-1] * 1000, "outcomes": outcomes, "wall": wall, "client_cpu": cpu, "cpu": used,
            "good": len(good), "sold_out": sold_out}


def sessions_opened(dsn: str) -> int:
    """Database sessions opened so far (``pg_stat_database.sessions``). A backend reports at the latest when it
    exits, so the count after a burst is a lower bound (pooled connections still open may not have reported);
    its transaction counts are left out for the same reason (idle pooled backends report them late)."""
    import psycopg

    time.sleep(0.6)
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def wait_label(state: str, kind: str | None, event: str | None) -> str:
    """A backend's activity in the booking run: on CPU, waiting for the client inside a transaction, waiting
    for a lock (a slot's row, the NOTIFY queue), for the WAL …"""
    if kind is None:
        return "on CPU (running a statement)"
    if state == "idle in transaction":
        return "idle in transaction (waiting for the client)"
    return f"{kind}:{event}"


# ---- the baseline ---------------------------------------------------------------------------------------------------


def naive_table(dsn: str, capacities: list[int]) -> None:
    """``bench_naive_slot``: one row per slot (same ids in the same order: popular first), n = 0."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_naive_slot")
        conn.execute("CREATE TABLE bench_naive_slot (id integer PRIMARY KEY, n integer NOT NULL DEFAULT 0, "
                     "cap integer NOT NULL)")
        with conn.cursor() as cur, cur.copy("COPY bench_naive_slot (id, cap) FROM STDIN") as copy:
            for i, cap in enumerate(capacities):
                copy.write_row((i + 1, cap))
        conn.execute("VACUUM ANALYZE bench_naive_slot")


def naive_places(dsn: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT coalesce(sum(n), 0), count(*) FILTER (WHERE n > cap) FROM bench_naive_slot").fetchone()


def pgbench(dsn: str, connections: int, seconds: float, slots: int, popular: int, tmp: Path) -> dict | None:
    """``pgbench`` itself on the capped script, when installed: transactions/s and latency percentiles from its
    per-transaction log."""
    binary = shutil.which("pgbench")
    if binary is None:
        return None
    script = tmp / "naive.sql"
    script.write_text(f"\\set r random(1, 100)\n"
                      f"\\if :r <= {int(POPULAR_SHARE * 100)}\n\\set id random(1, {popular})\n"
                      f"\\else\n\\set id random(1, {slots})\n\\endif\n"
                      "BEGIN;\nUPDATE bench_naive_slot SET n = n + 1 WHERE id = :id AND n < cap;\nCOMMIT;\n")
    prefix = tmp / "pgbench"
    run = subprocess.run([binary, "-n", "-c", str(connections), "-j", "2", "-T", str(max(1, round(seconds))),
                          "-f", str(script), "-l", "--log-prefix", str(prefix), dsn],
                         check=False, capture_output=True, text=True, timeout=seconds + 120)
    if run.returncode != 0:
        return {"error": (run.stderr or run.stdout).strip().splitlines()[-1:]}
    latencies = []
    for log in tmp.glob("pgbench.*"):
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1e6)
        log.unlink()
    latencies.sort()
    tps = next((float(line.split("=")[1].split()[0]) for line in run.stdout.splitlines() if line.startswith("tps")),
               float("nan"))
    return {"n": len(latencies), "rate": tps, "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
            "max": latencies[-1] * 1000 if latencies else float("nan")}


# ---- the report ------------------------------------------------------------------------------------------------------


KINDS = ("201 booked", "409 no_slot", "409 limit_reached")


def breakdown(outcomes: Counter) -> tuple[list[int], int, int, str]:
    """Counts of the main kinds; 409 other, 429; errors (anything else) described."""
    main = [outcomes.get(k, 0) for k in KINDS]
    other409 = sum(v for k, v in outcomes.items() if k.startswith("409 ") and k not in KINDS)
    throttled = sum(v for k, v in outcomes.items() if k.startswith("429"))
    errors = {k: v for k, v in outcomes.items() if k not in KINDS and not k.startswith(("409 ", "429"))}
    return main, other409, throttled, ", ".join(f"{k} × {v:,}" for k, v in errors.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 slots, 1,000 persons: under a minute")
    parser.add_argument("--slots", type=int, help="slots per visit day (default 2,000; quick 200), a multiple of 10")
    parser.add_argument("--persons", type=int, help="persons (default 10,000; quick 1,000)")
    parser.add_argument("--attempts", type=int, default=5, help="attempts per person")
    parser.add_argument("--concurrency", default="64,16",
                        help="attempts in flight at once: HTTP connections, service-layer threads, baseline connections; "
                             "each level is a burst of its own on a visit day of its own (comma-separated)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--clients", type=int, default=4, help="HTTP client processes (threads: concurrency ÷ clients)")
    parser.add_argument("--service-processes", type=int, default=2,
                        help="processes of the service-layer burst (threads: concurrency ÷ processes)")
    parser.add_argument("--naive-seconds", type=float, help="each baseline's duration (default 10; quick 1)")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="the paced burst over HTTP: attempts a second offered in all, on as many connections as "
                             "the highest --concurrency (default 2,000, the goal's rate; 0: no paced burst)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.rate < 0:
        parser.error(f"--rate {args.rate:g}: attempts a second cannot be negative (0: no paced burst)")
    n_slots = args.slots or (200 if args.quick else 2_000)
    n_slots -= n_slots % SLICES
    persons = args.persons or (1_000 if args.quick else 10_000)
    naive_seconds = args.naive_seconds or (1.0 if args.quick else 10.0)
    levels = sorted({int(c) for c in args.concurrency.split(",")}, reverse=True)
    top = levels[0]
    n_doctors = n_slots // SLICES
    popular_doctors = max(1, round(n_doctors * POPULAR_DOCTORS))
    popular = popular_doctors * SLICES
    warm_persons = min(persons, 100 if args.quick else 500)
    attempts_n = persons * args.attempts
    rng = random.Random(args.seed)
    load = os.getloadavg()
    t0 = time.perf_counter()

    print(f"booking release-burst benchmark{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs (load average "
          f"{load[0]:.2f} at the start), PostgreSQL {os.environ.get('DATABASE_URL', '(embedded)').rsplit('@', 1)[-1]}; "
          f"{n_slots:,} slots, {persons:,} persons × {args.attempts} attempts, {', '.join(map(str, levels))} in flight",
          flush=True)
    print(f"  per-account throttle raised for the bench: SMARTCARE_BOOKING_RATE_PER_SECOND={RATE}, "
          f"SMARTCARE_BOOKING_BURST={BURST} (defaults 1/s, burst 5): each bench account fires its attempts back to "
          "back, faster than a person", flush=True)
    out: dict = {"naive": {}, "service": {}, "http": {}}
    with tempfile.TemporaryDirectory(prefix="smartcare-bench-") as tmp_, scratch_database() as url:
        tmp = Path(tmp_)
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        database = dsn.rsplit("/", 1)[1]
        from smartcare.platform import auth
        from smartcare.platform.clock import CHINA_TZ

        # ---- set-up
        t = time.perf_counter()
        seed_region(max(20_000, int(persons * 1.6)))
        seeded = time.perf_counter() - t
        people = residents(persons)
        t = time.perf_counter()
        accounts = make_accounts(persons)
        accounts_s = time.perf_counter() - t
        t = time.perf_counter()
        cards = issue_cards(accounts, people)
        cards_s = time.perf_counter() - t
        tokens = [auth.issue_token(auth.Principal(a, frozenset({"resident"}))) for a in accounts]
        docs = doctors(n_doctors)
        capacities = [rng.randint(1, 3) for _ in range(n_slots)]
        today = datetime.now(CHINA_TZ).date()
        names = ["warm"] + [f"{mode} {c}" for c in levels for mode in ("service", "http")] + (["paced"] if args.rate else [])
        days = {name: today + timedelta(days=9 + k) for k, name in enumerate(names)}
        t = time.perf_counter()
        slot_ids = {name: publish(day, docs, capacities, popular_doctors) for name, day in days.items()}
        publish_s = time.perf_counter() - t
        release(days["warm"])
        attempts = plan(rng, persons, args.attempts, n_slots, popular)
        warm_plan = plan(rng, warm_persons, 2, n_slots, popular)
        places = sum(capacities)
        print(f"1. set-up {time.perf_counter() - t0:.1f} s: region seeded ({seeded:.1f} s); {persons:,} accounts "
              f"({accounts_s:.1f} s); {persons:,} health cards issued through the service ({cards_s:.1f} s, "
              f"{persons / cards_s:,.0f}/s); {len(days)} visit days × {n_slots:,} slots published ({publish_s:.1f} s): "
              f"{n_doctors} doctors in {HOSPITALS} hospitals × {SLICES} time slices, {places:,} places a day; "
              f"{popular:,} popular slots ({popular_doctors} famous doctors, {sum(capacities[:popular]):,} places) take "
              f"{POPULAR_SHARE:.0%} of the attempts", flush=True)

        def users(day: str, by: str) -> list:
            ids = slot_ids[day]
            who = tokens if by == "token" else accounts
            chosen = warm_plan if day == "warm" else attempts
            offset = persons - len(chosen) if day == "warm" else 0
            return [(who[offset + p], cards[offset + p], [ids[i] for i in mine]) for p, mine in enumerate(chosen)]

        def split(items: list, n: int) -> list[list]:
            return [items[k::n] for k in range(n)]

        def burst(workers: Workers, day: str, jobs: list, groups: dict) -> dict:
            """One burst on ``day``'s slots, released as the workers go: figures, CPU, waits, then the checks."""
            meter = CpuMeter({**groups, "PostgreSQL": postgres_processes(database),
                              "this process": lambda: [psutil.Process()]})
            opened = sessions_opened(dsn)
            r = workers.run(jobs, before=lambda: release(days[day]), meter=meter, waits=WaitSampler(dsn, wait_label))
            r["sessions"] = sessions_opened(dsn) - opened - 1  # less the first reading's own
            r["check"] = check_day(days[day])
            print(f"    {day if day == 'paced' else f'{day} in flight'}: {r['n']:,} attempts in {r['wall']:.1f} s: {r['rate']:,.0f}/s, p50 "
                  f"{r['p50']:.1f} ms, p99 {r['p99']:.1f} ms; {r['outcomes'].get('201 booked', 0):,} booked", flush=True)
            return r

        procs = args.service_processes
        inproc = Workers(procs)
        try:
            # ---- the baseline: the naive limit of concurrent single-row updates
            print(f"2. baseline: naive BEGIN; UPDATE … WHERE id = ? AND n < cap; COMMIT from {', '.join(map(str, levels))} "
                  f"psycopg connections, {naive_seconds:g} s each; with no cap and pgbench at {top}", flush=True)
            for c, capped in [(c, True) for c in levels] + [(top, False)]:
                naive_table(dsn, capacities)
                r = inproc.run([("naive", dsn, len(mine), naive_seconds, (n_slots, popular), capped, args.seed)
                                for mine in split(list(range(c)), procs)])
                r["places"], r["oversold"] = naive_places(dsn)
                out["naive"][(c, capped)] = r
                print(f"    {c} connections{'' if capped else ', no cap'}: {r['rate']:,.0f} transactions/s, p50 "
                      f"{r['p50']:.1f} ms, p99 {r['p99']:.1f} ms", flush=True)
            naive_table(dsn, capacities)
            pg = out["pgbench"] = pgbench(dsn, top, naive_seconds, n_slots, popular, tmp)
            if pg is not None and "error" not in pg:
                pg["places"], pg["oversold"] = naive_places(dsn)
                print(f"    pgbench, {top} clients: {pg['rate']:,.0f} transactions/s, p50 {pg['p50']:.1f} ms, p99 "
                      f"{pg['p99']:.1f} ms", flush=True)

            # ---- the burst at the service layer, in process
            print(f"3. the burst at the service layer, no HTTP: {procs} processes, {persons * args.attempts:,} "
                  "attempts per burst", flush=True)
            inproc.run([("service", mine, max(1, top // procs))
                        for mine in split(users("warm", "account"), procs)])  # connections, caches
            for c in levels:
                out["service"][c] = burst(inproc, f"service {c}", [
                    ("service", mine, max(1, c // procs)) for mine in split(users(f"service {c}", "account"), procs)],
                    {"service processes": lambda: [psutil.Process(pid) for pid in inproc.pids()]})
        finally:
            out["inproc_rss"] = inproc.close()

        # ---- the burst over HTTP
        print(f"4. the burst over HTTP: uvicorn with {args.workers} worker(s), {args.clients} client processes",
              flush=True)
        server = Server(url, args.workers, tmp / "server.log")
        clients = None
        try:
            login = httpx.post(server.url + "/api/v1/auth/token", json={"username": accounts[-1], "password": PASSWORD},
                               timeout=30)
            if login.status_code != 200:
                raise SystemExit(f"a bench account cannot log in: {login.status_code} {login.text[:200]}")
            clients = Workers(args.clients, server.url)
            per_client = max(1, top // args.clients)
            client_groups = {"server": server.processes, "clients": lambda: [psutil.Process(pid) for pid in clients.pids()]}
            clients.run([("health", [], per_client, 20, None)] * args.clients)  # connections, imports
            clients.run([("book", mine, per_client, 0, None)
                         for mine in split(users("warm", "token"), args.clients)])  # the server's pools and caches
            meter = CpuMeter({**client_groups, "PostgreSQL": postgres_processes(database),
                              "this process": lambda: [psutil.Process()]})
            out["health"] = clients.run([("health", [], per_client, 150 if args.quick else 1_000, None)] * args.clients,
                                        meter=meter)
            for c in levels:
                out["http"][c] = burst(clients, f"http {c}", [
                    ("book", mine, max(1, c // args.clients), 0, None)
                    for mine in split(users(f"http {c}", "token"), args.clients)], client_groups)
            if args.rate:
                out["paced"] = burst(clients, "paced", [
                    ("book", mine, per_client, 0, (args.rate, k * per_client, per_client * args.clients))
                    for k, mine in enumerate(split(users("paced", "token"), args.clients))], client_groups)
            out["server_rss"] = server.peak_rss()
        finally:
            out["client_rss"] = clients.close() if clients is not None else 0.0
            server.stop()
        server_log = [line for line in (tmp / "server.log").read_text(errors="replace").splitlines() if line.strip()]

    # ---- the summary
    print(f"\n=== Summary ===\n\n1. Release-time burst: {n_slots:,} slots of {n_doctors} doctors in {HOSPITALS} "
          f"hospitals (capacity 1–3: {places:,} places), {popular:,} popular slots ({sum(capacities[:popular]):,} "
          f"places) taking {POPULAR_SHARE:.0%} of the attempts; {persons:,} persons × {args.attempts} attempts = "
          f"{attempts_n:,} attempts per burst, each POST {BOOK} with confirm=true (hold + book, one transaction); "
          "rules: 2 bookings per person per day, 1 per department, 1 per doctor")
    print(f"  {'mode':<50}{'answered':>9}{'per s':>8}{'booked':>8}{'booked/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'max ms':>8}  answers")

    def row(name: str, r: dict, note: str = "") -> None:
        booked = r.get("good", 0)
        per_s = booked / r["sold_out"] if r.get("sold_out") else 0.0
        if not note:
            main_, other409, throttled, errors = breakdown(r["outcomes"])
            note = (f"201 {main_[0]:,} · no_slot {main_[1]:,} · limit_reached {main_[2]:,} · 409 other {other409:,} · "
                    f"429 {throttled:,} · errors {errors or 0}")
        print(f"  {name:<50}{r['n']:>9,}{r['rate']:>8,.0f}{booked:>8,}{per_s:>9,.0f}{r['p50']:>8.1f}{r['p99']:>8.1f}"
              f"{r['max']:>8.1f}  {note}")

    for c, r in out["http"].items():
        row(f"HTTP, {c} in flight: {args.workers} workers, {args.clients}×{max(1, c // args.clients)} conns", r)
    if "paced" in out:
        row(f"HTTP, paced at {args.rate:,.0f}/s: {args.clients}×{max(1, top // args.clients)} conns", out["paced"])
    for c, r in out["service"].items():
        row(f"service layer, {c} in flight: {procs}×{max(1, c // procs)} threads", r)
    for (c, capped), r in out["naive"].items():
        row(f"baseline: naive UPDATE{' … AND n < cap' if capped else ', no cap'}, {c} conns", r,
            f"{r['outcomes'].get('updated', 0):,} updated, {r['outcomes'].get('full', 0):,} found the row full; "
            f"{naive_seconds:g} s, raw psycopg")
    pg = out["pgbench"]
    if pg is None:
        print("  (pgbench not installed: its row is left out)")
    elif "error" in pg:
        print(f"  pgbench failed: {pg['error']}")
    else:
        print(f"  {'baseline: pgbench, same capped script, ' + str(top) + ' clients':<50}{pg['n']:>9,}{pg['rate']:>8,.0f}"
              f"{'':>8}{'':>9}{pg['p50']:>8.1f}{pg['p99']:>8.1f}{pg['max']:>8.1f}  -j 2, {max(1, round(naive_seconds))} s; "
              f"{pg['places']:,} places taken")
    h = out["health"]
    print(f"  {'HTTP stack alone: GET /health, ' + str(top) + ' conns':<50}{h['n']:>9,}{h['rate']:>8,.0f}{'':>8}{'':>9}"
          f"{h['p50']:>8.1f}{h['p99']:>8.1f}{h['max']:>8.1f}  no database")
    print("  (answered/s: every answer over the burst's wall time; booked/s: bookings over the time until the last "
          "201; latency: from sending to the answer, every answer; each client thread sends its next attempt when "
          "the last is answered, so at a fixed rate latency grows with the attempts in flight; paced: each connection "
          "sends its attempts at its share of the rate, latency from each attempt's due time)")
    paced = {"paced": out["paced"]} if "paced" in out else {}
    for name, runs in (("HTTP", out["http"]), ("HTTP", paced), ("service layer", out["service"])):
        for c, r in runs.items():
            kinds = ", ".join(f"{o} p50 {p50:.1f} / p99 {p99:.1f} ms" for o, (n, p50, p99)
                              in sorted(r["kinds"].items(), key=lambda kv: -kv[1][0]) if n >= 20)
            naive = out["naive"].get((c, True))
            ratio = f"; ÷ naive capped at {c}: {r['rate'] / naive['rate']:.3f}" if naive else ""
            print(f"  {name}, {c if c == 'paced' else f'{c} in flight'}: half the bookings made {r['booked_by'][0.5]:.1f} s after the release, 90 % "
                  f"after {r['booked_by'][0.9]:.1f} s, the last after {r['sold_out']:.1f} s{ratio}; latency by answer: "
                  f"{kinds}")

    def goal(r: dict) -> bool:
        return r["rate"] >= 2000 and r["p99"] <= 100 and r["n"] == attempts_n and not breakdown(r["outcomes"])[3]

    best = max(out["http"].items(), key=lambda kv: (goal(kv[1]), kv[1]["rate"]))
    print(f"  goal ≥ 2,000 attempts/s answered with p99 ≤ 100 ms (over HTTP): "
          f"{'met' if goal(best[1]) else 'not met'} (best: {best[1]['rate']:,.0f}/s, p99 {best[1]['p99']:.1f} ms with "
          f"{best[0]} in flight)")
    if paced:
        r = paced["paced"]
        held = args.rate >= 2000 and r["p99"] <= 100 and r["n"] == attempts_n and not breakdown(r["outcomes"])[3]
        print(f"  paced at {args.rate:,.0f}/s on {top} connections: {'met' if held else 'not met'} (answered "
              f"{r['rate']:,.0f}/s, p99 {r['p99']:.1f} ms from each attempt's due time: a server falling behind the "
              "rate would show as a growing lag)")
    sbest = max(out["service"].items(), key=lambda kv: (goal(kv[1]), kv[1]["rate"]))
    print(f"  the same at the service layer, no HTTP: {'met' if goal(sbest[1]) else 'not met'} (best: "
          f"{sbest[1]['rate']:,.0f}/s, p99 {sbest[1]['p99']:.1f} ms with {sbest[0]} in flight)")

    print("\n2. Checks, from the database after each burst")
    ok = True
    for name, r in [(f"HTTP, {c}", r) for c, r in out["http"].items()] + [("HTTP, paced", r) for r in paced.values()] + \
                   [(f"service layer, {c}", r) for c, r in out["service"].items()]:
        c = r["check"]
        told = r["outcomes"].get("201 booked", 0)
        errors = breakdown(r["outcomes"])[3]
        ok &= (c["oversold_slots"] == 0 and c["taken_mismatch"] == 0 and c["booked"] == told and not c["held"]
               and not (c["over_per_day"] or c["over_per_department"] or c["over_per_doctor"]) and not errors)
        print(f"  {name}: oversold: {c['oversold_places']} ({c['oversold_slots']} slots over capacity); slots whose "
              f"taken ≠ active appointments: {c['taken_mismatch']}; {c['booked']:,} booked rows for {told:,} answers "
              f"201; held left {c['held']}; {c['active']:,} of {c['capacity']:,} places taken, {c['full_slots']:,} of "
              f"{n_slots:,} slots full, {c['persons_booked']:,} persons booked; persons over the rules: per day "
              f"{c['over_per_day']}, per department {c['over_per_department']}, per doctor {c['over_per_doctor']}")
    for name, r in [(f"naive capped, {c}", r) for (c, capped), r in out["naive"].items() if capped] + [("pgbench", pg)]:
        if r and "error" not in r:
            print(f"  {name}: {r['places']:,} of {places:,} places taken, rows over cap {r['oversold']}")
    if server_log:
        print(f"  server log: {len(server_log)} lines at WARNING or above; last: "
              f"{' | '.join(x[:160] for x in server_log[-2:])}")

    print("\n3. Where the time goes (CPU from /proc of each process, ms per attempt; the machine's busy share)")
    rows = [(f"HTTP, {c} in flight", r, ("server", "PostgreSQL", "clients")) for c, r in out["http"].items()]
    rows += [(f"HTTP, paced at {args.rate:,.0f}/s", r, ("server", "PostgreSQL", "clients")) for r in paced.values()]
    rows += [(f"service layer, {c} in flight", r, ("service processes", "PostgreSQL")) for c, r in out["service"].items()]
    rows += [(f"GET /health, {top} conns", out["health"], ("server", "PostgreSQL", "clients"))]
    for name, r, groups in rows:
        n = max(1, r["n"])
        parts = ", ".join(f"{g} {r['cpu'].get(g, 0.0) / n * 1000:.2f}" for g in groups)
        total = sum(r["cpu"].get(g, 0.0) for g in groups) / n * 1000
        print(f"  {name:<28} {parts}; total {total:.2f} ms → {os.cpu_count()} cores allow ≈ "
              f"{os.cpu_count() / total * 1000:,.0f}/s at this cost; machine {r['cpu'].get('busy %', 0.0):.0f}% busy, "
              f"{r['cpu'].get('others %', 0.0):.0f}% of it by other processes")
    print("  The database's client backends during each burst (pg_stat_activity every 20 ms; 'idle in transaction' = "
          "waiting for the Python side between statements), and connections opened:")
    for name, r, _ in rows[:-1]:
        w = r["waits"]
        seen = sum(w["counts"].values())
        top_waits = ", ".join(f"{what} {k / max(1, seen):.0%}" for what, k in w["counts"].most_common(5))
        churn = " (each a new PostgreSQL backend process)" if r["sessions"] > 20 else ""
        print(f"  {name:<28} {seen / max(1, w['samples']):.1f} backends busy on average: {top_waits}; at least "
              f"{r['sessions']:,} connections opened{churn}")
    print(f"\n4. peak RSS: this process {peak_rss_mib():,.0f} MiB; server worker (largest) {out['server_rss']:,.0f} MiB; "
          f"largest HTTP client {out['client_rss']:,.0f} MiB; largest service-layer process {out['inproc_rss']:,.0f} MiB")
    load_end = os.getloadavg()
    print(f"  whole run {time.perf_counter() - t0:.1f} s; load average {load[0]:.2f} at the start, {load_end[0]:.2f} "
          "at the end (the bench's own threads count in it)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
