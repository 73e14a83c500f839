"""FHIR R4 resources -> the platform's canonical events.

Hospitals that speak FHIR post a Patient, an Encounter, an Observation, or a Bundle of them; the
exchange hub turns each resource into one canonical event (``{"topic": …, "data": {…}}``) so that
the consumers (EMPI, records, warehouse) never see FHIR. Every resource is first validated with
the ``fhir.resources`` models, so a malformed payload is refused with the entry index and the
field path instead of half-mapped. ``fhir.resources`` 8 defaults to R5, whose Encounter differs
(``class`` became a list of CodeableConcept); its ``R4B`` package keeps the R4 shape of the three
resources we accept, so R4 JSON validates unchanged.

Only ``data`` carries personal data; topics and error messages name types and paths, never values.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Final

import pydantic
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.quantity import Quantity

__all__ = [
    "ID_NUMBER_SYSTEM",
    "TOPIC_ENCOUNTER",
    "TOPIC_LAB_RESULT",
    "TOPIC_PATIENT",
    "FhirError",
    "map_payload",
    "map_resource",
]

TOPIC_PATIENT: Final = "patient.registered"
TOPIC_ENCOUNTER: Final = "encounter.recorded"
TOPIC_LAB_RESULT: Final = "lab.result"

ID_NUMBER_SYSTEM: Final = "urn:oid:2.16.156.10011.1.3"  # 居民身份证号
_ID_NUMBER_TYPE: Final = "NNCHN"  # HL7 v2 table 0203: national person identifier, China
_SEX: Final = {"male": "1", "female": "2", "unknown": "0", "other": "9"}  # GB/T 2261.1


class FhirError(ValueError):
    """A payload the hub cannot map (answered with 422).

    ``index`` is the Bundle entry (None for a single resource); ``path`` the field, dotted with
    ``[n]`` for list positions (``identifier[0].value``), when one field is to blame.
    """

    def __init__(self, message: str, *, index: int | None = None, path: str | None = None):
        super().__init__(message)
        self.index = index
        self.path = path


# --- entry points -------------------------------------------------------------------------------


def map_payload(data: bytes) -> list[dict[str, Any]]:
    """Parse a JSON payload (one resource or a Bundle) and map it; see ``map_resource``."""
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise FhirError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise FhirError("payload is not UTF-8 (or UTF-16/32) encoded JSON") from None
    except RecursionError:
        raise FhirError("JSON is nested too deeply to be a FHIR resource") from None
    return map_resource(obj)


def map_resource(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Map one resource, or each entry of a Bundle in order, to canonical events.

    All or nothing: the first entry that is invalid or of an unsupported type raises
    ``FhirError`` and nothing is returned, so a hospital never gets half a Bundle accepted.
    """
    if not isinstance(obj, dict):
        raise FhirError(f"expected a FHIR resource (a JSON object), got {_json_kind(obj)}")
    if obj.get("resourceType") != "Bundle":
        return [_map_one(obj, index=None, full_url=None)]

    entries = obj.get("entry") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FhirError("Bundle.entry must be a list of objects", path="entry")
    # Validate the envelope without its resources; each resource is validated on its own below,
    # so that an error names the entry it is in.
    _validate(Bundle, {**obj, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in entries]}, "Bundle")
    events = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        if resource is None:
            raise FhirError(f"Bundle.entry[{i}]: has no resource (only creates and updates are accepted)", index=i)
        events.append(_map_one(resource, index=i, full_url=entry.get("fullUrl")))
    return events


# --- validation ---------------------------------------------------------------------------------


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validate(model: type[pydantic.BaseModel], obj: dict[str, Any], where: str, index: int | None = None) -> Any:
    try:
        return model.model_validate(obj)
    except pydantic.ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        first = errors[0]
        path = _path(first["loc"]) or "(resource)"
        message = first["msg"].removeprefix("Value error, ")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise FhirError(f"{where}: invalid field {path}: {message}{more}", index=index, path=path) from None


