"""The health card as its users meet it over HTTP: a resident registers and shows codes, a hospital
terminal scans them and looks patients up by old visit cards, administrators rotate keys."""

from __future__ import annotations

import logging
import time
import uuid

import segno
from sqlalchemy import text

from smartcare.healthcard import code as qr
from smartcare.platform.db import session_scope
from tests.exchange.conftest import admin_token
from tests.healthcard.card_support import child, code, headers, issue, new_phone, person, resident, scan, signed


def _register_visit_card(client, hospital, card_no: str, **person) -> dict:
    r = signed(client, hospital, "POST", "/api/v1/empi/sources", {"card_no": card_no, **person})
    assert r.status_code == 201, r.text
    return r.json()


def test_card_is_the_same_person_as_the_old_visit_card_and_a_scan_finds_it(client, hospital):
    me = person()
    number, name = me["id_number"], me["name"]
    old_card = f"V{uuid.uuid4().hex[:8]}"
    registered = _register_visit_card(client, hospital, old_card, name=name, id_number=number)
    who = resident(client)
    made = issue(client, who, **me)
    assert made.status_code == 201, made.text
    card = made.json()
    masked = name[0] + "*" * (len(name) - 1)
    assert card["empi_id"] == registered["empi_id"] and card["name_masked"] == masked and card["state"] == "active"

    found = signed(client, hospital, "GET", "/api/v1/healthcard/lookup", params=f"card_no={old_card}")
    assert found.status_code == 200, found.text
    assert found.json()["empi_id"] == registered["empi_id"] and found.json()["card_no"] == card["card_no"]

    scanned = scan(client, hospital, code(client, who, card["card_no"]), step="registration", channel="kiosk")
    assert scanned.status_code == 200, scanned.text
    got = scanned.json()
    assert got["empi_id"] == registered["empi_id"] and got["visit_cards"] == [old_card]
    assert got["name_masked"] == masked and got["kind"] == "dynamic" and got["payments"] == {}
    assert number not in scanned.text and name not in scanned.text
    missing = signed(client, hospital, "GET", "/api/v1/healthcard/lookup", params="card_no=nope")
    assert missing.status_code == 404 and missing.json()["field"] == "card_no"


def test_a_scan_after_a_merge_names_the_surviving_person_and_their_visit_cards(client, hospital):
    from smartcare.empi import service as empi

    who = resident(client)
    card = issue(client, who, **person()).json()  # a person of its own in the index
    other = person()
    old_card = f"V{uuid.uuid4().hex[:8]}"
    survivor = _register_visit_card(client, hospital, old_card, name=other["name"], id_number=other["id_number"])
    assert survivor["empi_id"] != card["empi_id"]
    with session_scope() as s:  # a data steward finds them one human being
        ids = dict(s.execute(text("SELECT empi_id, id FROM empi.person WHERE empi_id IN (:a, :b)"),
                             {"a": card["empi_id"], "b": survivor["empi_id"]}).all())
        empi.merge(s, survivor_id=ids[survivor["empi_id"]], merged_id=ids[card["empi_id"]], actor="steward")
    got = scan(client, hospital, code(client, who, card["card_no"]))
    assert got.status_code == 200, got.text
    assert got.json()["empi_id"] == survivor["empi_id"] and got.json()["visit_cards"] == [old_card]


