"""Clinical items: what a registered document says, as rows the personal health record is served from.

Each coded data element of a document becomes an item (kind by its code: a diagnosis, a vital sign, a
lab result, part of a prescription, an exam finding, a time, a note), read once at registration from
the tree the registry already parsed, so the timeline and the FHIR API never parse XML again.

Sensitive categories (GB/T 39725 calls for extra protection; the resident must opt in to share them):
a document with a diagnosis of a mental disorder (ICD-10 F), HIV (B20–B24, Z21, R75, Z20.6) or of pregnancy,
childbirth and contraception (O, Z30–Z39), and every delivery record (C0014–C0016), is sensitive as a whole
in each of its categories, and so is each of its items. The personal health record carries the categories to
every document of the same visit (a prescription says as much as the diagnosis it treats).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final

from smartcare.standards import cda

DIAGNOSIS: Final = "DE05.01.024.00"
MEDICATION: Final = frozenset({"DE08.50.022.00", "DE08.50.044.00", "DE06.00.133.00", "DE06.00.134.00"})
FINDINGS: Final = frozenset({"DE04.30.009.00", "DE04.50.132.00", "DE04.50.001.00", "DE05.10.148.00",
                             "DE06.00.296.00", "DE06.00.287.00", "DE06.00.223.00"})
SENSITIVE: Final = ("mental", "hiv", "reproductive")
SENSITIVE_NAMES: Final = {"mental": "精神心理", "hiv": "艾滋病", "reproductive": "生殖健康"}
DELIVERY_RECORDS: Final = frozenset({"C0014", "C0015", "C0016"})  # 待产记录, 阴道分娩记录, 剖宫产记录
_LARGEST: Final = 10**15  # a measurement beyond this is a sender's error: kept as text, not as a number


def _storable(n):
    return n if n is not None and abs(n) < _LARGEST else None


def kind_of(entry: cda.Entry) -> str:
    code = entry.code
    if code == DIAGNOSIS:
        return "condition"
    if code.startswith("DE04.10."):
        return "vital"
    if not code.startswith("DE"):
        return "lab"  # LOINC-coded
    if code in MEDICATION:
        return "medication"
    if code in FINDINGS:
        return "finding"
    if entry.value is not None and entry.value.kind == "TS":
        return "time"
    return "note"


def sensitive_category(icd10: str | None) -> str | None:
    """The sensitive category of an ICD-10 code, or None."""
    if not icd10:
        return None
    code = icd10.upper()
    if code.startswith("F"):
        return "mental"
    if code[:3] in ("B20", "B21", "B22", "B23", "B24", "Z21", "R75") or code.startswith("Z20.6"):
        return "hiv"
    if code.startswith("O") or code[:3] in {f"Z3{n}" for n in range(10)}:
        return "reproductive"
    return None


def items(entries: Iterable[cda.Entry], *, record_id: int, person_id: int | None, facility_code: str, type_code: str,
          at: datetime) -> list[dict]:
    """Rows of ``records.item`` for one document's entries (all marked with the document's sensitive category)."""
    entries = list(entries)
    categories = {c for c in (sensitive_category(e.value.code if e.value else None)
                              for e in entries if e.code == DIAGNOSIS) if c}
    if type_code in DELIVERY_RECORDS:
        categories.add("reproductive")
    category = sorted(categories)
    rows = []
    for n, e in enumerate(entries):
        v = e.value
        rows.append({
            "record_id": record_id, "person_id": person_id, "facility_code": facility_code, "type_code": type_code,
            "kind": kind_of(e), "code": e.code[:40], "name": (e.name or "")[:200] or None,
            "value_text": v.text if v is not None and v.kind != "CD" else None,
            "value_number": _storable(v.number) if v is not None else None,
            "unit": (v.unit or "")[:40] or None if v is not None else None,
            "value_code": (v.code or "")[:64] or None if v is not None else None,
            "value_display": (v.display or "")[:200] or None if v is not None else None,
            "value_system": (v.system or "")[:100] or None if v is not None else None,
            "at": at, "section": (e.section or "")[:40] or None, "sensitive": category, "position": n,
        })
    return rows
