"""Bus consumers of the records capability, and the event it publishes.

``records.intake`` files every CDA document the exchange hub received (``exchange.<channel>.document.received``):
it reads the raw bytes from the hub's message store (the event carries only the header's summary) and
registers them as if they had been sent to ``POST /api/v1/records/documents`` by the same hospital.

A document the registry refuses (a header it cannot file, a custodian that is not the sending hospital,
a message past the hub's retention) is a fact about the message, not a failure of the consumer: retrying
would refuse it again, so the delivery is done, nothing is filed, a warning is logged (exchange message
id, hospital and the reason, masked) and an audit entry ``records.document.rejected`` keeps the reason for
the hospital's support desk. Only unexpected errors raise, so the bus retries them and dead-letters them
in the end. Idempotent: a redelivery registers the same bytes again, which is a ``duplicate``.

Published (by ``service.register`` / ``service.replace``, in the registering transaction):
``records.document.registered`` with ``{id, document_id, custodian_code, facility_code, type_code,
replaces_id, status}`` for every new registry row.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from smartcare.exchange import service as exchange
from smartcare.platform import audit
from smartcare.platform.bus import Message, consumer
from smartcare.platform.errors import Forbidden, InvalidInput, NotFound
from smartcare.platform.masking import mask_text
from smartcare.records import service

log = logging.getLogger(__name__)

ACTOR = "records.intake"


@consumer("records.intake", "exchange.*.document.received", backoff_seconds=5.0)
def intake(session: Session, message: Message) -> None:
    source = message.payload["source"]
    message_id = source.get("message_id")
    facility = source.get("facility_code")
    try:
        with session.begin_nested():  # a refusal leaves nothing behind (the patient's card included)
            stored = exchange.get_message(session, message_id)
            done = service.register(session, raw=bytes(stored.raw), sender=stored.sender, facility_code=facility,
                                    exchange_message_id=message_id, received_at=stored.received_at, actor=ACTOR)
    except (InvalidInput, Forbidden, NotFound) as exc:
        _reject(session, source, exc.message)
        return
    log.info("exchange message %s: document %s %s (registry id %s)", message_id, done.document.document_id,
             done.outcome, done.document.id)


def _reject(session: Session, source: dict, reason: str) -> None:
    reason = mask_text(reason)[:500]
    facility = source.get("facility_code") or source.get("sender") or "?"
    log.warning("CDA document of %s in exchange message %s not registered: %s", facility, source.get("message_id"),
                reason)
    audit.record(session, actor=ACTOR, action="records.document.rejected",
                 target=f"{facility}/message:{source.get('message_id')}",
                 detail={"reason": reason, "exchange_message_id": source.get("message_id"),
                         "channel": source.get("channel"), "sender": source.get("sender")})
