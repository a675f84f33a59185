"""The medmesh storage network: objects erasure-coded over storage nodes.

Configured with the URLs of known nodes (from the home folder, the devnet, or later the
on-chain registry); more holders are found through the DHT at read time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from medmesh.errors import AuthError, MedmeshError, NotFoundError
from medmesh.storage.auth import RequestSigner
from medmesh.storage.backends.base import (
    EraseReport,
    ObjectStore,
    Progress,
    SizeHook,
    StoredObject,
    VerifyReport,
)
from medmesh.storage.batch import EncodedObject, prepare_object, upload_many
from medmesh.storage.cid import RAW, Cid
from medmesh.storage.downloader import stream_leaves
from medmesh.storage.fetcher import StripeFetcher
from medmesh.storage.locate import DHT_TIMEOUT, Location, locate
from medmesh.storage.merkle import segment_count, verify_proof
from medmesh.storage.placement import content_key, rank_nodes, stripe_key
from medmesh.storage.repair import repair_location
from medmesh.storage.transport import NodeClient, open_session
from medmesh.storage.uploader import PutReceipt, StoreParams, upload

__all__ = ["NetworkStore"]


class NetworkStore(ObjectStore):
    """Erasure-coded storage over medmesh nodes.

    >>> store = NetworkStore(["http://127.0.0.1:7601", ...], signer=wallet)  # doctest: +SKIP
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        signer: RequestSigner | None = None,
        params: StoreParams | None = None,
    ) -> None:
        self.urls = list(urls)
        self.signer = signer
        self.params = params or StoreParams()
        self._session: Any = None
        self._nodes: list[NodeClient] = []
        self.last_bad_nodes: dict[str, str] = {}

    def _clients(self) -> list[NodeClient]:
        if self._session is None or self._session.closed:
            self._session = open_session(limit_per_host=max(8, self.params.per_node_inflight * 2))
            self._nodes = [NodeClient(u, self._session, self.signer) for u in self.urls]
        return self._nodes

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def put(
        self, pieces: Iterable[bytes], *, progress: Progress | None = None
    ) -> StoredObject:
        receipt = await upload(self._clients(), pieces, self.params, progress=progress)
        return self._stored(receipt)

    def preparer(self) -> Callable[[bytes], bytes | EncodedObject]:
        """Erasure-code and lay out an object for :meth:`put_many` (see
        :func:`medmesh.storage.batch.prepare_object`)."""
        return functools.partial(prepare_object, params=self.params)

    async def put_many(
        self, objects: Iterable[bytes | EncodedObject]
    ) -> list[StoredObject | MedmeshError]:
        """Store many objects with one signed upload and one signed registration per node
        per chunk (:func:`medmesh.storage.batch.upload_many`), each object laid out and
        indexed exactly as :meth:`put` would; objects :meth:`preparer` encoded are sent as
        they are."""
        outcomes = await upload_many(self._clients(), objects, self.params)
        return [o if isinstance(o, MedmeshError) else self._stored(o) for o in outcomes]

    def _stored(self, receipt: PutReceipt) -> StoredObject:
        return StoredObject(
            receipt.cid,
            receipt.size,
            receipt.manifest,
            {
                "stripes": receipt.stripes,
                "holders": receipt.holders,
                "k": self.params.k,
                "n": self.params.n,
            },
        )

    async def locate(self, cid: Cid) -> Location:
        return await locate(self._clients(), cid)

    async def size(self, cid: Cid) -> int | None:
        return (await self.locate(cid)).manifest.size

    async def get(self, cid: Cid, *, on_size: SizeHook | None = None) -> AsyncIterator[bytes]:
        if cid.codec == RAW:  # a one-block object: its data share is the object itself
            data = await self._one_block(cid)
            if data is not None:
                self.last_bad_nodes = {}
                if on_size is not None:
                    on_size(len(data))
                yield data
                return
        loc = await self.locate(cid)
        if on_size is not None:
            on_size(loc.manifest.size)
        fetcher = StripeFetcher(loc)
        try:
            async for leaf in stream_leaves(loc, fetcher=fetcher):
                yield leaf
        finally:
            bad = dict(fetcher.bad_nodes)
            for node in loc.nodes.values():
                if node.stats.bad_blocks and node.url not in bad:
                    bad[node.url] = f"served {node.stats.bad_blocks} corrupted block(s)"
            self.last_bad_nodes = bad

    async def _one_block(self, cid: Cid) -> bytes | None:
        """A one-block object straight from a node holding its data share, or None: then
        the full locate path (manifest, holders, DHT) takes over.

        The node that ranks first for the object's content key is asked alone first: where
        the object was stored with the same node list (batches and one-leaf uploads place by
        content, :func:`~medmesh.storage.placement.content_key`), it holds the data share,
        and one request does. Otherwise every other live node is asked at once and the first
        block that verifies against ``cid`` wins.
        """
        nodes = [n for n in self._clients() if n.stats.alive]
        if not nodes:
            return None
        if any(n.node_id is None for n in nodes):
            await asyncio.gather(
                *(n.info() for n in nodes if n.node_id is None), return_exceptions=True
            )
        ids = {n.node_id: n for n in nodes if n.node_id is not None}
        rest = nodes
        if ids:
            first = ids[rank_nodes(stripe_key(content_key(cid.multihash), 0), list(ids))[0]]
            with contextlib.suppress(MedmeshError):  # not there, unreachable, bad block
                return await first.get_block(cid)
            rest = [n for n in nodes if n is not first and n.stats.alive]
        tasks = [asyncio.create_task(n.get_block(cid)) for n in rest]
        try:
            for done in asyncio.as_completed(tasks):
                try:
                    return await done
                except MedmeshError:  # not there, unreachable, or a bad block: next
                    continue
            return None
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def repair(self, cid: Cid) -> dict[str, Any]:
        loc = await self.locate(cid)
        report = await repair_location(loc)
        return {
            "cid": str(cid),
            "stripes": report.stripes,
            "damaged": report.damaged,
            "recreated": report.recreated,
            "unrecoverable": report.unrecoverable,
            "unplaced": report.unplaced,
            "new_holders": report.new_holders,
        }

    async def erase(self, cid: Cid) -> EraseReport:
        """Ask every known node, and every provider the DHT names, to erase ``cid``.

        Each node deletes the blocks it holds of every manifest of ``cid`` registered there
        (``DELETE /objects/{cid}``, signed), so the manifest need not be fetchable: a
        half-stored or damaged object is erased too. Known nodes are asked at once; the
        DHT is asked alongside (through the known nodes, up to ``DHT_TIMEOUT`` seconds
        each) and the providers it names that are not known are asked next. A node that
        does not know the object counts 0; one that cannot be reached, fails (5xx) or
        does not support erasure is listed in ``unreachable``; erase again later.

        Raises :class:`AuthError` (after asking every node) if a node refused the wallet's
        signature: erasure needs a writer the nodes trust.
        """
        if self.signer is None:
            raise AuthError("a wallet is needed to erase objects on storage nodes")
        clients = self._clients()
        report = EraseReport(cid)
        refused: list[AuthError] = []

        async def one(node: NodeClient) -> None:
            try:
                deleted = await node.erase_object(cid)
            except NotFoundError:
                return
            except AuthError as exc:
                refused.append(exc)
                return
            except MedmeshError:
                report.unreachable.append(node.url)
                return
            report.holders[node.url] = deleted
            report.deleted += deleted

        async def from_dht() -> list[str]:
            for node in clients:
                try:
                    return await asyncio.wait_for(node.providers(cid), DHT_TIMEOUT)
                except (MedmeshError, TimeoutError):
                    continue
            return []

        dht_task = asyncio.create_task(from_dht())
        await asyncio.gather(*(one(n) for n in clients))
        found = await dht_task
        known = {n.url.rstrip("/") for n in clients}
        extra: dict[str, NodeClient] = {}
        for url in found:
            url = url.rstrip("/")
            if url not in known and url not in extra:
                extra[url] = NodeClient(url, self._session, self.signer)
        await asyncio.gather(*(one(n) for n in extra.values()))
        if refused:
            raise AuthError(
                f"{len(refused)} storage node(s) refused to erase {cid}: {refused[0].message}"
            ) from refused[0]
        report.unreachable.sort()
        return report

    async def verify(self, cid: Cid, *, concurrency: int = 32) -> VerifyReport:
        """Challenge every held share with a random segment and check its Merkle proof."""
        loc = await self.locate(cid)
        m = loc.manifest
        report = VerifyReport(cid)
        counts: dict[str, dict[str, int]] = defaultdict(lambda: {"shares": 0, "passed": 0})
        sem = asyncio.Semaphore(concurrency)

        async def one(s: int, i: int, nid: str) -> None:
            st = m.stripes[s]
            cid_i = st.shares[i]
            assert cid_i is not None
            node = loc.nodes[nid]
            length = st.block_len if i >= m.k else loc.leaves[s * m.k + i][1]
            index = secrets.randbelow(segment_count(length, m.proof_segment))
            counts[node.url]["shares"] += 1
            async with sem:
                try:
                    got_len, proof = await node.challenge(cid_i, index, m.proof_segment)
                    good = (
                        got_len == length
                        and proof.index == index
                        and verify_proof(st.roots[i], proof, length, m.proof_segment)
                    )
                except MedmeshError as exc:
                    report.failed.append(f"{node.url}: stripe {s} share {i}: {exc.message}")
                    return
            if good:
                report.passed += 1
                counts[node.url]["passed"] += 1
            else:
                report.failed.append(f"{node.url}: stripe {s} share {i}: proof does not verify")

        jobs = [one(s, i, nid) for (s, i), nids in sorted(loc.holders.items()) for nid in nids]
        report.checked = len(jobs)
        await asyncio.gather(*jobs)
        missing = [
            (s, i)
            for s, st in enumerate(m.stripes)
            for i, c in enumerate(st.shares)
            if c is not None and not loc.holders.get((s, i))
        ]
        for s, i in missing[:50]:
            report.failed.append(f"stripe {s} share {i}: no node holds it")
        report.holders = dict(counts)
        return report