def test_each_bad_code_gets_its_own_error(client, hospital):
    who = resident(client)
    card = issue(client, who, **person()).json()
    good = code(client, who, card["card_no"])

    def refused(text_: str) -> str:
        r = scan(client, hospital, text_)
        assert r.status_code in (400, 422), r.text
        return r.json()["error"]

    tampered = good[:40] + ("A" if good[40] != "A" else "B") + good[41:]
    assert refused(tampered) in ("code_forged", "code_malformed")
    assert refused("EHC1:" + good[5:-3]) == "code_malformed"
    assert scan(client, hospital, good).status_code == 200
    assert refused(good) == "code_replayed"

    from smartcare.healthcard import service
    from smartcare.platform.settings import get_settings

    with session_scope() as s:
        c = service.get_card(s, card["card_no"])
        old = service.dynamic_code(s, card=c, now=time.time() - get_settings().healthcard_code_seconds - 5).text
    assert refused(old) == "code_expired"

    fresh = code(client, who, card["card_no"])
    admin = admin_token(client)
    assert client.post(f"/api/v1/healthcard/cards/{card['card_no']}/code", headers=admin).status_code == 403
    assert client.post(f"/api/v1/healthcard/cards/{card['card_no']}/revoke", json={"reason": "test"},
                       headers=headers(who)).status_code == 403  # residents do not revoke
    r = client.post(f"/api/v1/healthcard/cards/{card['card_no']}/revoke", json={"reason": "身份冒用"}, headers=admin)
    assert r.status_code == 200 and r.json()["state"] == "revoked"
    assert refused(fresh) == "card_revoked"


def test_frozen_lost_and_reissued_cards(client, hospital):
    who = resident(client)
    card = issue(client, who, **person()).json()
    no = card["card_no"]
    before = code(client, who, no)
    assert client.post(f"/api/v1/healthcard/cards/{no}/freeze", json={}, headers=headers(who)).json()["state"] == "frozen"
    assert scan(client, hospital, before).json()["error"] == "card_frozen"
    assert client.post(f"/api/v1/healthcard/cards/{no}/code", headers=headers(who)).status_code == 409
    assert client.post(f"/api/v1/healthcard/cards/{no}/unfreeze", json={}, headers=headers(who)).json()["state"] == "active"
    pending = code(client, who, no)
    assert client.post(f"/api/v1/healthcard/cards/{no}/report_lost", json={"reason": "手机丢失"},
                       headers=headers(who)).json()["state"] == "lost"
    assert scan(client, hospital, pending).json()["error"] == "card_lost"
    bad = client.post(f"/api/v1/healthcard/cards/{no}/unfreeze", json={}, headers=headers(who))
    assert bad.status_code == 409 and "lost" in bad.json()["message"]
    new = client.post(f"/api/v1/healthcard/cards/{no}/reissue", json={}, headers=headers(who)).json()
    assert new["card_no"] != no and new["empi_id"] == card["empi_id"] and new["state"] == "active"
    assert scan(client, hospital, pending).json()["error"] == "card_reissued"
    assert scan(client, hospital, code(client, who, new["card_no"])).json()["empi_id"] == card["empi_id"]
    mine = client.get("/api/v1/healthcard/cards", headers=headers(who)).json()
    assert [c["card_no"] for c in mine] == [new["card_no"]]
    with session_scope() as s:
        trail = s.execute(text("SELECT action FROM healthcard.card_event e JOIN healthcard.card c ON c.id = e.card_id "
                               "WHERE c.card_no = :n ORDER BY e.id"), {"n": no}).scalars().all()
        audited = s.execute(text("SELECT action FROM platform.audit_log WHERE target = :t ORDER BY id"),
                            {"t": f"card:{no}"}).scalars().all()
    assert trail == ["issue", "freeze", "unfreeze", "report_lost", "reissue"]
    assert audited == [f"healthcard.{a}" for a in trail]


