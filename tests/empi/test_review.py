"""The review queue: a reviewer's decision is carried out (link through the audited, reversible service),
kept as a training label, and taken only once; the console pages show both cards and the waterfall to
administrators, masked to auditors, and refuse everyone else and forged posts (against real PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import date

import pytest
from sqlalchemy import text

from smartcare.empi import review, service
from smartcare.empi.models import Review
from smartcare.platform import idcard
from smartcare.platform.db import session_scope
from smartcare.platform.errors import Conflict, InvalidInput

TERMS = [
    {"comparison": "prior", "level": "two random records match", "weight": -14.3, "tf_adjustment": 0.0},
    {"comparison": "id_number", "level": "missing", "weight": 0.0, "tf_adjustment": 0.0},
    {"comparison": "name", "level": "same pinyin (homophone, traditional form)", "weight": 7.9, "tf_adjustment": 0.0},
    {"comparison": "birth_date", "level": "exact", "weight": 8.6, "tf_adjustment": 0.0},
    {"comparison": "sex", "level": "missing", "weight": 0.0, "tf_adjustment": 0.0},
    {"comparison": "phone", "level": "different", "weight": -2.1, "tf_adjustment": 0.0},
    {"comparison": "district", "level": "same district", "weight": 3.2, "tf_adjustment": 0.0},
]
NUMBER = idcard.make("500112", date(1991, 7, 14), 23, "2")


def make_pair(terms: list[dict] = TERMS) -> tuple[int, int, int]:
    """Two hospitals' cards of (probably) one resident, each on a person of its own, and their review item."""
    tag = uuid.uuid4().hex[:6]
    with session_scope() as s:
        a = service.register_source(s, facility_code=f"R{tag}A", card_no="MZ7", record={
            "name": "歐陽娜娜", "sex": "", "birth_date": "1991/7/14", "phone": "13900001111",
            "address": "重庆市渝北区龙溪街道9号"})
        b = service.register_source(s, facility_code=f"R{tag}B", card_no="0091", record={
            "name": "欧阳娜娜", "id_number": NUMBER, "sex": "2", "birth_date": "1991-07-14",
            "phone": "13812348000", "address": "重庆市渝北区龙溪街道9号"})
        service.link(s, source_id=b.id, method="new", actor="test")
        service.link(s, source_id=a.id, method="new", actor="test")
        r = Review(source_id=a.id, other_source_id=b.id, weight=sum(t["weight"] for t in terms), terms=terms,
                   origin="realtime")
        s.add(r)
        s.flush()
        return r.id, a.id, b.id


def _person(s, source_id: int) -> int:
    return s.execute(text("SELECT person_id FROM empi.link WHERE source_id = :s"), {"s": source_id}).scalar_one()


def test_link_moves_the_card_to_the_other_person_once_and_is_a_label(database_url):
    rid, a, b = make_pair()
    with session_scope() as s:
        before = _person(s, a)
        review.decide(s, review_id=rid, decision="link", actor="reviewer")
    with session_scope() as s:
        assert _person(s, a) == _person(s, b) != before
        r = s.get(Review, rid)
        assert r.state == "linked" and r.decided_by == "reviewer" and r.decided_at is not None
        moved = s.execute(text("SELECT action, method, actor FROM empi.history WHERE source_id = :a ORDER BY id DESC LIMIT 1"),
                          {"a": a}).one()
        assert tuple(moved) == ("relink", "review", "reviewer")
        assert s.execute(text("SELECT confirmed_by FROM empi.link WHERE source_id = :a"), {"a": a}).scalar() == "reviewer"
        audited = s.execute(text("SELECT detail->>'decision' FROM platform.audit_log WHERE action = 'empi.review.decide' "
                                 "AND target = :t"), {"t": f"review:{rid}"}).scalars().all()
        assert audited == ["link"]
        assert (a, b, True) in review.labels(s)
        with pytest.raises(Conflict, match="already decided"):
            review.decide(s, review_id=rid, decision="not_match", actor="someone else")


def test_not_match_leaves_persons_alone_and_records_the_label(database_url):
    rid, a, b = make_pair()
    with session_scope() as s:
        persons = (_person(s, a), _person(s, b))
        review.decide(s, review_id=rid, decision="not_match", actor="reviewer")
    with session_scope() as s:
        assert (_person(s, a), _person(s, b)) == persons and persons[0] != persons[1]
        assert (a, b, False) in review.labels(s)
        assert rid not in [r.id for r, _, _ in review.queue(s, limit=1000)]
        with pytest.raises(Conflict):
            review.decide(s, review_id=rid, decision="defer", actor="reviewer")


