"""What every connector does with a message: look inside it, choose its channel, store it.

Connectors (HTTP, MLLP, batch) differ only in framing and in how the sender is identified; the
decision whether a message is accepted, filtered, failed or refused is made here once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
from dataclasses import dataclass, field

from smartcare.exchange import channels
from smartcare.exchange.channels import ChannelConfig
from smartcare.exchange.ratelimit import RateLimiter
from smartcare.exchange.store import GroupCommitter, NewMessage, Stored
from smartcare.platform import metrics
from smartcare.platform.auth import ClientKeyCache
from smartcare.platform.db import session_factory
from smartcare.platform.refresh import Refreshed
from smartcare.platform.settings import get_settings
from smartcare.standards import cda, fhir, hl7v2, mllp


@dataclass(slots=True)
class Inspected:
    """What the hub learnt from the payload before storing it."""

    message_type: str | None = None
    control_id: str | None = None
    facility_code: str | None = None
    error: str | None = None
    #: an HL7 v2 message's header, what its ACK is built from (None when even MSH could not be read)
    header: hl7v2.Header | None = None
    hl7_error: hl7v2.Hl7Error | None = None


def inspect(kind: str, raw: bytes) -> Inspected:
    """Parse just enough to route, dedupe and acknowledge; a problem becomes ``error``, never an exception."""
    if kind == "hl7v2":
        head = hl7v2.standard_header(raw)  # nearly every message: the whole of it need not be decoded
        if head is not None:
            return Inspected(f"{head.message_type}^{head.trigger}", head.control_id,
                             _first_component(head.sending_facility), None, head)  # by position: the hot path
        text = mllp.decode_text(raw)
        try:
            msg = hl7v2.parse_and_check(text)
        except hl7v2.Hl7Error as exc:
            return Inspected(error=str(exc), hl7_error=exc, facility_code=_sender_of_broken(text))
        return Inspected(message_type=f"{msg.message_type}^{msg.trigger_event}", control_id=msg.control_id,
                         facility_code=_first_component(msg.sending_facility), header=hl7v2.header_of(msg))
    if kind == "cda":
        try:
            header = cda.parse_header(raw)
        except (cda.CdaError, ValueError) as exc:
            return Inspected(error=str(exc))
        doc = header.document_id
        return Inspected(message_type=header.type_code, control_id=f"{doc.root}:{doc.extension}" if doc.extension else doc.root,
                         facility_code=header.custodian.code)
    if kind == "fhir":
        try:
            events = fhir.map_payload(raw)
            body = json.loads(raw)
        except (fhir.FhirError, ValueError) as exc:
            return Inspected(error=str(exc))
        version = (body.get("meta") or {}).get("versionId")
        digest = hashlib.sha256(raw).hexdigest()[:16]
        # Without a version, a corrected resource must not look like a repeat: the content is part of the key.
        control = body.get("id") and f"{body.get('resourceType')}/{body['id']}/" + (f"_history/{version}" if version else digest)
        return Inspected(message_type=body.get("resourceType"), control_id=control or f"sha256:{digest}",
                         error=None if events else "no resource to map")
    raise ValueError(f"cannot inspect {kind!r} messages here (batch rows are inspected by exchange.batch)")


def _sender_of_broken(text: str) -> str | None:
    """MSH-4 of a message that failed its checks, when the header is still readable (for monitoring)."""
    try:
        return _first_component(hl7v2.parse(text).sending_facility)
    except (hl7v2.Hl7Error, ValueError, IndexError):
        return None


def _first_component(value: str | None) -> str | None:
    return value.split("^", 1)[0].strip() or None if value else None


@dataclass(slots=True)
class Receipt:
    """The hub's answer to one message; connectors turn it into an ACK or an HTTP response."""

    status: str  # accepted | duplicate | filtered | failed | refused | replay
    channel_id: str | None = None
    message_id: int | None = None
    reason: str | None = None
    inspected: Inspected = field(default_factory=Inspected)

    @property
    def ok(self) -> bool:
        return self.status in ("accepted", "duplicate", "filtered")


