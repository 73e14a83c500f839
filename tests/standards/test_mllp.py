"""MLLP framing: the incremental decoder under every chunking and framing mistake, and payload decoding."""

from __future__ import annotations

import random

import pytest

from tests.conftest import SHARED, shared
from smartcare.standards import hl7v2, mllp
from smartcare.standards.mllp import Frame, FrameDecoder, decode_text, frame, sniff_charset

SAMPLES = SHARED / "hl7v2-samples"

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
MSG_A = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||42\r"
MSG_B = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|2|P|2.5\rPID|1||43\r"


def feed_all(decoder: FrameDecoder, data: bytes, sizes: list[int] | None = None) -> list[Frame]:
    """Feed ``data`` in chunks of the given sizes (cycled), or one byte at a time."""
    out: list[Frame] = []
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else 1
        out += decoder.feed(data[pos:pos + size])
        pos += size
        i += 1
    return out


def summary(frames: list[Frame]) -> list[tuple[bool, bytes, str | None]]:
    return [(f.ok, f.payload, f.problem) for f in frames]


def test_frame_wraps_payload() -> None:
    assert frame(MSG_A) == VT + MSG_A + FS + CR
    assert frame(bytearray(b"x")) == b"\x0bx\x1c\r"


def test_frame_refuses_text_and_block_characters() -> None:
    with pytest.raises(TypeError, match="encode"):
        frame("MSH|")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0x0B"):
        frame(b"MSH\x0b|")
    with pytest.raises(ValueError, match="0x1C"):
        frame(b"MSH\x1c|")


def test_one_frame_in_one_chunk() -> None:
    frames = FrameDecoder().feed(frame(MSG_A))
    assert summary(frames) == [(True, MSG_A, None)]
    assert frames[0].raw == frame(MSG_A)


def test_several_frames_in_one_chunk() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(frame(MSG_A) + frame(MSG_B) + frame(b""))
    assert summary(frames) == [(True, MSG_A, None), (True, MSG_B, None), (True, b"", None)]
    assert decoder.pending == 0


def test_byte_at_a_time() -> None:
    stream = frame(MSG_A) + frame(MSG_B)
    decoder = FrameDecoder()
    frames = feed_all(decoder, stream)
    assert summary(frames) == [(True, MSG_A, None), (True, MSG_B, None)]
    assert [f.raw for f in frames] == [frame(MSG_A), frame(MSG_B)]


def test_frame_split_anywhere() -> None:
    stream = frame(MSG_A) + frame(MSG_B)
    for cut in range(1, len(stream)):
        decoder = FrameDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert summary(frames) == [(True, MSG_A, None), (True, MSG_B, None)], cut


def test_random_chunks_of_real_samples() -> None:
    shared("hl7v2-samples")
    payloads = [p.read_bytes() for p in sorted(SAMPLES.glob("*.hl7"))]
    assert len(payloads) == 40
    stream = b"".join(frame(p) for p in payloads)
    rng = random.Random(2026)
    for sizes in ([1], [rng.randint(1, 700) for _ in range(50)], [len(stream)]):
        frames = feed_all(FrameDecoder(), stream, sizes)
        assert [f.payload for f in frames] == payloads
        assert all(f.ok for f in frames)


def test_garbage_before_a_start_block() -> None:
    data = b"hello" + frame(MSG_A)
    for frames in (FrameDecoder().feed(data), feed_all(FrameDecoder(), data)):
        assert summary(frames) == [(False, b"hello", "bytes outside a frame"), (True, MSG_A, None)]
        assert frames[0].raw == b"hello"


def test_garbage_between_frames_is_reported_once_per_run() -> None:
    data = frame(MSG_A) + b"\r\nNOISE 1\x00\xff" + frame(MSG_B)
    frames = feed_all(FrameDecoder(), data, [3, 5, 7])
    assert summary(frames) == [(True, MSG_A, None), (False, b"\r\nNOISE 1\x00\xff", "bytes outside a frame"),
                               (True, MSG_B, None)]


def test_whitespace_between_frames_is_ignored() -> None:
    data = frame(MSG_A) + b"\n" + frame(MSG_B) + b"\r\n\r\n"
    decoder = FrameDecoder()
    assert summary(feed_all(decoder, data)) == [(True, MSG_A, None), (True, MSG_B, None)]
    assert decoder.close() == []


def test_start_block_inside_a_frame() -> None:
    data = VT + b"MSH|half a mess" + frame(MSG_B)
    for frames in (FrameDecoder().feed(data), feed_all(FrameDecoder(), data)):
        assert summary(frames) == [(False, b"MSH|half a mess", "start block inside a frame"), (True, MSG_B, None)]
        assert frames[0].raw == VT + b"MSH|half a mess"


