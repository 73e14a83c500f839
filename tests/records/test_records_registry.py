"""The document registry's rules, at the service: register, duplicate, replace (by set id and version,
by RPLC parent, explicitly), the same id with other content kept, patients resolved in the master
patient index, queries and paging, audited retrieval."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta

import pytest

from smartcare.empi import matching
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.db import session_scope
from smartcare.platform.errors import Conflict, Forbidden, InvalidInput
from smartcare.platform.idcard import make
from smartcare.records import service
from tests.records.records_support import custodian_of, document, resident, sql


def register(raw: bytes, facility: str | None, **kw) -> service.Registration:
    with session_scope() as s:
        return service.register(s, raw=raw, sender="his-test", facility_code=facility, actor="test", **kw)


def replace(id: int, raw: bytes, facility: str) -> service.Registration:
    with session_scope() as s:
        return service.replace(s, id=id, raw=raw, sender="his-test", facility_code=facility, actor="test")


def row(id: int) -> dict:
    [found] = sql("SELECT * FROM records.document WHERE id = :id", id=id)
    return found._asdict()


def card_person(facility: str, card_no: str) -> tuple[int, str]:
    [found] = sql("SELECT p.id, p.empi_id FROM empi.source_identity si JOIN empi.link l ON l.source_id = si.id "
                  "JOIN empi.person p ON p.id = l.person_id WHERE si.facility_code = :f AND si.card_no = :c",
                  f=facility, c=card_no)
    return tuple(found)


def card(facility: str, who: dict, card_no: str, **extra) -> None:
    """The hospital's registration desk registers the card (as an ADT message through the hub would)."""
    with session_scope() as s:
        matching.register(s, facility_code=facility, card_no=card_no, actor="test",
                          record={"name": who["name"], "id_number": who["id_number"], "sex": who["sex"],
                                  "birth_date": who["birth_date"].isoformat(), **extra})


def test_a_document_is_registered_under_the_patients_empi_person_without_personal_data(hospital, residents):
    facility, who = hospital[0], resident(residents, 0)
    card_no = f"MZ{uuid.uuid4().hex[:8]}"
    raw = document(facility, who, outpatient_no=card_no, effective_time=datetime(2026, 3, 2, 10, 0, tzinfo=CHINA_TZ))
    done = register(raw, facility, exchange_message_id=None)
    assert done.outcome == "registered"
    person_id, empi_id = card_person(facility, card_no)  # the card was registered in the index and matched
    doc = row(done.document.id)
    assert (doc["person_id"], doc["empi_id"], doc["patient_ref"]) == (person_id, empi_id, card_no)
    assert (doc["custodian_code"], doc["facility_code"], doc["type_code"], doc["status"]) == \
        (custodian_of(facility), facility, "C0001", "current")
    assert doc["service_time"] == datetime(2026, 3, 2, 10, 0, tzinfo=CHINA_TZ) == doc["effective_time"]
    assert doc["size_bytes"] == len(raw) and len(doc["sha256"]) == 64
    # the registry holds identifiers only; the raw document is the one copy of the personal data
    values = " ".join(str(v) for v in doc.values())
    assert who["id_number"] not in values and who["name"] not in values and who["phone"] not in values
    assert sql("SELECT raw FROM records.content WHERE sha256 = :h", h=doc["sha256"]) == [(raw,)]
    [(payload,)] = sql("SELECT payload FROM platform.bus_message WHERE topic = 'records.document.registered' "
                       "AND payload->>'id' = :id", id=str(doc["id"]))
    assert payload == {"id": doc["id"], "document_id": doc["document_id"], "custodian_code": custodian_of(facility),
                       "facility_code": facility, "type_code": "C0001", "replaces_id": None, "status": "current"}


def test_an_inpatient_document_is_filed_by_its_stay_and_encounter_time(hospital, residents):
    facility, who = hospital[0], resident(residents, 1)
    admitted = datetime(2026, 2, 20, 8, 0, tzinfo=CHINA_TZ)
    stay = f"ZY{uuid.uuid4().hex[:8]}"
    done = register(document(facility, who, type_code="C0034", inpatient_no=stay, admitted_at=admitted), facility)
    doc = row(done.document.id)
    assert (doc["type_code"], doc["patient_ref"], doc["service_time"]) == ("C0034", stay, admitted)
    assert doc["type_name"] == "入院记录" and doc["author_code"] == "YS0123"
    assert doc["empi_id"] == card_person(facility, stay)[1]


