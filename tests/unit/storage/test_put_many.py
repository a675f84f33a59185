"""``Client.aput_many`` against real nodes over loopback HTTP: every record stored as its own
object, exactly as ``aput`` stores it, with one signed upload and one signed registration
per node per chunk; failures handled record by record like ``aput`` handles them."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from medmesh.errors import (
    AuthError,
    BlockMismatchError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from medmesh.identity import Wallet
from medmesh.storage.backends.memory import MemoryStore
from medmesh.storage.backends.network import NetworkStore
from medmesh.storage.batch import EncodedObject, prepare_object
from medmesh.storage.block import Block
from medmesh.storage.cid import DAG_CBOR, Cid
from medmesh.storage.client import BatchPutError, Client, PutResult
from medmesh.storage.importer import import_bytes
from medmesh.storage.transport import NodeClient
from medmesh.storage.uploader import StoreParams
from tests.harness import Fault, LocalCluster, random_bytes

# k=2 of n=3 as the FHIR import uses; small chunks so that tests see several of them
PARAMS = StoreParams(k=2, n=3, batch_objects=64)
# 1 KiB leaves: a ~1.2 KB sealed record has two leaves, so all three shares are real
SPLIT = StoreParams(k=2, n=3, chunk_size=1024, batch_objects=40)


@pytest.fixture(scope="module")
def wallet() -> Wallet:
    return Wallet.create()


@pytest.fixture(scope="module")
def reader() -> Wallet:
    return Wallet.create()


@pytest.fixture
def cluster(tmp_path: Path, wallet: Wallet) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "net", 3, [wallet.address], fsync=False)
    try:
        yield c
    finally:
        c.close()


class CountingSigner:
    def __init__(self, wallet: Wallet) -> None:
        self.wallet = wallet
        self.count = 0

    @property
    def address(self) -> str:
        return self.wallet.address

    def sign_message(self, data: bytes) -> bytes:
        self.count += 1
        return self.wallet.sign_message(data)


def client_for(
    cluster: LocalCluster, wallet: Wallet, params: StoreParams = PARAMS, signer: Any = None
) -> Client:
    return Client(NetworkStore(cluster.urls, signer=signer or wallet, params=params), wallet)


def records(count: int, size: int = 1000, seed: int = 0) -> list[bytes]:
    return [random_bytes(size, seed=seed * 100_000 + i) for i in range(count)]


def get_bytes(client: Client, cid: Any) -> bytes:
    buf = io.BytesIO()
    client.get(cid, buf)
    return buf.getvalue()


def sealed_bytes(cluster: LocalCluster, wallet: Wallet, cid: Any) -> bytes:
    store = NetworkStore(cluster.urls, signer=wallet)

    async def run() -> bytes:
        try:
            return b"".join([piece async for piece in store.get(cid)])
        finally:
            await store.close()

    return asyncio.run(run())


def patch_uploads(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Pass every batch of blocks a client uploads through ``change(url, blocks)``."""
    original = NodeClient.put_blocks

    async def put_blocks(self: NodeClient, blocks: Iterable[Block]) -> int:
        return await original(self, change(self.url, list(blocks)))

    monkeypatch.setattr(NodeClient, "put_blocks", put_blocks)


