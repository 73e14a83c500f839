"""End to end: a hospital's CDA document through the exchange hub (signed HTTP) is filed in the registry
under the EMPI person its registration desk's card belongs to; a refused one is audited, not retried."""

from __future__ import annotations

import uuid

from smartcare.synth.messages import adt
from tests.exchange.conftest import message_row, msa, settle, signed_post
from tests.records.records_support import custodian_of, document, resident, sql


def _send(client, hospital, raw: bytes) -> int:
    r = signed_post(client, hospital, "/api/v1/exchange/cda", raw, "application/xml")
    assert r.status_code == 202, r.text
    settle()
    return r.json()["message_id"]


def test_a_document_through_the_hub_is_registered_under_the_right_person(client, hospital, residents):
    facility, who = hospital[0], resident(residents, 40)
    # the registration desk registers the patient (ADT^A04, PID-3 = MZ<id>) through the hub first
    adt_message = adt(facility, f"C{uuid.uuid4().hex[:10]}", who).encode()
    r = signed_post(client, hospital, "/api/v1/exchange/hl7v2", adt_message, "text/plain")
    assert r.status_code == 200 and msa(r.text)[1] == "AA", r.text
    settle()
    card_no = f"MZ{who['id']:08d}"
    [(person_id, empi_id)] = sql(
        "SELECT p.id, p.empi_id FROM empi.source_identity si JOIN empi.link l ON l.source_id = si.id "
        "JOIN empi.person p ON p.id = l.person_id WHERE si.facility_code = :f AND si.card_no = :c",
        f=facility, c=card_no)

    raw = document(facility, who, outpatient_no=card_no)
    message_id = _send(client, hospital, raw)
    [doc] = sql("SELECT * FROM records.document WHERE exchange_message_id = :m", m=message_id)
    assert (doc.person_id, doc.empi_id, doc.patient_ref, doc.facility_code, doc.custodian_code, doc.status) == \
        (person_id, empi_id, card_no, facility, custodian_of(facility), "current")
    assert doc.sender == hospital[1] and doc.received_at == message_row(message_id)["received_at"]
    assert sql("SELECT raw FROM records.content WHERE sha256 = :h", h=doc.sha256) == [(raw,)]

    # an inpatient stay document of the same resident (another number of the same hospital) joins the same person
    stay = document(facility, who, type_code="C0034", inpatient_no=f"ZY{who['id']:08d}")
    [stay_doc] = sql("SELECT * FROM records.document WHERE exchange_message_id = :m", m=_send(client, hospital, stay))
    assert stay_doc.empi_id == empi_id and stay_doc.type_code == "C0034"
    assert sql("SELECT count(*) FROM platform.bus_delivery WHERE consumer = 'records.intake' AND state <> 'done'") \
        == [(0,)]


def test_a_document_the_registry_refuses_is_audited_and_not_retried(client, hospital, other_hospital, residents):
    who = resident(residents, 41)
    doc_id = str(uuid.uuid4())
    message_id = _send(client, hospital, document(other_hospital[0], who, document_id=doc_id))
    assert sql("SELECT count(*) FROM records.document WHERE document_id = :d", d=doc_id) == [(0,)]
    [(detail,)] = sql("SELECT detail FROM platform.audit_log WHERE action = 'records.document.rejected' AND target = :t",
                      t=f"{hospital[0]}/message:{message_id}")
    assert "is not the sending hospital" in detail["reason"] and detail["exchange_message_id"] == message_id
    assert sql("SELECT count(*) FROM platform.bus_delivery WHERE consumer = 'records.intake' AND state <> 'done'") \
        == [(0,)]
    # the hospital's own document right after it goes through
    ok = _send(client, hospital, document(hospital[0], who))
    assert sql("SELECT count(*) FROM records.document WHERE exchange_message_id = :m", m=ok) == [(1,)]
