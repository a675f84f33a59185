"""The put pipeline for many small objects: per node, one signed upload and one signed
registration for a whole chunk of objects.

:func:`medmesh.storage.uploader.upload` streams one object of any size. For a thousand
1 KB records its fixed costs dominate: per object, a reader thread and a worker pool, and
per holder two signed requests (a CAR of shares, then the metadata and the registration),
each a group commit on the node. :func:`upload_many` takes objects already in memory and
stores them in chunks of at most ``params.batch_objects`` objects and
``params.batch_object_bytes`` bytes::

    worker thread   pulls the next chunk from the caller's iterator (where sealing runs)
                    and, per object, cuts leaves, encodes its stripes and builds its DAG
                    and manifest, while the previous chunk uploads
    event loop      places every stripe as ``upload`` does (rendezvous hashing, keyed by
                    each object's CID: ``placement.content_key``); sends each node ONE signed CAR with its shares of
                    every object of the chunk plus those objects' DAG interior nodes and
                    manifests; once every CAR is acknowledged, ONE signed
                    ``POST /objects/batch`` per node indexes every object it holds shares of

Each object ends up exactly as ``upload`` leaves it: its own CID and manifest, each stripe's
shares on distinct nodes, the metadata on every holder, indexed (and announced in the DHT)
there. So it is fetched, verified, repaired, challenged and erased on its own.

Failures follow ``upload``'s rules, object by object:

- a node that cannot be reached (or answered, but not an HTTP error it chose) is marked
  dead for the rest of the call; each share it was sent, or would have been sent, goes to
  the next node in that stripe's rendezvous order that holds no share of the stripe, with
  the object's metadata, in one more CAR per node. An object with no such node fails
  ("stripe s needs n distinct storage nodes");
- a node that refuses a CAR (full, unauthorised, a block not matching its CID) fails every
  object that had shares in it, with that error; nothing of that CAR is stored there;
- a node that refuses one registration fails that object only;
- shares acknowledged by a node that dies before the call ends (in this chunk or a later
  one) are re-created from the survivors on other nodes before the call returns
  (:func:`medmesh.storage.uploader.settle`), so every object returned as stored is at full
  strength on the nodes still alive, as after ``upload``. For this the metadata of the
  stored objects (not their shares) is kept until the call returns. (An object too big
  for a chunk is stored by ``upload`` and settled when that returns.)

The result lists, in the caller's order, a :class:`PutReceipt` per object or the
:class:`MedmeshError` that failed it. Blocks of a failed object that some node had already
stored stay there unindexed, as after a failed ``upload``. Objects bigger than
``params.batch_object_bytes`` are stored with ``upload``, one at a time.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from medmesh.errors import InvalidInputError, MedmeshError, NodeUnavailableError, StorageError
from medmesh.storage.block import Block
from medmesh.storage.cid import Cid
from medmesh.storage.importer import DagBuilder
from medmesh.storage.manifest import Manifest, encode_manifest
from medmesh.storage.placement import content_key, place_stripe
from medmesh.storage.stripes import EncodedStripe, encode_stripe_group
from medmesh.storage.transport import NodeClient
from medmesh.storage.uploader import PutReceipt, StoreParams, _leaves, settle, upload
from medmesh.workers import map_batch

__all__ = ["BatchOutcome", "EncodedObject", "encode_object", "prepare_object", "upload_many"]

RESCUE_CONCURRENCY = 8  # objects repaired at once after a node died mid-call

#: What :func:`upload_many` gives for each object: its receipt or why it failed.
BatchOutcome = PutReceipt | MedmeshError


@dataclass(eq=False)
class EncodedObject:
    """One object encoded for upload (leaves, stripes, DAG, manifest), then placed and
    acknowledged share by share. :func:`prepare_object` makes one ahead of the upload, in a
    worker process, so that encoding is not part of the serialized upload."""

    index: int  # position in the caller's sequence
    root: Cid
    manifest_cid: Cid
    manifest: Manifest
    meta: list[Block]  # DAG interior nodes, then the manifest blocks (root last)
    leaves: list[tuple[Cid, int]]
    stripes: list[EncodedStripe]
    salt: bytes  # the placement key: content_key of the root (the CID is known first)
    # stripe -> share index -> node id, for shares acknowledged
    acked: dict[int, dict[int, str]] = field(default_factory=lambda: defaultdict(dict))
    # stripe -> node ids holding or about to hold one of its shares
    assigned: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    meta_at: set[str] = field(default_factory=set)  # nodes that acknowledged the metadata
    error: MedmeshError | None = None


def encode_object(index: int, data: bytes, params: StoreParams) -> EncodedObject:
    """Leaves, stripes, DAG and manifest of one in-memory object (CPU only)."""
    leaves = list(_leaves([data], params.chunk_size)) or [b""]
    stripes = encode_stripe_group(0, leaves, params.erasure, params.proof_segment)
    dag = DagBuilder(params.dag)
    dag_blocks: list[Block] = []
    leaf_list: list[tuple[Cid, int]] = []
    for st in stripes:
        for cid, size in st.leaves:
            dag_blocks.extend(dag.add_leaf(cid, size))
            leaf_list.append((cid, size))
    root, tail = dag.finish()
    dag_blocks.extend(tail)
    manifest = Manifest(
        object=root,
        size=sum(size for _, size in leaf_list),
        chunk_size=params.chunk_size,
        max_links=params.max_links,
        k=params.k,
        n=params.n,
        proof_segment=params.proof_segment,
        dag=tuple(b.cid for b in dag_blocks),
        stripes=tuple(st.row() for st in stripes),
    )
    manifest_cid, manifest_blocks = encode_manifest(manifest)
    return EncodedObject(
        index,
        root,
        manifest_cid,
        manifest,
        dag_blocks + manifest_blocks,
        leaf_list,
        stripes,
        content_key(root.multihash),
    )


def prepare_object(data: bytes, params: StoreParams) -> bytes | EncodedObject:
    """``data`` encoded as :func:`upload_many` will store it with ``params`` (CPU only: run
    it in a worker, ahead of the upload), or ``data`` itself if it is too big for a chunk."""
    if len(data) > params.batch_object_bytes:
        return data
    obj = encode_object(0, data, params)
    str(obj.root), str(obj.manifest_cid)  # the text forms registration sends, made here
    return obj


def _same_layout(obj: EncodedObject, params: StoreParams) -> bool:
    m = obj.manifest
    return (m.k, m.n, m.chunk_size, m.max_links, m.proof_segment) == (
        params.k, params.n, params.chunk_size, params.max_links, params.proof_segment,
    )  # fmt: skip


@dataclass
class _Chunk:
    objects: list[EncodedObject]
    big: tuple[int, bytes] | None  # an object too big for a chunk, stored after it
    last: bool  # the source is exhausted


class _Chunker:
    """Cuts the caller's objects into chunks; runs in one worker thread at a time."""

    def __init__(self, source: Iterable[bytes | EncodedObject], params: StoreParams) -> None:
        self.source: Iterator[tuple[int, bytes | EncodedObject]] = enumerate(source)
        self.params = params
        self.carry: tuple[int, bytes | EncodedObject] | None = None

    def next(self) -> _Chunk:
        """The next chunk, its objects encoded (in worker processes for a large chunk:
        erasure coding and DAG building are CPU only, :mod:`medmesh.workers`; objects the
        caller encoded already, with :func:`prepare_object`, are taken as they are)."""
        p = self.params
        taken: list[tuple[int, bytes | EncodedObject]] = []
        nbytes = 0
        big: tuple[int, bytes] | None = None
        last = False
        while True:
            if self.carry is not None:
                item, self.carry = self.carry, None
            else:
                got = next(self.source, None)
                if got is None:
                    last = True
                    break
                item = got
            index, data = item
            if isinstance(data, EncodedObject):
                if not _same_layout(data, p):
                    raise InvalidInputError(
                        f"object {index} was encoded with other storage parameters"
                    )
                size = data.manifest.size
            else:
                size = len(data)
                if size > p.batch_object_bytes:
                    big = (index, data)
                    break
            if taken and nbytes + size > p.batch_object_bytes:
                self.carry = item
                break
            taken.append(item)
            nbytes += size
            if len(taken) >= p.batch_objects:
                break
        jobs = [(i, d, p) for i, d in taken if not isinstance(d, EncodedObject)]
        encoded = iter(map_batch(_encode_job, jobs))
        objects = []
        for i, d in taken:
            obj = d if isinstance(d, EncodedObject) else next(encoded)
            obj.index = i  # its place in this call
            objects.append(obj)
        return _Chunk(objects, big, last)


