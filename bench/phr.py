"""Benchmark: FHIR ``GET /fhir/Patient/{empi}/$everything`` for a person with a long history, in a large region.

The issue's goal: p99 ≤ 100 ms for a person with 200 encounters at an index of 1,000,000 persons, 8 concurrent
clients. Printed, measured in the same run:

1. Set-up, each step timed: a new database (migrated), the small synthetic region (``synth.seed``); the master
   patient index grown to ``--persons`` persons by one ``INSERT … SELECT generate_series`` into ``empi.person``
   (golden records like the matcher's; 0.5 % of them merged into a neighbour, as an index that has seen merges);
   ``--with-records`` of those persons (every tenth) given 1–10 documents each (about 5.5 on average: outpatient
   records, prescriptions, lab reports, admissions, discharge summaries from 20 hospitals, over ten years) and
   their clinical items, inserted by SQL — the items copied from the measured person's real documents of the same
   type, so rows look like registered ones (one shared ``records.content`` row). The measured person: a resident
   account (``auth.create_user``) holding its own health card (``healthcard.service.issue``, EMPI link or create)
   and ``--encounters`` documents registered through ``records.service.register`` (C0002 outpatient records,
   C0007 lab reports, C0004 prescriptions, and every twentieth an inpatient C0034 admission or C0053 discharge
   summary; four hospitals, one outpatient and one inpatient number per hospital, as hospitals keep them), each at
   its own service time, so each is an encounter. They are registered in batches between the bulk inserts, so
   the person's rows lie spread over the tables as years of visits would. VACUUM ANALYZE and a CHECKPOINT, as
   after any bulk load.
2. One request checks what is measured: the bundle's total, how many resources ``_count`` (the largest
   page, ``phr_api.MAX_PAGE``) returns, and every page walked to count the Encounters (= ``--encounters``). With 200 encounters the
   bundle is larger than one page: page 1 is what is measured, and the whole history (every page in turn) too.
3. The app under uvicorn (``--workers`` processes, a child process like ``smartcare serve``), driven by
   ``--clients`` concurrent clients (threads of ``--client-processes`` processes, each on its own keep-alive
   connection, ``_common.LeanHttp``: a minimal HTTP/1.1 client as ``wrk`` is) sending ``--requests`` ``GET /fhir/Patient/{empi}/$everything?_count=<MAX_PAGE>`` with the
   resident's bearer token (from ``POST /api/v1/auth/token``): p50/p95/p99/max, requests/s, CPU per request of
   the server, PostgreSQL and the clients (from /proc, with the share other processes took), what the database's
   backends were doing (``pg_stat_activity`` sampled), the server's peak RSS; one client alone (the service time,
   no queue) before.
4. Baselines, same run, same concurrency: (a) the raw SQL the endpoint needs — the person's current documents with
   their encoded resources (``records.document_fhir``), one query on psycopg connections straight to PostgreSQL; (b) ``GET /health`` through the same
   server (HTTP + framework floor).
5. A verdict against the goal, with the CPU budget per request it implies. When it is not met (or with
   ``--profile``): one request's phases timed in process, in the endpoint's order (token, access decision,
   merged person ids, encoded entries, Patient, page + Bundle, audit write, commit), with the SQL time and
   statements of each, the slowest statements; the plan of the merged-ids lookup (``empi.absorbed_ids``, the
   slowest when this was written) and — an experiment on the scratch database after the measurements — its time
   again with the index it lacks.

    python bench/phr.py            # an index of 1,000,000 persons, 100,000 with records; 2,000 requests
    python bench/phr.py --quick    # 100,000 persons, 10,000 with records; 1,000 requests (under a minute)

Uses ``DATABASE_URL`` (or the embedded PostgreSQL), like every benchmark here: a new database on that server
per run, migrated, seeded, dropped at the end. Never asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

# Before any settings are read, so this process (tokens, the in-process profile) and the server agree.
os.environ.setdefault("SMARTCARE_SECRET_KEY", secrets.token_urlsafe(48))
os.environ.setdefault("SMARTCARE_LOG_LEVEL", "WARNING")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import psutil
from _common import CpuMeter, LeanHttp, Server, WaitSampler, pct, peak_rss_mib, postgres_processes, scratch_database

from smartcare.records.phr_api import MAX_PAGE

GOAL_P99_MS = 100.0
COUNT = MAX_PAGE  # the largest page $everything serves: a whole long history in one request
PASSWORD = "bench-resident-pass"
OUTPATIENT = ("C0002", "C0007", "C0004")
INPATIENT = ("C0034", "C0053")
#: the other persons' documents: types and how often (outpatient records, prescriptions, labs, inpatient stays)
BULK_TYPES = ("C0002",) * 8 + ("C0004",) * 5 + ("C0007",) * 4 + ("C0034",) + ("C0053",)
BULK_HOSPITALS = 20


# ---- set-up --------------------------------------------------------------------------------------------------


def seed_region() -> dict:
    from smartcare.platform.db import session_scope
    from smartcare.synth import service as synth

    with session_scope() as s:
        return synth.seed(s, scale="small", seed=2026).counts


def grow_index(dsn: str, total: int) -> int:
    """``empi.person`` grown to ``total`` persons in one statement (empi_ids from the service's sequence, in its
    format; golden records shaped like ``empi.golden``'s, migration 0017); 0.5 % merged into the person before them.
    The number of persons added."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM empi.person").fetchone()[0]
        add = max(0, total - have - 1)  # and the measured person, made later by the health card
        conn.execute("SELECT setseed(0.2026)")
        conn.execute(
            """INSERT INTO empi.person (empi_id, golden, state)
               SELECT 'E' || lpad(nextval('empi.person_number')::text, 11, '0'),
                      jsonb_build_object(
                          'name', (ARRAY['王','李','张','刘','陈','杨','黄','赵','吴','周'])[1 + i %% 10]
                                  || (ARRAY['伟','芳','娜','敏','静','丽','强','磊','军','洋','勇','艳'])[1 + (i / 10) %% 12]
                                  || (ARRAY['','华','明','婷','杰','兰'])[1 + (i / 120) %% 6],
                          'sex', (1 + i %% 2)::text,
                          'birth_date', (date '1930-01-01' + ((i * 7919) %% 34000)::int)::text,
                          'id_number', '500103' || to_char(date '1930-01-01' + ((i * 7919) %% 34000)::int, 'YYYYMMDD')
                                       || lpad((i %% 1000)::text, 3, '0') || (i %% 10)::text,
                          'phone', '13' || lpad(((i * 104729) %% 1000000000)::text, 9, '0'),
                          'address', '重庆市渝中区解放碑街道' || (1 + i %% 300) || '号',
                          'sources', 1 + i %% 3),
                      'active'
               FROM generate_series(1::bigint, %s::bigint) AS i""", (add,))
        # a few merged persons, as an index that has seen merges has (the survivor: the person before)
        conn.execute("""UPDATE empi.person SET state = 'merged', merged_into = id - 1
                        WHERE id > 1 AND id %% 200 = 7 AND id > (SELECT max(id) FROM empi.person) - %s""", (add,))
    return add