def test_end_block_without_carriage_return() -> None:
    data = VT + MSG_A + FS + b"X" + frame(MSG_B) + VT + b"C" + FS + VT + b"D" + FS + CR
    for frames in (FrameDecoder().feed(data), feed_all(FrameDecoder(), data)):
        assert summary(frames) == [
            (False, MSG_A, "end block 0x1C not followed by 0x0D"),
            (False, b"X", "bytes outside a frame"),
            (True, MSG_B, None),
            (False, b"C", "end block 0x1C not followed by 0x0D"),
            (True, b"D", None),
        ]
        assert frames[0].raw == VT + MSG_A + FS


def test_end_block_followed_by_line_feed() -> None:
    frames = FrameDecoder().feed(VT + MSG_A + FS + b"\n" + frame(MSG_B))
    assert summary(frames) == [(False, MSG_A, "end block 0x1C not followed by 0x0D"), (True, MSG_B, None)]


def test_oversized_frame_is_reported_and_skipped() -> None:
    data = frame(b"x" * 50) + frame(b"small") + frame(b"y" * 10)
    for frames in (FrameDecoder(max_size=10).feed(data), feed_all(FrameDecoder(max_size=10), data),
                   feed_all(FrameDecoder(max_size=10), data, [4, 9])):
        assert summary(frames) == [(False, b"x" * 11, "frame larger than 10 bytes"), (True, b"small", None),
                                   (True, b"y" * 10, None)]
        assert frames[0].raw == VT + b"x" * 11


def test_oversize_without_end_keeps_memory_bounded() -> None:
    decoder = FrameDecoder(max_size=1000)
    frames = decoder.feed(VT)
    for _ in range(100):
        frames += decoder.feed(b"z" * 999)
        assert decoder.pending <= 1001
    assert summary(frames) == [(False, b"z" * 1001, "frame larger than 1000 bytes")]
    assert summary(decoder.feed(b"more" + frame(b"ok"))) == [(True, b"ok", None)]


def test_long_garbage_is_reported_in_pieces() -> None:
    decoder = FrameDecoder(max_size=10)
    frames = decoder.feed(b"g" * 25)
    assert [(f.ok, f.problem, f.raw) for f in frames] == [(False, "bytes outside a frame", b"g" * 11)] * 2
    assert decoder.pending == 3
    assert [f.raw for f in decoder.close()] == [b"ggg"]


def test_chunking_never_changes_the_frames() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        data = bytes(rng.choice(b"\x0b\x1c\rab \n") for _ in range(rng.randint(0, 80)))
        max_size = rng.choice([1, 3, 5, 100])
        decoder = FrameDecoder(max_size=max_size)
        whole = decoder.feed(data) + decoder.close()
        decoder = FrameDecoder(max_size=max_size)
        chunked = feed_all(decoder, data, [rng.randint(1, 7) for _ in range(20)]) + decoder.close()
        assert chunked == whole, (data, max_size)
        assert all(len(f.payload) <= max_size + 1 for f in whole)


def test_a_read_of_exactly_one_frame_decodes_as_any_chunking() -> None:
    """A read holding one whole frame (the common case, decoded by a shortcut) gives what a byte at a time gives,
    at every size around the limit and after what an earlier read left behind."""
    cases = [(VT + b"a" * size + FS + CR, 5) for size in (0, 4, 5, 6, 9)]
    cases += [(VT + b"ab" + VT + b"c" + FS + CR, 100), (VT + b"ab" + FS + b"c" + FS + CR, 100), (VT + b"ab" + FS + CR + CR, 100),
              (VT + b"ab" + FS, 100), (b" " + VT + b"ab" + FS + CR, 100)]
    for data, max_size in cases:
        expected = feed_all(FrameDecoder(max_size=max_size), data)
        assert FrameDecoder(max_size=max_size).feed(data) == expected, data
    for before in (VT + b"half", b"junk", VT + b"x" + FS, VT + b"a" * 9):
        decoder = FrameDecoder(max_size=5)
        decoder.feed(before)
        reference = FrameDecoder(max_size=5)
        reference.feed(before)
        data = VT + b"abc" + FS + CR
        assert decoder.feed(data) == feed_all(reference, data), before


def test_default_maximum_is_16_mib() -> None:
    assert FrameDecoder().max_size == mllp.DEFAULT_MAX_SIZE == 16 * 1024 * 1024
    big = b"MSH|" + b"a" * (mllp.DEFAULT_MAX_SIZE - 4)
    assert summary(FrameDecoder().feed(frame(big)))[0][0] is True
    frames = FrameDecoder().feed(frame(big + b"!"))
    assert frames[0].problem == "frame larger than 16777216 bytes"
    with pytest.raises(ValueError):
        FrameDecoder(max_size=0)


