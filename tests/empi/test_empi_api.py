"""The index's HTTP API as a hospital system and an administrator use it."""

from __future__ import annotations

import json
import uuid
from datetime import date

from smartcare.platform import auth, idcard
from tests.exchange.conftest import admin_token


def _register(client, hospital, body: dict):
    _, client_id, secret = hospital
    raw = json.dumps(body, ensure_ascii=False).encode()
    headers = auth.sign_request(client_id=client_id, secret=secret, method="POST", path="/api/v1/empi/sources", body=raw)
    return client.post("/api/v1/empi/sources", content=raw, headers={**headers, "Content-Type": "application/json"})


def test_register_gives_an_empi_id_at_once_and_lookups_follow(client, hospital):
    number = idcard.make("500103", date(1972, 8, 15), 33, "2")
    tag = uuid.uuid4().hex[:6]
    first = _register(client, hospital, {"card_no": f"A{tag}", "name": "刘芳", "id_number": number, "sex": "2",
                                         "birth_date": "1972-08-15", "phone": "13698765432"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["empi_id"].startswith("E") and body["golden"]["id_number"] != number  # masked for a hospital
    again = _register(client, hospital, {"card_no": f"B{tag}", "name": "劉 芳", "id_number": number.lower(),
                                         "birth_date": "1972-08-15"})
    assert again.json()["empi_id"] == body["empi_id"] and len(again.json()["cards"]) == 2

    headers = admin_token(client)
    full = client.get(f"/api/v1/empi/persons/{body['empi_id']}", headers=headers).json()
    assert full["golden"]["id_number"] == number and full["golden"]["name"] == "刘芳"
    found = client.get("/api/v1/empi/lookup", params={"facility": hospital[0], "card_no": f"B{tag}"}, headers=headers)
    assert found.status_code == 200 and found.json()["empi_id"] == body["empi_id"]
    missing = client.get("/api/v1/empi/lookup", params={"facility": hospital[0], "card_no": "nope"}, headers=headers)
    assert missing.status_code == 404 and missing.json()["field"] == "card_no"


def test_merge_and_unmerge_over_http(client, hospital):
    tag = uuid.uuid4().hex[:6]
    a = _register(client, hospital, {"card_no": f"M{tag}1", "name": "陈静", "birth_date": "1999-02-02"}).json()
    b = _register(client, hospital, {"card_no": f"M{tag}2", "name": "陈晶", "birth_date": "1999-02-02"}).json()
    assert a["empi_id"] != b["empi_id"]  # no valid ID: the cautious rule does not link them
    headers = admin_token(client)
    merged = client.post(f"/api/v1/empi/persons/{a['empi_id']}/merge", json={"other": b["empi_id"], "reason": "同一人"},
                         headers=headers)
    assert merged.status_code == 200
    assert len(client.get(f"/api/v1/empi/persons/{b['empi_id']}", headers=headers).json()["cards"]) == 2
    undone = client.post(f"/api/v1/empi/merges/{merged.json()['merge']}/unmerge", json={"reason": "错误合并"}, headers=headers)
    assert undone.json() == {"restored": b["empi_id"]}
    assert len(client.get(f"/api/v1/empi/persons/{b['empi_id']}", headers=headers).json()["cards"]) == 1
    bad = _register(client, hospital, {"card_no": "", "name": "x"})
    assert bad.status_code == 422 and "card_no" in bad.json()["message"]