def test_a_resend_is_a_duplicate_and_the_same_id_with_other_content_is_kept_beside_it(hospital, residents):
    facility, who = hospital[0], resident(residents, 2)
    doc_id = str(uuid.uuid4())
    raw = document(facility, who, document_id=doc_id)
    first = register(raw, facility)
    again = register(raw, facility)
    assert (again.outcome, again.document.id) == ("duplicate", first.document.id)
    assert sql("SELECT count(*) FROM records.content WHERE sha256 = :h", h=first.document.sha256) == [(1,)]
    # the same id with other bytes: a second row, both current (the quality engine flags the reused id)
    other = register(document(facility, who, document_id=doc_id, past_history="高血压"), facility)
    assert other.outcome == "registered" and other.document.id != first.document.id
    assert sql("SELECT id, status FROM records.document WHERE document_id = :d ORDER BY id", d=doc_id) == \
        [(first.document.id, "current"), (other.document.id, "current")]
    assert sql("SELECT count(*) FROM platform.bus_message WHERE topic = 'records.document.registered' "
               "AND payload->>'document_id' = :d", d=doc_id) == [(2,)]


def test_a_higher_version_of_the_set_replaces_and_a_late_lower_one_arrives_replaced(hospital, residents):
    facility, who, set_id = hospital[0], resident(residents, 3), f"SET-{uuid.uuid4().hex[:8]}"
    v1 = register(document(facility, who, set_id=set_id, version=1), facility)
    v3 = register(document(facility, who, set_id=set_id, version=3), facility)
    assert (v1.outcome, v3.outcome) == ("registered", "replaced")
    assert (row(v1.document.id)["status"], row(v1.document.id)["replaced_by_id"]) == ("replaced", v3.document.id)
    assert (row(v3.document.id)["status"], row(v3.document.id)["replaces_id"]) == ("current", v1.document.id)
    # version 2 comes after version 3 (a resend, a retry): filed, but never current over version 3
    v2 = register(document(facility, who, set_id=set_id, version=2), facility)
    assert v2.outcome == "registered"
    assert (row(v2.document.id)["status"], row(v2.document.id)["replaced_by_id"]) == ("replaced", v3.document.id)
    assert row(v3.document.id)["status"] == "current"
    with session_scope() as s:
        chain = [d.id for d in service.versions(s, v1.document.id)]
    assert chain == [v1.document.id, v3.document.id, v2.document.id]
    assert sql("SELECT count(*) FROM records.document WHERE set_id = :s AND status = 'current'", s=set_id) == [(1,)]
    # the same version again with other content: kept beside it, neither replaces the other
    other3 = register(document(facility, who, set_id=set_id, version=3, past_history="糖尿病"), facility)
    assert other3.outcome == "registered" and row(v3.document.id)["status"] == "current"


def test_a_document_naming_its_parent_replaces_it_and_a_second_replacement_replaces_the_first(hospital, residents):
    facility, who = hospital[0], resident(residents, 4)
    parent_id = str(uuid.uuid4())
    parent = register(document(facility, who, document_id=parent_id), facility)
    first = register(document(facility, who, replaces=parent_id), facility)
    assert first.outcome == "replaced" and first.document.replaces_id == parent.document.id
    assert (row(parent.document.id)["status"], row(parent.document.id)["replaced_by_id"]) == \
        ("replaced", first.document.id)
    # another document naming the same (already replaced) parent replaces the current version instead
    second = register(document(facility, who, replaces=parent_id), facility)
    assert second.outcome == "replaced" and second.document.replaces_id == first.document.id
    assert row(first.document.id)["status"] == "replaced"
    with session_scope() as s:
        assert [d.id for d in service.versions(s, second.document.id)] == \
            [parent.document.id, first.document.id, second.document.id]
    # a parent the registry never saw: just registered
    orphan = register(document(facility, who, replaces=str(uuid.uuid4())), facility)
    assert (orphan.outcome, orphan.document.replaces_id, orphan.document.status) == ("registered", None, "current")


def test_explicit_replacement(hospital, other_hospital, residents):
    facility, who = hospital[0], resident(residents, 5)
    set_id = f"SET-{uuid.uuid4().hex[:8]}"
    old = register(document(facility, who, set_id=set_id, version=1), facility)
    with pytest.raises(InvalidInput, match="versionNumber: 1 must be higher"):
        replace(old.document.id, document(facility, who, set_id=set_id, version=1, past_history="x"), facility)
    with pytest.raises(InvalidInput, match="setId"):
        replace(old.document.id, document(facility, who, set_id="OTHER", version=2), facility)
    with pytest.raises(InvalidInput, match="parentDocument/id: names"):
        replace(old.document.id, document(facility, who, replaces=str(uuid.uuid4())), facility)
    with pytest.raises(Forbidden):
        replace(old.document.id, document(other_hospital[0], who), facility)
    new = replace(old.document.id, document(facility, who, set_id=set_id, version=2), facility)
    assert new.outcome == "replaced" and new.document.replaces_id == old.document.id
    with pytest.raises(Conflict, match="already replaced"):
        replace(old.document.id, document(facility, who, set_id=set_id, version=3), facility)
    # an explicit replacement without set or version (the caller says what it replaces)
    newest = replace(new.document.id, document(facility, who), facility)
    assert newest.outcome == "replaced" and row(new.document.id)["replaced_by_id"] == newest.document.id


