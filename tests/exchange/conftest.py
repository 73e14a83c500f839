"""Fixtures for the exchange hub: a signed hospital, an MLLP sender, message builders, and a way to
let routing and delivery finish (what `smartcare worker` does in production)."""

from __future__ import annotations

import json
import socket
import time
from sqlalchemy import text

from smartcare.platform import auth
from smartcare.platform.db import session_scope
from smartcare.synth.messages import adt  # noqa: F401  (re-exported for the tests)

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def mllp_exchange(port: int, payloads: list[bytes], *, framed: bool = False, timeout: float = 20.0) -> list[str]:
    """Send each payload on one connection and read one ACK per payload (payloads are framed unless ``framed``)."""
    acks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        buffer = b""
        for payload in payloads:
            sock.sendall(payload if framed else VT + payload + FS + CR)
            ack, buffer = read_ack(sock, buffer)
            acks.append(ack)
    return acks


def read_ack(sock: socket.socket, buffer: bytes = b"") -> tuple[str, bytes]:
    """The next ACK on the connection (after what ``buffer`` already holds), and the bytes after it."""
    while FS + CR not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buffer += chunk
    frame, _, rest = buffer.partition(FS + CR)
    return frame.lstrip(VT).decode("utf-8"), rest


def msa(ack: str) -> list[str]:
    """MSA fields of an ACK (index 1: the code, 2: the acknowledged control id), whatever its separators."""
    from smartcare.standards import hl7v2

    seg = hl7v2.parse(ack).get("MSA")
    return [seg.value(str(i)) if i else "MSA" for i in range(len(seg) + 1)]


def settle(timeout: float = 30.0) -> None:
    """Route and deliver everything that is ready, as the worker would, until nothing is left."""
    from smartcare.exchange.router import route_once
    from smartcare.platform import bus
    from smartcare.workers import all_consumers

    consumers = all_consumers()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        moved = route_once() + _drain(bus, consumers)
        if not moved:
            return
    raise AssertionError("routing and delivery did not settle")


def _drain(bus, consumers) -> int:
    if hasattr(bus, "drain"):
        return bus.drain(consumers, timeout=0.5)
    from smartcare.platform.bus import postgres

    return postgres.run_once(consumers)


def events_for(message_id: int) -> list[dict]:
    with session_scope() as s:
        return [dict(r) for r in s.execute(text(
            "SELECT destination, topic, data FROM exchange.event_log WHERE source_message_id = :m ORDER BY id"),
            {"m": message_id}).mappings()]


def message_row(message_id: int) -> dict:
    with session_scope() as s:
        return dict(s.execute(text("SELECT * FROM exchange.message WHERE id = :m"), {"m": message_id}).mappings().one())


def signed_post(client, hospital, path: str, body: bytes, content_type: str):
    _, client_id, secret = hospital
    headers = auth.sign_request(client_id=client_id, secret=secret, method="POST", path=path, body=body)
    return client.post(path, content=body, headers={**headers, "Content-Type": content_type})


def admin_token(client) -> dict:
    r = client.post("/api/v1/auth/token", json={"username": "admin", "password": "smartcare-admin"})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()