def test_records_round_trip_as_their_own_objects(
    cluster: LocalCluster, wallet: Wallet, reader: Wallet
) -> None:
    # Prepare: a few hundred records, some empty, some spanning several leaves and stripes,
    # one over the chunk's byte budget (stored on its own, like aput)
    params = StoreParams(k=2, n=3, batch_objects=64, batch_object_bytes=600_000)
    data = records(300, 1000)
    data[7] = b""
    data[8] = b"x"
    data[100] = random_bytes(2 * 262144 + 17, seed=5)  # 3 leaves, 2 stripes
    data[200] = random_bytes(700_000, seed=6)  # over batch_object_bytes
    keys = [reader.encryption_public_key]
    signer = CountingSigner(wallet)
    client = client_for(cluster, wallet, params, signer)
    # Execute
    results = client.put_many([(d, keys) for d in data])
    # Assert: one result per record, in order, each its own IPFS-compatible object
    assert len(results) == len(data)
    assert len({r.cid for r in results}) == len(data)
    for i in (0, 7, 100, 200, 299):
        r = results[i]
        assert r.size == len(data[i])
        sealed = sealed_bytes(cluster, wallet, r.cid)
        assert len(sealed) == r.sealed_size
        assert import_bytes(sealed)[0] == r.cid
    # every record reads back byte for byte, for the owner and for the recipient
    for i, d in enumerate(data):
        assert get_bytes(client, results[i].cid) == d
    other = Client(NetworkStore(cluster.urls, params=params), reader)
    for i in (0, 8, 100, 299):
        assert get_bytes(other, results[i].cid) == data[i]
    # placed as aput places: each stripe's real shares on distinct nodes, on 2 or 3 holders
    for r in results:
        assert r.details["k"] == 2 and r.details["n"] == 3
        assert max(r.details["holders"].values()) <= r.details["stripes"]
    # and indexed on every holder
    for i in (0, 150, 299):
        for node in cluster.nodes:
            held = node.service.manifests(results[i].cid)
            assert held == (
                [results[i].manifest] if node.url in results[i].details["holders"] else []
            )
    # the traffic: per node and chunk one signed upload and one signed registration (about
    # 7 chunks here: 64 records or 600 KB each, cut before the big record); the big record
    # costs what one aput costs (3 signed requests per holder)
    assert signer.count <= 3 * 2 * 7 + 3 * 3


def test_each_record_is_verified_repaired_and_erased_on_its_own(
    tmp_path: Path, wallet: Wallet
) -> None:
    cluster = LocalCluster(tmp_path / "net", 4, [wallet.address], fsync=False)
    try:
        data = records(50, 2000, seed=1)
        client = client_for(cluster, wallet, SPLIT)
        results = client.put_many([(d, []) for d in data])
        assert client.verify(results[3].cid).ok
        # erase one: the others stay
        report = client.erase(results[3].cid)
        assert report.deleted > 0 and report.complete
        with pytest.raises(NotFoundError):
            get_bytes(client, results[3].cid)
        assert get_bytes(client, results[4].cid) == data[4]
        # lose a node, repair one record, then lose another: that record survives
        holders = sorted(results[5].details["holders"])
        gone = cluster.urls.index(holders[0])
        cluster.stop(gone)
        fixed = client.repair(results[5].cid)
        assert fixed["recreated"] > 0 and fixed["unrecoverable"] == []
        cluster.stop(cluster.urls.index(holders[1]))
        assert get_bytes(client, results[5].cid) == data[5]
    finally:
        cluster.close()


def test_a_node_dying_mid_batch_fails_over(tmp_path: Path, wallet: Wallet) -> None:
    cluster = LocalCluster(tmp_path / "net", 4, [wallet.address], fsync=False)
    try:
        # node 0 acknowledges two uploads, then dies
        cluster.nodes[0].faults.append(Fault(method="POST", path_prefix="/blocks", after=2))
        data = records(200, 1500, seed=2)
        client = client_for(cluster, wallet, SPLIT)
        results = client.put_many([(d, []) for d in data])
        assert cluster.nodes[0].faults[0].tripped
        # every record at full strength on the live nodes: any one more may die
        cluster.stop(0)
        cluster.stop(1)
        for r, d in zip(results, data, strict=True):
            assert get_bytes(client, r.cid) == d
    finally:
        cluster.close()


def test_a_node_dying_after_its_upload_gets_its_shares_recreated(
    tmp_path: Path, wallet: Wallet
) -> None:
    cluster = LocalCluster(tmp_path / "net", 4, [wallet.address], fsync=False)
    try:
        # node 2 stores its shares, then dies when asked to index them
        cluster.nodes[2].faults.append(Fault(method="POST", path_prefix="/objects", after=0))
        data = records(60, 1500, seed=3)
        client = client_for(cluster, wallet, SPLIT)
        results = client.put_many([(d, []) for d in data])
        assert cluster.nodes[2].faults[0].tripped
        assert all(cluster.nodes[2].url not in r.details["holders"] for r in results)
        cluster.stop(2)
        cluster.stop(0)
        for r, d in zip(results, data, strict=True):
            assert get_bytes(client, r.cid) == d
    finally:
        cluster.close()