def _encode_job(job: tuple[int, bytes, StoreParams]) -> EncodedObject:
    return encode_object(*job)


@dataclass
class _Share:
    obj: EncodedObject
    stripe: int
    share: int
    block: Block


@dataclass
class _NodeBatch:
    """What one node is sent in one CAR: shares, and the metadata of their objects."""

    shares: list[_Share] = field(default_factory=list)

    def objects(self) -> list[EncodedObject]:
        return list({id(s.obj): s.obj for s in self.shares}.values())

    def blocks(self, nid: str) -> list[Block]:
        out = [s.block for s in self.shares]
        for obj in self.objects():
            if nid not in obj.meta_at:
                out.extend(obj.meta)
        return out


@dataclass
class _Batch:
    nodes: dict[str, NodeClient]  # node id -> client
    params: StoreParams
    dead: set[str] = field(default_factory=set)
    stored: list[EncodedObject] = field(default_factory=list)  # settled, without share bytes


async def upload_many(
    nodes: Iterable[NodeClient],
    objects: Iterable[bytes | EncodedObject],
    params: StoreParams | None = None,
) -> list[BatchOutcome]:
    """Store many objects held in memory on ``nodes``; see the module docstring.

    ``objects`` is consumed lazily, one chunk at a time, in a worker thread (so a generator
    that seals records on the way runs off the event loop). Returns one outcome per object,
    in order. Raises only for an error of ``objects`` itself; failures of the storage
    network are reported per object.
    """
    params = params or StoreParams()
    clients = list(nodes)
    await asyncio.gather(*(c.info() for c in clients if c.node_id is None), return_exceptions=True)
    batch = _Batch({c.node_id: c for c in clients if c.node_id is not None}, params)
    results: dict[int, BatchOutcome] = {}
    chunker = _Chunker(objects, params)
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1, thread_name_prefix="medmesh-batch")
    pending: asyncio.Future[_Chunk] | None = loop.run_in_executor(pool, chunker.next)
    try:
        while pending is not None:
            chunk = await pending
            # prepare the next chunk while this one uploads
            pending = None if chunk.last else loop.run_in_executor(pool, chunker.next)
            await _store_chunk(batch, chunk.objects, results)
            if chunk.big is not None:
                index, data = chunk.big
                try:
                    results[index] = await upload(batch.nodes.values(), [data], params)
                except MedmeshError as exc:
                    results[index] = exc
        if batch.dead:
            await _rescue(batch, results)
    finally:
        if pending is not None:  # failed or cancelled: drop the chunk being prepared
            pending.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
    return [results[i] for i in range(len(results))]


