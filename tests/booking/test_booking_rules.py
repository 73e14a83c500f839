"""The fairness rules, each shown through the API with time moved on in the database: per-person
limits, the blacklist and its expiry, the cancellation deadline, places returned at random times,
the waitlist offer, holds that expire, reminders, check-in by QR, no-shows, a hospital's withdrawal."""

from __future__ import annotations

import pytest

from smartcare.booking import service
from smartcare.platform.db import session_scope
from tests.booking.booking_support import admin_headers, at, hold, new_booker, publish, rules, slot_body, sql
from tests.healthcard.card_support import code, signed

CLEAR = {name: None for name in ("per_day", "per_department", "per_doctor", "cancel_deadline_minutes", "noshow_limit",
                                 "cancel_limit", "return_min_seconds", "return_max_seconds", "blacklist_days")}


@pytest.fixture
def admin(client, hospital):
    headers = admin_headers(client)
    yield headers
    rules(client, headers, hospital[0], **CLEAR)  # back to the region's default


def run(task):
    with session_scope() as s:
        return task(s)


def departments(hospital, n: int) -> list[str]:
    rows = sql("SELECT code FROM registry.department WHERE facility_code = :f ORDER BY code LIMIT :n", f=hospital[0], n=n)
    assert len(rows) == n
    return [r[0] for r in rows]


def test_per_person_limits(client, hospital, admin):
    d1, d2, d3 = departments(hospital, 3)
    rules(client, admin, hospital[0], per_day=2, per_department=1, per_doctor=1)
    a, b, c, d, other_day, doc1, doc2 = publish(
        client, hospital, slot_body(hospital, dept=d1, capacity=2), slot_body(hospital, dept=d1), slot_body(hospital, dept=d2),
        slot_body(hospital, dept=d3), slot_body(hospital, dept=d1, start=at(days=2)),
        slot_body(hospital, dept=d1, start=at(days=3), practitioner="DOC1"),
        slot_body(hospital, dept=d1, start=at(days=3, hour=10), practitioner="DOC1"))
    p = new_booker(client)
    assert hold(client, p, a).status_code == 201
    r = hold(client, p, b)
    assert r.status_code == 409 and r.json()["error"] == "limit_reached" and "department" in r.json()["message"]
    assert hold(client, p, c).status_code == 201
    r = hold(client, p, d)
    assert r.status_code == 409 and r.json()["error"] == "limit_reached" and "per visit day" in r.json()["message"]
    assert hold(client, p, other_day).status_code == 201  # another day, its own limits
    r = hold(client, p, a)
    assert r.status_code == 409 and "already has a place" in r.json()["message"]
    # one doctor per day (the department limit raised so that the doctor's is the one that bites)
    rules(client, admin, hospital[0], per_department=5)
    assert hold(client, p, doc1).status_code == 201
    r = hold(client, p, doc2)
    assert r.status_code == 409 and "one doctor" in r.json()["message"]
    # a released hold no longer counts
    mine = {x["slot_id"]: x["appointment_no"] for x in client.get("/api/v1/booking/me/appointments", headers=p.h).json()}
    assert client.post(f"/api/v1/booking/appointments/{mine[a]}/cancel", headers=p.h).json()["state"] == "cancelled"
    assert hold(client, p, d).status_code == 201


def _noshow(client, hospital, booker, days: int) -> None:
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=days)))
    assert hold(client, booker, slot_id, confirm=True).json()["state"] == "booked"
    sql("UPDATE booking.slot SET starts_at = now() - interval '3 hours', ends_at = now() - interval '170 minutes' "
        "WHERE id = :id", id=slot_id)


