"""Synthetic hospital traffic: HL7 v2, CDA and FHIR messages about the synthetic residents.

Used by the simulator, the benchmarks and the tests, so that all of them send what a hospital
information system would: the hospital's own patient number, the resident's real-name data.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from smartcare.standards import cda

CHINA = ZoneInfo("Asia/Shanghai")
_LABS = (("2345-7", "葡萄糖", "mmol/L", (3.9, 11.0)), ("2160-0", "肌酐", "umol/L", (45, 130)),
         ("718-7", "血红蛋白", "g/L", (100, 170)), ("2093-3", "总胆固醇", "mmol/L", (3.0, 7.0)))


def _now(at: datetime | None) -> str:
    return f"{(at or datetime.now(CHINA)):%Y%m%d%H%M%S}"


def _msh(facility: str, type_: str, control_id: str, at: datetime | None) -> str:
    return f"MSH|^~\\&|HIS|{facility}|SMARTCARE|REGION|{_now(at)}||{type_}|{control_id}|P|2.5|||||CHN|UNICODE UTF-8"


def _pid(facility: str, resident: dict) -> str:
    family, given = resident["name"][0], resident["name"][1:]
    sex = {"1": "M", "2": "F"}.get(resident["sex"], "U")
    return (f"PID|1||MZ{resident['id']:08d}^^^{facility}^MR~{resident['id_number']}^^^CHN^ID||{family}^{given}||"
            f"{resident['birth_date']:%Y%m%d}|{sex}|||{resident['address']}||{resident['phone']}")


def adt(facility: str, control_id: str, resident: dict, *, trigger: str = "A04", at: datetime | None = None) -> str:
    """ADT^A01/A04/A08 … with PID (hospital patient number + ID number) and an outpatient PV1."""
    return "\r".join([
        _msh(facility, f"ADT^{trigger}^ADT_A01", control_id, at),
        f"EVN|{trigger}|{_now(at)}",
        _pid(facility, resident),
        f"PV1|1|O|03^内科^^{facility}||||D0001^王^医生||||||||||||V{control_id}",  # PV1-19: the visit number
    ]) + "\r"


def oru(facility: str, control_id: str, resident: dict, *, rng: random.Random | None = None, at: datetime | None = None) -> str:
    """ORU^R01 with two lab results."""
    rng = rng or random.Random(control_id)
    lines = [_msh(facility, "ORU^R01^ORU_R01", control_id, at), _pid(facility, resident),
             f"OBR|1|{control_id}||LAB^常规生化|||{_now(at)}"]
    for i, (code, name, unit, (low, high)) in enumerate(rng.sample(_LABS, 2), 1):
        value = round(rng.uniform(low * 0.8, high * 1.2), 1)
        flag = "H" if value > high else "L" if value < low else "N"
        lines.append(f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}|{low}-{high}|{flag}|||F|||{_now(at)}")
    return "\r".join(lines) + "\r"


def cda_document(resident: dict, facility_code: str, facility_name: str, *, at: datetime | None = None) -> bytes:
    """A schema-valid C0001 (病历概要) of a visit at the hospital, its custodian the hospital's 统一社会信用代码."""
    from smartcare.registry.service import credit_code  # a pure function of the facility code
    from smartcare.synth.documents import Hospital, Person, clean_document

    hospital = Hospital(facility_code, credit_code(facility_code) or "", facility_name, (("03", "内科"),),
                        (("D0001", "王医生", "主治医师"), ("D0002", "李主任", "主任医师")))
    person = Person(resident["id_number"], resident["name"], resident["sex"], resident["birth_date"],
                    resident.get("phone") or "")
    at = at or datetime.now(CHINA)
    doc = clean_document("C0001", hospital=hospital, person=person, rng=random.Random(f"{facility_code}:{at}"),
                         at=at - timedelta(hours=1))
    return cda.build(doc)


def fhir_patient(resident: dict, facility: str) -> bytes:
    return json.dumps({
        "resourceType": "Patient", "id": f"{facility}-{resident['id']}",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": resident["id_number"]},
                       {"system": f"urn:smartcare:{facility}:mr", "value": f"MZ{resident['id']:08d}"}],
        "name": [{"text": resident["name"]}], "gender": {"1": "male", "2": "female"}.get(resident["sex"], "unknown"),
        "birthDate": resident["birth_date"].isoformat(), "telecom": [{"system": "phone", "value": resident["phone"]}],
    }, ensure_ascii=False).encode()
