"""Issuer keys: generation, rotation, withdrawal and the published trust list.

One key signs at a time (the active one). Rotation retires it: a retired key no longer signs, but
stays in the trust list so that codes it signed still verify (printed static codes live for years).
A withdrawn key (compromised, or nothing it signed is valid any more) leaves the trust list, and
every code it signed fails as ``code_unknown_key``. Private keys are stored sealed (AES-GCM under the
platform key), so a database dump alone cannot sign codes.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartcare.healthcard.code import KID_BYTES, TrustList
from smartcare.healthcard.models import IssuerKey
from smartcare.platform import audit
from smartcare.platform.crypto import SIGNING_ALGORITHMS, SigningKey, VerifyKey, seal, unseal
from smartcare.platform.errors import InvalidInput, NotFound

_PURPOSE = "healthcard-issuer-key"
PUBLISHED = ("active", "retired")
#: How long a process keeps the keys in memory; a rotation elsewhere is seen within this time.
CACHE_SECONDS = 30.0


def create(session: Session, *, alg: str, actor: str) -> IssuerKey:
    """A new active key; the previous active key (if any) is retired. Returns the new key."""
    if alg not in SIGNING_ALGORITHMS:
        raise InvalidInput(f"unknown algorithm {alg!r}", field="alg", hint=f"use one of {', '.join(SIGNING_ALGORITHMS)}")
    for old in session.scalars(select(IssuerKey).where(IssuerKey.state == "active").with_for_update()):
        old.state, old.retired_at = "retired", datetime.now(UTC)
    session.flush()
    signing = SigningKey.generate(alg)
    kid = os.urandom(KID_BYTES)
    key = IssuerKey(kid=kid, alg=alg, public_key=signing.verify_key.public, state="active",
                    private_sealed=seal(signing.private, purpose=_PURPOSE, aad=kid))
    session.add(key)
    session.flush()
    audit.record(session, actor=actor, action="healthcard.key.create", target=f"issuer_key:{kid.hex()}", detail={"alg": alg})
    ring.forget()
    return key


def ensure(session: Session, *, alg: str = "Ed25519") -> None:
    """At start: an active key exists (the first start makes one)."""
    if session.scalar(select(IssuerKey.id).where(IssuerKey.state == "active")) is None:
        create(session, alg=alg, actor="system")


def withdraw(session: Session, *, kid: str, actor: str, reason: str) -> IssuerKey:
    try:
        wanted = bytes.fromhex(kid)
    except ValueError:
        raise InvalidInput(f"key id {kid!r} is not hexadecimal", field="kid") from None
    key = session.scalar(select(IssuerKey).where(IssuerKey.kid == wanted))
    if key is None:
        raise NotFound(f"no issuer key {kid}", field="kid")
    if key.state == "active":
        raise InvalidInput("the active key cannot be withdrawn", field="kid", hint="rotate first, then withdraw the old key")
    key.state = "withdrawn"
    audit.record(session, actor=actor, action="healthcard.key.withdraw", target=f"issuer_key:{kid}", detail={"reason": reason})
    ring.forget()
    return key


def listing(session: Session) -> list[IssuerKey]:
    return list(session.scalars(select(IssuerKey).order_by(IssuerKey.id)))


def trust_list_document(session: Session, *, issuer: str) -> dict:
    """The published key set (``/.well-known/jwks.json``): every active and retired public key."""
    rows = session.scalars(select(IssuerKey).where(IssuerKey.state.in_(PUBLISHED)).order_by(IssuerKey.id))
    return TrustList.document(((k.kid, VerifyKey(k.alg, k.public_key), k.state) for k in rows), issuer=issuer)


class KeyRing:
    """The active signing key and the trust list, cached per process for ``CACHE_SECONDS``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._loaded_at = -1e9
        self._signing: tuple[bytes, SigningKey] | None = None
        self._trust = TrustList({})

    def forget(self) -> None:
        self._loaded_at = -1e9

    def _load(self, session: Session) -> None:
        with self._lock:
            if time.monotonic() - self._loaded_at < CACHE_SECONDS:
                return
            signing, trusted = None, {}
            for k in session.scalars(select(IssuerKey).where(IssuerKey.state.in_(PUBLISHED))):
                trusted[k.kid] = VerifyKey(k.alg, k.public_key)
                if k.state == "active":
                    signing = (k.kid, SigningKey(k.alg, unseal(k.private_sealed, purpose=_PURPOSE, aad=k.kid)))
            self._signing, self._trust, self._loaded_at = signing, TrustList(trusted), time.monotonic()

    def signing(self, session: Session) -> tuple[bytes, SigningKey]:
        self._load(session)
        if self._signing is None:
            raise NotFound("no active issuer key", hint="run `smartcare healthcard keys rotate`")
        return self._signing

    def trust(self, session: Session) -> TrustList:
        self._load(session)
        return self._trust


ring = KeyRing()
