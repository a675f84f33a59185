"""A real IPFS deployment as the object store: kubo's RPC API (also IPFS Cluster's proxy).

Put imports the ciphertext locally with the same UnixFS importer as the network (so the CID
is known before anything is sent), writes a CAR to a temporary file (bounded memory), and
sends it with ``POST /api/v0/dag/import?pin-roots=true``; the root kubo reports must equal
ours and must have been pinned, then ``/api/v0/pin/add`` makes the pin explicit. Get streams
``/api/v0/dag/export`` into a temporary CAR, verifying every block as it is read, checks that
the whole DAG arrived (kubo reports errors met after it started streaming only in an HTTP
trailer, which clients cannot see), and only then exports the file from it. IPFS Cluster
exposes the same endpoints on its kubo proxy (port 9095 by default), which replicates pins
across the cluster.

By default reads (and the explicit pin) run with kubo's ``offline`` option: a CID the node
does not hold is reported at once as not found, instead of kubo searching the public IPFS
network for it (which can take minutes and announces to the network that someone wants
that CID). Pass ``offline=False`` when the node should fetch from its peers.

Erase removes the pin (``/api/v0/pin/rm``); kubo deletes the blocks at its next garbage
collection (``ipfs repo gc``, or automatically with ``--enable-gc``), which medmesh does not
trigger: gc is node-wide and may be run by the node's operator on their own schedule.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, BinaryIO, cast

import aiohttp

from medmesh.errors import BlockMismatchError, IntegrityError, NodeUnavailableError, NotFoundError
from medmesh.storage.backends.base import (
    EraseReport,
    ObjectStore,
    Progress,
    SizeHook,
    StoredObject,
)
from medmesh.storage.block import Block
from medmesh.storage.car import read_car, write_car
from medmesh.storage.cid import DAG_PB, IDENTITY, Cid
from medmesh.storage.exporter import export_file
from medmesh.storage.importer import ImportParams, import_chunks
from medmesh.storage.unixfs import decode_pbnode

__all__ = ["KuboStore"]

_EXPORT_BATCH = 4 << 20  # bytes handed from the export thread to the event loop at a time
_NOT_PINNED = "not pinned or pinned indirectly"  # boxo pinner's ErrNotPinned


class KuboStore(ObjectStore):
    """Objects stored and pinned on a kubo node (or an IPFS Cluster proxy) at ``api_url``.

    Parameters
    ----------
    api_url
        The RPC API's base URL, e.g. ``http://127.0.0.1:5001``.
    params
        How objects become DAGs (default ``ipfs add --cid-version=1 --raw-leaves``).
    offline
        Ask kubo not to look on the IPFS network for blocks it does not hold (see the
        module docstring).
    """

    def __init__(
        self, api_url: str, *, params: ImportParams | None = None, offline: bool = True
    ) -> None:
        self.api = api_url.rstrip("/")
        self.params = params or ImportParams()
        self.offline = offline
        self.timeout = aiohttp.ClientTimeout(total=3600, sock_connect=5)

    def _flags(self) -> str:
        return "&offline=true" if self.offline else ""

    async def _post(
        self, session: aiohttp.ClientSession, path: str, what: str, **kwargs: Any
    ) -> bytes:
        try:
            async with session.post(self.api + path, **kwargs) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise _refusal(resp.status, body, what)
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
                if roots[str(root)]:
                    raise NodeUnavailableError(
                        f"kubo imported {root} but could not pin it: {_clip(roots[str(root)])}"
                    )
                await self._post(session, f"/api/v0/pin/add?arg={root}{self._flags()}", "pin/add")
            if progress is not None:
                progress(size)
            return StoredObject(root, size, details={"backend": "kubo", "api": self.api})
        finally:
            tmp.close()
            os.unlink(tmp.name)

    async def get(self, cid: Cid, *, on_size: SizeHook | None = None) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        tmp = tempfile.NamedTemporaryFile(prefix="medmesh-", suffix=".car", delete=False)  # noqa: SIM115
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as session:
                url = f"{self.api}/api/v0/dag/export?arg={cid}{self._flags()}"
                try:
                    async with session.post(url) as resp:
                        if resp.status >= 400:
                            raise _refusal(resp.status, await resp.read(), f"dag/export of {cid}")
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            tmp.write(chunk)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise NodeUnavailableError(f"kubo RPC at {self.api} unreachable") from exc
            tmp.flush()
            tmp.seek(0)
            spool = _Spool()
            try:
                # everything is read, verified and checked complete before the first byte
                try:
                    await loop.run_in_executor(None, _load_car, cast(BinaryIO, tmp), spool, cid)
                except _IncompleteExport as exc:
                    cause = await self._explain(exc)
                    if cause is exc:
                        raise
                    raise cause from exc
                pieces = export_file(cid, spool.get)
                while batch := await loop.run_in_executor(None, _take, pieces, _EXPORT_BATCH):
                    for piece in batch:
                        yield piece
            finally:
                spool.close()
        finally:
            tmp.close()
            os.unlink(tmp.name)

    async def erase(self, cid: Cid) -> EraseReport:
        """Unpin ``cid`` (``pin/rm``, recursive) so that kubo's next ``repo gc`` deletes it.

        The blocks stay on the node until that garbage collection, which this does not run
        (see the module docstring); blocks that other pins reach are kept by it. The report
        counts the pin removed: ``deleted == 1`` and ``holders == {api_url: 1}``, or
        ``deleted == 0`` when ``cid`` was not pinned (or only pinned indirectly, through
        another root). An unreachable or failing node is listed in ``unreachable``.
        """
        report = EraseReport(cid)
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as session:
                body = await self._post(session, f"/api/v0/pin/rm?arg={cid}", "pin/rm")
        except NodeUnavailableError as exc:
            if _NOT_PINNED in exc.message:
                return report
            report.unreachable.append(self.api)
            return report
        try:
            pins = json.loads(body).get("Pins", [])
        except (ValueError, AttributeError) as exc:
            raise NodeUnavailableError("kubo answered pin/rm with malformed JSON") from exc
        removed = len(pins) if isinstance(pins, list) else 0
        report.deleted = removed
        report.holders[self.api] = removed
        return report

    async def _explain(self, exc: _IncompleteExport) -> Exception:
        """Why kubo's export stopped early: it lacks the block, or its copy is corrupted.

        kubo sends stored blocks without re-hashing them, but it cannot walk past a block
        it fails to decode, so a corrupted interior node shows up as a missing block; its raw
        bytes tell the two apart.
        """
        what = f"block/get of {exc.missing}"
        try:  # offline whatever self.offline says: only the node's own copy is in question
            async with aiohttp.ClientSession(timeout=self.timeout) as session:
                data = await self._post(
                    session, f"/api/v0/block/get?arg={exc.missing}&offline=true", what
                )
        except (NotFoundError, NodeUnavailableError):
            return exc
        if not exc.missing.matches(data):
            return BlockMismatchError(
                f"kubo holds a corrupted copy of block {exc.missing} (of {exc.root})"
            )
        return NodeUnavailableError(
            f"kubo's export of {exc.root} stopped before block {exc.missing}, which it holds"
        )


class _IncompleteExport(NotFoundError):
    """A block under the requested root was not in kubo's export."""

    def __init__(self, root: Cid, missing: Cid) -> None:
        super().__init__(
            f"kubo's export of {root} is incomplete: block {missing} is missing"
            " (kubo lacks it or could not read it)"
        )
        self.root = root
        self.missing = missing


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refusal(status: int, body: bytes, what: str) -> Exception:
    """The error for a kubo RPC answered with HTTP ``status``.

    kubo answers a failed command with HTTP 500 and ``{"Message": ..., "Type": "error"}``;
    requests it cannot parse get 400 and a plain-text message. Its messages name CIDs and
    kubo internals only, so they are safe to pass on.
    """
    text = body.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    message = (
        doc["Message"] if isinstance(doc, dict) and isinstance(doc.get("Message"), str) else text
    )
    message = _clip(message) or "no message"
    lowered = message.lower()
    if status == 500 and ("not found" in lowered or "could not find" in lowered):
        return NotFoundError(f"kubo: {what}: {message}")
    return NodeUnavailableError(f"kubo refused {what} (HTTP {status}): {message}")


