"""Import a provider's FHIR export into a medmesh gateway: bulk-data NDJSON files and Bundles
(transaction, batch, collection, searchset), resumable, reporting each failed resource.

How it goes:

- every resource gets a fixed logical id: its own, or for one without an id (a transaction's
  ``POST`` with a ``urn:uuid:`` fullUrl, say) a UUIDv5 of the input's digest and its place,
  and references to ``urn:uuid:`` fullUrls are rewritten to ``Type/id``. So the import is a
  sequence of ``PUT Type/id``, each chunk independent of the others;
- the inputs are read once, up front (:meth:`Importer.count`), into an order where each
  patient's **compartment** travels together: the Patient, then its Encounters, then the
  rest, then the reports that gather other resources (DiagnosticReport, ImagingStudy,
  DocumentReference, Consent), each in file order; compartments come in the order their
  first resource appears, resources naming no Patient last. The order is the same on every
  run over the same files;
- chunks of at most ``chunk`` resources hold whole compartments (a compartment larger than
  a chunk is cut into chunks of its own), so they are independent of each other: the
  gateway resolves references within a chunk in any order, and one chunk's Observations do
  not wait for another chunk's Patients. Up to ``parallel`` chunks are in flight at once as
  ``batch`` Bundles (the gateway stores one while it anchors the one before); a chunk that
  names a resource of a chunk still in flight (the rest of a large compartment, a reference
  across patients) waits until that one is answered. A resource naming one that is neither
  in the input nor on the gateway is reported (422) and can be imported again once it is
  there. Each failed entry is written to the report (source, place, type, id, status, the
  OperationOutcome's issues: no values); unreadable lines and entries are reported first;
- answers are counted in order, and after every chunk the number done (all chunks before it
  answered too) is saved in the state file, next to the report: run the same command again
  and it goes on where it stopped. ``restart`` starts over (re-sent resources become new
  versions; so do those of chunks that were in flight when an import stopped).

Reading each resource again when its chunk is sent: an NDJSON line by its byte offset (a
gzipped file is unpacked once into the state folder for that, and removed at the end), a
Bundle file parsed again (the last two are kept). What is held for the whole import is
about 150 bytes per resource.

A Patient owned by a patient account needs the identifier
``{"system": "urn:ietf:rfc:3986", "value": "did:pkh:eip155:<chain>:<address>"}``;
``accounts`` (Patient id -> address) adds it while importing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Final, cast

from medmesh.errors import InvalidInputError
from medmesh.interop.fhir.bundles import rename_references
from medmesh.interop.fhir.params import ref_key
from medmesh.interop.fhir.repository import ACCOUNT_SYSTEM
from medmesh.interop.fhir.validation import references

__all__ = ["DEFAULT_CHUNK", "DEFAULT_PARALLEL", "ImportSummary", "Importer", "Item", "read_items"]

DEFAULT_CHUNK: Final = 1000
#: Chunks in flight at once: the gateway validates and seals one, stores another, and the
#: ones before wait for their block and are indexed (bench/fhir.py, chunks of 1,000:
#: 1,140-1,166/s with 3, 1,269-1,283/s with 4, no better with 5 or 6; chunks of 500 with 6
#: or 8 in flight 1,134-1,164/s).
DEFAULT_PARALLEL: Final = 4
_NAMESPACE: Final = uuid.UUID("8f7d1a52-6c7e-4d8e-9a55-3b1d2f0c6e11")  # medmesh import ids

# the order within a compartment: resources are usually referenced by those of a higher rank
_RANKS: Final = {"Patient": 0, "Encounter": 1, "DiagnosticReport": 3, "ImagingStudy": 3,
                 "DocumentReference": 3, "Consent": 3}  # fmt: skip

Send = Callable[[dict[str, Any]], dict[str, Any]]


def _rank(item: Item) -> int:
    return _RANKS.get(item.type, 2)


@dataclass
class _Flight:
    """A chunk not yet counted: held back (``answer`` None: it names or writes a resource of
    a chunk before it that is not answered yet), sent, or answered."""

    items: list[Item]
    bundle: dict[str, Any]
    keys: set[str]  # Type/id of its resources
    named: set[str]  # Type/id of the other resources it names
    answer: Future[dict[str, Any]] | None = None

    @property
    def answered(self) -> bool:
        return self.answer is not None and self.answer.done()


@dataclass(frozen=True)
class Item:
    """One resource of the input, or why it could not be read (``resource`` None)."""

    source: str  # file name
    place: int  # line (NDJSON, from 1) or entry (Bundle, from 0)
    resource: dict[str, Any] | None
    problem: str | None = None

    @property
    def type(self) -> str:
        rt = (self.resource or {}).get("resourceType")
        return rt if isinstance(rt, str) else "?"


@dataclass
class ImportSummary:
    total: int = 0
    done: int = 0  # sent (or skipped as unreadable), including earlier runs
    imported: int = 0
    failed: int = 0
    resumed_at: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    report: str = ""
    state: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total, "done": self.done, "imported": self.imported,
            "failed": self.failed, "resumed_at": self.resumed_at,
            "by_type": dict(self.by_type), "report": self.report, "state": self.state,
        }  # fmt: skip


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return cast(BinaryIO, gzip.GzipFile(path, "rb"))
    return path.open("rb")


def _is_ndjson(path: Path) -> bool:
    name = path.name.removesuffix(".gz")
    return name.endswith((".ndjson", ".jsonl"))


def digest_of(paths: Sequence[Path]) -> str:
    """One SHA-256 over the inputs' names and contents: the identity of an import."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with path.open("rb") as fp:
            while block := fp.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _line_item(name: str, n: int, line: bytes) -> Item | None:
    """The resource on line ``n`` of an NDJSON file (None for a blank line)."""
    if not line.strip():
        return None
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return Item(name, n, None, "the line is not valid JSON")
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return Item(name, n, None, "the line is not a FHIR resource")
    return Item(name, n, value)