def test_one_card_per_person_guardians_and_one_time_codes(client, seeded):
    me, kid = person(), child()
    first, second = resident(client), resident(client)
    assert issue(client, first, **me).status_code == 201
    again = issue(client, second, **me)
    assert again.status_code == 409 and again.json()["field"] == "id_number"
    assert issue(client, first, **person()).status_code == 409  # one own card per account

    for_kid = issue(client, first, **kid, relation="guardian")
    assert for_kid.status_code == 201, for_kid.text
    grown = person()
    adult = issue(client, first, **grown, relation="guardian")
    assert adult.status_code == 422 and adult.json()["field"] == "id_number"
    held = client.get("/api/v1/healthcard/cards", headers=headers(first)).json()
    assert [c["relation"] for c in held] == ["self", "guardian"]
    # the other account cannot show the child's code
    assert client.post(f"/api/v1/healthcard/cards/{for_kid.json()['card_no']}/code", headers=headers(second)).status_code == 403

    phone = new_phone()
    assert client.post("/api/v1/healthcard/otp", json={"phone": phone}, headers=headers(second)).status_code == 202
    assert client.post("/api/v1/healthcard/otp", json={"phone": phone}, headers=headers(second)).status_code == 409
    wrong = client.post("/api/v1/healthcard/cards", headers=headers(second), json={
        "name": "吴磊", "id_number": person()["id_number"], "phone": phone, "otp": "000000"})
    assert wrong.status_code == 422 and wrong.json()["field"] == "otp"
    bad_id = issue(client, second, name="吴磊", id_number="500103199909091234")
    assert bad_id.status_code == 422 and bad_id.json()["field"] == "id_number" and "500103199909091234" not in bad_id.text
    assert client.post("/api/v1/healthcard/otp", json={"phone": "12345"}, headers=headers(second)).status_code == 422


def test_payment_channels_ride_in_the_code_and_are_redeemed_once(client, hospital):
    who = resident(client)
    card = issue(client, who, **person()).json()
    for channel in ("wechat", "alipay", "unionpay", "ecny"):
        r = client.post(f"/api/v1/healthcard/cards/{card['card_no']}/bindings", json={"channel": channel},
                        headers=headers(who))
        assert r.status_code == 201, r.text
    assert client.post(f"/api/v1/healthcard/cards/{card['card_no']}/bindings", json={"channel": "wechat"},
                       headers=headers(who)).status_code == 409
    shown = code(client, who, card["card_no"])
    symbol = segno.make_qr(shown, error="q", boost_error=False)
    assert symbol.version <= 11 and symbol.mode == "alphanumeric"
    scanned = scan(client, hospital, shown, step="payment").json()
    payments = scanned["payments"]
    assert set(payments) == {"wechat", "alipay", "unionpay", "ecny"}
    assert payments["wechat"].startswith("13") and len(payments["wechat"]) == 18
    assert payments["unionpay"].startswith("62") and len(payments["unionpay"]) == 19
    redeem = {"channel": "alipay", "token": payments["alipay"]}
    once = signed(client, hospital, "POST", "/api/v1/healthcard/payment-tokens/redeem", redeem)
    assert once.status_code == 200 and once.json()["card_no"] == card["card_no"]
    assert once.json()["agreement_no"].startswith("SBX-ALIPAY-")
    twice = signed(client, hospital, "POST", "/api/v1/healthcard/payment-tokens/redeem", redeem)
    assert twice.status_code == 422 and twice.json()["error"] == "payment_token_invalid"
    assert client.delete(f"/api/v1/healthcard/cards/{card['card_no']}/bindings/wechat",
                         headers=headers(who)).json()["channels"] == ["alipay", "ecny", "unionpay"]
    assert "wechat" not in qr.parse(code(client, who, card["card_no"]))[3].payments


def test_printed_static_code_needs_the_pin_and_is_not_single_use(client, hospital):
    import io

    import zxingcpp
    from PIL import Image

    who = resident(client)
    card = issue(client, who, **person(), pin="246810").json()
    picture = client.post(f"/api/v1/healthcard/cards/{card['card_no']}/code", params={"kind": "static", "format": "png"},
                          headers=headers(who))
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
    printed = zxingcpp.read_barcodes(Image.open(io.BytesIO(picture.content)))[0].text  # what a counter's scanner reads
    parsed = qr.parse(printed)[3]
    assert parsed.kind == qr.Kind.STATIC and parsed.payments == {}
    assert parsed.expires_at - parsed.issued_at > 4 * 365 * 86400
    assert scan(client, hospital, printed).json()["error"] == "pin_required"
    wrong = scan(client, hospital, printed, pin="000000")
    assert wrong.json()["error"] == "pin_wrong" and "4 tries left" in wrong.json()["hint"]
    for _ in range(2):
        ok = scan(client, hospital, printed, pin="246810")
        assert ok.status_code == 200 and ok.json()["kind"] == "static"


