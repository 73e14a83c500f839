"""Booking pages: in headless Chromium a resident finds a published slot on H5, holds and confirms it,
sees it in 我的预约 and cancels it (the database agrees: cancelled, the place withheld); an administrator
reads the console's 预约监测 and lifts a blacklisting. Without a browser: refusals (a full slot, a
cancellation past the deadline) come back as messages on the page, not as errors."""

from __future__ import annotations

import pytest

from smartcare.platform.money import format_yuan
from tests.booking.booking_support import hold, new_booker, publish, slot_body, sql
from tests.e2e.conftest import login
from tests.healthcard.card_support import headers

HTMX = {"HX-Request": "true"}


def _swapped(page, selector: str) -> None:
    """Wait for what an htmx swap shows, then for it to settle: htmx binds the new content's triggers
    only then (a few ms later), and a click or change before that is lost."""
    page.wait_for_selector(selector)
    page.wait_for_function("() => !document.querySelector('.htmx-request, .htmx-settling')")


@pytest.mark.browser
def test_resident_books_and_cancels_on_h5(browser, client, live_server, hospital):
    booker = new_booker(client)
    body = slot_body(hospital, capacity=2, fee=1250)
    [slot_id] = publish(client, hospital, body)
    page = browser.new_page(viewport={"width": 420, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())
    login(page, live_server.url, booker.who["_user"], "resident-pass")
    assert page.url.endswith("/h5")
    page.click("#tile-booking")
    page.wait_for_load_state()  # htmx binds the page on DOMContentLoaded
    assert "*" in page.text_content("#card option:checked")  # the card's person, masked
    page.select_option("#facility", hospital[0])
    _swapped(page, f"#search-form[data-facility='{hospital[0]}']")
    page.fill("#day", body["starts_at"][:10])
    _swapped(page, f"#search-form[data-day='{body['starts_at'][:10]}']")
    slot = page.locator(f"#slots li[data-slot='{slot_id}']")
    assert slot.get_attribute("data-free") == "2"
    assert slot.locator(".fee").text_content() == format_yuan(1250) == "¥12.50"

    slot.locator("button.book").click()
    _swapped(page, "#held")
    no = page.get_attribute("#held", "data-appointment")
    left = page.locator("#held .countdown")
    assert ":" in left.text_content()
    first = left.text_content()
    page.wait_for_function("old => document.querySelector('#held .countdown').textContent !== old", arg=first)
    assert sql("SELECT state FROM booking.appointment WHERE appointment_no = :no", no=no) == [("held",)]
    assert page.get_attribute(f"#slots li[data-slot='{slot_id}']", "data-free") == "1"

    page.click("#held #confirm")
    _swapped(page, "#booking-notice")
    assert "预约成功" in page.text_content("#booking-notice") and page.locator("#held").count() == 0
    mine = page.locator(f"#appointments li[data-appointment='{no}']")
    assert mine.get_attribute("data-state") == "booked" and "已预约" in mine.text_content()
    assert "预约成功" in page.text_content("#notifications")

    mine.locator("button.cancel").click()  # the confirm dialog is accepted
    _swapped(page, f"#appointments li[data-appointment='{no}'][data-state=cancelled]")
    assert "已取消" in page.text_content("#booking-notice")
    assert sql("SELECT state, cancelled_by FROM booking.appointment WHERE appointment_no = :no", no=no) == \
        [("cancelled", "resident")]
    assert sql("SELECT taken, withheld FROM booking.slot WHERE id = :id", id=slot_id) == [(0, 1)]
    assert page.get_attribute(f"#slots li[data-slot='{slot_id}']", "data-free") == "1"  # withheld, not back yet
    assert not errors, errors
    page.close()


@pytest.mark.browser
def test_console_shows_the_pool_and_lifts_a_blacklisting(browser, client, live_server, hospital):
    booker, banned = new_booker(client), new_booker(client)
    [slot_id] = publish(client, hospital, slot_body(hospital, capacity=3))
    assert hold(client, booker, slot_id, confirm=True).status_code == 201
    [(empi_id, name_masked)] = sql("SELECT empi_id, name_masked FROM healthcard.card WHERE card_no = :c",
                                   c=banned.card_no)
    [(entry_id,)] = sql("INSERT INTO booking.blacklist (empi_id, reason, events, until) "
                        "VALUES (:e, 'noshow', 3, now() + interval '90 days') RETURNING id", e=empi_id)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())
    login(page, live_server.url)
    page.click("text=预约监测")
    page.wait_for_selector("#chart-supply canvas")
    page.wait_for_selector("#chart-load canvas")
    row = page.locator(f"#hospitals tr[data-facility='{hospital[0]}']")
    assert int(row.locator(".taken").text_content()) >= 1
    [(hospital_name,)] = sql("SELECT name FROM registry.facility WHERE code = :c", c=hospital[0])
    assert hospital_name in row.text_content()
    assert page.locator("#rules tr[data-rule=hold_minutes] td.num").text_content() == "5"
    assert page.locator("#rules tr[data-rule=release_time] td.num").text_content() == "08:00"
    assert page.locator("#notifications tr[data-kind=booked]").count() >= 1  # what the demo gateway 'sent'

    entry = page.locator(f"#blacklist-rows tr[data-entry='{entry_id}']")
    assert entry.locator(".name").text_content() == name_masked and "*" in name_masked
    assert empi_id not in page.content()
    entry.locator("input[name=reason]").fill("申诉属实：急诊住院未能到院")
    entry.locator("button[type=submit]").click()
    _swapped(page, "#blacklist-notice")
    assert page.locator(f"#blacklist-rows tr[data-entry='{entry_id}']").count() == 0
    assert sql("SELECT lifted_by, lifted_at IS NOT NULL FROM booking.blacklist WHERE id = :id", id=entry_id) == \
        [("admin", True)]
    assert sql("SELECT detail->>'reason' FROM platform.audit_log WHERE action = 'booking.blacklist.lift' "
               "AND target = :e", e=empi_id) == [("申诉属实：急诊住院未能到院",)]
    assert not errors, errors
    page.close()


