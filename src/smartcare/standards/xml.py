"""The one safe way to parse XML that comes from outside (CDA documents, HL7 v3 messages).

An XML parser with default settings trusts the document: an external entity reads a local file or
reaches an internal URL (XXE), and nested internal entities expand to gigabytes ("billion laughs").
Clinical documents never need entities, so instead of expanding them carefully we refuse any
document whose DOCTYPE declares one, before libxml2 gets a chance to act on it. Everything else
is parsed by lxml (libxml2) with entity substitution, DTD loading and network access off and the
default size limits on (``huge_tree=False``); lxml is chosen because the same tree then feeds
XPath and XSD validation (``lxml.etree.XMLSchema``), which the standard library cannot do.
"""

from __future__ import annotations

import re
import threading
from typing import Final

from lxml import etree

__all__ = ["XmlError", "parse_xml"]


class XmlError(ValueError):
    """The bytes are not acceptable XML. ``line``/``column`` say where, when known (1-based)."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line = line
        self.column = column


_REFUSED: Final = "DOCTYPE with entities is not allowed"

# XML keeps "<!DOCTYPE" and "<!ENTITY" byte-exact (no case folding, no inner whitespace), so one
# search per plausible encoding finds them: ASCII-compatible ones (UTF-8, GB18030, GBK, Latin-1),
# UTF-16 and UTF-32 in both byte orders.
_ENCODINGS: Final = ("ascii", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
_MARKERS: Final = tuple(("<!DOCTYPE".encode(e), "<!ENTITY".encode(e)) for e in _ENCODINGS)

_POSITION_SUFFIX: Final = re.compile(r", line \d+, column \d+$")

_local = threading.local()


def _parser() -> etree.XMLParser:
    """One parser per thread: lxml serialises concurrent use of a shared parser."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
            remove_comments=False,
        )
        _local.parser = parser
    return parser


def _declares_entities(data: bytes) -> bool:
    """True if a ``<!ENTITY`` follows a ``<!DOCTYPE`` in any encoding we look for.

    Deliberately conservative: the pair inside a comment or CDATA section is refused too, which
    no real clinical document does.
    """
    # Only UTF-16/32 text has NUL bytes; without any, the ASCII-compatible markers are all there is to look for.
    for doctype, entity in _MARKERS if b"\x00" in data else _MARKERS[:1]:
        start = data.find(doctype)
        if start >= 0 and data.find(entity, start) >= 0:
            return True
    return False


def parse_xml(data: bytes) -> etree._Element:
    """Parse ``data`` into its root element, or raise ``XmlError`` saying what is wrong and where.

    Bytes, not text: the XML declaration names the encoding (hospitals still send GB18030),
    and only the parser can honour it.
    """
    if isinstance(data, str):
        raise TypeError("parse_xml expects bytes; pass the payload as received, undecoded")
    data = bytes(data)
    if not data.strip():
        raise XmlError("empty document: expected an XML document, got no content")
    if _declares_entities(data):
        raise XmlError(_REFUSED)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        message = _POSITION_SUFFIX.sub("", exc.msg or str(exc))
        if "amplification" in message or "entity reference loop" in message:
            raise XmlError(_REFUSED) from None
        line, column = exc.position if exc.position else (exc.lineno, None)
        where = f"line {line}" + (f", column {column}" if column else "")
        raise XmlError(f"malformed XML at {where}: {message}", line=line, column=column) from None
    # Second line of defence: whatever the byte scan missed, libxml2 recorded in the DTD.
    dtd = root.getroottree().docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        raise XmlError(_REFUSED)
    return root
