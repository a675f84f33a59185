"""Finding a stored object: its holders, its manifest, its DAG, and who has which share.

The client asks every node it knows (and the DHT's providers, through any node) which
manifests of the object they index and which shares they hold. It picks the manifest with
the most holders, fetches its blocks and the DAG's interior nodes from any holder (each
verified against its CID), and checks the manifest against the DAG: data share ``i`` of
stripe ``s`` must be leaf ``s*k + i`` of the object. The object CID is the only thing the
caller has to trust; a manifest that disagrees with it is refused.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp

from medmesh.errors import IntegrityError, MedmeshError, NotFoundError, StorageError
from medmesh.storage.block import Block
from medmesh.storage.cid import RAW, Cid
from medmesh.storage.exporter import leaf_cids
from medmesh.storage.manifest import Manifest, decode_head, decode_manifest
from medmesh.storage.transport import NodeClient

__all__ = ["DHT_GRACE", "DHT_TIMEOUT", "Location", "locate"]

#: How long a read waits for the DHT's answer before going on with the nodes it knows.
DHT_TIMEOUT = 3.0
#: ... and how long once the known nodes have already answered with the object.
DHT_GRACE = 0.3


@dataclass
class Location:
    """Where an object lives and how it is laid out."""

    cid: Cid
    manifest: Manifest
    manifest_cid: Cid
    meta: list[Block]  # DAG interior nodes and manifest blocks, verified
    leaves: list[tuple[Cid, int]]
    holders: dict[tuple[int, int], list[str]]  # (stripe, share) -> node ids
    nodes: dict[str, NodeClient]  # node id -> client

    def available(self, stripe: int) -> int:
        """Shares of ``stripe`` obtainable now (virtual shares count)."""
        st = self.manifest.stripes[stripe]
        return sum(
            1
            for i, cid in enumerate(st.shares)
            if cid is None
            or any(self.nodes[n].stats.alive for n in self.holders.get((stripe, i), ()))
        )


async def _fetch_any(cid: Cid, nodes: Iterable[NodeClient]) -> bytes:
    last: MedmeshError | None = None
    for node in nodes:
        try:
            return await node.get_block(cid)
        except MedmeshError as exc:
            last = exc
    raise NotFoundError(f"no holder could serve block {cid}") from last


async def locate(
    known: Iterable[NodeClient], cid: Cid, session: aiohttp.ClientSession | None = None
) -> Location:
    """Find ``cid`` on the network; see the module docstring."""
    nodes = {c.url: c for c in known}
    if session is None and nodes:
        session = next(iter(nodes.values())).session

    # the DHT may know holders we were not configured with; ask it alongside, briefly
    async def from_dht() -> list[str]:
        for node in list(nodes.values()):
            try:
                return await asyncio.wait_for(node.providers(cid), DHT_TIMEOUT)
            except (MedmeshError, TimeoutError):
                continue
        return []

    async def ask(node: NodeClient) -> tuple[NodeClient, dict[str, object] | None]:
        try:
            if node.node_id is None:
                await node.info()
            return node, await node.object_info(cid)
        except NotFoundError:
            return node, None
        except MedmeshError:
            node.stats.alive = False
            return node, None

    dht_task = asyncio.create_task(from_dht())
    answers = list(await asyncio.gather(*(ask(n) for n in list(nodes.values()))))
    # known nodes answered; if they hold the object, give the DHT only a moment more
    grace = DHT_GRACE if any(info for _, info in answers) else DHT_TIMEOUT
    try:
        found = await asyncio.wait_for(asyncio.shield(dht_task), grace)
    except TimeoutError:
        found = []
    finally:
        dht_task.cancel()
    extra = [NodeClient(u, session) for u in found if u not in nodes and session is not None]
    if extra:
        nodes.update((c.url, c) for c in extra)
        answers = [*answers, *await asyncio.gather(*(ask(n) for n in extra))]
    by_id: dict[str, NodeClient] = {n.node_id: n for n, _ in answers if n.node_id is not None}
    votes: Counter[str] = Counter()
    per_manifest: dict[str, list[tuple[NodeClient, dict[str, object]]]] = defaultdict(list)
    for node, info in answers:
        if not info:
            continue
        for entry in info.get("manifests", []):  # type: ignore[attr-defined]
            votes[entry["manifest"]] += len(entry.get("shares", [])) + 1
            per_manifest[entry["manifest"]].append((node, entry))
    if not votes:
        raise NotFoundError(f"object {cid} not found on any reachable storage node")

    errors: list[str] = []
    for manifest_text, _ in votes.most_common():
        entries = per_manifest[manifest_text]
        manifest_cid = Cid.parse(manifest_text)
        sources = [n for n, e in entries if e.get("dag")] or [n for n, _ in entries]
        try:
            root_block = await _fetch_any(manifest_cid, sources)
            head = decode_head(root_block)
            tables = [await _fetch_any(t, sources) for t in head.tables]
            manifest = decode_manifest(root_block, tables)
            if manifest.object != cid:
                raise IntegrityError("manifest describes another object")
            meta = {manifest_cid: root_block, **dict(zip(head.tables, tables, strict=True))}
            for dag_cid in manifest.dag:
                meta[dag_cid] = await _fetch_any(dag_cid, sources)
            if cid.codec == RAW:  # a one-leaf object: the root is the leaf
                leaves = [(cid, manifest.size)]
            else:
                leaves = list(leaf_cids(cid, _getter(meta)))
            _check_layout(manifest, leaves)
        except MedmeshError as exc:
            errors.append(exc.message)
            continue
        holders: dict[tuple[int, int], list[str]] = defaultdict(list)
        for node, entry in entries:
            assert node.node_id is not None
            for s, i in entry.get("shares", []):  # type: ignore[attr-defined]
                holders[(int(s), int(i))].append(node.node_id)
        blocks = [Block(c, d) for c, d in meta.items()]
        return Location(cid, manifest, manifest_cid, blocks, leaves, dict(holders), by_id)
    raise StorageError(f"no usable manifest for object {cid}: " + "; ".join(errors[:3]))


def _getter(meta: dict[Cid, bytes]):  # type: ignore[no-untyped-def]
    def get(c: Cid) -> bytes:
        try:
            return meta[c]
        except KeyError:
            raise IntegrityError(f"DAG node {c} is not listed in the manifest") from None

    return get


def _check_layout(manifest: Manifest, leaves: list[tuple[Cid, int]]) -> None:
    k = manifest.k
    if sum(size for _, size in leaves) != manifest.size:
        raise IntegrityError("manifest size does not match the object")
    if len(manifest.stripes) != max(1, -(-len(leaves) // k)):
        raise IntegrityError("manifest stripe count does not match the object")
    for s, stripe in enumerate(manifest.stripes):
        for i in range(k):
            j = s * k + i
            expected = leaves[j][0] if j < len(leaves) else None
            if stripe.shares[i] != expected:
                raise IntegrityError(f"manifest stripe {s} does not match the object's leaves")
