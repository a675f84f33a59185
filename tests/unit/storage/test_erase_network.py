"""Erasing objects from a network of real nodes over loopback HTTP (``NetworkStore.erase``).

Each test stores sealed records 3-of-5 on five nodes (:class:`tests.harness.LocalCluster`)
and checks the nodes' blockstores block by block: an erased object leaves nothing behind
(shares, DAG nodes, manifest), not even its bytes in a pack file, and everything else stays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from medmesh.errors import AuthError, NotFoundError, StorageError
from medmesh.identity import Wallet
from medmesh.storage.backends.base import EraseReport
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.cid import Cid
from medmesh.storage.client import Client, PutResult
from medmesh.storage.transport import NodeClient, open_session
from medmesh.storage.uploader import StoreParams
from tests.harness import Fault, LocalCluster, random_bytes

# 16 KiB leaves and 4 links per DAG node: small objects with many stripes and DAG levels
PARAMS = StoreParams(chunk_size=16384, max_links=4, batch_bytes=128 * 1024, group_stripes=2)
SIZE = 40 * 16384 + 123


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


@pytest.fixture
def cluster(tmp_path: Path, wallet: Wallet) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "net", 5, [wallet.address], fsync=False)
    try:
        yield c
    finally:
        c.close()


def client_for(cluster: LocalCluster, wallet: Wallet, urls: list[str] | None = None) -> Client:
    return Client(NetworkStore(urls or cluster.urls, signer=wallet, params=PARAMS), wallet)


def block_files(cluster: LocalCluster) -> list[set[str]]:
    """The blocks each node holds (packed or in their own files), as CIDs."""
    return [set(map(str, n.service.store.keys())) for n in cluster.nodes]


def disk_bytes(cluster: LocalCluster) -> bytes:
    """Every file of every node, raw (block files, pack files, indexes)."""
    return b"".join(
        p.read_bytes() for n in cluster.nodes for p in sorted(n.data.rglob("*")) if p.is_file()
    )


def put(cluster: LocalCluster, wallet: Wallet, seed: int) -> tuple[PutResult, list[set[str]]]:
    """Store a record; returns it and the block files it added on each node."""
    before = block_files(cluster)
    result = client_for(cluster, wallet).put(random_bytes(SIZE, seed=seed))
    after = block_files(cluster)
    return result, [a - b for a, b in zip(after, before, strict=True)]


def object_info_everywhere(cluster: LocalCluster, cid: Cid) -> list[str]:
    """What each node's ``GET /objects/{cid}`` says: "found" or the error's class name."""

    async def run() -> list[str]:
        async with open_session() as session:
            out = []
            for url in cluster.urls:
                try:
                    await NodeClient(url, session).object_info(cid)
                    out.append("found")
                except Exception as exc:
                    out.append(type(exc).__name__)
            return out

    return asyncio.run(run())


def test_erase_removes_every_block_from_every_node_and_nothing_else(
    cluster: LocalCluster, wallet: Wallet, tmp_path: Path
) -> None:
    # Prepare: two records on the same five nodes
    a, added_a = put(cluster, wallet, seed=1)
    b, added_b = put(cluster, wallet, seed=2)
    assert all(added_a) and all(added_b), "every node holds part of each record"
    assert a.manifest is not None
    assert all(cluster.holds(i, a.manifest) for i in range(5))
    assert object_info_everywhere(cluster, a.cid) == ["found"] * 5
    a_bytes = [
        n.service.store.get(Cid.parse(c)) for i, n in enumerate(cluster.nodes) for c in added_a[i]
    ]

    # Execute (the sync facade, with the CID as text)
    report = client_for(cluster, wallet).erase(str(a.cid))

    # Assert: every block the record added is gone, on every node; B's are all there
    assert isinstance(report, EraseReport)
    assert report.cid == a.cid
    assert report.complete and report.unreachable == []
    assert report.holders == {url: len(added_a[i]) for i, url in enumerate(cluster.urls)}
    assert report.deleted == sum(len(files) for files in added_a)
    held = block_files(cluster)
    for i in range(5):
        assert held[i] == added_b[i], f"node {i}"
        assert not cluster.holds(i, a.manifest) and not cluster.holds(i, a.cid)
    raw = disk_bytes(cluster)  # the erased blocks' bytes are gone from the disks too
    assert not [d for d in a_bytes if len(d) >= 32 and d in raw]
    assert object_info_everywhere(cluster, a.cid) == ["NotFoundError"] * 5
    client = client_for(cluster, wallet)
    with pytest.raises(NotFoundError):
        client.get(a.cid, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    assert client.get_bytes(b.cid) == random_bytes(SIZE, seed=2)

    # Execute / Assert: erasing again finds nothing and is not an error
    again = client.erase(a.cid)
    assert (again.deleted, again.holders, again.unreachable) == (0, {}, [])
    assert again.complete


def test_erase_of_an_unknown_cid_deletes_nothing(cluster: LocalCluster, wallet: Wallet) -> None:
    _, added = put(cluster, wallet, seed=3)
    report = client_for(cluster, wallet).erase(Cid.of(b"never stored"))
    assert (report.deleted, report.holders, report.unreachable) == (0, {}, [])
    assert report.complete
    assert block_files(cluster) == added


def test_a_node_down_is_reported_and_a_later_erase_completes(
    cluster: LocalCluster, wallet: Wallet, tmp_path: Path
) -> None:
    # Prepare
    a, added = put(cluster, wallet, seed=4)
    cluster.stop(2)

    # Execute
    first = client_for(cluster, wallet).erase(a.cid)

    # Assert: the four live nodes erased their part; the dead one is named
    assert first.unreachable == [cluster.urls[2]]
    assert not first.complete
    assert first.holders == {u: len(added[i]) for i, u in enumerate(cluster.urls) if i != 2}
    held = block_files(cluster)
    assert [bool(h) for h in held] == [False, False, True, False, False]
    assert held[2] == added[2]

    # Execute: the node comes back (same port, same disk); erase again
    cluster.restart(2)
    second = client_for(cluster, wallet).erase(a.cid)

    # Assert
    assert second.complete
    assert second.holders == {cluster.urls[2]: len(added[2])}
    assert second.deleted == len(added[2])
    assert block_files(cluster) == [set()] * 5
    with pytest.raises(NotFoundError):
        client_for(cluster, wallet).get(a.cid, tmp_path / "a")


def test_erase_does_not_need_the_manifest_to_be_fetchable(
    cluster: LocalCluster, wallet: Wallet, tmp_path: Path
) -> None:
    # Prepare: no node serves blocks any more, so the object cannot be located or read
    a, _ = put(cluster, wallet, seed=5)
    for node in cluster.nodes:
        node.faults += [Fault("GET", "/ipfs/"), Fault("POST", "/blocks/fetch")]
    with pytest.raises(StorageError, match="no usable manifest"):
        client_for(cluster, wallet).get(a.cid, tmp_path / "a")
    # Execute
    report = client_for(cluster, wallet).erase(a.cid)
    # Assert
    assert report.complete and len(report.holders) == 5
    assert block_files(cluster) == [set()] * 5


def test_erase_needs_a_trusted_wallet_and_deletes_nothing_otherwise(
    cluster: LocalCluster, wallet: Wallet
) -> None:
    # Prepare
    a, added = put(cluster, wallet, seed=6)
    stranger = Wallet.create()
    # Execute / Assert: an untrusted wallet is refused by every node
    with pytest.raises(AuthError, match="refused to erase"):
        client_for(cluster, stranger).erase(a.cid)
    # ... and a store without a wallet cannot sign at all
    store = NetworkStore(cluster.urls, params=PARAMS)
    with pytest.raises(AuthError, match="wallet"):
        asyncio.run(store.erase(a.cid))
    asyncio.run(store.close())
    assert block_files(cluster) == added
    assert object_info_everywhere(cluster, a.cid) == ["found"] * 5