def test_trust_list_rotation_and_withdrawal(client, hospital):
    who = resident(client)
    card = issue(client, who, **person()).json()
    before = code(client, who, card["card_no"])
    admin = admin_token(client)
    old_kid = qr.parse(before)[0].hex()
    rotated = client.post("/api/v1/healthcard/keys/rotate", json={"alg": "SM2"}, headers=admin)
    assert rotated.status_code == 201 and rotated.json()["alg"] == "SM2"
    after = code(client, who, card["card_no"])
    assert qr.parse(after)[0].hex() == rotated.json()["kid"]
    published = client.get("/.well-known/jwks.json").json()
    states = {k["kid"]: (k["status"], k["alg"]) for k in published["keys"]}
    assert states[old_kid][0] == "retired" and states[rotated.json()["kid"]] == ("active", "SM2-SM3")
    trust = qr.TrustList.from_json(published)
    assert qr.verify(before, trust) and qr.verify(after, trust)  # offline, with the downloaded list only
    assert scan(client, hospital, after).status_code == 200

    from smartcare.healthcard import keys

    with session_scope() as s:
        keys.withdraw(s, kid=old_kid, actor="test", reason="rotation done")
    assert scan(client, hospital, before).json()["error"] == "code_unknown_key"
    assert old_kid not in {k["kid"] for k in client.get("/.well-known/jwks.json").json()["keys"]}
    back = client.post("/api/v1/healthcard/keys/rotate", json={"alg": "Ed25519"}, headers=admin)
    assert back.status_code == 201


def test_card_use_reporting_and_statistics(client, hospital):
    admin = admin_token(client)
    start = client.get("/api/v1/healthcard/stats", headers=admin).json()
    who = resident(client)
    card = issue(client, who, **person()).json()
    assert scan(client, hospital, code(client, who, card["card_no"]), step="registration", channel="kiosk").status_code == 200
    for step in ("consultation", "pharmacy"):
        r = signed(client, hospital, "POST", "/api/v1/healthcard/uses",
                   {"card_no": card["card_no"], "step": step, "channel": "workstation"})
        assert r.status_code == 202, r.text
    bad = signed(client, hospital, "POST", "/api/v1/healthcard/uses", {"card_no": card["card_no"], "step": "dance",
                                                                       "channel": "window"})
    assert bad.status_code == 422 and "step" in bad.json()["message"]
    end = client.get("/api/v1/healthcard/stats", headers=admin).json()
    assert end["issued"] == start["issued"] + 1 and end["issued_today"] == start["issued_today"] + 1
    assert end["active_today"] == start["active_today"] + 1
    assert end["uses_today"] == start["uses_today"] + 3
    steps = dict(end["by_step"])
    assert steps["pharmacy"] == dict(start["by_step"]).get("pharmacy", 0) + 1
    assert dict(end["by_hospital"])[hospital[0]] >= 3
    assert client.get("/api/v1/healthcard/stats", headers=headers(who)).status_code == 403
    from smartcare.platform import auth

    with session_scope() as s:  # another hospital, which never scanned this card, cannot report its use
        other_code = s.execute(text("SELECT code FROM registry.facility WHERE code <> :c AND kind = 'general_hospital' "
                                    "LIMIT 1"), {"c": hospital[0]}).scalar()
        other_id = f"his-{uuid.uuid4().hex[:8]}"
        other_secret = auth.create_api_client(s, client_id=other_id, name="other", facility_code=other_code)
    other = signed(client, (other_code, other_id, other_secret), "POST", "/api/v1/healthcard/uses",
                   {"card_no": card["card_no"], "step": "pharmacy", "channel": "window"})
    never = signed(client, (other_code, other_id, other_secret), "POST", "/api/v1/healthcard/uses",
                   {"card_no": "HC9999999999999999", "step": "pharmacy", "channel": "window"})
    assert other.status_code == never.status_code == 404 and "not scanned at this hospital" in other.json()["message"]


