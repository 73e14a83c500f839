"""API models of the master patient index. Personal data in answers is masked unless the caller may see it."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from smartcare.platform.masking import mask_address, mask_id_number, mask_name, mask_phone


class SourceIn(BaseModel):
    """A hospital registers one of its visit cards (the demographics as it recorded them)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    card_no: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=60)
    id_number: str | None = Field(None, max_length=24, description="recorded as is; validated and repaired by the index")
    sex: str | None = Field(None, max_length=8)
    birth_date: date | None = None
    phone: str | None = Field(None, max_length=30)
    address: str | None = Field(None, max_length=300)


class QueryIn(BaseModel):
    """Demographics to search by (PDQ); any may be missing."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    name: str | None = Field(None, max_length=60)
    id_number: str | None = Field(None, max_length=24)
    sex: str | None = Field(None, max_length=8)
    birth_date: date | None = None
    phone: str | None = Field(None, max_length=30)
    address: str | None = Field(None, max_length=300)
    limit: int = Field(10, ge=1, le=50)


class CardOut(BaseModel):
    facility_code: str
    card_no: str


class PersonOut(BaseModel):
    empi_id: str
    state: str
    golden: dict
    cards: list[CardOut]


class RegisterOut(PersonOut):
    outcome: str = Field(description="link (to an existing person), review (own person, a possible match queued) or new")
    weight: float | None = None
    method: str


class CandidateOut(BaseModel):
    empi_id: str
    weight: float | None = Field(description="match weight (log2 Bayes factor); null when linked by rule without a model")
    probability: float | None
    rule: bool
    golden: dict
    terms: list[dict]


def masked_golden(golden: dict) -> dict:
    """The golden record for callers who may not see personal data in full."""
    out = dict(golden)
    for key, mask in (("name", mask_name), ("id_number", mask_id_number), ("phone", mask_phone), ("address", mask_address)):
        if out.get(key):
            out[key] = mask(out[key])
    if out.get("birth_date"):
        out["birth_date"] = out["birth_date"][:4] + "-**-**"
    return out
