"""An administrator works the EMPI review queue in headless Chromium: opens an item, reads the waterfall,
links the pair with one click, and the next open item takes its place without a page load."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import text

from smartcare.empi import service
from smartcare.empi.models import Review
from smartcare.platform.db import session_scope
from tests.e2e.conftest import login

TERMS = [
    {"comparison": "prior", "level": "two random records match", "weight": -14.3, "tf_adjustment": 0.0},
    {"comparison": "name", "level": "exact", "weight": 9.1, "tf_adjustment": -1.2},
    {"comparison": "birth_date", "level": "exact", "weight": 8.6, "tf_adjustment": 0.0},
    {"comparison": "phone", "level": "different", "weight": -2.1, "tf_adjustment": 0.0},
]


def _pair(weight_shift: float) -> int:
    """Two cards on persons of their own and their review item, committed (the server reads them)."""
    tag = uuid.uuid4().hex[:6]
    with session_scope() as s:
        ids = []
        for n, phone in enumerate(("13900002222", "13700003333")):
            src = service.register_source(s, facility_code=f"E{tag}{n}", card_no=f"C{n}", record={
                "name": "林小雨", "sex": "2", "birth_date": "1988-02-29", "phone": phone})
            service.link(s, source_id=src.id, method="new", actor="test")
            ids.append(src.id)
        terms = [TERMS[0] | {"weight": TERMS[0]["weight"] + weight_shift}, *TERMS[1:]]
        r = Review(source_id=ids[0], other_source_id=ids[1], weight=sum(t["weight"] for t in terms), terms=terms,
                   origin="realtime")
        s.add(r)
        s.flush()
        return r.id


@pytest.mark.browser
def test_admin_links_a_pair_from_the_review_queue(browser, live_server):
    first, second = _pair(4.0), _pair(3.0)
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, live_server.url)
    page.click("text=主索引评审")
    page.wait_for_selector("#review-queue")
    page.click(f"#review-queue a[href='/admin/empi/review/{first}']")
    page.wait_for_selector("#waterfall")
    assert page.get_attribute("#review-item", "data-review-id") == str(first)
    labels = page.text_content("#waterfall")
    assert "先验" in labels and "出生日期" in labels and "+8.60" in labels and "tf -1.20" in labels
    assert page.locator("#waterfall .wf-bar.down").count() == 2  # the prior and the phone pull the score down
    assert "林小雨" in page.text_content("#pair")  # an administrator decides, so sees the cards in full
    page.evaluate("window.__sameDocument = true")
    shots = os.environ.get("SMARTCARE_SCREENSHOTS")
    if shots:
        page.screenshot(path=os.path.join(shots, "empi-review.png"), full_page=True)

    page.click("#decide-link")
    page.wait_for_selector(f"text=评审 #{first} 已关联为同一人")
    shown = page.get_attribute("#review-item", "data-review-id")
    assert shown and shown != str(first)  # the next open item (the second pair, unless stronger ones wait)
    assert page.evaluate("window.__sameDocument") is True and page.url.endswith(f"/admin/empi/review/{shown}")
    with session_scope() as s:
        assert s.get(Review, first).state == "linked" and s.get(Review, first).decided_by == "admin"
        assert s.execute(text("SELECT count(DISTINCT person_id) FROM empi.link l JOIN empi.review r "
                              "ON l.source_id IN (r.source_id, r.other_source_id) WHERE r.id = :r"), {"r": first}).scalar() == 1
        assert s.get(Review, second).state == "open"

    page.goto(f"{live_server.url}/admin/empi/review?view=decided")
    assert page.locator(f"#review-queue tr[data-review-id='{first}'] .state").text_content() == "linked"
    assert errors == []
    page.close()
