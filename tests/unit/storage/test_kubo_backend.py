"""KuboStore against the fake kubo (medmesh.testing.FakeKubo) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from medmesh.errors import (
    BlockMismatchError,
    IntegrityError,
    NodeUnavailableError,
    NotFoundError,
)
from medmesh.identity import Wallet
from medmesh.storage.backends.factory import open_store
from medmesh.storage.backends.kubo import KuboStore
from medmesh.storage.cid import RAW, Cid
from medmesh.storage.client import Client
from medmesh.storage.exporter import walk_dfs
from medmesh.storage.importer import KUBO_V0, import_bytes
from medmesh.testing import FakeKubo

KIB = 1024
LEAF = 256 * KIB


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(size * 7919 + seed).randbytes(size)


def serve(
    scenario: Callable[[FakeKubo, str], Awaitable[None]], kubo: FakeKubo | None = None
) -> FakeKubo:
    """Run ``scenario(kubo, url)`` against a fake kubo served in a fresh event loop."""
    kubo = kubo or FakeKubo()

    async def main() -> None:
        async with kubo.serve() as url:
            await scenario(kubo, url)

    asyncio.run(main())
    return kubo


async def collect(pieces: AsyncIterator[bytes], into: list[bytes]) -> bytes:
    async for piece in pieces:
        into.append(piece)
    return b"".join(into)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, LEAF, LEAF + 1, 3_000_000], ids=["empty", "1B", "256KiB", "256KiB+1", "3MB"]
)
def test_put_get_round_trip(size: int) -> None:
    data = payload(size)
    root, blocks = import_bytes(data)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        store = KuboStore(url)
        done: list[int] = []
        obj = await store.put(
            [data[i : i + 100_000] for i in range(0, len(data), 100_000)] or [b""],
            progress=done.append,
        )
        assert obj.cid == root
        assert obj.size == size
        assert done[-1] == size
        # kubo holds exactly the DAG, and the root is pinned recursively
        assert kubo.pin_type(root) == "recursive"
        assert kubo.recursive_pins == [root]
        assert kubo.block_count() == len(blocks)
        for cid, block in blocks.items():
            assert kubo.block(cid) == block
        assert kubo.calls["dag/import"] == 1
        assert kubo.calls["pin/add"] == 1
        got: list[bytes] = []
        assert await collect(store.get(root), got) == data
        assert kubo.calls["dag/export"] == 1

    serve(scenario)


def test_legacy_v0_profile_round_trip_and_size() -> None:
    """dag-pb leaves (``ipfs add`` without --raw-leaves): the size used to be reported as 0."""
    data = payload(LEAF * 2 + 5)
    root, _ = import_bytes(data, KUBO_V0)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        store = KuboStore(url, params=KUBO_V0)
        obj = await store.put([data])
        assert obj.cid == root
        assert str(root).startswith("Qm")
        assert obj.size == len(data)
        assert kubo.pin_type(root) == "recursive"
        assert await collect(store.get(root), []) == data

    serve(scenario)


def test_reads_ask_kubo_to_stay_offline_unless_told_otherwise() -> None:
    data = payload(1000)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        obj = await KuboStore(url).put([data])
        await collect(KuboStore(url).get(obj.cid), [])
        await collect(KuboStore(url, offline=False).get(obj.cid), [])

    kubo = serve(scenario)
    exports = [r for r in kubo.requests if r.command == "dag/export"]
    assert [("offline", "true") in r.query for r in exports] == [True, False]
    pin = next(r for r in kubo.requests if r.command == "pin/add")
    assert ("offline", "true") in pin.query
    assert all(r.method == "POST" and r.status == 200 for r in kubo.requests)


# -- integrity --------------------------------------------------------------------------------


def _corrupt_leaf(kubo: FakeKubo, root: Cid, blocks: dict[Cid, bytes]) -> None:
    leaf = [c for c in walk_dfs(root, blocks.__getitem__) if c.cid.codec == RAW][1].cid
    kubo.corrupt_block(leaf)


def _corrupt_root_decodable(kubo: FakeKubo, root: Cid, blocks: dict[Cid, bytes]) -> None:
    # the last byte is inside the node's Data field: still valid dag-pb, but the wrong bytes
    old = blocks[root]
    kubo.corrupt_block(root, old[:-1] + bytes([old[-1] ^ 0x01]))


def _corrupt_root_garbage(kubo: FakeKubo, root: Cid, blocks: dict[Cid, bytes]) -> None:
    kubo.corrupt_block(root, b"\xff" * 40)  # not dag-pb: kubo cannot walk it, sends no block


@pytest.mark.parametrize(
    "corrupt",
    [_corrupt_leaf, _corrupt_root_decodable, _corrupt_root_garbage],
    ids=["leaf", "root-still-decodable", "root-undecodable"],
)
def test_corrupted_block_is_refused_before_any_byte(
    corrupt: Callable[[FakeKubo, Cid, dict[Cid, bytes]], None],
) -> None:
    data = payload(3 * LEAF + 10)
    root, blocks = import_bytes(data)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        store = KuboStore(url)
        await store.put([data])
        corrupt(kubo, root, blocks)
        got: list[bytes] = []
        with pytest.raises(BlockMismatchError):
            await collect(store.get(root), got)
        assert got == []

    serve(scenario)


def test_missing_block_under_the_root_is_not_found_and_yields_nothing() -> None:
    data = payload(3 * LEAF)
    root, blocks = import_bytes(data)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        store = KuboStore(url)
        await store.put([data])
        second_leaf = [c for c in walk_dfs(root, blocks.__getitem__)][2].cid
        kubo.remove_block(second_leaf)
        got: list[bytes] = []
        with pytest.raises(NotFoundError, match=str(second_leaf)):
            await collect(store.get(root), got)
        assert got == []
        assert kubo.calls["block/get"] == 1  # asked whether the block is gone or corrupted

    serve(scenario)


def test_unknown_cid_is_not_found() -> None:
    unknown = Cid.of(b"never stored anywhere")

    async def scenario(kubo: FakeKubo, url: str) -> None:
        for store in (KuboStore(url), KuboStore(url, offline=False)):
            got: list[bytes] = []
            with pytest.raises(NotFoundError, match="could not find"):
                await collect(store.get(unknown), got)
            assert got == []

    serve(scenario)


def test_unreachable_node_is_unavailable() -> None:
    store = KuboStore(f"http://127.0.0.1:{free_port()}")

    async def scenario() -> None:
        with pytest.raises(NodeUnavailableError):
            await store.version()
        with pytest.raises(NodeUnavailableError):
            await store.put([b"x"])
        with pytest.raises(NodeUnavailableError):
            await collect(store.get(Cid.of(b"x")), [])

    asyncio.run(scenario())


def test_kubo_errors_are_reported_with_kubo_message() -> None:
    async def scenario(kubo: FakeKubo, url: str) -> None:
        store = KuboStore(url)
        kubo.fail_next("dag/import", "import failed: disk quota exceeded")
        with pytest.raises(NodeUnavailableError, match="disk quota exceeded"):
            await store.put([b"record"])
        kubo.fail_next("pin/add", "pin: context canceled")
        with pytest.raises(NodeUnavailableError, match="context canceled"):
            await store.put([b"record"])
        obj = await store.put([b"record"])
        assert await collect(store.get(obj.cid), []) == b"record"

    serve(scenario)


def test_version() -> None:
    async def scenario(kubo: FakeKubo, url: str) -> None:
        assert await KuboStore(url + "/").version() == kubo.version

    serve(scenario)


# -- wiring -----------------------------------------------------------------------------------


def test_factory_opens_a_kubo_store() -> None:
    data = payload(LEAF + 1)

    async def scenario(kubo: FakeKubo, url: str) -> None:
        port = url.rsplit(":", 1)[1]
        store = open_store(f"kubo+http://127.0.0.1:{port}")
        assert isinstance(store, KuboStore)
        assert store.api == f"http://127.0.0.1:{port}"
        obj = await store.put([data])
        assert kubo.pin_type(obj.cid) == "recursive"
        assert await collect(store.get(obj.cid), []) == data

    serve(scenario)


def test_client_facade_end_to_end(tmp_path: Path) -> None:
    plain = payload(700 * KIB, seed=1)
    src = tmp_path / "scan.dcm"
    src.write_bytes(plain)
    out = tmp_path / "copy.dcm"
    kubo = FakeKubo()
    with kubo.serve_in_thread() as url:
        client = Client(KuboStore(url), Wallet.create())
        put = client.put(src)
        assert put.size == len(plain)
        assert put.sealed_size > len(plain)
        assert kubo.pin_type(put.cid) == "recursive"
        # kubo only ever sees ciphertext
        stored = b"".join(b.data for b in walk_dfs(put.cid, kubo.block))
        assert len(stored) >= put.sealed_size
        assert plain[1000:1064] not in stored

        got = client.get(put.cid, out)
        assert got.size == len(plain)
        assert out.read_bytes() == plain
        assert not out.with_name(out.name + ".part").exists()

        # a corrupted block: the get fails and leaves neither the file nor the .part behind
        leaf = next(b.cid for b in walk_dfs(put.cid, kubo.block) if b.cid.codec == RAW)
        kubo.corrupt_block(leaf)
        bad = tmp_path / "bad.dcm"
        with pytest.raises(IntegrityError):
            client.get(put.cid, bad)
        assert not bad.exists()
        assert not bad.with_name(bad.name + ".part").exists()
