"""An in-process object store for unit tests: blocks in a dict, same CIDs as the network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from medmesh.errors import MedmeshError, NotFoundError
from medmesh.storage.backends.base import (
    EraseReport,
    ObjectStore,
    Progress,
    SizeHook,
    StoredObject,
)
from medmesh.storage.cid import DAG_PB, Cid
from medmesh.storage.exporter import export_file
from medmesh.storage.importer import ImportParams, import_chunks
from medmesh.storage.unixfs import decode_pbnode

__all__ = ["MemoryStore"]


class MemoryStore(ObjectStore):
    """Keeps every block in memory; verifies on read like the real stores."""

    def __init__(self, params: ImportParams | None = None) -> None:
        self.params = params or ImportParams()
        self.blocks: dict[Cid, bytes] = {}
        self.roots: dict[Cid, int] = {}

    async def put(
        self, pieces: Iterable[bytes], *, progress: Progress | None = None
    ) -> StoredObject:
        def run() -> StoredObject:
            root: Cid | None = None
            for block in import_chunks(pieces, self.params):
                self.blocks[block.cid] = block.data
                root = block.cid
            assert root is not None
            size = sum(len(b) for b in export_file(root, self._get))
            self.roots[root] = size
            if progress is not None:
                progress(size)
            return StoredObject(root, size)

        return await asyncio.get_running_loop().run_in_executor(None, run)

    def _get(self, cid: Cid) -> bytes:
        try:
            return self.blocks[cid]
        except KeyError:
            raise NotFoundError(f"block {cid} not found") from None

    async def get(self, cid: Cid, *, on_size: SizeHook | None = None) -> AsyncIterator[bytes]:
        if cid not in self.roots and cid not in self.blocks:
            raise NotFoundError(f"object {cid} not found")
        if on_size is not None and cid in self.roots:
            on_size(self.roots[cid])
        for piece in export_file(cid, self._get):
            yield piece

    async def size(self, cid: Cid) -> int | None:
        return self.roots.get(cid)

    async def erase(self, cid: Cid) -> EraseReport:
        """Drop the blocks of the DAG under ``cid`` that no other stored root reaches."""
        report = EraseReport(cid)
        if cid not in self.roots and cid not in self.blocks:
            return report
        doomed = self._reachable(cid)
        for root in self.roots:
            if root != cid:
                doomed -= self._reachable(root)
        for c in doomed:
            if self.blocks.pop(c, None) is not None:
                report.deleted += 1
        self.roots.pop(cid, None)
        report.holders["memory:"] = report.deleted
        return report

    def _reachable(self, root: Cid) -> set[Cid]:
        """The CIDs under ``root`` (itself included); a missing block ends its branch."""
        seen: set[Cid] = set()
        stack = [root]
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            data = self.blocks.get(c)
            if data is not None and c.codec == DAG_PB:
                try:
                    stack.extend(link.hash for link in decode_pbnode(data).links)
                except MedmeshError:
                    continue
        return seen
