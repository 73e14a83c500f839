"""Tables of the document registry and repository (schema ``records``); DDL in migration 0012.

The registry row holds what a document is and whose it is, by identifiers only (EMPI person, the
hospital's patient number): no name, ID number or phone. The raw document, kept once per content
hash in ``records.content``, is the only copy of the personal data.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, LargeBinary, String, func
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