async def _store_chunk(
    batch: _Batch, objects: list[EncodedObject], results: dict[int, BatchOutcome]
) -> None:
    if not objects:
        return
    p = batch.params
    if len(batch.nodes) < p.n:
        err = StorageError(
            f"{p.k}-of-{p.n} coding needs {p.n} reachable storage nodes, found {len(batch.nodes)}"
        )
        for obj in objects:
            results[obj.index] = err
        return
    plan: dict[str, _NodeBatch] = defaultdict(_NodeBatch)
    known = list(batch.nodes)
    for obj in objects:
        for st in obj.stripes:
            # over every known node, as upload does; a share meant for a node already
            # found dead moves on at once, to a node holding nothing of this stripe
            targets = place_stripe(obj.salt, st.index, known, p.n)
            real = [i for i, share in enumerate(st.shares) if share is not None]
            obj.assigned[st.index].update(targets[i] for i in real)
            for i in real:
                share = st.shares[i]
                assert share is not None
                _assign(batch, plan, _Share(obj, st.index, i, Block(*share)), targets[i])
    await _send_all(batch, plan)
    await _register_all(batch, objects)
    await asyncio.gather(*(_finish(batch, obj, results) for obj in objects))


def _assign(batch: _Batch, plan: dict[str, _NodeBatch], item: _Share, nid: str) -> None:
    """Queue ``item`` for ``nid``, or for the next eligible node if ``nid`` is dead."""
    obj = item.obj
    if nid in batch.dead:
        exclude = obj.assigned[item.stripe] | batch.dead
        try:
            nid = place_stripe(obj.salt, item.stripe, list(batch.nodes), 1, exclude=exclude)[0]
        except StorageError:
            p = batch.params
            live = len(batch.nodes) - len(batch.dead)
            obj.error = obj.error or StorageError(
                f"{p.k}-of-{p.n} coding needs {p.n} distinct live storage nodes for stripe "
                f"{item.stripe}, {live} left after {len(batch.dead)} failed"
            )
            return
    obj.assigned[item.stripe].add(nid)
    plan[nid].shares.append(item)


