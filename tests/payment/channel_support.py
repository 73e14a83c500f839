"""Helpers the channel tests share: a token redeemer like the platform's, and a notification receiver.

The receiver is a small ASGI app, served with real uvicorn next to the sandbox, that checks every
notification with the adapter's own ``read_notification`` and answers with its ``notification_reply`` —
what the platform's notification endpoint does — and records what arrived for the test to look at.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response

from smartcare.payment import remote
from smartcare.payment.channels.base import Channel, Notification


class TokenRedeemer:
    """Payment codes the sandbox may redeem, each once (the platform's rule), mapped to agreement numbers."""

    def __init__(self, tokens: dict[str, str] | None = None):
        self._tokens = dict(tokens or {})
        self._lock = threading.Lock()
        self.redeemed: list[str] = []

    def add(self, token: str, agreement_no: str) -> str:
        with self._lock:
            self._tokens[token] = agreement_no
        return token

    async def __call__(self, token: str) -> str | None:
        with self._lock:
            agreement = self._tokens.pop(token, None)
            if agreement is not None:
                self.redeemed.append(token)
            return agreement


@dataclass(frozen=True)
class Delivery:
    """One notification as it arrived: decoded if it verified, else the refusal."""

    notification: Notification | None
    refused: remote.Refused | None
    status: int


class NotificationReceiver:
    """Records notifications to ``/notify``; ``acknowledge=False`` makes it answer as a platform that failed."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.acknowledge = True
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/notify")
        async def notify(request: Request) -> Response:
            body = await request.body()
            try:
                found = self.channel.read_notification(dict(request.headers), body)
            except remote.Refused as exc:
                status, content, media = self.channel.notification_reply(False)
                self._record(Delivery(None, exc, status))
                return Response(content, status_code=status, media_type=media)
            status, content, media = self.channel.notification_reply(self.acknowledge)
            self._record(Delivery(found, None, status))
            return Response(content, status_code=status, media_type=media)

        return app

    def _record(self, delivery: Delivery) -> None:
        with self._lock:
            self.deliveries.append(delivery)

    def verified(self, out_trade_no: str | None = None) -> list[Notification]:
        with self._lock:
            return [d.notification for d in self.deliveries if d.notification is not None
                    and (out_trade_no is None or d.notification.order.out_trade_no == out_trade_no)]

    def refused(self) -> list[remote.Refused]:
        with self._lock:
            return [d.refused for d in self.deliveries if d.refused is not None]


def wait_until(check: Callable[[], object], *, timeout: float = 5.0, every: float = 0.05):
    """Poll ``check`` until it returns something truthy; fail naming the timeout otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        time.sleep(every)
