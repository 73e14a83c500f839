"""Tables of the master patient index (schema ``empi``); DDL in migrations 0005 and 0006."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, ForeignKey, SmallInteger, String, UniqueConstraint, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "empi"


class SourceIdentity(Base):
    """One hospital's record of a patient (a visit card, 就诊卡), as recorded and as normalised."""

    __tablename__ = "source_identity"
    __table_args__ = (UniqueConstraint("facility_code", "card_no"), {"schema": SCHEMA})

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    facility_code: Mapped[str] = mapped_column(String(32))
    card_no: Mapped[str] = mapped_column(String(64))
    recorded: Mapped[dict] = mapped_column(JSONB)
    norm: Mapped[dict] = mapped_column(JSONB)
    features: Mapped[dict] = mapped_column(JSONB, default=dict)  # what the field config compares
    trust: Mapped[int] = mapped_column(SmallInteger)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Person(Base):
    """A regional identity (golden record) with its EMPI id."""

    __tablename__ = "person"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    empi_id: Mapped[str] = mapped_column(String(20), unique=True)
    golden: Mapped[dict] = mapped_column(JSONB, default=dict)
    state: Mapped[str] = mapped_column(String(8), default="active")
    merged_into: Mapped[int | None] = mapped_column(ForeignKey(f"{SCHEMA}.person.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Link(Base):
    """Which person a source identity belongs to, how sure, and who said so. Every source has exactly one."""

    __tablename__ = "link"
    __table_args__ = {"schema": SCHEMA}

    source_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.source_identity.id"), primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.person.id"), index=True)
    weight: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(64))
    confirmed_by: Mapped[str | None] = mapped_column(String(100))
    linked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class History(Base):
    """Append-only (a trigger refuses UPDATE and DELETE): every link change, so each can be reversed."""

    __tablename__ = "history"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    action: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[int | None] = mapped_column(BigInteger)
    person_id: Mapped[int] = mapped_column(BigInteger)
    other_person_id: Mapped[int | None] = mapped_column(BigInteger)
    weight: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str | None] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(100))
    detail: Mapped[dict] = mapped_column(JSONB, default=dict)


class Model(Base):
    """A trained Fellegi–Sunter model (``scoring.Model`` as JSON); the newest one of a config is used."""

    __tablename__ = "model"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    config_name: Mapped[str] = mapped_column(String(100))
    params: Mapped[dict] = mapped_column(JSONB)
    records: Mapped[int]
    trained_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    trained_by: Mapped[str] = mapped_column(String(100))


class Review(Base):
    """A possible match (weight between the review and link thresholds) waiting for a person."""

    __tablename__ = "review"
    __table_args__ = (UniqueConstraint("source_id", "other_source_id"), {"schema": SCHEMA})

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.source_identity.id"))
    other_source_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.source_identity.id"))
    weight: Mapped[float] = mapped_column(Float)
    terms: Mapped[list] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(12), default="open")
    origin: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MigrationRun(Base):
    """One ``smartcare empi migrate`` of one file: its last completed stage and what it found."""

    __tablename__ = "migration_run"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source_name: Mapped[str]
    checksum: Mapped[str] = mapped_column(String(64))
    config_name: Mapped[str] = mapped_column(String(100))
    dry_run: Mapped[bool]
    stage: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(12))
    stats: Mapped[dict] = mapped_column(JSONB, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_by: Mapped[str] = mapped_column(String(100))
