"""WS/T 500 CDA: safe XML parsing, header parsing, and minimal documents valid against the XSDs."""

from __future__ import annotations

import time
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from lxml import etree

from tests.conftest import SHARED, shared
from smartcare.platform.idcard import make
from smartcare.standards.cda import (
    CHINA_TZ,
    HL7_NS,
    OID_DEPARTMENT,
    OID_HEALTH_CARD_NO,
    OID_ID_NUMBER,
    OID_INPATIENT_NO,
    Address,
    CdaError,
    DataElement,
    Document,
    InstanceId,
    Patient,
    Practitioner,
    Section,
    Visit,
    build,
    parse_cda_time,
    parse_header,
    st,
    template_id_for,
)
from smartcare.standards.xml import XmlError, parse_xml

XSD_DIR = SHARED / "standards" / "wst500-xsd"

ID_NUMBER = make("500103", date(1985, 3, 7), 12, "2")  # 重庆市渝中区, a woman born 1985-03-07
DOC_ID = uuid.UUID("6f1c9a52-0d3e-4b8a-9c55-2f7e1d0a4b11").hex
PATIENT = Patient(id_number=ID_NUMBER, name="王秀英", sex="2", birth_date=date(1985, 3, 7), phone="13883012345",
                  address=Address("重庆市", "重庆市", "渝中区", "解放碑街道", "民族路", "88号", "400010"),
                  health_card_no="500103H19850307012")
COMMON = dict(
    document_id=DOC_ID,
    effective_time=datetime(2024, 5, 6, 9, 30, 15, tzinfo=CHINA_TZ),
    patient=PATIENT,
    custodian_code="12500000450416421X",
    custodian_name="重庆市第一人民医院",
    author=Practitioner("YS0123", "李建国", "住院医师"),
    reviewer=Practitioner("YS0001", "陈志强", "科主任"),
)
ADMISSION = Visit(kind="3", number="ZY2024000123", start=datetime(2024, 5, 6, 8, 0, tzinfo=CHINA_TZ),
                  department_code="0301", department_name="心血管内科", ward_code="B03", ward_name="心内科一病区",
                  room="305", bed="12")
OUTPATIENT = Visit(kind="1", number="MZ2024000456", start=datetime(2024, 5, 6, 9, 0, tzinfo=CHINA_TZ))


def c0001(**overrides: object) -> bytes:
    history = Section("11348-0", "HISTORY OF PAST ILLNESS", (DataElement("DE02.10.026.00", "疾病史（含外伤）", st("高血压病史5年")),))
    return build(Document(**{"type_code": "C0001", "visit": OUTPATIENT, "sections": (history,), **COMMON, **overrides}))


def c0034() -> bytes:
    complaint = Section("10154-3", "CHIEF COMPLAINT", (DataElement("DE04.01.119.00", "主诉", st("反复胸闷、气促3天")),))
    return build(Document(type_code="C0034", visit=ADMISSION, sections=(complaint,), **COMMON))


def schema(type_code: str) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(shared("standards", "wst500-xsd", f"{type_code}.xsd"))))


def without(xml: bytes, xpath: str) -> bytes:
    """The document with every node matching ``xpath`` (prefix ``v`` = HL7) removed."""
    root = etree.fromstring(xml)
    for node in root.xpath(xpath, namespaces={"v": HL7_NS}):
        if isinstance(node, etree._Element):
            node.getparent().remove(node)
        else:  # an attribute
            del node.getparent().attrib[node.attrname]
    return etree.tostring(root)


# --- safe XML -----------------------------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"""

BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + b"".join(
        b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10)
    )
    + b"]>\n<lolz>&lol9;</lolz>"
)


def test_xxe_reading_etc_passwd_is_refused() -> None:
    with pytest.raises(XmlError, match="DOCTYPE with entities is not allowed"):
        parse_xml(XXE)
    with pytest.raises(XmlError, match="DOCTYPE with entities is not allowed"):
        parse_header(XXE)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_xxe_is_refused_in_wide_encodings(encoding: str) -> None:
    text = XXE.decode().replace('<?xml version="1.0"?>', f'<?xml version="1.0" encoding="{encoding.upper()}"?>')
    with pytest.raises(XmlError, match="DOCTYPE with entities is not allowed"):
        parse_xml(text.encode(encoding))


def test_parameter_entity_reaching_the_network_is_refused() -> None:
    payload = b'<!DOCTYPE r [<!ENTITY % dtd SYSTEM "http://169.254.169.254/latest/meta-data/"> %dtd;]><r/>'
    with pytest.raises(XmlError, match="DOCTYPE with entities is not allowed"):
        parse_xml(payload)