def test_the_demo_sms_gateway_never_logs_the_phone_in_clear(client, caplog):
    who = resident(client)
    phone = new_phone()
    with caplog.at_level(logging.WARNING):
        assert client.post("/api/v1/healthcard/otp", json={"phone": phone}, headers=headers(who)).status_code == 202
    assert any("demo SMS" in r.getMessage() for r in caplog.records)
    assert phone not in caplog.text and phone[-4:] in caplog.text


def test_reissue_spends_the_lost_phones_payment_tokens_and_keeps_the_pin_lock(client, hospital):
    who = resident(client)
    card = issue(client, who, **person(), pin="135790").json()
    client.post(f"/api/v1/healthcard/cards/{card['card_no']}/bindings", json={"channel": "wechat"}, headers=headers(who))
    on_lost_phone = qr.parse(code(client, who, card["card_no"]))[3].payments["wechat"]
    printed = code(client, who, card["card_no"], kind="static")
    for _ in range(2):
        assert scan(client, hospital, printed, pin="000000").json()["error"] == "pin_wrong"
    client.post(f"/api/v1/healthcard/cards/{card['card_no']}/freeze", json={}, headers=headers(who))
    assert scan(client, hospital, printed, pin="135790").json()["error"] == "card_frozen"  # state before PIN
    client.post(f"/api/v1/healthcard/cards/{card['card_no']}/report_lost", json={}, headers=headers(who))
    new = client.post(f"/api/v1/healthcard/cards/{card['card_no']}/reissue", json={}, headers=headers(who)).json()
    assert new["channels"] == ["wechat"]  # the binding moved to the new card
    spent = signed(client, hospital, "POST", "/api/v1/healthcard/payment-tokens/redeem",
                   {"channel": "wechat", "token": str(on_lost_phone)})
    assert spent.status_code == 422 and spent.json()["error"] == "payment_token_invalid"
    with session_scope() as s:
        failures = s.execute(text("SELECT pin_failures FROM healthcard.card WHERE card_no = :n"),
                             {"n": new["card_no"]}).scalar()
    assert failures == 2


def test_housekeeping_purges_spent_codes_and_old_sms(client, hospital):
    from smartcare.healthcard import service

    who = resident(client)
    card = issue(client, who, **person()).json()
    assert scan(client, hospital, code(client, who, card["card_no"])).status_code == 200
    with session_scope() as s:
        s.execute(text("UPDATE healthcard.used_nonce SET expires_at = now() - interval '2 days'"))
        s.execute(text("UPDATE healthcard.otp SET expires_at = now() - interval '2 days'"))
    with session_scope() as s:
        assert service.purge(s) >= 2
        assert s.execute(text("SELECT count(*) FROM healthcard.used_nonce WHERE expires_at < now() - interval '1 day'")).scalar() == 0
        assert s.execute(text("SELECT count(*) FROM healthcard.otp WHERE expires_at < now() - interval '1 day'")).scalar() == 0


def test_a_signed_scan_request_cannot_be_replayed_even_when_the_code_was_refused(client, hospital):
    import json

    from smartcare.platform import auth

    _, client_id, secret = hospital
    raw = json.dumps({"code": "EHC1:NOTACODE"}).encode()
    h = {**auth.sign_request(client_id=client_id, secret=secret, method="POST", path="/api/v1/healthcard/verify", body=raw),
         "Content-Type": "application/json"}
    first = client.post("/api/v1/healthcard/verify", content=raw, headers=h)
    assert first.status_code == 422 and first.json()["error"] == "code_malformed"
    again = client.post("/api/v1/healthcard/verify", content=raw, headers=h)
    assert again.status_code == 401 and again.json()["field"] == "X-SmartCare-Nonce"
    forged = {**h, "X-SmartCare-Signature": "0" * 64}
    assert client.post("/api/v1/healthcard/verify", content=raw, headers=forged).status_code == 401


