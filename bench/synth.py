"""Benchmark: generate the synthetic region and load it into PostgreSQL.

Prints, for the same residents in the same run:
- generation alone (the pure generator, no database);
- the whole ``seed`` pipeline (generate + COPY through the platform), rows/s;
- the baseline: a raw PostgreSQL ``COPY FROM STDIN`` of exactly those rows (already serialised) into
  an identical table, i.e. the fastest PostgreSQL can take them;
- peak RSS of this process.

    python bench/synth.py            # city scale: 1,000,000 residents
    python bench/synth.py --quick    # 100,000 residents, under a minute
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, peak_rss_mib, scratch_database  # noqa: E402

from smartcare.platform.db import session_scope  # noqa: E402
from smartcare.synth import region, service  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100,000 residents instead of the city's 1,000,000")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    population = 100_000 if args.quick else region.SCALES["city"]
    districts = region.load_districts()

    with Timer() as gen:
        generated = sum(1 for _ in region.residents(args.seed, population, districts))
    assert generated == population

    with scratch_database():
        with Timer() as pipeline, session_scope() as session:
            report = service.seed(session, scale="city", seed=args.seed, population=population)

        with session_scope() as session:
            raw = session.connection().connection.driver_connection
            buffer = io.BytesIO()
            with raw.cursor() as cur:
                with cur.copy("COPY synth.resident TO STDOUT") as copy:
                    for chunk in copy:
                        buffer.write(chunk)
                cur.execute("CREATE TABLE synth.resident_copy (LIKE synth.resident INCLUDING ALL)")
            data = buffer.getvalue()
            with Timer() as baseline, raw.cursor() as cur:
                with cur.copy("COPY synth.resident_copy FROM STDIN") as copy:
                    for start in range(0, len(data), 1 << 20):
                        copy.write(data[start:start + (1 << 20)])

    residents_s = report.seconds["residents"]
    print(f"synthetic region, seed {args.seed}, {population:,} residents (+ {report.counts['facilities']:,} facilities, "
          f"{report.counts['departments']:,} departments, {report.counts['practitioners']:,} practitioners)")
    print(f"  generate only (pure Python)        {gen.seconds:8.2f} s   {population / gen.seconds:>10,.0f} residents/s")
    print(f"  residents step (generate + COPY)   {residents_s:8.2f} s   {population / residents_s:>10,.0f} residents/s into PostgreSQL")
    print(f"  baseline: raw COPY of same rows    {baseline.seconds:8.2f} s   {population / baseline.seconds:>10,.0f} rows/s ({len(data) / 2**20:.0f} MiB)")
    print(f"  pipeline / raw COPY                {residents_s / baseline.seconds:8.2f} x")
    cards = report.counts["visit_cards"]
    print(f"  visit cards with errors + truth    {report.seconds['visit_cards']:8.2f} s   {cards / report.seconds['visit_cards']:>10,.0f} cards/s "
          f"({cards:,} cards, {report.counts['twins']:,} twins added)")
    print(f"  whole seed pipeline                {pipeline.seconds:8.2f} s")
    print(f"  peak RSS                           {peak_rss_mib():8.0f} MiB")


if __name__ == "__main__":
    main()
