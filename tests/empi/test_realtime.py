"""Real-time register-and-match against an index with a trained model (the synthetic cards migrated
first), on the cases that matter: spelling variants link; a guardian's ID on a child, twins and a
namesake do not; PDQ search ranks the right person first; re-registering changes nothing."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import text

from smartcare.empi import matching, migration
from smartcare.empi.fields import default_config
from smartcare.platform import idcard

from empi_support import fresh_database, sessions

PHONE = "13988776655"
ADDRESS = "重庆市渝中区解放碑街道民族路12号"
PARENT = {"name": "张建国", "id_number": idcard.make("500103", date(1980, 5, 5), 10, "1"), "sex": "1",
          "birth_date": "1980-05-05", "phone": PHONE, "address": ADDRESS}


@pytest.fixture(scope="module")
def index(database_url, cards_csv):
    """A database whose index holds the synthetic cards and a model trained on them."""
    path, _ = cards_csv
    with fresh_database(database_url) as url:
        with sessions(url)() as session:
            migration.run_migration(session, migration.Options(path=path, config=default_config(), chunk=2000))
        yield sessions(url)


def _register(factory, facility: str, card_no: str, record: dict) -> matching.Decision:
    with factory() as session:
        decision = matching.register(session, facility_code=facility, card_no=card_no, record=record, actor="test")
        session.commit()
        return decision


def test_spelling_variants_of_one_person_link_at_once(index):
    first = _register(index, "T001", "P1", PARENT)
    assert first.outcome == "new"
    variant = {**PARENT, "name": "張 建國", "id_number": PARENT["id_number"].lower(), "sex": "",
               "phone": "+86 139 8877 6655"}
    second = _register(index, "T002", "0007", variant)
    assert second.outcome == "link" and second.person.id == first.person.id
    assert second.weight >= default_config().link_weight and second.method.startswith(("model:", "rule"))
    no_id = {**PARENT, "name": "章建国", "id_number": None}  # a homophone surname and no ID number
    third = _register(index, "T003", "A-19", no_id)
    assert third.outcome == "link" and third.person.id == first.person.id


def test_a_guardians_id_on_a_child_does_not_join_the_guardian(index):
    guardian_id = idcard.make("500103", date(1979, 1, 9), 11, "1")
    parent = _register(index, "T011", "P1", {**PARENT, "name": "刘建国", "id_number": guardian_id,
                                             "birth_date": "1979-01-09"})
    child = _register(index, "T012", "C1", {"name": "刘小明", "id_number": guardian_id, "sex": "1",
                                            "birth_date": "2015-03-03", "phone": PHONE, "address": ADDRESS})
    assert child.person.id != parent.person.id


def test_twins_stay_two_people(index):
    born = date(2018, 6, 6)
    base = {"sex": "1", "birth_date": born.isoformat(), "phone": "13700001111", "address": ADDRESS}
    a = _register(index, "T021", "TW1", {**base, "name": "王浩宇", "id_number": idcard.make("500103", born, 20, "1")})
    b = _register(index, "T022", "TW2", {**base, "name": "王浩然", "id_number": idcard.make("500103", born, 21, "1")})
    assert b.person.id != a.person.id
    # The same twin again at another hospital still finds the right one.
    again = _register(index, "T023", "TW3", {**base, "name": "王浩然", "id_number": None})
    assert again.person.id == b.person.id


def test_a_namesake_born_the_same_day_is_someone_else(index):
    a = _register(index, "T031", "N1", {**PARENT, "name": "赵建国", "id_number":
                                          idcard.make("500103", date(1980, 5, 5), 30, "1")})
    b = _register(index, "T032", "N2", {"name": "赵建国", "id_number": idcard.make("500112", date(1980, 5, 5), 31, "1"),
                                        "sex": "1", "birth_date": "1980-05-05", "phone": "13500002222",
                                        "address": "重庆市渝北区龙溪街道1号"})
    assert b.person.id != a.person.id


def test_pdq_query_ranks_the_right_person_first_with_its_reasons(index):
    target = _register(index, "T041", "Q1", {**PARENT, "name": "钱建国", "id_number":
                                               idcard.make("500103", date(1980, 5, 5), 40, "1")})
    with index() as session:
        ranked = matching.query(session, {"name": "錢建國", "birth_date": "1980-05-05", "phone": PHONE})
    assert ranked and ranked[0].person_id == target.person.id
    terms = {t.comparison: t.level for t in ranked[0].score.terms}
    assert terms["name"] == "exact" and terms["birth_date"] == "exact" and terms["id_number"] == "missing"


def test_registering_the_same_card_again_changes_nothing(index):
    first = _register(index, "T051", "R1", {**PARENT, "name": "孙建国"})
    with index() as session:
        before = session.execute(text("SELECT count(*) FROM empi.history")).scalar_one()
    again = _register(index, "T051", "R1", {**PARENT, "name": "孙建国"})
    with index() as session:
        after = session.execute(text("SELECT count(*) FROM empi.history")).scalar_one()
    assert again.person.id == first.person.id and again.outcome == "link" and after == before
