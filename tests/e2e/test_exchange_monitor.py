"""The exchange monitoring page shows the simulator's traffic live, without reloading, in headless Chromium."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from smartcare.exchange import simulator
from tests.e2e.conftest import login


@pytest.mark.browser
def test_monitoring_shows_simulated_traffic_live(browser, live_server):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, live_server.url)
    page.goto(f"{live_server.url}/admin/exchange")
    page.wait_for_selector("#chart-throughput canvas")
    page.evaluate("window.__sameDocument = true")
    before = int(page.text_content("#stat-messages").replace(",", "") or 0)

    hospitals, people = simulator.prepare(5, 200, seed=3)
    sim = simulator.Simulator(base_url=live_server.url, mllp_host="127.0.0.1", mllp_port=live_server.mllp_port,
                              hospitals=hospitals, residents=people, seed=3, error_share=0.2)
    thread = threading.Thread(target=lambda: asyncio.run(sim.run(rate=25, duration=5)))
    thread.start()
    thread.join(timeout=60)
    assert sim.tally.sent >= 100 and sim.tally.ok > 0

    page.wait_for_function(f"parseInt(document.querySelector('#stat-messages').textContent.replace(/,/g, '')) >= {before + sim.tally.ok}",
                           timeout=15000)
    assert page.evaluate("window.__sameDocument") is True  # refreshed in place, not reloaded
    assert int(page.text_content("#stat-errors").replace(",", "")) > 0  # the deliberately broken ones
    names = page.text_content("#facility-table")
    assert any(h.name in names for h in hospitals)
    shots = os.environ.get("SMARTCARE_SCREENSHOTS")
    if shots:
        page.wait_for_timeout(800)
        page.screenshot(path=os.path.join(shots, "exchange-monitor.png"), full_page=True)
    assert errors == []
    page.close()
