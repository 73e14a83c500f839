"""Tables of the electronic health card (schema ``healthcard``); DDL in migration 0007."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, DateTime, ForeignKey, Integer, LargeBinary, SmallInteger, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "healthcard"


class IssuerKey(Base):
    """A key pair that signs codes. Rotation retires the active key; a withdrawn key leaves the trust list."""

    __tablename__ = "issuer_key"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kid: Mapped[bytes] = mapped_column(LargeBinary)
    alg: Mapped[str] = mapped_column(String(16))
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    private_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Card(Base):
    """One resident's electronic health card. The QR carries ``token``, never the person."""

    __tablename__ = "card"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    card_no: Mapped[str] = mapped_column(String(20), unique=True)
    token: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    person_id: Mapped[int] = mapped_column(BigInteger)
    empi_id: Mapped[str] = mapped_column(String(20))
    name_masked: Mapped[str] = mapped_column(String(60))
    phone_masked: Mapped[str | None] = mapped_column(String(20))
    birth_date: Mapped[date] = mapped_column(Date)
    pin_hash: Mapped[str | None] = mapped_column(Text)
    pin_failures: Mapped[int] = mapped_column(SmallInteger, default=0)
    state: Mapped[str] = mapped_column(String(12))
    reissued_from: Mapped[int | None] = mapped_column(ForeignKey(f"{SCHEMA}.card.id"))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Holder(Base):
    """Who holds a card on their phone: the resident themself, or a guardian for a child."""

    __tablename__ = "holder"
    __table_args__ = {"schema": SCHEMA}

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.card.id"), primary_key=True)
    relation: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CardEvent(Base):
    """Append-only lifecycle of a card (issue, freeze, unfreeze, lost, reissue, revoke)."""

    __tablename__ = "card_event"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.card.id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    action: Mapped[str] = mapped_column(String(16))
    from_state: Mapped[str | None] = mapped_column(String(12))
    to_state: Mapped[str] = mapped_column(String(12))
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text, default="")


class Otp(Base):
    """A one-time SMS code, kept only as keyed hashes."""

    __tablename__ = "otp"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    phone_hash: Mapped[str] = mapped_column(String(64))
    code_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(SmallInteger, default=0)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SmsMessage(Base):
    """What the demo SMS gateway 'sent' (shown on the console); the phone is stored masked."""

    __tablename__ = "sms_outbox"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    phone_masked: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PaymentBinding(Base):
    """A payment channel bound to a card: the channel's agreement number, never an account number."""

    __tablename__ = "payment_binding"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    card_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.card.id"))
    channel: Mapped[str] = mapped_column(String(16))
    agreement_no: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    unbound_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
