"""Booking tests fire attempts faster than a person: the API's throttle is made generous for them
(the throttle's own test builds a strict one)."""

import pytest


@pytest.fixture(autouse=True)
def generous_throttle(monkeypatch):
    from smartcare.booking import api, throttle

    monkeypatch.setattr(api, "gate", throttle.Throttle(rate=10_000, burst=10_000, strikes=10_000, slow_seconds=1,
                                                       slow_delay=0))

