"""HL7 v2: parsing, header checks and ACKs, driven by the 40 real samples in shared/hl7v2-samples."""

from __future__ import annotations

import csv
import pickle
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import SHARED, shared
from smartcare.standards import hl7v2
from smartcare.standards.hl7v2 import Hl7Error, build_ack, parse, parse_and_check
from smartcare.standards.mllp import decode_text

SAMPLES = SHARED / "hl7v2-samples"
MANIFEST = SAMPLES / "MANIFEST.tsv"
CHINA = timezone(timedelta(hours=8))
NOW = datetime(2024, 1, 15, 12, 0, 5, tzinfo=CHINA)


def _manifest() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    with MANIFEST.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


ROWS = _manifest()


def _params(good: bool) -> list:
    if not ROWS:
        return [pytest.param(None, id="samples-missing")]
    return [pytest.param(row, id=row["file"]) for row in ROWS if (row["expect"] == "AA") == good]


def _text(row: dict[str, str] | None) -> str:
    if row is None:
        shared("hl7v2-samples", "MANIFEST.tsv")  # fails under CI, skips elsewhere
    return decode_text((SAMPLES / row["file"]).read_bytes())


# What each refused sample must be refused for: condition code, position, AR (True) or AE.
BAD = {
    "bad__invalid_encoding_chars__1.hl7": (102, "MSH-2", True),
    "bad__missing_control_id__1.hl7": (101, "MSH-10", False),
    "bad__missing_control_id__2.hl7": (101, "MSH-10", False),
    "bad__missing_message_type__1.hl7": (101, "MSH-9", False),
    "bad__missing_msh__1.hl7": (100, None, True),
    "bad__missing_version__1.hl7": (101, "MSH-12", False),
    "bad__truncated_msh__1.hl7": (201, "MSH-9.2", False),
    "bad__wrong_field_separator__1.hl7": (102, "MSH-1", True),
}


# --- the real samples ---------------------------------------------------------------------------


def test_manifest_has_the_expected_samples() -> None:
    if not ROWS:
        _text(None)
    assert len(ROWS) == 40
    assert sum(row["expect"] == "AA" for row in ROWS) == 32
    assert {row["file"] for row in ROWS if row["expect"] != "AA"} == set(BAD)


@pytest.mark.parametrize("row", _params(good=True))
def test_good_sample_is_accepted(row) -> None:
    msg = parse_and_check(_text(row))
    assert msg.control_id == row["control_id"]
    assert msg.message_type == row["message_type"].split("^")[0]
    assert msg.trigger_event == row["message_type"].split("^")[1]
    assert msg.version == row["version"]
    assert msg.segments[0].id == "MSH"


@pytest.mark.parametrize("row", _params(good=True))
def test_good_sample_ack_parses_back(row) -> None:
    msg = parse_and_check(_text(row))
    ack = parse_and_check(build_ack(msg, code="AA", now=NOW))
    assert ack.value("MSA-1") == "AA"
    assert ack.value("MSA-2") == row["control_id"]
    assert ack.message_type == "ACK"
    assert ack.trigger_event == msg.trigger_event
    assert ack.structure == "ACK"
    assert ack.separators == msg.separators
    assert ack.version == msg.version
    assert ack.field("MSH-5") == msg.field("MSH-3")  # sender and receiver swapped
    assert ack.field("MSH-6") == msg.field("MSH-4")
    assert ack.get("ERR") is None


@pytest.mark.parametrize("row", _params(good=False))
def test_bad_sample_is_refused_with_an_err_that_names_the_problem(row) -> None:
    text = _text(row)
    with pytest.raises(Hl7Error) as info:
        parse_and_check(text)
    error = info.value
    code, position, reject = BAD[row["file"]]
    assert (error.code, error.position, error.reject) == (code, position, reject)
    assert error.ack_code == ("AR" if reject else "AE")

    ack = parse_and_check(build_ack(text, code=error.ack_code, error=error, now=NOW))
    assert ack.value("MSA-1") == error.ack_code
    err = ack.get("ERR")
    assert err is not None
    if ack.version in ("2.1", "2.2", "2.3", "2.3.1", "2.4"):  # ERR-1 (ELD), the detail in MSA-3
        assert err.value("1.4.1") == str(code)
        assert err.value("1.4.2") == hl7v2.ERROR_CONDITIONS[code]
        assert err.value("1.1") == (error.segment or "")
        assert ack.value("MSA-3") == error.detail
    else:  # ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 detail
        assert ack.value("ERR-3.1") == str(code)
        assert ack.value("ERR-3.3") == "HL70357"
        assert ack.value("ERR-4") == "E"
        assert ack.value("ERR-8") == error.detail
        assert ack.value("ERR-2.1") == (error.segment or "")
    if position:
        field = position.split("-")[1].split(".")[0]
        assert field in error.detail.split()[0]  # the detail starts with the position it talks about
    if row["control_id"]:
        assert ack.value("MSA-2") == row["control_id"]