def test_a_document_of_another_custodian_or_without_a_usable_header_is_refused(hospital, other_hospital, residents):
    facility, who = hospital[0], resident(residents, 6)
    doc_id = str(uuid.uuid4())
    with pytest.raises(Forbidden, match=f"custodian {custodian_of(other_hospital[0])} is not the sending hospital"):
        register(document(other_hospital[0], who, document_id=doc_id), facility)
    with pytest.raises(InvalidInput, match=r"ClinicalDocument/custodian/assignedCustodian"):
        register(document(facility, who, custodian=""), facility)
    with pytest.raises(InvalidInput, match="malformed XML at line 1"):
        register(b"<ClinicalDocument", facility)
    with pytest.raises(InvalidInput, match="root element is ClinicalDocument, expected ClinicalDocument in namespace"):
        register(b"<ClinicalDocument/>", facility)
    assert sql("SELECT count(*) FROM records.document WHERE document_id = :d", d=doc_id) == [(0,)]
    # a sender that belongs to no hospital: filed under the hospital the custodian's credit code names,
    # or under the custodian as written when no registered hospital has it
    filed = register(document(other_hospital[0], who), None)
    assert row(filed.document.id)["facility_code"] == other_hospital[0]
    unknown = register(document(facility, who, custodian="12500000TESTONLY00"), None)
    assert row(unknown.document.id)["facility_code"] == "12500000TESTONLY00"


def test_a_document_without_a_patient_number_is_resolved_by_a_certain_id_number_only(hospital, residents):
    facility, who = hospital[0], resident(residents, 7)
    card_no = f"MZ{uuid.uuid4().hex[:8]}"
    card(facility, who, card_no)
    by_id = register(document(facility, who), facility)  # C0001 without a health card: only the ID number
    assert by_id.document.empi_id == card_person(facility, card_no)[1]
    assert by_id.document.patient_ref is None
    stranger = {**who, "id_number": make("500103", date(1931, 1, 1), uuid.uuid4().int % 500, "1"),
                "birth_date": date(1931, 1, 1)}
    nobody = register(document(facility, stranger), facility)
    assert (nobody.document.person_id, nobody.document.empi_id) == (None, None)


def test_a_document_does_not_erase_what_the_registration_desk_recorded(hospital, residents):
    facility, who = hospital[0], resident(residents, 8)
    card_no = f"MZ{uuid.uuid4().hex[:8]}"
    card(facility, who, card_no, phone=who["phone"], address=who["address"])
    [(before,)] = sql("SELECT recorded_at FROM empi.source_identity WHERE facility_code = :f AND card_no = :c",
                      f=facility, c=card_no)
    done = register(document(facility, who, outpatient_no=card_no), facility)
    assert done.document.empi_id == card_person(facility, card_no)[1]
    [(recorded, recorded_at)] = sql("SELECT recorded, recorded_at FROM empi.source_identity WHERE facility_code = :f "
                                    "AND card_no = :c", f=facility, c=card_no)
    assert recorded["phone"] == who["phone"] and recorded_at == before  # nothing new: the card was not written
    # a corrected name in a later document updates the card and keeps the phone
    register(document(facility, {**who, "name": who["name"] + "明"}, outpatient_no=card_no), facility)
    [(recorded,)] = sql("SELECT recorded FROM empi.source_identity WHERE facility_code = :f AND card_no = :c",
                        f=facility, c=card_no)
    assert recorded["name"] == who["name"] + "明" and recorded["phone"] == who["phone"]


def test_query_filters_and_keyset_paging(hospital, other_hospital, residents):
    facility, who = hospital[0], resident(residents, 9)
    card_no = f"MZ{uuid.uuid4().hex[:8]}"
    base = datetime(2025, 6, 1, 9, 0, tzinfo=CHINA_TZ)
    ids = [register(document(facility, who, outpatient_no=card_no, effective_time=base + timedelta(days=i)),
                    facility).document.id for i in range(5)]
    stay = register(document(facility, who, type_code="C0034", inpatient_no=f"ZY{uuid.uuid4().hex[:6]}",
                             outpatient_no=card_no, admitted_at=base + timedelta(days=10)), facility).document.id
    elsewhere = register(document(other_hospital[0], who, outpatient_no=card_no, effective_time=base),
                         other_hospital[0]).document.id
    person_id, empi_id = card_person(facility, card_no)
    with session_scope() as s:
        def q(**kw):
            return [d.id for d in service.query(s, **kw)]

        everything = q(person_id=person_id, limit=100)
        assert set(ids + [stay]) <= set(everything)
        assert q(empi_id=empi_id, limit=100) == everything
        assert q(person_id=person_id, facility_code=facility, type_code="C0001") == ids[::-1]
        assert q(person_id=person_id, type_code="C0034") == [stay]
        assert q(person_id=person_id, facility_code=facility, type_code="C0001", since=base + timedelta(days=1),
                 until=base + timedelta(days=3)) == [ids[2], ids[1]]
        assert elsewhere in q(facility_code=other_hospital[0], since=base, until=base + timedelta(seconds=1))
        # pages of two, newest first, by the last id of the page
        pages, before = [], None
        while True:
            page = q(person_id=person_id, facility_code=facility, type_code="C0001", limit=2, before_id=before)
            if not page:
                break
            pages.append(page)
            before = page[-1]
        assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]
        with pytest.raises(InvalidInput):
            service.query(s, status="deleted")


