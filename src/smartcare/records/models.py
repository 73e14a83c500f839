"""Tables of the document registry and repository and of personal health records (schema ``records``);
DDL in migrations 0012 (registry, repository) and 0014 (clinical items, consent, access requests, break-glass).

The registry row holds what a document is and whose it is, by identifiers only (EMPI person, the
hospital's patient number): no name, ID number or phone. The raw document, kept once per content
hash in ``records.content``, is the only copy of the personal data.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import ARRAY, BigInteger, Date, DateTime, ForeignKey, Integer, LargeBinary, Numeric, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "records"


class Content(Base):
    """The repository: a document's bytes exactly as received, keyed by their SHA-256 (hex)."""

    __tablename__ = "content"
    __table_args__ = {"schema": SCHEMA}

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class Document(Base):
    """One registered document (XDS DocumentEntry-like). Rows are never overwritten: a replacement is a
    new row, and the one it replaces turns ``replaced`` with both linked."""

    __tablename__ = "document"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    document_id: Mapped[str] = mapped_column(String(200))  # ClinicalDocument/id: @extension, else @root
    custodian_code: Mapped[str] = mapped_column(String(64))  # as the document names its custodian
    facility_code: Mapped[str] = mapped_column(String(64))  # the hospital it belongs to on the platform
    type_code: Mapped[str] = mapped_column(String(8))  # C0001…C0053
    type_name: Mapped[str | None] = mapped_column(String(200))
    set_id: Mapped[str | None] = mapped_column(String(200))
    version_number: Mapped[int | None] = mapped_column(Integer)
    person_id: Mapped[int | None] = mapped_column(BigInteger)  # EMPI person, NULL when not resolved
    empi_id: Mapped[str | None] = mapped_column(String(20))
    patient_ref: Mapped[str | None] = mapped_column(String(64))  # the hospital's patient number it was resolved by
    author_code: Mapped[str | None] = mapped_column(String(64))
    service_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    effective_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sha256: Mapped[str] = mapped_column(ForeignKey(f"{SCHEMA}.content.sha256"))
    size_bytes: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(10), default="current")  # current | replaced
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey(f"{SCHEMA}.document.id"))
    replaced_by_id: Mapped[int | None] = mapped_column(ForeignKey(f"{SCHEMA}.document.id"))
    exchange_message_id: Mapped[int | None] = mapped_column(BigInteger)
    sender: Mapped[str] = mapped_column(String(100))


class Item(Base):
    """One clinical item read from a registered document: a diagnosis, a vital sign, a lab result, a drug …"""

    __tablename__ = "item"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey(f"{SCHEMA}.document.id"))
    person_id: Mapped[int | None] = mapped_column(BigInteger)
    facility_code: Mapped[str] = mapped_column(String(64))
    type_code: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(12))  # condition | vital | lab | medication | finding | note | time
    code: Mapped[str] = mapped_column(String(40))
    name: Mapped[str | None] = mapped_column(String(200))
    value_text: Mapped[str | None] = mapped_column(Text)
    value_number: Mapped[Decimal | None] = mapped_column(Numeric)
    unit: Mapped[str | None] = mapped_column(String(40))
    value_code: Mapped[str | None] = mapped_column(String(64))
    value_display: Mapped[str | None] = mapped_column(String(200))
    value_system: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    section: Mapped[str | None] = mapped_column(String(40))
    sensitive: Mapped[list[str]] = mapped_column(ARRAY(String(16)), default=list)  # the document's: mental, hiv, reproductive
    position: Mapped[int] = mapped_column(Integer)


class Consent(Base):
    """A resident's consent: the doctors of one hospital (or one of them) may read their records, for a
    purpose, while it is valid, limited to records of a period, sensitive categories only if opted in."""

    __tablename__ = "consent"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    person_id: Mapped[int] = mapped_column(BigInteger)
    empi_id: Mapped[str] = mapped_column(String(20))
    facility_code: Mapped[str] = mapped_column(String(64))
    doctor: Mapped[str | None] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(20))
    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    valid_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    records_since: Mapped[date | None] = mapped_column(Date)
    records_until: Mapped[date | None] = mapped_column(Date)
    sensitive: Mapped[list[str]] = mapped_column(ARRAY(String(16)), default=list)
    state: Mapped[str] = mapped_column(String(8), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_by: Mapped[str | None] = mapped_column(String(64))


class AccessRequest(Base):
    __tablename__ = "access_request"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    person_id: Mapped[int] = mapped_column(BigInteger)
    empi_id: Mapped[str] = mapped_column(String(20))
    doctor: Mapped[str] = mapped_column(String(64))
    facility_code: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(10), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str | None] = mapped_column(String(64))
    consent_id: Mapped[int | None] = mapped_column(ForeignKey(f"{SCHEMA}.consent.id"))


class BreakGlass(Base):
    __tablename__ = "break_glass"
    __table_args__ = {"schema": SCHEMA}

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    person_id: Mapped[int] = mapped_column(BigInteger)
    empi_id: Mapped[str] = mapped_column(String(20))
    doctor: Mapped[str] = mapped_column(String(64))
    facility_code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(500))
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    review_note: Mapped[str | None] = mapped_column(String(500))
