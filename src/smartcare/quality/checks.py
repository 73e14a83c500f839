"""The check kinds a rule in ``rules.yaml`` can use, each compiled once into a plain function.

A check reads ``Facts`` — one document parsed once (header, data elements by code, schema errors) —
and returns ``None`` when the document passes, or a ``Hit`` naming the element and, where it helps,
what was found. Hits never carry personal data (no ID numbers, names or birth dates), only codes,
measured values and positions: they are stored, shown to hospitals and may end up in logs.

A check that needs something the document does not have (a range on an element that is absent, the
ID-number/birth-date agreement when the ID number is itself invalid) passes: the missing element or
the invalid ID number is its own rule's finding, and one defect is reported once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from lxml import etree

from smartcare.platform import idcard
from smartcare.standards.cda import CdaHeader, Entry, Value, template_id_for
from smartcare.standards.cda.header import CdaError, parse_cda_time


@dataclass(frozen=True, slots=True)
class Hit:
    element: str  # a DE code, a LOINC code or a header path
    line: int | None = None
    detail: str = ""


class Context(Protocol):
    """What checks need beyond the document: terminology, the registry, the master index, history."""

    value_sets: dict[str, dict[str, str]]  # value set id -> code -> display

    def custodian_known(self, code: str) -> bool: ...

    def patient_resolved(self, facts: Facts) -> bool: ...

    def earlier_with_other_content(self, custodian: str, document_id: str, sha256: str) -> bool: ...


@dataclass(slots=True)
class Facts:
    """One document, parsed once, as every rule sees it."""

    type_code: str
    header: CdaHeader
    entries: tuple[Entry, ...]
    root: etree._Element
    schema_errors: list[str]
    sha256: str
    sent_at: datetime | None = None
    values: dict[str, Entry] = field(default_factory=dict)  # the first occurrence of each data element
    every: dict[str, list[Entry]] = field(default_factory=dict)  # all of them (diagnoses, lab results repeat)
    registry: dict[str, Any] = field(default_factory=dict)  # what the registry knows (person resolved …)
    _id: tuple | None = None

    def __post_init__(self) -> None:
        for e in self.entries:
            if e.code in self.every:
                self.every[e.code].append(e)
            else:
                self.every[e.code] = [e]
                self.values[e.code] = e

    def id_number(self) -> tuple[idcard.IdNumber | None, str | None]:
        """The patient's ID number parsed once for every rule: (parsed, None) or (None, why it is invalid)."""
        if self._id is None:
            number = self.header.id_number
            if not number:
                self._id = (None, None)
            else:
                try:
                    self._id = (idcard.parse(number), None)
                except idcard.InvalidIdNumber as exc:
                    self._id = (None, exc.reason)
        return self._id


Check = Callable[[Facts], Hit | None]
KINDS: dict[str, Callable[..., Check]] = {}


def kind(name: str):
    def register(factory):
        KINDS[name] = factory
        return factory
    return register


def _line(facts: Facts, path: str) -> int | None:
    """The line of the element at ``path`` (``recordTarget/patientRole/patient/name``), or of the nearest
    ancestor on the path that is there, so a report points where the hospital has to look."""
    el, line = facts.root, facts.root.sourceline
    for tag in path.split("/"):
        el = next(el.iterchildren(f"{{urn:hl7-org:v3}}{tag}"), None)
        if el is None:
            break
        line = el.sourceline
    return line


def _number(entry: Entry | None) -> Decimal | None:
    return entry.value.number if entry is not None and entry.value is not None else None


def _time(entry: Entry | None) -> datetime | None:
    if entry is None or entry.value is None or not entry.value.text:
        return None
    try:
        return parse_cda_time(entry.value.text)
    except CdaError:
        return None


def _filled(value: Value | None) -> bool:
    if value is None:
        return False
    return bool(value.code if value.kind == "CD" else value.text)


def _valid_id(facts: Facts) -> idcard.IdNumber | None:
    return facts.id_number()[0]


# --- conformance ---------------------------------------------------------------------------------


