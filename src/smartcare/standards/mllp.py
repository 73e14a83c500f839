"""MLLP, HL7's Minimal Lower Layer Protocol: each message travels as <VT> payload <FS><CR> on a TCP stream.

A read from a socket returns whatever has arrived: half a frame, three frames, a frame and the
start of the next. ``FrameDecoder`` rebuilds the frames whatever the chunking (one byte at a time
included) and turns each way a sender gets the framing wrong into a *bad frame* (``ok=False``)
that keeps the bytes received, so the hub can store them for inspection and answer with an AR
instead of hanging or silently dropping data. Memory stays bounded by ``max_size``: an oversized
frame is reported as soon as it crosses the limit, and the rest is skipped up to the next start
block.

``decode_text`` turns a payload into text for ``hl7v2.parse``: MLLP itself says nothing about
character sets, and hospital systems send UTF-8, GB18030 and Latin-1, labelled or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from smartcare.standards.hl7v2 import decode_bytes

__all__ = [
    "CARRIAGE_RETURN",
    "DEFAULT_MAX_SIZE",
    "END_BLOCK",
    "START_BLOCK",
    "Frame",
    "FrameDecoder",
    "decode_text",
    "frame",
    "sniff_charset",
]

START_BLOCK: Final = b"\x0b"
END_BLOCK: Final = b"\x1c"
CARRIAGE_RETURN: Final = b"\r"
DEFAULT_MAX_SIZE: Final = 16 * 1024 * 1024

_VT, _FS, _CR = 0x0B, 0x1C, 0x0D
_OUTSIDE, _INSIDE, _AFTER_END, _SKIPPING = range(4)
_BLANK: Final = b" \t\r\n\x00"
_END: Final = END_BLOCK + CARRIAGE_RETURN


@dataclass(slots=True)  # not frozen: one for every message, and a frozen one costs three times as much to make
class Frame:
    """One frame: ``payload`` is the message bytes, ``raw`` the bytes as received, blocks included.

    A bad frame (``ok=False``) says why in ``problem``; its payload is what could be told apart
    (the garbage itself, or the message bytes before the framing went wrong). For an oversized
    frame ``raw`` holds only the bytes up to the limit.
    """

    payload: bytes
    ok: bool = True
    problem: str | None = None
    raw: bytes = b""


def frame(payload: bytes) -> bytes:
    """Wrap one message in MLLP blocks."""
    if isinstance(payload, str):
        raise TypeError("frame() takes bytes: encode the message first, e.g. ack.encode('utf-8')")
    if START_BLOCK in payload or END_BLOCK in payload:
        raise ValueError("the payload contains an MLLP block character (0x0B or 0x1C) and cannot be framed")
    return START_BLOCK + payload + _END


class FrameDecoder:
    """Incremental MLLP decoder for one connection: ``feed`` each chunk read, ``close`` at end of stream.

    Whitespace between frames (a stray CR or LF after <FS><CR>, common in the field) is ignored;
    other bytes outside a frame are reported as "bytes outside a frame", one bad frame per run up
    to the next start block (a run longer than ``max_size`` in pieces of ``max_size + 1`` bytes).
    The frames returned never depend on how the stream was chunked.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1 byte")
        self.max_size = max_size
        self._state = _OUTSIDE
        self._buf = bytearray()  # the current frame from its start block, or the bytes outside any frame

    @property
    def pending(self) -> int:
        """Bytes held for a frame (or garbage) not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data`` (good and bad, in the order they ended)."""
        if not isinstance(data, bytes):
            data = bytes(data)
        n = len(data)
        if (self._state == _OUTSIDE and not self._buf and data[:1] == START_BLOCK and data.endswith(_END)
                and data.find(END_BLOCK, 1) == n - 2 and data.find(START_BLOCK, 1) < 0 and n - 3 <= self.max_size):
            # nearly every read of a sender that waits for its ACKs: exactly one whole frame, what the
            # general loop below would make of it, at half the cost
            return [Frame(data[1:-2], True, None, data)]
        out: list[Frame] = []
        view = memoryview(data)
        buf = self._buf
        pos = 0
        while pos < n:
            state = self._state
            if state == _INSIDE:
                stop = _first(data, pos, _FS, _VT)
                end = n if stop < 0 else stop
                room = self.max_size + 1 - len(buf)  # payload bytes still allowed (buf starts with VT)
                if end - pos > room:
                    buf += view[pos:pos + room + 1]
                    out.append(Frame(bytes(buf[1:]), False, f"frame larger than {self.max_size} bytes", bytes(buf)))
                    buf = self._buf = bytearray()
                    self._state = _SKIPPING
                    pos += room + 1
                    continue
                buf += view[pos:end]
                if stop < 0:
                    break
                if data[stop] == _VT:
                    out.append(Frame(bytes(buf[1:]), False, "start block inside a frame", bytes(buf)))
                    buf = self._buf = bytearray(START_BLOCK)
                else:
                    buf.append(_FS)
                    self._state = _AFTER_END
                pos = stop + 1
            elif state == _AFTER_END:
                if data[pos] == _CR:
                    buf.append(_CR)
                    out.append(Frame(bytes(buf[1:-2]), True, None, bytes(buf)))
                    pos += 1
                else:  # the byte is not consumed: it may start the next frame
                    out.append(Frame(bytes(buf[1:-1]), False, "end block 0x1C not followed by 0x0D", bytes(buf)))
                buf = self._buf = bytearray()
                self._state = _OUTSIDE
            elif state == _OUTSIDE:
                start = data.find(START_BLOCK, pos)
                end = n if start < 0 else start
                buf += view[pos:end]
                while len(buf) > self.max_size:  # cut long garbage at fixed sizes, whatever the chunking
                    piece = bytes(buf[:self.max_size + 1])
                    del buf[:self.max_size + 1]
                    if piece.strip(_BLANK):
                        out.append(Frame(piece, False, "bytes outside a frame", piece))
                if start < 0:
                    break
                self._garbage(out)
                buf = self._buf = bytearray(START_BLOCK)
                self._state = _INSIDE
                pos = start + 1
            else:  # _SKIPPING the rest of an oversized frame
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    break
                self._state = _OUTSIDE
                pos = start
        return out

    def close(self) -> list[Frame]:
        """End of stream: whatever is still buffered, as bad frames. The decoder is reset."""
        out: list[Frame] = []
        buf = self._buf
        if self._state == _OUTSIDE:
            self._garbage(out)
        elif self._state == _INSIDE:
            out.append(Frame(bytes(buf[1:]), False, "connection closed inside a frame", bytes(buf)))
        elif self._state == _AFTER_END:
            out.append(Frame(bytes(buf[1:-1]), False, "end block 0x1C not followed by 0x0D", bytes(buf)))
        self._buf = bytearray()
        self._state = _OUTSIDE
        return out

    def _garbage(self, out: list[Frame]) -> None:
        buf = self._buf
        if buf.strip(_BLANK):
            out.append(Frame(bytes(buf), False, "bytes outside a frame", bytes(buf)))
        self._buf = bytearray()


