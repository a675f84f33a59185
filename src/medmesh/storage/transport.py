"""The client side of the node protocol: one :class:`NodeClient` per storage node.

All calls are async (aiohttp, one shared connection pool). Writes are signed with the
caller's wallet (see :mod:`medmesh.storage.auth`). Transport failures become
:class:`NodeUnavailableError`; a node's JSON error answers become the matching medmesh
error, so callers never see aiohttp exceptions.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from medmesh.errors import (
    AuthError,
    BlockMismatchError,
    InvalidInputError,
    MedmeshError,
    NodeUnavailableError,
    NotFoundError,
    StorageFullError,
)
from medmesh.storage.auth import RequestSigner, body_digest, sign_request
from medmesh.storage.block import Block
from medmesh.storage.car import car_bytes, read_car
from medmesh.storage.cid import Cid
from medmesh.storage.merkle import MerkleProof

__all__ = ["NodeClient", "NodeStats", "open_session"]

RAW_ACCEPT: Final = {"Accept": "application/vnd.ipld.raw"}
DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=120, sock_connect=5)
#: Pairs per ``POST /objects/batch``: the node's limit (``node.service.MAX_REGISTER_BATCH``).
MAX_REGISTER_BATCH: Final = 1024


def open_session(limit_per_host: int = 8) -> aiohttp.ClientSession:
    """A connection pool suited to many parallel block transfers on few hosts."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=limit_per_host, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, timeout=DEFAULT_TIMEOUT)


@dataclass
class NodeStats:
    """What the client has observed of a node: speed (EWMA bytes/s), load and failures."""

    throughput: float = 50e6
    inflight_bytes: int = 0
    failures: int = 0
    bad_blocks: int = 0
    alive: bool = True
    samples: int = 0

    def record(self, nbytes: int, seconds: float) -> None:
        if seconds <= 0 or nbytes < 16384:
            return
        rate = nbytes / seconds
        alpha = 0.3 if self.samples else 1.0
        self.throughput = (1 - alpha) * self.throughput + alpha * rate
        self.samples += 1

    def eta(self, nbytes: int) -> float:
        """Estimated seconds until ``nbytes`` more would arrive from this node."""
        return (self.inflight_bytes + nbytes) / max(self.throughput, 1.0)


def _raise_for(status: int, body: bytes, what: str) -> None:
    try:
        doc = json.loads(body)
        code, message = str(doc.get("error", "")), str(doc.get("message", ""))
    except ValueError:
        code, message = "", ""
    text = f"{what}: {message or f'HTTP {status}'}"
    if status == 404:
        raise NotFoundError(text)
    if status == 507:
        raise StorageFullError(text)
    if status in (401, 403):
        raise AuthError(text)
    if status == 413:
        raise InvalidInputError(text)
    if status == 400 and code == "block_mismatch":
        raise BlockMismatchError(text)
    if status == 400:
        raise InvalidInputError(text)
    raise NodeUnavailableError(text)


_ENTRY_ERRORS: Final[dict[str, type[MedmeshError]]] = {
    "not_found": NotFoundError,
    "block_mismatch": BlockMismatchError,
    "storage_full": StorageFullError,
}


def _entry_error(result: dict[str, Any], url: str) -> MedmeshError | None:
    """The error of one entry of a batch answer (None if the entry succeeded)."""
    if "error" not in result:
        return None
    cls = _ENTRY_ERRORS.get(str(result["error"]), InvalidInputError)
    return cls(f"node {url} refused object registration: {result.get('message', '')}")


