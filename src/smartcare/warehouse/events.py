"""Bus consumers of the warehouse: each lands what an event names (read through the owning capability's
service, so a redelivery or a late event lands the same current state) and applies it to the star
schema in the same transaction — a visit, document, settlement or booking is in the facts within seconds.

| topic | lands |
|---|---|
| ``exchange.*.encounter.recorded`` | the visit (admission, discharge with surgeries, cancellation) |
| ``records.document.registered`` | the document, its diagnoses and lab results, and the one it replaced |
| ``quality.document.checked`` | the document's QC score |
| ``payment.settlement.changed`` | the settlement's payers, net of refunds, and its bill's charges |
| ``booking.appointment.*`` | the appointment |

Hub messages and health-card uses are pulled instead (``service.pull``, every worker round): an event
per message or card scan would double the write cost of the platform's two hottest paths.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from smartcare.platform.bus import Message, consumer
from smartcare.platform.clock import CHINA_TZ
from smartcare.platform.errors import NotFound
from smartcare.warehouse import landing, service

log = logging.getLogger(__name__)

#: An encounter whose patient the EMPI has not linked yet is retried this many times (the patient's own
#: event of the same message is usually being matched at that moment), then landed without a person.
PERSON_RETRIES = 3


#: HL7 v3 ActCode classes as the hub writes them (v2 PV1-2 mapped, FHIR as sent) → the warehouse's three;
#: pre-admissions and anything else are not visits.
_CLASSES = {"AMB": "AMB", "VR": "AMB", "HH": "AMB", "FLD": "AMB", "EMER": "EMER", "IMP": "IMP", "ACUTE": "IMP",
            "NONAC": "IMP", "SS": "IMP", "OBSENC": "EMER"}
#: FHIR Encounter.status (and the hub's own) → the warehouse's three.
_STATUSES = {"finished": "finished", "cancelled": "cancelled", "entered-in-error": "cancelled"}


class PersonNotYetLinked(RuntimeError):
    pass


def _time(value: str | None) -> datetime | None:
    """An HL7 time as the hub wrote it (ISO, without an offset: the hospital's local time, China's)."""
    if not value:
        return None
    at = datetime.fromisoformat(value)
    return at if at.tzinfo else at.replace(tzinfo=CHINA_TZ)


@consumer("warehouse.encounters", "exchange.*.encounter.recorded", backoff_seconds=2.0)
def encounters(session: Session, message: Message) -> None:
    from smartcare.empi import service as empi

    data, source = message.payload["data"], message.payload["source"]
    service.lock(session)  # before anything is read or landed, as every warehouse writer
    facility = source.get("facility_code") or source.get("sender")
    empi_id = None
    if data.get("patient_ref") and facility:
        try:
            empi_id = empi.current_person(
                session, empi.person_by_card(session, facility_code=facility, card_no=str(data["patient_ref"])).empi_id
            ).empi_id
        except NotFound:
            if message.attempt < PERSON_RETRIES:
                raise PersonNotYetLinked(f"visit card of exchange message {source.get('message_id')} not linked yet")
    if not data.get("source_id"):
        log.warning("exchange message %s: a visit without a visit number (PV1-19) is not counted",
                    source.get("message_id"))
        return
    visit_class = _CLASSES.get(str(data["class"]).upper()) if data.get("class") else None
    if data.get("class") and visit_class is None:
        log.info("exchange message %s: a %s encounter is not a visit; not counted", source.get("message_id"),
                 data.get("class"))
        return
    row = {"facility_code": facility[:32], "encounter_id": str(data["source_id"])[:64], "empi_id": empi_id,
           "class": visit_class, "department_code": (data.get("department") or "")[:32] or None,
           "practitioner_code": (data.get("attending") or "")[:32] or None,
           "start_at": _time(data.get("start")), "end_at": _time(data.get("end")),
           "recorded_at": _time(data.get("recorded")) or _time(source.get("received_at")) or datetime.now(CHINA_TZ),
           "status": _STATUSES.get(str(data.get("status") or ""), "in-progress"),
           "surgeries": int(data.get("surgeries") or 0)}
    service.apply(session, landing.land_encounters(session, [row]))


@consumer("warehouse.documents", "records.document.registered", "quality.document.checked", backoff_seconds=2.0)
def documents(session: Session, message: Message) -> None:
    p = message.payload
    ids = [int(p.get("id") or p["record_id"])]  # the documents it replaced are landed with it
    service.apply(session, service.documents(session, ids))


@consumer("warehouse.settlements", "payment.settlement.changed", backoff_seconds=2.0)
def settlements(session: Session, message: Message) -> None:
    service.apply(session, service.settlements(session, [message.payload["settlement_no"]]))


@consumer("warehouse.bookings", "booking.appointment.*", backoff_seconds=2.0)
def bookings(session: Session, message: Message) -> None:
    service.apply(session, service.bookings(session, [message.payload["appointment_no"]]))
