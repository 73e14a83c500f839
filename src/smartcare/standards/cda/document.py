"""WS/T 500 documents as data: build one of any type from what a hospital knows, read the data elements back.

A document is a header (who, where, when) and sections of data elements (WS 363 codes ``DE…``, each
with a typed value). ``build`` turns a ``Document`` into XML through the type's own schema (see
``schema``: the header differs per type, the content is written once), so every type the schemas
describe can be built; the region's synthetic documents use C0001, C0002, C0004, C0006, C0007, C0032,
C0034 and C0053. ``parse`` reads any of the 53 types back: the header (``header.parse_header``) and
every coded data element in the body, with the line it sits on so a quality report can point at it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Final

from lxml import etree

from smartcare.standards.cda.header import (
    CHINA_TZ, DOC_TYPE_SYSTEM, HL7_NS, OID_AUTHOR, OID_BED, OID_DEPARTMENT, OID_HEALTH_CARD_NO, OID_ID_NUMBER,
    OID_INPATIENT_NO, OID_ORGANIZATION, OID_OUTPATIENT_NO, OID_PRACTITIONER, OID_ROOM, OID_WARD, SEX_SYSTEM, Address,
    CdaError, CdaHeader, parse_header, template_id_for,
)
from smartcare.standards.cda.schema import XSI, Schema, schema_for
from smartcare.standards.xml import parse_xml

DE_SYSTEM: Final = "2.16.156.10011.2.2.1"  # WS 363 卫生信息数据元目录
DE_SYSTEM_NAME: Final = "卫生信息数据元目录"
LOINC: Final = "2.16.840.1.113883.6.1"
OID_RECORD_NO: Final = "2.16.156.10011.1.13"  # 病案号
OID_SPECIMEN_NO: Final = "2.16.156.10011.1.14"  # 标本编号
OID_PRESCRIPTION_NO: Final = "2.16.156.10011.1.20"  # 处方编号
OID_APPLICATION_NO: Final = "2.16.156.10011.1.24"  # 电子申请单编号
OID_REPORT_NO: Final = "2.16.156.10011.1.32"  # 检查/检验报告单号

TITLES: Final = {
    "C0001": "病历概要", "C0002": "门急诊病历", "C0003": "急诊留观病历", "C0004": "西药处方", "C0005": "中药处方",
    "C0006": "检查报告", "C0007": "检验报告", "C0032": "住院病案首页", "C0034": "入院记录", "C0053": "出院小结",
}
SEX_NAMES: Final = {"0": "未知的性别", "1": "男性", "2": "女性", "9": "未说明的性别"}
VISIT_KINDS: Final = {"1": "门诊", "2": "急诊", "3": "住院"}


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value:
    """A typed HL7 value: ST text, PQ number + unit, CD code (+ display, system), TS time, INT, REAL, BL, MO."""

    kind: str
    text: str | None = None  # ST text, or the number / timestamp / boolean as written
    unit: str | None = None  # PQ unit; MO currency
    code: str | None = None  # CD
    display: str | None = None
    system: str | None = None
    system_name: str | None = None

    @property
    def number(self) -> Decimal | None:
        """The value as a number (PQ, INT, REAL, MO), or None when it is not one."""
        if self.kind not in ("PQ", "INT", "REAL", "MO") or not self.text:
            return None
        try:
            n = Decimal(self.text)
        except ArithmeticError:
            return None
        return n if n.is_finite() else None  # NaN and Infinity are no measurement


def st(text: str) -> Value:
    return Value("ST", text)


def pq(number: float | int | Decimal | str, unit: str) -> Value:
    return Value("PQ", str(number), unit)


def cd(code: str, display: str, system: str, system_name: str = "") -> Value:
    return Value("CD", code=code, display=display, system=system, system_name=system_name)


def ts(when: datetime | date) -> Value:
    return Value("TS", format_time(when))


def integer(n: int) -> Value:
    return Value("INT", str(n))


def boolean(b: bool) -> Value:
    return Value("BL", "true" if b else "false")


def money(fen: int) -> Value:
    """An amount in fen written as yuan with two decimals (C0032's MO insists on them)."""
    sign = "-" if fen < 0 else ""
    return Value("MO", f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}", "元")


def format_time(when: datetime | date) -> str:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise CdaError("times must be timezone-aware (the platform never guesses a time zone)")
        return when.astimezone(CHINA_TZ).strftime("%Y%m%d%H%M%S")
    return when.strftime("%Y%m%d")


@dataclass(frozen=True, slots=True)
class DataElement:
    """One WS 363 data element in the body: its code (``DE04.10.186.00``), name and value (None: not recorded)."""

    code: str
    name: str
    value: Value | None


@dataclass(frozen=True, slots=True)
class Section:
    code: str  # LOINC section code
    name: str
    elements: tuple[DataElement, ...]
    text: str = ""


# --- what a document says ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Patient:
    id_number: str = field(repr=False)
    name: str = field(repr=False)
    sex: str  # GB/T 2261.1
    birth_date: date = field(repr=False)
    phone: str = field(default="", repr=False)
    address: Address = field(default_factory=Address, repr=False)
    health_card_no: str | None = None
    marital: tuple[str, str] = ("90", "未说明的婚姻状况")
    ethnic: tuple[str, str] = ("01", "汉族")
    occupation: tuple[str, str] = ("90", "其他")


@dataclass(frozen=True, slots=True)
class Practitioner:
    code: str
    name: str = field(repr=False)
    title: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Visit:
    """The encounter a document belongs to: outpatient/emergency (门(急)诊号) or inpatient (住院号)."""

    kind: str  # 1 门诊, 2 急诊, 3 住院
    number: str
    start: datetime
    end: datetime | None = None
    department_code: str = ""
    department_name: str = ""
    ward_code: str = ""
    ward_name: str = ""
    room: str = ""
    bed: str = ""
    record_no: str = ""  # 病案号 (inpatient)


@dataclass(frozen=True, slots=True, kw_only=True)
class Document:
    type_code: str
    document_id: str
    effective_time: datetime
    patient: Patient
    custodian_code: str
    custodian_name: str
    author: Practitioner
    visit: Visit
    sections: tuple[Section, ...]
    reviewer: Practitioner | None = None  # legal authenticator (科主任, 审核药剂师 …)
    order_no: str = ""  # 处方编号 / 电子申请单编号 / 报告单号, by type
    specimen_no: str = ""
    set_id: str = ""
    version: int | None = None
    replaces: str = ""  # document id of the version this one replaces (relatedDocument RPLC)


# --- building ----------------------------------------------------------------------------------


def _ii(root: str, extension: str) -> dict:
    return {"@root": root, "@extension": extension}


def _code(code: str, display: str, system: str, system_name: str) -> dict:
    return {"@code": code, "@displayName": display, "@codeSystem": system, "@codeSystemName": system_name}


def _addr(a: Address, use: str | None = "H") -> dict:
    return {"@use": use, "houseNumber": a.house_number, "streetName": a.street, "township": a.township,
            "county": a.county, "city": a.city, "state": a.state, "postalCode": a.postal_code}


def _age(born: date, on: date) -> dict:
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    if years >= 1:
        return {"@value": str(years), "@unit": "岁"}
    return {"@value": str(max((on - born).days, 1)), "@unit": "天"}  # the schemas want a positive age: day 1


def _patient_ids(d: Document) -> list[dict]:
    """patientRole/id, as each type's schema names them (its documentation lists them in this order)."""
    v, t = d.visit, d.type_code
    visit_no = _ii(OID_INPATIENT_NO if v.kind == "3" else OID_OUTPATIENT_NO, v.number)
    card = (_ii(OID_HEALTH_CARD_NO, d.patient.health_card_no) if d.patient.health_card_no
            else _ii(OID_ID_NUMBER, d.patient.id_number))
    ids = {
        "C0001": [card], "C0053": [card],
        "C0002": [visit_no, _ii(OID_APPLICATION_NO, d.order_no)],
        "C0004": [visit_no, _ii(OID_PRESCRIPTION_NO, d.order_no)],
        "C0006": [visit_no, _ii(OID_REPORT_NO, d.order_no), _ii(OID_SPECIMEN_NO, d.specimen_no)],
        "C0007": [visit_no, _ii(OID_REPORT_NO, d.order_no), _ii(OID_SPECIMEN_NO, d.specimen_no)],
        "C0032": [card, visit_no, _ii(OID_RECORD_NO, v.record_no)],
        "C0034": [visit_no],
    }.get(t, [visit_no])
    return [i for i in ids if i["@extension"]]


def _signer(who: Practitioner, when: str, role: str) -> dict:
    return {"time": {"@value": when}, "signatureCode": {"@code": "S"},
            "assignedEntity": {"id": _ii(OID_PRACTITIONER, who.code), "code": {"@displayName": who.title or role},
                               "assignedPerson": {"name": who.name}}}


def _place(d: Document) -> dict:
    """bed inside room inside department inside ward inside hospital: WS/T 500's nested wholeOrganization."""
    v = d.visit
    levels = [(OID_BED, v.bed, v.bed), (OID_ROOM, v.room, v.room), (OID_DEPARTMENT, v.department_code, v.department_name),
              (OID_WARD, v.ward_code, v.ward_name), (OID_ORGANIZATION, d.custodian_code, d.custodian_name)]
    inner: dict = {}
    for root, code, name in reversed(levels):
        inner = {"asOrganizationPartOf": {"wholeOrganization": {"id": _ii(root, code), "name": name, **inner}}}
    return inner


def _header(d: Document) -> dict:
    p, v = d.patient, d.visit
    written = format_time(d.effective_time)
    hospital = {"id": _ii(OID_ORGANIZATION, d.custodian_code), "name": d.custodian_name}
    department = {"id": _ii(OID_DEPARTMENT, v.department_code), "name": v.department_name,
                  "asOrganizationPartOf": {"wholeOrganization": hospital}}
    contact = {"code": _code("01", "本人", "2.16.156.10011.2.3.3.8", "家庭关系代码表(GB/T 4761)"),
               "addr": _addr(p.address, None), "telecom": {"@use": "H", "@value": p.phone},
               "associatedPerson": {"name": p.name}, "scopingOrganization": department}
    reviewer = d.reviewer or d.author
    return {
        "realmCode": {"@code": "CN"},
        "typeId": {"@root": "2.16.840.1.113883.1.3", "@extension": "POCD_MT000040"},
        "templateId": {"@root": template_id_for(d.type_code)},
        "id": _ii("2.16.156.10011.1.1", d.document_id),
        "code": {"@code": d.type_code, "@codeSystem": DOC_TYPE_SYSTEM, "@codeSystemName": "卫生信息共享文档规范编码体系"},
        "title": TITLES.get(d.type_code),  # None: the schema's one allowed title
        "effectiveTime": {"@value": written},
        "confidentialityCode": _code("N", "正常访问保密级别", "2.16.840.1.113883.5.25", "Confidentiality"),
        "languageCode": {"@code": "zh-CN"},
        "setId": d.set_id, "versionNumber": "" if d.version is None else str(d.version),
        "recordTarget": {"patientRole": {
            "id": _patient_ids(d),
            "patientType": {"patienttypeCode": _code(v.kind, VISIT_KINDS[v.kind], "2.16.156.10011.2.3.1.271", "患者类型代码表")},
            "addr": _addr(p.address), "telecom": {"@value": p.phone},
            "patient": {
                "id": _ii(OID_ID_NUMBER, p.id_number), "name": p.name,
                "administrativeGenderCode": _code(p.sex, SEX_NAMES.get(p.sex, ""), SEX_SYSTEM, "生理性别代码表(GB/T 2261.1)"),
                "birthTime": {"@value": format_time(p.birth_date)},
                "maritalStatusCode": _code(*p.marital, "2.16.156.10011.2.3.3.5", "婚姻状况代码表(GB/T 2261.2)"),
                "ethnicGroupCode": _code(*p.ethnic, "2.16.156.10011.2.3.3.3", "民族类别代码表(GB 3304)"),
                "nationality": _code("156", "中国", "2.16.156.10011.2.3.3.1", "世界各国和地区名称代码(GB/T 2659)"),
                "age": _age(p.birth_date, v.start.astimezone(CHINA_TZ).date()),
                "employerOrganization": {"name": "", "telecom": {"@value": ""}, "addr": _addr(Address())},
                "household": {"place": {"addr": _addr(p.address, None)}},
                "birthplace": {"place": {"addr": _addr(p.address, None)}},
                "nativePlace": {"place": {"addr": _addr(p.address, None)}},
                "occupation": {"occupationCode": _code(*p.occupation, "2.16.156.10011.2.3.3.13",
                                                       "从业状况(个人身体)代码表(GB/T 2261.4)")},
            },
            # C0002/C0004: the department that wrote it; C0032/C0053: the hospital itself
            "providerOrganization": hospital if d.type_code in ("C0032", "C0053") else department,
        }},
        "author": {"time": {"@value": written}, "assignedAuthor": {
            "id": _ii(OID_AUTHOR, d.author.code), "assignedPerson": {"name": d.author.name},
            "representedOrganization": hospital}},
        "informant": {"assignedEntity": {
            "id": _ii(OID_ID_NUMBER, p.id_number), "code": contact["code"], "assignedPerson": {"name": p.name}}},
        "custodian": {"assignedCustodian": {"representedCustodianOrganization": hospital}},
        "legalAuthenticator": _signer(reviewer, written, "审核者"),
        "authenticator": [_signer(d.author, written, "记录者")],
        "participant": {"time": {"@value": format_time(v.start)}, "associatedEntity": contact},
        "relatedDocument": {"parentDocument": {"id": d.replaces, "setId": d.set_id if d.replaces else "",
                                               "versionNumber": ""}},
        "componentOf": {"encompassingEncounter": {
            "code": _code(v.kind, VISIT_KINDS[v.kind], "2.16.156.10011.2.3.1.271", "患者类型代码表"),
            "effectiveTime": {"@value": format_time(v.start), "low": {"@value": format_time(v.start)},
                              **({"high": {"@value": format_time(v.end)}} if v.end else {})},
            "location": {"healthCareFacility": {"serviceProviderOrganization": _place(d)}},
        }},
    }


def _value(s: Schema, value: Value) -> dict:
    if value.kind == "CD":
        attrs = {"code": value.code, "displayName": value.display, "codeSystem": value.system,
                 "codeSystemName": value.system_name}
    elif value.kind == "ST":
        attrs = {}
    elif value.kind in ("PQ", "MO"):
        attrs = {"value": value.text, "unit" if value.kind == "PQ" else "currency": value.unit}
    else:
        attrs = {"value": value.text}
    out: dict = {f"@{k}": v for k, v in attrs.items() if v is not None}
    if value.kind == "ST":
        out["#"] = value.text or ""
    # Typed only where this schema defines the type as used (C0002 has no PQ, C0004's PQ allows only 天);
    # elsewhere the value is written untyped and the parser infers the type from its attributes.
    if s.value_type_fits(value.kind, {k: v for k, v in attrs.items() if v is not None}):
        out["@xsi:type"] = value.kind
    return out


def _body(s: Schema, d: Document) -> dict:
    components = []
    for sec in d.sections:
        entries = []
        for de in sec.elements:
            obs = {"@classCode": "OBS", "@moodCode": "EVN",
                   "code": _code(de.code, de.name, DE_SYSTEM, DE_SYSTEM_NAME)}
            if de.value is not None:
                obs["value"] = _value(s, de.value)
            entries.append({"observation": obs})
        components.append({"section": {"code": _code(sec.code, sec.name, LOINC, "LOINC"),
                                       "text": sec.text or sec.name, "entry": entries}})
    return {"structuredBody": {"component": components}}


def build(d: Document, *, validate: bool = True) -> bytes:
    """The document as UTF-8 XML, written to its type's schema; with ``validate`` (the default) a
    document the schema refuses raises ``CdaError`` listing why, so nothing invalid leaves here."""
    if not 32 <= len(d.document_id) <= 36:
        raise CdaError("document_id must be 32-36 characters (a UUID)", location="ClinicalDocument/id/@extension")
    s = schema_for(d.type_code)
    root = s.render({**_header(d), "component": _body(s, d)})
    if validate:
        problems = s.errors(root)
        if problems:
            raise CdaError(f"{d.type_code} does not validate against its schema: " + "; ".join(problems[:5]))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


# --- reading ----------------------------------------------------------------------------------

_T = {name: f"{{{HL7_NS}}}{name}" for name in ("code", "value", "section", "structuredBody", "component", "effectiveTime")}
_XSI_TYPE: Final = f"{{{XSI}}}type"
#: data elements (WS 363) and lab items (LOINC) are entries; section codes (LOINC too) are not
_ENTRY_SYSTEMS: Final = frozenset({DE_SYSTEM, LOINC})
_TIMESTAMP: Final = re.compile(r"\d{8}(?:\d{4}(?:\d{2})?)?")


@dataclass(frozen=True, slots=True)
class Entry:
    """A data element found in a document's body."""

    code: str  # DE…
    name: str | None
    value: Value | None
    section: str | None  # the LOINC code of its section
    line: int | None  # where it is in the XML, for reports


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    header: CdaHeader
    entries: tuple[Entry, ...]
    root: etree._Element = field(repr=False)

    def first(self, code: str) -> Entry | None:
        for e in self.entries:
            if e.code == code:
                return e
        return None


def _infer(el: etree._Element) -> Value:
    """A ``value`` element as a Value, by its xsi:type or, untyped, by the attributes it has."""
    declared = el.get(_XSI_TYPE)
    kind = declared.split(":")[-1] if declared else None
    code = el.get("code")
    if kind is None:
        if code is not None:
            kind = "CD"
        elif el.get("unit") is not None:
            kind = "PQ"
        elif el.get("currency") is not None:
            kind = "MO"
        elif el.get("value") is not None:
            kind = "TS" if _TIMESTAMP.fullmatch(el.get("value")) else "REAL"
        else:
            kind = "ST"
    if kind == "CD" or code is not None:
        return Value("CD", code=code, display=el.get("displayName"), system=el.get("codeSystem"),
                     system_name=el.get("codeSystemName"))
    if kind == "ST":
        return Value("ST", (el.text or "").strip())
    return Value(kind, el.get("value"), el.get("unit") if kind == "PQ" else el.get("currency"))


def parse(data: bytes | etree._Element) -> ParsedDocument:
    """Parse a WS/T 500 document of any type once: its header and every coded data element (WS 363 ``DE…``,
    or a LOINC-coded lab item) of its body."""
    root = data if isinstance(data, etree._Element) else parse_xml(data)
    return ParsedDocument(parse_header(root), read_entries(root), root)


def read_entries(root: etree._Element) -> tuple[Entry, ...]:
    """The coded data elements of a parsed document's body, in document order, each with its section and line."""
    entries: list[Entry] = []
    body = next(root.iterchildren(_T["component"]), None)
    code_tag, value_tag = _T["code"], _T["value"]
    for section in body.iter(_T["section"]) if body is not None else ():
        section_code = None
        for code in section.iter(code_tag):
            parent = code.getparent()
            if parent is section:
                section_code = code.get("code")
                continue
            if code.get("codeSystem") not in _ENTRY_SYSTEMS:
                continue
            value_el = next(parent.iterchildren(value_tag), None)
            entries.append(Entry(code.get("code") or "", code.get("displayName"),
                                 _infer(value_el) if value_el is not None else None, section_code, code.sourceline))
    return tuple(entries)
