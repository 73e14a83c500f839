"""The Alipay adapter against the Alipay sandbox, both over real HTTP (uvicorn), with faults injected."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from smartcare.payment import remote
from smartcare.payment.channels import credentials
from smartcare.payment.channels.alipay import AliPay, from_yuan, to_yuan
from smartcare.payment.sandbox.alipay import create_app
from smartcare.payment.sandbox.channel import BooksError
from tests.payment.channel_support import (
    NotificationReceiver,
    TokenRedeemer,
    wait_until,
)
from tests.payment.sandbox_support import serve_app

PLATFORM_DOWN = "token-while-the-platform-is-down"


class Tap:
    """The adapter's notification side, keeping each raw body so that a test can tamper with a real one."""

    def __init__(self, channel: AliPay):
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
    alipay: AliPay  # patient (5 s)
    quick: AliPay  # gives up after 0.5 s, for the faults

    def token(self, payer: str = "AGR-ALI-1") -> str:
        return self.tokens.add(f"tok-{uuid.uuid4().hex}", payer)

    @contextlib.contextmanager
    def faults(self, **settings):
        httpx.put(f"{self.base}/_sandbox/faults", json=settings).raise_for_status()
        try:
            yield
        finally:
            httpx.put(f"{self.base}/_sandbox/faults", json={}).raise_for_status()


@pytest.fixture(scope="module")
def world():
    creds = credentials.create("alipay")
    tokens = TokenRedeemer()

    async def redeem(token: str) -> str | None:
        if token == PLATFORM_DOWN:
            raise BooksError("SYSTEM_ERROR", "token redemption failed: ConnectTimeout")
        return await tokens(token)

    with serve_app(create_app(credentials=creds, redeem=redeem, password_seconds=0.3)) as base:
        tap = Tap(AliPay(base, creds, notify_url="http://unused.invalid/"))
        receiver = NotificationReceiver(tap)
        with serve_app(receiver.app) as notify_base:
            notify_url = f"{notify_base}/notify"
            with AliPay(base, creds, notify_url=notify_url, timeout=5) as alipay, \
                    AliPay(base, creds, notify_url=notify_url, timeout=0.5) as quick:
                yield World(base, creds, tokens, receiver, tap, notify_url, alipay, quick)


def no() -> str:
    return f"ALI{uuid.uuid4().hex[:20]}"


def test_pay_is_paid_once_per_number_and_notified_with_a_verified_signature(world):
    number = no()
    order = world.alipay.pay(out_trade_no=number, amount=1_230, auth_code=world.token("AGR-ALI-7"), description="门诊缴费")
    assert (order.state, order.amount, order.payer) == ("paid", 1_230, "AGR-ALI-7")
    assert order.transaction_id and order.paid_at is not None
    unused = world.token()
    again = world.alipay.pay(out_trade_no=number, amount=1_230, auth_code=unused, description="门诊缴费")
    assert again.transaction_id == order.transaction_id and again.state == "paid"
    assert unused not in world.tokens.redeemed
    assert httpx.get(f"{world.base}/_sandbox/books").json()["charged"]["AGR-ALI-7"] == 1_230
    with pytest.raises(remote.Refused) as clash:  # the same number with another amount is another order
        world.alipay.pay(out_trade_no=number, amount=1_231, auth_code=world.token(), description="门诊缴费")
    assert clash.value.code == "ACQ.CONTEXT_INCONSISTENT"

    notified = wait_until(lambda: world.receiver.verified(number))
    assert notified[0].order.state == "paid" and notified[0].order.amount == 1_230
    assert notified[0].order.transaction_id == order.transaction_id
    assert world.alipay.query(out_trade_no=number) == order


