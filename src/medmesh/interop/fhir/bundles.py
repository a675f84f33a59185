"""FHIR ``transaction`` and ``batch`` Bundles (``POST /fhir``, FHIR R4 3.1.0.11).

Entries may ``POST Type`` (create), ``PUT Type/id`` (update or update-as-create, with
``request.ifMatch``), ``GET Type/id``, ``GET Type/id/_history/vid`` and ``GET Type?params``
(search). Conditional creates and updates, ``DELETE`` and ``PATCH`` are not supported.

- **transaction**: all or nothing. The whole bundle is validated first; any invalid entry,
  unsupported request, missing scope or version conflict refuses the bundle with one
  ``OperationOutcome`` whose paths name the entries (``Bundle.entry[3].resource.status``),
  and nothing is stored. Then every write is sealed and stored, and the anchors are sent
  together. Reads run after the writes; each read is also tried before any write (unless
  the transaction itself writes it), so one that would be refused (403, logged) or not found
  refuses the bundle while nothing is stored yet. Up to 256 versions are anchored in
  one ledger transaction (all or nothing on chain); a bigger bundle spans several, and if
  the ledger fails midway, the response is an error and the versions anchored so far stand
  (the index picks them up).
- **batch**: each entry on its own; a failed entry gets its status and ``OperationOutcome``
  in the response, the others go on.

In both, a ``urn:uuid:`` (or ``urn:oid:``) ``fullUrl`` of a created entry is replaced by the
resource's new ``Type/id`` in every reference of the bundle, so a provider's export that links
its entries that way lands linked. The response bundle has one entry per request entry, in
order, with ``response.status``, ``location``, ``etag`` and ``lastModified`` (and the
resource).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import parse_qsl

from medmesh.interop.fhir.outcome import FhirError, Issue
from medmesh.interop.fhir.repository import FhirRepository, Saved
from medmesh.interop.fhir.search import parse_search
from medmesh.interop.fhir.validation import SUPPORTED_TYPES, in_entry, validate_bundle
from medmesh.ledger.contracts import Purpose

__all__ = ["Caller", "process_bundle", "rename_references"]

_WRITES: Final = {"POST": "create", "PUT": "update"}
_REASONS: Final = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
                   403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
                   409: "Conflict", 412: "Precondition Failed", 413: "Payload Too Large",
                   422: "Unprocessable Entity", 500: "Internal Server Error"}  # fmt: skip


class Caller(Protocol):
    """Who sends the bundle (``api.Principal``): what their token lets them do."""

    def require(self, type_: str, action: str) -> None: ...


@dataclass
class _Entry:
    """One request of the bundle, parsed."""

    index: int
    method: str
    type: str
    id: str | None = None
    version: str | None = None
    query: list[tuple[str, str]] = field(default_factory=list)
    resource: dict[str, Any] | None = None
    if_match: str | None = None
    full_url: str | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


async def process_bundle(
    repo: FhirRepository,
    bundle: dict[str, Any],
    *,
    caller: Caller,
    purpose: Purpose,
    base_url: str,
    minimal: bool = False,
) -> dict[str, Any]:
    """Run a transaction or batch ``bundle``; the ``transaction-response`` or
    ``batch-response`` Bundle. A transaction that fails raises :class:`FhirError`.
    ``minimal`` (``Prefer: return=minimal``): written entries carry their ``response`` only,
    not the resource as stored."""
    kind = bundle.get("type") if isinstance(bundle, dict) else None
    if kind == "transaction":
        await asyncio.to_thread(validate_bundle, bundle)
    elif kind == "batch":
        _check_batch_shell(bundle)
    else:
        validate_bundle(bundle)  # raises: wrong resourceType or bundle type
    raw = bundle.get("entry") or []
    entries: list[_Entry | FhirError] = []
    for i, item in enumerate(raw):
        try:
            entry = _parse_entry(i, item, base_url)
            caller.require(entry.type, _action(entry))
            entries.append(entry)
        except FhirError as exc:
            if kind == "transaction":
                raise _at(exc, f"Bundle.entry[{i}]") from None
            entries.append(exc)
    ok = [e for e in entries if isinstance(e, _Entry)]
    results: dict[int, dict[str, Any]] = {}
    writes = [e for e in ok if e.method in _WRITES]
    for e in writes:
        try:
            if e.method == "PUT":
                assert e.id is not None
                repo.check_version(e.type, e.id, e.if_match)
        except FhirError as exc:
            if kind == "transaction":
                raise _at(exc, e.where) from None
            results[e.index] = _failed(exc)
    writes = [e for e in writes if e.index not in results]
    if kind == "transaction":  # a read that would fail refuses the bundle before any write
        written = {(e.type, e.id) for e in writes if e.method == "PUT"}
        for e in ok:
            if e.method == "GET" and (e.type, e.id) not in written:
                try:
                    await _get(repo, e, purpose, base_url)
                except FhirError as exc:
                    raise _at(exc, e.where) from None
    _assign_ids(writes, ok)
    resources = [e.resource for e in writes if e.resource is not None]
    # checked again as each is written: another request may have updated it meanwhile
    if_match = {f"{e.type}/{e.id}": e.if_match for e in writes if e.method == "PUT" and e.if_match}
    if kind == "transaction":
        paths = [f"{e.where}.resource" for e in writes]
        saved: list[Saved | FhirError] = list(
            await asyncio.to_thread(repo.save_all, resources, paths=paths, if_match=if_match)
        )
    else:
        saved = await asyncio.to_thread(repo.save_many, resources, if_match=if_match)
    for e, s in zip(writes, saved, strict=True):
        results[e.index] = (
            _failed(s) if isinstance(s, FhirError) else _written(s, base_url, minimal=minimal)
        )
    for e in ok:
        if e.method == "GET":
            try:
                results[e.index] = await _get(repo, e, purpose, base_url)
            except FhirError as exc:  # after the writes: reported in place, they stand
                results[e.index] = _failed(exc)
    out = [_failed(x) if isinstance(x, FhirError) else results[i] for i, x in enumerate(entries)]
    return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": out}


def _check_batch_shell(bundle: dict[str, Any]) -> None:
    """A batch's own structure (its entries are checked one by one)."""
    entries = bundle.get("entry", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FhirError.invalid(
            [
                Issue(
                    "error", "structure", "Bundle.entry must be a list of entries", ["Bundle.entry"]
                )
            ]
        )
    shell = {k: v for k, v in bundle.items() if k != "entry"}
    placeholder = {"method": "GET", "url": "Patient"}  # requests are checked per entry
    shell["entry"] = [
        {**{k: v for k, v in e.items() if k == "fullUrl"}, "request": placeholder} for e in entries
    ]
    if entries and not any("fullUrl" in e for e in entries):  # every entry the same: one will do
        shell["entry"] = shell["entry"][:1]
    validate_bundle(shell)


def _action(entry: _Entry) -> str:
    if entry.method in _WRITES:
        return _WRITES[entry.method]
    return "read" if entry.id is not None else "search"


def _parse_entry(i: int, item: Any, base_url: str) -> _Entry:
    where = f"Bundle.entry[{i}]"
    request = item.get("request") if isinstance(item, dict) else None
    if not isinstance(request, dict):
        raise _invalid("a transaction or batch entry needs a request", f"{where}.request")
    method = request.get("method")
    url = request.get("url")
    if not isinstance(method, str) or not isinstance(url, str) or not url:
        raise _invalid("request.method and request.url are required", f"{where}.request")
    if method not in ("GET", "POST", "PUT"):
        raise FhirError.not_supported(
            f"{method} entries are not supported (GET, POST and PUT are)",
            status=405,
            expression=[f"{where}.request.method"],
        )
    for unsupported in ("ifNoneExist", "ifNoneMatch", "ifModifiedSince"):
        if unsupported in request:
            raise FhirError.not_supported(
                f"request.{unsupported} (conditional interactions) is not supported",
                status=400,
                expression=[f"{where}.request.{unsupported}"],
            )
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1 :]
    path, _, query = url.partition("?")
    parts = path.strip("/").split("/")
    type_ = parts[0]
    if type_ not in SUPPORTED_TYPES:
        raise FhirError.not_found(
            f"resource type {type_} is not supported here", [f"{where}.request.url"]
        )
    resource = item.get("resource")
    full_url = item.get("fullUrl") if isinstance(item.get("fullUrl"), str) else None
    entry = _Entry(i, method, type_, full_url=full_url)
    shape_ok = False
    if method == "POST":
        shape_ok = len(parts) == 1 and not query
    elif method == "PUT":
        shape_ok = len(parts) == 2 and not query
        entry.if_match = request.get("ifMatch") if isinstance(request.get("ifMatch"), str) else None
    else:
        if len(parts) == 1:
            entry.query = parse_qsl(query, keep_blank_values=True)
            shape_ok = True
        elif len(parts) == 2 and not query:
            shape_ok = True
        elif len(parts) == 4 and parts[2] == "_history" and not query:
            entry.version = parts[3]
            shape_ok = True
    if not shape_ok:
        raise FhirError.not_supported(
            f"a {method} entry's url must be "
            + {"POST": "Type", "PUT": "Type/id", "GET": "Type/id[/_history/vid] or Type?params"}[method]
            + " (conditional interactions are not supported)",
            status=400,
            expression=[f"{where}.request.url"],
        )  # fmt: skip
    if len(parts) >= 2:
        entry.id = parts[1]
    if method in _WRITES:
        if not isinstance(resource, dict):
            raise _invalid(f"a {method} entry needs a resource", f"{where}.resource")
        if resource.get("resourceType") != type_:
            raise _invalid(
                "request.url names another resource type than the entry's",
                f"{where}.request.url",
            )
        entry.resource = dict(resource)
        if method == "PUT":
            if "id" in resource and resource["id"] != entry.id:
                raise _invalid(
                    "the resource's id is not the id in request.url", f"{where}.resource.id"
                )
            entry.resource["id"] = entry.id
        else:
            entry.resource.pop("id", None)  # a create gets a new id
    return entry


