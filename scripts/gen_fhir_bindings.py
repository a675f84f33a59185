"""Generate src/medmesh/interop/fhir/bindings.py from the HL7 FHIR R4 (4.0.1) definitions.

Usage (from the repository root, after ``npm install``):

    .venv/bin/python scripts/gen_fhir_bindings.py node_modules/hl7.fhir.r4.examples \
        > src/medmesh/interop/fhir/bindings.py
    .venv/bin/ruff format src/medmesh/interop/fhir/bindings.py

Reads the StructureDefinition, ValueSet and CodeSystem JSON files of the package and writes a
Python module with the element types of the stored resource types, Bundle and every complex
data type, the elements with a ``required`` binding, and the codes of those value sets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from medmesh.interop.fhir.types import SUPPORTED_TYPES as STORED

EXTRA = ("Bundle", "Resource", "DomainResource")
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"


def load(folder: Path, prefix: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{prefix}-*.json"))]


def main(folder: Path) -> None:
    sds = [
        d
        for d in load(folder, "StructureDefinition")
        if d.get("derivation", "specialization") == "specialization"
        and d.get("kind") in ("resource", "complex-type", "primitive-type")
    ]
    by_type = {d["type"]: d for d in sds}
    resources = sorted(d["type"] for d in sds if d["kind"] == "resource" and not d.get("abstract"))
    primitives = sorted(d["type"] for d in sds if d["kind"] == "primitive-type")
    complex_types = sorted(d["type"] for d in sds if d["kind"] == "complex-type")
    value_sets = {d["url"]: d for d in load(folder, "ValueSet")}
    code_systems = {d["url"]: d for d in load(folder, "CodeSystem")}

    elements: dict[str, dict[str, tuple[str, bool]]] = {}
    bindings: dict[str, dict[str, str]] = {}
    bound: dict[str, str] = {}  # value set url -> name
    skipped: dict[str, str] = {}  # value set url -> reason
    expanded: dict[str, dict[str, list[str]]] = {}
    targets: dict[str, dict[str, tuple[str, ...]]] = {}

    def expand(url: str, seen: tuple[str, ...] = ()) -> dict[str, set[str]] | str:
        """system -> codes, or the reason the value set cannot be enumerated."""
        vs = value_sets.get(url)
        if vs is None:
            return "value set not in the package"
        compose = vs.get("compose") or {}
        out: dict[str, set[str]] = {}
        for inc in compose.get("include", []):
            if inc.get("filter"):
                return "defined by a filter"
            for imported in inc.get("valueSet", []):
                if imported in seen:
                    return "circular import"
                sub = expand(imported.split("|")[0], (*seen, url))
                if isinstance(sub, str):
                    return sub
                for system, codes in sub.items():
                    out.setdefault(system, set()).update(codes)
            system = inc.get("system")
            if system is None:
                continue
            if inc.get("concept"):
                out.setdefault(system, set()).update(c["code"] for c in inc["concept"])
                continue
            cs = code_systems.get(system)
            if cs is None:
                return f"whole external code system {system}"
            if cs.get("content") != "complete":
                return f"code system {system} is not complete in the package"

            def walk(concepts: list[dict[str, Any]], into: set[str]) -> None:
                for c in concepts:
                    into.add(c["code"])
                    walk(c.get("concept", []), into)

            walk(cs.get("concept", []), out.setdefault(system, set()))
        for exc in compose.get("exclude", []):
            if exc.get("filter") or exc.get("valueSet") or not exc.get("concept"):
                return "exclusion that cannot be enumerated"
            out.get(exc["system"], set()).difference_update(c["code"] for c in exc["concept"])
        if not out:
            return "no codes"
        return out

    def element_type(el: dict[str, Any]) -> list[tuple[str, str]]:
        """(json key suffix, type) pairs of one element definition."""
        if "contentReference" in el:
            return [("", el["contentReference"].lstrip("#"))]
        out = []
        for t in el.get("type", []):
            code = t["code"]
            if code.startswith("http://hl7.org/fhirpath/System."):
                ext = {e["url"]: e for e in t.get("extension", [])}.get(FHIR_TYPE_EXT)
                code = ext["valueUrl"] if ext else "string"
            elif code in ("BackboneElement", "Element") and el["path"].count(".") > 0:
                code = el["path"]
            out.append((code[0].upper() + code[1:], code))
        return out

    def add(type_name: str) -> None:
        sd = by_type[type_name]
        for el in sd["snapshot"]["element"]:
            path = el["path"]
            if "." not in path:
                continue
            owner, name = path.rsplit(".", 1)
            owner = type_name if owner == sd["type"] else owner
            is_list = el.get("max") == "*" or (el.get("max", "1").isdigit() and int(el["max"]) > 1)
            types = element_type(el)
            if sd["kind"] == "resource" and path == f"{sd['type']}.id":
                types = [("", "id")]  # R4 types Resource.id as System.String; it is an id
            table = elements.setdefault(owner, {})
            if name.endswith("[x]"):
                for suffix, code in types:
                    table[name[:-3] + suffix] = (code, is_list)
                keys = [name[:-3] + suffix for suffix, _ in types]
            else:
                assert len(types) == 1, (path, types)
                table[name] = (types[0][1], is_list)
                keys = [name]
            for t in el.get("type", []):
                profiles = t.get("targetProfile", [])
                names = sorted({u.rsplit("/", 1)[-1] for u in profiles})
                if t["code"] == "Reference" and names and "Resource" not in names:
                    key = name[:-3] + "Reference" if name.endswith("[x]") else name
                    targets.setdefault(owner, {})[key] = tuple(names)
            binding = el.get("binding") or {}
            if binding.get("strength") != "required" or "valueSet" not in binding:
                continue
            url = binding["valueSet"].split("|")[0]
            codes = expand(url)
            if isinstance(codes, str):
                skipped[url] = codes
                continue
            vs_name = url.rsplit("/", 1)[-1]
            assert bound.setdefault(url, vs_name) == vs_name
            expanded[vs_name] = {s: sorted(c) for s, c in sorted(codes.items())}
            for key in keys:
                bindings.setdefault(owner, {})[key] = vs_name

    # The stored types, Bundle and the bases, and every complex data type they reach (through
    # their elements and Extension.value[x]); ElementDefinition, for one, is not reached.
    todo = [*STORED, *EXTRA, "Element", "BackboneElement", "Extension"]
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        add(name)
        for table in list(elements.values()):
            todo.extend(t for t, _ in table.values() if t in complex_types and t not in done)
    complex_types = sorted(t for t in complex_types if t in done)

    w = sys.stdout.write
    w(HEADER.format(skipped="\n".join(f"- {u}: {r}" for u, r in sorted(skipped.items()))))
    w(f"RESOURCE_TYPES: Final[frozenset[str]] = frozenset({resources!r})\n")
    w('"""Every concrete resource type of FHIR R4."""\n\n')
    w(f"PRIMITIVE_TYPES: Final[frozenset[str]] = frozenset({primitives!r})\n")
    w(f"COMPLEX_TYPES: Final[frozenset[str]] = frozenset({complex_types!r})\n\n")
    w("ELEMENTS: Final[dict[str, dict[str, tuple[str, bool]]]] = {\n")
    for owner in sorted(elements):
        w(f"    {owner!r}: {{\n")
        for key, (code, is_list) in elements[owner].items():
            w(f"        {key!r}: ({code!r}, {is_list}),\n")
        w("    },\n")
    w("}\n")
    w('"""Type -> JSON key -> (element type, repeats). Backbone elements are named by path."""\n\n')
    w("REQUIRED_BINDINGS: Final[dict[str, dict[str, str]]] = {\n")
    for owner in sorted(bindings):
        w(f"    {owner!r}: {bindings[owner]!r},\n")
    w("}\n")
    w('"""Type -> JSON key -> name of the value set it is bound to with strength required."""\n\n')
    w("REFERENCE_TARGETS: Final[dict[str, dict[str, tuple[str, ...]]]] = {\n")
    for owner in sorted(targets):
        w(f"    {owner!r}: {targets[owner]!r},\n")
    w("}\n")
    w(
        '"""Type -> JSON key of a Reference -> the resource types it may point to (absent: any)."""\n\n'
    )
    w("VALUE_SETS: Final[dict[str, dict[str, frozenset[str]]]] = {\n")
    for vs_name in sorted(expanded):
        w(f"    {vs_name!r}: {{\n")
        for system, codes in expanded[vs_name].items():
            w(f"        {system!r}: frozenset({codes!r}),\n")
        w("    },\n")
    w("}\n")
    w('"""Value set name (last part of its canonical URL) -> code system -> codes."""\n')


HEADER = '''"""FHIR R4 (4.0.1) element types, required value-set bindings and reference targets.

