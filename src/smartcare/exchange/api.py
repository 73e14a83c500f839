"""Exchange hub HTTP API.

Ingest endpoints (hospital systems, HMAC-signed): HL7 v2, CDA, FHIR and batch files. They answer only
after the message is committed. The signature is checked against an in-memory key cache and the
nonce is recorded in the same group-committed transaction as the message.

Operator endpoints (JWT): messages, raw payloads (audited), re-runs, dead letters, channels with
versions and rollback, bad MLLP frames, monitoring.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from fastapi import Body, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from smartcare.exchange import batch, channels, monitor, service
from smartcare.exchange.ingest import Hub, Receipt
from smartcare.exchange.mllp_server import ack_code, ack_control_id
from smartcare.platform import auth, metrics
from smartcare.platform.auth import Principal, Role
from smartcare.platform.errors import PayloadTooLarge, RateLimited, SmartCareError
from smartcare.platform.settings import get_settings
from smartcare.standards import hl7v2
from smartcare.web.deps import db, require, verify_signature
from smartcare.web.routing import Router

router = Router(prefix="/api/v1/exchange", tags=["exchange"])

OPERATORS = (Role.ADMIN, Role.AUDITOR)
RAW_VIEWERS = (Role.ADMIN, Role.AUDITOR)


async def _body(request: Request) -> bytes:
    """The body, read with a hard limit (a chunked upload without Content-Length is cut off too)."""
    limit = get_settings().max_payload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"payload of {int(declared):,} bytes is over the limit of {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"payload is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise SmartCareError("the request body is empty", field="body")
    return body


async def _signed(request: Request, body: bytes) -> tuple[auth.ClientKey, auth.SignedRequest]:
    """Verify the HMAC signature without a database round trip (keys cached; nonce stored with the message)."""
    hub: Hub = request.app.state.hub
    key, signed = await verify_signature(request, body, hub.client_keys)
    wait = hub.limiter.check(key.client_id)
    if wait:
        raise RateLimited(f"client {key.client_id} is over its rate limit", hint=f"retry after {wait:.1f} s")
    return key, signed


async def _receive(request: Request, kind: str) -> tuple[Receipt, bytes]:
    started = time.perf_counter()
    body = await _body(request)
    key, signed = await _signed(request, body)
    hub: Hub = request.app.state.hub
    receipt = await hub.receive(connector="http", kind=kind, raw=body, sender=key.client_id,
                                facility_code=key.facility_code, content_type=request.headers.get("content-type"),
                                nonce=(key.client_id, signed.nonce))
    if receipt.status == "replay":
        raise auth.replay_error()
    metrics.EXCHANGE_ACK_SECONDS.labels("http").observe(time.perf_counter() - started)
    return receipt, body


def _json_receipt(receipt: Receipt) -> JSONResponse:
    status = {"accepted": 202, "filtered": 202, "duplicate": 200, "failed": 422}.get(receipt.status)
    if status is None:  # refused
        status = 503 if receipt.reason and "stopped" in receipt.reason else 422
    body = {"status": receipt.status, "message_id": receipt.message_id, "channel": receipt.channel_id,
            "control_id": receipt.inspected.control_id, "message_type": receipt.inspected.message_type}
    if receipt.reason:
        body["error"] = receipt.reason
    headers = {"Retry-After": "60"} if status == 503 else None
    return JSONResponse(status_code=status, content=body, headers=headers)


@router.post("/hl7v2", response_class=PlainTextResponse,
             openapi_extra={"requestBody": {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def receive_hl7v2(request: Request) -> Response:
    """One HL7 v2 message (pipe-delimited). The answer is an HL7 ACK: AA (200), AE (422) or AR (400)."""
    receipt, body = await _receive(request, "hl7v2")
    code = ack_code(receipt)
    seen = receipt.inspected
    ack = hl7v2.build_ack(seen.header or body.decode("utf-8", "replace"), code=code, error=seen.hl7_error,
                          control_id=ack_control_id(receipt), text=None if code == "AA" else receipt.reason or seen.error)
    return Response(ack, status_code={"AA": 200, "AE": 422, "AR": 400}[code], media_type="application/hl7-v2; charset=utf-8",
                    headers={"X-SmartCare-Message-Id": str(receipt.message_id or ""), "X-SmartCare-Status": receipt.status})


@router.post("/cda", openapi_extra={"requestBody": {"content": {"application/xml": {"schema": {"type": "string"}}}}})
async def receive_cda(request: Request) -> JSONResponse:
    """One WS/T 500 CDA document (XML). 202 when stored; 422 names what is wrong with it."""
    receipt, _ = await _receive(request, "cda")
    return _json_receipt(receipt)


@router.post("/fhir", openapi_extra={"requestBody": {"content": {"application/fhir+json": {"schema": {"type": "object"}}}}})
async def receive_fhir(request: Request) -> JSONResponse:
    """A FHIR R4 resource (Patient, Encounter, Observation) or a Bundle of them."""
    receipt, _ = await _receive(request, "fhir")
    return _json_receipt(receipt)


@router.post("/batch", openapi_extra={"requestBody": {"content": {
    "text/csv": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": {"type": "string"}}}}})
async def receive_batch(request: Request) -> JSONResponse:
    """Many patient records in one CSV or NDJSON file; the answer has one result per row."""
    body = await _body(request)
    key, signed = await _signed(request, body)
    hub: Hub = request.app.state.hub
    await asyncio.to_thread(auth.claim_nonce, key.client_id, signed.nonce)  # one upload, one commit for its nonce
    results = await batch.receive(hub, body, content_type=request.headers.get("content-type", ""),
                                  sender=key.client_id, facility_code=key.facility_code)
    summary = {s: sum(1 for r in results if r["status"] == s) for s in ("accepted", "duplicate", "rejected")}
    return JSONResponse(status_code=200, content={"rows": len(results), **summary, "results": results})


# ---- operators ------------------------------------------------------------------------------------


def _filter(channel: str | None, facility: str | None, state: str | None, message_type: str | None,
            since: datetime | None, until: datetime | None) -> service.MessageFilter:
    return service.MessageFilter(channel, facility, state, message_type, since, until)


@router.get("/messages")
def messages(channel: str | None = None, facility: str | None = None, state: str | None = None,
             message_type: str | None = None, since: datetime | None = None, until: datetime | None = None,
             before_id: int | None = None, limit: int = Query(50, ge=1, le=500),
             session: Session = Depends(db), _: Principal = Depends(require(*OPERATORS))) -> list[dict]:
    return service.list_messages(session, _filter(channel, facility, state, message_type, since, until),
                                 limit=limit, before_id=before_id)


@router.get("/messages/{message_id}")
def message(message_id: int, session: Session = Depends(db), _: Principal = Depends(require(*OPERATORS))) -> dict:
    m = service.get_message(session, message_id)
    return {"id": m.id, "received_at": m.received_at, "channel": m.channel_id, "sender": m.sender,
            "facility_code": m.facility_code, "connector": m.connector, "kind": m.kind, "message_type": m.message_type,
            "control_id": m.control_id, "state": m.state, "error": m.error and service.mask_text(m.error), "size": m.size,
            "processed_at": m.processed_at, "events": m.events, "reruns": m.reruns,
            "deliveries": service.deliveries(session, message_id)}


@router.get("/messages/{message_id}/raw", response_class=PlainTextResponse)
def message_raw(message_id: int, reason: str | None = Query(None, max_length=200), session: Session = Depends(db),
                who: Principal = Depends(require(*RAW_VIEWERS))) -> Response:
    """The payload as received (personal data): only for permitted roles, and every view is audited."""
    m = service.view_raw(session, message_id, actor=who.username, reason=reason)
    # Never the sender's Content-Type: a payload must not become a page that runs in the console's origin.
    return Response(bytes(m.raw), media_type="application/octet-stream", headers={
        "X-Content-Type-Options": "nosniff", "Content-Disposition": f'attachment; filename="message-{m.id}.bin"',
        "X-SmartCare-Content-Type": (m.content_type or "")[:100]})


class RerunIn(BaseModel):
    message_ids: list[int] | None = Field(None, max_length=10_000)
    channel: str | None = None
    facility: str | None = None
    state: str | None = None
    message_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@router.post("/messages/rerun")
def rerun(data: RerunIn, session: Session = Depends(db), who: Principal = Depends(require(Role.ADMIN))) -> dict:
    """Route messages again (by ids or by filter): their destinations receive them again."""
    count = service.rerun(session, _filter(data.channel, data.facility, data.state, data.message_type, data.since, data.until),
                          message_ids=data.message_ids, actor=who.username)
    return {"rerun": count}


@router.get("/dead-letters")
def dead_letters(channel: str | None = None, session: Session = Depends(db),
                 _: Principal = Depends(require(*OPERATORS))) -> list[dict]:
    return service.dead_letters(session, channel_id=channel)


@router.post("/dead-letters/rerun")
def rerun_dead_letters(channel: str | None = None, delivery_ids: list[int] | None = Body(None, embed=True),
                       session: Session = Depends(db), who: Principal = Depends(require(Role.ADMIN))) -> dict:
    return {"rerun": service.rerun_dead_letters(session, actor=who.username, channel_id=channel, delivery_ids=delivery_ids)}


@router.get("/bad-frames")
def bad_frames(session: Session = Depends(db), _: Principal = Depends(require(*OPERATORS))) -> list[dict]:
    return [{"id": f.id, "received_at": f.received_at, "connector": f.connector, "peer": f.peer, "problem": f.problem,
             "size": f.size} for f in service.list_bad_frames(session)]


@router.get("/bad-frames/{frame_id}/raw")
def bad_frame_raw(frame_id: int, session: Session = Depends(db), who: Principal = Depends(require(*RAW_VIEWERS))) -> dict:
    """The exact bytes of a frame that could not be read, as hex and as text (audited)."""
    f = service.view_bad_frame(session, frame_id, actor=who.username)
    raw = bytes(f.raw)
    return {"id": f.id, "problem": f.problem, "size": f.size, "hex": raw.hex(" "),
            "text": raw.decode("latin-1").replace("\r", "\\r").replace("\x0b", "<VT>").replace("\x1c", "<FS>")}


@router.get("/channels")
def list_channels(session: Session = Depends(db), _: Principal = Depends(require(*OPERATORS))) -> list[dict]:
    return [{"id": c.id, "enabled": c.enabled, "version": c.version, "updated_at": c.updated_at, "updated_by": c.updated_by,
             "config": c.config} for c in channels.list_all(session)]


@router.put("/channels/{channel_id}")
def put_channel(channel_id: str, config: channels.ChannelConfig, comment: str = Query("", max_length=500),
                session: Session = Depends(db), who: Principal = Depends(require(Role.ADMIN))) -> dict:
    if config.id != channel_id:
        raise SmartCareError("the channel id in the body differs from the one in the path", field="id")
    c = channels.save(session, config, actor=who.username, comment=comment)
    return {"id": c.id, "version": c.version}


@router.get("/channels/{channel_id}/versions")
def channel_versions(channel_id: str, session: Session = Depends(db), _: Principal = Depends(require(*OPERATORS))) -> list[dict]:
    return [{"version": v.version, "changed_by": v.changed_by, "changed_at": v.changed_at, "comment": v.comment,
             "diff": v.diff} for v in channels.versions(session, channel_id)]


@router.post("/channels/{channel_id}/rollback")
def rollback_channel(channel_id: str, version: int = Query(..., ge=1), session: Session = Depends(db),
                     who: Principal = Depends(require(Role.ADMIN))) -> dict:
    c = channels.rollback(session, channel_id, version=version, actor=who.username)
    return {"id": c.id, "version": c.version}


@router.post("/channels/{channel_id}/stop")
def stop_channel(channel_id: str, session: Session = Depends(db), who: Principal = Depends(require(Role.ADMIN))) -> dict:
    return {"id": channel_id, "enabled": channels.set_enabled(session, channel_id, False, actor=who.username).enabled}


@router.post("/channels/{channel_id}/start")
def start_channel(channel_id: str, session: Session = Depends(db), who: Principal = Depends(require(Role.ADMIN))) -> dict:
    return {"id": channel_id, "enabled": channels.set_enabled(session, channel_id, True, actor=who.username).enabled}


@router.get("/monitor")
def monitoring(session: Session = Depends(db), _: Principal = Depends(require(*OPERATORS))) -> dict:
    return monitor.snapshot(session)

