"""Registry operations: facilities, departments, practitioners and the terminology service."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

from sqlalchemy import func, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from smartcare.platform import audit
from smartcare.platform.db import copy_rows
from smartcare.platform.errors import Conflict, InvalidInput, NotFound
from smartcare.registry.models import Concept, Department, District, Facility, Practitioner, ValueSet
from smartcare.registry.schemas import DepartmentIn, FacilityIn, PractitionerIn

FACILITY_KINDS = {
    "general_hospital": "综合医院",
    "tcm_hospital": "中医医院",
    "specialty_hospital": "专科医院",
    "maternal_child_hospital": "妇幼保健院",
    "community_health_centre": "社区卫生服务中心",
    "township_health_centre": "乡镇卫生院",
}
HOSPITAL_KINDS = ("general_hospital", "tcm_hospital", "specialty_hospital", "maternal_child_hospital")
LEVEL_NAMES = {3: "三级", 2: "二级", 1: "一级", 0: "未定级"}


# ---- reference data ---------------------------------------------------------------------------


def _data_rows(name: str) -> list[dict[str, str]]:
    with resources.files("smartcare.registry.data").joinpath(name).open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_reference_data(session: Session) -> None:
    """Upsert districts (GB/T 2260) and the built-in value sets; safe to run on every migrate."""
    for table, rows, keys in (
        (District, _data_rows("districts.csv"), ["code"]),
        (ValueSet, [{**r, "oid": r["oid"] or None} for r in _data_rows("value_sets.csv")], ["id"]),
        (Concept, [{"value_set_id": r["value_set"], "code": r["code"], "display": r["display"]}
                   for r in _data_rows("concepts.csv")], ["value_set_id", "code"]),
    ):
        stmt = insert(table).values(rows)
        updates = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
        session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates))


# ---- terminology ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeCheck:
    value_set: str
    code: str
    valid: bool
    display: str | None = None
    message: str | None = None


def list_value_sets(session: Session) -> list[ValueSet]:
    return list(session.scalars(select(ValueSet).order_by(ValueSet.id)))


def _value_set(session: Session, value_set_id: str) -> ValueSet:
    vs = session.get(ValueSet, value_set_id)
    if vs is None:
        raise NotFound(f"no value set {value_set_id!r}", field="value_set", hint="GET /api/v1/registry/value-sets lists them")
    return vs


def get_value_set(session: Session, value_set_id: str) -> tuple[ValueSet, list[Concept]]:
    vs = _value_set(session, value_set_id)
    concepts = list(session.scalars(select(Concept).where(Concept.value_set_id == value_set_id).order_by(Concept.code)))
    return vs, concepts


def check_code(session: Session, *, value_set: str, code: str) -> CodeCheck:
    """Is ``code`` in ``value_set``? The answer carries its display name or says why not."""
    _value_set(session, value_set)
    display = session.scalar(select(Concept.display).where(Concept.value_set_id == value_set, Concept.code == code))
    if display is None:
        return CodeCheck(value_set, code, False, message=f"code {code!r} is not in value set {value_set!r}")
    return CodeCheck(value_set, code, True, display=display)


def find_code_by_display(session: Session, *, value_set: str, display: str) -> str | None:
    return session.scalar(select(Concept.code).where(Concept.value_set_id == value_set, Concept.display == display))


def require_code(session: Session, *, value_set: str, code: str, field: str) -> str:
    """Validate an input code; raise InvalidInput naming ``field`` when it is unknown."""
    result = check_code(session, value_set=value_set, code=code)
    if not result.valid:
        raise InvalidInput(f"{field}: {result.message}", field=field,
                           hint=f"GET /api/v1/registry/value-sets/{value_set} lists the valid codes")
    return result.display or ""


# ---- facilities -------------------------------------------------------------------------------


def list_districts(session: Session) -> list[District]:
    return list(session.scalars(select(District).order_by(District.code)))


def counts(session: Session) -> dict:
    """The numbers the admin console shows: districts, hospitals by level and ownership, institutions."""
    by = session.execute(
        select(Facility.kind, Facility.level, Facility.ownership, func.count()).group_by(Facility.kind, Facility.level, Facility.ownership)
    ).all()
    hospitals = [(lvl, own, n) for kind, lvl, own, n in by if kind in HOSPITAL_KINDS]
    return {
        "districts": session.scalar(select(func.count()).select_from(District)),
        "institutions": sum(n for *_, n in by),
        "hospitals": sum(n for *_, n in hospitals),
        "hospitals_public": sum(n for _, own, n in hospitals if own == "public"),
        "hospitals_private": sum(n for _, own, n in hospitals if own == "private"),
        "hospitals_by_level": [{"level": LEVEL_NAMES[lvl], **{own: sum(n for l2, o2, n in hospitals if l2 == lvl and o2 == own)
                                                              for own in ("public", "private")}} for lvl in (3, 2, 1, 0)],
        "institutions_by_kind": {FACILITY_KINDS[k]: sum(n for kind, _, _, n in by if kind == k) for k in FACILITY_KINDS},
    }


def search_facilities(session: Session, *, q: str | None = None, district_code: str | None = None,
                      kind: str | None = None, level: int | None = None, ownership: str | None = None,
                      hospitals_only: bool = False, page: int = 1, size: int = 20) -> tuple[int, list[tuple[Facility, str]]]:
    stmt = select(Facility, District.name).join(District, District.code == Facility.district_code)
    if q:
        like = f"%{q.strip()}%"
        stmt = stmt.where(or_(Facility.name.ilike(like), Facility.code.ilike(like)))
    if district_code:
        stmt = stmt.where(Facility.district_code == district_code)
    if kind:
        stmt = stmt.where(Facility.kind == kind)
    if hospitals_only:
        stmt = stmt.where(Facility.kind.in_(HOSPITAL_KINDS))
    if level is not None:
        stmt = stmt.where(Facility.level == level)
    if ownership:
        stmt = stmt.where(Facility.ownership == ownership)
    total = session.scalar(select(func.count()).select_from(stmt.subquery()))
    rows = session.execute(stmt.order_by(Facility.level.desc(), Facility.code).offset((page - 1) * size).limit(size)).all()
    return total, [(f, d) for f, d in rows]


def get_facility(session: Session, code: str) -> Facility:
    facility = session.get(Facility, code)
    if facility is None:
        raise NotFound(f"no facility with code {code!r}", field="code")
    return facility


def district_name(session: Session, code: str) -> str | None:
    return session.scalar(select(District.name).where(District.code == code))


def create_facility(session: Session, *, data: FacilityIn, actor: str) -> Facility:
    if data.kind not in FACILITY_KINDS:
        raise InvalidInput(f"kind: unknown facility kind {data.kind!r}", field="kind", hint=f"one of {', '.join(FACILITY_KINDS)}")
    if session.get(District, data.district_code) is None:
        raise InvalidInput(f"district_code: {data.district_code!r} is not a district of this region", field="district_code",
                           hint="GET /api/v1/registry/districts lists them")
    if session.get(Facility, data.code) is not None:
        raise Conflict(f"a facility with code {data.code!r} already exists", field="code")
    if session.scalar(select(Facility.code).where(Facility.name == data.name)):
        raise Conflict(f"a facility named {data.name!r} already exists", field="name")
    facility = Facility(**data.model_dump())
    session.add(facility)
    session.flush()
    audit.record(session, actor=actor, action="facility.create", target=f"facility:{data.code}")
    return facility


def list_departments(session: Session, facility_code: str) -> list[Department]:
    return list(session.scalars(select(Department).where(Department.facility_code == facility_code).order_by(Department.code)))


def upsert_department(session: Session, *, facility_code: str, data: DepartmentIn, actor: str) -> Department:
    """Hospitals publish their departments; publishing again updates the name."""
    get_facility(session, facility_code)
    stmt = insert(Department).values(facility_code=facility_code, code=data.code, name=data.name)
    session.execute(stmt.on_conflict_do_update(index_elements=["facility_code", "code"], set_={"name": data.name}))
    audit.record(session, actor=actor, action="department.upsert", target=f"facility:{facility_code}/department:{data.code}")
    return session.get(Department, (facility_code, data.code), populate_existing=True)


def list_practitioners(session: Session, facility_code: str, *, page: int = 1, size: int = 50) -> tuple[int, list[Practitioner]]:
    stmt = select(Practitioner).where(Practitioner.facility_code == facility_code)
    total = session.scalar(select(func.count()).select_from(stmt.subquery()))
    return total, list(session.scalars(stmt.order_by(Practitioner.department_code, Practitioner.code).offset((page - 1) * size).limit(size)))


def create_practitioner(session: Session, *, facility_code: str, data: PractitionerIn, actor: str) -> Practitioner:
    get_facility(session, facility_code)
    if session.get(Department, (facility_code, data.department_code)) is None:
        raise InvalidInput(f"department_code: facility {facility_code} has no department {data.department_code!r}",
                           field="department_code")
    require_code(session, value_set="sex", code=data.sex, field="sex")
    if find_code_by_display(session, value_set="practitioner-title", display=data.title) is None:
        raise InvalidInput(f"title: {data.title!r} is not a practitioner title", field="title",
                           hint="GET /api/v1/registry/value-sets/practitioner-title lists them")
    if session.get(Practitioner, data.code) is not None:
        raise Conflict(f"a practitioner with code {data.code!r} already exists", field="code")
    if data.id_number and session.scalar(select(Practitioner.code).where(Practitioner.id_number == data.id_number)):
        raise Conflict("another practitioner already has this ID number", field="id_number")
    p = Practitioner(facility_code=facility_code, **data.model_dump())
    session.add(p)
    session.flush()
    audit.record(session, actor=actor, action="practitioner.create", target=f"practitioner:{data.code}",
                 detail={"facility_code": facility_code})
    return p


# ---- bulk load (synthetic region, imports) ------------------------------------------------------

FACILITY_COLUMNS = ("code", "name", "kind", "level", "grade", "ownership", "district_code", "address", "beds")
DEPARTMENT_COLUMNS = ("facility_code", "code", "name")
PRACTITIONER_COLUMNS = ("code", "facility_code", "department_code", "name", "sex", "title")


def bulk_load(session: Session, *, facilities: Iterable[tuple], departments: Iterable[tuple],
              practitioners: Iterable[tuple]) -> dict[str, int]:
    """COPY whole registries in one transaction (rows as tuples in the ``*_COLUMNS`` order)."""
    return {
        "facilities": copy_rows(session, "registry.facility", FACILITY_COLUMNS, facilities),
        "departments": copy_rows(session, "registry.department", DEPARTMENT_COLUMNS, departments),
        "practitioners": copy_rows(session, "registry.practitioner", PRACTITIONER_COLUMNS, practitioners),
    }


def is_empty(session: Session) -> bool:
    return session.scalar(select(func.count()).select_from(select(Facility.code).limit(1).subquery())) == 0


def facility_codes(session: Session) -> list[str]:
    return list(session.scalars(select(Facility.code)))


def facility_names(session: Session, codes: Iterable[str]) -> dict[str, str]:
    wanted = [c for c in set(codes) if c]
    if not wanted:
        return {}
    return dict(session.execute(select(Facility.code, Facility.name).where(Facility.code.in_(wanted))).all())


def hospitals(session: Session, *, limit: int) -> list[Facility]:
    """The largest hospitals first (level, then code): the ones that send the most traffic."""
    return list(session.scalars(select(Facility).where(Facility.kind.in_(HOSPITAL_KINDS))
                                .order_by(Facility.level.desc(), Facility.code).limit(limit)))


# ---- 统一社会信用代码: how documents name a hospital ------------------------------------------------

# GB 32100-2015: 18 characters from this alphabet (no I, O, S, V, Z), the last a check character.
_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def _uscc_check(first17: str) -> str:
    total = sum(_USCC_CHARS.index(c) * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return _USCC_CHARS[(31 - total % 31) % 31]


def credit_code(facility_code: str) -> str | None:
    """The region's 统一社会信用代码 of a facility, the custodian id WS/T 500 documents carry.

    Public hospitals are 事业单位 (registration authority 1, kind 2); the next six characters are the
    district (the facility code's first six), the nine of the organisation code are the rest of the
    facility code, left-padded with 0. None for a code that does not fit that layout.
    """
    district, rest = facility_code[:6], facility_code[6:]
    if not (district.isdigit() and len(district) == 6 and 0 < len(rest) <= 9 and rest[0] != "0"
            and all(c in _USCC_CHARS for c in rest)):
        return None
    first17 = f"12{district}{rest.rjust(9, '0')}"
    return first17 + _uscc_check(first17)


def facility_of_credit_code(session: Session, code: str) -> str | None:
    """The registered facility a 统一社会信用代码 names, or None (unknown, malformed, wrong check character)."""
    if len(code) != 18 or not all(c in _USCC_CHARS for c in code) or _uscc_check(code[:17]) != code[17]:
        return None
    candidate = code[2:8] + code[8:17].lstrip("0")
    return candidate if session.get(Facility, candidate) is not None and credit_code(candidate) == code else None


def reference_for_warehouse(session: Session) -> dict[str, list[dict]]:
    """Facilities (with their district's name), departments and practitioners (code, department, title:
    never names or ID numbers) as the warehouse's dimensions hold them."""
    def rows(sql: str) -> list[dict]:
        return [dict(r._mapping) for r in session.execute(text(sql))]

    return {
        "facilities": rows("SELECT f.code, f.name, f.kind, f.level, f.grade, f.ownership, f.district_code, "
                           "d.name AS district_name, f.beds FROM registry.facility f "
                           "LEFT JOIN registry.district d ON d.code = f.district_code"),
        "departments": rows("SELECT facility_code, code, name FROM registry.department"),
        "practitioners": rows("SELECT facility_code, code, department_code, title FROM registry.practitioner"),
    }
