"""Registry HTTP API: thin — parse, call the service, shape the response."""

from __future__ import annotations

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from smartcare.platform.auth import Principal, Role
from smartcare.platform.errors import Forbidden
from smartcare.registry import service
from smartcare.registry.schemas import (
    CodeCheckOut,
    ConceptOut,
    DepartmentIn,
    DepartmentOut,
    DistrictOut,
    FacilityIn,
    FacilityOut,
    Page,
    PractitionerIn,
    PractitionerOut,
    ValueSetOut,
)
from smartcare.web.deps import db, require, signed_client
from smartcare.web.routing import Router

router = Router(prefix="/api/v1/registry", tags=["registry"])


def _facility_out(f, district_name: str | None) -> FacilityOut:
    out = FacilityOut.model_validate(f)
    out.district_name = district_name
    return out


@router.get("/districts", response_model=list[DistrictOut])
def districts(session: Session = Depends(db)):
    return service.list_districts(session)


@router.get("/counts")
def counts(session: Session = Depends(db)) -> dict:
    return service.counts(session)


@router.get("/facilities", response_model=Page[FacilityOut])
def facilities(
    q: str | None = Query(None, max_length=100),
    district_code: str | None = Query(None, pattern=r"^\d{6}$"),
    kind: str | None = None,
    level: int | None = Query(None, ge=0, le=3),
    ownership: str | None = Query(None, pattern="^(public|private)$"),
    hospitals_only: bool = False,
    page: int = Query(1, ge=1),
    size: int = Query(20, ge=1, le=200),
    session: Session = Depends(db),
):
    total, rows = service.search_facilities(session, q=q, district_code=district_code, kind=kind, level=level,
                                            ownership=ownership, hospitals_only=hospitals_only, page=page, size=size)
    return Page[FacilityOut](total=total, page=page, size=size, items=[_facility_out(f, d) for f, d in rows])


@router.post("/facilities", response_model=FacilityOut, status_code=201)
def create_facility(data: FacilityIn, session: Session = Depends(db), who: Principal = Depends(require(Role.ADMIN))):
    f = service.create_facility(session, data=data, actor=who.username)
    return _facility_out(f, service.district_name(session, f.district_code))


@router.get("/facilities/{code}", response_model=FacilityOut)
def facility(code: str, session: Session = Depends(db)):
    f = service.get_facility(session, code)
    return _facility_out(f, service.district_name(session, f.district_code))


@router.get("/facilities/{code}/departments", response_model=list[DepartmentOut])
def departments(code: str, session: Session = Depends(db)):
    service.get_facility(session, code)
    return service.list_departments(session, code)


def _own_facility(who: Principal, code: str) -> None:
    if who.facility_code != code:
        raise Forbidden(f"this API client belongs to facility {who.facility_code}, not {code}", field="code")


@router.put("/facilities/{code}/departments/{department_code}", response_model=DepartmentOut)
def publish_department(code: str, department_code: str, data: DepartmentIn, session: Session = Depends(db),
                       who: Principal = Depends(signed_client)):
    """Hospital systems publish their departments (HMAC-signed request)."""
    _own_facility(who, code)
    if data.code != department_code:
        raise Forbidden("department code in the body differs from the one in the path", field="code")
    return service.upsert_department(session, facility_code=code, data=data, actor=who.username)


@router.get("/facilities/{code}/practitioners", response_model=Page[PractitionerOut])
def practitioners(code: str, page: int = Query(1, ge=1), size: int = Query(50, ge=1, le=200),
                  session: Session = Depends(db)):
    service.get_facility(session, code)
    total, rows = service.list_practitioners(session, code, page=page, size=size)
    return Page[PractitionerOut](total=total, page=page, size=size, items=[PractitionerOut.of(p) for p in rows])


@router.post("/facilities/{code}/practitioners", response_model=PractitionerOut, status_code=201)
def create_practitioner(code: str, data: PractitionerIn, session: Session = Depends(db),
                        who: Principal = Depends(signed_client)):
    """Hospital systems register their practitioners (HMAC-signed request)."""
    _own_facility(who, code)
    return PractitionerOut.of(service.create_practitioner(session, facility_code=code, data=data, actor=who.username))


@router.get("/value-sets", response_model=list[ValueSetOut])
def value_sets(session: Session = Depends(db)):
    return service.list_value_sets(session)


@router.get("/value-sets/{value_set_id}", response_model=ValueSetOut)
def value_set(value_set_id: str, session: Session = Depends(db)):
    vs, concepts = service.get_value_set(session, value_set_id)
    out = ValueSetOut.model_validate(vs)
    out.concepts = [ConceptOut.model_validate(c) for c in concepts]
    return out


@router.get("/value-sets/{value_set_id}/validate", response_model=CodeCheckOut)
def validate_code(value_set_id: str, code: str = Query(..., min_length=1, max_length=32), session: Session = Depends(db)):
    r = service.check_code(session, value_set=value_set_id, code=code)
    return CodeCheckOut(value_set=r.value_set, code=r.code, valid=r.valid, display=r.display, message=r.message)
