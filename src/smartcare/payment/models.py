"""Tables of mixed payment (schema ``payment``); DDL in migration 0008. Balances are kept by database
triggers from the transfers; nothing else writes them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Computed, DateTime, ForeignKey, Integer, SmallInteger, String, func
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
