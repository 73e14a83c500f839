"""API models of the electronic health card. Answers carry masked names only."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from smartcare.healthcard import service

Step = Literal[service.STEPS]
UseChannel = Literal[service.USE_CHANNELS]


class OtpIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    phone: str = Field(min_length=11, max_length=20)


class IssueIn(BaseModel):
    """Real-name registration: the holder's phone received the one-time code."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str = Field(min_length=1, max_length=60)
    id_number: str = Field(min_length=15, max_length=24)
    phone: str = Field(min_length=11, max_length=20)
    otp: str = Field(min_length=4, max_length=8)
    relation: Literal["self", "guardian"] = "self"
    pin: str | None = Field(None, min_length=6, max_length=6, description="6 digits; needed for a printed static code")


class CardOut(BaseModel):
    card_no: str
    empi_id: str
    name_masked: str
    state: str
    relation: str | None = None
    issued_at: datetime
    channels: list[str] = []


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    reason: str = Field("", max_length=200)


class PinIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pin: str = Field(min_length=6, max_length=6)


class ChannelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: Literal["wechat", "alipay", "unionpay", "ecny"]


class CodeOut(BaseModel):
    text: str = Field(description="what the QR carries (EHC1:…)")
    kind: Literal["dynamic", "static"]
    expires_at: int = Field(description="Unix seconds")
    channels: list[str]


class VerifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    code: str = Field(min_length=5, max_length=1000)
    step: Step = "registration"
    channel: UseChannel = "window"
    pin: str | None = Field(None, max_length=6)


class VerifyOut(BaseModel):
    card_no: str
    empi_id: str
    name_masked: str
    kind: str
    expires_at: int
    visit_cards: list[str] = Field(description="this hospital's own visit card numbers of the patient")
    payments: dict[str, str] = Field(description="payment channel → one-time payment token (digits)")


class LookupOut(BaseModel):
    card_no: str
    empi_id: str
    name_masked: str
    state: str


class UseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    card_no: str = Field(min_length=1, max_length=20)
    step: Step
    channel: UseChannel


class RedeemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: Literal["wechat", "alipay", "unionpay", "ecny"]
    token: str = Field(pattern=r"^[0-9]{16,19}$", description="digits, as a string (JSON numbers lose them)")


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alg: Literal["Ed25519", "SM2"] = "Ed25519"


class StatsOut(BaseModel):
    day: date
    issued: int
    by_state: dict[str, int]
    issued_today: int
    active_today: int
    uses_today: int
    by_step: list[tuple[str, int]]
    by_channel: list[tuple[str, int]]
    by_hospital: list[tuple[str, int]]
