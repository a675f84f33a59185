"""Repair: re-create lost shares from surviving ones and store them on other nodes.

For each stripe that lacks shares on live nodes, any ``k`` surviving shares are fetched,
the stripe is rebuilt and re-encoded, and every missing share is stored on a node that
holds no share of that stripe yet (next in rendezvous order). New holders also receive the
object's metadata (DAG interior nodes and manifest) and index the object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from medmesh.errors import MedmeshError, StorageError
from medmesh.storage.block import Block
from medmesh.storage.cid import Cid
from medmesh.storage.erasure import encode_parity, pad_stripe
from medmesh.storage.fetcher import StripeFetcher
from medmesh.storage.locate import Location
from medmesh.storage.manifest import Manifest
from medmesh.storage.placement import place_stripe
from medmesh.storage.transport import NodeClient

__all__ = ["RepairReport", "repair_location"]


@dataclass
class RepairReport:
    """What a repair found and did."""

    stripes: int
    damaged: int = 0
    recreated: int = 0
    unrecoverable: list[int] = field(default_factory=list)  # fewer than k shares left
    unplaced: list[int] = field(default_factory=list)  # no spare node for a new share
    new_holders: list[str] = field(default_factory=list)


def _missing(loc: Location, s: int) -> list[int]:
    st = loc.manifest.stripes[s]
    out = []
    for i, cid in enumerate(st.shares):
        if cid is None:
            continue
        holders = [n for n in loc.holders.get((s, i), ()) if loc.nodes[n].stats.alive]
        if not holders:
            out.append(i)
    return out


async def repair_location(loc: Location, *, concurrency: int = 8) -> RepairReport:
    """Re-create every share of ``loc`` that no live node holds."""
    m = loc.manifest
    report = RepairReport(stripes=len(m.stripes))
    damaged = {s: miss for s in range(len(m.stripes)) if (miss := _missing(loc, s))}
    report.damaged = len(damaged)
    if not damaged:
        return report
    live = [nid for nid, node in loc.nodes.items() if node.stats.alive]
    fetcher = StripeFetcher(loc)
    sem = asyncio.Semaphore(concurrency)
    new_holders: set[str] = set()
    salt = bytes(loc.manifest_cid)[-16:]

    async def fix(s: int, missing: list[int]) -> None:
        async with sem:
            try:
                leaves = await fetcher.fetch(s)
            except MedmeshError:
                report.unrecoverable.append(s)
                return
            st = m.stripes[s]
            padded, _ = pad_stripe(leaves, m.erasure_params)
            padded = [p.ljust(st.block_len, b"\0") for p in padded]
            parity = encode_parity(padded, m.erasure_params)
            holding = {n for i in range(m.n) for n in loc.holders.get((s, i), ())}
            for i in missing:
                data = padded[i][: len(leaves[i])] if i < m.k else parity[i - m.k]
                cid = st.shares[i]
                assert cid is not None
                if not cid.matches(data):
                    report.unrecoverable.append(s)
                    return
                try:
                    target = place_stripe(salt, s, live, 1, exclude=holding)[0]
                except StorageError:
                    report.unplaced.append(s)
                    return
                node = loc.nodes[target]
                await node.put_blocks([Block(cid, data)])
                holding.add(target)
                loc.holders.setdefault((s, i), []).append(target)
                new_holders.add(target)
                report.recreated += 1

    await asyncio.gather(*(fix(s, miss) for s, miss in damaged.items()))
    for nid in new_holders:
        node = loc.nodes[nid]
        await node.put_blocks(loc.meta)
        await node.register(loc.cid, loc.manifest_cid)
    report.new_holders = sorted(loc.nodes[n].url for n in new_holders)
    report.unrecoverable.sort()
    report.unplaced.sort()
    return report


def location_from_acked(
    cid: Cid,
    manifest_cid: Cid,
    manifest: Manifest,
    meta: list[Block],
    leaves: list[tuple[Cid, int]],
    acked: Mapping[int, Mapping[int, str]],
    nodes: dict[str, NodeClient],
) -> Location:
    """A :class:`Location` built from what an upload just acknowledged."""
    holders = {(s, i): [nid] for s, shares in acked.items() for i, nid in shares.items()}
    return Location(cid, manifest, manifest_cid, meta, leaves, holders, nodes)
