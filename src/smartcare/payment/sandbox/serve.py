"""One place that builds any sandbox by name, for ``smartcare sandbox run``, ``smartcare up``, tests and benches."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI

from smartcare.payment.sandbox.faults import Faults
from smartcare.platform.settings import Settings, get_settings

PARTIES = ("medins", "insurer", "wechat", "alipay", "unionpay")
CHANNELS = ("wechat", "alipay", "unionpay")
#: the environment variable that carries a channel sandbox's platform secret (never on a command line)
SECRET_ENV = "SMARTCARE_SANDBOX_CLIENT_SECRET"


def client_id(party: str) -> str:
    """The API client a channel sandbox uses to redeem health-card payment tokens at the platform."""
    return f"sandbox-{party}"


def url(party: str, settings: Settings | None = None) -> str:
    return getattr(settings or get_settings(), f"payment_{party}_url")


def build_app(party: str, *, faults: Faults | None = None, platform_url: str | None = None,
              secret: str | None = None, keys_dir: Path | None = None, password_above: int = 100_000) -> FastAPI:
    if party not in PARTIES:
        raise ValueError(f"no sandbox {party!r}: one of {', '.join(PARTIES)}")
    module = importlib.import_module(f"smartcare.payment.sandbox.{party}")
    if party not in CHANNELS:
        return module.create_app(faults=faults)
    from smartcare.payment.channels.credentials import load_or_create
    from smartcare.payment.sandbox.channel import platform_redeemer

    settings = get_settings()
    if not secret:
        raise ValueError(f"the {party} sandbox needs its platform secret in {SECRET_ENV} to redeem payment codes")
    redeem = platform_redeemer(platform_url or f"http://{settings.host}:{settings.port}", channel=party,
                               client_id=client_id(party), secret=secret)
    credentials = load_or_create(party, keys_dir or settings.resolved_payment_keys_dir())
    return module.create_app(credentials=credentials, redeem=redeem, faults=faults, password_above=password_above)


def spawn(party: str, *, platform_url: str, secret: str | None, extra: list[str] | None = None,
          env: dict | None = None) -> subprocess.Popen:
    """Start ``smartcare sandbox run PARTY`` as its own process on its configured port."""
    port = urlsplit(url(party)).port
    environment = {**os.environ, **(env or {})}
    if secret:
        environment[SECRET_ENV] = secret
    return subprocess.Popen([sys.executable, "-m", "smartcare.cli", "sandbox", "run", party, "--port", str(port),
                             "--platform-url", platform_url, *(extra or [])], env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(party: str, process: subprocess.Popen | None = None, *, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the {party} sandbox stopped: {process.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            httpx.get(url(party) + "/_sandbox/faults", timeout=1.0).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"the {party} sandbox did not answer at {url(party)} within {seconds:.0f}s")
