"""Fetching stripes from many nodes at once, fastest first.

For each stripe the fetcher needs any ``k`` of its ``n`` shares. It ranks every (share,
holder) pair by the holder's expected time to deliver (bytes already queued on that node
divided by its observed throughput, an EWMA), with a small handicap for parity shares
(which cost a decode), and asks for the best ``k``. A failed or corrupted answer marks that
pair as tried and the next best pair is asked; a request that runs far past its expected
time gets a hedge request to another holder. Every block is checked against its CID on
arrival; a node that serves a wrong block is reported and never asked for that share again.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import Executor
from dataclasses import dataclass, field

from medmesh.errors import (
    BlockMismatchError,
    InsufficientSharesError,
    IntegrityError,
    MedmeshError,
    NodeUnavailableError,
    NotFoundError,
)
from medmesh.storage.cid import Cid
from medmesh.storage.erasure import decode_stripe
from medmesh.storage.locate import Location
from medmesh.storage.transport import NodeClient

__all__ = ["StripeFetcher"]

PARITY_PENALTY = 0.002  # seconds: prefer data shares when holders are equally fast
HEDGE_FACTOR = 4.0
HEDGE_MIN = 1.0  # seconds


class _Batcher:
    """Coalesces the block requests to one node into ``POST /blocks/fetch`` batches.

    Requests made in the same event-loop turn travel together (up to ``max_batch``), with
    at most ``max_inflight`` batches on the wire per node: the per-request cost of HTTP is
    paid once per batch instead of once per 256 KiB block.
    """

    def __init__(self, node: NodeClient, max_batch: int = 32, max_inflight: int = 2) -> None:
        self.node = node
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.queue: list[tuple[Cid, asyncio.Future[bytes]]] = []
        self.inflight = 0
        self.scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()

    def get(self, cid: Cid) -> asyncio.Future[bytes]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self.queue.append((cid, fut))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._pump)
        return fut

    def _pump(self) -> None:
        self.scheduled = False
        self.queue = [(c, f) for c, f in self.queue if not f.done()]
        while self.queue and self.inflight < self.max_inflight:
            batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
            self.inflight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self, batch: list[tuple[Cid, asyncio.Future[bytes]]]) -> None:
        try:
            got = await self.node.get_blocks([c for c, _ in batch])
        except MedmeshError as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for cid, fut in batch:
                if fut.done():
                    continue
                if cid in got:
                    fut.set_result(got[cid])
                else:
                    fut.set_exception(NotFoundError(f"node {self.node.url} does not hold {cid}"))
        finally:
            self.inflight -= 1
            self._pump()


@dataclass
class StripeFetcher:
    """Fetches and rebuilds stripes of one located object."""

    loc: Location
    executor: Executor | None = None
    bad_nodes: dict[str, str] = field(default_factory=dict)  # url -> reason
    _batchers: dict[str, _Batcher] = field(default_factory=dict)

    def _batcher(self, nid: str) -> _Batcher:
        if nid not in self._batchers:
            self._batchers[nid] = _Batcher(self.loc.nodes[nid])
        return self._batchers[nid]

    def _candidates(
        self, s: int, skip: set[int], tried: set[tuple[int, str]]
    ) -> list[tuple[float, int, str]]:
        st = self.loc.manifest.stripes[s]
        out: list[tuple[float, int, str]] = []
        for i, cid in enumerate(st.shares):
            if cid is None or i in skip:
                continue
            size = st.block_len
            for nid in self.loc.holders.get((s, i), ()):
                node = self.loc.nodes.get(nid)
                if node is None or not node.stats.alive or (i, nid) in tried:
                    continue
                cost = node.stats.eta(size) + (PARITY_PENALTY if i >= self.loc.manifest.k else 0)
                out.append((cost, i, nid))
        out.sort()
        return out

    async def _get(self, s: int, i: int, nid: str) -> tuple[int, bytes]:
        cid = self.loc.manifest.stripes[s].shares[i]
        assert cid is not None
        node = self.loc.nodes[nid]
        size = self.loc.manifest.stripes[s].block_len
        node.stats.inflight_bytes += size
        try:
            return i, await self._batcher(nid).get(cid)
        finally:
            node.stats.inflight_bytes -= size

    async def fetch(self, s: int) -> list[bytes]:
        """The verified leaves of stripe ``s`` (its real data blocks, unpadded)."""
        m = self.loc.manifest
        st = m.stripes[s]
        k = m.k
        have: dict[int, bytes] = {}
        for i in range(k):
            if st.shares[i] is None:
                have[i] = bytes(st.block_len)  # virtual zero share
        tried: set[tuple[int, str]] = set()
        running: dict[asyncio.Task[tuple[int, bytes]], tuple[int, str]] = {}
        try:
            while len(have) < k:
                busy = {i for i, _ in running.values()}
                need = k - len(have) - len(busy)
                if need > 0:
                    picked: set[int] = set()
                    for _cost, i, nid in self._candidates(s, set(have) | busy, tried):
                        if i in picked:
                            continue
                        picked.add(i)
                        tried.add((i, nid))
                        running[asyncio.create_task(self._get(s, i, nid))] = (i, nid)
                        if len(picked) == need:
                            break
                if not running:
                    raise InsufficientSharesError(
                        f"stripe {s}: only {len(have)} of the {k} shares needed could be fetched",
                        [s],
                    )
                expected = max(
                    (self.loc.nodes[nid].stats.eta(st.block_len) for _, nid in running.values()),
                    default=0.0,
                )
                done, _ = await asyncio.wait(
                    running,
                    timeout=max(HEDGE_MIN, HEDGE_FACTOR * expected),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:  # slow holder: hedge with one more request elsewhere
                    busy = {i for i, _ in running.values()}
                    for _cost, i, nid in self._candidates(s, set(have) | busy, tried):
                        tried.add((i, nid))
                        running[asyncio.create_task(self._get(s, i, nid))] = (i, nid)
                        break
                    continue
                for task in done:
                    i, nid = running.pop(task)
                    try:
                        _, data = task.result()
                    except BlockMismatchError as exc:
                        self.bad_nodes[self.loc.nodes[nid].url] = exc.message
                        continue
                    except NodeUnavailableError:
                        self.loc.nodes[nid].stats.alive = False
                        continue
                    except MedmeshError:
                        continue  # e.g. the node no longer has it: try another holder
                    if i not in have and len(have) < k:
                        have[i] = data
        finally:
            for task in running:
                task.cancel()
        return await self._rebuild(s, have)

    async def _rebuild(self, s: int, have: dict[int, bytes]) -> list[bytes]:
        m = self.loc.manifest
        st = m.stripes[s]
        real = [i for i in range(m.k) if st.shares[i] is not None]
        if all(i in have for i in real):
            return [have[i] for i in real]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._decode, s, have)

    def _decode(self, s: int, have: dict[int, bytes]) -> list[bytes]:
        m = self.loc.manifest
        st = m.stripes[s]
        padded = {i: d.ljust(st.block_len, b"\0") for i, d in have.items()}
        blocks = decode_stripe(padded, m.erasure_params, stripe_index=s)
        out: list[bytes] = []
        for i in range(m.k):
            cid = st.shares[i]
            if cid is None:
                continue
            leaf_cid, size = self.loc.leaves[s * m.k + i]
            data = have[i] if i in have else blocks[i][:size]
            if i not in have and hashlib.sha256(data).digest() != leaf_cid.digest:
                raise IntegrityError(f"stripe {s}: rebuilt leaf does not match its CID")
            out.append(data)
        return out