def test_refusal_of_salvageable_samples_echoes_their_control_id() -> None:
    # MSH-10 can still be read in both, though the separators are broken: the sender can match the AR.
    for name, control_id in (("bad__invalid_encoding_chars__1.hl7", "72313573"),
                             ("bad__wrong_field_separator__1.hl7", "24916560")):
        text = _text({"file": name} if ROWS else None)
        ack = parse(build_ack(text, code="AR", now=NOW))
        assert ack.value("MSA-2") == control_id


def test_sample_with_chinese_header_and_name() -> None:
    row = next((r for r in ROWS if r["file"].startswith("wsyqn6")), None)
    msg = parse_and_check(_text(row))
    assert msg.sending_application == "发送系统"
    assert msg.value("PID-5.1") == "张三"


def test_sample_with_exotic_separators() -> None:
    row = next((r for r in ROWS if r["file"] == "hapi-hl7v2__ADT_A24__1.hl7"), None)
    msg = parse_and_check(_text(row))
    assert msg.separators == hl7v2.Separators(field="^", component="~", repetition="|", escape="\\", subcomponent="&")
    assert msg.field("MSH-9") == "ADT~A24"
    assert len(msg.all("PID")) == 2
    assert msg.value("PID[2]-3.1") == "22222"
    assert msg.repetitions("PID-3.1") == ["11111"]  # '~' is the component separator here
    assert msg.value("PID-3.5") == "NI"
    assert msg.value("PID-3[1].4.3") == "0363"
    assert msg.value("PID-5.2") == "JOHN"


def test_sample_with_hex_and_escaped_escapes() -> None:
    row = next((r for r in ROWS if r["file"] == "nhapi__MDM_T02__1.hl7"), None)
    value = parse_and_check(_text(row)).value("OBX-5")
    assert value.startswith("&#39;Thirty days have September,\rApril\nJune,\nand November.\n")
    assert "\\X0A\\all the rest" in value  # \E\X0A\E\ is the text \X0A\, not a line feed
    assert value.endswith("&nbsp;31.&#39")


def test_sample_with_a_fifth_encoding_character() -> None:
    row = next((r for r in ROWS if r["file"] == "hl7apy__RSP_K22__1.hl7"), None)
    msg = parse_and_check(_text(row))
    assert msg.separators.truncation == "#"
    assert msg.field("MSH-2") == "^~\\&#"
    assert msg.value("PID-3.4.2") == "1.3.6.1.4.1.21367.2011.2.5.17"


# --- parsing ------------------------------------------------------------------------------------

ADT = (
    "MSH|^~\\&|HIS|H001^医院|SMARTCARE|REGION|20240115120000||ADT^A01^ADT_A01|MSG0001|P|2.5||||||UNICODE UTF-8\r"
    "EVN|A01|20240115120000\r"
    "PID|1||P123^^^H001^MR~110105194912310021^^^CHN^NNCHN||张^三~ZHANG^SAN||19491231|M|||"
    "1 Main St\\T\\Co\\S\\Unit 2^^Beijing\r"
    "OBX|1|ST|A||first\r"
    "OBX|2|ST|B||second\\F\\part\r"
)


def test_msh_numbering_follows_the_standard() -> None:
    msg = parse(ADT)
    assert msg.field("MSH-1") == "|"
    assert msg.field("MSH-2") == "^~\\&"
    assert msg.value("MSH-2") == "^~\\&"  # never unescaped or split
    assert msg.value("MSH-3") == "HIS"
    assert msg.value("MSH-4.2") == "医院"
    assert msg.value("MSH-9.1") == "ADT"
    assert msg.value("MSH-9.2") == "A01"
    assert msg.value("MSH-10") == "MSG0001"
    msh = msg.get("MSH")
    assert msh is not None and msh.fields[:4] == ["MSH", "|", "^~\\&", "HIS"]
    assert msh.value(12) == "2.5"
    assert len(msh) == 18


