"""Monitoring figures and alerts, computed from the message store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from smartcare.exchange import monitor
from smartcare.platform.db import session_scope


def _insert(s, facility: str, at: datetime, state: str, n: int) -> None:
    s.execute(text(
        "INSERT INTO exchange.message (received_at, channel_id, sender, facility_code, connector, kind, message_type, "
        "control_id, state, raw, size, processed_at) SELECT CAST(:at AS timestamptz), 'hl7v2', CAST(:f AS varchar), "
        "CAST(:f AS varchar), 'mllp', 'hl7v2', 'ADT^A04', CAST(:f AS varchar) || '-' || CAST(:state AS varchar) || g, "
        "CAST(:state AS varchar), '\\x00', 1, CAST(:at AS timestamptz) + interval '20 milliseconds' "
        "FROM generate_series(1, :n) g"),
        {"at": at, "f": facility, "state": state, "n": n})


def test_silent_hospital_and_error_rate_alerts(database_url):
    now = datetime.now(UTC)
    quiet, noisy = f"Q{uuid.uuid4().hex[:8]}", f"N{uuid.uuid4().hex[:8]}"
    with session_scope() as s:
        _insert(s, quiet, now - timedelta(hours=3), "delivered", 5)
        _insert(s, noisy, now - timedelta(minutes=5), "delivered", 6)
        _insert(s, noisy, now - timedelta(minutes=4), "failed", 4)
        monitor.set_policy(s, quiet, silent_minutes=60, max_error_rate=0.05)
        monitor.set_policy(s, noisy, silent_minutes=60, max_error_rate=0.2)
    with session_scope() as s:
        found = {(a["facility_code"], a["kind"]) for a in monitor.alerts(s)}
        facilities = {f["facility_code"]: f for f in monitor.per_facility(s)}
        flow = monitor.throughput(s)
    assert (quiet, "silent") in found and (quiet, "error_rate") not in found
    assert (noisy, "error_rate") in found and (noisy, "silent") not in found
    assert facilities[noisy]["messages"] == 10 and facilities[noisy]["error_rate"] == 0.4
    assert abs(facilities[noisy]["route_p50"] - 0.02) < 0.005
    assert sum(flow["errors"]) >= 4 and sum(flow["series"]["hl7v2"]) >= 10