def test_refusals_are_messages_on_the_page(client, hospital):
    first, second = new_booker(client), new_booker(client)
    [full] = publish(client, hospital, slot_body(hospital, capacity=1))
    assert hold(client, first, full).status_code == 201
    form = {"card_no": second.card_no, "facility": hospital[0]}

    assert client.post(f"/h5/booking/slots/{full}/hold", data=form, headers=second.h).status_code == 403  # not htmx
    r = client.post(f"/h5/booking/slots/{full}/hold", data=form, headers={**second.h, **HTMX})
    assert r.status_code == 200, r.text
    assert 'data-error="no_slot"' in r.text and "号源已满" in r.text and "no place left in this slot" in r.text
    assert f'data-slot="{full}" data-free="0"' in r.text and "候补" in r.text  # the full slot offers the waitlist
    r = client.post(f"/h5/booking/slots/{full}/waitlist", data=form, headers={**second.h, **HTMX})
    assert r.status_code == 200 and "已加入候补" in r.text and 'data-state="waiting"' in r.text

    # a booking within the hospital's cancellation deadline stays booked, and the page says why
    [soon] = publish(client, hospital, slot_body(hospital, capacity=1))
    r = hold(client, second, soon, confirm=True)
    assert r.status_code == 201, r.text
    no = r.json()["appointment_no"]
    sql("UPDATE booking.slot SET starts_at = now() + interval '30 minutes', ends_at = now() + interval '45 minutes' "
        "WHERE id = :id", id=soon)
    r = client.post(f"/h5/booking/appointments/{no}/cancel", data=form, headers={**second.h, **HTMX})
    assert r.status_code == 200, r.text
    assert 'data-error="conflict"' in r.text and "bookings can be cancelled up to" in r.text
    assert sql("SELECT state FROM booking.appointment WHERE appointment_no = :no", no=no) == [("booked",)]

    page = client.get("/h5/booking", params={"day": "tomorrow"}, headers=headers(second.who))
    assert page.status_code == 200 and 'data-error="invalid_input"' in page.text


@pytest.mark.browser
def test_the_terminal_checks_in_the_patient_it_scanned(browser, client, live_server, hospital):
    from tests.booking.booking_support import at
    from tests.healthcard.card_support import code

    patient = new_booker(client)
    [slot_id] = publish(client, hospital, slot_body(hospital, start=at(days=1, hour=9)))
    sql("UPDATE booking.slot SET starts_at = now() + interval '40 minutes', ends_at = now() + interval '55 minutes' "
        "WHERE id = :id", id=slot_id)
    booked = hold(client, patient, slot_id, confirm=True).json()

    page = browser.new_page()
    login(page, live_server.url)
    page.goto(f"{live_server.url}/admin/healthcard/terminal")
    page.select_option("#facility", hospital[0])
    page.fill("#code", code(client, patient.who, patient.card_no))
    page.click("#scan-form button[type=submit]")
    _swapped(page, f"#terminal-bookings tr[data-appointment='{booked['appointment_no']}']")
    page.click(f"#terminal-bookings tr[data-appointment='{booked['appointment_no']}'] button")
    _swapped(page, "#checkin-notice")
    assert booked["appointment_no"] in page.text_content("#checkin-notice")
    assert sql("SELECT state FROM booking.appointment WHERE appointment_no = :n", n=booked["appointment_no"]) == \
        [("checked_in",)]
    assert page.locator(f"#terminal-bookings tr[data-appointment='{booked['appointment_no']}']").count() == 0
