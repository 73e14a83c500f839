"""Document registry and repository HTTP API.

Hospitals (HMAC-signed, like every hospital system) register and replace their CDA documents and read
their own; a hospital's staff with a bearer token read their hospital's too; administrators read all.
Another hospital's document answers 404, as a missing one does: its existence is not disclosed.
Reading a document's content is audited.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from smartcare.platform.auth import Principal, Role
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.errors import Forbidden, InvalidInput, NotFound, PayloadTooLarge
from smartcare.platform.settings import get_settings
from smartcare.records import service
from smartcare.records.models import Document
from smartcare.records.schemas import DocumentOut, RegistrationOut
from smartcare.web.deps import db, hospital_reader, signed_client
from smartcare.web.routing import Router

router = Router(prefix="/api/v1/records", tags=["records"])

_XML_BODY = {"requestBody": {"required": True, "content": {"application/xml": {"schema": {"type": "string"}}}}}


def _id():
    """A path id: a PostgreSQL bigint (a fresh FieldInfo per parameter: FastAPI binds it to the name)."""
    return Path(ge=1, le=2**63 - 1)


async def xml_body(request: Request) -> bytes:
    """The document, refused before it is read when it declares a size over the platform's limit."""
    limit = get_settings().max_payload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"document of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"document is over the limit of {limit:,} bytes")
    if not body.strip():
        raise InvalidInput("the request body is empty: send the CDA document as application/xml", field="body")
    return body


def _scope(who: Principal) -> str | None:
    """The hospital whose documents the caller may see; None: all (administrators)."""
    return None if who.has(Role.ADMIN) else who.facility()


def _visible(session: Session, id: int, who: Principal) -> Document:
    row = service.get(session, id)
    scope = _scope(who)
    if scope is not None and row.facility_code != scope:
        raise NotFound(f"no document {id}", field="id")
    return row


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=CHINA_TZ)


def _registered(done: service.Registration) -> JSONResponse:
    row = done.document
    out = RegistrationOut(id=row.id, outcome=done.outcome, document_id=row.document_id, empi_id=row.empi_id,
                          status=row.status, replaces_id=row.replaces_id)
    return JSONResponse(status_code=200 if done.outcome == "duplicate" else 201, content=out.model_dump(mode="json"))


@router.post("/documents", response_model=RegistrationOut, status_code=201, openapi_extra=_XML_BODY,
             responses={200: {"model": RegistrationOut, "description": "a duplicate: registered before"},
                        403: {"description": "the document's custodian is another hospital"},
                        422: {"description": "not a usable WS/T 500 document; the message names where"}})
def register(body: bytes = Depends(xml_body), session: Session = Depends(db), who: Principal = Depends(signed_client)):
    """Register one WS/T 500 CDA document (XML) of the signing hospital. A document naming an earlier one
    in ``relatedDocument[@typeCode='RPLC']``, or a higher ``versionNumber`` of the same ``setId``, replaces it."""
    return _registered(service.register(session, raw=body, sender=who.username, facility_code=who.facility(),
                                        actor=who.username))


@router.post("/documents/{id}/replace", response_model=RegistrationOut, status_code=201, openapi_extra=_XML_BODY,
             responses={409: {"description": "the document was already replaced, or a newer version is current"}})
def replace(id: int = _id(), body: bytes = Depends(xml_body), session: Session = Depends(db),
            who: Principal = Depends(signed_client)):
    """Replace one of the hospital's current documents with a new version (XML)."""
    return _registered(service.replace(session, id=id, raw=body, sender=who.username, facility_code=who.facility(),
                                       actor=who.username))


@router.get("/documents", response_model=list[DocumentOut])
def query(person: int | None = Query(None, ge=1, le=2**63 - 1, description="EMPI person id"),
          empi_id: str | None = Query(None, max_length=20),
          type: str | None = Query(None, pattern=r"^C[0-9]{4}$", description="document type, C0001…C0053"),
          hospital: str | None = Query(None, max_length=64, description="facility code (hospitals: their own)"),
          since: datetime | None = Query(None, description="service time from (inclusive)"),
          until: datetime | None = Query(None, description="service time until (exclusive)"),
          status: str = Query("current", pattern="^(current|replaced|all)$"),
          limit: int = Query(50, ge=1, le=service.MAX_LIMIT),
          before: int | None = Query(None, ge=1, le=2**63 - 1, description="the last id of the previous page"),
          session: Session = Depends(db), who: Principal = Depends(hospital_reader)):
    """Documents by patient, type, hospital and service time, newest first; page with ``before``."""
    scope = _scope(who)
    if scope is not None and hospital not in (None, scope):
        raise Forbidden("a hospital sees only its own documents", field="hospital")
    rows = service.query(session, person_id=person, empi_id=empi_id, type_code=type, facility_code=scope or hospital,
                         since=_aware(since), until=_aware(until), status=None if status == "all" else status,
                         limit=limit, before_id=before)
    return [DocumentOut.model_validate(r) for r in rows]


@router.get("/documents/{id}", response_model=DocumentOut)
def get(id: int = _id(), session: Session = Depends(db), who: Principal = Depends(hospital_reader)):
    """A document's registry entry (no content)."""
    return DocumentOut.model_validate(_visible(session, id, who))


@router.get("/documents/{id}/content", response_class=Response,
            responses={200: {"content": {"application/xml": {"schema": {"type": "string"}}}}})
def content(id: int = _id(), reason: str | None = Query(None, max_length=200, description="why it is read (audited)"),
            session: Session = Depends(db, scope="function"), who: Principal = Depends(hospital_reader)):
    """The document exactly as received. Every read is audited with who and why (committed before it is sent)."""
    _visible(session, id, who)
    raw = service.retrieve(session, id=id, actor=who.username, reason=reason)
    return Response(raw, media_type="application/xml")


@router.get("/documents/{id}/versions", response_model=list[DocumentOut])
def versions(id: int = _id(), session: Session = Depends(db), who: Principal = Depends(hospital_reader)):
    """Every version linked to the document by replacement, in the order they were registered."""
    _visible(session, id, who)
    scope = _scope(who)
    return [DocumentOut.model_validate(r) for r in service.versions(session, id)
            if scope is None or r.facility_code == scope]
