"""Settings from the environment (prefix ``SMARTCARE_``, plus the conventional ``DATABASE_URL``)."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTCARE_", extra="ignore")

    #: An external PostgreSQL. Unset: an embedded server is started under ``home``.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "SMARTCARE_DATABASE_URL")
    )
    #: Where the embedded PostgreSQL, the generated secret key and other local state live.
    home: Path = Path(".smartcare")
    host: str = "127.0.0.1"
    port: int = 8000
    #: Signs sessions (JWT) and derives the key that seals API client secrets. Generated once into
    #: ``home/secret.key`` when unset, so a restart keeps sessions valid.
    secret_key: str | None = None
    session_minutes: int = 8 * 60
    #: Hospital request signatures older or newer than this are refused (replay protection).
    hmac_window_seconds: int = 300
    #: ``postgres`` (default) or a ``nats://`` URL for the JetStream transport.
    bus_url: str = "postgres"
    log_level: str = "INFO"
    log_json: bool = False
    #: Seed of the demo region that ``smartcare up`` creates in an empty database.
    demo_seed: int = 2026
    #: MLLP listener for HL7 v2 (2575 is the port registered for HL7); 0 disables it.
    mllp_port: int = 2575
    mllp_host: str = "127.0.0.1"
    #: TLS for MLLP: server certificate and key; with a client CA, client certificates are required
    #: and their common name must equal the sending facility (MSH-4).
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None
    #: Largest message the hub accepts over any connector.
    max_payload_bytes: int = 10 * 1024 * 1024
    #: Per hospital client: sustained messages per second and burst.
    rate_per_second: float = 500.0
    rate_burst: int = 1000
    #: Electronic health card: how long a dynamic code is valid, the issuing region (GB/T 2260 code,
    #: carried by the health-card template) and the issuer named in the trust list.
    healthcard_code_seconds: int = 60
    healthcard_region: int = 500000
    healthcard_issuer: str = "SmartCare regional health information centre"
    #: Mixed payment: where the medical-insurance centre, the commercial insurer and the payment
    #: channels answer (``smartcare sandbox …`` serves a stand-in for each on these ports), how long
    #: a call may take before its outcome counts as unknown, the address channels send their
    #: notifications to, and where the sandboxes' and the platform's channel keys live.
    payment_medins_url: str = "http://127.0.0.1:8701"
    payment_insurer_url: str = "http://127.0.0.1:8702"
    payment_wechat_url: str = "http://127.0.0.1:8703"
    payment_alipay_url: str = "http://127.0.0.1:8704"
    payment_unionpay_url: str = "http://127.0.0.1:8705"
    payment_timeout_seconds: float = 2.0
    #: how long a patient may take to confirm a payment (a password on the phone) before it is reversed
    payment_payer_wait_seconds: float = 30.0
    payment_notify_url: str | None = None
    payment_keys_dir: Path | None = None
    # Booking attempts per resident account (holds and confirms): a token bucket; an account that
    # keeps running into it is treated as a bot and its attempts go through a slow lane for a while.
    booking_rate_per_second: float = 1.0
    booking_burst: int = 5
    booking_bot_strikes: int = 5
    booking_slow_lane_seconds: float = 600.0
    booking_slow_lane_delay_seconds: float = 2.0

    def resolved_payment_notify_url(self) -> str:
        """Where channels send notifications: this platform, unless a public address is configured."""
        return self.payment_notify_url or f"http://{self.host}:{self.port}"

    def resolved_payment_keys_dir(self) -> Path:
        return self.payment_keys_dir or self.home / "payment-keys"

    def resolved_secret_key(self) -> str:
        return self.secret_key or _secret_in(self.home)


@lru_cache(maxsize=8)
def _secret_in(home: Path) -> str:
    """The secret generated on first use in ``home``, read once per process: every bearer token check asks
    for it, and reading the file each time cost a stat and an open per request."""
    path = home / "secret.key"
    if not path.exists():  # made atomically: the worker processes of one server must agree on it
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f"secret.key.{os.getpid()}")
        draft.write_text(secrets.token_urlsafe(48))
        draft.chmod(0o600)
        try:
            os.link(draft, path)  # fails if another process made it first: theirs is kept
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