def test_query_by_person_finds_the_documents_of_a_merged_person(hospital, residents):
    from smartcare.empi import service as empi

    facility, who = hospital[0], resident(residents, 10)
    a, b = f"MZ{uuid.uuid4().hex[:8]}", f"MZ{uuid.uuid4().hex[:8]}"
    first = register(document(facility, who, outpatient_no=a), facility).document
    twin_card = {**who, "id_number": make("500103", date(1930, 1, 1), uuid.uuid4().int % 500, "2"),
                 "name": "某某", "birth_date": date(1930, 1, 1)}
    second = register(document(facility, twin_card, outpatient_no=b), facility).document
    assert first.person_id != second.person_id
    with session_scope() as s:
        empi.merge(s, survivor_id=first.person_id, merged_id=second.person_id, actor="test")
    with session_scope() as s:
        assert {d.id for d in service.query(s, person_id=first.person_id)} >= {first.id, second.id}
        assert {d.id for d in service.query(s, empi_id=second.empi_id)} >= {first.id, second.id}


def test_retrieve_returns_the_bytes_and_is_audited(hospital, residents):
    facility, who = hospital[0], resident(residents, 11)
    raw = document(facility, who)
    done = register(raw, facility)
    with session_scope() as s:
        assert service.retrieve(s, id=done.document.id, actor="dr-li", reason="会诊") == raw
    [(actor, detail)] = sql("SELECT actor, detail FROM platform.audit_log WHERE action = 'records.document.retrieve' "
                            "AND target = :t", t=f"document:{done.document.id}")
    assert actor == "dr-li" and detail["reason"] == "会诊" and detail["facility_code"] == facility


def test_the_database_never_lets_a_document_be_overwritten(hospital, residents):
    from sqlalchemy.exc import DBAPIError

    done = register(document(hospital[0], resident(residents, 12)), hospital[0])
    for statement in ("UPDATE records.document SET document_id = 'x' WHERE id = :id",
                      "UPDATE records.document SET status = 'replaced' WHERE id = :id",
                      "DELETE FROM records.document WHERE id = :id",
                      "UPDATE records.content SET raw = 'x' WHERE sha256 = (SELECT sha256 FROM records.document "
                      "WHERE id = :id)"):
        with pytest.raises(DBAPIError):
            sql(statement, id=done.document.id)


def test_replacements_sent_at_once_form_a_chain_not_a_fork(hospital, residents):
    from concurrent.futures import ThreadPoolExecutor

    facility, who = hospital[0], resident(residents, 13)
    parent_id, set_id = str(uuid.uuid4()), f"SET-{uuid.uuid4().hex[:8]}"
    parent = register(document(facility, who, document_id=parent_id), facility)
    first = register(document(facility, who, set_id=set_id, version=1), facility)
    # six corrections of one document, and versions 2 to 7 of a set, all at once and in any order
    docs = [document(facility, who, replaces=parent_id, past_history=f"第{i}次修订") for i in range(6)]
    docs += [document(facility, who, set_id=set_id, version=v) for v in range(2, 8)]
    with ThreadPoolExecutor(len(docs)) as pool:
        outcomes = list(pool.map(lambda raw: register(raw, facility).outcome, docs))
    assert outcomes[:6] == ["replaced"] * 6 and "duplicate" not in outcomes
    with session_scope() as s:
        corrections, versions = service.versions(s, parent.document.id), service.versions(s, first.document.id)
    for chain in (corrections, versions):
        assert len(chain) == 7 and [d.status for d in chain].count("current") == 1
        assert all(d.replaced_by_id is not None for d in chain if d.status == "replaced")
        predecessors = [d.replaces_id for d in chain if d.replaces_id is not None]
        assert len(predecessors) == len(set(predecessors))  # nobody was replaced twice: no fork
    # the corrections form one line from the parent; the set's current version is the highest
    assert len([d for d in corrections if d.replaces_id is not None]) == 6
    assert [d.version_number for d in versions if d.status == "current"] == [7]
