"""The memory of full slots (``booking.full``): a slot found full is answered "no slot" without the database
until a place of it is free again, which every process hears of at once from the database, whoever freed it."""

from __future__ import annotations

import time

from smartcare.booking.full import UNHEARD_SECONDS, FullSlots, full_slots
from tests.booking.booking_support import at, hold, new_booker, publish, slot_body, sql


def _until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _full_slot(client, hospital, hour: int) -> tuple[int, object]:
    """A slot of one place, booked; a second resident refused "no slot", which this process now remembers."""
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=9, hour=hour)))
    assert hold(client, new_booker(client), slot_id, confirm=True).status_code == 201
    late = new_booker(client)
    assert hold(client, late, slot_id).json()["error"] == "no_slot"
    assert _until(lambda: full_slots.listening)
    assert hold(client, late, slot_id).json()["error"] == "no_slot"  # found full again while listening: kept long
    assert full_slots.hospital_if_full(slot_id) == hospital[0]
    return slot_id, late


def test_a_place_freed_anywhere_is_bookable_at_once(client, hospital):
    slot_id, late = _full_slot(client, hospital, hour=8)
    # another process (here: plain SQL) raises the capacity; this process remembered the slot for a minute
    sql("UPDATE booking.slot SET capacity = 2 WHERE id = :id", id=slot_id)
    assert _until(lambda: full_slots.hospital_if_full(slot_id) is None), "the freed slot was not forgotten"
    assert hold(client, late, slot_id).status_code == 201


def test_a_lost_listener_reconnects_and_forgets_what_it_may_have_missed(client, hospital):
    slot_id, _ = _full_slot(client, hospital, hour=9)
    sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN booking_slot_freed'")
    assert _until(lambda: not full_slots.listening)
    assert _until(lambda: full_slots.listening), "the listener did not come back"
    assert full_slots.hospital_if_full(slot_id) is None


def test_not_listening_a_full_slot_is_remembered_briefly():
    slots = FullSlots()
    slots._listen = lambda: None  # never starts listening
    slots.mark(7, "H1", asked=time.monotonic())
    assert slots.hospital_if_full(7) == "H1"
    time.sleep(UNHEARD_SECONDS + 0.1)
    assert slots.hospital_if_full(7) is None


def test_a_slot_freed_while_an_attempt_asked_is_not_remembered():
    slots = FullSlots()
    slots._listen = lambda: None
    asked = time.monotonic()
    slots.forget(7)  # the notice arrives between the attempt's question and its answer
    slots.mark(7, "H1", asked=asked)
    assert slots.hospital_if_full(7) is None
    slots.mark(7, "H1", asked=time.monotonic())
    assert slots.hospital_if_full(7) == "H1"
