"""The electronic health card in headless Chromium: a resident applies on the H5 page (SMS code from
the demo gateway), sees a QR that a real decoder reads and that verifies with the published trust
list alone, and that is replaced by a new one when it expires; an administrator's terminal page
resolves an uploaded picture of a code to the patient."""

from __future__ import annotations

import io
import os
import time
import uuid
from datetime import date

import httpx
import pytest
import zxingcpp
from PIL import Image
from sqlalchemy import text

from smartcare.healthcard import code as qr, render, service
from smartcare.platform import auth
from smartcare.platform.db import session_scope
from smartcare.platform.settings import get_settings
from tests.e2e.conftest import login
from tests.healthcard.card_support import new_id_number, new_phone, person


@pytest.fixture
def short_codes():
    """Codes valid 4 s (the page refreshes after 3 s) for this test; the in-process server reads settings per call."""
    previous = os.environ.get("SMARTCARE_HEALTHCARD_CODE_SECONDS")
    os.environ["SMARTCARE_HEALTHCARD_CODE_SECONDS"] = "4"
    get_settings.cache_clear()
    yield 4
    if previous is None:
        os.environ.pop("SMARTCARE_HEALTHCARD_CODE_SECONDS", None)
    else:
        os.environ["SMARTCARE_HEALTHCARD_CODE_SECONDS"] = previous
    get_settings.cache_clear()


def _decode(png: bytes) -> str:
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    assert len(found) == 1 and found[0].format == zxingcpp.BarcodeFormat.QRCode, found
    return found[0].text


def _submit_with_sms_code(page) -> None:
    """Ask for the code, read it where the demo SMS gateway put it, type it, submit. The status may still
    say "ok" from an earlier code: the code read is the first one sent after the click."""
    with session_scope() as s:
        before = s.execute(text("SELECT coalesce(max(id), 0) FROM healthcard.sms_outbox")).scalar()
    page.click("#send-otp")
    page.wait_for_selector("#otp-status.ok")
    deadline, sms = time.monotonic() + 30, None
    while sms is None and time.monotonic() < deadline:
        with session_scope() as s:
            sms = s.execute(text("SELECT text FROM healthcard.sms_outbox WHERE id > :b ORDER BY id LIMIT 1"),
                            {"b": before}).scalar()
        if sms is None:
            time.sleep(0.1)
    assert sms is not None, "no SMS code was sent"
    page.fill("#otp", "".join(ch for ch in sms if ch.isdigit())[:6])
    page.click("#apply-form button[type=submit]")


@pytest.mark.browser
def test_resident_applies_and_shows_a_qr_that_scans_and_refreshes(browser, live_server, short_codes):
    username, me = f"h5{uuid.uuid4().hex[:8]}", person()
    with session_scope() as s:
        auth.create_user(s, username=username, password="resident-pass", display_name="居民", roles=["resident"])
    page = browser.new_page(viewport={"width": 420, "height": 900}, device_scale_factor=2)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, live_server.url, username, "resident-pass")
    assert page.url.endswith("/h5")
    page.click("#apply")
    page.fill("#name", me["name"])
    page.fill("#id_number", me["id_number"])
    page.fill("#phone", "13800000000")  # not the phone on the real-name records: refused on the form
    _submit_with_sms_code(page)
    page.wait_for_selector("#apply-error")
    assert "real-name records" in page.text_content("#apply-error")
    page.fill("#id_number", me["id_number"])  # not echoed back
    page.fill("#phone", me["phone"])
    _submit_with_sms_code(page)
    page.wait_for_selector("#qr svg")

    trust = qr.TrustList.from_json(httpx.get(f"{live_server.url}/.well-known/jwks.json").json())
    first = _decode(page.locator("#qr").screenshot())
    assert first == page.get_attribute("#qr-box", "data-code")
    assert qr.verify(first, trust).kind == qr.Kind.DYNAMIC  # the published list alone, no database
    shots = os.environ.get("SMARTCARE_SCREENSHOTS")
    if shots:
        page.screenshot(path=os.path.join(shots, "healthcard-h5.png"), full_page=True)

    page.wait_for_function("old => document.querySelector('#qr-box').dataset.code !== old", arg=first, timeout=15_000)
    second = _decode(page.locator("#qr").screenshot())
    assert second != first and second == page.get_attribute("#qr-box", "data-code")
    assert qr.verify(second, trust).card_token == qr.parse(first)[3].card_token  # same card, new code
    with pytest.raises(qr.CodeError) as expired:
        qr.verify(first, trust, now=qr.parse(first)[3].expires_at + 1)
    assert expired.value.code == "code_expired"

    page.click("text=绑定微信支付")
    page.wait_for_selector("#qr-box .tag")
    assert "wechat" in qr.parse(page.get_attribute("#qr-box", "data-code"))[3].payments
    assert not errors, errors


@pytest.mark.browser
def test_terminal_page_resolves_an_uploaded_picture_of_a_code(browser, live_server, tmp_path):
    with session_scope() as s:
        card = service.issue(s, holder=f"t{uuid.uuid4().hex[:8]}", relation="self", name="许志强",
                             id_number=new_id_number(date(1966, 8, 8)), phone=new_phone(), actor="test")
        service.bind_channel(s, card=card, channel="unionpay", actor="test")
        shown = service.dynamic_code(s, card=card)
        empi_id = card.empi_id
    picture = tmp_path / "code.png"
    picture.write_bytes(render.png(shown.text))
    page = browser.new_page()
    login(page, live_server.url)
    page.goto(f"{live_server.url}/admin/healthcard/terminal")
    page.set_input_files("#image", str(picture))
    page.click("#scan-form button[type=submit]")
    page.wait_for_selector("#scan-ok")
    assert page.text_content("#scan-empi") == empi_id
    assert "云闪付" in page.text_content("#scan-payments")
    page.set_input_files("#image", [])
    page.fill("#code", shown.text)  # the same code again: single use
    page.click("#scan-form button[type=submit]")
    page.wait_for_selector("#scan-error")
    assert page.get_attribute("#scan-error", "data-error") == "code_replayed"
    page.goto(f"{live_server.url}/admin/healthcard")
    assert int(page.text_content("#stat-uses")) >= 1
    page.goto(f"{live_server.url}/admin/healthcard/sms")
    assert page.locator("#sms tbody tr").count() >= 1
