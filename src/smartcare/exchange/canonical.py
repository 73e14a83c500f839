"""Transforms: every accepted message becomes canonical events, whatever standard it came in.

| source | event topic |
|---|---|
| HL7 v2 ADT A01 / A04 / A28 | ``patient.registered`` (+ ``encounter.recorded`` for A01/A04) |
| HL7 v2 ADT A03 / A11 | ``encounter.recorded`` (status ``finished`` with the discharge time / ``cancelled``) |
| HL7 v2 ADT A08 / A31 | ``patient.updated`` |
| HL7 v2 ADT A40 / A34 | ``patient.merged`` |
| HL7 v2 ORU^R01 | ``lab.result`` (one per OBX) |
| HL7 v2 SIU S12 / S13 / S14 / S15 | ``appointment.booked`` / ``.rescheduled`` / ``.modified`` / ``.cancelled`` |
| HL7 v2 SIU S12 / S13 / S14 with SCH-8 ``SLOT`` | ``slot.published`` (a hospital offers a bookable slot) |
| HL7 v2 SIU S15 / S17 with SCH-8 ``SLOT`` | ``slot.withdrawn`` (停诊) |
| WS/T 500 CDA | ``document.received`` |
| FHIR Patient / Encounter / Observation | ``patient.registered`` / ``encounter.recorded`` / ``lab.result`` |
| batch patient row | ``patient.registered`` |

Patient events carry the same fields whatever the source (source_id, identifiers, id_number, name,
sex as GB/T 2261.1, birth_date, phone, address), so downstream capabilities read one shape.
Other HL7 message types are stored and acknowledged but produce no event.

Slot offers: HL7 v2 has no message for "a bookable slot", so the region's convention (docs/booking.md)
marks an SIU with the local appointment type (SCH-8, table 0277 is user-defined) ``SLOT``: SCH-2 the
hospital's slot id, TQ1-7/TQ1-8 (or v2.3-style SCH-11.4/.5) the time window, AIS-3 the department,
AIP-3 the doctor, AIP-4 (staff type, user table 0182) the title / fee level, AIG-6 the capacity and the
Z-segment ``ZFE-1`` the fee in fen. A missing or malformed field raises ``ValueError`` naming it, so the
message is kept as ``failed`` with that reason; booking's own rules (length, capacity) are booking's.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone

from smartcare.platform import idcard
from smartcare.platform.clock import CHINA_TZ
from smartcare.standards import cda, fhir, hl7v2, mllp

Event = tuple[str, dict]

_SEX = {"M": "1", "F": "2", "U": "0", "O": "9", "A": "9", "N": "9", "1": "1", "2": "2", "0": "0", "9": "9"}
_CJK = re.compile(r"[\u3400-\u9fff]")
_ID_NUMBER_TYPES = {"ID", "NNCHN", "CZ", "SFZ"}
_ID_NUMBER_OID = "2.16.156.10011.1.3"
_CLASS = {"I": "IMP", "O": "AMB", "E": "EMER", "P": "PRENC", "R": "AMB", "B": "AMB"}


def _hl7_date(value: str) -> str | None:
    digits = value[:8]
    if len(digits) == 8 and digits.isdigit():
        try:
            return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8])).isoformat()
        except ValueError:
            return None
    return None


def _hl7_time(value: str) -> str | None:
    """HL7 TS (YYYYMMDD[HHMM[SS]][+ZZZZ]) to ISO text, keeping the precision given."""
    m = re.match(r"^(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(?:(\d{2}))?)?", value or "")
    if not m:
        return None
    y, mo, d, h, mi, s = m.groups()
    return f"{y}-{mo}-{d}" + (f"T{h}:{mi}:{s or '00'}" if h else "")


def _name(family: str, given: str) -> str | None:
    family, given = family.strip(), given.strip()
    if _CJK.search(family + given):
        return (family + given) or None
    return " ".join(p for p in (given, family) if p) or None


def _patient(msg: hl7v2.Message, pid: str = "PID") -> dict:
    seg = msg.get(pid)
    if seg is None:
        raise ValueError(f"{msg.message_type}^{msg.trigger_event} has no {pid} segment")
    identifiers = []
    id_number = None
    for rep in seg.field("3").split(seg.separators.repetition) if seg.field("3") else []:
        parts = hl7v2.unescape(rep, seg.separators).split(seg.separators.component)
        value = parts[0].strip()
        if not value or value == '""':
            continue
        authority = parts[3] if len(parts) > 3 else ""
        id_type = parts[4].strip() if len(parts) > 4 else ""
        identifiers.append({"value": value, "authority": authority.split(seg.separators.subcomponent)[0] or None,
                            "type": id_type or None})
        if id_number is None and (id_type.upper() in _ID_NUMBER_TYPES or _ID_NUMBER_OID in authority) and idcard.is_valid(value):
            id_number = idcard.parse(value).number
    if id_number is None and idcard.is_valid(seg.value("19")):
        id_number = idcard.parse(seg.value("19")).number
    address = " ".join(p for p in (seg.value("11.1"), seg.value("11.3"), seg.value("11.4")) if p and p != '""') or None
    phone = seg.value("13.1") or seg.value("13.12") or None
    return {
        "source_id": identifiers[0]["value"] if identifiers else None,
        "identifiers": identifiers,
        "id_number": id_number,
        "name": _name(seg.value("5.1"), seg.value("5.2")),
        "sex": _SEX.get(seg.value("8").strip().upper()),
        "birth_date": _hl7_date(seg.value("7")),
        "phone": phone if phone != '""' else None,
        "address": address,
    }


def _encounter(msg: hl7v2.Message, patient: dict, status: str = "in-progress") -> dict | None:
    """The visit of an ADT message (PV1); ``surgeries`` counts its PR1 procedures (a discharge lists them).
    A new visit without PV1-44 starts when the event happened; a discharge or cancellation without it has no
    start (the event's time is not the admission's)."""
    pv1 = msg.get("PV1")
    if pv1 is None:
        return None
    event_time = _hl7_time(msg.value("EVN-2")) or _hl7_time(msg.timestamp)
    return {"source_id": pv1.value("19.1") or None, "patient_ref": patient["source_id"],
            "class": _CLASS.get(pv1.value("2").strip().upper(), "AMB"), "status": status, "recorded": event_time,
            "start": _hl7_time(pv1.value("44")) or (event_time if status == "in-progress" else None),
            "end": _hl7_time(pv1.value("45")), "department": pv1.value("3.1") or None,
            "attending": pv1.value("7.1") or None, "surgeries": len(msg.all("PR1"))}


def _lab_results(msg: hl7v2.Message) -> list[Event]:
    patient = _patient(msg)
    events = []
    for obx in msg.all("OBX"):
        events.append(("lab.result", {
            "source_id": f"{msg.control_id}:{obx.value('1') or len(events) + 1}",
            "patient_ref": patient["source_id"], "id_number": patient["id_number"],
            "code": {"code": obx.value("3.1"), "display": obx.value("3.2") or None, "system": obx.value("3.3") or None},
            "value_type": obx.value("2") or None, "value": obx.value("5"), "unit": obx.value("6.1") or None,
            "reference_range": obx.value("7") or None, "abnormal_flag": obx.value("8") or None,
            "status": obx.value("11") or None, "effective": _hl7_time(obx.value("14")) or _hl7_time(msg.value("OBR-7")),
        }))
    return events


_SIU = {"S12": "appointment.booked", "S13": "appointment.rescheduled", "S14": "appointment.modified", "S15": "appointment.cancelled"}
#: SIU triggers of a slot offer (SCH-8 = SLOT): new / rescheduled / modified publish it, cancelled / deleted withdraw it.
_SLOT = {"S12": "slot.published", "S13": "slot.published", "S14": "slot.published",
         "S15": "slot.withdrawn", "S17": "slot.withdrawn"}
_TS = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?(?:\.\d{1,4})?(?:([+-])(\d{2})(\d{2}))?$")


def _is_slot(msg: hl7v2.Message) -> bool:
    return msg.value("SCH-8.1").strip().upper() == "SLOT"


def _slot_error(msg: hl7v2.Message, problem: str) -> ValueError:
    return ValueError(f"SIU^{msg.trigger_event} slot offer (SCH-8 = SLOT): {problem}")


def _slot_time(msg: hl7v2.Message, fields: tuple[str, str], what: str) -> str:
    """The first of the two TS fields that has a value, as ISO 8601 with its offset (China time without one)."""
    field = next((f for f in fields if msg.value(f + ".1").strip()), None)
    if field is None:
        raise _slot_error(msg, f"{fields[0]} or {fields[1]} ({what}) is empty")
    value = msg.value(field + ".1").strip()
    m = _TS.match(value)
    try:
        if not m:
            raise ValueError(value)
        y, mo, d, h, mi, s, sign, oh, om = m.groups()
        zone = CHINA_TZ if not sign else timezone((1 if sign == "+" else -1) * timedelta(hours=int(oh), minutes=int(om)))
        return datetime(int(y), int(mo), int(d), int(h), int(mi), int(s or 0), tzinfo=zone).isoformat()
    except ValueError:
        raise _slot_error(msg, f"{field} ({what}) {value[:30]!r} is not an HL7 TS with minutes "
                               "(YYYYMMDDHHMM[SS][+ZZZZ]; without an offset it is China time)") from None


def _whole(msg: hl7v2.Message, path: str, what: str) -> int | None:
    value = msg.value(path).strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise _slot_error(msg, f"{path} ({what}) {value[:30]!r} is not a whole number")
    return int(value)


def _slot_events(msg: hl7v2.Message) -> list[Event]:
    """A slot offer: one slot per message, keyed by the hospital's own id (SCH-2), so a repeat updates it."""
    topic = _SLOT[msg.trigger_event]
    source_id = msg.value("SCH-2.1").strip()
    if not source_id:
        raise _slot_error(msg, "SCH-2.1 (filler appointment id = the hospital's slot id) is empty")
    if topic == "slot.withdrawn":
        return [(topic, {"source_id": source_id, "reason": msg.value("SCH-6.2") or msg.value("SCH-6.1") or None})]
    department = msg.value("AIS-3.1").strip()
    if not department:
        raise _slot_error(msg, "AIS-3.1 (service = the department code, e.g. 0301^心血管内科) is empty")
    capacity = _whole(msg, "AIG-6", "resource quantity = the slot's capacity")
    if capacity is None:
        raise _slot_error(msg, "AIG-6 (resource quantity = the slot's capacity) is empty")
    title = msg.value("AIP-4.2").strip() or msg.value("AIP-4.1").strip()
    return [(topic, {
        "source_id": source_id, "department_code": department, "department_name": msg.value("AIS-3.2").strip() or None,
        "practitioner_code": msg.value("AIP-3.1").strip() or None,
        "practitioner_name": _name(msg.value("AIP-3.2.1"), msg.value("AIP-3.3")),
        "title": title or None, "fee": _whole(msg, "ZFE-1", "registration fee in fen: 5000 for 50.00 yuan"),
        "starts_at": _slot_time(msg, ("TQ1-7", "SCH-11.4"), "start of the slot"),
        "ends_at": _slot_time(msg, ("TQ1-8", "SCH-11.5"), "end of the slot"),
        "capacity": capacity})]


