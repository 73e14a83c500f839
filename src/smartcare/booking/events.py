"""Bus consumers of booking: slots that hospitals publish or withdraw through the exchange hub
(HL7 v2 SIU with SCH-8 = ``SLOT``, mapped by ``exchange.canonical`` to ``slot.published`` /
``slot.withdrawn``) go into the pool exactly as if sent to ``PUT /api/v1/booking/hospital/slots``.
Only from an authenticated hospital: the signed HTTP endpoint, or MLLP with a client certificate (plain
MLLP trusts MSH-4, and a withdrawal cancels bookings).

A slot the pool refuses (longer than 30 minutes, unknown department without a name, capacity below
the places taken, a withdrawal of a slot never published, no identified hospital …) is a fact about
the message, not a failure of the consumer: retrying would refuse it again, so the delivery is done,
nothing is stored in the pool, a warning is logged (hospital, slot id, exchange message id and the
reason — no personal data) and an audit entry ``booking.slot.rejected`` keeps the reason for the
hospital's support desk. Only unexpected errors (database down …) raise, so the bus retries them
with backoff and dead-letters them in the end.

Idempotent: the bus drops a repeated event id, and publishing the same slot again is ``unchanged``.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError
from sqlalchemy.orm import Session

from smartcare.booking import service
from smartcare.booking.schemas import SlotIn
from smartcare.platform import audit
from smartcare.platform.bus import Message, consumer
from smartcare.platform.errors import Conflict, InvalidInput, NotFound
from smartcare.platform.masking import mask_text

log = logging.getLogger(__name__)

ACTOR = "booking.intake"


@consumer("booking.intake", "exchange.*.slot.published", "exchange.*.slot.withdrawn", backoff_seconds=5.0)
def intake(session: Session, message: Message) -> None:
    topic, data, source = message.payload["topic"], message.payload["data"], message.payload["source"]
    # Only the hub's identification of the hospital counts (its signed client, or a registered MSH-4 over
    # MLLP): a client id or an unregistered MSH-4 names no hospital whose slots these could be.
    facility = source.get("facility_code")
    source_id = str(data.get("source_id") or "")
    if not facility:
        problem = "the sender is not a registered hospital"
    elif str(source.get("sender") or "").startswith("mllp:"):
        # plain MLLP has no login: MSH-4 alone would let anyone withdraw a hospital's slots and cancel its bookings
        problem = "slots are taken only from an authenticated sender (signed HTTP, or MLLP with a client certificate)"
    else:
        problem = _apply(session, topic, data, facility, source_id)
    if problem:
        _reject(session, source, facility, source_id, problem)
    else:
        log.info("slot %s of %s: %s (exchange message %s)", source_id, facility, topic, source.get("message_id"))


def _apply(session: Session, topic: str, data: dict, facility: str, source_id: str) -> str | None:
    """Publish or withdraw; the reason the pool refused it, or None."""
    try:
        if topic == "slot.withdrawn":
            service.withdraw_slot(session, facility_code=facility, source_id=source_id, actor=ACTOR,
                                  reason=(data.get("reason") or "")[:200])
            return None
        # Only SlotIn's fields (a channel transform may add others); absent ones take SlotIn's defaults.
        slot = SlotIn.model_validate({k: v for k, v in data.items() if k in SlotIn.model_fields and v is not None})
        [change] = service.publish_slots(session, facility_code=facility, slots=[slot], actor=ACTOR)
    except service.Busy as exc:  # a moment's lock conflict, not a refusal: the bus sends it again after its backoff
        raise RuntimeError(exc.message) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"]
    except (InvalidInput, Conflict, NotFound) as exc:
        return exc.message
    return (change.error or "refused") if change.outcome == "error" else None


def _reject(session: Session, source: dict, facility: str | None, source_id: str, reason: str) -> None:
    reason = mask_text(reason)[:500]
    log.warning("slot %s of %s from exchange message %s refused: %s", source_id or "?", facility or "?",
                source.get("message_id"), reason)
    audit.record(session, actor=ACTOR, action="booking.slot.rejected", target=f"{facility or '?'}/{source_id or '?'}",
                 detail={"reason": reason, "exchange_message_id": source.get("message_id"),
                         "channel": source.get("channel"), "message_type": source.get("message_type")})