async def _send_all(batch: _Batch, plan: dict[str, _NodeBatch]) -> None:
    """Send each node its CAR; move the shares of nodes that fail to others; repeat."""
    while plan:
        for nb in plan.values():  # objects that failed elsewhere are not sent on
            nb.shares = [s for s in nb.shares if s.obj.error is None]
        order = [nid for nid, nb in plan.items() if nb.shares]
        answers = await asyncio.gather(
            *(batch.nodes[nid].put_blocks(plan[nid].blocks(nid)) for nid in order),
            return_exceptions=True,
        )
        retry: dict[str, _NodeBatch] = defaultdict(_NodeBatch)
        for nid, answer in zip(order, answers, strict=True):
            nb = plan[nid]
            if isinstance(answer, NodeUnavailableError):
                batch.dead.add(nid)
                batch.nodes[nid].stats.alive = False
                for item in nb.shares:
                    _assign(batch, retry, item, nid)
            elif isinstance(answer, MedmeshError):  # refused: full, unauthorised, ...
                for item in nb.shares:
                    item.obj.error = item.obj.error or answer
            elif isinstance(answer, BaseException):
                raise answer
            else:
                for item in nb.shares:
                    item.obj.acked[item.stripe][item.share] = nid
                for obj in nb.objects():
                    obj.meta_at.add(nid)
        plan = retry


async def _register_all(batch: _Batch, objects: list[EncodedObject]) -> None:
    """Index every object on every live node holding its shares, one request per node."""
    at: dict[str, list[EncodedObject]] = defaultdict(list)
    for obj in objects:
        if obj.error is not None:
            continue
        for nid in {nid for shares in obj.acked.values() for nid in shares.values()}:
            if nid not in batch.dead:
                at[nid].append(obj)
    order = list(at)
    answers = await asyncio.gather(
        *(
            batch.nodes[nid].register_many([(o.root, o.manifest_cid) for o in at[nid]])
            for nid in order
        ),
        return_exceptions=True,
    )
    registered: dict[int, int] = defaultdict(int)
    for nid, answer in zip(order, answers, strict=True):
        if isinstance(answer, NodeUnavailableError):
            batch.dead.add(nid)  # its shares are re-created by _finish
        elif isinstance(answer, MedmeshError):
            for obj in at[nid]:
                obj.error = obj.error or answer
        elif isinstance(answer, BaseException):
            raise answer
        else:
            for obj, err in zip(at[nid], answer, strict=True):
                if err is None:
                    registered[obj.index] += 1
                else:
                    obj.error = obj.error or err
    for obj in objects:
        if obj.error is None and not registered[obj.index]:
            obj.error = StorageError("no storage node accepted the object's manifest")


async def _finish(batch: _Batch, obj: EncodedObject, results: dict[int, BatchOutcome]) -> None:
    if obj.error is not None:
        results[obj.index] = obj.error
        return
    try:
        results[obj.index], obj.acked = await settle(
            obj.root,
            obj.manifest_cid,
            obj.manifest,
            obj.meta,
            obj.leaves,
            obj.acked,
            batch.dead,
            batch.nodes,
        )
    except MedmeshError as exc:
        results[obj.index] = exc
        return
    # kept until the call returns, for _rescue; the share bytes are not needed any more
    obj.stripes = []
    obj.assigned.clear()
    batch.stored.append(obj)


async def _rescue(batch: _Batch, results: dict[int, BatchOutcome]) -> None:
    """Re-create the shares that objects of earlier chunks have on nodes that died later.

    So that, as after ``upload``, every object the call returns as stored is at full
    strength on the nodes still alive when it returns.
    """
    hit = [
        obj
        for obj in batch.stored
        if any(nid in batch.dead for shares in obj.acked.values() for nid in shares.values())
    ]
    gate = asyncio.Semaphore(RESCUE_CONCURRENCY)

    async def one(obj: EncodedObject) -> None:
        async with gate:
            await _finish(batch, obj, results)

    hit_ids = {id(obj) for obj in hit}
    batch.stored = [obj for obj in batch.stored if id(obj) not in hit_ids]
    await asyncio.gather(*(one(obj) for obj in hit))
