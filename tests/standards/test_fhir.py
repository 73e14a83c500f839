"""FHIR R4 -> canonical events: Patient, Encounter, Observation, Bundles, and clear refusals."""

from __future__ import annotations

import copy
import json
from datetime import date
from typing import Any

import pytest

from smartcare.platform.idcard import make
from smartcare.standards.fhir import FhirError, map_payload, map_resource

ID_NUMBER = make("500106", date(1978, 11, 23), 57, "1")  # 重庆市沙坪坝区, a man born 1978-11-23

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "his-pat-0098765",
    "identifier": [
        {
            "use": "official",
            "type": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NNCHN"}],
                "text": "居民身份证",
            },
            "system": "urn:oid:2.16.156.10011.1.3",
            "value": ID_NUMBER,
        },
        {"system": "urn:oid:2.16.156.10011.1.19", "value": "500106H19781123057"},  # 健康卡号
        {"system": "urn:oid:1.2.156.112604.1.2.1", "value": "JZK00451278"},  # 医院就诊卡号
    ],
    "name": [
        {"use": "usual", "text": "小刘"},
        {"use": "official", "family": "刘", "given": ["建", "华"]},
    ],
    "gender": "male",
    "birthDate": "1978-11-23",
    "telecom": [
        {"system": "phone", "value": "023-65432100", "use": "home"},
        {"system": "phone", "value": "13983456789", "use": "mobile"},
    ],
    "address": [
        {
            "use": "home",
            "text": "重庆市沙坪坝区小龙坎街道三角碑12号3-2",
            "state": "重庆市",
            "city": "重庆市",
            "district": "沙坪坝区",
            "line": ["小龙坎街道三角碑12号3-2"],
            "postalCode": "400030",
        }
    ],
}

ENCOUNTER: dict[str, Any] = {
    "resourceType": "Encounter",
    "id": "his-enc-20240506-0012",
    "identifier": [{"system": "urn:oid:2.16.156.10011.1.11", "value": "MZ20240506000123"}],  # 门诊号
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "门诊"},
    "type": [{"text": "内分泌科普通门诊"}],
    "subject": {"reference": "Patient/his-pat-0098765"},
    "period": {"start": "2024-05-06T08:30:00+08:00", "end": "2024-05-06T09:05:00+08:00"},
    "location": [{"location": {"reference": "Location/clinic-3f-12", "display": "门诊三楼12诊室"}}],
    "serviceProvider": {"reference": "Organization/dept-0502", "display": "内分泌科"},
}

OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "lis-20240506-778812-GLU",
    "status": "final",
    "category": [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
            ]
        }
    ],
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "14749-6", "display": "葡萄糖 [物质的量/体积] 血清或血浆"}],
        "text": "空腹血糖",
    },
    "subject": {"reference": "Patient/his-pat-0098765"},
    "encounter": {"reference": "Encounter/his-enc-20240506-0012"},
    "effectiveDateTime": "2024-05-06T08:45:00+08:00",
    "issued": "2024-05-06T10:12:31+08:00",
    "valueQuantity": {"value": 7.2, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    "interpretation": [{"coding": [{"code": "H", "display": "偏高"}]}],
    "referenceRange": [
        {"low": {"value": 3.9, "unit": "mmol/L"}, "high": {"value": 6.1, "unit": "mmol/L"}, "text": "3.9-6.1"}
    ],
}


def bundle(*resources: dict[str, Any], kind: str = "collection") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [{"fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}", "resource": r}
                  for i, r in enumerate(resources)],
    }