def test_blacklist_after_noshows_and_its_expiry(client, hospital, admin):
    rules(client, admin, hospital[0], noshow_limit=2, blacklist_days=30)
    p = new_booker(client)
    _noshow(client, hospital, p, days=1)
    assert run(service.mark_noshows) >= 1
    [(state,)] = sql("SELECT state FROM booking.appointment WHERE card_no = :c", c=p.card_no)
    assert state == "noshow"
    [fresh] = publish(client, hospital, slot_body(hospital, start=at(days=4), capacity=2))
    assert hold(client, p, fresh).status_code == 201  # one no-show: still allowed
    sql("UPDATE booking.appointment SET state = 'cancelled' WHERE card_no = :c AND state = 'held'", c=p.card_no)
    _noshow(client, hospital, p, days=2)
    run(service.mark_noshows)
    r = hold(client, p, fresh)
    assert r.status_code == 403 and r.json()["error"] == "blacklisted", r.text
    [(events, days)] = sql("SELECT events, extract(day FROM until - since) FROM booking.blacklist b "
                           "WHERE empi_id = (SELECT empi_id FROM booking.appointment WHERE card_no = :c LIMIT 1)",
                           c=p.card_no)
    assert events == 2 and days == 30
    # the residents are told why, and the admin sees them
    kinds = [n["kind"] for n in client.get("/api/v1/booking/me/notifications", headers=p.h).json()]
    assert kinds.count("noshow") == 2
    # expiry: the blacklisting ends by itself, and the old no-shows do not bring it straight back
    sql("UPDATE booking.blacklist SET since = since - interval '31 days', until = now() - interval '1 second' "
        "WHERE empi_id = (SELECT empi_id FROM booking.appointment WHERE card_no = :c LIMIT 1)", c=p.card_no)
    assert hold(client, p, fresh).status_code == 201


def test_cancellations_count_towards_the_blacklist_and_admin_lifts_it(client, hospital, admin):
    rules(client, admin, hospital[0], cancel_limit=2)
    p = new_booker(client)
    slots = publish(client, hospital, *(slot_body(hospital, start=at(days=d)) for d in (1, 2, 3)))
    for slot_id in slots[:2]:
        booked = hold(client, p, slot_id, confirm=True).json()
        r = client.post(f"/api/v1/booking/appointments/{booked['appointment_no']}/cancel", headers=p.h)
        assert r.json()["state"] == "cancelled"
    r = hold(client, p, slots[2])
    assert r.status_code == 403 and r.json()["error"] == "blacklisted"
    entry = next(e for e in client.get("/api/v1/booking/blacklist", headers=admin).json() if e["reason"] == "cancel"
                 and e["events"] == 2)
    r = client.post(f"/api/v1/booking/blacklist/{entry['id']}/lift", json={"reason": "申诉已核实"}, headers=admin)
    assert r.status_code == 200 and r.json()["lifted_at"], r.text
    assert hold(client, p, slots[2]).status_code == 201


def test_cancellation_deadline(client, hospital, admin):
    rules(client, admin, hospital[0], cancel_deadline_minutes=120)
    p = new_booker(client)
    soon, later = publish(client, hospital, slot_body(hospital, start=at(days=1, hour=9)),
                          slot_body(hospital, start=at(days=2)))
    sql("UPDATE booking.slot SET starts_at = now() + interval '60 minutes', ends_at = now() + interval '75 minutes' "
        "WHERE id = :id", id=soon)
    booked = hold(client, p, soon, confirm=True).json()
    r = client.post(f"/api/v1/booking/appointments/{booked['appointment_no']}/cancel", headers=p.h)
    assert r.status_code == 409 and "120 minutes" in r.json()["message"]
    booked = hold(client, p, later, confirm=True).json()
    r = client.post(f"/api/v1/booking/appointments/{booked['appointment_no']}/cancel", headers=p.h)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"


def test_freed_places_return_at_random_times(client, hospital, admin):
    rules(client, admin, hospital[0], return_min_seconds=100, return_max_seconds=400)
    slots = publish(client, hospital, *(slot_body(hospital, start=at(days=1, hour=8, minute=m)) for m in range(0, 60, 5)))
    for slot_id in slots:
        p = new_booker(client)
        booked = hold(client, p, slot_id, confirm=True).json()
        client.post(f"/api/v1/booking/appointments/{booked['appointment_no']}/cancel", headers=p.h)
    delays = [r[0] for r in sql("SELECT extract(epoch FROM return_at - now()) FROM booking.seat_return "
                                "WHERE slot_id = ANY(:ids)", ids=slots)]
    assert len(delays) == len(slots) and all(90 <= d <= 400 for d in delays)
    assert len({round(d) for d in delays}) > 3  # not one fixed delay
    # before its time the place is not in the pool; after it, it is
    q = new_booker(client)
    r = hold(client, q, slots[0])
    assert r.status_code == 409 and r.json()["error"] == "no_slot"
    sql("UPDATE booking.seat_return SET return_at = now() WHERE slot_id = :id", id=slots[0])
    assert run(service.return_places) >= 1
    assert sql("SELECT taken, withheld FROM booking.slot WHERE id = :id", id=slots[0]) == [(0, 0)]
    assert hold(client, q, slots[0]).status_code == 201


