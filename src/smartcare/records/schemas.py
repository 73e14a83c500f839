"""API models of the document registry. Documents themselves go in and out as XML (application/xml);
these describe what the registry says about them. Times are timezone-aware."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DocumentOut(BaseModel):
    """A registry entry: what the document is, whose, which version; never the patient's personal data."""

    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="registry id")
    document_id: str = Field(description="ClinicalDocument/id (@extension, else @root)")
    custodian_code: str = Field(description="the custodian as the document names it")
    facility_code: str = Field(description="the hospital the document belongs to on the platform")
    type_code: str = Field(description="WS/T 500 document type, C0001…C0053")
    type_name: str | None
    set_id: str | None
    version_number: int | None
    empi_id: str | None = Field(description="the patient's EMPI id; null when the patient could not be resolved")
    patient_ref: str | None = Field(description="the hospital's patient number the patient was resolved by")
    author_code: str | None
    service_time: datetime = Field(description="encounter start, else the document's effectiveTime, else received_at")
    effective_time: datetime | None
    received_at: datetime
    registered_at: datetime
    sha256: str
    size_bytes: int
    status: Literal["current", "replaced"]
    replaces_id: int | None
    replaced_by_id: int | None
    exchange_message_id: int | None
    sender: str


class RegistrationOut(BaseModel):
    id: int = Field(description="registry id")
    outcome: Literal["registered", "replaced", "duplicate"] = Field(
        description="duplicate: these bytes of this document were registered before (nothing new was stored)")
    document_id: str
    empi_id: str | None
    status: Literal["current", "replaced"]
    replaces_id: int | None
