"""Synthetic clinical documents: encounters of the region's residents and the WS/T 500 documents
they produce, and a defect injector that records exactly what it broke.

Why: the quality-control engine is only as trustworthy as its test set. A clean document here has
every data element its type requires, plausible values, codes from the registry's value sets and
dates in order, so the engine must find nothing wrong with it; a defective one carries the defects
listed in ``SynthDocument.defects`` and nothing else, each naming the rule that must report it, so
precision and recall can be measured exactly.

Deterministic: the same seed gives the same documents (``random.Random(f"{seed}:documents")``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

from lxml import etree

from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.idcard import check_digit
from smartcare.standards import cda
from smartcare.standards.cda import DataElement as DE, Section
from smartcare.standards.cda.header import Address

ICD10_SYSTEM = "2.16.156.10011.2.3.3.11"
LOINC = "2.16.840.1.113883.6.1"
TYPES = ("C0001", "C0002", "C0004", "C0006", "C0007", "C0032", "C0034", "C0053")
INPATIENT_TYPES = ("C0032", "C0034", "C0053")

# A few diagnoses of the registry's ICD-10 subset (registry/data/concepts.csv), by department.
_DIAGNOSES = (("J06.9", "急性上呼吸道感染"), ("J18.9", "肺炎"), ("I10", "特发性（原发性）高血压"),
              ("E11.9", "2型糖尿病不伴有并发症"), ("K29.7", "胃炎"), ("I63.9", "脑梗死"), ("N39.0", "泌尿道感染"),
              ("M54.5", "下背痛"), ("J44.9", "慢性阻塞性肺病"), ("K80.2", "胆囊结石不伴有胆囊炎"))
_COMPLAINTS = ("咳嗽、咳痰3天", "反复头晕1周", "上腹部疼痛2天", "发热伴咽痛1天", "胸闷、气促5天", "腰痛1月")
_DRUGS = (("阿莫西林胶囊", 500, "口服"), ("硝苯地平控释片", 30, "口服"), ("二甲双胍片", 500, "口服"),
          ("奥美拉唑肠溶胶囊", 20, "口服"), ("头孢呋辛钠", 1500, "静脉滴注"))
_ROUTES = {"口服": "1", "静脉滴注": "4"}  # CV06.00.102 用药途径代码
#: LOINC code, name, unit, normal range (synthetic clean values are drawn inside it)
LABS = (("718-7", "血红蛋白", "g/L", (115, 160)), ("6690-2", "白细胞计数", "10^9/L", (4.0, 10.0)),
        ("777-3", "血小板计数", "10^9/L", (125, 350)), ("2345-7", "葡萄糖", "mmol/L", (3.9, 6.1)),
        ("2160-0", "肌酐", "umol/L", (45, 110)), ("2823-3", "钾", "mmol/L", (3.5, 5.3)))


@dataclass(frozen=True, slots=True)
class Defect:
    """One injected defect: what kind, the rule that must report it, and the element it is in."""

    kind: str
    rule: str
    element: str


@dataclass(frozen=True, slots=True)
class SynthDocument:
    document: cda.Document
    xml: bytes
    facility_code: str
    sent_at: datetime  # when the hospital uploads it (late uploads are a defect)
    defects: tuple[Defect, ...] = ()


@dataclass(frozen=True, slots=True)
class Hospital:
    facility_code: str
    credit_code: str  # 统一社会信用代码: the custodian id in the documents
    name: str
    departments: tuple[tuple[str, str], ...]  # (code, name)
    doctors: tuple[tuple[str, str, str], ...]  # (code, name, title)


@dataclass(frozen=True, slots=True)
class Person:
    id_number: str
    name: str
    sex: str
    birth_date: date
    phone: str = ""
    district: str = ""
    health_card_no: str | None = None


# --- clean content -------------------------------------------------------------------------------


def _vitals(rng: random.Random) -> tuple[DE, ...]:
    return (DE("DE04.10.186.00", "体温", cda.pq(round(rng.uniform(36.1, 37.2), 1), "℃")),
            DE("DE04.10.118.00", "脉率", cda.pq(rng.randint(62, 96), "次/min")),
            DE("DE04.10.081.00", "呼吸频率", cda.pq(rng.randint(14, 20), "次/min")),
            DE("DE04.10.174.00", "收缩压", cda.pq(rng.randint(100, 140), "mmHg")),
            DE("DE04.10.176.00", "舒张压", cda.pq(rng.randint(62, 88), "mmHg")))


def _diagnosis(code: str, name: str) -> tuple[DE, ...]:
    return (DE("DE05.01.024.00", "诊断代码", cda.cd(code, name, ICD10_SYSTEM, "ICD-10")),
            DE("DE05.01.025.00", "诊断名称", cda.st(name)))


def _sections(type_code: str, rng: random.Random, start: datetime, end: datetime | None) -> tuple[Section, ...]:
    dx = rng.choice(_DIAGNOSES)
    complaint = rng.choice(_COMPLAINTS)
    history = ("10164-2", "HISTORY OF PRESENT ILLNESS", (DE("DE02.10.071.00", "现病史", cda.st(f"患者{complaint}，无明显诱因。")),))
    if type_code == "C0001":
        return (Section("11348-0", "HISTORY OF PAST ILLNESS", (DE("DE02.10.026.00", "疾病史（含外伤）", cda.st("否认外伤史")),
                                                                DE("DE02.10.022.00", "过敏史", cda.st("否认药物过敏史")))),
                Section("30954-2", "RELEVANT DIAGNOSTIC TESTS", (
                    DE("DE04.50.001.00", "ABO血型代码", cda.cd(rng.choice("1234"), "", "2.16.156.10011.2.3.1.85", "ABO血型代码表")),)),
                Section("29548-5", "DIAGNOSIS", (DE("DE06.00.062.00", "就诊日期时间", cda.ts(start)), *_diagnosis(*dx))))
    if type_code == "C0002":
        return (Section("10154-3", "CHIEF COMPLAINT", (DE("DE04.01.119.00", "主诉", cda.st(complaint)),)),
                Section(*history),
                Section("8716-3", "VITAL SIGNS", _vitals(rng)[:1] + _vitals(rng)[3:]),
                Section("29548-5", "DIAGNOSIS", (DE("DE06.00.062.00", "就诊日期时间", cda.ts(start)), *_diagnosis(*dx))))
    if type_code == "C0004":
        drug, dose, route = rng.choice(_DRUGS)
        return (Section("29548-5", "DIAGNOSIS", _diagnosis(*dx)),
                Section("10160-0", "HISTORY OF MEDICATION USE", (
                    DE("DE08.50.022.00", "药物名称", cda.st(drug)),
                    DE("DE08.50.044.00", "药物使用次剂量", cda.pq(dose, "mg")),
                    DE("DE06.00.133.00", "药物使用频率", cda.st("每日2次")),
                    DE("DE06.00.134.00", "用药途径代码", cda.cd(_ROUTES[route], route, "2.16.156.10011.2.3.1.158", "用药途径代码表")))))
    if type_code == "C0006":
        return (Section("29548-5", "DIAGNOSIS", _diagnosis(*dx)),
                Section("30954-2", "RELEVANT DIAGNOSTIC TESTS", (
                    DE("DE02.10.027.00", "检查项目名称", cda.st("胸部X线正侧位片")),
                    DE("DE04.30.009.00", "检查结果-客观所见", cda.st("双肺纹理清晰，未见实变影。")),
                    DE("DE04.50.132.00", "检查结果-主观提示", cda.st("心肺未见明显异常。")),
                    DE("DE06.00.179.00", "检查报告日期", cda.ts(start + timedelta(hours=2))))))
    if type_code == "C0007":
        results = tuple(DE(code, name, cda.pq(round(rng.uniform(low, high), 1), unit))
                        for code, name, unit, (low, high) in LABS)
        return (Section("29548-5", "DIAGNOSIS", _diagnosis(*dx)),
                Section("30954-2", "RELEVANT DIAGNOSTIC TESTS", (
                    DE("DE04.30.020.00", "检验项目名称", cda.st("血常规+生化")),
                    DE("DE06.00.179.00", "检验报告日期", cda.ts(start + timedelta(hours=3))), *results)))
    admitted = DE("DE06.00.092.00", "入院日期时间", cda.ts(start))
    if type_code == "C0034":
        return (Section("10154-3", "CHIEF COMPLAINT", (DE("DE04.01.119.00", "主诉", cda.st(complaint)),)),
                Section(*history),
                Section("11348-0", "HISTORY OF PAST ILLNESS", (DE("DE02.10.099.00", "既往史", cda.st("既往体健")),)),
                Section("8716-3", "VITAL SIGNS", _vitals(rng)),
                Section("46241-6", "HOSPITAL ADMISSION DX", (admitted, *_diagnosis(*dx))))
    assert end is not None, "a stay that was discharged has an end"
    days = max((end.date() - start.date()).days, 1)
    stay = (admitted, DE("DE06.00.017.00", "出院日期时间", cda.ts(end)), DE("DE06.00.310.00", "实际住院天数", cda.pq(days, "d")))
    if type_code == "C0032":
        return (Section("46241-6", "HOSPITAL ADMISSION DX", stay),
                Section("11535-2", "HOSPITAL DISCHARGE DX", (
                    *_diagnosis(*dx), DE("DE06.00.223.00", "离院方式代码", cda.cd("1", "医嘱离院", "2.16.156.10011.2.3.1.269", "离院方式代码表")))),
                Section("48768-6", "PAYMENT SOURCES", (DE("DE07.00.010.00", "住院总费用", cda.money(rng.randint(300_000, 3_000_000))),)))
    # C0053
    return (Section("46241-6", "HOSPITAL ADMISSION DX", (*stay, DE("DE05.10.148.00", "入院情况", cda.st(f"{complaint}入院")))),
            Section("11535-2", "HOSPITAL DISCHARGE DX", (
                *_diagnosis(*dx), DE("DE06.00.296.00", "诊疗过程描述", cda.st("入院后完善检查，予对症治疗，好转。")),
                DE("DE06.00.287.00", "出院医嘱", cda.st("注意休息，门诊随诊。")))))


def clean_document(type_code: str, *, hospital: Hospital, person: Person, rng: random.Random,
                   at: datetime) -> cda.Document:
    """A document of ``type_code`` for one visit of ``person`` at ``hospital`` that breaks no rule."""
    dept_code, dept_name = rng.choice(hospital.departments)
    doctor, reviewer = rng.sample(hospital.doctors, 2) if len(hospital.doctors) > 1 else (hospital.doctors[0],) * 2
    inpatient = type_code in INPATIENT_TYPES
    start = at.replace(microsecond=0)
    end = start + timedelta(days=rng.randint(2, 12), hours=rng.randint(0, 6)) if type_code in ("C0032", "C0053") else None
    written = end or (start + timedelta(hours=rng.randint(1, 4)))
    visit = cda.Visit(kind="3" if inpatient else rng.choice("11112"), number=f"{'ZY' if inpatient else 'MZ'}{rng.randrange(10**9):09d}",
                      start=start, end=end, department_code=dept_code, department_name=dept_name,
                      ward_code=f"B{dept_code}", ward_name=f"{dept_name}病区", room=str(rng.randint(101, 420)),
                      bed=str(rng.randint(1, 40)), record_no=f"BA{rng.randrange(10**8):08d}")
    return cda.Document(
        type_code=type_code, document_id=str(uuid.UUID(int=rng.getrandbits(128))), effective_time=written,
        patient=cda.Patient(id_number=person.id_number, name=person.name, sex=person.sex, birth_date=person.birth_date,
                            phone=person.phone, address=Address("重庆市", "重庆市", person.district, "", "", "", "400000"),
                            health_card_no=person.health_card_no),
        custodian_code=hospital.credit_code, custodian_name=hospital.name,
        author=cda.Practitioner(*doctor), reviewer=cda.Practitioner(*reviewer), visit=visit,
        sections=_sections(type_code, rng, start, end), order_no=f"NO{rng.randrange(10**10):010d}",
        specimen_no=f"S{rng.randrange(10**8):08d}" if type_code in ("C0006", "C0007") else "")


# --- defects -------------------------------------------------------------------------------------


def _set(doc: cda.Document, code: str, value: cda.Value | None) -> cda.Document:
    """The document with data element ``code``'s value replaced (None: left empty) wherever it appears."""
    sections = tuple(replace(s, elements=tuple(replace(e, value=value) if e.code == code else e for e in s.elements))
                     for s in doc.sections)
    return replace(doc, sections=sections)


