"""Batch-file connector: many patient records in one CSV or NDJSON upload, one result per row.

A bad row is rejected with the field that is wrong and never stops the others; every good row is
stored as its own message (control id = the hospital's record id), so a re-upload of the same file
yields duplicates, not double registrations.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
from datetime import date

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from smartcare.exchange.ingest import Hub, Inspected
from smartcare.platform import idcard
from smartcare.platform.masking import mask_text

MAX_ROWS = 100_000


class PatientRecord(BaseModel):
    """One row: a hospital's patient (visit card) record."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
    source_id: str = Field(min_length=1, max_length=64, description="the hospital's visit card / patient number")
    name: str = Field(min_length=1, max_length=50)
    id_number: str | None = None
    sex: str = Field(pattern="^[0129]$", description="GB/T 2261.1 code")
    birth_date: date
    phone: str | None = Field(None, pattern=r"^\+?[0-9\- ]{6,20}$")
    address: str | None = Field(None, max_length=300)

    @field_validator("id_number")
    @classmethod
    def _id_number(cls, value: str | None) -> str | None:
        return idcard.parse(value).number if value else None

    @field_validator("id_number", "phone", "address", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return value or None


def _rows(body: bytes, content_type: str) -> list[dict] | str:
    text = body.decode("utf-8-sig", errors="strict")
    if "ndjson" in content_type or "jsonl" in content_type or text.lstrip().startswith("{"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    rows.append({"__error__": f"line {n}: not valid JSON ({exc.msg} at column {exc.colno})"})
        return rows
    return list(csv.DictReader(io.StringIO(text)))


async def receive(hub: Hub, body: bytes, *, content_type: str, sender: str, facility_code: str | None) -> list[dict]:
    try:
        rows = _rows(body, content_type)
    except UnicodeDecodeError as exc:
        return [{"row": 0, "status": "rejected", "error": f"file is not UTF-8 (byte {exc.start})"}]
    if len(rows) > MAX_ROWS:
        return [{"row": 0, "status": "rejected", "error": f"{len(rows):,} rows: at most {MAX_ROWS:,} per file"}]

    first_row: dict[str, int] = {}
    await hub.channel_configs()  # load once, so the rows below reach the store in file order

    async def one(n: int, row: dict) -> dict:
        if not isinstance(row, dict):
            return {"row": n, "status": "rejected", "error": f"line {n}: not a JSON object"}
        if "__error__" in row:
            return {"row": n, "status": "rejected", "error": row["__error__"]}
        try:
            record = PatientRecord.model_validate(row)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            return {"row": n, "status": "rejected", "field": field, "error": mask_text(f"{field}: {first['msg']}")}
        earlier = first_row.setdefault(record.source_id, n)
        if earlier != n:  # the same record twice in one file: the first one counts
            return {"row": n, "status": "duplicate", "of_row": earlier}
        raw = json.dumps({**record.model_dump(mode="json"), "record_type": "patient"}, ensure_ascii=False).encode()
        # The record id plus its content: re-uploading the same file is a duplicate, a corrected record is not.
        control = f"{record.source_id}/{hashlib.sha256(raw).hexdigest()[:16]}"
        receipt = await hub.receive(connector="batch", kind="batch", raw=raw, sender=sender, facility_code=facility_code,
                                    content_type="application/json",
                                    inspected=Inspected(message_type="patient", control_id=control))
        result = {"row": n, "status": "accepted" if receipt.status in ("accepted", "filtered") else receipt.status,
                  "message_id": receipt.message_id}
        if not receipt.ok:
            result.update(status="rejected", error=receipt.reason)
        return result

    return list(await asyncio.gather(*(one(n, row) for n, row in enumerate(rows, 1))))