def _json_items(path: Path) -> list[Item]:
    """The resources of a JSON Bundle (or single resource) file, each with its place."""
    name = path.name
    with _open(path) as fp:
        try:
            data = json.load(fp)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInputError(f"{name} is neither NDJSON nor a JSON Bundle") from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
            return [Item(name, 0, data)]  # a single resource
        raise InvalidInputError(f"{name} is not a FHIR Bundle or resource")
    entries = data.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidInputError(f"{name}: Bundle.entry is not a list")
    out = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            method = (entry.get("request") or {}).get("method") if isinstance(entry, dict) else None
            problem = (
                f"{method} entries are not imported" if method else "the entry has no resource"
            )
            out.append(Item(name, i, None, problem))
            continue
        if isinstance(entry.get("fullUrl"), str):
            resource = {**resource, "_fullUrl": entry["fullUrl"]}
        out.append(Item(name, i, resource))
    return out


def read_items(path: Path) -> Iterator[Item]:
    """The resources of one NDJSON (``.ndjson``/``.jsonl``, optionally ``.gz``) or JSON
    Bundle file, each with its place; unreadable lines come as items with a ``problem``."""
    if _is_ndjson(path):
        with _open(path) as fp:
            for n, line in enumerate(fp, start=1):
                item = _line_item(path.name, n, line)
                if item is not None:
                    yield item
        return
    yield from _json_items(path)


def _patient_named(item: Item) -> str | None:
    """The reference to the Patient whose compartment ``item`` belongs to, as written (the
    Patient itself for a Patient: ``None`` there, its key comes from its id)."""
    resource = item.resource or {}
    for name in ("subject", "patient"):
        ref = resource.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return str(ref["reference"])
    return None


@dataclass(frozen=True, slots=True)
class _Entry:
    """Where one resource of the input is: file, byte offset (NDJSON) or entry (JSON)."""

    file: int
    at: int
    place: int


@dataclass
class _Plan:
    """The whole input, read once: every resource's place, in import order."""

    entries: list[_Entry]  # readable resources, in import order
    problems: list[Item]  # unreadable lines and entries, reported first
    groups: list[int]  # the compartment of each of ``entries`` (equal ones are adjacent)
    renames: dict[str, str]  # urn: fullUrl -> Type/id
    files: dict[int, Path]  # NDJSON inputs by number, as files to seek in
    unpacked: list[Path]  # those of ``files`` unpacked from gzip, removed at the import's end

    @property
    def total(self) -> int:
        return len(self.problems) + len(self.entries)

    def chunks(self, start: int, size: int) -> Iterator[range]:
        """Positions in ``entries`` from ``start``, ``size`` at most at a time, cut between
        compartments: a compartment goes whole into one chunk if it fits in one."""
        groups, n = self.groups, len(self.entries)
        ends = [0] * n  # where the compartment at each position ends
        for i in range(n - 1, -1, -1):
            ends[i] = ends[i + 1] if i + 1 < n and groups[i + 1] == groups[i] else i + 1
        pos = start
        while pos < n:
            end = pos
            while end < pos + size and end < n:
                if end > pos and ends[end] - pos > size:
                    break  # the next compartment fits in a chunk of its own: start one
                end = min(ends[end], pos + size)
            yield range(pos, end)
            pos = end


