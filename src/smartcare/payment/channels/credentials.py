"""Key material shared by a channel adapter and its sandbox.

In the sandbox set-up both sides read one file, ``<directory>/<channel>.json``, created on first use, so
that a sandbox process and the platform started at the same moment agree on the keys. In production the
platform would hold only ``merchant_id``, ``merchant_key``, ``merchant_serial``, ``channel_public``,
``channel_serial`` and ``secret`` (WeChat's APIv3 key); ``channel_key`` never leaves the channel, and the
channel knows the merchant only by ``merchant_public``.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CHANNELS = ("wechat", "alipay", "unionpay")


@dataclass(frozen=True)
class Credentials:
    channel: str
    merchant_id: str  # WeChat mchid / Alipay app_id / UnionPay merId
    merchant_key: bytes  # the merchant's RSA-2048 private key (PEM): signs requests
    merchant_public: bytes  # PEM: the channel checks requests with it
    merchant_serial: str  # WeChat certificate serial / UnionPay certId
    channel_key: bytes  # the channel's own private key (PEM): only the sandbox has it
    channel_public: bytes  # PEM: the platform checks answers and notifications with it
    channel_serial: str
    secret: str  # 32 random bytes, hex: WeChat's APIv3 key (AES-256-GCM resources)

    def to_json(self) -> str:
        data = asdict(self)
        for name in ("merchant_key", "merchant_public", "channel_key", "channel_public"):
            data[name] = data[name].decode("ascii")
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Credentials:
        data = json.loads(text)
        for name in ("merchant_key", "merchant_public", "channel_key", "channel_public"):
            data[name] = data[name].encode("ascii")
        return cls(**data)


_MERCHANT_IDS = {"wechat": "1900000109", "alipay": "2021000000000001", "unionpay": "777290058110048"}


def _key_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def create(channel: str) -> Credentials:
    """Fresh key material for ``channel`` (not stored anywhere)."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    merchant_key, merchant_public = _key_pair()
    channel_key, channel_public = _key_pair()
    return Credentials(channel=channel, merchant_id=_MERCHANT_IDS[channel], merchant_key=merchant_key,
                       merchant_public=merchant_public, merchant_serial=secrets.token_hex(20).upper(),
                       channel_key=channel_key, channel_public=channel_public,
                       channel_serial=secrets.token_hex(20).upper(), secret=secrets.token_hex(32))


def load_or_create(channel: str, directory: Path) -> Credentials:
    """The credentials in ``directory/<channel>.json``, created (mode 0600) if missing.

    Creation writes a temporary file and links it into place: the link fails if another process won the
    race, and then both use the winner's file — so two processes started at once never disagree.
    """
    directory = Path(directory)
    path = directory / f"{channel}.json"
    if path.exists():
        return _read(path)
    directory.mkdir(parents=True, exist_ok=True)
    fresh = create(channel)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{channel}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(fresh.to_json())
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return _read(path)
    finally:
        os.unlink(temp)
    return fresh


def _read(path: Path) -> Credentials:
    try:
        return Credentials.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"credentials file {path} is unreadable: {exc}") from None


@functools.lru_cache(maxsize=64)
def _private(key_pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("expected an RSA private key")
    return key


@functools.lru_cache(maxsize=64)
def _public(public_pem: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("expected an RSA public key")
    return key


def sign_rsa_sha256(key_pem: bytes, data: bytes) -> bytes:
    """SHA256withRSA (PKCS#1 v1.5), the signature all three channels use."""
    return _private(key_pem).sign(data, padding.PKCS1v15(), hashes.SHA256())


def verify_rsa_sha256(public_pem: bytes, data: bytes, signature: bytes) -> bool:
    try:
        _public(public_pem).verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