class Hub:
    """One per process: the channel cache and the group committer that every connector shares."""

    #: channels are read on every message: kept this long in memory
    CHANNELS_TTL = 2.0

    def __init__(self, committer: GroupCommitter | None = None):
        settings = get_settings()
        self.committer = committer or GroupCommitter()
        self.channels = Refreshed(self._load_channels, self.CHANNELS_TTL)
        self.client_keys = ClientKeyCache()
        self.limiter = RateLimiter(settings.rate_per_second, settings.rate_burst)
        self._decided_for: list | None = None
        self._decisions: dict[tuple, tuple[ChannelConfig, bool, bool] | str] = {}

    async def close(self) -> None:
        await self.committer.close()

    async def channel_configs(self) -> list[tuple[ChannelConfig, bool]]:
        return await self.channels.get()

    @staticmethod
    def _load_channels() -> list[tuple[ChannelConfig, bool]]:
        with session_factory()() as session:
            return channels.configs(session)

    async def receive(self, *, connector: str, kind: str, raw: bytes, sender: str, facility_code: str | None,
                      content_type: str | None = None, inspected: Inspected | None = None,
                      nonce: tuple[str, str] | None = None) -> Receipt:
        """Decide and store. ``nonce`` (of a signed request) is recorded with the message; a reused one
        gives status ``replay`` and stores nothing."""
        seen = inspected or inspect(kind, raw)
        facility = facility_code
        configs = self.channels.peek()
        if configs is None:
            configs = await self.channels.get()
        if configs is not self._decided_for:  # channels reloaded: forget earlier decisions
            self._decided_for, self._decisions = configs, {}
        failed = seen.error is not None
        # the sender only names an unknown facility in a refusal's reason
        key = (kind, connector, facility, sender if facility is None else None, seen.message_type, failed)
        decision = self._decisions.get(key)
        if decision is None:  # the same sender sends the same few types all day: decide once per reload
            decision = self._decide(configs, kind, connector, facility, sender, seen.message_type, failed)
            if len(self._decisions) < 100_000:
                self._decisions[key] = decision
        if isinstance(decision, str):
            return self._count(Receipt("refused", reason=decision, inspected=seen), kind)
        channel, enabled, filtered = decision
        if failed:
            stored = await self._store(channel, seen, "failed", connector, kind, raw, sender, facility, content_type, nonce)
            status = "replay" if stored.state == "replay" else "failed"
            return self._count(Receipt(status, channel.id, stored.message_id, seen.error, seen), kind)
        if not enabled:
            return self._count(Receipt("refused", channel.id, reason=f"channel {channel.id} is stopped; send again later",
                                       inspected=seen), kind)
        state = "filtered" if filtered else "accepted"
        stored = await self._store(channel, seen, state, connector, kind, raw, sender, facility, content_type, nonce)
        status = "replay" if stored.state == "replay" else "duplicate" if stored.duplicate else state
        return self._count(Receipt(status, channel.id, stored.message_id, inspected=seen), kind)

    @staticmethod
    def _decide(configs: list[tuple[ChannelConfig, bool]], kind: str, connector: str, facility: str | None, sender: str,
                message_type: str | None, failed: bool) -> tuple[ChannelConfig, bool, bool] | str:
        """The channel that takes such messages, whether it runs and whether its filter drops them — or why
        no channel takes them. A message that failed its checks is kept, as failed, by the first channel of
        its kind and connector."""
        candidates = [(c, on) for c, on in configs if c.source == kind and connector in c.connectors]
        if not candidates:
            return f"no channel takes {kind} over {connector}"
        if failed:
            return (*candidates[0], False)
        chosen = next(((c, on) for c, on in candidates
                       if c.takes(kind=kind, connector=connector, facility=facility, message_type=message_type)), None)
        if chosen is not None:
            return (*chosen, chosen[0].filters_out(message_type))
        sender_ok = any(fnmatch.fnmatchcase(facility or "", s) for c, _ in candidates for s in c.senders)
        return (f"message type {message_type} is not accepted by any {kind} channel" if sender_ok
                else f"sender {facility or sender} may not send {kind} messages")

    def _store(self, channel: ChannelConfig, seen: Inspected, state: str, connector: str, kind: str, raw: bytes,
               sender: str, facility: str | None, content_type: str | None,
               nonce: tuple[str, str] | None) -> asyncio.Future[Stored]:
        # by position: made for every message, and a dozen keyword arguments cost about 2.5 times as much
        return self.committer.submit(NewMessage(channel.id, sender, facility, connector, kind, seen.message_type,
                                                seen.control_id, state, raw, content_type, seen.error, nonce))

    @staticmethod
    def _count(receipt: Receipt, kind: str) -> Receipt:
        metrics.EXCHANGE_RECEIVED.inc(kind, receipt.status)
        return receipt

