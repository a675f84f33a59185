"""Validation of FHIR R4 resources and bundles before medmesh stores them.

Four steps, each raising :class:`~medmesh.interop.fhir.outcome.FhirError`:

1. :func:`parse_json` turns a request body into a JSON object: 413 past the size limit, 400
   (``structure``) for invalid UTF-8, invalid JSON (with its line and column), duplicate keys,
   ``NaN``/``Infinity``, nesting deeper than :data:`MAX_JSON_DEPTH` or a body that is not an
   object.
2. :func:`validate_resource` checks ``resourceType`` (400), then the structure with the
   ``fhir.resources`` R4B models, which read R4 content (unknown elements, cardinality, data
   type formats, choice elements: 400).
3. A walk of the resource along the R4 element types of :mod:`.bindings` adds what those
   models skip: JSON types of primitives (``"active": "true"`` is not a boolean), nulls,
   empty objects, arrays and strings, logical ids (``[A-Za-z0-9-.]{1,64}``), all 400; and the
   business rules, all 422: codes of elements with a ``required`` binding (for a Coding or
   CodeableConcept, only codings of the value set's own system are checked), references
   (well-formed, pointing to an allowed resource type, ``#id`` to a contained resource), the
   invariants on contained resources (dom-2..dom-5), on extensions (ext-1) and a subset of the
   narrative rule (txt-1: no script, form, frame or event-handler markup).
4. :func:`validate_bundle` checks a transaction or batch Bundle and every entry as in 2 and 3,
   plus the bundle rules: ``request`` on every entry, a resource for POST and PUT that matches
   ``request.url``, unique ``fullUrl``s (bdl-7, 422), no ``_history`` in them (bdl-8, 422) and
   ``urn:uuid:``/``urn:oid:`` references that name an entry (422).

So 400 means "not valid FHIR", 422 "valid FHIR that breaks a rule". When both kinds are
found the status is 400 and every issue is listed (at most :data:`MAX_ISSUES`). Diagnostics
never repeat a value from the content: an element path and a fixed text only.

Whether a relative reference (``Patient/p1``) names a resource the server knows is not
checked here: that is the repository's job (:func:`references` lists them).

    >>> validate_resource({"resourceType": "Patient", "gender": "female"})["gender"]
    'female'
"""

from __future__ import annotations

import json
import math
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Final

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from medmesh.interop.fhir.bindings import (
    ELEMENTS,
    PRIMITIVE_TYPES,
    REFERENCE_TARGETS,
    REQUIRED_BINDINGS,
    RESOURCE_TYPES,
    VALUE_SETS,
)
from medmesh.interop.fhir.outcome import FhirError, Issue
from medmesh.interop.fhir.types import SUPPORTED_TYPES
from medmesh.workers import map_batch

__all__ = [
    "BUNDLE_TYPES",
    "MAX_BUNDLE_BYTES",
    "MAX_ISSUES",
    "MAX_JSON_DEPTH",
    "MAX_RESOURCE_BYTES",
    "SUPPORTED_TYPES",
    "in_entry",
    "parse_json",
    "parse_reference",
    "references",
    "validate_bundle",
    "validate_resource",
]


BUNDLE_TYPES: Final[tuple[str, ...]] = ("transaction", "batch")
"""The Bundle types :func:`validate_bundle` takes (what ``POST [base]`` processes)."""

MAX_RESOURCE_BYTES: Final = 4 * 1024 * 1024
"""Largest body of one resource (create, update): 4 MiB. Larger clinical content (images,
scanned documents) goes in as records or DICOM, referenced from the resource."""

MAX_BUNDLE_BYTES: Final = 64 * 1024 * 1024
"""Largest body of a transaction or batch Bundle: 64 MiB."""

MAX_ISSUES: Final = 100
"""Most issues listed in one OperationOutcome; one more issue says how many were left out."""

MAX_DEPTH: Final = 100
"""Deepest element nesting walked; deeper content is refused (400)."""

