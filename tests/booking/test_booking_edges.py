"""Edges found in review: doctor codes are per hospital, a withdrawal gives a waitlist offer back,
no confirming a slot that has started, extra places go to the waitlist, the hospital's feed follows
changes, rule values that contradict each other, bad query values, Retry-After, and no lock-order
deadlock between the upkeep and residents."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest

from smartcare.booking import service
from smartcare.platform.db import session_scope
from tests.booking.booking_support import admin_headers, at, hold, new_booker, publish, rules, slot_body, sql
from tests.healthcard.card_support import signed


def run(task):
    with session_scope() as s:
        return task(s)


def _wait(client, who, slot_id: int, hospital) -> None:
    [(dept, day)] = sql("SELECT department_code, visit_date FROM booking.slot WHERE id = :id", id=slot_id)
    r = client.post("/api/v1/booking/waitlist", headers=who.h, json={
        "card_no": who.card_no, "facility_code": hospital[0], "department_code": dept, "visit_date": day.isoformat()})
    assert r.status_code == 201, r.text


def test_the_per_doctor_limit_counts_one_hospitals_doctor(client, hospital, other_hospital):
    here, there = (publish(client, h, slot_body(h, start=at(days=10), practitioner="D0012"))[0]
                   for h in (hospital, other_hospital))
    p = new_booker(client)
    assert hold(client, p, here).status_code == 201
    assert hold(client, p, there).status_code == 201  # another hospital's D0012 is another doctor


def test_a_withdrawal_puts_a_waitlist_offer_back_in_the_queue(client, hospital):
    body = slot_body(hospital, start=at(days=11))
    [slot_id] = publish(client, hospital, body)
    first, waiting = new_booker(client), new_booker(client)
    booked = hold(client, first, slot_id, confirm=True).json()
    _wait(client, waiting, slot_id, hospital)
    client.post(f"/api/v1/booking/appointments/{booked['appointment_no']}/cancel", headers=first.h)
    sql("UPDATE booking.seat_return SET return_at = now() WHERE slot_id = :id", id=slot_id)
    run(service.return_places)
    assert client.get("/api/v1/booking/me/waitlist", headers=waiting.h).json()[0]["state"] == "offered"
    r = signed(client, hospital, "POST", f"/api/v1/booking/hospital/slots/{body['source_id']}/withdraw", {"reason": "停诊"})
    assert r.status_code == 200
    assert client.get("/api/v1/booking/me/waitlist", headers=waiting.h).json()[0]["state"] == "waiting"
    # and the hospital's systems hear of the booking the withdrawal cancelled
    assert sql("SELECT count(*) FROM platform.bus_message WHERE topic = 'booking.appointment.cancelled' "
               "AND payload->>'appointment_no' = :n", n=booked["appointment_no"]) == [(1,)]


def test_no_confirming_once_the_slot_has_started(client, hospital):
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=12)))
    p = new_booker(client)
    held = hold(client, p, slot_id).json()
    assert held["held_until"] < held["starts_at"]
    sql("UPDATE booking.slot SET starts_at = now() - interval '1 minute', ends_at = now() + interval '14 minutes' "
        "WHERE id = :id", id=slot_id)
    r = client.post(f"/api/v1/booking/appointments/{held['appointment_no']}/confirm", headers=p.h)
    assert r.status_code == 409 and r.json()["error"] == "no_slot"


def test_holds_end_at_the_slots_start(client, hospital):
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=1, hour=9)))
    sql("UPDATE booking.slot SET starts_at = now() + interval '2 minutes', ends_at = now() + interval '17 minutes' "
        "WHERE id = :id", id=slot_id)
    held = hold(client, new_booker(client), slot_id).json()
    [(starts_at,)] = sql("SELECT starts_at FROM booking.slot WHERE id = :id", id=slot_id)
    [(held_until,)] = sql("SELECT held_until FROM booking.appointment WHERE appointment_no = :n", n=held["appointment_no"])
    assert held_until == starts_at


def test_extra_places_are_offered_to_the_waitlist_first(client, hospital):
    body = slot_body(hospital, start=at(days=5, hour=16), capacity=1)  # released by the default rules
    [slot_id] = publish(client, hospital, body)
    first, waiting, outsider = new_booker(client), new_booker(client), new_booker(client)
    hold(client, first, slot_id, confirm=True)
    _wait(client, waiting, slot_id, hospital)
    publish(client, hospital, {**body, "capacity": 2})  # 加号
    assert hold(client, outsider, slot_id).json()["error"] == "no_slot"
    run(service.return_places)
    offer = client.get("/api/v1/booking/me/appointments", headers=waiting.h).json()[0]
    assert offer["state"] == "held" and offer["slot_id"] == slot_id
    assert sql("SELECT taken, withheld, capacity FROM booking.slot WHERE id = :id", id=slot_id) == [(2, 0, 2)]


def test_the_hospital_feed_follows_each_change(client, hospital):
    [a_slot, b_slot] = publish(client, hospital, slot_body(hospital, start=at(days=14)),
                               slot_body(hospital, start=at(days=14, hour=10)))
    p, q = new_booker(client), new_booker(client)
    early = hold(client, p, a_slot).json()           # held first (lower id), confirmed last
    hold(client, q, b_slot, confirm=True)

    def feed(since: str) -> list[dict]:
        r = signed(client, hospital, "GET", "/api/v1/booking/hospital/appointments", params=f"since={since}&limit=2000")
        assert r.status_code == 200, r.text
        return r.json()

    last = feed("0.0")[-1]["cursor"]
    client.post(f"/api/v1/booking/appointments/{early['appointment_no']}/confirm", headers=p.h)
    assert [(a["appointment_no"], a["state"]) for a in feed(last)] == [(early["appointment_no"], "booked")]
    last = feed(last)[-1]["cursor"]
    client.post(f"/api/v1/booking/appointments/{early['appointment_no']}/cancel", headers=p.h)
    assert [(a["appointment_no"], a["state"]) for a in feed(last)] == [(early["appointment_no"], "cancelled")]


def test_rules_that_contradict_each_other_are_refused(client, hospital):
    admin = admin_headers(client)
    r = client.put(f"/api/v1/booking/rules/{hospital[0]}", json={"return_min_seconds": 5000}, headers=admin)
    assert r.status_code == 422 and "return_max_seconds" in r.json()["message"]
    assert client.get(f"/api/v1/booking/rules/{hospital[0]}", headers=admin).json()["return_min_seconds"] == 60
    assert client.get("/api/v1/booking/rules/NOPE", headers=admin).status_code == 404


def test_a_changed_release_rule_moves_slots_not_yet_released(client, hospital):
    admin = admin_headers(client)
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=20)), released=False)
    try:
        rules(client, admin, hospital[0], release_time="15:30", release_days=2)
        [(release,)] = sql("SELECT to_char(release_at AT TIME ZONE 'UTC' + interval '8 hours', 'YYYY-MM-DD HH24:MI') "
                           "FROM booking.slot WHERE id = :id", id=slot_id)
        assert release == f"{at(days=18):%Y-%m-%d} 15:30"
    finally:
        rules(client, admin, hospital[0], release_time=None, release_days=None)


@pytest.mark.parametrize("path", [
    "/api/v1/booking/slots?limit=-1", "/api/v1/booking/slots?offset=-1",
    "/api/v1/booking/slots?fee_max=99999999999999999999", "/api/v1/booking/slots/99999999999999999999"])
def test_bad_query_values_are_422(client, path):
    r = client.get(path)
    assert r.status_code == 422, r.text


def test_rate_limited_answers_say_when_to_retry(client, hospital, monkeypatch):
    from smartcare.booking import api, throttle

    monkeypatch.setattr(api, "gate", throttle.Throttle(rate=0.5, burst=1, strikes=100, slow_seconds=1, slow_delay=0))
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=15), capacity=3))
    p = new_booker(client)
    assert hold(client, p, slot_id).status_code == 201
    r = hold(client, p, slot_id)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_the_upkeep_never_deadlocks_with_a_resident(client, hospital):
    """The place-return upkeep holds a slot's row while it offers the place; a person on the waitlist
    booking at that moment takes their own lock first and the slot's second. The upkeep must not wait
    for the person: it skips them (they stay waiting) instead of deadlocking."""
    [slot_id, other] = publish(client, hospital, slot_body(hospital, start=at(days=16), capacity=1),
                               slot_body(hospital, start=at(days=17)))
    first, waiting = new_booker(client), new_booker(client)
    booked = hold(client, first, slot_id, confirm=True).json()
    _wait(client, waiting, slot_id, hospital)
    client.post(f"/api/v1/booking/appointments/{booked['appointment_no']}/cancel", headers=first.h)
    sql("UPDATE booking.seat_return SET return_at = now() WHERE slot_id = :id", id=slot_id)
    [(empi_id,)] = sql("SELECT empi_id FROM booking.waitlist WHERE card_no = :c", c=waiting.card_no)
    with session_scope() as resident:  # the resident's transaction holds their own lock …
        resident.execute(__import__("sqlalchemy").text(
            "SELECT pg_advisory_xact_lock(hashtextextended('booking:' || :p, 0))"), {"p": empi_id})
        done = []
        upkeep = threading.Thread(target=lambda: done.append(run(service.return_places)))
        upkeep.start()
        upkeep.join(timeout=20)
        assert not upkeep.is_alive() and done == [1]  # … and the upkeep went on without them
    assert client.get("/api/v1/booking/me/waitlist", headers=waiting.h).json()[0]["state"] == "waiting"
    assert hold(client, waiting, other).status_code == 201


def test_a_terminal_checks_in_only_the_person_it_scanned(client, hospital):
    from smartcare.platform.errors import NotFound

    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=1, hour=9), capacity=2))
    sql("UPDATE booking.slot SET starts_at = now() + interval '30 minutes', ends_at = now() + interval '45 minutes' "
        "WHERE id = :id", id=slot_id)
    scanned, other = new_booker(client), new_booker(client)
    hold(client, scanned, slot_id, confirm=True)
    theirs = hold(client, other, slot_id, confirm=True).json()["appointment_no"]
    [(empi_id,)] = sql("SELECT empi_id FROM booking.appointment WHERE card_no = :c", c=scanned.card_no)
    with session_scope() as s, pytest.raises(NotFound):
        service.check_in(s, facility_code=hospital[0], appointment_no=theirs, empi_id=empi_id)
    assert sql("SELECT state FROM booking.appointment WHERE appointment_no = :n", n=theirs) == [("booked",)]


def test_a_released_slot_stays_released_when_sent_again_after_a_rule_change(client, hospital):
    admin = admin_headers(client)
    body = slot_body(hospital, start=at(days=3, hour=15))
    [slot_id] = publish(client, hospital, body)  # released (release time moved to the past)
    try:
        rules(client, admin, hospital[0], release_days=1)
        r = signed(client, hospital, "PUT", "/api/v1/booking/hospital/slots", {"slots": [body]})
        assert r.json()[0]["outcome"] == "unchanged"
        assert hold(client, new_booker(client), slot_id).status_code == 201
    finally:
        rules(client, admin, hospital[0], release_days=None)


def test_the_feed_never_skips_a_change_that_commits_late(client, hospital):
    """A confirmation whose transaction is still open when later changes commit: the feed holds the later
    ones back until it ends, then serves both — a cursor never passes a change not yet visible."""
    from sqlalchemy import text

    [slow_slot, fast_slot] = publish(client, hospital, slot_body(hospital, start=at(days=18)),
                                     slot_body(hospital, start=at(days=18, hour=10)))
    p, q = new_booker(client), new_booker(client)
    slow = hold(client, p, slow_slot).json()["appointment_no"]

    def feed(since: str) -> list[dict]:
        r = signed(client, hospital, "GET", "/api/v1/booking/hospital/appointments", params=f"since={since}&limit=2000")
        assert r.status_code == 200, r.text
        return r.json()

    start = (feed("0.0") or [{"cursor": "0.0"}])[-1]["cursor"]
    with session_scope() as late:  # the slow confirmation: changed first, committed last
        late.execute(text("UPDATE booking.appointment SET state = 'booked', booked_at = now(), held_until = NULL "
                          "WHERE appointment_no = :n"), {"n": slow})
        fast = hold(client, q, fast_slot, confirm=True).json()["appointment_no"]
        assert [a["appointment_no"] for a in feed(start)] == []  # the later one waits for the open transaction
    assert [a["appointment_no"] for a in feed(start)] == [slow, fast]


def test_every_refusal_of_an_attempt_says_what_was_wrong(client, hospital):
    """``booking.attempt`` checks in one statement; each refusal is its own answer, and none takes a place (a slot
    this process knows is full is refused before anything else: fullness is public)."""
    free, full, later, gone = publish(client, hospital, *(slot_body(hospital, start=at(days=8, hour=h)) for h in (8, 9, 10, 11)))
    sql("UPDATE booking.slot SET release_at = now() + interval '1 day' WHERE id = :id", id=later)
    sql("UPDATE booking.slot SET state = 'withdrawn' WHERE id = :id", id=gone)
    p, other = new_booker(client), new_booker(client)
    assert hold(client, other, full, confirm=True).status_code == 201

    def refused(slot_id: int, card_no: str | None = None) -> tuple[int, str, str]:
        r = hold(client, p, slot_id, card_no=card_no)
        return r.status_code, r.json()["error"], r.json()["message"]

    assert refused(free, card_no=other.card_no)[::2] == (403, "you do not hold this card")
    assert refused(2**62)[::2] == (404, f"no slot {2**62}")
    assert refused(full) == (409, "no_slot", "no place left in this slot")
    assert refused(later)[:2] == (409, "not_released") and "opens for booking at" in refused(later)[2]
    assert refused(gone) == (409, "no_slot", "this slot is no longer offered")
    sql("UPDATE healthcard.card SET state = 'frozen' WHERE card_no = :c", c=p.card_no)
    assert refused(free)[::2] == (403, f"card {p.card_no} is frozen")
    assert sql("SELECT count(*) FROM booking.appointment WHERE card_no = :c", c=p.card_no) == [(0,)]


def test_an_attempt_booked_at_once_answers_with_its_slot_and_tells_the_hospital(client, hospital):
    body = slot_body(hospital, start=at(days=8, hour=14), practitioner="DOC8", fee=1200)
    [slot_id] = publish(client, hospital, body)
    p = new_booker(client)
    r = hold(client, p, slot_id, confirm=True)
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["state"], out["slot_id"], out["card_no"], out["fee"], out["practitioner_name"], out["held_until"]) == \
        ("booked", slot_id, p.card_no, 1200, "王医生", None)
    assert out["appointment_no"].startswith("BK" + at(days=8).strftime("%y%m%d"))
    assert client.get(f"/api/v1/booking/me/appointments/{out['appointment_no']}", headers=p.h).json() == out
    [(payload,)] = sql("SELECT payload FROM platform.bus_message WHERE topic = 'booking.appointment.booked' "
                       "AND payload ->> 'appointment_no' = :no", no=out["appointment_no"])
    assert (payload["slot_source_id"], payload["state"], payload["fee"]) == (body["source_id"], "booked", 1200)
    assert datetime.fromisoformat(payload["starts_at"]) == datetime.fromisoformat(out["starts_at"])
    [notice] = client.get("/api/v1/booking/me/notifications", headers=p.h).json()
    assert notice["kind"] == "booked" and out["appointment_no"] in notice["text"]
    assert at(days=8, hour=14).strftime("%m月%d日 14:00") in notice["text"]  # China time, as every notice says it
