"""Masking of personal data, down to the bytes that real loggers write."""

import io
import json
import logging
from collections import namedtuple

import pytest
import structlog

from smartcare.platform.masking import (
    PERSONAL_KEYS,
    MaskingFilter,
    mask_address,
    mask_id_number,
    mask_mapping,
    mask_name,
    mask_phone,
    mask_text,
    mask_value,
    structlog_processor,
)

ID18 = "110105194912310020"
ID18_MASKED = "1101**********0020"
PHONE = "13812348000"
PHONE_MASKED = "138****8000"


def test_mask_id_number() -> None:
    assert mask_id_number("500101199001011234") == "5001**********1234"
    assert mask_id_number("11010519491231002X") == "1101**********002X"
    assert mask_id_number("110105491231002") == "1101*******1002"
    assert mask_id_number(" 500101199001011234 ") == "5001**********1234"
    assert mask_id_number("1234567890") == "12******90"  # a fragment shows less
    assert mask_id_number("12345") == "*****"
    assert mask_id_number("") == ""


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("13812348000", "138****8000"),
        ("138 1234 8000", "138****8000"),
        ("138-1234-8000", "138****8000"),
        ("+86 138 1234 8000", "+86 138****8000"),
        ("+8613812348000", "+86 138****8000"),
        ("8613812348000", "+86 138****8000"),
        ("0086-13812348000", "+86 138****8000"),
        ("023-63881234", "*******1234"),
        ("12345", "*****"),
        ("", ""),
    ],
)
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("张三", "张*"),
        ("欧阳娜娜", "欧***"),
        ("阿不都·热合曼", "阿*****"),
        ("李", "李"),
        ("", ""),
        ("  王小明 ", "王**"),
    ],
)
def test_mask_name(name: str, masked: str) -> None:
    assert mask_name(name) == masked


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("重庆市渝中区解放碑街道88号", "重庆市渝中区****"),
        ("广东省深圳市南山区粤海街道科技园路1号", "广东省深圳市南山区****"),
        ("新疆维吾尔自治区乌鲁木齐市天山区人民路1号", "新疆维吾尔自治区乌鲁木齐市天山区****"),
        ("四川省成都市双流县东升街道", "四川省成都市双流县****"),
        ("上海市浦东新区张江镇", "上海市浦东新区****"),
        ("黑龙江省哈尔滨市道里区中央大街1号", "黑龙江省哈尔滨市道里区****"),
        ("内蒙古自治区呼伦贝尔市鄂温克族自治旗巴彦托海镇", "内蒙古自治区呼伦贝尔市鄂温克族自治旗****"),
        # No district: keep no more than the city, never the compound or street.
        ("北京市幸福小区3栋2单元", "北京市****"),
        ("江苏省昆山市玉山镇", "江苏省昆山市****"),
        ("幸福小区3栋", "****"),
        ("重庆市渝中区", "重庆市渝中区"),
        ("", ""),
    ],
)
def test_mask_address(address: str, masked: str) -> None:
    assert mask_address(address) == masked


def test_mask_text_in_chinese_sentence() -> None:
    text = f"患者张三，身份证号{ID18}，联系电话{PHONE}，已挂号。"
    assert mask_text(text) == f"患者张三，身份证号{ID18_MASKED}，联系电话{PHONE_MASKED}，已挂号。"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("id=11010519491231002X.", "id=1101**********002X."),
        ("id=11010519491231002x", "id=1101**********002x"),
        ("old id 110105491231002 on file", "old id 1101*******1002 on file"),
        ("call +86 138-1234-8000 now", "call +86 138****8000 now"),
        ("tel:8613812348000", "tel:+86 138****8000"),
        ("手机：138 1234 8000。", "手机：138****8000。"),
        (f"{PHONE},{ID18}", f"{PHONE_MASKED},{ID18_MASKED}"),
        (ID18, ID18_MASKED),
    ],
)
def test_mask_text_finds_numbers(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "订单号12345678901234567890已支付",  # 20-digit order number
        "流水号 1101051949123100201",  # 19 digits
        "ts=1717171717171 took 12ms",  # 13-digit millisecond timestamp
        "card 6222021234567890123 charged",  # 19-digit bank card number
        "code 12812348000 is not a mobile",  # 12x is not a mobile prefix
        "1381234800 is ten digits",
        "request 8f0c2d7e-1b2c-4a3e-9f00-123456789abc ok",
        "nothing to see",
        "",
    ],
)
def test_mask_text_leaves_other_numbers_alone(text: str) -> None:
    assert mask_text(text) == text