def _take(pieces: Iterator[bytes], limit: int) -> list[bytes]:
    """The next pieces of ``pieces``, about ``limit`` bytes (empty at the end)."""
    batch: list[bytes] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece)
        if size >= limit:
            break
    return batch


def _write_car(pieces: Iterable[bytes], params: ImportParams, out: BinaryIO) -> tuple[Cid, int]:
    """Import ``pieces`` into a CAR with the root in its header; return (root, size).

    The root is known only after the last block, so blocks go to a spool file first.
    """
    spool = _Spool()
    root: Cid | None = None
    size = 0

    def counted() -> Iterator[bytes]:
        nonlocal size
        for piece in pieces:
            size += len(piece)
            yield piece

    try:
        for block in import_chunks(counted(), params):
            spool.add(block)
            root = block.cid
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

    def has(self, cid: Cid) -> bool:
        return cid in self.index

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


def _load_car(fh: BinaryIO, spool: _Spool, root: Cid) -> None:
    """Read a CAR (every block verified against its CID) into ``spool``.

    Then check that every block under ``root`` arrived: kubo stops an export early when it
    meets a block it lacks, and says so only in a trailer.
    """
    _, blocks = read_car(fh)
    for block in blocks:
        spool.add(block)
    seen: set[Cid] = set()
    stack = [root]
    while stack:
        cid = stack.pop()
        if cid in seen or cid.hash_code == IDENTITY:
            continue
        seen.add(cid)
        if not spool.has(cid):
            raise _IncompleteExport(root, cid)
        if cid.codec == DAG_PB:  # DFS pre-order, kubo's order: the first gap is where it stopped
            stack.extend(reversed([link.hash for link in decode_pbnode(spool.get(cid)).links]))


def _import_roots(body: bytes) -> dict[str, str]:
    """The roots ``dag/import`` reported, each with its ``PinErrorMsg`` ("" if pinned)."""
    roots: dict[str, str] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        root = doc.get("Root") if isinstance(doc, dict) else None
        if isinstance(root, dict):
            cid = root.get("Cid", {})
            if isinstance(cid, dict) and isinstance(cid.get("/"), str):
                error = root.get("PinErrorMsg")
                roots[cid["/"]] = error if isinstance(error, str) else ""
    return roots
