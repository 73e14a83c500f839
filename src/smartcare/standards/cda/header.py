"""WS/T 500 CDA documents (电子病历共享文档): read the header.

The exchange hub needs to know, for every incoming document, what it is (type C0001…C0053), whose
it is (patient identifiers), who wrote it and who keeps it (author, custodian) and which visit it
belongs to; the body is stored as received. ``parse_header`` reads exactly that and nothing more,
and says *where* a document falls short (``ClinicalDocument/recordTarget/patientRole: …``) so a
hospital can fix its interface. ``document`` builds whole documents and reads their data elements.

WS/T 500 fixes the timestamps' format (``YYYYMMDDHHMMSS``, no offset) and the region works in
Beijing time, so a timestamp without an offset is read as Asia/Shanghai and every datetime that
comes out of this module is timezone-aware.

Personal data (ID numbers, names, birth dates) never appear in error messages or in the ``repr``
of a header: both end up in logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Final

from lxml import etree

from smartcare.standards.xml import XmlError, parse_xml

__all__ = [
    "CHINA_TZ",
    "DOC_TYPE_SYSTEM",
    "HL7_NS",
    "OID_DEPARTMENT",
    "OID_DOCUMENT",
    "OID_HEALTH_CARD_NO",
    "OID_ID_NUMBER",
    "OID_INPATIENT_NO",
    "OID_ORGANIZATION",
    "OID_OUTPATIENT_NO",
    "OID_PRACTITIONER",
    "SEX_SYSTEM",
    "Address",
    "Author",
    "CdaError",
    "CdaHeader",
    "Encounter",
    "InstanceId",
    "Organization",
    "XmlError",
    "parse_cda_time",
    "parse_header",
    "template_id_for",
]

HL7_NS: Final = "urn:hl7-org:v3"
# China has had no daylight saving time since 1991; a fixed offset needs no tz database.
CHINA_TZ: Final = timezone(timedelta(hours=8), "Asia/Shanghai")

DOC_TYPE_SYSTEM: Final = "2.16.156.10011.2.4"  # 卫生信息共享文档规范编码体系, codes C0001…C0053
OID_DOCUMENT: Final = "2.16.156.10011.1.1"  # 文档流水号
OID_ID_NUMBER: Final = "2.16.156.10011.1.3"  # 患者身份证号
OID_PRACTITIONER: Final = "2.16.156.10011.1.4"  # 医务人员
OID_ORGANIZATION: Final = "2.16.156.10011.1.5"  # 医疗卫生机构
OID_AUTHOR: Final = "2.16.156.10011.1.7"  # 文档创作者 (医务人员)
OID_OUTPATIENT_NO: Final = "2.16.156.10011.1.11"  # 门(急)诊号
OID_INPATIENT_NO: Final = "2.16.156.10011.1.12"  # 住院号
OID_HEALTH_CARD_NO: Final = "2.16.156.10011.1.19"  # 健康卡号
OID_ROOM: Final = "2.16.156.10011.1.21"  # 病房号
OID_BED: Final = "2.16.156.10011.1.22"  # 病床号
OID_DEPARTMENT: Final = "2.16.156.10011.1.26"  # 科室
OID_WARD: Final = "2.16.156.10011.1.27"  # 病区
SEX_SYSTEM: Final = "2.16.156.10011.2.3.3.4"  # GB/T 2261.1

_DOC_TYPES: Final = frozenset(f"C{n:04d}" for n in range(1, 54))


class CdaError(ValueError):
    """The document is not a usable WS/T 500 CDA document; the message names the location."""

    def __init__(self, message: str, *, location: str | None = None):
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location


# --- what a header says ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceId:
    """An HL7 II: ``root`` names the issuer (an OID), ``extension`` the identifier within it."""

    root: str
    extension: str | None = None


@dataclass(frozen=True, slots=True)
class Organization:
    code: str | None  # id/@extension: 组织机构代码 or 18-character 统一社会信用代码
    name: str | None
    root: str | None = None


@dataclass(frozen=True, slots=True)
class Author:
    id: InstanceId | None
    name: str | None = field(default=None, repr=False)
    time: datetime | None = None
    organization: Organization | None = None


@dataclass(frozen=True, slots=True)
class Encounter:
    ids: tuple[InstanceId, ...]
    start: datetime | None
    end: datetime | None = None
    department: Organization | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CdaHeader:
    """What the exchange hub needs to route, index and link a document; the body is not read."""

    document_id: InstanceId
    type_code: str  # C0001…C0053
    type_name: str | None
    template_id: str | None
    effective_time: datetime | None
    custodian: Organization
    # OID -> extension, from recordTarget/patientRole/id and patientRole/patient/id.
    patient_ids: dict[str, str] = field(default_factory=dict, hash=False, repr=False)
    patient_name: str | None = field(default=None, repr=False)
    sex_code: str | None = None  # GB/T 2261.1: 0 unknown, 1 male, 2 female, 9 unspecified
    birth_date: date | None = field(default=None, repr=False)
    author: Author | None = None
    encounter: Encounter | None = None
    set_id: InstanceId | None = None
    version_number: int | None = None

    @property
    def id_number(self) -> str | None:
        """The patient's resident ID number (身份证号), if the document carries one."""
        return self.patient_ids.get(OID_ID_NUMBER)