def test_billion_laughs_is_refused_quickly() -> None:
    started = time.perf_counter()
    with pytest.raises(XmlError, match="DOCTYPE with entities is not allowed"):
        parse_xml(BILLION_LAUGHS)
    assert time.perf_counter() - started < 0.5


def test_doctype_without_entities_is_parsed_but_never_loaded() -> None:
    root = parse_xml(b'<!DOCTYPE r SYSTEM "file:///etc/passwd"><r>ok</r>')
    assert root.text == "ok"
    assert root.getroottree().docinfo.externalDTD is None


def test_malformed_xml_reports_line_and_column() -> None:
    with pytest.raises(XmlError, match=r"malformed XML at line 3, column \d+: Opening and ending tag mismatch") as info:
        parse_xml(b"<ClinicalDocument>\n  <title>\n</ClinicalDocument>")
    assert info.value.line == 3
    assert info.value.column is not None


def test_empty_and_text_input() -> None:
    with pytest.raises(XmlError, match="empty document"):
        parse_xml(b"  \n")
    with pytest.raises(TypeError, match="bytes"):
        parse_xml("<r/>")  # type: ignore[arg-type]


def test_gb18030_document_is_decoded_by_its_declaration() -> None:
    text = c0001().decode("utf-8").replace("encoding='UTF-8'", "encoding='GB18030'")
    header = parse_header(text.encode("gb18030"))
    assert header.patient_name == "王秀英"
    assert header.custodian.name == "重庆市第一人民医院"


# --- building and validating --------------------------------------------------------------------


def test_c0001_is_valid_against_its_xsd() -> None:
    xsd = schema("C0001")
    assert xsd.validate(etree.fromstring(c0001())), xsd.error_log
    # Also with only the required fields: no card, no phone, no address.
    bare = Patient(id_number=ID_NUMBER, name="王秀英", sex="2", birth_date=date(1985, 3, 7))
    assert xsd.validate(etree.fromstring(c0001(patient=bare))), xsd.error_log


def test_c0034_is_valid_against_its_xsd() -> None:
    xsd = schema("C0034")
    assert xsd.validate(etree.fromstring(c0034())), xsd.error_log


def test_template_ids_follow_the_document_type() -> None:
    assert template_id_for("C0001") == "2.16.156.10011.2.1.1.21"
    assert template_id_for("C0034") == "2.16.156.10011.2.1.1.54"
    assert template_id_for("C0053") == "2.16.156.10011.2.1.1.73"
    with pytest.raises(CdaError):
        template_id_for("C0054")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"effective_time": datetime(2024, 5, 6, 9, 30)}, "timezone-aware"),
        ({"document_id": "123"}, "32-36 characters"),
        ({"custodian_code": "450416421"}, "length of '9'.*allowed length of '18'"),
        ({"patient": Patient(id_number=ID_NUMBER, name="王秀英", sex="M", birth_date=date(1985, 3, 7))},
         "administrativeGenderCode.*the value is not a valid value"),
    ],
)
def test_builder_refuses_bad_input(overrides: dict, message: str) -> None:
    with pytest.raises(CdaError, match=message):
        c0001(**overrides)


# --- parsing headers ----------------------------------------------------------------------------


def test_parse_header_reads_back_a_c0001() -> None:
    header = parse_header(c0001())
    assert header.document_id == InstanceId("2.16.156.10011.1.1", DOC_ID)
    assert (header.type_code, header.type_name) == ("C0001", "病历概要")
    assert header.template_id == "2.16.156.10011.2.1.1.21"
    assert header.effective_time == datetime(2024, 5, 6, 9, 30, 15, tzinfo=CHINA_TZ)
    assert header.effective_time.utcoffset() == timedelta(hours=8)
    assert header.patient_ids == {OID_HEALTH_CARD_NO: "500103H19850307012", OID_ID_NUMBER: ID_NUMBER}
    assert header.id_number == ID_NUMBER
    assert (header.patient_name, header.sex_code, header.birth_date) == ("王秀英", "2", date(1985, 3, 7))
    assert header.author is not None
    assert header.author.id == InstanceId("2.16.156.10011.1.7", "YS0123")
    assert header.author.name == "李建国"
    assert header.author.organization is not None and header.author.organization.code == "12500000450416421X"
    assert (header.custodian.code, header.custodian.name) == ("12500000450416421X", "重庆市第一人民医院")
    assert header.encounter is None
    assert (header.set_id, header.version_number) == (None, None)