def hl7_events(msg: hl7v2.Message) -> list[Event]:
    kind = (msg.message_type, msg.trigger_event)
    if kind[0] == "ADT":
        trigger = kind[1]
        if trigger in ("A01", "A04", "A28"):
            patient = _patient(msg)
            events: list[Event] = [("patient.registered", patient)]
            if trigger != "A28" and (encounter := _encounter(msg, patient)):
                events.append(("encounter.recorded", encounter))
            return events
        if trigger in ("A03", "A11"):
            patient = _patient(msg) if msg.get("PID") else {"source_id": None}
            encounter = _encounter(msg, patient, "finished" if trigger == "A03" else "cancelled")
            if encounter and trigger == "A03" and not encounter["end"]:  # discharged when the event says
                encounter["end"] = encounter["recorded"]
            if encounter and not msg.value("PV1-2").strip():  # a discharge need not repeat the patient class
                encounter["class"] = None
            return [("encounter.recorded", encounter)] if encounter else []
        if trigger in ("A08", "A31"):
            return [("patient.updated", _patient(msg))]
        if trigger in ("A40", "A34"):
            patient = _patient(msg)
            mrg = msg.get("MRG")
            return [("patient.merged", {**patient, "merged_source_id": mrg.value("1.1") if mrg else None})]
        return []
    if kind[0] == "ORU" and kind[1] == "R01":
        return _lab_results(msg)
    if kind[0] == "SIU" and kind[1] in _SLOT and _is_slot(msg):
        return _slot_events(msg)
    if kind[0] == "SIU" and kind[1] in _SIU:
        patient = _patient(msg) if msg.get("PID") else {"source_id": None}
        return [(_SIU[kind[1]], {
            "appointment_id": msg.value("SCH-1.1") or msg.value("SCH-2.1"), "patient_ref": patient["source_id"],
            "start": _hl7_time(msg.value("SCH-11.4") or msg.value("AIS-4")), "duration_minutes": msg.value("SCH-9") or None,
            "service": msg.value("AIS-3.2") or msg.value("AIS-3.1") or None,
            "practitioner": msg.value("AIP-3.1") or None, "location": msg.value("AIL-3.1") or None})]
    return []