def _value(doc: cda.Document, code: str) -> cda.Value | None:
    for s in doc.sections:
        for e in s.elements:
            if e.code == code:
                return e.value
    return None


def _has(doc: cda.Document, code: str) -> bool:
    return any(e.code == code for s in doc.sections for e in s.elements)


#: data elements each type must carry (mirrors quality/rules.yaml's completeness rules)
REQUIRED: dict[str, tuple[str, ...]] = {
    "C0001": ("DE02.10.026.00", "DE04.50.001.00", "DE05.01.024.00"),
    "C0002": ("DE04.01.119.00", "DE02.10.071.00", "DE05.01.024.00", "DE05.01.025.00", "DE04.10.186.00"),
    "C0004": ("DE05.01.024.00", "DE08.50.022.00", "DE08.50.044.00", "DE06.00.133.00", "DE06.00.134.00"),
    "C0006": ("DE02.10.027.00", "DE04.30.009.00", "DE04.50.132.00", "DE06.00.179.00"),
    "C0007": ("DE04.30.020.00", "DE06.00.179.00"),
    "C0032": ("DE06.00.092.00", "DE06.00.017.00", "DE05.01.024.00", "DE06.00.223.00", "DE07.00.010.00"),
    "C0034": ("DE04.01.119.00", "DE02.10.071.00", "DE02.10.099.00", "DE04.10.186.00", "DE04.10.174.00",
              "DE05.01.024.00"),
    "C0053": ("DE06.00.092.00", "DE06.00.017.00", "DE05.01.024.00", "DE05.10.148.00", "DE06.00.296.00",
              "DE06.00.287.00"),
}

