"""Helpers of the health-card tests: residents who log in, one-time codes read from the demo SMS
gateway, signed hospital requests."""

from __future__ import annotations

import itertools
import json
import random
import re
import uuid
from datetime import date

from sqlalchemy import text

from smartcare.platform import auth, idcard
from smartcare.platform.db import session_scope
from smartcare.platform.masking import mask_phone

_rng = random.Random()


def new_phone() -> str:
    return f"13{_rng.randint(0, 9)}{_rng.randint(0, 99_999_999):08d}"


def new_id_number(birth: date, sex: str = "1") -> str:
    return idcard.make("500103", birth, _rng.randint(1, 499), sex)


_next_person = itertools.count()


def person() -> dict:
    """An adult of the seeded population not used by another test yet: name, ID number and the phone
    registered to them (real-name verification checks all three)."""
    with session_scope() as s:
        row = s.execute(text("SELECT name, id_number, phone FROM synth.resident WHERE guardian_id IS NULL "
                             "AND birth_date < current_date - interval '20 years' ORDER BY id DESC OFFSET :n LIMIT 1"),
                        {"n": next(_next_person)}).mappings().one()
    return dict(row)


def child() -> dict:
    """A child of the seeded population and their guardian's phone (a child's card is applied for with it)."""
    with session_scope() as s:
        row = s.execute(text("SELECT c.name, c.id_number, g.phone FROM synth.resident c "
                             "JOIN synth.resident g ON g.id = c.guardian_id "
                             "WHERE c.birth_date > current_date - interval '16 years' ORDER BY c.id DESC OFFSET :n LIMIT 1"),
                        {"n": next(_next_person)}).mappings().one()
    return dict(row)


def resident(client) -> dict:
    """A new resident account, logged in: its bearer headers (and its username under ``_user``)."""
    username = f"r{uuid.uuid4().hex[:10]}"
    with session_scope() as s:
        auth.create_user(s, username=username, password="resident-pass", display_name="居民", roles=["resident"])
    token = client.post("/api/v1/auth/token", json={"username": username, "password": "resident-pass"}).json()
    return {"Authorization": f"Bearer {token['access_token']}", "_user": username}


def headers(h: dict) -> dict:
    return {k: v for k, v in h.items() if not k.startswith("_")}


def sms_code(phone: str) -> str:
    """The code the demo SMS gateway 'sent' to ``phone`` (it keeps the phone masked)."""
    with session_scope() as s:
        body = s.execute(text("SELECT text FROM healthcard.sms_outbox WHERE phone_masked = :p ORDER BY id DESC LIMIT 1"),
                         {"p": mask_phone(phone)}).scalar()
    return re.search(r"\b(\d{6})\b", body).group(1)


def issue(client, who: dict, *, name: str, id_number: str, phone: str | None = None, relation: str = "self",
          pin: str | None = None):
    phone = phone or new_phone()
    with session_scope() as s:  # tests apply for several cards with one phone: no waiting out the resend minute
        s.execute(text("UPDATE healthcard.otp SET created_at = created_at - interval '61 seconds'"))
    sent = client.post("/api/v1/healthcard/otp", json={"phone": phone}, headers=headers(who))
    assert sent.status_code == 202, sent.text
    body = {"name": name, "id_number": id_number, "phone": phone, "otp": sms_code(phone), "relation": relation}
    if pin:
        body["pin"] = pin
    return client.post("/api/v1/healthcard/cards", json=body, headers=headers(who))


def code(client, who: dict, card_no: str, kind: str = "dynamic") -> str:
    r = client.post(f"/api/v1/healthcard/cards/{card_no}/code", params={"kind": kind}, headers=headers(who))
    assert r.status_code == 200, r.text
    return r.json()["text"]


def signed(client, hospital, method: str, path: str, body: dict | None = None, params: str = ""):
    _, client_id, secret = hospital
    raw = json.dumps(body, ensure_ascii=False).encode() if body is not None else b""
    full = path + (f"?{params}" if params else "")
    h = auth.sign_request(client_id=client_id, secret=secret, method=method, path=full, body=raw)
    if body is not None:
        h["Content-Type"] = "application/json"
    return client.request(method, full, content=raw or None, headers=h)


def scan(client, hospital, code_text: str, **extra):
    return signed(client, hospital, "POST", "/api/v1/healthcard/verify", {"code": code_text, **extra})