def test_header_properties() -> None:
    msg = parse(ADT)
    assert (msg.message_type, msg.trigger_event, msg.structure) == ("ADT", "A01", "ADT_A01")
    assert msg.control_id == "MSG0001"
    assert msg.version == "2.5"
    assert msg.processing_id == "P"
    assert msg.sending_application == "HIS"
    assert msg.sending_facility == "H001^医院"
    assert msg.receiving_application == "SMARTCARE"
    assert msg.receiving_facility == "REGION"
    assert msg.timestamp == "20240115120000"
    assert msg.charset == "UNICODE UTF-8"


def test_paths_components_and_occurrences() -> None:
    msg = parse(ADT)
    assert msg.value("PID-5.1") == "张"
    assert msg.value("PID-5.2") == "三"
    assert msg.value("PID-5.9") == ""
    assert msg.value("PID-99") == ""
    assert msg.value("ZZZ-1") == ""
    assert msg.value("OBX-5") == "first"
    assert msg.value("OBX[2]-5") == "second|part"
    assert msg.value("OBX(2)-5") == "second|part"
    assert msg.field("OBX[2]-5") == "second\\F\\part"
    assert msg.value("OBX[3]-5") == ""
    assert [seg.value(3) for seg in msg.all("OBX")] == ["A", "B"]
    assert msg.get("OBX", 2) is msg.all("OBX")[1]
    assert msg.get("NK1") is None
    assert msg.value("pid-3.1") == "P123"


def test_repetitions() -> None:
    msg = parse(ADT)
    assert msg.field("PID-3") == "P123^^^H001^MR~110105194912310021^^^CHN^NNCHN"
    assert msg.value("PID-3") == "P123^^^H001^MR"
    assert msg.repetitions("PID-3.1") == ["P123", "110105194912310021"]
    assert msg.repetitions("PID-3.5") == ["MR", "NNCHN"]
    assert msg.repetitions("PID-3") == ["P123^^^H001^MR", "110105194912310021^^^CHN^NNCHN"]
    assert msg.value("PID-3[2].1") == "110105194912310021"
    assert msg.value("PID-3(2).4") == "CHN"
    assert msg.field("PID-3[2]") == "110105194912310021^^^CHN^NNCHN"
    assert msg.value("PID-3[3].1") == ""
    assert msg.repetitions("PID-5.1") == ["张", "ZHANG"]
    assert msg.repetitions("PID-4") == []
    assert msg.repetitions("PID-1") == ["1"]
    with pytest.raises(ValueError, match="repetition"):
        msg.repetitions("PID-3[2]")


def test_values_are_unescaped_on_access_only() -> None:
    msg = parse(ADT)
    assert msg.field("PID-11.1") == "1 Main St\\T\\Co\\S\\Unit 2"
    assert msg.value("PID-11.1") == "1 Main St&Co^Unit 2"
    assert msg.value("PID-11.3") == "Beijing"


@pytest.mark.parametrize("raw, expected", [
    ("a\\F\\b", "a|b"),
    ("a\\S\\b\\T\\c\\R\\d\\E\\e", "a^b&c~d\\e"),
    ("line\\X0D\\\\X0A\\next", "line\r\nnext"),
    ("caf\\X00E9\\", "café"),  # 16-bit code unit written as four hex digits
    ("\\XE4B8AD\\\\XE69687\\", "中文"),  # UTF-8 bytes
    ("\\XD6D0\\", "中"),  # GB18030 bytes
    ("\\XE9\\", "é"),  # Latin-1 byte
    ("\\.br\\ \\H\\bold\\N\\ \\.sp\\ \\Z123\\ \\C2842\\", "\\.br\\ \\H\\bold\\N\\ \\.sp\\ \\Z123\\ \\C2842\\"),
    ("\\.br\\\\F\\", "\\.br\\|"),
    ("\\E\\X0A\\E\\", "\\X0A\\"),
    ("C:\\temp", "C:\\temp"),  # unterminated: left as it is
    ("\\X0\\ \\XZZ\\ \\X\\", "\\X0\\ \\XZZ\\ \\X\\"),  # not hex data
    ("no escapes", "no escapes"),
])
def test_unescape(raw: str, expected: str) -> None:
    assert hl7v2.unescape(raw) == expected


