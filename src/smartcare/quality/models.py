"""Tables of quality control (schema ``quality``); DDL in migration 0013."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, Date, DateTime, ForeignKey, Integer, Numeric, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "quality"


class DocumentCheck(Base):
    """The latest check of one registered document."""

    __tablename__ = "document_check"
    __table_args__ = {"schema": SCHEMA}

    record_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    facility_code: Mapped[str | None] = mapped_column(String(64))
    custodian_code: Mapped[str | None] = mapped_column(String(64))
    type_code: Mapped[str | None] = mapped_column(String(8))
    document_id: Mapped[str | None] = mapped_column(String(200))
    service_day: Mapped[date] = mapped_column(Date)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    score: Mapped[Decimal] = mapped_column(Numeric(5, 2))
    errors: Mapped[int] = mapped_column(Integer)
    warnings: Mapped[int] = mapped_column(Integer)
    applied: Mapped[dict] = mapped_column(JSONB)
    failed: Mapped[dict] = mapped_column(JSONB)
    current: Mapped[bool] = mapped_column(Boolean, default=True)


class Finding(Base):
    __tablename__ = "finding"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.document_check.record_id", ondelete="CASCADE"))
    rule_id: Mapped[str] = mapped_column(String(64))
    dimension: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(8))
    element: Mapped[str] = mapped_column(String(200))
    line: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text, default="")