def test_parse_header_reads_back_a_c0034_with_its_encounter() -> None:
    header = parse_header(c0034())
    assert (header.type_code, header.type_name) == ("C0034", "入院记录")
    assert header.patient_ids == {OID_INPATIENT_NO: "ZY2024000123", OID_ID_NUMBER: ID_NUMBER}
    assert header.birth_date is None  # C0034 carries the age, not the birth time
    assert header.encounter is not None
    assert header.encounter.start == datetime(2024, 5, 6, 8, 0, tzinfo=CHINA_TZ)
    assert header.encounter.department is not None
    assert (header.encounter.department.code, header.encounter.department.name) == ("0301", "心血管内科")
    assert header.encounter.department.root == OID_DEPARTMENT


def test_parse_header_of_a_document_from_another_vendor() -> None:
    """Plain CDA habits the WS/T 500 schemas do not use: II/INT attributes, offsets, IVL_TS, name parts."""
    xml = """<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <id root="2.16.156.10011.1.1" extension="DOC-2024-000042"/>
  <code code="C0002" codeSystem="2.16.156.10011.2.4" displayName="门(急)诊病历"/>
  <title>门诊病历</title>
  <effectiveTime value="20240506013015+0000"/>
  <setId root="2.16.156.10011.1.1" extension="DOC-2024-000040"/>
  <versionNumber value="2"/>
  <recordTarget><patientRole>
    <id root="2.16.156.10011.1.11" extension="MZ0098765"/>
    <id root="2.16.156.10011.1.11" extension="MZ-second-is-ignored"/>
    <patient><id root="2.16.156.10011.1.3" extension="{id}"/>
      <name><family>欧阳</family><given>娜娜</given></name>
      <administrativeGenderCode code="2" codeSystem="2.16.156.10011.2.3.3.4"/>
      <birthTime value="198503"/></patient>
  </patientRole></recordTarget>
  <custodian><assignedCustodian><representedCustodianOrganization>
    <id root="2.16.156.10011.1.5" extension="12500000450416421X"/><name>重庆市第一人民医院</name>
  </representedCustodianOrganization></assignedCustodian></custodian>
  <componentOf><encompassingEncounter>
    <id root="2.16.156.10011.1.11" extension="MZ0098765"/>
    <effectiveTime><low value="202405060800"/><high value="202405060830"/></effectiveTime>
  </encompassingEncounter></componentOf>
</ClinicalDocument>""".format(id=ID_NUMBER).encode()
    header = parse_header(xml)
    assert header.type_name == "门(急)诊病历"  # code/@displayName wins over the title
    assert header.effective_time == datetime(2024, 5, 6, 9, 30, 15, tzinfo=CHINA_TZ)
    assert header.effective_time.tzinfo == timezone.utc
    assert header.set_id == InstanceId("2.16.156.10011.1.1", "DOC-2024-000040")
    assert header.version_number == 2
    assert header.patient_ids == {"2.16.156.10011.1.11": "MZ0098765", OID_ID_NUMBER: ID_NUMBER}
    assert header.patient_name == "欧阳娜娜"
    assert header.birth_date == date(1985, 3, 1)  # partial precision: month only
    assert header.author is None
    assert header.encounter is not None
    assert header.encounter.ids == (InstanceId("2.16.156.10011.1.11", "MZ0098765"),)
    assert header.encounter.start == datetime(2024, 5, 6, 8, 0, tzinfo=CHINA_TZ)
    assert header.encounter.end == datetime(2024, 5, 6, 8, 30, tzinfo=CHINA_TZ)


@pytest.mark.parametrize(
    ("xpath", "location", "problem"),
    [
        ("/v:ClinicalDocument/v:id", "ClinicalDocument/id", "missing"),
        ("/v:ClinicalDocument/v:id/@root", "ClinicalDocument/id", "without @root"),
        ("/v:ClinicalDocument/v:code", "ClinicalDocument/code/@code", "missing document type code"),
        ("/v:ClinicalDocument/v:recordTarget", "ClinicalDocument/recordTarget/patientRole", "missing"),
        ("//v:patientRole/v:id | //v:patientRole/v:patient/v:id", "ClinicalDocument/recordTarget/patientRole",
         "no patient identifier"),
        ("/v:ClinicalDocument/v:custodian", "ClinicalDocument/custodian", "missing"),
        ("//v:representedCustodianOrganization",
         "ClinicalDocument/custodian/assignedCustodian/representedCustodianOrganization", "missing"),
        ("//v:representedCustodianOrganization/v:id/@extension",
         "ClinicalDocument/custodian/assignedCustodian/representedCustodianOrganization/id/@extension",
         "no organization code"),
    ],
)
def test_missing_parts_are_named_by_location(xpath: str, location: str, problem: str) -> None:
    with pytest.raises(CdaError) as info:
        parse_header(without(c0001(), xpath))
    assert str(info.value).startswith(f"{location}: ")
    assert problem in str(info.value)
    assert info.value.location == location


