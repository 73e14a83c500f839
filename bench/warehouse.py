"""Benchmark: the warehouse's load rate into the facts beside a raw COPY of the same fact rows, and the
console's queries over the loaded star schema.

Synthetic activity of the region's largest public hospitals (``smartcare.synth.activity``: visits, stays,
charges, settlements, bookings, card uses, documents, messages) up to yesterday is written to CSV files
first (not timed). Then, in this run, on this database:

- **load**: COPY of the landing rows into ``warehouse.src_*`` plus ``rebuild`` (dimensions, every fact
  table, the daily mart, ANALYZE) — the batch path; the figure is fact rows per second;
- **baseline**: the same fact rows, already made, COPYed into empty tables of the same definition
  (indexes included) — what PostgreSQL does at best with these rows;
- **incremental**: the live path (``apply`` of one hospital-day's source keys at a time, as the events
  would), rows per second, on a sample of days;
- **console**: each query behind the monitoring pages and the indicator API, repeated, p50 / p95.

Goal (issue #8): load ≥ 30 % of the COPY rate; every console query p95 ≤ 200 ms over ≥ 10 million fact rows.

    python bench/warehouse.py            # the 20 largest hospitals × 8 days: about 12 million fact rows
    python bench/warehouse.py --quick    # 3 hospitals × 3 days, under a minute
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench._common import Timer, pct, peak_rss_mib, scratch_database  # noqa: E402
from smartcare.platform.clock import china_today  # noqa: E402
from smartcare.platform.db import driver, session_scope  # noqa: E402
from smartcare.synth import service as synth  # noqa: E402
from smartcare.synth.activity import TABLES, activity  # noqa: E402
from smartcare.warehouse import indicators, monitor, service  # noqa: E402
from smartcare.warehouse.landing import Changes  # noqa: E402
from smartcare.warehouse.marts import FACTS  # noqa: E402


def _write_csv(hospitals, days: int, folder: Path) -> dict[str, int]:
    files = {t: open(folder / f"{t}.csv", "w", newline="", encoding="utf-8") for t in TABLES}
    writers = {t: csv.writer(f) for t, f in files.items()}
    counts = dict.fromkeys(TABLES, 0)
    start = china_today() - timedelta(days=days)
    for table, row in activity(hospitals, start=start, days=days, seed=8, persons=20_000 * len(hospitals)):
        writers[table].writerow(["" if v is None else v for v in row])
        counts[table] += 1
    for f in files.values():
        f.close()
    return counts


def _copy_file(session, table: str, columns, path: Path) -> None:
    with driver(session).cursor() as cur, cur.copy(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT csv, NULL '')") as copy, open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            copy.write(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--hospitals", type=int)
    parser.add_argument("--days", type=int)
    parser.add_argument("--repeat", type=int, help="runs of each console query")
    args = parser.parse_args()
    n_hospitals = args.hospitals or (3 if args.quick else 20)
    days = args.days or (3 if args.quick else 8)
    repeat = args.repeat or (10 if args.quick else 40)

    with scratch_database(), tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with session_scope() as s:
            synth.seed(s, scale="small", seed=2026)
        with session_scope() as s:
            hospitals = service.synthetic_hospitals(s, limit=n_hospitals)
        print(f"synthetic activity: {len(hospitals)} hospitals ({sum(h.beds for h in hospitals):,} beds) × {days} days")
        with Timer() as t:
            landing_rows = _write_csv(hospitals, days, folder)
        print(f"  generated {sum(landing_rows.values()):,} landing rows in {t.seconds:.1f} s (not timed below)")

        # -- load: landing COPY + rebuild --------------------------------------------------------------------
        with session_scope() as s, Timer() as land:
            for table, columns in TABLES.items():
                _copy_file(s, f"warehouse.{table}", columns, folder / f"{table}.csv")
        with session_scope() as s, Timer() as build:
            counts = service.rebuild(s)
        fact_rows = sum(counts[t] for t in FACTS)
        load_rate = fact_rows / (land.seconds + build.seconds)

        # -- baseline: COPY of the very fact rows into empty tables of the same definition ----------------------
        with session_scope() as s:
            for table in FACTS:
                s.execute(text(f"CREATE TABLE warehouse.bench_{table} (LIKE warehouse.{table} INCLUDING ALL)"))
                with open(folder / f"{table}.facts.csv", "wb") as f, driver(s).cursor() as cur, \
                        cur.copy(f"COPY warehouse.{table} TO STDOUT (FORMAT csv, NULL '')") as copy:
                    for chunk in copy:
                        f.write(chunk)
        with session_scope() as s, Timer() as raw:
            for table, fact in FACTS.items():
                _copy_file(s, f"warehouse.bench_{table}", fact.columns, folder / f"{table}.facts.csv")
        copy_rate = fact_rows / raw.seconds
        with session_scope() as s:
            for table in FACTS:
                s.execute(text(f"DROP TABLE warehouse.bench_{table}"))

        # -- incremental: one hospital-day's keys at a time, as events would bring them ------------------------
        with session_scope() as s:
            sample_days = s.execute(text(
                "SELECT facility_code, (start_at AT TIME ZONE 'Asia/Shanghai')::date AS d FROM warehouse.src_encounter "
                "GROUP BY 1, 2 ORDER BY 2 DESC, 1 LIMIT :n"), {"n": 3 if args.quick else 10}).all()
        incremental_records, incremental_seconds = 0, 0.0
        for facility, day in sample_days:
            with session_scope() as s:
                changes = Changes()
                for (e,) in s.execute(text(
                        "SELECT encounter_id FROM warehouse.src_encounter WHERE facility_code = :f "
                        "AND (start_at AT TIME ZONE 'Asia/Shanghai')::date = :d"), {"f": facility, "d": day}):
                    changes.add("encounter", facility, e)
                    changes.add("charge", facility, "B" + e)
                    changes.add("settlement", "S" + e)
                with Timer() as inc:
                    service.apply(s, changes)
                incremental_seconds += inc.seconds
                incremental_records += changes.count()

        # -- console queries ----------------------------------------------------------------------------------
        today = china_today()
        codes = [h.code for h in hospitals[:5]]
        queries = {
            "region overview (districts, freshness, live minute, alerts)": lambda s: monitor.overview(s),
            "one hospital (30-day series, live hour, month)": lambda s: monitor.hospital(s, codes[len(timings) % len(codes)]),
            "alerts": lambda s: monitor.alerts(s),
            "indicators: districts × months, a year": lambda s: indicators.compute(
                s, by="district", grain="month", start=today.replace(day=1) - timedelta(days=335), end=today),
            "indicators: hospitals × days, 30 days": lambda s: indicators.compute(
                s, by="facility", grain="day", start=today - timedelta(days=29), end=today),
        }
        results = {}
        for name, query in queries.items():
            timings: list[float] = []
            for _ in range(repeat):
                with session_scope() as s:
                    started = time.perf_counter()
                    query(s)
                    timings.append(time.perf_counter() - started)
            ordered = sorted(timings)
            results[name] = (pct(ordered, 0.5), pct(ordered, 0.95))

    print(f"\nfact rows: {fact_rows:,} in {len(FACTS)} fact tables "
          f"({', '.join(f'{t} {counts[t]:,}' for t in FACTS)}); mart rows {counts['mart_facility_day']:,}")
    print(f"load (landing COPY {land.seconds:.1f} s + rebuild {build.seconds:.1f} s): {load_rate:,.0f} fact rows/s")
    print(f"  rebuild alone: {fact_rows / build.seconds:,.0f} fact rows/s")
    print(f"baseline, raw COPY of the same fact rows ({raw.seconds:.1f} s): {copy_rate:,.0f} rows/s")
    print(f"load / raw COPY: {load_rate / copy_rate:.0%} (goal ≥ 30 %)")
    if incremental_seconds:
        print(f"incremental apply (the visits, bills and settlements of {len(sample_days)} hospital-days, one "
              f"transaction each): {incremental_records / incremental_seconds:,.0f} source records/s")
    print(f"\nconsole queries over {fact_rows:,} fact rows, {repeat} runs each (goal p95 ≤ 200 ms):")
    for name, (p50, p95) in results.items():
        print(f"  {name:58s} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
    print(f"\npeak RSS of this process: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
