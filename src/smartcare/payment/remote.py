"""Calls from the platform to the other parties of a payment (insurance centre, insurer, channels).

Every call ends in one of three ways, and the settlement saga treats them differently:
- an answer: the party did (or definitely did not) do what was asked;
- ``Refused``: the party answered that it will not do it (a business error with the party's code);
- ``OutcomeUnknown``: no trustworthy answer (timeout, connection lost, 5xx, a reply whose signature
  fails). The party may or may not have acted, so the saga resolves it by query or reversal — never by
  guessing, and never by simply sending the same money movement again under a new number.
"""

from __future__ import annotations

import httpx

from smartcare.platform.settings import get_settings


class OutcomeUnknown(Exception):
    """The party may or may not have acted: resolve by query or reversal."""

    def __init__(self, party: str, what: str):
        super().__init__(f"{party}: outcome unknown ({what})")
        self.party = party
        self.what = what


class Refused(Exception):
    """The party answered, and said no: nothing was done by this call."""

    def __init__(self, party: str, code: str, message: str):
        super().__init__(f"{party} refused: {code} {message}")
        self.party = party
        self.code = code
        self.message = message


def client(base_url: str, *, timeout: float | None = None) -> httpx.Client:
    """A pooled HTTP client for one party; the timeout is what makes an outcome unknown."""
    seconds = get_settings().payment_timeout_seconds if timeout is None else timeout
    return httpx.Client(base_url=base_url, timeout=httpx.Timeout(seconds, connect=min(seconds, 2.0)),
                        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))


def send(party: str, http: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
    """One request; transport failures and 5xx answers become ``OutcomeUnknown``."""
    try:
        response = http.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise OutcomeUnknown(party, f"no answer within {http.timeout.read}s") from None
    except httpx.TransportError as exc:
        raise OutcomeUnknown(party, f"connection failed: {type(exc).__name__}") from None
    if response.status_code >= 500:
        raise OutcomeUnknown(party, f"HTTP {response.status_code}")
    return response