def measured_resident(encounters: int, seed: int):
    """A resident account holding its own health card, and the documents of its ``encounters`` visits (not yet
    registered): four hospitals, each with one outpatient and one inpatient number for the person."""
    from sqlalchemy import text

    from smartcare.healthcard import service as healthcard
    from smartcare.platform import auth
    from smartcare.platform.clock import CHINA_TZ
    from smartcare.platform.db import session_scope
    from smartcare.synth import service as synth
    from smartcare.synth.documents import Person, clean_document

    username = "bench-phr-resident"
    with session_scope() as s:
        row = s.execute(text("SELECT name, id_number, phone, sex, birth_date FROM synth.resident "
                             "WHERE guardian_id IS NULL AND birth_date < current_date - interval '40 years' "
                             "ORDER BY id LIMIT 1")).one()
        auth.create_user(s, username=username, password=PASSWORD, display_name="居民", roles=["resident"],
                         actor="bench")
        card = healthcard.issue(s, holder=username, relation="self", name=row.name, id_number=row.id_number,
                                phone=row.phone, actor="bench")
        hospitals = synth.document_hospitals(s, limit=4)
        empi_id, person_id = card.empi_id, card.person_id
    me = Person(row.id_number, row.name, row.sex, row.birth_date, row.phone)
    rng = random.Random(seed)
    numbers = {(h.facility_code, kind): f"{kind}{rng.randrange(10**9):09d}" for h in hospitals for kind in ("MZ", "ZY")}
    now = datetime.now(CHINA_TZ).replace(minute=0, second=0, microsecond=0)
    days = sorted(rng.sample(range(2, 8 * 365), encounters), reverse=True)  # one visit a day at most: distinct times
    docs = []
    for n, day in enumerate(days):
        at = (now - timedelta(days=day)).replace(hour=rng.randint(8, 16), minute=rng.choice((0, 15, 30, 45)))
        type_code = INPATIENT[(n // 20) % 2] if n % 20 == 19 else OUTPATIENT[n % 3]
        hospital = hospitals[0] if rng.random() < 0.5 else rng.choice(hospitals[1:])
        doc = clean_document(type_code, hospital=hospital, person=me, rng=rng, at=at)
        kind = "ZY" if type_code in INPATIENT else "MZ"
        doc = replace(doc, visit=replace(doc.visit, number=numbers[(hospital.facility_code, kind)]))
        docs.append((hospital.facility_code, doc))
    # the first of each type goes first: their items are the templates of the other persons' records
    firsts = {}
    for i, (_, d) in enumerate(docs):
        firsts.setdefault(d.type_code, i)
    order = sorted(firsts.values()) + [i for i in range(len(docs)) if i not in set(firsts.values())]
    return username, empi_id, person_id, [docs[i] for i in order]


def register(docs: list) -> list[int]:
    from smartcare.platform.db import session_scope
    from smartcare.records import service as records
    from smartcare.standards import cda

    ids = []
    for facility, doc in docs:
        with session_scope() as s:
            r = records.register(s, raw=cda.build(doc), sender="bench", facility_code=facility,
                                 received_at=doc.effective_time + timedelta(hours=1), actor="bench")
            if r.outcome != "registered":
                raise SystemExit(f"document of {doc.visit.start}: {r.outcome}")
            ids.append(r.document.id)
    return ids


def prepare_bulk(dsn: str, template_ids: list[int]) -> None:
    """The shared content row, the hospitals, and the item templates (the items of one real document per type)."""
    import hashlib

    import psycopg

    from smartcare.platform.db import session_scope
    from smartcare.registry import service as registry
    from smartcare.standards.cda import TITLES

    with session_scope() as s:
        codes = [f.code for f in registry.hospitals(s, limit=BULK_HOSPITALS * 2)]
    hospitals = [(c, registry.credit_code(c)) for c in codes if registry.credit_code(c)][:BULK_HOSPITALS]
    raw = b"<ClinicalDocument>bench: the bytes of every bulk-inserted document</ClinicalDocument>"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO records.content (sha256, raw) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (hashlib.sha256(raw).hexdigest(), raw))
        conn.execute("CREATE TABLE bench_bulk (key text PRIMARY KEY, value text[])")
        conn.execute("INSERT INTO bench_bulk VALUES ('sha', ARRAY[%s, %s]), ('hospitals', %s), ('credit', %s), "
                     "('types', %s), ('titles', %s)",
                     (hashlib.sha256(raw).hexdigest(), str(len(raw)), [h[0] for h in hospitals],
                      [h[1] for h in hospitals], list(BULK_TYPES), [TITLES.get(t, t) for t in BULK_TYPES]))
        conn.execute("""CREATE TABLE bench_item_template AS
                        SELECT type_code, kind, code, name, value_text, value_number, unit, value_code, value_display,
                               value_system, section, sensitive, position
                        FROM records.item WHERE record_id = ANY(%s)""", (template_ids,))


def bulk_records(dsn: str, lo: int, hi: int, step: int) -> tuple[int, int, int]:
    """Documents (1–10 each) and their items for the active persons lo ≤ id < hi with id % step = 0.
    (documents, items, persons)"""
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT setseed(%s)", (((lo * 7919) % 10_000) / 10_000,))
        docs, items, persons = conn.execute(
            """WITH b AS (SELECT (SELECT value FROM bench_bulk WHERE key = 'sha') AS sha,
                                 (SELECT value FROM bench_bulk WHERE key = 'hospitals') AS hospitals,
                                 (SELECT value FROM bench_bulk WHERE key = 'credit') AS credit,
                                 (SELECT value FROM bench_bulk WHERE key = 'types') AS types,
                                 (SELECT value FROM bench_bulk WHERE key = 'titles') AS titles),
               p AS (SELECT id, empi_id FROM empi.person WHERE id >= %(lo)s AND id < %(hi)s AND id %% %(step)s = 0
                     AND state = 'active'),
               r AS (SELECT p.id, p.empi_id, k,
                            1 + floor(random() * cardinality(b.hospitals))::int AS h,
                            1 + floor(random() * cardinality(b.types))::int AS t,
                            now() - random() * interval '3650 days' AS at
                     FROM p CROSS JOIN b
                     CROSS JOIN LATERAL generate_series(1, 1 + ((hashint8(p.id)::bigint + 2147483648) %% 10)::int) AS k
                     OFFSET 0),
               d AS (INSERT INTO records.document (document_id, custodian_code, facility_code, type_code, type_name,
                                                   person_id, empi_id, patient_ref, service_time, effective_time,
                                                   received_at, registered_at, sha256, size_bytes, status, sender)
                     SELECT 'bench-' || r.id || '-' || r.k, b.credit[r.h], b.hospitals[r.h], b.types[r.t],
                            b.titles[r.t], r.id, r.empi_id, 'MZ' || lpad(r.id::text, 9, '0'), r.at,
                            r.at + interval '1 hour', r.at + interval '2 hours', r.at + interval '2 hours',
                            b.sha[1], b.sha[2]::int, 'current', 'bench'
                     FROM r CROSS JOIN b ORDER BY r.at
                     RETURNING id, person_id, facility_code, type_code, service_time),
               i AS (INSERT INTO records.item (record_id, person_id, facility_code, type_code, kind, code, name,
                                               value_text, value_number, unit, value_code, value_display,
                                               value_system, at, section, sensitive, position)
                     SELECT d.id, d.person_id, d.facility_code, d.type_code, t.kind, t.code, t.name, t.value_text,
                            t.value_number, t.unit, t.value_code, t.value_display, t.value_system, d.service_time,
                            t.section, t.sensitive, t.position
                     FROM d JOIN bench_item_template t ON t.type_code = d.type_code
                     ORDER BY d.id, t.position
                     RETURNING 1)
               SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM i), (SELECT count(DISTINCT person_id) FROM d)""",
            {"lo": lo, "hi": hi, "step": step}).fetchone()
    return docs, items, persons


def set_up(dsn: str, args) -> dict:
    """Every set-up step, timed. What the measurement needs: the account, the person, sizes."""
    import psycopg

    out: dict = {"steps": []}

    def step(name: str, fn, detail=lambda r: ""):
        t = time.perf_counter()
        r = fn()
        seconds = time.perf_counter() - t
        out["steps"].append((name, seconds, detail(r)))
        print(f"    {name}: {seconds:.1f} s{'; ' + detail(r) if detail(r) else ''}", flush=True)
        return r

    step("seed the small region (synth.seed, scale small, seed 2026)", seed_region,
         lambda c: f"{c.get('facilities', 0):,} facilities, {c.get('residents', 0):,} residents, "
                   f"{c.get('visit_cards', 0):,} visit cards")
    step(f"grow the master patient index to {args.persons:,} persons (INSERT … SELECT generate_series)",
                 lambda: grow_index(dsn, args.persons), lambda n: f"{n:,} persons added")
    with psycopg.connect(dsn, autocommit=True) as conn:
        lo, hi = conn.execute("SELECT min(id), max(id) + 1 FROM empi.person").fetchone()
    user, empi_id, person_id, docs = step(
        "the measured resident: account, health card issued (EMPI link or create)",
        lambda: measured_resident(args.encounters, args.seed), lambda r: f"{r[1]} (person {r[2]})")
    out.update(username=user, empi_id=empi_id, person_id=person_id)

    # interleaved: a batch of the person's documents through the registry, then a chunk of the others' by SQL
    chunks = max(1, min(args.chunks, len(docs)))
    batches = [docs[k * len(docs) // chunks:(k + 1) * len(docs) // chunks] for k in range(chunks)]
    step_ = max(1, args.persons // max(1, args.with_records))
    bounds = [lo + (hi - lo) * k // chunks for k in range(chunks + 1)]
    reg_s = bulk_s = 0.0
    n_docs = n_items = n_persons = 0
    ids: list[int] = []
    t0 = time.perf_counter()
    for k, batch in enumerate(batches):
        t = time.perf_counter()
        ids += register(batch)
        reg_s += time.perf_counter() - t
        if k == 0:
            prepare_bulk(dsn, ids[:len({d.type_code for _, d in docs})])
        t = time.perf_counter()
        d, i, n = bulk_records(dsn, bounds[k], bounds[k + 1], step_)
        bulk_s += time.perf_counter() - t
        n_docs, n_items, n_persons = n_docs + d, n_items + i, n_persons + n
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE bench_bulk, bench_item_template")
    line = (f"{len(ids)} documents of the measured person through records.service.register ({reg_s:.1f} s, "
            f"{len(ids) / reg_s:.0f}/s) in {chunks} batches, between them {n_docs:,} documents with {n_items:,} items "
            f"of {n_persons:,} other persons (every {step_}th, active) by SQL ({bulk_s:.1f} s)")
    out["steps"].append(("records", time.perf_counter() - t0, line))
    print(f"    records: {time.perf_counter() - t0:.1f} s; {line}", flush=True)
    out["record_ids"] = ids

    def vacuum():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            with contextlib.suppress(psycopg.Error):
                conn.execute("CHECKPOINT")

    step("VACUUM ANALYZE and CHECKPOINT (as after any bulk load)", vacuum)
    with psycopg.connect(dsn, autocommit=True) as conn:
        out["sizes"] = conn.execute(
            """SELECT (SELECT count(*) FROM empi.person), (SELECT count(*) FROM empi.person WHERE state = 'active'),
                      (SELECT count(*) FROM records.document), (SELECT count(DISTINCT person_id) FROM records.document),
                      (SELECT count(*) FROM records.item),
                      pg_size_pretty(pg_total_relation_size('empi.person')),
                      pg_size_pretty(pg_total_relation_size('records.document')),
                      pg_size_pretty(pg_total_relation_size('records.item')),
                      pg_size_pretty(pg_database_size(current_database())),
                      (SELECT count(*) FROM empi.link WHERE person_id = %s),
                      (SELECT count(*) FROM records.item i JOIN records.document d ON d.id = i.record_id
                        WHERE d.person_id = %s)""", (person_id, person_id)).fetchone()
    return out


# ---- the clients ---------------------------------------------------------------------------------------------


def _client_worker(k: int, jobs, results, barrier) -> None:
    """One client process: for each job, ``threads`` threads on their own connections (``LeanHttp``, or a
    psycopg connection for the SQL baseline), warmed before the barrier, then ``count`` requests among them.
    Sends back (k, spans, CPU seconds); at the end its peak RSS."""
    import resource
    import threading
    from collections import deque

    import psycopg

    conns: list = []
    while (job := jobs.get()) is not None:
        for c in conns:  # the last job's: open until now, so its database backends were measured to the end
            c.close()
        kind, params, threads, count = job
        if kind == "http":  # one request = GET each of ``paths`` in turn (the pages of one history)
            port, paths, headers = params
            conns = [LeanHttp(port) for _ in range(threads)]

            def one(c, paths=paths, headers=headers):
                status, size = 200, 0
                for path in paths:
                    code, body = c.request("GET", path, None, headers)
                    size += len(body)
                    if code != 200:
                        status = code
                return status, size
        else:  # sql: the person's current documents with their encoded resources
            dsn, person_ids = params
            conns = [psycopg.connect(dsn, autocommit=True) for _ in range(threads)]

            def one(c, person_ids=person_ids):
                docs = c.execute("SELECT d.*, f.types, f.entries FROM records.document d "
                                 "JOIN records.document_fhir f ON f.record_id = d.id "
                                 "WHERE d.person_id = ANY(%s) AND d.status = 'current' "
                                 "ORDER BY d.service_time DESC, d.id", (person_ids,), binary=True).fetchall()
                return 200, sum(len(d[-2]) for d in docs)
        for c in conns:
            one(c)  # connect, warm
        todo = deque(range(count))
        spans: list = []

        def run(c, todo, spans, one=one):
            mine = []
            while True:
                try:
                    todo.popleft()
                except IndexError:
                    break
                sent = time.perf_counter()
                try:
                    status, size = one(c)
                except Exception as exc:  # noqa: BLE001 — counted and shown, never hidden
                    status, size = type(exc).__name__, 0
                mine.append((sent, time.perf_counter(), status, size))
            spans.extend(mine)

        pool = [threading.Thread(target=run, args=(c, todo, spans)) for c in conns]
        barrier.wait()
        cpu = time.process_time()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        results.put((k, spans, time.process_time() - cpu))
    for c in conns:
        c.close()
    results.put((k, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


class Clients:
    """``processes`` client processes (spawned once); a job runs on all of them at once, ``clients`` threads in all."""

    def __init__(self, processes: int):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.n = processes
        self.barrier, self.results = ctx.Barrier(processes + 1), ctx.Queue()
        self.jobs = [ctx.Queue() for _ in range(processes)]
        self.procs = [ctx.Process(target=_client_worker, args=(k, self.jobs[k], self.results, self.barrier),
                                  daemon=True) for k in range(processes)]
        for p in self.procs:
            p.start()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def run(self, kind: str, params, clients: int, requests: int, meter: CpuMeter | None = None,
            waits: WaitSampler | None = None) -> dict:
        for k, q in enumerate(self.jobs):
            threads = clients // self.n + (1 if k < clients % self.n else 0)
            q.put((kind, params, threads, requests // clients * threads
                   + min(threads, max(0, requests % clients - k * threads))))
        self.barrier.wait()
        if meter is not None:
            meter.start()
        if waits is not None:
            waits.start()
        spans, cpu = [], 0.0
        for _ in range(self.n):
            _, mine, used = self.results.get(timeout=3600)
            spans += mine
            cpu += used
        out = summarise(spans)
        out["client_cpu"] = cpu
        out["cpu"] = meter.stop() if meter is not None else {}
        out["waits"] = waits.stop() if waits is not None else None
        return out

    def close(self) -> float:
        for q in self.jobs:
            q.put(None)
        peaks = []
        with contextlib.suppress(Exception):
            peaks = [self.results.get(timeout=60)[1] for _ in self.procs]
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        return max(peaks, default=0.0)


def summarise(spans: list) -> dict:
    if not spans:
        return {"n": 0, "rate": 0.0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"),
                "max": float("nan"), "statuses": Counter(), "wall": 0.0, "size": 0}
    latencies = sorted(end - sent for sent, end, _, _ in spans)
    wall = max(end for _, end, _, _ in spans) - min(sent for sent, _, _, _ in spans)
    return {"n": len(spans), "rate": len(spans) / wall, "p50": pct(latencies, 0.50), "p95": pct(latencies, 0.95),
            "p99": pct(latencies, 0.99), "max": latencies[-1] * 1000, "mean": statistics.fmean(latencies) * 1000,
            "statuses": Counter(s for _, _, s, _ in spans), "wall": wall,
            "size": statistics.median(size for _, _, _, size in spans)}


def sequential(port: int, path: str, headers: dict, n: int) -> dict:
    """One client alone, one request after another: the service time without a queue."""
    spans = []
    c = LeanHttp(port)
    c.request("GET", path, None, headers)
    for _ in range(n):
        sent = time.perf_counter()
        status, body = c.request("GET", path, None, headers)
        spans.append((sent, time.perf_counter(), status, len(body)))
    c.close()
    return summarise(spans)


def wait_label(state: str, kind: str | None, event: str | None) -> str:
    """A backend's activity in the PHR run: running a statement, idle in a transaction (waiting for the Python
    side), waiting for a lock (the audit chain's advisory lock) …"""
    if state == "idle in transaction":
        return "idle in transaction (waiting for Python)"
    if kind is None:
        return "running a statement"
    if kind == "Lock" and event == "advisory":
        return "waiting for an advisory lock (the audit chain's)"
    return f"{kind}:{event}"


# ---- where the time goes: one request's phases in process ----------------------------------------------------


class SqlClock:
    """Time in psycopg's ``Cursor.execute`` (every statement, the ORM's and the raw ones; the round trip and the
    transfer, not the decoding of rows into Python objects), by phase and by statement."""

    def __init__(self):
        import psycopg

        self.cursor = psycopg.Cursor
        self.original = psycopg.Cursor.execute
        self.seconds = 0.0
        self.count = 0
        self.statements: dict[str, list[float]] = defaultdict(list)
        clock = self

        def execute(cur, query, *a, **kw):
            start = time.perf_counter()
            try:
                return clock.original(cur, query, *a, **kw)
            finally:
                spent = time.perf_counter() - start
                clock.seconds += spent
                clock.count += 1
                clock.statements[" ".join(str(query).split())[:150]].append(spent)

        self.patched = execute

    def __enter__(self):
        self.cursor.execute = self.patched
        return self

    def __exit__(self, *exc):
        self.cursor.execute = self.original


def profile(token: str, empi_id: str, runs: int) -> dict:
    """The endpoint's steps in the order it runs them (``phr_api.everything``), each timed, ``runs`` times, each
    in its own session and transaction as a request is (the audit write commits apart, in its own)."""
    from smartcare.platform import auth
    from smartcare.platform.db import session_scope
    from smartcare.records import access as consent, fhir, service

    phases = ("token", "access decision", "merged person ids", "encoded entries", "Patient", "page + Bundle",
              "audit write", "commit")
    wall: dict[str, list[float]] = defaultdict(list)
    sql: dict[str, list[float]] = defaultdict(list)
    statements: dict[str, list[int]] = defaultdict(list)
    sizes: dict = {}
    with SqlClock() as clock:
        for run in range(runs + 2):  # two warm-ups
            marks = []

            def mark(phase: str, t0: float, s0: float, c0: int, marks=marks) -> tuple[float, float, int]:
                now = time.perf_counter()
                marks.append((phase, now - t0, clock.seconds - s0, clock.count - c0))
                return time.perf_counter(), clock.seconds, clock.count

            t, s_, c = time.perf_counter(), clock.seconds, clock.count
            who = auth.read_token(token)
            t, s_, c = mark("token", t, s_, c)
            with session_scope() as session:  # one transaction, as the endpoint's ``_in_db``
                types = {x for x in fhir.RESOURCE_TYPES if who.may_read(x)}
                access = consent.decide(session, who, empi_id, what="Patient/$everything")
                t, s_, c = mark("access decision", t, s_, c)
                person_ids = service.person_ids(session, person_id=access.person_id)
                t, s_, c = mark("merged person ids", t, s_, c)
                entries = fhir.entries(session, access, person_ids, types)
                t, s_, c = mark("encoded entries", t, s_, c)
                if "Patient" in types:
                    entries.insert(0, fhir.encode(fhir.patient(access)))
                t, s_, c = mark("Patient", t, s_, c)
                chosen = entries[:COUNT]
                links = {"self": f"http://x/fhir/Patient/$everything?_count={COUNT}"}
                if len(entries) > COUNT:
                    links["next"] = "http://x/next"
                body = fhir.bundle(chosen, total=len(entries), links=links)
                t, s_, c = mark("page + Bundle", t, s_, c)
                consent.record_read(session, who, access, what="Patient/$everything")
                t, s_, c = mark("audit write", t, s_, c)
            mark("commit", t, s_, c)
            if run >= 2:
                for phase, w, sq, n in marks:
                    wall[phase].append(w)
                    sql[phase].append(sq)
                    statements[phase].append(n)
            sizes = {"entries": len(entries), "returned": len(chosen), "bytes": len(body),
                     "encounters": sum(1 for e in chosen if e.startswith(b'{"fullUrl":"/fhir/Encounter/'))}
        slowest = sorted(((statistics.median(v), len(v) // (runs + 2), q) for q, v in clock.statements.items()),
                         reverse=True)[:5]
    rows = [(p, statistics.median(wall[p]) * 1000, sorted(wall[p])[int(0.9 * (len(wall[p]) - 1))] * 1000,
             statistics.median(sql[p]) * 1000, statistics.median(statements[p])) for p in phases]
    return {"rows": rows, "total": sum(r[1] for r in rows), "sizes": sizes, "slowest": slowest, "runs": runs}


ABSORBED = """WITH RECURSIVE down (id, depth) AS (
                  SELECT %(p)s::bigint, 0
                  UNION ALL
                  SELECT p.id, down.depth + 1 FROM empi.person p JOIN down ON p.merged_into = down.id
                  WHERE down.depth < 32)
              SELECT id FROM down"""  # empi.service.absorbed_ids, as it is


def explain(dsn: str, person_id: int) -> tuple[list[str], float, float]:
    """EXPLAIN ANALYZE of the statement that resolves a person's merged ids (``empi.absorbed_ids``), run on every
    read of a person's records; then its median time over 20 runs as it is, and again with a partial index on
    ``empi.person (merged_into)`` — an experiment on this run's scratch database, after the measurements."""
    import psycopg

    def median_ms(conn) -> float:
        times = []
        for _ in range(20):
            t = time.perf_counter()
            conn.execute(ABSORBED, {"p": person_id}).fetchall()
            times.append(time.perf_counter() - t)
        return statistics.median(times) * 1000

    with psycopg.connect(dsn, autocommit=True) as conn:
        plan = [r[0] for r in conn.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING ON, SUMMARY ON) " + ABSORBED,
                                           {"p": person_id}).fetchall()]
        before = median_ms(conn)
        conn.execute("CREATE INDEX bench_person_merged_into ON empi.person (merged_into) WHERE merged_into IS NOT NULL")
        conn.execute("ANALYZE empi.person")
        after = median_ms(conn)
    return plan, before, after


def code_version() -> str:
    """The commit measured, and whether src/ had changes not committed (read only)."""
    root = Path(__file__).resolve().parent.parent
    try:
        git = ["git", "--no-optional-locks", "-C", str(root)]  # reads only: no index refresh
        head = subprocess.run([*git, "log", "-1", "--format=%h %s"], check=False, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "src"], check=False, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = len(dirty.splitlines())
    return f"{head[:110]}{f' (+ {changed} files changed in src/, not committed)' if changed else ''}"


# ---- the report ----------------------------------------------------------------------------------------------


def line(name: str, r: dict) -> str:
    bad = {k: v for k, v in r["statuses"].items() if k != 200}
    errors = f"; NOT 200: {', '.join(f'{k} × {v}' for k, v in bad.items())}" if bad else ""
    return (f"  {name:<54} {r['n']:>6,} in {r['wall']:6.1f} s {r['rate']:8,.1f}/s   p50 {r['p50']:7.1f}  "
            f"p95 {r['p95']:7.1f}  p99 {r['p99']:7.1f}  max {r['max']:7.1f} ms{errors}")


def cpu_line(name: str, r: dict, groups: tuple[str, ...]) -> str:
    n = max(1, r["n"])
    parts = ", ".join(f"{g} {r['cpu'].get(g, 0.0) / n * 1000:.2f}" for g in groups)
    return (f"  {name:<30} {parts} ms/request; machine {r['cpu'].get('busy %', 0.0):.0f}% busy, "
            f"{r['cpu'].get('others %', 0.0):.0f}% by other processes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 persons, 1,000 requests: under a minute")
    parser.add_argument("--persons", type=int, help="persons in the master patient index (default 1,000,000; "
                                                    "quick 100,000)")
    parser.add_argument("--with-records", type=int, help="other persons with documents (default 100,000; quick 10,000)")
    parser.add_argument("--encounters", type=int, default=200, help="the measured person's encounters (documents)")
    parser.add_argument("--requests", type=int, help="measured requests per mode (default 2,000; quick 200)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--client-processes", type=int, default=2, help="processes the clients are threads of")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--chunks", type=int, help="batches the person's documents are registered in, between "
                                                   "the bulk inserts (default 20; quick 5)")
    parser.add_argument("--profile-runs", type=int, help="in-process runs of the request's phases (default 50; "
                                                         "quick 10)")
    parser.add_argument("--profile", action="store_true", help="time the request's phases even when the goal is met")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    args.persons = args.persons or (100_000 if args.quick else 1_000_000)
    args.with_records = args.with_records or (10_000 if args.quick else 100_000)
    args.requests = args.requests or (1_000 if args.quick else 2_000)
    args.chunks = args.chunks or (5 if args.quick else 20)
    args.profile_runs = args.profile_runs or (10 if args.quick else 50)
    load = os.getloadavg()
    t_start = time.perf_counter()
    print(f"code: {code_version()}")
    print(f"PHR $everything benchmark{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs (load average "
          f"{load[0]:.2f}), PostgreSQL {os.environ.get('DATABASE_URL', '(embedded)').rsplit('@', 1)[-1]} (a new "
          f"database on it); a person with {args.encounters} encounters, an index of {args.persons:,} persons, "
          f"{args.clients} concurrent clients, {args.requests:,} requests per mode", flush=True)

    with tempfile.TemporaryDirectory(prefix="smartcare-bench-") as tmp_, scratch_database() as url:
        tmp = Path(tmp_)
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        database = dsn.rsplit("/", 1)[1].split("?")[0]
        print(f"1. set-up (migrated: {time.perf_counter() - t_start:.1f} s)", flush=True)
        t = time.perf_counter()
        setup = set_up(dsn, args)
        setup_s = time.perf_counter() - t
        (persons, active, n_docs, doc_persons, n_items, person_size, doc_size, item_size, db_size, cards,
         my_items) = setup["sizes"]
        print(f"    set-up {setup_s:.1f} s in all. The database: {persons:,} persons ({active:,} active; "
              f"empi.person {person_size}), {n_docs:,} documents of {doc_persons:,} persons (records.document "
              f"{doc_size}), {n_items:,} items (records.item {item_size}); {db_size} in all. The measured person "
              f"{setup['empi_id']}: {len(setup['record_ids'])} documents, {my_items:,} items, {cards} visit cards "
              "linked (the health card's and one outpatient/inpatient number per hospital)", flush=True)

        server = Server(url, args.workers, tmp / "server.log")
        clients = Clients(args.client_processes)
        out: dict = {}
        try:
            login = httpx.post(server.url + "/api/v1/auth/token",
                               json={"username": setup["username"], "password": PASSWORD}, timeout=30)
            if login.status_code != 200:
                raise SystemExit(f"login: {login.status_code} {login.text[:300]}")
            token = login.json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            path = f"/fhir/Patient/{setup['empi_id']}/$everything?_count={COUNT}"

            # ---- 2. what one request returns
            first = httpx.get(server.url + path, headers=headers, timeout=120)
            if first.status_code != 200:
                raise SystemExit(f"$everything: {first.status_code} {first.text[:500]}")
            body = first.json()
            kinds = Counter(e["resource"]["resourceType"] for e in body["entry"])
            pages, encounters, all_kinds, url_ = 1, 0, Counter(), server.url + path
            while url_:
                page = httpx.get(url_, headers=headers, timeout=120).json()
                all_kinds.update(e["resource"]["resourceType"] for e in page["entry"])
                nxt = [ln["url"] for ln in page["link"] if ln["relation"] == "next"]
                url_ = nxt[0] if nxt else None
                pages += 1 if url_ else 0
            encounters = all_kinds["Encounter"]
            one_page = body["total"] <= COUNT
            returns = ("one request returns everything" if one_page else
                       f"NOT everything in one request: the bundle has {body['total']:,} resources, more than the "
                       f"largest page (_count ≤ {COUNT}); a client needs {pages} requests")
            print(f"2. one request GET {path}: 200, {len(first.content):,} bytes, {len(body['entry']):,} of "
                  f"{body['total']:,} resources ({', '.join(f'{k} {v}' for k, v in kinds.most_common())})", flush=True)
            print(f"    {returns}; every page walked: {encounters} Encounters "
                  f"({'= ' if encounters == args.encounters else '≠ '}{args.encounters} registered), "
                  f"{all_kinds['DocumentReference']} DocumentReferences; all pages: "
                  f"{', '.join(f'{k} {v}' for k, v in all_kinds.most_common())}", flush=True)
            print(f"    measured below: page 1 with _count={COUNT} (the server builds every resource of the person for "
                  "any page, then sends the page)", flush=True)

            # ---- 3. the measurement, 4. the baselines
            print(f"3. {args.clients} concurrent clients ({args.client_processes} processes × threads, keep-alive "
                  f"connections, LeanHttp: a minimal HTTP/1.1 client as wrk), uvicorn with {args.workers} workers; warm-up: one request per connection first", flush=True)
            groups = {"server": server.processes, "PostgreSQL": postgres_processes(database),
                      "clients": lambda: [psutil.Process(p) for p in clients.pids()]}
            out["single"] = sequential(server.port, path, headers, max(20, args.requests // 40))
            print(line("$everything, one client alone (service time)", out["single"]), flush=True)
            out["everything"] = clients.run("http", (server.port, [path], headers), args.clients, args.requests,
                                            CpuMeter(groups), WaitSampler(dsn, wait_label))
            print(line(f"$everything?_count={COUNT}, {args.clients} clients", out["everything"]), flush=True)
            if pages > 1:  # the whole history: every page, one after another, per client
                walk = [path] + [f"{path}&_page={n}" for n in range(2, pages + 1)]
                out["walk"] = clients.run("http", (server.port, walk, headers), args.clients,
                                          max(50, args.requests // 8), CpuMeter(groups))
                print(line(f"  the whole history: all {pages} pages in turn, {args.clients} clients", out["walk"]),
                      flush=True)
            out["health"] = clients.run("http", (server.port, ["/health"], {}), args.clients, args.requests,
                                        CpuMeter(groups))
            print(line(f"baseline: GET /health, {args.clients} clients", out["health"]), flush=True)
            out["server_rss"] = server.peak_rss()
        finally:
            server.stop()
        try:
            sql_groups = {"PostgreSQL": postgres_processes(database),
                          "clients": lambda: [psutil.Process(p) for p in clients.pids()]}
            out["sql"] = clients.run("sql", (dsn, [setup["person_id"]]), args.clients, args.requests,
                                     CpuMeter(sql_groups))
            print(line(f"baseline: raw SQL, encoded documents, {args.clients} conns", out["sql"]), flush=True)
        finally:
            out["client_rss"] = clients.close()
        log_lines = [ln for ln in (tmp / "server.log").read_text(errors="replace").splitlines() if ln.strip()]

        r, h, q = out["everything"], out["health"], out["sql"]
        print(f"    response: {r['size']:,.0f} bytes; raw SQL: {q['size']:,.0f} encoded entries per request")
        print("    CPU per request (from /proc):")
        print(cpu_line("$everything", r, ("server", "PostgreSQL", "clients")))
        if "walk" in out:
            print(cpu_line("the whole history (all pages)", out["walk"], ("server", "PostgreSQL", "clients")))
        print(cpu_line("GET /health", h, ("server", "PostgreSQL", "clients")))
        print(cpu_line("raw SQL", q, ("PostgreSQL", "clients")))
        print(f"    ÷ baselines: $everything p99 = {r['p99'] / q['p99']:.1f} × the raw SQL's, "
              f"{r['p99'] / h['p99']:.1f} × GET /health's; throughput {r['rate'] / q['rate']:.3f} × the raw SQL's")
        print(f"    peak RSS: server worker (largest) {out['server_rss']:,.0f} MiB; client process (largest) "
              f"{out['client_rss']:,.0f} MiB; this process {peak_rss_mib():,.0f} MiB")
        w = r["waits"]
        seen = sum(w["counts"].values())
        print(f"    the database's backends during $everything (pg_stat_activity every 20 ms): "
              f"{seen / max(1, w['samples']):.1f} busy on average: "
              f"{', '.join(f'{what} {k / max(1, seen):.0%}' for what, k in w['counts'].most_common(5))}")
        if log_lines:
            print(f"    server log: {len(log_lines)} lines at WARNING or above; last: "
                  f"{' | '.join(x[:160] for x in log_lines[-2:])}")

        # ---- 5. verdict, and where the time goes
        met = r["p99"] <= GOAL_P99_MS and not [k for k in r["statuses"] if k != 200]
        print(f"4. goal p99 ≤ {GOAL_P99_MS:.0f} ms for $everything at {args.clients} clients "
              f"({args.encounters} encounters, {persons:,} persons): {'MET' if met else 'NOT MET'} — p99 "
              f"{r['p99']:.1f} ms, p50 {r['p50']:.1f} ms, {r['rate']:.1f} requests/s "
              f"(one client alone: p50 {out['single']['p50']:.1f} ms)", flush=True)
        spent = sum(r["cpu"].get(g, 0.0) for g in ("server", "PostgreSQL", "clients")) / max(1, r["n"]) * 1000
        need = args.clients / (GOAL_P99_MS / 1000)
        print(f"    budget: {args.clients} clients each waiting ≤ {GOAL_P99_MS:.0f} ms need ≥ {need:.0f} requests/s "
              f"(Little's law, mean latency ≤ {GOAL_P99_MS:.0f} ms), i.e. ≤ {os.cpu_count() / need * 1000:.0f} ms of CPU "
              f"per request in all on {os.cpu_count()} cores (server + PostgreSQL + clients); a request spends "
              f"{spent:.0f} ms", flush=True)
        if met and not args.profile:
            print(f"  whole run {time.perf_counter() - t_start:.1f} s")
            return 0
        p = profile(token, setup["empi_id"], args.profile_runs)
        sz = p["sizes"]
        print(f"5. where the time goes: one request's phases in this process (the endpoint's steps in its order, no "
              f"HTTP, no other load), median of {p['runs']} runs: {sz['encounters']} Encounters, {sz['entries']:,} "
              f"resources, {sz['returned']:,} in the page, {sz['bytes']:,} bytes of JSON")
        print(f"  {'phase':<28} {'median ms':>9} {'p90 ms':>7} {'of it SQL':>9} {'statements':>10}")
        for phase, med, p90, sq, n in p["rows"]:
            print(f"  {phase:<28} {med:9.1f} {p90:7.1f} {sq:9.1f} {n:10.0f}")
        print(f"  {'total':<28} {p['total']:9.1f}")
        sql_ms = sum(row[3] for row in p["rows"])
        print(f"  of the total, {sql_ms:.1f} ms in SQL statements and {p['total'] - sql_ms:.1f} ms in Python; over HTTP the "
              f"server spent {r['cpu'].get('server', 0.0) / max(1, r['n']) * 1000:.1f} ms of CPU per request (the "
              "rest: HTTP, the thread pool, sending the response, contention)")
        print("  slowest statements (median ms, times per request, text):")
        for med, per, q_ in p["slowest"]:
            print(f"    {med * 1000:7.2f} ms × {per}  {q_}")
        plan, before, after = explain(dsn, setup["person_id"])
        print("  the merged-ids lookup (empi.absorbed_ids, every read of a person's records) for the person, "
              "EXPLAIN ANALYZE:")
        for ln in plan:
            print(f"    {ln}")
        print(f"  that statement, median of 20: {before:.2f} ms as it is; {after:.2f} ms with a partial index on "
              "empi.person (merged_into) WHERE merged_into IS NOT NULL (an experiment on this run's scratch database, "
              "after the measurements)")
        print(f"  whole run {time.perf_counter() - t_start:.1f} s; load average {load[0]:.2f} at the start, "
              f"{os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
