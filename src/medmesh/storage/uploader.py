"""The put pipeline: ciphertext -> leaves -> stripes -> shares on many nodes.

Stages, with bounded memory whatever the object's size::

    reader thread   pulls ciphertext pieces, cuts 256 KiB leaves, groups stripes
    worker threads  per group: SHA-256 of leaves, zfec parity, BLAKE3 of parity, Merkle roots
    event loop      in stripe order: extends the UnixFS DAG, places each stripe's n shares
                    on n distinct nodes (rendezvous hashing), batches shares per node into
                    signed CAR uploads (several in flight per node)

At most ``max_inflight`` bytes of shares are held at once (encoded but not yet acknowledged);
the reader waits when the budget is used. A node that fails an upload is marked dead and its
pending shares go to the next node in the stripe's rendezvous order that holds no share of
that stripe yet. Shares that a dead node had already acknowledged are re-created from the
surviving shares before the put returns (see :mod:`medmesh.storage.repair`), so a put that
returns has every stripe at full strength on live nodes, or raises.

Finally the DAG's interior nodes and the manifest are stored on every node holding shares,
and each such node indexes the object (and announces it in the DHT).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from medmesh.errors import MedmeshError, NodeUnavailableError, StorageError
from medmesh.storage.block import Block
from medmesh.storage.cid import Cid
from medmesh.storage.erasure import ErasureParams
from medmesh.storage.importer import DagBuilder, ImportParams
from medmesh.storage.manifest import Manifest, encode_manifest
from medmesh.storage.placement import content_key, place_stripe
from medmesh.storage.repair import location_from_acked, repair_location
from medmesh.storage.stripes import EncodedStripe, encode_stripe_group
from medmesh.storage.transport import NodeClient

__all__ = ["PutReceipt", "StoreParams", "settle", "upload"]

Progress = Callable[[int], None]
_DONE: Final = object()


@dataclass(frozen=True)
class StoreParams:
    """How objects are laid out and uploaded.

    ``chunk_size`` and ``max_links`` shape the UnixFS DAG (IPFS defaults); ``k``/``n`` the
    erasure code; ``proof_segment`` the Merkle segment for storage proofs. The rest tune
    throughput and memory: stripes per worker task, bytes per upload batch, concurrent
    batches per node, and the budget of share bytes held in memory. ``batch_objects`` and
    ``batch_object_bytes`` bound one chunk of :func:`medmesh.storage.batch.upload_many`
    (objects and their bytes per signed request to a node); bigger objects are stored one
    at a time like :func:`upload` does.
    """

    chunk_size: int = 262144
    max_links: int = 174
    k: int = 3
    n: int = 5
    proof_segment: int = 65536
    group_stripes: int = 8
    batch_bytes: int = 4 * 1024 * 1024
    per_node_inflight: int = 2
    max_inflight: int = 64 * 1024 * 1024
    workers: int = max(2, os.cpu_count() or 2)
    batch_objects: int = 1000
    batch_object_bytes: int = 8 * 1024 * 1024

    @property
    def erasure(self) -> ErasureParams:
        return ErasureParams(self.k, self.n)

    @property
    def dag(self) -> ImportParams:
        return ImportParams(chunk_size=self.chunk_size, max_links=self.max_links)


@dataclass(frozen=True)
class PutReceipt:
    """What a put stored: the object's CID (IPFS-compatible) and its manifest."""

    cid: Cid
    manifest: Cid
    size: int
    stripes: int
    holders: dict[str, int]  # node URL -> shares held