GENERATED: do not edit. Made by ``scripts/gen_fhir_bindings.py`` (outside the package):

    python scripts/gen_fhir_bindings.py node_modules/hl7.fhir.r4.examples > <this file>
    ruff format <this file>

from the StructureDefinition, ValueSet and CodeSystem JSON files of the npm package
``hl7.fhir.r4.examples`` (FHIR R4 4.0.1, CC0). The runtime never reads ``node_modules``.

- ``ELEMENTS``: for the stored resource types, Bundle, Resource, DomainResource, Element,
  BackboneElement and every complex data type these reach (ElementDefinition, say, is not
  reached), each element's JSON key(s) (``value[x]`` expanded to ``valueQuantity``, ...), type
  and whether it repeats. Backbone elements are named by their path (``Patient.contact``);
  ``contentReference`` elements (``Consent.provision.provision``) name the element they reuse.
- ``REQUIRED_BINDINGS`` and ``VALUE_SETS``: every element with a ``required`` binding whose
  value set can be enumerated offline, and its codes per code system, expanded from the code
  systems' ``concept`` trees (nested concepts included) or the value set's concept lists.
- ``REFERENCE_TARGETS``: the resource types a Reference element may point to
  (``targetProfile``), where R4 restricts them.

Required bindings skipped because their value set cannot be enumerated offline (these
elements are checked by type only):

{skipped}
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "COMPLEX_TYPES",
    "ELEMENTS",
    "PRIMITIVE_TYPES",
    "REFERENCE_TARGETS",
    "REQUIRED_BINDINGS",
    "RESOURCE_TYPES",
    "VALUE_SETS",
]

'''

if __name__ == "__main__":
    main(Path(sys.argv[1]))
