"""``hl7v2.standard_header`` (the hub's quick read of the common form) answers as the full parse does, or not at all."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.conftest import SHARED
from smartcare.standards import hl7v2
from smartcare.standards.mllp import decode_text

SAMPLES = SHARED / "hl7v2-samples"
NOW = datetime(2026, 11, 28, 8, 0, tzinfo=timezone.utc)

BASE = ("MSH|^~\\&|HIS|500103H001|SMARTCARE|REGION|20261128132128||ADT^A04^ADT_A01|C-1|P|2.5|||||CHN|UNICODE UTF-8\r"
        "EVN|A04|20261128132128\rPID|1||MZ1^^^500103H001^MR||张^三丰||19800101|M\r")


def generic(raw: bytes) -> hl7v2.Message | None:
    """The full path: decode the whole message, parse and check it (None when the checks refuse it)."""
    try:
        return hl7v2.parse_and_check(decode_text(raw))
    except hl7v2.Hl7Error:
        return None


def assert_same(raw: bytes) -> hl7v2.Header | None:
    quick = hl7v2.standard_header(raw)
    msg = generic(raw)
    if quick is not None:
        assert msg is not None, "the quick read accepted what the checks refuse"
        full = hl7v2.header_of(msg)
        assert quick == full
        # what the hub routes and dedupes by, as the parsed message reads it (decoded)
        assert (quick.message_type, quick.trigger, quick.control_id, quick.sending_facility) == (
            msg.message_type, msg.trigger_event, msg.control_id, msg.sending_facility)
        for code in ("AA", "AE"):  # and the ACKs built from either are the same text
            assert hl7v2.build_ack(quick, code=code, control_id="SC1", now=NOW) == hl7v2.build_ack(
                full, code=code, control_id="SC1", now=NOW)
    return quick


def test_every_real_sample_is_read_alike_or_left_to_the_parser():
    samples = sorted(SAMPLES.glob("*.hl7"))
    quick = [assert_same(p.read_bytes()) for p in samples]
    assert len(samples) >= 30
    assert sum(q is not None for q in quick) >= 10, "the common form should cover many real senders"


def test_the_demo_message_takes_the_quick_read():
    head = assert_same(BASE.encode())
    assert head is not None and (head.message_type, head.trigger, head.control_id) == ("ADT", "A04", "C-1")
    assert head.sending_facility == "500103H001" and head.charset == "UNICODE UTF-8"


CHANGES = [
    lambda m: "\ufeff" + m,                                   # a byte-order mark before MSH
    lambda m: "\r\n" + m,                                     # blank lines before MSH
    lambda m: m.replace("MSH|^~\\&|", "MSH#^~\\&#", 1).replace("|", "#"),  # other separators
    lambda m: m.replace("|^~\\&|", "|^~\\&#|", 1),            # five encoding characters (v2.7 truncation)
    lambda m: m.replace("500103H001|SMART", "5001\\T\\03H001|SMART", 1),  # an escape sequence in MSH
    lambda m: m.replace("HIS|", "医院信息系统|", 1),            # non-ASCII in MSH
    lambda m: m.replace("三丰", "三\x00丰"),                   # a NUL byte in the body
    lambda m: m.replace("UNICODE UTF-8", "UNICODE UTF-16").replace("张^三丰", "ZHANG^SAN\x00"),  # …read as UTF-16
    lambda m: m.replace("|UNICODE UTF-8", "| UNICODE UTF-8 ", 1),  # spaces around the character set
    lambda m: m.replace("ADT^A04^", "AD^A04^", 1),            # type of two letters
    lambda m: m.replace("ADT^A04^ADT_A01", "ADT", 1),         # no trigger event
    lambda m: m.replace("ADT^A04^", "ACK^^", 1),              # an ACK needs no trigger
    lambda m: m.replace("ADT^A04^", "ADT^ A04^", 1),          # whitespace around the trigger
    lambda m: m.replace("|C-1|", "||", 1),                    # no control id
    lambda m: m.replace("|C-1|", "|   |", 1),                 # a blank control id
    lambda m: m.replace("|C-1|", "|C-1 |", 1),                # trailing space in the control id
    lambda m: m.replace("|C-1|", "|C-1~C-2|", 1),             # repeated control id
    lambda m: m.replace("|P|2.5|", "|X|2.5|", 1),             # unknown processing id
    lambda m: m.replace("|P|2.5|", "|p|2.5|", 1),             # lower-case processing id
    lambda m: m.replace("|P|2.5|", "||2.5|", 1),              # no processing id
    lambda m: m.replace("|P|2.5|", "|P^T|2.5|", 1),           # processing mode as a component
    lambda m: m.replace("|P|2.5|", "|P|9.9|", 1),             # unknown version
    lambda m: m.replace("|P|2.5|", "|P|2.5.1^CHN|", 1),       # version with its internationalisation code
    lambda m: m.replace("|P|2.5|", "|P|2.3|", 1),             # an older version: ERR-1 in the ACK
    lambda m: m.replace("|500103H001|", "|500103H001~X|", 1),  # a repeated sending facility
    lambda m: m.replace("|500103H001|", "|500103H001^1.2.3^ISO|", 1),  # a sending facility with components
    lambda m: m.replace("|SMARTCARE|REGION|", "|||", 1),      # no receiver: the ACK names the region
    lambda m: m.replace("HIS|", "H" * 250 + "|", 1),          # a sending application longer than a header keeps
    lambda m: m.replace("|||||CHN|UNICODE UTF-8", "", 1),     # no MSH-18
    lambda m: m.replace("\r", "\n"),                          # LF segment terminators
    lambda m: m.replace("\r", "\r\n"),                        # CRLF segment terminators
    lambda m: m.split("\r")[0],                               # MSH alone, no terminator
    lambda m: m.split("\r")[0][:40],                          # cut off inside MSH
    lambda m: m.replace("MSH|", "MSX|", 1),                   # not MSH at all
]


@pytest.mark.parametrize("change", CHANGES)
def test_each_condition_of_the_common_form(change):
    assert_same(change(BASE).encode("utf-8"))


def test_an_ack_from_its_senders_form_is_the_ack_built_field_by_field(monkeypatch):
    """``build_ack`` keeps, per sender, the ACK cut where its time and control ids go; what it makes of
    that form is what it builds field by field (given ``now``) for every sample and variation."""
    monkeypatch.setattr(hl7v2, "_stamp_now", lambda: hl7v2._stamp(NOW))
    headers = [hl7v2.header_of(decode_text(p.read_bytes())) for p in sorted(SAMPLES.glob("*.hl7"))]
    headers += [hl7v2.header_of(change(BASE)) for change in CHANGES]
    hl7v2._ACK_FORMS.clear()
    for head in headers:
        for code in ("AA", "AE", "AR"):
            for control_id in ("SC1", "SC2^x", "SC1"):  # a form made, used with another id, used again
                expected = hl7v2.build_ack(head, code=code, control_id=control_id, now=NOW)
                assert hl7v2.build_ack(head, code=code, control_id=control_id) == expected, head
    assert len(hl7v2._ACK_FORMS) > 30


def test_a_header_made_by_hand_with_control_characters_is_acknowledged_field_by_field():
    head = hl7v2.Header(sending_application="A\x01B", sending_facility="F", trigger="A01", control_id="C\x03",
                        version="2.5")
    ack = hl7v2.build_ack(head, code="AA", control_id="SC1")
    assert ack.startswith("MSH|^~\\&|SMARTCARE|REGION|A\x01B|F|") and "|ACK^A01^ACK|SC1|P|2.5\rMSA|AA|C\x03\r" in ack
