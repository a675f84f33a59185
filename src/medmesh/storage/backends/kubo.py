"""A real IPFS deployment as the object store: kubo's RPC API (also IPFS Cluster's proxy).

Put imports the ciphertext locally with the same UnixFS importer as the network (so the CID
is known before anything is sent), writes a CAR to a temporary file (bounded memory), and
sends it with ``POST /api/v0/dag/import?pin-roots=true``; the root kubo reports must equal
ours, then ``/api/v0/pin/add`` makes the pin explicit. Get streams
``/api/v0/dag/export`` into a temporary CAR, verifying every block as it is read, and
exports the file from it. IPFS Cluster exposes the same endpoints on its kubo proxy
(port 9095 by default), which replicates pins across the cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, BinaryIO, cast

import aiohttp

from medmesh.errors import IntegrityError, NodeUnavailableError, NotFoundError
from medmesh.storage.backends.base import ObjectStore, Progress, StoredObject
from medmesh.storage.block import Block
from medmesh.storage.car import read_car, write_car
from medmesh.storage.cid import RAW, Cid
from medmesh.storage.exporter import export_file
from medmesh.storage.importer import ImportParams, import_chunks

__all__ = ["KuboStore"]


class KuboStore(ObjectStore):
    """Objects stored and pinned on a kubo node (or an IPFS Cluster proxy) at ``api_url``."""

    def __init__(self, api_url: str, *, params: ImportParams | None = None) -> None:
        self.api = api_url.rstrip("/")
        self.params = params or ImportParams()
        self.timeout = aiohttp.ClientTimeout(total=3600, sock_connect=5)

    async def _post(
        self, session: aiohttp.ClientSession, path: str, what: str, **kwargs: Any
    ) -> bytes:
        try:
            async with session.post(self.api + path, **kwargs) as resp:
                body = await resp.read()
                if resp.status == 500 and b"not found" in body.lower():
                    raise NotFoundError(f"kubo: {what}: not found")
                if resp.status >= 400:
                    raise NodeUnavailableError(f"kubo refused {what} (HTTP {resp.status})")
                return body
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise NodeUnavailableError(f"kubo RPC at {self.api} unreachable ({what})") from exc

    async def version(self) -> str:
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            body = await self._post(session, "/api/v0/version", "version")
        return str(json.loads(body).get("Version", "?"))

    async def put(
        self, pieces: Iterable[bytes], *, progress: Progress | None = None
    ) -> StoredObject:
        loop = asyncio.get_running_loop()
        tmp = tempfile.NamedTemporaryFile(prefix="medmesh-", suffix=".car", delete=False)  # noqa: SIM115
        try:
            root, size = await loop.run_in_executor(
                None, _write_car, pieces, self.params, cast(BinaryIO, tmp)
            )
            tmp.close()
            async with aiohttp.ClientSession(timeout=self.timeout) as session:
                with open(tmp.name, "rb") as fh:
                    form = aiohttp.FormData()
                    form.add_field(
                        "file", fh, filename="object.car", content_type="application/vnd.ipld.car"
                    )
                    body = await self._post(
                        session, "/api/v0/dag/import?pin-roots=true", "dag/import", data=form
                    )
                roots = _import_roots(body)
                if str(root) not in roots:
                    raise IntegrityError("kubo imported a different root than the one sent")
                await self._post(session, f"/api/v0/pin/add?arg={root}", "pin/add")
            if progress is not None:
                progress(size)
            return StoredObject(root, size, details={"backend": "kubo", "api": self.api})
        finally:
            tmp.close()
            os.unlink(tmp.name)

    async def get(self, cid: Cid) -> AsyncIterator[bytes]:
        tmp = tempfile.NamedTemporaryFile(prefix="medmesh-", suffix=".car", delete=False)  # noqa: SIM115
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as session:
                try:
                    async with session.post(f"{self.api}/api/v0/dag/export?arg={cid}") as resp:
                        if resp.status >= 400:
                            raise NotFoundError(f"kubo could not export {cid}")
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            tmp.write(chunk)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise NodeUnavailableError(f"kubo RPC at {self.api} unreachable") from exc
            tmp.flush()
            tmp.seek(0)
            spool = _Spool()
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, _load_car, cast(BinaryIO, tmp), spool
                )
                for piece in export_file(cid, spool.get):
                    yield piece
            finally:
                spool.close()
        finally:
            tmp.close()
            os.unlink(tmp.name)


def _write_car(pieces: Iterable[bytes], params: ImportParams, out: BinaryIO) -> tuple[Cid, int]:
    """Import ``pieces`` into a CAR with the root in its header; return (root, size).

    The root is known only after the last block, so blocks go to a spool file first.
    """
    spool = _Spool()
    root: Cid | None = None
    size = 0
    try:
        for block in import_chunks(pieces, params):
            spool.add(block)
            root = block.cid
            if block.cid.codec == RAW:
                size += len(block.data)
        assert root is not None
        write_car([root], spool.blocks(), out)
    finally:
        spool.close()
    return root, size


class _Spool:
    """Blocks kept in an anonymous temporary file, read back in order or by CID."""

    def __init__(self) -> None:
        self.fh = tempfile.TemporaryFile()  # noqa: SIM115
        self.index: dict[Cid, tuple[int, int]] = {}
        self.order: list[Cid] = []

    def add(self, block: Block) -> None:
        if block.cid in self.index:
            return
        self.fh.seek(0, os.SEEK_END)
        self.index[block.cid] = (self.fh.tell(), len(block.data))
        self.order.append(block.cid)
        self.fh.write(block.data)

    def get(self, cid: Cid) -> bytes:
        try:
            off, length = self.index[cid]
        except KeyError:
            raise NotFoundError(f"block {cid} missing from kubo's export") from None
        self.fh.seek(off)
        return self.fh.read(length)

    def blocks(self) -> Iterator[Block]:
        for cid in self.order:
            yield Block(cid, self.get(cid))

    def close(self) -> None:
        self.fh.close()


def _load_car(fh: BinaryIO, spool: _Spool) -> None:
    """Read a CAR (every block verified against its CID) into ``spool``."""
    _, blocks = read_car(fh)
    for block in blocks:
        spool.add(block)


def _import_roots(body: bytes) -> set[str]:
    roots: set[str] = set()
    for line in body.decode("utf-8", "replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        root = doc.get("Root") if isinstance(doc, dict) else None
        if isinstance(root, dict):
            cid = root.get("Cid", {})
            if isinstance(cid, dict) and isinstance(cid.get("/"), str):
                roots.add(cid["/"])
    return roots
