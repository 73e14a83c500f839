"""The warehouse's monitoring pages in headless Chromium: a hospital's live page counts new hub messages
as the warehouse pulls them, without reloading; the region page draws districts and hospitals."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from smartcare.platform.db import session_scope
from smartcare.synth.messages import adt
from smartcare.warehouse import service
from tests.e2e.conftest import login
from tests.exchange.conftest import msa, signed_post


@pytest.mark.browser
def test_hospital_page_updates_when_messages_arrive(browser, live_server, client, hospital, residents):
    with session_scope() as s:
        service.refresh_reference(s)
    service.tick(session_scope)
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, live_server.url)
    page.goto(f"{live_server.url}/admin/warehouse/hospitals/{hospital[0]}")
    page.wait_for_selector("#chart-live canvas")
    page.evaluate("window.__sameDocument = true")
    before = int(page.text_content("#stat-hour-messages").replace(",", "") or 0)

    sent = 0
    for n in range(6):
        message = adt(hospital[0], f"WP{uuid.uuid4().hex[:10]}", residents[300 + n])
        r = signed_post(client, hospital, "/api/v1/exchange/hl7v2", message.encode(), "text/plain")
        assert r.status_code == 200 and msa(r.text)[1] == "AA", r.text
        sent += 1
    stop = threading.Event()

    def worker():  # what the worker's warehouse round does every 2 s
        while not stop.wait(1.0):
            service.tick(session_scope)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        page.wait_for_function(
            f"parseInt(document.querySelector('#stat-hour-messages').textContent.replace(/,/g, '')) >= {before + sent}",
            timeout=20000)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert page.evaluate("window.__sameDocument") is True  # refreshed in place
    assert page.text_content("#stat-fresh") in ("刚刚", "1 分钟前")
    assert "门急诊人次" in page.text_content("#month-table")

    page.goto(f"{live_server.url}/admin/warehouse")
    page.wait_for_selector("#chart-districts canvas")
    page.wait_for_function("document.querySelectorAll('#hospital-table tbody tr').length > 0")
    page.click(f"#hospital-table a[href$='{hospital[0]}']")
    page.wait_for_selector("#chart-days canvas")
    shots = os.environ.get("SMARTCARE_SCREENSHOTS")
    if shots:
        page.screenshot(path=os.path.join(shots, "warehouse-hospital.png"), full_page=True)
    assert errors == []
    page.close()
