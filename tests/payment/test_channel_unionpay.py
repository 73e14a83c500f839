"""The UnionPay adapter against the UnionPay sandbox, both over real HTTP (uvicorn), with faults injected."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from fastapi import FastAPI, Response

from smartcare.payment import remote
from smartcare.payment.channels import credentials
from smartcare.payment.channels import unionpay as wire
from smartcare.payment.channels.unionpay import UnionPay
from smartcare.payment.sandbox.channel import BooksError
from smartcare.payment.sandbox.unionpay import create_app
from tests.payment.channel_support import (
    NotificationReceiver,
    TokenRedeemer,
    wait_until,
)
from tests.payment.sandbox_support import serve_app

PLATFORM_DOWN = "token-while-the-platform-is-down"


class Tap:
    """The adapter's notification side, keeping each raw body so that a test can tamper with a real one."""

    def __init__(self, channel: UnionPay):
        self.channel = channel
        self.name = channel.name
        self.bodies: list[bytes] = []

    def read_notification(self, headers: dict[str, str], body: bytes):
        self.bodies.append(body)
        return self.channel.read_notification(headers, body)

    def notification_reply(self, ok: bool):
        return self.channel.notification_reply(ok)


@dataclasses.dataclass
class World:
    base: str
    creds: credentials.Credentials
    tokens: TokenRedeemer
    receiver: NotificationReceiver
    tap: Tap
    notify_url: str
    unionpay: UnionPay  # patient (5 s)
    quick: UnionPay  # gives up after 0.5 s, for the faults

    def token(self, payer: str = "AGR-UP-1") -> str:
        return self.tokens.add(f"{uuid.uuid4().int:019d}"[:19], payer)

    @contextlib.contextmanager
    def faults(self, **settings):
        httpx.put(f"{self.base}/_sandbox/faults", json=settings).raise_for_status()
        try:
            yield
        finally:
            httpx.put(f"{self.base}/_sandbox/faults", json={}).raise_for_status()


@pytest.fixture(scope="module")
def world():
    creds = credentials.create("unionpay")
    tokens = TokenRedeemer()

    async def redeem(token: str) -> str | None:
        if token == PLATFORM_DOWN:
            raise BooksError("SYSTEM_ERROR", "token redemption failed: ConnectTimeout")
        return await tokens(token)

    with serve_app(create_app(credentials=creds, redeem=redeem, password_seconds=0.3)) as base:
        tap = Tap(UnionPay(base, creds, notify_url="http://unused.invalid/"))
        receiver = NotificationReceiver(tap)
        with serve_app(receiver.app) as notify_base:
            notify_url = f"{notify_base}/notify"
            with UnionPay(base, creds, notify_url=notify_url, timeout=5) as unionpay, \
                    UnionPay(base, creds, notify_url=notify_url, timeout=0.5) as quick:
                yield World(base, creds, tokens, receiver, tap, notify_url, unionpay, quick)


def no() -> str:
    return f"UP{uuid.uuid4().hex[:22]}"


def test_pay_is_paid_once_per_number_and_notified_with_a_verified_signature(world):
    number = no()
    order = world.unionpay.pay(out_trade_no=number, amount=1_230, auth_code=world.token("AGR-UP-7"), description="门诊缴费")
    assert (order.state, order.amount, order.payer) == ("paid", 1_230, "AGR-UP-7")
    assert order.transaction_id and order.paid_at is not None
    unused = world.token()
    again = world.unionpay.pay(out_trade_no=number, amount=1_230, auth_code=unused, description="门诊缴费")
    assert again.transaction_id == order.transaction_id and again.state == "paid"
    assert unused not in world.tokens.redeemed
    assert httpx.get(f"{world.base}/_sandbox/books").json()["charged"]["AGR-UP-7"] == 1_230
    with pytest.raises(remote.Refused) as clash:  # the same number with another amount is another order
        world.unionpay.pay(out_trade_no=number, amount=1_231, auth_code=world.token(), description="门诊缴费")
    assert clash.value.code == "36"

    notified = wait_until(lambda: world.receiver.verified(number))
    assert notified[0].order.state == "paid" and notified[0].order.amount == 1_230
    assert notified[0].order.transaction_id == order.transaction_id
    assert world.unionpay.query(out_trade_no=number) == order