def test_waitlist_offer(client, hospital):
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=5, hour=14)))
    dept = sql("SELECT department_code FROM booking.slot WHERE id = :id", id=slot_id)[0][0]
    first, waiting, late, outsider = (new_booker(client) for _ in range(4))
    booked = hold(client, first, slot_id, confirm=True).json()
    assert hold(client, outsider, slot_id).json()["error"] == "no_slot"
    for who in (waiting, late):
        r = client.post("/api/v1/booking/waitlist", headers=who.h, json={
            "card_no": who.card_no, "facility_code": hospital[0], "department_code": dept,
            "visit_date": at(days=5).date().isoformat()})
        assert r.status_code == 201, r.text
    client.post(f"/api/v1/booking/appointments/{booked['appointment_no']}/cancel", headers=first.h)
    sql("UPDATE booking.seat_return SET return_at = now() WHERE slot_id = :id", id=slot_id)
    run(service.return_places)
    # the first person waiting has the place held for them and is told; nobody else can take it
    offer = client.get("/api/v1/booking/me/appointments", headers=waiting.h).json()[0]
    assert offer["state"] == "held" and offer["slot_id"] == slot_id
    assert [n["kind"] for n in client.get("/api/v1/booking/me/notifications", headers=waiting.h).json()] == ["offer"]
    assert hold(client, outsider, slot_id).json()["error"] == "no_slot"
    assert client.get("/api/v1/booking/me/waitlist", headers=waiting.h).json()[0]["state"] == "offered"
    # the offer lapses: the place goes to the next one waiting
    sql("UPDATE booking.appointment SET held_until = now() - interval '1 second' WHERE appointment_no = :n",
        n=offer["appointment_no"])
    run(service.expire_holds)
    assert client.get("/api/v1/booking/me/waitlist", headers=waiting.h).json()[0]["state"] == "expired"
    sql("UPDATE booking.seat_return SET return_at = now() WHERE slot_id = :id AND done_at IS NULL", id=slot_id)
    run(service.return_places)
    offer = client.get("/api/v1/booking/me/appointments", headers=late.h).json()[0]
    r = client.post(f"/api/v1/booking/appointments/{offer['appointment_no']}/confirm", headers=late.h)
    assert r.status_code == 200 and r.json()["state"] == "booked"
    assert client.get("/api/v1/booking/me/waitlist", headers=late.h).json()[0]["state"] == "booked"


def test_holds_expire_and_reminders_go_out_once(client, hospital):
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=1, hour=9)))
    p, q = new_booker(client), new_booker(client)
    held = hold(client, p, slot_id).json()
    sql("UPDATE booking.appointment SET held_until = now() - interval '1 second' WHERE appointment_no = :n",
        n=held["appointment_no"])
    assert run(service.expire_holds) >= 1
    r = client.post(f"/api/v1/booking/appointments/{held['appointment_no']}/confirm", headers=p.h)
    assert r.status_code == 409 and "expired" in r.json()["message"]
    sql("UPDATE booking.seat_return SET return_at = now() WHERE slot_id = :id", id=slot_id)
    run(service.return_places)
    booked = hold(client, q, slot_id, confirm=True).json()
    assert booked["state"] == "booked"
    sql("UPDATE booking.slot SET starts_at = now() + interval '3 hours', ends_at = now() + interval '195 minutes' "
        "WHERE id = :id", id=slot_id)
    run(service.send_reminders)
    run(service.send_reminders)
    kinds = [n["kind"] for n in client.get("/api/v1/booking/me/notifications", headers=q.h).json()]
    assert sorted(kinds) == ["booked", "reminder"]