def test_mask_text_is_idempotent() -> None:
    once = mask_text(f"id {ID18} phone {PHONE}")
    assert mask_text(once) == once


def test_personal_keys() -> None:
    assert {"name", "patient_name", "full_name", "id_number", "id_no", "idcard", "phone",
            "mobile", "address"} <= PERSONAL_KEYS
    assert isinstance(PERSONAL_KEYS, frozenset)


def test_mask_value_by_key() -> None:
    assert mask_value("name", "张三") == "张*"
    assert mask_value("patientName", "欧阳娜娜") == "欧***"
    assert mask_value("id-number", ID18) == ID18_MASKED
    assert mask_value("idcard", ID18) == ID18_MASKED
    assert mask_value("mobile", PHONE) == PHONE_MASKED
    assert mask_value("phone", 13812348000) == PHONE_MASKED
    assert mask_value("address", "重庆市渝中区解放碑街道88号") == "重庆市渝中区****"
    assert mask_value("name", None) is None
    assert mask_value("phone", ["13812348000", "13900001111"]) == [PHONE_MASKED, "139****1111"]


def test_mask_value_by_content() -> None:
    assert mask_value("note", f"call {PHONE}") == f"call {PHONE_MASKED}"
    assert mask_value("note", "张三") == "张三"  # names can only be found by key
    assert mask_value("contact", 13812348000) == PHONE_MASKED
    assert mask_value("count", 42) == 42
    assert mask_value("ratio", 0.5) == 0.5
    assert mask_value("ok", True) is True
    assert mask_value(7, ID18) == ID18_MASKED


def test_mask_mapping_recursive() -> None:
    Pair = namedtuple("Pair", "label value")
    data = {
        "patient": {"name": "张三", "id_number": ID18, "visits": 3},
        "contacts": [{"full_name": "欧阳娜娜", "mobile": PHONE}, f"备用 {PHONE}"],
        "order_no": "12345678901234567890",
        "pair": Pair("id", ID18),
        "address": {"city": "重庆市", "street": "解放碑街道88号"},
        "message": f"registered {ID18}",
    }
    masked = mask_mapping(data)
    assert masked == {
        "patient": {"name": "张*", "id_number": ID18_MASKED, "visits": 3},
        "contacts": [{"full_name": "欧***", "mobile": PHONE_MASKED}, f"备用 {PHONE_MASKED}"],
        "order_no": "12345678901234567890",
        "pair": Pair("id", ID18_MASKED),
        "address": {"city": "重庆市", "street": "****"},
        "message": f"registered {ID18_MASKED}",
    }
    assert type(masked["pair"]) is Pair
    assert data["patient"]["name"] == "张三"  # the input is not modified


def test_mask_mapping_survives_self_reference() -> None:
    data: dict = {"note": f"id {ID18}"}
    data["self"] = data
    masked = mask_mapping(data)
    assert ID18 not in repr(masked)


def test_mask_mapping_masks_objects_whose_text_is_personal() -> None:
    error = ValueError(f"duplicate id {ID18}")
    masked = mask_mapping({"error": error, "exc_info": error})
    assert masked["error"] == f"duplicate id {ID18_MASKED}"
    assert masked["exc_info"] is error  # structlog still needs the real exception


