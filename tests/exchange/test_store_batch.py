"""The group committer's answers for each message of a batch: new, repeated in the batch, seen before, failed."""

from __future__ import annotations

import asyncio
import uuid

from smartcare.exchange.store import GroupCommitter, NewMessage


def message(control: str, state: str = "accepted", sender: str = "mllp:TEST") -> NewMessage:
    return NewMessage(channel_id="hl7v2", sender=sender, facility_code=None, connector="mllp", kind="hl7v2",
                      message_type="ADT^A04", control_id=control, state=state, raw=f"MSH|{control}".encode(),
                      content_type=None, error="bad" if state == "failed" else None)


def test_each_message_of_a_batch_gets_its_own_answer(database_url):
    a, b = f"A{uuid.uuid4().hex}", f"B{uuid.uuid4().hex}"

    async def run():
        committer = GroupCommitter()
        try:
            # submitted together: one batch
            first = await asyncio.gather(*(committer.submit(m) for m in (
                message(a), message(a), message(b, "filtered"), message(a, sender="mllp:OTHER"),
                message(b, "failed"), message(b, "failed"))))
            again = await committer.submit(message(a))  # a later batch
            return first, again
        finally:
            await committer.close()

    (new_a, repeat_a, new_b, other_sender, failed_1, failed_2), again = asyncio.run(run())
    assert not new_a.duplicate and new_a.state == "accepted" and new_a.message_id > 0
    assert repeat_a.duplicate and repeat_a.message_id == new_a.message_id
    assert not new_b.duplicate and new_b.state == "filtered"
    assert not other_sender.duplicate and other_sender.message_id != new_a.message_id  # keys are per sender
    assert not failed_1.duplicate and not failed_2.duplicate and failed_1.message_id != failed_2.message_id
    assert again.duplicate and again.message_id == new_a.message_id and again.state == "accepted"
    assert len({new_a.message_id, new_b.message_id, other_sender.message_id, failed_1.message_id,
                failed_2.message_id}) == 5


def test_two_committers_racing_for_one_key_agree(database_url):
    """Two processes' committers store the same message at once: one stores it, the other answers with its id."""
    control = f"R{uuid.uuid4().hex}"

    async def run():
        committers = [GroupCommitter(), GroupCommitter()]
        try:
            return await asyncio.gather(*(c.submit(message(control)) for c in committers for _ in range(3)))
        finally:
            for c in committers:
                await c.close()

    results = asyncio.run(run())
    assert len({r.message_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1


def test_an_odd_message_is_made_storable_and_its_batch_stored_as_sent(database_url):
    """NUL bytes and over-long fields in one message of a batch: that message is stored cut to size (an over-long
    control id as its SHA-256), the others exactly as they were."""
    from sqlalchemy import text

    from smartcare.platform.db import session_scope

    good = [message(f"G{uuid.uuid4().hex}") for _ in range(3)]
    long_control = "C" * 250 + uuid.uuid4().hex
    odd = message(long_control, sender="mllp:" + "X" * 300)
    odd.message_type, odd.content_type, odd.facility_code = "ADT^\x00A04", "t" * 150, "F\x00"

    async def run():
        committer = GroupCommitter()
        try:
            return await asyncio.gather(*(committer.submit(m) for m in (good[0], odd, *good[1:])))
        finally:
            await committer.close()

    stored = asyncio.run(run())
    with session_scope() as s:
        rows = {r.id: r for r in s.execute(text(
            "SELECT id, sender, control_id, message_type, content_type, facility_code FROM exchange.message "
            "WHERE id = ANY(:ids)"), {"ids": [r.message_id for r in stored]})}
    assert len(rows) == 4
    for m, r in zip((good[0], *good[1:]), (stored[0], *stored[2:]), strict=True):
        assert (rows[r.message_id].sender, rows[r.message_id].control_id) == (m.sender, m.control_id)
    row = rows[stored[1].message_id]
    assert row.sender == ("mllp:" + "X" * 300)[:100] and row.control_id.startswith("sha256:")
    assert (row.message_type, row.content_type, row.facility_code) == ("ADT^A04", "t" * 100, "F")
