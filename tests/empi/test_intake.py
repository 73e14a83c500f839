"""Hospitals' ADT messages flow through the exchange hub into the master patient index: the same
resident registered at two hospitals becomes one person; a child registered with a guardian's ID does not."""

from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import text

from smartcare.platform.db import session_scope
from smartcare.synth.messages import adt
from tests.exchange.conftest import mllp_exchange, msa, settle


def _hospitals(n: int) -> list[str]:
    with session_scope() as s:
        return list(s.execute(text("SELECT code FROM registry.facility WHERE kind = 'general_hospital' ORDER BY code "
                                   "OFFSET 5 LIMIT :n"), {"n": n}).scalars())


def _person(facility: str, card_no: str) -> int | None:
    with session_scope() as s:
        return s.execute(text("SELECT l.person_id FROM empi.source_identity si JOIN empi.link l ON l.source_id = si.id "
                              "WHERE si.facility_code = :f AND si.card_no = :c"), {"f": facility, "c": card_no}).scalar()


def test_same_resident_at_two_hospitals_is_one_person_and_a_guardians_id_is_not(live_server, seeded):
    first, second = _hospitals(2)
    with session_scope() as s:
        adult, guardian_child = s.execute(text(
            "SELECT row_to_json(a), row_to_json(c) FROM synth.resident c JOIN synth.resident a ON a.id = c.guardian_id "
            "WHERE c.birth_date > date '2015-01-01' AND NOT EXISTS ("  # nobody registered them yet (other tests may)
            "  SELECT 1 FROM empi.source_identity si WHERE si.recorded->>'id_number' IN (a.id_number, c.id_number)) "
            "ORDER BY c.id LIMIT 1")).one()
    for r in (adult, guardian_child):
        r["birth_date"] = date.fromisoformat(r["birth_date"])
    # the adult at both hospitals (the second types a space inside the name)
    spelled = {**adult, "name": adult["name"][0] + " " + adult["name"][1:]}
    # the child registered with the guardian's ID number
    child_card = {**guardian_child, "id_number": adult["id_number"]}
    messages = [adt(first, f"I{uuid.uuid4().hex[:10]}", adult), adt(second, f"I{uuid.uuid4().hex[:10]}", spelled),
                adt(second, f"I{uuid.uuid4().hex[:10]}", child_card)]
    acks = mllp_exchange(live_server.mllp_port, [m.encode() for m in messages])
    assert all(msa(a)[1] == "AA" for a in acks)
    settle()
    adult_card, child_card_no = f"MZ{adult['id']:08d}", f"MZ{guardian_child['id']:08d}"
    at_first, at_second, child = _person(first, adult_card), _person(second, adult_card), _person(second, child_card_no)
    assert at_first is not None and at_first == at_second
    assert child is not None and child != at_first
    with session_scope() as s:
        golden = s.execute(text("SELECT golden FROM empi.person WHERE id = :p"), {"p": at_first}).scalar()
    assert golden["id_number"] == adult["id_number"] and golden["sources"] == 2
