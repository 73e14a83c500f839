"""Tables of mixed payment (schema ``payment``); DDL in migrations 0008–0010. Balances are kept by database
triggers from the transfers; nothing else writes them."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Boolean, Computed, Date, DateTime, ForeignKey, Integer, SmallInteger, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "payment"


class Account(Base):
    """A double-entry account in fen. Balance = credits − debits (or the reverse, by the account's side)."""

    __tablename__ = "account"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    code: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(24))
    name: Mapped[str] = mapped_column(String(200), default="")
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_within_credits: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Transfer(Base):
    """An immutable movement of ``amount`` fen from the debit account to the credit account."""

    __tablename__ = "transfer"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    debit_account_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.account.id"))
    credit_account_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.account.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    pending_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey(f"{SCHEMA}.transfer.id"))
    code: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Bill(Base):
    """A hospital bill, itemised; its total is the sum of its items (checked by the database)."""

    __tablename__ = "bill"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    facility_code: Mapped[str] = mapped_column(String(32))
    bill_no: Mapped[str] = mapped_column(String(64))
    empi_id: Mapped[str | None] = mapped_column(String(20))
    encounter_id: Mapped[str | None] = mapped_column(String(64))  # the hospital's visit number (PV1-19)
    insurance_type: Mapped[str] = mapped_column(String(10))
    hospital_level: Mapped[int] = mapped_column(SmallInteger)
    total: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(12), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BillItem(Base):
    __tablename__ = "bill_item"
    __table_args__ = {"schema": SCHEMA}

    bill_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.bill.id"), primary_key=True)
    line: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str] = mapped_column(String(1))
    unit_price: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer)
    price_cap: Mapped[int | None] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger, Computed("unit_price * quantity"))


class InsuranceYear(Base):
    """An insured person's accumulators for one year: what the deductible and the fund have taken."""

    __tablename__ = "insurance_year"
    __table_args__ = {"schema": SCHEMA}

    empi_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    year: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    insurance_type: Mapped[str] = mapped_column(String(10), primary_key=True)
    deductible_used: Mapped[int] = mapped_column(BigInteger, default=0)
    fund_paid: Mapped[int] = mapped_column(BigInteger, default=0)


class Settlement(Base):
    """One attempt to pay a bill by its payers: the saga's state, one status per payer, the parties'
    numbers. Shares sum to the total (check constraint); the ledger must agree when it ends (trigger)."""

    __tablename__ = "settlement"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    settlement_no: Mapped[str] = mapped_column(String(32), unique=True)
    bill_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.bill.id"))
    facility_code: Mapped[str] = mapped_column(String(32))
    empi_id: Mapped[str | None] = mapped_column(String(20))
    total: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(14), default="running")
    step: Mapped[str] = mapped_column(String(16), default="presettle")
    reason: Mapped[str | None] = mapped_column(Text)
    hifp_pay: Mapped[int | None] = mapped_column(BigInteger)
    acct_pay: Mapped[int | None] = mapped_column(BigInteger)
    insurer_pay: Mapped[int | None] = mapped_column(BigInteger)
    cash_pay: Mapped[int | None] = mapped_column(BigInteger)
    act_pay_dedc: Mapped[int] = mapped_column(BigInteger, default=0)
    medins_status: Mapped[str] = mapped_column(String(12), default="pending")
    insurer_status: Mapped[str] = mapped_column(String(12), default="pending")
    cash_status: Mapped[str] = mapped_column(String(12), default="pending")
    medins_msgid: Mapped[str | None] = mapped_column(String(30))
    medins_attempt: Mapped[int] = mapped_column(SmallInteger, default=0)
    setl_id: Mapped[str | None] = mapped_column(String(40))
    insurer: Mapped[str | None] = mapped_column(String(32))
    insurer_auth_no: Mapped[str | None] = mapped_column(String(64))
    insurer_claim_no: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str | None] = mapped_column(String(10))
    auth_code: Mapped[str | None] = mapped_column(String(24))
    cash_attempt: Mapped[int] = mapped_column(SmallInteger, default=0)
    transaction_id: Mapped[str | None] = mapped_column(String(64))
    refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SettlementEvent(Base):
    """What happened to a settlement, step by step (append-only)."""

    __tablename__ = "settlement_event"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    settlement_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.settlement.id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.clock_timestamp())
    step: Mapped[str] = mapped_column(String(24))
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict] = mapped_column(JSONB, default=dict)


class Refund(Base):
    """A refund of a settlement, split over the payers in reverse order (cash first)."""

    __tablename__ = "refund"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    settlement_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.settlement.id"))
    refund_no: Mapped[str] = mapped_column(String(64))
    amount: Mapped[int] = mapped_column(BigInteger)
    cash_part: Mapped[int] = mapped_column(BigInteger)
    insurer_part: Mapped[int] = mapped_column(BigInteger)
    medins_part: Mapped[int] = mapped_column(BigInteger)
    cash_status: Mapped[str] = mapped_column(String(12), default="pending")
    insurer_status: Mapped[str] = mapped_column(String(12), default="pending")
    medins_status: Mapped[str] = mapped_column(String(12), default="pending")
    state: Mapped[str] = mapped_column(String(12), default="processing")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DirectPayConsent(Base):
    """A patient's authorisation for an insurer to pay the hospital directly (商保直赔授权)."""

    __tablename__ = "direct_pay_consent"
    __table_args__ = {"schema": SCHEMA}

    empi_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    insurer: Mapped[str] = mapped_column(String(32), primary_key=True)
    granted_by: Mapped[str] = mapped_column(String(100))
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReconItem(Base):
    """A difference reconciliation found between the platform and one party, and how it was resolved."""

    __tablename__ = "recon_item"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    party: Mapped[str] = mapped_column(String(10))
    reference: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(24))
    platform_amount: Mapped[int | None] = mapped_column(BigInteger)
    party_amount: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(10), default="open")
    resolution: Mapped[str | None] = mapped_column(Text)
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ReconRun(Base):
    __tablename__ = "recon_run"
    __table_args__ = {"schema": SCHEMA}

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    party: Mapped[str] = mapped_column(String(10), primary_key=True)
    ran_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    matched: Mapped[int] = mapped_column(Integer)
    mismatched: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict] = mapped_column(JSONB, default=dict)