class _Reader:
    """Reads resources back from where :meth:`Importer._scan` found them (``files``: the
    NDJSON inputs, as files to seek in)."""

    def __init__(self, paths: list[Path], files: dict[int, Path]) -> None:
        self.paths, self.files = paths, files
        self.handles: dict[int, BinaryIO] = {}
        self.bundles: dict[int, list[Item]] = {}  # the last two JSON files read

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        for fp in self.handles.values():
            fp.close()

    def __call__(self, e: _Entry) -> Item:
        path = self.paths[e.file]
        if e.file in self.files:
            fp = self.handles.get(e.file)
            if fp is None:
                fp = self.handles[e.file] = self.files[e.file].open("rb")
            fp.seek(e.at)
            item = _line_item(path.name, e.place, fp.readline())
            if item is None or item.resource is None:
                raise InvalidInputError(f"{path.name} changed during the import: start over")
            return item
        items = self.bundles.get(e.file)
        if items is None:
            while len(self.bundles) >= 2:
                del self.bundles[next(iter(self.bundles))]
            items = self.bundles[e.file] = _json_items(path)
        if e.at >= len(items) or items[e.at].resource is None:
            raise InvalidInputError(f"{path.name} changed during the import: start over")
        return items[e.at]


class Importer:
    """Import ``paths`` through ``send`` (a batch Bundle in, a batch-response out)."""

    def __init__(
        self,
        paths: Sequence[Path],
        send: Send,
        *,
        state_dir: Path,
        chunk: int = DEFAULT_CHUNK,
        parallel: int = DEFAULT_PARALLEL,
        accounts: dict[str, str] | None = None,
        chain_id: int | None = None,
        report: Path | None = None,
        restart: bool = False,
    ) -> None:
        if chunk < 1:
            raise InvalidInputError("the chunk size must be at least 1")
        if parallel < 1:
            raise InvalidInputError("at least one chunk must be in flight")
        if accounts and chain_id is None:
            raise InvalidInputError("accounts need the chain id")
        self.paths = list(paths)
        self.send = send
        self.chunk = chunk
        self.parallel = parallel
        self.accounts = accounts or {}
        self.chain_id = chain_id
        self.digest = digest_of(self.paths)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = state_dir / f"{self.digest[:24]}.json"
        self.report_path = report or state_dir / f"{self.digest[:24]}.failures.ndjson"
        if restart:
            self.state_path.unlink(missing_ok=True)
            self.report_path.unlink(missing_ok=True)
        self.summary = ImportSummary(report=str(self.report_path), state=str(self.state_path))
        self._plan: _Plan | None = None  # the input, once read
        self._load_state()

    # -- state ---------------------------------------------------------------------------------

    def _load_state(self) -> None:
        if not self.state_path.exists():
            return
        try:
            saved = json.loads(self.state_path.read_text())
            if saved.get("digest") != self.digest:
                raise ValueError
            s = self.summary
            s.done = s.resumed_at = int(saved["done"])
            s.imported, s.failed = int(saved["imported"]), int(saved["failed"])
            s.by_type.update(saved.get("by_type") or {})
        except (ValueError, KeyError, TypeError):
            raise InvalidInputError(
                f"the import state {self.state_path} is damaged: start over with --restart"
            ) from None

    def _save_state(self) -> None:
        s = self.summary
        body = {"digest": self.digest, "done": s.done, "imported": s.imported,
                "failed": s.failed, "by_type": dict(s.by_type)}  # fmt: skip
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.state_path)

    # -- the input, read once ------------------------------------------------------------------

    def _scan(self) -> _Plan:
        """Read every input once: where each resource is, its compartment and rank, the
        ``urn:`` names to rewrite; then put them in import order (see the module's doc)."""
        if self._plan is not None:
            return self._plan
        found: list[tuple[int, int, int, _Entry]] = []  # (rank, compartment name, seq, entry)
        problems: list[Item] = []
        names: dict[str, int] = {}  # a Patient key or reference as written -> its number
        renames: dict[str, str] = {}
        files: dict[int, Path] = {}
        unpacked: list[Path] = []

        def note(f: int, at: int, item: Item) -> None:
            if item.resource is None:
                problems.append(item)
                return
            if isinstance(item.resource.get("_fullUrl"), str):
                renames[item.resource["_fullUrl"]] = f"{item.type}/{self._id_of(item)}"
            named = (
                f"Patient/{self._id_of(item)}" if item.type == "Patient" else _patient_named(item)
            )
            number = names.setdefault(named, len(names)) if named is not None else -1
            found.append((_rank(item), number, len(found), _Entry(f, at, item.place)))

        try:
            for f, path in enumerate(self.paths):
                if not _is_ndjson(path):
                    for i, entry in enumerate(_json_items(path)):
                        note(f, i, entry)
                    continue
                source = path
                if path.suffix == ".gz":  # read back by offset: unpack it once
                    source = self.state_path.with_name(f"{self.digest[:24]}.{f}.unpacked.ndjson")
                    unpacked.append(source)
                    with _open(path) as fp, source.open("wb") as out:
                        shutil.copyfileobj(fp, out, 1 << 20)
                files[f] = source
                with source.open("rb") as fp:
                    at = 0
                    for n, line in enumerate(fp, start=1):
                        read = _line_item(path.name, n, line)
                        if read is not None:
                            note(f, at, read)
                        at += len(line)
        except BaseException:
            for path in unpacked:
                path.unlink(missing_ok=True)
            raise

        # a compartment is named by its Patient's key; urn: references name it through the
        # Patient's fullUrl, and compartments come in the order their first resource appears
        key_of = {
            number: (ref_key(renames.get(name, name)) or name) for name, number in names.items()
        }
        order: dict[str, int] = {}
        first: dict[int, int] = {}  # compartment number -> place in the order
        for _, number, _, _ in found:
            if number not in first:
                first[number] = (
                    order.setdefault(key_of[number], len(order)) if number >= 0 else 1 << 62
                )
        found.sort(key=lambda x: (first[x[1]], x[0], x[2]))
        self._plan = _Plan(
            entries=[x[3] for x in found],
            problems=problems,
            groups=[first[x[1]] for x in found],
            renames=renames,
            files=files,
            unpacked=unpacked,
        )
        self.summary.total = self._plan.total
        return self._plan

    def count(self) -> int:
        """How many resources the input holds (reads it, once for the whole import)."""
        return self._scan().total

    def _id_of(self, item: Item) -> str:
        assert item.resource is not None
        given = item.resource.get("id")
        if isinstance(given, str) and given:
            return given
        return str(uuid.uuid5(_NAMESPACE, f"{self.digest}:{item.source}:{item.place}"))

    def _prepared(self, item: Item, renames: dict[str, str]) -> dict[str, Any]:
        assert item.resource is not None
        resource = {k: v for k, v in item.resource.items() if k != "_fullUrl"}
        resource["id"] = self._id_of(item)
        if renames:
            resource = rename_references(resource, renames)
        account = self.accounts.get(resource["id"]) if item.type == "Patient" else None
        if account:
            did = f"did:pkh:eip155:{self.chain_id}:{account}"
            idents = [i for i in resource.get("identifier") or [] if not (
                isinstance(i, dict) and i.get("system") == ACCOUNT_SYSTEM)]  # fmt: skip
            resource["identifier"] = [*idents, {"system": ACCOUNT_SYSTEM, "value": did}]
        return resource

    # -- running -------------------------------------------------------------------------------

    def run(self, progress: Callable[[int], None] | None = None) -> ImportSummary:
        """Send what is left, ``chunk`` resources at a time, ``parallel`` chunks at once;
        ``progress(n)`` after each chunk (n resources done, counting the ones skipped because
        an earlier run did them)."""
        s = self.summary
        plan = self._scan()
        if progress and s.done:
            progress(s.done)
        flight: deque[_Flight] = deque()  # chunks sent and not yet settled, in order

        with (
            self.report_path.open("a") as report,
            ThreadPoolExecutor(self.parallel) as pool,
            _Reader(self.paths, plan.files) as read,
        ):

            def settle_first() -> None:
                done = flight.popleft()
                assert done.answer is not None
                self._settle(done.items, done.answer.result(), report, progress)

            def pump() -> list[Future[dict[str, Any]]]:
                """Count what is answered at the head; send held-back chunks whose turn
                came; return the answers still awaited."""
                while flight and flight[0].answered:
                    settle_first()
                awaited = [f.answer for f in flight if f.answer is not None and not f.answered]
                unanswered: set[str] = set()  # keys of the chunks before, not answered yet
                for f in flight:
                    if (
                        f.answer is None
                        and len(awaited) < self.parallel
                        and not (f.named | f.keys) & unanswered
                    ):
                        f.answer = pool.submit(self.send, f.bundle)
                        awaited.append(f.answer)
                    if not f.answered:
                        unanswered |= f.keys
                return awaited

            def send(items: list[Item]) -> None:
                # at most `parallel` chunks unanswered; one that names a resource of an
                # unanswered chunk before it, or writes one again (a later version in the
                # input), is held back until that one is answered, and
                # the ones after it may go first (at most `parallel` held back). The
                # gateway may answer out of order; answers are counted in order.
                bundle, keys, named = self._bundle(items, plan.renames)
                flight.append(_Flight(items, bundle, keys, named))
                while True:
                    awaited = pump()
                    held = sum(1 for f in flight if f.answer is None)
                    if len(awaited) < self.parallel and held < self.parallel:
                        return
                    wait(awaited, return_when=FIRST_COMPLETED)

            try:
                for item in plan.problems[s.done :]:  # the unreadable ones come first
                    self._fail(report, item, "400", [{"code": "structure",
                                                      "diagnostics": item.problem}])  # fmt: skip
                    s.done += 1
                start = s.done - len(plan.problems)
                for positions in plan.chunks(start, self.chunk):
                    send([read(plan.entries[i]) for i in positions])
                while flight:
                    wait(pump(), return_when=FIRST_COMPLETED)
            finally:
                for f in flight:  # stopped by an error: do not send what is still queued
                    if f.answer is not None:
                        f.answer.cancel()
                if plan.unpacked:  # read again by the next run
                    for path in plan.unpacked:
                        path.unlink(missing_ok=True)
                    self._plan = None
            self._save_state()
        return s

    def _bundle(
        self, items: list[Item], renames: dict[str, str]
    ) -> tuple[dict[str, Any], set[str], set[str]]:
        """The batch Bundle of ``items``, the ``Type/id`` of each, and those they name."""
        entries: list[dict[str, Any]] = []
        keys: set[str] = set()
        named: set[str] = set()
        for item in items:
            resource = self._prepared(item, renames)
            key = f"{item.type}/{resource['id']}"
            keys.add(key)
            named.update(k for _, ref in references(resource) if (k := ref_key(ref)))
            entries.append({"resource": resource, "request": {"method": "PUT", "url": key}})
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": entries}
        return bundle, keys, named - keys

    def _settle(
        self,
        items: list[Item],
        answer: dict[str, Any],
        report: IO[str],
        progress: Callable[[int], None] | None,
    ) -> None:
        results = answer.get("entry") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise InvalidInputError("the gateway's batch-response does not match the batch")
        s = self.summary
        for item, result in zip(items, results, strict=True):
            response = result.get("response") or {}
            status = str(response.get("status", "")).split(" ")[0]
            if status.startswith("2"):
                s.imported += 1
                s.by_type[item.type] += 1
            else:
                issues = (response.get("outcome") or {}).get("issue") or []
                self._fail(report, item, status, issues)
        s.done += len(items)
        report.flush()
        self._save_state()
        if progress:
            progress(len(items))

    def _fail(self, report: IO[str], item: Item, status: str, issues: list[Any]) -> None:
        self.summary.failed += 1
        rid = (item.resource or {}).get("id")
        line = {
            "source": item.source, "place": item.place, "resourceType": item.type,
            "id": rid if isinstance(rid, str) else None, "status": status,
            "issues": [{k: i.get(k) for k in ("code", "diagnostics", "expression") if k in i}
                       for i in issues if isinstance(i, dict)],
        }  # fmt: skip
        report.write(json.dumps(line) + "\n")
