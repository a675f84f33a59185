"""``ObjectStore.erase`` in the stores other than the network: memory, kubo (the fake kubo
over real HTTP on 127.0.0.1) and the default that refuses; and the client facade."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import aiohttp
import pytest

from medmesh.errors import NotFoundError, StorageError
from medmesh.identity import Wallet
from medmesh.storage.backends.base import (
    EraseReport,
    ObjectStore,
    Progress,
    SizeHook,
    StoredObject,
)
from medmesh.storage.backends.kubo import KuboStore
from medmesh.storage.backends.memory import MemoryStore
from medmesh.storage.cid import RAW, Cid
from medmesh.storage.client import Client
from medmesh.storage.exporter import walk_dfs
from medmesh.storage.importer import ImportParams
from medmesh.testing import FakeKubo

KIB = 1024
SMALL = ImportParams(chunk_size=KIB, max_links=4)  # many blocks from a few KiB


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


COMMON = payload(3 * KIB, seed=0)  # the first three leaves of A and B are the same blocks
DATA_A = COMMON + payload(9 * KIB + 5, seed=1)
DATA_B = COMMON + payload(6 * KIB, seed=2)


async def read(store: ObjectStore, cid: Cid) -> bytes:
    return b"".join([piece async for piece in store.get(cid)])


# -- memory ---------------------------------------------------------------------------------


def test_memory_erase_keeps_blocks_other_objects_use() -> None:
    async def run() -> None:
        # Prepare
        store = MemoryStore(SMALL)
        a = (await store.put([DATA_A])).cid
        b = (await store.put([DATA_B])).cid
        blocks_a = {blk.cid for blk in walk_dfs(a, store.blocks.__getitem__)}
        blocks_b = {blk.cid for blk in walk_dfs(b, store.blocks.__getitem__)}
        shared = blocks_a & blocks_b
        assert len(shared) == 3
        # Execute
        report = await store.erase(a)
        # Assert: A's own blocks are gone, the shared leaves stay and B still reads back
        assert report == EraseReport(a, len(blocks_a - shared), {"memory:": len(blocks_a - shared)})
        assert report.complete
        assert set(store.blocks) == blocks_b
        assert await read(store, b) == DATA_B
        with pytest.raises(NotFoundError):
            await read(store, a)
        assert await store.size(a) is None
        # erasing again, an unknown CID, or a block that B still uses, deletes nothing
        for cid in (a, Cid.of(b"never stored"), sorted(shared, key=str)[0]):
            assert (await store.erase(cid)).deleted == 0
        assert await read(store, b) == DATA_B

    asyncio.run(run())


def test_memory_erase_of_a_one_block_object() -> None:
    async def run() -> None:
        store = MemoryStore()
        obj = await store.put([b"a small record"])
        assert obj.cid.codec == RAW
        assert (await store.erase(obj.cid)).deleted == 1
        assert store.blocks == {} and store.roots == {}

    asyncio.run(run())


# -- kubo (fake) ----------------------------------------------------------------------------


def serve(scenario: Callable[[FakeKubo, str], Awaitable[None]]) -> FakeKubo:
    kubo = FakeKubo()

    async def main() -> None:
        async with kubo.serve() as url:
            await scenario(kubo, url)

    asyncio.run(main())
    return kubo


def test_kubo_erase_unpins_and_gc_then_deletes() -> None:
    async def scenario(kubo: FakeKubo, url: str) -> None:
        # Prepare
        store = KuboStore(url, params=SMALL)
        a = (await store.put([DATA_A])).cid
        b = (await store.put([DATA_B])).cid
        blocks_a = {blk.cid for blk in walk_dfs(a, kubo.block)}
        blocks_b = {blk.cid for blk in walk_dfs(b, kubo.block)}

        # Execute
        report = await store.erase(a)

        # Assert: the pin is gone; the blocks stay until kubo collects garbage
        assert report == EraseReport(a, 1, {url: 1})
        assert report.complete
        assert kubo.pin_type(a) is None and kubo.pin_type(b) == "recursive"
        assert all(kubo.has_block(c) for c in blocks_a)
        assert not any("gc" in r.command for r in kubo.requests)  # erase never runs gc
        rm = [r for r in kubo.requests if r.command == "pin/rm"]
        assert [(r.method, r.args(), r.status) for r in rm] == [("POST", [str(a)], 200)]
        assert kubo.gc() == len(blocks_a - blocks_b)
        assert not any(kubo.has_block(c) for c in blocks_a - blocks_b)
        with pytest.raises(NotFoundError):
            await read(store, a)
        assert await read(store, b) == DATA_B

        # erasing again, an unknown CID, or a block pinned only through B: nothing to unpin
        for cid in (a, Cid.of(b"never stored"), sorted(blocks_a & blocks_b, key=str)[0]):
            again = await store.erase(cid)
            assert (again.deleted, again.holders, again.unreachable) == (0, {}, [])
        assert kubo.pin_type(b) == "recursive"

    serve(scenario)


def test_kubo_erase_reports_a_failing_or_unreachable_node() -> None:
    async def scenario(kubo: FakeKubo, url: str) -> None:
        store = KuboStore(url)
        obj = await store.put([b"record"])
        kubo.fail_next("pin/rm", "pin: context canceled")
        failed = await store.erase(obj.cid)
        assert (failed.deleted, failed.unreachable, failed.complete) == (0, [url], False)
        assert kubo.pin_type(obj.cid) == "recursive"
        assert (await store.erase(obj.cid)).deleted == 1

    serve(scenario)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}"
    report = asyncio.run(KuboStore(api).erase(Cid.of(b"x")))
    assert (report.deleted, report.unreachable) == (0, [api])


def test_fake_kubo_pin_rm_errors_match_kubo() -> None:
    async def scenario(kubo: FakeKubo, url: str) -> None:
        async with aiohttp.ClientSession() as session:
            cid = Cid.of(b"never pinned")
            async with session.post(f"{url}/api/v0/pin/rm?arg={cid}") as resp:
                assert resp.status == 500
                assert await resp.json() == {
                    "Message": "not pinned or pinned indirectly",
                    "Code": 0,
                    "Type": "error",
                }
            obj = await KuboStore(url).put([b"pinned"])
            async with session.post(f"{url}/api/v0/pin/rm?arg={obj.cid}") as resp:
                assert resp.status == 200
                assert await resp.json() == {"Pins": [str(obj.cid)]}

    serve(scenario)


# -- the default, and the client facade -----------------------------------------------------


class _ReadOnly(ObjectStore):
    async def put(
        self, pieces: Iterable[bytes], *, progress: Progress | None = None
    ) -> StoredObject:
        raise NotImplementedError

    async def get(self, cid: Cid, *, on_size: SizeHook | None = None) -> AsyncIterator[bytes]:
        raise NotFoundError("empty")
        yield b""  # pragma: no cover - makes this an async generator


def test_a_store_without_erasure_says_so() -> None:
    with pytest.raises(StorageError, match="cannot erase objects"):
        asyncio.run(_ReadOnly().erase(Cid.of(b"x")))


def test_client_erase_accepts_a_cid_or_its_text() -> None:
    wallet = Wallet.create()
    client = Client(MemoryStore(), wallet)
    first = client.put(b"patient record")
    second = client.put(b"another record")
    report = client.erase(str(first.cid))
    assert report.cid == first.cid and report.deleted == 1
    assert client.erase(second.cid).deleted == 1
    assert client.erase(first.cid).deleted == 0
    assert report.to_json() == {
        "cid": str(first.cid),
        "deleted": 1,
        "holders": {"memory:": 1},
        "unreachable": [],
        "complete": True,
    }