def _map_one(obj: object, *, index: int | None, full_url: str | None) -> dict[str, Any]:
    where = f"Bundle.entry[{index}]" if index is not None else "resource"
    if not isinstance(obj, dict):
        raise FhirError(f"{where}: expected a FHIR resource (a JSON object), got {_json_kind(obj)}", index=index)
    resource_type = obj.get("resourceType")
    if not resource_type or not isinstance(resource_type, str):
        raise FhirError(f"{where}: no resourceType", index=index, path="resourceType")
    if resource_type not in _MAPPERS:
        prefix = f"{where}: " if index is not None else ""
        raise FhirError(f"{prefix}unsupported resource type {resource_type[:64]}", index=index, path="resourceType")
    model, topic, mapper = _MAPPERS[resource_type]
    where = f"{where} ({resource_type})" if index is not None else resource_type
    data = mapper(_validate(model, obj, where, index), where, index)
    if full_url:
        data["full_url"] = full_url  # how other entries of the same Bundle refer to this one
    return {"topic": topic, "data": data}


# --- small readers ------------------------------------------------------------------------------


def _iso(value: datetime | date | time | str | None) -> str | None:
    """FHIR dates may be partial ("1985", "2024-05"): those stay strings, the rest go ISO 8601."""
    if value is None:
        return None
    return value if isinstance(value, str) else value.isoformat()


def _number(value: Decimal | int | float | None) -> int | float | None:
    if value is None or isinstance(value, int):
        return value
    return float(value)


def _quantity(q: Quantity | None) -> dict[str, Any] | None:
    if q is None:
        return None
    return {"value": _number(q.value), "unit": q.unit or q.code, "system": q.system, "code": q.code}


def _coding(concept: CodeableConcept | None) -> dict[str, Any] | None:
    if concept is None:
        return None
    first = concept.coding[0] if concept.coding else None
    if first is None:
        return {"system": None, "code": None, "display": concept.text}
    return {"system": first.system, "code": first.code, "display": first.display or concept.text}


def _ref(reference: Any) -> str | None:
    return reference.reference if reference is not None else None


def _identifiers(items: list[Identifier] | None) -> list[dict[str, str | None]]:
    return [{"system": i.system, "value": i.value} for i in items or () if i.value]


def _source_id(resource_id: str | None, identifiers: list[dict[str, str | None]]) -> str | None:
    return resource_id or (identifiers[0]["value"] if identifiers else None)


def _is_id_number(identifier: Identifier) -> bool:
    if identifier.system == ID_NUMBER_SYSTEM:
        return True
    codings = identifier.type.coding if identifier.type and identifier.type.coding else ()
    return any(c.code == _ID_NUMBER_TYPE for c in codings)


def _preferred(items: list[Any] | None, *uses: str) -> Any:
    """The first item whose ``use`` is the earliest of ``uses``, else the first item."""
    if not items:
        return None
    for use in uses:
        for item in items:
            if item.use == use:
                return item
    return items[0]


# --- mappers ------------------------------------------------------------------------------------


def _patient(p: Patient, where: str, index: int | None) -> dict[str, Any]:
    identifiers = _identifiers(p.identifier)
    id_number = next((i.value for i in p.identifier or () if i.value and _is_id_number(i)), None)

    name = _preferred(p.name, "official", "usual")
    full_name = None
    if name is not None:  # Chinese order, no space: family name then given names
        full_name = name.text or ("".join([name.family or "", *(name.given or ())]) or None)

    sex = None
    if p.gender is not None:
        sex = _SEX.get(p.gender)
        if sex is None:
            raise FhirError(f"{where}: invalid field gender: must be male, female, other or unknown",
                            index=index, path="gender")

    phones = [t for t in p.telecom or () if t.system == "phone" and t.value]
    phone = _preferred(phones, "mobile", "home")

    address = _preferred(p.address, "home")
    address_text = None
    if address is not None:  # largest part first; a municipality (重庆市) is both state and city
        parts = [address.state, address.city if address.city != address.state else None, address.district,
                 *(address.line or ())]
        address_text = address.text or ("".join(part for part in parts if part) or None)

    return {
        "source_id": _source_id(p.id, identifiers),
        "identifiers": identifiers,
        "id_number": id_number,
        "name": full_name,
        "sex": sex,
        "birth_date": _iso(p.birthDate),
        "phone": phone.value if phone is not None else None,
        "address": address_text,
    }


