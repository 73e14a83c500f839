"""HL7 v2 over the real MLLP connector: ACK after commit, bad frames kept, duplicates once, the real samples."""

from __future__ import annotations

import csv
import uuid

from tests.conftest import SHARED, shared
from tests.exchange.conftest import CR, FS, VT, adt, events_for, message_row, mllp_exchange, msa, settle

SAMPLES = SHARED / "hl7v2-samples"


def test_adt_gets_aa_and_becomes_a_patient_event(bus_transport, live_server, hospital, residents):
    facility = hospital[0]
    resident = residents[0]
    control = f"T{uuid.uuid4().hex[:12]}"
    [ack] = mllp_exchange(live_server.mllp_port, [adt(facility, control, resident).encode()])
    fields = msa(ack)
    assert fields[1] == "AA" and fields[2] == control
    mid = int(next(s for s in ack.split("\r") if s.startswith("MSA")) and message_id_of(control))
    assert message_row(mid)["state"] == "accepted"  # committed before the ACK went out
    settle()
    row = message_row(mid)
    assert row["state"] == "delivered" and row["facility_code"] == facility
    topics = {e["topic"]: e["data"] for e in events_for(mid)}
    assert set(topics) == {"patient.registered", "encounter.recorded"}
    patient = topics["patient.registered"]
    assert patient["id_number"] == resident["id_number"] and patient["name"] == resident["name"]
    assert patient["sex"] == resident["sex"] and patient["birth_date"] == resident["birth_date"].isoformat()


def message_id_of(control_id: str) -> int:
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    with session_scope() as s:
        return s.execute(text("SELECT id FROM exchange.message WHERE control_id = :c"), {"c": control_id}).scalar_one()


def test_same_control_id_twice_is_one_effect(bus_transport, live_server, hospital, residents):
    control = f"D{uuid.uuid4().hex[:12]}"
    message = adt(hospital[0], control, residents[1]).encode()
    acks = mllp_exchange(live_server.mllp_port, [message, message])
    assert [msa(a)[1] for a in acks] == ["AA", "AA"]
    acks += mllp_exchange(live_server.mllp_port, [message])  # and again on a new connection
    assert msa(acks[-1])[1] == "AA"
    settle()
    mid = message_id_of(control)  # scalar_one: exactly one stored
    assert [e["topic"] for e in events_for(mid)].count("patient.registered") == 1


def test_metrics_count_each_message_and_its_ack_time(live_server, hospital, residents):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> dict:
        text = httpx.get(f"{live_server.url}/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    accepted = ("smartcare_exchange_received_total", (("kind", "hl7v2"), ("status", "accepted")))
    duplicate = ("smartcare_exchange_received_total", (("kind", "hl7v2"), ("status", "duplicate")))
    acks = ("smartcare_exchange_ack_seconds_count", (("connector", "mllp"),))
    every = ("smartcare_exchange_ack_seconds_bucket", (("connector", "mllp"), ("le", "+Inf")))  # the bucket of all
    before = samples()
    first, second = (adt(hospital[0], f"M{uuid.uuid4().hex[:12]}", r).encode() for r in residents[:2])
    mllp_exchange(live_server.mllp_port, [first, second, first])
    after = samples()
    assert after[accepted] - before.get(accepted, 0) == 2
    assert after[duplicate] - before.get(duplicate, 0) == 1
    assert after[acks] - before.get(acks, 0) == 3 == after[every] - before.get(every, 0)


def test_malformed_frame_gets_ar_and_its_bytes_are_kept(live_server, client, hospital):
    from tests.exchange.conftest import admin_token

    garbage = b"GARBAGE-BEFORE-FRAME"
    good = adt(hospital[0], f"G{uuid.uuid4().hex[:10]}", {"id": 1, "name": "张三", "sex": "1",
               "birth_date": __import__("datetime").date(1980, 1, 2), "id_number": "11010519491231002X",
               "phone": "13800000000", "address": "重庆市"}).encode()
    acks = mllp_exchange(live_server.mllp_port, [garbage + VT + good + FS + CR], framed=True)
    fields = msa(acks[0])
    assert fields[1] == "AR"
    err = next(s for s in acks[0].split("\r") if s.startswith(("ERR", "MSA")) and "bad frame #" in s)
    frame_id = int(err.split("bad frame #")[1].split("^")[0].split("|")[0].strip().rstrip("."))
    headers = admin_token(client)
    raw = client.get(f"/api/v1/exchange/bad-frames/{frame_id}/raw", headers=headers).json()
    assert raw["problem"] and bytes.fromhex(raw["hex"].replace(" ", "")) == garbage
    listed = client.get("/api/v1/exchange/bad-frames", headers=headers).json()
    assert any(f["id"] == frame_id for f in listed)


def _manifest() -> list[dict]:
    with open(shared("hl7v2-samples", "MANIFEST.tsv"), newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_every_real_sample_gets_the_expected_ack(live_server):
    rows = _manifest()
    payloads = [(SAMPLES / r["file"]).read_bytes() for r in rows]
    acks = mllp_exchange(live_server.mllp_port, payloads)
    for row, ack in zip(rows, acks, strict=True):
        code = msa(ack)[1]
        if row["expect"] == "AA":
            assert code == "AA", (row["file"], ack)
            assert msa(ack)[2] == row["control_id"], row["file"]
        else:
            assert code in ("AE", "AR"), (row["file"], ack)
            assert "ERR" in ack, row["file"]


def test_an_odd_message_does_not_fail_its_neighbours(live_server, hospital, residents):
    """Over-long fields and NUL bytes are made storable; concurrent good messages still get AA."""
    from concurrent.futures import ThreadPoolExecutor

    long_sender = "X" * 300
    odd = adt(long_sender, "C" * 250 + "\x00", residents[20]).encode()
    goods = [adt(hospital[0], f"N{uuid.uuid4().hex[:10]}", residents[21 + i]).encode() for i in range(8)]
    with ThreadPoolExecutor(9) as pool:
        acks = list(pool.map(lambda p: mllp_exchange(live_server.mllp_port, [p])[0], [odd, *goods]))
    assert all(msa(a)[1] == "AA" for a in acks[1:]), acks
    assert msa(acks[0])[1] in ("AA", "AE", "AR")


def test_frames_sent_without_waiting_are_answered_in_order(live_server, hospital, residents):
    """A sender that writes many frames at once (more than the connection lets wait before it stops reading)
    gets every ACK, in the order of its frames."""
    import socket

    from smartcare.exchange.mllp_server import _Connection
    from tests.exchange.conftest import read_ack

    first = _Connection.MAX_WAITING + 6  # enough for the connection to stop reading
    count = first + _Connection.MAX_WAITING
    controls = [f"P{uuid.uuid4().hex[:12]}" for _ in range(count)]
    frames = [VT + adt(hospital[0], c, residents[i % 20]).encode() + FS + CR for i, c in enumerate(controls)]
    acks, buffer = [], b""
    with socket.create_connection(("127.0.0.1", live_server.mllp_port), timeout=15) as sock:
        sock.sendall(b"".join(frames[:first]))
        ack, buffer = read_ack(sock, buffer)  # the connection has read them all and stopped reading
        acks.append(ack)
        sock.sendall(b"".join(frames[first:]))  # read only once it reads again
        for _ in controls[1:]:
            ack, buffer = read_ack(sock, buffer)
            acks.append(ack)
    assert [msa(a)[1] for a in acks] == ["AA"] * count
    assert [msa(a)[2] for a in acks] == controls