def test_a_replayed_scan_request_spends_nothing_and_the_code_still_works(client, hospital):
    import json

    from smartcare.platform import auth

    who = resident(client)
    card = issue(client, who, **person()).json()
    _, client_id, secret = hospital
    path = "/api/v1/healthcard/verify"

    def request(text_: str, nonce_of: dict | None = None) -> dict:
        raw = json.dumps({"code": text_}).encode()
        nonce = nonce_of[auth.HEADER_NONCE] if nonce_of else None  # an earlier request's nonce, signed anew
        return {"raw": raw, "headers": {**auth.sign_request(client_id=client_id, secret=secret, method="POST",
                                                            path=path, body=raw, nonce=nonce),
                                        "Content-Type": "application/json"}}

    first = request(code(client, who, card["card_no"]))
    assert client.post(path, content=first["raw"], headers=first["headers"]).status_code == 200
    fresh_code = code(client, who, card["card_no"])
    replayed = request(fresh_code, nonce_of=first["headers"])
    again = client.post(path, content=replayed["raw"], headers=replayed["headers"])
    assert again.status_code == 401 and again.json()["field"] == "X-SmartCare-Nonce"
    unknown = request("EHC1:" + "0" * 40, nonce_of=first["headers"])
    assert client.post(path, content=unknown["raw"], headers=unknown["headers"]).status_code == 401
    with session_scope() as s:  # the replay spent neither the code nor a use
        uses = s.execute(text("SELECT count(*) FROM healthcard.card_use u JOIN healthcard.card c ON c.id = u.card_id "
                              "WHERE c.card_no = :no"), {"no": card["card_no"]}).scalar()
    assert uses == 1
    assert scan(client, hospital, fresh_code).status_code == 200


def test_no_card_in_another_persons_name(client, seeded):
    victim, attacker = person(), resident(client)
    own_phone = new_phone()
    stolen = issue(client, attacker, name=victim["name"], id_number=victim["id_number"], phone=own_phone)
    assert stolen.status_code == 422 and stolen.json()["field"] == "id_number"
    assert "real-name records" in stolen.json()["message"] and victim["id_number"] not in stolen.text
    wrong_name = issue(client, attacker, name=victim["name"] + "伟", id_number=victim["id_number"], phone=victim["phone"])
    assert wrong_name.status_code == 422 and wrong_name.json()["message"] == stolen.json()["message"]
    kid = child()
    not_my_child = issue(client, attacker, name=kid["name"], id_number=kid["id_number"], phone=own_phone, relation="guardian")
    assert not_my_child.status_code == 422
    assert client.get("/api/v1/healthcard/cards", headers=headers(attacker)).json() == []


def test_parallel_wrong_codes_and_pins_cannot_pass_the_try_limit(client, hospital):
    import concurrent.futures

    from smartcare.healthcard import service
    from smartcare.platform.db import session_scope as scope
    from smartcare.platform.errors import InvalidInput

    who, me = resident(client), person()
    assert client.post("/api/v1/healthcard/otp", json={"phone": me["phone"]}, headers=headers(who)).status_code == 202

    def try_code(guess: str) -> str:
        try:
            with scope() as s:
                service.check_code(s, phone=me["phone"], code=guess)
            return "ok"
        except InvalidInput as exc:
            return exc.message

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(try_code, [f"{n:06d}" for n in range(12)]))
    assert answers.count("wrong verification code") <= service.OTP_TRIES
    assert answers.count("no valid verification code for this phone") >= 12 - service.OTP_TRIES - 1
    with scope() as s:
        assert s.execute(text("SELECT max(attempts) FROM healthcard.otp")).scalar() <= service.OTP_TRIES

    card = issue(client, who, **person(), pin="112233").json()
    printed = code(client, who, card["card_no"], kind="static")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        errors = [r.json()["error"] for r in pool.map(lambda _: scan(client, hospital, printed, pin="999999"), range(12))]
    assert errors.count("pin_wrong") == service.PIN_TRIES and errors.count("pin_locked") == 12 - service.PIN_TRIES
    assert scan(client, hospital, printed, pin="112233").json()["error"] == "pin_locked"
