"""WS/T 500 CDA documents (电子病历共享文档): headers (``header``), schemas as builders (``schema``),
whole documents built and parsed (``document``)."""

from smartcare.standards.cda.document import (
    DE_SYSTEM, TITLES, DataElement, Document, Entry, ParsedDocument, Patient, Practitioner, Section, Value, Visit,
    boolean, build, cd, format_time, integer, money, parse, pq, read_entries, st, ts,
)
from smartcare.standards.cda.header import *  # noqa: F403
from smartcare.standards.cda.header import __all__ as _header_all
from smartcare.standards.cda.schema import SchemaError, schema_for

__all__ = [*_header_all, "DE_SYSTEM", "TITLES", "DataElement", "Document", "Entry", "ParsedDocument", "Patient",
           "Practitioner", "SchemaError", "Section", "Value", "Visit", "boolean", "build", "cd", "format_time",
           "integer", "money", "parse", "pq", "read_entries", "schema_for", "st", "ts"]