MAX_JSON_DEPTH: Final = 200
"""Deepest nesting of JSON arrays and objects :func:`parse_json` reads. It is checked before
``json.loads``: web3's ``py_ecc`` raises Python's recursion limit to 100,000, and past the C
stack a deeply nested body would crash the process instead of raising RecursionError."""

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_RELATIVE = re.compile(
    r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?"
)
_URL_TAIL = re.compile(
    r"/([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?\Z"
)
_UUID_URN = re.compile(
    r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_OID_URN = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_CONDITIONAL = re.compile(r"[A-Z][A-Za-z]+\?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DIV = re.compile(r"\s*<div[\s>/]")
_UNSAFE_XHTML = re.compile(  # one quantifier per run of characters: linear, no backtracking
    r"<[\s/]*(script|style|iframe|frame|frameset|object|embed|applet|form|input|button|select|"
    r"textarea|option|base|link|meta|svg|math)\b|<[^<>]*\son[a-z]+\s*=|<[^<>]*javascript\s*:",
    re.IGNORECASE,
)
_INT_RANGE: Final = {
    "integer": (-(2**31), 2**31 - 1),
    "unsignedInt": (0, 2**31 - 1),
    "positiveInt": (1, 2**31 - 1),
}
_URI_TYPES: Final = frozenset({"uri", "url", "canonical"})
_ALL_CODES: Final = {vs: frozenset().union(*systems.values()) for vs, systems in VALUE_SETS.items()}
_NOT_DOMAIN: Final = frozenset({"Bundle", "Binary", "Parameters"})  # Resource, not DomainResource


# -- parsing -------------------------------------------------------------------------------


class _NotFhirJson(ValueError):
    """JSON that Python reads but FHIR does not take."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                name = f" {key!r}" if _NAME.fullmatch(key) else ""  # element names only
                raise _NotFhirJson(f"duplicate key{name} in a JSON object")
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise _NotFhirJson(f"{name} is not a JSON number")


_NOT_SKELETON: Final = bytes(c for c in range(256) if c not in b'[]{}"')
_STEPS: Final = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")  # +1 / -1 as signed bytes


def _too_deep(body: bytes) -> bool:
    """Whether the JSON ``body`` may nest arrays and objects deeper than MAX_JSON_DEPTH.

    Free when it has fewer brackets than that. Otherwise linear in C-level byte operations
    (about as fast as ``json.loads``): escapes and string contents are cut out, the
    innermost ``[]``/``{}`` pairs removed, and the depth of what is left is its running sum
    of +1 and -1. Unpaired brackets (invalid JSON) count as levels."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    skeleton = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_SKELETON)
    skeleton = b"".join(skeleton.split(b'"')[::2])  # between quote pairs: strings
    skeleton = skeleton.replace(b"[]", b"").replace(b"{}", b"")
    steps = array("b")
    steps.frombytes(skeleton.translate(_STEPS))
    return 1 + max(accumulate(steps), default=0) > MAX_JSON_DEPTH


def _structure(text: str, expression: Sequence[str] = ()) -> FhirError:
    return FhirError.invalid([Issue("error", "structure", text, list(expression))])


def parse_json(body: bytes, *, limit: int) -> dict[str, Any]:
    """The JSON object in ``body``, a FHIR resource's raw bytes.

    Raises :class:`FhirError`: 413 when ``body`` is longer than ``limit`` bytes; 400
    (``structure``) when it is not UTF-8 (a leading byte-order mark is accepted), not JSON
    (the message gives the line and column), has duplicate keys, ``NaN`` or ``Infinity``, is
    nested too deeply, or is not a JSON object. No part of the body is echoed.

        >>> parse_json(b'{"resourceType": "Patient"}', limit=MAX_RESOURCE_BYTES)
        {'resourceType': 'Patient'}
    """
    if len(body) > limit:
        raise FhirError.too_large(f"the body is larger than {limit} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _structure(f"the body is not valid UTF-8 (byte offset {exc.start})") from None
    text = text.removeprefix("\ufeff")
    if _too_deep(body):
        raise _structure(f"the JSON nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise _structure(
            f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except _NotFhirJson as exc:
        raise _structure(str(exc)) from None
    except RecursionError:  # only if MAX_JSON_DEPTH were above the recursion limit
        raise _structure("the JSON is nested too deeply") from None
    except ValueError:  # e.g. an integer with more digits than Python converts
        raise _structure("the JSON holds a number that cannot be read") from None
    if not isinstance(data, dict):
        raise _structure("the body must be a JSON object (a FHIR resource)")
    return data


# -- references ----------------------------------------------------------------------------


def parse_reference(ref: str) -> tuple[str, str, str | None] | None:
    """``(type, id, version)`` of a relative reference ``Type/id`` or
    ``Type/id/_history/version`` (version None when absent) whose type is a FHIR R4 resource
    type; None for anything else: absolute URLs, ``urn:uuid:``/``urn:oid:``, ``#contained``
    and malformed references.

        >>> parse_reference("Patient/p1/_history/2")
        ('Patient', 'p1', '2')
        >>> parse_reference("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0") is None
        True
    """
    m = _RELATIVE.fullmatch(ref)
    if m is None or m.group(1) not in RESOURCE_TYPES:
        return None
    return m.group(1), m.group(2), m.group(3)


def references(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(FHIRPath, reference)`` of every ``Reference.reference`` string in ``data``, in
    document order, contained resources and bundle entries included; the path ends in
    ``.reference``, e.g. ``("Observation.subject.reference", "Patient/p1")``.

    Elements are found by their R4 type; inside resources of types medmesh does not store
    (a contained Organization, say) any object with a string ``reference`` counts.
    """
    walk = _Walk()
    rt = data.get("resourceType")
    walk.resource(data, rt if isinstance(rt, str) else "Resource", None, 0)
    return walk.refs


# -- the walk ------------------------------------------------------------------------------


@dataclass
class _Context:
    """One resource with its contained resources: where ``#id`` references resolve."""

    contained: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (type, index)
    # (path of the reference string, reference, allowed types, index of the contained resource
    # it is in or -1)
    refs: list[tuple[str, str, tuple[str, ...] | None, int]] = field(default_factory=list)
    local: set[str] = field(default_factory=set)  # "#..." uris/canonicals (dom-3)
    contained_paths: list[str] = field(default_factory=list)
    contained_ids: list[str | None] = field(default_factory=list)


class _Walk:
    """One pass over a resource along its R4 element types, collecting issues and references."""

    def __init__(self) -> None:
        self.structure: list[Issue] = []  # 400
        self.rules: list[Issue] = []  # 422
        self.refs: list[tuple[str, str]] = []
        self.ctx = _Context()
        self.in_contained = -1
        self.too_deep = False

    def bad(self, code: str, text: str, path: str) -> None:
        self.structure.append(Issue("error", code, text, [path]))

    def rule(self, code: str, text: str, path: str) -> None:
        self.rules.append(Issue("error", code, text, [path]))

    def deep(self, path: str) -> None:
        if not self.too_deep:
            self.too_deep = True
            text = f"elements are nested deeper than {MAX_DEPTH} levels"
            self.bad("structure", text, path.partition(".")[0])

    # -- resources

    def resource(self, value: Any, path: str, contained: int | None, depth: int) -> None:
        """Walk a resource at ``path`` (the type name at the top); ``contained`` is its index
        in its container's ``contained``, None for a resource of its own."""
        if not isinstance(value, dict):
            self.bad("structure", "must be a JSON object (a resource)", path)
            return
        rt = value.get("resourceType")
        if not isinstance(rt, str) or rt not in RESOURCE_TYPES:
            self.bad("invalid", "resourceType is missing or not a FHIR R4 resource type", path)
            return
        typed = rt in ELEMENTS
        base = rt if typed else ("Resource" if rt in _NOT_DOMAIN else "DomainResource")
        if contained is None:
            outer, outer_in = self.ctx, self.in_contained
            self.ctx, self.in_contained = _Context(), -1
            self.complex(value, base, path, depth, typed)
            self.finish(self.ctx)
            self.ctx, self.in_contained = outer, outer_in
            return
        self.contained_rules(value, rt, path, contained)
        outer_in, self.in_contained = self.in_contained, contained
        self.complex(value, base, path, depth, typed)
        self.in_contained = outer_in

    def contained_rules(self, value: dict[str, Any], rt: str, path: str, index: int) -> None:
        ctx = self.ctx
        id_ = value.get("id")
        ctx.contained_paths.append(path)
        ctx.contained_ids.append(id_ if isinstance(id_, str) else None)
        if isinstance(id_, str):
            if id_ in ctx.contained:
                other = ctx.contained_paths[ctx.contained[id_][1]]
                self.rule("invalid", f"contained resources have the same id as {other}", path)
            else:
                ctx.contained[id_] = (rt, index)
        if "contained" in value:
            self.rule("invariant", "a contained resource cannot contain resources (dom-2)", path)
        meta = value.get("meta")
        if isinstance(meta, dict):
            if "versionId" in meta or "lastUpdated" in meta:
                text = "a contained resource has no meta.versionId or meta.lastUpdated (dom-4)"
                self.rule("invariant", text, f"{path}.meta")
            if "security" in meta:
                text = "a contained resource has no security labels (dom-5)"
                self.rule("invariant", text, f"{path}.meta.security")

    # -- elements

    def complex(self, value: Any, type_: str, path: str, depth: int, typed: bool = True) -> None:
        if not isinstance(value, dict):
            self.bad("structure", "must be a JSON object", path)
            return
        if not value:
            self.bad("structure", "an element cannot be an empty object", path)
            return
        if depth > MAX_DEPTH:
            self.deep(path)
            return
        table = ELEMENTS[type_]
        bindings = REQUIRED_BINDINGS.get(type_)
        targets = REFERENCE_TARGETS.get(type_)
        for key, item in value.items():
            spec = table.get(key)
            if spec is None:
                if key[:1] == "_":
                    base = table.get(key[1:])
                    if base is not None and base[0] in PRIMITIVE_TYPES:
                        self.extensions(item, f"{path}.{key}", base[1], depth)
                        continue
                if typed:  # R4B-only elements pass the models, fhir_comments too
                    if key != "resourceType":
                        name = key if _NAME.fullmatch(key) else "?"
                        self.bad(
                            "structure", "unknown element for this FHIR type", f"{path}.{name}"
                        )
                elif key not in ("resourceType", "contained"):
                    self.generic(item, f"{path}.{key}", depth + 1)
                continue
            etype, many = spec
            kpath = f"{path}.{key}"
            vs = bindings.get(key) if bindings else None
            allowed = targets.get(key) if targets else None
            if many:
                if not isinstance(item, list):
                    self.bad("structure", "must be a JSON array", kpath)
                    continue
                if not item:
                    self.bad("structure", "an element cannot be an empty array", kpath)
                    continue
                for i, x in enumerate(item):
                    if x is None and etype in PRIMITIVE_TYPES:
                        continue  # a placeholder matching an extension in "_key"
                    self.element(x, etype, f"{kpath}[{i}]", depth, vs, allowed, key == "contained")
            elif isinstance(item, list):
                self.bad("structure", "must not be a JSON array", kpath)
            elif item is None:
                self.bad("structure", "null is not allowed here", kpath)
            else:
                self.element(item, etype, kpath, depth, vs, allowed, False)
        if (
            type_ == "Extension"
            and "extension" in value
            and any(k.startswith("value") for k in value)
        ):
            text = "an extension has a value[x] or nested extensions, not both (ext-1)"
            self.rule("invariant", text, path)

    def element(
        self,
        x: Any,
        etype: str,
        path: str,
        depth: int,
        vs: str | None,
        allowed: tuple[str, ...] | None,
        contained: bool,
    ) -> None:
        if etype in PRIMITIVE_TYPES:
            self.primitive(x, etype, path)
            if vs is not None and isinstance(x, str) and x not in _ALL_CODES[vs]:
                self.not_in(vs, path)
        elif etype == "Resource":
            self.resource(x, path, len(self.ctx.contained_paths) if contained else None, depth + 1)
        else:
            self.complex(x, etype, path, depth + 1)
            if not isinstance(x, dict):
                return
            if etype == "Reference":
                ref = x.get("reference")
                if isinstance(ref, str):
                    self.refs.append((f"{path}.reference", ref))
                    self.ctx.refs.append((f"{path}.reference", ref, allowed, self.in_contained))
            elif vs is not None:
                if etype == "Coding":
                    self.coding(x, vs, path)
                elif etype == "CodeableConcept":
                    codings = x.get("coding")
                    if isinstance(codings, list):
                        for j, coding in enumerate(codings):
                            if isinstance(coding, dict):
                                self.coding(coding, vs, f"{path}.coding[{j}]")

    def coding(self, coding: dict[str, Any], vs: str, path: str) -> None:
        codes = VALUE_SETS[vs].get(coding.get("system"))  # type: ignore[arg-type]
        code = coding.get("code")
        if codes is not None and isinstance(code, str) and code not in codes:
            self.not_in(vs, f"{path}.code")

    def not_in(self, vs: str, path: str) -> None:
        self.rule("code-invalid", f"value is not in the required value set {vs}", path)

    def primitive(self, x: Any, etype: str, path: str) -> None:
        if etype == "boolean":
            if type(x) is not bool:
                self.bad("structure", "must be a JSON boolean (true or false)", path)
        elif etype in _INT_RANGE:
            low, high = _INT_RANGE[etype]
            if type(x) is not int:
                self.bad("structure", f"must be a JSON number without fraction ({etype})", path)
            elif not low <= x <= high:
                self.bad("value", f"number out of the range of {etype}", path)
        elif etype == "decimal":
            if type(x) not in (int, float):
                self.bad("structure", "must be a JSON number (decimal)", path)
            elif not math.isfinite(x):
                self.bad("value", "a decimal must be finite", path)
        elif type(x) is not str:
            self.bad("structure", f"must be a JSON string ({etype})", path)
        elif not x:
            self.bad("structure", "an element cannot be an empty string", path)
        elif etype == "id":
            if not _ID.fullmatch(x):
                self.bad("value", "not a valid id (1 to 64 of A-Z a-z 0-9 - .)", path)
        elif etype in _URI_TYPES:
            if x[0] == "#":
                self.ctx.local.add(x)
        elif etype == "xhtml":
            if not _DIV.match(x):
                self.bad("value", "the narrative must be an XHTML <div> element", path)
            elif _UNSAFE_XHTML.search(x):
                text = "the narrative holds markup FHIR does not allow: scripts, forms, "
                self.rule("invariant", text + "frames, event handlers (txt-1)", path)

    def extensions(self, item: Any, path: str, many: bool, depth: int) -> None:
        """``_key``: the id and extensions of a primitive element (an array of them, with
        nulls, when the primitive repeats)."""
        if many:
            if not isinstance(item, list):
                self.bad("structure", "must be a JSON array", path)
                return
            for i, x in enumerate(item):
                if x is not None:
                    self.complex(x, "Element", f"{path}[{i}]", depth + 1)
        else:
            self.complex(item, "Element", path, depth + 1)

    def generic(self, x: Any, path: str, depth: int) -> None:
        """Content of an element whose type is not in the tables: resources by their
        ``resourceType``, references by a string ``reference``."""
        if depth > MAX_DEPTH:
            self.deep(path)
        elif isinstance(x, list):
            for i, y in enumerate(x):
                self.generic(y, f"{path}[{i}]", depth + 1)
        elif isinstance(x, str):
            if x[:1] == "#":
                self.ctx.local.add(x)  # perhaps a canonical to a contained resource (dom-3)
        elif isinstance(x, dict):
            if isinstance(x.get("resourceType"), str):
                self.resource(x, path, None, depth + 1)
                return
            ref = x.get("reference")
            if isinstance(ref, str):
                self.refs.append((f"{path}.reference", ref))
                self.ctx.refs.append((f"{path}.reference", ref, None, self.in_contained))
            for key, y in x.items():
                self.generic(y, f"{path}.{key}", depth + 1)

    # -- the rules on a whole resource

    def finish(self, ctx: _Context) -> None:
        """References of one resource (and its contained ones), and dom-3."""
        used: set[str] = set(ctx.local)
        to_container: set[int] = set()
        for path, ref, allowed, inside in ctx.refs:
            if ref[:1] == "#":
                used.add(ref)
                if ref == "#":
                    if inside < 0:
                        self.rule("invalid", "'#' refers to a container; there is none", path)
                    to_container.add(inside)
                    continue
                target = ctx.contained.get(ref[1:])
                if target is None:
                    self.rule(
                        "invalid", "reference to a contained resource that is not there", path
                    )
                else:
                    self.target(target[0], allowed, path)
                continue
            parsed = parse_reference(ref)
            if parsed is not None:
                self.target(parsed[0], allowed, path)
            elif ref.startswith("urn:uuid:"):
                if not _UUID_URN.fullmatch(ref):
                    self.rule("invalid", "malformed urn:uuid: reference", path)
            elif ref.startswith("urn:oid:"):
                if not _OID_URN.fullmatch(ref):
                    self.rule("invalid", "malformed urn:oid: reference", path)
            elif _CONDITIONAL.match(ref):
                self.rule("not-supported", "conditional references are not supported", path)
            elif _ABSOLUTE.fullmatch(ref):
                if ref.startswith(("http://", "https://")):
                    tail = _URL_TAIL.search(ref.partition("?")[0])
                    if tail is not None and tail.group(1) in RESOURCE_TYPES:
                        self.target(tail.group(1), allowed, path)
            else:
                self.rule(
                    "invalid",
                    "malformed reference: use Type/id, Type/id/_history/version, #id, an "
                    "absolute URL, urn:uuid: or urn:oid:",
                    path,
                )
        for index, (path, id_) in enumerate(
            zip(ctx.contained_paths, ctx.contained_ids, strict=True)
        ):
            if (id_ is None or f"#{id_}" not in used) and index not in to_container:
                text = "a contained resource must be referenced from its container, or refer to it (dom-3)"
                self.rule("invariant", text, path)

    def target(self, type_: str, allowed: tuple[str, ...] | None, path: str) -> None:
        if allowed is not None and type_ not in allowed:
            text = f"a reference to a {type_} is not allowed here (only {', '.join(allowed)})"
            self.rule("invalid", text, path)


# -- structure by the fhir.resources models ------------------------------------------------

_JSON_TYPES: Final = {
    "string_type": "a JSON string",
    "bool_type": "a JSON boolean",
    "bool_parsing": "a JSON boolean",
    "int_type": "a JSON integer",
    "int_parsing": "a JSON integer",
    "int_from_float": "a JSON integer",
    "float_type": "a JSON number",
    "float_parsing": "a JSON number",
    "decimal_type": "a JSON number",
    "decimal_parsing": "a JSON number",
    "list_type": "a JSON array",
    "tuple_type": "a JSON array",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "dataclass_type": "a JSON object",
    "json_invalid": "a JSON object",
    "json_type": "a JSON object",
}
_VALUE_ERRORS: Final = (
    (re.compile(r"Value error, ([A-Za-z0-9]+) value string does not match spec regex"), None),
    (
        re.compile(r"Value error, DateTime must be timezone aware"),
        "a dateTime with a time needs a time zone",
    ),
    (
        re.compile(r"Value error, Instant (must be timezone aware|value does not parse)"),
        "not a valid instant",
    ),
)
_CHOICE = re.compile(r"Value error, (Any of one|Expect any of) field value[^\[]*\[([^\]]*)\]")


def _fhirpath(root: str, loc: tuple[int | str, ...]) -> str:
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.fullmatch(part):
            out += f".{part}"
        else:
            out += ".?"  # not an element name: never echoed
    return out


def _model_issues(rt: str, exc: ValidationError) -> list[Issue]:
    """Issues of a model ValidationError: its loc as a path, fixed texts by error type
    (pydantic's ``msg`` and ``input`` may hold content and are never used as such)."""
    out: list[Issue] = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        type_ = err["type"]
        loc = err["loc"]
        if (
            type_ == "extra_forbidden"
            and len(loc) >= 3
            and (str(loc[-1]).startswith("_value") or loc[-1] == "valueMeta")
            and loc[-3] in ("extension", "modifierExtension")
        ):
            continue  # valid R4 the R4B Extension lacks ("_valueString", valueMeta): walked
        msg = err.get("msg", "")
        path = _fhirpath(rt, tuple(loc))
        if type_ in ("missing", "model_field_validation.missing"):
            issue = Issue("error", "required", "a required element is missing", [path])
        elif type_ == "extra_forbidden":
            issue = Issue("error", "structure", "unknown element for this FHIR type", [path])
        elif type_ == "list_type" and msg.startswith("None is not allowed"):
            issue = Issue("error", "structure", "null is not allowed in this array", [path])
        elif type_ in _JSON_TYPES:
            issue = Issue("error", "structure", f"must be {_JSON_TYPES[type_]}", [path])
        elif type_.startswith("string_"):
            text = "the value does not have the format of its FHIR data type"
            issue = Issue("error", "value", text, [path])
        elif type_.startswith(("greater_than", "less_than")):
            issue = Issue("error", "value", "number out of the range of its FHIR data type", [path])
        elif type_ == "value_error":
            issue = _value_issue(msg, path)
        else:
            issue = Issue("error", "structure", "not a valid element here", [path])
        out.append(issue)
    return out


def _value_issue(msg: str, path: str) -> Issue:
    choice = _CHOICE.match(msg)
    if choice is not None:
        names = [n.strip(" '\"") for n in choice.group(2).split(",")]
        stem = _common_prefix(names)
        where = f"{path}.{stem}" if _NAME.fullmatch(stem) else path
        if choice.group(1) == "Any of one":
            return Issue("error", "structure", f"only one {stem}[x] element is allowed", [where])
        return Issue("error", "required", f"{stem}[x] is required", [where])
    for pattern, text in _VALUE_ERRORS:
        m = pattern.match(msg)
        if m is not None:
            if text is None:
                kind = m.group(1)
                text = f"not a valid {kind[0].lower()}{kind[1:]}"
            return Issue("error", "value", text, [path])
    return Issue("error", "value", "not a valid value for its FHIR data type", [path])


def _common_prefix(names: list[str]) -> str:
    if not names:
        return ""
    first, last = min(names), max(names)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _check_model(rt: str, data: dict[str, Any]) -> list[Issue] | None:
    """The model's issues, [] when valid, None when it failed in another way."""
    try:
        get_fhir_model_class(rt).model_validate(data)
    except ValidationError as exc:
        return _model_issues(rt, exc)
    except RecursionError:
        return [Issue("error", "structure", "elements are nested too deeply", [rt])]
    except Exception:  # an unknown nested resourceType, say: the walk says where
        return None
    return []


# -- resources -----------------------------------------------------------------------------


def _raise(issues: list[Issue], status: int) -> None:
    if len(issues) > MAX_ISSUES:
        left = len(issues) - MAX_ISSUES
        more = Issue("information", "too-costly", f"{left} more issues are not listed")
        issues = [*issues[:MAX_ISSUES], more]
    raise FhirError.invalid(issues, status=status)


def _check_type(data: Any, expected_type: str | None, allow_types: Sequence[str]) -> str:
    if not isinstance(data, dict):
        raise _structure("a resource must be a JSON object")
    rt = data.get("resourceType")
    where = [expected_type or "Resource"]
    if not isinstance(rt, str):
        raise FhirError.invalid([Issue("error", "required", "resourceType is missing", where)])
    if rt not in RESOURCE_TYPES:
        text = "resourceType is not a FHIR R4 resource type"
        raise FhirError.invalid([Issue("error", "invalid", text, where)])
    if expected_type is not None and rt != expected_type:
        text = f"resourceType {rt} does not match the URL type {expected_type}"
        raise FhirError.invalid(
            [Issue("error", "invalid", text, [f"{expected_type}.resourceType"])]
        )
    if rt not in allow_types:
        text = f"resource type {rt} is not supported here"
        raise FhirError.not_supported(text, status=400, expression=[rt])
    return rt


def _check(
    data: Any, expected_type: str | None, allow_types: Sequence[str]
) -> tuple[list[Issue], list[Issue], _Walk]:
    """(structure issues, rule issues, the walk) of one resource; raises for resourceType."""
    rt = _check_type(data, expected_type, allow_types)
    walk = _Walk()  # first: it stops at MAX_DEPTH, before the models would recurse too deep
    try:
        walk.resource(data, rt, None, 0)
    except RecursionError:
        walk.bad("structure", "elements are nested too deeply", rt)
    if walk.too_deep:
        return walk.structure, walk.rules, walk
    model = _check_model(rt, data)
    if model is None:
        model = (
            [] if walk.structure else [Issue("error", "structure", "not a valid resource", [rt])]
        )
    # The walk re-finds some of the model's structure issues: keep one per path.
    seen = {tuple(i.expression) for i in model}
    structure = model + [i for i in walk.structure if tuple(i.expression) not in seen]
    return structure, walk.rules, walk


def validate_resource(
    data: dict[str, Any],
    *,
    expected_type: str | None = None,
    allow_types: Sequence[str] = SUPPORTED_TYPES,
) -> dict[str, Any]:
    """``data`` itself (not a copy, not changed) once it is a valid FHIR R4 resource.

    ``expected_type`` is the type the URL names (400 when the body says another);
    ``allow_types`` the types accepted (add ``"Bundle"`` to check any bundle's structure).
    Raises :class:`FhirError` with status 400 (structure) or 422 (business rules, see the
    module docstring) and an issue per problem found.

        >>> validate_resource({"resourceType": "Patient", "gender": "f"})
        Traceback (most recent call last):
        ...
        medmesh.interop.fhir.outcome.FhirError: Patient.gender: value is not in the required value set administrative-gender
    """
    structure, rules, _ = _check(data, expected_type, allow_types)
    if structure:
        _raise(structure + rules, 400)
    if rules:
        _raise(rules, 422)
    return data


def validate_many(resources: Sequence[Any]) -> list[dict[str, Any] | FhirError]:
    """:func:`validate_resource` of each, its result or its error in its place; in worker
    processes for a large batch (:mod:`medmesh.workers`: validation is most of the CPU a
    gateway spends on an import besides sealing)."""
    out: list[dict[str, Any] | FhirError] = []
    for ok, value in map_batch(_validated, list(resources)):
        out.append(value if ok else FhirError(*value))
    return out


def _validated(data: Any) -> tuple[bool, Any]:
    """(True, the resource) or (False, what rebuilds its FhirError: exceptions built by
    keyword-free constructors other than their own do not survive pickling)."""
    try:
        return True, validate_resource(data)
    except FhirError as exc:
        return False, (exc.status, exc.issues, exc.message)


# -- bundles -------------------------------------------------------------------------------


def _moved(path: str, prefix: str) -> str:
    """``Observation.status`` of an entry's resource as ``<prefix>.status``."""
    _, dot, rest = path.partition(".")
    return f"{prefix}.{rest}" if dot else prefix


def in_entry(issue: Issue, prefix: str) -> Issue:
    """``issue`` of an entry's resource, its paths moved under ``prefix``."""
    paths = [_moved(path, prefix) for path in issue.expression]
    return Issue(issue.severity, issue.code, issue.diagnostics, paths)


def validate_bundle(
    data: dict[str, Any], *, allow_types: Sequence[str] = SUPPORTED_TYPES
) -> dict[str, Any]:
    """``data`` itself once it is a valid transaction or batch Bundle whose entries are valid
    resources of ``allow_types``.

    Other bundle types are refused (400 ``not-supported``). Each entry needs a ``request``;
    POST and PUT entries a resource, of the type their ``request.url`` names (and for
    ``PUT Type/id`` with that id when it has one). ``fullUrl``s are unique and unversioned,
    and every ``urn:uuid:``/``urn:oid:`` reference names an entry's ``fullUrl``. Issues of an
    entry's resource have paths such as ``Bundle.entry[3].resource.status``.
    """
    _check_type(data, "Bundle", ("Bundle",))
    kind = data.get("type")
    if kind not in BUNDLE_TYPES:
        known = isinstance(kind, str) and kind in _ALL_CODES["bundle-type"]
        named = f"a {kind} bundle" if known else "this bundle"
        text = f"only transaction and batch bundles are processed here, not {named}"
        raise FhirError.not_supported(text, status=400, expression=["Bundle.type"])
    entries = data.get("entry")
    shell = dict(data)
    if isinstance(entries, list):
        shell["entry"] = [
            {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
            for e in entries
        ]
    structure, rules, _ = _check(shell, "Bundle", ("Bundle",))
    if not isinstance(entries, list):
        entries = []
    full_urls: dict[str, int] = {}
    refs: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        where = f"Bundle.entry[{i}]"
        request = entry.get("request")
        method = request.get("method") if isinstance(request, dict) else None
        url = request.get("url") if isinstance(request, dict) else None
        if request is None:
            text = "a transaction or batch entry needs a request (bdl-3)"
            structure.append(Issue("error", "required", text, [f"{where}.request"]))
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            if full_url in full_urls:
                other = f"Bundle.entry[{full_urls[full_url]}]"
                text = f"fullUrl is the same as that of {other} (bdl-7)"
                rules.append(Issue("error", "invariant", text, [f"{where}.fullUrl"]))
            else:
                full_urls[full_url] = i
            if "/_history/" in full_url:
                text = "a fullUrl cannot name a version (bdl-8)"
                rules.append(Issue("error", "invariant", text, [f"{where}.fullUrl"]))
            elif full_url.startswith("urn:uuid:") and not _UUID_URN.fullmatch(full_url):
                structure.append(
                    Issue("error", "value", "malformed urn:uuid:", [f"{where}.fullUrl"])
                )
        resource = entry.get("resource")
        if resource is None:
            if method in ("POST", "PUT"):
                text = f"a {method} entry needs a resource"
                structure.append(Issue("error", "required", text, [f"{where}.resource"]))
            continue
        prefix = f"{where}.resource"
        try:
            s, r, walk = _check(resource, None, allow_types)
        except FhirError as exc:
            target = structure if exc.status != 422 else rules
            target.extend(in_entry(issue, prefix) for issue in exc.issues)
            continue
        structure.extend(in_entry(issue, prefix) for issue in s)
        rules.extend(in_entry(issue, prefix) for issue in r)
        refs.extend((_moved(path, prefix), ref) for path, ref in walk.refs)
        if method in ("POST", "PUT") and isinstance(url, str):
            rules.extend(_url_rules(method, url, resource, where))
    for path, ref in refs:
        if ref.startswith(("urn:uuid:", "urn:oid:")) and ref not in full_urls:
            text = "the reference names no entry's fullUrl in this bundle"
            rules.append(Issue("error", "not-found", text, [path]))
    if structure:
        _raise(structure + rules, 400)
    if rules:
        _raise(rules, 422)
    return data


def _url_rules(method: str, url: str, resource: dict[str, Any], where: str) -> list[Issue]:
    """A relative ``Type``, ``Type?query`` or ``Type/id`` url names the resource's type (and
    id); absolute urls and operations (``Type/$op``) are left to the server."""
    path = url.partition("?")[0].strip("/")
    if _ABSOLUTE.match(path) or "$" in path:
        return []
    type_, _, id_ = path.partition("/")
    rt = resource["resourceType"]
    if type_ != rt:
        text = f"request.url names another resource type than the entry's {rt}"
        return [Issue("error", "invalid", text, [f"{where}.request.url"])]
    if method == "PUT" and id_ and "id" in resource and resource["id"] != id_:
        text = "the resource's id is not the id in request.url"
        return [Issue("error", "invalid", text, [f"{where}.resource.id"])]
    return []
