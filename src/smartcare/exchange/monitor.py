"""Monitoring of the hub per hospital and channel: throughput, errors, latency, queue depth,
last message time, and alerts for hospitals gone silent or sending too many bad messages.

Every query is bounded by ``received_at`` so PostgreSQL reads only the newest day partitions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.exchange import destinations
from smartcare.platform import bus
from smartcare.registry import service as registry

DEFAULT_SILENT_MINUTES = 60
DEFAULT_MAX_ERROR_RATE = 0.05


def throughput(session: Session, *, minutes: int = 15, now: datetime | None = None) -> dict:
    """Messages per minute over the last ``minutes`` minutes, per channel, plus errors per minute."""
    now = now or datetime.now(UTC)
    start = (now - timedelta(minutes=minutes - 1)).replace(second=0, microsecond=0)
    rows = session.execute(text(
        "SELECT date_trunc('minute', received_at) AS minute, channel_id, count(*) AS n, "
        "count(*) FILTER (WHERE state = 'failed') AS failed "
        "FROM exchange.message WHERE received_at >= :start GROUP BY 1, 2"), {"start": start}).all()
    minutes_axis = [start + timedelta(minutes=i) for i in range(minutes)]
    channels = sorted({r.channel_id for r in rows})
    series = {c: [0] * minutes for c in channels}
    errors = [0] * minutes
    for r in rows:
        i = int((r.minute - start).total_seconds() // 60)
        if 0 <= i < minutes:
            series[r.channel_id][i] += r.n
            errors[i] += r.failed
    return {"minutes": [m.isoformat() for m in minutes_axis], "series": series, "errors": errors}


def per_facility(session: Session, *, window_minutes: int = 60, now: datetime | None = None) -> list[dict]:
    now = now or datetime.now(UTC)
    rows = session.execute(text(
        "SELECT m.facility_code, count(*) AS messages, "
        "count(*) FILTER (WHERE m.state = 'failed') AS failed, max(m.received_at) AS last_at, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM m.processed_at - m.received_at)) "
        "   FILTER (WHERE m.processed_at IS NOT NULL AND m.state <> 'failed') AS route_p50, "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM m.processed_at - m.received_at)) "
        "   FILTER (WHERE m.processed_at IS NOT NULL AND m.state <> 'failed') AS route_p95, "
        "count(*) FILTER (WHERE m.state = 'accepted') AS waiting "
        "FROM exchange.message m WHERE m.received_at >= :start GROUP BY 1 ORDER BY messages DESC"),
        {"start": now - timedelta(minutes=window_minutes)}).mappings().all()
    names = registry.facility_names(session, (r["facility_code"] for r in rows))
    return [{**r, "facility_name": names.get(r["facility_code"]), "messages_per_minute": round(r["messages"] / window_minutes, 2),
             "error_rate": round(r["failed"] / r["messages"], 4) if r["messages"] else 0.0} for r in rows]


def queue_depth(session: Session) -> dict:
    waiting = session.scalar(text("SELECT count(*) FROM exchange.message WHERE state = 'accepted'")) or 0
    return {"to_route": waiting, "destinations": bus.backlog(session, destinations.consumer_prefix())}


def alerts(session: Session, *, now: datetime | None = None, lookback_days: int = 7) -> list[dict]:
    """Hospitals silent longer than their threshold, or whose error rate in the last hour passes their limit.
    Hospitals without a policy row get the defaults; only hospitals that sent something in the lookback count."""
    now = now or datetime.now(UTC)
    rows = session.execute(text(
        "WITH recent AS (SELECT facility_code, max(received_at) AS last_at, "
        "  count(*) FILTER (WHERE received_at >= :hour) AS hour_n, "
        "  count(*) FILTER (WHERE received_at >= :hour AND state = 'failed') AS hour_failed "
        "  FROM exchange.message WHERE received_at >= :since AND facility_code IS NOT NULL GROUP BY facility_code) "
        "SELECT r.*, coalesce(p.silent_minutes, :silent) AS silent_minutes, "
        "coalesce(p.max_error_rate, :rate) AS max_error_rate FROM recent r "
        "LEFT JOIN exchange.sender_policy p USING (facility_code)"),
        {"hour": now - timedelta(hours=1), "since": now - timedelta(days=lookback_days),
         "silent": DEFAULT_SILENT_MINUTES, "rate": DEFAULT_MAX_ERROR_RATE}).mappings().all()
    names = registry.facility_names(session, (r["facility_code"] for r in rows))
    found = []
    for row in rows:
        r = {**row, "facility_name": names.get(row["facility_code"])}
        silent_for = (now - r["last_at"]).total_seconds() / 60
        if silent_for > r["silent_minutes"]:
            found.append({"kind": "silent", "facility_code": r["facility_code"], "facility_name": r["facility_name"],
                          "message": f"已 {silent_for:.0f} 分钟没有消息（阈值 {r['silent_minutes']} 分钟）"})
        rate = r["hour_failed"] / r["hour_n"] if r["hour_n"] else 0.0
        if r["hour_n"] and rate > r["max_error_rate"]:
            found.append({"kind": "error_rate", "facility_code": r["facility_code"], "facility_name": r["facility_name"],
                          "message": f"近一小时 {r['hour_n']} 条消息中 {rate:.0%} 失败（上限 {r['max_error_rate']:.0%}）"})
    return found


def set_policy(session: Session, facility_code: str, *, silent_minutes: int, max_error_rate: float) -> None:
    session.execute(text(
        "INSERT INTO exchange.sender_policy (facility_code, silent_minutes, max_error_rate) VALUES (:f, :s, :r) "
        "ON CONFLICT (facility_code) DO UPDATE SET silent_minutes = :s, max_error_rate = :r"),
        {"f": facility_code, "s": silent_minutes, "r": max_error_rate})


def snapshot(session: Session) -> dict:
    """Everything the monitoring page draws, in one JSON document."""
    return {"at": datetime.now(UTC).isoformat(), "throughput": throughput(session), "facilities": per_facility(session)[:20],
            "queue": queue_depth(session), "alerts": alerts(session)}
