"""Thousands of booking attempts at once on a few slots, through the real HTTP server: exactly the
slots' capacity is booked, everyone else gets a clear answer, nobody exceeds their limit. And the
database alone (no application checks) never lets a slot overfill."""

from __future__ import annotations

import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy.exc import IntegrityError

from tests.booking.booking_support import admin_headers, at, new_booker, publish, rules, slot_body, sql

CAPACITIES = (1, 2, 3, 4, 5)
PEOPLE, ATTEMPTS_EACH, CLIENTS = 120, 20, 32


def test_release_burst_books_exactly_the_capacity(client, hospital, live_server):
    admin = admin_headers(client)
    rules(client, admin, hospital[0], per_day=2, per_department=1)
    try:
        slots = publish(client, hospital, *(slot_body(hospital, start=at(days=8, hour=9, minute=5 * i), capacity=c)
                                            for i, c in enumerate(CAPACITIES)))
        bookers = [new_booker(client) for _ in range(PEOPLE)]
        rng = random.Random(7)
        attempts = [(b, rng.choice(slots)) for b in bookers for _ in range(ATTEMPTS_EACH)]
        rng.shuffle(attempts)
        local = threading.local()

        def attempt(job):
            booker, slot_id = job
            if not hasattr(local, "http"):
                local.http = httpx.Client(base_url=live_server.url, timeout=60)
            r = local.http.post("/api/v1/booking/appointments", headers=booker.h,
                                json={"slot_id": slot_id, "card_no": booker.card_no, "confirm": True})
            return booker.card_no, slot_id, r.status_code, r.json()

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(attempt, attempts))
    finally:
        rules(client, admin, hospital[0], per_day=None, per_department=None)

    assert len(answers) == PEOPLE * ATTEMPTS_EACH
    statuses = Counter(status for _, _, status, _ in answers)
    assert set(statuses) <= {201, 409}, statuses
    booked = [(card, slot) for card, slot, status, body in answers if status == 201]
    assert len(booked) == sum(CAPACITIES)
    refusals = Counter(body["error"] for _, _, status, body in answers if status == 409)
    assert set(refusals) <= {"no_slot", "limit_reached", "conflict"}, refusals
    assert refusals["no_slot"] > 0
    # each slot holds exactly its capacity, as the database counts it too; nobody holds two in the department
    per_slot = Counter(slot for _, slot in booked)
    assert [per_slot[s] for s in slots] == list(CAPACITIES)
    rows = sql("SELECT s.id, s.taken, s.capacity, count(a.id) FROM booking.slot s LEFT JOIN booking.appointment a "
               "ON a.slot_id = s.id AND a.state IN ('held', 'booked', 'checked_in', 'noshow') "
               "WHERE s.id = ANY(:ids) GROUP BY s.id ORDER BY s.id", ids=slots)
    assert all(taken == capacity == n for _, taken, capacity, n in rows), rows
    per_person = Counter(card for card, _ in booked)
    assert max(per_person.values()) == 1


def test_the_database_alone_never_overfills_a_slot(client, hospital, database_url):
    """Sixteen connections insert appointments straight into the table, with no application check at
    all: the trigger and the check constraint still stop at the capacity."""
    from smartcare.platform.db import session_scope
    from sqlalchemy import text

    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=9), capacity=10))
    done = Counter()
    lock = threading.Lock()

    def insert(i: int) -> None:
        try:
            with session_scope() as s:
                s.execute(text(
                    "INSERT INTO booking.appointment (appointment_no, slot_id, empi_id, card_no, account, facility_code, "
                    "department_code, visit_date, state) SELECT :no, id, :p, 'C', 'a', facility_code, department_code, "
                    "visit_date, 'held' FROM booking.slot WHERE id = :id"), {"no": f"RAW{slot_id}-{i}", "p": f"P{i}",
                                                                               "id": slot_id})
            outcome = "in"
        except IntegrityError as exc:
            assert "slot_not_overbooked" in str(exc.orig)
            outcome = "refused"
        with lock:
            done[outcome] += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(insert, range(400)))
    assert done == {"in": 10, "refused": 390}
    assert sql("SELECT taken FROM booking.slot WHERE id = :id", id=slot_id) == [(10,)]


def test_bots_are_refused_then_put_in_the_slow_lane():
    import asyncio

    from smartcare.booking.throttle import Throttle
    from smartcare.platform.errors import RateLimited

    gate = Throttle(rate=1.0, burst=3, strikes=3, slow_seconds=60, slow_delay=0)

    async def burst(account: str, n: int) -> Counter:
        seen = Counter()
        for _ in range(n):
            try:
                await gate.admit(account)
                seen["admitted"] += 1
            except RateLimited:
                seen["refused"] += 1
        return seen

    assert asyncio.run(burst("person", 3)) == {"admitted": 3}
    assert not gate.is_slow("person")
    seen = asyncio.run(burst("bot", 10))
    assert seen["admitted"] == 3 and seen["refused"] == 7
    assert gate.is_slow("bot") and gate.slow_accounts() == ["bot"]
    assert not gate.is_slow("person")
