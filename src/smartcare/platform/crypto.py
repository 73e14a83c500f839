"""Keys, sealing and signatures. Secrets the platform must read back (hospital HMAC secrets) are sealed with
AES-256-GCM under a key derived from the platform secret, so a database dump alone does not reveal them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tongsuopy.crypto import hashes as sm2_hashes, serialization as sm2_ser
from tongsuopy.crypto.asymciphers import ec as sm2_ec
from tongsuopy.crypto.exceptions import InvalidSignature as SM2InvalidSignature

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


# ---- signing keys: Ed25519 (default) and SM2 (national cryptography, GB/T 32918) -------------------
#
# SM2 comes from tongsuopy, the Python binding of Tongsuo (the OpenSSL fork maintained for China's
# national algorithms): `cryptography` has no SM2, the pure-Python `gmssl` is ~20× slower (tests use
# it as an independent implementation to check that our SM2 signatures interoperate).

ED25519 = "Ed25519"
SM2 = "SM2"
SIGNING_ALGORITHMS = (ED25519, SM2)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class VerifyKey:
    """A public key that checks signatures; built from raw bytes or a JWK (the trust list)."""

    def __init__(self, alg: str, public: bytes):
        if alg == ED25519:
            self._key = Ed25519PublicKey.from_public_bytes(public)
        elif alg == SM2:
            self._key = sm2_ec.EllipticCurvePublicKey.from_encoded_point(sm2_ec.SM2(), public)
        else:
            raise ValueError(f"unknown signature algorithm {alg!r} (known: {', '.join(SIGNING_ALGORITHMS)})")
        self.alg = alg
        self.public = public

    def verify(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` (64 bytes: Ed25519, or SM2's r‖s) signs ``message``."""
        if len(signature) != 64:
            return False
        try:
            if self.alg == ED25519:
                self._key.verify(signature, message)
            else:
                der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
                self._key.verify(der, message, sm2_ec.ECDSA(sm2_hashes.SM3()))
        except (InvalidSignature, SM2InvalidSignature):
            return False
        return True

    def jwk(self) -> dict:
        """The public key as a JWK (RFC 8037 OKP for Ed25519; EC with crv "SM2" for SM2)."""
        if self.alg == ED25519:
            return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(self.public)}
        return {"kty": "EC", "crv": "SM2", "x": _b64url(self.public[1:33]), "y": _b64url(self.public[33:])}

    @classmethod
    def from_jwk(cls, jwk: dict) -> VerifyKey:
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            return cls(ED25519, _unb64url(jwk["x"]))
        if jwk.get("kty") == "EC" and jwk.get("crv") == "SM2":
            return cls(SM2, b"\x04" + _unb64url(jwk["x"]) + _unb64url(jwk["y"]))
        raise ValueError(f"unsupported key type {jwk.get('kty')}/{jwk.get('crv')}")


class SigningKey:
    """A private key that signs with 64-byte signatures (Ed25519, or SM2 with SM3 and the default
    user id, as r‖s)."""

    def __init__(self, alg: str, private: bytes):
        """``private``: the 32 raw bytes of the private key (both algorithms)."""
        if alg == ED25519:
            self._key = Ed25519PrivateKey.from_private_bytes(private)
            public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        elif alg == SM2:
            self._key = sm2_ec.derive_private_key(int.from_bytes(private), sm2_ec.SM2())
            public = self._key.public_key().public_bytes(sm2_ser.Encoding.X962, sm2_ser.PublicFormat.UncompressedPoint)
        else:
            raise ValueError(f"unknown signature algorithm {alg!r} (known: {', '.join(SIGNING_ALGORITHMS)})")
        self.alg = alg
        self.private = private
        self.verify_key = VerifyKey(alg, public)

    @classmethod
    def generate(cls, alg: str) -> SigningKey:
        if alg == SM2:
            number = sm2_ec.generate_private_key(sm2_ec.SM2()).private_numbers().private_value
            return cls(SM2, number.to_bytes(32))
        return cls(alg, Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))

    def sign(self, message: bytes) -> bytes:
        if self.alg == ED25519:
            return self._key.sign(message)
        r, s = decode_dss_signature(self._key.sign(message, sm2_ec.ECDSA(sm2_hashes.SM3())))
        return r.to_bytes(32) + s.to_bytes(32)
