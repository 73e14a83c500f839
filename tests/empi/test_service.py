"""The master patient index's record keeping: links, unlinks, merges and unmerges, all reversible and
recorded, with golden records recomputed by survivorship (against real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from smartcare.empi import service
from smartcare.platform import idcard
from smartcare.platform.db import session_scope
from smartcare.platform.errors import Conflict



@pytest.fixture
def people(database_url):
    """Two hospitals' cards of one resident (one with a typo, traditional characters and no ID) and a stranger."""
    tag = uuid.uuid4().hex[:6]
    number = idcard.make("500112", date(1985, 3, 9), 17, "1")
    with session_scope() as s:
        a = service.register_source(s, facility_code=f"H{tag}A", card_no="MZ001", trust=3,
                                    record={"name": "张伟", "id_number": number, "sex": "1", "birth_date": "1985-03-09",
                                            "phone": "13812348000", "address": "重庆市渝北区龙溪街道1号"},
                                    recorded_at=datetime(2024, 1, 5, tzinfo=UTC))
        b = service.register_source(s, facility_code=f"H{tag}B", card_no="0042", trust=1,
                                    record={"name": "張 偉", "sex": "", "birth_date": "1985/3/9", "phone": "+86 139 0000 1111"},
                                    recorded_at=datetime(2026, 6, 1, tzinfo=UTC))
        c = service.register_source(s, facility_code=f"H{tag}B", card_no="0043", trust=1,
                                    record={"name": "李娜", "sex": "2", "birth_date": "1990-01-01"})
        return a.id, b.id, c.id, number


def _person_of(s, source_id: int) -> int:
    return s.execute(text("SELECT person_id FROM empi.link WHERE source_id = :s"), {"s": source_id}).scalar_one()


def test_link_golden_record_and_unlink(people):
    a, b, c, number = people
    with session_scope() as s:
        p = service.link(s, source_id=a, method="rule:new", actor="test")
        service.link(s, source_id=b, person_id=p.id, weight=14.2, method="model:fs", actor="test")
        golden = dict(s.get(service.Person, p.id).golden)
    # survivorship: the valid ID and the trusted hospital's phone, the name normalised (張 偉 → 张伟 either way)
    assert golden["id_number"] == number and golden["name"] == "张伟" and golden["sources"] == 2
    assert golden["phone"] == "13812348000" and golden["birth_date"] == "1985-03-09"

    with session_scope() as s:
        own = service.unlink(s, source_id=b, actor="reviewer", reason="different person after all")
        assert _person_of(s, b) == own.id != p.id
        assert s.get(service.Person, p.id).golden["sources"] == 1
        actions = [h.action for h in service.history(s, p.id)]
    assert actions == ["link", "link", "unlink"]


def test_survivorship_rule_by_rule_and_the_person_a_card_left(database_url):
    """Each field from the card the rules pick: a valid ID before a more trusted invalid one, then trust, then
    recency, then completeness; empty values and unknown sex (0, 9) never win; a relinked card's old person is
    recomputed from the cards it still has (all in the link's one statement)."""
    tag = uuid.uuid4().hex[:6]
    number = idcard.make("500112", date(1979, 11, 2), 31, "1")
    bad = number[:-1] + ("0" if number[-1] != "0" else "1")

    def card(no, trust, at, **record):
        return service.register_source(s, facility_code=f"S{tag}", card_no=no, trust=trust, record=record,
                                       recorded_at=datetime(*at, tzinfo=UTC)).id

    with session_scope() as s:
        a = card("1", 1, (2020, 1, 1), name="王强", id_number=number, sex="1", birth_date="1979-11-02",
                 phone="13900000001", address="重庆市渝北区龙溪街道1号")
        b = card("2", 5, (2021, 1, 1), name="王強", id_number=bad, sex="9", birth_date="1979-11-02", phone="",
                 address="重庆市江北区观音桥2号")
        c = card("3", 5, (2025, 1, 1), name="王强", sex="0", phone="13900000003")
        d = card("4", 5, (2025, 1, 1), name="王强", sex="1", birth_date="1979-11-02", phone="13900000004",
                 address="重庆市南岸区3号")
        p = service.link(s, source_id=a, method="test", actor="test")
        for source in (b, c, d):
            service.link(s, source_id=source, person_id=p.id, method="test", actor="test")
        golden = s.execute(text("SELECT golden FROM empi.person WHERE id = :p"), {"p": p.id}).scalar_one()
        assert golden["id_number"] == number  # valid (a) before more trusted but invalid (b)
        assert golden["sex"] == "1"  # 9 and 0 are no values; d is the most trusted and recent with one
        assert golden["phone"] == "13900000004"  # trust 5, 2025: c and d tie, d is more complete
        assert golden["address"] == "重庆市南岸区3号" and golden["sources"] == 4  # trust 5, newest: d over b
        other = service.link(s, source_id=d, method="test", actor="test")  # d moves to a person of its own
        left = s.execute(text("SELECT golden FROM empi.person WHERE id = :p"), {"p": p.id}).scalar_one()
        own = s.execute(text("SELECT golden FROM empi.person WHERE id = :p"), {"p": other.id}).scalar_one()
    assert left["phone"] == "13900000003" and left["address"] == "重庆市江北区观音桥2号" and left["sources"] == 3
    assert left["sex"] == "1" and left["id_number"] == number
    assert own["phone"] == "13900000004" and own["sources"] == 1 and "id_number" not in own