def test_unescape_uses_the_message_escape_character() -> None:
    seps = hl7v2.Separators(escape="$", subcomponent="\\")
    assert hl7v2.unescape("a$F$b$T$c$P$", seps) == "a|b\\c$P$"
    assert hl7v2.unescape("x$P$", hl7v2.Separators(truncation="#")) == "x$P$"
    assert hl7v2.unescape("x\\P\\", hl7v2.Separators(truncation="#")) == "x#"


def test_escape_round_trips() -> None:
    text = "a|b^c&d~e\\f\r\ng"
    escaped = hl7v2.escape(text)
    assert not set("|^&~\r\n") & set(escaped)
    assert hl7v2.unescape(escaped) == text


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n", "\n\n", "\r\n\r\n"])
def test_segment_separators(sep: str) -> None:
    msg = parse(sep.join(["MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.4", "EVN|A04", "PID|1||42", ""]))
    assert [seg.id for seg in msg] == ["MSH", "EVN", "PID"]
    assert msg.value("PID-3") == "42"


def test_leading_bom_and_whitespace_are_ignored() -> None:
    msg = parse_and_check("\ufeff \r\nMSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.4\r")
    assert msg.control_id == "1"


def test_segment_repr_hides_content() -> None:
    msg = parse(ADT)
    assert "张" not in repr(msg.get("PID")) and "张" not in repr(msg)


@pytest.mark.parametrize("path", ["PID", "PID-0", "PID-3.0", "PID3", "PID-x", "PID-3[0]"])
def test_bad_paths_say_what_was_expected(path: str) -> None:
    with pytest.raises(ValueError, match="HL7 path"):
        parse(ADT).value(path)


def test_parse_wants_text() -> None:
    with pytest.raises(TypeError, match="decode"):
        parse(ADT.encode())  # type: ignore[arg-type]


def test_gb18030_message() -> None:
    text = ("MSH|^~\\&|发送系统|第一人民医院|SMARTCARE|REGION|20240115120000||ADT^A01|GB1|P|2.4||||||GB 18030-2000\r"
            "PID|1||H0001^^^H001^MR||欧阳^娜娜||19800115|F|||北京市朝阳区\r")
    data = text.encode("gb18030")
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    for decoded in (decode_text(data), decode_text(data, "GB 18030-2000"), hl7v2.decode_bytes(data, "GBK")):
        msg = parse_and_check(decoded)
        assert msg.sending_facility == "第一人民医院"
        assert msg.value("PID-5.1") == "欧阳"
        assert msg.value("PID-11") == "北京市朝阳区"
        assert msg.charset == "GB 18030-2000"


# --- validation ---------------------------------------------------------------------------------

MSH = "MSH|^~\\&|HIS|H001|SMARTCARE|REGION|20240115120000||{type}|{cid}|{pid}|{ver}"


def _msh(type_: str = "ADT^A01", cid: str = "C1", pid: str = "P", ver: str = "2.5") -> str:
    return MSH.format(type=type_, cid=cid, pid=pid, ver=ver) + "\rPID|1\r"


def _error(text: str) -> Hl7Error:
    with pytest.raises(Hl7Error) as info:
        parse_and_check(text)
    return info.value


@pytest.mark.parametrize("text, code, position, reject, words", [
    ("", 100, None, True, "empty"),
    ("   \r\n", 100, None, True, "empty"),
    ("PID|1||42\r", 100, None, True, "must start with an MSH"),
    ("BHS|^~\\&|A\rMSH|^~\\&|A\r", 100, None, True, "batch"),
    ("MSH", 102, "MSH-1", True, "missing"),
    ("MSH\rPID|1", 102, "MSH-1", True, "missing"),
    ("MSHA^~\\&A", 102, "MSH-1", True, "letter"),
    ("MSH ^~\\& ", 102, "MSH-1", True, "space"),
    ("MSH|^~\\|A|B", 102, "MSH-2", True, "3 characters"),
    ("MSH|^~\\&#!|A|B", 102, "MSH-2", True, "6 characters"),
    ("MSH|^^\\&|A|B", 102, "MSH-2", True, "repeat"),
    ("MSH|^~A&|A|B", 102, "MSH-2", True, "letters"),
    (_msh(type_=""), 101, "MSH-9", False, "message type"),
    (_msh(type_="ADT"), 101, "MSH-9.2", False, "(trigger event) is missing"),
    (_msh(type_="ADT^"), 101, "MSH-9.2", False, "(trigger event) is missing"),
    (_msh(type_="ADT_A01"), 200, "MSH-9.1", False, "not a message type"),
    (_msh(type_="ADT^A1"), 201, "MSH-9.2", False, "not an event code"),
    (_msh(cid=""), 101, "MSH-10", False, "control id"),
    (_msh(cid="   "), 101, "MSH-10", False, "control id"),
    (_msh(pid="X"), 202, "MSH-11", False, "processing id"),
    (_msh(ver=""), 101, "MSH-12", False, "version"),
    (_msh(ver="2.9"), 203, "MSH-12", False, "'2.9'"),
    (_msh(ver="3.0"), 203, "MSH-12", False, "'3.0'"),
    (_msh(ver="V2.4"), 203, "MSH-12", False, "'V2.4'"),
    ("MSH|^~\\&|A|B|C|D|20240101||ORU^R", 201, "MSH-9.2", False, "cut off"),
])
def test_checks(text: str, code: int, position: str | None, reject: bool, words: str) -> None:
    error = _error(text)
    assert (error.code, error.position, error.reject) == (code, position, reject)
    assert words in str(error)
    assert error.condition == hl7v2.ERROR_CONDITIONS[code]