def _required(value: Any, path: str, where: str, index: int | None) -> Any:
    """fhir.resources lets an explicit JSON null through where FHIR requires a value."""
    if value is None:
        raise FhirError(f"{where}: invalid field {path}: Field required", index=index, path=path)
    return value


def _encounter(e: Encounter, where: str, index: int | None) -> dict[str, Any]:
    identifiers = _identifiers(e.identifier)
    encounter_class = _required(e.class_fhir, "class", where, index)
    return {
        "source_id": _source_id(e.id, identifiers),
        "identifiers": identifiers,
        "patient_ref": _ref(e.subject),
        "class": encounter_class.code,  # v3 ActCode: AMB 门诊, IMP 住院, EMER 急诊
        "status": _required(e.status, "status", where, index),
        "start": _iso(e.period.start) if e.period else None,
        "end": _iso(e.period.end) if e.period else None,
        # The department is the serviceProvider (an Organization partOf the hospital) and/or a Location.
        "service_provider": _ref(e.serviceProvider),
        "locations": [r for r in (_ref(loc.location) for loc in e.location or ()) if r],
    }


def _observation_value(o: Observation, where: str, index: int | None) -> Any:
    if o.valueQuantity is not None:
        return _quantity(o.valueQuantity)
    if o.valueCodeableConcept is not None:
        return _coding(o.valueCodeableConcept)
    if o.valueRange is not None:
        return {"low": _quantity(o.valueRange.low), "high": _quantity(o.valueRange.high)}
    if o.valueRatio is not None:
        return {"numerator": _quantity(o.valueRatio.numerator), "denominator": _quantity(o.valueRatio.denominator)}
    for name in ("valueString", "valueBoolean", "valueInteger"):
        if (value := getattr(o, name)) is not None:
            return value
    for name in ("valueDateTime", "valueTime"):
        if (value := getattr(o, name)) is not None:
            return _iso(value)
    for name in ("valueSampledData", "valuePeriod"):
        if getattr(o, name) is not None:
            raise FhirError(f"{where}: {name} is not supported; send a Quantity, string or CodeableConcept",
                            index=index, path=name)
    return None  # no value: see dataAbsentReason, or a panel whose results are in hasMember


def _observation(o: Observation, where: str, index: int | None) -> dict[str, Any]:
    identifiers = _identifiers(o.identifier)
    reference_range = None
    if o.referenceRange:
        rr = o.referenceRange[0]
        low, high = _quantity(rr.low), _quantity(rr.high)
        reference_range = {
            "low": low["value"] if low else None,
            "high": high["value"] if high else None,
            "unit": (low or high or {}).get("unit"),
            "text": rr.text,
        }
    effective = o.effectiveDateTime or o.effectiveInstant or (o.effectivePeriod.start if o.effectivePeriod else None)
    return {
        "source_id": _source_id(o.id, identifiers),
        "identifiers": identifiers,
        "patient_ref": _ref(o.subject),
        "encounter_ref": _ref(o.encounter),
        "code": _coding(_required(o.code, "code", where, index)),
        "value": _observation_value(o, where, index),
        "effective": _iso(effective),
        "status": _required(o.status, "status", where, index),
        "reference_range": reference_range,
    }


_Mapper = Callable[[Any, str, int | None], dict[str, Any]]
_MAPPERS: Final[dict[str, tuple[type[pydantic.BaseModel], str, _Mapper]]] = {
    "Patient": (Patient, TOPIC_PATIENT, _patient),
    "Encounter": (Encounter, TOPIC_ENCOUNTER, _encounter),
    "Observation": (Observation, TOPIC_LAB_RESULT, _observation),
}
