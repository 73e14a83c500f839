"""FHIR resources kept encoded per document (``records.fhir``): what a request joins is what the mapping
gives for the documents as they are now — after the rows are lost or of an older mapping, after a visit's
first document is replaced (the Encounter keeps its id, and every reference holds), after ``reindex``."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from smartcare.platform.clock import CHINA_TZ, china_today
from smartcare.platform.db import session_scope
from smartcare.records import fhir, service as records
from smartcare.synth import service as synth
from smartcare.synth.documents import Person, clean_document
from tests.healthcard.card_support import headers, issue, person, resident
from tests.records.records_support import history_at_two_hospitals, register_document, sql


DAYS_AGO = 3


@pytest.fixture(scope="module")
def client_module(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def owner(client_module, hospital, other_hospital):
    p = person()
    who = resident(client_module)
    r = issue(client_module, who, name=p["name"], id_number=p["id_number"], phone=p["phone"])
    assert r.status_code == 201, r.text
    empi_id = r.json()["empi_id"]
    history_at_two_hospitals(p, empi_id, hospital[0], other_hospital[0], days_ago=DAYS_AGO, stay_before=9, sensitive_before=4)
    return p, who, empi_id


def _everything(client, owner) -> dict:
    _, who, empi_id = owner
    r = client.get(f"/fhir/Patient/{empi_id}/$everything", headers=headers(who))
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _record_ids(empi_id: str) -> list[int]:
    return [r[0] for r in sql("SELECT id FROM records.document WHERE empi_id = :e AND status = 'current'", e=empi_id)]


def _references_hold(bundle: dict, empi_id: str) -> dict[str, list[dict]]:
    """Every subject is the patient, every encounter reference an Encounter of the bundle; resources by type."""
    by_type: dict[str, list[dict]] = {}
    for e in bundle["entry"]:
        by_type.setdefault(e["resource"]["resourceType"], []).append(e["resource"])
    encounters = {f"Encounter/{r['id']}" for r in by_type["Encounter"]}
    assert all(r["id"].endswith(f"-{empi_id}") for r in by_type["Encounter"]), "whose encounter: in its id"
    for kind, found in by_type.items():
        for r in found:
            if kind != "Patient":
                assert r["subject"] == {"reference": f"Patient/{empi_id}"}, r
            refs = [r["encounter"]] if "encounter" in r else r.get("context", {}).get("encounter", [])
            assert kind in ("Patient", "Encounter") or refs, r
            assert {x["reference"] for x in refs} <= encounters, r
    return by_type


def test_lost_or_outdated_rows_are_encoded_again_on_read_to_the_same_bundle(client_module, owner, hospital,
                                                                             other_hospital):
    _, _, empi_id = owner
    first = _everything(client_module, owner)
    encounters = _references_hold(first, empi_id)["Encounter"]
    names = dict(sql("SELECT code, name FROM registry.facility WHERE code IN (:a, :b)", a=hospital[0], b=other_hospital[0]))
    [stay] = [fhir.encounter_id(f, t, empi_id) for f, t in sql(  # the discharge summary's visit: the one inpatient encounter
        "SELECT facility_code, service_time FROM records.document WHERE empi_id = :e AND type_code = 'C0053'", e=empi_id)]
    assert stay in {r["id"] for r in encounters}
    for r in encounters:  # the hospital's name and the visit's class filled in as served
        assert r["serviceProvider"]["display"] == names[r["serviceProvider"]["identifier"]["value"]]
        assert (r["class"]["code"] == "IMP") == (r["id"] == stay)
    ids = _record_ids(empi_id)
    assert len(ids) == 5 and len(sql("SELECT 1 FROM records.document_fhir WHERE record_id = ANY(:ids)", ids=ids)) == 5

    sql("DELETE FROM records.document_fhir WHERE record_id = :id", id=ids[0])
    sql("UPDATE records.document_fhir SET mapping = mapping - 1, types = '{}', entries = '' WHERE record_id = :id",
        id=ids[1])
    assert _everything(client_module, owner)["entry"] == first["entry"]
    rows = sql("SELECT mapping, cardinality(types) FROM records.document_fhir WHERE record_id = ANY(:ids)", ids=ids)
    assert len(rows) == 5 and all(m == fhir.FHIR_MAPPING and n >= 1 for m, n in rows)

    with session_scope() as s:  # reindex gives the items new ids: the resources follow
        records.reindex(s, after_id=min(ids) - 1, limit=max(ids) - min(ids) + 1)
    again = _everything(client_module, owner)
    conditions = {r["id"] for r in _references_hold(again, empi_id)["Condition"]}
    item_ids = {f"c{i}" for (i,) in sql("SELECT id FROM records.item WHERE record_id = ANY(:ids) "
                                         "AND code = 'DE05.01.024.00'", ids=ids)}
    assert conditions == item_ids and conditions.isdisjoint({r["resource"]["id"] for r in first["entry"]})


def test_replacing_a_visits_first_document_keeps_its_encounter_and_every_reference(client_module, owner, hospital):
    p, _, empi_id = owner
    before = _everything(client_module, owner)
    [(first_id, document_id, service_time)] = sql(
        "SELECT id, document_id, service_time FROM records.document WHERE empi_id = :e AND type_code = 'C0002' "
        "AND facility_code = :f AND status = 'current'", e=empi_id, f=hospital[0])
    visit = fhir.encounter_id(hospital[0], service_time, empi_id)
    assert visit in {e["resource"]["id"] for e in before["entry"]}

    with session_scope() as s:
        [h] = synth.document_hospitals(s, codes=[hospital[0]])
        born = s.execute(text("SELECT sex, birth_date FROM synth.resident WHERE id_number = :n"),
                         {"n": p["id_number"]}).one()
    me = Person(p["id_number"], p["name"], born.sex, born.birth_date, p["phone"])
    # the outpatient record as history_at_two_hospitals wrote it (its first document), sent again as a new version
    at = datetime.combine(china_today() - timedelta(days=DAYS_AGO), datetime.min.time(), CHINA_TZ).replace(hour=9)
    fixed = clean_document("C0002", hospital=h, person=me, rng=random.Random(empi_id), at=at)
    new_id = register_document(replace(fixed, document_id=str(uuid.uuid4()), replaces=document_id), hospital[0])

    after = _everything(client_module, owner)
    by_type = _references_hold(after, empi_id)
    visit_ids = [i for (i,) in sql("SELECT id FROM records.document WHERE empi_id = :e AND facility_code = :f "
                                   "AND service_time = :t AND status = 'current' ORDER BY id",
                                   e=empi_id, f=hospital[0], t=service_time)]
    assert new_id in visit_ids and first_id not in visit_ids
    encounters = [e["resource"]["id"] for e in after["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert sorted(encounters) == sorted(e["resource"]["id"] for e in before["entry"]
                                        if e["resource"]["resourceType"] == "Encounter")
    ours = {f"d{i}" for i in visit_ids}
    refs = {x["reference"] for r in by_type["DocumentReference"] if r["id"] in ours for x in r["context"]["encounter"]}
    assert refs == {f"Encounter/{visit}"}, "the new version and the visit's other documents name one Encounter"
    assert f"d{first_id}" not in {r["id"] for r in by_type["DocumentReference"]}


def test_values_that_look_like_the_stand_ins_are_served_as_they_are(client_module, owner):
    """A value holding the patient stand-in's text (with a backslash, or the control character itself) is
    neither filled in nor breaks the JSON: only the encoding's own references are."""
    _, _, empi_id = owner
    odd = 'x\\u0001subject" -\\u0001subject" Patient/\x01subject -\x01subject \\'
    [(item, record)] = sql("SELECT i.id, i.record_id FROM records.item i JOIN records.document d ON d.id = i.record_id "
                           "WHERE d.empi_id = :e AND i.kind = 'lab' ORDER BY i.id LIMIT 1", e=empi_id)
    sql("UPDATE records.item SET value_number = NULL, value_text = :t WHERE id = :i", t=odd, i=item)
    sql("DELETE FROM records.document_fhir WHERE record_id = :r", r=record)  # encoded again, with the odd value
    bundle = _everything(client_module, owner)  # parses: the JSON is whole
    [observation] = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] == f"o{item}"]
    assert observation["valueString"] == odd
    _references_hold(bundle, empi_id)


