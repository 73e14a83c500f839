"""Patients of the payment tests: a seeded resident with a health card bound to the channels, a personal
account at the insurance centre (and its mirror in the ledger), and the payment code a terminal reads."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx

from tests.healthcard.card_support import code, headers, issue, person, resident, signed


@dataclass
class Patient:
    who: dict
    card_no: str
    empi_id: str


def new_patient(client, region, *, balance: int = 0, channels=("wechat", "alipay", "unionpay"),
                insutype: str = "310") -> Patient:
    """A seeded resident with a health card bound to ``channels``; the insurance centre (and the
    platform's mirror of it) credits their personal account with ``balance`` fen."""
    from smartcare.payment import service
    from smartcare.platform.db import session_scope

    who = resident(client)
    p = person()
    card = issue(client, who, name=p["name"], id_number=p["id_number"], phone=p["phone"])
    assert card.status_code == 201, card.text
    card_no = card.json()["card_no"]
    for channel in channels:
        r = client.post(f"/api/v1/healthcard/cards/{card_no}/bindings", json={"channel": channel}, headers=headers(who))
        assert r.status_code == 201, r.text
    scanned = signed(client, region.hospital, "POST", "/api/v1/healthcard/verify", {"code": code(client, who, card_no)})
    empi_id = scanned.json()["empi_id"]
    r = httpx.put(region.party("medins") + f"/_sandbox/persons/{empi_id}",
                  json={"insutype": insutype, "balance": balance, "deductible_used": 0, "fund_paid": 0}, timeout=5)
    assert r.status_code == 200, r.text
    if balance:
        with session_scope() as s:
            service.credit_personal_account(s, empi_id=empi_id, amount=balance, transfer_id=uuid.uuid4())
    return Patient(who, card_no, empi_id)


def payment_code(client, region, patient: Patient, channel: str) -> str:
    """What the terminal reads from the patient's QR: the one-time payment code of ``channel``."""
    scanned = signed(client, region.hospital, "POST", "/api/v1/healthcard/verify",
                     {"code": code(client, patient.who, patient.card_no)})
    assert scanned.status_code == 200, scanned.text
    return scanned.json()["payments"][channel]
