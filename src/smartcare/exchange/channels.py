"""Channels as data: which messages a channel accepts, from whom, how they are filtered and
transformed, and where their canonical events go. Every change is a new version (who, when, diff),
so configuration has a history and any version can be restored.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.exchange.models import Channel, ChannelVersion
from smartcare.platform import audit
from smartcare.platform.errors import InvalidInput, NotFound

Kind = Literal["hl7v2", "cda", "fhir", "batch"]
Connector = Literal["http", "mllp", "batch"]


class RetryPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(5, ge=1, le=100)
    backoff_seconds: float = Field(30.0, gt=0, le=86400)
    max_backoff_seconds: float = Field(3600.0, gt=0, le=7 * 86400)


class Destination(BaseModel):
    """Where canonical events go. ``log``: the platform's event log table; ``webhook``: HTTP POST."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")
    kind: Literal["log", "webhook"]
    topics: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    url: str | None = Field(None, pattern=r"^https?://")
    timeout_seconds: float = Field(10.0, gt=0, le=120)

    @model_validator(mode="after")
    def _url_for_webhook(self) -> Destination:
        if self.kind == "webhook" and not self.url:
            raise ValueError("a webhook destination needs a url")
        return self

    def wants(self, topic: str) -> bool:
        return any(fnmatch.fnmatchcase(topic, t) for t in self.topics)


class Transform(BaseModel):
    """Applied to every canonical event of the channel: add fixed fields, drop fields (minimum necessary)."""

    model_config = ConfigDict(extra="forbid")
    add: dict[str, str] = Field(default_factory=dict)
    drop_fields: list[str] = Field(default_factory=list)

    def apply(self, data: dict) -> dict:
        out = {k: v for k, v in data.items() if k not in self.drop_fields}
        out.update(self.add)
        return out


class ChannelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    source: Kind
    connectors: list[Connector] = Field(min_length=1)
    #: When several channels take a message, the lowest priority wins (the defaults are catch-alls at 1000).
    priority: int = Field(100, ge=0, le=10000)
    #: Facility codes allowed to send (``*`` wildcards).
    senders: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    #: Message types accepted, e.g. ``ADT^A0*``; others are refused (AR).
    accept: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    #: Message types stored and acknowledged but not routed (state ``filtered``).
    filter: list[str] = Field(default_factory=list)
    transform: Transform = Field(default_factory=Transform)
    destinations: list[Destination] = Field(default_factory=list)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    retention_days: int = Field(30, ge=1, le=3650)

    @model_validator(mode="after")
    def _unique_destinations(self) -> ChannelConfig:
        names = [d.name for d in self.destinations]
        if len(names) != len(set(names)):
            raise ValueError("destination names must be unique within a channel")
        return self

    def takes(self, *, kind: str, connector: str, facility: str | None, message_type: str | None) -> bool:
        return (self.source == kind and connector in self.connectors
                and any(fnmatch.fnmatchcase(facility or "", s) for s in self.senders)
                and any(fnmatch.fnmatchcase(message_type or "", a) for a in self.accept))

    def filters_out(self, message_type: str | None) -> bool:
        return any(fnmatch.fnmatchcase(message_type or "", f) for f in self.filter)


DEFAULT_CHANNELS = [
    ChannelConfig(id="hl7v2", name="HL7 v2 from hospitals (ADT, ORU, SIU …)", source="hl7v2", connectors=["http", "mllp"],
                  priority=1000,
                  destinations=[Destination(name="event-log", kind="log")]),
    ChannelConfig(id="cda", name="WS/T 500 CDA documents", source="cda", connectors=["http"], priority=1000,
                  destinations=[Destination(name="event-log", kind="log")]),
    ChannelConfig(id="fhir", name="FHIR R4 resources and bundles", source="fhir", connectors=["http"], priority=1000,
                  destinations=[Destination(name="event-log", kind="log")]),
    ChannelConfig(id="batch", name="Batch files of patient records (CSV / NDJSON)", source="batch", connectors=["batch"],
                  priority=1000,
                  destinations=[Destination(name="event-log", kind="log")]),
]


def to_yaml(configs: list[ChannelConfig]) -> str:
    docs = [c.model_dump(mode="json", exclude_defaults=False) for c in configs]
    return yaml.safe_dump_all(docs, allow_unicode=True, sort_keys=False)


