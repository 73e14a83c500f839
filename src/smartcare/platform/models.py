"""Tables of the shared kernel (schema ``platform``): users, API clients, audit log, bus."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "platform"


class UserAccount(Base):
    __tablename__ = "user_account"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    password_hash: Mapped[str] = mapped_column(Text)
    roles: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    #: Staff and doctors belong to a facility; residents may point at their synthetic/EMPI identity later.
    facility_code: Mapped[str | None] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiClient(Base):
    """A hospital system that signs its requests with HMAC-SHA256. The shared secret is stored sealed."""

    __tablename__ = "api_client"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    facility_code: Mapped[str | None] = mapped_column(String(32))
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RequestNonce(Base):
    """Nonces seen inside the replay window; the primary key makes a replay fail atomically."""

    __tablename__ = "request_nonce"
    __table_args__ = (Index("ix_request_nonce_seen_at", "seen_at"), {"schema": SCHEMA})

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditLog(Base):
    """Append-only and hash-chained: UPDATE, DELETE and TRUNCATE are refused by triggers (see migration)."""

    __tablename__ = "audit_log"
    __table_args__ = {"schema": SCHEMA}

    #: From ``platform.audit_log_id_seq``, taken under the append lock so ids follow the chain.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict] = mapped_column(JSONB)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class BusMessage(Base):
    """The outbox: every event once, written in the publisher's transaction (both transports)."""

    __tablename__ = "bus_message"
    __table_args__ = (
        # Only the NATS relay's backlog is indexed, so the index stays as small as the backlog.
        Index("ix_bus_message_unrelayed", "id", postgresql_where=text("relayed_at IS NULL")),
        {"schema": SCHEMA},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    #: Publisher-chosen id; publishing the same id twice is a no-op (idempotent publish).
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    topic: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict] = mapped_column(JSONB)
    published_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    #: When the event left the outbox. The PostgreSQL transport fans out in the publishing transaction,
    #: so its rows take the default; the NATS transport writes NULL and its relay sets this once
    #: JetStream has stored the event.
    relayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), server_default=func.now())


class BusSubscription(Base):
    __tablename__ = "bus_subscription"
    __table_args__ = {"schema": SCHEMA}

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: Topic pattern with ``*`` as wildcard, e.g. ``registry.facility.*``.
    topic_pattern: Mapped[str] = mapped_column(String(200), primary_key=True)


class BusDelivery(Base):
    """One row per (message, consumer): the durable queue that workers claim with SKIP LOCKED.

    With NATS the row is the consumer's idempotency mark instead: it is inserted ('done') in the
    handler's own transaction, or ('dead') when the attempts are exhausted, and a replay sets it
    back to 'pending' for the NATS worker to handle like a PostgreSQL delivery.
    """

    __tablename__ = "bus_delivery"
    __table_args__ = (
        UniqueConstraint("message_id", "consumer"),
        CheckConstraint("state IN ('pending', 'done', 'dead')", name="state"),
        Index("ix_bus_delivery_ready", "consumer", "available_at", postgresql_where=text("state = 'pending'")),
        {"schema": SCHEMA},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.bus_message.id", ondelete="CASCADE"))
    consumer: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    available_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
