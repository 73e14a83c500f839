"""The demo region as loaded into PostgreSQL: counts and invariants of every row."""

from __future__ import annotations

from sqlalchemy import text

from smartcare.platform import idcard
from smartcare.platform.db import session_scope


def test_loaded_region_counts(seeded):
    assert seeded.counts["facilities"] == 1141
    assert seeded.counts["residents"] == 20_000 + seeded.counts["twins"] and seeded.counts["twins"] > 0
    assert seeded.counts["visit_cards"] > 20_000 * 2
    with session_scope() as s:
        assert s.execute(text("SELECT count(*) FROM registry.district")).scalar() == 38
        assert s.execute(text("SELECT count(DISTINCT district_code) FROM synth.resident")).scalar() == 38
        orphans = s.execute(text("SELECT count(*) FROM registry.practitioner p LEFT JOIN registry.department d "
                                 "ON d.facility_code = p.facility_code AND d.code = p.department_code WHERE d.code IS NULL")).scalar()
        assert orphans == 0


def test_every_resident_id_number_is_valid_and_consistent(seeded):
    with session_scope() as s:
        rows = s.execute(text("SELECT id_number, sex, birth_date, district_code FROM synth.resident")).all()
    assert len(rows) == seeded.counts["residents"]
    for number, sex, birth, district in rows:
        parsed = idcard.parse(number)
        assert (parsed.sex, parsed.birth_date, parsed.region_code) == (sex, birth, district)


def test_families_and_codes(seeded):
    with session_scope() as s:
        bad_guardians = s.execute(text(
            "SELECT count(*) FROM synth.resident c JOIN synth.resident g ON g.id = c.guardian_id "
            "WHERE g.family_id <> c.family_id OR g.birth_date > c.birth_date - interval '16 years'")).scalar()
        minors_without_guardian = s.execute(text(
            "SELECT count(*) FROM synth.resident WHERE birth_date > date '2026-11-26' - interval '18 years' AND guardian_id IS NULL")).scalar()
        unknown_sex = s.execute(text(
            "SELECT count(*) FROM synth.resident r LEFT JOIN registry.concept c ON c.value_set_id = 'sex' AND c.code = r.sex "
            "WHERE c.code IS NULL")).scalar()
        unknown_ethnicity = s.execute(text(
            "SELECT count(*) FROM synth.resident r LEFT JOIN registry.concept c ON c.value_set_id = 'ethnicity' AND c.code = r.ethnicity "
            "WHERE c.code IS NULL")).scalar()
        unknown_titles = s.execute(text(
            "SELECT count(*) FROM registry.practitioner p LEFT JOIN registry.concept c "
            "ON c.value_set_id = 'practitioner-title' AND c.display = p.title WHERE c.code IS NULL")).scalar()
    assert (bad_guardians, minors_without_guardian, unknown_sex, unknown_ethnicity, unknown_titles) == (0, 0, 0, 0, 0)


def test_seeding_twice_is_refused(seeded):
    import pytest

    from smartcare.platform.errors import Conflict
    from smartcare.synth import service

    with pytest.raises(Conflict, match="already holds a region"), session_scope() as s:
        service.seed(s, scale="small", seed=1)


def test_visit_cards_and_their_truth_are_loaded_apart(seeded):
    with session_scope() as s:
        cards, truths, residents_without_card = s.execute(text(
            "SELECT (SELECT count(*) FROM synth.visit_card), (SELECT count(*) FROM synth.visit_card_truth), "
            "(SELECT count(*) FROM synth.resident r WHERE NOT EXISTS "
            " (SELECT 1 FROM synth.visit_card_truth t WHERE t.resident_id = r.id))")).one()
        with_errors = s.execute(text("SELECT count(*) FROM synth.visit_card_truth WHERE cardinality(errors) > 0")).scalar()
    assert cards == truths == seeded.counts["visit_cards"]
    assert residents_without_card == 0
    assert 0.15 < with_errors / cards < 0.25


def test_visit_cards_export_as_the_csv_the_migration_reads(seeded, tmp_path):
    import csv

    from smartcare.synth import service, visitcards

    path = tmp_path / "cards.csv"
    with session_scope() as s:
        written = service.write_visit_cards_csv(s, path)
        assert written == service.visit_card_count(s)
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == written and tuple(rows[0]) == visitcards.CSV_COLUMNS
    assert all(r["facility_code"] and r["card_no"] and r["name"] for r in rows)