def test_merge_and_unmerge_are_reversible_and_xref_follows(people):
    a, b, c, _ = people
    with session_scope() as s:
        p1 = service.link(s, source_id=a, method="rule:new", actor="test")
        service.link(s, source_id=b, person_id=p1.id, method="rule:new", actor="test")
        p2 = service.link(s, source_id=c, method="rule:new", actor="test")
        p2_empi = p2.empi_id
        entry = service.merge(s, survivor_id=p1.id, merged_id=p2.id, actor="admin", reason="test")
        merge_id = entry.id
    with session_scope() as s:
        person, cards = service.xref(s, p2_empi)  # the merged id still resolves, to the survivor
        assert person.id == p1.id and len(cards) == 3
        with pytest.raises(Conflict):
            service.link(s, source_id=a, person_id=p2.id, method="x", actor="test")
    with session_scope() as s:
        back = service.unmerge(s, merge_history_id=merge_id, actor="admin", reason="wrong merge")
        assert back.state == "active" and _person_of(s, c) == back.id and _person_of(s, a) == p1.id
        with pytest.raises(Conflict, match="already undone"):
            service.unmerge(s, merge_history_id=merge_id, actor="admin")
    with session_scope() as s:
        audited = s.execute(text("SELECT count(*) FROM platform.audit_log WHERE action IN ('empi.merge', 'empi.unmerge') "
                                 "AND target = :t"), {"t": f"person:{p1.id}"}).scalar()
    assert audited == 1  # the merge is recorded on the survivor; the unmerge on the person that came back


def test_every_source_is_linked_once_and_history_is_append_only(people):
    a, b, c, _ = people
    with session_scope() as s:
        for source in (a, b, c):
            service.link(s, source_id=source, method="rule:new", actor="test")
    with session_scope() as s:
        orphans = s.execute(text("SELECT count(*) FROM empi.source_identity si LEFT JOIN empi.link l ON l.source_id = si.id "
                                 "LEFT JOIN empi.person p ON p.id = l.person_id WHERE si.id = ANY(:ids) "
                                 "AND (l.source_id IS NULL OR p.state <> 'active')"), {"ids": [a, b, c]}).scalar()
        assert orphans == 0
    with pytest.raises(DBAPIError, match="append-only"), session_scope() as s:
        s.execute(text("UPDATE empi.history SET actor = 'mallory'"))


def test_normalised_form_and_repairs_are_kept_beside_the_record(people):
    _, b, _, _ = people
    with session_scope() as s:
        source = s.get(service.SourceIdentity, b)
        assert source.recorded["name"] == "張 偉" and source.norm["name"] == "张伟"
        assert {r["code"] for r in source.norm["repairs"]} >= {"traditional_to_simplified", "country_code_removed"}
        assert source.norm["phone"] == "13900001111"


def test_merge_then_relink_in_one_transaction_sees_the_moved_links(people):
    a, b, c, _ = people
    with session_scope() as s:
        p1 = service.link(s, source_id=a, method="rule:new", actor="test")
        p2 = service.link(s, source_id=c, method="rule:new", actor="test")
        service.merge(s, survivor_id=p1.id, merged_id=p2.id, actor="test")
        # c now belongs to p1: moving it to a new person must record p1 as where it came from
        own = service.unlink(s, source_id=c, actor="test", reason="split")
        assert _person_of(s, c) == own.id
        last = service.history(s, own.id)[-1]
        assert last.action == "unlink" and last.other_person_id == p1.id


def test_link_refuses_a_person_holding_another_certain_id(database_url):
    """``unless_holding``: a twin's card is not linked to the sibling's person, whatever matching scored."""
    tag = uuid.uuid4().hex[:6]
    born = date(2018, 6, 6)
    first, second = (idcard.make("500103", born, n, "1") for n in (20, 21))
    with session_scope() as s:
        a = service.register_source(s, facility_code=f"U{tag}", card_no="1", record={
            "name": "王浩宇", "id_number": first, "sex": "1", "birth_date": born.isoformat()})
        b = service.register_source(s, facility_code=f"U{tag}", card_no="2", record={
            "name": "王浩然", "id_number": second, "sex": "1", "birth_date": born.isoformat()})
        twin = service.link(s, source_id=a.id, method="new", actor="test")
        refused = service.link(s, source_id=b.id, person_id=twin.id, method="model:x", actor="test",
                               unless_holding=("id_certain", b.features["id_certain"]))
        assert refused is None
        assert s.execute(text("SELECT count(*) FROM empi.link WHERE source_id = :b"), {"b": b.id}).scalar() == 0
        same = service.link(s, source_id=b.id, person_id=twin.id, method="review", actor="test",
                            unless_holding=("id_certain", first))  # the same certain ID: no clash
        assert same is not None and same.id == twin.id
