"""Benchmark: the quality-control engine's documents/s through the whole rule catalogue, beside
(a) the raw lxml parse rate of the same documents and (b) lxml.isoschematron running as many simple
assertions per document as the engine applies rules, all in this run on the same documents.

The documents are the synthetic region's eight WS/T 500 types (30 % with one injected defect). Each
contender runs over the same byte strings, after a warm-up, single-threaded:

- raw lxml: ``etree.fromstring`` of every document (nothing else);
- engine: ``Engine.check`` — parse once, XSD validation against the document type's schema, header
  and data elements read, every applicable rule (86 in the catalogue; about 50 per type), findings;
- Schematron: parse, then one compiled ISO Schematron schema of N simple assertions (N = the mean
  number of rules the engine applies per document; each an XPath presence or range test like the
  engine's rules), no XSD validation.

Goal (issue #7): the engine at ≥ 50 % of the raw parse rate, and faster than Schematron.
Precision/recall of the engine on the injected defects is printed too (1.0 expected).

    python bench/quality.py            # 20,000 documents
    python bench/quality.py --quick    # 2,000 documents, a few seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from lxml import etree, isoschematron

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bench._common import peak_rss_mib  # noqa: E402
from smartcare.quality.checks import Facts  # noqa: E402
from smartcare.quality.engine import Engine, MemoryContext, catalogue  # noqa: E402
from smartcare.standards.cda import DE_SYSTEM, HL7_NS, parse_header, read_entries, schema_for  # noqa: E402
from smartcare.standards.xml import parse_xml  # noqa: E402
from smartcare.synth import documents as synth  # noqa: E402
from tests.quality.quality_support import HOSPITALS, PEOPLE, value_sets  # noqa: E402

SCH = "http://purl.oclc.org/dsdl/schematron"


def _schematron(n: int) -> isoschematron.Schematron:
    """N simple assertions of the engine's kinds: an element present, a value in range, a header field filled."""
    codes = ["DE04.10.186.00", "DE04.10.118.00", "DE04.10.174.00", "DE04.10.176.00", "DE05.01.024.00",
             "DE04.01.119.00", "DE06.00.092.00", "DE06.00.017.00", "718-7", "2345-7"]
    asserts = []
    for i in range(n):
        code = codes[i % len(codes)]
        value = f"//h:observation[h:code/@code='{code}']/h:value"
        test = (f"not({value}/@value) or number({value}/@value) &lt; 100000" if i % 3 == 0 else
                f"count(//h:code[@code='{code}'][@codeSystem='{DE_SYSTEM}']) &lt;= 5" if i % 3 == 1 else
                "string-length(/h:ClinicalDocument/h:id/@extension) &gt;= 32")
        asserts.append(f'<assert test="{test}">rule {i}</assert>')
    xml = (f'<schema xmlns="{SCH}"><ns prefix="h" uri="{HL7_NS}"/><pattern><rule context="/h:ClinicalDocument">'
           + "".join(asserts) + "</rule></pattern></schema>")
    return isoschematron.Schematron(etree.fromstring(xml.encode()))


def _rate(label: str, fn, docs: list[bytes]) -> float:
    for d in docs[:200]:
        fn(d)  # warm-up: schemas compiled, caches filled
    start = time.perf_counter()
    for d in docs:
        fn(d)
    seconds = time.perf_counter() - start
    rate = len(docs) / seconds
    print(f"  {label:<44} {rate:>9,.0f} documents/s   ({seconds:.2f} s)")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--documents", type=int)
    args = parser.parse_args()
    count = args.documents or (2_000 if args.quick else 20_000)

    generated = list(synth.documents(2026, hospitals=HOSPITALS, people=PEOPLE, count=count, defect_rate=0.3))
    docs = [d.xml for d in generated]
    size = sum(map(len, docs)) / len(docs)
    print(f"{count:,} synthetic WS/T 500 documents of {len(synth.TYPES)} types, {size / 1024:.1f} KiB on average, "
          f"{sum(1 for d in generated if d.defects):,} with an injected defect")

    ctx = MemoryContext(value_sets(), custodians={h.credit_code for h in HOSPITALS})
    engine = Engine(ctx)
    applied = sum(sum(r.applies_to(t) for r in catalogue()) for t in synth.TYPES) / len(synth.TYPES)
    n_asserts = round(applied)
    schematron = _schematron(n_asserts)

    print("rates (single thread):")
    raw = _rate("raw lxml parse (baseline)", etree.fromstring, docs)
    sch = _rate(f"lxml.isoschematron, {n_asserts} assertions (baseline)",
                lambda d: schematron.validate(etree.fromstring(d)), docs)
    ctx.seen.clear()
    eng = _rate(f"engine: XSD + {len(catalogue())} rules ({applied:.0f}/document)", lambda d: engine.check(d), docs)

    ctx.seen.clear()
    tp = fp = fn = 0
    for d in generated:
        found = {f.rule.id for f in engine.check(d.xml, sent_at=d.sent_at).findings}
        expected = {x.rule for x in d.defects}
        tp, fp, fn = tp + len(found & expected), fp + len(found - expected), fn + len(expected - found)
    print(f"engine vs raw parse: {100 * eng / raw:.0f} % (goal ≥ 50 %); vs Schematron: {eng / sch:.1f}× "
          f"(goal > 1)")
    print(f"injected defects: precision {tp / max(tp + fp, 1):.3f}, recall {tp / max(tp + fn, 1):.3f} "
          f"({tp} found, {fp} extra, {fn} missed)")
    _phases(docs, engine, ctx)
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


def _validating_parse(doc: bytes, parser: etree.XMLParser) -> etree._Element | None:
    try:
        return etree.fromstring(doc, parser)
    except etree.XMLSyntaxError:  # a document the schema refuses: the engine would then parse it again to report
        return None


def _phases(docs: list[bytes], engine: Engine, ctx: MemoryContext) -> None:
    """Where one check's time goes: each step of ``Engine.check`` timed on its own over the same documents,
    and the alternative of validating while parsing (one libxml2 pass)."""
    roots = [parse_xml(d) for d in docs]
    types = [parse_header(r).type_code for r in roots]
    schemas = {t: schema_for(t) for t in set(types)}
    facts = [Facts(t, parse_header(r), read_entries(r), r, [], "") for t, r in zip(types, roots, strict=True)]
    checks = [engine._by_type[f.type_code] for f in facts]
    validating = {t: etree.XMLParser(schema=etree.XMLSchema(etree.fromstring(
        resources.files("smartcare.standards.wst500").joinpath(f"{t}.xsd").read_bytes()))) for t in set(types)}
    steps = {
        "safe XML parse (parse_xml)": lambda i: parse_xml(docs[i]),
        "XSD validation of the parsed tree": lambda i: schemas[types[i]].errors(roots[i]),
        "header (parse_header)": lambda i: parse_header(roots[i]),
        "data elements (read_entries)": lambda i: read_entries(roots[i]),
        "rules (the applicable ones)": lambda i: [fn(facts[i]) for _, fn in checks[i]],
        "whole check (Engine.check)": lambda i: engine.check(docs[i]),
        "alternative: parse while validating": lambda i: _validating_parse(docs[i], validating[types[i]]),
    }
    print("where the time goes (µs per document, each step alone):")
    for label, fn in steps.items():
        ctx.seen.clear()
        for i in range(min(200, len(docs))):
            fn(i)
        start = time.perf_counter()
        for i in range(len(docs)):
            fn(i)
        print(f"  {label:<44} {1e6 * (time.perf_counter() - start) / len(docs):>7.1f}")


if __name__ == "__main__":
    main()
