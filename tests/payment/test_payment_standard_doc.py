"""The mixed-payment standard (docs/mixed-payment-standard.md) agrees with the OpenAPI spec the platform serves:
every payment path and method is in the document, every payment path the document names exists, and every
field of the payment API's schemas is named in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "mixed-payment-standard.md"
PREFIX = "/api/v1/payment/"
METHODS = ("get", "put", "post", "delete", "patch")
#: the schemas the standard must cover field by field, whatever else the payment API uses
REQUIRED_SCHEMAS = ("SettlementOut", "RefundOut", "SettleIn", "RefundIn", "BillIn")
#: FastAPI's generic validation-error schemas: the standard describes the platform's own error body instead
GENERIC = {"HTTPValidationError", "ValidationError"}
#: a payment path as written in the document: stops before punctuation that ends a sentence or a code span
DOC_PATH = re.compile(r"/api/v1/payment/[A-Za-z0-9_{}./-]*[A-Za-z0-9_}]")


@pytest.fixture(scope="module")
def spec(database_url) -> dict:
    from smartcare.web.app import create_app

    return create_app(mllp_port=0).openapi()


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _payment_operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [(method.upper(), path, operation) for path, operations in spec["paths"].items() if path.startswith(PREFIX)
            for method, operation in operations.items() if method in METHODS]


def _template(path: str) -> re.Pattern:
    """An OpenAPI path template as a pattern: ``{name}`` stands for one segment (the document may write a
    concrete value, e.g. ``notify/wechat``, or the same placeholder)."""
    parts = re.split(r"(\{[^}/]+\})", path)
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + "$")


def _refs(node) -> set[str]:
    """Names of the component schemas ``node`` refers to, at any depth."""
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _closure(spec: dict, names: set[str]) -> set[str]:
    """``names`` and every schema they refer to, transitively."""
    schemas = spec["components"]["schemas"]
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen or name in GENERIC:
            continue
        seen.add(name)
        todo.extend(_refs(schemas[name]) - seen)
    return seen


def test_every_payment_operation_of_the_spec_is_in_the_standard(spec, doc):
    operations = _payment_operations(spec)
    assert len(operations) >= 9, "the payment API's operations were not found in the spec"
    missing = [f"{method} {path}" for method, path, _ in operations if f"{method} {path}" not in doc]
    assert not missing, f"operations the spec serves but docs/mixed-payment-standard.md does not name: {missing}"


def test_every_payment_path_the_standard_names_exists_in_the_spec(spec, doc):
    templates = [_template(path) for path in spec["paths"] if path.startswith(PREFIX)]
    named = {match.split("?")[0] for match in DOC_PATH.findall(doc)}
    assert named, "the standard names no payment path"
    unknown = sorted(path for path in named if not any(t.match(path) for t in templates))
    assert not unknown, f"paths named in docs/mixed-payment-standard.md that the spec does not serve: {unknown}"


def test_every_field_of_the_payment_schemas_is_named_in_the_standard(spec, doc):
    schemas = spec["components"]["schemas"]
    absent = [name for name in REQUIRED_SCHEMAS if name not in schemas]
    assert not absent, f"schemas the standard is checked against are gone from the spec: {absent}"
    used: set[str] = set(REQUIRED_SCHEMAS)
    for _method, _path, operation in _payment_operations(spec):
        used |= _refs(operation.get("requestBody", {}))
        used |= _refs({status: answer for status, answer in operation.get("responses", {}).items()
                       if status.startswith("2")})
    missing = sorted(f"{name}.{field}" for name in _closure(spec, used)
                     for field in schemas[name].get("properties", {}) if f"`{field}`" not in doc)
    assert not missing, f"schema fields docs/mixed-payment-standard.md does not name (as `field`): {missing}"


def test_the_checks_would_notice_a_missing_path_and_an_invented_one(spec, doc):
    """The checks above are not vacuous: dropping an operation or naming a path that does not exist is caught."""
    method, path, _ = _payment_operations(spec)[0]
    assert f"{method} {path}" not in doc.replace(f"{method} {path}", "")
    templates = [_template(p) for p in spec["paths"] if p.startswith(PREFIX)]
    assert not any(t.match("/api/v1/payment/bills/B1/pay") for t in templates)
    assert any(t.match("/api/v1/payment/notify/wechat") for t in templates)