def test_check_in_by_scanning_the_card(client, hospital):
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=1, hour=9)))
    sql("UPDATE booking.slot SET starts_at = now() + interval '30 minutes', ends_at = now() + interval '45 minutes' "
        "WHERE id = :id", id=slot_id)
    p = new_booker(client)
    booked = hold(client, p, slot_id, confirm=True).json()
    listed = signed(client, hospital, "GET", "/api/v1/booking/hospital/appointments", params="limit=2000")
    assert booked["appointment_no"] in [a["appointment_no"] for a in listed.json()]
    r = signed(client, hospital, "POST", "/api/v1/booking/hospital/checkin", {"code": code(client, p.who, p.card_no)})
    assert r.status_code == 200, r.text
    assert r.json()["appointment_no"] == booked["appointment_no"] and r.json()["state"] == "checked_in"
    r = signed(client, hospital, "POST", "/api/v1/booking/hospital/checkin", {"code": code(client, p.who, p.card_no)})
    assert r.status_code == 404  # nothing left to check in
    [(topic,)] = sql("SELECT topic FROM platform.bus_message WHERE topic = 'booking.appointment.checked_in' "
                     "AND payload->>'appointment_no' = :n", n=booked["appointment_no"])
    assert topic == "booking.appointment.checked_in"


def test_hospital_withdraws_a_slot(client, hospital):
    body = slot_body(hospital, start=at(days=3), capacity=2)
    [slot_id] = publish(client, hospital, body)
    p = new_booker(client)
    booked = hold(client, p, slot_id, confirm=True).json()
    r = signed(client, hospital, "POST", f"/api/v1/booking/hospital/slots/{body['source_id']}/withdraw", {"reason": "停诊"})
    assert r.status_code == 200 and r.json()["state"] == "withdrawn"
    mine = client.get(f"/api/v1/booking/me/appointments/{booked['appointment_no']}", headers=p.h).json()
    assert mine["state"] == "cancelled" and mine["cancelled_by"] == "hospital"
    assert "withdrawn" in [n["kind"] for n in client.get("/api/v1/booking/me/notifications", headers=p.h).json()]
    assert hold(client, new_booker(client), slot_id).json()["error"] == "no_slot"


def test_slot_publication_errors_name_the_field_and_keep_the_rest(client, hospital):
    good = slot_body(hospital, start=at(days=6), capacity=1)
    r = signed(client, hospital, "PUT", "/api/v1/booking/hospital/slots",
               {"slots": [{**slot_body(hospital), "ends_at": at(days=1, hour=10).isoformat()}]})
    assert r.status_code == 422 and "30 minutes" in r.text
    [slot_id] = publish(client, hospital, good)
    hold(client, new_booker(client), slot_id)
    other = slot_body(hospital, start=at(days=6, hour=11))
    r = signed(client, hospital, "PUT", "/api/v1/booking/hospital/slots", {"slots": [{**good, "capacity": 0}, other]})
    first, second = r.json()
    assert first["outcome"] == "error" and "capacity 0 is below the 1 places" in first["error"]
    assert second["outcome"] == "created"
    r = signed(client, hospital, "PUT", "/api/v1/booking/hospital/slots", {"slots": [other]})
    assert r.json()[0]["outcome"] == "unchanged"


def test_the_database_refuses_overbooking_and_going_back(hospital, client):
    """Even hand-written SQL cannot put more appointments on a slot than it has places."""
    from sqlalchemy.exc import IntegrityError

    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=7), capacity=1))
    insert = ("INSERT INTO booking.appointment (appointment_no, slot_id, empi_id, card_no, account, facility_code, "
              "department_code, visit_date, state) SELECT :no, id, :p, 'C', 'acct', facility_code, department_code, "
              "visit_date, 'booked' FROM booking.slot WHERE id = :id")
    sql(insert, no="HAND1", p="P1", id=slot_id)
    with pytest.raises(IntegrityError, match="slot_not_overbooked"):
        sql(insert, no="HAND2", p="P2", id=slot_id)
    sql("UPDATE booking.appointment SET state = 'cancelled' WHERE appointment_no = 'HAND1'")
    with pytest.raises(IntegrityError, match="cannot go from cancelled to booked"):
        sql("UPDATE booking.appointment SET state = 'booked' WHERE appointment_no = 'HAND1'")
