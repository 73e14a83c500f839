"""WeChat Pay: the adapter against the sandbox, both over real HTTP (uvicorn), with faults injected.

Notifications go to a receiver served next to the sandbox that checks them with the adapter's own
``read_notification``, as the platform's endpoint does. Payment codes are redeemed by a stand-in that
accepts each known token once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import stat
import time
from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from channel_support import NotificationReceiver, TokenRedeemer, wait_until
from sandbox_support import serve_app

from smartcare.payment import remote
from smartcare.payment.channels import credentials as creds_mod
from smartcare.payment.channels import wechat as wire
from smartcare.payment.channels.wechat import WeChatPay
from smartcare.payment.sandbox.channel import BooksError, platform_redeemer
from smartcare.payment.sandbox.faults import Faults
from smartcare.payment.sandbox.wechat import create_app
from smartcare.platform.auth import sign_request
from smartcare.platform.clock import china_today

PASSWORD_ABOVE = 10_000


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys")
    credentials = creds_mod.load_or_create("wechat", keys)
    redeemer = TokenRedeemer()
    receiver = NotificationReceiver(WeChatPay("http://127.0.0.1:9", credentials, notify_url=""))
    with serve_app(receiver.app) as receiver_url:
        app = create_app(credentials=credentials, redeem=redeemer, faults=Faults(),
                         password_above=PASSWORD_ABOVE, password_seconds=0.3)
        with serve_app(app, graceful_seconds=2) as base:
            adapter = WeChatPay(base, credentials, notify_url=f"{receiver_url}/notify", timeout=3.0)
            yield SimpleNamespace(base=base, credentials=credentials, redeemer=redeemer, receiver=receiver,
                                  notify_url=f"{receiver_url}/notify", adapter=adapter, keys=keys)
            adapter.close()


@pytest.fixture(autouse=True)
def no_faults(env):
    env.receiver.acknowledge = True
    yield
    set_faults(env)


def set_faults(env, **faults) -> None:
    httpx.put(f"{env.base}/_sandbox/faults", json=faults, timeout=5).raise_for_status()


def books(env) -> dict:
    return httpx.get(f"{env.base}/_sandbox/books", timeout=5).json()


def number() -> str:
    return f"SC{secrets.token_hex(10)}"


def token(env) -> tuple[str, str]:
    """A fresh payment code (18 digits, as WeChat's) and the agreement it redeems to."""
    agreement = f"AG{secrets.token_hex(6)}"
    return env.redeemer.add(f"13{secrets.randbelow(10**16):016d}", agreement), agreement


def pay(env, amount: int = 1_234, adapter: WeChatPay | None = None, **kw):
    code, agreement = token(env)
    no = kw.pop("out_trade_no", None) or number()
    order = (adapter or env.adapter).pay(out_trade_no=no, amount=amount, auth_code=code, description="门诊缴费")
    return order, agreement


def short_adapter(env, timeout: float = 0.4) -> WeChatPay:
    return WeChatPay(env.base, env.credentials, notify_url=env.notify_url, timeout=timeout)


# -- credentials ----------------------------------------------------------------------------------------

def test_credentials_are_created_once_and_private(env):
    again = creds_mod.load_or_create("wechat", env.keys)
    assert again == env.credentials
    assert stat.S_IMODE(os.stat(env.keys / "wechat.json").st_mode) == 0o600
    signature = creds_mod.sign_rsa_sha256(again.merchant_key, b"data")
    assert creds_mod.verify_rsa_sha256(again.merchant_public, b"data", signature)
    assert not creds_mod.verify_rsa_sha256(again.channel_public, b"data", signature)
    with pytest.raises(ValueError, match="unknown channel"):
        creds_mod.create("paypal")


# -- payments ------------------------------------------------------------------------------------------

def test_pay_is_paid_notified_and_idempotent(env):
    order, agreement = pay(env, 1_234)
    assert (order.state, order.amount, order.payer) == ("paid", 1_234, agreement)
    assert order.transaction_id and order.paid_at is not None

    code, _ = token(env)  # the same number again is the same order, whatever the code
    again = env.adapter.pay(out_trade_no=order.out_trade_no, amount=1_234, auth_code=code, description="x")
    assert again.transaction_id == order.transaction_id
    with pytest.raises(remote.Refused) as refused:
        env.adapter.pay(out_trade_no=order.out_trade_no, amount=999, auth_code=code, description="x")
    assert refused.value.code == "OUT_TRADE_NO_USED"

    notes = wait_until(lambda: env.receiver.verified(order.out_trade_no))
    assert notes[0].order.state == "paid" and notes[0].order.amount == 1_234
    assert notes[0].order.transaction_id == order.transaction_id
    assert env.adapter.query(out_trade_no=order.out_trade_no).state == "paid"
    assert books(env)["charged"][agreement] == 1_234


def test_notification_that_is_tampered_or_forged_is_refused(env):
    c = env.credentials
    transaction = {"out_trade_no": "SCX0001", "transaction_id": "4200", "trade_state": "SUCCESS",
                   "amount": {"total": 100, "currency": "CNY"}, "success_time": "2026-01-01T10:00:00+08:00"}
    body = json.dumps({"id": "n1", "event_type": "TRANSACTION.SUCCESS", "resource_type": "encrypt-resource",
                       "resource": wire.encrypt_resource(c.secret, json.dumps(transaction).encode())}).encode()
    headers = wire.signed_headers(c.channel_key, c.channel_serial, body)
    assert env.adapter.read_notification(headers, body).order.amount == 100

    tampered = body.replace(b'"n1"', b'"n2"')
    with pytest.raises(remote.Refused) as refused:
        env.adapter.read_notification(headers, tampered)
    assert refused.value.code == "SIGN_ERROR"

    forged = wire.signed_headers(c.merchant_key, c.channel_serial, body)  # the wrong key
    with pytest.raises(remote.Refused) as refused:
        env.adapter.read_notification(forged, body)
    assert refused.value.code == "SIGN_ERROR"

    response = httpx.post(env.notify_url, content=tampered, headers=headers)  # the receiver says no
    assert response.status_code == 500 and env.receiver.refused()[-1].code == "SIGN_ERROR"


def test_invalid_code_fails(env):
    no = number()
    with pytest.raises(remote.Refused) as refused:
        env.adapter.pay(out_trade_no=no, amount=500, auth_code="130000000000000000", description="x")
    assert refused.value.code == "AUTH_CODE_INVALID"
    assert env.adapter.query(out_trade_no=no).state == "failed"
    with pytest.raises(remote.Refused):
        env.adapter.pay(out_trade_no=no, amount=500, auth_code="130000000000000000", description="x")
    assert env.adapter.query(out_trade_no=number()).state == "not_found"


def test_payer_typing_a_password(env):
    order, agreement = pay(env, PASSWORD_ABOVE + 1)
    assert order.state == "paying"
    wait_until(lambda: env.adapter.query(out_trade_no=order.out_trade_no).state == "paid")
    assert wait_until(lambda: env.receiver.verified(order.out_trade_no))[0].order.payer == agreement


def test_reverse_of_an_unknown_number_closes_it(env):
    no = number()
    assert env.adapter.reverse(out_trade_no=no).state == "failed"  # CLOSED: never paid
    code, _ = token(env)
    with pytest.raises(remote.Refused) as refused:
        env.adapter.pay(out_trade_no=no, amount=700, auth_code=code, description="x")
    assert refused.value.code == "ORDER_CLOSED"
    assert code not in env.redeemer.redeemed  # the payer's code was not spent


def test_reverse_while_paying_stops_the_payment(env):
    order, agreement = pay(env, PASSWORD_ABOVE + 5)
    assert order.state == "paying"
    assert env.adapter.reverse(out_trade_no=order.out_trade_no).state == "failed"
    time.sleep(0.5)  # past the password delay: the payment must not complete
    assert env.adapter.query(out_trade_no=order.out_trade_no).state == "failed"
    assert books(env)["charged"].get(agreement, 0) == 0


def test_reverse_of_a_paid_order_returns_the_money(env):
    order, agreement = pay(env, 2_000)
    assert books(env)["charged"][agreement] == 2_000
    reversed_ = env.adapter.reverse(out_trade_no=order.out_trade_no)
    assert reversed_.state == "reversed"
    assert env.adapter.reverse(out_trade_no=order.out_trade_no).state == "reversed"  # idempotent
    assert books(env)["charged"][agreement] == 0


# -- refunds and the bill ------------------------------------------------------------------------------

def test_refunds(env):
    order, agreement = pay(env, 10_000)
    no = order.out_trade_no
    first = env.adapter.refund(out_trade_no=no, out_refund_no=f"R{no}", amount=3_000, total=10_000)
    assert (first.state, first.amount) == ("succeeded", 3_000)
    again = env.adapter.refund(out_trade_no=no, out_refund_no=f"R{no}", amount=3_000, total=10_000)
    assert again.refund_id == first.refund_id
    with pytest.raises(remote.Refused) as refused:
        env.adapter.refund(out_trade_no=no, out_refund_no=f"Q{no}", amount=7_001, total=10_000)
    assert refused.value.code == "INVALID_REQUEST" and "exceeds" in refused.value.message
    assert env.adapter.query_refund(out_refund_no=f"R{no}").amount == 3_000
    assert env.adapter.query_refund(out_refund_no=f"Q{no}").state == "not_found"
    assert books(env)["charged"][agreement] == 7_000


def test_bill_of_today_lists_payments_and_refunds(env):
    order, _ = pay(env, 4_321)
    no = order.out_trade_no
    env.adapter.refund(out_trade_no=no, out_refund_no=f"R{no}", amount=321, total=4_321)
    env.adapter.reverse(out_trade_no=no)  # the rest goes back too, as a REVOKED line
    rows = env.adapter.bill(day=china_today())
    mine = {(r.kind, r.amount, r.out_refund_no) for r in rows if r.out_trade_no == no}
    assert mine == {("pay", 4_321, None), ("refund", 321, f"R{no}"), ("refund", 4_000, None)}
    assert all(r.transaction_id == order.transaction_id for r in rows if r.out_trade_no == no)
    assert env.adapter.bill(day=china_today() - timedelta(days=400)) == []


class _Tamper(httpx.BaseTransport):
    """A man in the middle that changes one byte of every bill file."""

    def __init__(self):
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path != "/v3/billdownload/file":
            return response
        content = response.read().replace(b"MICROPAY", b"MICROPAX", 1)
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        return httpx.Response(response.status_code, headers=headers, content=content)


def test_tampered_bill_is_not_trusted(env):
    pay(env, 100)
    adapter = WeChatPay(env.base, env.credentials, notify_url=env.notify_url)
    adapter.http = httpx.Client(base_url=env.base, transport=_Tamper(), timeout=3)
    with pytest.raises(remote.OutcomeUnknown, match="SHA1"):
        adapter.bill(day=china_today())
    adapter.close()


# -- signatures ----------------------------------------------------------------------------------------

def test_answer_with_a_broken_signature_is_not_trusted(env):
    other = creds_mod.create("wechat")
    wrong = WeChatPay(env.base, dataclasses.replace(env.credentials, channel_public=other.channel_public),
                      notify_url=env.notify_url)
    no = number()
    with pytest.raises(remote.OutcomeUnknown, match="does not verify"):
        pay(env, 800, adapter=wrong, out_trade_no=no)
    assert env.adapter.query(out_trade_no=no).state == "paid"  # the payment happened all the same
    wrong.close()


def test_request_with_a_wrong_signature_is_refused(env):
    other = creds_mod.create("wechat")
    wrong = WeChatPay(env.base, dataclasses.replace(env.credentials, merchant_key=other.merchant_key),
                      notify_url=env.notify_url)
    with pytest.raises(remote.Refused) as refused:
        wrong.query(out_trade_no=number())
    assert refused.value.code == "SIGN_ERROR"
    wrong.close()


# -- faults --------------------------------------------------------------------------------------------

def test_timeout_outcome_is_unknown_then_the_query_tells(env):
    set_faults(env, timeout=1, hang_seconds=1.0)
    adapter = short_adapter(env)
    no = number()
    with pytest.raises(remote.OutcomeUnknown):
        pay(env, 900, adapter=adapter, out_trade_no=no)
    set_faults(env)
    wait_until(lambda: env.adapter.query(out_trade_no=no).state == "paid", timeout=3)
    adapter.close()


def test_lost_reply_outcome_is_unknown_then_the_query_tells(env):
    set_faults(env, lost_reply=1, hang_seconds=1.0)
    adapter = short_adapter(env)
    no = number()
    with pytest.raises(remote.OutcomeUnknown):
        pay(env, 901, adapter=adapter, out_trade_no=no)
    set_faults(env)
    assert env.adapter.query(out_trade_no=no).state == "paid"  # the work was done before the reply got lost
    adapter.close()


def test_system_error_is_unknown_and_nothing_was_done(env):
    set_faults(env, error=1)
    code, agreement = token(env)
    no = number()
    with pytest.raises(remote.OutcomeUnknown, match="HTTP 500"):
        env.adapter.pay(out_trade_no=no, amount=300, auth_code=code, description="x")
    set_faults(env)
    assert env.adapter.query(out_trade_no=no).state == "not_found"
    assert env.adapter.pay(out_trade_no=no, amount=300, auth_code=code, description="x").payer == agreement


def test_duplicate_delivery_charges_once(env):
    set_faults(env, duplicate=1)
    order, agreement = pay(env, 555)
    set_faults(env)
    assert order.state == "paid" and books(env)["charged"][agreement] == 555


def test_notify_twice_delivers_twice(env):
    set_faults(env, notify_twice=1)
    order, _ = pay(env, 600)
    notes = wait_until(lambda: len(env.receiver.verified(order.out_trade_no)) >= 2 and
                       env.receiver.verified(order.out_trade_no))
    assert len({n.notification_id for n in notes}) == 1  # the same notification, delivered twice


def test_notify_never_delivers_nothing_but_the_query_works(env):
    set_faults(env, notify_never=1)
    order, _ = pay(env, 601)
    time.sleep(0.5)
    assert env.receiver.verified(order.out_trade_no) == []
    assert env.adapter.query(out_trade_no=order.out_trade_no).state == "paid"


def test_unacknowledged_notifications_are_retried(env):
    env.receiver.acknowledge = False
    order, _ = pay(env, 602)
    wait_until(lambda: len(env.receiver.verified(order.out_trade_no)) >= 2, timeout=3)
    env.receiver.acknowledge = True
    wait_until(lambda: any(n["out_trade_no"] == order.out_trade_no and n["acknowledged"]
                           for n in books(env)["notifications"]), timeout=3)


# -- the platform's redeemer ---------------------------------------------------------------------------

def test_platform_redeemer_signs_and_maps_answers():
    seen: list[dict] = []
    app = FastAPI()

    @app.post("/base/api/v1/healthcard/payment-tokens/redeem")
    async def redeem(request: Request):
        body = await request.body()
        headers = dict(request.headers)
        expected = sign_request(client_id="wechat-sandbox", secret="s3cret", method="POST", path=request.url.path,
                                body=body, timestamp=int(headers["x-smartcare-timestamp"]),
                                nonce=headers["x-smartcare-nonce"])
        seen.append(json.loads(body))
        assert headers["x-smartcare-signature"] == expected["X-SmartCare-Signature"]
        answers = {"1000000000000000": (200, {"agreement_no": "AG1"}), "2000000000000000": (404, {"error": "x"})}
        status, payload = answers.get(json.loads(body)["token"], (503, {}))
        return JSONResponse(payload, status_code=status)

    with serve_app(app) as base:
        redeem_token = platform_redeemer(f"{base}/base", channel="wechat", client_id="wechat-sandbox", secret="s3cret")

        async def run():
            assert await redeem_token("1000000000000000") == "AG1"
            assert await redeem_token("2000000000000000") is None
            with pytest.raises(BooksError) as failed:
                await redeem_token("3000000000000000")
            assert failed.value.code == "SYSTEM_ERROR"

        asyncio.run(run())
    assert seen[0] == {"channel": "wechat", "token": "1000000000000000"}
