"""Booking tests fire attempts faster than a person: the API's throttle is made generous for them
(the throttle's own test builds a strict one)."""

import pytest


@pytest.fixture(autouse=True)
def generous_throttle(monkeypatch):
    from smartcare.booking import api, throttle

    monkeypatch.setattr(api, "gate", throttle.Throttle(rate=10_000, burst=10_000, strikes=10_000, slow_seconds=1,
                                                       slow_delay=0))


@pytest.fixture(scope="session")
def other_hospital(seeded):
    """A second general hospital with its own signed client (doctor codes are each hospital's own)."""
    import uuid

    from sqlalchemy import text

    from smartcare.platform import auth
    from smartcare.platform.db import session_scope

    with session_scope() as s:
        code = s.execute(text("SELECT code FROM registry.facility WHERE kind = 'general_hospital' AND level = 3 "
                              "ORDER BY code OFFSET 1 LIMIT 1")).scalar()
        client_id = f"his-{uuid.uuid4().hex[:8]}"
        secret = auth.create_api_client(s, client_id=client_id, name="HIS 2", facility_code=code)
    return code, client_id, secret