def test_a_tampered_notification_is_refused_as_sign_error(world):
    number = no()
    world.unionpay.pay(out_trade_no=number, amount=2_000, auth_code=world.token(), description="检查费")
    wait_until(lambda: world.receiver.verified(number))
    genuine = next(b for b in world.tap.bodies if f"orderId={number}".encode() in b)
    fields = dict(parse_qsl(genuine.decode()))
    assert world.unionpay.read_notification({}, genuine).order.amount == 2_000
    tampered = urlencode({**fields, "txnAmt": "200000"}).encode()
    with pytest.raises(remote.Refused) as refused:
        world.unionpay.read_notification({}, tampered)
    assert refused.value.code == "SIGN_ERROR"
    answer = httpx.post(world.notify_url, content=tampered, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code != 200 and world.receiver.refused()[-1].code == "SIGN_ERROR"


def test_an_invalid_payment_code_is_refused_and_the_order_failed(world):
    number = no()
    with pytest.raises(remote.Refused) as refused:
        world.unionpay.pay(out_trade_no=number, amount=500, auth_code="6200000000000000000", description="挂号费")
    assert refused.value.code == "61"
    assert world.unionpay.query(out_trade_no=number).state == "failed"


def test_above_the_password_limit_the_order_is_paying_then_paid_and_notified(world):
    number = no()
    order = world.unionpay.pay(out_trade_no=number, amount=100_001, auth_code=world.token(), description="住院押金")
    assert order.state == "paying"
    assert wait_until(lambda: world.unionpay.query(out_trade_no=number).state == "paid")
    assert wait_until(lambda: world.receiver.verified(number))[0].order.amount == 100_001


def test_undo_closes_an_unknown_number_and_returns_a_paid_order(world):
    unknown = no()
    assert world.unionpay.reverse(out_trade_no=unknown).state == "failed"
    with pytest.raises(remote.Refused) as refused:
        world.unionpay.pay(out_trade_no=unknown, amount=300, auth_code=world.token(), description="药费")
    assert refused.value.code == "12"

    paid = no()
    world.unionpay.pay(out_trade_no=paid, amount=4_500, auth_code=world.token("AGR-UP-REV"), description="药费")
    assert world.unionpay.reverse(out_trade_no=paid).state == "reversed"
    assert world.unionpay.reverse(out_trade_no=paid).state == "reversed"  # idempotent
    assert world.unionpay.query(out_trade_no=paid).state == "reversed"
    assert httpx.get(f"{world.base}/_sandbox/books").json()["charged"]["AGR-UP-REV"] == 0


def test_partial_refunds_are_idempotent_by_number_and_never_exceed_the_payment(world):
    number, first, second = no(), no(), no()
    world.unionpay.pay(out_trade_no=number, amount=5_000, auth_code=world.token("AGR-UP-REF"), description="检验费")
    refund = world.unionpay.refund(out_trade_no=number, out_refund_no=first, amount=1_200, total=5_000)
    assert (refund.state, refund.amount) == ("succeeded", 1_200) and refund.refund_id
    assert world.unionpay.refund(out_trade_no=number, out_refund_no=first, amount=1_200, total=5_000) == refund
    with pytest.raises(remote.Refused) as refused:
        world.unionpay.refund(out_trade_no=number, out_refund_no=second, amount=3_801, total=5_000)
    assert refused.value.code == "36"
    assert httpx.get(f"{world.base}/_sandbox/books").json()["charged"]["AGR-UP-REF"] == 3_800

    found = world.unionpay.query_refund(out_refund_no=first)
    assert (found.state, found.amount, found.out_trade_no, found.refund_id) == ("succeeded", 1_200, number,
                                                                              refund.refund_id)
    assert world.unionpay.query_refund(out_refund_no=second).state == "not_found"
    with pytest.raises(remote.Refused) as unknown:
        world.unionpay.refund(out_trade_no=no(), out_refund_no=no(), amount=1, total=1)
    assert unknown.value.code == "34"


def test_the_daily_file_lists_payments_and_refunds_in_fen(world):
    small, big, undone = no(), no(), no()
    paid = world.unionpay.pay(out_trade_no=small, amount=1, auth_code=world.token(), description="零钱")
    world.unionpay.pay(out_trade_no=big, amount=9_899_999, auth_code=world.token(), description="手术")
    wait_until(lambda: world.unionpay.query(out_trade_no=big).state == "paid")
    world.unionpay.refund(out_trade_no=big, out_refund_no=f"{big}R", amount=1_230, total=9_899_999)
    world.unionpay.pay(out_trade_no=undone, amount=1_230, auth_code=world.token(), description="药费")
    world.unionpay.reverse(out_trade_no=undone)

    rows = [r for r in world.unionpay.bill(day=paid.paid_at.date()) if r.out_trade_no in (small, big, undone)]
    summary = sorted((r.out_trade_no, r.kind, r.amount, r.out_refund_no) for r in rows)
    assert summary == sorted([(small, "pay", 1, None), (big, "pay", 9_899_999, None), (big, "refund", 1_230, f"{big}R"),
                              (undone, "pay", 1_230, None), (undone, "refund", 1_230, None)])


def test_a_timeout_is_unknown_and_the_query_then_tells_the_truth(world):
    number = no()
    with world.faults(timeout=1, hang_seconds=1.5), pytest.raises(remote.OutcomeUnknown, match="no answer"):
        world.quick.pay(out_trade_no=number, amount=800, auth_code=world.token(), description="药费")
    assert wait_until(lambda: world.unionpay.query(out_trade_no=number).state == "paid", timeout=5)


def test_a_lost_reply_is_unknown_though_the_payment_was_made(world):
    number = no()
    with world.faults(lost_reply=1, hang_seconds=1.5), pytest.raises(remote.OutcomeUnknown, match="no answer"):
        world.quick.pay(out_trade_no=number, amount=900, auth_code=world.token(), description="药费")
    assert world.unionpay.query(out_trade_no=number).state == "paid"


def test_the_error_fault_and_a_system_error_are_told_apart(world):
    number, token = no(), world.token()
    with world.faults(error=1):
        with pytest.raises(remote.Refused) as refused:  # respCode 01: failed, nothing done
            world.unionpay.pay(out_trade_no=number, amount=700, auth_code=token, description="药费")
        with pytest.raises(remote.OutcomeUnknown, match="respCode 03"):  # a query that failed: ask again
            world.unionpay.query(out_trade_no=number)
    assert refused.value.code == "01"
    assert world.unionpay.query(out_trade_no=number).state == "not_found"
    with pytest.raises(remote.OutcomeUnknown, match="respCode 03"):
        world.unionpay.pay(out_trade_no=number, amount=700, auth_code=PLATFORM_DOWN, description="药费")
    assert world.unionpay.pay(out_trade_no=number, amount=700, auth_code=token, description="药费").state == "paid"


@pytest.mark.parametrize("code", ["03", "04", "05"])
def test_resp_codes_03_to_05_are_unknown(world, code):
    """A gateway that answers every request, correctly signed, with ``code``."""
    gateway = FastAPI()

    @gateway.post("/gateway/api/{endpoint}")
    def answer(endpoint: str) -> Response:
        fields = wire.sign({"version": "5.1.0", "respCode": code, "respMsg": "交易状态未明", "merId": world.creds.merchant_id},
                           world.creds.channel_key)
        return Response(urlencode(fields), media_type="application/x-www-form-urlencoded")

    with serve_app(gateway) as base, UnionPay(base, world.creds, notify_url=world.notify_url) as unionpay:
        with pytest.raises(remote.OutcomeUnknown, match=f"respCode {code}"):
            unionpay.pay(out_trade_no=no(), amount=100, auth_code=world.token(), description="药费")
        with pytest.raises(remote.OutcomeUnknown, match=f"respCode {code}"):
            unionpay.reverse(out_trade_no=no())


def test_an_answer_whose_signature_fails_is_unknown_and_a_badly_signed_request_refused(world):
    stranger = credentials.create("unionpay")
    number = no()
    fooled = UnionPay(world.base, dataclasses.replace(world.creds, channel_public=stranger.channel_public),
                      notify_url=world.notify_url)
    with fooled, pytest.raises(remote.OutcomeUnknown, match="signature"):
        fooled.pay(out_trade_no=number, amount=600, auth_code=world.token(), description="药费")
    assert world.unionpay.query(out_trade_no=number).state == "paid"  # it was done: the saga finds out by query
    impostor = UnionPay(world.base, dataclasses.replace(world.creds, merchant_key=stranger.merchant_key),
                        notify_url=world.notify_url)
    with impostor, pytest.raises(remote.Refused) as refused:
        impostor.query(out_trade_no=number)
    assert refused.value.code == "11"


@pytest.mark.parametrize(("fen", "text"), [(1, "1"), (1_230, "1230"), (9_999_999, "9999999")])
def test_txn_amt_is_fen_exactly(fen, text):
    assert wire.to_fen_text(fen) == text and wire.from_fen_text(text, "txnAmt") == fen


@pytest.mark.parametrize("bad", ["12.30", "-1", "1e3", "", " 1", None, 12])
def test_amounts_that_are_not_fen_digits_are_refused(bad):
    with pytest.raises(ValueError, match="txnAmt"):
        wire.from_fen_text(bad, "txnAmt")
    for fen in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="fen"):
            wire.to_fen_text(fen)


def test_order_numbers_must_suit_unionpay(world):
    for bad in ("short", "has-dash-123", "has_underscore_1", "x" * 41):
        with pytest.raises(ValueError, match="orderId"):
            world.unionpay.query(out_trade_no=bad)
