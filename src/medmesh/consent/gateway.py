"""The consent gateway: releases a record's ciphertext and the caller's key capsule, and
only when the ledger grants it now.

Run with ``medmesh gateway run``. Every request for a record goes through :meth:`Gateway.check`:

1. the bearer token names a live SIWE session (:mod:`medmesh.consent.sessions`);
2. the record is known (indexer, else the chain's ``Anchored`` log);
3. ``Consent.has_access(caller, record, purpose)`` is true **at the latest block**: a
   revocation is effective as soon as it is mined; expiry is the chain's clock;
4. the access is logged: allowed ones on chain in batches, refusals locally
   (:mod:`medmesh.consent.access_log`).

What may be cached and what may not: step 3 is one ``eth_call`` per request, never cached (it
is the decision, and revocation must hold from the next block); the same JSON-RPC request
reads the chain's head. A record's (patient, kind, CID) never change once it is anchored (an
erased record is refused by step 3), so step 2 is answered from memory after the first
request. Which capsule block a grant references is read from the index once per (grant, head
block), and the blocks themselves, content-addressed, are cached by digest. When the index
knows no capsule block of the caller's for the record's scopes, the grant may be newer than
the index: it is synced and read again, at most once per head block. (A record sealed after
its grant carries the grantee's capsule in its own header: its grant's block does not list it,
and no sync is needed to say so.)

Then the gateway answers with the record's CID and the caller's capsule (from the capsule
block its grant references; when there is none, the capsule is in the record's own header)
or streams the ciphertext itself. It never holds a private encryption key and never sees
plaintext.

HTTP API (JSON errors ``{"error": code, "message": …}``; 401 no session, 403 no consent,
404 unknown record):

    GET  /v1/auth/nonce                        → {nonce, domain, uri, chain_id}
    POST /v1/auth/login   {message, signature} → {token, address, expires_at}
    GET  /v1/records/{record}/capsule?purpose= → {record, cid, patient, kind, capsule}
    GET  /v1/records/{record}?purpose=         → ciphertext (X-Medmesh-Cid, X-Medmesh-Capsule)
    GET  /v1/health
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types
from eth_utils.address import to_checksum_address
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from medmesh.consent.access_log import AccessLog, Entry
from medmesh.consent.capsules import CapsuleBlock, cid_of_digest
from medmesh.consent.policy import scopes_for
from medmesh.consent.sessions import Sessions
from medmesh.errors import (
    AuthError,
    ConsentError,
    InvalidInputError,
    MedmeshError,
    NotFoundError,
)
from medmesh.ledger.client import Ledger
from medmesh.ledger.contracts import Purpose
from medmesh.ledger.indexer import Indexer
from medmesh.ledger.rpc import AsyncRpc, RpcCallError
from medmesh.runtime import server_gc
from medmesh.storage.backends.base import ObjectStore
from medmesh.storage.cache import DEFAULT_CACHE_BYTES, ObjectCache
from medmesh.storage.cid import Cid

__all__ = ["Access", "Gateway", "create_app"]

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
_CAPSULE_CACHE = 4096
_LOCATION_CACHE = 65_536
_REF_CACHE = 65_536
_MAX_ASKS = 256  # consent asks decided in one JSON-RPC batch
#: JSON-RPC batches of consent asks on their way at once: an ask that arrives while one batch is
#: out goes in the next at once instead of waiting a whole round trip behind it
_MAX_DECIDING = 3


@dataclass(frozen=True)
class Access:
    """An allowed request."""

    requester: str
    record: bytes
    patient: str
    kind: bytes
    cid: Cid
    purpose: Purpose
    block: int = -1  # the chain's head when access was allowed (-1: unknown)


@dataclass
class _Decision:
    """Consent asks on their way to the chain (:meth:`Gateway._prepare`)."""

    asks: list[tuple[str, bytes, Purpose]]
    out: list[Access | MedmeshError | None]
    located: dict[int, tuple[str, bytes, Cid]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # asks that go to the chain
    calls: list[tuple[str, list[Any]]] = field(default_factory=list)


def parse_record_id(text: str) -> bytes:
    raw = text.removeprefix("0x")
    if len(raw) != 64:
        raise InvalidInputError("a record id is 32 bytes in hex (0x + 64 digits)")
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise InvalidInputError("a record id is 32 bytes in hex (0x + 64 digits)") from None


def parse_purpose(text: str) -> Purpose:
    purpose = Purpose.parse(text)
    if purpose.bit_count() != 1:
        raise InvalidInputError("ask for exactly one purpose per request")
    return purpose


class Gateway:
    """Policy enforcement, logging and capsule lookup, independent of HTTP."""

    def __init__(
        self,
        ledger: Ledger,
        indexer: Indexer,
        store: ObjectStore | None,
        access_log: AccessLog,
        *,
        domain: str,
        uri: str,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.ledger = ledger
        self.indexer = indexer
        self.store = store
        self.log = access_log
        self.domain = domain
        self.uri = uri
        self.sessions = Sessions(domain, ledger.chain_id)
        # small ciphertexts, verified by CID when fetched: repeated reads skip the network
        # (the consent check before serving them runs every time)
        self.cache = ObjectCache(cache_bytes)
        self._capsule_blocks: OrderedDict[bytes, CapsuleBlock] = OrderedDict()
        # record -> (patient, kind, cid), most recently used last (they never change)
        self._locations: OrderedDict[bytes, tuple[str, bytes, Cid]] = OrderedDict()
        self._locations_lock = threading.Lock()
        abi = next(
            e
            for e in ledger.consent.web3.abi
            if e.get("type") == "function" and e.get("name") == "has_access"
        )
        self._has_access_selector = function_abi_to_4byte_selector(abi)
        self._has_access_types = get_abi_input_types(abi)
        # (patient, grantee, scope) -> (head block when read, capsule block digest or None)
        self._refs: dict[tuple[str, str, bytes], tuple[int, bytes | None]] = {}
        self._misses: dict[tuple[bytes, str], int] = {}  # (record, grantee) -> head block
        # consent asks waiting for the next JSON-RPC batch (authorize_async)
        self._asks: list[tuple[str, bytes, Purpose, asyncio.Future[Access]]] = []
        self._deciding: set[asyncio.Task[None]] = set()
        self._arpc = AsyncRpc(ledger.rpc.url, timeout=ledger.rpc.timeout)

    async def aclose(self) -> None:
        """Close what the gateway opened on its event loop (the application's shutdown):
        the chain's session and the storage network's."""
        await self._arpc.aclose()
        if self.store is not None:
            await self.store.close()

    # -- the decision -----------------------------------------------------------------------

    def _locate(self, record: bytes) -> tuple[str, bytes, Cid]:
        """(patient, kind, cid) of an anchored record (remembered: they never change)."""
        with self._locations_lock:
            found = self._locations.get(record)
            if found is not None:
                self._locations.move_to_end(record)
                return found
        found = self._find_record(record)
        self.remember_location(record, *found)
        return found

    def remember_location(self, record: bytes, patient: str, kind: bytes, cid: Cid) -> None:
        """Where an anchored record is, as the caller's own copy of the ledger says (the
        FHIR index, built from this gateway's ledger index): its first read then needs no
        lookup. Consent is still asked of the chain on every read."""
        with self._locations_lock:
            self._locations[record] = (patient, kind, cid)
            self._locations.move_to_end(record)
            while len(self._locations) > _LOCATION_CACHE:
                self._locations.popitem(last=False)

    def _has_access_call(
        self, requester: str, record: bytes, purpose: Purpose
    ) -> tuple[str, list[Any]]:
        """The ``Consent.has_access`` eth_call at ``latest``, as a JSON-RPC batch entry."""
        address = bytes.fromhex(requester.removeprefix("0x"))
        data = self._has_access_selector + abi_encode(
            self._has_access_types, [address, record, int(purpose)]
        )
        return (
            "eth_call",
            [{"to": self.ledger.consent.address, "data": "0x" + data.hex()}, "latest"],
        )

    def _decide(self, requester: str, record: bytes, purpose: Purpose) -> tuple[bool, int]:
        """(``Consent.has_access`` at the latest block, the head block number).

        One JSON-RPC request per call, never cached. The call is encoded here with
        ``eth_abi`` (13 µs) rather than through web3's contract object (~450 µs), as this runs
        on every request.
        """
        call = self._has_access_call(requester, record, purpose)
        head, raw = self.ledger.rpc.batch([("eth_blockNumber", []), call])
        for answer in (head, raw):
            if isinstance(answer, RpcCallError):
                raise answer.to_exception()
        (allowed,) = abi_decode(["bool"], bytes.fromhex(raw[2:]))
        return bool(allowed), int(head, 16)

    def _find_record(self, record: bytes) -> tuple[str, bytes, Cid]:
        row = self.indexer.record(record)
        if row is not None:
            return row.patient, row.kind, Cid.from_bytes(row.cid)
        anchor = self.ledger.records.anchor_of(record)
        if not anchor.exists:
            raise NotFoundError("no such record on the ledger")
        records = self.ledger.records
        logs = self.ledger.rpc.call(
            "eth_getLogs",
            {"address": records.address, "fromBlock": hex(self.ledger.book.block),
             "topics": [records.codec.topic("Anchored"), None, "0x" + record.hex()]},
        )  # fmt: skip
        for entry in logs:
            decoded = records.codec.decode(entry)
            if decoded is not None:
                return anchor.owner, anchor.kind, Cid.from_bytes(bytes(decoded[1]["cid"]))
        raise NotFoundError("record anchored but its CID is not in the chain's logs")

    def check(self, token: str | None, record_text: str, purpose_text: str) -> Access:
        """Allow or refuse one request; every outcome is logged."""
        requester: str | None = None
        record: bytes | None = None
        purpose: Purpose | None = None
        try:
            if not token:
                raise AuthError("sign in first (Authorization: Bearer <token>)")
            requester = self.sessions.resolve(token).address
            record = parse_record_id(record_text)
            purpose = parse_purpose(purpose_text)
        except MedmeshError as exc:
            self.log.refused(requester, record, int(purpose) if purpose else None, exc.code)
            raise
        return self.authorize(requester, record, purpose)

    def authorize(self, requester: str, record: bytes, purpose: Purpose) -> Access:
        """Allow or refuse ``requester`` (already authenticated) ``record`` for ``purpose``;
        every outcome is logged."""
        try:
            patient, kind, cid = self._locate(record)
            allowed, block = self._decide(requester, record, purpose)
            if not allowed:
                raise ConsentError("no current grant covers this record for this purpose")
        except MedmeshError as exc:
            self.log.refused(requester, record, int(purpose), exc.code)
            raise
        self.log.allowed(Entry(patient, requester, record, purpose, int(time.time())))
        return Access(requester, record, patient, kind, cid, purpose, block)

    def authorize_many(
        self, requester: str, records: list[bytes], purpose: Purpose
    ) -> list[Access | None]:
        """:meth:`authorize` for many records with one round trip to the chain: an
        :class:`Access` for each allowed record, None for each refused one (both logged);
        any other failure (an unknown record, the ledger away) raises."""
        out: list[Access | None] = []
        for result in self.authorize_each([(requester, r, purpose) for r in records]):
            if isinstance(result, ConsentError):
                out.append(None)
            elif isinstance(result, MedmeshError):
                raise result
            else:
                out.append(result)
        return out

    def authorize_each(self, asks: list[tuple[str, bytes, Purpose]]) -> list[Access | MedmeshError]:
        """:meth:`authorize` for many ``(requester, record, purpose)`` asks, with one
        round trip to the chain: for each, its :class:`Access` or the error refusing it
        (every outcome logged)."""
        decision = self._prepare(asks)
        if decision.calls:
            try:
                return self._conclude(decision, self.ledger.rpc.batch(decision.calls))
            except MedmeshError as exc:
                return self._conclude(decision, exc)
        return self._conclude(decision, [])

    def _prepare(self, asks: list[tuple[str, bytes, Purpose]]) -> _Decision:
        """Locate each ask's record (refusing, and logging, what is not anchored) and build
        the ``eth_call`` batch for the rest: the head block, then one ``has_access`` each."""
        decision = _Decision(asks, [None] * len(asks))
        for i, (requester, record, purpose) in enumerate(asks):
            try:
                decision.located[i] = self._locate(record)
            except MedmeshError as exc:
                self.log.refused(requester, record, int(purpose), exc.code)
                decision.out[i] = exc
        decision.order = sorted(decision.located)
        if decision.order:
            decision.calls = [
                ("eth_blockNumber", []),
                *(self._has_access_call(*asks[i]) for i in decision.order),
            ]
        return decision

    def _conclude(
        self, decision: _Decision, answers: list[Any] | MedmeshError
    ) -> list[Access | MedmeshError]:
        """Each ask's outcome from the chain's ``answers`` (or the error that stopped the
        batch), logged: allowed ones for the chain, refusals locally."""
        asks, out = decision.asks, decision.out
        if decision.order:
            block = -1
            if isinstance(answers, MedmeshError):
                answers = [answers] * (len(decision.order) + 1)
            elif isinstance(answers[0], RpcCallError):
                answers = [answers[0].to_exception()] * (len(decision.order) + 1)
            else:
                block = int(answers[0], 16)
            now = int(time.time())
            for i, answer in zip(decision.order, answers[1:], strict=True):
                requester, record, purpose = asks[i]
                patient, kind, cid = decision.located[i]
                error: MedmeshError | None = None
                if isinstance(answer, RpcCallError):
                    error = answer.to_exception()
                elif isinstance(answer, MedmeshError):
                    error = answer
                elif not abi_decode(["bool"], bytes.fromhex(answer[2:]))[0]:
                    error = ConsentError("no current grant covers this record for this purpose")
                if error is not None:
                    self.log.refused(requester, record, int(purpose), error.code)
                    out[i] = error
                    continue
                self.log.allowed(Entry(patient, requester, record, purpose, now))
                out[i] = Access(requester, record, patient, kind, cid, purpose, block)
        return [o if o is not None else NotFoundError("not decided") for o in out]

    async def authorize_async(self, requester: str, record: bytes, purpose: Purpose) -> Access:
        """:meth:`authorize` without blocking the event loop: the asks of concurrent
        requests are decided together, in JSON-RPC batches (up to :data:`_MAX_DECIDING` on
        their way at once; asks arriving meanwhile gather for the next)."""
        future: asyncio.Future[Access] = asyncio.get_running_loop().create_future()
        self._asks.append((requester, record, purpose, future))
        if len(self._deciding) < _MAX_DECIDING:
            task = asyncio.create_task(self._decide_asks())
            self._deciding.add(task)
            task.add_done_callback(self._deciding.discard)
        return await future

    async def _decide_asks(self) -> None:
        while self._asks:
            batch, self._asks = self._asks[:_MAX_ASKS], self._asks[_MAX_ASKS:]
            try:  # on the loop: the eth_call batch goes out through the async client
                decision = self._prepare([a[:3] for a in batch])
                answers: list[Any] | MedmeshError = []
                if decision.calls:
                    try:
                        answers = await self._arpc.batch(decision.calls)
                    except MedmeshError as exc:
                        answers = exc
                results: list[Access | BaseException] = list(self._conclude(decision, answers))
            except Exception as exc:  # a bug: every ask of the batch fails
                results = [exc] * len(batch)
            for (*_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    # -- capsules ---------------------------------------------------------------------------

    async def _capsule_block(self, digest: bytes) -> CapsuleBlock | None:
        cached = self._capsule_blocks.get(digest)
        if cached is not None:
            self._capsule_blocks.move_to_end(digest)
            return cached
        if self.store is None:
            return None
        data = b"".join([piece async for piece in self.store.get(cid_of_digest(digest))])
        block = CapsuleBlock.decode(data)
        self._capsule_blocks[digest] = block
        if len(self._capsule_blocks) > _CAPSULE_CACHE:
            self._capsule_blocks.popitem(last=False)
        return block

    async def capsule_for(self, access: Access) -> bytes | None:
        """The caller's capsule for the record, from its grants' capsule blocks (None: in header)."""
        if access.requester.lower() == access.patient.lower():
            return None
        found, known = await self._find_capsule(access, fresh=False)
        key = (access.record, access.requester)
        if known or (access.block >= 0 and self._misses.get(key) == access.block):
            return found
        # no capsule block of this grantee's in the index: the grant may be newer than the
        # index, so catch up (off the event loop: the index's follower may hold it a while)
        await asyncio.to_thread(self.indexer.sync)
        found, known = await self._find_capsule(access, fresh=True)
        if not known:
            if len(self._misses) >= _REF_CACHE:
                self._misses.clear()
            self._misses[key] = access.block
        return found

    def _capsule_ref(self, access: Access, scope: bytes, *, fresh: bool) -> bytes | None:
        """The capsule block the grant at ``scope`` references, read once per head block."""
        key = (access.patient, access.requester, scope)
        cached = self._refs.get(key)
        if not fresh and access.block >= 0 and cached is not None and cached[0] == access.block:
            return cached[1]
        digest = self.indexer.capsule_ref(access.patient, access.requester, scope)
        if len(self._refs) >= _REF_CACHE:
            self._refs.clear()
        self._refs[key] = (access.block, digest)
        return digest

    async def _find_capsule(self, access: Access, *, fresh: bool) -> tuple[bytes | None, bool]:
        """(the capsule, whether any grant of the caller's for these scopes has a block)."""
        known = False
        for scope in scopes_for(access.record, access.kind):
            digest = self._capsule_ref(access, scope, fresh=fresh)
            known = known or digest is not None
            seen = 0
            while digest is not None and seen < 64:
                block = await self._capsule_block(digest)
                if block is None:
                    break
                capsule = block.capsules.get(access.record)
                if capsule is not None:
                    return capsule.to_bytes(), True
                digest = bytes(block.prev.digest) if block.prev is not None else None
                seen += 1
        return None, known

    async def ciphertext(self, access: Access) -> AsyncIterator[bytes]:
        if self.store is None:
            raise NotFoundError("this gateway has no storage backend")
        cached = self.cache.get(access.cid)
        if cached is not None:
            yield cached
            return
        held: list[bytes] | None = []
        size = 0
        async for piece in self.store.get(access.cid):  # verified against the CID as it comes
            if held is not None:
                size += len(piece)
                if size <= self.cache.max_object:
                    held.append(piece)
                else:
                    held = None
            yield piece
        if held is not None:  # the whole object arrived and verified
            self.cache.put(access.cid, b"".join(held))


class Login(BaseModel):
    """A signed EIP-4361 message."""

    message: str
    signature: str


def create_app(gateway: Gateway, *, lifespan: Lifespan | None = None) -> FastAPI:
    """The FastAPI application serving ``gateway`` (``lifespan``: background work of
    services mounted on it, such as the FHIR index's sync)."""

    @asynccontextmanager
    async def serving(app: FastAPI) -> AsyncIterator[None]:
        try:
            with server_gc():
                if lifespan is None:
                    yield
                else:
                    async with lifespan(app):
                        yield
        finally:
            await gateway.aclose()

    app = FastAPI(
        title="medmesh consent gateway",
        version="1",
        description="Consent-checked access to encrypted medical records (ciphertext and key capsules only).",
        lifespan=serving,
    )

    status_of = {
        "no_consent": 403,
        "not_found": 404,
        "invalid_input": 400,
        "reverted": 502,
        "rpc_unavailable": 503,
    }

    @app.exception_handler(MedmeshError)
    async def _medmesh_error(request: Request, exc: MedmeshError) -> JSONResponse:
        status = 401 if isinstance(exc, AuthError) else status_of.get(exc.code, 500)
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=status)

    def _token(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else None

    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "chain_id": gateway.ledger.chain_id,
            "block": gateway.ledger.block_number(),
        }

    @app.get("/v1/auth/nonce")
    def nonce() -> dict[str, Any]:
        return {
            "nonce": gateway.sessions.new_nonce(),
            "domain": gateway.domain,
            "uri": gateway.uri,
            "chain_id": gateway.ledger.chain_id,
        }

    @app.post("/v1/auth/login")
    def login(body: Login) -> dict[str, Any]:
        token, session = gateway.sessions.login(body.message, body.signature)
        return {
            "token": token,
            "address": to_checksum_address(session.address),
            "expires_at": session.expires_at,
        }

    @app.get("/v1/records/{record}/capsule")
    async def capsule(record: str, request: Request, purpose: str = "treatment") -> JSONResponse:
        access = gateway.check(_token(request), record, purpose)
        found = await gateway.capsule_for(access)
        return JSONResponse(  # plain JSON values: skip FastAPI's response encoder
            {
                "record": "0x" + access.record.hex(),
                "cid": str(access.cid),
                "patient": access.patient,
                "kind": "0x" + access.kind.hex(),
                "capsule": base64.b64encode(found).decode() if found else None,
            }
        )

    @app.get("/v1/records/{record}")
    async def ciphertext(
        record: str, request: Request, purpose: str = "treatment"
    ) -> StreamingResponse:
        access = gateway.check(_token(request), record, purpose)
        found = await gateway.capsule_for(access)
        headers = {"X-Medmesh-Cid": str(access.cid)}
        if found:
            headers["X-Medmesh-Capsule"] = base64.b64encode(found).decode()
        return StreamingResponse(
            gateway.ciphertext(access), media_type="application/octet-stream", headers=headers
        )

    return app
