"""The one multi-code QR: format version 1 (``EHC1:``), documented in docs/qr-format.md.

Pure functions, no database: a terminal verifies a code **offline** with nothing but the published
trust list (``TrustList``). What needs the platform (used nonces, revoked cards) is checked online
by ``healthcard.service.verify``.

Layout (CBOR, RFC 8949)::

    "EHC1:" + Base45( [kid, body, signature] )
    body      = bstr .cbor [card_token, issued_at, expires_at, nonce, kind, templates]
    templates = [[aid, data], ...]   # 1 health card (data: issuing region code); 11.. payment channels
    signature = Sign(key[kid], "EHC1:" ‖ kid ‖ body)

Why not COSE_Sign1 itself: its headers (alg, kid in a protected map, an unprotected map, a tag)
cost ~12 bytes, and a code with four payment templates must fit a QR of version 11 at level Q (at most
259 alphanumeric characters; such a code has 245). The signature still covers the prefix (so the version), the key id and the
body, and the algorithm is the one the trust list gives the key id (a code cannot choose it, which
rules out algorithm-confusion attacks). The code carries no name, ID number or account number:
the card token and the payment tokens are meaningless without the platform.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

import base45
import cbor2

from smartcare.platform.crypto import SigningKey, VerifyKey

PREFIX = "EHC1:"
KID_BYTES = 4
NONCE_BYTES = 8
TOKEN_BYTES = 12
#: Codes issued this far in the future (terminal clocks drift) are still accepted.
CLOCK_SKEW_SECONDS = 30


class Kind(IntEnum):
    DYNAMIC = 1  # generated at use, valid ~60 s, single use, may carry payment templates
    STATIC = 2   # printed; no payment templates; the counter asks for the card PIN


class App(IntEnum):
    """Application ids of the templates. New industries get new ids; verifiers keep unknown ones."""

    HEALTH_CARD = 1
    WECHAT_PAY = 11
    ALIPAY = 12
    UNIONPAY = 13
    ECNY = 14  # digital renminbi (数字人民币)


PAYMENT_APPS: dict[str, App] = {"wechat": App.WECHAT_PAY, "alipay": App.ALIPAY, "unionpay": App.UNIONPAY,
                                "ecny": App.ECNY}
CHANNEL_OF_APP = {aid: name for name, aid in PAYMENT_APPS.items()}


class CodeError(Exception):
    """A code that must be refused; ``code`` is the stable error code terminals act on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Template:
    aid: int
    data: int | bytes | str | None

    @property
    def channel(self) -> str | None:
        """The payment channel of a payment template (``None`` for the health card and unknown apps)."""
        return CHANNEL_OF_APP.get(self.aid)


@dataclass(frozen=True)
class Code:
    kid: bytes
    card_token: bytes
    issued_at: int
    expires_at: int
    nonce: bytes
    kind: Kind
    templates: tuple[Template, ...] = field(default_factory=tuple)

    @property
    def payments(self) -> dict[str, int]:
        """Payment channel → its one-time payment token."""
        return {t.channel: t.data for t in self.templates if t.channel}


def _signed_part(kid: bytes, body: bytes) -> bytes:
    return PREFIX.encode() + kid + body


def encode(code: Code, key: SigningKey) -> str:
    """The text a QR carries (every character in QR alphanumeric mode)."""
    if code.kind == Kind.STATIC and code.payments:
        raise ValueError("a static (printed) code carries no payment templates")
    body = cbor2.dumps([code.card_token, code.issued_at, code.expires_at, code.nonce, int(code.kind),
                        [[t.aid, t.data] for t in code.templates]])
    signature = key.sign(_signed_part(code.kid, body))
    return PREFIX + base45.b45encode(cbor2.dumps([code.kid, body, signature])).decode()


def _strict_loads(data: bytes):
    """CBOR with nothing after the item (``cbor2.loads`` ignores trailing bytes)."""
    stream = io.BytesIO(data)
    item = cbor2.CBORDecoder(stream).decode()
    if stream.tell() != len(data):
        raise ValueError(f"{len(data) - stream.tell()} bytes after the CBOR item")
    return item


def _malformed(why: str) -> CodeError:
    return CodeError("code_malformed", f"not a health card code: {why}")