@kind("schema")
def _schema(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        if not f.schema_errors:
            return None
        first = f.schema_errors[0]
        line = int(first.split(":")[0].removeprefix("line ")) if first.startswith("line ") else None
        more = f" (+{len(f.schema_errors) - 1})" if len(f.schema_errors) > 1 else ""
        return Hit("ClinicalDocument", line, first.split(": ", 1)[-1][:300] + more)
    return check


@kind("template")
def _template(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        if f.header.template_id == template_id_for(f.type_code):
            return None
        return Hit("templateId", _line(f, "templateId"), f"expected {template_id_for(f.type_code)}")
    return check


@kind("time_format")
def _time_format(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        for e in f.entries:
            if e.value is not None and e.value.kind == "TS" and e.value.text and _time(e) is None:
                return Hit(e.code, e.line, "not a YYYYMMDDHHMMSS time")
        return None
    return check


# --- completeness ---------------------------------------------------------------------------------

_BIRTH = "recordTarget/patientRole/patient/birthTime"
_SEX = "recordTarget/patientRole/patient/administrativeGenderCode"
HEADER_FIELDS: dict[str, tuple[str, Callable[[CdaHeader], Any]]] = {
    "document_id": ("id", lambda h: h.document_id.extension),
    "effective_time": ("effectiveTime", lambda h: h.effective_time),
    "patient_name": ("recordTarget/patientRole/patient/name", lambda h: h.patient_name),
    "sex": ("recordTarget/patientRole/patient/administrativeGenderCode", lambda h: h.sex_code),
    "id_number": ("recordTarget/patientRole/patient/id", lambda h: h.id_number),
    "birth_date": ("recordTarget/patientRole/patient/birthTime", lambda h: h.birth_date),
    "author_name": ("author/assignedAuthor/assignedPerson/name", lambda h: h.author.name if h.author else None),
    "custodian_name": ("custodian/assignedCustodian/representedCustodianOrganization/name", lambda h: h.custodian.name),
    "encounter_start": ("componentOf/encompassingEncounter/effectiveTime",
                        lambda h: h.encounter.start if h.encounter else None),
    "type_code": ("code", lambda h: h.type_code),
}


@kind("header")
def _header(ctx: Context, field: str) -> Check:
    path, read = HEADER_FIELDS[field]

    def check(f: Facts) -> Hit | None:
        return None if read(f.header) else Hit(path, _line(f, path))
    return check


@kind("required")
def _required(ctx: Context, element: str) -> Check:
    def check(f: Facts) -> Hit | None:
        found = f.every.get(element)
        if found is None:
            return Hit(element, None, "absent")
        return None if any(_filled(e.value) for e in found) else Hit(element, found[0].line, "empty")
    return check


# --- validity -------------------------------------------------------------------------------------


@kind("id_number_valid")
def _id_number_valid(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        _, problem = f.id_number()
        where = "recordTarget/patientRole/patient/id"
        return Hit(where, _line(f, where), problem) if problem else None
    return check


@kind("header_value_set")
def _header_value_set(ctx: Context, field: str, value_set: str) -> Check:
    path, read = HEADER_FIELDS[field]
    codes = ctx.value_sets[value_set]

    def check(f: Facts) -> Hit | None:
        code = read(f.header)
        return None if not code or code in codes else Hit(path, _line(f, path), f"code {code}")
    return check


@kind("value_set")
def _value_set(ctx: Context, element: str, value_set: str) -> Check:
    codes = ctx.value_sets[value_set]

    def check(f: Facts) -> Hit | None:
        for e in f.every.get(element, ()):
            if e.value is not None and e.value.code and e.value.code not in codes:
                return Hit(element, e.line, f"code {e.value.code} is not in {value_set}")
        return None
    return check


@kind("code_display")
def _code_display(ctx: Context, element: str, value_set: str) -> Check:
    codes = ctx.value_sets[value_set]

    def check(f: Facts) -> Hit | None:
        for e in f.every.get(element, ()):
            if e.value is not None and e.value.code in codes and e.value.display != codes[e.value.code]:
                return Hit(element, e.line, f"{e.value.code} is {codes[e.value.code]}, not {e.value.display}")
        return None
    return check


@kind("unit")
def _unit(ctx: Context, element: str, unit: str) -> Check:
    def check(f: Facts) -> Hit | None:
        for e in f.every.get(element, ()):
            if e.value is not None and e.value.text and e.value.unit != unit:
                return Hit(element, e.line, f"unit {e.value.unit or '(none)'}")
        return None
    return check


@kind("lab_unit")
def _lab_unit(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        for e in f.entries:
            if not e.code.startswith("DE") and e.value is not None and e.value.kind == "PQ" and not e.value.unit:
                return Hit(e.code, e.line, "no unit")
        return None
    return check


# --- consistency ----------------------------------------------------------------------------------


@kind("id_birth")
def _id_birth(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        parsed = _valid_id(f)
        born = f.header.birth_date
        if parsed is None or born is None or parsed.birth_date == born:
            return None
        return Hit(_BIRTH, _line(f, _BIRTH))
    return check


@kind("id_sex")
def _id_sex(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        parsed = _valid_id(f)
        sex = f.header.sex_code
        if parsed is None or sex not in ("1", "2") or parsed.sex == sex:
            return None
        return Hit(_SEX, _line(f, _SEX))
    return check


@kind("order")
def _order(ctx: Context, before: str, after: str) -> Check:
    def check(f: Facts) -> Hit | None:
        first, then = _time(f.values.get(before)), _time(f.values.get(after))
        if first is None or then is None or first <= then:
            return None
        return Hit(after, f.values[after].line, f"{before} after {after}")
    return check


@kind("stay_days")
def _stay_days(ctx: Context, admitted: str, discharged: str, days: str) -> Check:
    def check(f: Facts) -> Hit | None:
        start, end, n = _time(f.values.get(admitted)), _time(f.values.get(discharged)), _number(f.values.get(days))
        if start is None or end is None or n is None or start > end:
            return None
        expected = max((end.date() - start.date()).days, 1)
        return None if n == expected else Hit(days, f.values[days].line, f"{n} days, dates give {expected}")
    return check


@kind("greater")
def _greater(ctx: Context, left: str, right: str) -> Check:
    def check(f: Facts) -> Hit | None:
        a, b = _number(f.values.get(left)), _number(f.values.get(right))
        if a is None or b is None or a > b:
            return None
        return Hit(left, f.values[left].line, f"{a} ≤ {b}")
    return check


@kind("same_text")
def _same_text(ctx: Context, code_element: str, text_element: str, value_set: str) -> Check:
    codes = ctx.value_sets[value_set]

    def check(f: Facts) -> Hit | None:
        coded, text = f.values.get(code_element), f.values.get(text_element)
        if coded is None or text is None or coded.value is None or text.value is None:
            return None
        expected = codes.get(coded.value.code or "")
        if expected is None or not text.value.text or text.value.text == expected:
            return None
        return Hit(text_element, text.line, f"{coded.value.code} is {expected}")
    return check


@kind("header_time")
def _header_time(ctx: Context, element: str, field: str) -> Check:
    _, read = HEADER_FIELDS[field]

    def check(f: Facts) -> Hit | None:
        when, header = _time(f.values.get(element)), read(f.header)
        if when is None or header is None or when == header:
            return None
        return Hit(element, f.values[element].line, "differs from the encounter time in the header")
    return check


# --- plausibility ---------------------------------------------------------------------------------


@kind("range")
def _range(ctx: Context, element: str, min: float, max: float) -> Check:
    low, high = Decimal(str(min)), Decimal(str(max))

    def check(f: Facts) -> Hit | None:
        for e in f.every.get(element, ()):
            if e.value is None or not e.value.text:
                continue
            n = e.value.number
            if n is None:
                return Hit(element, e.line, "not a number")
            if not low <= n <= high:
                return Hit(element, e.line, f"{n} {e.value.unit or ''}".strip())
        return None
    return check


@kind("birth_plausible")
def _birth_plausible(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        born, h = f.header.birth_date, f.header
        if born is None:
            return None
        seen = (h.encounter.start if h.encounter and h.encounter.start else h.effective_time)
        day = seen.date() if seen else date.today()
        if born <= day and day.year - born.year <= 120:
            return None
        return Hit(_BIRTH, _line(f, _BIRTH))
    return check


# --- uniqueness, timeliness, integration ------------------------------------------------------------


@kind("unique_document_id")
def _unique_document_id(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        doc_id = f.header.document_id.extension or f.header.document_id.root
        if not ctx.earlier_with_other_content(f.header.custodian.code or "", doc_id, f.sha256):
            return None
        return Hit("id", _line(f, "id"), "used before for another document")
    return check


@kind("upload_delay")
def _upload_delay(ctx: Context, max_hours: float) -> Check:
    limit = timedelta(hours=max_hours)

    def check(f: Facts) -> Hit | None:
        written = f.header.effective_time
        if f.sent_at is None or written is None or f.sent_at - written <= limit:
            return None
        hours = (f.sent_at - written).total_seconds() / 3600
        return Hit("effectiveTime", _line(f, "effectiveTime"), f"uploaded {hours:.0f} h after it was written")
    return check


@kind("not_future")
def _not_future(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        written = f.header.effective_time
        if f.sent_at is None or written is None or written <= f.sent_at + timedelta(minutes=5):
            return None
        return Hit("effectiveTime", _line(f, "effectiveTime"), "written after it was uploaded")
    return check


@kind("patient_resolvable")
def _patient_resolvable(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        return None if ctx.patient_resolved(f) else Hit("recordTarget/patientRole", _line(f, "recordTarget/patientRole"))
    return check


@kind("custodian_known")
def _custodian_known(ctx: Context) -> Check:
    def check(f: Facts) -> Hit | None:
        code = f.header.custodian.code or ""
        where = "custodian/assignedCustodian/representedCustodianOrganization/id"
        return None if ctx.custodian_known(code) else Hit(where, _line(f, where), f"code {code}")
    return check
