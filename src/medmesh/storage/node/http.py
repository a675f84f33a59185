"""The storage node's HTTP interface (aiohttp).

Reads follow the IPFS Trustless Gateway protocol, so any IPFS HTTP client can fetch:

- ``GET|HEAD /ipfs/{cid}?format=raw`` or ``Accept: application/vnd.ipld.raw`` -> one block
- ``GET /ipfs/{cid}?format=car`` or ``Accept: application/vnd.ipld.car`` -> CAR v1 of the
  DAG under ``cid`` (DFS, no duplicates; ``dag-scope=block`` for the root block only)
- ``GET /ipfs/bafkqaaa`` -> 200, the liveness probe

medmesh additions (writes are signed, see :mod:`medmesh.storage.auth`, by a signer the node
lets write, see :mod:`medmesh.storage.node.writers`: 403 if it may not, 503 if the ledger
that would say so cannot be read):

- ``PUT /ipfs/{cid}``             store one block (201 new, 200 already held)
- ``POST /blocks``                store a CAR of blocks (one signature per batch)
- ``POST /blocks/fetch``          ``{"cids": [...]}`` -> CAR of the blocks held (reads in bulk)
- ``DELETE /ipfs/{cid}``          drop a block
- ``POST /objects``               ``{"object", "manifest"}``: index an object held here
- ``POST /objects/batch``         ``{"objects": [{"object", "manifest"}, ...]}``: index up to
                                  1,024 objects in one commit -> ``{"registered": <count>,
                                  "results": [...]}``, one result per entry, in order: the
                                  entry's CIDs, plus ``error``/``message`` if it was refused
- ``GET /objects/{cid}``          manifests of an object and the shares held
- ``DELETE /objects/{cid}``       erase an object: every block of it held here, and its
                                  index entry -> ``{"object", "deleted": <blocks>}``
- ``POST /challenge``             ``{"cid", "index", "segment_size"}`` -> Merkle proof
- ``GET /routing/v1/providers/{cid}``  nodes that provide ``cid`` (Delegated Routing API)
- ``GET /node/info``              identity and usage

Errors are JSON ``{"error": code, "message": text}`` with the right status; messages never
echo request bodies.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from aiohttp import web

from medmesh.errors import (
    AuthError,
    BlockMismatchError,
    IntegrityError,
    InvalidInputError,
    MedmeshError,
    NotFoundError,
    StorageFullError,
    UntrustedSignerError,
)
from medmesh.storage.auth import body_digest, recover_request
from medmesh.storage.block import Block
from medmesh.storage.car import car_bytes
from medmesh.storage.cid import IDENTITY, Cid
from medmesh.storage.exporter import walk_dfs
from medmesh.storage.node.ratelimit import TokenBucket
from medmesh.storage.node.service import MAX_BATCH_BYTES, MAX_REGISTER_BATCH, NodeService
from medmesh.storage.node.writers import WriterCheckUnavailableError, WriterPolicy, writer_policy

__all__ = ["make_app"]

RAW: Final = "application/vnd.ipld.raw"
CAR: Final = "application/vnd.ipld.car"
CAR_TYPE: Final = "application/vnd.ipld.car; version=1; order=dfs; dups=n"
IMMUTABLE: Final = "public, max-age=29030400, immutable"
SERVICE_KEY: Final = web.AppKey("service", NodeService)
WRITERS_KEY: Final = web.AppKey("writers", WriterPolicy)
MAX_CAR_BYTES: Final = 256 * 1024 * 1024
MAX_FETCH: Final = 64  # blocks per POST /blocks/fetch
MAX_REGISTER_BODY: Final = 256 * 1024  # POST /objects/batch: 1,024 entries take ~140 KB
ANNOUNCE_CONCURRENCY: Final = 8  # DHT announcements in flight after a batch registration
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS: Final[list[tuple[type[MedmeshError], int]]] = [
    (WriterCheckUnavailableError, 503),
    (UntrustedSignerError, 403),
    (AuthError, 401),
    (StorageFullError, 507),
    (NotFoundError, 404),
    (BlockMismatchError, 400),
    (IntegrityError, 400),
    (InvalidInputError, 400),
]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _status_for(exc: MedmeshError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


_HTTP_CODES: Final = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MedmeshError as exc:
        resp = _error(_status_for(exc), exc.code, exc.message)
        if isinstance(exc, WriterCheckUnavailableError):
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    except web.HTTPException as exc:  # unknown route, wrong method, body too large
        if exc.status < 400:
            raise
        resp = _error(exc.status, _HTTP_CODES.get(exc.status, "http_error"), exc.reason)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


def make_app(
    service: NodeService,
    *,
    providers: Callable[[Cid], Awaitable[list[dict[str, Any]]]] | None = None,
    announce: Callable[[Cid], Awaitable[object]] | None = None,
    withdraw: Callable[[Cid], Awaitable[object]] | None = None,
    announce_many: Callable[[Sequence[Cid]], Awaitable[object]] | None = None,
    writers: WriterPolicy | None = None,
) -> web.Application:
    """Build the aiohttp application serving ``service``.

    ``providers`` answers Delegated Routing lookups, ``announce`` publishes a provider
    record after an object is indexed and ``withdraw`` retracts it after the object is
    erased (all from the DHT; absent in unit tests). ``announce_many`` publishes the
    records of a batch registration; without it they go through ``announce``,
    :data:`ANNOUNCE_CONCURRENCY` at a time. ``writers`` decides who may write; by default
    the service's trusted addresses, plus the ledger's Registry if its config names one
    (:func:`~medmesh.storage.node.writers.writer_policy`). It is closed with the app.
    """
    cfg = service.config
    guard = service.replay_guard
    bucket = TokenBucket(cfg.rate_limit) if cfg.rate_limit else None
    policy = writers if writers is not None else writer_policy(cfg)
    background: set[asyncio.Future[object]] = set()

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def in_background(coro: Awaitable[object]) -> None:
        task: asyncio.Future[object] = asyncio.ensure_future(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    def parse_cid(text: str) -> Cid:
        return Cid.parse(text)

    async def read_body(request: web.Request, limit: int) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
        if request.content_length is not None:
            return await request.read()  # one buffer, sized by aiohttp (<= client_max_size)
        body = bytearray()  # chunked upload: enforce the limit as it arrives
        async for chunk in request.content.iter_chunked(1 << 20):
            body += chunk
            if len(body) > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
        return bytes(body)

    async def authenticate(request: web.Request, body: bytes) -> str:
        digest = await run(body_digest, body) if len(body) > 65536 else body_digest(body)
        signed = recover_request(
            request.headers, service.node_id, request.method, request.path_qs, digest
        )
        await policy.authorize(signed.signer)  # may ask the ledger: before the nonce is spent
        guard.check(signed.nonce, signed.timestamp)
        return signed.signer

    def wants(request: web.Request) -> str | None:
        accept = request.headers.get("Accept", "")
        for part in accept.split(","):
            mime = part.split(";")[0].strip()
            if mime == RAW:
                return "raw"
            if mime == CAR:
                return "car"
        fmt = request.query.get("format")
        if fmt in ("raw", "car"):
            return fmt
        return None

    async def send_bytes(
        request: web.Request, data: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        if bucket is None or request.method == "HEAD":
            # aiohttp sends Content-Length but no body in answer to HEAD
            return web.Response(body=data, headers=headers)
        resp = web.StreamResponse(headers=headers)
        resp.content_length = len(data)
        await resp.prepare(request)
        view = memoryview(data)
        for off in range(0, len(view), 65536):
            piece = view[off : off + 65536]
            await bucket.consume(len(piece))
            await resp.write(piece)
        await resp.write_eof()
        return resp

    # -- trustless gateway -------------------------------------------------------------
    async def get_ipfs(request: web.Request) -> web.StreamResponse:
        cid = parse_cid(request.match_info["cid"])
        fmt = wants(request)
        if fmt is None:
            return _error(
                406, "not_acceptable", "this is a trustless gateway: ask for format=raw or car"
            )
        common = {
            "X-Content-Type-Options": "nosniff",
            "X-Ipfs-Path": f"/ipfs/{request.match_info['cid']}",
            "X-Ipfs-Roots": str(cid),
            "Cache-Control": IMMUTABLE,
        }
        if fmt == "raw":
            if cid.hash_code == IDENTITY:
                data = cid.digest
            else:
                data = await run(service.get_block, cid)
            headers = {**common, "Content-Type": RAW, "ETag": f'"{cid}.raw"'}
            return await send_bytes(request, data, headers)
        scope = request.query.get("dag-scope", "all")
        if scope not in ("all", "block", "entity"):
            raise InvalidInputError("unsupported dag-scope")
        if scope == "block":
            blocks = [(cid, await run(service.get_block, cid))]
        else:
            walked: list[Block] = await run(lambda: list(walk_dfs(cid, service.get_block)))
            blocks = [(b.cid, b.data) for b in walked]
        if sum(len(d) for _, d in blocks) > MAX_CAR_BYTES:
            raise InvalidInputError(
                "DAG too large for one CAR response; fetch blocks with format=raw"
            )
        body = car_bytes([cid], (Block(c, d) for c, d in blocks))
        headers = {**common, "Content-Type": CAR_TYPE, "ETag": f'"{cid}.car.{scope}"'}
        return await send_bytes(request, body, headers)

    async def put_ipfs(request: web.Request) -> web.StreamResponse:
        cid = parse_cid(request.match_info["cid"])
        body = await read_body(request, cfg.max_block_size)
        await authenticate(request, body)
        new = await run(service.put_block, cid, body)
        return web.json_response({"cid": str(cid), "new": new}, status=201 if new else 200)

    async def delete_ipfs(request: web.Request) -> web.StreamResponse:
        cid = parse_cid(request.match_info["cid"])
        await authenticate(request, b"")
        if not await run(service.delete_block, cid):
            raise NotFoundError("block not held")
        return web.json_response({"cid": str(cid), "deleted": True})

    async def post_blocks(request: web.Request) -> web.StreamResponse:
        body = await read_body(request, MAX_BATCH_BYTES)
        await authenticate(request, body)
        new, total = await run(service.put_car, body)
        return web.json_response({"new": new, "blocks": total}, status=201)

    async def fetch_blocks(request: web.Request) -> web.StreamResponse:
        """Many blocks in one round trip: a CAR of those held, in the order asked."""
        body = await read_body(request, 64 * 1024)
        try:
            doc = json.loads(body)
            cids = [parse_cid(c) for c in doc["cids"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError('body must be {"cids": [CID, ...]}') from exc
        if not 0 < len(cids) <= MAX_FETCH:
            raise InvalidInputError(f"ask for 1 to {MAX_FETCH} blocks at a time")

        def collect() -> list[Block]:
            out = []
            for cid in cids:
                try:
                    out.append(Block(cid, service.get_block(cid)))
                except NotFoundError:
                    continue
            return out

        blocks: list[Block] = await run(collect)
        return await send_bytes(request, car_bytes([cids[0]], blocks), {"Content-Type": CAR_TYPE})

    # -- objects -----------------------------------------------------------------------
    async def post_objects(request: web.Request) -> web.StreamResponse:
        body = await read_body(request, 4096)
        await authenticate(request, body)
        try:
            doc = json.loads(body)
            obj, manifest = parse_cid(doc["object"]), parse_cid(doc["manifest"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError('body must be {"object": CID, "manifest": CID}') from exc
        await run(service.register_object, obj, manifest)
        if announce is not None:  # in the background: a slow DHT must not delay the write
            in_background(announce(obj))
        return web.json_response({"object": str(obj), "manifest": str(manifest)}, status=201)

    async def announce_batch(cids: Sequence[Cid]) -> None:
        if announce_many is not None:
            await announce_many(cids)
            return
        assert announce is not None
        gate = asyncio.Semaphore(ANNOUNCE_CONCURRENCY)

        async def one(cid: Cid) -> None:
            async with gate:
                await announce(cid)

        await asyncio.gather(*(one(c) for c in cids))

    async def post_objects_batch(request: web.Request) -> web.StreamResponse:
        """Index many objects: each entry checked like ``POST /objects``, one commit.

        The request as a whole is refused (4xx, nothing indexed) if it is unsigned, too
        large or not ``{"objects": [...]}``; otherwise every entry gets its own result and
        the good ones are indexed (durably) even when others are refused.
        """
        body = await read_body(request, MAX_REGISTER_BODY)
        await authenticate(request, body)
        shape = 'body must be {"objects": [{"object": CID, "manifest": CID}, ...]}'
        try:
            raw = json.loads(body)["objects"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInputError(shape) from exc
        if not isinstance(raw, list):
            raise InvalidInputError(shape)
        if not 0 < len(raw) <= MAX_REGISTER_BATCH:
            raise InvalidInputError(f"register 1 to {MAX_REGISTER_BATCH} objects at a time")
        results: list[dict[str, Any]] = []
        todo: list[tuple[int, Cid, Cid]] = []
        for entry in raw:
            try:
                obj, manifest = parse_cid(entry["object"]), parse_cid(entry["manifest"])
            except (MedmeshError, KeyError, TypeError):
                results.append(
                    {"error": "invalid_input", "message": "entry must be {object, manifest}"}
                )
                continue
            todo.append((len(results), obj, manifest))
            results.append({"object": str(obj), "manifest": str(manifest)})
        outcome = await run(service.register_objects, [(o, m) for _, o, m in todo])
        fresh: dict[Cid, None] = {}  # the objects indexed, once each, in order
        for (i, obj, _), err in zip(todo, outcome, strict=True):
            if err is None:
                fresh[obj] = None
            else:
                results[i].update(error=err.code, message=err.message)
        if fresh and (announce is not None or announce_many is not None):
            # in the background: a slow DHT must not delay the write
            in_background(announce_batch(list(fresh)))
        registered = sum(err is None for err in outcome)
        return web.json_response({"registered": registered, "results": results})

    async def delete_object(request: web.Request) -> web.StreamResponse:
        cid = parse_cid(request.match_info["cid"])
        await authenticate(request, b"")
        deleted = await run(service.erase_object, cid)
        if withdraw is not None:  # the blocks are gone; the DHT hears of it in the background
            in_background(withdraw(cid))
        return web.json_response({"object": str(cid), "deleted": deleted})

    async def get_object(request: web.Request) -> web.StreamResponse:
        cid = parse_cid(request.match_info["cid"])
        return web.json_response(await run(service.object_info, cid))

    async def post_challenge(request: web.Request) -> web.StreamResponse:
        body = await read_body(request, 4096)
        try:
            doc = json.loads(body)
            cid = parse_cid(doc["cid"])
            index, seg = int(doc["index"]), int(doc.get("segment_size", 16384))
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise InvalidInputError('body must be {"cid", "index", "segment_size"}') from exc
        ch = await run(service.challenge, cid, index, seg)
        return web.json_response(
            {
                "cid": str(ch.cid),
                "length": ch.length,
                "segment_size": ch.segment_size,
                "proof": ch.proof.to_json(),
            }
        )

    async def get_providers(request: web.Request) -> web.StreamResponse:
        cid = parse_cid(request.match_info["cid"])
        found = await providers(cid) if providers is not None else []
        if not found:
            return _error(404, "not_found", "no providers found")
        return web.json_response({"Providers": found})

    async def node_info(request: web.Request) -> web.StreamResponse:
        return web.json_response(await run(service.info))

    async def path_not_supported(request: web.Request) -> web.StreamResponse:
        return _error(400, "invalid_input", "paths under a CID are not supported")

    async def close_writers(app: web.Application) -> None:
        await policy.aclose()

    app = web.Application(middlewares=[_errors], client_max_size=MAX_BATCH_BYTES)
    app[SERVICE_KEY] = service
    app[WRITERS_KEY] = policy
    app.on_cleanup.append(close_writers)
    app.router.add_get("/ipfs/{cid}", get_ipfs)  # GET also answers HEAD
    app.router.add_put("/ipfs/{cid}", put_ipfs)
    app.router.add_delete("/ipfs/{cid}", delete_ipfs)
    app.router.add_route("*", "/ipfs/{cid}/{path:.*}", path_not_supported)
    app.router.add_post("/blocks", post_blocks)
    app.router.add_post("/blocks/fetch", fetch_blocks)
    app.router.add_post("/objects", post_objects)
    app.router.add_post("/objects/batch", post_objects_batch)
    app.router.add_get("/objects/{cid}", get_object)
    app.router.add_delete("/objects/{cid}", delete_object)
    app.router.add_post("/challenge", post_challenge)
    app.router.add_get("/routing/v1/providers/{cid}", get_providers)
    app.router.add_get("/node/info", node_info)
    return app
