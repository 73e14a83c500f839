"""The message store writes its batch arrays in PostgreSQL's binary format itself: PostgreSQL reads them back as sent."""

from __future__ import annotations

import psycopg

from smartcare.exchange import store


def test_text_and_bytea_arrays_arrive_as_sent(database_url):
    texts = ["ADT^A04", None, "", "张三丰 500103H001", "x" * 5000]
    payloads = [b"MSH|^~\\&|\r", b"", b"\x00\x0b\x1c\xff", None]
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.adapters.register_dumper(store._TextArray, store._TextArrayDumper)
        conn.adapters.register_dumper(store._ByteaArray, store._ByteaArrayDumper)
        got_texts, got_payloads, empty = conn.execute(
            "SELECT %s::varchar[], %s::bytea[], cardinality(%s::text[])",
            (store._texts(texts), store._ByteaArray(store._array(payloads, 17)), store._texts([]))).fetchone()
    assert got_texts == texts
    assert got_payloads == payloads
    assert empty == 0
