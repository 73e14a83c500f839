"""Keys and sealing. Secrets the platform must read back (hospital HMAC secrets) are sealed with
AES-256-GCM under a key derived from the platform secret, so a database dump alone does not reveal them."""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from smartcare.platform.settings import get_settings


def derive_key(purpose: str, *, secret: str | None = None) -> bytes:
    """A 32-byte key for one purpose; different purposes never share a key."""
    master = (secret or get_settings().resolved_secret_key()).encode()
    return HKDF(algorithm=SHA256(), length=32, salt=b"smartcare", info=purpose.encode()).derive(master)


def seal(plaintext: bytes, *, purpose: str, aad: bytes = b"") -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(derive_key(purpose)).encrypt(nonce, plaintext, aad)


def unseal(sealed: bytes, *, purpose: str, aad: bytes = b"") -> bytes:
    return AESGCM(derive_key(purpose)).decrypt(sealed[:12], sealed[12:], aad)


def hmac_sha256_hex(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
