"""Hospitals publish and withdraw slots with HL7 v2 SIU (SCH-8 = SLOT) through the exchange hub: the
mapping to canonical events, and the whole way from a signed HTTP message to the pool and back out."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from smartcare.exchange import canonical
from smartcare.platform.clock import CHINA_TZ
from tests.booking.booking_support import at, department, sql
from tests.exchange.conftest import message_row, msa, settle, signed_post

#: The example of docs/booking.md: a 15-minute slot of a 主任医师 with 20 places and a fee of 50.00 yuan.
EXAMPLE = "\r".join([
    "MSH|^~\\&|HIS|H001|SMARTCARE|REGION|20260301080000||SIU^S12^SIU_S12|HY0001|P|2.5|||||CHN|UNICODE UTF-8",
    "SCH||HY20260302-0301-0900^H001||||NEW^新增号源||SLOT^号源^99SCH|15|min^分钟|^^^202603020900^202603020915",
    "TQ1|1||||||202603020900|202603020915",
    "RGS|1|A",
    "AIS|1|A|0301^心血管内科",
    "AIG|1|A|HY^号源|||20",
    "AIP|1|A|D0012^王^建国|ZR^主任医师",
    "ZFE|5000",
]) + "\r"


def _events(text: str) -> list:
    return canonical.events("hl7v2", text.encode())


def test_slot_offer_maps_to_slot_events():
    assert _events(EXAMPLE) == [("slot.published", {
        "source_id": "HY20260302-0301-0900", "department_code": "0301", "department_name": "心血管内科",
        "practitioner_code": "D0012", "practitioner_name": "王建国", "title": "主任医师", "fee": 5000,
        "starts_at": "2026-03-02T09:00:00+08:00", "ends_at": "2026-03-02T09:15:00+08:00", "capacity": 20})]
    # v2.3 style (no TQ1: SCH-11.4/.5), an offset in the TS, a department slot without a doctor or fee
    plain = "\r".join(line for line in EXAMPLE.split("\r") if not line.startswith(("TQ1", "AIP", "ZFE")))
    [(topic, data)] = _events(plain.replace("202603020900^202603020915", "202603020100+0000^202603020130+0000"))
    assert topic == "slot.published"
    assert (data["starts_at"], data["ends_at"]) == ("2026-03-02T01:00:00+00:00", "2026-03-02T01:30:00+00:00")
    assert data["practitioner_code"] is data["practitioner_name"] is data["title"] is data["fee"] is None
    # S13 / S14 change the slot; S15 / S17 withdraw it, with SCH-6 as the reason
    assert _events(EXAMPLE.replace("SIU^S12^SIU_S12", "SIU^S14^SIU_S12"))[0][0] == "slot.published"
    for trigger in ("S15", "S17"):
        cancelled = EXAMPLE.replace("SIU^S12^SIU_S12", f"SIU^{trigger}^SIU_S12").replace("NEW^新增号源", "TZ^停诊")
        assert _events(cancelled) == [("slot.withdrawn", {"source_id": "HY20260302-0301-0900", "reason": "停诊"})]
    # without SCH-8 = SLOT it is still a patient's appointment
    assert _events(EXAMPLE.replace("SLOT^号源^99SCH", "NORMAL"))[0][0] == "appointment.booked"


_NO_TQ1 = ("TQ1|1||||||202603020900|202603020915\r", "")


@pytest.mark.parametrize("changes, field", [
    ([("HY20260302-0301-0900^H001", "")], "SCH-2.1"),
    ([("|202603020915\r", "|2026030209\r")], "TQ1-8"),
    ([_NO_TQ1, ("^^^202603020900^", "^^^20260302^")], "SCH-11.4"),
    ([_NO_TQ1, ("^^^202603020900^202603020915", "")], "TQ1-7 or SCH-11.4"),
    ([("0301^心血管内科", "")], "AIS-3.1"),
    ([("|||20", "|||many")], "AIG-6"),
    ([("AIG|1|A|HY^号源|||20\r", "")], "AIG-6"),
    ([("ZFE|5000", "ZFE|50.00")], "ZFE-1"),
])
def test_a_bad_slot_field_is_named(changes, field):
    text = EXAMPLE
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    with pytest.raises(ValueError, match=rf"slot offer \(SCH-8 = SLOT\): {field}\b"):
        _events(text)


def siu(facility: str, trigger: str, slot_id: str, dept: str, start: datetime, *, minutes: int = 15,
        capacity: int = 3, reason: str = "NEW^新增号源", doctor: str = "D0012") -> bytes:
    end = start + timedelta(minutes=minutes)
    return "\r".join([
        f"MSH|^~\\&|HIS|{facility}|SMARTCARE|REGION|{datetime.now(CHINA_TZ):%Y%m%d%H%M%S}||SIU^{trigger}^SIU_S12|"
        f"C{uuid.uuid4().hex[:12]}|P|2.5|||||CHN|UNICODE UTF-8",
        f"SCH||{slot_id}^{facility}||||{reason}||SLOT^号源|{minutes}|min|^^^{start:%Y%m%d%H%M}^{end:%Y%m%d%H%M}",
        "RGS|1|A",
        f"AIS|1|A|{dept}",
        f"AIG|1|A|HY^号源|||{capacity}",
        f"AIP|1|A|{doctor}^王^建国|ZR^主任医师",
        "ZFE|5000",
    ]).encode() + b"\r"


def _send(client, hospital, payload: bytes) -> int:
    r = signed_post(client, hospital, "/api/v1/exchange/hl7v2", payload, "text/plain")
    assert r.status_code == 200 and msa(r.text)[1] == "AA", r.text
    settle()
    return int(r.headers["X-SmartCare-Message-Id"])


def _pool(client, hospital, doctor: str) -> list[dict]:
    """The open slots of the pool with this (test's own) doctor code."""
    r = client.get("/api/v1/booking/slots", params={"facility": hospital[0], "practitioner": doctor})
    assert r.status_code == 200, r.text
    return r.json()


def _rejections(facility: str, slot_id: str) -> list[dict]:
    return [row[0] for row in sql("SELECT detail FROM platform.audit_log WHERE action = 'booking.slot.rejected' "
                                  "AND target = :t ORDER BY id", t=f"{facility}/{slot_id}")]


def _new() -> tuple[str, str]:
    """A fresh slot id and doctor code: each test finds its own slots in the pool by its doctor."""
    return f"HY-{uuid.uuid4().hex[:10]}", f"D{uuid.uuid4().hex[:8]}"


def test_siu_publishes_updates_and_withdraws_a_slot(client, hospital):
    facility, dept, (slot_id, doctor) = hospital[0], department(hospital), _new()
    start = at(1, 9)
    mid = _send(client, hospital, siu(facility, "S12", slot_id, dept, start, doctor=doctor))
    assert message_row(mid)["state"] == "delivered"
    [slot] = _pool(client, hospital, doctor)
    assert (slot["department_code"], slot["practitioner_name"], slot["title"], slot["fee"], slot["capacity"]) == \
        (dept, "王建国", "主任医师", 5000, 3)
    assert datetime.fromisoformat(slot["starts_at"]) == start
    assert datetime.fromisoformat(slot["ends_at"]) == start + timedelta(minutes=15)
    [(updated_at,)] = sql("SELECT updated_at FROM booking.slot WHERE id = :id", id=slot["id"])

    # the same slot again (a new control id): unchanged; S14 with more places: updated in place
    _send(client, hospital, siu(facility, "S12", slot_id, dept, start, doctor=doctor))
    assert sql("SELECT id, updated_at FROM booking.slot WHERE facility_code = :f AND source_id = :s",
               f=facility, s=slot_id) == [(slot["id"], updated_at)]
    _send(client, hospital, siu(facility, "S14", slot_id, dept, start, capacity=5, doctor=doctor))
    assert [(s["id"], s["capacity"]) for s in _pool(client, hospital, doctor)] == [(slot["id"], 5)]

    # S15 (停诊) withdraws it: out of the pool, audited with the reason; a repeat changes nothing
    for _ in range(2):
        _send(client, hospital, siu(facility, "S15", slot_id, dept, start, reason="TZ^停诊", doctor=doctor))
        assert _pool(client, hospital, doctor) == []
        assert sql("SELECT state FROM booking.slot WHERE id = :id", id=slot["id"]) == [("withdrawn",)]
    assert sql("SELECT detail->>'reason' FROM platform.audit_log WHERE action = 'booking.slot.withdraw' AND target = :t",
               t=f"{facility}/{slot_id}") == [("停诊",)]
    assert _rejections(facility, slot_id) == []
    # an old S12 replayed after the withdrawal does not bring the slot back
    _send(client, hospital, siu(facility, "S12", slot_id, dept, start, doctor=doctor))
    assert _pool(client, hospital, doctor) == []
    assert "was withdrawn" in _rejections(facility, slot_id)[0]["reason"]


def test_a_slot_the_pool_refuses_is_recorded_and_does_not_block_the_consumer(client, hospital):
    facility, dept, (too_long, doctor), (unknown, _) = hospital[0], department(hospital), _new(), _new()
    mid = _send(client, hospital, siu(facility, "S12", too_long, dept, at(1, 10), minutes=45, doctor=doctor))
    _send(client, hospital, siu(facility, "S15", unknown, dept, at(1, 10), reason="TZ^停诊", doctor=doctor))
    assert message_row(mid)["state"] == "delivered"  # the hub did its part; the pool said no
    assert sql("SELECT count(*) FROM booking.slot WHERE facility_code = :f AND source_id IN (:a, :b)",
               f=facility, a=too_long, b=unknown) == [(0,)]
    [refused] = _rejections(facility, too_long)
    assert "30 minutes" in refused["reason"] and refused["exchange_message_id"] == mid
    [not_there] = _rejections(facility, unknown)
    assert f"no slot {unknown}" in not_there["reason"]
    # nothing left to retry, nothing dead-lettered: the consumer goes on with the next message
    assert sql("SELECT count(*) FROM platform.bus_delivery WHERE consumer = 'booking.intake' "
               "AND state <> 'done'") == [(0,)]
    good, _ = _new()
    _send(client, hospital, siu(facility, "S12", good, dept, at(1, 10), doctor=doctor))
    assert [s["capacity"] for s in _pool(client, hospital, doctor)] == [3]


def test_a_malformed_slot_message_fails_in_the_hub_naming_the_field(client, hospital):
    facility, (slot_id, doctor) = hospital[0], _new()
    payload = siu(facility, "S12", slot_id, department(hospital), at(1, 11), doctor=doctor).replace(b"|||3\r", b"|||\r")
    mid = _send(client, hospital, payload)
    row = message_row(mid)
    assert row["state"] == "failed" and "AIG-6" in row["error"] and "capacity" in row["error"]
    assert _pool(client, hospital, doctor) == []
    assert sql("SELECT count(*) FROM booking.slot WHERE source_id = :s", s=slot_id) == [(0,)]


def test_plain_mllp_cannot_publish_or_withdraw_slots(client, hospital, live_server):
    """Over plain MLLP only MSH-4 says who sent the message: anyone on the network could withdraw a
    hospital's slots (and so cancel its residents' bookings). The hub stores and acknowledges it; the pool refuses it."""
    from tests.exchange.conftest import mllp_exchange

    facility, dept, (slot_id, doctor) = hospital[0], department(hospital), _new()
    [ack] = mllp_exchange(live_server.mllp_port, [siu(facility, "S12", slot_id, dept, at(1, 11), doctor=doctor)])
    assert msa(ack)[1] == "AA"
    settle()
    assert _pool(client, hospital, doctor) == []
    assert "authenticated sender" in _rejections(facility, slot_id)[0]["reason"]