@pytest.mark.parametrize("text", [
    _msh(pid=""),
    _msh(pid="T^I"),
    _msh(pid="d"),
    _msh(ver="2.4^CHN"),  # VID with an internationalization code
    _msh(ver="2.8.2"),
    _msh(ver="2.1", type_="ADT"),  # v2.1 had no trigger event in MSH-9
    _msh(type_="ACK"),
    _msh(type_="ZXX^Z01"),
    _msh(type_=" ADT ^ A01 "),
    # Lenient on everything past the header: no EVN, Z-segments, junk lines, unescaped '&'.
    MSH.format(type="ADT^A01", cid="C1", pid="P", ver="2.3") + "\rZPD|x\rPID|1||42||A & B\r\rjunk line\r",
])
def test_checks_are_lenient(text: str) -> None:
    parse_and_check(text)


def test_errors_quote_header_fields_but_keep_them_short() -> None:
    error = _error(_msh(type_="X" * 100 + "^A01"))
    assert "X" * 24 + "..." in str(error) and "X" * 30 not in str(error)


def test_error_pickles() -> None:
    error = _error(_msh(cid=""))
    again = pickle.loads(pickle.dumps(error))
    assert (again.code, again.position, again.reject, str(again)) == (101, "MSH-10", False, str(error))


# --- ACKs ---------------------------------------------------------------------------------------


def test_ack_exact_form() -> None:
    msg = parse(_msh())
    assert build_ack(msg, code="AA", control_id="ACK1", now=NOW) == (
        "MSH|^~\\&|SMARTCARE|REGION|HIS|H001|20240115120005+0800||ACK^A01^ACK|ACK1|P|2.5\r"
        "MSA|AA|C1\r"
    )


def test_ack_with_error_v25() -> None:
    text = _msh(cid="C9", ver="2.5.1", pid="T")
    error = Hl7Error(103, "PV1-2 patient class 'Q' is not in table 0004", position="PV1-2")
    ack = build_ack(text, code="AE", error=error, control_id="ACK2", now=NOW)
    assert ack == (
        "MSH|^~\\&|SMARTCARE|REGION|HIS|H001|20240115120005+0800||ACK^A01^ACK|ACK2|T|2.5.1\r"
        "MSA|AE|C9\r"
        "ERR||PV1^1^2|103^Table value not found^HL70357|E||||PV1-2 patient class 'Q' is not in table 0004\r"
    )


def test_ack_with_error_before_v25_uses_err1_and_msa3() -> None:
    error = Hl7Error(101, "PID-3 is empty", position="PID-3.1")
    ack = build_ack(_msh(ver="2.3"), code="AE", error=error, control_id="ACK3", now=NOW)
    assert ack.split("\r")[1:] == ["MSA|AE|C1|PID-3 is empty", "ERR|PID^1^3^101&Required field missing&HL70357", ""]


def test_ack_text_is_escaped() -> None:
    ack = parse(build_ack(_msh(), code="AR", text="bad | field ^ & ~ \\ here\r"))
    assert ack.value("ERR-8") == "bad | field ^ & ~ \\ here\r"
    assert ack.value("ERR-3.1") == "207"
    assert len(ack.segments) == 3