def assert_masked(output: str) -> None:
    for raw in (ID18, PHONE, "张三"):
        assert raw not in output
    assert ID18_MASKED in output
    assert PHONE_MASKED in output
    assert "张*" in output


def test_structlog_output_is_masked() -> None:
    buf = io.StringIO()
    log = structlog.wrap_logger(
        structlog.WriteLogger(file=buf),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog_processor,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    log.info(f"patient registered id={ID18}", name="张三", phone=PHONE)

    output = buf.getvalue()
    assert_masked(output)
    event = json.loads(output)
    assert event == {
        "event": f"patient registered id={ID18_MASKED}",
        "name": "张*",
        "phone": PHONE_MASKED,
        "level": "info",
    }


def test_structlog_exception_text_is_masked() -> None:
    buf = io.StringIO()
    log = structlog.wrap_logger(
        structlog.PrintLogger(file=buf),
        processors=[
            structlog.processors.format_exc_info,
            structlog_processor,
            structlog.processors.JSONRenderer(),  # ASCII-escaped, as by default
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    try:
        raise LookupError(f"no person with phone {PHONE}")
    except LookupError:
        log.exception("lookup failed", patient_name="张三")

    output = buf.getvalue()
    assert PHONE not in output
    event = json.loads(output)
    assert PHONE_MASKED in event["exception"]
    assert "LookupError" in event["exception"]
    assert event["patient_name"] == "张*"


def stdlib_logger(
    name: str, fmt: logging.Formatter | None = None
) -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(fmt or logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger(f"smartcare.tests.masking.{name}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, buf


def test_stdlib_output_is_masked() -> None:
    logger, buf = stdlib_logger("plain")
    logger.info("patient registered id=%s name=%s phone=%s", ID18, "张三", PHONE)
    logger.info("patient registered id=110105194912310020 phone=13812348000")
    logger.warning("phone as a number %d", 13812348000)  # cannot stay %d once masked
    logger.info("lookup %(who)s", {"who": ID18, "name": "张三"})
    lines = buf.getvalue().splitlines()
    assert lines[0] == f"INFO patient registered id={ID18_MASKED} name=张三 phone={PHONE_MASKED}"
    assert lines[1] == f"INFO patient registered id={ID18_MASKED} phone={PHONE_MASKED}"
    assert lines[2] == f"WARNING phone as a number {PHONE_MASKED}"
    assert lines[3] == f"INFO lookup {ID18_MASKED}"
    assert ID18 not in buf.getvalue() and PHONE not in buf.getvalue()


def test_stdlib_exception_text_is_masked() -> None:
    logger, buf = stdlib_logger("exc")
    try:
        raise KeyError(f"id {ID18}")
    except KeyError:
        logger.exception("failed for %s", PHONE)
    output = buf.getvalue()
    assert ID18 not in output and PHONE not in output
    assert ID18_MASKED in output and PHONE_MASKED in output
    assert "Traceback" in output


def test_stdlib_records_without_personal_data_are_untouched() -> None:
    filt = MaskingFilter()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s items in %.1fs", (3, 1.25), None)
    assert filt.filter(record) is True
    assert record.msg == "%s items in %.1fs"
    assert record.args == (3, 1.25)


def test_uvicorn_access_log_still_formats() -> None:
    # uvicorn's access formatter unpacks record.args, so masking must keep their shape.
    from uvicorn.logging import AccessFormatter

    fmt = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    logger, buf = stdlib_logger("uvicorn", fmt)
    logger.info(
        '%s - "%s %s HTTP/%s" %d',
        "10.0.0.7:51234", "GET", f"/api/patients?id_number={ID18}&phone={PHONE}", "1.1", 200,
    )
    line = buf.getvalue().strip()
    assert line == (
        f'10.0.0.7:51234 - "GET /api/patients?id_number={ID18_MASKED}&phone={PHONE_MASKED} '
        'HTTP/1.1" 200 OK'
    )
