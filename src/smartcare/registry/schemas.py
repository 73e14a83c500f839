"""API models of the registry; shape checks live here, code checks against value sets in the service."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartcare.platform import idcard
from smartcare.platform.masking import mask_id_number

T = TypeVar("T")


class DistrictOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    code: str
    name: str
    kind: str


class FacilityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=r"^[0-9A-Za-z]{4,32}$", description="Facility code, unique in the region")
    name: str = Field(min_length=2, max_length=200)
    kind: str = Field(description="value of the facility-kind list, e.g. general_hospital")
    level: int = Field(ge=0, le=3, description="3 三级, 2 二级, 1 一级, 0 未定级")
    grade: str = Field(default="", pattern=r"^(甲|乙|丙|)$")
    ownership: str = Field(pattern=r"^(public|private)$")
    district_code: str = Field(pattern=r"^\d{6}$")
    address: str = Field(min_length=2, max_length=300)
    beds: int = Field(default=0, ge=0, le=20000)


class FacilityOut(FacilityIn):
    model_config = ConfigDict(from_attributes=True)
    district_name: str | None = None


class DepartmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=r"^[0-9A-Za-z._-]{1,32}$")
    name: str = Field(min_length=1, max_length=100)


class DepartmentOut(DepartmentIn):
    model_config = ConfigDict(from_attributes=True)
    facility_code: str


class PractitionerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=r"^[0-9A-Za-z]{2,32}$")
    department_code: str
    name: str = Field(min_length=1, max_length=50)
    sex: str = Field(description="GB/T 2261.1 code")
    title: str = Field(description="practitioner-title display, e.g. 主治医师")
    id_number: str | None = Field(default=None, description="resident ID number (GB 11643)")

    @field_validator("id_number")
    @classmethod
    def _valid_id_number(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return idcard.parse(value).number


class PractitionerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    code: str
    facility_code: str
    department_code: str
    name: str
    sex: str
    title: str
    id_number_masked: str | None = None

    @classmethod
    def of(cls, p) -> PractitionerOut:
        out = cls.model_validate(p)
        out.id_number_masked = mask_id_number(p.id_number) if p.id_number else None
        return out


class ConceptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    code: str
    display: str


class ValueSetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    standard: str
    oid: str | None
    concepts: list[ConceptOut] | None = None


class CodeCheckOut(BaseModel):
    value_set: str
    code: str
    valid: bool
    display: str | None = None
    message: str | None = None


class Page(BaseModel, Generic[T]):
    total: int
    page: int
    size: int
    items: list[T]
