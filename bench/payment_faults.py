"""Benchmark: the seeded fault simulation of mixed payment at scale (``smartcare.payment.simulate``).

Thousands of settlements from N orchestrator threads in this process, each party a sandbox in its own
process (``smartcare sandbox run``: insurance centre, commercial insurer, WeChat Pay, Alipay, UnionPay) and
the platform served by uvicorn in another (the channels redeem the patients' payment codes at it and send
their notifications to it). Injected: orchestrator crashes at random points (a crashed orchestrator keeps
its lease; recovery takes over once it expires), timeouts, lost and duplicate replies, business errors,
notifications late, twice or never, and refunds of completed settlements. In waves of 500 settlements
(``--wave``), each ending as ``simulate.run`` ends: recovery takes over what crashed, then the checks of
``simulate.run``: every settlement completed or fully compensated, the ledger balanced, no pending transfer
left open, each party's books equal to the platform's order by order (nobody charged wrongly), and the
day's reconciliation finding no difference.

Baseline, in the same run and the same database: the same simulation with no faults and no crashes (a
tenth of the settlements, at least 50; quick: 20): settlements per second and how many complete when
nothing goes wrong. Every figure of the faulty run is printed beside it. Exits non-zero when the faulty run's
``report.ok`` is false (or the baseline's).

    python bench/payment_faults.py            # 3,000 settlements, 12 threads (about twelve minutes)
    python bench/payment_faults.py --quick    # 130 settlements, under a minute

Uses ``DATABASE_URL`` (or the embedded PostgreSQL), like every benchmark here: a new database per run,
migrated, the demo region seeded (scale small; --quick: 5,000 residents), dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("SMARTCARE_SECRET_KEY", secrets.token_urlsafe(48))
os.environ.setdefault("SMARTCARE_LOG_LEVEL", "WARNING")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import psutil  # noqa: E402
from _common import free_port, peak_rss_mib, process_peak_rss_mib, scratch_database  # noqa: E402

PARTIES = ("medins", "insurer", "wechat", "alipay", "unionpay")
CHANNELS = ("wechat", "alipay", "unionpay")


# ---- the region: the platform and the five sandboxes as processes (also used by bench/payment.py) -----------






def warnings_in(path: Path, limit: int = 5) -> tuple[int, list[str]]:
    """Lines a process logged (at WARNING or above: every process runs with that level), and the last few."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return len(lines), lines[-limit:]