def test_without_a_spare_node_records_fail_clearly_like_aput(
    cluster: LocalCluster, wallet: Wallet
) -> None:
    # 3 nodes, 3 real shares per record: once node 1 dies there are not 3 distinct nodes,
    # neither for the records still to place nor to re-create what node 1 held of the
    # records already stored; like aput, a record that is not at full strength on live
    # nodes is not reported as stored
    cluster.nodes[1].faults.append(Fault(method="POST", path_prefix="/blocks", after=1))
    data = records(120, 1500, seed=4)
    client = client_for(cluster, wallet, SPLIT)
    with pytest.raises(BatchPutError) as info:
        client.put_many([(d, []) for d in data])
    err = info.value
    assert isinstance(err, StorageError)
    assert len(err.results) == len(data) and err.results == [None] * len(data)
    assert sorted(err.errors) == list(range(len(data)))
    placed_later = "2-of-3 coding needs 3 distinct live storage nodes for stripe 0, 2 left"
    stored_before = "lost shares on failed nodes and could not be re-created elsewhere"
    kinds = {placed_later if placed_later in e.message else e.message for e in err.errors.values()}
    assert placed_later in kinds
    assert any(stored_before in k for k in kinds)
    assert all(isinstance(e, StorageError) for e in err.errors.values())
    # aput says the same for one such record
    with pytest.raises(StorageError, match=r"distinct storage nodes|reachable storage nodes"):
        client.put(data[0])


def test_too_few_reachable_nodes_fails_every_record(cluster: LocalCluster, wallet: Wallet) -> None:
    cluster.stop(2)
    with pytest.raises(BatchPutError) as info:
        client_for(cluster, wallet).put_many([(d, []) for d in records(5)])
    assert len(info.value.errors) == 5
    assert all("needs 3 reachable storage nodes" in e.message for e in info.value.errors.values())


