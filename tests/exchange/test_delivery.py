"""Delivery: each destination retries on its own, lands in dead letters, and a re-run delivers it."""

from __future__ import annotations

import http.server
import threading
import time
import uuid

import pytest

from smartcare.exchange import channels
from smartcare.exchange.router import route_once
from smartcare.platform import bus
from smartcare.platform.db import session_scope
from smartcare.workers import all_consumers
from tests.exchange.conftest import adt, admin_token, events_for, message_row, msa, signed_post


class FlakyReceiver:
    """A real HTTP endpoint that fails the first ``failures`` requests with 503, then answers 200."""

    def __init__(self, failures: int):
        self.failures, self.requests = failures, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((self.headers["X-SmartCare-Event-Id"], body))
                self.send_response(503 if len(outer.requests) <= outer.failures else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"


@pytest.fixture
def receiver():
    r = FlakyReceiver(failures=3)
    yield r
    r.server.shutdown()


def _work_until(condition, timeout: float = 30.0) -> None:
    consumers = all_consumers()
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        route_once()
        bus.drain(consumers, timeout=0.2)
        time.sleep(0.05)


def test_failing_destination_dead_letters_without_blocking_and_rerun_delivers(bus_transport, client, hospital, residents, receiver):
    cid = f"wh-{uuid.uuid4().hex[:6]}"
    config = channels.ChannelConfig(
        id=cid, name="update notifications", source="hl7v2", connectors=["http"], priority=10, senders=[hospital[0]],
        accept=["ADT^A08"], retry=channels.RetryPolicy(max_attempts=3, backoff_seconds=0.2, max_backoff_seconds=1),
        destinations=[channels.Destination(name="hook", kind="webhook", url=receiver.url, topics=["patient.*"]),
                      channels.Destination(name="event-log", kind="log")])
    with session_scope() as s:
        channels.save(s, config, actor="test")
    time.sleep(2.1)  # channel cache
    r = signed_post(client, hospital, "/api/v1/exchange/hl7v2",
                    adt(hospital[0], f"W{uuid.uuid4().hex[:10]}", residents[8], trigger="A08").encode(), "text/plain")
    assert msa(r.text)[1] == "AA"
    mid = int(r.headers["X-SmartCare-Message-Id"])
    assert message_row(mid)["channel_id"] == cid

    headers = admin_token(client)

    def dead() -> list[dict]:
        return client.get("/api/v1/exchange/dead-letters", params={"channel": cid}, headers=headers).json()

    _work_until(lambda: dead())
    [letter] = dead()
    assert letter["attempts"] == 3 and "503" in letter["last_error"]
    assert len(receiver.requests) == 3
    # the other destination was not held up by the failing one
    assert [e["topic"] for e in events_for(mid)] == ["patient.updated"]
    assert message_row(mid)["state"] == "routed"
    shown = client.get(f"/api/v1/exchange/messages/{mid}", headers=headers).json()["deliveries"]
    mine = {(d["consumer"].rsplit(".", 1)[1], d["state"]) for d in shown if d["consumer"].startswith("exchange.")}
    assert mine == {("hook", "dead"), ("event_log", "done")}
    assert ("empi.intake", "done") in {(d["consumer"], d["state"]) for d in shown}  # the index took the patient too

    rerun = client.post("/api/v1/exchange/dead-letters/rerun", params={"channel": cid}, headers=headers)
    assert rerun.json() == {"rerun": 1}
    _work_until(lambda: message_row(mid)["state"] == "delivered")
    assert len(receiver.requests) == 4 and dead() == []
    assert len({event_id for event_id, _ in receiver.requests}) == 1  # the same event each time: receivers can dedupe
    with session_scope() as s:
        channels.delete(s, cid, actor="test")


def test_rerun_of_a_message_delivers_it_again(bus_transport, client, hospital, residents):
    r = signed_post(client, hospital, "/api/v1/exchange/hl7v2",
                    adt(hospital[0], f"X{uuid.uuid4().hex[:10]}", residents[9]).encode(), "text/plain")
    mid = int(r.headers["X-SmartCare-Message-Id"])
    _work_until(lambda: message_row(mid)["state"] == "delivered")
    assert len(events_for(mid)) == 2
    headers = admin_token(client)
    assert client.post("/api/v1/exchange/messages/rerun", json={"message_ids": [mid]}, headers=headers).json() == {"rerun": 1}
    _work_until(lambda: message_row(mid)["state"] == "delivered" and len(events_for(mid)) == 4)
    assert message_row(mid)["reruns"] == 1
    nothing = client.post("/api/v1/exchange/messages/rerun", json={}, headers=headers)
    assert nothing.status_code == 422 and "say which messages" in nothing.json()["message"]
