"""find → hold → book → cancel through the HTTP API, against the real database."""

from __future__ import annotations

from tests.booking.booking_support import hold, new_booker, publish, slot_body, sql


def test_hold_confirm_cancel(client, hospital):
    booker = new_booker(client)
    [slot_id] = publish(client, hospital, slot_body(hospital, capacity=2))
    found = client.get("/api/v1/booking/slots", params={"facility": hospital[0], "available": True}).json()
    assert slot_id in [s["id"] for s in found]
    r = hold(client, booker, slot_id)
    assert r.status_code == 201, r.text
    held = r.json()
    assert held["state"] == "held" and held["held_until"]
    assert sql("SELECT taken, withheld FROM booking.slot WHERE id = :id", id=slot_id) == [(1, 0)]
    r = client.post(f"/api/v1/booking/appointments/{held['appointment_no']}/confirm", headers=booker.h)
    assert r.status_code == 200 and r.json()["state"] == "booked", r.text
    r = client.post(f"/api/v1/booking/appointments/{held['appointment_no']}/cancel", headers=booker.h)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    # the place is withheld, and comes back at a random time within the rules' range
    assert sql("SELECT taken, withheld FROM booking.slot WHERE id = :id", id=slot_id) == [(0, 1)]
    [(delay,)] = sql("SELECT extract(epoch FROM return_at - now()) FROM booking.seat_return WHERE slot_id = :id", id=slot_id)
    assert 0 < delay <= 900