# --- reading ------------------------------------------------------------------------------------

_TS = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"(?:([+-])(\d{2})(\d{2}))?",
    re.ASCII,
)


def parse_cda_time(value: str, *, location: str = "TS") -> datetime:
    """Parse an HL7 TS (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+ZZZZ]``) into an aware datetime.

    Missing parts take their lowest value (``2024`` is 2024-01-01 00:00); no offset means
    Asia/Shanghai. The value itself is not echoed in errors: it may be a birth date.
    """
    m = _TS.fullmatch(value.strip())
    if not m:
        raise CdaError("not a CDA timestamp (YYYYMMDDHHMMSS[+ZZZZ])", location=location)
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    try:
        tz = CHINA_TZ
        if sign:
            offset = timedelta(hours=int(oh), minutes=int(om))
            tz = timezone(-offset if sign == "-" else offset)
        return datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((frac or "0").ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        raise CdaError("timestamp is not a real date/time", location=location) from None


def _q(path: str) -> tuple[str, ...]:
    """``a/b`` -> the Clark names ``({urn:hl7-org:v3}a, {urn:hl7-org:v3}b)`` that ``_find`` walks."""
    return tuple(f"{{{HL7_NS}}}{part}" for part in path.split("/"))


def _find(el: etree._Element | None, tags: tuple[str, ...]) -> etree._Element | None:
    """The first element along ``tags`` (child, then grandchild…), or None.

    lxml's ``find()`` compiles paths in Python; walking children in C makes ``parse_header``
    about a third faster, and headers are read for every document the hub receives.
    """
    for tag in tags:
        if el is None:
            return None
        el = next(el.iterchildren(tag), None)
    return el


def _children(el: etree._Element) -> dict[str, etree._Element]:
    """The first child of each tag, in one pass: the header reads a dozen of the root's children."""
    out: dict[str, etree._Element] = {}
    for child in el:
        out.setdefault(child.tag, child)
    return out


def _under(top: dict[str, etree._Element], tags: tuple[str, ...]) -> etree._Element | None:
    """``_find`` from the root, its first step taken from ``_children(root)``."""
    return _find(top.get(tags[0]), tags[1:])


_ROOT_TAG: Final = f"{{{HL7_NS}}}ClinicalDocument"
_ID, _CODE, _NAME = _q("id"), _q("code"), _q("name")
_ID_TAG: Final = _ID[0]
_P = {
    name: _q(path)
    for name, path in {
        "template": "templateId",
        "title": "title",
        "time": "effectiveTime",
        "set_id": "setId",
        "version": "versionNumber",
        "patient_role": "recordTarget/patientRole",
        "patient": "patient",
        "gender": "administrativeGenderCode",
        "birth": "birthTime",
        "author": "author",
        "author_time": "time",
        "assigned_author": "assignedAuthor",
        "author_person_name": "assignedPerson/name",
        "author_org": "representedOrganization",
        "custodian": "custodian",
        "custodian_org": "assignedCustodian/representedCustodianOrganization",
        "encounter": "componentOf/encompassingEncounter",
        "low": "low",
        "high": "high",
    }.items()
}
_WHOLE_ORG_TAG: Final = f"{{{HL7_NS}}}wholeOrganization"


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    text = "".join(el.itertext()).strip()
    return text or None


def _attr(el: etree._Element | None, name: str) -> str | None:
    if el is None:
        return None
    value = el.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _ii(el: etree._Element | None) -> InstanceId | None:
    root = _attr(el, "root")
    return InstanceId(root, _attr(el, "extension")) if root else None


def _time(el: etree._Element | None, location: str) -> datetime | None:
    value = _attr(el, "value")
    return parse_cda_time(value, location=f"{location}/@value") if value else None


def _organization(el: etree._Element | None) -> Organization | None:
    if el is None:
        return None
    id_el = _find(el, _ID)
    return Organization(code=_attr(id_el, "extension"), name=_text(_find(el, _NAME)), root=_attr(id_el, "root"))


def _author(top: dict[str, etree._Element]) -> Author | None:
    author = _under(top, _P["author"])
    if author is None:
        return None
    written = _time(_find(author, _P["author_time"]), "ClinicalDocument/author/time")
    assigned = _find(author, _P["assigned_author"])
    if assigned is None:
        return Author(id=None, time=written)
    return Author(
        id=_ii(_find(assigned, _ID)),
        name=_text(_find(assigned, _P["author_person_name"])),
        time=written,
        organization=_organization(_find(assigned, _P["author_org"])),
    )


def _encounter(top: dict[str, etree._Element]) -> Encounter | None:
    enc = _under(top, _P["encounter"])
    if enc is None:
        return None
    where = "ClinicalDocument/componentOf/encompassingEncounter/effectiveTime"
    time_el = _find(enc, _P["time"])
    start = _time(time_el, where)
    end = None
    if time_el is not None and start is None:  # IVL_TS: <low value=…/><high value=…/>
        start = _time(_find(time_el, _P["low"]), f"{where}/low")
        end = _time(_find(time_el, _P["high"]), f"{where}/high")
    if time_el is not None and start is None and time_el.text and time_el.text.strip():
        start = parse_cda_time(time_el.text, location=where)  # C0006/C0007's schemas allow only text here
    department = None
    for org in enc.iter(_WHOLE_ORG_TAG):  # bed, room, department, ward, hospital
        found = _organization(org)
        if found is not None and found.root == OID_DEPARTMENT:
            department = found
            break
    ids = tuple(i for i in (_ii(e) for e in enc.iterchildren(_ID_TAG)) if i is not None)
    return Encounter(ids=ids, start=start, end=end, department=department)


def _version(el: etree._Element | None) -> int | None:
    """CDA puts the version in ``@value``; the WS/T 500 schemas allow only text content."""
    raw = _attr(el, "value") or _text(el)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise CdaError("not a whole number", location="ClinicalDocument/versionNumber")
    return int(raw)


def _set_id(el: etree._Element | None) -> InstanceId | None:
    if el is None:
        return None
    found = _ii(el)
    if found is not None:
        return found
    text = _text(el)
    return InstanceId(text) if text else None


def parse_header(data: bytes | etree._Element) -> CdaHeader:
    """Read the header of a WS/T 500 CDA document (bytes, or a root already parsed by ``parse_xml``).

    Raises ``XmlError`` for bytes that are not safe, well-formed XML and ``CdaError`` for XML that
    is not a ClinicalDocument with an id, a type code, a patient and a custodian.
    """
    doc = data if isinstance(data, etree._Element) else parse_xml(data)
    if doc.tag != _ROOT_TAG:
        qname = etree.QName(doc)
        found = f"{{{qname.namespace}}}{qname.localname}" if qname.namespace else qname.localname
        raise CdaError(f"root element is {found}, expected ClinicalDocument in namespace {HL7_NS}")

    top = _children(doc)
    document_id = _ii(_under(top, _ID))
    if document_id is None:
        raise CdaError("missing, or without @root", location="ClinicalDocument/id")

    code = _under(top, _CODE)
    type_code = _attr(code, "code")
    if type_code is None:
        raise CdaError("missing document type code", location="ClinicalDocument/code/@code")
    system = _attr(code, "codeSystem")
    if system is not None:
        if system != DOC_TYPE_SYSTEM:
            raise CdaError(
                f"code system {system} is not the WS/T 500 document type system {DOC_TYPE_SYSTEM}",
                location="ClinicalDocument/code/@codeSystem",
            )
        if type_code not in _DOC_TYPES:
            raise CdaError(
                f"{type_code!r} is not a WS/T 500 document type (C0001…C0053)", location="ClinicalDocument/code/@code"
            )

    role = _under(top, _P["patient_role"])
    if role is None:
        raise CdaError("missing", location="ClinicalDocument/recordTarget/patientRole")
    patient = _find(role, _P["patient"])
    patient_ids: dict[str, str] = {}
    for id_el in (*role.iterchildren(_ID_TAG), *(patient.iterchildren(_ID_TAG) if patient is not None else ())):
        ii = _ii(id_el)
        if ii is not None and ii.extension:
            patient_ids.setdefault(ii.root, ii.extension)
    if not patient_ids:
        raise CdaError("no patient identifier", location="ClinicalDocument/recordTarget/patientRole")

    custodian = _under(top, _P["custodian"])
    if custodian is None:
        raise CdaError("missing", location="ClinicalDocument/custodian")
    custodian_org = _organization(_find(custodian, _P["custodian_org"]))
    where = "ClinicalDocument/custodian/assignedCustodian/representedCustodianOrganization"
    if custodian_org is None:
        raise CdaError("missing", location=where)
    if custodian_org.code is None:
        raise CdaError("no organization code", location=f"{where}/id/@extension")

    born = _time(_find(patient, _P["birth"]), "ClinicalDocument/recordTarget/patientRole/patient/birthTime")

    return CdaHeader(
        document_id=document_id,
        type_code=type_code,
        type_name=_attr(code, "displayName") or _text(_under(top, _P["title"])),
        template_id=_attr(_under(top, _P["template"]), "root"),
        effective_time=_time(_under(top, _P["time"]), "ClinicalDocument/effectiveTime"),
        custodian=custodian_org,
        patient_ids=patient_ids,
        patient_name=_text(_find(patient, _NAME)),
        sex_code=_attr(_find(patient, _P["gender"]), "code"),
        birth_date=born.date() if born else None,
        author=_author(top),
        encounter=_encounter(top),
        set_id=_set_id(_under(top, _P["set_id"])),
        version_number=_version(_under(top, _P["version"])),
    )


# --- shared with the builder (``document``) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """A Chinese address, largest part first, as WS/T 500 spells it out."""

    state: str = ""  # 省(自治区、直辖市)
    city: str = ""  # 市(地区、州)
    county: str = ""  # 县(区)
    township: str = ""  # 乡(镇、街道办事处)
    street: str = ""  # 村(街、路、里、弄等)
    house_number: str = ""  # 门牌号码
    postal_code: str = "000000"  # C0001 requires an integer; 000000 means "not known"


def template_id_for(type_code: str) -> str:
    """WS/T 500 template OID of a document type: C00nn -> 2.16.156.10011.2.1.1.(20+nn)."""
    if type_code not in _DOC_TYPES:
        raise CdaError(f"{type_code!r} is not a WS/T 500 document type (C0001…C0053)")
    return f"2.16.156.10011.2.1.1.{20 + int(type_code[1:])}"
