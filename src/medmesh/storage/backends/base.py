"""The interface every object store implements.

An object store keeps *ciphertext* objects (sealed records) addressed by the CID of their
UnixFS DAG, the CID any IPFS implementation gives the same bytes. Stores never see
plaintext or keys: sealing happens in :class:`medmesh.storage.client.Client`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from medmesh.errors import MedmeshError, StorageError
from medmesh.storage.cid import Cid

__all__ = ["EraseReport", "ObjectStore", "Progress", "SizeHook", "StoredObject", "VerifyReport"]

#: Called with the number of ciphertext bytes done so far.
Progress = Callable[[int], None]
#: Called once with an object's total size.
SizeHook = Callable[[int], None]


@dataclass(frozen=True)
class StoredObject:
    """A stored object: its CID, ciphertext size and store-specific details."""

    cid: Cid
    size: int
    manifest: Cid | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class VerifyReport:
    """The result of challenging every holder of an object's shares."""

    cid: Cid
    checked: int = 0
    passed: int = 0
    failed: list[str] = field(default_factory=list)  # human-readable findings
    holders: dict[str, dict[str, int]] = field(default_factory=dict)  # url -> counts

    @property
    def ok(self) -> bool:
        return not self.failed and self.checked == self.passed


@dataclass
class EraseReport:
    """The result of erasing an object from a store.

    ``holders`` maps each place that knew the object (a node URL, a kubo API URL) to the
    blocks it deleted there; ``unreachable`` lists places that may hold it but could not
    be asked, so the erasure is :attr:`complete` only when that list is empty. Erasing
    again later (idempotent) reaches them.
    """

    cid: Cid
    deleted: int = 0  # blocks deleted in total
    holders: dict[str, int] = field(default_factory=dict)  # url -> blocks deleted there
    unreachable: list[str] = field(default_factory=list)  # urls that could not be asked

    @property
    def complete(self) -> bool:
        return not self.unreachable

    def to_json(self) -> dict[str, Any]:
        return {
            "cid": str(self.cid),
            "deleted": self.deleted,
            "holders": dict(self.holders),
            "unreachable": list(self.unreachable),
            "complete": self.complete,
        }


class ObjectStore(ABC):
    """Stores and retrieves ciphertext objects by CID."""

    @abstractmethod
    async def put(
        self, pieces: Iterable[bytes], *, progress: Progress | None = None
    ) -> StoredObject:
        """Store the bytes produced by ``pieces`` (consumed in a worker thread).

        Parameters
        ----------
        pieces
            The object's bytes in order, in pieces of any size.
        progress
            Called with the bytes stored so far.

        Returns
        -------
        StoredObject
            The object's CID (as ``ipfs add --cid-version=1 --raw-leaves`` computes it).
        """

    def preparer(self) -> Callable[[bytes], Any] | None:
        """A function that does the CPU-only part of storing an object ahead of time, or
        None. A caller with many objects runs it in worker processes (it is picklable) and
        gives :meth:`put_many` what it returns instead of the bytes: the network store
        erasure-codes there, so that its uploads, one batch at a time, only send."""
        return None

    async def put_many(self, objects: Iterable[Any]) -> list[StoredObject | MedmeshError]:
        """Store many objects held in memory (small sealed records, typically).

        Each object is stored as :meth:`put` stores it, with its own CID. Stores that can
        batch the work (fewer requests, fewer commits) override this; the default calls
        :meth:`put` once per object.

        Parameters
        ----------
        objects
            The objects' bytes, or what this store's :meth:`preparer` made of them;
            consumed lazily, in a worker thread where the store can.

        Returns
        -------
        list
            One entry per object, in order: its :class:`StoredObject`, or the
            :class:`~medmesh.errors.MedmeshError` that kept it from being stored (the
            others are stored all the same).
        """
        out: list[StoredObject | MedmeshError] = []
        for data in objects:
            try:
                out.append(await self.put([data]))
            except MedmeshError as exc:
                out.append(exc)
        return out

    @abstractmethod
    def get(self, cid: Cid, *, on_size: SizeHook | None = None) -> AsyncIterator[bytes]:
        """Yield the object's bytes in order; every block is verified before it is yielded.

        ``on_size`` is called with the object's size as soon as the store knows it (before
        the first byte where possible), for progress bars.

        Raises :class:`medmesh.errors.NotFoundError` if no holder knows ``cid`` and
        :class:`medmesh.errors.InsufficientSharesError` if it cannot be rebuilt.
        """

    async def size(self, cid: Cid) -> int | None:
        """The object's size if cheaply known (for progress bars), else None."""
        return None

    async def repair(self, cid: Cid) -> dict[str, Any]:
        """Restore full redundancy of ``cid``; returns a summary."""
        return {"cid": str(cid), "repaired": 0, "note": "this store keeps no redundancy to repair"}

    async def verify(self, cid: Cid) -> VerifyReport:
        """Check that the holders of ``cid`` still have it."""
        report = VerifyReport(cid)
        async for _ in self.get(cid):
            pass
        report.checked = report.passed = 1
        return report

    async def erase(self, cid: Cid) -> EraseReport:
        """Delete every stored block of ``cid`` (for erasure requests, crypto-shredding).

        Erasing an object the store does not know is not an error: the report says
        ``deleted == 0``. Blocks that other stored objects still use are kept.

        Parameters
        ----------
        cid
            The object's CID.

        Returns
        -------
        EraseReport
            What was deleted where, and which holders could not be reached.

        Raises
        ------
        StorageError
            If the store cannot erase objects at all.
        """
        raise StorageError(f"this store ({type(self).__name__}) cannot erase objects")

    async def close(self) -> None:  # noqa: B027 - optional hook, most stores hold nothing
        """Release connections."""