def from_yaml(text: str) -> list[ChannelConfig]:
    """Parse one or more YAML documents; errors name the document and the field."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidInput(f"channel YAML is malformed: {exc}") from None
    configs = []
    for i, doc in enumerate(docs, 1):
        try:
            configs.append(ChannelConfig.model_validate(doc))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInput(f"channel document {i}: {where}: {first['msg']}", field=where) from None
    return configs


def _diff(old: dict | None, new: dict, channel_id: str, old_version: int) -> str:
    before = to_yaml([ChannelConfig.model_validate(old)]).splitlines(keepends=True) if old else []
    after = to_yaml([ChannelConfig.model_validate(new)]).splitlines(keepends=True)
    return "".join(difflib.unified_diff(before, after, f"{channel_id}@v{old_version}", f"{channel_id}@v{old_version + 1}"))


def save(session: Session, config: ChannelConfig, *, actor: str, comment: str = "") -> Channel:
    """Create or change a channel; an unchanged config is not a new version."""
    data = config.model_dump(mode="json")
    channel = session.get(Channel, config.id, with_for_update=True)
    if channel is not None and channel.config == data:
        return channel
    old, version = (channel.config, channel.version) if channel else (None, 0)
    if channel is None:
        channel = Channel(id=config.id, config=data, enabled=True, version=1, updated_by=actor)
        session.add(channel)
    else:
        channel.config, channel.version, channel.updated_by = data, version + 1, actor
    session.flush()
    session.add(ChannelVersion(channel_id=config.id, version=channel.version, config=data, changed_by=actor,
                               comment=comment, diff=_diff(old, data, config.id, version)))
    from smartcare.exchange import destinations  # destinations build on channels; import here to avoid a cycle

    destinations.sync(session, config)
    audit.record(session, actor=actor, action="channel.save", target=f"channel:{config.id}",
                 detail={"version": channel.version, "comment": comment})
    return channel


def get(session: Session, channel_id: str) -> Channel:
    channel = session.get(Channel, channel_id)
    if channel is None:
        raise NotFound(f"no channel {channel_id!r}", field="channel_id")
    return channel


def list_all(session: Session) -> list[Channel]:
    return list(session.scalars(select(Channel).order_by(Channel.id)))


def versions(session: Session, channel_id: str) -> list[ChannelVersion]:
    get(session, channel_id)
    return list(session.scalars(select(ChannelVersion).where(ChannelVersion.channel_id == channel_id)
                                .order_by(ChannelVersion.version.desc())))


def rollback(session: Session, channel_id: str, *, version: int, actor: str) -> Channel:
    """Restore an earlier version's config as a new version (history is never rewritten)."""
    old = session.get(ChannelVersion, (channel_id, version))
    if old is None:
        raise NotFound(f"channel {channel_id!r} has no version {version}", field="version")
    return save(session, ChannelConfig.model_validate(old.config), actor=actor, comment=f"rollback to v{version}")


def set_enabled(session: Session, channel_id: str, enabled: bool, *, actor: str) -> Channel:
    """Stop: the channel refuses new messages (senders retry later) and its routing pauses. Start resumes."""
    channel = get(session, channel_id)
    channel.enabled = enabled
    audit.record(session, actor=actor, action="channel.start" if enabled else "channel.stop", target=f"channel:{channel_id}")
    return channel


def delete(session: Session, channel_id: str, *, actor: str) -> None:
    """Retire a channel: it takes no more messages and its destinations unsubscribe. Stored messages stay;
    the configuration of its last version is kept in the audit log so it can be imported again."""
    from smartcare.exchange import destinations

    channel = get(session, channel_id)
    config = ChannelConfig.model_validate(channel.config)
    destinations.sync(session, config.model_copy(update={"destinations": []}))
    audit.record(session, actor=actor, action="channel.delete", target=f"channel:{channel_id}",
                 detail={"version": channel.version, "yaml": to_yaml([config])})
    session.delete(channel)


def ensure_defaults(session: Session) -> None:
    for config in DEFAULT_CHANNELS:
        if session.get(Channel, config.id) is None:
            save(session, config, actor="system", comment="default channel")


def configs(session: Session) -> list[tuple[ChannelConfig, bool]]:
    """Every channel's config and whether it runs, in the order a message tries them (priority, id)."""
    loaded = [(ChannelConfig.model_validate(c.config), c.enabled) for c in list_all(session)]
    return sorted(loaded, key=lambda pair: (pair[0].priority, pair[0].id))
