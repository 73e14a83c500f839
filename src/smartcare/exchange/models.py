"""Tables of the exchange hub (schema ``exchange``); the DDL, including the day partitions of
``exchange.message``, is in migration 0003."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Integer, LargeBinary, String, Text, func
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "exchange"


class Channel(Base):
    __tablename__ = "channel"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    config: Mapped[dict] = mapped_column(JSONB)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_by: Mapped[str] = mapped_column(String(100))


class ChannelVersion(Base):
    __tablename__ = "channel_version"
    __table_args__ = {"schema": SCHEMA}

    channel_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    config: Mapped[dict] = mapped_column(JSONB)
    changed_by: Mapped[str] = mapped_column(String(100))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    comment: Mapped[str] = mapped_column(Text, default="")
    diff: Mapped[str] = mapped_column(Text, default="")


class StoredMessage(Base):
    __tablename__ = "message"
    __table_args__ = {"schema": SCHEMA}

    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(64))
    sender: Mapped[str] = mapped_column(String(100))
    facility_code: Mapped[str | None] = mapped_column(String(32))
    connector: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    message_type: Mapped[str | None] = mapped_column(String(64))
    control_id: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(String(100))
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    events: Mapped[list[str] | None] = mapped_column(ARRAY(String(64)))
    expected_deliveries: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    #: Each re-run routes again under fresh event ids, so destinations get it again on purpose.
    reruns: Mapped[int] = mapped_column(Integer, default=0)


class BadFrame(Base):
    __tablename__ = "bad_frame"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    connector: Mapped[str] = mapped_column(String(16))
    peer: Mapped[str] = mapped_column(String(100))
    problem: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)


class EventLog(Base):
    """Sink of the ``log`` destination: canonical events as delivered, for downstream readers."""

    __tablename__ = "event_log"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    destination: Mapped[str] = mapped_column(String(130))
    topic: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    source_message_id: Mapped[int | None] = mapped_column(BigInteger)
    data: Mapped[dict] = mapped_column(JSONB)
    delivered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SenderPolicy(Base):
    """Alert thresholds per hospital: silent longer than ``silent_minutes``, or errors above ``max_error_rate``."""

    __tablename__ = "sender_policy"
    __table_args__ = {"schema": SCHEMA}

    facility_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    silent_minutes: Mapped[int] = mapped_column(Integer, default=60)
    max_error_rate: Mapped[float] = mapped_column(Float, default=0.05)
