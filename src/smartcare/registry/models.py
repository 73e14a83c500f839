"""Registry tables (schema ``registry``): districts, facilities, departments, practitioners, terminology."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, ForeignKey, ForeignKeyConstraint, Index, Integer, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from smartcare.platform.db import Base

SCHEMA = "registry"


class District(Base):
    """County-level division (GB/T 2260); its code is the first six digits of ID numbers issued there."""

    __tablename__ = "district"
    __table_args__ = {"schema": SCHEMA}

    code: Mapped[str] = mapped_column(String(6), primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(16))


class Facility(Base):
    __tablename__ = "facility"
    __table_args__ = (
        CheckConstraint("level BETWEEN 0 AND 3", name="level"),
        CheckConstraint("ownership IN ('public', 'private')", name="ownership"),
        Index("ix_facility_district_kind", "district_code", "kind"),
        {"schema": SCHEMA},
    )

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    #: 3 三级, 2 二级, 1 一级, 0 未定级
    level: Mapped[int] = mapped_column(SmallInteger)
    #: 甲 / 乙 / 丙, empty when not graded
    grade: Mapped[str] = mapped_column(String(2))
    ownership: Mapped[str] = mapped_column(String(8))
    district_code: Mapped[str] = mapped_column(ForeignKey(f"{SCHEMA}.district.code"))
    address: Mapped[str] = mapped_column(String(300))
    beds: Mapped[int] = mapped_column(Integer)


class Department(Base):
    __tablename__ = "department"
    __table_args__ = {"schema": SCHEMA}

    facility_code: Mapped[str] = mapped_column(
        ForeignKey(f"{SCHEMA}.facility.code", ondelete="CASCADE"), primary_key=True
    )
    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Practitioner(Base):
    __tablename__ = "practitioner"
    __table_args__ = (
        ForeignKeyConstraint(
            ["facility_code", "department_code"],
            [f"{SCHEMA}.department.facility_code", f"{SCHEMA}.department.code"],
            ondelete="CASCADE",
        ),
        Index("ix_practitioner_facility", "facility_code", "department_code"),
        {"schema": SCHEMA},
    )

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    facility_code: Mapped[str] = mapped_column(String(32))
    department_code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(50))
    sex: Mapped[str] = mapped_column(String(1))
    title: Mapped[str] = mapped_column(String(20))
    #: Held for real-name checks; never shown unmasked outside privileged views.
    id_number: Mapped[str | None] = mapped_column(String(18))


class ValueSet(Base):
    __tablename__ = "value_set"
    __table_args__ = {"schema": SCHEMA}

    #: Our stable identifier, e.g. ``sex``, ``icd10``, ``wst500-document-type``.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    #: The standard it comes from, e.g. ``GB/T 2261.1-2003``.
    standard: Mapped[str] = mapped_column(String(100))
    oid: Mapped[str | None] = mapped_column(String(100))


class Concept(Base):
    __tablename__ = "concept"
    __table_args__ = {"schema": SCHEMA}

    value_set_id: Mapped[str] = mapped_column(
        ForeignKey(f"{SCHEMA}.value_set.id", ondelete="CASCADE"), primary_key=True
    )
    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    display: Mapped[str] = mapped_column(String(200))