def test_close_reports_what_is_left() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(VT + b"MSH|unfinished") == []
    assert summary(decoder.close()) == [(False, b"MSH|unfinished", "connection closed inside a frame")]
    assert decoder.feed(b"junk") == []
    assert summary(decoder.close()) == [(False, b"junk", "bytes outside a frame")]
    decoder.feed(VT + b"abc" + FS)
    assert summary(decoder.close()) == [(False, b"abc", "end block 0x1C not followed by 0x0D")]
    assert decoder.close() == []


def test_accepts_bytearray_and_memoryview() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(bytearray(frame(MSG_A))) + decoder.feed(memoryview(frame(MSG_B)))
    assert summary(frames) == [(True, MSG_A, None), (True, MSG_B, None)]


# --- decode_text --------------------------------------------------------------------------------

GB_MSG = "MSH|^~\\&|发送系统|人民医院|SMARTCARE|REGION|20240115||ADT^A01|9|P|2.5||||||{cs}\rPID|1||7||李^娜\r"


def test_decode_utf8_first() -> None:
    text = GB_MSG.format(cs="UNICODE UTF-8")
    assert decode_text(text.encode("utf-8")) == text
    assert decode_text(text.encode("utf-8"), "8859/1") == text  # mislabelled UTF-8 is still UTF-8


def test_decode_gb18030_with_and_without_label() -> None:
    labelled = GB_MSG.format(cs="GB 18030-2000")
    assert decode_text(labelled.encode("gb18030")) == labelled  # MSH-18 sniffed from the bytes
    unlabelled = GB_MSG.format(cs="")
    assert decode_text(unlabelled.encode("gb18030")) == unlabelled  # UTF-8 fails, GB18030 fits
    assert decode_text(unlabelled.encode("gb18030"), "GB 18030-2000") == unlabelled


def test_declared_gb18030_wins_over_accidental_utf8() -> None:
    # Two GB18030 characters whose bytes (C2 A3 C2 A3) also happen to be valid UTF-8 ("££").
    data = b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.5||||||GB 18030-2000\rPID|1||1||\xc2\xa3\xc2\xa3\r"
    gb_name = b"\xc2\xa3\xc2\xa3".decode("gb18030")
    assert b"\xc2\xa3\xc2\xa3".decode("utf-8") == "££"
    assert hl7v2.parse(decode_text(data)).value("PID-5") == gb_name
    assert hl7v2.parse(decode_text(data, "UNICODE UTF-8")).value("PID-5") == "££"


def test_decode_latin1() -> None:
    text = "MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.3||||||8859/1\rPID|1||1||Müller^Zoë\r"
    assert decode_text(text.encode("latin-1")) == text  # MSH-18 says 8859/1
    assert decode_text(text.encode("latin-1"), "8859/1") == text
    assert decode_text(b"\xff\xff\xff") == "\xff\xff\xff"  # nothing else fits: Latin-1 never fails


def test_unlabelled_latin1_may_read_as_gb18030() -> None:
    # The documented trade-off of trying GB18030 before Latin-1: label Latin-1 text as such.
    data = "Müller".encode("latin-1")
    assert decode_text(data) != "Müller"
    assert decode_text(data, "8859/1") == "Müller"


def test_decode_utf16_only_when_the_bytes_are() -> None:
    text = GB_MSG.format(cs="UNICODE UTF-16")
    assert decode_text(text.encode("utf-16")) == text
    assert decode_text(text.encode("utf-8"), "UNICODE UTF-16") == text  # mislabelled: UTF-8 bytes


def test_decode_strips_a_utf8_bom() -> None:
    assert decode_text(b"\xef\xbb\xbf" + MSG_A) == MSG_A.decode()


@pytest.mark.parametrize("payload, charset", [
    (MSG_A, None),
    (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.3||||||8859/1\rPID|1", "8859/1"),
    (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.3||||||UNICODE UTF-8~GB 18030-2000|EN\r", "UNICODE UTF-8"),
    (b"\xef\xbb\xbf\r\nMSH|^~\\&|A|B|C|D|1||ADT^A01|1|P|2.3||||||GB 18030-2000", "GB 18030-2000"),
    (b"MSH^~|\\&^A^B^C^D^1^^ADT~A01^1^P^2.3^^^^^^ASCII\r", "ASCII"),
    (b"PID|1", None),
    (b"", None),
])
def test_sniff_charset(payload: bytes, charset: str | None) -> None:
    assert sniff_charset(payload) == charset


def test_real_samples_with_mislabelled_charsets() -> None:
    shared("hl7v2-samples")
    dutch = hl7v2.parse(decode_text((SAMPLES / "node-hl7-client__ADT_A08__1.hl7").read_bytes()))
    assert dutch.charset == "8859/1"
    assert dutch.value("PID-5.1.1").startswith("van Testpatiënt")
    german = hl7v2.parse(decode_text((SAMPLES / "nhapi__ADT_A08__2.hl7").read_bytes()))
    assert german.charset == ""
    assert german.value("IN1-5.1").startswith("Hans-Böckler-Allee")