def test_a_reads_encoding_never_puts_back_what_a_reindex_replaced(owner):
    """A read encodes only documents without rows or with rows of another mapping: one that raced a reindex
    (items read before the reindex committed) must not overwrite the reindex's rows."""
    _, _, empi_id = owner
    [(record,)] = sql("SELECT id FROM records.document WHERE empi_id = :e AND type_code = 'C0007' "
                      "AND status = 'current'", e=empi_id)  # a lab report: no sensitive category of its own
    sql("UPDATE records.document_fhir SET sensitive = '{hiv}' WHERE record_id = :r", r=record)  # as a reindex wrote
    with session_scope() as s:
        fhir.refresh(s, [record], only_missing=True)
    assert sql("SELECT sensitive FROM records.document_fhir WHERE record_id = :r", r=record) == [(["hiv"],)]
    sql("UPDATE records.document_fhir SET mapping = mapping - 1 WHERE record_id = :r", r=record)
    with session_scope() as s:
        fhir.refresh(s, [record], only_missing=True)  # of another mapping: encoded again, from its items
    assert sql("SELECT sensitive, mapping FROM records.document_fhir WHERE record_id = :r", r=record) \
        == [([], fhir.FHIR_MAPPING)]


def test_after_a_merge_the_absorbed_persons_documents_name_the_survivor(client_module, owner, hospital):
    """(Last in this module: it merges another person into the owner.) Documents encoded for the person merged
    away are served as the survivor's: their Patient references and Encounter ids re-pointed."""
    from datetime import date

    from smartcare.empi import service as empi
    from smartcare.platform.idcard import make
    from smartcare.records import service as registry_service
    from tests.records.records_support import document

    _, _, empi_id = owner
    twin = {"id_number": make("500103", date(1930, 1, 1), uuid.uuid4().int % 500, "2"), "name": "某某", "sex": "2",
            "birth_date": date(1930, 1, 1)}
    with session_scope() as s:
        other = registry_service.register(s, raw=document(hospital[0], twin, outpatient_no=f"MZ{uuid.uuid4().hex[:8]}"),
                                          sender="test", facility_code=hospital[0], actor="test").document
        absorbed, absorbed_empi = other.person_id, other.empi_id
        [(survivor,)] = s.execute(text("SELECT id FROM empi.person WHERE empi_id = :e"), {"e": empi_id}).all()
    assert absorbed_empi != empi_id
    assert sql("SELECT empi_id FROM records.document_fhir WHERE record_id = :r", r=other.id) == [(absorbed_empi,)]
    with session_scope() as s:
        empi.merge(s, survivor_id=survivor, merged_id=absorbed, actor="test")

    bundle = _everything(client_module, owner)
    by_type = _references_hold(bundle, empi_id)  # every subject the survivor, every Encounter id theirs
    assert f"d{other.id}" in {r["id"] for r in by_type["DocumentReference"]}
    assert absorbed_empi not in str(bundle)