def _first(data: bytes, pos: int, a: int, b: int) -> int:
    """Index of the first ``a`` or ``b`` byte from ``pos``, -1 when neither occurs."""
    i, j = data.find(a, pos), data.find(b, pos)
    if i < 0:
        return j
    return i if j < 0 or i < j else j


# --- character sets -----------------------------------------------------------------------------

_LINE_END = re.compile(rb"[\r\n]")


def sniff_charset(payload: bytes) -> str | None:
    """MSH-18 read straight from the bytes (first repetition), None when absent or unreadable.

    Best effort: a GBK/GB18030 character in MSH-3…MSH-17 can contain the byte 0x7C ('|') and shift
    the count; ``decode_bytes`` falls back sensibly when the answer is wrong.
    """
    if payload[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UNICODE UTF-16"
    head = payload[:4096].lstrip(b"\xef\xbb\xbf" + _BLANK)
    if not head.startswith(b"MSH") or len(head) < 9:
        return None
    sep = head[3:4]
    line = _LINE_END.split(head, maxsplit=1)[0]
    fields = line.split(sep)  # fields[1] is MSH-2, so fields[k] is MSH-(k+1)
    if len(fields) < 18:
        return None
    repetition = fields[1][1:2] or b"~"
    value = fields[17].split(repetition, 1)[0].decode("latin-1").strip()
    return value or None


def decode_text(payload: bytes, charset_hint: str | None = None) -> str:
    """A payload as text: UTF-8 first, then GB18030 (Chinese hospitals), then Latin-1.

    ``charset_hint`` is an MSH-18 value ("UNICODE UTF-8", "GB 18030-2000", "8859/1" …); without
    one, MSH-18 is read from the payload. A multi-byte declaration is tried first; a single-byte
    one only after strict UTF-8, because UTF-8 labelled "8859/1" is common and Latin-1 would turn
    it into mojibake without an error (see ``hl7v2.decode_bytes``).
    """
    return decode_bytes(bytes(payload), charset_hint or sniff_charset(payload))
