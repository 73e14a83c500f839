"""Tables of the synthetic region (schema ``synth``): the ground-truth population the generator made.

Later capabilities derive their inputs (visit cards with realistic errors, documents, messages, bills)
from these rows; the truth stays here so that matching and quality can be scored against it.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, DateTime, Float, ForeignKey, Index, Integer, String, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "synth"


class Resident(Base):
    __tablename__ = "resident"
    __table_args__ = (Index("ix_resident_district", "district_code"), {"schema": SCHEMA})

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    sex: Mapped[str] = mapped_column(String(1))
    birth_date: Mapped[date] = mapped_column(Date)
    id_number: Mapped[str] = mapped_column(String(18), unique=True)
    phone: Mapped[str] = mapped_column(String(11))
    district_code: Mapped[str] = mapped_column(String(6))
    address: Mapped[str] = mapped_column(String(300))
    ethnicity: Mapped[str] = mapped_column(String(2))
    family_id: Mapped[int] = mapped_column(BigInteger)
    guardian_id: Mapped[int | None] = mapped_column(BigInteger)


class SeedRun(Base):
    """One completed generation: which seed and scale, how many rows, how long it took."""

    __tablename__ = "seed_run"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seed: Mapped[int] = mapped_column(Integer)
    scale: Mapped[str] = mapped_column(String(16))
    residents: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class VisitCard(Base):
    """A hospital's own patient record (就诊卡), with the registration errors real ones have."""

    __tablename__ = "visit_card"
    __table_args__ = (UniqueConstraint("facility_code", "card_no"), {"schema": SCHEMA})

    card_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    facility_code: Mapped[str] = mapped_column(String(32))
    card_no: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(60))
    id_number: Mapped[str | None] = mapped_column(String(24))
    sex: Mapped[str] = mapped_column(String(1))
    birth_date: Mapped[date | None] = mapped_column(Date)
    phone: Mapped[str | None] = mapped_column(String(20))
    address: Mapped[str | None] = mapped_column(String(300))
    registered_at: Mapped[date] = mapped_column(Date)


class VisitCardTruth(Base):
    """Ground truth of a card, kept apart: matching never reads it, scoring does."""

    __tablename__ = "visit_card_truth"
    __table_args__ = {"schema": SCHEMA}

    card_id: Mapped[str] = mapped_column(ForeignKey(f"{SCHEMA}.visit_card.card_id", ondelete="CASCADE"), primary_key=True)
    resident_id: Mapped[int] = mapped_column(BigInteger, index=True)
    errors: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