_IMPLAUSIBLE = {"DE04.10.186.00": ("PLA-TEMP", "45.8", "℃"), "DE04.10.118.00": ("PLA-PULSE", "320", "次/min"),
                "DE04.10.174.00": ("PLA-SBP", "420", "mmHg"), "DE04.10.081.00": ("PLA-RESP", "95", "次/min")}
_IMPLAUSIBLE_LAB = {"718-7": ("PLA-LAB-718-7", "950"), "2345-7": ("PLA-LAB-2345-7", "88.0"),
                    "2823-3": ("PLA-LAB-2823-3", "15.2"), "2160-0": ("PLA-LAB-2160-0", "9800")}


def inject(doc: cda.Document, kind: str, rng: random.Random) -> tuple[cda.Document, Defect] | None:
    """``doc`` with one defect of ``kind``, and the record of it; None if the kind does not apply to the type."""
    t = doc.type_code
    if kind == "missing_element":
        code = rng.choice(REQUIRED[t])
        return _set(doc, code, None), Defect(kind, f"CMP-{t}-{code}", code)
    if kind == "code_outside_value_set" and _has(doc, "DE05.01.024.00"):
        return (_set(doc, "DE05.01.024.00", cda.cd("X99.901", "自造诊断", ICD10_SYSTEM, "ICD-10")),
                Defect(kind, "VAL-ICD10-CODE", "DE05.01.024.00"))
    if kind == "code_display_mismatch" and _has(doc, "DE05.01.024.00"):
        current = _value(doc, "DE05.01.024.00")
        other = next(name for code, name in _DIAGNOSES if code != current.code)
        return (_set(doc, "DE05.01.024.00", replace(current, display=other)),
                Defect(kind, "VAL-ICD10-DISPLAY", "DE05.01.024.00"))
    p = doc.patient
    if kind == "id_birth_mismatch" and t in ("C0001", "C0002", "C0032", "C0053"):  # the types whose header has a birth time
        return (replace(doc, patient=replace(p, birth_date=p.birth_date + timedelta(days=400))),
                Defect(kind, "CON-ID-BIRTH", "recordTarget/patientRole/patient/birthTime"))
    if kind == "id_sex_mismatch":
        return (replace(doc, patient=replace(p, sex="2" if p.sex == "1" else "1")),
                Defect(kind, "CON-ID-SEX", "recordTarget/patientRole/patient/administrativeGenderCode"))
    if kind == "id_check_digit":
        body = p.id_number[:17]
        wrong = next(c for c in "0123456789X" if c != check_digit(body))
        return (replace(doc, patient=replace(p, id_number=body + wrong)),
                Defect(kind, "VAL-ID-CHECK", "recordTarget/patientRole/patient/id"))
    if kind == "admission_after_discharge" and t in ("C0032", "C0053"):
        admitted, discharged = _value(doc, "DE06.00.092.00"), _value(doc, "DE06.00.017.00")
        doc = _set(_set(doc, "DE06.00.092.00", discharged), "DE06.00.017.00", admitted)
        return doc, Defect(kind, "CON-ADMIT-DISCHARGE", "DE06.00.017.00")
    if kind == "implausible_vital":
        codes = [c for c in _IMPLAUSIBLE if _has(doc, c)]
        if codes:
            code = rng.choice(codes)
            rule, value, unit = _IMPLAUSIBLE[code]
            return _set(doc, code, cda.pq(value, unit)), Defect(kind, rule, code)
    if kind == "implausible_lab" and t == "C0007":
        code = rng.choice(sorted(_IMPLAUSIBLE_LAB))
        rule, value = _IMPLAUSIBLE_LAB[code]
        return _set(doc, code, replace(_value(doc, code), text=value)), Defect(kind, rule, code)
    return None