def _leaves(pieces: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    """Cut pieces of any size into ``chunk_size`` leaves (the last may be shorter).

    Each leaf is copied once; the carried-over tail of a piece is never moved again.
    """
    carry = b""
    for piece in pieces:
        view = memoryview(piece)
        pos = 0
        if carry:
            need = chunk_size - len(carry)
            if len(view) < need:
                carry += bytes(view)
                continue
            yield carry + bytes(view[:need])
            pos = need
            carry = b""
        end = len(view) - (len(view) - pos) % chunk_size
        for off in range(pos, end, chunk_size):
            yield bytes(view[off : off + chunk_size])
        carry = bytes(view[end:])
    if carry:
        yield carry


class _Budget:
    """A byte budget shared by the reader thread and the event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    def acquire(self, n: int, abort: threading.Event) -> bool:
        with self.cond:
            while self.used > 0 and self.used + n > self.limit:
                if abort.is_set():
                    return False
                self.cond.wait(0.1)
            self.used += n
            return True

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


@dataclass
class _Pending:
    stripe: int
    share: int
    block: Block


@dataclass
class _State:
    nodes: dict[str, NodeClient]  # node id -> client
    params: StoreParams
    salt: bytes
    dead: set[str] = field(default_factory=set)
    # stripe -> share index -> node id, for shares acknowledged
    acked: dict[int, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    # stripe -> node ids holding or about to hold one of its shares
    assigned: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    batches: dict[str, list[_Pending]] = field(default_factory=lambda: defaultdict(list))
    batch_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    sems: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    error: BaseException | None = None
    progress: Progress | None = None
    stored: int = 0  # bytes of the object (data shares) acknowledged so far

    def live(self) -> list[str]:
        return [nid for nid in self.nodes if nid not in self.dead]


async def upload(
    nodes: Iterable[NodeClient],
    pieces: Iterable[bytes],
    params: StoreParams = StoreParams(),
    *,
    progress: Progress | None = None,
) -> PutReceipt:
    """Store the ciphertext produced by ``pieces`` on ``nodes``; see the module docstring."""
    clients = list(nodes)
    await asyncio.gather(*(c.info() for c in clients if c.node_id is None), return_exceptions=True)
    state = _State(
        nodes={c.node_id: c for c in clients if c.node_id is not None},
        params=params,
        salt=os.urandom(16),
        progress=progress,
    )
    if len(state.nodes) < params.n:
        raise StorageError(
            f"{params.k}-of-{params.n} coding needs {params.n} reachable storage nodes, "
            f"found {len(state.nodes)}"
        )
    for nid in state.nodes:
        state.sems[nid] = asyncio.Semaphore(params.per_node_inflight)

    budget = _Budget(params.max_inflight)
    abort = threading.Event()
    results: queue.Queue[object] = queue.Queue(maxsize=2 * params.workers + 2)
    pool = ThreadPoolExecutor(params.workers, thread_name_prefix="medmesh-encode")
    loop = asyncio.get_running_loop()

    def reader() -> None:
        try:
            group: list[bytes] = []
            group_len = params.group_stripes * params.k
            first = 0
            for leaf in _leaves(pieces, params.chunk_size):
                group.append(leaf)
                if len(group) == group_len:
                    if not _submit(first, group):
                        return
                    first += params.group_stripes
                    group = []
            if group or first == 0:
                _submit(first, group or [b""])
            results.put(_DONE)
        except BaseException as exc:  # delivered to the event loop
            results.put(exc)

    def _submit(first: int, group: list[bytes]) -> bool:
        size = sum(len(b) for b in group) * params.n // params.k
        if not budget.acquire(size, abort):
            return False
        fut = pool.submit(encode_stripe_group, first, group, params.erasure, params.proof_segment)
        while True:
            try:
                results.put(fut, timeout=0.1)
                return True
            except queue.Full:
                if abort.is_set():
                    return False

    thread = threading.Thread(target=reader, name="medmesh-reader", daemon=True)
    thread.start()
    dag = DagBuilder(params.dag)
    dag_blocks: list[Block] = []
    stripes: list[EncodedStripe] = []
    leaf_list: list[tuple[Cid, int]] = []
    total = 0
    try:
        while True:
            item = await loop.run_in_executor(None, results.get)
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Future)
            group_out: list[EncodedStripe] = await asyncio.wrap_future(item)
            first_leaves = list(group_out[0].leaves) if len(group_out) == 1 else []
            if not stripes and len(first_leaves) == 1:
                # The object may be one leaf (a group that short is the last): its CID is
                # that leaf's, known before placement, so readers know whom to ask first.
                state.salt = content_key(first_leaves[0][0].multihash)
            for st in group_out:
                for cid, size in st.leaves:
                    dag_blocks.extend(dag.add_leaf(cid, size))
                    leaf_list.append((cid, size))
                    total += size
                _place(state, st, budget)
                stripes.append(_light(st))
                if state.error is not None:
                    raise state.error
        await _flush_all(state, budget)
        if state.error is not None:
            raise state.error
    except BaseException:
        abort.set()
        for task in state.tasks:
            task.cancel()
        raise
    finally:
        abort.set()
        pool.shutdown(wait=False, cancel_futures=True)

    root, tail = dag.finish()
    dag_blocks.extend(tail)
    manifest = Manifest(
        object=root,
        size=total,
        chunk_size=params.chunk_size,
        max_links=params.max_links,
        k=params.k,
        n=params.n,
        proof_segment=params.proof_segment,
        dag=tuple(b.cid for b in dag_blocks),
        stripes=tuple(st.row() for st in stripes),
    )
    manifest_cid, manifest_blocks = encode_manifest(manifest)
    holders = {nid for shares in state.acked.values() for nid in shares.values()} - state.dead
    meta = dag_blocks + manifest_blocks
    await _publish(state, holders, root, manifest_cid, meta)
    receipt, _ = await settle(
        root, manifest_cid, manifest, meta, leaf_list, state.acked, state.dead, state.nodes
    )
    return receipt


async def settle(
    root: Cid,
    manifest_cid: Cid,
    manifest: Manifest,
    meta: list[Block],
    leaves: list[tuple[Cid, int]],
    acked: Mapping[int, Mapping[int, str]],
    dead: set[str],
    nodes: dict[str, NodeClient],
) -> tuple[PutReceipt, dict[int, dict[int, str]]]:
    """The receipt of a stored object whose shares ``acked`` lists (stripe -> share -> node),
    and where its shares are now (the same map, without dead nodes, with new holders).

    Shares acknowledged by a node that has died since (in ``dead``) are re-created from the
    survivors on other nodes first, so the object is at full strength on live nodes when
    this returns; raises :class:`StorageError` if that cannot be done.
    """
    live_acked = {
        s: {i: nid for i, nid in shares.items() if nid not in dead} for s, shares in acked.items()
    }
    if any(len(shares) < len(acked[s]) for s, shares in live_acked.items()):
        # a node died after acknowledging shares: re-create them elsewhere now
        for nid in dead:
            nodes[nid].stats.alive = False
        loc = location_from_acked(root, manifest_cid, manifest, meta, leaves, live_acked, nodes)
        report = await repair_location(loc)
        if report.unrecoverable or report.unplaced:
            raise StorageError(
                f"{len(report.unrecoverable) + len(report.unplaced)} stripes lost shares on "
                "failed nodes and could not be re-created elsewhere; the object is not stored"
            )
        live_acked = {
            s: {i: nids[-1] for (s2, i), nids in loc.holders.items() if s2 == s and nids}
            for s in live_acked
        }
    counts: dict[str, int] = defaultdict(int)
    for shares in live_acked.values():
        for nid in shares.values():
            counts[nodes[nid].url] += 1
    receipt = PutReceipt(root, manifest_cid, manifest.size, len(manifest.stripes), dict(counts))
    return receipt, live_acked


def _light(st: EncodedStripe) -> EncodedStripe:
    """The stripe without its share bytes (kept for the manifest only)."""
    return EncodedStripe(
        st.index,
        st.k,
        st.block_len,
        tuple(None if s is None else (s[0], b"") for s in st.shares),
        st.roots,
    )


def _place(state: _State, st: EncodedStripe, budget: _Budget) -> None:
    targets = place_stripe(state.salt, st.index, state.live(), state.params.n)
    for i, share in enumerate(st.shares):
        if share is None:
            continue
        _enqueue(state, targets[i], _Pending(st.index, i, Block(*share)), budget)


def _enqueue(state: _State, nid: str, item: _Pending, budget: _Budget) -> None:
    state.assigned[item.stripe].add(nid)
    state.batches[nid].append(item)
    state.batch_bytes[nid] += len(item.block.data)
    if state.batch_bytes[nid] >= state.params.batch_bytes:
        _send(state, nid, budget)


def _send(state: _State, nid: str, budget: _Budget) -> None:
    items = state.batches.pop(nid, [])
    state.batch_bytes.pop(nid, None)
    if not items:
        return
    task = asyncio.get_running_loop().create_task(_upload_batch(state, nid, items, budget))
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)


async def _upload_batch(state: _State, nid: str, items: list[_Pending], budget: _Budget) -> None:
    node = state.nodes[nid]
    try:
        if nid in state.dead:
            raise NodeUnavailableError(f"node {node.url} is down")
        async with state.sems[nid]:
            await node.put_blocks(it.block for it in items)
    except NodeUnavailableError:
        state.dead.add(nid)
        node.stats.alive = False
        try:
            _reassign(state, items, budget)
        except MedmeshError as exc:
            state.error = exc
            budget.release(sum(len(it.block.data) for it in items))
        return
    except MedmeshError as exc:  # refused: full, unauthorised, ... -> the put fails clearly
        state.error = exc
        budget.release(sum(len(it.block.data) for it in items))
        return
    for it in items:
        state.acked[it.stripe][it.share] = nid
        if it.share < state.params.k:
            state.stored += len(it.block.data)
    budget.release(sum(len(it.block.data) for it in items))
    if state.progress is not None:
        state.progress(state.stored)


def _reassign(state: _State, items: list[_Pending], budget: _Budget) -> None:
    """Send the shares of a failed batch to other nodes (distinct per stripe)."""
    touched: set[str] = set()
    for it in items:
        exclude = state.assigned[it.stripe] | state.dead
        target = place_stripe(state.salt, it.stripe, list(state.nodes), 1, exclude=exclude)[0]
        state.assigned[it.stripe].add(target)
        state.batches[target].append(it)
        state.batch_bytes[target] += len(it.block.data)
        touched.add(target)
    for nid in touched:
        _send(state, nid, budget)


async def _flush_all(state: _State, budget: _Budget) -> None:
    while True:
        for nid in list(state.batches):
            _send(state, nid, budget)
        if not state.tasks:
            if not state.batches:
                return
            continue
        await asyncio.gather(*list(state.tasks), return_exceptions=True)
        if state.error is not None:
            return


async def _publish(
    state: _State, holders: Iterable[str], obj: Cid, manifest: Cid, meta: list[Block]
) -> None:
    """Store the DAG's interior nodes and the manifest on every holder, then index there."""

    async def one(nid: str) -> None:
        node = state.nodes[nid]
        try:
            await node.put_blocks(meta)
            await node.register(obj, manifest)
        except NodeUnavailableError:
            state.dead.add(nid)

    await asyncio.gather(*(one(nid) for nid in holders))
    if not set(holders) - state.dead:
        raise StorageError("no storage node accepted the object's manifest")