def test_defer_keeps_the_item_in_the_queue_but_not_next(database_url):
    rid, a, b = make_pair()
    with session_scope() as s:
        review.decide(s, review_id=rid, decision="defer", actor="reviewer")
    with session_scope() as s:
        assert s.get(Review, rid).state == "deferred"
        assert rid in [r.id for r, _, _ in review.queue(s, limit=1000)]
        assert rid not in [x[:2] for x in review.labels(s)]
        following = review.next_open(s)
        assert following is None or following.id != rid
        with pytest.raises(InvalidInput):
            review.decide(s, review_id=rid, decision="maybe", actor="reviewer")
        review.decide(s, review_id=rid, decision="link", actor="reviewer")  # a deferred item can still be decided
        assert _person(s, a) == _person(s, b)


def test_link_of_cards_already_on_one_person_only_marks_it(database_url):
    rid, a, b = make_pair()
    with session_scope() as s:
        service.link(s, source_id=a, person_id=_person(s, b), method="manual", actor="test")
        rows = s.execute(text("SELECT count(*) FROM empi.history WHERE source_id = :a"), {"a": a}).scalar()
        item = review.get(s, rid)
        assert item.same_person and item.source.source.id == a and item.other.person.id == _person(s, b)
        review.decide(s, review_id=rid, decision="link", actor="reviewer")
        assert s.execute(text("SELECT count(*) FROM empi.history WHERE source_id = :a"), {"a": a}).scalar() == rows
        assert s.get(Review, rid).state == "linked"


def test_queue_is_strongest_first(database_url):
    low, _, _ = make_pair([{**TERMS[0], "weight": -1.5}])
    high, _, _ = make_pair([{**TERMS[0], "weight": 5.5}])
    with session_scope() as s:
        ids = [r.id for r, _, _ in review.queue(s, limit=1000)]
        weights = [r.weight for r, _, _ in review.queue(s, limit=1000)]
        assert ids.index(high) < ids.index(low) and weights == sorted(weights, reverse=True)
        for rid in (low, high):
            review.decide(s, review_id=rid, decision="not_match", actor="test")


# --- the console pages ------------------------------------------------------------------------------


def _login(client, username, password):
    client.cookies.clear()
    r = client.post("/login", data={"username": username, "password": password}, follow_redirects=False)
    assert r.status_code == 303


def test_pages_are_for_the_console_roles_only(client, seeded):
    rid, _, _ = make_pair()
    _login(client, "resident", "smartcare-demo")
    assert client.get("/admin/empi/review").status_code == 403
    assert client.get(f"/admin/empi/review/{rid}").status_code == 403
    _login(client, "auditor", "smartcare-audit")
    page = client.get(f"/admin/empi/review/{rid}")
    assert page.status_code == 200 and "欧***" in page.text
    assert "欧阳娜娜" not in page.text and NUMBER not in page.text and "13812348000" not in page.text
    assert "decide-link" not in page.text  # read-only
    assert client.post(f"/admin/empi/review/{rid}/link", headers={"HX-Request": "true"}).status_code == 403
    with session_scope() as s:
        assert s.get(Review, rid).state == "open"
        review.decide(s, review_id=rid, decision="not_match", actor="test")


def test_admin_sees_both_cards_and_the_waterfall_and_decides_with_htmx(client, seeded):
    rid, a, b = make_pair()
    _login(client, "admin", "smartcare-admin")
    listing = client.get("/admin/empi/review").text
    assert f'href="/admin/empi/review/{rid}"' in listing and "欧***" in listing and "欧阳娜娜" not in listing
    page = client.get(f"/admin/empi/review/{rid}").text
    assert "歐陽娜娜" in page and "欧阳娜娜" in page and NUMBER in page and "13812348000" in page  # full: admin decides
    assert "traditional characters converted to simplified" in page  # the repairs normalisation made
    for label in ("先验", "same pinyin (homophone, traditional form)", "+7.90", "-2.10", "same district", "+3.20"):
        assert label in page, label
    assert page.index('data-comparison="prior"') < page.index('data-comparison="name"')
    with session_scope() as s:
        assert s.execute(text("SELECT count(*) FROM platform.audit_log WHERE action = 'empi.review.read' AND target = :t "
                              "AND actor = 'admin'"), {"t": f"review:{rid}"}).scalar() >= 1

    forged = client.post(f"/admin/empi/review/{rid}/link")  # no HX-Request: a cross-site form
    assert forged.status_code == 403
    with session_scope() as s:
        assert s.get(Review, rid).state == "open"

    done = client.post(f"/admin/empi/review/{rid}/link", headers={"HX-Request": "true"})
    assert done.status_code == 200 and f"评审 #{rid} 已关联为同一人" in done.text
    assert done.headers["HX-Push-Url"].startswith("/admin/empi/review")
    with session_scope() as s:
        assert s.get(Review, rid).state == "linked" and _person(s, a) == _person(s, b)
    again = client.post(f"/admin/empi/review/{rid}/not_match", headers={"HX-Request": "true"})
    assert again.status_code == 409 and "already decided" in again.text
    assert f"/admin/empi/review/{rid}" in client.get("/admin/empi/review", params={"view": "decided"}).text