class Region:
    """The parties of a payment on this machine, each its own process, against the scratch database.

    ``configure`` points this process's settings (and so its children's) at free ports, a key directory
    of its own and the platform's port; ``start_platform`` serves the app with uvicorn (``workers``
    processes); ``start_sandboxes`` creates the channels' platform API clients and starts the five
    sandboxes. ``close`` stops everything it started (and only that)."""

    def __init__(self, database_url: str, tmp: Path, *, timeout: float, payer_wait: float,
                 extra_env: dict[str, str] | None = None):
        from smartcare.platform.settings import get_settings

        self.database_url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.party_urls = {p: f"http://127.0.0.1:{free_port()}" for p in PARTIES}
        env = {f"SMARTCARE_PAYMENT_{p.upper()}_URL": u for p, u in self.party_urls.items()}
        env |= {"SMARTCARE_PAYMENT_NOTIFY_URL": self.url, "SMARTCARE_PAYMENT_KEYS_DIR": str(tmp / "payment-keys"),
                "SMARTCARE_PAYMENT_TIMEOUT_SECONDS": str(timeout),
                "SMARTCARE_PAYMENT_PAYER_WAIT_SECONDS": str(payer_wait), **(extra_env or {})}
        os.environ.update(env)
        get_settings.cache_clear()
        self.platform: subprocess.Popen | None = None
        self.platform_workers = 0
        self.sandboxes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self._secrets: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        return {**os.environ, "DATABASE_URL": self.database_url, "SMARTCARE_LOG_LEVEL": "WARNING",
                "SMARTCARE_MLLP_PORT": "0"}

    # -- the platform

    def start_platform(self, workers: int = 1, *, wait: bool = True) -> None:
        """``uvicorn --factory smartcare.web.app:create_app`` (the app ``smartcare serve`` runs) on the
        region's port with ``workers`` processes; with ``wait``, returns once /health answers."""
        log = self.logs[f"platform-{workers}w"] = self.tmp / f"platform-{workers}w.log"
        self.platform = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "smartcare.web.app:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
            env=self.env(), stdout=subprocess.DEVNULL, stderr=log.open("ab"))
        self.platform_workers = workers
        if wait:
            self.wait_platform()

    def wait_platform(self, seconds: float = 90.0) -> None:
        log = self.logs[f"platform-{self.platform_workers}w"]
        deadline = time.monotonic() + seconds
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200 and \
                        len(self.platform_processes()) >= self.platform_workers:
                    return
            except httpx.HTTPError:
                pass
            if self.platform.poll() is not None or time.monotonic() > deadline:
                self.stop_platform()
                raise SystemExit(f"the platform did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def platform_processes(self) -> list[psutil.Process]:
        """The processes that serve requests: the uvicorn workers (or the one process when there is one)."""
        if self.platform is None:
            return []
        try:
            main = psutil.Process(self.platform.pid)
            children = main.children()
        except psutil.NoSuchProcess:
            return []
        return [main] if self.platform_workers == 1 else children

    def stop_platform(self) -> None:
        if self.platform is None:
            return
        try:
            leftovers = psutil.Process(self.platform.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            leftovers = []
        self.platform.send_signal(signal.SIGINT)  # uvicorn's supervisor stops its workers on SIGINT/SIGTERM
        try:
            self.platform.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.platform.kill()
            self.platform.wait(timeout=10)
        for child in leftovers:  # a worker that outlived its supervisor: only the ones it started
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.platform = None

    # -- the sandboxes

    def start_sandboxes(self, *, extra: list[str] | None = None, wait: bool = True) -> None:
        """The channels' API clients at the platform (the database is new), then the five sandboxes; with
        ``wait``, returns once each answers."""
        from smartcare.payment.sandbox import serve
        from smartcare.platform import auth
        from smartcare.platform.db import session_scope

        with session_scope() as s:
            for party in CHANNELS:
                self._secrets[party] = auth.create_api_client(s, client_id=serve.client_id(party),
                                                              name=f"{party} sandbox", facility_code=None)
        for party in PARTIES:
            log = self.logs[party] = self.tmp / f"sandbox-{party}.log"
            env = self.env()
            if party in CHANNELS:  # the secret goes in the environment, never on a command line
                env[serve.SECRET_ENV] = self._secrets[party]
            port = self.party_urls[party].rsplit(":", 1)[1]
            self.sandboxes[party] = subprocess.Popen(
                [sys.executable, "-m", "smartcare.cli", "sandbox", "run", party, "--port", port,
                 "--platform-url", self.url, *(extra or [])], env=env, stdout=subprocess.DEVNULL,
                stderr=log.open("ab"))
        if wait:
            self.wait_sandboxes()

    def wait_sandboxes(self) -> None:
        for party, process in self.sandboxes.items():
            deadline = time.monotonic() + 90
            while True:
                try:
                    httpx.get(self.party_urls[party] + "/_sandbox/faults", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the {party} sandbox did not start:\n"
                                     f"{self.logs[party].read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)

    def faults(self, party: str, **faults) -> dict:
        r = httpx.put(self.party_urls[party] + "/_sandbox/faults", json=faults, timeout=10)
        r.raise_for_status()
        return r.json()

    def calm(self) -> None:
        for party in PARTIES:
            self.faults(party)

    def sandbox_processes(self) -> dict[str, psutil.Process]:
        return {party: psutil.Process(p.pid) for party, p in self.sandboxes.items()}

    def close(self) -> None:
        self.stop_platform()
        for process in self.sandboxes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.sandboxes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.sandboxes.clear()


def log_to_file(region: Region, name: str) -> None:
    """This process's warnings (the saga's and refunds' retries under faults: expected) go to a file whose
    line count the summary shows, not between the progress lines."""
    import logging

    path = region.logs[name] = region.tmp / "bench.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.WARNING)


def hospital_facility() -> str:
    """A seeded level-3 general hospital (as the test suite's hospital)."""
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    with session_scope() as s:
        return s.execute(text("SELECT code FROM registry.facility WHERE kind = 'general_hospital' AND level = 3 "
                              "ORDER BY code LIMIT 1")).scalar_one()


def seed_region(seed: int = 2026, *, population: int | None = None) -> None:
    """The demo region (scale small; ``population`` residents instead of its 20,000 for a quick run): the
    facilities, and the residents the patients are drawn from."""
    from smartcare.platform.db import session_scope
    from smartcare.synth import service as synth

    with session_scope() as s:
        synth.seed(s, scale="small", seed=seed, population=population)


# ---- the simulation ------------------------------------------------------------------------------------------


def run_simulation(region: Region, *, patients, facility: str, count: int, workers: int, crash_rate: float,
                   refund_share: float, seed: int, label: str, wave: int):
    """``simulate.run`` in waves of ``wave`` settlements: each wave ends with recovery taking over what crashed
    (``simulate.run`` gives its single rescuer thread 120 s, too short for the ~600 crashes of 3,000
    settlements with faults still on; recovery runs periodically in a deployment anyway) and the checks,
    which cover the whole database. The waves' counts are summed into the last wave's report."""
    from smartcare.payment import parties, simulate

    started = time.monotonic()
    step = max(1, count // 10)
    cpu = time.process_time()
    total, done_before, waves = None, 0, 0
    while done_before < count:
        n = min(wave, count - done_before)

        def progress(done: int, _total: int, before=done_before) -> None:
            if (before + done) % step == 0 or before + done == count:
                print(f"    {label}: {before + done:,}/{count:,} settlements ({time.monotonic() - started:.1f} s)",
                      flush=True)

        report = simulate.run(parties.current(), patients=patients, facility_code=facility, count=n, workers=workers,
                              crash_rate=crash_rate, refund_share=refund_share, seed=seed + 1000 * waves,
                              progress=progress)
        if total is not None:  # per-wave counts add up; the checks (and states) of the last wave are global
            report.settlements += total.settlements
            report.crashes += total.crashes
            report.recovered += total.recovered
            report.refunds += total.refunds
            report.errors = total.errors + report.errors
            report.seconds += total.seconds
        total, done_before, waves = report, done_before + n, waves + 1
    return total, time.process_time() - cpu, waves


def set_faults(region: Region, args) -> None:
    request = {"error": args.error, "timeout": args.timeout, "lost_reply": args.lost_reply,
               "duplicate": args.duplicate, "hang_seconds": args.hang_seconds}
    for k, party in enumerate(PARTIES):  # one seeded fault stream per party
        extra = {}
        if party in CHANNELS:
            extra = {"notify_never": args.notify_never, "notify_late": args.notify_late,
                     "notify_twice": args.notify_twice, "late_seconds": args.late_seconds}
        region.faults(party, **request, **extra, seed=args.seed * 100 + k)


def diagnose(region: Region, reports, limit: int = 3) -> list[str]:
    """For the first few settlements a check named: their event log (the saga's steps, notifications) and
    the channel's order, so that a failure can be followed without the database (dropped at the end)."""
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    numbers = []
    for report in reports:
        for line in report.charged_wrong + report.insurance_wrong + report.insurer_wrong + report.recon_differences:
            for no in re.findall(r"\bS\d{18}\b", line):
                if no not in numbers:
                    numbers.append(no)
    out = []
    for no in numbers[:limit]:
        with session_scope() as s:
            row = s.execute(text("SELECT id, state, step, channel, cash_pay, cash_status, cash_attempt, reason "
                                 "FROM payment.settlement WHERE settlement_no = :n"), {"n": no}).mappings().one_or_none()
            if row is None:
                continue
            events = s.execute(text("SELECT step, outcome, detail, at FROM payment.settlement_event "
                                    "WHERE settlement_id = :i ORDER BY id"), {"i": row["id"]}).all()
        out.append(f"{no}: {dict(row)}")
        start = events[0].at if events else None
        for e in events:
            detail = {k: v for k, v in (e.detail or {}).items() if v not in (None, "", {})}
            out.append(f"    +{(e.at - start).total_seconds():7.3f} s  {e.step:<14} {e.outcome:<10} {detail}")
        if row["channel"]:
            try:
                books = httpx.get(region.party_urls[row["channel"]] + "/_sandbox/books", timeout=30).json()
                order = next((o for o in books["orders"] if o["out_trade_no"] == no), None)
                notes = [n for n in books.get("notifications", []) if n.get("out_trade_no") == no]
                out.append(f"    {row['channel']} order: {order}; notifications: {notes}")
            except httpx.HTTPError as exc:
                out.append(f"    {row['channel']} books unreadable: {exc}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="130 settlements (+ 20 calm), under a minute")
    parser.add_argument("--count", type=int, help="settlements with faults (default 3,000; quick 130)")
    parser.add_argument("--baseline-count", type=int,
                        help="settlements of the calm baseline (default count/10, ≥ 50; quick 20)")
    parser.add_argument("--workers", type=int, default=12, help="orchestrator threads")
    parser.add_argument("--patients", type=int, help="patients (default 300; quick 30)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--crash-rate", type=float, default=0.02, help="chance of a crash at each crash point")
    parser.add_argument("--wave", type=int, default=500,
                        help="settlements per wave; recovery takes over what crashed at the end of each")
    parser.add_argument("--refund-share", type=float, default=0.15, help="share of completed settlements refunded")
    group = parser.add_argument_group("faults of every sandbox, per request (0–1)")
    group.add_argument("--error", type=float, default=0.03, help="business error, nothing done")
    group.add_argument("--timeout", type=float, default=0.05, help="held before the work (the caller gives up)")
    group.add_argument("--lost-reply", type=float, default=0.05, help="work done, reply held")
    group.add_argument("--duplicate", type=float, default=0.05, help="request handled twice")
    group.add_argument("--hang-seconds", type=float, default=0.9, help="how long a timeout or lost reply holds")
    group = parser.add_argument_group("faults of the channels' notifications (0–1)")
    group.add_argument("--notify-never", type=float, default=0.2)
    group.add_argument("--notify-late", type=float, default=0.3)
    group.add_argument("--notify-twice", type=float, default=0.3)
    group.add_argument("--late-seconds", type=float, default=1.0)
    parser.add_argument("--call-timeout", type=float, default=0.6,
                        help="the platform's timeout for a call to a party (SMARTCARE_PAYMENT_TIMEOUT_SECONDS)")
    args = parser.parse_args()
    count = args.count or (130 if args.quick else 3_000)
    calm_count = args.baseline_count or (20 if args.quick else max(50, count // 10))
    n_patients = args.patients or (30 if args.quick else 300)

    print(f"payment fault simulation{' (quick)' if args.quick else ''}: {os.cpu_count()} CPUs, PostgreSQL "
          f"{os.environ.get('DATABASE_URL', '(embedded)').rsplit('@', 1)[-1]}; {count:,} settlements with faults, "
          f"{calm_count:,} without (baseline), {args.workers} orchestrator threads, seed {args.seed}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smartcare-bench-") as tmp, scratch_database() as url:
        region = Region(url, Path(tmp), timeout=args.call_timeout, payer_wait=4.0)
        log_to_file(region, "this process (orchestrators)")
        try:
            t = time.perf_counter()
            from smartcare.payment import parties, simulate as sim

            parties.current()  # the platform's channel keys, made before the sandboxes read them
            region.start_platform(1, wait=False)
            region.start_sandboxes(wait=False)
            seed_region(population=5_000 if args.quick else None)  # while they start
            facility = hospital_facility()
            region.wait_platform()
            region.wait_sandboxes()
            region.calm()
            t_patients = time.perf_counter()
            patients = sim.prepare_patients(parties.current(), count=n_patients, seed=args.seed)
            setup_s = time.perf_counter() - t
            print(f"  set-up {setup_s:.1f} s: demo region seeded, platform and 5 sandboxes started, "
                  f"{len(patients)} patients ({time.perf_counter() - t_patients:.1f} s: cards bound to 3 channels, "
                  f"personal accounts, some with a commercial policy); hospital {facility}", flush=True)

            print("  1. baseline: no faults, no crashes", flush=True)
            calm, calm_cpu, _ = run_simulation(region, patients=patients, facility=facility, count=calm_count,
                                               workers=args.workers, crash_rate=0.0, refund_share=args.refund_share,
                                               seed=args.seed + 1, label="calm", wave=calm_count)
            print("  2. with faults and crashes", flush=True)
            set_faults(region, args)
            try:
                faulty, faulty_cpu, waves = run_simulation(
                    region, patients=patients, facility=facility, count=count, workers=args.workers,
                    crash_rate=args.crash_rate, refund_share=args.refund_share, seed=args.seed, label="faults",
                    wave=args.wave)
            finally:
                region.calm()
            trails = diagnose(region, [calm, faulty])
            rss = {"platform": max((process_peak_rss_mib(p.pid) for p in region.platform_processes()), default=0),
                   **{party: process_peak_rss_mib(p.pid) for party, p in region.sandbox_processes().items()}}
        finally:
            region.close()
        logs = {name: warnings_in(path) for name, path in region.logs.items()}

    # the faulty run's checks cover the whole database (the baseline's settlements too); its states are
    # its own: the totals minus what the baseline left
    faulty_states = Counter(faulty.states)
    faulty_states.subtract(calm.states)
    faulty_states = +faulty_states
    calm_refund_states = Counter(calm.refund_states)
    faulty_refund_states = Counter(faulty.refund_states)
    faulty_refund_states.subtract(calm_refund_states)
    faulty_refund_states = +faulty_refund_states

    def states(c: Counter) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in sorted(c.items())) or "none"

    def faults(report) -> str:
        parts = []
        for party in PARTIES:
            counts = report.faults.get(party) or {}
            if counts:
                parts.append(f"{party} " + " ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return "; ".join(parts) or "none"

    rows = [
        ("settlements", f"{calm.settlements:,}", f"{faulty.settlements:,}"),
        ("completed", f"{calm.states.get('completed', 0):,}", f"{faulty_states.get('completed', 0):,}"),
        ("compensated", f"{calm.states.get('compensated', 0):,}", f"{faulty_states.get('compensated', 0):,}"),
        ("other states (must be none)", states(Counter({k: v for k, v in calm.states.items()
                                                        if k not in ('completed', 'compensated')})),
         states(Counter({k: v for k, v in faulty_states.items() if k not in ("completed", "compensated")}))),
        ("orchestrator crashes", f"{calm.crashes:,}", f"{faulty.crashes:,}"),
        ("taken over by recovery", f"{calm.recovered:,}", f"{faulty.recovered:,}"),
        ("refunds (none left processing)", f"{calm.refunds:,}: {states(calm_refund_states)}",
         f"{faulty.refunds:,}: {states(faulty_refund_states)}"),
        ("ledger balanced", "yes" if calm.ledger_balanced else "NO", "yes" if faulty.ledger_balanced else "NO"),
        ("open pending transfers", f"{calm.open_pending:,}", f"{faulty.open_pending:,}"),
        ("orders charged wrongly (channels)", f"{len(calm.charged_wrong):,}", f"{len(faulty.charged_wrong):,}"),
        ("insurance centre mismatches", f"{len(calm.insurance_wrong):,}", f"{len(faulty.insurance_wrong):,}"),
        ("insurer mismatches", f"{len(calm.insurer_wrong):,}", f"{len(faulty.insurer_wrong):,}"),
        ("reconciliation differences", f"{len(calm.recon_differences):,}", f"{len(faulty.recon_differences):,}"),
        ("errors (exceptions: bugs)", f"{len(calm.errors):,}", f"{len(faulty.errors):,}"),
        ("seconds, recovery included", f"{calm.seconds:.1f}", f"{faulty.seconds:.1f}"),
        ("settlements per second", f"{calm.settlements / calm.seconds:.1f}",
         f"{faulty.settlements / faulty.seconds:.1f}"),
        ("orchestrator CPU ms per settlement", f"{calm_cpu / calm.settlements * 1000:.1f}",
         f"{faulty_cpu / faulty.settlements * 1000:.1f}"),
        ("report.ok", str(calm.ok), str(faulty.ok)),
    ]
    print(f"\n=== Summary ===\n\nSeeded fault simulation (seed {args.seed}): {args.workers} orchestrator threads in "
          f"this process; the platform (uvicorn, 1 process) and each of the 5 sandboxes in its own process; "
          f"{waves} wave{'s' if waves > 1 else ''} of ≤ {args.wave:,} settlements, recovery and the checks after each")
    print(f"  faults per request, every party: error {args.error:g}, timeout {args.timeout:g}, lost reply "
          f"{args.lost_reply:g}, duplicate {args.duplicate:g} (held {args.hang_seconds:g} s; the platform gives up "
          f"after {args.call_timeout:g} s); notifications: never {args.notify_never:g}, late {args.notify_late:g} "
          f"(≤ {args.late_seconds:g} s), twice {args.notify_twice:g}; crash chance {args.crash_rate:g} at each of "
          f"{len(sim.CRASH_POINTS)} points; refunds {args.refund_share:g} of completed settlements")
    width = max(len(r[0]) for r in rows) + 2
    print(f"  {'':<{width}}{'baseline (calm)':>22}  {'with faults':>22}")
    for name, a, b in rows:
        print(f"  {name:<{width}}{a:>22}  {b:>22}")
    print(f"  faults injected (baseline): {faults(calm)}")
    print(f"  faults injected (with faults): {faults(faulty)}")
    for report, name in ((calm, "baseline"), (faulty, "with faults")):
        problems = (report.charged_wrong + report.insurance_wrong + report.insurer_wrong + report.recon_differences
                    + report.errors)
        for line in problems[:10]:
            print(f"  {name} problem: {line}")
        if len(problems) > 10:
            print(f"  {name}: … and {len(problems) - 10:,} more")
    if trails:
        print("  the first settlements a check named, step by step:")
        for line in trails:
            print(f"  {line[:400]}")
    for name, (n, last) in logs.items():
        if n:
            print(f"  {name} log: {n:,} lines at WARNING or above; last: {' | '.join(x[:160] for x in last[-2:])}")
    print(f"  peak RSS: this process {peak_rss_mib():,.0f} MiB, platform {rss['platform']:,.0f} MiB, sandboxes "
          + ", ".join(f"{p} {rss[p]:,.0f}" for p in PARTIES) + " MiB")
    ok = calm.ok and faulty.ok
    print(f"  whole run {time.perf_counter() - t0:.1f} s (set-up {setup_s:.1f} s); "
          f"{'OK: every check passed' if ok else 'FAILED: see above'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
