"""A real browser (Debian's Chromium, headless) logs into the admin console and reads the counts."""

from __future__ import annotations

import os

import pytest

@pytest.mark.browser
def test_admin_logs_in_and_reads_the_hospital_count(browser, live_server):
    base = live_server.url
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{base}/admin")
    assert "/login" in page.url
    page.fill("#username", "admin")
    page.fill("#password", "smartcare-admin")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/admin")
    assert page.text_content("#count-hospitals").strip() == "244"
    assert page.text_content("#count-districts").strip() == "38"
    assert page.text_content("#count-institutions").strip() == "1,141"
    # ECharts drew the chart (a canvas inside the container)
    page.wait_for_selector("#chart-hospitals canvas")
    # the registry browser loads its table with htmx and filters as one types
    page.click("text=机构注册")
    page.wait_for_selector("#facility-total")
    assert "1141" in page.text_content("#facility-total")
    page.select_option("select[name=district_code]", "500229")
    page.wait_for_function("document.querySelector('#facility-total').textContent.indexOf('1141') < 0")
    assert "城口县" in page.text_content("#facility-table")
    shots = os.environ.get("SMARTCARE_SCREENSHOTS")
    if shots:
        page.goto(f"{base}/admin")
        page.wait_for_selector("#chart-hospitals canvas")
        page.wait_for_timeout(800)  # let the bars finish their short animation
        page.screenshot(path=os.path.join(shots, "admin-console.png"), full_page=True)
    assert errors == []
    page.close()
