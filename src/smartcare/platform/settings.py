"""Settings from the environment (prefix ``SMARTCARE_``, plus the conventional ``DATABASE_URL``)."""

from __future__ import annotations

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

    def resolved_secret_key(self) -> str:
        if self.secret_key:
            return self.secret_key
        path = self.home / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    return Settings()
