"""The WS/T 500 schemas as builders: a document is written in the order and shape its XSD demands.

The 53 national schemas (``standards/wst500/C00nn.xsd``) are "Russian doll" XSDs: one anonymous type
per element, all inline, the header different for every document type (C0001 has the patient's
address and employer, C0004 a pharmacist who checks the prescription, C0032 birthplace, household
and native place …). Hand-writing 53 builders would copy that structure 53 times and drift from it.
Instead each schema is compiled once into a tree of ``Node``s, and ``Schema.render`` walks that
tree with the content as a plain nested dict: child elements by local name (a list for repeats),
``"@name"`` for attributes, ``"#"`` for text. The walk

- writes elements in the schema's order, and only those the schema has (content it lacks is left
  out, so one header dict serves every document type);
- writes ``@value`` as the text where the schema allows no attributes (C0006 and C0007 want the
  encounter time as ``<effectiveTime>20240506083000</effectiveTime>``);
- writes every required element even without content (empty), and required attributes the
  content does not give from HL7's structural defaults (classCode, moodCode, typeCode …) or the
  schema's single allowed value, so a document with missing data still has the right shape and
  the missing data shows as empty values — what the quality rules look for;
- refuses more repeats than the schema allows.

``Schema.errors`` then validates against the same XSD with libxml2; the builder never claims a
document is valid that the schema refuses.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final

from lxml import etree

HL7: Final = "urn:hl7-org:v3"
XSI: Final = "http://www.w3.org/2001/XMLSchema-instance"
_XS: Final = "{http://www.w3.org/2001/XMLSchema}"
_DOC_TYPES: Final = frozenset(f"C{n:04d}" for n in range(1, 54))

# HL7 v3 structural codes written when a schema requires the attribute and the content says nothing.
_CLASS_CODE: Final = {
    "observation": "OBS", "organizer": "CLUSTER", "procedure": "PROC", "act": "ACT", "substanceAdministration": "SBADM",
    "patientRole": "PAT", "patient": "PSN", "assignedPerson": "PSN", "associatedPerson": "PSN", "playingEntity": "PSN",
    "place": "PLC", "healthCareFacility": "SDLOC", "encompassingEncounter": "ENC", "asOrganizationPartOf": "PART",
    "assignedAuthor": "ASSIGNED", "assignedCustodian": "ASSIGNED", "assignedEntity": "ASSIGNED",
    "associatedEntity": "ECON", "participantRole": "ROL", "manufacturedProduct": "MANU",
}
_TYPE_CODE: Final = {
    "recordTarget": "RCT", "author": "AUT", "custodian": "CST", "informant": "INF", "legalAuthenticator": "LA",
    "authenticator": "AUTHEN", "participant": "NOT", "relatedDocument": "RPLC", "componentOf": "COMP",
    "component": "COMP", "entry": "COMP", "entryRelationship": "COMP", "location": "LOC", "performer": "PRF",
    "consumable": "CSM",
}


def _default_attr(element: str, attr: str) -> str:
    if attr == "classCode":
        return _CLASS_CODE.get(element, "ORG")
    if attr == "moodCode":
        return "INT" if element == "substanceAdministration" else "EVN"
    if attr == "typeCode":
        return _TYPE_CODE.get(element, "COMP")
    return {"determinerCode": "INSTANCE", "contextControlCode": "OP"}.get(attr, "")


class SchemaError(ValueError):
    """Content that cannot be written as the schema demands (e.g. too many repeats); names the path."""


@dataclass(frozen=True, slots=True)
class Attr:
    name: str
    required: bool
    allowed: tuple[str, ...] = ()  # enumeration, when the schema restricts the value
    fixed: str | None = None
    base: str = "string"  # the XSD built-in type underneath (int, float, decimal, boolean, string …)
    patterns: tuple[re.Pattern, ...] = ()

    def accepts(self, value: str) -> bool:
        if self.fixed is not None and value != self.fixed:
            return False
        if self.allowed and value not in self.allowed:
            return False
        if self.patterns and not any(p.fullmatch(value) for p in self.patterns):
            return False
        try:
            if self.base in _INTEGERS:
                int(value)
            elif self.base in ("float", "double", "decimal"):
                float(value)
            elif self.base == "boolean":
                return value in ("true", "false", "1", "0")
        except ValueError:
            return False
        return True

    def fit_time(self, value: str) -> str:
        """A timestamp cut to the precision this attribute's pattern wants (some take only YYYYMMDD)."""
        if not self.patterns or not value.isdigit() or self.accepts(value):
            return value
        for size in (12, 8):
            if self.accepts(value[:size]):
                return value[:size]
        return value


