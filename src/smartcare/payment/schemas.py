"""API models of mixed payment. Money is integer fen everywhere; bad input names the field."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: what a hospital's own numbers (bills, refunds) may contain: they appear in URL paths
NUMBER = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
#: 100 million yuan: far above any real charge, and items × quantity × price stays inside bigint.
MAX_PRICE = 10**10


def _no_nul(value):
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    code: str = Field(min_length=1, max_length=32, description="catalogue code of the charge")
    name: str = Field(min_length=1, max_length=200)
    category: Literal["甲", "乙", "丙"]
    unit_price: int = Field(ge=0, le=MAX_PRICE, description="fen")
    quantity: int = Field(ge=1, le=100_000)
    price_cap: int | None = Field(None, ge=0, le=MAX_PRICE, description="the insurance's highest price for it, fen")

    _text = field_validator("code", "name")(_no_nul)


class BillIn(BaseModel):
    """A hospital's bill. ``bill_no`` is the hospital's own number: sending it again is the same bill."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    bill_no: str = Field(min_length=1, max_length=64, pattern=NUMBER,
                         description="letters, digits, '.', '_' and '-' (it appears in URLs)")
    empi_id: str | None = Field(None, max_length=20, description="the patient, from a scanned health card")
    encounter_id: str | None = Field(None, max_length=64, pattern=NUMBER,
                                     description="the hospital's visit number this bill charges (HL7 PV1-19)")
    insurance_type: Literal["employee", "resident", "none"] = "none"
    items: list[ItemIn] = Field(min_length=1, max_length=500)

    _text = field_validator("bill_no", "empi_id", "encounter_id")(_no_nul)


class ItemOut(ItemIn):
    line: int
    amount: int


class BillOut(BaseModel):
    bill_no: str
    facility_code: str
    empi_id: str | None
    encounter_id: str | None = None
    insurance_type: str
    hospital_level: int
    total: int
    state: str
    items: list[ItemOut]


class LineOut(BaseModel):
    payer: str
    rule: str
    amount: int
    item: str | None


class PreSettlementOut(BaseModel):
    """What each payer would pay (2206 pre-settlement): nothing is booked."""

    bill_no: str
    medfee_sumamt: int
    fulamt_ownpay_amt: int
    overlmt_selfpay: int
    preselfpay_amt: int
    inscp_scp_amt: int
    act_pay_dedc: int
    hifp_pay: int
    acct_pay: int
    psn_cash_pay: int
    lines: list[LineOut]


class SettleIn(BaseModel):
    """Pay a bill. The patient's share (after insurance) is paid through ``channel`` with the one-time
    payment code the terminal read from the patient's health-card QR (``payments`` of /verify)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    channel: Literal["wechat", "alipay", "unionpay"] | None = None
    auth_code: str | None = Field(None, pattern=r"^[0-9]{16,24}$")


class PayerOut(BaseModel):
    payer: Literal["medical_insurance", "commercial_insurance", "cash"]
    status: str
    amount: int | None = Field(description="fen; null until fixed")
    reference: str | None = Field(None, description="the party's number: setl_id, claim_no or transaction_id")


class SettlementOut(BaseModel):
    settlement_no: str
    bill_no: str
    state: Literal["running", "completed", "compensating", "compensated"]
    total: int
    fund_pay: int | None
    account_pay: int | None
    payers: list[PayerOut]
    refunded: int
    reason: str | None
    channel: str | None


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    refund_no: str = Field(min_length=1, max_length=64, pattern=NUMBER,
                           description="the hospital's number: the idempotency key")
    amount: int = Field(gt=0, le=MAX_PRICE * 500, description="fen")
    reason: str = Field("", max_length=200)

    _text = field_validator("refund_no", "reason")(_no_nul)


class RefundOut(BaseModel):
    refund_no: str
    settlement_no: str
    amount: int
    state: Literal["processing", "succeeded", "failed"]
    parts: list[PayerOut]


class ReconRunOut(BaseModel):
    party: str
    matched: int
    differences: int
    error: str | None


class ReconItemOut(BaseModel):
    id: int
    day: date
    party: str
    reference: str
    kind: str
    platform_amount: int | None
    party_amount: int | None
    reason: str
    state: str
    resolution: str | None
    resolved_by: str | None


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    resolution: str = Field(min_length=1, max_length=500, description="what was done about it")

    _text = field_validator("resolution")(_no_nul)


class MyBreakdownOut(BaseModel):
    """Each payer's share now (pre-settlement; nothing booked). With ``direct_pay`` the commercial insurer
    pays part of ``cash_pay`` when the bill is paid (how much, it decides then)."""

    fund_pay: int
    account_pay: int
    cash_pay: int
    direct_pay: bool
    error: str | None = None


class MyBillOut(BaseModel):
    facility_code: str
    bill_no: str
    card_no: str = Field(description="the caller's card of the patient: pay with it")
    patient: str = Field(description="the patient's name, masked")
    insurance_type: str
    total: int
    state: str
    items: list[ItemOut]
    breakdown: MyBreakdownOut | None = Field(None, description="open bills only")
    settlement: SettlementOut | None = Field(None, description="the latest attempt to pay it")
    channels: list[str] = Field(description="the card's bound channels that can pay it")


class MyPayIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    card_no: str = Field(min_length=1, max_length=20)
    channel: Literal["wechat", "alipay", "unionpay"]