def test_patient_is_registered_with_its_id_number() -> None:
    [event] = map_resource(PATIENT)
    assert event == {
        "topic": "patient.registered",
        "data": {
            "source_id": "his-pat-0098765",
            "identifiers": [
                {"system": "urn:oid:2.16.156.10011.1.3", "value": ID_NUMBER},
                {"system": "urn:oid:2.16.156.10011.1.19", "value": "500106H19781123057"},
                {"system": "urn:oid:1.2.156.112604.1.2.1", "value": "JZK00451278"},
            ],
            "id_number": ID_NUMBER,
            "name": "刘建华",  # the official name, family then given, no space
            "sex": "1",
            "birth_date": "1978-11-23",
            "phone": "13983456789",  # the mobile number wins
            "address": "重庆市沙坪坝区小龙坎街道三角碑12号3-2",
        },
    }


def test_patient_variants() -> None:
    patient = copy.deepcopy(PATIENT)
    del patient["id"]
    patient["identifier"][0]["system"] = "http://www.gov.cn/id"  # recognised by its type code alone
    patient["name"] = [{"text": "欧阳娜娜"}]
    patient["gender"] = "female"
    patient["birthDate"] = "1978-11"  # partial dates stay as sent
    patient["address"] = [{"state": "重庆市", "city": "重庆市", "district": "渝中区", "line": ["解放碑街道", "民族路88号"]}]
    del patient["telecom"]
    data = map_resource(patient)[0]["data"]
    assert data["source_id"] == ID_NUMBER  # no id: the first identifier
    assert data["id_number"] == ID_NUMBER
    assert (data["name"], data["sex"], data["birth_date"]) == ("欧阳娜娜", "2", "1978-11")
    assert data["address"] == "重庆市渝中区解放碑街道民族路88号"
    assert data["phone"] is None
    assert [map_resource({"resourceType": "Patient", "gender": g})[0]["data"]["sex"]
            for g in ("male", "female", "unknown", "other")] == ["1", "2", "0", "9"]


def test_encounter_is_recorded() -> None:
    [event] = map_resource(ENCOUNTER)
    assert event == {
        "topic": "encounter.recorded",
        "data": {
            "source_id": "his-enc-20240506-0012",
            "identifiers": [{"system": "urn:oid:2.16.156.10011.1.11", "value": "MZ20240506000123"}],
            "patient_ref": "Patient/his-pat-0098765",
            "class": "AMB",
            "status": "finished",
            "start": "2024-05-06T08:30:00+08:00",
            "end": "2024-05-06T09:05:00+08:00",
            "service_provider": "Organization/dept-0502",
            "locations": ["Location/clinic-3f-12"],
        },
    }


def test_glucose_observation_is_a_lab_result() -> None:
    [event] = map_resource(OBSERVATION)
    assert event == {
        "topic": "lab.result",
        "data": {
            "source_id": "lis-20240506-778812-GLU",
            "identifiers": [],
            "patient_ref": "Patient/his-pat-0098765",
            "encounter_ref": "Encounter/his-enc-20240506-0012",
            "code": {"system": "http://loinc.org", "code": "14749-6", "display": "葡萄糖 [物质的量/体积] 血清或血浆"},
            "value": {"value": 7.2, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "effective": "2024-05-06T08:45:00+08:00",
            "status": "final",
            "reference_range": {"low": 3.9, "high": 6.1, "unit": "mmol/L", "text": "3.9-6.1"},
        },
    }


def test_observation_with_a_text_value() -> None:
    urine = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "尿蛋白定性"},
        "subject": {"reference": "Patient/his-pat-0098765"},
        "effectivePeriod": {"start": "2024-05-06T09:00:00+08:00"},
        "valueString": "阴性(-)",
    }
    data = map_resource(urine)[0]["data"]
    assert data["code"] == {"system": None, "code": None, "display": "尿蛋白定性"}
    assert (data["value"], data["effective"], data["reference_range"]) == ("阴性(-)", "2024-05-06T09:00:00+08:00", None)