@dataclass(slots=True)
class Node:
    name: str
    min: int = 1
    max: int | None = 1  # None: unbounded
    attrs: dict[str, Attr] = field(default_factory=dict)
    text: bool = False  # simple content
    allowed: tuple[str, ...] = ()  # enumeration of the text
    any_type: bool = False  # no type at all: anything goes (CDA's ANY values, typed by xsi:type)
    content: Group | None = None


@dataclass(slots=True)
class Group:
    kind: str  # "sequence" | "choice"
    min: int
    max: int | None
    items: list[Node | Group]


def _occurs(el: etree._Element) -> tuple[int, int | None]:
    high = el.get("maxOccurs", "1")
    return int(el.get("minOccurs", "1")), None if high == "unbounded" else int(high)


def _enumeration(el: etree._Element | None) -> tuple[str, ...]:
    if el is None:
        return ()
    return tuple(e.get("value") for e in el.iter(f"{_XS}enumeration"))


_INTEGERS: Final = frozenset({"int", "integer", "long", "short", "byte", "nonNegativeInteger", "positiveInteger"})


def _xsd_pattern(pattern: str) -> re.Pattern:
    """XSD regular expressions are anchored and have no ^/$; the ones in these schemas are also valid Python."""
    return re.compile(pattern)


def _attr(el: etree._Element) -> Attr:
    st = el.find(f"{_XS}simpleType")
    base = el.get("type", "xs:string")
    restriction = st.find(f"{_XS}restriction") if st is not None else None
    if restriction is not None:
        base = restriction.get("base", base)
    patterns = tuple(_xsd_pattern(p.get("value")) for p in st.iter(f"{_XS}pattern")) if st is not None else ()
    return Attr(el.get("name"), el.get("use") == "required", _enumeration(st), el.get("fixed"),
                base.split(":")[-1], patterns)


def _complex(node: Node, ct: etree._Element) -> None:
    for child in ct:
        tag = child.tag
        if tag in (f"{_XS}sequence", f"{_XS}choice"):
            node.content = _group(child)
        elif tag == f"{_XS}attribute":
            node.attrs[child.get("name")] = _attr(child)
        elif tag == f"{_XS}simpleContent":
            node.text = True
            for ext in child:
                for a in ext.iter(f"{_XS}attribute"):
                    node.attrs[a.get("name")] = _attr(a)


def _node(el: etree._Element) -> Node:
    low, high = _occurs(el)
    node = Node(el.get("name"), low, high)
    ct, st = el.find(f"{_XS}complexType"), el.find(f"{_XS}simpleType")
    if el.get("type"):
        node.text = True
    elif st is not None:
        node.text, node.allowed = True, _enumeration(st)
    elif ct is not None:
        _complex(node, ct)
    else:
        node.any_type = True
    return node


def _group(el: etree._Element) -> Group:
    low, high = _occurs(el)
    items: list[Node | Group] = []
    for child in el:
        if child.tag == f"{_XS}element":
            items.append(_node(child))
        elif child.tag in (f"{_XS}sequence", f"{_XS}choice"):
            items.append(_group(child))
    return Group(etree.QName(el).localname, low, high, items)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _names(group: Group) -> set[str]:
    out: set[str] = set()
    for item in group.items:
        out |= {item.name} if isinstance(item, Node) else _names(item)
    return out


