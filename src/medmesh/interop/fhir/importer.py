"""Import a provider's FHIR export into a medmesh gateway: bulk-data NDJSON files and Bundles
(transaction, batch, collection, searchset), resumable, reporting each failed resource.

How it goes:

- every resource gets a fixed logical id: its own, or for one without an id (a transaction's
  ``POST`` with a ``urn:uuid:`` fullUrl, say) a UUIDv5 of the input's digest and its place,
  and references to ``urn:uuid:`` fullUrls are rewritten to ``Type/id``. So the import is a
  sequence of ``PUT Type/id``, each chunk independent of the others;
- Patients go first (other resources find their owner through them), then Encounters, then
  the rest, then reports (DiagnosticReport, ImagingStudy, DocumentReference, Consent), each
  in file order; the sequence is the same on every run over the same files. A reference
  between resources of one chunk always resolves; across chunks, the resource named must
  come earlier in that order (or already be on the gateway), else the one naming it is
  reported (422) and can be imported again once it is there;
- chunks of ``chunk`` resources (one rank each: the Patients' chunk is not held up by a
  thousand Observations) are sent as ``batch`` Bundles, up to ``parallel`` at once (the
  gateway stores one while it anchors the one before); a chunk that names a resource of a
  chunk still in flight waits until that one is answered, so the rule above holds. Each
  failed entry is written to the report (source, place, type, id, status, the
  OperationOutcome's issues: no values);
- answers are counted in order, and after every chunk the number done (all chunks before it
  answered too) is saved in the state file, next to the report: run the same command again
  and it goes on where it stopped. ``restart`` starts over (re-sent resources become new
  versions; so do those of chunks that were in flight when an import stopped).

A Patient owned by a patient account needs the identifier
``{"system": "urn:ietf:rfc:3986", "value": "did:pkh:eip155:<chain>:<address>"}``;
``accounts`` (Patient id -> address) adds it while importing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
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
#: ones before wait for their block and are indexed (4 measured best, bench/fhir.py:
#: ~1,020/s against ~950/s with 3, no better with 5 or 6).
DEFAULT_PARALLEL: Final = 4
_NAMESPACE: Final = uuid.UUID("8f7d1a52-6c7e-4d8e-9a55-3b1d2f0c6e11")  # medmesh import ids

# the order of an import: resources are usually referenced by those of a higher rank
_RANKS: Final = {"Patient": 0, "Encounter": 1, "DiagnosticReport": 3, "ImagingStudy": 3,
                 "DocumentReference": 3, "Consent": 3}  # fmt: skip

Send = Callable[[dict[str, Any]], dict[str, Any]]


def _rank(item: Item) -> int:
    return _RANKS.get(item.type, 2)


@dataclass(frozen=True)
class _Flight:
    """A chunk sent to the gateway, not yet answered or not yet counted."""

    items: list[Item]
    keys: set[str]  # Type/id of its resources
    answer: Future[dict[str, Any]]


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


def read_items(path: Path) -> Iterator[Item]:
    """The resources of one NDJSON (``.ndjson``/``.jsonl``, optionally ``.gz``) or JSON
    Bundle file, each with its place; unreadable lines come as items with a ``problem``."""
    name = path.name
    if _is_ndjson(path):
        with _open(path) as fp:
            for n, line in enumerate(fp, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except (ValueError, UnicodeDecodeError):
                    yield Item(name, n, None, "the line is not valid JSON")
                    continue
                if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
                    yield Item(name, n, None, "the line is not a FHIR resource")
                    continue
                yield Item(name, n, value)
        return
    with _open(path) as fp:
        try:
            data = json.load(fp)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInputError(f"{name} is neither NDJSON nor a JSON Bundle") from None
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
            yield Item(name, 0, data)  # a single resource
            return
        raise InvalidInputError(f"{name} is not a FHIR Bundle or resource")
    entries = data.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidInputError(f"{name}: Bundle.entry is not a list")
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            method = (entry.get("request") or {}).get("method") if isinstance(entry, dict) else None
            problem = (
                f"{method} entries are not imported" if method else "the entry has no resource"
            )
            yield Item(name, i, None, problem)
            continue
        if isinstance(entry.get("fullUrl"), str):
            resource = {**resource, "_fullUrl": entry["fullUrl"]}
        yield Item(name, i, resource)


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

    # -- the sequence --------------------------------------------------------------------------

    def _sequence(self) -> Iterator[Item]:
        """Patients of every file first, then Encounters, then the rest, then the reports
        that gather other resources (in file order within each): what is referenced is
        mostly sent before what references it, even across chunks."""
        for rank in range(4):
            for path in self.paths:
                for item in read_items(path):
                    if _rank(item) == rank:
                        yield item

    def count(self) -> int:
        self.summary.total = sum(1 for _ in self._sequence())
        return self.summary.total

    def _renames(self) -> dict[str, str]:
        """``fullUrl`` -> ``Type/id`` for resources named by a ``urn:`` fullUrl."""
        out = {}
        for item in self._sequence():
            r = item.resource
            if r is not None and isinstance(r.get("_fullUrl"), str):
                out[r["_fullUrl"]] = f"{item.type}/{self._id_of(item)}"
        return out

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
        renames = self._renames()
        if progress and s.done:
            progress(s.done)
        start = s.done
        batch: list[Item] = []
        flight: deque[_Flight] = deque()  # chunks sent and not yet settled, in order

        with self.report_path.open("a") as report, ThreadPoolExecutor(self.parallel) as pool:

            def settle_first() -> None:
                done = flight.popleft()
                self._settle(done.items, done.answer.result(), report, progress)

            def send(items: list[Item]) -> None:
                bundle, keys, named = self._bundle(items, renames)
                # at most `parallel` unanswered; one that names a resource of an unanswered
                # chunk waits for it. (The gateway may answer out of order; answers are
                # counted in order.)
                while True:
                    while flight and flight[0].answer.done():
                        settle_first()
                    open_ = [f.answer for f in flight if not f.answer.done()]
                    if len(open_) < self.parallel and not any(
                        named & f.keys for f in flight if not f.answer.done()
                    ):
                        break
                    wait(open_, return_when=FIRST_COMPLETED)
                flight.append(_Flight(items, keys, pool.submit(self.send, bundle)))

            try:
                for position, item in enumerate(self._sequence()):
                    if position < start:
                        continue
                    if item.resource is None:  # reported in order, after what came before
                        if batch:
                            send(batch)
                            batch = []
                        while flight:
                            settle_first()
                        self._fail(report, item, "400", [{"code": "structure",
                                                          "diagnostics": item.problem}])  # fmt: skip
                        s.done += 1
                        continue
                    if batch and _rank(batch[-1]) != _rank(item):
                        send(batch)  # a chunk per rank: the next ones, naming it, wait less
                        batch = []
                    batch.append(item)
                    if len(batch) >= self.chunk:
                        send(batch)
                        batch = []
                if batch:
                    send(batch)
                while flight:
                    settle_first()
            finally:
                for f in flight:  # stopped by an error: do not send what is still queued
                    f.answer.cancel()
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
