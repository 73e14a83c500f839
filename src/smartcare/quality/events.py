"""Bus consumer of quality control: every document the registry takes is checked as it arrives.

Idempotent: checking a document again replaces its result, and the bus drops a repeated event id.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from smartcare.platform.bus import Message, consumer
from smartcare.quality import service

log = logging.getLogger(__name__)


@consumer("quality.check", "records.document.registered", backoff_seconds=5.0)
def check(session: Session, message: Message) -> None:
    record_id = int(message.payload["id"])
    report = service.check_record(session, record_id=record_id)
    log.info("document %s (%s) checked: score %s, %d errors, %d warnings", record_id, report.type_code,
             report.score, report.errors, report.warnings)
