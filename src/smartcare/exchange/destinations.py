"""Destinations: each is a bus consumer of its own, so it has its own queue position, retries with
exponential backoff, and dead letters. A failing destination never holds up another one or the
messages behind it.

The router publishes each canonical event of channel C as topic ``exchange.C.<topic>``; destination D
of channel C is consumer ``exchange.C.D`` subscribed to ``exchange.C.<pattern>`` for its topics
(``-`` in channel and destination names becomes ``_``: bus names are dotted words).
"""

from __future__ import annotations

import json

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session

from smartcare.exchange.channels import ChannelConfig, Destination, list_all
from smartcare.platform import bus
from smartcare.platform.bus import Consumer, Message


def _word(name: str) -> str:
    return name.replace("-", "_")


def consumer_name(channel_id: str, destination: str) -> str:
    return f"exchange.{_word(channel_id)}.{_word(destination)}"


def consumer_prefix(channel_id: str | None = None) -> str:
    return f"exchange.{_word(channel_id)}." if channel_id else "exchange."


def topic(channel_id: str, canonical_topic: str) -> str:
    return f"exchange.{_word(channel_id)}.{canonical_topic}"


def _mark_delivered(session: Session, source: dict) -> None:
    """Count one more finished delivery of the message's current run (a late delivery of an earlier run,
    after a re-run, does not count); the message is ``delivered`` when all of them are."""
    session.execute(text(
        "UPDATE exchange.message SET delivered = delivered + 1, "
        "state = CASE WHEN delivered + 1 >= expected_deliveries THEN 'delivered' ELSE state END "
        "WHERE received_at = CAST(:at AS timestamptz) AND id = :id AND state = 'routed' AND reruns = :run"),
        {"at": source["received_at"], "id": source["message_id"], "run": source.get("run", 0)})


def _handler(channel_id: str, destination: Destination):
    name = consumer_name(channel_id, destination.name)

    def deliver(session: Session, message: Message) -> None:
        event = message.payload
        if destination.kind == "log":
            session.execute(text(
                "INSERT INTO exchange.event_log (destination, topic, event_id, source_message_id, data) "
                "VALUES (:d, :t, :e, :s, CAST(:data AS jsonb))"),
                {"d": name, "t": event["topic"], "e": message.id, "s": event["source"]["message_id"],
                 "data": json.dumps(event["data"], ensure_ascii=False)})
        else:  # webhook: the receiver dedupes on the event id (a crash after the POST means it is sent again)
            response = httpx.post(destination.url, json=event, timeout=destination.timeout_seconds,
                                  headers={"X-SmartCare-Event-Id": str(message.id), "X-SmartCare-Topic": event["topic"]})
            if response.status_code >= 300:
                raise RuntimeError(f"webhook {destination.url} answered HTTP {response.status_code}")
        _mark_delivered(session, event["source"])

    return deliver


def consumers_for(config: ChannelConfig) -> dict[str, Consumer]:
    return {
        consumer_name(config.id, d.name): Consumer(
            name=consumer_name(config.id, d.name),
            topics=tuple(topic(config.id, t) for t in d.topics),
            handler=_handler(config.id, d),
            max_attempts=config.retry.max_attempts,
            backoff_seconds=config.retry.backoff_seconds,
            max_backoff_seconds=config.retry.max_backoff_seconds,
        )
        for d in config.destinations
    }


def all_consumers(session: Session) -> dict[str, Consumer]:
    found: dict[str, Consumer] = {}
    for channel in list_all(session):
        found.update(consumers_for(ChannelConfig.model_validate(channel.config)))
    return found


def sync(session: Session, config: ChannelConfig) -> None:
    """Subscriptions follow the channel: new destinations subscribe, removed ones stop receiving."""
    current = consumers_for(config)
    bus.unsubscribe_others(session, consumer_prefix(config.id), list(current))
    bus.sync_subscriptions(current.values(), session=session)
