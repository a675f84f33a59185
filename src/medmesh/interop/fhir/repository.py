"""FHIR resources as medmesh records: create, update, read, history and search, for one
institution, every read checked against on-chain consent.

A FHIR gateway acts for one participant, its **institution** (a hospital, a lab; or a patient
running their own): it holds that participant's wallet, so it can open exactly the records the
ledger lets the institution open, and nothing else. Plaintext therefore reaches only the
consented recipient, which is the rule.

How a resource maps onto the record layer:

- one resource version = one record, of kind ``fhir:<Type>``, owned by its patient, sealed for
  the patient, for every current kind or all-records grantee, and for the institution that
  wrote it; an update anchors a new record that supersedes the previous version (and gets a
  new data key, as every record does);
- the logical id travels inside the sealed JSON; ``meta.versionId`` is the version's position
  in its chain (1, 2, …) and ``meta.lastUpdated`` the time its anchor was mined, so neither is
  stored: they come from the ledger;
- the patient of a Patient resource is the account named by its identifier
  ``{"system": "urn:ietf:rfc:3986", "value": "did:pkh:eip155:<chain>:<address>"}`` (or the
  institution itself, when a patient runs their own gateway); the patient of any other
  resource is the owner of the Patient its ``subject`` / ``patient`` reference names.

Reads (``read``, ``vread``) take the full path: index lookup, ``Consent.has_access`` at the
latest block (one eth_call; refusals logged), ciphertext fetched from the storage network and
verified, opened with the institution's key (or the capsule its grant references), checked to
be the resource asked for. Searches run on the gateway's :class:`FhirIndex` and the page of
results is checked against the chain in one batch before anything is returned, so a
revocation mined after the index last caught up still hides the resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from medmesh.consent.gateway import Access, Gateway
from medmesh.consent.sharing import NewRecord, RecordKeeper, StoredRecords
from medmesh.crypto.capsule import KeyCapsule
from medmesh.crypto.envelope import NoCapsuleError, RecordOpener
from medmesh.errors import ConsentError, MedmeshError
from medmesh.interop.fhir.index import FhirIndex, IndexedResource, Query
from medmesh.interop.fhir.outcome import FhirError, Issue
from medmesh.interop.fhir.params import ref_key
from medmesh.interop.fhir.validation import (
    SUPPORTED_TYPES,
    in_entry,
    references,
    validate_many,
    validate_resource,
)
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import ALL_SCOPE, Purpose, Role, kind_tag, record_id
from medmesh.ledger.events import checksum
from medmesh.ledger.indexer import RecordRow
from medmesh.storage.cid import Cid

__all__ = ["ACCOUNT_SYSTEM", "FhirRepository", "Saved", "kind_of"]

ACCOUNT_SYSTEM: Final = "urn:ietf:rfc:3986"  # identifier value: did:pkh:eip155:<chain>:<address>
#: A full sweep of every patient's records (a safety net: retries records that could not be
#: opened). Grants, revocations, new records, erasures and expiries are followed incrementally
#: every sync; a sweep of 10,000 records holds the GIL for about a second, so it is rare.
FULL_RECONCILE_S: Final = 600.0


def kind_of(resource_type: str) -> str:
    return f"fhir:{resource_type}"


_KINDS: Final = {kind_tag(kind_of(t)): t for t in SUPPORTED_TYPES}


def _instant(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def with_meta(body: dict[str, Any], row: IndexedResource) -> dict[str, Any]:
    """``body`` as served: ``meta.versionId`` and ``meta.lastUpdated`` from the ledger."""
    out = dict(body)
    meta = dict(out.get("meta") or {})
    meta["versionId"] = str(row.version)
    meta["lastUpdated"] = _instant(row.last_updated)
    out["meta"] = meta
    return out


def _stored_form(body: dict[str, Any], id_: str) -> dict[str, Any]:
    out = dict(body)
    out["id"] = id_
    meta = {
        k: v for k, v in (out.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    if meta:
        out["meta"] = meta
    else:
        out.pop("meta", None)
    return out


class _BothLocks:
    """Two locks taken in order and released in reverse, as one context manager."""

    def __init__(self, first: threading.Lock, second: threading.Lock) -> None:
        self.first, self.second = first, second

    def __enter__(self) -> None:
        self.first.acquire()
        self.second.acquire()

    def __exit__(self, *exc: object) -> None:
        self.second.release()
        self.first.release()


_Lookup = Callable[[str, str], IndexedResource | None]  # (type, id) -> current version


@dataclass(frozen=True)
class Saved:
    """A resource version just written (``created``: a new logical resource)."""

    resource: dict[str, Any]
    row: IndexedResource
    created: bool


@dataclass(frozen=True)
class _Plan:
    """A checked resource version, ready to store."""

    type: str
    body: dict[str, Any]  # the stored form: id set, no versionId / lastUpdated
    owner: str
    previous: IndexedResource | None


class FhirRepository:
    """The FHIR resources one institution may see and write, over ``keeper`` and ``gateway``."""

    def __init__(
        self,
        keeper: RecordKeeper,
        gateway: Gateway,
        index: FhirIndex,
        *,
        clock: Callable[[], float] = time.time,
        full_reconcile_s: float = FULL_RECONCILE_S,
    ) -> None:
        self.keeper = keeper
        self.gateway = gateway
        self.index = index
        self.me = keeper.wallet.address
        self._clock = clock
        self._sync_lock = asyncio.Lock()
        # Writes go through two stages, one batch in each at a time, after sealing (any
        # number at once): storing (the keeper's storage client serves one event loop at
        # a time) and sending anchors. A batch takes
        # the anchor lock before it lets go of the store lock, and lets go of it once its
        # anchors are sent: the wallet's nonces order the batches' transactions as they
        # stored, so they are mined in that order (in one block or in turn), while the next
        # batch is sealed and stored. Waiting to be mined and durable, and indexing, come
        # after, outside both. ``write_lock`` takes both, for writers that do everything in
        # one go (DICOMweb's STOW).
        self._store_lock = threading.Lock()
        self._anchor_lock = threading.Lock()
        self.write_lock = _BothLocks(self._store_lock, self._anchor_lock)
        # records this gateway is writing (stored, anchoring, not indexed yet): the sync leaves
        # them to the writer instead of fetching and opening them again
        self._writing: set[bytes] = set()
        self._writing_lock = threading.Lock()
        # resources (Type/id) with a version being written: a write of the same resource
        # waits until that one is indexed, then plans its own version against it (else two
        # concurrent updates would both plan version N+1); a write claims all its ids at
        # once, and only when none is held, so writes never wait for each other in a cycle
        self._claimed: set[str] = set()
        self._claims = threading.Condition()
        self.full_reconcile_s = full_reconcile_s
        self._last_full = 0.0
        self._expiries_seen = 0.0  # grants expiring up to this time have been followed

    @property
    def ledger(self) -> Ledger:
        return self.keeper.ledger

    # -- owners and references ---------------------------------------------------------------

    def _account_of_patient(self, resource: dict[str, Any]) -> str:
        prefix = f"did:pkh:eip155:{self.ledger.chain_id}:"
        for ident in resource.get("identifier") or []:
            value = ident.get("value") if isinstance(ident, dict) else None
            if (
                ident.get("system") == ACCOUNT_SYSTEM
                and isinstance(value, str)
                and value.startswith(prefix)
            ):
                try:
                    return checksum(value[len(prefix) :])
                except ValueError:
                    break
        if self.ledger.registry.roles(self.me) & Role.PATIENT:
            return self.me  # a patient's own gateway
        raise FhirError.invalid(
            [_issue("required", "a Patient needs identifier {system: urn:ietf:rfc:3986, value: "
                    f"did:pkh:eip155:{self.ledger.chain_id}:<patient address>}}", "Patient.identifier")],
            status=422,
        )  # fmt: skip

    def _check_references(
        self,
        resource: dict[str, Any],
        expected: set[str] | None = None,
        lookup: _Lookup | None = None,
        refs: list[tuple[str, str]] | None = None,
    ) -> None:
        """Every relative reference to a supported type must name a resource this gateway
        knows (references to other types, absolute URLs and ``urn:`` ones are not checked;
        ``refs``: the resource's references, if already found)."""
        lookup = lookup or self.index.current
        missing = []
        for path, ref in references(resource) if refs is None else refs:
            key = ref_key(ref)
            if key is None or ref.startswith(("http://", "https://")):
                continue
            type_, id_ = key.split("/", 1)
            if (
                type_ in SUPPORTED_TYPES
                and key not in (expected or ())
                and lookup(type_, id_) is None
            ):
                missing.append(
                    _issue("not-found", f"{type_} reference points to no resource here", path)
                )
        if missing:
            raise FhirError.invalid(missing, status=422)

    def _owner_of(
        self,
        resource: dict[str, Any],
        owners: dict[str, str] | None = None,
        lookup: _Lookup | None = None,
    ) -> str:
        lookup = lookup or self.index.current
        type_ = resource["resourceType"]
        if type_ == "Patient":
            return self._account_of_patient(resource)
        for field in ("subject", "patient"):
            ref = resource.get(field)
            key = (
                ref_key(ref["reference"])
                if isinstance(ref, dict) and isinstance(ref.get("reference"), str)
                else None
            )
            if key and key.startswith("Patient/"):
                if owners and key in owners:
                    return owners[key]
                patient = lookup("Patient", key.split("/", 1)[1])
                if patient is not None:
                    return patient.patient
        raise FhirError.invalid(
            [
                _issue(
                    "required",
                    f"a {type_} must reference its Patient (subject or patient)",
                    f"{type_}.subject",
                )
            ],
            status=422,
        )

    # -- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _claim(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold ``keys`` (``Type/id``) for one write, from planning to indexing: waits
        while another write holds any of them (see ``__init__``)."""
        wanted = set(keys)
        with self._claims:
            while wanted & self._claimed:
                self._claims.wait()
            self._claimed |= wanted
        try:
            yield
        finally:
            with self._claims:
                self._claimed -= wanted
                self._claims.notify_all()

    def create(self, resource: dict[str, Any], *, id_: str | None = None) -> Saved:
        resource = validate_resource(resource)
        id_ = id_ or str(uuid.uuid4())
        with self._claim([f"{resource['resourceType']}/{id_}"]):
            return self._store([self._plan(resource, id_)])[0]

    def update(
        self, type_: str, id_: str, resource: dict[str, Any], *, if_match: str | None = None
    ) -> Saved:
        resource = validate_resource(resource, expected_type=type_)
        if resource.get("id") != id_:
            raise FhirError.invalid(
                [_issue("invalid", "the resource's id must equal the id in the URL", f"{type_}.id")]
            )
        with self._claim([f"{type_}/{id_}"]):  # the version If-Match names stays current
            self.check_version(type_, id_, if_match)
            return self._store([self._plan(resource, id_)])[0]

    def check_version(self, type_: str, id_: str, if_match: str | None) -> None:
        """412 unless ``if_match`` (an ETag such as ``W/"3"``; None: no condition) names the
        current version of ``type_/id_``."""
        conflict = _conflict(if_match, self.index.current(type_, id_))
        if conflict is not None:
            raise conflict

    def save_many(
        self, resources: list[dict[str, Any]], *, if_match: dict[str, str] | None = None
    ) -> list[Saved | FhirError]:
        """Create or update many resources at once (a batch, an import): each is validated and
        checked on its own (a failure is returned in its place, nothing of it stored), the
        rest are sealed and stored concurrently and anchored together.

        A resource keeps its ``id`` (a new version if the id is known, the first one if not);
        one without an id gets a new one. References may name resources earlier in the list.
        ``if_match`` (``Type/id`` -> ETag): conditional updates, 412 in place unless the ETag
        names the current version.
        """
        with self._claim(_keys(resources)):
            checked = self._plan_many(resources, if_match)
            stored = iter(self._store([c for c in checked if isinstance(c, _Plan)]))
            return [next(stored) if isinstance(c, _Plan) else c for c in checked]

    def save_all(
        self,
        resources: list[dict[str, Any]],
        *,
        paths: list[str],
        if_match: dict[str, str] | None = None,
    ) -> list[Saved]:
        """:meth:`save_many`, all or nothing (a transaction): if any resource fails its checks,
        nothing is stored and one :class:`FhirError` lists every failure, its FHIRPaths moved
        under ``paths[i]`` (``Bundle.entry[3].resource``, say); a version conflict makes it
        a 412."""
        with self._claim(_keys(resources)):
            checked = self._plan_many(resources, if_match)
            failed = [(i, c) for i, c in enumerate(checked) if isinstance(c, FhirError)]
            if failed:
                issues = [
                    in_entry(issue, paths[i])
                    if issue.expression
                    else Issue(issue.severity, issue.code, issue.diagnostics, [paths[i]])
                    for i, exc in failed
                    for issue in exc.issues
                ]
                statuses = {exc.status for _, exc in failed}
                status = 412 if 412 in statuses else 422 if statuses == {422} else 400
                raise FhirError(status, issues)
            return self._store([c for c in checked if isinstance(c, _Plan)])

    def _plan_many(
        self, resources: list[dict[str, Any]], if_match: dict[str, str] | None = None
    ) -> list[_Plan | FhirError]:
        """Validate and check each resource. References may name any resource of the list
        (Patients are planned first, so the others find their owner); a resource that names
        one which failed fails too, so nothing stored points nowhere."""
        out: list[_Plan | FhirError | None] = [None] * len(resources)
        valid: dict[int, tuple[dict[str, Any], str, list[tuple[str, str]]]] = {}
        keys: dict[str, int] = {}
        for i, (resource, checked) in enumerate(
            zip(resources, validate_many(resources), strict=True)
        ):
            try:
                if isinstance(checked, FhirError):
                    raise checked
                resource = checked
                type_ = resource["resourceType"]
                id_ = str(resource.get("id") or uuid.uuid4())
                if f"{type_}/{id_}" in keys:
                    raise FhirError.invalid(
                        [_issue("duplicate", "the same resource twice in one request", f"{type_}.id")],
                        status=422,
                    )  # fmt: skip
            except FhirError as exc:
                out[i] = exc
                continue
            keys[f"{type_}/{id_}"] = i
            valid[i] = (resource, id_, list(references(resource)))
        owners: dict[str, str] = {}  # "Patient/id" -> account, for Patients of this list
        order = sorted(valid, key=lambda i: valid[i][0]["resourceType"] != "Patient")
        lookup = self._prefetch(valid.values())
        expected = set(keys)
        for i in order:
            resource, id_, refs = valid[i]
            try:
                key = f"{resource['resourceType']}/{id_}"
                if if_match and key in if_match:
                    conflict = _conflict(if_match[key], lookup(resource["resourceType"], id_))
                    if conflict is not None:
                        raise conflict
                plan = self._plan(resource, id_, expected, owners, lookup, refs)
            except FhirError as exc:
                out[i] = exc
                continue
            if plan.type == "Patient":
                owners[f"Patient/{id_}"] = plan.owner
            out[i] = plan
        failed = {k for k, i in keys.items() if isinstance(out[i], FhirError)}
        while failed:  # drop what names a failed resource of this list, until none does
            newly = set()
            for key, i in keys.items():
                done = out[i]
                if not isinstance(done, _Plan):
                    continue
                bad = [path for path, ref in valid[i][2] if ref_key(ref) in failed]
                if bad:
                    out[i] = FhirError.invalid(
                        [_issue("not-found", "references a resource of this request that failed", p) for p in bad],
                        status=422,
                    )  # fmt: skip
                    newly.add(key)
            failed = newly
        return [o if o is not None else FhirError.not_found("not processed") for o in out]

    def _prefetch(
        self, resources: Iterable[tuple[dict[str, Any], str, list[tuple[str, str]]]]
    ) -> _Lookup:
        """A lookup of the current versions of everything ``resources`` (with their ids and
        references) name or are, read from the index in one go (a batch of 1,000 would
        otherwise ask it three times per resource)."""
        keys: set[tuple[str, str]] = set()
        for resource, id_, refs in resources:
            keys.add((resource["resourceType"], id_))
            for _, ref in refs:
                key = ref_key(ref)
                if key is not None:
                    type_, _, ref_id = key.partition("/")
                    keys.add((type_, ref_id))
        found = self.index.current_many(k for k in keys if k[0] in SUPPORTED_TYPES)
        return lambda type_, id_: found.get((type_, id_))

    def _plan(
        self,
        resource: dict[str, Any],
        id_: str,
        expected: set[str] | None = None,
        owners: dict[str, str] | None = None,
        lookup: _Lookup | None = None,
        refs: list[tuple[str, str]] | None = None,
    ) -> _Plan:
        """Check a validated resource's references and owner before anything is stored
        (``expected``: keys of resources written in the same request; ``owners``: the
        accounts of Patients among them; ``lookup``: the index's current versions, or a
        :meth:`_prefetch` of them)."""
        lookup = lookup or self.index.current
        type_ = resource["resourceType"]
        self._check_references(resource, expected, lookup, refs)
        owner = self._owner_of(resource, owners, lookup)
        previous = lookup(type_, id_)
        if previous is not None and previous.patient != owner:
            raise FhirError.invalid(
                [_issue("business-rule", "an update cannot move a resource to another patient", f"{type_}.subject")],
                status=422,
            )  # fmt: skip
        return _Plan(type_, _stored_form(resource, id_), owner, previous)

    def _store(self, plans: list[_Plan]) -> list[Saved]:
        """Seal, store and anchor planned versions (anchors pipelined together), then index."""
        if not plans:
            return []
        items = [
            NewRecord(
                json.dumps(p.body, separators=(",", ":"), ensure_ascii=False).encode(),
                kind_of(p.type),
                supersedes=Cid.from_bytes(p.previous.cid) if p.previous else None,
                patient=None if p.owner == self.me else p.owner,
            )
            for p in plans
        ]
        sealed = self.keeper.seal_many(items)  # while another batch may be uploading
        with self._store_lock:
            stored = self.keeper.store_sealed(sealed)
            writing = {
                record_id(owner, put.cid)
                for owner, put in zip(stored.owners, stored.stored, strict=True)
            }
            self._anchor_lock.acquire()  # before the next batch may store: see __init__
        held = [True]

        def let_go() -> None:  # once our anchors are sent: the next batch's go after them
            if held[0]:
                held[0] = False
                self._anchor_lock.release()

        with self._writing_lock:
            self._writing |= writing
        try:
            return self._anchor_and_index(plans, stored, let_go)
        except BaseException:
            self._last_full = 0.0  # some may be anchored and not indexed: sweep at next sync
            raise
        finally:
            let_go()
            with self._writing_lock:
                self._writing -= writing

    def _anchor_and_index(
        self, plans: list[_Plan], stored: StoredRecords, let_go: Callable[[], None]
    ) -> list[Saved]:
        """The end of :meth:`_store`: anchor (calling ``let_go`` once the anchors are sent),
        wait until durable, index."""
        puts = self.keeper.anchor_stored(stored, durable=False, on_sent=let_go)
        let_go()
        if puts:
            self.ledger.make_durable(max(put.block for put in puts))
        times = self._block_times({put.block for put in puts})
        rows = [
            (IndexedResource(
                put.record, p.type, p.body["id"], p.previous.version + 1 if p.previous else 1,
                True, p.owner, bytes(put.cid), times[put.block],
            ), p.body)
            for p, put in zip(plans, puts, strict=True)
        ]  # fmt: skip
        self.index.put(rows)  # in any order: the newest version of a resource wins
        return [
            Saved(with_meta(body, row), row, p.previous is None)
            for p, (row, body) in zip(plans, rows, strict=True)
        ]

    def _block_times(self, blocks: set[int]) -> dict[int, float]:
        """The timestamps of ``blocks`` (one JSON-RPC batch)."""
        wanted = sorted(blocks)
        headers = self.ledger.rpc.batch([("eth_getBlockByNumber", [hex(b), False]) for b in wanted])
        return {
            b: float(int(h["timestamp"], 16)) if isinstance(h, dict) else time.time()
            for b, h in zip(wanted, headers, strict=True)
        }

    # -- reading ------------------------------------------------------------------------------

    async def _known(self, type_: str, id_: str, purpose: Purpose) -> list[IndexedResource]:
        if type_ not in SUPPORTED_TYPES:
            raise FhirError.not_found(f"resource type {type_} is not supported here")
        versions = self.index.versions(type_, id_)
        if not versions:
            await self.sync()
            versions = self.index.versions(type_, id_)
        if not versions:
            gone = self.index.forgotten(type_, id_)
            if gone is not None:  # consent ended since it was indexed: refuse, and log it
                self._authorize(gone, purpose)
                await self.sync()  # allowed again: consent was given back
                versions = self.index.versions(type_, id_)
        if not versions:
            raise FhirError.not_found(f"{type_}/{id_} is not known")
        return versions

    async def read(
        self, type_: str, id_: str, purpose: Purpose = Purpose.TREATMENT
    ) -> dict[str, Any]:
        versions = await self._known(type_, id_, purpose)
        return await self._open(versions[0], purpose)

    async def vread(
        self, type_: str, id_: str, version: str, purpose: Purpose = Purpose.TREATMENT
    ) -> dict[str, Any]:
        for row in await self._known(type_, id_, purpose):
            if str(row.version) == version:
                return await self._open(row, purpose)
        raise FhirError.not_found(f"{type_}/{id_} has no version {version}")

    def _authorize(self, row: IndexedResource, purpose: Purpose) -> Access:
        try:
            return self.gateway.authorize(self.me, row.record, purpose)
        except ConsentError as exc:
            raise _refused(row, purpose) from exc

    async def _open(self, row: IndexedResource, purpose: Purpose) -> dict[str, Any]:
        # the index knows where the record is: the gateway need not look it up
        self.gateway.remember_location(
            row.record, row.patient, kind_tag(kind_of(row.type)), Cid.from_bytes(row.cid)
        )
        try:
            access = await self.gateway.authorize_async(self.me, row.record, purpose)
        except ConsentError as exc:
            raise _refused(row, purpose) from exc
        body = await self._fetch(access)
        if body.get("resourceType") != row.type or body.get("id") != row.id:
            raise FhirError.invalid(
                [
                    _issue(
                        "exception",
                        "the stored record is not the resource the index names",
                        row.type,
                    )
                ],
                status=500,
            )
        return with_meta(body, row)

    async def _fetch(self, access: Access) -> dict[str, Any]:
        """Fetch the record's ciphertext (verified against its CID) and open it: with the
        institution's capsule in the record's own header when there is one (records written
        or sealed after the grant), else with the capsule its grant's capsule block holds."""
        data = b"".join([piece async for piece in self.gateway.ciphertext(access)])
        try:
            plain = _open_sealed(data, self.keeper.wallet.encryption_keys, [])
        except NoCapsuleError:
            capsule = await self.gateway.capsule_for(access)
            if not capsule:
                raise
            extra = [KeyCapsule.from_bytes(capsule)]
            plain = _open_sealed(data, self.keeper.wallet.encryption_keys, extra)
        out: dict[str, Any] = json.loads(plain)
        return out

    async def history(
        self, type_: str, id_: str, purpose: Purpose = Purpose.TREATMENT
    ) -> list[dict[str, Any]]:
        """Every version this institution may read now, newest first."""
        versions = await self._known(type_, id_, purpose)
        allowed = self.gateway.authorize_many(self.me, [v.record for v in versions], purpose)
        out = []
        for row, access in zip(versions, allowed, strict=True):
            if access is None:
                continue
            body = self.index.body(row.record)
            if body is not None:
                out.append(with_meta(body, row))
        if not out:
            raise FhirError.forbidden(
                f"no current consent lets this institution read {type_}/{id_}"
            )
        return out

    def search(
        self, query: Query, purpose: Purpose = Purpose.TREATMENT
    ) -> tuple[list[dict[str, Any]], int]:
        """(one page of matching resources this institution may read now, the index's total)."""
        page, total = self.index.search(query)
        allowed = self.gateway.authorize_many(self.me, [r.record for r, _ in page], purpose)
        refused = [r.record for (r, _), a in zip(page, allowed, strict=True) if a is None]
        if refused:
            self._last_full = 0.0  # the index is behind the chain: reconcile at the next sync
        return [
            with_meta(b, r) for (r, b), a in zip(page, allowed, strict=True) if a is not None
        ], total - len(refused)

    # -- keeping the index in step with the ledger ---------------------------------------------

    async def sync(self) -> int:
        """Catch the index up with the ledger: index what current consents let this
        institution open, forget what they no longer do. Returns how many versions changed.

        Runs on the server's event loop (record fetches share the gateway's storage client);
        the ledger indexer's own sync runs in a thread."""
        async with self._sync_lock:
            indexer = self.keeper.indexer
            await asyncio.to_thread(indexer.sync)
            head = indexer.indexed_block() or 0
            since = int(self.index.get_meta("ledger_block") or -1)
            now = self._clock()
            new: dict[str, list[RecordRow]] = {}  # patient -> records anchored since
            if now - self._last_full >= self.full_reconcile_s or since < 0:
                patients = {g.patient for g in indexer.grants(grantee=self.me)} | {self.me}
                patients |= set(self.index.patients())
                self._last_full = now
            else:
                patients = indexer.consent_changed(self.me, since)
                # an expiry is no event: follow the grants whose time ran out since last sync
                patients |= indexer.patients_expiring(self.me, self._expiries_seen, now)
                for row in await asyncio.to_thread(indexer.records_anchored, self.me, since):
                    if row.patient not in patients:
                        new.setdefault(row.patient, []).append(row)
            self._expiries_seen = now
            changed = 0
            for patient in sorted(patients):
                changed += await self._reconcile(patient, now)
            for patient, rows in sorted(new.items()):
                changed += await self._reconcile_new(patient, rows, now)
            self.index.set_meta("ledger_block", str(head))
            return changed

    def _covered(self, patient: str, rows: list[RecordRow], now: float) -> list[RecordRow]:
        if patient == self.me:
            return rows
        scopes = {
            g.scope
            for g in self.keeper.indexer.grants(patient=patient, grantee=self.me, active_at=now)
        }
        if ALL_SCOPE in scopes:
            return rows
        return [r for r in rows if r.record in scopes or b"\0" * 28 + r.kind in scopes]

    def _reconcile_plan(
        self, patient: str, now: float
    ) -> tuple[int, list[RecordRow], dict[bytes, int]]:
        """Drop what consent no longer covers; (how many were dropped, the covered records
        missing from the index in version order, every record's version number). Database
        work only: runs in a thread, off the requests' event loop."""
        rows = [
            r
            for r in self.keeper.indexer.records(patient, include_history=True)
            if r.kind in _KINDS and not r.erased
        ]
        wanted = {r.record: r for r in self._covered(patient, rows, now)}
        have = set(self.index.records_of(patient))
        dropped = self.index.drop(have - set(wanted))
        versions = _version_numbers(rows)
        with self._writing_lock:  # being written here: the writer indexes them
            have |= self._writing
        missing = sorted(set(wanted) - have, key=lambda rec: versions.get(rec, 0))
        return dropped, [wanted[r] for r in missing], versions

    async def _reconcile(self, patient: str, now: float) -> int:
        dropped, missing, versions = await asyncio.to_thread(self._reconcile_plan, patient, now)
        return dropped + await self._index_missing(patient, missing, versions)

    def _new_plan(
        self, patient: str, rows: list[RecordRow], now: float
    ) -> tuple[list[RecordRow], dict[bytes, int]] | None:
        """For a patient whose consents did not change and who only anchored ``rows`` since
        the last sync: (the covered ones missing from the index, in version order; their
        version numbers), without reading the patient's older records. None if a new
        version supersedes one the index does not hold (its number needs the whole chain)."""
        rows = [r for r in rows if r.kind in _KINDS and not r.erased]
        ids = {r.record for r in rows}
        known: dict[bytes, int] = {}  # versions the new ones continue, from the index
        for before in {r.supersedes for r in rows if r.supersedes and r.supersedes not in ids}:
            previous = self.index.by_record(before)
            if previous is None:
                return None
            known[before] = previous.version
        numbered = _version_numbers(rows, known)
        versions = {record: numbered[record] for record in ids}
        have = self.index.known_records([r.record for r in rows])
        with self._writing_lock:  # being written here: the writer indexes them
            have |= self._writing
        missing = [r for r in self._covered(patient, rows, now) if r.record not in have]
        return sorted(missing, key=lambda r: versions[r.record]), versions

    async def _reconcile_new(self, patient: str, rows: list[RecordRow], now: float) -> int:
        """:meth:`_reconcile` for a patient who only anchored ``rows`` since the last sync
        (the common case while records are imported: no need to read all their records)."""
        plan = await asyncio.to_thread(self._new_plan, patient, rows, now)
        if plan is None:
            return await self._reconcile(patient, now)
        return await self._index_missing(patient, *plan)

    async def _index_missing(
        self, patient: str, missing: list[RecordRow], versions: dict[bytes, int]
    ) -> int:
        """Fetch, open, validate and index ``missing`` records of ``patient``."""
        added = []
        for row in missing:
            record = row.record
            try:
                body = await self._fetch_own(row)
                body = validate_resource(body, expected_type=_KINDS[row.kind])
            except (MedmeshError, ValueError):
                continue  # not openable or not valid FHIR: not served (retried at full sync)
            id_ = str(body.get("id") or "")
            if not id_:
                continue
            added.append(
                (IndexedResource(record, _KINDS[row.kind], id_, versions.get(record, 1), True, patient,
                                 row.cid, float(row.anchored_at)), body)
            )  # fmt: skip
        if added:
            await asyncio.to_thread(self.index.put, added)
        return len(added)

    async def _fetch_own(self, row: RecordRow) -> dict[str, Any]:
        """Open a record for indexing (no consent check or access log: nothing is served)."""
        access = Access(
            self.me, row.record, row.patient, row.kind, Cid.from_bytes(row.cid), Purpose.TREATMENT
        )
        return await self._fetch(access)


def _open_sealed(data: bytes, keys: Any, extra: list[KeyCapsule]) -> bytes:
    opener = RecordOpener(keys, extra)
    return opener.update(data) + opener.finalize()


def _version_numbers(
    rows: Iterable[RecordRow], known: dict[bytes, int] | None = None
) -> dict[bytes, int]:
    """Each record's position in its chain of versions (1 = first; a chain continuing a
    record of ``known`` goes on from that one's number)."""
    by_id = {r.record: r for r in rows}
    out: dict[bytes, int] = dict(known or {})

    def number(record: bytes) -> int:
        seen: list[bytes] = []
        current: bytes | None = record
        while (
            current is not None and current not in out and current in by_id and len(seen) < 10_000
        ):
            seen.append(current)
            current = by_id[current].supersedes
        base = out.get(current, 0) if current is not None else 0
        for i, rec in enumerate(reversed(seen), start=1):
            out[rec] = base + i
        return out[record]

    for record in by_id:
        if record not in out:
            number(record)
    return out


def _keys(resources: list[dict[str, Any]]) -> list[str]:
    """``Type/id`` of the resources that name their id (the others get new ones)."""
    return [
        f"{r.get('resourceType')}/{r['id']}"
        for r in resources
        if isinstance(r, dict) and isinstance(r.get("id"), str)
    ]


def _conflict(if_match: str | None, current: IndexedResource | None) -> FhirError | None:
    """The 412 for an ``If-Match`` ETag (``W/"3"``) that does not name ``current``'s version
    (None: no condition, or it does)."""
    if if_match is None:
        return None
    wanted = if_match.strip().removeprefix("W/").strip('"')
    if current is not None and wanted == str(current.version):
        return None
    return FhirError.precondition_failed(
        f"version conflict: If-Match names version {wanted or '?'}, "
        f"the current version is {current.version if current else 'none'}"
    )


def _refused(row: IndexedResource, purpose: Purpose) -> FhirError:
    return FhirError.forbidden(
        f"no current consent lets this institution read {row.type}/{row.id} for {purpose.names()}"
    )


def _issue(code: str, text: str, expression: str) -> Issue:
    return Issue("error", code, text, [expression])