KINDS = ("missing_element", "code_outside_value_set", "code_display_mismatch", "id_birth_mismatch",
         "id_sex_mismatch", "id_check_digit", "admission_after_discharge", "implausible_vital", "implausible_lab",
         "schema_violation", "duplicate_document_id", "late_upload")


def _drop_title(xml: bytes) -> bytes:
    root = etree.fromstring(xml)
    title = root.find(f"{{{cda.HL7_NS}}}title")
    root.remove(title)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def documents(seed: int, *, hospitals: Sequence[Hospital], people: Sequence[Person], count: int,
              defect_rate: float = 0.3, start: datetime | None = None, types: Sequence[str] = TYPES,
              minutes_apart: int = 7) -> Iterator[SynthDocument]:
    """``count`` documents of the given types, in upload order; about ``defect_rate`` of them with one defect."""
    rng = random.Random(f"{seed}:documents")
    start = start or datetime(2026, 11, 1, 8, tzinfo=CHINA_TZ)
    earlier: dict[str, str] = {}  # hospital -> a document id it already used
    for n in range(count):
        hospital, person, type_code = rng.choice(hospitals), rng.choice(people), types[n % len(types)]
        at = start + timedelta(minutes=minutes_apart * n, seconds=rng.randint(0, 300))
        doc = clean_document(type_code, hospital=hospital, person=person, rng=rng, at=at)
        sent_at = doc.effective_time + timedelta(minutes=rng.randint(5, 600))
        defects: list[Defect] = []
        schema_violation = False
        if rng.random() < defect_rate:
            kind = rng.choice(KINDS)
            if kind == "schema_violation":
                schema_violation = True
                defects.append(Defect(kind, "CONF-SCHEMA", "title"))
            elif kind == "duplicate_document_id" and hospital.facility_code in earlier:
                doc = replace(doc, document_id=earlier[hospital.facility_code])
                defects.append(Defect(kind, "UNQ-DOCUMENT-ID", "id"))
            elif kind == "late_upload":
                sent_at = doc.effective_time + timedelta(days=rng.randint(4, 20))
                defects.append(Defect(kind, "TIM-UPLOAD-DELAY", "effectiveTime"))
            else:
                injected = inject(doc, kind, rng)
                if injected is not None:
                    doc, defect = injected
                    defects.append(defect)
        xml = cda.build(doc, validate=False)
        if schema_violation:
            xml = _drop_title(xml)
        if not defects:
            earlier.setdefault(hospital.facility_code, doc.document_id)
        yield SynthDocument(doc, xml, hospital.facility_code, sent_at, tuple(defects))
