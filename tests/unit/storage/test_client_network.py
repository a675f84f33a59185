"""The storage client against a network of real nodes over loopback HTTP, with faults."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from medmesh.crypto.envelope import NoCapsuleError
from medmesh.errors import AuthError, InsufficientSharesError, StorageError
from medmesh.identity import Wallet
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.cid import Cid
from medmesh.storage.client import Client
from medmesh.storage.importer import import_bytes
from medmesh.storage.placement import content_key, rank_nodes, stripe_key
from medmesh.storage.uploader import StoreParams
from tests.harness import Fault, LocalCluster, random_bytes

# small batches so that even small objects spread over many requests
PARAMS = StoreParams(batch_bytes=256 * 1024, group_stripes=2)
LEAF = 262144


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


def is_metadata(cid: Cid, data: bytes) -> bool:
    """Manifest and DAG interior blocks of these small test objects are under 64 KiB."""
    return len(data) < 65536


def client_for(cluster: LocalCluster, wallet: Wallet, params: StoreParams = PARAMS) -> Client:
    return Client(NetworkStore(cluster.urls, signer=wallet, params=params), wallet)


def sealed_bytes(cluster: LocalCluster, wallet: Wallet, cid: Cid) -> bytes:
    store = NetworkStore(cluster.urls, signer=wallet)

    async def run() -> bytes:
        try:
            return b"".join([piece async for piece in store.get(cid)])
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.mark.parametrize("size", [0, 1, 1000, LEAF, 3 * LEAF + 5, 13 * LEAF + 1234])
def test_round_trip_and_ipfs_cid(
    cluster: LocalCluster, wallet: Wallet, size: int, tmp_path: Path
) -> None:
    # Prepare
    data = random_bytes(size, seed=size)
    client = client_for(cluster, wallet)
    # Execute
    put = client.put(data)
    out = tmp_path / "out.bin"
    got = client.get(put.cid, out)
    # Assert: same plaintext, and the CID is the one IPFS gives the sealed bytes
    assert out.read_bytes() == data
    assert got.size == size and put.size == size
    sealed = sealed_bytes(cluster, wallet, put.cid)
    assert len(sealed) == put.sealed_size
    assert import_bytes(sealed)[0] == put.cid
    assert not (tmp_path / "out.bin.part").exists()


def test_plaintext_never_reaches_nodes(cluster: LocalCluster, wallet: Wallet) -> None:
    marker = b"PATIENT-NAME: Jane Doe; DOB 1970-01-01; HIV+" * 2000
    client_for(cluster, wallet).put(marker)
    assert sum(node.service.store.stats().blocks for node in cluster.nodes) > 0
    for node in cluster.nodes:
        for path in node.data.rglob("*"):  # block files, pack files, indexes: everything
            if path.is_file():
                assert b"Jane Doe" not in path.read_bytes(), path


def test_shares_spread_over_distinct_nodes(cluster: LocalCluster, wallet: Wallet) -> None:
    put = client_for(cluster, wallet).put(random_bytes(12 * LEAF))
    holders = put.details["holders"]
    assert len(holders) == 5
    stripes = put.details["stripes"]
    leaves = -(-put.sealed_size // LEAF)
    virtual = stripes * 3 - leaves  # zero shares of a short last stripe are never stored
    assert sum(holders.values()) == stripes * 5 - virtual
    # each stripe's 5 shares are on 5 different nodes: every node holds <= one per stripe
    assert max(holders.values()) <= stripes


def test_survives_n_minus_k_dead_nodes_before_download(
    cluster: LocalCluster, wallet: Wallet, tmp_path: Path
) -> None:
    data = random_bytes(10 * LEAF + 7, seed=1)
    client = client_for(cluster, wallet)
    put = client.put(data)
    cluster.stop(0)
    cluster.stop(3)
    out = tmp_path / "out"
    client.get(put.cid, out)
    assert out.read_bytes() == data


def test_n_minus_k_plus_one_dead_nodes_fails_cleanly(
    cluster: LocalCluster, wallet: Wallet, tmp_path: Path
) -> None:
    client = client_for(cluster, wallet)
    put = client.put(random_bytes(10 * LEAF, seed=2))
    for i in (0, 1, 2):
        cluster.stop(i)
    out = tmp_path / "out"
    with pytest.raises(InsufficientSharesError) as info:
        client.get(put.cid, out)
    assert info.value.missing_stripes, "the error names the stripes that lack shares"
    assert "stripes" in info.value.message
    assert not out.exists() and not (tmp_path / "out.part").exists()


def test_nodes_dying_during_download(cluster: LocalCluster, wallet: Wallet, tmp_path: Path) -> None:
    data = random_bytes(40 * LEAF, seed=3)
    client = client_for(cluster, wallet)
    put = client.put(data)
    # two nodes (n - k) die once the download has started: at their first and second
    # batch of blocks (both answered the lookup before, so the client counts on them)
    for i, after in ((1, 0), (4, 1)):
        cluster.nodes[i].faults.append(
            Fault(method="POST", path_prefix="/blocks/fetch", after=after)
        )
    out = tmp_path / "out"
    client.get(put.cid, out)
    assert out.read_bytes() == data
    # the premise: the download really lost nodes on the way
    assert cluster.nodes[1].faults[0].tripped


def test_corrupting_node_is_detected_and_reported(
    cluster: LocalCluster, wallet: Wallet, tmp_path: Path
) -> None:
    # 10+ stripes: node 2 holds a data share of some stripe (P(not) = 0.4**10), so it is asked
    data = random_bytes(30 * LEAF, seed=4)
    client = client_for(cluster, wallet)
    put = client.put(data)
    assert cluster.corrupt(2, keep=is_metadata) > 0
    out = tmp_path / "out"
    got = client.get(put.cid, out)
    assert out.read_bytes() == data
    assert cluster.nodes[2].url in got.bad_nodes


def test_node_killed_mid_upload_fails_over(tmp_path: Path, wallet: Wallet) -> None:
    cluster = LocalCluster(tmp_path / "net", 6, [wallet.address], fsync=False)
    try:
        # node 0 acknowledges one batch, then dies
        cluster.nodes[0].faults.append(Fault(method="POST", path_prefix="/blocks", after=1))
        data = random_bytes(30 * LEAF + 3, seed=5)
        client = client_for(cluster, wallet)
        put = client.put(data)
        assert cluster.nodes[0].faults[0].tripped
        cluster.stop(0)
        # full strength on the live nodes: any two more may die
        cluster.stop(1)
        cluster.stop(2)
        out = tmp_path / "out"
        client.get(put.cid, out)
        assert out.read_bytes() == data
    finally:
        cluster.close()


def test_put_fails_clearly_without_enough_nodes(cluster: LocalCluster, wallet: Wallet) -> None:
    cluster.nodes[0].faults.append(Fault(method="POST", path_prefix="/blocks", after=0))
    with pytest.raises(StorageError, match="distinct storage nodes"):
        client_for(cluster, wallet).put(random_bytes(12 * LEAF, seed=6))


def test_repair_restores_full_strength(tmp_path: Path, wallet: Wallet) -> None:
    cluster = LocalCluster(tmp_path / "net", 7, [wallet.address], fsync=False)
    try:
        data = random_bytes(15 * LEAF, seed=7)
        client = client_for(cluster, wallet)
        put = client.put(data)
        cluster.stop(0)
        cluster.stop(1)
        report = client.repair(put.cid)
        assert report["damaged"] > 0 and report["recreated"] > 0
        assert report["unrecoverable"] == []
        again = client.repair(put.cid)
        assert again["damaged"] == 0
        # two more nodes may now die
        cluster.stop(2)
        cluster.stop(3)
        out = tmp_path / "out"
        client.get(put.cid, out)
        assert out.read_bytes() == data
    finally:
        cluster.close()


def test_verify_reports_corrupt_holder(cluster: LocalCluster, wallet: Wallet) -> None:
    client = client_for(cluster, wallet)
    put = client.put(random_bytes(6 * LEAF, seed=8))
    clean = client.verify(put.cid)
    assert clean.ok and clean.checked == clean.passed > 0
    assert cluster.corrupt(4, keep=is_metadata) > 0
    report = client.verify(put.cid)
    assert not report.ok
    assert report.failed and all(cluster.nodes[4].url in line for line in report.failed)


def test_other_wallet_cannot_open_unless_recipient(
    cluster: LocalCluster, wallet: Wallet, tmp_path: Path
) -> None:
    other = Wallet.create()
    owner = client_for(cluster, wallet)
    private = owner.put(b"only for the owner")
    shared = owner.put(b"for both", recipients=[other.encryption_public_key])
    reader = Client(NetworkStore(cluster.urls, params=PARAMS), other)
    with pytest.raises(NoCapsuleError):
        reader.get(private.cid, tmp_path / "a")
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.part").exists()
    reader.get(shared.cid, tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"for both"


def test_untrusted_writer_is_refused(cluster: LocalCluster) -> None:
    stranger = Wallet.create()
    with pytest.raises(AuthError):
        client_for(cluster, stranger).put(b"x" * 1000)


def test_restarted_node_keeps_acknowledged_shares(tmp_path: Path, wallet: Wallet) -> None:
    cluster = LocalCluster(tmp_path / "net", 5, [wallet.address], fsync=True)
    try:
        data = random_bytes(7 * LEAF, seed=9)
        client = client_for(cluster, wallet)
        put = client.put(data)
        for i in range(5):
            cluster.restart(i)
        cluster.stop(0)
        cluster.stop(1)
        out = tmp_path / "out"
        client.get(put.cid, out)
        assert out.read_bytes() == data
    finally:
        cluster.close()


def test_put_progress_counts_acknowledged_bytes(cluster: LocalCluster, wallet: Wallet) -> None:
    seen: list[int] = []
    put = client_for(cluster, wallet).put(random_bytes(8 * LEAF, seed=14), progress=seen.append)
    assert seen == sorted(seen) and len(seen) > 1
    assert seen[-1] == put.sealed_size  # every data share acknowledged, nothing counted twice


def test_one_block_objects_come_straight_from_their_holder(
    cluster: LocalCluster, wallet: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(cluster, wallet)
    put = client.put(random_bytes(1500, seed=11))
    assert put.cid.codec == 0x55  # raw: the object is one block
    sealed = sealed_bytes(cluster, wallet, put.cid)
    import medmesh.storage.backends.network as network

    async def no_locate(*args: object, **kwargs: object) -> None:
        raise AssertionError("the full locate path was taken")

    monkeypatch.setattr(network, "locate", no_locate)
    assert sealed_bytes(cluster, wallet, put.cid) == sealed  # one block request, no locate
    monkeypatch.undo()
    # the holder serving a corrupted block: refused, and the full path rebuilds from parity
    holder = next(i for i in range(len(cluster.nodes)) if cluster.holds(i, put.cid))
    assert cluster.corrupt(holder, keep=lambda cid, data: len(data) != len(sealed)) == 1
    store = NetworkStore(cluster.urls, signer=wallet)

    async def get() -> bytes:
        try:
            return b"".join([piece async for piece in store.get(put.cid)])
        finally:
            await store.close()

    assert asyncio.run(get()) == sealed
    assert cluster.nodes[holder].url in store.last_bad_nodes


def test_small_objects_are_read_from_the_node_ranked_first(
    cluster: LocalCluster, wallet: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: one-block objects stored by put (one leaf) and by put_many (a batch); both
    # place by content, so the node ranked first for the CID holds the data share
    client = client_for(cluster, wallet)
    key = wallet.encryption_public_key
    cids = [client.put(random_bytes(900, seed=s)).cid for s in range(4)]
    cids += [r.cid for r in client.put_many([(random_bytes(700, seed=s), [key]) for s in range(8)])]
    ids = {n.service.node_id: i for i, n in enumerate(cluster.nodes)}
    import medmesh.storage.transport as transport

    asked: list[str] = []
    real_get_block = transport.NodeClient.get_block

    async def counting(self: transport.NodeClient, cid: Cid) -> bytes:
        asked.append(self.url)
        return await real_get_block(self, cid)

    monkeypatch.setattr(transport.NodeClient, "get_block", counting)
    for cid in cids:
        first = rank_nodes(stripe_key(content_key(cid.multihash), 0), list(ids))[0]
        assert cluster.holds(ids[first], cid)
        asked.clear()

        # Execute
        sealed = sealed_bytes(cluster, wallet, cid)

        # Assert: one block request, to that node, and the bytes are the object
        assert asked == [cluster.nodes[ids[first]].url]
        assert Cid.of(sealed) == cid


def test_a_small_object_elsewhere_is_still_found(cluster: LocalCluster, wallet: Wallet) -> None:
    # the node ranked first lost its copy (or the object was placed with another node list)
    client = client_for(cluster, wallet)
    cid = client.put(random_bytes(800, seed=5)).cid
    ids = {n.service.node_id: i for i, n in enumerate(cluster.nodes)}
    first = ids[rank_nodes(stripe_key(content_key(cid.multihash), 0), list(ids))[0]]
    assert cluster.nodes[first].service.store.delete(cid)

    assert Cid.of(sealed_bytes(cluster, wallet, cid)) == cid
