"""Masking of personal data for logs, error messages and non-privileged views.

The house rule is that ID numbers, phone numbers, names and addresses never reach a log line,
an error message or a non-privileged screen unmasked. This module is the one place that knows
how each kind of value is masked, so that every capability masks the same way:

- ``mask_id_number`` / ``mask_phone`` / ``mask_name`` / ``mask_address`` mask one value whose
  kind is known;
- ``mask_text`` finds ID numbers and mobile numbers inside free text (log messages, exception
  text) and masks them; it runs on every log line, so its one regex is compiled once;
- ``mask_mapping`` walks a dict (an API payload, a structlog event) and masks by key for the
  keys in ``PERSONAL_KEYS`` and by content for everything else;
- ``structlog_processor`` and ``MaskingFilter`` plug that into structlog and stdlib logging.

Masking is deliberately lossy and one-way: it is not pseudonymisation (see ``crypto`` for that).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = [
    "PERSONAL_KEYS",
    "MaskingFilter",
    "mask_address",
    "mask_id_number",
    "mask_mapping",
    "mask_name",
    "mask_phone",
    "mask_text",
    "mask_value",
    "structlog_processor",
]

_STAR: Final = "*"

# --- single values -----------------------------------------------------------------------------


def mask_id_number(number: str) -> str:
    """Keep the first 4 and last 4 characters of an ID number, one star per hidden character.

    The first 4 digits only say the province and city, and the last 4 the order code and check
    digit, so support staff can still tell two numbers apart without seeing the birth date.
    Strings too short to be an ID number are masked more aggressively, so a fragment never
    shows most of itself.
    """
    s = "".join(str(number).split())
    n = len(s)
    if n >= 15:
        keep = 4
    elif n >= 8:
        keep = 2
    else:
        return _STAR * n
    return s[:keep] + _STAR * (n - 2 * keep) + s[-keep:]


_PHONE_SEPARATORS = re.compile(r"[\s\-()（）]")
_MOBILE = re.compile(r"(?P<cc>(?:\+|00)?86)?(?P<number>1[3-9][0-9]{9})", re.ASCII)


def mask_phone(phone: str) -> str:
    """Mask a phone number: mobiles as ``138****8000``, others keep only their last 4 digits.

    Spaces, dashes and a ``+86`` / ``86`` / ``0086`` country code are accepted; a country code
    comes back as ``+86 `` in front of the masked number.
    """
    compact = _PHONE_SEPARATORS.sub("", str(phone))
    if not compact:
        return ""
    m = _MOBILE.fullmatch(compact)
    if m:
        number = m["number"]
        masked = number[:3] + _STAR * 4 + number[-4:]
        return f"+86 {masked}" if m["cc"] else masked
    if len(compact) < 7:
        return _STAR * len(compact)
    return _STAR * (len(compact) - 4) + compact[-4:]


# Characters that separate parts of a name ("阿不都·热合曼", "John Smith") are not letters of the
# name, so they get no star of their own.
_NAME_SEPARATORS = re.compile(r"[\s·•・‧.．]")


def mask_name(name: str) -> str:
    """Keep the first character of a name and put one star per remaining character.

    ``"张三"`` → ``"张*"``, ``"欧阳娜娜"`` → ``"欧***"``, ``"阿不都·热合曼"`` → ``"阿*****"``
    (the middle dot is dropped, not starred). The empty string stays empty.
    """
    s = str(name).strip()
    if not s:
        return ""
    rest = _NAME_SEPARATORS.sub("", s[1:])
    return s[0] + _STAR * len(rest)


# Administrative prefix of a Chinese address: optional province (省/自治区/特别行政区), optional
# prefecture (市/自治州/地区/盟), then the district or county (区/县/旗). A 区 that ends 小区/社区/
# 园区/校区/景区 is a residential compound or campus, not a district, and must not be kept; nor
# is anything containing 街/镇/乡/村/号, which belong to the street part.
_ADDRESS_PREFIX = re.compile(
    r"""
    ^
    (?P<province>[^省市区县旗\d\s]{2,}?(?:省|自治区|特别行政区))?
    (?P<city>[^省市区县旗\d\s]{1,}?(?:市|自治州|地区|盟))?
    (?P<district>[^省市区县旗街镇乡村号\d\s]{1,8}?(?<![小社园校景])(?:区|县|旗))?
    """,
    re.VERBOSE,
)


def mask_address(address: str) -> str:
    """Keep an address down to its district or county and replace the rest with ``****``.

    ``"重庆市渝中区解放碑街道88号"`` → ``"重庆市渝中区****"``. When no district or county can be
    found, only the province and city (if any) are kept, so a street or compound name never
    leaks. The empty string stays empty.
    """
    s = str(address).strip()
    if not s:
        return ""
    m = _ADDRESS_PREFIX.match(s)
    kept = m.group(0) if m else ""
    if kept == s:
        return s
    return kept + "****"


# --- free text ---------------------------------------------------------------------------------

# One pass finds both kinds; neither may start or end inside a longer digit run, so order
# numbers, card numbers and timestamps are left alone. The pattern opens with a consumed
# character class (then looks back at what it consumed) rather than with a lookbehind: that lets
# the regex engine skip straight to digits and "+", which makes lines without numbers several
# times cheaper to scan. The ID alternative comes first; an 18-character ID number can never
# contain a free-standing 11-digit mobile number anyway.
_PERSONAL_NUMBER = re.compile(
    r"""
    [+0-9](?<![0-9].)                               # first character, not inside a digit run
    (?:
        (?P<id>(?<=[0-9])[0-9]{14}(?:[0-9]{2}[0-9Xx])?)     # 15 digits, or 17 + digit/X
      | (?P<phone>
            (?:(?<=\+)86[\s\-]?1 | (?<=0)086[\s\-]?1 | (?<=8)6[\s\-]?1 | (?<=1))
            [3-9][0-9][\s\-]?[0-9]{4}[\s\-]?[0-9]{4}       # 1[3-9]x xxxx xxxx
        )
    )
    (?![0-9])
    """,
    re.VERBOSE | re.ASCII,
)


def _replace_number(m: re.Match[str]) -> str:
    if m.group("id") is not None:
        return mask_id_number(m.group(0))
    return mask_phone(m.group(0))


def mask_text(text: str) -> str:
    """Mask every ID number and Chinese mobile number found anywhere in free text.

    ID numbers are 15 digits or 18 characters (the last may be X/x); mobiles are 1[3-9] and 9
    more digits, optionally after +86/86 and with spaces or dashes in 3-4-4 groups. A match that
    is part of a longer digit run (a 20-digit order number) is not touched. Numbers are masked
    by shape, not validated: a mistyped ID number is as personal as a correct one.
    """
    if len(text) < 11:
        return text
    return _PERSONAL_NUMBER.sub(_replace_number, text)


# --- mappings ----------------------------------------------------------------------------------

_NAME, _ID, _PHONE, _ADDRESS = "name", "id_number", "phone", "address"

_KEY_KINDS: Final[Mapping[str, str]] = {
    **dict.fromkeys(
        (
            "name", "patient_name", "full_name", "real_name", "person_name", "given_name",
            "family_name", "contact_name", "guardian_name", "emergency_contact_name",
            "holder_name", "cardholder_name", "payer_name", "xm",  # xm: 姓名
        ),
        _NAME,
    ),
    **dict.fromkeys(
        (
            "id_number", "id_no", "idno", "idcard", "id_card", "id_card_no", "id_card_number",
            "identity_number", "identity_no", "citizen_id", "resident_id", "cert_no",
            "certificate_no", "certificate_number", "guardian_id_number",
            "sfzh", "zjhm",  # 身份证号, 证件号码
        ),
        _ID,
    ),
    **dict.fromkeys(
        (
            "phone", "mobile", "phone_number", "phone_no", "mobile_phone", "mobile_number",
            "telephone", "tel", "cellphone", "contact_phone", "guardian_phone", "emergency_phone",
            "sjhm", "lxdh",  # 手机号码, 联系电话
        ),
        _PHONE,
    ),
    **dict.fromkeys(
        (
            "address", "addr", "home_address", "current_address", "residential_address",
            "permanent_address", "street_address", "contact_address", "jtzz",  # 家庭住址
        ),
        _ADDRESS,
    ),
}

PERSONAL_KEYS: Final[frozenset[str]] = frozenset(_KEY_KINDS)
"""Dict keys whose values are personal, in snake_case; ``mask_value`` also recognises their
camelCase and kebab-case spellings (``patientName``, ``id-number``)."""

_MASKERS: Final[Mapping[str, Callable[[str], str]]] = {
    _NAME: mask_name,
    _ID: mask_id_number,
    _PHONE: mask_phone,
    _ADDRESS: mask_address,
}

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# Beyond this nesting depth a value is rendered with repr() and masked as text: a logging path
# must never die of RecursionError on a self-referencing structure.
_MAX_DEPTH: Final = 20

# structlog's exc_info is consumed later by format_exc_info / dict_tracebacks, which need the
# original exception object; the rendered traceback is masked under "exception" instead.
_PASS_THROUGH_KEYS: Final = frozenset({"exc_info"})


def _kind_of(key: object) -> str | None:
    if not isinstance(key, str):
        return None
    kind = _KEY_KINDS.get(key)
    if kind is None:
        kind = _KEY_KINDS.get(_CAMEL_BOUNDARY.sub("_", key).replace("-", "_").lower())
    return kind


def _rebuild(original: list[Any] | tuple[Any, ...], items: list[Any]) -> Any:
    """A list or tuple like ``original`` holding ``items`` (named tuples keep their type)."""
    if isinstance(original, list):
        return items
    if hasattr(original, "_fields"):
        return type(original)(*items)
    return tuple(items)


def _mask_personal(mask: Callable[[str], str], value: Any, depth: int) -> Any:
    """Mask a value stored under a personal key: every scalar inside it is personal."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return mask(value)
    if depth >= _MAX_DEPTH:
        return mask(repr(value))
    if isinstance(value, Mapping):
        return {k: _mask_personal(mask, v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return _rebuild(value, [_mask_personal(mask, v, depth + 1) for v in value])
    return mask(str(value))


def _mask_free(value: Any, depth: int) -> Any:
    """Mask a value stored under an ordinary key: only what looks personal is changed."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, str):
        return mask_text(value)
    if depth >= _MAX_DEPTH:
        return mask_text(repr(value))
    if isinstance(value, Mapping):
        return _mask_mapping(value, depth + 1)
    if isinstance(value, list | tuple):
        return _rebuild(value, [_mask_free(v, depth + 1) for v in value])
    # ints (a phone number logged as a number), exceptions, models and other objects are
    # rendered as text later anyway: replace them only when their text holds something personal.
    text = str(value)
    masked = mask_text(text)
    return value if masked == text else masked


def _mask_mapping(d: Mapping[Any, Any], depth: int) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, value in d.items():
        if key in _PASS_THROUGH_KEYS:
            out[key] = value
            continue
        kind = _kind_of(key)
        if kind is None:
            out[key] = _mask_free(value, depth)
        else:
            out[key] = _mask_personal(_MASKERS[kind], value, depth)
    return out


def mask_value(key: object, value: Any) -> Any:
    """Mask ``value`` as found under ``key``: by key for ``PERSONAL_KEYS``, by content otherwise.

    Containers are walked; ``None``, booleans and floats are returned as they are.
    """
    kind = _kind_of(key)
    if kind is None:
        return _mask_free(value, 0)
    return _mask_personal(_MASKERS[kind], value, 0)


def mask_mapping(d: Mapping[Any, Any]) -> dict[Any, Any]:
    """A masked copy of ``d`` (recursively through nested dicts, lists and tuples).

    The input is not modified. The key ``exc_info`` is passed through untouched because
    structlog still has to turn it into a traceback; see ``structlog_processor``.
    """
    return _mask_mapping(d, 0)


# --- logging integration -----------------------------------------------------------------------


def structlog_processor(logger: Any, method_name: str, event_dict: Any) -> dict[str, Any]:
    """structlog processor that masks every value of the event, the ``event`` message included.

    Place it after ``format_exc_info`` / ``dict_tracebacks`` (so that the traceback, under
    ``exception``, is already text and gets masked) and before the renderer.
    """
    return mask_mapping(event_dict)


_TRACEBACK_FORMATTER: Final = logging.Formatter()


class MaskingFilter(logging.Filter):
    """Mask personal data in stdlib ``LogRecord``s, so third-party loggers are covered too.

    Attach it to the *handlers* (a filter on a logger does not see records propagated from its
    children). A record with nothing personal in it is left exactly as it is. Otherwise the
    message template and the arguments are masked separately when that is enough, so formatters
    that read ``record.args`` (uvicorn's access log formatter unpacks them) keep working; failing
    that, the record is collapsed to ``msg = mask_text(record.getMessage())`` and ``args = ()``.
    Exception and stack text are masked as well.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        _mask_record_message(record)
        if record.exc_info and not record.exc_text:
            # Formatter.format() uses a pre-set exc_text instead of formatting exc_info again.
            record.exc_text = _TRACEBACK_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


def _mask_args(args: Any) -> Any:
    if isinstance(args, Mapping):
        return mask_mapping(args)
    if isinstance(args, tuple):
        return tuple(_mask_free(a, 0) for a in args)
    return args


def _mask_record_message(record: logging.LogRecord) -> None:
    if isinstance(record.msg, Mapping) and not record.args:
        # structlog's stdlib integration puts the event dict itself in msg.
        record.msg = mask_mapping(record.msg)
        return
    try:
        message = record.getMessage()
    except Exception:
        # The record cannot be formatted; logging will report it with msg and args, so at
        # least make sure those are masked.
        record.msg = mask_text(str(record.msg))
        record.args = _mask_args(record.args)
        return
    masked = mask_text(message)
    if masked == message:
        return
    record.msg = mask_text(record.msg) if isinstance(record.msg, str) else record.msg
    record.args = _mask_args(record.args)
    try:
        candidate = record.getMessage()
        clean = mask_text(candidate) == candidate
    except Exception:
        clean = False
    if not clean:
        record.msg, record.args = masked, ()
