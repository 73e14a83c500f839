"""The parties of a payment for end-to-end tests: each sandbox started as its own process by
``smartcare sandbox run`` on a free port, the platform served by uvicorn (channels redeem payment codes
and send notifications to it), and patients with a health card bound to the three channels."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import free_port
from tests.healthcard.card_support import code, headers, issue, person, resident, signed

PARTIES = ("medins", "insurer", "wechat", "alipay", "unionpay")


@dataclass
class Region:
    url: str
    hospital: tuple

    def party(self, name: str) -> str:
        from smartcare.platform.settings import get_settings

        return getattr(get_settings(), f"payment_{name}_url")

    def faults(self, name: str, **faults) -> None:
        r = httpx.put(self.party(name) + "/_sandbox/faults", json=faults, timeout=5)
        assert r.status_code == 200, r.text

    def calm(self) -> None:
        for name in PARTIES:
            self.faults(name)

    def books(self, name: str) -> dict:
        return httpx.get(self.party(name) + "/_sandbox/books", timeout=5).json()


@pytest.fixture(scope="session")
def payment_region(live_server, hospital, tmp_path_factory):
    from smartcare.payment.sandbox import serve
    from smartcare.platform import auth
    from smartcare.platform.db import session_scope
    from smartcare.platform.settings import get_settings

    env = {f"SMARTCARE_PAYMENT_{p.upper()}_URL": f"http://127.0.0.1:{free_port()}" for p in PARTIES}
    env |= {"SMARTCARE_PAYMENT_NOTIFY_URL": live_server.url,
            "SMARTCARE_PAYMENT_KEYS_DIR": str(tmp_path_factory.mktemp("payment-keys")),
            "SMARTCARE_PAYMENT_TIMEOUT_SECONDS": "0.6", "SMARTCARE_PAYMENT_PAYER_WAIT_SECONDS": "4"}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    processes = {}
    try:
        for party in PARTIES:
            secret = None
            if party in serve.CHANNELS:  # the test database is new: the sandbox's platform client is too
                with session_scope() as s:
                    secret = auth.create_api_client(s, client_id=serve.client_id(party), name=f"{party} sandbox",
                                                    facility_code=None)
            processes[party] = serve.spawn(party, platform_url=live_server.url, secret=secret)
        for party, process in processes.items():
            serve.wait_ready(party, process)
        yield Region(live_server.url, hospital)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=10)
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


@dataclass
class Patient:
    who: dict
    card_no: str
    empi_id: str


def new_patient(client, region: Region, *, balance: int = 0, channels=("wechat", "alipay", "unionpay"),
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


def payment_code(client, region: Region, patient: Patient, channel: str) -> str:
    """What the terminal reads from the patient's QR: the one-time payment code of ``channel``."""
    scanned = signed(client, region.hospital, "POST", "/api/v1/healthcard/verify",
                     {"code": code(client, patient.who, patient.card_no)})
    assert scanned.status_code == 200, scanned.text
    return scanned.json()["payments"][channel]
