"""Bus consumers of the master patient index: hospitals' patient events, from any exchange channel,
become source identities and are matched at once."""

from __future__ import annotations

from sqlalchemy.orm import Session

from smartcare.empi import matching
from smartcare.platform.bus import Message, consumer

# Hospitals trust levels for survivorship: a 三级 hospital's registration desk checks ID cards.
DEFAULT_TRUST = 1


@consumer("empi.intake", "exchange.*.patient.registered", "exchange.*.patient.updated", "exchange.*.patient.merged",
          backoff_seconds=5.0)
def intake(session: Session, message: Message) -> None:
    data, source = message.payload["data"], message.payload["source"]
    facility = source.get("facility_code") or source.get("sender")
    card_no = data.get("source_id")
    if not facility or not card_no:
        return  # nothing to identify the card by: the message stays in the exchange store for inspection
    record = {k: data.get(k) for k in ("name", "id_number", "sex", "birth_date", "phone", "address")}
    matching.register(session, facility_code=facility, card_no=str(card_no), record=record, trust=DEFAULT_TRUST,
                      actor="empi.intake")
