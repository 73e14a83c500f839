"""Rebuild from scratch equals the incrementally kept star schema, row for row — also after late and
corrected data (a discharge after the admission, a cancelled visit, a replaced document, a refund) —
and applying the same change twice changes nothing."""

from __future__ import annotations

import random
from sqlalchemy import text

from smartcare.platform.db import session_scope
from smartcare.synth.activity import activity
from smartcare.warehouse import checks, service
from smartcare.warehouse.landing import Changes

from warehouse_support import DAY, empty_landing, empty_star, landed_keys, small_hospitals, snapshot


def _chunks(changes: Changes, rng: random.Random, size: int) -> list[Changes]:
    """The changes cut into small pieces in a random order (events arrive in any order)."""
    pieces = [(source, key) for source, keys in changes.keys.items() for key in keys]
    rng.shuffle(pieces)
    out = []
    for start in range(0, len(pieces), size):
        part = Changes()
        for source, key in pieces[start:start + size]:
            part.add(source, *key)
        out.append(part)
    persons = Changes()
    persons.persons = changes.persons
    return [persons, *out]


def test_rebuild_equals_incremental_after_corrections(seeded):
    rng = random.Random(5)
    with session_scope() as s:
        empty_landing(s)
        empty_star(s)
        service.refresh_reference(s)
        hospitals = small_hospitals(s)
        landed = service.land_synthetic(s, activity(hospitals, start=DAY, days=6, seed=3, persons=60))
    assert landed["src_encounter"] > 100 and landed["src_charge"] > landed["src_encounter"]

    with session_scope() as s:
        everything = landed_keys(s)
    for piece in _chunks(everything, rng, 97):  # many small transactions, random order: the live path
        with session_scope() as s:
            service.apply(s, piece)

    # late and corrected source records, applied as their events would be
    with session_scope() as s:
        stay = s.execute(text("SELECT facility_code, encounter_id FROM warehouse.src_encounter WHERE class = 'IMP' "
                              "LIMIT 1")).one()
        s.execute(text("UPDATE warehouse.src_encounter SET end_at = end_at + interval '3 days', surgeries = 2 "
                       "WHERE facility_code = :f AND encounter_id = :e"), {"f": stay[0], "e": stay[1]})
        visit = s.execute(text("SELECT facility_code, encounter_id FROM warehouse.src_encounter WHERE class = 'AMB' "
                               "ORDER BY encounter_id LIMIT 1")).one()
        s.execute(text("UPDATE warehouse.src_encounter SET status = 'cancelled' "
                       "WHERE facility_code = :f AND encounter_id = :e"), {"f": visit[0], "e": visit[1]})
        replaced = s.scalar(text("SELECT min(record_id) FROM warehouse.src_document"))
        s.execute(text("UPDATE warehouse.src_document SET current = false WHERE record_id = :r"), {"r": replaced})
        refunded = s.execute(text("SELECT settlement_no, facility_code, bill_no FROM warehouse.src_settlement "
                                  "WHERE cash_pay > 0 ORDER BY settlement_no LIMIT 1")).one()
        s.execute(text("UPDATE warehouse.src_settlement SET total = total - cash_pay, cash_pay = 0 "
                       "WHERE settlement_no = :n"), {"n": refunded[0]})
        # a bill refunded in full (its charges go, its charge items stay in the catalogue), a department corrected
        whole = s.execute(text("SELECT settlement_no, facility_code, bill_no FROM warehouse.src_settlement "
                               "ORDER BY settlement_no DESC LIMIT 1")).one()
        s.execute(text("UPDATE warehouse.src_settlement SET total = 0, fund_pay = 0, account_pay = 0, insurer_pay = 0, "
                       "cash_pay = 0 WHERE settlement_no = :n"), {"n": whole[0]})
        s.execute(text("UPDATE warehouse.src_charge SET code = 'XREFUNDED1' WHERE settlement_no = :n"), {"n": whole[0]})
        only_there = Changes()
        only_there.add("charge", whole[1], whole[2])
        service.apply(s, only_there)  # the item was seen once …
        s.execute(text("DELETE FROM warehouse.src_charge WHERE settlement_no = :n"), {"n": whole[0]})
        moved = s.execute(text("SELECT facility_code, encounter_id FROM warehouse.src_encounter WHERE class = 'AMB' "
                               "ORDER BY encounter_id DESC LIMIT 1")).one()
        s.execute(text("UPDATE warehouse.src_encounter SET department_code = 'DEPT-TYPO' "
                       "WHERE facility_code = :f AND encounter_id = :e"), {"f": moved[0], "e": moved[1]})
        typo = Changes()
        typo.add("encounter", *moved)
        service.apply(s, typo)
        s.execute(text("UPDATE warehouse.src_encounter SET department_code = 'DEPT-FIXED' "
                       "WHERE facility_code = :f AND encounter_id = :e"), {"f": moved[0], "e": moved[1]})
        corrections = Changes()
        corrections.add("encounter", *stay)
        corrections.add("encounter", *visit)
        corrections.add("encounter", *moved)
        corrections.add("document", replaced)
        corrections.add("settlement", refunded[0])
        corrections.add("charge", refunded[1], refunded[2])
        corrections.add("settlement", whole[0])
        corrections.add("charge", whole[1], whole[2])
        service.apply(s, corrections)
        kept = snapshot(s)
        # the same change again (a redelivered event): nothing moves
        service.apply(s, corrections)
        assert snapshot(s) == kept

    with session_scope() as s:
        assert s.scalar(text("SELECT count(*) FROM warehouse.fct_outpatient_visit WHERE encounter_id = :e"),
                        {"e": visit[1]}) == 0
        assert s.scalar(text("SELECT bed_days FROM warehouse.fct_inpatient_stay WHERE encounter_id = :e"),
                        {"e": stay[1]}) >= 4
        assert s.scalar(text("SELECT is_current FROM warehouse.fct_document WHERE record_id = :r"), {"r": replaced}) is False
        assert s.scalar(text("SELECT count(*) FROM warehouse.fct_diagnosis WHERE record_id = :r"), {"r": replaced}) == 0
        assert s.scalar(text("SELECT count(*) FROM warehouse.fct_settlement_payer WHERE settlement_no = :n "
                             "AND payer_kind = 'self'"), {"n": refunded[0]}) == 0
        assert s.scalar(text("SELECT count(*) FROM warehouse.fct_settlement_payer WHERE settlement_no = :n"),
                        {"n": whole[0]}) == 0
        assert s.scalar(text("SELECT count(*) FROM warehouse.fct_charge_item WHERE bill_no = :b"), {"b": whole[2]}) == 0
        # dimensions are catalogues: what was seen stays (and a rebuild keeps it)
        assert s.scalar(text("SELECT count(*) FROM warehouse.dim_charge_item WHERE code = 'XREFUNDED1'")) == 1
        assert s.scalar(text("SELECT count(*) FROM warehouse.dim_department WHERE code IN ('DEPT-TYPO', 'DEPT-FIXED')")) == 2
        assert kept["mart_facility_day"], "the mart has rows"
        assert all(n == 0 for _, n in checks.run(s)), [c for c in checks.run(s) if c[1]]

    with session_scope() as s:
        service.rebuild(s)
        rebuilt = snapshot(s)
    for table in service.TABLES:
        assert rebuilt[table] == kept[table], f"{table} differs after a rebuild"


def test_apply_of_nothing_and_days_without_facts(seeded):
    """A day whose every fact went away loses its mart row (as a rebuild would not make one)."""
    with session_scope() as s:
        empty_landing(s)
        empty_star(s)
        service.refresh_reference(s)
        assert service.apply(s, Changes()) == 0
        h = small_hospitals(s, 1)[0]
        s.execute(text("INSERT INTO warehouse.src_message VALUES (1, :f, :f, 'hl7v2', 'ADT^A04', 'failed', "
                       "'2026-03-02 10:00+08', NULL)"), {"f": h.code})
        one = Changes()
        one.add("message", 1)
        service.apply(s, one)
        row = s.execute(text("SELECT messages, messages_failed FROM warehouse.mart_facility_day "
                             "WHERE date_key = 20260302")).one()
        assert tuple(row) == (1, 1)
        s.execute(text("DELETE FROM warehouse.src_message WHERE message_id = 1"))
        service.apply(s, one)
        assert s.scalar(text("SELECT count(*) FROM warehouse.mart_facility_day")) == 0