def test_wrong_document_type_system_or_code() -> None:
    xml = c0001().replace(b'codeSystem="2.16.156.10011.2.4"', b'codeSystem="2.16.840.1.113883.6.1"')
    with pytest.raises(CdaError, match=r"^ClinicalDocument/code/@codeSystem: .*2\.16\.156\.10011\.2\.4"):
        parse_header(xml)
    with pytest.raises(CdaError, match=r"^ClinicalDocument/code/@code: 'C0099' is not a WS/T 500 document type"):
        parse_header(c0001().replace(b'code="C0001"', b'code="C0099"'))


def test_bad_timestamps_are_located_without_echoing_the_value() -> None:
    xml = c0001().replace(b'<birthTime value="19850307"/>', b'<birthTime value="19851307"/>')
    with pytest.raises(CdaError, match=r"^ClinicalDocument/recordTarget/patientRole/patient/birthTime/@value: ") as info:
        parse_header(xml)
    assert "1985" not in str(info.value)
    with pytest.raises(CdaError, match=r"^ClinicalDocument/effectiveTime/@value: not a CDA timestamp"):
        parse_header(c0001().replace(b'<effectiveTime value="20240506093015"/>', b'<effectiveTime value="2024-05-06"/>'))


@pytest.mark.parametrize(
    "xml",
    [
        b"<ClinicalDocument><id root='1'/></ClinicalDocument>",  # no namespace
        b"<ClinicalDocument xmlns='urn:hl7-org:v2xml'/>",
        b"<PRPA_IN201311UV02 xmlns='urn:hl7-org:v3'/>",  # an HL7 v3 message, not a document
    ],
)
def test_only_clinical_documents_in_the_hl7_namespace(xml: bytes) -> None:
    with pytest.raises(CdaError, match="expected ClinicalDocument in namespace urn:hl7-org:v3"):
        parse_header(xml)


def test_errors_and_repr_keep_personal_data_out() -> None:
    header = parse_header(c0001())
    shown = repr(header)
    assert ID_NUMBER not in shown and "王秀英" not in shown and "1985" not in shown
    with pytest.raises(CdaError) as info:
        parse_header(without(c0001(), "/v:ClinicalDocument/v:custodian"))
    assert ID_NUMBER not in str(info.value) and "王秀英" not in str(info.value)


def test_parse_header_accepts_an_already_parsed_root() -> None:
    assert parse_header(parse_xml(c0001())).type_code == "C0001"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024", datetime(2024, 1, 1, tzinfo=CHINA_TZ)),
        ("202405", datetime(2024, 5, 1, tzinfo=CHINA_TZ)),
        ("20240506", datetime(2024, 5, 6, tzinfo=CHINA_TZ)),
        ("2024050609", datetime(2024, 5, 6, 9, tzinfo=CHINA_TZ)),
        ("202405060930", datetime(2024, 5, 6, 9, 30, tzinfo=CHINA_TZ)),
        ("20240506093015", datetime(2024, 5, 6, 9, 30, 15, tzinfo=CHINA_TZ)),
        ("20240506093015.25", datetime(2024, 5, 6, 9, 30, 15, 250000, tzinfo=CHINA_TZ)),
        ("20240506093015+0800", datetime(2024, 5, 6, 9, 30, 15, tzinfo=CHINA_TZ)),
        ("20240506013015-0030", datetime(2024, 5, 6, 2, 0, 15, tzinfo=timezone.utc)),
    ],
)
def test_parse_cda_time(value: str, expected: datetime) -> None:
    parsed = parse_cda_time(value)
    assert parsed == expected
    assert parsed.tzinfo is not None


@pytest.mark.parametrize("value", ["", "24", "2024-05-06", "20241301", "20240230", "202405061", "20240506+08", "20240506+2500", "２０２４"])
def test_parse_cda_time_refuses_what_is_not_a_ts(value: str) -> None:
    with pytest.raises(CdaError):
        parse_cda_time(value)