def cda_event(header: cda.CdaHeader) -> Event:
    id_number = header.patient_ids.get(_ID_NUMBER_OID)
    return ("document.received", {
        "document_id": header.document_id.extension or header.document_id.root,
        "type_code": header.type_code, "type_name": header.type_name,
        "effective_time": header.effective_time.isoformat() if header.effective_time else None,
        "patient_ids": header.patient_ids,
        "id_number": id_number if id_number and idcard.is_valid(id_number) else None,
        "name": header.patient_name, "sex": header.sex_code,
        "birth_date": header.birth_date.isoformat() if header.birth_date else None,
        "custodian": {"code": header.custodian.code, "name": header.custodian.name},
        "author": header.author.name if header.author else None,
        "encounter_ids": [i.extension or i.root for i in header.encounter.ids] if header.encounter else [],
        "set_id": header.set_id.extension if header.set_id else None, "version": header.version_number,
    })


def events(kind: str, raw: bytes) -> list[Event]:
    """The canonical events of one stored message (raises if it cannot be mapped)."""
    if kind == "hl7v2":
        return hl7_events(hl7v2.parse(mllp.decode_text(raw)))
    if kind == "cda":
        return [cda_event(cda.parse_header(raw))]
    if kind == "fhir":
        return [(e["topic"], e["data"]) for e in fhir.map_payload(raw)]
    if kind == "batch":
        row = json.loads(raw)
        return [("patient.registered", {
            "source_id": row["source_id"], "identifiers": [{"value": row["source_id"], "authority": None, "type": "MR"}],
            "id_number": row.get("id_number"), "name": row["name"], "sex": row["sex"], "birth_date": row["birth_date"],
            "phone": row.get("phone"), "address": row.get("address")})]
    raise ValueError(f"unknown message kind {kind!r}")
