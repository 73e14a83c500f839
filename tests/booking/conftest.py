"""Booking tests fire attempts faster than a person: they get a generous throttle, except the tests of the throttle itself."""

import pytest


@pytest.fixture(autouse=True)
def generous_throttle(monkeypatch, request):
    from smartcare.booking import api, throttle

    if "strict_throttle" not in request.keywords:
        monkeypatch.setattr(api, "gate", throttle.Throttle(rate=10_000, burst=10_000, strikes=10_000, slow_seconds=1,
                                                           slow_delay=0))