@dataclass
class NodeClient:
    """A storage node seen from a client."""

    url: str
    session: aiohttp.ClientSession
    signer: RequestSigner | None = None
    node_id: str | None = None
    stats: NodeStats = field(default_factory=NodeStats)

    def __str__(self) -> str:
        return self.url

    async def _request(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        signed: bool = False,
        what: str = "request",
    ) -> tuple[int, bytes]:
        hdrs = dict(headers or {})
        if signed:
            if self.signer is None:
                raise AuthError("a wallet is needed to write to storage nodes")
            if self.node_id is None:
                await self.info()
            assert self.node_id is not None
            if len(body) > 65536:  # hash big bodies off the event loop
                digest = await asyncio.get_running_loop().run_in_executor(None, body_digest, body)
            else:
                digest = body_digest(body)
            hdrs.update(sign_request(self.signer, self.node_id, method, target, digest))
        try:
            async with self.session.request(
                method, self.url + target, data=body if body else None, headers=hdrs
            ) as resp:
                data = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.stats.failures += 1
            raise NodeUnavailableError(f"node {self.url} unreachable during {what}") from exc
        if status >= 400:
            if status >= 500 and status != 507:
                self.stats.failures += 1
            _raise_for(status, data, f"node {self.url} refused {what}")
        return status, data

    async def info(self) -> dict[str, Any]:
        _, data = await self._request("GET", "/node/info", what="info")
        doc: dict[str, Any] = json.loads(data)
        self.node_id = str(doc["id"])
        return doc

    async def probe(self) -> bool:
        """True if the node answers the trustless-gateway probe."""
        try:
            await self._request("GET", "/ipfs/bafkqaaa", headers=RAW_ACCEPT, what="probe")
        except MedmeshError:
            return False
        return True

    async def get_block(self, cid: Cid) -> bytes:
        """Fetch one block and verify it against its CID (raises BlockMismatchError)."""
        start = time.perf_counter()
        _, data = await self._request(
            "GET", f"/ipfs/{cid}?format=raw", headers=RAW_ACCEPT, what="block fetch"
        )
        self.stats.record(len(data), time.perf_counter() - start)
        if len(data) > 65536:  # hash off the event loop (hashlib releases the GIL)
            ok = await asyncio.get_running_loop().run_in_executor(None, cid.matches, data)
        else:
            ok = cid.matches(data)
        if not ok:
            self.stats.bad_blocks += 1
            raise BlockMismatchError(f"node {self.url} served a block that does not match {cid}")
        return data

    async def get_blocks(self, cids: list[Cid]) -> dict[Cid, bytes]:
        """Fetch many blocks in one request; returns those the node holds, each verified.

        Raises :class:`BlockMismatchError` if any block does not match its CID.
        """
        start = time.perf_counter()
        body = json.dumps({"cids": [str(c) for c in cids]}).encode()
        _, data = await self._request(
            "POST",
            "/blocks/fetch",
            body=body,
            headers={"Content-Type": "application/json", "Accept": "application/vnd.ipld.car"},
            what="block fetch",
        )
        self.stats.record(len(data), time.perf_counter() - start)
        wanted = set(cids)

        def parse() -> dict[Cid, bytes]:
            out: dict[Cid, bytes] = {}
            _, blocks = read_car(io.BytesIO(data))  # verifies every block
            for block in blocks:
                if block.cid in wanted:
                    out[block.cid] = block.data
            return out

        try:
            return await asyncio.get_running_loop().run_in_executor(None, parse)
        except BlockMismatchError:
            self.stats.bad_blocks += 1
            raise BlockMismatchError(
                f"node {self.url} served a block that does not match its CID"
            ) from None
        except InvalidInputError as exc:
            raise NodeUnavailableError(f"node {self.url} sent a malformed batch") from exc

    async def put_blocks(self, blocks: Iterable[Block]) -> int:
        """Store blocks in one signed CAR batch; returns how many were new on the node."""
        blocks = list(blocks)
        if not blocks:
            return 0
        body = car_bytes([blocks[0].cid], blocks)
        _, answer = await self._request(
            "POST",
            "/blocks",
            body=body,
            headers={"Content-Type": "application/vnd.ipld.car"},
            signed=True,
            what="block upload",
        )
        return int(json.loads(answer)["new"])

    async def delete_block(self, cid: Cid) -> None:
        await self._request("DELETE", f"/ipfs/{cid}", signed=True, what="block delete")

    async def register(self, obj: Cid, manifest: Cid) -> None:
        body = json.dumps({"object": str(obj), "manifest": str(manifest)}).encode()
        await self._request(
            "POST",
            "/objects",
            body=body,
            headers={"Content-Type": "application/json"},
            signed=True,
            what="object registration",
        )

    async def register_many(self, entries: Sequence[tuple[Cid, Cid]]) -> list[MedmeshError | None]:
        """Index many ``(object, manifest)`` pairs (``POST /objects/batch``, signed).

        Returns, in order, None for each pair the node indexed or the error it gave for
        that pair (the others are indexed all the same). Pairs go
        :data:`MAX_REGISTER_BATCH` to a request. A refusal of a whole request (auth,
        size, node down) raises as :meth:`register` does.
        """
        out: list[MedmeshError | None] = []
        for first in range(0, len(entries), MAX_REGISTER_BATCH):
            part = entries[first : first + MAX_REGISTER_BATCH]
            body = json.dumps(
                {"objects": [{"object": str(o), "manifest": str(m)} for o, m in part]}
            ).encode()
            _, data = await self._request(
                "POST",
                "/objects/batch",
                body=body,
                headers={"Content-Type": "application/json"},
                signed=True,
                what="object registration",
            )
            try:
                results = json.loads(data)["results"]
                if not isinstance(results, list) or len(results) != len(part):
                    raise ValueError("one result per entry expected")
                errors = [_entry_error(r, self.url) for r in results]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise NodeUnavailableError(
                    f"node {self.url} sent a malformed registration answer"
                ) from exc
            out.extend(errors)
        return out

    async def erase_object(self, obj: Cid) -> int:
        """Erase ``obj`` on this node (signed); returns the number of blocks it deleted.

        Raises :class:`NotFoundError` if the node has no manifest of ``obj`` registered.
        """
        _, data = await self._request(
            "DELETE", f"/objects/{obj}", signed=True, what="object erasure"
        )
        return int(json.loads(data)["deleted"])

    async def object_info(self, obj: Cid) -> dict[str, Any]:
        _, data = await self._request("GET", f"/objects/{obj}", what="object lookup")
        doc: dict[str, Any] = json.loads(data)
        return doc

    async def providers(self, cid: Cid) -> list[str]:
        """Base URLs of the nodes the DHT says provide ``cid`` (empty if none)."""
        try:
            _, data = await self._request(
                "GET", f"/routing/v1/providers/{cid}", what="provider lookup"
            )
        except NotFoundError:
            return []
        urls: list[str] = []
        for rec in json.loads(data).get("Providers", []):
            urls.extend(str(a) for a in rec.get("Addrs", []))
        return urls

    async def challenge(self, cid: Cid, index: int, segment_size: int) -> tuple[int, MerkleProof]:
        body = json.dumps({"cid": str(cid), "index": index, "segment_size": segment_size})
        _, data = await self._request(
            "POST",
            "/challenge",
            body=body.encode(),
            headers={"Content-Type": "application/json"},
            what="storage challenge",
        )
        doc = json.loads(data)
        return int(doc["length"]), MerkleProof.from_json(doc["proof"])
