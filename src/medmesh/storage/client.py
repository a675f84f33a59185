"""The medmesh storage client: seal on the client, store ciphertext, fetch, open.

:class:`Client` joins the wallet (who may open what) and an object store (where the
ciphertext lives). Plaintext never leaves this object: ``put`` seals before anything is
sent, ``get`` verifies every block and the record's authentication tags and only then
moves the output file into place; on any error no output file is left behind.

>>> client = Client(store, wallet)                      # doctest: +SKIP
>>> result = client.put("scan.dcm")                      # doctest: +SKIP
>>> client.get(result.cid, "copy.dcm")                   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from medmesh.crypto.envelope import RecordOpener, RecordSealer, SealJob, seal_job, seal_one
from medmesh.crypto.keys import EncryptionPublicKey
from medmesh.errors import InvalidInputError, MedmeshError, StorageError
from medmesh.identity.wallet import Wallet
from medmesh.storage.backends.base import (
    EraseReport,
    ObjectStore,
    Progress,
    SizeHook,
    VerifyReport,
)
from medmesh.storage.cid import Cid
from medmesh.workers import map_batch

__all__ = ["BatchPutError", "Client", "GetResult", "PutResult"]

READ_SIZE = 4 * 1024 * 1024
Source = str | os.PathLike[str] | bytes | IO[bytes]
T = TypeVar("T")


@dataclass(frozen=True)
class PutResult:
    """A stored record: its CID (IPFS-compatible, of the sealed bytes) and sizes."""

    cid: Cid
    size: int
    sealed_size: int
    manifest: Cid | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cid": str(self.cid),
            "size": self.size,
            "sealed_size": self.sealed_size,
        }
        if self.manifest is not None:
            out["manifest"] = str(self.manifest)
        out.update(self.details)
        return out


class BatchPutError(StorageError):
    """Some records of a batch could not be stored; the others were.

    ``results`` lists, in the caller's order, the :class:`PutResult` of each stored record
    (None for each failed one); ``errors`` maps the index of each failed record to its
    error.
    """

    code = "batch_incomplete"

    def __init__(self, results: list[PutResult | None], errors: dict[int, MedmeshError]) -> None:
        first = errors[min(errors)]
        super().__init__(
            f"{len(errors)} of {len(results)} records could not be stored "
            f"(record {min(errors)}: {first.message})"
        )
        self.results = results
        self.errors = errors


@dataclass(frozen=True)
class GetResult:
    """A retrieved record."""

    cid: Cid
    size: int
    path: str | None = None
    bad_nodes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "cid": str(self.cid),
            "size": self.size,
            "path": self.path,
            "bad_nodes": self.bad_nodes,
        }


def seal_and_prepare(job: SealJob, prepare: Callable[[bytes], Any]) -> Any:
    """Seal one small record (:func:`~medmesh.crypto.envelope.seal_one`) and prepare it
    for its store in the same worker call (module level: workers run it)."""
    return prepare(seal_one(job))


def _chunks(
    source: Source, counter: Callable[[int], None] | None
) -> tuple[Iterator[bytes], Callable[[], None]]:
    if isinstance(source, bytes | bytearray):
        fh: IO[bytes] = io.BytesIO(source)
    elif isinstance(source, str | os.PathLike):
        fh = open(source, "rb")  # noqa: SIM115 - closed by the returned closer
    else:
        fh = source

    def gen() -> Iterator[bytes]:
        while chunk := fh.read(READ_SIZE):
            if counter is not None:
                counter(len(chunk))
            yield chunk

    return gen(), fh.close


class Client:
    """Seal, store, fetch and open records.

    Parameters
    ----------
    store
        Where ciphertext goes (:func:`medmesh.storage.backends.open_store`).
    wallet
        The caller's wallet: its encryption key is always a recipient of what it puts, and
        its keys open what it gets; its signing key authorises writes to nodes.
    """

    def __init__(self, store: ObjectStore, wallet: Wallet) -> None:
        self.store = store
        self.wallet = wallet

    # -- async API -----------------------------------------------------------------------
    async def aput(
        self,
        source: Source,
        *,
        recipients: Sequence[EncryptionPublicKey] = (),
        progress: Progress | None = None,
    ) -> PutResult:
        """Seal ``source`` for the wallet (and ``recipients``) and store it.

        ``progress`` is called with the sealed bytes the store has acknowledged so far.
        """
        keys = [self.wallet.encryption_public_key, *recipients]
        sealer = RecordSealer(keys)
        done = [0]

        def count(n: int) -> None:
            done[0] += n  # only the reader thread counts

        plain, close = _chunks(source, count)
        sealed = [0]

        def pieces() -> Iterator[bytes]:
            for chunk in plain:
                out = sealer.update(chunk)
                sealed[0] += len(out)
                if out:
                    yield out
            out = sealer.finalize()
            sealed[0] += len(out)
            yield out

        try:
            stored = await self.store.put(pieces(), progress=progress)
        finally:
            close()
        return PutResult(stored.cid, done[0], stored.size, stored.manifest, dict(stored.details))

    def seal_many(self, items: Sequence[tuple[bytes, Sequence[EncryptionPublicKey]]]) -> list[Any]:
        """Seal records as :meth:`aput_many` does, and do the store's CPU work on them
        (:meth:`ObjectStore.preparer`: the network store erasure-codes), without storing
        them: a writer can prepare its next batch while the one before uploads. In worker
        processes for a large batch (:mod:`medmesh.workers`). For ``aput_many(sealed=…)``."""
        return list(self._sealing(items))

    def _sealing(
        self, items: Sequence[tuple[bytes, Sequence[EncryptionPublicKey]]]
    ) -> Iterator[Any]:
        """Each record sealed for this wallet and its recipients and prepared for the store,
        in order, as they come."""
        me = self.wallet.encryption_public_key
        jobs = [seal_job(d, [me, *r]) for d, r in items]
        prepare = self.store.preparer()
        if prepare is None:
            return map_batch(seal_one, jobs)
        return map_batch(functools.partial(seal_and_prepare, prepare=prepare), jobs)

    async def aput_many(
        self,
        items: Sequence[tuple[bytes, Sequence[EncryptionPublicKey]]],
        *,
        sealed: Sequence[Any] | None = None,
    ) -> list[PutResult]:
        """Seal and store many small records: ``(plaintext, recipients)`` pairs.

        Each record is sealed as :meth:`aput` seals it (a fresh data key, capsules for the
        wallet and its ``recipients``) and stored as its own object: its own CID and
        manifest, erasure-coded and placed as :meth:`aput` places it, so it is fetched,
        verified, repaired and erased on its own. What changes is the traffic: with the
        network store, each node gets one signed upload and one signed registration per
        chunk of up to ``StoreParams.batch_objects`` records (or
        ``StoreParams.batch_object_bytes`` bytes) instead of two of each per record;
        sealing, and the store's encoding with it (:meth:`ObjectStore.preparer`), runs in
        worker processes for a large batch (:mod:`medmesh.workers`), ahead of the uploads.

        ``sealed``: the records as :meth:`seal_many` sealed and prepared them, stored as
        they are.

        Returns one :class:`PutResult` per record, in order. If some records could not be
        stored, raises :class:`BatchPutError` after the others were: its ``results`` hold
        the stored ones (None for the failed) and ``errors`` why each failed one failed,
        so the caller can keep the stored records and retry the rest.

        >>> results = await client.aput_many([(b"{...}", [key]), (b"{...}", [])])  # doctest: +SKIP
        """
        for data, _ in items:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InvalidInputError("aput_many takes records as bytes")

        if sealed is not None:
            if len(sealed) != len(items):
                raise InvalidInputError("aput_many needs one sealed record per item")
            outcomes = await self.store.put_many(sealed)
        else:
            # consumed lazily by the store's worker thread, which uploads as they come
            outcomes = await self.store.put_many(self._sealing(items))
        results: list[PutResult | None] = []
        errors: dict[int, MedmeshError] = {}
        for i, ((data, _), got) in enumerate(zip(items, outcomes, strict=True)):
            if isinstance(got, MedmeshError):
                errors[i] = got
                results.append(None)
            else:
                results.append(
                    PutResult(got.cid, len(data), got.size, got.manifest, dict(got.details))
                )
        if errors:
            raise BatchPutError(results, errors)
        return [r for r in results if r is not None]

    async def aget(
        self,
        cid: Cid | str,
        out: str | os.PathLike[str] | IO[bytes],
        *,
        progress: Progress | None = None,
        on_size: SizeHook | None = None,
    ) -> GetResult:
        """Fetch ``cid``, verify and open it into ``out`` (a path or a binary file).

        With a path, the plaintext goes to ``<out>.part`` and is renamed to ``out`` only
        after the whole record verified; on error the partial file is removed.
        """
        cid = Cid.parse(cid) if isinstance(cid, str) else cid
        opener = RecordOpener(self.wallet.encryption_keys)
        if isinstance(out, str | os.PathLike):
            part = Path(out).with_name(Path(out).name + ".part")
            path: Path | None = Path(out)
            tmp: Path | None = part
            sink: IO[bytes] = open(part, "wb")  # noqa: SIM115 - closed in finally
        else:
            path = tmp = None
            sink = out
        loop = asyncio.get_running_loop()
        writer = ThreadPoolExecutor(1, thread_name_prefix="medmesh-open")
        written = 0
        ok = False
        batch: list[bytes] = []
        batch_len = 0
        pending: asyncio.Future[int] | None = None

        def consume(pieces: list[bytes]) -> int:
            n = 0
            for p in pieces:
                plain = opener.update(p)
                sink.write(plain)
                n += len(plain)
            return n

        try:
            async for piece in self.store.get(cid, on_size=on_size):
                batch.append(piece)
                batch_len += len(piece)
                if batch_len >= READ_SIZE:
                    if pending is not None:
                        written += await pending
                        if progress is not None:
                            progress(written)
                    pending = loop.run_in_executor(writer, consume, batch)
                    batch, batch_len = [], 0
            if pending is not None:
                written += await pending
            written += await loop.run_in_executor(writer, consume, batch)
            final = opener.finalize()
            sink.write(final)
            written += len(final)
            if progress is not None:
                progress(written)
            if tmp is not None and path is not None:
                # No fsync: like other download tools we leave flushing to the OS (the record
                # stays in the network); the rename makes the file appear only when complete.
                sink.close()
                os.replace(tmp, path)
            ok = True
        finally:
            if pending is not None and not pending.done():
                with contextlib.suppress(BaseException):
                    await pending
            writer.shutdown(wait=True)
            if tmp is not None:
                sink.close()
                if not ok:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
        bad = dict(getattr(self.store, "last_bad_nodes", {}) or {})
        return GetResult(cid, written, str(path) if path is not None else None, bad)

    async def aput_block(self, data: bytes) -> Cid:
        """Store a small public block as is, unsealed (e.g. key capsules, already encrypted
        to their recipient). Its CID is the raw-codec CIDv1 of ``data``."""
        if len(data) > 256 * 1024:
            raise InvalidInputError("a block is at most 256 KiB")
        stored = await self.store.put([data])
        if stored.cid.codec != 0x55:
            raise InvalidInputError("the store did not keep the block as one raw block")
        return stored.cid

    async def aerase(self, cid: Cid | str) -> EraseReport:
        """Delete the stored ciphertext of ``cid`` wherever the store keeps it.

        For erasure requests: the caller destroys or revokes the record's keys
        (crypto-shredding) and calls this so that the ciphertext goes too. Check
        :attr:`EraseReport.complete`; if holders were unreachable, erase again later.
        """
        c = Cid.parse(cid) if isinstance(cid, str) else cid
        return await self.store.erase(c)

    async def aclose(self) -> None:
        await self.store.close()

    # -- sync facade ---------------------------------------------------------------------
    def put(self, source: Source, **kwargs: Any) -> PutResult:
        return asyncio.run(self._closing(self.aput(source, **kwargs)))

    def get(
        self, cid: Cid | str, out: str | os.PathLike[str] | IO[bytes], **kwargs: Any
    ) -> GetResult:
        return asyncio.run(self._closing(self.aget(cid, out, **kwargs)))

    def put_many(
        self, items: Sequence[tuple[bytes, Sequence[EncryptionPublicKey]]]
    ) -> list[PutResult]:
        return asyncio.run(self._closing(self.aput_many(items)))

    def put_block(self, data: bytes) -> Cid:
        return asyncio.run(self._closing(self.aput_block(data)))

    def get_bytes(self, cid: Cid | str) -> bytes:
        buf = io.BytesIO()
        self.get(cid, buf)
        return buf.getvalue()

    def repair(self, cid: Cid | str) -> dict[str, Any]:
        c = Cid.parse(cid) if isinstance(cid, str) else cid
        return asyncio.run(self._closing(self.store.repair(c)))

    def verify(self, cid: Cid | str) -> VerifyReport:
        c = Cid.parse(cid) if isinstance(cid, str) else cid
        return asyncio.run(self._closing(self.store.verify(c)))

    def erase(self, cid: Cid | str) -> EraseReport:
        return asyncio.run(self._closing(self.aerase(cid)))

    async def _closing(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await coro
        finally:
            await self.store.close()