def test_a_tampered_notification_is_refused_as_sign_error(world):
    number = no()
    world.alipay.pay(out_trade_no=number, amount=2_000, auth_code=world.token(), description="检查费")
    wait_until(lambda: world.receiver.verified(number))
    genuine = next(b for b in world.tap.bodies if f"out_trade_no={number}".encode() in b)
    fields = dict(parse_qsl(genuine.decode()))
    assert world.alipay.read_notification({}, genuine).order.amount == 2_000
    tampered = urlencode({**fields, "total_amount": "2000.00"}).encode()
    with pytest.raises(remote.Refused) as refused:
        world.alipay.read_notification({}, tampered)
    assert refused.value.code == "SIGN_ERROR"
    answer = httpx.post(world.notify_url, content=tampered,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.text == "fail" and world.receiver.refused()[-1].code == "SIGN_ERROR"


def test_an_invalid_payment_code_is_refused_and_the_order_failed(world):
    number = no()
    with pytest.raises(remote.Refused) as refused:
        world.alipay.pay(out_trade_no=number, amount=500, auth_code="no-such-code", description="挂号费")
    assert refused.value.code == "ACQ.PAYMENT_AUTH_CODE_INVALID"
    assert world.alipay.query(out_trade_no=number).state == "failed"


def test_above_the_password_limit_the_order_is_paying_then_paid_and_notified(world):
    number = no()
    order = world.alipay.pay(out_trade_no=number, amount=100_001, auth_code=world.token(), description="住院押金")
    assert order.state == "paying"
    assert wait_until(lambda: world.alipay.query(out_trade_no=number).state == "paid")
    assert wait_until(lambda: world.receiver.verified(number))[0].order.amount == 100_001


def test_reverse_closes_an_unknown_number_and_returns_a_paid_order(world):
    unknown = no()
    assert world.alipay.reverse(out_trade_no=unknown).state == "failed"
    with pytest.raises(remote.Refused) as refused:
        world.alipay.pay(out_trade_no=unknown, amount=300, auth_code=world.token(), description="药费")
    assert refused.value.code == "ACQ.TRADE_HAS_CLOSE"

    paid = no()
    world.alipay.pay(out_trade_no=paid, amount=4_500, auth_code=world.token("AGR-ALI-REV"), description="药费")
    assert world.alipay.reverse(out_trade_no=paid).state == "reversed"
    assert world.alipay.reverse(out_trade_no=paid).state == "reversed"  # idempotent
    assert world.alipay.query(out_trade_no=paid).state == "reversed"
    assert httpx.get(f"{world.base}/_sandbox/books").json()["charged"]["AGR-ALI-REV"] == 0


def test_partial_refunds_are_idempotent_by_number_and_never_exceed_the_payment(world):
    number, first, second = no(), no(), no()
    world.alipay.pay(out_trade_no=number, amount=5_000, auth_code=world.token("AGR-ALI-REF"), description="检验费")
    refund = world.alipay.refund(out_trade_no=number, out_refund_no=first, amount=1_200, total=5_000)
    assert (refund.state, refund.amount) == ("succeeded", 1_200)
    assert world.alipay.refund(out_trade_no=number, out_refund_no=first, amount=1_200, total=5_000) == refund
    with pytest.raises(remote.Refused) as refused:
        world.alipay.refund(out_trade_no=number, out_refund_no=second, amount=3_801, total=5_000)
    assert refused.value.code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    assert httpx.get(f"{world.base}/_sandbox/books").json()["charged"]["AGR-ALI-REF"] == 3_800

    found = world.alipay.query_refund(out_refund_no=first)
    assert (found.state, found.amount, found.out_trade_no) == ("succeeded", 1_200, number)
    assert world.alipay.query_refund(out_refund_no=second).state == "not_found"


def test_the_daily_bill_lists_payments_and_refunds_in_fen(world):
    small, big, reversed_ = no(), no(), no()
    paid = world.alipay.pay(out_trade_no=small, amount=1, auth_code=world.token(), description="零钱")
    world.alipay.pay(out_trade_no=big, amount=9_999_999 - 100_000, auth_code=world.token(), description="手术")
    wait_until(lambda: world.alipay.query(out_trade_no=big).state == "paid")
    world.alipay.refund(out_trade_no=big, out_refund_no=f"{big}R", amount=1_230, total=9_899_999)
    world.alipay.pay(out_trade_no=reversed_, amount=1_230, auth_code=world.token(), description="药费")
    world.alipay.reverse(out_trade_no=reversed_)

    rows = [r for r in world.alipay.bill(day=paid.paid_at.date()) if r.out_trade_no in (small, big, reversed_)]
    summary = sorted((r.out_trade_no, r.kind, r.amount, r.out_refund_no) for r in rows)
    assert summary == sorted([(small, "pay", 1, None), (big, "pay", 9_899_999, None), (big, "refund", 1_230, f"{big}R"),
                              (reversed_, "pay", 1_230, None), (reversed_, "refund", 1_230, None)])


def test_a_timeout_is_unknown_and_the_query_then_tells_the_truth(world):
    number = no()
    with world.faults(timeout=1, hang_seconds=1.5), pytest.raises(remote.OutcomeUnknown, match="no answer"):
        world.quick.pay(out_trade_no=number, amount=800, auth_code=world.token(), description="药费")
    assert wait_until(lambda: world.alipay.query(out_trade_no=number).state == "paid", timeout=5)


def test_a_lost_reply_is_unknown_though_the_payment_was_made(world):
    number = no()
    with world.faults(lost_reply=1, hang_seconds=1.5), pytest.raises(remote.OutcomeUnknown, match="no answer"):
        world.quick.pay(out_trade_no=number, amount=900, auth_code=world.token(), description="药费")
    assert world.alipay.query(out_trade_no=number).state == "paid"


def test_code_20000_and_system_errors_are_unknown_not_refusals(world):
    number, token = no(), world.token()
    with world.faults(error=1), pytest.raises(remote.OutcomeUnknown, match="20000"):
        world.alipay.pay(out_trade_no=number, amount=700, auth_code=token, description="药费")
    assert world.alipay.query(out_trade_no=number).state == "not_found"  # nothing was done
    with pytest.raises(remote.OutcomeUnknown, match="ACQ.SYSTEM_ERROR"):
        world.alipay.pay(out_trade_no=number, amount=700, auth_code=PLATFORM_DOWN, description="药费")
    assert world.alipay.pay(out_trade_no=number, amount=700, auth_code=token, description="药费").state == "paid"


def test_an_answer_whose_signature_fails_is_unknown_and_a_badly_signed_request_refused(world):
    stranger = credentials.create("alipay")
    number = no()
    fooled = AliPay(world.base, dataclasses.replace(world.creds, channel_public=stranger.channel_public),
                    notify_url="http://unused.invalid/")
    with fooled, pytest.raises(remote.OutcomeUnknown, match="signature"):
        fooled.pay(out_trade_no=number, amount=600, auth_code=world.token(), description="药费")
    assert world.alipay.query(out_trade_no=number).state == "paid"  # it was done: the saga finds out by query
    impostor = AliPay(world.base, dataclasses.replace(world.creds, merchant_key=stranger.merchant_key),
                      notify_url="http://unused.invalid/")
    with impostor, pytest.raises(remote.Refused) as refused:
        impostor.query(out_trade_no=number)
    assert refused.value.code == "isv.invalid-signature"


@pytest.mark.parametrize(("fen", "text"), [(1, "0.01"), (1_230, "12.30"), (9_999_999, "99999.99"), (100, "1.00")])
def test_yuan_and_fen_convert_exactly(fen, text):
    assert to_yuan(fen) == text and from_yuan(text, "total_amount") == fen


@pytest.mark.parametrize("bad", ["12.345", "1e3", "", " 1.00", "12.30元", "1,234.00", None, 12.3])
def test_amounts_that_are_not_plain_yuan_are_refused(bad):
    with pytest.raises(ValueError, match="total_amount"):
        from_yuan(bad, "total_amount")
    for fen in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="fen"):
            to_yuan(fen)