def test_bundle_of_the_three_maps_in_order() -> None:
    payload = json.dumps(bundle(PATIENT, ENCOUNTER, OBSERVATION), ensure_ascii=False).encode("utf-8")
    events = map_payload(payload)
    assert [e["topic"] for e in events] == ["patient.registered", "encounter.recorded", "lab.result"]
    assert events[0]["data"]["id_number"] == ID_NUMBER
    assert events[2]["data"]["value"]["unit"] == "mmol/L"
    assert events[1]["data"]["full_url"] == "urn:uuid:00000000-0000-4000-8000-000000000001"
    # Personal data only ever inside "data".
    assert all(set(e) == {"topic", "data"} for e in events)


def test_transaction_bundle_entries_refer_to_each_other_by_full_url() -> None:
    patient = {k: v for k, v in PATIENT.items() if k != "id"}
    encounter = {**ENCOUNTER, "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}}
    tx = bundle(patient, encounter, kind="transaction")
    for entry in tx["entry"]:
        entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
    patient_event, encounter_event = map_resource(tx)
    assert encounter_event["data"]["patient_ref"] == patient_event["data"]["full_url"]


def test_invalid_entry_names_its_index_and_field() -> None:
    encounter = {k: v for k, v in ENCOUNTER.items() if k != "class"}
    with pytest.raises(FhirError, match=r"^Bundle\.entry\[1\] \(Encounter\): invalid field class: Field required") as info:
        map_resource(bundle(PATIENT, encounter, OBSERVATION))
    assert (info.value.index, info.value.path) == (1, "class")

    patient = copy.deepcopy(PATIENT)
    patient["identifier"][1]["value"] = 500106
    with pytest.raises(FhirError, match=r"^Bundle\.entry\[2\] \(Patient\): invalid field identifier\[1\]\.value: ") as info:
        map_resource(bundle(ENCOUNTER, OBSERVATION, patient))
    assert (info.value.index, info.value.path) == (2, "identifier[1].value")


def test_invalid_single_resource_names_the_field_but_not_the_value() -> None:
    patient = {**PATIENT, "birthDate": "1978-13-45"}
    with pytest.raises(FhirError, match=r"^Patient: invalid field birthDate: ") as info:
        map_resource(patient)
    assert info.value.index is None
    assert "1978" not in str(info.value) and ID_NUMBER not in str(info.value)
    with pytest.raises(FhirError, match=r"^Patient: invalid field gender: must be male, female, other or unknown"):
        map_resource({**PATIENT, "gender": "男"})
    with pytest.raises(FhirError, match=r"invalid field nickname: Extra inputs are not permitted"):
        map_resource({**PATIENT, "nickname": "刘哥"})


def test_unsupported_resource_type() -> None:
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/his-pat-0098765"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11.9", "display": "2型糖尿病"}]},
    }
    with pytest.raises(FhirError, match=r"^unsupported resource type Condition$"):
        map_resource(condition)
    with pytest.raises(FhirError, match=r"^Bundle\.entry\[1\]: unsupported resource type Condition$") as info:
        map_resource(bundle(PATIENT, condition))
    assert info.value.index == 1


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"resourceType": "Patient",\n  "gender": }', r"^invalid JSON at line 2, column 13: Expecting value"),
        (b"", r"^invalid JSON at line 1, column 1"),
        (b"\xff\xfe\xfa", r"not UTF-8"),
        (b"[]", r"expected a FHIR resource \(a JSON object\), got an array"),
        (b'{"gender": "male"}', r"no resourceType"),
        (b'{"resourceType": ["Patient"]}', r"no resourceType"),
        (b"[" * 100_000, r"nested too deeply"),
        (b'{"resourceType": "Bundle", "entry": []}', r"^Bundle: invalid field type: "),
        (b'{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "DELETE", "url": "Patient/1"}}]}',
         r"^Bundle\.entry\[0\]: has no resource"),
    ],
)
def test_payload_errors_are_clear(payload: bytes, message: str) -> None:
    with pytest.raises(FhirError, match=message):
        map_payload(payload)


def test_empty_bundle_maps_to_nothing() -> None:
    assert map_payload(b'{"resourceType": "Bundle", "type": "collection"}') == []