def _assign_ids(writes: list[_Entry], entries: list[_Entry]) -> None:
    """New ids for creates; then every reference to an entry's ``fullUrl`` (``urn:uuid:…``,
    or the absolute URL of an update) becomes that entry's ``Type/id``."""
    renames: dict[str, str] = {}
    for e in writes:
        assert e.resource is not None
        if e.method == "POST":
            e.id = str(uuid.uuid4())
            e.resource["id"] = e.id
        if e.full_url:
            renames[e.full_url] = f"{e.type}/{e.id}"
    if renames:
        for e in entries:
            if e.resource is not None:
                e.resource = rename_references(e.resource, renames)


def rename_references(value: Any, renames: dict[str, str]) -> Any:
    """``value`` with every ``reference`` found in ``renames`` replaced by its new name."""
    if isinstance(value, dict):
        out = {k: rename_references(v, renames) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in renames:
            out["reference"] = renames[ref]
        return out
    if isinstance(value, list):
        return [rename_references(v, renames) for v in value]
    return value


async def _get(repo: FhirRepository, e: _Entry, purpose: Purpose, base_url: str) -> dict[str, Any]:
    if e.id is None:
        query = parse_search(e.type, e.query)
        found, total = repo.search(query, purpose)
        matches = [
            {"fullUrl": f"{base_url}/{e.type}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in found
        ]  # fmt: skip
        page = {"resourceType": "Bundle", "type": "searchset", "total": total, "entry": matches}
        return {"resource": page, "response": {"status": "200 OK"}}
    if e.version is not None:
        resource = await repo.vread(e.type, e.id, e.version, purpose)
    else:
        resource = await repo.read(e.type, e.id, purpose)
    meta = resource["meta"]
    return {
        "fullUrl": f"{base_url}/{e.type}/{e.id}",
        "resource": resource,
        "response": {
            "status": "200 OK",
            "etag": f'W/"{meta["versionId"]}"',
            "lastModified": meta["lastUpdated"],
        },
    }


def _written(saved: Saved, base_url: str, *, minimal: bool = False) -> dict[str, Any]:
    row = saved.row
    meta = saved.resource["meta"]
    status = "201 Created" if saved.created else "200 OK"
    out: dict[str, Any] = {"fullUrl": f"{base_url}/{row.type}/{row.id}"}
    if not minimal:
        out["resource"] = saved.resource
    out["response"] = {
        "status": status,
        "location": f"{row.type}/{row.id}/_history/{row.version}",
        "etag": f'W/"{row.version}"',
        "lastModified": meta["lastUpdated"],
    }
    return out


def _failed(exc: FhirError) -> dict[str, Any]:
    reason = _REASONS.get(exc.status, "")
    return {"response": {"status": f"{exc.status} {reason}".strip(), "outcome": exc.to_outcome()}}


def _at(exc: FhirError, prefix: str) -> FhirError:
    """``exc`` of one entry, its paths moved under the entry (a refused transaction)."""
    issues = [
        Issue(i.severity, i.code, i.diagnostics, [prefix]) if not i.expression
        else i if i.expression[0].startswith("Bundle")
        else in_entry(i, f"{prefix}.resource")
        for i in exc.issues
    ]  # fmt: skip
    return FhirError(exc.status, issues)


def _invalid(text: str, path: str) -> FhirError:
    return FhirError.invalid([Issue("error", "invalid", text, [path])])