def test_a_tampered_block_is_refused_with_its_upload(
    cluster: LocalCluster, wallet: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = records(40, 1000, seed=5)
    victim = cluster.nodes[0].url
    tampered: list[Block] = []

    def flip_first_share(url: str, blocks: list[Block]) -> list[Block]:
        if url != victim or tampered:
            return blocks
        i = next(i for i, b in enumerate(blocks) if b.cid.codec == 0x55)  # a raw share
        raw = bytearray(blocks[i].data)
        raw[0] ^= 1
        tampered.append(blocks[i])
        return [*blocks[:i], Block(blocks[i].cid, bytes(raw)), *blocks[i + 1 :]]

    patch_uploads(monkeypatch, flip_first_share)
    client = client_for(cluster, wallet)
    with pytest.raises(BatchPutError) as info:
        client.put_many([(d, []) for d in data])
    errors = info.value.errors
    assert errors and all(isinstance(e, BlockMismatchError) for e in errors.values())
    # node 0 stored nothing of the refused upload: not even the good blocks in it
    assert tampered and not cluster.holds(0, tampered[0].cid)
    assert cluster.nodes[0].service.store.stats().blocks == 0
    assert list(cluster.nodes[0].service.objects()) == []
    # the records with no share on node 0 were stored, and read back
    ok = [(i, r) for i, r in enumerate(info.value.results) if r is not None]
    assert ok and len(ok) + len(errors) == len(data)
    for i, r in ok:
        assert victim not in r.details["holders"]
        assert get_bytes(client, r.cid) == data[i]


def test_an_untrusted_writer_is_refused(cluster: LocalCluster) -> None:
    stranger = Wallet.create()
    with pytest.raises(BatchPutError) as info:
        client_for(cluster, stranger).put_many([(d, []) for d in records(10)])
    assert len(info.value.errors) == 10
    assert all(isinstance(e, AuthError) for e in info.value.errors.values())
    for node in cluster.nodes:
        assert node.service.store.stats().blocks == 0
        assert list(node.service.objects()) == []


def test_a_record_whose_manifest_did_not_arrive_is_refused_alone(
    cluster: LocalCluster, wallet: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = records(20, 1000, seed=6)
    dropped: list[Cid] = []

    def drop_one_manifest(url: str, blocks: list[Block]) -> list[Block]:
        roots = [b.cid for b in blocks if b.cid.codec == DAG_CBOR]
        if not dropped:
            dropped.append(roots[-1])  # a manifest root: the last block of an object's meta
        return [b for b in blocks if b.cid != dropped[0]]

    patch_uploads(monkeypatch, drop_one_manifest)
    client = client_for(cluster, wallet)
    with pytest.raises(BatchPutError) as info:
        client.put_many([(d, []) for d in data])
    errors = info.value.errors
    assert len(errors) == 1
    ((i, err),) = errors.items()
    assert isinstance(err, NotFoundError)
    assert "refused object registration" in err.message
    assert info.value.results[i] is None
    for j, r in enumerate(info.value.results):
        if j != i:
            assert r is not None and get_bytes(client, r.cid) == data[j]


def test_chunks_follow_the_object_and_byte_limits(cluster: LocalCluster, wallet: Wallet) -> None:
    signer = CountingSigner(wallet)
    by_count = client_for(
        cluster, wallet, StoreParams(k=2, n=3, chunk_size=1024, batch_objects=3), signer
    )
    by_count.put_many([(d, []) for d in records(10, 1500, seed=7)])  # 4 chunks, 3 real shares
    assert signer.count == 4 * 3 * 2
    signer.count = 0
    by_bytes = StoreParams(k=2, n=3, chunk_size=1024, batch_object_bytes=5000)
    client_for(cluster, wallet, by_bytes, signer).put_many(
        [(d, []) for d in records(9, 2000, seed=8)]  # ~2.2 KB sealed: 2 a chunk -> 5 chunks
    )
    assert signer.count == 5 * 3 * 2


def test_nothing_to_store_and_bad_input(cluster: LocalCluster, wallet: Wallet) -> None:
    client = client_for(cluster, wallet)
    assert client.put_many([]) == []
    assert all(n.requests <= 1 for n in cluster.nodes)
    with pytest.raises(InvalidInputError):
        client.put_many([("text", [])])  # type: ignore[list-item]


def test_other_stores_put_one_at_a_time(wallet: Wallet, reader: Wallet) -> None:
    client = Client(MemoryStore(), wallet)
    data = records(5, 300, seed=9)
    results = client.put_many([(d, [reader.encryption_public_key]) for d in data])
    assert [type(r) for r in results] == [PutResult] * 5
    for r, d in zip(results, data, strict=True):
        assert get_bytes(client, r.cid) == d


def test_an_error_of_the_source_stops_the_call(cluster: LocalCluster, wallet: Wallet) -> None:
    store = NetworkStore(cluster.urls, signer=wallet, params=PARAMS)

    def source() -> Iterator[bytes]:
        yield from records(100, 500, seed=10)
        raise ValueError("sealing failed")

    async def run() -> None:
        try:
            await store.put_many(source())
        finally:
            await store.close()

    with pytest.raises(ValueError, match="sealing failed"):
        asyncio.run(run())


def test_records_prepared_ahead_are_stored_as_the_bytes_would_be(
    cluster: LocalCluster, wallet: Wallet, reader: Wallet
) -> None:
    """seal_many seals and erasure-codes in one go (the store's preparer), so that the
    upload only sends: the objects stored are the ones aput_many makes from bytes."""
    params = StoreParams(k=2, n=3, batch_objects=16, batch_object_bytes=300_000)
    client = client_for(cluster, wallet, params)
    data = records(40, 900, seed=11)
    data[5] = random_bytes(400_000, seed=12)  # too big for a chunk: left as bytes
    items = [(d, [reader.encryption_public_key]) for d in data]
    prepared = client.seal_many(items)
    assert [type(p) for p in prepared].count(EncodedObject) == 39
    assert isinstance(prepared[5], bytes)

    async def store() -> list[PutResult]:
        try:
            return await client.aput_many(items, sealed=prepared)
        finally:
            await client.store.close()

    results = asyncio.run(store())
    for r, d, p in zip(results, data, prepared, strict=True):
        assert get_bytes(client, r.cid) == d
        # the same object as storing the sealed bytes themselves would make
        sealed = sealed_bytes(cluster, wallet, r.cid)
        assert import_bytes(sealed)[0] == r.cid
        if isinstance(p, EncodedObject):
            assert p.root == r.cid and p.manifest_cid == r.manifest
    other = Client(NetworkStore(cluster.urls, params=params), reader)
    assert get_bytes(other, results[3].cid) == data[3]


def test_objects_prepared_for_other_parameters_are_refused(
    cluster: LocalCluster, wallet: Wallet
) -> None:
    other = prepare_object(random_bytes(800, seed=13), StoreParams(k=3, n=5))
    store = NetworkStore(cluster.urls, signer=wallet, params=PARAMS)

    async def run() -> None:
        try:
            await store.put_many([other])
        finally:
            await store.close()

    with pytest.raises(InvalidInputError, match="encoded with other storage parameters"):
        asyncio.run(run())