def parse(text: str) -> tuple[bytes, bytes, bytes, Code]:
    """Split a code into (kid, signed body, signature, fields) without checking the signature."""
    text = text.strip()
    if not text.startswith(PREFIX):
        version = text.split(":", 1)[0][:8] if ":" in text[:8] else ""
        if version.startswith("EHC"):
            raise _malformed(f"format version {version!r} is not supported (this platform reads {PREFIX[:-1]})")
        raise _malformed(f"it does not start with {PREFIX!r}")
    try:
        outer = base45.b45decode(text[len(PREFIX):])
        envelope = _strict_loads(outer)
        if type(envelope) is not list or len(envelope) != 3:
            raise ValueError("not a list of key id, body and signature")
        kid, body, signature = envelope
        fields = _strict_loads(body)
        if type(fields) is not list or len(fields) != 6 or type(fields[4]) is not int:
            raise ValueError("the body is not a list of six fields")
        token, issued_at, expires_at, nonce, kind, templates = fields
        parsed = Code(kid=kid, card_token=token, issued_at=issued_at, expires_at=expires_at, nonce=nonce,
                      kind=Kind(kind), templates=tuple(Template(aid, data) for aid, data in templates))
        # one text per code: only the shortest (deterministic) CBOR encoding is accepted
        if cbor2.dumps(envelope) != outer or cbor2.dumps(fields) != body:
            raise ValueError("not in deterministic CBOR encoding")
    except (ValueError, TypeError, cbor2.CBORDecodeError) as exc:
        raise _malformed(f"{type(exc).__name__}: {exc}"[:200]) from None
    checks = ((isinstance(kid, bytes) and len(kid) == KID_BYTES, "key id"),
              (isinstance(body, bytes) and isinstance(signature, bytes), "signature"),
              (isinstance(token, bytes) and len(token) == TOKEN_BYTES, "card token"),
              (isinstance(nonce, bytes) and len(nonce) == NONCE_BYTES, "nonce"),
              (all(type(v) is int for v in (issued_at, expires_at)), "validity"),
              (all(type(t.aid) is int for t in parsed.templates), "templates"),
              (parsed.kind == Kind.DYNAMIC or not parsed.payments, "static code with payment templates"))
    for ok, what in checks:
        if not ok:
            raise _malformed(f"bad {what}")
    return kid, body, signature, parsed


class TrustList:
    """The issuer keys a terminal trusts, by key id: the published JSON key set
    (``/.well-known/jwks.json``), so that codes verify with no connection to the platform."""

    def __init__(self, keys: dict[bytes, VerifyKey]):
        self.keys = keys

    @classmethod
    def from_json(cls, document: dict | str | bytes) -> TrustList:
        data = json.loads(document) if isinstance(document, str | bytes) else document
        keys = {}
        for entry in data.get("keys", []):
            if entry.get("use", "sig") != "sig" or entry.get("status") == "withdrawn":
                continue
            try:
                keys[bytes.fromhex(entry["kid"])] = VerifyKey.from_jwk(entry)
            except (KeyError, ValueError):
                continue  # a key of a kind this verifier does not know: codes signed by it are unknown_key
        return cls(keys)

    @staticmethod
    def document(keys: Iterable[tuple[bytes, VerifyKey, str]], *, issuer: str) -> dict:
        """The published key set: (kid, key, status) → a JWKS with the issuer and when it was made."""
        return {"issuer": issuer, "format": PREFIX[:-1], "generated_at": int(time.time()),
                "keys": [{**key.jwk(), "kid": kid.hex(), "alg": "EdDSA" if key.alg == "Ed25519" else "SM2-SM3",
                          "use": "sig", "status": status} for kid, key, status in keys]}


def verify(text: str, trust: TrustList, *, now: float | None = None) -> Code:
    """Offline verification: format, known key, signature, validity period. Raises ``CodeError``."""
    kid, body, signature, code = parse(text)
    key = trust.keys.get(kid)
    if key is None:
        raise CodeError("code_unknown_key", f"signed by key {kid.hex()}, which is not in the trust list")
    if not key.verify(signature, _signed_part(kid, body)):
        raise CodeError("code_forged", "the signature does not match: the code was altered or not issued by us")
    now = time.time() if now is None else now
    if code.issued_at > now + CLOCK_SKEW_SECONDS:
        raise CodeError("code_not_yet_valid", f"issued {int(code.issued_at - now)} s in the future (check the clock)")
    if now > code.expires_at:
        raise CodeError("code_expired", f"expired {int(now - code.expires_at)} s ago; show a fresh code")
    return code