class Schema:
    """One document type's XSD, compiled for building (``render``) and for checking (``errors``)."""

    def __init__(self, type_code: str, xsd: bytes):
        self.type_code = type_code
        tree = etree.fromstring(xsd)
        self.root = _node(tree.find(f"{_XS}element"))
        #: named types that a CDA ``value`` may name with xsi:type (they differ per schema: C0004's PQ
        #: allows only the unit 天, C0002 has no PQ at all)
        self.value_types: dict[str, Node] = {}
        for ct in tree.findall(f"{_XS}complexType"):
            named = Node(ct.get("name"))
            _complex(named, ct)
            self.value_types[named.name] = named
        for st in tree.findall(f"{_XS}simpleType"):
            self.value_types[st.get("name")] = Node(st.get("name"), text=True)
        self._xsd = etree.XMLSchema(tree)
        self._lock = threading.Lock()  # an XMLSchema keeps its error log on itself

    def value_type_fits(self, type_name: str, attrs: dict[str, str]) -> bool:
        """Whether ``xsi:type=type_name`` with these attributes is valid here (defined, required
        attributes present, enumerated values allowed); otherwise the value is written untyped."""
        named = self.value_types.get(type_name)
        if named is None:
            return False
        if not named.attrs:
            return not attrs
        for a in named.attrs.values():
            v = attrs.get(a.name)
            if v is None:
                if a.required:
                    return False
            elif not a.accepts(v):
                return False
        return set(attrs) <= set(named.attrs)

    def render(self, content: dict) -> etree._Element:
        root = etree.Element(f"{{{HL7}}}{self.root.name}", nsmap={None: HL7, "xsi": XSI})
        self._fill(root, self.root, content, self.root.name)
        return root

    def errors(self, root: etree._Element) -> list[str]:
        """Every way ``root`` breaks the schema (``line N: message``, or the element's path for a tree
        built in memory); empty when valid."""
        with self._lock:
            if self._xsd.validate(root):
                return []
            # a tree parsed from bytes knows its lines; one built in memory only the element's path
            return [f"line {e.line}: {_unquoted(e.message)}" if e.line else f"{e.path}: {_unquoted(e.message)}"
                    for e in self._xsd.error_log]

    # --- the walk -------------------------------------------------------------------------------

    def _fill(self, el: etree._Element, node: Node, content: Any, path: str) -> None:
        data = content if isinstance(content, dict) else {"#": content}
        for a in node.attrs.values():
            value = a.fixed if a.fixed is not None else data.get(f"@{a.name}")
            if value is None:
                if not a.required:
                    continue
                value = a.allowed[0] if len(a.allowed) == 1 else _default_attr(node.name, a.name)
            el.set(a.name, a.fit_time(str(value)))
        if node.any_type:
            _free(el, data)
            return
        if node.text or node.content is None:
            text = data.get("#")
            if text is None and len(node.allowed) == 1:
                text = node.allowed[0]
            if text is None and not node.attrs:  # a time the schema wants as text (C0006's encounter time)
                text = data.get("@value")
            if text is not None:
                el.text = str(text)
        if node.content is not None:
            self._group(el, node.content, data, path)

    def _group(self, el: etree._Element, group: Group, data: dict, path: str) -> None:
        if group.kind == "choice":
            chosen = [item for item in group.items
                      if (item.name in data if isinstance(item, Node) else _names(item) & data.keys())]
            if not chosen and group.min > 0:
                chosen = group.items[:1]
            items = chosen
        else:
            items = group.items
        for item in items:
            if isinstance(item, Group):
                self._group(el, item, data, path)
                continue
            values = _as_list(data.get(item.name))
            if not values and item.min > 0:
                values = [{}] * item.min
            where = f"{path}/{item.name}"
            if item.max is not None and len(values) > item.max:
                raise SchemaError(f"{self.type_code}: {where} may occur at most {item.max} time(s), got {len(values)}")
            for value in values:
                child = etree.SubElement(el, f"{{{HL7}}}{item.name}")
                self._fill(child, item, value, where)


# libxml2 quotes the offending value ("The value '19430404' is not accepted …", "'M' is not a valid value …");
# a value may be a birth date or an ID number, and these messages are stored and shown: the values go.
_QUOTED_VALUE = re.compile(r"[Tt]he value '[^']*'|(?<=: )'[^']*'(?= is not a valid value)")


def _unquoted(message: str) -> str:
    return _QUOTED_VALUE.sub(lambda m: "the value" if m.group(0)[0] in "'t" else "The value", message)


def _free(el: etree._Element, data: dict) -> None:
    """Write content the schema leaves open (``ANY``) as given: ``@xsi:type`` and other attributes, text, children."""
    for key, value in data.items():
        if value is None:
            continue
        if key == "#":
            el.text = str(value)
        elif key == "@xsi:type":
            el.set(f"{{{XSI}}}type", str(value))
        elif key.startswith("@"):
            el.set(key[1:], str(value))
        else:
            for item in _as_list(value):
                child = etree.SubElement(el, f"{{{HL7}}}{key}")
                _free(child, item if isinstance(item, dict) else {"#": item})


_lock = threading.Lock()


@cache
def _load(type_code: str) -> Schema:
    xsd = resources.files("smartcare.standards.wst500").joinpath(f"{type_code}.xsd").read_bytes()
    return Schema(type_code, xsd)


def schema_for(type_code: str) -> Schema:
    """The compiled schema of a WS/T 500 document type (C0001…C0053), compiled once per process."""
    if type_code not in _DOC_TYPES:
        raise SchemaError(f"{type_code!r} is not a WS/T 500 document type (C0001…C0053)")
    with _lock:  # two threads compiling the same XSD at once would both pay for it
        return _load(type_code)