def test_ack_error_and_text_together() -> None:
    error = _error(_msh(cid=""))
    ack = parse(build_ack(_msh(cid=""), code="AE", error=error, text="see the interface spec"))
    assert ack.value("ERR-8") == f"{error.detail}; see the interface spec"
    ack = parse(build_ack(_msh(cid=""), code="AE", error=error, text=error.detail))
    assert ack.value("ERR-8") == error.detail


def test_ack_aa_with_warning_or_information() -> None:
    warn = parse(build_ack(_msh(), code="AA", error=Hl7Error(102, "PID-7 is not a date", position="PID-7")))
    assert (warn.value("MSA-1"), warn.value("ERR-4"), warn.value("ERR-3.1")) == ("AA", "W", "102")
    info = parse(build_ack(_msh(), code="AA", text="stored as message 42"))
    assert (info.value("ERR-4"), info.value("ERR-3.1"), info.value("ERR-8")) == ("I", "0", "stored as message 42")
    old = parse(build_ack(_msh(ver="2.4"), code="AA", text="stored"))
    assert old.value("MSA-3") == "stored" and old.get("ERR") is None


def test_ack_keeps_charset_and_separators() -> None:
    text = "MSH#$*!%|A|B|C|D|20240101||ADT$A04|77|P|2.4||||||UNICODE UTF-8\rPID#1".replace("|", "#")
    msg = parse_and_check(text)
    ack = parse_and_check(build_ack(msg, code="AE", text="x#y$z", now=NOW))
    assert ack.separators == msg.separators
    assert ack.field("MSH-9") == "ACK$A04$ACK"
    assert ack.charset == "UNICODE UTF-8"
    assert ack.value("MSA-2") == "77"
    assert ack.value("MSA-3") == "x#y$z"


def test_ack_for_unknown_version_is_25() -> None:
    ack = parse(build_ack(_msh(ver="9.9"), code="AE", error=_error(_msh(ver="9.9"))))
    assert ack.version == "2.5"
    assert ack.value("ERR-3.1") == "203"


@pytest.mark.parametrize("raw", ["", "garbage \x0b\x1c bytes", "PID|1||42", "MSH", "MSH|^~|x", "\x00\x01\x02",
                                 "MSH^^^^^^^^^^^^", "MSH|\x0b~\\&|A\x1c|B|C|D|E||ADT^A01|ID\x0b1|P|2.4"])
def test_ack_for_unreadable_input(raw: str) -> None:
    ack_text = build_ack(raw, code="AR", text="bad MLLP frame", now=NOW)
    assert "\x0b" not in ack_text and "\x1c" not in ack_text
    ack = parse_and_check(ack_text)
    assert ack.field("MSH-2") == "^~\\&"
    assert ack.version in hl7v2.KNOWN_VERSIONS
    assert ack.value("MSA-1") == "AR"
    assert ack.get("ERR") is not None


def test_ack_from_bytes() -> None:
    ack = parse(build_ack(_msh().encode("utf-8"), code="AA"))
    assert ack.value("MSA-2") == "C1"


def test_ack_control_ids_are_new_each_time() -> None:
    ids = {parse(build_ack(_msh(), code="AA")).control_id for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) <= 20 for i in ids)


def test_ack_rejects_unknown_codes() -> None:
    with pytest.raises(ValueError, match="AA, AE, AR"):
        build_ack(_msh(), code="OK")  # type: ignore[arg-type]


def test_ack_timestamp_defaults_to_china_time() -> None:
    ack = parse(build_ack(_msh(), code="AA"))
    assert ack.timestamp.endswith("+0800") and len(ack.timestamp) == 19
    naive = parse(build_ack(_msh(), code="AA", now=datetime(2024, 1, 2, 3, 4, 5)))
    assert naive.timestamp == "20240102030405"


# --- character sets -----------------------------------------------------------------------------


@pytest.mark.parametrize("charset, codec", [
    ("UNICODE UTF-8", "utf-8"), ("GB 18030-2000", "gb18030"), ("8859/1", "latin-1"), ("8859/15", "iso8859-15"),
    ("ASCII", "ascii"), ("ISO IR100", "latin-1"), ("gbk", "gbk"), ("UTF-8", "utf-8"), ("8859", "latin-1"),
    ("UNICODE UTF-8~GB 18030-2000", "utf-8"), ("", None), (None, None), ("EBCDIC", None),
])
def test_codec_for_charset(charset, codec) -> None:
    assert hl7v2.codec_for_charset(charset) == codec
