"""``smartcare empi migrate`` end to end on synthetic visit cards, against real PostgreSQL: accuracy,
a run killed half-way and restarted, a second run, a dry run, and bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from smartcare.empi import migration
from smartcare.empi.fields import default_config
from smartcare.platform.errors import InvalidInput

from empi_support import fresh_database, pairwise, partition, sessions


def _migrate(url: str, path: Path, **options):
    with sessions(url)() as session:
        run = migration.run_migration(session, migration.Options(path=path, config=default_config(), **options))
        return run, partition(session)


@pytest.fixture(scope="module")
def migrated(database_url, cards_csv):
    """One uninterrupted migration of the synthetic cards: (url, run, partition)."""
    path, _ = cards_csv
    with fresh_database(database_url) as url:
        run, groups = _migrate(url, path, chunk=300)
        yield url, run, groups


def test_migration_links_every_card_once_with_high_precision(migrated, cards_csv):
    url, run, groups = migrated
    _, truth = cards_csv
    assert sum(len(g) for g in groups) == len(truth)  # every card in exactly one person
    precision, recall = pairwise(groups, truth)
    assert precision >= 0.99 and recall >= 0.98, (precision, recall)
    with sessions(url)() as s:
        assert s.scalar(text("SELECT count(*) FROM empi.history WHERE action = 'link'")) == len(truth)
        assert s.scalar(text("SELECT count(*) FROM platform.audit_log WHERE action = 'empi.migrate.commit'")) >= 2
        # Every card is findable through the inverted index.
        assert s.scalar(text("SELECT count(DISTINCT source_id) FROM empi.blocking_key")) == len(truth)
        # Golden records came from survivorship.
        assert s.scalar(text("SELECT count(*) FROM empi.person WHERE golden ->> 'name' IS NULL")) == 0
    assert run.state == "done" and run.stage == "review"
    assert run.stats["profile"]["staged"] == len(truth)


def test_guardians_ids_and_twins_are_not_merged(migrated, cards_csv):
    url, _, groups = migrated
    _, truth = cards_csv
    with sessions(url)() as s:
        # No person holds two different valid ID numbers that each agree with their card's birth date.
        mixed = s.scalar(text(
            """SELECT count(*) FROM (SELECT l.person_id FROM empi.link l JOIN empi.source_identity s ON s.id = l.source_id
                WHERE s.features ? 'id_certain' GROUP BY l.person_id
               HAVING count(DISTINCT s.features ->> 'id_certain') > 1) x"""))
    assert mixed == 0
    wrong = [g for g in groups if len({truth[c] for c in g}) > 1]
    assert len(wrong) <= len(groups) * 0.002, len(wrong)


def test_a_migration_killed_half_way_and_restarted_ends_as_an_uninterrupted_one(database_url, cards_csv, migrated):
    path, truth = cards_csv
    _, _, uninterrupted = migrated
    with fresh_database(database_url) as url:
        env = {**os.environ, "DATABASE_URL": url}
        proc = subprocess.Popen([sys.executable, "-m", "smartcare.cli", "empi", "migrate", str(path), "--chunk", "100",
                                 "--report", os.devnull], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        committed = 0
        with sessions(url)() as s:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                committed = s.scalar(text("SELECT count(*) FROM empi.migration_row WHERE committed")) or 0
                s.rollback()
                if committed > 0:
                    break
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done = s.scalar(text("SELECT count(*) FROM empi.migration_row WHERE committed"))
            assert 0 < done < len(truth), "the kill must land during commit"
            assert s.scalar(text("SELECT state FROM empi.migration_run")) == "running"
        run, groups = _migrate(url, path, chunk=100)
        assert run.id == 1  # the same run, resumed
        assert groups == uninterrupted
        with sessions(url)() as s:
            assert s.scalar(text("SELECT count(*) FROM empi.source_identity")) == len(truth)
            assert s.scalar(text("SELECT count(*) FROM empi.history")) == len(truth)


def test_a_second_run_of_the_same_file_changes_nothing(database_url, cards_csv, migrated):
    url, _, before = migrated
    path, truth = cards_csv
    run, after = _migrate(url, path)
    assert after == before
    assert run.stats["profile"]["already_indexed"] == len(truth)
    assert run.stats["link"]["new_cards"] == 0


def test_dry_run_reports_and_commits_nothing(database_url, cards_csv):
    from smartcare.empi import report

    path, truth = cards_csv
    with fresh_database(database_url) as url:
        run, groups = _migrate(url, path, dry_run=True)
        assert groups == set()
        assert run.state == "done" and run.stage == "link"
        assert run.stats["link"]["new_cards"] == len(truth)
        with sessions(url)() as s:
            html = report.render(s, run, default_config())
        assert "dry run" in html and f"{len(truth):,}" in html and "same valid ID" in html


def test_bad_files_are_refused_or_their_bad_rows_reported(database_url, tmp_path):
    no_keys = tmp_path / "no_keys.csv"
    no_keys.write_text("name,id_number\n张伟,\n", encoding="utf-8")
    rows = tmp_path / "rows.csv"
    rows.write_text("facility_code,card_no,name,birth_date\nH1,1,张伟,1990-01-01\nH1,,李娜,1990-01-01\n"
                    "H1,1,张伟,1990-01-01\n", encoding="utf-8")
    with fresh_database(database_url) as url:
        with pytest.raises(InvalidInput, match=r"lacks \['facility_code', 'card_no'\]"):
            _migrate(url, no_keys)
        with pytest.raises(InvalidInput, match="too few to train"):
            _migrate(url, rows)
        with sessions(url)() as s:
            stats = s.scalar(text("SELECT stats FROM empi.migration_run WHERE source_name = 'rows.csv'"))
        rejected = stats["profile"]["rejected"]
        assert [r["row"] for r in rejected] == [2, 3]
        assert "card_no are required" in rejected[0]["why"] and "appears earlier" in rejected[1]["why"]
